"""Evaluation metrics: torch tensors in, python numbers out.

Computed in float64 on whatever device the tensors are on; callers concatenate all
frames / clips of a split first (validation CCC is over all frames together).
"""
from __future__ import annotations

import torch

__all__ = [
    "ccc", "pearson_per_target", "apcc", "accuracy", "per_class_recall", "uar",
    "weighted_f1", "confusion_matrix",
]


def _flat(pred, target, mask=None):
    p = pred.detach().reshape(-1).to(torch.float64)
    t = target.detach().reshape(-1).to(torch.float64)
    if mask is not None:
        m = mask.detach().to(torch.bool)
        while m.dim() < pred.dim():  # a [N] mask over [N, K] predictions
            m = m.unsqueeze(-1)
        m = m.expand(pred.shape).reshape(-1)
        p, t = p[m], t[m]
    keep = ~(torch.isnan(p) | torch.isnan(t))
    return p[keep], t[keep]


def ccc(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Concordance correlation over all (valid, non-NaN) elements pooled, population estimator.

    For one score per target, call it per column (``pred[:, k]``).
    """
    p, t = _flat(pred, target, mask)
    if p.numel() == 0:
        return float("nan")
    mp, mt = p.mean(), t.mean()
    cov = ((p - mp) * (t - mt)).mean()
    den = p.var(unbiased=False) + t.var(unbiased=False) + (mp - mt) ** 2
    return float(2 * cov / den) if den > 0 else float("nan")


def pearson_per_target(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> list[float]:
    """Pearson r per column of ``[N, K]`` over N clips, denominator floored at ``eps``."""
    p = pred.detach().to(torch.float64)
    t = target.detach().to(torch.float64)
    if p.dim() == 1:
        p, t = p[:, None], t[:, None]
    p = p - p.mean(0)
    t = t - t.mean(0)
    den = (p.pow(2).sum(0) * t.pow(2).sum(0)).sqrt().clamp_min(eps)
    return [float(x) for x in (p * t).sum(0) / den]


def apcc(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> float:
    """Average Pearson correlation over targets (the ERI challenge score)."""
    r = pearson_per_target(pred, target, eps)
    return sum(r) / len(r)


def _labels(pred: torch.Tensor) -> torch.Tensor:
    pred = pred.detach()
    return pred.argmax(-1) if pred.dim() > 1 else pred.long()


def _n_classes(p, t, n_classes):
    if n_classes is not None:
        return int(n_classes)
    return int(max(p.max().item() if p.numel() else 0, t.max().item() if t.numel() else 0)) + 1


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, n_classes: int | None = None) -> list[list[int]]:
    """``cm[true][pred]`` counts; ``pred`` may be labels ``[N]`` or logits ``[N, C]``."""
    p, t = _labels(pred).cpu(), target.detach().long().cpu()
    c = _n_classes(p, t, n_classes if n_classes is not None else (pred.shape[-1] if pred.dim() > 1 else None))
    cm = torch.bincount(t * c + p, minlength=c * c).reshape(c, c)
    return cm.tolist()


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 accuracy; ``pred`` labels or logits."""
    p, t = _labels(pred), target.detach().long()
    return float((p == t).to(torch.float64).mean()) if t.numel() else float("nan")


def per_class_recall(pred: torch.Tensor, target: torch.Tensor, n_classes: int | None = None) -> list[float]:
    """Recall (per-class accuracy) for each class; NaN for a class absent from ``target``."""
    cm = torch.tensor(confusion_matrix(pred, target, n_classes), dtype=torch.float64)
    support = cm.sum(1)
    rec = cm.diag() / support
    return [float(x) if s > 0 else float("nan") for x, s in zip(rec, support)]


def uar(pred: torch.Tensor, target: torch.Tensor, n_classes: int | None = None) -> float:
    """Unweighted average recall over the classes present in ``target``."""
    rec = [r for r in per_class_recall(pred, target, n_classes) if r == r]
    return sum(rec) / len(rec) if rec else float("nan")


def weighted_f1(pred: torch.Tensor, target: torch.Tensor, n_classes: int | None = None) -> float:
    """Per-class F1 averaged with weights = true support (a 0/0 precision or recall counts as 0)."""
    cm = torch.tensor(confusion_matrix(pred, target, n_classes), dtype=torch.float64)
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    prec = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    rec = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec).clamp_min(1e-300), torch.zeros_like(tp))
    total = support.sum()
    return float((f1 * support).sum() / total) if total > 0 else float("nan")
