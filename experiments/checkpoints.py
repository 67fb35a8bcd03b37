"""Checkpoints that resume bit for bit, the selected weights, and atomic JSON.

Why every RNG: a resumed run must give the same losses as one that never stopped
(tests/test_train.py compares them exactly), so the checkpoint holds the torch, shuffle,
Python and CUDA generators beside the model, optimiser, scheduler and scaler. Checkpoints
hold state dicts and plain values only and are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from featurize.weights import load_plain

LAST, BEST = "last.pt", "best.pt"


@dataclass
class State:
    epoch: int = 0                   # epochs finished
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list = field(default_factory=list)


def _rng_state(gen: torch.Generator) -> dict:
    st = {"torch": torch.get_rng_state(), "shuffle": gen.get_state(),
          "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(st["torch"])
    gen.set_state(st["shuffle"])
    random.setstate(_tuples(st["python"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _save(obj, path: Path) -> None:
    from store.writer import atomic_write

    atomic_write(path, lambda fh: torch.save(obj, fh), binary=True)


def save_checkpoint(path: Path, model, opt, sched, scaler, state: State, gen) -> None:
    """Atomic: a crash while saving leaves the previous checkpoint intact."""
    blob = {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "state": {"epoch": state.epoch, "best": state.best, "best_epoch": state.best_epoch,
                      "bad_epochs": state.bad_epochs, "history": json.dumps(state.history)},
            "rng": _rng_state(gen)}
    _save(blob, path)


def load_checkpoint(path: Path, model, opt, sched, scaler, gen, device) -> State:
    blob = load_plain(path, map_location=device)
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["optimizer"])
    if sched is not None and blob["scheduler"] is not None:
        sched.load_state_dict(blob["scheduler"])
    if scaler is not None and blob["scaler"] is not None:
        scaler.load_state_dict(blob["scaler"])
    rng = {k: (v.cpu() if isinstance(v, torch.Tensor) else [t.cpu() for t in v] if k == "cuda" else v)
           for k, v in blob["rng"].items()}
    _set_rng_state(rng, gen)
    s = blob["state"]
    return State(epoch=int(s["epoch"]), best=float(s["best"]), best_epoch=int(s["best_epoch"]),
                 bad_epochs=int(s["bad_epochs"]), history=json.loads(s["history"]))


def save_weights(model, path: Path) -> None:
    """The selected weights alone (what predict and the fold merge load), atomically."""
    _save(model.state_dict(), path)


def load_weights(model, path: Path, device) -> None:
    model.load_state_dict(load_plain(path, map_location=device))


def write_json(obj, path: Path) -> None:
    """Atomic JSON (numpy scalars, tensors and paths written as plain values)."""
    from store.writer import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=1, default=_jsonable, allow_nan=True))


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))
