"""`dtune report`: several adaptation, continual or offline-RL runs side by side (tables, JSON,
CSV, PNG).

Run directories are recognised by their files: ``result.json`` (``dtune adapt``, or of kind
``lamo``/``baseline``: ``dtune lamo`` and ``dtune baselines``) or ``metrics.json`` with a score
matrix (``dtune continual``). Runs of one method (several seeds,
or several tasks for single-task adaptation) are aggregated: mean and spread (standard deviation
over seeds; min..max band in the plot).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

from dtune.report import markdown_table
from dtune.report.continual import reference_scores, run_base_digest
from dtune.report.published import (LAMO_LINEAR_EMBEDDINGS, PUBLISHED_METHODS, SOURCES, ordering_agreement,
                                    published_method, published_scores)
from dtune.train.optim import ADAM_BETAS, ADAM_EPS


def method_label(method: str, method_config: dict | None) -> str:
    """`method` (a method or preset name) plus the options a run set away from that name's defaults,
    e.g. `l2m-gauss (density_reject=0.001)`: runs of one method with other options are other rows of
    the report, not more seeds of it. Options a run's config lacks (older dtune) are not compared; a
    module list left at its default (None: the backbone family's own) is not shown, one the run set is."""
    from dtune import tuners

    if not method_config:
        return method
    try:
        default = json.loads(json.dumps(dataclasses.asdict(tuners.make_config(method)), default=str))
    except (KeyError, ValueError, TypeError):  # a method this dtune does not know
        return method
    ran = json.loads(json.dumps(method_config, default=str))
    diffs = [f"{k}={ran[k]}" for k in sorted(ran) if k in default and ran[k] != default[k]]
    return f"{method} ({', '.join(diffs)})" if diffs else method


def _labelled(r: dict, run_dir: Path) -> dict:
    """The run with its report label as `method` (:func:`method_label`), the method's own name as
    `method_name`, and its seed (an adaptation run's is in its config)."""
    cfg = run_dir / "config.json"
    doc = json.loads(cfg.read_text()) if cfg.exists() else {}
    label = method_label(r["method"], doc.get("method_config"))
    seed = r.get("seed", (doc.get("adapt") or {}).get("seed"))
    return {**r, "method": label, "method_name": r["method"], "seed": seed}


def _budget(r: dict) -> str:
    """A run's update budget, as a label suffix: `4000 updates/task` (continual) or `500 updates`."""
    if "steps_per_task" in r:
        return f"{r['steps_per_task']} updates/task"
    return f"{r.get('steps')} updates"


def _config(run_dir) -> dict:
    """A run's `config.json` ({} where it kept none)."""
    f = Path(run_dir) / "config.json"
    return json.loads(f.read_text()) if f.exists() else {}


def _optimiser(r: dict) -> str:
    """A `dtune lamo` run's AdamW settings, as a label suffix (configs written before the options
    existed ran with the defaults); empty for other runs."""
    if r.get("kind") != "lamo":
        return ""
    c = _config(r["dir"]).get("lamo", {})
    return (f"AdamW ({c.get('adam_beta1', ADAM_BETAS[0]):g}, {c.get('adam_beta2', ADAM_BETAS[1]):g}), "
            f"eps {c.get('adam_epsilon', ADAM_EPS):g}")


def _precision(r: dict) -> str:
    """The precision a run trained in (`bf16`, `fp32`, `bf16 then fp32`: `--precision auto` resolves per
    machine), as a label suffix; `precision not recorded` for runs that kept none (d3rlpy's baselines)."""
    if r.get("precision"):
        return r["precision"]
    return (_config(r["dir"]).get("resolved") or {}).get("precision") or "precision not recorded"


def _separate(runs: list[dict], key: str, where, settings) -> None:
    """Runs of one row label but other settings (`settings`: functions of a run, e.g. its budget, precision or
    optimiser) become rows of their own, labelled with what differs (`label [budget]`); two runs
    of one row with the same seed (and task or dataset, `where`) are refused: a seed counted twice."""
    found: dict[str, list[set]] = {}
    for r in runs:
        r["_settings"] = [f(r) for f in settings]
        for seen, v in zip(found.setdefault(r[key], [set() for _ in settings]), r["_settings"]):
            seen.add(v)
    for r in runs:
        differ = [v for seen, v in zip(found[r[key]], r.pop("_settings")) if len(seen) > 1]
        if differ:
            r[key] = f"{r[key]} [{', '.join(differ)}]"
    seen: dict[tuple, str] = {}
    for r in runs:
        k = (r[key], where(r), r.get("seed"))
        if r.get("seed") is not None and k in seen:
            raise ValueError(f"{seen[k]} and {r['dir']} are both seed {r['seed']} of {r[key]} ({where(r) or 'the same tasks'}): "
                             "give each run once (a seed counted twice would narrow the intervals)")
        seen[k] = r["dir"]


def _pretrain_domains(p: Path, metrics: dict | None = None) -> dict:
    """Per-domain pre-training scores of a run (:func:`dtune.report.metrics.domain_scores`), before and
    after adaptation (a continual run, given its `metrics`: after its last pre-training evaluation),
    from the evaluations it kept (a run made before 2026-12-06 may have no "before")."""
    from dtune.report.metrics import domain_scores

    if metrics is not None:
        rows, tasks = metrics.get("pretrain_rows") or [], metrics.get("tasks") or []
        i = rows[-1]["after"] if rows else None
        before = p / "evals" / "pretrain_before.json"
        after = p / "evals" / f"pretrain_after_{i:02d}_{tasks[i]}.json" if i is not None and i < len(tasks) else None
    else:
        before, after = p / "eval_pretrain_before.json", p / "eval_pretrain.json"
    return {k: domain_scores(json.loads(f.read_text())) if f is not None and f.exists() else None
            for k, f in (("before", before), ("after", after))}


def _domain_stats(rs: list[dict]) -> dict:
    """Mean over runs of each domain's pre-training score after adaptation, and before it over the
    runs that kept both evaluations (`runs` / `runs_before`: how many); empty for one domain."""
    pd = [r.get("pretrain_domains") or {} for r in rs]
    doms = sorted({d for p in pd for k in ("before", "after") for d in p.get(k) or {}})
    if len(doms) < 2:
        return {}
    after, paired = [p["after"] for p in pd if p.get("after")], [p["before"] for p in pd if p.get("after") and p.get("before")]
    return {"after": {d: _stats([a.get(d) for a in after])[0] for d in doms},
            "before": {d: _stats([b.get(d) for b in paired])[0] for d in doms}, "runs": len(after), "runs_before": len(paired)}


def _fmt_domains(stats: dict) -> str:
    if not stats or not stats["runs"]:
        return "n/a"
    part = f", {stats['runs_before']} of {stats['runs']} runs" if stats["runs_before"] < stats["runs"] else ""
    return "; ".join(f"{d} {_pm(a, None)}" + (f" (from {_pm(stats['before'][d], None)}{part})"
                                               if stats["before"].get(d) is not None else "")
                     for d, a in stats["after"].items())


def _domain_note(after: str) -> str:
    return (f"\"pre-train after by domain\": the mean pre-training score of each domain (e.g. Meta-World success, DMC "
            f"normalised score) {after}, and before adaptation in brackets (\"k of n runs\": the runs that kept that "
            "evaluation), over the tasks whose score is defined and whose data came from an agent that learned them; "
            "the \"pre-train after %\" column averages every scored task of all domains together.")


def _precision_mix(runs: list[dict], key: str, where) -> list[str]:
    """Notes on the rows (`key`) whose runs trained in more than one precision: per precision, the datasets or
    tasks (`where`) and the number of runs (`--pool-precision` pools them into one row)."""
    mix: dict[str, dict[str, dict[str, int]]] = {}
    for r in runs:
        w = where(r)
        w = " ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in w) if isinstance(w, tuple) else str(w)
        cell = mix.setdefault(r[key], {}).setdefault(_precision(r), {})
        cell[w] = cell.get(w, 0) + 1
    return [f"{label} pools precisions (--pool-precision): " + "; ".join(
                f"{prec} on {', '.join(sorted(cells))} ({sum(cells.values())} run{'s' * (sum(cells.values()) > 1)})"
                for prec, cells in sorted(by.items()))
            for label, by in mix.items() if len(by) > 1]


def _load(dirs: list[str], pool_precision: bool = False) -> tuple[list[dict], list[dict], list[dict], list[str]]:
    """Adaptation runs, continual runs, offline-RL runs (`dtune lamo`, `dtune baselines`), and
    notes on the arguments skipped (duplicates, runs of other kinds). A folder given twice, under
    any spelling, counts once. Runs of one row at other budgets or precisions become rows of their own;
    ``pool_precision`` keeps one row over precisions (with a note of which runs trained in which)."""
    from dtune.runtime.runs import run_kind

    adapt, cont, offline, notes, seen = [], [], [], [], set()
    for d in dirs:
        p = Path(d)
        real = p.resolve()
        if real in seen:
            notes.append(f"ignored {d}: the same run was given before")
            continue
        seen.add(real)
        if (p / "metrics.json").exists() and "matrix" in (m := json.loads((p / "metrics.json").read_text())):
            cont.append({**_labelled(m, p), "dir": str(p), "base_digest": m.get("base_digest") or run_base_digest(p),
                         "pretrain_domains": _pretrain_domains(p, m)})
        elif (p / "result.json").exists():
            r = json.loads((p / "result.json").read_text())
            if r.get("kind") in OFFLINE_KINDS:
                cut = r.get("replay_from") or 0.0  # a replay buffer's later part is another dataset: its own rows,
                source = f"{r.get('source')} from {cut:g}" if cut else r.get("source")  # no published scores
                offline.append({**r, "source": source, "dir": str(p), "label": offline_label(r, p)})
                continue
            if r.get("kind", "adapt") != "adapt":
                notes.append(f"skipped {d}: a {r['kind']} run, not an adaptation, continual or offline-RL run")
                continue
            adapt.append({**_labelled(r, p), "dir": str(p), "base_digest": r.get("base_digest") or run_base_digest(p),
                          "pretrain_domains": _pretrain_domains(p)})
        else:
            kind = run_kind(p)
            why = {"pretrain": "a pre-training run", "continual": "an unfinished continual run",
                   "adapt": "an unfinished adaptation run", "demo": "a demo folder", "lm": "a language-model run",
                   "lamo": "an unfinished lamo run", "baseline": "an unfinished baseline run"}.get(kind, "not a run folder")
            notes.append(f"skipped {d}: {why}, not a finished run to report")
    if not adapt and not cont and not offline:
        raise ValueError("no finished `dtune adapt`, `dtune continual`, `dtune lamo` or `dtune baselines` run among the "
                         "arguments (" + "; ".join(notes) + ")")
    kinds = [(adapt, "method", lambda r: r["task"], (_budget,)),
             (cont, "method", lambda r: ",".join(r["tasks"]), (_budget,)),
             (offline, "label", lambda r: (r["task"], r.get("source"), r.get("data_ratio", 1.0)), (_budget, _optimiser))]
    for runs, key, where, settings in kinds:
        if pool_precision:
            notes += _precision_mix(runs, key, where)
        _separate(runs, key, where, settings if pool_precision else settings + (_precision,))
    return adapt, cont, offline, notes


def _stats(vals) -> tuple[float | None, float | None]:
    v = np.array([x for x in vals if x is not None], dtype=float)
    if not v.size:
        return None, None
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0  # the sample sd over the runs


def _scored(vals, unit: str = "runs") -> str:
    """" (k of n runs)" where some of `vals` are None (a score undefined, e.g. a DMC task whose data
    did not learn): the cell's figure is over the k defined ones. "" when all (or none: n/a) are."""
    vals = list(vals)
    k = sum(v is not None for v in vals)
    return f" ({k} of {len(vals)} {unit})" if 0 < k < len(vals) else ""


def _pm(mean, std, pct=True) -> str:
    if mean is None:
        return "n/a"
    if pct:
        return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std else "")
    return f"{mean:.3g}" + (f" ± {std:.2g}" if std else "")


def _ci(per_task: dict[str, list], aggregate: str) -> list | None:
    """`[point, low, high]` of rliable's stratified bootstrap (95%), or None."""
    from dtune.report.metrics import stratified_bootstrap

    r = stratified_bootstrap(per_task, aggregate)
    if r is None:
        return None
    if all(len([v for v in vals if v is not None]) < 2 for vals in per_task.values()):
        return [r[0], None, None]  # one run per task: resampling within tasks has nothing to vary
    return list(r)


def _fmt_ci(ci) -> str:
    if ci is None:
        return "n/a"
    if ci[1] is None:
        return f"{100 * ci[0]:.1f} (one seed: no interval)"
    return f"{100 * ci[0]:.1f} [{100 * ci[1]:.1f}, {100 * ci[2]:.1f}]"


def _order(methods: list[str]) -> list[str]:
    from dtune import tuners

    known = tuners.METHODS + list(tuners.PRESETS)
    return sorted(methods, key=lambda m: (known.index(m) if m in known else len(known), m))


def adapt_summary(runs: list[dict]) -> tuple[str, list[dict]]:
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    tasks = sorted({r["task"] for r in runs})
    domains = bool(_domain_stats(runs))  # pre-training tasks of several domains: a column per-domain
    rows, table = [], []
    for m in _order(list(by_method)):
        rs = by_method[m]
        by_task: dict[str, list] = {}
        for r in rs:  # several seeds of a task: their mean
            by_task.setdefault(r["task"], []).append(r.get("new_task_score"))
        per_task = {t: _stats(v)[0] for t, v in by_task.items()}
        by_task_retention = {t: [r.get("retention") for r in rs if r["task"] == t] for t in by_task}
        row = {"method": m, "runs": len(rs), "seeds": sorted({r.get("seed") for r in rs if r.get("seed") is not None}),
               "new_task": _stats(list(per_task.values())),  # over tasks, each the mean of its seeds
               "pretrain_after": _stats([r.get("pretrain_after") for r in rs]),
               "pretrain_before": _stats([r.get("pretrain_before") for r in rs]),
               "retention": _stats([r.get("retention") for r in rs]),
               "trainable_pct": rs[0]["trainable_pct"], "per_task_pct": rs[0]["per_task_pct"],
               "train_s": _stats([r["train_s"] for r in rs]), "per_task_scores": per_task,
               "new_task_iqm_ci": _ci(by_task, "iqm"),
               "retention_iqm_ci": _ci(by_task_retention, "iqm"),
               "retention_ci": _ci(by_task_retention, "mean"),
               "new_task_ci": _ci(by_task, "mean"),
               "pretrain_after_ci": _ci({t: [r.get("pretrain_after") for r in rs if r["task"] == t] for t in by_task},
                                        "mean"),
               "pretrain_by_domain": _domain_stats(rs)}
        rows.append(row)
        table.append([m, len(row["seeds"]) or "-"] +
                     [_pm(per_task.get(t), None) + _scored(by_task.get(t, [])) for t in tasks] +
                     [_pm(*row["new_task"]) + _scored(per_task.values(), "tasks"), _fmt_ci(row["new_task_ci"]),
                      _fmt_ci(row["new_task_iqm_ci"]),
                      _pm(*row["pretrain_after"]) + _scored(r.get("pretrain_after") for r in rs),
                      _pm(*row["retention"]) + _scored(r.get("retention") for r in rs), _fmt_ci(row["retention_ci"])] +
                     ([_fmt_domains(row["pretrain_by_domain"])] if domains else []) +
                     [f"{row['trainable_pct']:.2f}", f"{row['per_task_pct']:.2f}", f"{row['train_s'][0]:.0f}"])
    headers = (["method", "seeds"] + [f"{t.removesuffix('-v3')} %" for t in tasks] +
               ["new task % (mean ± sd over tasks)", "new task mean [95% CI]", "new task IQM [95% CI]",
                "pre-train after %", "retention %", "retention mean [95% CI]"] +
               (["pre-train after by domain %"] if domains else []) +
               ["trains % of base", "one task trains % of base", "train s"])
    before = _stats([r.get("pretrain_before") for r in runs])[0]
    note = f"Pre-training score of the unadapted model: {_pm(before, None)}%." if before is not None else ""
    note += (" \"trains % of base\": parameters the method trains over the base model's (a pool method's whole "
             "pool, which can exceed 100%); \"one task trains\": what a single task adds. IQM [95% CI]: interquartile "
             "mean over tasks x seeds with rliable's stratified-bootstrap interval (seeds resampled within each task); "
             "mean [95% CI]: the mean's interval by the same bootstrap. Per task: the mean over its seeds; new task % "
             "(mean ± sd over tasks): over those per-task means (sample sd); pre-train after and retention: mean ± "
             "sample sd over every run (tasks x seeds), retention the mean of the runs' after / before ratios. A task "
             "a method has no run of is n/a, and the method's means are over its other tasks. \"(k of n runs)\": "
             "only k of the cell's runs have a defined score (see the runs' results for why), and the figure is "
             "over those." + (" " + _domain_note("after adaptation") if domains else ""))
    return markdown_table(headers, table) + ("\n\n" + note if note else ""), rows


def with_reference(run: dict, reference: str) -> dict:
    """The run's metrics recomputed with single-task results from ``reference`` (forward transfer)."""
    from dtune.report.metrics import as_matrix, cl_metrics

    ref = reference_scores(reference, run.get("method_name", run["method"]), run["tasks"], run.get("base_digest"))
    return {**run, **cl_metrics(as_matrix(run["matrix"]), ref, run.get("pretrain_before"), run.get("pretrain_after"))}


def continual_summary(runs: list[dict]) -> tuple[str, list[dict]]:
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    domains = bool(_domain_stats(runs))  # pre-training tasks of several domains: a column per-domain
    rows, table = [], []
    for m in _order(list(by_method)):
        rs = by_method[m]
        row = {"method": m, "seeds": sorted(r["seed"] for r in rs), "sequence": rs[0]["sequence"],
               "steps_per_task": rs[0]["steps_per_task"],
               "average_score": _stats([r["average_score"] for r in rs]),
               "forgetting": _stats([r["forgetting"] for r in rs]),
               "forward_transfer": _stats([r.get("forward_transfer") for r in rs]),
               "pretrain_after": _stats([r.get("pretrain_after") for r in rs]),
               "retention": _stats([r.get("retention") for r in rs]),
               "trainable_pct": rs[0]["trainable_pct"], "per_task_pct": rs[0]["per_task_pct"],
               "pretrain_by_domain": _domain_stats(rs)}
        final = {t: [r["matrix"][-1][j] for r in rs] for j, t in enumerate(rs[0]["tasks"])}  # last row per seed
        row["average_score_ci"], row["iqm_ci"] = _ci(final, "mean"), _ci(final, "iqm")
        rows.append(row)
        cell = {k: _pm(*row[k]) + _scored(r.get(k) for r in rs)
                for k in ("average_score", "forgetting", "forward_transfer", "pretrain_after", "retention")}
        table.append([m, len(rs), cell["average_score"], _fmt_ci(row["average_score_ci"]), _fmt_ci(row["iqm_ci"]),
                      cell["forgetting"], cell["forward_transfer"],
                      cell["pretrain_after"], cell["retention"]] +
                     ([_fmt_domains(row["pretrain_by_domain"])] if domains else []) +
                     [f"{row['trainable_pct']:.2f}", f"{row['per_task_pct']:.2f}"])
    headers = (["method", "seeds", "average score %", "average [95% CI]", "IQM [95% CI]", "forgetting %",
                "forward transfer %", "pre-train after %", "retention %"] +
               (["pre-train after by domain %"] if domains else []) + ["trains % of base", "one task trains % of base"])
    note = ("± : the sample standard deviation over the seeds; retention: the mean of the seeds' after / before "
            "ratios. Intervals: rliable's stratified bootstrap over the final scores (tasks x seeds, seeds resampled "
            "within each task), 2,000 replicates, percentile 95%. Runs of one method at other budgets or precisions are rows "
            "of their own ([N updates/task], [fp32]; --pool-precision pools the precisions, with a note). \"(k of n runs)\": only k of the method's runs have that figure defined "
            "(e.g. forward transfer needs single-task references), and it is over those." +
            (" " + _domain_note("after the sequence's last task") if domains else ""))
    return markdown_table(headers, table) + "\n\n" + note, rows


def routing_section(routed: list[tuple[dict, list[str]]]) -> tuple[str, list[dict]]:
    """One row per run of a routing method (L2M, L2P): :func:`dtune.report.routing.routing_summary`
    of its final evaluation, and where its task x entry table and heatmap are."""
    from dtune.report.routing import read_routing, routing_summary

    rows, table = [], []
    order = _order(sorted({r["method"] for r, _ in routed}))
    for r, new in sorted(routed, key=lambda x: (order.index(x[0]["method"]), x[0].get("seed", 0), x[0]["dir"])):
        s = routing_summary(*read_routing(r["dir"]), new)
        rows.append({"method": r["method"], "seed": r.get("seed"), "dir": r["dir"], **s})
        table.append([r["method"], r.get("seed", "-"), ", ".join(t.removesuffix("-v3") for t in new) if len(new) == 1
                      else f"{len(new)} tasks", _pm(s["consistency"], None), _pm(s["separation"], None),
                      _pm(s["pretrain_on_new"], None), _pm(s["pretrain_no_mod"], None),
                      f"{r['dir']}/routing.md, .png"])
    note = ("consistency: mean share of a new task's steps that took its most chosen entry; separation: distinct "
            "top entries / new tasks (100 = no two tasks share an entry); pre-training on new entries: share of the "
            "pre-training tasks' steps that took a new task's entry (the forgetting a router causes); no modulation: "
            "share routed to L2M's pre-training keys.")
    return markdown_table(["method", "seed", "new task(s)", "consistency %", "separation %",
                           "pre-training on new entries %", "no modulation %", "task x entry table"], table) + \
        "\n\n" + note, rows


OFFLINE_KINDS = ("lamo", "baseline")
"""Kinds of `result.json` reported as offline-RL runs (a score per task, several seeds)."""


def offline_label(r: dict, run_dir: Path) -> str:
    """The row name of an offline-RL run: the algorithm (`bc`, `cql`, ..., `dt`) or, for LaMo,
    `lamo` with its ablations and the LM it started from (`lamo, random init [lm-brown]`). An ablation is a
    departure from LaMo's recipe for the run's task: on hopper LaMo used linear embeddings
    (:data:`LAMO_LINEAR_EMBEDDINGS`), so a hopper run with them is `lamo [LM]` and one with MLP embeddings
    is `lamo, MLP embeddings [LM]`."""
    if r.get("kind") != "lamo" or r.get("method") != "lamo":
        return r["method"]
    c = dict(r)
    if any(k not in c for k in ("pretrained", "lm_layers", "mlp_embeddings", "language_weight")):
        c = {**_config(run_dir).get("lamo", {}), **c}
    parts = ["lamo"]
    if c.get("pretrained") is False:
        parts.append("random init")
    if c.get("lm_layers"):
        parts.append(f"first {c['lm_layers']} blocks")
    if c.get("tuning") == "full":
        parts.append("full fine-tuning")
    recipe = c.get("task") not in LAMO_LINEAR_EMBEDDINGS  # LaMo's own embeddings for this task: MLP or linear
    if c.get("mlp_embeddings") is not None and c["mlp_embeddings"] != recipe:
        parts.append("MLP embeddings" if c["mlp_embeddings"] else "linear embeddings")
    if c.get("language_weight") == 0:
        parts.append("no language loss")
    lm = Path(c["lm"]).name if c.get("lm") else "?"
    return ", ".join(parts) + f" [{lm}]"


def _perplexity(row: dict) -> str:
    """The LM's held-out perplexity before -> after RL training (mean ± sd over the runs that measured it;
    LaMo's claim that the language ability is kept), or "" where none did."""
    (b, bsd), (a, sd) = row["perplexity"]
    if a is None:
        return ""

    def pm(mean, sd):
        return f"{mean:.1f}" + (f" ± {sd:.1f}" if round(sd or 0.0, 1) else "")

    return ("" if b is None else pm(b, bsd) + " -> ") + pm(a, sd) + row["perplexity_runs"]


def _offline_order(labels: list[str]) -> list[str]:
    first = PUBLISHED_METHODS
    return sorted(labels, key=lambda m: (first.index(m) if m in first else len(first), m))


def offline_summary(runs: list[dict]) -> tuple[str, list[dict], list[dict], list[dict]]:
    """Offline-RL runs: per dataset (task, source, data ratio) and method, the score over seeds
    (mean ± sd) at the standard target and, for return-conditioned models, the best over the
    protocol's targets, beside the published scores of the method on D4RL's dataset of that name
    (and, where LaMo runs measured it, the LM's held-out perplexity before -> after RL training);
    then per method and data ratio over datasets (task and source): the mean of the dataset means
    and the IQM over every run (datasets x seeds), rliable's aggregate; then, per dataset, how the
    methods' ordering agrees with each publication's. Returns the text, the rows, the orderings and
    LaMo's paired differences (:func:`lamo_gaps`)."""
    from dtune.report.metrics import iqm

    def std(r):
        return r["score"] if r["kind"] == "baseline" else r.get("score_standard")

    def best(r):
        return r["score"] if r["kind"] == "baseline" else r.get("score_best")

    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["task"], r.get("source"), r.get("data_ratio", 1.0), r["label"]), []).append(r)
    order = _offline_order(sorted({r["label"] for r in runs}))
    rows, table = [], []
    for key in sorted(groups, key=lambda k: (k[0], str(k[1]), k[2], order.index(k[3]))):
        rs = groups[key]
        row = {"task": key[0], "source": key[1], "data_ratio": key[2], "method": key[3],
               "seeds": sorted(r.get("seed") for r in rs), "standard": _stats([std(r) for r in rs]),
               "best": _stats([best(r) for r in rs]), "train_s": _stats([r.get("train_s") for r in rs]),
               "per_seed": {r.get("seed"): std(r) for r in rs if std(r) is not None},
               "perplexity": [_stats([r.get(f"perplexity_{w}") for r in rs]) for w in ("before", "after")],
               "perplexity_runs": _scored([r.get("perplexity_after") for r in rs])}
        rows.append(row)
        method = published_method(key[3])
        row["published"] = published_scores(key[0], key[1], key[2], method) if method else {}
        conditioned = rs[0]["kind"] == "lamo"
        table.append([key[0], key[1], f"{key[2]:g}", key[3], len(rs), _pm(*row["standard"]),
                      _pm(*row["best"]) if conditioned else "(same)",
                      *(f"{row['published'][p]:.1f}" if p in row["published"] else "" for p in SOURCES),
                      "n/a" if row["train_s"][0] is None else f"{row['train_s'][0]:.0f}", _perplexity(row)])
    heads = ["task", "source", "data ratio", "method", "seeds", "score at standard target", "best over targets",
             *(f"{v} *" for v in SOURCES.values()), "train s", "LM perplexity, before -> after"]
    if not any(row["perplexity"][1][0] is not None for row in rows):  # no LaMo run measured one: no column
        heads, table = heads[:-1], [t[:-1] for t in table]
    per_dataset = markdown_table(heads, table)
    orderings_md, orderings = _offline_orderings(rows)
    agg: dict[tuple, list[dict]] = {}
    for r in runs:
        agg.setdefault((r["label"], r.get("data_ratio", 1.0)), []).append(r)
    summary_rows, table = [], []
    for label, ratio in sorted(agg, key=lambda k: (order.index(k[0]), k[1])):
        rs = agg[(label, ratio)]
        by_task: dict[str, list] = {}  # per dataset (task and source: hopper medium and medium-replay apart)
        for r in rs:
            by_task.setdefault(f"{r['task']} {r.get('source')}", []).append(std(r))
        means = [m for m in (_stats(v)[0] for v in by_task.values()) if m is not None]
        row = {"method": label, "data_ratio": ratio, "datasets": sorted(by_task), "runs": len(rs),
               "mean_of_datasets": float(np.mean(means)) if means else None, "iqm": iqm([std(r) for r in rs]),
               "iqm_best": iqm([best(r) for r in rs]), "iqm_ci": _ci(by_task, "iqm")}
        summary_rows.append(row)
        table.append([label, f"{ratio:g}", len(by_task), len(rs), _pm(row["mean_of_datasets"], None),
                      _fmt_ci(row["iqm_ci"]), _pm(row["iqm_best"], None) if rs[0]["kind"] == "lamo" else "(same)"])
    overall = markdown_table(["method", "data ratio", "datasets", "runs", "mean over datasets",
                              "IQM [95% CI] (datasets x seeds)", "IQM, best over targets"], table)
    note = ("Scores x100 (normalised: 100 = the task's expert reference; success tasks: % of episodes). "
            "\"standard target\": the score at the suite's standard target return; \"best over targets\": the best of "
            "the protocol's targets, chosen on the evaluation episodes themselves, as the LaMo code reports it "
            "(optimistic). Baselines are not return-conditioned: one score. * Published scores on D4RL's own "
            "datasets (dtune.report.published), beside runs on whatever data these runs used: compare orderings, "
            "not values. Runs of one method at other budgets, AdamW settings or precisions are rows of their own ([...]; "
            "--pool-precision pools the precisions, with a note).")
    parts = [per_dataset, overall, note]
    if orderings_md:
        parts += ["Method orderings against the publications, per dataset (scores at the standard target; a pair "
                  "is not separated when our means differ by no more than the larger sd over seeds):", orderings_md]
    gaps_md, gaps = lamo_gaps(rows)
    if gaps_md:
        parts += ["LaMo's claims, as differences of normalised scores (x100, at the standard target): per dataset the "
                  "difference of the two methods' means over seeds, then the mean over the datasets both were run on; "
                  "beside it, the mean of the differences paired by seed (seed s of both methods: the same data subset "
                  "and evaluation episodes; seeds without a partner left out) with a 95% interval, a stratified "
                  "bootstrap that resamples the pairs within each dataset. "
                  "The LaMo paper's difference is over the same datasets, where it published both methods on all of "
                  "them; where it published only some (e.g. no reacher2d at 0.005), a row \"..., the paper's datasets\" "
                  "repeats the claim over those, beside the paper's figure.", gaps_md]
    return "\n\n".join(parts), rows + [{"aggregate": True, **r} for r in summary_rows], orderings, gaps


def offline_curves(runs: list[dict]) -> tuple[str, list[dict]]:
    """Learning curves of the `dtune lamo` runs that logged one (`--eval-every`): per dataset, the score
    at the standard target after each number of updates, mean ± sd over the runs (seeds) of each method
    that were evaluated there. Returns the text (one table per dataset: rows updates, columns methods)
    and the rows (dataset, method, step, mean, sd, runs: how many had a defined score, seeds: those evaluated)."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in runs:
        if r.get("curve"):
            groups.setdefault((r["task"], r.get("source"), r.get("data_ratio", 1.0)), {}).setdefault(r["label"], []).append(r)
    parts, rows = [], []
    for key in sorted(groups, key=lambda k: (k[0], str(k[1]), k[2])):
        methods = _offline_order(list(groups[key]))
        cells: dict[tuple[str, int], list[float | None]] = {}
        seeds: dict[tuple[str, int], list] = {}
        for m in methods:
            for r in groups[key][m]:
                for point in r["curve"]:
                    cells.setdefault((m, point["step"]), []).append(point.get("score_standard"))
                    seeds.setdefault((m, point["step"]), []).append(r.get("seed"))
        steps = sorted({step for _, step in cells})
        table = []
        for step in steps:
            line = [f"{step:,}"]
            for m in methods:
                vals = cells.get((m, step))
                if vals is None:
                    line.append("")
                    continue
                mean, sd = _stats(vals)
                defined = sum(v is not None for v in vals)
                rows.append({"task": key[0], "source": key[1], "data_ratio": key[2], "method": m, "step": step,
                             "mean": mean, "sd": sd, "runs": defined, "seeds": sorted(seeds[(m, step)])})
                line.append(_pm(mean, sd) + f" ({defined})")
            table.append(line)
        parts += [f"{key[0]} {key[1]}, data ratio {key[2]:g}:", markdown_table(["updates", *methods], table)]
    if not parts:
        return "", []
    note = ("Learning curves (runs with `--eval-every`): the score at the standard target after that many updates, "
            "mean ± sd over the runs evaluated there whose score is defined (their number in brackets); each run's "
            "last point is its final evaluation. Evaluating during training leaves the training unchanged (the same "
            "weights).")
    return "\n\n".join([note, *parts]), rows


LOW_DATA = (0.005, 0.01)
"""The data ratios of LaMo's headline claim (LaMo beats DT at 0.5% and 1% of the data), pooled in one row."""


def lamo_gaps(rows: list[dict]) -> tuple[str, list[dict]]:
    """LaMo's claims as paired differences per data ratio (and pooled over :data:`LOW_DATA` where a pair
    of methods was run at more than one of them; each also over the datasets with a published difference, where
    the paper published only some of them): `lamo [LM]`
    against the classic `dt` and against `lamo, random init [LM]`, and each other ablation of that LM against
    `lamo [LM]`. `rows` are :func:`offline_summary`'s per-dataset rows. Returns the text and the rows."""
    from dtune.report.metrics import stratified_bootstrap

    means = {(r["task"], r["source"], r["data_ratio"], r["method"]): r["standard"][0] for r in rows
             if r["standard"][0] is not None}
    per_seed = {(r["task"], r["source"], r["data_ratio"], r["method"]): r.get("per_seed", {}) for r in rows}
    labels = sorted({k[3] for k in means})
    pairs = []
    for a in labels:
        if not (a.startswith("lamo [") and a.endswith("]")):
            continue
        lm = a[len("lamo "):]
        pairs += [(a, "dt")] if "dt" in labels else []
        pairs += [(b, a) if b != f"lamo, random init {lm}" else (a, b) for b in labels
                  if b.startswith("lamo, ") and b.endswith(lm)]
    out, table = [], []
    ratios = sorted({k[2] for k in means})
    groups = [((x,), f"{x:g}") for x in ratios]
    if all(x in ratios for x in LOW_DATA):
        groups.append((LOW_DATA, " and ".join(f"{x:g}" for x in LOW_DATA)))

    def paper_gap(k, a, b):  # the LaMo paper's a - b on dataset k, or None where it did not publish both
        pa, pb = published_method(a), published_method(b)
        x = published_scores(*k, pa).get("lamo") if pa else None
        y = published_scores(*k, pb).get("lamo") if pb else None
        return None if x is None or y is None else x - y

    def claim(a, b, name, keys):
        diffs = [100 * (means[(*k, a)] - means[(*k, b)]) for k in keys]
        paired = {k: [100 * (per_seed[(*k, a)][s] - per_seed[(*k, b)][s])
                      for s in sorted(set(per_seed[(*k, a)]) & set(per_seed[(*k, b)]), key=str)] for k in keys}
        ci = (stratified_bootstrap({" ".join(map(str, k)): v for k, v in paired.items()}, "mean")
              if any(len(v) > 1 for v in paired.values()) else None)
        n_pairs = sum(len(v) for v in paired.values())
        single = float(np.mean([x for v in paired.values() for x in v])) if n_pairs and ci is None else None
        paper = [paper_gap(k, a, b) for k in keys]
        theirs = float(np.mean(paper)) if all(v is not None for v in paper) else None
        row = {"method": a, "against": b, "data_ratio": name, "datasets": [" ".join(map(str, k)) for k in keys],
               "difference": float(np.mean(diffs)), "per_dataset": diffs,
               "paired_seeds": n_pairs, "paired_difference": single if ci is None else ci[0],
               "ci": None if ci is None else list(ci[1:]),
               "better_on": sum(d > 0 for d in diffs), "paper_difference": theirs}
        out.append(row)
        if ci is not None:
            paired_md = f"{ci[0]:+.1f} [{ci[1]:+.1f}, {ci[2]:+.1f}] ({n_pairs} pairs)"
        elif single is not None:
            paired_md = f"{single:+.1f} ({n_pairs} pair{'s' * (n_pairs != 1)}, one a dataset: no interval)"
        else:
            paired_md = "(no seed in common)"
        table.append([a, b, name, len(keys), f"{row['difference']:+.1f}", paired_md,
                      f"{row['better_on']} of {len(keys)}",
                      ", ".join(f"{k[0]} {k[2]:g}: {d:+.1f}" for k, d in zip(keys, diffs)),
                      "" if theirs is None else f"{theirs:+.1f}"])

    for a, b in pairs:
        for group, name in groups:
            keys = sorted({k[:3] for k in means if k[2] in group and (*k[:3], a) in means and (*k[:3], b) in means})
            if not keys or (len(group) > 1 and len({k[2] for k in keys}) < 2):
                continue  # nothing to compare, or a pooled row that would repeat one ratio's row
            claim(a, b, name, keys)
            # where the paper published only some of these datasets: the same claim over those, beside its figure
            published = [k for k in keys if paper_gap(k, a, b) is not None]
            if published and len(published) < len(keys) and (len(group) == 1 or len({k[2] for k in published}) > 1):
                claim(a, b, f"{name}, the paper's datasets", published)
    if not table:
        return "", []
    return markdown_table(["method", "against", "data ratio", "datasets", "mean difference", "paired by seed [95% CI]", "better on",
                           "per dataset", "LaMo paper's difference"], table), out


def _offline_orderings(rows: list[dict]) -> tuple[str, list[dict]]:
    """Per dataset and publication, the method pairs ordered as published, the other way, or not
    separated (:func:`dtune.report.published.ordering_agreement`)."""
    by_dataset: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["published"]:
            by_dataset.setdefault((r["task"], r["source"], r["data_ratio"]), []).append(r)
    table, out = [], []
    for key, rs in by_dataset.items():
        for pub in SOURCES:
            theirs, ours, spread = {}, {}, {}
            for r in rs:
                if pub not in r["published"] or r["standard"][0] is None:
                    continue
                m = published_method(r["method"])
                theirs[m], ours[m], spread[m] = r["published"][pub], 100 * r["standard"][0], 100 * (r["standard"][1] or 0.0)
            if len(ours) < 2:
                continue
            a = ordering_agreement(ours, theirs, spread)
            out.append({"task": key[0], "source": key[1], "data_ratio": key[2], "publication": pub, **a})
            table.append([key[0], key[1], f"{key[2]:g}", SOURCES[pub].split(" (")[0], len(a["methods"]), len(a["agree"]),
                          len(a["disagree"]), len(a["ties"]),
                          ", ".join(f"{x} > {y}" for x, y in a["disagree"]) or "-"])
    if not table:
        return "", []
    return markdown_table(["task", "source", "data ratio", "publication", "methods", "pairs agree", "disagree",
                           "not separated", "ordered the other way here"], table), out


def report(dirs: list[str], out: str | None = None, reference: str | None = None, pool_precision: bool = False) -> str:
    """The Markdown report of ``dirs``; with ``out`` also JSON, CSV and PNG files there; with
    ``reference`` (single-task ``dtune adapt`` runs) continual runs get their forward transfer; with
    ``pool_precision`` runs of one method in bf16 and fp32 share a row (a note says which is which)."""
    from dtune.report.plots import plot_intervals, plot_methods_curve, plot_score_curves, plot_tradeoff

    if not dirs:
        raise ValueError("dtune report needs at least one run directory")
    adapt, cont, offline, notes = _load(dirs, pool_precision)
    if reference:
        cont = [with_reference(r, reference) for r in cont]
    parts, data = [f"Note: {n}." for n in notes] + ([""] if notes else []), {}
    outp = Path(out) if out else None
    if outp:
        outp.mkdir(parents=True, exist_ok=True)
    if adapt:
        text, rows = adapt_summary(adapt)
        parts += ["## Single-task adaptation", "", text]
        data["adapt"] = rows
        if outp:
            unadapted = (_stats([r.get("new_task_before") for r in adapt])[0], _stats([r.get("pretrain_before") for r in adapt])[0])
            unadapted = (unadapted[0], None if unadapted[1] is None else 1.0)  # retention of the unadapted model
            plot_tradeoff({r["method"]: (r["new_task"][0], r["retention"][0]) for r in rows},
                          outp / "adapt_tradeoff.png", unadapted=unadapted, ylabel="pre-training retention (after / before)",
                          title="new task vs pre-training retention (means; bars: 95% stratified-bootstrap CI of the mean"
                                + (", where a method has 2+ seeds)" if any(len(r["seeds"]) > 1 for r in rows) else
                                   "; one seed: none)"),
                          intervals={r["method"]: (r["new_task_ci"] and r["new_task_ci"][1:],
                                                   r["retention_ci"] and r["retention_ci"][1:]) for r in rows})
            plot_intervals({"new task, IQM": {r["method"]: r["new_task_iqm_ci"] for r in rows},
                            "pre-training retention, IQM": {r["method"]: r["retention_iqm_ci"] for r in rows}},
                           outp / "adapt_intervals.png", "95% stratified-bootstrap intervals (tasks x seeds)")
            _csv(outp / "adapt_runs.csv", [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in adapt])
    if cont:
        text, rows = continual_summary(cont)
        parts += ([""] if parts else []) + ["## Continual learning", "", text]
        data["continual"] = rows
        if outp:
            curves: dict[str, list] = {}
            for r in cont:
                curves.setdefault(r["method"], []).append(np.array([np.nan if v is None else v for v in r["average_so_far"]]))
            plot_methods_curve({m: curves[m] for m in _order(list(curves))}, cont[0]["tasks"], outp / "continual.png",
                               title=f"{cont[0]['sequence']}: average score of the tasks seen so far")
            plot_intervals({"average score": {r["method"]: r["average_score_ci"] for r in rows},
                            "IQM": {r["method"]: r["iqm_ci"] for r in rows}},
                           outp / "continual_intervals.png", "final scores: 95% stratified-bootstrap intervals (tasks x seeds)")
            _csv(outp / "continual_runs.csv", [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in cont])
    routed = [(r, new) for r, new in [(r, [r["task"]]) for r in adapt] + [(r, r["tasks"]) for r in cont]
              if (Path(r["dir"]) / "routing.json").exists()]
    if routed:
        text, rows = routing_section(routed)
        parts += ([""] if parts else []) + ["## Routing of the pool methods", "", text]
        data["routing"] = rows
    if offline:
        text, rows, orderings, gaps = offline_summary(offline)
        parts += ([""] if parts else []) + ["## Offline RL", "", text]
        data["offline"] = rows
        if orderings:
            data["offline_orderings"] = orderings
        if gaps:
            data["lamo_gaps"] = gaps
        curves_md, curve_rows = offline_curves(offline)
        if curves_md:
            parts += ["", "### Learning curves", "", curves_md]
            data["offline_curves"] = curve_rows
            if outp:
                plot_score_curves(curve_rows, outp / "offline_curves.png")
        if outp:
            panels: dict[str, dict] = {}
            for r in rows:
                if r.get("aggregate"):
                    panels.setdefault(f"data ratio {r['data_ratio']:g}, IQM", {})[r["method"]] = r["iqm_ci"]
            plot_intervals(panels, outp / "offline_intervals.png", "95% stratified-bootstrap intervals (tasks x seeds)")
            _csv(outp / "offline_runs.csv", [{k: v for k, v in r.items() if not isinstance(v, (list, dict))}
                                             for r in offline])
    md = "\n".join(parts)
    if outp:
        (outp / "report.md").write_text(md + "\n")
        (outp / "report.json").write_text(json.dumps(data, indent=1))
    return md


def _csv(path: Path, rows: list[dict]):
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
