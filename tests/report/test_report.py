"""`dtune report` and its pieces on hand-made run folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dtune.report.continual import parameters_text, reference_scores, summary_markdown
from dtune.report.plots import plot_matrix, plot_tradeoff
from dtune.report.summary import report


def adapt_run(path, method="lora", task="hammer-v3", score=0.5, digest="aaa", **kw):
    path.mkdir(parents=True)
    r = {"method": method, "task": task, "steps": 10, "trainable": 10, "base": 100, "trainable_pct": 10.0,
         "per_task": 10, "per_task_pct": 10.0, "train_s": 1.0, "new_task_before": 0.1, "new_task_score": score,
         "pretrain_before": 0.6, "pretrain_after": 0.5, "retention": 0.5 / 0.6, "base_digest": digest, **kw}
    (path / "result.json").write_text(json.dumps(r))
    return path


def continual_run(path, method="lora", seed=0, digest="aaa"):
    path.mkdir(parents=True)
    m = {"method": method, "seed": seed, "sequence": "a,b", "tasks": ["hammer-v3", "reach-v3"], "steps_per_task": 5,
         "matrix": [[0.8, 0.0], [0.4, 0.9]], "average_so_far": [0.8, 0.65], "own_score": [0.8, 0.9],
         "average_score": 0.65, "forgetting": 0.2, "forward_transfer": None, "pretrain_before": None,
         "pretrain_after": None, "retention": None, "trainable": 2_450_000, "base": 760_000, "trainable_pct": 322.4,
         "per_task": 81_600, "per_task_pct": 10.7, "train_s": 1.0, "eval_s": 1.0, "base_digest": digest,
         "forgetting_per_task": [0.4, 0.0], "tasks_done": 2, "average_score_seen": 0.65}
    (path / "metrics.json").write_text(json.dumps(m))
    return path


def test_runs_of_one_method_with_other_options_are_other_rows(tmp_path):
    import dataclasses

    from dtune import tuners

    def with_config(path, method, **overrides):
        cfg = dataclasses.asdict(tuners.make_config(method, **overrides))
        (path / "config.json").write_text(json.dumps({"method": "l2m", "method_config": cfg}))
        return path

    runs = [with_config(continual_run(tmp_path / f"g{s}", "l2m-gauss", seed=s), "l2m-gauss") for s in range(2)]
    runs.append(with_config(continual_run(tmp_path / "loose", "l2m-gauss"), "l2m-gauss", density_reject=0.001))
    runs.append(with_config(continual_run(tmp_path / "lora", "lora"), "lora", target_modules=["q", "v"]))
    runs.append(continual_run(tmp_path / "old", "prompt"))  # no config.json: its method name as it stands
    text = " ".join(report([str(r) for r in runs]).split())
    assert "| l2m-gauss | 2 |" in text and "| l2m-gauss (density_reject=0.001) | 1 |" in text
    assert "| prompt | 1 |" in text
    # a module list the run set is part of its label (the default, None, the family's own, is not shown)
    assert "| lora (target_modules=['q', 'v']) | 1 |" in text


def test_other_budgets_are_rows_of_their_own_and_a_seed_counts_once(tmp_path):
    a = continual_run(tmp_path / "a", "l2m", seed=0)
    b = continual_run(tmp_path / "b", "l2m", seed=1)
    c = continual_run(tmp_path / "c", "l2m", seed=0)
    m = json.loads((c / "metrics.json").read_text())
    m["steps_per_task"] *= 4
    (c / "metrics.json").write_text(json.dumps(m))
    text = " ".join(report([str(a), str(b), str(c)]).split())
    n = m["steps_per_task"]
    assert f"| l2m [{n // 4} updates/task] | 2 |" in text and f"| l2m [{n} updates/task] | 1 |" in text
    d = continual_run(tmp_path / "d", "l2m", seed=1)  # a second copy of seed 1 at the same budget
    with pytest.raises(ValueError, match="both seed 1 of l2m"):
        report([str(a), str(b), str(d)])


def test_the_same_run_twice_counts_once(tmp_path):
    a = continual_run(tmp_path / "a")
    text = report([str(a), str(tmp_path / "." / "a") + "/"])
    assert "ignored" in text and "| lora | 1 |" in " ".join(text.split())


def test_a_pretraining_folder_is_skipped_not_fatal(tmp_path):
    pt = tmp_path / "pt"
    pt.mkdir()
    (pt / "config.json").write_text(json.dumps({"kind": "pretrain", "model": {}}))
    a = adapt_run(tmp_path / "a")
    text = report([str(pt), str(a)])
    assert "skipped" in text and "a pre-training run" in text and "## Single-task adaptation" in text
    with pytest.raises(ValueError, match="no finished"):
        report([str(pt)])


def test_reference_scores_match_method_task_and_base(tmp_path):
    adapt_run(tmp_path / "ref" / "s0", score=0.4)
    adapt_run(tmp_path / "ref" / "s1", score=0.6)  # two seeds: averaged
    adapt_run(tmp_path / "ref" / "other-base", score=1.0, digest="bbb")  # another base checkpoint: skipped
    adapt_run(tmp_path / "ref" / "other-method", method="full", score=0.0)
    ref = reference_scores(str(tmp_path / "ref"), "lora", ["hammer-v3", "reach-v3"], base_digest="aaa")
    assert ref == {0: pytest.approx(0.5)}
    assert reference_scores(str(tmp_path / "ref"), "lora", ["hammer-v3"], None)[0] == pytest.approx((0.4 + 0.6 + 1.0) / 3)
    run = continual_run(tmp_path / "cl")
    report([str(run)], str(tmp_path / "rep"), str(tmp_path / "ref"))
    row = json.loads((tmp_path / "rep" / "report.json").read_text())["continual"][0]
    assert row["forward_transfer"][0] == pytest.approx(0.8 - 0.5)


def test_pool_parameters_are_worded_for_a_reader():
    s = {"trainable": 2_450_000, "base": 760_000, "trainable_pct": 322.4, "per_task": 81_600, "per_task_pct": 10.7}
    text = parameters_text(s)
    assert text.startswith("2.45M in all (322.4% of the base model's 0.76M)") and "one task trains 81.6K (10.7%)" in text
    assert "one task" not in parameters_text({**s, "per_task": 2_450_000})
    assert "the pool of 30 entries holds" in parameters_text({**s, "pool_size": 30})
    md = summary_markdown(json.loads(json.dumps({**s, "method": "l2m", "sequence": "x", "seed": 0, "steps_per_task": 1,
                                                  "average_score": 0.5, "forgetting": 0.0, "forward_transfer": None,
                                                  "pretrain_before": None, "pretrain_after": None, "train_s": 1,
                                                  "eval_s": 1, "tasks": ["a-v3"], "matrix": [[0.5]]})))
    assert "2.45M in all" in md and "%; per task" not in md


def test_plots_are_readable(tmp_path):
    from PIL import Image

    plot_matrix(np.array([[0.5, np.nan], [0.2, 1.0]]), ["hammer-v3", "reach-v3"], tmp_path / "m.png")
    w, h = Image.open(tmp_path / "m.png").size
    assert w >= 600 and h >= 450
    pts = {f"m{i}": (0.3 + 0.01 * i, 0.5) for i in range(8)}  # close points: labels must not pile up
    plot_tradeoff(pts, tmp_path / "t.png", unadapted=(0.0, 0.7))
    assert (tmp_path / "t.png").stat().st_size > 10_000
    # error bars, one-sided or missing intervals included, widen the axes to show them whole
    import matplotlib.pyplot as plt

    seen = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, *a, **k):
        seen["xlim"], seen["ylim"] = fig.axes[0].get_xlim(), fig.axes[0].get_ylim()
        return real_savefig(fig, *a, **k)

    plt.Figure.savefig = spy
    try:
        plot_tradeoff(pts, tmp_path / "ci.png", intervals={"m0": ((0.1, 0.6), (0.2, 0.9)), "m1": (None, (0.45, 0.55)),
                                                          "m2": ((None, None), None)})
    finally:
        plt.Figure.savefig = real_savefig
    assert seen["xlim"][0] < 0.1 and seen["xlim"][1] > 0.6 and seen["ylim"][0] < 0.2 and seen["ylim"][1] > 0.9


def test_long_labels_and_titles_stay_inside_the_tradeoff_figure(tmp_path, monkeypatch):
    """A variant's label carries its options and the title its method note: both are wrapped so that
    nothing is cut at the figure's edge (a point at the right border included)."""
    import matplotlib.pyplot as plt

    seen, real_savefig = [], plt.Figure.savefig

    def spy(fig, *a, **k):
        r = fig.canvas.get_renderer()
        seen.extend(t.get_window_extent(r) for t in fig.axes[0].texts + [fig.axes[0].title])
        seen.append(fig.bbox)
        return real_savefig(fig, *a, **k)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    long = "l2m-gauss-pre-io (lora_alpha=64.0, pool_size=10, r=32, target_modules=['q', 'k', 'v', 'out', 'fc', 'proj'])"
    plot_tradeoff({long: (0.98, 1.0), "full": (0.97, 0.45), "prompt": (0.2, 0.4)}, tmp_path / "t.png",
                  title="new task vs pre-training retention (means; bars: 95% stratified-bootstrap CI of the mean, "
                        "where a method has 2+ seeds)")
    *texts, fig = seen
    assert len(texts) == 4 and all(fig.x0 <= t.x0 and t.x1 <= fig.x1 for t in texts)


def test_the_continual_curve_says_what_its_band_is(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from dtune.report.plots import plot_methods_curve

    legends, real_savefig = [], plt.Figure.savefig

    def spy(fig, *a, **k):
        legends.append([t.get_text() for t in fig.axes[0].get_legend().get_texts()])
        return real_savefig(fig, *a, **k)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    tasks = ["hammer-v3", "reach-v3"]
    plot_methods_curve({"l2m": [np.array([0.5, 0.6]), np.array([0.7, 0.8])], "full": [np.array([0.4, 0.2])]}, tasks,
                       tmp_path / "c.png")
    plot_methods_curve({"full": [np.array([0.4, 0.2])]}, tasks, tmp_path / "one.png")
    assert legends[0] == ["l2m (2 seeds)", "full (1 seed)", "line: mean over seeds; band: min..max"]
    assert legends[1] == ["full (1 seed)"]  # no band, no band entry


def test_labels_of_close_points_do_not_overlap():
    from dtune.report.plots import _plt, place_labels

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    rng = np.random.default_rng(0)
    items = [(f"method-{i}", 0.3 + 0.05 * rng.random(), 0.5 + 0.05 * rng.random()) for i in range(16)]
    items.append(("unadapted", 0.3, 0.5, {"fontweight": "bold", "marker_px": 9.0}))
    ax.set_xlim(0.15, 0.5)
    ax.set_ylim(0.35, 0.7)
    fig.tight_layout()
    boxes = place_labels(ax, items)
    plt.close(fig)
    assert len(boxes) == len(items)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    pts = ax.transData.transform(np.array([it[1:3] for it in items]))
    assert not any(b.contains(x, y) for b in boxes for x, y in pts)  # no label covers a point


def test_a_symlink_to_a_run_counts_once(tmp_path):
    a = continual_run(tmp_path / "a")
    (tmp_path / "link").symlink_to(a)
    text = report([str(a), str(tmp_path / "link")])
    assert f"ignored {tmp_path / 'link'}" in text and "| lora | 1 |" in " ".join(text.split())


def test_per_task_scores_average_the_seeds_of_a_task(tmp_path):
    """Several seeds of one method on one task: the task's column is their mean, not the last run read."""
    runs = [adapt_run(tmp_path / f"s{i}", score=s, seed=i) for i, s in enumerate((0.4, 0.6, 0.8))]
    adapt_run(tmp_path / "reach", task="reach-v3", score=1.0, seed=0)
    text = report([str(r) for r in runs] + [str(tmp_path / "reach")], str(tmp_path / "rep"))
    row = json.loads((tmp_path / "rep" / "report.json").read_text())["adapt"][0]
    assert row["per_task_scores"]["hammer-v3"] == pytest.approx(0.6)
    assert row["per_task_scores"]["reach-v3"] == pytest.approx(1.0)
    # the headline is over the tasks' means (0.6 and 1.0), not over the runs pooled (0.7), with the sample sd
    assert "| lora | 3 | 60.0 | 100.0 | 80.0 ± 28.3 |" in " ".join(text.split())


def test_a_cell_with_undefined_scores_says_how_many_runs_it_is_over(tmp_path):
    """A run whose score is undefined (None: e.g. a DMC task whose data did not learn) is left out of
    the cell's mean, and the cell says so: "(2 of 3 runs)"; a fully defined cell says nothing."""
    runs = [adapt_run(tmp_path / f"s{i}", score=s, seed=i) for i, s in enumerate((0.4, None, 0.8))]
    runs.append(adapt_run(tmp_path / "reach", task="reach-v3", score=1.0, seed=0))
    text = " ".join(report([str(r) for r in runs], str(tmp_path / "rep")).split())
    assert "| lora | 3 | 60.0 (2 of 3 runs) | 100.0 | 80.0 ± 28.3 |" in text
    cont = [continual_run(tmp_path / f"c{i}", seed=i) for i in range(3)]
    metrics = json.loads((cont[0] / "metrics.json").read_text())
    (cont[0] / "metrics.json").write_text(json.dumps({**metrics, "forgetting": None}))
    text = " ".join(report([str(c) for c in cont], str(tmp_path / "rep2")).split())
    assert "| 20.0 (2 of 3 runs) |" in text and "| 65.0 |" in text


def offline_run(path, kind, method, seed, score, task="hopper", ratio=0.01, best=None, **kw):
    path.mkdir(parents=True)
    r = {"kind": kind, "method": method, "task": task, "source": "medium", "data_ratio": ratio, "seed": seed,
         "train_s": 2.0, **kw}
    if kind == "baseline":
        r["score"] = score
    else:
        r.update(score_standard=score, score_best=score if best is None else best, lm=kw.get("lm"))
    (path / "result.json").write_text(json.dumps(r))
    return path


def test_offline_runs_get_seed_statistics_and_rliable_iqm(tmp_path):
    from scipy.stats import trim_mean

    from dtune.report.metrics import iqm

    runs = [offline_run(tmp_path / f"cql{s}", "baseline", "cql", s, 0.40 + 0.02 * s) for s in range(3)]
    runs += [offline_run(tmp_path / f"cqlw{s}", "baseline", "cql", s, 0.70, task="walker2d") for s in range(3)]
    runs += [offline_run(tmp_path / f"dt{s}", "lamo", "dt", s, 0.30, best=0.50) for s in range(3)]
    # hopper: LaMo's own recipe there has linear embeddings
    runs += [offline_run(tmp_path / f"lamo{s}", "lamo", "lamo", s, 0.55, lm="/x/lm-brown", pretrained=True,
                         mlp_embeddings=False, language_weight=0.1, tuning="lora") for s in range(2)]
    runs += [offline_run(tmp_path / "rand", "lamo", "lamo", 0, 0.2, lm="/x/lm-brown", pretrained=False,
                         mlp_embeddings=False, language_weight=0.1, tuning="lora")]
    runs += [offline_run(tmp_path / "short", "lamo", "lamo", 0, 0.3, lm="/x/lm-brown", pretrained=True, lm_layers=2,
                         mlp_embeddings=False, language_weight=0.1, tuning="lora")]
    # the same task from another dataset is another stratum, not more seeds of hopper-medium
    runs += [offline_run(tmp_path / f"cqlr{s}", "baseline", "cql", s, 0.1, source="medium-replay") for s in range(3)]
    lm = tmp_path / "lmrun"  # a language-model run has a result.json too: skipped with a note
    lm.mkdir()
    (lm / "result.json").write_text(json.dumps({"kind": "lm", "steps": 3}))
    runs.append(lm)
    md = report([str(r) for r in runs], str(tmp_path / "out"))
    data = json.loads((tmp_path / "out" / "report.json").read_text())["offline"]
    cql = next(r for r in data if not r.get("aggregate") and r["method"] == "cql" and r["task"] == "hopper")
    assert cql["seeds"] == [0, 1, 2] and cql["standard"][0] == pytest.approx(0.42)
    agg = {r["method"]: r for r in data if r.get("aggregate")}
    assert set(agg) == {"cql", "dt", "lamo [lm-brown]", "lamo, random init [lm-brown]",
                        "lamo, first 2 blocks [lm-brown]"}
    assert agg["cql"]["datasets"] == ["hopper medium", "hopper medium-replay", "walker2d medium"]
    scores = [0.40, 0.42, 0.44, 0.70, 0.70, 0.70, 0.1, 0.1, 0.1]
    assert agg["cql"]["iqm"] == pytest.approx(trim_mean(scores, 0.25)) == pytest.approx(iqm(scores))
    assert agg["cql"]["mean_of_datasets"] == pytest.approx((0.42 + 0.70 + 0.1) / 3)
    assert "skipped" in md and "a lm run" in md
    assert agg["dt"]["iqm_best"] == pytest.approx(0.5) and agg["dt"]["iqm"] == pytest.approx(0.3)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| hopper")]
    # LaMo's table has DT (and LaMo) at ratio 0.01 on hopper-medium, CORL only full datasets
    assert ["hopper", "medium", "0.01", "dt", "3", "30.0", "50.0", "", "41.9", "2"] in rows
    assert ["hopper", "medium", "0.01", "cql", "3", "42.0 ± 2.0", "(same)", "", "", "2"] in rows
    assert (tmp_path / "out" / "offline_runs.csv").exists()


def test_ordering_agreement_counts_pairs_and_respects_the_spread():
    from dtune.report.published import ordering_agreement

    ours = {"bc": 50.0, "cql": 70.0, "dt": 65.0, "iql": 60.0, "extra": 1.0}
    corl = {"bc": 53.5, "cql": 59.1, "dt": 65.1, "iql": 67.5}  # CORL, hopper-medium
    a = ordering_agreement(ours, corl)
    assert a["methods"] == ["bc", "cql", "dt", "iql"]
    assert sorted(a["agree"]) == [("bc", "cql"), ("bc", "dt"), ("bc", "iql")]
    assert sorted(a["disagree"]) == [("cql", "dt"), ("cql", "iql"), ("dt", "iql")]  # (better here, better there)
    assert a["ties"] == []
    # a pair within the larger sd over seeds is not separated, whichever way its means lie
    b = ordering_agreement(ours, corl, spread={"dt": 6.0})
    assert ("cql", "dt") in b["ties"] and ("dt", "iql") in b["ties"] and ("cql", "iql") in b["disagree"]
    assert len(b["agree"]) + len(b["disagree"]) + len(b["ties"]) == 6


def test_offline_report_puts_published_scores_beside_runs_and_compares_orderings(tmp_path):
    runs = [offline_run(tmp_path / m, "baseline", m, 0, v, ratio=1.0) for m, v in
            (("bc", 0.50), ("cql", 0.70), ("iql", 0.60), ("td3+bc", 0.40))]
    runs += [offline_run(tmp_path / "dt", "lamo", "dt", 0, 0.65, best=0.8, ratio=1.0)]
    runs += [offline_run(tmp_path / "iql-r", "baseline", "iql", 0, 0.3, ratio=1.0, task="reacher2d")]
    md = report([str(r) for r in runs], str(tmp_path / "out"))
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| hopper")]
    assert ["hopper", "medium", "1", "cql", "1", "70.0", "(same)", "59.1", "61.6", "2"] in rows
    assert ["hopper", "medium", "1", "td3+bc", "1", "40.0", "(same)", "", "58.7", "2"] in rows  # not in CORL's table
    orderings = {o["publication"]: o for o in data["offline_orderings"]}
    assert set(orderings) == {"corl", "lamo"}  # reacher2d has one method here: nothing to order
    assert orderings["corl"]["methods"] == ["bc", "cql", "dt", "iql"]
    assert sorted(map(tuple, orderings["corl"]["disagree"])) == [("cql", "dt"), ("cql", "iql"), ("dt", "iql")]
    assert orderings["lamo"]["methods"] == ["bc", "cql", "dt", "iql", "td3+bc"]
    assert ["hopper", "medium", "1", "CORL", "4", "3", "3", "0", "cql > dt, cql > iql, dt > iql"] in rows


def test_runs_on_a_replay_buffers_later_part_are_their_own_dataset_without_published_scores(tmp_path):
    """`--replay-from` runs of medium-replay are neither pooled with whole-buffer runs (nor refused as a seed
    counted twice) nor compared with D4RL's published medium-replay scores."""
    whole = [offline_run(tmp_path / f"w{s}", "baseline", "cql", s, 0.3 + 0.01 * s, ratio=1.0, source="medium-replay")
             for s in range(2)]
    later = [offline_run(tmp_path / f"l{s}", "baseline", "cql", s, 0.6, ratio=1.0, source="medium-replay",
                         replay_from=0.5) for s in range(2)]
    md = report([str(r) for r in whole + later], str(tmp_path / "out"))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| hopper")]
    assert ["hopper", "medium-replay", "1", "cql", "2", "30.5 ± 0.7", "(same)", "95.1", "", "2"] in rows  # CORL's
    assert ["hopper", "medium-replay from 0.5", "1", "cql", "2", "60.0", "(same)", "", "", "2"] in rows


def test_lamo_claims_are_paired_differences_per_ratio_and_pooled_over_the_low_data_ratios(tmp_path):
    lamo = dict(lm="/x/lm-brown", pretrained=True, mlp_embeddings=True, language_weight=0.1, tuning="lora")
    runs = []
    for task, ratio, (l, d, rnd) in (("hopper", 0.005, (0.50, 0.30, 0.40)), ("walker2d", 0.005, (0.60, 0.55, None)),
                                     ("hopper", 0.01, (0.55, 0.50, 0.45)), ("hopper", 0.1, (0.70, 0.75, None))):
        p = tmp_path / f"{task}{ratio}"
        recipe = {**lamo, "mlp_embeddings": task != "hopper"}  # LaMo's hopper runs had linear embeddings
        runs += [offline_run(p / f"lamo{s}", "lamo", "lamo", s, l + 0.01 * (2 * s - 1), task=task, ratio=ratio,
                             **recipe) for s in range(2)]  # two seeds: the dataset's mean is l
        runs.append(offline_run(p / "dt", "lamo", "dt", 0, d, task=task, ratio=ratio))
        if rnd is not None:
            runs.append(offline_run(p / "rand", "lamo", "lamo", 0, rnd, task=task, ratio=ratio,
                                    **{**recipe, "pretrained": False}))
    # the embeddings ablation is the other kind on each task: MLP on hopper, linear elsewhere
    runs.append(offline_run(tmp_path / "mlp", "lamo", "lamo", 0, 0.35, ratio=0.01, **lamo))
    runs.append(offline_run(tmp_path / "lin", "lamo", "lamo", 0, 0.45, ratio=0.005, task="walker2d",
                            **{**lamo, "mlp_embeddings": False}))
    runs.append(offline_run(tmp_path / "cql", "baseline", "cql", 0, 0.9, ratio=0.01))  # not part of any claim
    md = report([str(r) for r in runs], str(tmp_path / "out"))
    gaps = {(g["method"], g["against"], g["data_ratio"]): g
            for g in json.loads((tmp_path / "out" / "report.json").read_text())["lamo_gaps"]}
    vs_dt = gaps[("lamo [lm-brown]", "dt", "0.005")]
    assert vs_dt["difference"] == pytest.approx((20 + 5) / 2) and vs_dt["better_on"] == 2
    assert vs_dt["paper_difference"] == pytest.approx(((57.0 - 35.8) + (66.9 - 16.7)) / 2)  # the paper's hopper, walker2d
    pooled = gaps[("lamo [lm-brown]", "dt", "0.005 and 0.01")]
    assert pooled["difference"] == pytest.approx((20 + 5 + 5) / 3) and len(pooled["datasets"]) == 3
    assert gaps[("lamo [lm-brown]", "dt", "0.1")]["difference"] == pytest.approx(-5) and \
        gaps[("lamo [lm-brown]", "dt", "0.1")]["better_on"] == 0
    # pre-trained minus random init, only where both ran; an ablation minus LaMo; the paper has neither
    rand = gaps[("lamo [lm-brown]", "lamo, random init [lm-brown]", "0.005 and 0.01")]
    assert rand["difference"] == pytest.approx((10 + 10) / 2) and rand["paper_difference"] is None
    mlp = gaps[("lamo, MLP embeddings [lm-brown]", "lamo [lm-brown]", "0.01")]
    assert mlp["difference"] == pytest.approx(-20) and mlp["datasets"] == ["hopper medium 0.01"]
    # run at 1% only: no pooled row repeating the 1% one
    assert ("lamo, MLP embeddings [lm-brown]", "lamo [lm-brown]", "0.005 and 0.01") not in gaps
    assert ("lamo, linear embeddings [lm-brown]", "lamo [lm-brown]", "0.005 and 0.01") not in gaps
    lin = gaps[("lamo, linear embeddings [lm-brown]", "lamo [lm-brown]", "0.005")]
    assert lin["difference"] == pytest.approx(-15) and lin["datasets"] == ["walker2d medium 0.005"]
    assert not any("cql" in k for key in gaps for k in key)
    assert "| lamo [lm-brown] | dt | 0.005 and 0.01 | 3 | +10.0 | +9.0 (3 pairs, one a dataset: no interval) | 3 of 3 |" in " ".join(md.split())
    assert pooled["ci"] is None and pooled["paired_seeds"] == 3  # dt has seed 0 only: one pair a dataset
    assert pooled["paired_difference"] == pytest.approx((19 + 4 + 4) / 3)  # seed 0 of LaMo (l - 0.01) minus DT


def test_lamo_claims_are_repeated_over_the_papers_datasets_where_it_published_only_some(tmp_path):
    """The paper has no reacher2d at 0.005 or 0.01: the claims over all datasets have no paper figure, so each is
    repeated over the datasets the paper published, beside its figure; none where it published all or none."""
    lamo = dict(lm="/x/lm-brown", pretrained=True, mlp_embeddings=True, language_weight=0.1, tuning="lora")
    runs = []
    for task, ratio, (l, d) in (("hopper", 0.005, (0.50, 0.30)), ("reacher2d", 0.005, (0.20, 0.10)),
                                ("hopper", 0.01, (0.55, 0.50)), ("reacher2d", 0.01, (0.10, 0.30)),
                                ("reacher2d", 0.1, (0.40, 0.35)), ("reacher2d", 1.0, (0.30, 0.30))):
        for s in range(2):
            runs.append(offline_run(tmp_path / f"{task}{ratio}lamo{s}", "lamo", "lamo", s, l, task=task, ratio=ratio,
                                    **{**lamo, "mlp_embeddings": task != "hopper"}))  # LaMo's own hopper recipe
            runs.append(offline_run(tmp_path / f"{task}{ratio}dt{s}", "lamo", "dt", s, d, task=task, ratio=ratio))
    md = " ".join(report([str(r) for r in runs], str(tmp_path / "out")).split())
    gaps = {g["data_ratio"]: g for g in json.loads((tmp_path / "out" / "report.json").read_text())["lamo_gaps"]}
    assert gaps["0.005"]["difference"] == pytest.approx((20 + 10) / 2) and gaps["0.005"]["paper_difference"] is None
    ours = gaps["0.005, the paper's datasets"]
    assert ours["datasets"] == ["hopper medium 0.005"] and ours["difference"] == pytest.approx(20)
    assert ours["paper_difference"] == pytest.approx(57.0 - 35.8)
    assert gaps["0.005 and 0.01"]["difference"] == pytest.approx((20 + 10 + 5 - 20) / 4)
    both = gaps["0.005 and 0.01, the paper's datasets"]
    assert both["difference"] == pytest.approx((20 + 5) / 2) and both["paper_difference"] == pytest.approx(
        ((57.0 - 35.8) + (52.0 - 41.9)) / 2)
    assert gaps["0.1"]["paper_difference"] == pytest.approx(12.4 - 2.3) and gaps["1"]["paper_difference"] == pytest.approx(10.2)
    assert set(gaps) == {"0.005", "0.005, the paper's datasets", "0.01", "0.01, the paper's datasets", "0.1", "1",
                         "0.005 and 0.01", "0.005 and 0.01, the paper's datasets"}
    assert "| lamo [lm-brown] | dt | 0.005, the paper's datasets | 1 | +20.0 |" in md


def test_lamo_claims_interval_bootstraps_the_differences_paired_by_seed(tmp_path):
    """Seed s of LaMo is paired with seed s of DT (the same data subset); seeds are resampled within each
    dataset. Walker2d: pairs +20 and +10; hopper: 0 and 0 (its seed 2 has no partner: left out of the pairs, not of the
    means), so the pooled mean of a replicate is 10, 7.5 or 5 with probabilities 1/4, 1/2, 1/4: [5, 10]."""
    lamo = dict(lm="/x/lm-brown", pretrained=True, mlp_embeddings=True, language_weight=0.1, tuning="lora")
    runs = []
    for task, ls, ds in (("walker2d", (0.5, 0.6), (0.3, 0.5)), ("hopper", (0.4, 0.4, 0.9), (0.4, 0.4))):
        recipe = {**lamo, "mlp_embeddings": task != "hopper"}
        runs += [offline_run(tmp_path / task / f"lamo{s}", "lamo", "lamo", s, v, task=task, ratio=0.01, **recipe)
                 for s, v in enumerate(ls)]
        runs += [offline_run(tmp_path / task / f"dt{s}", "lamo", "dt", s, v, task=task, ratio=0.01)
                 for s, v in enumerate(ds)]
    md = report([str(r) for r in runs], str(tmp_path / "out"))
    gaps = {(g["method"], g["against"], g["data_ratio"]): g
            for g in json.loads((tmp_path / "out" / "report.json").read_text())["lamo_gaps"]}
    g = gaps[("lamo [lm-brown]", "dt", "0.01")]
    assert g["paired_seeds"] == 4 and g["ci"] == pytest.approx([5.0, 10.0]) and g["paired_difference"] == 7.5
    assert g["difference"] == pytest.approx((15 + (0.5667 - 0.4) * 100) / 2, abs=0.01)  # means over all seeds
    assert "| +15.8 | +7.5 [+5.0, +10.0] (4 pairs) | 2 of 2 |" in " ".join(md.split())


def test_lamo_labels_read_the_config_where_the_result_lacks_a_field_and_follow_the_tasks_recipe(tmp_path):
    """An ablation is a departure from LaMo's recipe for the task: MLP embeddings elsewhere, linear on hopper.
    A result without `mlp_embeddings` takes it from the run's config.json."""
    from dtune.report.summary import offline_label

    lamo = dict(lm="/x/lm-brown", pretrained=True, language_weight=0.1, tuning="lora")
    labels = {}
    for task in ("hopper", "walker2d"):
        for mlp in (True, False):
            for pre in (True, False):
                run = offline_run(tmp_path / f"{task}{mlp}{pre}", "lamo", "lamo", 0, 0.5, task=task,
                                  **{**lamo, "pretrained": pre})
                (run / "config.json").write_text(json.dumps({"lamo": {"task": task, "mlp_embeddings": mlp}}))
                labels[task, mlp, pre] = offline_label(json.loads((run / "result.json").read_text()), run)
    assert labels["hopper", False, True] == labels["walker2d", True, True] == "lamo [lm-brown]"
    assert labels["hopper", True, True] == "lamo, MLP embeddings [lm-brown]"
    assert labels["walker2d", False, True] == "lamo, linear embeddings [lm-brown]"
    assert labels["hopper", False, False] == "lamo, random init [lm-brown]"
    assert labels["hopper", True, False] == "lamo, random init, MLP embeddings [lm-brown]"


def test_iqm_drops_a_quarter_at_each_end():
    from dtune.report.metrics import iqm

    assert iqm([]) is None and iqm([None, 2.0]) == 2.0
    assert iqm([0, 1, 2, 3, 100, -100, 1.5, 2.5]) == pytest.approx(np.mean([1, 1.5, 2, 2.5]))


def test_stratified_bootstrap_is_seeded_resamples_within_tasks_and_covers():
    from dtune.report.metrics import stratified_bootstrap

    per_task = {"a": [0.1, 0.2, 0.3], "b": [0.9, 0.8, 1.0]}
    assert stratified_bootstrap(per_task) == stratified_bootstrap(per_task)
    point, lo, hi = stratified_bootstrap(per_task, "mean")
    assert point == pytest.approx(0.55) and lo < point < hi
    # stratified: every replicate keeps 3 runs of each task, so the mean never leaves the band
    # that mixing tasks would allow (an unstratified resample could draw six runs of task a)
    assert lo >= (0.1 + 0.8) / 2 - 1e-9 and hi <= (0.3 + 1.0) / 2 + 1e-9
    assert stratified_bootstrap({"a": [0.5, 0.5]}) == (0.5, 0.5, 0.5) and stratified_bootstrap({"a": [None]}) is None
    # coverage: the 95% interval of the mean holds the true mean about 95% of the time
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(200):
        data = {f"t{j}": list(rng.normal(0.5, 0.2, 5)) for j in range(4)}
        _, lo, hi = stratified_bootstrap(data, "mean", reps=400, seed=int(rng.integers(1 << 30)))
        hits += lo <= 0.5 <= hi
    assert 0.85 <= hits / 200 <= 0.99


def test_report_intervals_in_tables_and_plot(tmp_path):
    runs = [adapt_run(tmp_path / f"{m}{t}{s}", method=m, task=t, score=0.2 * s + (0.3 if m == "full" else 0.0), seed=s,
                      pretrain_after=0.5 + 0.05 * s)
            for m in ("lora", "full") for t in ("hammer-v3", "reach-v3") for s in range(3)]
    md = report([str(r) for r in runs], str(tmp_path / "out"))
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["adapt"]
    full = next(r for r in rows if r["method"] == "full")
    assert full["new_task_iqm_ci"][1] <= full["new_task_iqm_ci"][0] <= full["new_task_iqm_ci"][2]
    # the trade-off plot's error bars: intervals of the means it plots
    assert full["new_task_ci"][0] == pytest.approx(full["new_task"][0]) == pytest.approx(0.5)
    assert full["new_task_ci"][1] < 0.5 < full["new_task_ci"][2]
    assert full["pretrain_after_ci"][1] < 0.55 < full["pretrain_after_ci"][2]
    assert (tmp_path / "out" / "adapt_tradeoff.png").stat().st_size > 10_000
    assert "IQM [95% CI]" in md and (tmp_path / "out" / "adapt_intervals.png").stat().st_size > 10_000


def test_one_seed_per_task_gives_no_interval(tmp_path):
    runs = [adapt_run(tmp_path / f"{t}", method="lora", task=t, score=0.5) for t in ("hammer-v3", "reach-v3")]
    md = report([str(r) for r in runs], str(tmp_path / "out"))
    assert "50.0 (one seed: no interval)" in md
    row = json.loads((tmp_path / "out" / "report.json").read_text())["adapt"][0]
    assert row["new_task_iqm_ci"] == [0.5, None, None] and (tmp_path / "out" / "adapt_intervals.png").exists()


def _pretrain_eval(mw: float, dmc: float, unlearned: float = 9.0) -> dict:
    """An evaluation of two pre-training domains; the DMC task whose data did not learn is flagged."""
    return {"mean_score": None, "tasks": {
        "reach-v3": {"domain": "metaworld", "score": mw}, "push-v3": {"domain": "metaworld", "score": mw},
        "walker-run": {"domain": "dmc", "score": dmc},
        "fish-upright": {"domain": "dmc", "score": unlearned, "score_caveat": "the agent ... did not learn"},
        "pendulum-swingup": {"domain": "dmc", "score": None, "score_note": "undefined"}}}


def test_pretraining_scores_per_domain_before_and_after_for_both_kinds_of_run(tmp_path):
    from dtune.report.metrics import domain_scores

    # the learned tasks only: a flagged task (small gap) and an undefined score stay out of a domain's mean
    assert domain_scores(_pretrain_eval(0.5, 0.8)) == {"dmc": 0.8, "metaworld": 0.5}
    a, b = adapt_run(tmp_path / "a0", seed=0), adapt_run(tmp_path / "a1", seed=1)
    for run, (mw, dmc) in ((a, (0.1, 0.9)), (b, (0.3, 0.7))):
        (run / "eval_pretrain.json").write_text(json.dumps(_pretrain_eval(mw, dmc)))
    (a / "eval_pretrain_before.json").write_text(json.dumps(_pretrain_eval(0.8, 1.0)))  # b: an older run, no "before"
    c = continual_run(tmp_path / "c0")
    m = json.loads((c / "metrics.json").read_text())
    (c / "metrics.json").write_text(json.dumps({**m, "pretrain_rows": [{"after": 0, "score": 0.0}, {"after": 1, "score": 0.4}]}))
    (c / "evals").mkdir()
    (c / "evals" / "pretrain_before.json").write_text(json.dumps(_pretrain_eval(0.8, 1.0)))
    (c / "evals" / "pretrain_after_00_hammer-v3.json").write_text(json.dumps(_pretrain_eval(0.0, 0.0)))
    (c / "evals" / "pretrain_after_01_reach-v3.json").write_text(json.dumps(_pretrain_eval(0.2, 0.6)))  # the last
    (c / "evals" / "pretrain_after_99_stray.json").write_text(json.dumps(_pretrain_eval(1.0, 1.0)))  # not the run's
    text = " ".join(report([str(a), str(b), str(c)], out=tmp_path / "rep").split())
    assert text.count("pre-train after by domain %") == 2 and "normalised score) after adaptation" in text
    assert "normalised score) after the sequence's last task" in text
    # adapt: "after" over the two seeds; "before" over the one that kept it, and said so
    assert "dmc 80.0 (from 100.0, 1 of 2 runs); metaworld 20.0 (from 80.0, 1 of 2 runs)" in text
    assert "dmc 60.0 (from 100.0); metaworld 20.0 (from 80.0)" in text  # continual: after its last task
    rows = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rows["adapt"][0]["pretrain_by_domain"]["after"] == pytest.approx({"dmc": 0.8, "metaworld": 0.2})


def test_one_pretraining_domain_gets_no_per_domain_column(tmp_path):
    run = adapt_run(tmp_path / "a")
    (run / "eval_pretrain.json").write_text(json.dumps({"tasks": {"reach-v3": {"domain": "metaworld", "score": 1.0}}}))
    assert "by domain" not in report([str(run)])


def test_runs_trained_in_other_precisions_are_rows_of_their_own(tmp_path):
    """`--precision auto` resolves per machine: a bf16 run and an fp32 run of one arm are not pooled as seeds
    of one row (bf16 against fp32 moved LaMo runs by 4-5 points); the run's own record, else its config's."""
    runs = [offline_run(tmp_path / f"b{s}", "lamo", "dt", s, 0.3) for s in range(2)]
    for p in runs:
        (p / "config.json").write_text(json.dumps({"kind": "lamo", "lamo": {}, "resolved": {"precision": "bf16"}}))
    runs.append(offline_run(tmp_path / "f", "lamo", "dt", 0, 0.5))
    r = json.loads((runs[-1] / "result.json").read_text())
    (runs[-1] / "result.json").write_text(json.dumps({**r, "precision": "fp32"}))
    text = " ".join(report([str(r) for r in runs]).split())
    assert "| dt [bf16] | 2 |" in text and "| dt [fp32] | 1 |" in text
    assert "| dt | 2 |" in " ".join(report([str(r) for r in runs[:2]]).split())  # one precision: no suffix
    a = [adapt_run(tmp_path / f"a{s}", seed=s) for s in range(2)]
    (a[1] / "config.json").write_text(json.dumps({"resolved": {"precision": "bf16 then fp32"}}))
    assert "[bf16 then fp32]" in report([str(p) for p in a])  # adaptation rows too


def test_pool_precision_gives_one_row_says_which_run_trained_in_which_and_still_refuses_a_seed_twice(tmp_path):
    """`dtune report --pool-precision` (results/lamo: the 3K grid trained in bf16 on one machine, its other data ratios
    in fp32 on another): one row a method, paired differences across both, and a note of which runs are which."""
    from dtune.cli import main

    def run(name, method, seed, score, precision, **kw):
        p = offline_run(tmp_path / name, "lamo", method, seed, score, precision=precision, **kw)
        (p / "config.json").write_text(json.dumps({"kind": "lamo", "lamo": {}}))
        return p

    runs = [run(f"dt{s}", "dt", s, 0.3, "bf16") for s in range(2)] + [run("dtw", "dt", 0, 0.5, "fp32", task="walker2d")]
    runs += [run(f"lamo{s}", "lamo", s, 0.4, "bf16", lm="/x/lm-brown", pretrained=True) for s in range(2)]
    runs += [run("lamow", "lamo", 0, 0.8, "fp32", task="walker2d", lm="/x/lm-brown", pretrained=True)]
    split = " ".join(report([str(r) for r in runs]).split())
    assert "| dt [bf16] |" in split and "| dt [fp32] |" in split and "pools precisions" not in split
    text = " ".join(report([str(r) for r in runs], pool_precision=True).split())
    assert "[bf16]" not in text and "[fp32]" not in text
    assert "Note: dt pools precisions (--pool-precision): bf16 on hopper medium 0.01 (2 runs); fp32 on walker2d medium 0.01 (1 run)." in text
    assert "| lamo [lm-brown] | dt | 0.01 | 2 | +20.0 |" in text  # the LaMo - DT claim pairs over both datasets
    assert "| dt | 0.01 | 2 | 3 |" in text  # one aggregate row over the two datasets
    main(["report", *map(str, runs), "--pool-precision", "--out", str(tmp_path / "rep")])
    assert "dt pools precisions" in (tmp_path / "rep" / "report.md").read_text()
    twice = run("dt0f", "dt", 0, 0.2, "fp32")  # seed 0 of dt on hopper, in fp32 as well: a seed counted twice
    with pytest.raises(ValueError, match="both seed 0 of dt"):
        report([str(r) for r in runs + [twice]], pool_precision=True)
    assert "| dt [fp32] | 0.01 | 2 | 2 |" in " ".join(report([str(r) for r in runs + [twice]]).split())  # apart: rows


def test_offline_runs_with_other_optimiser_settings_are_rows_of_their_own(tmp_path):
    """`dtune lamo` runs of one arm but other AdamW settings (results/lamo uses LaMo's, dtune's defaults
    differ) are not pooled as seeds of one row; a config without the settings ran with the defaults."""
    runs = [offline_run(tmp_path / f"lamo{s}", "lamo", "dt", s, 0.3) for s in range(2)]
    for p in runs:
        (p / "config.json").write_text(json.dumps({"kind": "lamo", "lamo": {"adam_beta2": 0.999, "adam_epsilon": 1e-6}}))
    runs.append(offline_run(tmp_path / "old", "lamo", "dt", 0, 0.5))  # written before the options: the defaults
    runs.append(offline_run(tmp_path / "bc", "baseline", "bc", 0, 0.4))
    text = " ".join(report([str(r) for r in runs]).split())
    assert "| dt [AdamW (0.9, 0.999), eps 1e-06] | 2 |" in text and "| dt [AdamW (0.9, 0.95), eps 1e-08] | 1 |" in text
    assert "| bc | 1 |" in text
    same = [offline_run(tmp_path / f"same{s}", "lamo", "dt", s, 0.3) for s in range(2)]
    assert "| dt | 2 |" in " ".join(report([str(r) for r in same]).split())  # one setting: no suffix


def test_lamo_runs_that_measured_the_lms_perplexity_show_it_before_and_after(tmp_path):
    """LaMo's claim that the language ability is kept: mean ± sd over the runs that measured it; a column only
    where some run did (other offline reports keep their columns)."""
    lamo = dict(lm="/x/lm-brown", pretrained=True, mlp_embeddings=False, language_weight=0.1, tuning="lora")
    runs = [offline_run(tmp_path / f"lamo{s}", "lamo", "lamo", s, 0.5, perplexity_before=b,
                        perplexity_after=a, **lamo) for s, (b, a) in enumerate(((95.5, 91.0), (95.5 + 1e-13, 93.0)))]
    runs += [offline_run(tmp_path / "lamo2", "lamo", "lamo", 2, 0.5, **lamo)]  # made before it was measured
    runs += [offline_run(tmp_path / "dt", "lamo", "dt", 0, 0.4, perplexity_before=None, perplexity_after=None)]
    md = report([str(r) for r in runs], str(tmp_path / "out"))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| hopper")]
    assert rows[0][3] == "dt" and rows[0][-1] == ""
    assert rows[1][3] == "lamo [lm-brown]" and rows[1][-1] == "95.5 -> 92.0 ± 1.4 (2 of 3 runs)"  # no "± 0.0"
    assert "LM perplexity, before -> after" in md
    bare = report([str(runs[-1])], str(tmp_path / "bare"))
    assert "perplexity" not in bare


def test_offline_learning_curves_are_tabled_per_dataset_and_plotted(tmp_path):
    def curve(*scores):
        return [{"step": 1000 * (i + 1), "score_standard": s, "target": 6000.0} for i, s in enumerate(scores)]

    runs = [offline_run(tmp_path / f"dt{s}", "lamo", "dt", s, 0.3 + 0.1 * s, task="halfcheetah", steps=3000,
                        curve=curve(0.1, 0.2, 0.3 + 0.1 * s)) for s in range(2)]
    runs.append(offline_run(tmp_path / "dt2", "lamo", "dt", 2, 0.5, task="halfcheetah", steps=3000))  # no curve
    runs.append(offline_run(tmp_path / "lamo0", "lamo", "lamo", 0, 0.6, task="halfcheetah", steps=3000,
                            lm="/x/lm-brown", pretrained=True, mlp_embeddings=True, language_weight=0.1,
                            tuning="lora", curve=curve(0.4, None, 0.6)))
    runs.append(offline_run(tmp_path / "bc0", "baseline", "bc", 0, 0.4, task="halfcheetah"))
    md = report([str(r) for r in runs], str(tmp_path / "out"))
    text = md[md.index("### Learning curves"):]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == ["updates", "dt", "lamo [lm-brown]"]
    by_step = {r[0]: r[1:] for r in rows[1:]}
    assert by_step["1,000"] == ["10.0 (2)", "40.0 (1)"]
    assert by_step["2,000"] == ["20.0 (2)", "n/a (0)"]  # an undefined score is counted out
    assert by_step["3,000"] == ["35.0 ± 7.1 (2)", "60.0 (1)"]
    data = json.loads((tmp_path / "out" / "report.json").read_text())["offline_curves"]
    assert {(r["method"].split(" [")[0], r["step"]) for r in data} >= {("dt", 1000), ("lamo", 3000)}
    assert next(r for r in data if r["method"] == "dt" and r["step"] == 3000)["runs"] == 2
    assert (tmp_path / "out" / "offline_curves.png").stat().st_size > 10_000
    from dtune.report.plots import plot_score_curves  # a method without a defined score anywhere: no line, no crash

    plot_score_curves([{**r, "mean": None, "sd": None, "runs": 0} for r in data], tmp_path / "none.png")
    assert (tmp_path / "none.png").exists()
    none = report([str(runs[2]), str(runs[-1])])  # no run with a curve: no section
    assert "Learning curves" not in none
