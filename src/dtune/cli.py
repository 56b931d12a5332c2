"""`dtune`: pre-trained Transformers for offline RL from the command line.

Commands:
  tasks      list the registered suites, tasks and task sets
  data       collect, list and inspect datasets (`data collect`, `data sac`, `data rollouts`,
             `data import`, `data list`, `data show`, `data report`)
  pretrain   pre-train a (multi-domain) Decision Transformer on many tasks
  evaluate   evaluate a checkpoint (with or without an adapter) on tasks
  adapt      adapt a pre-trained checkpoint to a new task with one method
  continual  adapt to a sequence of tasks, one after the other (CW10, DMC6 ...)
  lamo       a Decision Transformer from a pre-trained language model (LaMo), or the classic DT
  lm         pre-train a small language model on a text corpus (`lm pretrain`), for `lamo --lm`
  baselines  train an offline-RL baseline (d3rlpy: BC, CQL, IQL, TD3+BC) and score it
  export     fold an adapter (LoRA, (IA)3, fine-tuning) into its base: a checkpoint to adapt again
  report     put adaptation, continual or offline-RL runs side by side (tables, plots)
  demo       a small end-to-end study (collect, pre-train, evaluate)

`dtune COMMAND --help` lists a command's options; `dtune adapt METHOD --help` (or
`dtune adapt --method METHOD --help`) a method's own.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Union

import tyro

from dtune import __version__

TYRO = (tyro.conf.OmitSubcommandPrefixes, tyro.conf.CascadeSubcommandArgs)


def _dedent_docstrings() -> None:
    """Field docstrings wrap in the source, with indented continuation lines; tyro keeps a line
    break before every line that does not start with a letter, so they would print ragged. Dedent
    the continuation lines before tyro joins them (tyro 1.x's helper; left alone if it moved)."""
    import textwrap

    from tyro import _strings

    join = getattr(_strings, "remove_single_line_breaks", None)
    if join is None or getattr(join, "dtune", False):
        return

    def dedented(text: str) -> str:
        first, _, rest = text.partition("\n")
        return join(first + ("\n" + textwrap.dedent(rest) if rest else ""))

    dedented.dtune = True
    _strings.remove_single_line_breaks = dedented


_dedent_docstrings()


def _parse(cls, argv: list[str], prog: str, default=None):
    return tyro.cli(cls, args=argv, prog=prog, default=default, config=TYRO)


def _out_of(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--out" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--out="):
            return a.split("=", 1)[1]
    return None


# -- small commands -------------------------------------------------------------------------------
@dataclass
class TasksArgs:
    """List the registered suites, tasks and task sets."""

    set: str | None = None
    """Only this task set, suite or list (`mt40`, `cw10`, `dmc10`, `metaworld`, `hammer-v3,reach-v3`)."""


def _tasks(argv):
    from dtune.report import markdown_table
    from dtune.tasks import REGISTRY, SUITES, TASK_SETS, get_suite, resolve_tasks

    args = _parse(TasksArgs, argv, "dtune tasks")
    if args.set in SUITES:
        names = [t for t, s in REGISTRY.items() if s.suite == args.set]
    else:
        names = resolve_tasks(args.set) if args.set else list(REGISTRY)
    rows = []
    for n in names:
        s = REGISTRY[n]
        rows.append([n, s.suite, s.obs_dim, s.act_dim, s.horizon, s.reward_scale, s.score])
    print(markdown_table(["task", "suite", "obs", "act", "horizon", "reward scale", "score"], rows))
    if not args.set:
        print("\nsuites: " + "; ".join(f"{n} (sources: {', '.join(get_suite(n).sources)})" for n in SUITES))
        print("task sets: " + ", ".join(f"{k} ({len(v)})" for k, v in TASK_SETS.items()))


@dataclass
class DataListArgs:
    """List the datasets under the data root."""

    data_dir: str | None = None
    """Data root (unset: `$DTUNE_DATA_DIR` or `~/.dtune/datasets`)."""


@dataclass
class DataReportArgs:
    """Table and learning-curve plot of the datasets of some tasks."""

    tasks: str = "dmc16"
    """Task names or sets, comma separated."""
    source: str | None = None
    """Which datasets (a comma-separated list takes per task the first it has; unset: the one each has)."""
    out: str | None = None
    """Folder for datasets.md, datasets.json and learning_curves.png (unset: print the table only)."""
    data_dir: str | None = None
    """Data root (unset: `$DTUNE_DATA_DIR` or `~/.dtune/datasets`)."""


@dataclass
class DataImportArgs:
    """Import a Minari dataset you have on disk (e.g. D4RL's kitchen data) into dtune's store."""

    dataset: Annotated[str, tyro.conf.Positional]
    """The Minari dataset: its folder, its `data/` folder, or its id under `$MINARI_DATASETS_PATH`."""
    task: str = "kitchen-complete"
    """The dtune task it is data of (observation and action sizes are checked against it)."""
    source: str = "complete"
    """Name of the dtune dataset written (`dtune/<suite>/<task>/<source>-v0`)."""
    data_dir: str | None = None
    """Data root (unset: `$DTUNE_DATA_DIR` or `~/.dtune/datasets`)."""
    overwrite: bool = False
    """Replace a dtune dataset of that name."""


@dataclass
class DataShowArgs:
    """Statistics of one dataset."""

    id: Annotated[str, tyro.conf.Positional]
    """Task name (`hammer-v3`) or dataset id (`dtune/metaworld/hammer-v3/expert-noise-v0`)."""
    source: str | None = None
    """Which of the task's datasets (unset: the one it has)."""
    data_dir: str | None = None
    """Data root (unset: `$DTUNE_DATA_DIR` or `~/.dtune/datasets`)."""


def _has_success(task: str) -> bool:
    """Whether `task` is scored by success (False for normalised-return tasks, True if unknown)."""
    from dtune.tasks import get_task

    try:
        return get_task(task).score == "success"
    except Exception:  # a dataset of a suite not installed here: show what it stored
        return True


def _data(argv):
    from dtune.data.collect import CollectConfig, collect
    from dtune.data.storage import (data_root, dataset_dir, dataset_id, episode_returns, episode_stats, list_datasets,
                                    read_episodes, read_metadata, resolve_sources)
    from dtune.report import markdown_table
    from dtune.tasks import get_task

    sub = argv[0] if argv else None
    if sub not in ("collect", "sac", "rollouts", "import", "list", "show", "report"):
        print("usage: dtune data {collect,sac,rollouts,import,list,show,report} ...\n\n  collect  collect one Minari dataset per task (and source)\n"
              "  sac      train SAC per task and keep its replay buffer as the dataset (source sac-replay; resumable)\n"
              "  rollouts episodes of the SAC agent stored with a dataset, as a new dataset (D4RL's medium)\n"
              "  import   a Minari dataset already on disk (e.g. D4RL kitchen) into dtune's store\n"
              "  list     list the datasets under the data root\n  show     statistics of one dataset\n"
              "  report   table and learning curves of the datasets of some tasks",
              file=sys.stderr if sub not in ("-h", "--help") else sys.stdout)
        if sub in ("-h", "--help"):
            return
        raise SystemExit(2)
    if sub == "collect":
        cfg = _parse(CollectConfig, argv[1:], "dtune data collect")
        t0 = time.perf_counter()
        written = collect(cfg)
        print(f"collected {len(written)} task(s) in {time.perf_counter() - t0:.1f}s into {cfg.data_dir}"
              + ("" if written else " (all requested datasets were already complete)"))
        return
    if sub == "sac":
        from dtune.data.sac import SACConfig, collect_sac

        cfg = _parse(SACConfig, argv[1:], "dtune data sac")
        t0 = time.perf_counter()
        done = collect_sac(cfg)
        for s in done:
            stop = f"; stopped at evaluation return {s['evaluations'][-1][1]:.0f}" if s.get("evaluations") else ""
            state = (f"dataset written: mean return {s['stats']['return_mean']:.1f}, random {s['ref_min_score']:.1f}{stop}"
                     + ("" if s["sac_learned"] else "; SAC DID NOT LEARN (last tenth of episodes no better than random)")
                     if s["done"] else "unfinished: run the same command again to continue")
            print(f"{s['task']}: {s['steps']} steps, {s['episodes']} episodes, {s['steps_per_s']:.0f} steps/s; {state}")
        print(f"SAC on {len(done)} task(s) in {time.perf_counter() - t0:.0f}s, data root {cfg.data_dir}"
              + ("" if done else " (all requested datasets were already complete)"))
        return
    if sub == "rollouts":
        from dtune.data.sac import RolloutConfig, collect_rollouts

        cfg = _parse(RolloutConfig, argv[1:], "dtune data rollouts")
        t0 = time.perf_counter()
        done = collect_rollouts(cfg)
        for s in done:
            print(f"{s['task']}: {s['steps']} steps, {s['episodes']} episodes, mean return {s['stats']['return_mean']:.1f}")
        print(f"rollouts of {len(done)} task(s) in {time.perf_counter() - t0:.0f}s, data root {cfg.data_dir}"
              + ("" if done else " (all requested datasets were already complete)"))
        return
    if sub == "import":
        from dtune.data.importer import import_minari

        a = _parse(DataImportArgs, argv[1:], "dtune data import")
        path = import_minari(a.dataset, a.task, a.source, a.data_dir, a.overwrite)
        meta = read_metadata(path.parents[3], a.task, a.source)["dtune"]
        st = meta.get("stats", {})
        print(f"imported {a.dataset} as {dataset_id(a.task, a.source)} ({path}): {st.get('episodes')} episodes, "
              f"{st.get('steps')} steps, mean return {st.get('return_mean', float('nan')):.2f}")
        return
    if sub == "report":
        from dtune.report.data import data_report

        a = _parse(DataReportArgs, argv[1:], "dtune data report")
        print(data_report(a.tasks, a.source, a.data_dir, a.out))
        if a.out:
            print(f"\nwrote {a.out}/datasets.md, datasets.json, learning_curves.png")
        return
    if sub == "list":
        root = data_root(_parse(DataListArgs, argv[1:], "dtune data list").data_dir)
        found = list_datasets(root)
        if not found:
            print(f"no datasets under {root}; collect some with `dtune data collect`")
            return
        rows, notes = [], []
        for task, source in found:
            meta = read_metadata(root, task, source)
            d = meta["dtune"]
            st = d.get("stats", {})
            rows.append([dataset_id(task, source), st.get("episodes"), st.get("steps"), st.get("return_mean"),
                         st.get("return_max"), d.get("ref_min_score"),
                         st.get("success_rate") if _has_success(task) else "-"])
            if d.get("sac_learned") is False:
                notes.append(f"{task}: SAC did not learn (its last tenth of episodes is no better than random)")
            elif d.get("ref_min_score") is not None and abs(d["ref_min_score"] - (d.get("ref_max_score") or 0)) < 1e-6:
                notes.append(f"{task} ({source}): random reference = data mean, so its normalised score is undefined")
        print(markdown_table(["dataset", "episodes", "steps", "return mean (= ref max)", "return max",
                              "random ref (= ref min)", "success"], rows))
        if any(r[-1] == "-" for r in rows):
            print("\nsuccess -: the task has no success signal (it is scored by normalised return)")
        if notes:
            print("\n" + "\n".join(notes))
        return
    import json

    import numpy as np

    args = _parse(DataShowArgs, argv[1:], "dtune data show")
    root = data_root(args.data_dir)
    parts = args.id.split("/")
    if len(parts) >= 4:  # dtune/<suite>/<task>/<source>-v0
        task, source = parts[2], parts[3].rsplit("-v", 1)[0]
    elif len(parts) == 3:  # dtune 0.1 ids: dtune/<suite>/<task>-v0
        task, source = parts[2].rsplit("-v", 1)[0], args.source
    else:
        task, source = args.id, args.source
    get_task(task)  # unknown names fail here, with suggestions
    source = resolve_sources(root, [task], source)[task]
    meta = read_metadata(root, task, source)
    ep = read_episodes(root, task, source)
    print(f"{dataset_id(task, source)}  ({dataset_dir(root, task, source)})")
    settings = {k: v for k, v in meta["dtune"].items() if k not in ("stats", "noise_schedule")}
    print("settings: " + json.dumps(settings))
    print(markdown_table(["statistic", "value"], [[k, v] for k, v in episode_stats(ep).items()]))
    q = np.quantile(episode_returns(ep["rewards"], ep["lengths"]), [0.0, 0.25, 0.5, 0.75, 1.0])
    print("return quantiles (0, 25, 50, 75, 100%): " + ", ".join(f"{v:.1f}" for v in q))


# -- pre-training and evaluation ------------------------------------------------------------------
def _resume_default(cls, argv: list[str], section: str, kind: str):
    """With --resume: the run's saved config, so the options typed now override it."""
    if "--resume" not in argv or any(a in ("-h", "--help") for a in argv):
        return None
    out = _out_of(argv)
    if out is None:
        raise ValueError("--resume needs --out: the run folder to continue")
    from dtune.recipes.common import resume_config

    return resume_config(cls, out, section, kind)


def _pretrain(argv):
    from dtune.recipes.pretrain import PretrainConfig, pretrain

    cfg = _parse(PretrainConfig, argv, "dtune pretrain", _resume_default(PretrainConfig, argv, "train", "pretrain"))
    s = pretrain(cfg)
    if s.get("finished"):
        return
    print(f"\npre-trained {s['steps_this_session']} steps ({s['steps']} in all) in {s['wall_s']:.0f}s "
          f"({s['steps_per_s']:.1f} steps/s, {s['n_params']:,} parameters, {s['precision']} on {s['device']}).")
    print(f"model, config and logs in {s['out']}  (config.json, model.safetensors, metrics.csv)")
    print(f"next: dtune evaluate --checkpoint {s['out']}\n      dtune adapt --checkpoint {s['out']} --task TASK METHOD")


def _print_eval(result: dict):
    from dtune.report import eval_table, protocol_table

    if "protocol" in result:
        print(protocol_table(result["protocol"]))
        return
    print(eval_table(result))
    print(f"\n{result['env_steps']} env steps in {result['wall_s']:.1f}s ({result['env_steps_per_s']:.0f} steps/s)")


def _evaluate(argv):
    from dtune.recipes.evaluate import EvalConfig, evaluate

    cfg = _parse(EvalConfig, argv, "dtune evaluate")
    res = evaluate(cfg)
    _print_eval(res)
    if cfg.json:
        print(f"results in {cfg.json}")


# -- adaptation: the method is a subcommand -------------------------------------------------------
def _default(value):
    """A dataclass field defaulting to `value` (a list through a factory: mutable defaults are refused)."""
    return field(default_factory=functools.partial(list, value)) if isinstance(value, list) else field(default=value)


def _method_classes() -> dict[str, type]:
    """One options class per method and named variant (a variant's class has its defaults)."""
    from dtune import tuners

    out = {}
    for name in tuners.METHODS + list(tuners.PRESETS):
        method, over = tuners.resolve_method(name)
        base = tuners.REGISTRY[method].config_class
        types = {f.name: f.type for f in dataclasses.fields(base)}
        cls = dataclasses.make_dataclass(name, [(k, types[k], _default(v)) for k, v in over.items()], bases=(base,))
        doc = (base.__doc__ or "").strip().splitlines()[0]
        cls.__doc__ = doc + (f" Variant of {method}: " + ", ".join(f"{k}={v}" for k, v in over.items()) if over else "")
        out[name] = cls
    return out


def _command_class(config_cls, classes: dict[str, type]):
    union = Union[tuple(Annotated[c, tyro.conf.subcommand(n, default=c(), description=c.__doc__)]
                        for n, c in classes.items())]
    return dataclasses.make_dataclass(config_cls.__name__.replace("Config", "Command"),
                                      [("method", union, field(default_factory=classes["l2m"]))], bases=(config_cls,))


def _method_argv(argv: list[str], names: list[str]) -> list[str]:
    """`--method NAME` becomes the subcommand `NAME` (case-insensitive; unknown names fail
    with suggestions); a misspelt subcommand is caught the same way."""
    argv = list(argv)
    for i, a in enumerate(argv):
        if a == "--method" or a.startswith("--method="):
            name = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            argv[i: i + (1 if "=" in a else 2)] = [_method_name(name, names)]
            return argv
    return argv


def _method_name(name: str, names: list[str]) -> str:
    if name in names:
        return name
    lower = {n.lower(): n for n in names}
    if name.lower() in lower:
        return lower[name.lower()]
    close = difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown adaptation method {name!r}.{hint} Known: {', '.join(names)} "
                     "(`dtune adapt --list-methods` describes them)")


def _parse_tuning(argv: list[str], config_cls, kind: str):
    """`(config, method config)` of an adapt or continual command line; None after
    `--list-methods` (which prints them)."""
    from dtune.recipes.adapt import list_methods

    if "--list-methods" in argv:
        print(list_methods())
        return None
    from dtune import tuners

    classes = _method_classes()
    argv = _method_argv(argv, list(classes))
    flags = {f"--{p}{f.name.replace('_', '-')}" for c in (config_cls, *classes.values()) for f in dataclasses.fields(c)
             if f.type in (bool, "bool") for p in ("", "no-")}
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] not in classes and not (
            first > 0 and argv[first - 1].startswith("--") and "=" not in argv[first - 1] and argv[first - 1] not in flags):
        _method_name(argv[first], list(classes))  # a misspelt method: suggestions
    cmd = _command_class(config_cls, classes)
    default = None
    saved = _resume_default(config_cls, argv, kind, kind)
    if saved is not None:
        import json

        doc = json.loads((Path(saved.out) / "config.json").read_text())
        name = saved.method
        mcfg = tuners.config_from_dict(doc["method"], doc["method_config"])
        values = {f.name: getattr(saved, f.name) for f in dataclasses.fields(config_cls) if f.name != "method"}
        default = cmd(**values, method=classes[name](**dataclasses.asdict(mcfg)))
    parsed = _parse(cmd, argv, f"dtune {kind}", default)
    name = next(n for n, c in classes.items() if type(parsed.method) is c)
    method, _ = tuners.resolve_method(name)
    mcfg = tuners.REGISTRY[method].config_class(**dataclasses.asdict(parsed.method))
    values = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(config_cls) if f.name != "method"}
    return config_cls(**values, method=name), mcfg


def _adapt(argv):
    from dtune.recipes.adapt import AdaptConfig, adapt, result_table

    if (parsed := _parse_tuning(argv, AdaptConfig, "adapt")) is None:
        return
    cfg, mcfg = parsed
    result = adapt(cfg, mcfg)
    if "rank" in result:  # another rank of a distributed run: rank 0 reports
        return
    print(result_table([result]))
    print(f"\nadapter and results in {cfg.out}\nnext: dtune evaluate --adapter {cfg.out}")


def _continual(argv):
    from dtune.recipes.continual import ContinualConfig, continual
    from dtune.report.continual import summary_markdown

    if (parsed := _parse_tuning(argv, ContinualConfig, "continual")) is None:
        return
    cfg, mcfg = parsed
    summary = continual(cfg, mcfg)
    print(summary_markdown(summary))
    print(f"\nmatrix, metrics and plots in {cfg.out}")


@dataclass
class ReportArgs:
    """Put adaptation or continual runs side by side: Markdown table, and with --out also JSON,
    CSV and PNG plots."""

    runs: Annotated[tuple[str, ...], tyro.conf.Positional]
    """Run directories of `dtune adapt`, `dtune continual`, `dtune lamo` or `dtune baselines` (a pre-training
    run among them is skipped)."""
    out: str | None = None
    """Also write report.md/json, CSV and PNG plots into this directory."""
    reference: str | None = None
    """Single-task `dtune adapt` runs (searched recursively) for the forward transfer of continual runs."""
    pool_precision: bool = False
    """Give a method's runs one row whatever precision they trained in (bf16 autocast or fp32), with a note of
    which runs trained in which; by default each precision is a row of its own. Pool only where a control measured
    what the precision moves (results/lamo: its fp32 control)."""


def _lamo(argv):
    from dtune.recipes.lamo import LamoConfig, lamo

    cfg = _parse(LamoConfig, argv, "dtune lamo", _resume_default(LamoConfig, argv, "lamo", "lamo"))
    r = lamo(cfg)
    from dtune.report import protocol_table

    print(protocol_table(r["protocol"]))
    if r.get("perplexity_before") is not None:
        print(f"\nperplexity on held-out text: {r['perplexity_before']:.2f} before, {r['perplexity_after']:.2f} after")
    print(f"{r['method']} on {r['task']}: {r['steps']} updates in {r['train_s']:.0f}s; trains "
          f"{r['trainable']:,} parameters; results in {Path(cfg.out) / 'result.json'}")


def _lm(argv):
    if not argv or argv[0] != "pretrain":
        print("usage: dtune lm pretrain [OPTIONS]\n\n  pretrain  pre-train a GPT-2-shaped LM of dtune's backbone on a text "
              "corpus (Brown by default); `dtune lamo --lm RUN` starts from it",
              file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
        if argv[:1] in (["-h"], ["--help"]):
            return
        raise SystemExit(2)
    from dtune.recipes.lm import LMPretrainConfig, lm_pretrain

    argv = argv[1:]
    cfg = _parse(LMPretrainConfig, argv, "dtune lm pretrain", _resume_default(LMPretrainConfig, argv, "lm", "lm"))
    r = lm_pretrain(cfg)
    print(f"language model of {r['parameters']:,} parameters (vocabulary {r['vocab_size']:,}): {r['steps']} updates, "
          f"{r['epochs']:.1f} epochs of {r['train_tokens']:,} tokens in {r['train_s']:.0f}s")
    print(f"held-out perplexity: {r['perplexity_before']:.1f} before, {r['perplexity_after']:.1f} after")
    print(f"checkpoint: {r['model']} (use it with `dtune lamo --lm {Path(cfg.out)}`)")


def _export(argv):
    from dtune.recipes.export import ExportConfig, export

    cfg = _parse(ExportConfig, argv, "dtune export")
    c = export(cfg)
    e = c["exported"]
    print(f"{e['method']} adapter {e['adapter']} folded into {e['base_checkpoint']}: checkpoint in {cfg.out} "
          f"(tasks: {len(c['tasks'])}); use it with `dtune evaluate --checkpoint` or `dtune adapt --checkpoint`")


def _baselines(argv):
    from dtune.recipes.baselines import BaselineConfig, train_baseline

    cfg = _parse(BaselineConfig, argv, "dtune baselines")
    r = train_baseline(cfg)
    from dtune.report import eval_table

    print(eval_table(r["eval"]))
    print(f"\n{r['method']} on {r['task']} ({r['source']}, data ratio {r['data_ratio']}): {r['steps']} updates in "
          f"{r['train_s']:.0f}s; result in {Path(cfg.out) / 'result.json'}")


def _report(argv):
    from dtune.report.summary import report

    args = _parse(ReportArgs, argv, "dtune report")
    print(report(list(args.runs), args.out, args.reference, args.pool_precision))
    if args.out:
        print(f"\ntables, JSON, CSV and plots in {args.out}")


def _demo(argv):
    from dtune.recipes.demo import DemoConfig, demo

    cfg = _parse(DemoConfig, argv, "dtune demo")
    result = demo(cfg)
    _print_eval(result)
    print(f"\ndemo done in {result['demo_s']:.0f}s; results in {Path(cfg.out) / 'eval.json'}")


COMMANDS = {"tasks": _tasks, "data": _data, "pretrain": _pretrain, "evaluate": _evaluate, "adapt": _adapt,
            "continual": _continual, "lamo": _lamo, "lm": _lm, "export": _export, "baselines": _baselines, "report": _report, "demo": _demo}


def _main(argv: list[str] | None) -> int:
    import warnings

    from dtune.data.storage import DatasetError
    from dtune.models.io import CheckpointError
    from dtune.tasks import UnknownTaskError
    from dtune.train.engine import Interrupted, NonFiniteLoss, StateError
    from dtune.tuners import AdapterError

    warnings.filterwarnings("ignore", module="metaworld")
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("RANK", "0") != "0":  # under torchrun: rank 0 speaks for the run
        sys.stdout = open(os.devnull, "w")
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: dtune [--version] COMMAND ...\n\n{__doc__.strip()}")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"dtune {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        print(f"dtune: error: unknown command {argv[0]!r}.{hint} Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        COMMANDS[argv[0]](argv[1:])
    except (DatasetError, CheckpointError, AdapterError, UnknownTaskError, StateError, ValueError, FileNotFoundError,
            ModuleNotFoundError) as e:
        print(f"dtune: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"dtune: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"\ndtune: {e.message}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ndtune: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (2: bad input, with a message on stderr; 130: interrupted;
    141: stdout's reader left, as in `dtune lamo --help | head`, quietly, as other Unix tools)."""
    try:
        try:
            return _main(argv)
        finally:  # here, so that a closed pipe surfaces in this try and not in the interpreter's exit
            sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush must not raise again
        return 141  # 128 + SIGPIPE: what the shell reports for a tool its closed pipe stopped


if __name__ == "__main__":
    sys.exit(main())
