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
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if not np.isnan(m[i, j]):
                ax.text(j, i, f"{100 * m[i, j]:.0f}", ha="center", va="center", fontsize=7,
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
    """Average score over the tasks seen so far, per method: mean over seeds, band = min..max."""
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
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _spread_labels(xy: np.ndarray, min_dist: float = 0.06, iters: int = 300) -> np.ndarray:
    """Label positions (lower-left corners) near their points, pushed apart from each other and
    from the other points until none is closer than ``min_dist`` (a simple repulsion in data
    units of a 0-1 plot, enough for a few dozen labels)."""
    pos = xy.astype(float).copy() + np.array([0.015, 0.015])
    rng = np.random.default_rng(0)
    n = len(pos)
    for _ in range(iters):
        moved = False
        for i in range(n):
            others = np.vstack([np.delete(pos, i, 0), np.delete(xy, i, 0) - np.array([0.05, 0.0])])
            d = pos[i] - others
            dist = np.hypot(d[:, 0] / 2.5, d[:, 1])  # labels are wide: they need more room sideways
            close = dist < min_dist / 2.5
            if close.any():
                push = (d[close] / (dist[close, None] + 1e-6)).sum(0)
                if not push.any():
                    push = rng.normal(size=2)
                pos[i] += 0.006 * push / (np.linalg.norm(push) + 1e-9)
                moved = True
        if not moved:
            break
    return pos


def plot_tradeoff(points: dict[str, tuple[float, float]], path: Path, title: str = "",
                  xlabel: str = "new-task score", ylabel: str = "pre-training score after",
                  unadapted: tuple[float | None, float | None] | None = None) -> None:
    """One point per method: how well it learns the new task vs how much it keeps; ``unadapted``
    (new-task score before, pre-training score before) is marked as the starting point."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    items = [(m, x, y) for m, (x, y) in points.items() if x is not None and y is not None]
    if items:
        xy = np.array([[x, y] for _, x, y in items])
        ax.scatter(xy[:, 0], xy[:, 1], s=25, zorder=3)
        for (m, x, y), (lx, ly) in zip(items, _spread_labels(xy)):
            ax.annotate(m, (x, y), xytext=(lx, ly), textcoords="data", fontsize=7,
                        arrowprops=dict(arrowstyle="-", lw=0.4, color="grey") if np.hypot(lx - x, ly - y) > 0.04 else None)
    if unadapted is not None and None not in unadapted:
        ax.scatter([unadapted[0]], [unadapted[1]], marker="*", s=160, color="black", zorder=4, label="unadapted model")
        ax.legend(fontsize=8, loc="lower left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(-0.05, 1.15)
    ax.set_ylim(-0.05, 1.1)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
