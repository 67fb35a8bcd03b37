"""Targets from labels: linear rescaling, clip statistics of per-frame labels, quadrants.

Why here and not in a task: the clip tasks, predict and the classical baselines all turn
the same labels into the same targets; one copy keeps their numbers identical.
"""
from __future__ import annotations

import numpy as np

from store.errors import InputError

QUADRANTS = ("pos_high", "neg_high", "neg_low", "pos_low")


def quadrant_of(v: float, a: float) -> str:
    """(valence, arousal) -> quadrant name; 0 counts as positive."""
    if v >= 0:
        return "pos_high" if a >= 0 else "pos_low"
    return "neg_high" if a >= 0 else "neg_low"


def scaled(x, scale):
    """``labels.scale`` [lo, hi, new_lo, new_hi]: the linear map applied to targets (None: as is)."""
    if not scale:
        return x
    lo, hi, nlo, nhi = (float(s) for s in scale)
    return (x - lo) / (hi - lo) * (nhi - nlo) + nlo


def clip_stat(values: np.ndarray, stat: str) -> float:
    """One number for a clip from its frames' labels (NaN frames ignored; all NaN -> NaN)."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return float("nan")
    if stat == "mean":
        return float(v.mean())
    if stat == "median":
        return float(np.median(v))
    if stat == "std":
        return float(v.std())
    if stat == "min":
        return float(v.min())
    if stat == "max":
        return float(v.max())
    if stat.startswith("q") and stat[1:].isdigit():
        return float(np.quantile(v, int(stat[1:]) / 100.0))
    raise InputError("<config>", "bad_config", f"unknown clip statistic {stat!r}",
                     fix="use mean, median, std, min, max or qNN (e.g. q25)")


def class_names(cfg) -> list[str]:
    """Classification: the class names in logit order (``labels.classes``, or the quadrants)."""
    from .data import parse_target

    stat, _ = parse_target(cfg.labels.targets[0])
    return list(cfg.labels.classes or (QUADRANTS if stat == "quadrant" else []))
