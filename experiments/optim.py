"""Optimisers and learning-rate schedules a study can name (``optim.name``, ``schedule.name``).

One registration each: ``@OPTIMIZERS.register("name") def make(cfg, params)`` and
``@SCHEDULERS.register("name", per_batch=False) def make(cfg, opt, epochs, steps_per_epoch)``.
Schedules are stepped once per epoch (``plateau`` on the validation monitor, higher is
better) unless registered ``per_batch=True`` (stepped with every optimiser step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from featurize.registry import Registry

OPTIMIZERS = Registry("optimiser")


@dataclass(frozen=True)
class Schedule:
    name: str
    make: Callable        # (ScheduleConfig, optimiser, epochs, steps_per_epoch) -> scheduler | None
    per_batch: bool


SCHEDULERS = Registry("schedule", entry=lambda name, fn, per_batch=False: Schedule(name, fn, per_batch))


def make_optimizer(cfg, params):
    return OPTIMIZERS.get(cfg.name.lower())(cfg, params)


def _schedule(cfg) -> Schedule:
    return SCHEDULERS.get(cfg.name.lower() or "none")


def make_scheduler(cfg, opt, epochs: int, steps_per_epoch: int = 1):
    return _schedule(cfg).make(cfg, opt, epochs, steps_per_epoch)


def per_batch(cfg) -> bool:
    """Whether the schedule ``cfg`` names steps with every optimiser step (else once per epoch)."""
    return _schedule(cfg).per_batch


def optimizer_steps(n_samples: int, cfg) -> int:
    """Optimiser steps in one epoch (what fit.train_epoch takes), for per-batch schedules."""
    batches = math.ceil(n_samples / cfg.train.batch_size)
    return math.ceil(batches / max(1, cfg.train.accumulate))


# ----------------------------------------------------------------------------- optimisers


@OPTIMIZERS.register("adam")
def adam(cfg, params):
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))


@OPTIMIZERS.register("adamw")
def adamw(cfg, params):
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))


@OPTIMIZERS.register("sgd")
def sgd(cfg, params):
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)


# ----------------------------------------------------------------------------- schedules


@SCHEDULERS.register("none")
def no_schedule(cfg, opt, epochs, steps_per_epoch):
    return None


@SCHEDULERS.register("onecycle", per_batch=True)
def onecycle(cfg, opt, epochs, steps_per_epoch):
    # warm-up to optim.lr then cosine down to ~0, per optimiser step (with momentum cycling)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                               total_steps=max(1, epochs * steps_per_epoch),
                                               pct_start=cfg.pct_start)


@SCHEDULERS.register("plateau")
def plateau(cfg, opt, epochs, steps_per_epoch):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=cfg.patience, factor=cfg.factor)


@SCHEDULERS.register("step")
def step(cfg, opt, epochs, steps_per_epoch):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)


@SCHEDULERS.register("cosine")
def cosine(cfg, opt, epochs, steps_per_epoch):
    """Linear warm-up over ``warmup_epochs``, then cosine down to ``min_lr``."""
    base = opt.param_groups[0]["lr"]
    floor = cfg.min_lr / base if base > 0 else 0.0
    warm = max(0, cfg.warmup_epochs)

    def factor(e: int) -> float:
        # e = number of scheduler steps taken: the lr of epoch e (0-based)
        if e < warm:
            return (e + 1) / (warm + 1)
        span = max(1, epochs - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(e - warm, span) / span))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
