"""Held-out scoring: per-frame averaging of overlapping windows, metrics over a whole split,
and the trivial baseline on the same data.

Why the baseline always: on small or skewed corpora "CCC 0.3" or "accuracy 0.6" means little
until it stands beside predict-the-train-mean / predict-the-majority-class on the same frames.
"""
from __future__ import annotations

import numpy as np
import torch

from heads import metrics


class WindowAverager:
    """Sum window outputs into their frames; padding never contributes."""

    def __init__(self, n_frames: int, n_outputs: int, device=None):
        self.sums = torch.zeros(n_frames, n_outputs, dtype=torch.float64, device=device)
        self.counts = torch.zeros(n_frames, dtype=torch.float64, device=device)

    def add(self, idx: torch.Tensor, valid: torch.Tensor, out: torch.Tensor) -> None:
        """idx/valid [B, W] global frame indices and mask, out [B, W, K]."""
        sel = idx[valid]
        self.sums.index_add_(0, sel, out[valid].to(torch.float64))
        self.counts.index_add_(0, sel, torch.ones(sel.shape, dtype=torch.float64, device=sel.device))

    def result(self, frames: torch.Tensor | None = None):
        """(mean [F, K] float32, covered [F] bool) for the given frames (default all)."""
        s, c = (self.sums, self.counts) if frames is None else (self.sums[frames], self.counts[frames])
        return (s / c.clamp(min=1)[:, None]).float(), c > 0


def frame_metrics(pred: torch.Tensor, true: torch.Tensor, valid: torch.Tensor, names) -> dict:
    """CCC (and RMSE) per target over all valid frames of a split concatenated."""
    out = {}
    for j, name in enumerate(names):
        out[f"ccc_{name}"] = metrics.ccc(pred[:, j], true[:, j], valid)
        err = (pred[valid, j].double() - true[valid, j].double()) ** 2
        out[f"rmse_{name}"] = float(err.mean().sqrt()) if len(err) else float("nan")
    out["ccc_mean"] = float(np.mean([out[f"ccc_{n}"] for n in names]))
    out["n_frames"] = int(valid.sum())
    return out


def clip_regression_metrics(pred: torch.Tensor, true: torch.Tensor, names) -> dict:
    """Pearson r per target over all clips of a split, APCC = their mean, and MSE."""
    r = metrics.pearson_per_target(pred, true)
    out = {f"r_{n}": x for n, x in zip(names, r)}
    out["apcc"] = float(np.mean(r))
    out["mse"] = float(((pred.double() - true.double()) ** 2).mean())
    out["n_clips"] = int(len(true))
    return out


def classification_metrics(pred: torch.Tensor, true: torch.Tensor, classes) -> dict:
    """pred: logits [N, C] or labels [N]."""
    c = len(classes)
    return {"accuracy": metrics.accuracy(pred, true),
            "weighted_f1": metrics.weighted_f1(pred, true, c),
            "uar": metrics.uar(pred, true, c),
            "per_class_recall": dict(zip(classes, metrics.per_class_recall(pred, true, c))),
            "confusion": metrics.confusion_matrix(pred, true, c),
            "classes": list(classes),
            "n_clips": int(len(true))}


def evaluate_split(task, model, role: str):
    """(predictions, {"model": metrics, "baseline": metrics}) for one split of a task."""
    was = model.training
    model.eval()
    try:
        pred = task.predict(model, role)
    finally:
        model.train(was)
    return pred, {"model": task.metrics(pred), "baseline": task.baseline(role)}
