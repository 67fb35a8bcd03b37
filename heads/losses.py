"""Training losses (differentiable, masked where a sequence can be padded).

Sequence regression inputs are ``pred, target [B, T]`` or ``[B, T, K]`` with ``mask [B, T]``
(True = valid); statistics run over T for each (window, target) and the loss averages
windows and targets.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ccc", "ccc_loss", "mse_loss", "l1_loss", "pearson", "apcc_loss", "ce_loss",
    "polarity_tensor", "ep_ce_loss", "pcce_loss", "CCCLoss", "EPCELoss",
]

ESTIMATORS = ("population", "sample", "reference")


def _as_3d(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(-1) if x.dim() == 2 else x


def ccc(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
        estimator: str = "population", eps: float = 1e-8) -> torch.Tensor:
    """Concordance correlation per window and target: ``[B]`` or ``[B, K]``.

    ``population`` divides covariance and variances by N; ``sample`` by N - 1 (both are one
    consistent estimator, CCC(x, x) = 1). ``reference`` reproduces the ABAW2 code:
    covariance / N but variances / (N - 1), so CCC(x, x) = (N - 1) / N. ``eps`` is added to
    the denominator in all three.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, not {estimator!r}")
    squeeze = pred.dim() == 2
    p, t = _as_3d(pred), _as_3d(target)
    if mask is None:
        m = torch.ones(p.shape[:2], dtype=p.dtype, device=p.device)
    else:
        m = mask.to(p.dtype)
    m = m.unsqueeze(-1)
    n = m.sum(1)  # [B, 1]
    n_safe = n.clamp_min(1.0)
    mp = (p * m).sum(1) / n_safe
    mt = (t * m).sum(1) / n_safe
    dp = (p - mp.unsqueeze(1)) * m
    dt = (t - mt.unsqueeze(1)) * m
    sxy = (dp * dt).sum(1)
    sxx = (dp * dp).sum(1)
    syy = (dt * dt).sum(1)
    n_var = (n - 1).clamp_min(1.0)
    if estimator == "population":
        cov, vp, vt = sxy / n_safe, sxx / n_safe, syy / n_safe
    elif estimator == "sample":
        cov, vp, vt = sxy / n_var, sxx / n_var, syy / n_var
    else:
        cov, vp, vt = sxy / n_safe, sxx / n_var, syy / n_var
    out = 2 * cov / (vp + vt + (mp - mt) ** 2 + eps)
    return out.squeeze(-1) if squeeze else out


def ccc_loss(pred, target, mask=None, estimator: str = "population", eps: float = 1e-8) -> torch.Tensor:
    """``1 - CCC`` per window (and target), averaged. Windows with no valid frame are skipped."""
    c = ccc(pred, target, mask, estimator, eps)
    if mask is None:
        return (1 - c).mean()
    has = (mask.sum(1) > 0).to(c.dtype)
    if c.dim() == 2:
        has = has.unsqueeze(-1).expand_as(c)
    return ((1 - c) * has).sum() / has.sum().clamp_min(1.0)


def _masked_reduce(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype)
    while m.dim() < err.dim():
        m = m.unsqueeze(-1)
    m = m.expand_as(err)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def mse_loss(pred, target, mask=None) -> torch.Tensor:
    """Mean squared error over valid elements (mask broadcast over trailing target axes)."""
    return _masked_reduce((pred - target) ** 2, mask)


def l1_loss(pred, target, mask=None) -> torch.Tensor:
    """Mean absolute error over valid elements."""
    return _masked_reduce((pred - target).abs(), mask)


def pearson(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson r per column of ``[N, K]`` (over N), denominator floored at ``eps``: ``[K]``."""
    p = pred - pred.mean(0, keepdim=True)
    t = target - target.mean(0, keepdim=True)
    den = (p.pow(2).sum(0) * t.pow(2).sum(0)).sqrt().clamp_min(eps)
    return (p * t).sum(0) / den


def apcc_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - mean_k r_k`` over a batch of clips ``[N, K]`` (needs N >= 2 to be informative)."""
    return 1 - pearson(pred, target, eps).mean()


def ce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
            label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Plain cross-entropy (a named entry so configs can pick it like the others)."""
    return F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing, reduction=reduction)


def polarity_tensor(polarity: Sequence | Mapping | torch.Tensor, n_classes: int | None = None,
                    device=None) -> tuple[torch.Tensor, list]:
    """Class index -> polarity id tensor, plus the list of polarity labels (id order).

    ``polarity`` is a sequence (``polarity[c]`` = label of class c) or a mapping
    ``{class_index: label}``; labels can be any hashable (``"pos"``, ``-1``...).
    """
    if isinstance(polarity, torch.Tensor):
        polarity = polarity.tolist()
    if isinstance(polarity, Mapping):
        n = n_classes if n_classes is not None else max(polarity) + 1
        missing = [c for c in range(n) if c not in polarity]
        if missing:
            raise ValueError(f"polarity map has no entry for classes {missing}")
        labels_per_class = [polarity[c] for c in range(n)]
    else:
        labels_per_class = list(polarity)
        if n_classes is not None and len(labels_per_class) != n_classes:
            raise ValueError(f"polarity has {len(labels_per_class)} entries for {n_classes} classes")
    names: list = []
    for lab in labels_per_class:
        if lab not in names:
            names.append(lab)
    ids = torch.tensor([names.index(lab) for lab in labels_per_class], dtype=torch.long, device=device)
    return ids, names


def _lambda_tensor(lambdas, names: list, device) -> torch.Tensor:
    if isinstance(lambdas, (int, float)):
        return torch.full((len(names),), float(lambdas), device=device)
    if isinstance(lambdas, Mapping):
        missing = [n for n in names if n not in lambdas]
        if missing:
            raise ValueError(f"lambdas has no value for polarities {missing}")
        return torch.tensor([float(lambdas[n]) for n in names], device=device)
    raise TypeError("lambdas must be a number or a mapping {polarity: lambda}")


def ep_ce_loss(logits: torch.Tensor, target: torch.Tensor, polarity, lambdas=0.5,
               reduction: str = "mean") -> torch.Tensor:
    """Emotion-polarity CE: ``w_i = 1 + lambda_{P(y_i)} [P(argmax z_i) != P(y_i)]``, ``mean w_i CE_i``.

    The weight is a constant (computed without gradient): it rescales a sample's CE, it is
    not a term the network can lower by moving the argmax directly.
    """
    ids, names = polarity_tensor(polarity, logits.shape[-1], logits.device)
    lam = _lambda_tensor(lambdas, names, logits.device)
    ce = F.cross_entropy(logits, target, reduction="none")
    with torch.no_grad():
        p_true = ids[target]
        p_pred = ids[logits.argmax(-1)]
        w = 1.0 + lam[p_true] * (p_pred != p_true).to(ce.dtype)
    loss = w * ce
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def pcce_loss(logits: torch.Tensor, target: torch.Tensor, polarity, lam: float = 0.5,
              reduction: str = "mean") -> torch.Tensor:
    """VAANet's polarity-consistent CE: EP-CE with exactly two polarities and one lambda."""
    _, names = polarity_tensor(polarity, logits.shape[-1])
    if len(names) != 2:
        raise ValueError(f"PCCE needs exactly two polarities, got {names}")
    return ep_ce_loss(logits, target, polarity, float(lam), reduction)


class CCCLoss(nn.Module):
    """Module form of :func:`ccc_loss`."""

    def __init__(self, estimator: str = "population", eps: float = 1e-8):
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, not {estimator!r}")
        self.estimator, self.eps = estimator, eps

    def forward(self, pred, target, mask=None):
        return ccc_loss(pred, target, mask, self.estimator, self.eps)


class EPCELoss(nn.Module):
    """Module form of :func:`ep_ce_loss` (polarity map and lambdas fixed at construction)."""

    def __init__(self, polarity, lambdas=0.5, n_classes: int | None = None):
        super().__init__()
        ids, names = polarity_tensor(polarity, n_classes)
        self.names = names
        self.register_buffer("polarity_ids", ids, persistent=False)
        self.register_buffer("lambdas", _lambda_tensor(lambdas, names, None), persistent=False)

    def forward(self, logits, target):
        ce = F.cross_entropy(logits, target, reduction="none")
        with torch.no_grad():
            p_true = self.polarity_ids[target]
            w = 1.0 + self.lambdas[p_true] * (self.polarity_ids[logits.argmax(-1)] != p_true).to(ce.dtype)
        return (w * ce).mean()
