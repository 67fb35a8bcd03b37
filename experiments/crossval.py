"""Cross-validation (``folds.test: all``): every fold held out in turn, then pooled scores.

Why pooled: on a small corpus split by speaker (EmoDB: 10 speakers, 535 utterances) one
held-out speaker says little; the study's number is UAR / accuracy over the predictions of
all folds together, each made by a model that never saw that speaker. The classical
baselines (experiments.baselines) are fitted on exactly the same folds and written beside
the head in the same metrics.json, predictions.csv and report.md.

Layout: ``runs/<exp>/<stamp>/fold-<f>/`` is an ordinary single-fold run (config, metrics,
predictions, learning curves); the stamp folder holds the pooled results. Re-running with
``--resume <stamp folder>`` keeps finished folds and resumes an unfinished one.
"""
from __future__ import annotations

import contextlib
import csv
import gc
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from store.errors import InputError

from . import config, data, runinfo
from .checkpoints import LAST, write_json
from .evaluate import classification_metrics
from .fit import release_freed_memory, run_fold
from .folds import load_or_create
from .merge import MERGE_FOLD, merge_folds
from .prepare import fold_spec


def _natural(f: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(f))]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def inner_val_folds(folds: list[str], test: str, n: int, seed: int, member: int = 0) -> list[str]:
    """``n`` validation folds drawn from the training folds of outer fold ``test`` (nested
    validation): a fixed draw per (seed, test fold, member), so a resumed run picks the same
    ones; member 0 is the draw of a single-model run."""
    rest = [f for f in folds if f != test]
    if n >= len(rest):
        raise InputError("<config>", "bad_config", f"folds.inner_val {n} leaves no training fold "
                         f"({len(rest)} besides the test fold)", fix=f"folds.inner_val < {len(rest)}")
    rng = np.random.default_rng([int(seed), folds.index(test)] + ([int(member)] if member else []))
    return sorted((rest[i] for i in rng.choice(len(rest), n, replace=False)), key=_natural)


def _fold(cfg_dict: dict, fold: str, store_root, fold_dir: str, device, threads: int | None,
          train_folds=None, val_folds=None) -> dict:
    """Train and score one held-out fold (runs in a worker process when folds run in parallel).
    ``train_folds`` None: every other fold trains; a list: those (the merge fold never does)."""
    if threads:
        torch.set_num_threads(threads)
    fold_dir = Path(fold_dir)
    fold_dir.mkdir(parents=True, exist_ok=True)
    cfg = config.from_dict(cfg_dict)
    cfg.folds.test, cfg.folds.val = fold, (list(val_folds) if val_folds else None)
    if train_folds is not None:
        cfg.folds.train = [f for f in train_folds if f != fold]
    t0 = time.time()
    with open(fold_dir / "log.txt", "a") as log, contextlib.redirect_stdout(log):
        resume = (fold_dir / LAST).is_file() and (fold_dir / "config.yaml").is_file()
        if resume:     # the fold's own resolved config, as `--resume` reads it
            cfg = config.load(fold_dir / "config.yaml")
        try:
            run_fold(cfg, store_root, fold_dir, device, resume=resume, progress=False)
        finally:
            gc.collect()
            release_freed_memory()      # the next model starts from a small heap (see fit.release_freed_memory)
    return {"fold": fold, "seconds": round(time.time() - t0, 1)}


def member_seed(seed: int, member: int) -> int:
    """The seed of fold model ``member`` (train.members): member 0 keeps the study's seed."""
    return int(seed) + 7919 * int(member)


def _members(cfg: config.StudyConfig) -> int:
    n = 1 if cfg.train.members is None else int(cfg.train.members)
    if n < 1:
        raise InputError("<config>", "bad_config", f"train.members {n}", fix="1 (one model per fold) or more")
    if n > 1 and cfg.task != "clip_classification":
        raise InputError("<config>", "bad_config", f"train.members {n} with task {cfg.task}",
                         fix="members average class probabilities: use them with clip_classification, or set 1")
    return n


def _unit_dir(fold_dir: Path, member: int, members: int) -> Path:
    return fold_dir if members == 1 else fold_dir / f"member-{member}"


def combine_members(fold_dir: Path, members: int) -> dict:
    """One held-out fold scored by the mean of its members' class probabilities: the fold's
    predictions_test.csv and metrics.json (what pooling and the report read), the members'
    own runs kept in member-*/."""
    from .folds import mean_prediction_csvs, read_prediction_csvs

    dirs = [fold_dir / f"member-{k}" for k in range(members)]
    paths = [d / "predictions_test.csv" for d in dirs]
    tables = read_prediction_csvs(paths)
    if any([r["video_id"] for r in t] != [r["video_id"] for r in tables[0]] for t in tables):
        raise InputError(fold_dir, "bad_labels", "the members of this fold scored different test clips",
                         fix="delete the fold folder and train it again (--resume keeps the other folds)")
    mean_prediction_csvs(paths, fold_dir / "predictions_test.csv")
    ms = [json.loads((d / "metrics.json").read_text()) for d in dirs]
    rows = read_prediction_csvs([fold_dir / "predictions_test.csv"])[0]
    classes = list(ms[0]["test"]["model"]["classes"])
    probs = torch.tensor([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    true = torch.tensor([classes.index(r["true"]) for r in rows])
    out = {**ms[0], "seed": [m["seed"] for m in ms],
           "best_epoch": int(np.median([m["best_epoch"] for m in ms])),
           "members": [{"seed": m["seed"], "best_epoch": m["best_epoch"], "val_uar": m.get("val", {}).get("model", {}).get("uar"),
                        "test_uar": m["test"]["model"]["uar"]} for m in ms],
           "model_selected_on_test": any(m["model_selected_on_test"] for m in ms)}
    out["test"] = {**ms[0]["test"], "model": classification_metrics(probs, true, classes)}
    out.pop("val", None)
    for name in ("data.json", "config.yaml"):     # what pooling, ablations and predict read of a fold
        shutil.copyfile(dirs[0] / name, fold_dir / name)
    write_json(out, fold_dir / "metrics.json")
    return out


def run(cfg: config.StudyConfig, store_root, run_dir, device=None, progress: bool = True) -> Path:
    """One model per fold (in ``train.fold_jobs`` processes), pooled metrics, baselines, report."""
    t_start = time.time()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.folds.val is not None and str(cfg.folds.val) not in ("", "none", "null"):
        raise InputError("<config>", "bad_config", f"folds.test: all with folds.val {cfg.folds.val!r}",
                         fix="cross-validation holds out one fold at a time: set folds.val: null and "
                             "train.select: last (or best, which then selects on the held-out fold, recorded)")
    dev = runinfo.pick_device(device)
    config.dump(cfg, run_dir / "config.yaml")
    write_json(runinfo.collect(dev, cfg.seed), run_dir / "runinfo.json")
    rows = data.dataset_rows(store_root, cfg.dataset)
    fold_of = load_or_create(store_root, cfg.dataset, rows, fold_spec(cfg))
    folds = sorted({str(f) for f in fold_of.values()}, key=_natural)
    merge_ids = []
    if cfg.folds.scheme == "abaw2" and MERGE_FOLD in folds:
        # the abaw2 test split: no fold of its own; the fold models' predictions of it are merged
        folds.remove(MERGE_FOLD)
        merge_ids = sorted(v for v, f in fold_of.items() if str(f) == MERGE_FOLD)
    train_folds = folds if merge_ids else None
    fold_dirs = {f: run_dir / f"fold-{f}" for f in folds}
    members = _members(cfg)
    units = [(f, k) for f in folds for k in range(members)
             if not (fold_dirs[f] / "metrics.json").is_file()
             and not (_unit_dir(fold_dirs[f], k, members) / "metrics.json").is_file()]
    todo = sorted({f for f, _ in units}, key=folds.index)
    jobs = max(1, min(int(cfg.train.fold_jobs or 1), len(units))) if dev.type == "cpu" else 1
    print(f"{cfg.name}: {len(folds)} folds ({cfg.folds.scheme}"
          f"{' by ' + cfg.folds.by if cfg.folds.by else ''}), {len(folds) - len(todo)} done, "
          f"{len(todo)} to train" + (f" ({len(units)} models, {members} per fold)" if members > 1 else "")
          + f" in {jobs} process(es); logs in {run_dir}/fold-*/"
          + ("member-*/" if members > 1 else "") + "log.txt", flush=True)
    raw = cfg.to_dict()
    raw["folds"]["test"] = None
    n_inner = int(cfg.folds.inner_val or 0)
    inner = {(f, k): inner_val_folds(train_folds or folds, f, n_inner, cfg.folds.seed, k) if n_inner else None
             for f in folds for k in range(members)}

    def unit_args(f, k):
        return ({**raw, "seed": member_seed(cfg.seed, k)}, f, str(store_root),
                str(_unit_dir(fold_dirs[f], k, members)), device)

    unit_seconds = {}
    if jobs == 1:
        it = units
        if progress:
            from tqdm import tqdm
            it = tqdm(units, desc=f"{cfg.name} folds" if members == 1 else f"{cfg.name} fold models", unit="model")
        for f, k in it:
            unit_seconds[f, k] = _fold(*unit_args(f, k), None, train_folds, inner[f, k])["seconds"]
    elif units:
        from joblib import Parallel, delayed

        # one thread per process: on a few cores, parallel folds beat threads inside one model
        out = Parallel(n_jobs=jobs, verbose=5 if progress else 0)(
            delayed(_fold)(*unit_args(f, k), 1, train_folds, inner[f, k]) for f, k in units)
        unit_seconds = dict(zip(units, (o["seconds"] for o in out)))
    fold_seconds = {f: round(sum(v for (g, _), v in unit_seconds.items() if g == f), 1) for f in todo}
    if members > 1:    # every fold not yet combined (also one whose members all finished before a stop)
        for f in folds:
            if not (fold_dirs[f] / "metrics.json").is_file():
                combine_members(fold_dirs[f], members)
    result = summarize(cfg, store_root, run_dir, folds, fold_of, rows)
    if merge_ids and cfg.task == "frames":
        result["merged"] = merge_folds(cfg, store_root, run_dir, folds, merge_ids, device, progress=progress)
    result["seconds"] = round(time.time() - t_start, 1)
    result["fold_seconds"] = fold_seconds
    write_json(result, run_dir / "metrics.json")
    from store.writer import atomic_write_text

    atomic_write_text(run_dir / "report.md", report_text(result))   # never half a report after a crash
    _print(result, run_dir)
    return run_dir


# ----------------------------------------------------------------------------- pooling


def _read_predictions(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summarize(cfg: config.StudyConfig, store_root, run_dir: Path, folds, fold_of: dict, rows: list[dict]) -> dict:
    """Pool the folds' held-out predictions; run the baselines on the same folds and videos."""
    per_fold, fold_metrics = {}, {}
    for f in folds:
        m = json.loads((run_dir / f"fold-{f}" / "metrics.json").read_text())
        d = json.loads((run_dir / f"fold-{f}" / "data.json").read_text())
        fold_metrics[f] = (m, d)
    out = {"study": cfg.name, "task": cfg.task, "dataset": cfg.dataset,
           "protocol": {"folds": folds, "scheme": cfg.folds.scheme, "by": cfg.folds.by,
                        "select": cfg.train.select, "normalize_by": cfg.data.normalize_by,
                        "model_selected_on_test": any(m["model_selected_on_test"] for m, _ in fold_metrics.values()),
                        "test_videos": {f: d["folds"]["videos"]["test"] for f, (m, d) in fold_metrics.items()}}}
    if cfg.task != "clip_classification":
        # other tasks: per-fold scores and their mean (pooling needs task-specific merging)
        for f, (m, _) in fold_metrics.items():
            per_fold[f] = {k: v for k, v in m["test"]["model"].items() if isinstance(v, (int, float))}
        keys = sorted(set.intersection(*(set(v) for v in per_fold.values()))) if per_fold else []
        counts = [k for k in keys if k.startswith("n_")]   # n_frames, n_clips: summed, a mean means nothing
        out["model"] = {"mean_over_folds": {k: float(np.mean([per_fold[f][k] for f in folds]))
                                            for k in keys if k not in counts},
                        "total_over_folds": {k: int(sum(per_fold[f][k] for f in folds)) for k in counts},
                        "per_fold": per_fold}
        return out

    classes = list(fold_metrics[folds[0]][0]["test"]["model"]["classes"])
    preds, majority = [], []
    for f in folds:
        m, _ = fold_metrics[f]
        for r in _read_predictions(run_dir / f"fold-{f}" / "predictions_test.csv"):
            preds.append({**r, "fold": f})
        tm = m["test"]["model"]
        per_fold[f] = {"uar": tm["uar"], "accuracy": tm["accuracy"], "n_clips": tm["n_clips"],
                       "epochs_run": m["epochs_run"], "best_epoch": m["best_epoch"]}
        maj = m["test"]["baseline"].get("predicts", "").removeprefix("majority class ")
        majority += [maj] * tm["n_clips"]
    true = torch.tensor([classes.index(p["true"]) for p in preds])
    probs = torch.tensor([[float(p[f"p_{c}"]) for c in classes] for p in preds])
    model = classification_metrics(probs, true, classes)
    model["per_fold"] = per_fold
    out["model"] = model
    out["trivial"] = {"predicts": "the majority class of the training folds, per fold",
                      **{k: v for k, v in classification_metrics(
                          torch.tensor([classes.index(x) if x in classes else 0 for x in majority]), true,
                          classes).items() if k in ("uar", "accuracy")}}
    base = _baselines(cfg, store_root, rows, fold_of, folds, classes, out["protocol"]["test_videos"])
    out["baselines"] = {k: {kk: vv for kk, vv in v.items() if kk not in ("pred", "video_ids")}
                        for k, v in base.items()}
    _write_predictions(run_dir, preds, classes, base)
    _plots(run_dir, model, base, classes)
    return out


def _baselines(cfg, store_root, rows, fold_of, folds, classes, test_videos) -> dict:
    from . import baselines

    if cfg.baselines is None:
        return {}
    if cfg.labels.source != "clip":
        return {"classical baselines": {"skipped": "they need clip labels (labels.source: clip)"}}
    specs = baselines.parse_specs(cfg.baselines)
    # a baseline feature the study also uses reads the study's own key (pinned or computed)
    known = {f.spec.extractor: {"extractor": f.spec.extractor, "params": f.spec.params, "key": f.key}
             for f in data.resolve_features(cfg, store_root)}
    for s in specs:
        s.features = [known.get(x, x) if isinstance(x, str) else x for x in s.features]
    tested = {v for vids in test_videos.values() for v in vids}     # exactly the head's test videos
    used = {v: fold_of[v] for v in tested}
    # a list of C is chosen on validation folds drawn from each fold's training folds: the
    # head's (folds.inner_val), or 2 drawn the same way when the head needs none (select: last)
    n_inner = int(cfg.folds.inner_val or 0) or min(2, len(folds) - 2)
    inner = {f: inner_val_folds(folds, f, n_inner, cfg.folds.seed) for f in folds} if n_inner > 0 else None
    return baselines.run_baselines(specs, rows, used, store_root, classes, target=cfg.labels.targets[0],
                           group=cfg.data.normalize_by or "group", per_group=bool(cfg.data.normalize_by),
                           test_folds=folds, seed=cfg.seed, inner=inner)


def _write_predictions(run_dir: Path, preds: list[dict], classes, base: dict) -> None:
    extra = {name: dict(zip(r["video_ids"], r["pred"])) for name, r in base.items() if "pred" in r}
    with open(run_dir / "predictions.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["video_id", "fold", "start", "length", "true", "pred"] + [f"p_{c}" for c in classes]
                    + [f"pred[{n}]" for n in extra])
        for p in preds:
            b = [extra[n].get(p["video_id"], -1) for n in extra]
            wr.writerow([p["video_id"], p["fold"], p["start"], p["length"], p["true"], p["pred"]]
                        + [p[f"p_{c}"] for c in classes] + [classes[int(x)] if x >= 0 else "" for x in b])


def _plots(run_dir: Path, model: dict, base: dict, classes) -> None:
    from . import report

    report.confusion(model["confusion"], classes, run_dir / "confusion.png",
                     title=f"head, pooled over folds (UAR {model['uar']:.3f})")
    for name, r in base.items():
        if "confusion" in r:
            report.confusion(r["confusion"], classes, run_dir / f"confusion_{_slug(name)}.png",
                             title=f"{name} (UAR {r['uar']:.3f})")


# ----------------------------------------------------------------------------- report


def _rows_of(result: dict) -> list[tuple[str, dict]]:
    rows = [("head (" + result["study"] + ")", result["model"])]
    rows += list(result.get("baselines", {}).items())
    if "trivial" in result:
        rows.append(("majority class", result["trivial"]))
    return rows


def report_text(result: dict) -> str:
    """Markdown: pooled UAR / accuracy of the head beside every baseline, then per fold."""
    p = result["protocol"]
    lines = [f"# {result['study']}: cross-validated over {len(p['folds'])} folds",
             "",
             f"Folds: scheme `{p['scheme']}`" + (f" by `{p['by']}`" if p["by"] else "")
             + f"; weights: `{p['select']}` epoch"
             + (" (selected on the held-out fold)" if p["model_selected_on_test"] else " (no selection on test)")
             + (f"; features standardised per `{p['normalize_by']}` with that group's own statistics"
                if p["normalize_by"] else "") + ".",
             ""]
    if result["task"] != "clip_classification":
        lines += ["| metric | mean over folds |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in result["model"]["mean_over_folds"].items()]
        lines += [f"| {k} (summed) | {v} |" for k, v in result["model"].get("total_over_folds", {}).items()]
        if "merged" in result:
            lines += [""] + _merged_lines(result)
        return "\n".join(lines) + "\n"
    lines += ["Pooled over all held-out predictions:", "", "| method | UAR | accuracy |", "|---|---|---|"]
    for name, r in _rows_of(result):
        if "skipped" in r:
            lines.append(f"| {name} | skipped | {r['skipped']} |")
        else:
            lines.append(f"| {name} | {r['uar']:.3f} | {r['accuracy']:.3f} |")
    folds = p["folds"]
    lines += ["", "UAR per held-out fold:", "",
              "| method | " + " | ".join(folds) + " |", "|---|" + "---|" * len(folds)]
    for name, r in _rows_of(result):
        if "per_fold" in r:
            lines.append(f"| {name} | " + " | ".join(f"{r['per_fold'][f]['uar']:.3f}" if f in r["per_fold"]
                                                      else "" for f in folds) + " |")
    if "seconds" in result:
        lines += ["", f"Wall time {result['seconds']:.0f} s (folds, baselines and report)."]
    return "\n".join(lines) + "\n"


def _merged_lines(result: dict) -> list[str]:
    """The ABAW2 protocol's table: each fold model on its held-out fold and on the test split,
    and the fold models merged by CCC centering on the test split."""
    mg = result["merged"]
    per_fold = result["model"]["per_fold"]
    lines = [f"Test split ({len(mg['videos'])} videos outside every fold), the fold models' predictions "
             f"merged by CCC centering per video and target:", ""]
    if not mg["labelled"]:
        return lines + ["The test split has no labels: merged predictions in predictions/merged/, no CCC."]
    ccc_keys = [k for k in mg["model"] if k.startswith("ccc_")]
    lines += ["| model | held-out fold ccc_mean | " + " | ".join(f"test {k}" for k in ccc_keys) + " |",
              "|---|---|" + "---|" * len(ccc_keys)]
    for f, m in mg["per_fold"].items():
        held = per_fold.get(f, {}).get("ccc_mean")
        lines.append(f"| fold {f} | {held:.4f} | " if held is not None else f"| fold {f} | | ")
        lines[-1] += " | ".join(f"{m[k]:.4f}" for k in ccc_keys) + " |"
    lines.append("| **merged (CCC centering)** | | " + " | ".join(f"**{mg['model'][k]:.4f}**" for k in ccc_keys)
                 + " |")
    lines += ["", f"{mg['model']['n_frames']} labelled test frames."]
    return lines


def _print(result: dict, run_dir: Path) -> None:
    if result["task"] == "clip_classification":
        print(f"pooled over {len(result['protocol']['folds'])} folds ({result['model']['n_clips']} clips):")
        for name, r in _rows_of(result):
            if "skipped" in r:
                print(f"  {name:<42} skipped: {r['skipped']}")
            else:
                print(f"  {name:<42} UAR {r['uar']:.3f}  accuracy {r['accuracy']:.3f}")
    else:
        print("mean over folds: " + ", ".join(f"{k}={v:.4f}" for k, v in result["model"]["mean_over_folds"].items())
              + "".join(f"; {k}={v} summed" for k, v in result["model"].get("total_over_folds", {}).items()))
        if result.get("merged", {}).get("labelled"):
            mg = result["merged"]
            print("test split, folds merged by CCC centering: "
                  + ", ".join(f"{k}={v:.4f}" for k, v in mg["model"].items() if k.startswith("ccc_"))
                  + "; single fold models ccc_mean "
                  + ", ".join(f"{f}={m['ccc_mean']:.4f}" for f, m in mg["per_fold"].items()))
    print(f"report: {run_dir / 'report.md'}")
