"""The README's table of evaluation noise (section "Evaluation noise"): each arm's score x100 on the runs scored
again with more episodes (`results/lamo/reeval.sh`), beside the same runs' scores from the study's 10 episodes
(`results/lamo/runs/.../result.json`). Per cell and arm: the mean over the seeds scored again (seeds in brackets),
10 episodes -> N episodes; then the mean absolute change of a run's score and the largest one.

    .venv/bin/python results/lamo/reeval_table.py [results/lamo/reeval] [results/lamo/runs]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ARMS = [("lamo", "LaMo"), ("lamo-random", "LaMo, random init"), ("dt", "DT"), ("bc", "BC"), ("iql", "IQL"),
        ("cql", "CQL")]


def score(doc: dict) -> tuple[float, int, bool]:
    """Score at the standard target (a DT/LaMo run's or evaluation's protocol; a baseline's one score), episodes,
    and whether it came from the protocol's targets."""
    if "protocol" in doc:
        (r,) = doc["protocol"]["tasks"].values()
        return r["standard"]["score"], r["standard"]["episodes"], True
    if "eval" in doc:  # a baseline run's result.json
        (r,) = doc["eval"]["tasks"].values()
    else:  # `dtune evaluate` of a baseline run
        (r,) = doc["tasks"].values()
    return r["score"], r["episodes"], False


def main(reeval: str = "results/lamo/reeval", runs: str = "results/lamo/runs") -> str:
    pairs: dict[tuple[str, str], list[tuple[str, float, float]]] = {}
    episodes, unkept = set(), 0
    for path in sorted(Path(reeval).glob("*/*/s*.json")):
        dataset, arm, seed = path.parent.parent.name, path.parent.name, path.stem[1:]
        result = Path(runs) / dataset / arm / f"s{seed}" / "result.json"
        if not result.exists():
            unkept += 1  # not kept yet
            continue
        new, n, protocol = score(json.loads(path.read_text()))
        old, n_old, protocol_old = score(json.loads(result.read_text()))
        if protocol != protocol_old:
            raise SystemExit(f"{path} was not scored as {result} was (at the protocol's targets or not); delete it "
                             "and run reeval.sh again")
        episodes.add((n_old, n))
        pairs.setdefault((dataset, arm), []).append((seed, old, new))
    if not pairs:
        return f"nothing scored again in {reeval}"
    if len(episodes) != 1:
        raise SystemExit(f"the runs were scored with different numbers of episodes: {sorted(episodes)} (study -> again)")
    ((n_old, n),) = episodes

    def ratio(dataset: str) -> float:
        return float(dataset.rsplit("-", 1)[1])

    cells = sorted({d for d, _ in pairs}, key=lambda d: (d.split("-", 1)[0], ratio(d)))
    lines = ["| task, data | " + " | ".join(name for _, name in ARMS) + " |", "|---" * (len(ARMS) + 1) + "|"]
    for d in cells:
        row = []
        for arm, _ in ARMS:
            got = pairs.get((d, arm))
            if not got:
                row.append("")
                continue
            seeds = [s for s, _, _ in got]
            text = f"{100 * np.mean([o for _, o, _ in got]):.1f} -> {100 * np.mean([v for _, _, v in got]):.1f}"
            row.append(text + ("" if len(seeds) >= 3 else f" (seed{'s' * (len(seeds) > 1)} {', '.join(seeds)})"))
        name, x = d.rsplit("-", 1)
        task, source = name.split("-", 1)
        lines.append(f"| {task} {source}, {100 * float(x):g}% | " + " | ".join(row) + " |")
    changes = [100 * abs(v - o) for got in pairs.values() for _, o, v in got]
    lines += ["", f"{len(changes)} runs, {n_old} -> {n} episodes: a run's score moved by {np.mean(changes):.1f} on average "
                  f"(median {np.median(changes):.1f}, largest {max(changes):.1f})."]
    if unkept:
        lines.append(f"({unkept} runs scored again are not kept in {runs} yet: left out.)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
