"""The one trainer: any study YAML -> runs/<exp>/<stamp>/ with checkpoints, metrics, plots.

Why one loop: studies differ in samples, heads and losses (experiments.tasks), not in how an
epoch runs, how a checkpoint is written or how resume restores every RNG. Checkpoints hold
state dicts and plain values only and are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from store.errors import InputError

from . import config as C
from . import data as D
from . import folds as F
from . import runinfo, tasks
from .evaluate import evaluate_split

LAST, BEST = "last.pt", "best.pt"


# ----------------------------------------------------------------------------- pieces


def pick_device(device=None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def make_optimizer(cfg: C.OptimConfig, params):
    name = cfg.name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    raise InputError("<config>", "bad_labels", f"unknown optimiser {cfg.name!r}", fix="adam, adamw or sgd")


def make_scheduler(cfg: C.ScheduleConfig, opt, epochs: int, steps_per_epoch: int = 1):
    """Stepped once per epoch; plateau steps on the validation monitor (higher is better);
    onecycle is stepped once per optimiser step (see `per_batch`)."""
    name = cfg.name.lower()
    if name in ("none", ""):
        return None
    if name == "onecycle":
        # warm-up to optim.lr then cosine down to ~0, per optimiser step (with momentum cycling)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                   total_steps=max(1, epochs * steps_per_epoch),
                                                   pct_start=cfg.pct_start)
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=cfg.patience,
                                                          factor=cfg.factor)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    if name == "cosine":
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
    raise InputError("<config>", "bad_labels", f"unknown schedule {cfg.name!r}",
                     fix="none, plateau, step, cosine or onecycle")


def per_batch(sched) -> bool:
    return isinstance(sched, torch.optim.lr_scheduler.OneCycleLR)


def optimizer_steps(n_samples: int, cfg: C.StudyConfig) -> int:
    """Optimiser steps in one epoch (what train_epoch takes), for per-batch schedules."""
    batches = math.ceil(n_samples / cfg.train.batch_size)
    return math.ceil(batches / max(1, cfg.train.accumulate))


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


def save_checkpoint(path: Path, model, opt, sched, scaler, state: State, gen) -> None:
    """Atomic: a crash while saving leaves the previous checkpoint intact."""
    blob = {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "state": {"epoch": state.epoch, "best": state.best, "best_epoch": state.best_epoch,
                      "bad_epochs": state.bad_epochs, "history": json.dumps(state.history)},
            "rng": _rng_state(gen)}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model, opt, sched, scaler, gen, device) -> State:
    blob = torch.load(path, map_location=device, weights_only=True)
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


def _json(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable, allow_nan=True))
    os.replace(tmp, path)


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


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid() % 10000:04d}"


# ----------------------------------------------------------------------------- setup


@dataclass
class Setup:
    cfg: C.StudyConfig
    run_dir: Path
    device: torch.device
    corpus: D.Corpus
    task: tasks.Task
    roles: dict
    norm: dict


def prepare(cfg: C.StudyConfig, store_root, run_dir: Path, device, progress=True) -> Setup:
    """Keys, folds, the contiguous tensors, normalisation from the training videos, the task."""
    feats = D.resolve_features(cfg, store_root)
    rows = D.dataset_rows(store_root, cfg.dataset)
    spec = F.FoldSpec(cfg.folds.scheme, cfg.folds.n, cfg.folds.seed, cfg.folds.by, cfg.folds.stratify)
    fold_of = F.load_or_create(store_root, cfg.dataset, rows, spec)
    role_ids = F.roles(fold_of, cfg.folds.test, cfg.folds.val, cfg.folds.train)
    used = set(role_ids["train"]) | set(role_ids["val"]) | set(role_ids["test"])
    corpus = D.load_corpus(cfg, store_root, device, feats=feats, rows=[r for r in rows if r["video_id"] in used],
                           progress=progress)
    roles = {r: corpus.index_of(ids) for r, ids in role_ids.items()}
    if cfg.data.normalize_by:
        # per-group statistics (e.g. per speaker), each group's own frames, no labels
        gpath = run_dir / "group_norm.pt"
        if gpath.is_file():
            gnorm = torch.load(gpath, weights_only=True)
        else:
            gnorm = D.fit_group_norm(corpus, cfg.data.normalize_by)
            torch.save(gnorm, gpath)
        D.apply_group_norm(corpus, gnorm, cfg.data.normalize_by)
    norm = {}
    if cfg.data.normalize:
        norm_path = run_dir / "norm.pt"
        if norm_path.is_file():
            norm = torch.load(norm_path, weights_only=True)
        else:
            norm = D.fit_norm(corpus, roles["train"])      # training folds only
            torch.save(norm, norm_path)
        D.apply_norm(corpus, norm)
    task = tasks.make(cfg, corpus, roles, device)
    info = {"features": [f.describe() for f in corpus.features],
            "folds": {"file": str(F.folds_path(store_root, cfg.dataset, spec)), "test": cfg.folds.test,
                      "val": cfg.folds.val, "model_selected_on_test": selected_on_test(cfg),
                      "videos": {r: [corpus.video_ids[i] for i in v] for r, v in roles.items()}},
            "samples": {r: task.n_samples(r) for r in ("train", "val", "test")},
            "skipped_videos": corpus.skipped, "notes": corpus.notes, "store": str(store_root)}
    _json(info, run_dir / "data.json")
    return Setup(cfg, run_dir, device, corpus, task, roles, norm)


# ----------------------------------------------------------------------------- the loop


def train_epoch(task, model, opt, scaler, gen, cfg: C.StudyConfig, device, sched=None) -> float:
    """One pass over the training samples; ``sched`` (a per-batch schedule) steps with the optimiser."""
    model.train()
    n = task.n_samples("train")
    bs, acc = cfg.train.batch_size, max(1, cfg.train.accumulate)
    order = torch.randperm(n, generator=gen).to(device)
    amp = scaler is not None and scaler.is_enabled()
    total, count = 0.0, 0
    opt.zero_grad(set_to_none=True)
    steps = list(range(0, n, bs))
    for k, lo in enumerate(steps):
        sel = order[lo:lo + bs]
        b = task.batch("train", sel)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            out = task.forward(model, b)
        loss = task.loss(out, b)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at batch {k} (check the features / lr)")
        scaler.scale(loss / acc).backward()
        if (k + 1) % acc == 0 or k == len(steps) - 1:
            if cfg.train.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            if sched is not None:
                sched.step()
        total += float(loss.detach()) * len(sel)
        count += len(sel)
    return total / max(count, 1)


def selected_on_test(cfg: C.StudyConfig) -> bool:
    """Whether the reported weights were chosen by a score on the test fold itself."""
    on_test = cfg.folds.val is None or str(cfg.folds.val) == str(cfg.folds.test)
    if cfg.train.select == "last":
        return on_test and bool(cfg.train.early_stop)     # early stopping on it selects too
    return on_test


def _fmt(m: dict, keys) -> str:
    return " ".join(f"{k}={m[k]:.4f}" for k in keys if isinstance(m.get(k), float))


def run_study(study, store_root, runs_root="runs", overrides=(), resume=None, device=None, *,
              stop_after: int | None = None, progress: bool = True, run_dir=None) -> Path:
    """Train one study (one held-out fold) and write the run folder; returns it.

    ``study``: a name, a YAML path or a StudyConfig. ``folds.test: all`` cross-validates
    (experiments.crossval: one such run per fold, then pooled metrics). ``resume``: a run dir;
    continues from its last checkpoint with its own resolved config (``overrides`` still
    apply, e.g. more epochs). ``stop_after``: stop after that many epochs in total, as an
    interruption would (tests resume on it). ``run_dir``: write there instead of a new stamp.
    """
    if resume:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise InputError(run_dir, "missing_file", "not a run folder (no config.yaml)",
                             fix="give the runs/<exp>/<stamp> folder printed by the first run")
        cfg = C.load(run_dir / "config.yaml", overrides)
    else:
        cfg = study if isinstance(study, C.StudyConfig) else C.load(study, overrides)
        if run_dir is None:
            run_dir = Path(runs_root) / cfg.name / _stamp()
            while run_dir.exists():
                run_dir = run_dir.with_name(run_dir.name + "x")
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    if str(cfg.folds.test) == "all":
        from . import crossval

        return crossval.run(cfg, store_root, run_dir, device=device, progress=progress)
    if cfg.train.select not in ("best", "last"):
        raise InputError("<config>", "bad_labels", f"train.select {cfg.train.select!r}", fix="best or last")
    dev = pick_device(device)
    C.dump(cfg, run_dir / "config.yaml")
    _json(runinfo.collect(dev, cfg.seed), run_dir / "runinfo.json")

    seed_all(cfg.seed)
    setup = prepare(cfg, store_root, run_dir, dev, progress=progress)
    task = setup.task
    seed_all(cfg.seed)                       # model init does not depend on how data was loaded
    model = task.build_model().to(dev)
    opt = make_optimizer(cfg.optim, model.parameters())
    sched = make_scheduler(cfg.schedule, opt, cfg.train.epochs, optimizer_steps(task.n_samples("train"), cfg))
    scaler = torch.amp.GradScaler(dev.type, enabled=bool(cfg.train.amp and dev.type == "cuda"))
    gen = torch.Generator().manual_seed(cfg.seed)
    monitor = cfg.train.monitor or task.monitor
    state = State()
    if resume and (run_dir / LAST).is_file():
        state = load_checkpoint(run_dir / LAST, model, opt, sched, scaler, gen, dev)
        print(f"resumed {run_dir} after epoch {state.epoch}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{cfg.name}: {task.n_samples('train')} train / {task.n_samples('val')} val / "
          f"{task.n_samples('test')} test samples, {n_params:,} parameters, device {dev}")
    val_base = task.baseline("val").get(monitor)

    while state.epoch < cfg.train.epochs:
        t0 = time.time()
        loss = train_epoch(task, model, opt, scaler, gen, cfg, dev, sched if per_batch(sched) else None)
        _, val = evaluate_split(task, model, "val")
        score = val["model"].get(monitor)
        if score is None:
            raise InputError("<config>", "bad_labels", f"train.monitor {monitor!r} is not a metric",
                             fix=f"one of {sorted(k for k, v in val['model'].items() if isinstance(v, float))}")
        lr = opt.param_groups[0]["lr"]
        if sched is not None and not per_batch(sched):
            sched.step(score) if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) else sched.step()
        state.epoch += 1
        improved = score > state.best
        if improved:
            state.best, state.best_epoch, state.bad_epochs = score, state.epoch, 0
        else:
            state.bad_epochs += 1
        if improved or cfg.train.select == "last":
            tmp = run_dir / f".{BEST}.tmp"
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, run_dir / BEST)
        state.history.append({"epoch": state.epoch, "train_loss": loss, "lr": lr,
                              "val": {k: v for k, v in val["model"].items() if isinstance(v, (int, float))},
                              "val_baseline": val_base, "seconds": round(time.time() - t0, 2)})
        save_checkpoint(run_dir / LAST, model, opt, sched, scaler, state, gen)
        _json(state.history, run_dir / "history.json")
        print(f"epoch {state.epoch:3d}/{cfg.train.epochs} loss {loss:.4f} val {monitor} {score:.4f}"
              f"{' *' if improved else ''} lr {lr:.2e} ({time.time() - t0:.1f}s)", flush=True)
        stop = cfg.train.early_stop and state.bad_epochs >= cfg.train.early_stop
        if stop:
            print(f"early stop: no gain in {monitor} for {state.bad_epochs} epochs")
            break
        if stop_after is not None and state.epoch >= stop_after and state.epoch < cfg.train.epochs:
            print(f"stopped after epoch {state.epoch} (resume with --resume {run_dir})")
            return run_dir
    finish(setup, model, state, monitor)
    return run_dir


def finish(setup: Setup, model, state: State, monitor: str) -> dict:
    """Best weights -> held-out metrics beside the baseline, predictions, plots."""
    from . import report

    run_dir, task, cfg = setup.run_dir, setup.task, setup.cfg
    if (run_dir / BEST).is_file():   # the selected weights (train.select last: the final epoch's)
        model.load_state_dict(torch.load(run_dir / BEST, map_location=setup.device, weights_only=True))
    out = {"study": cfg.name, "task": cfg.task, "monitor": monitor, "best_epoch": state.best_epoch,
           "epochs_run": state.epoch, "seed": cfg.seed, "select": cfg.train.select,
           "model_selected_on_test": selected_on_test(cfg)}
    for role in ("val", "test"):
        pred, m = evaluate_split(task, model, role)
        out[role] = m
        task.write_predictions(pred, run_dir, role)
        task.plot(pred, run_dir, role)
    _json(out, run_dir / "metrics.json")
    if state.history:
        report.learning_curves(state.history, monitor, run_dir / "learning_curves.png")
    keys = [k for k, v in out["test"]["model"].items() if isinstance(v, float)]
    print(f"held-out test ({out['test']['model'].get('n_frames', out['test']['model'].get('n_clips'))} "
          f"{'frames' if cfg.task == 'frames' else 'clips'}):")
    print(f"  model    {_fmt(out['test']['model'], keys)}")
    print(f"  baseline {_fmt(out['test']['baseline'], keys)} ({out['test']['baseline'].get('predicts', '')})")
    print(f"run: {run_dir}")
    return out
