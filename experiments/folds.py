"""Fold assignment (written once per dataset, then reused) and CCC-centering of fold predictions.

Why a file: a fold split that is recomputed on every run silently changes when a video is
added or the code changes; a JSONL next to the dataset manifest is read back verbatim, so six
ABAW2 fold runs started weeks apart hold out the same videos.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurize.registry import Registry
from store.errors import InputError

# scheme name -> (rows, FoldSpec, numpy Generator seeded with spec.seed) -> {video_id: fold}
FOLD_SCHEMES = Registry("fold scheme")


@dataclass(frozen=True)
class FoldSpec:
    scheme: str = "split"   # split: the manifest's split column; abaw2: 5 train chunks + val; kfold
    n: int = 5              # kfold only
    seed: int = 0           # shuffling for abaw2 / kfold
    by: str | None = None   # kfold: keep rows with the same value of this field ("group") together
    stratify: str | None = None   # kfold: deal each value of this field (e.g. "labels.quadrant") evenly

    def file_name(self) -> str:
        if self.scheme == "split":
            return "split.jsonl"
        if self.scheme == "abaw2":
            return f"abaw2-seed{self.seed}.jsonl"
        if self.scheme == "group":
            return f"group-by-{self.by or 'group'}.jsonl"
        extra = (f"-by-{self.by}" if self.by else "") + (f"-strat-{self.stratify}" if self.stratify else "")
        if self.scheme == "kfold":
            return f"kfold{self.n}-seed{self.seed}{extra}.jsonl"
        return f"{self.scheme}-n{self.n}-seed{self.seed}{extra}.jsonl"     # any other registered scheme


def assign(rows: list[dict], spec: FoldSpec) -> dict[str, object]:
    """video_id -> fold (an int, or the split name for scheme "split")."""
    ids = sorted(r["video_id"] for r in rows)
    if len(set(ids)) != len(ids):
        dup = [k for k, c in Counter(ids).items() if c > 1][:3]
        raise InputError("<dataset manifest>", "duplicate_id", f"duplicate video ids {dup}",
                         fix="rebuild the dataset manifest (`emocache features` writes each video id once)")
    return FOLD_SCHEMES.get(spec.scheme)(rows, spec, np.random.default_rng(spec.seed))


@FOLD_SCHEMES.register("split")
def _split(rows, spec, rng):
    """The manifest's own split column (train / val / test)."""
    return {r["video_id"]: (r.get("split") or "train") for r in rows}


@FOLD_SCHEMES.register("abaw2")
def _abaw2(rows, spec, rng):
    """The reference: the training videos in 5 chunks (351 -> 70,70,70,70,71) and the original
    validation set as the sixth fold (index 5). The test split is no fold of the
    cross-validation: fold "test", which the six fold models never train on and whose
    predictions they merge (experiments.merge)."""
    train = [r["video_id"] for r in sorted(rows, key=lambda r: r["video_id"])
             if (r.get("split") or "train") == "train"]
    val = [r["video_id"] for r in rows if r.get("split") in ("val", "validation")]
    train = [train[i] for i in rng.permutation(len(train))]
    sizes = [len(train) // 5] * 5
    for i in range(len(train) % 5):
        sizes[4 - i] += 1                      # the remainder goes to the last chunks
    out, pos = {}, 0
    for f, size in enumerate(sizes):
        for vid in train[pos:pos + size]:
            out[vid] = f
        pos += size
    out.update({vid: 5 for vid in val})
    out.update({r["video_id"]: "test" for r in rows if r.get("split") == "test"})
    return out


@FOLD_SCHEMES.register("group")
def _group(rows, spec, rng):
    """Leave-one-group-out (e.g. one speaker per fold): the fold is the group's own value."""
    by = spec.by or "group"
    missing = [r["video_id"] for r in rows if field_value(r, by) in (None, "")]
    if missing:
        raise InputError("<dataset manifest>", "bad_labels",
                         f"folds.scheme group: {len(missing)} rows have no {by!r} (e.g. {missing[:3]})",
                         fix="set folds.by to a field every row has, or use scheme kfold")
    return {r["video_id"]: str(field_value(r, by)) for r in rows}


@FOLD_SCHEMES.register("kfold")
def _kfold(rows, spec, rng):
    """n folds at random; `by` keeps a field's rows together, `stratify` balances a field."""
    if spec.by and spec.stratify:
        raise InputError("<config>", "bad_config", "folds: use `by` or `stratify`, not both",
                         fix="keep one: folds.by keeps groups together, folds.stratify balances a field")
    if spec.stratify:
        # shuffle within each stratum, then deal round-robin, continuing where the last
        # stratum stopped so fold sizes stay within one of each other
        strata: dict[str, list[str]] = {}
        for r in sorted(rows, key=lambda r: r["video_id"]):
            strata.setdefault(str(field_value(r, spec.stratify)), []).append(r["video_id"])
        out, pos = {}, 0
        for key in sorted(strata):
            members = strata[key]
            for i in rng.permutation(len(members)):
                out[members[i]] = pos % spec.n
                pos += 1
        return out
    if spec.by:
        groups = sorted({str(field_value(r, spec.by)) for r in rows})
        order = [groups[i] for i in rng.permutation(len(groups))]
        gfold = {g: i % spec.n for i, g in enumerate(order)}
        return {r["video_id"]: gfold[str(field_value(r, spec.by))] for r in rows}
    ids = sorted(r["video_id"] for r in rows)
    order = [ids[i] for i in rng.permutation(len(ids))]
    return {vid: i % spec.n for i, vid in enumerate(order)}


def field_value(row: dict, dotted: str):
    """``labels.quadrant`` -> row["labels"]["quadrant"] (None when absent)."""
    node = row
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def folds_path(store_root, dataset: str, spec: FoldSpec) -> Path:
    return Path(store_root) / "datasets" / dataset / "folds" / spec.file_name()


def load_or_create(store_root, dataset: str, rows: list[dict], spec: FoldSpec) -> dict[str, object]:
    """The fold of every video, from the fold manifest (created atomically on first use).

    A fold manifest that does not cover exactly the current videos stops with InputError
    rather than being silently rewritten (that would move videos between folds mid-study).
    """
    path = folds_path(store_root, dataset, spec)
    current = {r["video_id"] for r in rows}
    if path.is_file():
        folds = {}
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                folds[row["video_id"]] = row["fold"]
        if set(folds) != current:
            extra, missing = sorted(set(folds) - current), sorted(current - set(folds))
            raise InputError(path, "bad_labels",
                             f"fold manifest does not match dataset {dataset!r} "
                             f"({len(missing)} videos not in it, e.g. {missing[:3]}; "
                             f"{len(extra)} gone, e.g. {extra[:3]})",
                             fix=f"delete {path} to re-assign folds (or use another folds.seed)")
        return folds
    from store.writer import atomic_write_text

    folds = assign(rows, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps({"video_id": vid, "fold": folds[vid]}, sort_keys=True) + "\n"
                                    for vid in sorted(folds)))
    return folds


def roles(folds: dict[str, object], test, val=None, train=None) -> dict[str, list[str]]:
    """Split video ids into train / val / test given the held-out fold(s).

    ``val`` None means: select the model on the test fold itself (what the ABAW2 reference
    did with its validation set); the run records that, see train.py. ``train`` None: every
    other fold trains; a list names the training folds (e.g. ["train"] so that unlabelled
    test videos stay out of the normalisation statistics).
    """
    def norm(v):
        return str(v)
    test_s = norm(test)
    # a list of validation folds: nested validation (e.g. speakers drawn from the training folds)
    val_set = {norm(v) for v in val} if isinstance(val, (list, tuple)) else {norm(val) if val is not None else test_s}
    out = {"train": [], "val": [], "test": []}
    present = {norm(f) for f in folds.values()}
    for name, want in [("test", test_s)] + [("val", v) for v in sorted(val_set)]:
        if want not in present:
            raise InputError("<folds>", "bad_config",
                             f"{name} fold {want!r} does not exist (folds: {sorted(present)})",
                             fix=f"set folds.{name} to one of {sorted(present)}")
    for vid in sorted(folds):
        f = norm(folds[vid])
        if f == test_s:
            out["test"].append(vid)
        if f in val_set:
            if f != test_s:
                out["val"].append(vid)
        if f != test_s and f not in val_set and (train is None or f in {norm(t) for t in train}):
            out["train"].append(vid)
    if val is None or val_set == {test_s}:
        out["val"] = list(out["test"])
    return out


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Concordance correlation (population moments), as AVEC's gold-standard script."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    den = x.var() + y.var() + (mx - my) ** 2
    return float(2 * cov / den) if den > 0 else 0.0


def ccc_centering(preds: np.ndarray, clip: tuple[float, float] | None = (-1.0, 1.0)) -> np.ndarray:
    """Merge fold predictions [n_folds, T] of one video and target into [T].

    c_ij = CCC(Y_i, Y_j); a_i = mean_j c_ij; mu_i = mean_t Y_i; w = sum_i mu_i a_i / sum_i a_i;
    out = mean_i (Y_i - mu_i + w), clipped. Folds that agree with the others pull the mean.
    """
    y = np.asarray(preds, np.float64)
    k = y.shape[0]
    c = np.array([[ccc(y[i], y[j]) for j in range(k)] for i in range(k)])
    a = c.mean(axis=1)
    mu = y.mean(axis=1)
    w = float((mu * a).sum() / a.sum()) if abs(a.sum()) > 1e-12 else float(mu.mean())
    out = (y - mu[:, None] + w).mean(axis=0)
    return np.clip(out, *clip) if clip is not None else out


def read_prediction_csvs(paths) -> list[list[dict]]:
    """The rows of one video's per-frame prediction CSVs from several fold models; they must
    have the same frames (a clear error, not an IndexError half-way through a merge)."""
    import csv

    tables = []
    for p in paths:
        with open(p, newline="") as f:
            tables.append(list(csv.DictReader(f)))
    if not tables or any(len(t) != len(tables[0]) for t in tables):
        raise InputError(paths[0] if paths else "<none>", "bad_labels",
                         "fold prediction files differ in length (or none given)",
                         fix="merge predictions of the same video made with the same windowing")
    return tables


def merge_prediction_csvs(paths, out_path, clip: tuple[float, float] | None = (-1.0, 1.0)):
    """Merge one video's per-frame prediction CSVs from several fold models (as `predict_video`
    or a run's predictions/ folder writes them) by CCC centering, column by column (pred_*).
    Frames and times come from the first file; every file must have the same frames."""
    import csv

    tables = read_prediction_csvs(paths)
    cols = [c for c in tables[0][0] if c.startswith("pred_")] if tables[0] else []
    merged = {c: ccc_centering(np.array([[float(r[c]) for r in t] for t in tables]), clip) for c in cols}
    out_path = Path(out_path)
    with open(out_path, "w", newline="") as f:
        keep = [c for c in tables[0][0] if not c.startswith(("pred_", "p_"))] if tables[0] else []
        wr = csv.writer(f)
        wr.writerow(keep + cols)
        for i, r in enumerate(tables[0]):
            wr.writerow([r[c] for c in keep] + [f"{merged[c][i]:.5f}" for c in cols])
    return out_path


def mean_prediction_csvs(paths, out_path) -> None:
    """Row-wise mean of several models' value columns (pred_*, p_*) of the same rows (fold
    models on one video, or the members of one fold); `pred` = the argmax class."""
    import csv
    import warnings

    tables = read_prediction_csvs(paths)
    head = list(tables[0][0]) if tables[0] else []
    vals = [c for c in head if c.startswith(("pred_", "p_"))]
    with open(out_path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(head)
        for i, row in enumerate(tables[0]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)       # uncovered frames stay NaN
                mean = {c: float(np.nanmean([float(t[i][c]) for t in tables])) for c in vals}
            probs = {c: v for c, v in mean.items() if c.startswith("p_")}
            if "pred" in row:
                row = {**row, "pred": max(probs, key=probs.get)[2:] if probs and all(np.isfinite(list(probs.values())))
                       else ""}
            wr.writerow([f"{mean[c]:.5f}" if c in mean else row[c] for c in head])
