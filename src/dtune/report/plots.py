"""PNG plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(tasks):
    return [t.removesuffix("-v3") for t in tasks]


def plot_matrix(matrix: np.ndarray, tasks: list[str], path: Path, title: str = "") -> None:
    """Heatmap: row = after training on task i, column = score on task j."""
    plt = _plt()
    m = np.asarray(matrix, dtype=float)
    # at least 6 x 4.5 inches at 120 dpi (720 x 540 px): readable for a 2-task run too
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + 0.6 * len(tasks)), max(4.5, 1.5 + 0.5 * m.shape[0])))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")  # undefined scores: grey
    im = ax.imshow(np.ma.masked_invalid(100 * m), vmin=0.0, vmax=100.0, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(tasks)), _short(tasks), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(m.shape[0]), _short(tasks[: m.shape[0]]), fontsize=8)
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training on")
    cell_font = 10 if len(tasks) <= 4 else 8 if len(tasks) <= 7 else 7  # big cells of a short sequence: bigger
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if not np.isnan(m[i, j]):
                ax.text(j, i, f"{100 * m[i, j]:.0f}", ha="center", va="center", fontsize=cell_font,
                        color="white" if m[i, j] < 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.04, label="score %")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(matrix: np.ndarray, tasks: list[str], path: Path, title: str = "") -> None:
    """Score of every task across the sequence (x: after training on task i)."""
    plt = _plt()
    m = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(m.shape[0])
    for j, t in enumerate(tasks):
        ax.plot(x, m[:, j], marker="o", ms=3, label=_short([t])[0])
        if j < m.shape[0]:
            ax.axvline(j, color="grey", lw=0.3)
    ax.set_xticks(x, _short(tasks[: m.shape[0]]), rotation=60, ha="right", fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("score")
    ax.set_xlabel("after training on")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_methods_curve(curves: dict[str, list[np.ndarray]], tasks: list[str], path: Path, title: str = "") -> None:
    """Average score over the tasks seen so far, per method: mean over seeds, band = min..max (the legend says so)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, runs in curves.items():
        n = min(len(r) for r in runs)
        arr = np.array([r[:n] for r in runs], dtype=float)
        x = np.arange(n)
        ax.plot(x, np.nanmean(arr, 0), marker="o", ms=3, label=f"{method} ({len(runs)} seed{'s' * (len(runs) > 1)})")
        if len(runs) > 1:
            ax.fill_between(x, np.nanmin(arr, 0), np.nanmax(arr, 0), alpha=0.2)
    ax.set_xticks(np.arange(len(tasks)), _short(tasks), rotation=60, ha="right", fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("average score of the tasks seen so far")
    handles, _ = ax.get_legend_handles_labels()
    if any(len(runs) > 1 for runs in curves.values()):  # say what the bands are
        from matplotlib.patches import Patch

        handles.append(Patch(color="0.5", alpha=0.3, label="line: mean over seeds; band: min..max"))
    ax.legend(handles=handles, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_score_curves(rows: list[dict], path: Path, title: str = "score at the standard target during training") -> None:
    """One panel per dataset: each method's score against updates, mean over seeds with a ±1 sd band
    (the legend says so). `rows`: :func:`dtune.report.summary.offline_curves`'s rows."""
    plt = _plt()
    panels: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        name = f"{r['task']} {r['source']}, {r['data_ratio']:g}"
        panels.setdefault(name, {}).setdefault(r["method"], []).append(r)
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.6), squeeze=False)
    for ax, (name, methods) in zip(axes.flat, panels.items()):
        for method, pts in methods.items():
            pts = sorted((p for p in pts if p["mean"] is not None), key=lambda p: p["step"])
            if not pts:  # no defined score anywhere on its curve
                continue
            x = np.array([p["step"] for p in pts], float)
            m = 100 * np.array([p["mean"] for p in pts])
            sd = 100 * np.array([p["sd"] for p in pts])
            seeds = max(p["runs"] for p in pts)
            upto = "up to " if min(p["runs"] for p in pts) < seeds else ""
            line, = ax.plot(x, m, marker="o", ms=3, label=f"{method} ({upto}{seeds} seed{'s' * (seeds > 1)})")
            ax.fill_between(x, m - sd, m + sd, alpha=0.15, color=line.get_color())
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("updates", fontsize=8)
        ax.set_ylabel("normalised score x100", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.lines:
            ax.legend(fontsize=6, title="line: mean over seeds; band: ±1 sd", title_fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def place_labels(ax, items: list[tuple], fontsize: float = 7, marker_px: float = 6.0) -> list:
    """Label every point without overlaps. ``items``: ``(text, x, y)`` or ``(text, x, y, style)``
    with ``style`` a dict of text options plus ``marker_px`` (the point's marker radius in pixels).
    Each label (the most crowded first) takes the first free spot on rings of growing distance
    around its point: clear of the labels placed so far and of every marker, inside the axes; a
    thin line joins a label set away from its point. Call once the axes' limits and layout are
    final. Returns the labels' boxes (display pixels), in the order of ``items``."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    items = [(*it, {}) if len(it) == 3 else tuple(it) for it in items]
    styles = [{"fontsize": fontsize, **{k: v for k, v in st.items() if k != "marker_px"}} for *_, st in items]
    radii = [st.get("marker_px", marker_px) for *_, st in items]
    pts = ax.transData.transform(np.array([[x, y] for _, x, y, _ in items], dtype=float).reshape(-1, 2))
    marks = [Bbox.from_bounds(px - r, py - r, 2 * r, 2 * r) for (px, py), r in zip(pts, radii)]
    sizes = []
    for (text, *_), st in zip(items, styles):
        t = ax.text(0, 0, text, **st)
        bb = t.get_window_extent(renderer)
        sizes.append((bb.width + 2, bb.height + 2))
        t.remove()
    crowd = [int((np.hypot(*(pts - p).T) < 60).sum()) for p in pts]
    angles = np.deg2rad([0, 180, 90, 270, 30, 150, 330, 210, 60, 120, 300, 240])
    placed, boxes = [], [None] * len(items)
    for i in sorted(range(len(items)), key=lambda i: (-crowd[i], pts[i][0])):
        (w, h), (px, py) = sizes[i], pts[i]
        best = None
        for ring, gap in enumerate([radii[i] + 1, 14, 24, 36, 50, 66, 84]):
            for a in angles:
                cx, cy = px + np.cos(a) * (w / 2 + gap), py + np.sin(a) * (h / 2 + gap)
                bb = Bbox.from_bounds(cx - w / 2, cy - h / 2, w, h)
                inside = frame.x0 <= bb.x0 and bb.x1 <= frame.x1 and frame.y0 <= bb.y0 and bb.y1 <= frame.y1
                near = sum(bb.overlaps(o) for o in placed)  # (placed boxes carry a gap: two labels never read as one)
                cost = 1000 * (near + sum(bb.overlaps(o) for o in marks)) + 500 * (not inside) + ring
                if best is None or cost < best[0]:
                    best = (cost, bb, ring)
            if best[0] < 500:  # a free spot on this ring
                break
        _, bb, ring = best
        placed.append(bb.expanded(1 + 8 / bb.width, 1 + 4 / bb.height))
        boxes[i] = bb
        text, x, y, _ = items[i]
        (tx, ty), = ax.transData.inverted().transform(np.array([[bb.x0 + bb.width / 2, bb.y0 + bb.height / 2]]))
        ax.annotate(text, (x, y), xytext=(tx, ty), textcoords="data", ha="center", va="center",
                    arrowprops=dict(arrowstyle="-", lw=0.5, color="grey", shrinkA=0, shrinkB=3) if ring else None,
                    **styles[i])
    return boxes


def _fit_limits(v: np.ndarray, min_span: float = 0.3) -> tuple[float, float]:
    """Axis limits around scores ``v`` (0-1): the data with a margin, at least ``min_span`` wide
    (close points get room for their labels without a misleading zoom), within -0.05..1.1."""
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    pad = 0.08 * (hi - lo) + 0.02
    lo, hi = lo - pad, hi + pad
    if lo < -0.05:
        lo, hi = -0.05, min(1.1, hi + (-0.05 - lo))
    if hi > 1.1:
        lo, hi = max(-0.05, lo - (hi - 1.1)), 1.1
    return lo, hi


def plot_tradeoff(points: dict[str, tuple[float, float]], path: Path, title: str = "",
                  xlabel: str = "new-task score", ylabel: str = "pre-training score after",
                  unadapted: tuple[float | None, float | None] | None = None,
                  intervals: dict[str, tuple] | None = None) -> None:
    """One point per method: how well it learns the new task vs how much it keeps; ``unadapted``
    (new-task score before, pre-training score before) is marked as the starting point.
    ``intervals`` (method -> ((x low, x high) or None, (y low, y high) or None)) draws each point's
    confidence intervals as error bars."""
    import textwrap

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    items = [(m, x, y) for m, (x, y) in points.items() if x is not None and y is not None]
    shown = {m: textwrap.fill(m, 32) for m, _, _ in items}  # a variant's options: several short lines
    extent = [(x, y) for _, x, y in items]  # what the axes must show
    if items:
        ax.scatter([x for _, x, _ in items], [y for _, _, y in items], s=25, zorder=3)
    for m, x, y in items:
        xi, yi = (intervals or {}).get(m) or (None, None)
        xi = None if xi is None or None in xi else xi
        yi = None if yi is None or None in yi else yi
        if xi is None and yi is None:
            continue
        ax.errorbar([x], [y], xerr=None if xi is None else [[max(x - xi[0], 0.0)], [max(xi[1] - x, 0.0)]],
                    yerr=None if yi is None else [[max(y - yi[0], 0.0)], [max(yi[1] - y, 0.0)]],  # rounding: >= 0
                    fmt="none", ecolor="tab:blue", alpha=0.45, lw=1, capsize=2, zorder=2)
        extent += [(v, y) for v in (xi or ())] + [(x, v) for v in (yi or ())]
    if unadapted is not None and None not in unadapted:
        ax.scatter([unadapted[0]], [unadapted[1]], marker="*", s=160, color="black", zorder=4)
        items.append(("unadapted", *unadapted, {"fontsize": 8, "fontweight": "bold", "marker_px": 9.0}))
        extent.append(tuple(unadapted))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if extent:
        xy = np.array(extent, dtype=float)
        ax.set_xlim(*_fit_limits(xy[:, 0]))
        ax.set_ylim(*_fit_limits(xy[:, 1]))
    ax.grid(alpha=0.3)
    ax.set_title(textwrap.fill(title, 100), fontsize=9)
    fig.tight_layout()  # before the labels: they are placed in the final pixel layout
    place_labels(ax, [(shown.get(it[0], it[0]), *it[1:]) for it in items])
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curves(curves: dict[str, dict], path: Path, title: str = "") -> None:
    """One panel per task: episode return against environment steps in the order the episodes
    were collected (a replay-buffer dataset's learning curve), a 10-episode moving mean, and the
    task's random reference (dashed). `curves[task] = {"steps": (E,), "returns": (E,),
    "random": float | None, "learned": bool | None}`."""
    plt = _plt()
    n = len(curves)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (task, c) in zip(axes.flat, curves.items()):
        steps, ret = np.asarray(c["steps"], float), np.asarray(c["returns"], float)
        ax.plot(steps, ret, lw=0.6, color="#9ecae1")
        w = min(10, len(ret))
        if w > 1:
            ax.plot(steps[w - 1:], np.convolve(ret, np.ones(w) / w, mode="valid"), lw=1.4, color="#08519c")
        if c.get("random") is not None:
            ax.axhline(c["random"], ls="--", lw=0.8, color="grey")
        ax.set_title(task + ("" if c.get("learned") is not False else " (did not learn)"), fontsize=8,
                     color="black" if c.get("learned") is not False else "firebrick")
        ax.tick_params(labelsize=7)
        ax.xaxis.get_offset_text().set_fontsize(7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.supxlabel("environment steps", fontsize=8)
    fig.supylabel("episode return", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_intervals(panels: dict[str, dict[str, list | None]], path: Path, title: str = "", pct: bool = True) -> None:
    """rliable-style interval plot: one panel per aggregate (`panel -> {method: [point, low,
    high]}`), a horizontal bar from low to high and a tick at the point for every method."""
    plt = _plt()
    methods = list(dict.fromkeys(m for p in panels.values() for m in p))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 3.2 * len(panels)), 1.2 + 0.35 * len(methods)),
                             squeeze=False, sharey=True)
    scale = 100 if pct else 1
    colors = plt.get_cmap("tab20")
    for ax, (name, cis) in zip(axes[0], panels.items()):
        for i, m in enumerate(methods):
            ci = cis.get(m)
            if ci is None:
                continue
            point = scale * ci[0]
            if ci[1] is not None:  # no interval from one run per task: the point alone
                lo, hi = scale * ci[1], scale * ci[2]
                ax.barh(i, hi - lo, left=lo, height=0.6, color=colors(i % 20), alpha=0.75)
            ax.plot([point, point], [i - 0.3, i + 0.3], color="black", lw=1.5)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("score %" if pct else "score")
    axes[0][0].set_yticks(range(len(methods)), methods, fontsize=8)
    axes[0][0].invert_yaxis()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
