"""``dtune`` command line: tasks, data, pretrain, adapt, evaluate, demo."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dtune.config import add_dataclass_args, from_args


@dataclass
class DemoConfig:
    """A small end-to-end study: collect a few Meta-World tasks, pre-train, evaluate."""

    out: str = "runs/demo"
    """Folder for the run, its evaluation and (unless --data-dir) its data."""
    tasks: str = "reach-v3,button-press-v3,drawer-close-v3,door-open-v3,plate-slide-v3,window-open-v3"
    """Meta-World tasks of the study."""
    episodes: int = 100
    """Episodes collected per task."""
    model: str = "small"
    """Model size preset."""
    steps: int = 2500
    """Pre-training steps."""
    eval_episodes: int = 10
    """Evaluation episodes per task."""
    data_dir: str | None = None
    """Data root (default: OUT/data)."""
    seed: int = 0
    """Seed of collection and training."""


def _tasks_cmd(args):
    from dtune.report import markdown_table
    from dtune.tasks import get_task, resolve_tasks, REGISTRY

    names = resolve_tasks(args.set) if args.set else list(REGISTRY)
    rows = []
    for n in names:
        s = get_task(n)
        rows.append([n, s.domain, s.obs_dim, s.act_dim, s.horizon, s.reward_scale, s.score])
    print(markdown_table(["task", "domain", "obs", "act", "horizon", "reward scale", "score"], rows))


def _collect_cmd(args):
    from dtune.data.collect import CollectConfig, collect

    cfg = from_args(CollectConfig, args)
    t0 = time.perf_counter()
    written = collect(cfg)
    print(f"collected {len(written)} task(s) in {time.perf_counter() - t0:.1f}s into {cfg.data_dir}"
          + ("" if written else " (all requested datasets were already complete)"))


def _list_cmd(args):
    from dtune.data.storage import data_root, list_datasets, read_metadata
    from dtune.report import markdown_table

    root = data_root(args.data_dir)
    tasks = list_datasets(root)
    if not tasks:
        print(f"no datasets under {root}; collect some with `dtune data collect`")
        return
    rows = []
    for t in tasks:
        meta = read_metadata(root, t)
        st = meta["dtune"].get("stats", {})
        rows.append([meta["dataset_id"], meta["dtune"].get("policy"), st.get("episodes"), st.get("steps"),
                     st.get("return_mean"), st.get("return_max"), st.get("success_rate")])
    print(markdown_table(["dataset", "policy", "episodes", "steps", "return mean", "return max", "success"], rows))


def _show_cmd(args):
    import numpy as np

    from dtune.data.storage import (data_root, dataset_dir, episode_returns, episode_stats, read_episodes,
                                    read_metadata)
    from dtune.report import markdown_table
    from dtune.tasks import get_task

    root = data_root(args.data_dir)
    task = args.id.split("/")[-1].removesuffix("-v0")
    get_task(task)  # unknown names fail here, with suggestions
    meta = read_metadata(root, task)
    ep = read_episodes(root, task)
    st = episode_stats(ep)
    print(f"{meta['dataset_id']}  ({dataset_dir(root, task)})")
    settings = {k: v for k, v in meta["dtune"].items() if k not in ("stats", "noise_schedule")}
    print("settings: " + json.dumps(settings))
    print(markdown_table(["statistic", "value"], [[k, v] for k, v in st.items()]))
    q = np.quantile(episode_returns(ep["rewards"], ep["lengths"]), [0.0, 0.25, 0.5, 0.75, 1.0])
    print("return quantiles (0, 25, 50, 75, 100%): " + ", ".join(f"{v:.1f}" for v in q))


def _pretrain_cmd(args):
    from dtune.train.checkpoint import read_config
    from dtune.train.pretrain import PretrainConfig, pretrain

    cfg = from_args(PretrainConfig, args)
    if cfg.resume:
        # Resume with the run's own settings; only options typed on this command line override them.
        explicit = argparse.ArgumentParser(add_help=False)
        add_dataclass_args(explicit, PretrainConfig, suppress_defaults=True)
        given = vars(explicit.parse_known_args(args.argv)[0])
        saved = read_config(cfg.out)["train"]
        cfg = PretrainConfig(**{**saved, **given, "out": cfg.out, "resume": True})
    summary = pretrain(cfg)
    print(json.dumps(summary, indent=1))


def _print_eval(result: dict):
    from dtune.report import eval_table

    print(eval_table(result))
    print(f"\n{result['env_steps']} env steps in {result['wall_s']:.1f}s ({result['env_steps_per_s']:.0f} steps/s)")


def _method_config(method: str, argv: list[str]):
    """The method's config: its (preset) defaults, overridden by the options typed on the command line."""
    import dataclasses

    from dtune import tuners

    explicit = argparse.ArgumentParser(add_help=False)
    add_dataclass_args(explicit, tuners.config_class(method), suppress_defaults=True)
    given = vars(explicit.parse_known_args(argv)[0])
    config = tuners.make_config(method, **given)
    print(f"method {method}: " + json.dumps(dataclasses.asdict(config)))
    return config


def _adapt_cmd(args):
    from dtune.train.adapt import AdaptConfig, adapt, list_methods, result_table

    if args.list_methods:
        print(list_methods())
        return
    cfg = from_args(AdaptConfig, args)
    result = adapt(cfg, _method_config(cfg.method, args.argv))
    print(result_table([result]))
    print(f"\nadapter and results in {cfg.out}")


def _continual_cmd(args):
    from dtune.continual.runner import ContinualConfig, continual, summary_markdown

    cfg = from_args(ContinualConfig, args)
    argv = args.argv
    if cfg.resume and (Path(cfg.out) / "config.json").exists():
        # Resume with the run's own settings (method options included); options typed here override.
        saved = json.loads((Path(cfg.out) / "config.json").read_text())
        explicit = argparse.ArgumentParser(add_help=False)
        add_dataclass_args(explicit, ContinualConfig, suppress_defaults=True)
        given = vars(explicit.parse_known_args(argv)[0])
        cfg = ContinualConfig(**{**saved["continual"], **given, "out": cfg.out, "resume": True})
        from dtune import tuners

        method_config = tuners.config_from_dict(saved["method"], saved["method_config"])
    else:
        method_config = _method_config(cfg.method, argv)
    summary = continual(cfg, method_config)
    print(summary_markdown(summary))
    print(f"\nmatrix, metrics and plots in {cfg.out}")


def _report_cmd(args):
    from dtune.report.summary import report

    print(report(args.runs, args.out, args.reference))
    if args.out:
        print(f"\ntables, JSON, CSV and plots in {args.out}")


def _method_of(argv: list[str]) -> str:
    """The --method named on an adapt command line (its options join the parser)."""
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    from dtune.train.adapt import AdaptConfig

    return AdaptConfig.method


def _evaluate_cmd(args):
    from dtune.eval.rollout import EvalConfig, evaluate

    _print_eval(evaluate(from_args(EvalConfig, args)))


def _demo_cmd(args):
    from dtune.data.collect import CollectConfig, collect
    from dtune.eval.rollout import EvalConfig, evaluate
    from dtune.train.checkpoint import WEIGHTS
    from dtune.train.pretrain import PretrainConfig, pretrain

    cfg = from_args(DemoConfig, args)
    out = Path(cfg.out)
    data_dir = cfg.data_dir or str(out / "data")
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    t0 = time.perf_counter()
    print(f"[1/3] collecting {cfg.episodes} episodes of each of {cfg.tasks} into {data_dir}")
    collect(CollectConfig(tasks=cfg.tasks, episodes=cfg.episodes, seed=cfg.seed, data_dir=data_dir))
    run = out / "pretrain"
    resume = (run / WEIGHTS).exists()
    print(f"[2/3] pre-training a {cfg.model} MDDT for {cfg.steps} steps in {run}" + (" (resuming)" if resume else ""))
    pretrain(PretrainConfig(out=str(run), tasks=cfg.tasks, model=cfg.model, steps=cfg.steps, seed=cfg.seed,
                            data_dir=data_dir, resume=resume))
    print(f"[3/3] evaluating {cfg.eval_episodes} episodes per task")
    result = evaluate(EvalConfig(checkpoint=str(run), episodes=cfg.eval_episodes, json=str(out / "eval.json")))
    _print_eval(result)
    print(f"\ndemo done in {time.perf_counter() - t0:.0f}s; results in {out / 'eval.json'}")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from dtune import tuners
    from dtune.data.collect import CollectConfig
    from dtune.train.adapt import AdaptConfig
    from dtune.eval.rollout import EvalConfig
    from dtune.train.pretrain import PretrainConfig

    p = argparse.ArgumentParser(prog="dtune", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tasks", help="list the registered tasks")
    t.add_argument("--set", default=None, help="only this task set or list (mt40, cw10, dmc10...)")
    t.set_defaults(func=_tasks_cmd)

    d = sub.add_parser("data", help="collect and inspect datasets").add_subparsers(dest="data_command", required=True)
    c = d.add_parser("collect", help="collect one Minari dataset per task", description=CollectConfig.__doc__)
    add_dataclass_args(c, CollectConfig)
    c.set_defaults(func=_collect_cmd)
    ls = d.add_parser("list", help="list the datasets under the data root")
    ls.add_argument("--data-dir", default=None, help="data root (default $DTUNE_DATA_DIR or ~/.dtune/datasets)")
    ls.set_defaults(func=_list_cmd)
    sh = d.add_parser("show", help="statistics of one dataset")
    sh.add_argument("id", help="task name (hammer-v3) or dataset id (dtune/metaworld/hammer-v3-v0)")
    sh.add_argument("--data-dir", default=None, help="data root (default $DTUNE_DATA_DIR or ~/.dtune/datasets)")
    sh.set_defaults(func=_show_cmd)

    pt = sub.add_parser("pretrain", help="pre-train a Decision Transformer on many tasks", description=PretrainConfig.__doc__)
    add_dataclass_args(pt, PretrainConfig)
    pt.set_defaults(func=_pretrain_cmd)

    ad = sub.add_parser("adapt", help="adapt a pre-trained checkpoint to a new task",
                        description=AdaptConfig.__doc__ + " Method options follow --method; "
                        "`dtune adapt --method lora --help` lists LoRA's.")
    add_dataclass_args(ad, AdaptConfig)
    ad.add_argument("--list-methods", action="store_true", help="list the methods and variants, then exit")
    method = _method_of(argv or [])
    try:
        cls = tuners.config_class(method)
    except ValueError:
        cls = None  # reported with suggestions when the command runs
    if cls is not None:
        add_dataclass_args(ad.add_argument_group(f"options of method {method!r} ({cls.__doc__.strip()})"), cls)
    ad.set_defaults(func=_adapt_cmd)

    from dtune.continual.runner import ContinualConfig

    cl = sub.add_parser("continual", help="adapt to a sequence of tasks, one after the other",
                        description=ContinualConfig.__doc__ + " Method options follow --method, as for adapt.")
    add_dataclass_args(cl, ContinualConfig)
    if cls is not None:
        add_dataclass_args(cl.add_argument_group(f"options of method {method!r} ({cls.__doc__.strip()})"), cls)
    cl.set_defaults(func=_continual_cmd)

    rp = sub.add_parser("report", help="put adaptation or continual runs side by side (tables, plots)")
    rp.add_argument("runs", nargs="+", help="run directories of `dtune adapt` or `dtune continual`")
    rp.add_argument("--out", default=None, help="also write report.md/json, CSV and PNG plots into this directory")
    rp.add_argument("--reference", default=None,
                    help="single-task `dtune adapt` runs (searched recursively) for the forward transfer of continual runs")
    rp.set_defaults(func=_report_cmd)

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint", description=EvalConfig.__doc__)
    add_dataclass_args(ev, EvalConfig)
    ev.set_defaults(func=_evaluate_cmd)

    dm = sub.add_parser("demo", help="small end-to-end study", description=DemoConfig.__doc__)
    add_dataclass_args(dm, DemoConfig)
    dm.set_defaults(func=_demo_cmd)
    return p


def main(argv: list[str] | None = None) -> int:
    import warnings

    from dtune.data.storage import DatasetError
    from dtune.tasks import UnknownTaskError
    from dtune.train.checkpoint import CheckpointError
    from dtune.tuners import AdapterError

    warnings.filterwarnings("ignore", module="metaworld")
    warnings.filterwarnings("ignore", message=".*GLFW.*")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    args.argv = argv
    try:
        args.func(args)
    except (DatasetError, CheckpointError, AdapterError, UnknownTaskError, ValueError) as e:
        print(f"dtune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dtune: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
