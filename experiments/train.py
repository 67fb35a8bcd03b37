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

from . import config, crossval, data, fit


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
        # what can fail before training (missing keys, no dataset manifest) fails before a run
        # folder exists: failed attempts used to leave stub runs that "the latest run" then found
        data.resolve_features(cfg, store_root)
        data.dataset_rows(store_root, cfg.dataset)
        if run_dir is None:
            run_dir = Path(runs_root) / cfg.name / _stamp()
            while run_dir.exists():
                run_dir = run_dir.with_name(run_dir.name + "x")
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILED).unlink(missing_ok=True)          # a resumed run is judged afresh
    try:
        if str(cfg.folds.test) == "all":
            return crossval.run(cfg, store_root, run_dir, device=device, progress=progress)
        return fit.run_fold(cfg, store_root, run_dir, device, resume=bool(resume), stop_after=stop_after,
                            progress=progress)
    except BaseException as e:
        # the folder says it did not finish, and why (latest_finished skips it)
        why = "interrupted (resume with --resume)" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        (run_dir / FAILED).write_text(why + "\n")
        raise


FAILED = "FAILED"


def is_finished(run_dir) -> bool:
    """A run that wrote its metrics and was not marked FAILED."""
    d = Path(run_dir)
    return (d / "metrics.json").is_file() and not (d / FAILED).exists()


def latest_finished(folder) -> Path | None:
    """`folder` itself when it is a finished run, else its newest finished run below
    (RUNS/<study>/<stamp>, or RUNS/<study>): what "the latest run" means."""
    d = Path(folder)
    if is_finished(d):
        return d
    runs = [r for r in [*d.glob("*"), *d.glob("*/*")]
            if r.is_dir() and not r.name.startswith("fold-") and is_finished(r)]
    return max(runs, key=lambda r: (r / "metrics.json").stat().st_mtime, default=None)
