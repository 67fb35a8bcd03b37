"""Predict one new video with a trained run: featurize it through the same cache code, then
write a per-frame predictions CSV and a PNG trace.

Why through the cache: the model only ever saw features made by `featurize.pipeline` with
the run's extractor params; computing them any other way would be a silent train/test skew.
The video is cached under an id derived from its absolute path, size and mtime, so it can never
collide with a training video of the same file name in the run's store.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from store.errors import InputError

from . import config, data, report, runinfo, tasks
from .checkpoints import BEST, load_weights
from .folds import mean_prediction_csvs, merge_prediction_csvs
from .prepare import normalise_like_run


def _video_id(path: Path) -> str:
    st = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:8]
    from store.keys import sanitize_id

    return sanitize_id(f"predict-{path.stem}")[:120] + f"-{tag}"


def _extractor_overrides(cfg: config.StudyConfig) -> tuple[list[str], dict]:
    names, over = [], {}
    for specs in cfg.features.values():
        for spec in specs:
            if spec.extractor not in names:
                names.append(spec.extractor)
            if spec.params:
                over[spec.extractor] = dict(spec.params)
            for up, params in (spec.upstream or {}).items():
                if params:
                    over[up] = dict(params)
    return names, over


def predict_video(video_path, run_dir, out_dir=None, store_root=None, device=None) -> Path:
    """Returns the predictions CSV path (a PNG trace is written beside it).

    Without ``store_root`` the video's features go to a temporary store that is removed when
    the predictions are written (each predict used to leave one behind in the temp folder).
    A cross-validated run (``folds.test: all``: fold-*/ runs, no best.pt of its own) predicts
    with every fold model and merges them (see ``_predict_with_folds``)."""
    if store_root is None:
        with tempfile.TemporaryDirectory(prefix="emocache-predict-") as tmp:
            return predict_video(video_path, run_dir, out_dir, tmp, device)
    from featurize.datasets.common import make_row
    from featurize.pipeline import run_features, write_manifest

    video_path, run_dir = Path(video_path), Path(run_dir)
    if not video_path.is_file():
        raise InputError(video_path, "missing_file", "video not found", fix="give the path of a media file")
    # fold models, or a fold's members (train.members): each a finished run, or members of one
    fold_runs = sorted(d for pat in ("fold-*", "member-*") for d in run_dir.glob(pat)
                       if ((d / BEST).is_file() and (d / "config.yaml").is_file()) or any(d.glob("member-*/" + BEST)))
    if not (run_dir / BEST).is_file() and fold_runs:
        return _predict_with_folds(video_path, run_dir, fold_runs, out_dir, store_root, device)
    seed_runs = sorted(d for d in run_dir.glob("seed-*") if (d / "metrics.json").is_file())
    if not (run_dir / BEST).is_file() and seed_runs:
        raise InputError(run_dir, "missing_file", "a multi-seed run (--seeds: one model per seed, no model of its own)",
                         fix=f"predict with one seed's run, e.g. --run {seed_runs[0]}")
    if not (run_dir / "config.yaml").is_file() or not (run_dir / BEST).is_file():
        raise InputError(run_dir, "missing_file", "not a finished run (needs config.yaml and best.pt)",
                         fix="give a runs/<exp>/<stamp> folder of a run that trained at least one epoch")
    cfg = config.load(run_dir / "config.yaml")
    dev = runinfo.pick_device(device)
    store = Path(store_root)
    out = Path(out_dir) if out_dir else run_dir / "predict"
    out.mkdir(parents=True, exist_ok=True)

    vid = _video_id(video_path)
    row = make_row(vid, video_path, "predict")
    dataset = f"predict-{vid}"
    write_manifest([row], store, dataset)
    names, over = _extractor_overrides(cfg)
    summary = run_features([row], store, names, overrides=over, scheduler="inline", progress=False, echo=False)
    if summary.failed_total:
        first = summary.failures[0]      # one line, the user's file name: not once per extractor
        msg = first["message"].split(" — fix: ")[0].replace(f"{video_path}: ", "")
        raise InputError(video_path, first["reason"], msg,
                         fix="give a video or audio file the study's extractors can read")

    # the exact keys the run trained on; a different key now means different extractor code or libraries
    trained = {}
    if (run_dir / "data.json").is_file():
        import json

        trained = {f["extractor"]: f["key"] for f in json.loads((run_dir / "data.json").read_text())["features"]}
    from featurize.registry import resolve_key

    # the keys the features just written have (the one key function), not a pinned training key
    pinned = {m: [dataclasses.replace(s, key=resolve_key(s.extractor, s.params, s.upstream)[0]) for s in specs]
              for m, specs in cfg.features.items()}
    for s in (s for specs in pinned.values() for s in specs):
        if s.extractor in trained and trained[s.extractor] != s.key:
            warnings.warn(f"{s.extractor}: this machine makes key {s.key}, the run trained on "
                          f"{trained[s.extractor]} (other library versions or weights): predictions may drift",
                          stacklevel=2)
    pcfg = dataclasses.replace(cfg, dataset=dataset, features=pinned)
    corpus = data.load_corpus(pcfg, store, dev, rows=[row], progress=False, with_labels=False)
    normalise_like_run(corpus, cfg, run_dir)

    # the same Task as training, without labels: the same windows / clips, batching and head call
    task = tasks.make(pcfg, corpus, {"predict": [0]}, dev, labelled=False)
    model = task.build_model().to(dev)
    load_weights(model, run_dir / BEST, dev)
    model.eval()
    pred = task.frame_predictions(task.predict(model, "predict"))
    if cfg.task == "clip_classification":
        pred = torch.softmax(pred, -1)
        names_out = task.classes
        cols = [f"p_{c}" for c in names_out]
    else:
        names_out = list(cfg.labels.targets)
        cols = [f"pred_{t}" for t in names_out]

    p = pred.cpu().numpy()
    face = corpus.face.cpu().numpy().astype(bool)
    if cfg.data.mask_no_face:
        p[~face] = np.nan      # no face: missing, not a confident value (training never scored these frames)
    csv_path = out / f"{video_path.stem}.csv"
    with open(csv_path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["frame", "t", *cols, "face"] + (["pred"] if cfg.task == "clip_classification" else []))
        for i in range(len(p)):
            extra = [names_out[int(np.nanargmax(p[i]))]] if cfg.task == "clip_classification" and \
                np.isfinite(p[i]).all() else ([""] if cfg.task == "clip_classification" else [])
            wr.writerow([int(corpus.frame_index[i]), f"{corpus.times[i]:.4f}", *[f"{x:.5f}" for x in p[i]],
                         int(face[i])] + extra)
    report.predict_trace(corpus.times, p, face, cols, out / f"{video_path.stem}.png",
                         f"{video_path.name}: {len(p)} frames, a face in {100 * face.mean():.0f}%",
                         demo_model=trained_on_demo(cfg))
    return csv_path


def trained_on_demo(cfg) -> bool:
    """Whether the run learnt the synthetic demo corpus (drawn faces, tones): its numbers mean
    nothing for real faces, and predict says so."""
    return str(cfg.dataset) == "demo"


def _predict_with_folds(video_path: Path, run_dir: Path, fold_runs, out_dir, store_root, device) -> Path:
    """Every fold model predicts the video (one cache for all); the frames task merges the
    traces by CCC centering as the ABAW2 protocol does, clip tasks average the fold outputs
    (class probabilities, or intensities) per frame. Per-fold CSVs stay in fold-<f>/."""
    out = Path(out_dir) if out_dir else run_dir / "predict"
    paths = [predict_video(video_path, d, out / d.name, store_root, device) for d in fold_runs]
    merged = out / f"{video_path.stem}.csv"
    if config.load(run_dir / "config.yaml").task == "frames":
        merge_prediction_csvs(paths, merged)
    else:
        mean_prediction_csvs(paths, merged)
    table = np.genfromtxt(merged, delimiter=",", names=True, dtype=None, encoding=None)
    cols = [c for c in table.dtype.names if c.startswith(("pred_", "p_"))]
    values = np.stack([table[c].astype(float) for c in cols], 1) if cols else np.zeros((len(table), 0))
    report.predict_trace(table["t"], values, table["face"].astype(bool), cols, merged.with_suffix(".png"),
                         f"{video_path.name}: {len(paths)} fold models merged",
                         demo_model=trained_on_demo(config.load(run_dir / "config.yaml")))
    return merged
