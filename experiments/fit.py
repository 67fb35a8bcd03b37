"""The one fit loop: one held-out fold of any study -> a run folder with checkpoints, metrics,
predictions and plots.

Why one loop: studies differ in samples, heads and losses (experiments.tasks, .models,
.losses), not in how an epoch runs, how a checkpoint is written (experiments.checkpoints) or
how resume restores every RNG. Cross-validation (experiments.crossval) calls ``run_fold`` once
per fold; ``experiments.train.run_study`` is the entry point that picks one or the other.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from store.errors import InputError

from . import config, runinfo
from .checkpoints import BEST, LAST, State, load_checkpoint, load_weights, save_checkpoint, save_weights, write_json
from .evaluate import evaluate_split
from .optim import make_optimizer, make_scheduler, optimizer_steps, per_batch
from .prepare import Setup, prepare, selected_on_test


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3     # glibc mallopt parameters (malloc.h)


def _glibc_function(name: str):
    """A libc function (mallopt, malloc_trim), or None where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def keep_freed_memory(mmap_mb: int = 32, trim_mb: int = 256) -> bool:
    """Let glibc keep freed batch and activation memory for the next step (process-wide).

    Why: glibc serves every block above its mmap threshold with a fresh mmap and returns it
    on free, and trims the heap top it frees, so each step page-faulted its batch and
    activations in again. On one CPU thread a 8 x 300 x 512 float32 window gather took
    0.76 ms CPU, 0.32 ms with these settings (random windows from a 236 MB corpus: 1.74 ->
    1.12 ms for abaw2's three modalities; load 7). Blocks under `mmap_mb` (32 MiB, the most
    glibc takes on 64-bit) come from the heap, and up to `trim_mb` of free heap top stays
    mapped. No effect on any number computed; RSS stays near its peak instead of dropping
    between steps. Returns False where there is no glibc (the setting is then a no-op).
    """
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_mb) << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, int(trim_mb) << 20))


def release_freed_memory() -> bool:
    """Hand the heap memory `keep_freed_memory` kept back to the OS (glibc malloc_trim).

    Why: a process that trains several models in turn (a fold_jobs worker of
    experiments.crossval) otherwise keeps its biggest model's peak as RSS; joblib's loky
    reads that growth (> 300 MB over its first task) as a leak, stops the worker and starts
    another (a re-import, and "UserWarning: A worker stopped while some jobs were given to the
    executor" in the user's terminal). EmoDB, 30 models of 2 epochs, fold_jobs 2, same UAR:
    2 min 46 s and 4 min 33 s CPU with the restart and the warning, 2 min 11 s and 3 min 31 s
    without (2026-12-03, load ~2). Called after each model.
    """
    import ctypes

    trim = _glibc_function("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    return bool(trim(0))


def train_epoch(task, model, opt, scaler, gen, cfg: config.StudyConfig, device, sched=None) -> float:
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


def _fmt(m: dict, keys) -> str:
    return " ".join(f"{k}={m[k]:.4f}" for k in keys if isinstance(m.get(k), float))


def run_fold(cfg: config.StudyConfig, store_root, run_dir, device=None, *, resume: bool = False,
             stop_after: int | None = None, progress: bool = True) -> Path:
    """Train one held-out fold into ``run_dir`` (resuming from its last checkpoint when asked)."""
    run_dir = Path(run_dir)
    if cfg.train.select not in ("best", "last"):
        raise InputError("<config>", "bad_config", f"train.select {cfg.train.select!r}", fix="best or last")
    dev = runinfo.pick_device(device)
    keep_freed_memory()
    if dev.type == "cpu" and cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    config.dump(cfg, run_dir / "config.yaml")
    write_json(runinfo.collect(dev, cfg.seed), run_dir / "runinfo.json")

    runinfo.seed_all(cfg.seed)
    setup = prepare(cfg, store_root, run_dir, dev, progress=progress)
    task = setup.task
    runinfo.seed_all(cfg.seed)               # model init does not depend on how data was loaded
    model = task.build_model().to(dev)
    opt = make_optimizer(cfg.optim, model.parameters())
    sched = make_scheduler(cfg.schedule, opt, cfg.train.epochs, optimizer_steps(task.n_samples("train"), cfg))
    batch_sched = per_batch(cfg.schedule)
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
        loss = train_epoch(task, model, opt, scaler, gen, cfg, dev, sched if batch_sched else None)
        _, val = evaluate_split(task, model, "val")
        score = val["model"].get(monitor)
        if score is None:
            raise InputError("<config>", "bad_config", f"train.monitor {monitor!r} is not a metric",
                             fix=f"one of {sorted(k for k, v in val['model'].items() if isinstance(v, float))}")
        lr = opt.param_groups[0]["lr"]
        if sched is not None and not batch_sched:
            sched.step(score) if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) else sched.step()
        state.epoch += 1
        improved = score > state.best
        if improved:
            state.best, state.best_epoch, state.bad_epochs = score, state.epoch, 0
        else:
            state.bad_epochs += 1
        if improved or cfg.train.select == "last":
            save_weights(model, run_dir / BEST)
        state.history.append({"epoch": state.epoch, "train_loss": loss, "lr": lr,
                              "val": {k: v for k, v in val["model"].items() if isinstance(v, (int, float))},
                              "val_baseline": val_base, "seconds": round(time.time() - t0, 2)})
        save_checkpoint(run_dir / LAST, model, opt, sched, scaler, state, gen)
        write_json(state.history, run_dir / "history.json")
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
        load_weights(model, run_dir / BEST, setup.device)
    if getattr(model, "stats_refit", 0):   # the sequence head's statistics expert, fitted to convergence
        if not hasattr(task, "refit_stats"):
            raise InputError("<config>", "bad_config", f"head.args.stats_refit with task {cfg.task}",
                             fix="use it with clip_classification, or remove it")
        task.refit_stats(model)
        save_weights(model, run_dir / BEST)    # what predict and ablations load
    out = {"study": cfg.name, "task": cfg.task, "monitor": monitor, "best_epoch": state.best_epoch,
           "epochs_run": state.epoch, "seed": cfg.seed, "select": cfg.train.select,
           "model_selected_on_test": selected_on_test(cfg)}
    for role in ("val", "test"):
        pred, m = evaluate_split(task, model, role)
        out[role] = m
        task.write_predictions(pred, run_dir, role)
        task.plot(pred, run_dir, role)
    write_json(out, run_dir / "metrics.json")
    if state.history:
        report.learning_curves(state.history, monitor, run_dir / "learning_curves.png")
        report.tensorboard(state.history, monitor, run_dir)
    keys = [k for k, v in out["test"]["model"].items() if isinstance(v, float)]
    print(f"held-out test ({out['test']['model'].get('n_frames', out['test']['model'].get('n_clips'))} "
          f"{'frames' if cfg.task == 'frames' else 'clips'}):")
    print(f"  model    {_fmt(out['test']['model'], keys)}")
    print(f"  baseline {_fmt(out['test']['baseline'], keys)} ({out['test']['baseline'].get('predicts', '')})")
    print(f"run: {run_dir}")
    return out
