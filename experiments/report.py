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


BOUNDED = ("valence", "arousal")   # targets on [-1, 1]: fixed axes, so two plots compare by eye


def _bounded(name: str, *values) -> bool:
    if any(b in str(name).lower() for b in BOUNDED):
        return True
    finite = [np.asarray(v, float)[np.isfinite(np.asarray(v, float))] for v in values]
    return all(f.size == 0 or np.abs(f).max() <= 1.0 for f in finite)


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def best_epoch(history: list[dict], monitor: str) -> int | None:
    """The epoch with the highest validation `monitor` (the selection rule of experiments.fit)."""
    scores = [(h["val"].get(monitor), h["epoch"]) for h in history
              if isinstance(h.get("val", {}).get(monitor), (int, float)) and np.isfinite(h["val"][monitor])]
    return max(scores)[1] if scores else None


def learning_curves(history: list[dict], monitor: str, path) -> Path:
    """Training loss (log scale when positive) and the validation monitor per epoch, integer
    epoch ticks, the selected (best) epoch marked on both."""
    plt = _plt()
    ep = [h["epoch"] for h in history]
    loss = np.array([h["train_loss"] for h in history], float)
    best = best_epoch(history, monitor)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(ep, loss, marker="o", ms=3)
    log = bool(len(loss)) and bool(np.all(loss[np.isfinite(loss)] > 0))
    if log:
        ax[0].set_yscale("log")
    ax[0].set(xlabel="epoch", ylabel="training loss" + (" (log scale)" if log else ""), title="training loss")
    val = [h["val"].get(monitor, np.nan) for h in history]
    ax[1].plot(ep, val, marker="o", ms=3, label="model")
    if history and isinstance(history[0].get("val_baseline"), (int, float)):
        ax[1].axhline(history[0]["val_baseline"], color="grey", ls="--", label="baseline")
    if best is not None:
        for a in ax:
            a.axvline(best, color="tab:green", ls=":", lw=1.2)
        ax[1].plot([best], [val[ep.index(best)]], marker="*", ms=12, color="tab:green", ls="",
                   label=f"best epoch {best}: {val[ep.index(best)]:.3f}")
    ax[1].set(xlabel="epoch", ylabel=f"validation {monitor}", title=f"validation {monitor} (higher is better)")
    ax[1].legend(fontsize=8)
    for a in ax:
        _integer_ticks(a)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def tensorboard(history: list[dict], monitor: str, run_dir) -> Path | None:
    """The learning curves as TensorBoard event files in RUN/tensorboard (`tensorboard --logdir
    runs/`): train loss, every validation metric, lr, per epoch. None when the `tensorboard`
    package (which torch.utils.tensorboard needs) is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    out = Path(run_dir) / "tensorboard"
    with SummaryWriter(log_dir=str(out)) as w:
        for h in history:
            e = int(h["epoch"])
            w.add_scalar("train/loss", float(h["train_loss"]), e)
            if isinstance(h.get("lr"), (int, float)):
                w.add_scalar("train/lr", float(h["lr"]), e)
            for k, v in (h.get("val") or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    w.add_scalar(f"val/{k}", float(v), e)
        best = best_epoch(history, monitor)
        if best is not None:
            w.add_text("selection", f"best epoch {best} on validation {monitor}", best)
    return out


def _agreement(pred, true, valid) -> tuple[float, float]:
    """(CCC, Pearson r) of one trace over its valid, labelled frames (heads.metrics)."""
    import torch

    from heads.metrics import ccc, pearson_per_target

    ok = np.asarray(valid, bool) & np.isfinite(pred) & np.isfinite(true)
    if ok.sum() < 2:
        return float("nan"), float("nan")
    p = torch.as_tensor(np.asarray(pred, np.float64)[ok])
    t = torch.as_tensor(np.asarray(true, np.float64)[ok])
    return ccc(p, t), pearson_per_target(p[:, None], t[:, None])[0]


def traces(videos: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]], names, path,
           total: int | None = None, role: str = "test") -> Path:
    """videos: (video_id, t [F], pred [F, K], true [F, K], valid [F]); `total`: how many videos
    the split has (the figure says when it shows a sample). Each panel names its CCC and r."""
    plt = _plt()
    k = len(names)
    total = len(videos) if total is None else total
    fig, axes = plt.subplots(len(videos), k, figsize=(5 * k, 2.4 * len(videos) + 0.5), squeeze=False)
    for r, (vid, t, pred, true, valid) in enumerate(videos):
        for j, name in enumerate(names):
            ax = axes[r][j]
            c, pr = _agreement(pred[:, j], true[:, j], valid)
            ax.plot(t, np.where(valid, true[:, j], np.nan), color="black", lw=1.2, label="true")
            ax.plot(t, pred[:, j], color="tab:red", lw=1.0, label="predicted")
            ax.set_title(f"{vid}: {name}   CCC {c:.2f}, r {pr:.2f}", fontsize=9)
            if _bounded(name, true[:, j]):
                ax.set_ylim(-1.05, 1.05)
            ax.set(xlabel="time (s)", ylabel=f"{name} (label units)")
            if r == 0 and j == 0:
                ax.legend(fontsize=8)
    shown = (f"all {total} {role} videos" if len(videos) >= total else
             f"{len(videos)} of {total} {role} videos (the first {len(videos)}; report.n_traces)")
    fig.suptitle(f"predicted vs. true per frame, {shown}; CCC/r over labelled frames with a face", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def predict_trace(t, p, face, cols, path, title, demo_model: bool = False) -> Path:
    """`emocache predict`: the predicted trace(s) of one video; face-less frames shaded (their
    values are NaN, not predictions), valence/arousal on a fixed [-1, 1] axis."""
    plt = _plt()
    face = np.asarray(face, bool)
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for j, c in enumerate(cols):
        ax.plot(t, p[:, j], lw=1.0, label=c)
    if (~face).any():
        ax.fill_between(t, 0, 1, where=~face, transform=ax.get_xaxis_transform(),
                        color="grey", alpha=0.2, label="no face (no prediction)")
    if cols and all(_bounded(c, p[:, j]) for j, c in enumerate(cols)) and not any(c.startswith("p_") for c in cols):
        ax.set_ylim(-1.05, 1.05)
    elif cols and all(c.startswith("p_") for c in cols):
        ax.set_ylim(-0.02, 1.02)
    ylabel = "class probability" if cols and all(c.startswith("p_") for c in cols) else "predicted value"
    ax.set(xlabel="time (s)", ylabel=ylabel,
           title=title + ("  [model trained on the synthetic demo corpus: not meaningful for real faces]"
                          if demo_model else ""))
    ax.legend(fontsize=8, ncol=min(len(cols) + 1, 4))
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


def bars(rows, metric: str, path, title: str = "") -> Path:
    """A bar per method: rows (label, value, low, high[, points]); whiskers from low to high
    (a 95% CI, or mean +- sd over seeds), the optional points (each seed) drawn on the bar."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 1.4 * len(rows)), 3.8))
    x = np.arange(len(rows))
    vals = np.array([r[1] for r in rows], float)
    lo = np.array([r[2] for r in rows], float)
    hi = np.array([r[3] for r in rows], float)
    colors = ["tab:blue"] + ["tab:grey"] * (len(rows) - 1)
    ax.bar(x, vals, color=colors, alpha=0.8)
    ax.errorbar(x, vals, yerr=[np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)], fmt="none",
                ecolor="black", capsize=5, lw=1.2)
    for i, r in enumerate(rows):
        if len(r) > 4 and r[4] is not None:
            ax.plot([i] * len(r[4]), r[4], "o", color="black", ms=4, alpha=0.7)
        ax.text(i + 0.08, vals[i], f"{vals[i]:.3f}", ha="left", va="bottom", fontsize=8)
    ax.set_xticks(x, [r[0] for r in rows], rotation=20, ha="right")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
