"""Resident memory of the training data: memory-mapped per-task arrays (dtune.data.dataset)
against the in-RAM loader of dtune 0.2 (the reference, frozen in `_inram_loader.py`), each
measured in a fresh process after loading MT40 and drawing batches; and a check that both draw
the same samples for the same seed.

    python benchmarks/bench_data.py                           # collects 10 episodes per task (80K steps)
    DTUNE_DATA_DIR=runs/data2 python benchmarks/bench_data.py  # the 100-episode MT40 data (800K steps)
"""

import json
import os
import subprocess
import sys

TASKS = os.environ.get("BENCH_TASKS", "mt40")
BATCHES, BATCH, K = 300, 64, 5

CHILD = """
import hashlib, json, sys, time
sys.path.insert(0, {here!r})
import numpy as np
from _inram_loader import InRamTrajectoryData, InRamWindowSampler
from dtune.data.dataset import TrajectoryData, WindowSampler

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {{k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "RssFile")}}

kind, root = sys.argv[1], sys.argv[2]
base = status()
Data, Sampler = (TrajectoryData, WindowSampler) if kind == "mmap" else (InRamTrajectoryData, InRamWindowSampler)
t0 = time.perf_counter()
data = Data(root, {tasks!r})
t_load = time.perf_counter() - t0
sampler = Sampler(data, {k}, {b}, seed=0)
h = hashlib.sha256()
t0 = time.perf_counter()
for _ in range({n}):
    batch = sampler.sample()
    for key in sorted(batch):
        h.update(np.ascontiguousarray(batch[key]).tobytes())
t_sample = (time.perf_counter() - t0) / {n}
end = status()
print(json.dumps({{"steps": data.steps, "load_s": t_load, "windows_per_s": {b} / t_sample, "digest": h.hexdigest(),
                  **{{k: end[k] - base[k] for k in end}}}}))
"""


def run(kind: str, root: str) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    code = CHILD.format(here=here, tasks=TASKS, k=K, b=BATCH, n=BATCHES)
    out = subprocess.run([sys.executable, "-c", code, kind, root], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    from _common import data_dir_with

    root = data_dir_with(TASKS, episodes=10)
    run("mmap", root)  # builds the .npy cache once, outside the measurement
    ram, mm = run("ram", root), run("mmap", root)
    print(f"data: {TASKS}, {mm['steps']} steps; {BATCHES} batches of {BATCH} windows of {K} steps, seed 0")
    print(f"same samples for the same seed: {ram['digest'] == mm['digest']} (sha256 of every batch)")
    for name, r in (("in RAM (dtune 0.2, reference)", ram), ("memory-mapped", mm)):
        print(f"{name:31s}: private (RssAnon) {r['RssAnon']:7.1f} MB, file-backed {r['RssFile']:7.1f} MB, "
              f"load {r['load_s']:5.2f} s, {r['windows_per_s']:8.0f} windows/s")
    print(f"private resident memory: memory-mapped / in RAM = {mm['RssAnon'] / ram['RssAnon']:.2f}; "
          f"all resident (incl. page cache mapped in): {mm['VmRSS'] / ram['VmRSS']:.2f}")
    if ram["digest"] != mm["digest"]:
        sys.exit("the loaders drew different samples")


if __name__ == "__main__":  # spawned collection workers import this file: run only as a script
    main()
