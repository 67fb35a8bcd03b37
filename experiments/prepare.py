"""Everything a fold's training needs before the first epoch: keys, folds, the contiguous
tensors, normalisation from the training videos only, and the task."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from featurize.weights import load_plain

from . import config, data, folds, tasks
from .checkpoints import write_json


@dataclass
class Setup:
    cfg: config.StudyConfig
    run_dir: Path
    device: torch.device
    corpus: data.Corpus
    task: tasks.Task
    roles: dict
    norm: dict


def fold_spec(cfg: config.StudyConfig) -> folds.FoldSpec:
    return folds.FoldSpec(cfg.folds.scheme, cfg.folds.n, cfg.folds.seed, cfg.folds.by, cfg.folds.stratify)


def selected_on_test(cfg: config.StudyConfig) -> bool:
    """Whether the reported weights were chosen by a score on the test fold itself."""
    on_test = cfg.folds.val is None or str(cfg.folds.val) == str(cfg.folds.test)
    if cfg.train.select == "last":
        return on_test and bool(cfg.train.early_stop)     # early stopping on it selects too
    return on_test


# the last corpus read in this process: the next fold or member (train.members) of the same
# study copies it instead of reading the store again
_LAST_CORPUS: dict = {}
# what a loaded corpus does not depend on (training and model choices; folds only pick the rows)
_NOT_LOADING = ("name", "description", "seed", "folds", "head", "loss", "optim", "schedule", "train", "report",
                "baselines")


def load_corpus_once(cfg: config.StudyConfig, store_root, device, feats, rows, progress) -> data.Corpus:
    """data.load_corpus, or, with train.members > 1, a copy of this process's last one when
    nothing it reads differs. Why: 3 members per fold on EmoDB prepare 30 models from the same
    535 clips; at load 14 each read took ~170 s of a ~10 minute model. Only then: the kept
    copy doubles the corpus in memory (a single model per fold reads the store each time)."""
    import copy
    import json

    if int(cfg.train.members or 1) <= 1:
        _LAST_CORPUS.clear()
        return data.load_corpus(cfg, store_root, device, feats=feats, rows=rows, progress=progress)
    raw = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_LOADING}
    key = json.dumps([str(store_root), str(device), [f.describe() for f in feats],
                      [r["video_id"] for r in rows], raw], sort_keys=True, default=str)
    if _LAST_CORPUS.get("key") != key:
        _LAST_CORPUS.clear()
        _LAST_CORPUS.update(key=key, corpus=data.load_corpus(cfg, store_root, device, feats=feats, rows=rows,
                                                             progress=progress))
    return copy.deepcopy(_LAST_CORPUS["corpus"])     # group norm and task set-up change it in place


def prepare(cfg: config.StudyConfig, store_root, run_dir: Path, device, progress=True) -> Setup:
    """Keys, folds, the contiguous tensors, normalisation from the training videos, the task."""
    feats = data.resolve_features(cfg, store_root)
    rows = data.dataset_rows(store_root, cfg.dataset)
    spec = fold_spec(cfg)
    fold_of = folds.load_or_create(store_root, cfg.dataset, rows, spec)
    role_ids = folds.roles(fold_of, cfg.folds.test, cfg.folds.val, cfg.folds.train)
    used = set(role_ids["train"]) | set(role_ids["val"]) | set(role_ids["test"])
    corpus = load_corpus_once(cfg, store_root, device, feats, [r for r in rows if r["video_id"] in used], progress)
    roles = {r: corpus.index_of(ids) for r, ids in role_ids.items()}
    if cfg.data.normalize_by:
        # per-group statistics (e.g. per speaker), each group's own frames, no labels
        gpath = run_dir / "group_norm.pt"
        if gpath.is_file():
            gnorm = load_plain(gpath)
        else:
            gnorm = data.fit_group_norm(corpus, cfg.data.normalize_by)
            torch.save(gnorm, gpath)
        data.apply_group_norm(corpus, gnorm, cfg.data.normalize_by)
    norm = {}
    if cfg.data.normalize:
        norm_path = run_dir / "norm.pt"
        if norm_path.is_file():
            norm = load_plain(norm_path)
        else:
            norm = data.fit_norm(corpus, roles["train"])      # training folds only
            torch.save(norm, norm_path)
        data.apply_norm(corpus, norm)
    task = tasks.make(cfg, corpus, roles, device)
    info = {"features": [f.describe() for f in corpus.features],
            "folds": {"file": str(folds.folds_path(store_root, cfg.dataset, spec)), "test": cfg.folds.test,
                      "val": cfg.folds.val, "model_selected_on_test": selected_on_test(cfg),
                      "videos": {r: [corpus.video_ids[i] for i in v] for r, v in roles.items()}},
            "samples": {r: task.n_samples(r) for r in ("train", "val", "test")},
            "skipped_videos": corpus.skipped, "notes": corpus.notes, "store": str(store_root)}
    write_json(info, run_dir / "data.json")
    return Setup(cfg, run_dir, device, corpus, task, roles, norm)


def normalise_like_run(corpus: data.Corpus, cfg: config.StudyConfig, run_dir: Path) -> None:
    """New videos (predict, the merge set of cross-validation) normalised as the run's own:
    per-group runs treat them as their own group (their own statistics, as a new speaker),
    then the run's training-fold statistics (norm.pt)."""
    if cfg.data.normalize_by:
        data.apply_group_norm(corpus, data.fit_group_norm(corpus, cfg.data.normalize_by), cfg.data.normalize_by)
    if (Path(run_dir) / "norm.pt").is_file():
        data.apply_norm(corpus, load_plain(Path(run_dir) / "norm.pt"))
