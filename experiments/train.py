"""``run_study``: the entry point of training (``emocache train``): a study name, YAML or
config -> a run folder under ``runs/<exp>/<stamp>/``.

One held-out fold goes to the fit loop (experiments.fit.run_fold); ``folds.test: all``
cross-validates (experiments.crossval: one run_fold per fold, then pooled metrics).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from store.errors import InputError

from . import config, crossval, fit


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid() % 10000:04d}"


def run_study(study, store_root, runs_root="runs", overrides=(), resume=None, device=None, *,
              stop_after: int | None = None, progress: bool = True, run_dir=None) -> Path:
    """Train one study and write the run folder; returns it.

    ``study``: a name, a YAML path or a StudyConfig. ``resume``: a run dir; continues from its
    last checkpoint with its own resolved config (``overrides`` still apply, e.g. more
    epochs). ``stop_after``: stop after that many epochs in total, as an interruption would
    (tests resume on it). ``run_dir``: write there instead of a new stamp.
    """
    if resume:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise InputError(run_dir, "missing_file", "not a run folder (no config.yaml)",
                             fix="give the runs/<exp>/<stamp> folder printed by the first run")
        cfg = config.load(run_dir / "config.yaml", overrides)
    else:
        cfg = study if isinstance(study, config.StudyConfig) else config.load(study, overrides)
        if run_dir is None:
            run_dir = Path(runs_root) / cfg.name / _stamp()
            while run_dir.exists():
                run_dir = run_dir.with_name(run_dir.name + "x")
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    if str(cfg.folds.test) == "all":
        return crossval.run(cfg, store_root, run_dir, device=device, progress=progress)
    return fit.run_fold(cfg, store_root, run_dir, device, resume=bool(resume), stop_after=stop_after,
                        progress=progress)
