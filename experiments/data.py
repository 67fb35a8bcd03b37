"""Load a study's features once: one contiguous tensor per modality on the label time grid.

Why: random windows read straight from Zarr ran 63/s, gathered from RAM 814/s (batch 8, three
modalities, 2 cores at load 14; windows.py has the figures). Each video is
read once (`store.reader.read_concat`), every modality is put on the frame grid of the first
feature (audio: nearest frame, index round((t - t0) / hop) as the ABAW2 reference), and the
result lives on the GPU when there is one, so a batch is one indexing op (see windows.py).

Conventions: the first modality of the study's ``features`` is the grid (and the "leader"
for heads that have one); its mask is the face mask. Labels stay NaN where unlabelled.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from store.errors import InputError

from .config import FeatureSpec, StudyConfig

_STAT = re.compile(r"^\s*(\w+)\(([^)]*)\)\s*$")


@dataclass
class ResolvedFeature:
    modality: str
    spec: FeatureSpec
    key: str

    def describe(self) -> dict:
        return {"modality": self.modality, "extractor": self.spec.extractor, "key": self.key,
                "array": self.spec.array, "params": self.spec.params}


@dataclass
class Modality:
    name: str
    x: torch.Tensor          # [N, D] float16 where every feature is stored so, else float32; all videos on the grid
    mask: torch.Tensor       # [N] bool (every feature of the modality valid at that frame)
    widths: list[int]        # width of each feature, in config order


@dataclass
class Corpus:
    rows: list[dict]                      # dataset manifest rows, in video order
    video_ids: list[str]
    offsets: np.ndarray                   # int64 [V + 1] on the grid
    frame_index: np.ndarray               # int64 [N] frame number in the original video
    times: np.ndarray                     # float64 [N] seconds
    modalities: dict[str, Modality]
    label_names: list[str]                # columns of `labels` (per-frame label names)
    labels: torch.Tensor | None           # [N, K] float32, NaN = unlabelled
    features: list[ResolvedFeature]
    skipped: dict[str, str] = field(default_factory=dict)     # video_id -> why it is not used
    notes: list[str] = field(default_factory=list)
    grid_mask: torch.Tensor | None = None  # the grid modality's mask when data.modalities leaves it out

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def face(self) -> torch.Tensor:
        if self.grid_mask is not None:
            return self.grid_mask
        return next(iter(self.modalities.values())).mask

    def index_of(self, video_ids) -> list[int]:
        pos = {v: i for i, v in enumerate(self.video_ids)}
        return [pos[v] for v in video_ids if v in pos]

    def frame_valid(self, mask_no_face: bool = True) -> torch.Tensor:
        """[N] frames that count in losses and metrics: labelled (all columns) and, by default, with a face."""
        ok = torch.ones(len(self.frame_index), dtype=torch.bool, device=self.face.device)
        if self.labels is not None and self.labels.shape[1]:
            ok &= torch.isfinite(self.labels).all(1)
        if mask_no_face:
            ok &= self.face
        return ok

    def frames_of(self, videos) -> torch.Tensor:
        """Global frame indices of the given video indices (for metrics over a split)."""
        parts = [np.arange(self.offsets[v], self.offsets[v + 1]) for v in videos]
        idx = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return torch.as_tensor(idx, dtype=torch.long, device=self.face.device)


# ----------------------------------------------------------------------------- keys


def resolve_features(cfg: StudyConfig, store_root) -> list[ResolvedFeature]:
    """Every (modality, feature spec) -> the store key it reads. Missing keys stop the run with
    all of them named at once and the one command that makes them (experiments.plan), not one
    extractor per attempt."""
    from store.reader import key_dir, list_keys

    from .plan import features_commands, needs

    rows = needs(cfg, store_root)
    missing = [n for n in rows if not n.present]
    if missing:
        have = {}
        for k in list_keys(store_root):
            have.setdefault(k["extractor"], []).append(k["key"])
        parts = []
        for n in missing:
            text = f"{n.extractor} (params {n.params or {}}, key {n.key})"
            if n.problem:
                text += f": {n.problem}"
            elif have.get(n.extractor):
                text += (f" — the store has {n.extractor} keys {have[n.extractor]} (other params or library "
                         f"versions): pin one with --set features.{n.modality}.<i>.key=... or recompute")
            parts.append(text)
        first = missing[0]
        raise InputError(key_dir(store_root, first.extractor, first.key), "missing_key",
                         f"study {cfg.name!r} needs {len(missing)} feature key(s) the store lacks: "
                         + "; ".join(parts),
                         fix=" && ".join(features_commands(cfg.dataset, store_root, missing))
                         or f"see `emocache plan --exp {cfg.name} --store {store_root}`")
    return [ResolvedFeature(n.modality, spec, n.key)
            for n, spec in zip(rows, (s for specs in cfg.features.values() for s in specs))]


# ----------------------------------------------------------------------------- labels


def parse_target(text: str) -> tuple[str | None, list[str]]:
    """"valence" -> (None, ["valence"]); "q25(arousal)" -> ("q25", ["arousal"])."""
    m = _STAT.match(str(text))
    if not m:
        return None, [str(text).strip()]
    return m.group(1), [a.strip() for a in m.group(2).split(",") if a.strip()]


def frame_label_columns(cfg: StudyConfig) -> list[str]:
    """The per-frame label columns a study needs (none when every target is a clip label)."""
    if cfg.labels.source != "frames":
        return []
    cols: list[str] = []
    for t in cfg.labels.targets:
        for c in parse_target(t)[1]:
            if c not in cols:
                cols.append(c)
    return cols


def _frame_labels(row: dict, cols: list[str], n: int, notes: list) -> np.ndarray:
    from featurize.datasets import load_frame_labels

    names, values = load_frame_labels(row)
    missing = [c for c in cols if c not in names]
    if missing:
        raise InputError(row.get("frame_labels", {}).get("path", row["video_id"]), "bad_labels",
                         f"label columns {missing} not found (have {names})",
                         fix="fix labels.targets in the study YAML or the label files")
    values = values[:, [names.index(c) for c in cols]].astype(np.float32)
    if len(values) != n:
        notes.append(f"{row['video_id']}: {len(values)} label rows for {n} frames "
                     f"({'padded with unlabelled' if len(values) < n else 'truncated'})")
        out = np.full((n, len(cols)), np.nan, np.float32)
        out[: min(n, len(values))] = values[:n]
        values = out
    return values


# ----------------------------------------------------------------------------- loading


def dataset_rows(store_root, dataset: str) -> list[dict]:
    from store.writer import FeatureStore

    return FeatureStore(store_root).read_dataset_manifest(dataset)


def _available(store_root, feats: list[ResolvedFeature], rows: list[dict]) -> tuple[list[dict], dict]:
    """Rows every feature key has finished; the others with the reason (never silently)."""
    from store.reader import error_rows, manifest_rows

    keep, skipped = [], {}
    done = {(f.spec.extractor, f.key): {r["video_id"] for r in manifest_rows(store_root, f.spec.extractor, f.key)}
            for f in feats}
    errors = {(f.spec.extractor, f.key): {r.get("video_id"): r.get("reason", "?")
                                          for r in error_rows(store_root, f.spec.extractor, f.key)}
              for f in feats}
    for row in rows:
        vid = row["video_id"]
        why = [f"{e}: {errors[(e, k)].get(vid, 'not featurized')}" for (e, k), ids in done.items() if vid not in ids]
        if why:
            skipped[vid] = "; ".join(why)
        else:
            keep.append(row)
    return keep, skipped


def _hop(attrs: dict, t: np.ndarray) -> float:
    if attrs.get("hop"):
        return float(attrs["hop"])
    if attrs.get("fps"):
        return 1.0 / float(attrs["fps"])
    return float(np.median(np.diff(t))) if len(t) > 1 else 1.0


def align_index(t_grid: np.ndarray, t_feat: np.ndarray, attrs: dict) -> np.ndarray:
    """Nearest feature frame for each grid time: round((t - t0) / hop), clipped into range."""
    n = len(t_feat)
    if n == len(t_grid) and attrs.get("fps"):
        return np.arange(n, dtype=np.int64)
    t0 = float(t_feat[0]) if n else 0.0
    idx = np.rint((np.asarray(t_grid, np.float64) - t0) / _hop(attrs, t_feat)).astype(np.int64)
    return np.clip(idx, 0, max(n - 1, 0))


def load_corpus(cfg: StudyConfig, store_root, device=None, video_ids=None,
                feats: list[ResolvedFeature] | None = None, rows: list[dict] | None = None,
                progress: bool = True, with_labels: bool = True) -> Corpus:
    """Read every needed video once and build the contiguous per-modality tensors.

    ``with_labels`` False: features only (prediction on a new video)."""
    from store.reader import read_concat

    from .plan import features_commands, needs

    feats = feats if feats is not None else resolve_features(cfg, store_root)
    rows = rows if rows is not None else dataset_rows(store_root, cfg.dataset)
    if video_ids is not None:
        want = set(video_ids)
        rows = [r for r in rows if r["video_id"] in want]
    rows, skipped = _available(store_root, feats, rows)
    if skipped:
        warnings.warn(f"{len(skipped)} video(s) of {cfg.dataset!r} lack features and are left out: "
                      + "; ".join(f"{k} ({v})" for k, v in list(skipped.items())[:5]), stacklevel=2)
    if not rows:
        raise InputError(f"{store_root}/datasets/{cfg.dataset}", "missing_video",
                         "no video has every feature the study needs",
                         fix=" && ".join(features_commands(cfg.dataset, store_root, needs(cfg, store_root)))
                         or f"see `emocache plan --exp {cfg.name} --store {store_root}`")
    vids = [r["video_id"] for r in rows]
    notes: list[str] = []

    grid = feats[0]
    it = feats
    if progress:
        from tqdm import tqdm
        it = tqdm(feats, desc=f"load {cfg.dataset}", unit="feature", leave=False)
    per_mod: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    offsets = t_grid = None
    for f in it:
        cat = read_concat(store_root, f.spec.extractor, f.key, vids, arrays=(f.spec.array, "mask", "t"))
        data = cat.arrays[f.spec.array]
        data = data.reshape(len(data), -1).astype(corpus_dtype(data.dtype), copy=False)
        mask = cat.arrays["mask"].astype(bool)
        if f is grid:
            offsets, t_grid = cat.offsets.astype(np.int64), cat.arrays["t"].astype(np.float64)
            per_mod.setdefault(f.modality, []).append((data, mask))
            continue
        idx = np.empty(int(offsets[-1]), np.int64)
        for i in range(len(vids)):
            lo, hi = offsets[i], offsets[i + 1]
            flo, fhi = cat.offsets[i], cat.offsets[i + 1]
            idx[lo:hi] = flo + align_index(t_grid[lo:hi], cat.arrays["t"][flo:fhi], cat.attrs[i])
        empty = [v for i, v in enumerate(vids) if cat.offsets[i + 1] == cat.offsets[i]]
        if empty:   # finished with no rows (the reader already checked the arrays against the manifest)
            raise InputError(f"{store_root}/features/{f.spec.extractor}/{f.key}/{empty[0]}", "missing_video",
                             f"{len(empty)} video(s) have no frames of {f.spec.extractor} (its run gave none), "
                             f"e.g. {empty[:3]}",
                             fix="leave them out of the dataset manifest, or use a feature that covers them")
        per_mod.setdefault(f.modality, []).append((data[idx], mask[idx]))

    n = int(offsets[-1])
    frame_index = np.concatenate([np.arange(offsets[i + 1] - offsets[i]) for i in range(len(vids))]).astype(np.int64)
    cols = frame_label_columns(cfg) if with_labels else []
    labels = None
    if cols:
        labels = np.concatenate([_frame_labels(r, cols, int(offsets[i + 1] - offsets[i]), notes)
                                 for i, r in enumerate(rows)]) if n else np.zeros((0, len(cols)), np.float32)

    mods = {}
    for name, parts in per_mod.items():
        x = np.concatenate([p[0] for p in parts], axis=1) if len(parts) > 1 else parts[0][0]
        m = np.logical_and.reduce([p[1] for p in parts])
        mods[name] = (x, m, [p[0].shape[1] for p in parts])

    if cfg.data.squeeze_unlabelled and labels is not None:
        # The ABAW2 reference: drop unlabelled frames from every modality before windowing,
        # so a window can straddle a gap. frame_index keeps the original frame numbers.
        keep = np.isfinite(labels).all(1)
        counts = np.add.reduceat(keep.astype(np.int64), offsets[:-1]) if len(vids) else np.zeros(0, np.int64)
        counts = np.where(np.diff(offsets) > 0, counts, 0)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        labels, frame_index, t_grid = labels[keep], frame_index[keep], t_grid[keep]
        mods = {k: (x[keep], m[keep], w) for k, (x, m, w) in mods.items()}
        notes.append(f"squeeze_unlabelled: kept {int(keep.sum())} of {n} frames")

    dev = torch.device(device) if device is not None else None
    grid_mask = None
    if cfg.data.modalities is not None:
        # the head reads some modalities (an ablation); the grid's face mask still decides which
        # frames count, so the scored frames / clips are the whole study's
        keep = [str(k) for k in cfg.data.modalities]
        unknown = sorted(set(keep) - set(mods))
        if unknown or not keep:
            raise InputError("<config>", "bad_config", f"data.modalities {keep} (the study's are {list(mods)})",
                             fix=f"name one or more of {list(mods)}, or null for all")
        grid_mask = torch.as_tensor(next(iter(mods.values()))[1], device=dev)
        mods = {k: v for k, v in mods.items() if k in keep}
    modalities = {k: Modality(k, torch.as_tensor(x, device=dev), torch.as_tensor(m, device=dev), w)
                  for k, (x, m, w) in mods.items()}
    return Corpus(rows=rows, video_ids=vids, offsets=offsets, frame_index=frame_index, times=t_grid,
                  modalities=modalities, label_names=cols,
                  labels=torch.as_tensor(labels, device=dev) if labels is not None else None,
                  features=feats, skipped=skipped, notes=notes, grid_mask=grid_mask)


# ----------------------------------------------------------------------------- normalisation


def fit_norm(corpus: Corpus, videos) -> dict[str, torch.Tensor]:
    """Per-dim mean/std of every modality over the valid frames of the given (training) videos."""
    frames = corpus.frames_of(videos)
    stats = {}
    for name, m in corpus.modalities.items():
        sel = frames[m.mask[frames]]
        x = m.x[sel].double()
        if len(x) == 0:
            mean = torch.zeros(m.x.shape[1], dtype=torch.float64, device=m.x.device)
            std = torch.ones_like(mean)
        else:
            mean, std = x.mean(0), x.std(0, unbiased=False)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        stats[f"{name}.mean"], stats[f"{name}.std"] = mean.float().cpu(), std.float().cpu()
    return stats


def corpus_dtype(stored) -> np.dtype:
    """float16 features stay float16 in memory (half the RAM, and a batch copy reads half the
    bytes: see experiments.windows.gather); anything else becomes float32."""
    return np.dtype(np.float16) if np.dtype(stored) == np.float16 else np.dtype(np.float32)


def normalize_rows(x: torch.Tensor, mask: torch.Tensor, mean, std, rows: int = 65536) -> None:
    """x[i] = (x[i] - mean) / std where mask[i], else 0; in place, computed in float32 per block
    of `rows` (one rounding to x's dtype, and no float32 copy of a float16 corpus)."""
    mean, std = mean.to(x.device, torch.float32), std.to(x.device, torch.float32)
    for lo in range(0, len(x), rows):
        blk = x[lo:lo + rows]
        z = (blk.float() - mean) / std
        blk.copy_(z.mul_(mask[lo:lo + rows, None]))


def apply_norm(corpus: Corpus, stats: dict[str, torch.Tensor]) -> None:
    """In place; masked frames become 0 (the training mean), never raw values the model never saw."""
    for name, m in corpus.modalities.items():
        normalize_rows(m.x, m.mask, stats[f"{name}.mean"], stats[f"{name}.std"])


def group_of(corpus: Corpus, field: str) -> list[str]:
    """The value of a row field (dotted, e.g. "group" = the speaker) for every video, as text."""
    from .folds import field_value

    return [str(field_value(r, field)) for r in corpus.rows]


def fit_group_norm(corpus: Corpus, field: str) -> dict[str, torch.Tensor]:
    """Per-dim mean/std of every modality for each group, from that group's own valid frames.

    Keys ``<group>/<modality>.mean|std``. No labels are used, so normalising a held-out group
    (a test speaker) with its own statistics leaks nothing about its classes.
    """
    groups = group_of(corpus, field)
    stats = {}
    for g in sorted(set(groups)):
        part = fit_norm(corpus, [i for i, x in enumerate(groups) if x == g])
        stats.update({f"{g}/{k}": v for k, v in part.items()})
    return stats


def apply_group_norm(corpus: Corpus, stats: dict[str, torch.Tensor], field: str) -> None:
    """In place: each video z-scored with its own group's statistics; masked frames become 0."""
    for i, g in enumerate(group_of(corpus, field)):
        lo, hi = int(corpus.offsets[i]), int(corpus.offsets[i + 1])
        for name, m in corpus.modalities.items():
            key = f"{g}/{name}"
            if f"{key}.mean" not in stats:
                raise InputError(corpus.video_ids[i], "bad_labels", f"no normalisation statistics for group {g!r}",
                                 fix="fit them on the corpus that holds this group (fit_group_norm)")
            normalize_rows(m.x[lo:hi], m.mask[lo:hi], stats[f"{key}.mean"], stats[f"{key}.std"])
