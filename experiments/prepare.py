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


def prepare(cfg: config.StudyConfig, store_root, run_dir: Path, device, progress=True) -> Setup:
    """Keys, folds, the contiguous tensors, normalisation from the training videos, the task."""
    feats = data.resolve_features(cfg, store_root)
    rows = data.dataset_rows(store_root, cfg.dataset)
    spec = fold_spec(cfg)
    fold_of = folds.load_or_create(store_root, cfg.dataset, rows, spec)
    role_ids = folds.roles(fold_of, cfg.folds.test, cfg.folds.val, cfg.folds.train)
    used = set(role_ids["train"]) | set(role_ids["val"]) | set(role_ids["test"])
    corpus = data.load_corpus(cfg, store_root, device, feats=feats,
                              rows=[r for r in rows if r["video_id"] in used], progress=progress)
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
