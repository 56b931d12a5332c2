"""How close to raw env stepping can an *exact* evaluator get on this machine? (issue 13's 0.8 target)

The model's work per env step is fixed by what the evaluator must compute to give the same actions as
a recompute of the window: when the K-step window slides, every token of the new window runs again
through the blocks (their hidden states depend on the dropped timestep), then one forward per further
action token. This script counts those FLOPs for a Meta-World evaluation with torch's FlopCounterMode
(the `small` MDDT, lock-step episodes of Meta-World tasks, as `bench_eval.py` runs them), measures this
CPU's matmul peak on one thread (fp32 and bf16, a 2048^3 matmul) and the matmul throughput at the
evaluation's own shapes, and steps the same environments with random actions (raw stepping, one
process). From these it prints the best ratio to raw stepping with 2 processes that any exact evaluator
could reach on 2 cores: the environments need their CPU time and the model at least its FLOPs at the
measured rate, so the wall time is at least (env CPU + model CPU) / 2. Raw stepping runs every MT40 task
(one environment each, 200 steps), so its CPU time is that of the full MT40 evaluation.

    python benchmarks/bench_eval_bound.py [--tasks 8 --episodes 5]     # FLOPs per env step do not depend on the count
"""

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import matmul_rate

p = argparse.ArgumentParser()
p.add_argument("--model", default="small")
p.add_argument("--tasks", type=int, default=8)
p.add_argument("--episodes", type=int, default=5)
p.add_argument("--horizon", type=int, default=200)
args = p.parse_args()
torch.set_num_threads(1)

from dtune.eval.agents import DTAgent
from dtune.models import build_model, preset
from dtune.tasks import TASK_SETS, get_task, layout_for, make_env

layout = layout_for("mt40")
model = build_model(preset(args.model, state_dim=layout.state_dim, act_dim=layout.act_dim)).eval()
names = TASK_SETS["mt40"][: args.tasks]
specs = [get_task(n, horizon=args.horizon) for n in names for _ in range(args.episodes)]
n = len(specs)
rng = np.random.default_rng(0)
obs = [rng.standard_normal(s.obs_dim).astype(np.float32) for s in specs]


def episode(precision: str) -> None:
    agent = DTAgent(model, layout, use_cache=True, precision=precision)
    agent.start(specs, [1000.0] * n)
    for t in range(args.horizon):
        agent.act(obs, t)
        agent.observe(np.zeros(n, dtype=np.float32))


with FlopCounterMode(display=False) as fc:
    episode("fp32")
flops_step = fc.get_total_flops() / (n * args.horizon)


fp32_peak, bf16_peak = matmul_rate(torch.float32, 2048, 2048, 2048, 3), matmul_rate(torch.bfloat16, 2048, 2048, 2048, 5)
# the slide's forward at MT40 scale: 400 envs x the new window's tokens ((K - 1) timesteps and the newest
# one's state and return) against the width -> 3 x width (q, k, v) and 4 x width (fc)
d = model.cfg.gpt.n_embd
rows = 400 * ((model.cfg.context_len - 1) * model.tokens_per_step + 2)
fp32_eval, bf16_eval = (max(matmul_rate(dt, rows, d, 4 * d, 20), matmul_rate(dt, rows, d, 3 * d, 20)) for dt in
                        (torch.float32, torch.bfloat16))

# raw stepping of every MT40 task once (their step times differ up to 9x), random actions
all_specs = [get_task(name, horizon=args.horizon) for name in TASK_SETS["mt40"]]
envs = [make_env(s.name, seed=0, horizon=s.horizon) for s in all_specs]
for i, env in enumerate(envs):
    env.reset(i)
t = time.perf_counter()
for _ in range(args.horizon):
    for env, s in zip(envs, all_specs):
        env.step(rng.uniform(-1, 1, s.act_dim))
env_s_step = (time.perf_counter() - t) / (len(envs) * args.horizon)

steps = 400 * 200  # the full MT40 evaluation: 40 tasks x 10 episodes x 200 steps
env_cpu = steps * env_s_step
print(f"model FLOPs per env step ({args.model} MDDT, exact cache): {flops_step / 1e6:.1f} MFLOP; "
      f"full MT40 evaluation ({steps:,} env steps): {flops_step * steps / 1e12:.2f} TFLOP")
print(f"one core: matmul peak fp32 {fp32_peak / 1e9:.0f} GFLOP/s, bf16 {bf16_peak / 1e9:.0f}; at the evaluation's "
      f"shapes fp32 {fp32_eval / 1e9:.0f}, bf16 {bf16_eval / 1e9:.0f}")
print(f"raw env stepping, one process: {1 / env_s_step:,.0f} steps/s, so {env_cpu:.1f} CPU-s for the evaluation")
print("| precision | model CPU-s at least (at the peak / at the eval shapes' rate) | best ratio to raw stepping in "
      "2 processes on 2 cores, (env) / (env + model) |")
print("|---|---|---|")
for name, pk, ev in (("fp32", fp32_peak, fp32_eval), ("bf16", bf16_peak, bf16_eval)):
    at_peak, at_shapes = flops_step * steps / pk, flops_step * steps / ev
    print(f"| {name} | {at_peak:.1f} / {at_shapes:.1f} | {env_cpu / (env_cpu + at_peak):.2f} / "
          f"{env_cpu / (env_cpu + at_shapes):.2f} |")
print("The bound assumes raw stepping scales perfectly over 2 processes and the model costs only its FLOPs at that "
      "matmul rate (attention's FLOPs included; no elementwise work, no Python, no overlap losses); a measured "
      "evaluator is below it.")
