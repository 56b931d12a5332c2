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
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(tasks), 0.8 + 0.5 * max(1, m.shape[0])))
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(tasks)), _short(tasks), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(m.shape[0]), _short(tasks[: m.shape[0]]), fontsize=8)
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training on")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if not np.isnan(m[i, j]):
                ax.text(j, i, f"{100 * m[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] < 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.04)
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


def plot_tradeoff(points: dict[str, tuple[float, float]], path: Path, title: str = "",
                  xlabel: str = "new-task score", ylabel: str = "pre-training score after") -> None:
    """One point per method: how well it learns the new task vs how much it keeps."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, (x, y) in points.items():
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=25)
        ax.annotate(method, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
