"""Fold models -> one prediction by CCC centering (the ABAW2 protocol, from AVEC 2016).

With ``folds.test: all`` on the ``abaw2`` scheme, six models are trained (five chunks of the
training videos + the validation set, each held out once). Videos outside every fold (the
manifest's ``test`` split, fold ``test``) were seen by none of them: each model predicts
them, and per video and target the six traces are merged by ``folds.ccc_centering``. The
report gives the merged CCC beside each fold model's on the same frames.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from . import config, data, evaluate, runinfo, tasks
from .checkpoints import BEST, load_weights
from .folds import ccc_centering
from .prepare import normalise_like_run

MERGE_FOLD = "test"     # the abaw2 scheme's fold of the `test` split: never trained on, never held out


def merge_folds(cfg: config.StudyConfig, store_root, run_dir, folds, video_ids, device=None,
                progress: bool = False) -> dict:
    """Each fold model's prediction of ``video_ids`` (frames task), merged; metrics when labelled.

    Writes ``fold-<f>/predictions/test_split/<video>.csv`` per fold model and
    ``predictions/merged/<video>.csv`` (and ``traces_merged.png``); returns
    {"videos", "labelled", "model" (merged metrics), "per_fold" (each model's metrics)}.
    """
    run_dir = Path(run_dir)
    dev = runinfo.pick_device(device)
    want = set(video_ids)
    rows = [r for r in data.dataset_rows(store_root, cfg.dataset) if r["video_id"] in want]
    labelled = all(r.get("frame_labels") for r in rows)
    base = data.load_corpus(cfg, store_root, dev, rows=rows, progress=progress, with_labels=labelled)
    everyone = {"test": list(range(len(base.video_ids)))}
    preds, task = {}, None
    for f in folds:
        fold_dir = run_dir / f"fold-{f}"
        fcfg = config.load(fold_dir / "config.yaml")
        corpus = copy.deepcopy(base)
        normalise_like_run(corpus, fcfg, fold_dir)
        task = tasks.make(fcfg, corpus, everyone, dev, labelled=labelled)
        model = task.build_model().to(dev)
        load_weights(model, fold_dir / BEST, dev)
        model.eval()
        preds[f] = task.predict(model, "test")
        task.write_predictions(preds[f], fold_dir, "test_split")    # what the merge reads, per fold
    # the targets' range (labels.scale's new range, else [-1, 1] as valence / arousal)
    clip = tuple(float(x) for x in cfg.labels.scale[2:]) if cfg.labels.scale else (-1.0, 1.0)
    first = preds[folds[0]]
    merged = first.pred.clone()
    pos = 0
    for vi in first.videos:       # per video and target, as the AVEC script
        n = int(base.offsets[vi + 1] - base.offsets[vi])
        stack = np.stack([preds[f].pred[pos:pos + n].double().cpu().numpy() for f in folds])   # [folds, T, K]
        for k in range(stack.shape[2]):
            merged[pos:pos + n, k] = torch.as_tensor(ccc_centering(stack[:, :, k], clip), dtype=merged.dtype)
        pos += n
    out_pred = copy.copy(first)
    out_pred.role, out_pred.pred = "merged", merged
    task.write_predictions(out_pred, run_dir, "merged")
    task.plot(out_pred, run_dir, "merged")
    out = {"videos": list(base.video_ids), "labelled": labelled,
           "method": "CCC centering per video and target over the fold models (folds.ccc_centering)"}
    if labelled:
        targets = cfg.labels.targets
        out["model"] = evaluate.frame_metrics(merged, first.true, first.valid, targets)
        out["per_fold"] = {f: evaluate.frame_metrics(p.pred, p.true, p.valid, targets) for f, p in preds.items()}
    return out
