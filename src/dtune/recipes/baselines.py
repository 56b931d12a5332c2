"""Offline-RL baselines from d3rlpy (BC, CQL, IQL, TD3+BC) on dtune's datasets, scored by dtune's
evaluator: `dtune baselines --algo iql --task hopper --source medium --out runs/iql-hopper`.

The task's dataset (optionally a `--data-ratio` subset of whole trajectories, the same subset a
Decision Transformer run with the same seed gets) becomes a d3rlpy `MDPDataset` with its real
terminations and time-limit truncations apart. d3rlpy trains with its own loggers into
`<out>/d3rlpy/` (CSV per metric), using the hyperparameters of d3rlpy's D4RL reproductions
(:data:`ALGOS`), with two differences: IQL's actor learning rate is constant (the script anneals it
over its 500K updates) and IQL and CQL standardise observations (the scripts do for TD3+BC only);
BC (no script) uses d3rlpy's lr 1e-3. The studies in `results/` were run so; changing either
would make later seeds incomparable with earlier ones. The policy is then stepped by :func:`dtune.eval.rollout.evaluate_agent` through
:class:`BaselineAgent`, so its score is computed by exactly the code that scores the Decision
Transformers; `result.json` holds it.

Training is split into epochs of `steps_per_epoch` updates; after every epoch the networks
(safetensors), optimiser states (read back with `torch.load(weights_only=True)`) and random
states are saved, as one checkpoint folder named by a `state.json` written last, so `--resume`
continues an interrupted run exactly (d3rlpy has no resume of its own), even one interrupted
while saving.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from dtune.data.dataset import SUBSET_RULE, check_replay_from, check_subset_rule
from dtune.runtime.dist import single_process
from dtune.runtime.io import atomic_write_json, atomic_write_text, checkpoint_files, checkpoint_folder
from dtune.runtime.optional import quiet_legacy_gym
from dtune.runtime.seeds import global_rng_state, set_global_rng_state

ALGOS = ("bc", "cql", "iql", "td3+bc")


@dataclass
class BaselineConfig:
    """Train an offline-RL baseline from d3rlpy on one task's dataset; score it with dtune's evaluator."""

    algo: Literal["bc", "cql", "iql", "td3+bc"] = "iql"
    """Algorithm: behaviour cloning, CQL, IQL or TD3+BC (d3rlpy 2.x, its D4RL hyperparameters)."""
    task: str = "hopper"
    """The task (one per run)."""
    source: str | None = None
    """Dataset source (`medium`, `medium-replay`...; unset: the one the task has)."""
    data_ratio: float = 1.0
    """Keep this fraction of the dataset's whole trajectories (seeded by `seed`)."""
    replay_from: float = 0.0
    """Drop the first `int(replay_from x E)` of a replay buffer's `E` episodes (`medium-replay`,
    `sac-replay`: the agent's learning phase; 0.5 keeps the second half), before `data_ratio`; refused
    for a dataset that is not a replay buffer."""
    steps: int = 100_000
    """Gradient updates (the papers: 1M; LaMo's table: 100K for DT)."""
    steps_per_epoch: int = 5_000
    """Updates between checkpoints and log lines."""
    batch_size: int = 256
    """Minibatch."""
    eval_episodes: int = 10
    """Evaluation episodes at the end."""
    eval_seed: int = 1000
    """Base seed of the evaluation episodes (the evaluator's default, as for DT runs)."""
    eval_every: int = 0
    """Updates between evaluations during training (a multiple of `steps_per_epoch`, below `steps`): the
    learning curve, `curve.jsonl`, and `result.json`'s `curve` with the final evaluation as its last point,
    as `dtune lamo --eval-every` (0: none). The run trains exactly as without them."""
    seed: int = 0
    """Seed of d3rlpy's networks and sampling and of the data subset."""
    out: str = "runs/baseline"
    """Run directory."""
    data_dir: str | None = None
    """Data root (unset: `$DTUNE_DATA_DIR` or `~/.dtune/datasets`)."""
    resume: bool = False
    """Continue the run in `out` from its last epoch."""
    progress: bool = True
    """Show d3rlpy's progress bars."""


def _algo_config(name: str, batch_size: int):
    """d3rlpy's config of `name` with the hyperparameters of its D4RL reproduction scripts."""
    quiet_legacy_gym()
    import d3rlpy
    from d3rlpy.models.encoders import VectorEncoderFactory
    from d3rlpy.preprocessing import ReturnBasedRewardScaler, StandardObservationScaler

    if name == "bc":
        return d3rlpy.algos.BCConfig(batch_size=batch_size, learning_rate=1e-3,
                                     observation_scaler=StandardObservationScaler())
    if name == "cql":
        enc = VectorEncoderFactory([256, 256, 256])
        return d3rlpy.algos.CQLConfig(actor_learning_rate=1e-4, critic_learning_rate=3e-4, temp_learning_rate=1e-4,
                                      actor_encoder_factory=enc, critic_encoder_factory=enc, batch_size=batch_size,
                                      n_action_samples=10, alpha_learning_rate=0.0, conservative_weight=5.0,
                                      observation_scaler=StandardObservationScaler())
    if name == "iql":
        return d3rlpy.algos.IQLConfig(actor_learning_rate=3e-4, critic_learning_rate=3e-4, batch_size=batch_size,
                                      weight_temp=3.0, max_weight=100.0, expectile=0.7,
                                      reward_scaler=ReturnBasedRewardScaler(multiplier=1000.0),
                                      observation_scaler=StandardObservationScaler())
    if name == "td3+bc":
        return d3rlpy.algos.TD3PlusBCConfig(actor_learning_rate=3e-4, critic_learning_rate=3e-4, batch_size=batch_size,
                                            target_smoothing_sigma=0.2, target_smoothing_clip=0.5, alpha=2.5,
                                            update_actor_interval=2, observation_scaler=StandardObservationScaler())
    raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(ALGOS)}")


def built_algo(name: str, batch_size: int, dataset):
    """d3rlpy's `name` on the CPU, its networks built for `dataset` and its scalers fitted on it
    (here, not in the first `fit()`: a resumed run with nothing left to train, stopped while
    evaluating, must scale observations too)."""
    quiet_legacy_gym()
    from d3rlpy.algos.utility import build_scalers_with_transition_picker

    algo = _algo_config(name, batch_size).create(device="cpu:0")
    algo.build_with_dataset(dataset)
    build_scalers_with_transition_picker(algo, dataset)
    return algo


def mdp_dataset(root: Path, task: str, source: str, data_ratio: float = 1.0, seed: int = 0, replay_from: float = 0.0):
    """The dataset as a d3rlpy `MDPDataset` (terminations and truncations apart) and the task's
    data statistics (`task_info` like a DT run's); `replay_from`, `data_ratio`: as in
    :class:`dtune.data.dataset.TrajectoryData`."""
    quiet_legacy_gym()
    import d3rlpy

    from dtune.data.dataset import later_episodes, trajectory_subset
    from dtune.data.storage import episode_returns, read_episodes, read_metadata

    check_replay_from(replay_from, {task: source})
    ep = read_episodes(root, task, source)
    lengths = ep["lengths"]
    arrays = {k: ep[k] for k in ("observations", "actions", "rewards", "terminals")}
    if replay_from > 0.0:
        lengths, arrays = later_episodes(lengths, arrays, replay_from)
    if data_ratio < 1.0:
        lengths, arrays = trajectory_subset(lengths, arrays, data_ratio, seed, task)
    ends = np.cumsum(lengths) - 1
    timeouts = np.zeros(len(arrays["rewards"]), bool)
    timeouts[ends] = ~arrays["terminals"][ends]
    ds = d3rlpy.dataset.MDPDataset(arrays["observations"], arrays["actions"], arrays["rewards"],
                                   arrays["terminals"].astype(np.float32), timeouts.astype(np.float32))
    meta = read_metadata(root, task, source)["dtune"]
    returns = episode_returns(arrays["rewards"], lengths)
    info = {"episodes": int(len(lengths)), "steps": int(lengths.sum()), "data_ratio": data_ratio, "source": source,
            **({"data_subset": SUBSET_RULE} if data_ratio < 1.0 else {}),
            **({"replay_from": replay_from} if replay_from > 0.0 else {}),
            "return_max": float(returns.max()), "return_mean": float(returns.mean()),
            "ref_min_score": meta.get("ref_min_score"), "ref_max_score": meta.get("ref_max_score")}
    return ds, info


class BaselineAgent:
    """A d3rlpy policy behind the evaluator's agent interface (one task; it normalises observations
    itself with its fitted scaler)."""

    def __init__(self, algo):
        self.algo = algo

    def start(self, specs, targets) -> None:
        if len({s.name for s in specs}) != 1:
            raise ValueError("a baseline policy acts on the one task it was trained on")
        self.n = len(specs)

    def act(self, obs: list[np.ndarray], t: int) -> np.ndarray:
        return np.clip(self.algo.predict(np.asarray(obs, np.float32)), -1.0, 1.0)

    def observe(self, rewards: np.ndarray) -> None:
        pass


# -- checkpoints ------------------------------------------------------------------------------
CHECKPOINT_FILES = ("networks.safetensors", "optim.pt")
"""A checkpoint's files (in `checkpoint/ckpt-<step>/`; dtune 0.2 wrote them beside `state.json`)."""


def _parts(algo) -> dict:
    return algo.impl.modules.create_checkpointer("cpu:0").modules


def _save(run: Path, algo, step: int, train_s: float) -> None:
    """The networks (safetensors) and the optimisers' and torch's RNG states into a new folder
    `checkpoint/ckpt-<step>`, then `checkpoint/state.json` naming it (written last), so an
    interruption leaves the previous epoch's checkpoint whole."""
    import torch
    from safetensors.torch import save_file

    nets, optims = {}, {}
    for name, m in _parts(algo).items():
        if isinstance(m, torch.nn.Module):
            nets.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in m.state_dict().items()})
        else:
            optims[name] = m.state_dict()
    state = {"step": step, "grad_step": int(algo.grad_step), "train_s": train_s, **global_rng_state()}
    with checkpoint_folder(run / "checkpoint", str(step), state, CHECKPOINT_FILES) as tmp:
        save_file(nets, str(tmp / "networks.safetensors"))
        torch.save({"optimizers": optims, "torch_rng": torch.get_rng_state()}, tmp / "optim.pt")


def _load_networks(run: Path, algo) -> tuple[dict, Path]:
    """The last checkpoint's networks into `algo`; its state (`state.json`) and folder."""
    import torch
    from safetensors.torch import load_file

    state, files = checkpoint_files(run / "checkpoint")  # dtune 0.2: the files beside state.json
    nets = load_file(str(files / "networks.safetensors"))
    for name, m in _parts(algo).items():
        if isinstance(m, torch.nn.Module):
            m.load_state_dict({k[len(name) + 1:]: v for k, v in nets.items() if k.startswith(name + ".")})
    return state, files


def _load(run: Path, algo) -> tuple[int, float]:
    import torch

    state, files = _load_networks(run, algo)
    rest = torch.load(files / "optim.pt", weights_only=True)
    for name, m in _parts(algo).items():
        if not isinstance(m, torch.nn.Module):
            m.load_state_dict(rest["optimizers"][name])
    algo._grad_step = state["grad_step"]
    set_global_rng_state(state)
    torch.set_rng_state(rest["torch_rng"])
    return int(state["step"]), float(state.get("train_s", 0.0))


def _file_logger(root: Path, epochs_before: int, steps_before: int):
    """d3rlpy's CSV logger (`FileAdapter`: `<root>/<algo>/<metric>.csv`, rows `epoch,step,value`)
    with the run's own epoch and step: every per-epoch `fit` call (and every resume) would start
    again at epoch 1 and rewrite the gradient CSVs."""
    import os

    from d3rlpy.logging import FileAdapter, FileAdapterFactory

    class Adapter(FileAdapter):
        def write_metric(self, epoch: int, step: int, name: str, value: float) -> None:
            super().write_metric(epochs_before + epoch, steps_before + step, name, value)

        def watch_model(self, epoch: int, step: int) -> None:
            if not self._is_model_watched:  # the header once per file, not once per call
                names = [name for name, _ in self._algo.impl.modules.get_gradients()]
                self._is_model_watched = bool(names) and all(
                    os.path.exists(os.path.join(self._logdir, f"{n}_grad.csv")) for n in names)
            super().watch_model(epochs_before + epoch, steps_before + step)

    class Factory(FileAdapterFactory):
        def create(self, algo, experiment_name: str, n_steps_per_epoch: int) -> FileAdapter:
            return Adapter(algo, os.path.join(self._root_dir, experiment_name))

    return Factory(root_dir=str(root))


def _drop_log_rows_after(logdir: Path, step: int) -> None:
    """On resume: the CSV rows an interrupted invocation logged past its last checkpoint go (they
    are trained again)."""
    for path in logdir.glob("*.csv") if logdir.is_dir() else ():
        lines = path.read_text().splitlines()
        keep = [x for x in lines if not x[:1].isdigit() or int(x.split(",")[1]) <= step]
        if len(keep) < len(lines):
            atomic_write_text(path, "".join(f"{x}\n" for x in keep))


def _quiet_d3rlpy() -> None:
    """d3rlpy logs every epoch through structlog at INFO; keep warnings only."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def train_baseline(cfg: BaselineConfig) -> dict:
    """Train, checkpoint every epoch, evaluate; returns the result (also `out/result.json`)."""
    single_process("dtune baselines")
    quiet_legacy_gym()
    import d3rlpy
    import torch

    from dtune.data.storage import data_root, resolve_sources
    from dtune.eval.rollout import evaluate_agent
    from dtune.recipes.common import Curve, claim_out, curve_point, due, start_fresh, untouched_rng
    from dtune.tasks import get_task

    if cfg.algo not in ALGOS:
        raise ValueError(f"unknown baseline {cfg.algo!r}; choose one of {', '.join(ALGOS)}")
    for name in ("steps", "steps_per_epoch", "batch_size", "eval_episodes"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.eval_every < 0 or cfg.eval_every % cfg.steps_per_epoch or 0 < cfg.steps <= cfg.eval_every:
        raise ValueError(f"--eval-every must be 0 (no learning curve) or a multiple of --steps-per-epoch "
                         f"({cfg.steps_per_epoch}; the networks are evaluated between epochs) below --steps "
                         f"({cfg.steps}); got {cfg.eval_every}")
    spec = get_task(cfg.task)
    out = Path(cfg.out)
    root = data_root(cfg.data_dir)
    source = resolve_sources(root, [cfg.task], cfg.source)[cfg.task]
    check_replay_from(cfg.replay_from, {cfg.task: source})  # before anything is written
    settings = {**asdict(cfg), "source": source, "data_dir": str(root), "out": str(out.resolve()),
                "data_subset": SUBSET_RULE if cfg.data_ratio < 1.0 else None}
    if cfg.resume:
        claim_out(out, "baseline", resume=True)
        saved = json.loads((out / "config.json").read_text())["baseline"]
        changed = [k for k in ("algo", "task", "source", "data_ratio", "replay_from", "batch_size", "seed", "steps_per_epoch")
                   if saved.get(k, 0.0 if k == "replay_from" else None) != settings[k]]  # older runs: no replay_from
        if changed:
            raise ValueError(f"--resume with other {', '.join(changed)} than the run in {out}; drop those options")
        check_subset_rule(saved.get("data_subset"), settings["data_subset"], out)
        done = json.loads((out / "result.json").read_text()) if (out / "result.json").exists() else None
        state = out / "checkpoint" / "state.json"
        trained = max(done["steps"] if done else 0, json.loads(state.read_text())["step"] if state.exists() else 0)
        if cfg.steps < trained:
            raise ValueError(f"--resume with --steps {cfg.steps}, but the run in {out} has trained for {trained} "
                             "updates; pass --steps of at least that, or start a new run with another --out")
        if (done is not None and done["steps"] == cfg.steps and done["eval"]["episodes_per_task"] == cfg.eval_episodes
                and done["eval"]["seed"] == cfg.eval_seed):
            return done  # finished and evaluated with these settings: nothing to train or evaluate again
    else:
        start_fresh(out, "baseline", ("checkpoint", "result.json"))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", {"kind": "baseline", "baseline": settings})
    _quiet_d3rlpy()
    d3rlpy.seed(cfg.seed)
    dataset, info = mdp_dataset(root, cfg.task, source, cfg.data_ratio, cfg.seed, cfg.replay_from)
    algo = built_algo(cfg.algo, cfg.batch_size, dataset)
    step, before = _load(out, algo) if cfg.resume and (out / "checkpoint" / "state.json").exists() else (0, 0.0)
    _drop_log_rows_after(out / "d3rlpy" / cfg.algo, step)
    curve, eval_s = Curve(out, step), []

    def point():  # the learning curve's point at `step`, when due and not yet there (a resume after a cut)
        if due(step, cfg.eval_every, cfg.steps) and not curve.has(step):
            t = time.perf_counter()
            with untouched_rng(torch.device("cpu")):  # d3rlpy's networks live there
                r = evaluate_agent(BaselineAgent(algo), cfg.task, episodes=cfg.eval_episodes, seed=cfg.eval_seed,
                                   task_info={cfg.task: info}, progress=False)["tasks"][cfg.task]
            curve.add(step, curve_point(r))
            eval_s.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    point()
    while step < cfg.steps:
        n = min(cfg.steps_per_epoch, cfg.steps - step)
        logger = _file_logger(out / "d3rlpy", step // cfg.steps_per_epoch, step)
        algo.fit(dataset, n_steps=n, n_steps_per_epoch=n, experiment_name=cfg.algo, with_timestamp=False,
                 logger_adapter=logger, show_progress=cfg.progress, save_interval=10 ** 9)
        step += n
        _save(out, algo, step, before + time.perf_counter() - t0 - sum(eval_s))
        point()
    train_s = before + time.perf_counter() - t0 - sum(eval_s)  # over every invocation of a resumed run
    res = evaluate_agent(BaselineAgent(algo), cfg.task, episodes=cfg.eval_episodes, seed=cfg.eval_seed,
                         task_info={cfg.task: info}, progress=cfg.progress)
    task_res = res["tasks"][cfg.task]
    result = {"kind": "baseline", "method": cfg.algo, "task": cfg.task, "source": source, "data_ratio": cfg.data_ratio,
              "replay_from": cfg.replay_from, "seed": cfg.seed, "steps": step, "score": task_res["score"], "score_kind": spec.score,
              "return_mean": task_res["return_mean"], "return_std": task_res["return_std"], "train_s": train_s,
              "data": info, "eval": res}
    ended = curve.ended(step, curve_point(task_res))
    if ended:
        result["curve"] = ended
    atomic_write_json(out / "result.json", result)
    return result


def evaluate_baseline_run(run: str | Path, episodes: int = 10, seed: int = 1000, horizon: int | None = None,
                          data_dir: str | None = None, max_envs: int = 512, progress: bool = True,
                          env_workers: int = 0, tasks: str | None = None) -> dict:
    """Score the policy of a `dtune baselines` run (its last checkpoint) again, e.g. with more episodes:
    `dtune evaluate --checkpoint RUN --episodes 100`. The run's networks are rebuilt on the data subset it
    trained on (its scalers are fitted there), read from `data_dir` (unset: `$DTUNE_DATA_DIR`, else the run's own
    data root); a finished run's dataset must still be the one it trained on. The run folder is only read.
    Returns :func:`dtune.eval.rollout.evaluate_agent`'s result plus the `step` of the checkpoint evaluated, the
    `method`, and `notes` (printed too) where the checkpoint is not the run's final one or `seed` is not the
    run's evaluation seed. `tasks`, where given, must name the run's task."""
    from dtune.data.storage import resolve_sources
    from dtune.eval.rollout import evaluate_agent
    from dtune.models.io import CheckpointError
    from dtune.recipes.common import resolve_data_dir
    from dtune.runtime.runs import COMMANDS, run_kind
    from dtune.tasks import resolve_tasks

    run = Path(run)
    kind = run_kind(run)
    if kind != "baseline":
        raise CheckpointError(f"{run} holds {'no run' if kind is None else 'a ' + COMMANDS[kind] + ' run'}, "
                              "not a `dtune baselines` run")
    s = json.loads((run / "config.json").read_text())["baseline"]
    if not (run / "checkpoint" / "state.json").exists():
        where = f"; score the run it was copied from, {s['out']}" if Path(s["out"]).resolve() != run.resolve() \
            and (Path(s["out"]) / "checkpoint" / "state.json").exists() else ""
        raise CheckpointError(f"the baseline run in {run} has no checkpoint (it saves one after each epoch; a study's "
                              f"copy kept without weights has none){where}")
    if tasks is not None and resolve_tasks(tasks) != [s["task"]]:
        raise ValueError(f"{run} holds a baseline trained on {s['task']} only; drop --tasks or pass --tasks {s['task']}")
    if s.get("data_subset") != (SUBSET_RULE if s["data_ratio"] < 1.0 else None):
        raise CheckpointError(f"the baseline run in {run} trained on a data subset chosen by an older rule of dtune "
                              f"({SUBSET_RULE} now): its scalers cannot be fitted on the same subset again")
    root = resolve_data_dir(data_dir, {"resolved": {"data_dir": s["data_dir"]}})
    resolve_sources(root, [s["task"]], {s["task"]: s["source"]})  # a clear error where the dataset is not there
    _quiet_d3rlpy()
    dataset, info = mdp_dataset(root, s["task"], s["source"], s["data_ratio"], s["seed"], s.get("replay_from", 0.0))
    done = json.loads((run / "result.json").read_text()) if (run / "result.json").exists() else None
    if done is not None:
        changed = [k for k in ("episodes", "steps", "return_mean", "return_max")
                   if k in done["data"] and done["data"][k] != info[k]]
        if changed:
            raise CheckpointError(f"the {s['task']} dataset under {root} is not the one the run in {run} trained on "
                                  f"(its {', '.join(changed)} differ); point --data-dir at the data root it used")
    algo = built_algo(s["algo"], s["batch_size"], dataset)
    state, _ = _load_networks(run, algo)
    step, notes = int(state["step"]), []
    if done is None or done["steps"] != step:
        notes.append(f"the checkpoint evaluated is at update {step}" + (
            f", the run's result at {done['steps']}" if done else
            f" of {s['steps']}, and the run has no result (it was cut before it finished)"))
    if seed != s.get("eval_seed", 1000):
        notes.append(f"evaluation seed {seed}, the run's own evaluation used {s.get('eval_seed', 1000)}")
    for note in notes:
        print(f"note: {run}: {note}")
    res = evaluate_agent(BaselineAgent(algo), s["task"], episodes=episodes, seed=seed, horizon=horizon,
                         task_info={s["task"]: info}, max_envs=max_envs, progress=progress, env_workers=env_workers)
    return {"method": s["algo"], "step": step, **({"notes": notes} if notes else {}), **res}


__all__ = ["ALGOS", "BaselineConfig", "BaselineAgent", "built_algo", "evaluate_baseline_run", "mdp_dataset",
           "train_baseline"]
