"""``run_study``: the entry point of training (``emocache train``): a study name, YAML or
config -> a run folder under ``runs/<exp>/<stamp>/``.

One held-out fold goes to the fit loop (experiments.fit.run_fold); ``folds.test: all``
cross-validates (experiments.crossval: one run_fold per fold, then pooled metrics).
``report.ablations`` (``--ablate``) then fits each modality alone beside it
(experiments.ablate, RUN/modality-<m>/); ``report.seeds`` (``--seeds``) runs all of that
once per seed (experiments.seeds, RUN/seed-<s>/) and reports mean +- sd.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from store.errors import InputError

from . import ablate, config, crossval, data, fit, seeds


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid() % 10000:04d}"


def run_study(study, store_root, runs_root="runs", overrides=(), resume=None, device=None, *,
              stop_after: int | None = None, progress: bool = True, run_dir=None) -> Path:
    """Train one study and write the run folder; returns it.

    ``study``: a name, a YAML path or a StudyConfig. ``resume``: a run dir; continues from its
    last checkpoint with its own resolved config (``overrides`` still apply, e.g. more
    epochs). ``stop_after``: stop after that many epochs in total, as an interruption would
    (tests resume on it). ``run_dir``: write there instead of a new stamp. Ablations and
    seeds are config (``report.ablations``, ``report.seeds``; the CLI's --ablate / --seeds).
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
        if cfg.report.seeds:
            seeds.parse(cfg.report.seeds)
        if cfg.report.ablations:
            for m in ablate.modalities(cfg):     # every modality's head resolves
                ablate.modality_config(cfg, m)
        if run_dir is None:
            run_dir = Path(runs_root) / cfg.name / _stamp()
            while run_dir.exists():
                run_dir = run_dir.with_name(run_dir.name + "x")
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILED).unlink(missing_ok=True)          # a resumed run is judged afresh
    try:
        if cfg.report.seeds:
            if stop_after is not None:
                raise InputError("<config>", "bad_config", "stop_after with report.seeds",
                                 fix="interrupt a multi-seed run and --resume it instead")
            return seeds.run(cfg, run_dir, lambda c, d: _nested(c, store_root, d, device, progress))
        return _fit_study(cfg, store_root, run_dir, device, bool(resume), stop_after, progress)
    except BaseException as e:
        # the folder says it did not finish, and why (latest_finished skips it)
        why = "interrupted (resume with --resume)" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        (run_dir / FAILED).write_text(why + "\n")
        raise


def _fit_study(cfg, store_root, run_dir, device, resume, stop_after, progress) -> Path:
    """One seed of a study: the fusion run (one fold or cross-validation), then its ablations.
    ``resume``: continue from whatever the folder holds (a multi-seed run always does)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if str(cfg.folds.test) == "all":
        crossval.run(cfg, store_root, run_dir, device=device, progress=progress)
    else:
        fit.run_fold(cfg, store_root, run_dir, device, resume=resume, stop_after=stop_after, progress=progress)
        if stop_after is not None and not (run_dir / "metrics.json").is_file():
            return run_dir                   # stopped before its end (tests resume on it)
    if cfg.report.ablations:
        ablate.run(cfg, store_root, run_dir, lambda c, d: _nested(c, store_root, d, device, progress))
    return run_dir


def _nested(cfg, store_root, run_dir, device, progress) -> Path:
    """A run inside a run (a seed, a modality alone): kept when it finished with everything it
    was asked for, else resumed (a fresh folder simply starts)."""
    d = Path(run_dir)
    if is_finished(d) and (not cfg.report.ablations or "ablation" in json.loads((d / "metrics.json").read_text())):
        return d
    return _fit_study(cfg, store_root, d, device, True, None, progress)


FAILED = "FAILED"
NESTED = ("fold-", ablate.PREFIX, seeds.PREFIX)   # runs inside a run: never "the latest run" themselves


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
            if r.is_dir() and not r.name.startswith(NESTED) and is_finished(r)]
    return max(runs, key=lambda r: (r / "metrics.json").stat().st_mtime, default=None)
