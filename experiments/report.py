"""PNG plots of a run (matplotlib, Agg backend: works on a headless node).

Learning curves for every run; predicted vs. true traces for a few held-out videos (frame
regression); predicted vs. true scatter per target (clip regression); the confusion matrix
(classification).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: list[dict], monitor: str, path) -> Path:
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(ep, [h["train_loss"] for h in history], marker="o")
    ax[0].set(xlabel="epoch", ylabel="train loss", title="training loss")
    ax[1].plot(ep, [h["val"].get(monitor, np.nan) for h in history], marker="o", label="model")
    if history and isinstance(history[0].get("val_baseline"), (int, float)):
        ax[1].axhline(history[0]["val_baseline"], color="grey", ls="--", label="baseline")
    ax[1].set(xlabel="epoch", ylabel=monitor, title=f"validation {monitor}")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def traces(videos: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]], names, path) -> Path:
    """videos: (video_id, t [F], pred [F, K], true [F, K], valid [F]) for a few videos."""
    plt = _plt()
    k = len(names)
    fig, axes = plt.subplots(len(videos), k, figsize=(5 * k, 2.4 * len(videos)), squeeze=False)
    for r, (vid, t, pred, true, valid) in enumerate(videos):
        for j, name in enumerate(names):
            ax = axes[r][j]
            ax.plot(t, np.where(valid, true[:, j], np.nan), color="black", lw=1.2, label="true")
            ax.plot(t, pred[:, j], color="tab:red", lw=1.0, label="predicted")
            ax.set_title(f"{vid}: {name}", fontsize=9)
            ax.set_ylim(-1.05, 1.05) if np.nanmax(np.abs(true[:, j])) <= 1 else None
            if r == 0 and j == 0:
                ax.legend(fontsize=8)
    axes[-1][0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def scatter(pred: np.ndarray, true: np.ndarray, names, path) -> Path:
    plt = _plt()
    k = len(names)
    cols = min(k, 4)
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for j, name in enumerate(names):
        ax = axes[j // cols][j % cols]
        ax.scatter(true[:, j], pred[:, j], s=10)
        lo, hi = float(min(true[:, j].min(), pred[:, j].min())), float(max(true[:, j].max(), pred[:, j].max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
        ax.set(title=name, xlabel="true", ylabel="predicted")
    for j in range(k, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def confusion(cm, classes, path, title="confusion (rows: true)") -> Path:
    plt = _plt()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(classes), 0.8 + 0.8 * len(classes)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
