"""Classical baselines computed beside a study, on the same videos and the same folds.

Why here: a head's UAR means little without the numbers a linear model gets from pooled
features under the identical protocol. Each baseline pools frame features read from the
store (mean, std, 10th and 90th percentile over the valid frames) or, for eGeMAPS, takes
openSMILE's functionals (eGeMAPS or ComParE 2016) from the raw audio, then fits StandardScaler + a linear model on
the training folds and predicts the held-out fold, fold by fold.

Per-group standardisation (``per_group``): each video's features are z-scored with the
statistics of its own group (the speaker), frame features before pooling, eGeMAPS
functionals directly. The statistics use no labels, so applying them to a held-out
speaker is legitimate (the speaker's own unlabelled audio); it is the usual speaker
normalisation in speech emotion recognition. ``per_group: both`` reports each baseline
with and without it. Names of standardised baselines end in "(per-<group field> std)".
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from featurize.registry import Registry
from heads import metrics
from store.errors import InputError

POOL_STATS = ("mean", "std", "p10", "p90")
# linear models a baseline can name (``model``): @MODELS.register("name") def make(C, seed)
MODELS = Registry("baseline model")
# openSMILE functionals per file, kept in the store root beside features/ and datasets/
FUNCTIONALS_CACHE = ".baselines"


@dataclass
class BaselineSpec:
    """One classical baseline: features -> pooled vector -> StandardScaler -> linear model."""
    name: str
    features: list = field(default_factory=lambda: ["mfcc"])   # extractor names / {extractor, params, key}; or ["egemaps"]
    model: str = "logreg"          # logreg | linear_svm
    C: object = 0.1                # a number, or a list: chosen per fold on the inner validation folds
    per_group: object = None       # True | False | "both"; None: follow the study's setting

    @property
    def opensmile(self) -> bool:
        return [self._extractor(f) for f in self.features] in (["egemaps"], ["compare"])

    @staticmethod
    def _extractor(f) -> str:
        return f["extractor"] if isinstance(f, dict) else str(f)


def default_specs() -> list[BaselineSpec]:
    """Pooled MFCC + logistic regression always; eGeMAPS + linear SVM when opensmile imports."""
    return [BaselineSpec("pooled MFCC + LR", ["mfcc"], "logreg", 0.1),
            BaselineSpec("eGeMAPS + linear SVM", ["egemaps"], "linear_svm", 0.01)]


def parse_specs(raw) -> list[BaselineSpec]:
    """YAML list of mappings -> specs (unknown keys stop with the valid ones)."""
    if raw is None:
        return default_specs()
    names = {f.name for f in dataclasses.fields(BaselineSpec)}
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) - names or "name" not in item:
            raise InputError("<config>", "bad_config", f"baselines[{i}] = {item!r}",
                             fix=f"a mapping with name and any of {sorted(names - {'name'})}")
        spec = BaselineSpec(**item)
        if spec.model not in MODELS:
            raise InputError("<config>", "bad_config", f"baselines[{i}].model {spec.model!r}",
                             fix=f"one of {', '.join(MODELS.names())}")
        spec.features = list(spec.features) if isinstance(spec.features, (list, tuple)) else [spec.features]
        spec.C = [float(c) for c in spec.C] if isinstance(spec.C, (list, tuple)) else float(spec.C)
        if spec.C == []:
            raise InputError("<config>", "bad_config", f"baselines[{i}].C is an empty list",
                             fix="a number, or a list of candidates such as [0.0001, 0.001, 0.01]")
        out.append(spec)
    return out


# ----------------------------------------------------------------------------- features


def pool(x: np.ndarray, offsets: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """[N, D] frames of V videos -> [V, 4D]: mean, std, p10, p90 over each video's valid frames."""
    out = np.zeros((len(offsets) - 1, 4 * x.shape[1]), np.float64)
    for i in range(len(offsets) - 1):
        f = x[offsets[i]:offsets[i + 1]]
        if mask is not None:
            f = f[mask[offsets[i]:offsets[i + 1]]]
        if len(f) == 0:
            continue          # no valid frame: zeros (the training mean after scaling, roughly)
        f = f.astype(np.float64)
        p10, p90 = np.percentile(f, [10, 90], axis=0)
        out[i] = np.concatenate([f.mean(0), f.std(0), p10, p90])
    return out


def group_stats(x: np.ndarray, groups: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """{group: (mean [D], std [D])} from each group's own (valid) rows only."""
    stats = {}
    for g in np.unique(groups):
        sel = groups == g
        if mask is not None:
            sel &= mask
        v = x[sel].astype(np.float64)
        if len(v) == 0:
            mean, std = np.zeros(x.shape[1]), np.ones(x.shape[1])
        else:
            mean, std = v.mean(0), v.std(0)
        stats[g] = (mean, np.where(std > 1e-6, std, 1.0))
    return stats


def standardize_groups(x: np.ndarray, groups: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Rows z-scored with their own group's statistics (a copy, float32)."""
    out = np.empty(x.shape, np.float32)
    for g, (mean, std) in group_stats(x, groups, mask).items():
        sel = groups == g
        out[sel] = (x[sel] - mean) / std
    return out


def _feature_key(store_root, f, video_ids=()) -> tuple[str, str]:
    """(extractor, key) for a feature given as a name or {extractor, params, upstream, key}.

    The key is the one `featurize` writes for those params (featurize.registry.resolve_key,
    through experiments.plan.need). A bare extractor name with default params may fall back
    to the store's only key of that extractor (made with other library versions), with a
    warning naming it; a feature whose params are named never does: other params are other
    numbers."""
    from store.reader import key_dir, list_keys

    from .config import FeatureSpec
    from .plan import features_commands, need

    spec = FeatureSpec(**f) if isinstance(f, dict) else FeatureSpec(extractor=str(f))
    n = need("baseline", spec, store_root)
    if n.present:
        return spec.extractor, n.key
    have = [k["key"] for k in list_keys(store_root) if k["extractor"] == spec.extractor]
    if not spec.key and not spec.params and not spec.upstream and len(have) == 1:
        import warnings

        warnings.warn(f"baseline: no {spec.extractor} key {n.key} in the store; using its only key "
                      f"{have[0]} (made with other library versions or weights)", stacklevel=2)
        return spec.extractor, have[0]
    raise InputError(key_dir(store_root, spec.extractor, n.key), "missing_key",
                     f"baseline needs {spec.extractor} features with params {spec.params or {}} (key {n.key}); "
                     f"the store has {have or 'none'}" + (f": {n.problem}" if n.problem else ""),
                     fix=" && ".join(features_commands(_dataset_of(store_root, video_ids), store_root, [n]))
                     or n.problem)


def _dataset_of(store_root, video_ids) -> str:
    """The store's dataset manifest that lists these videos (for the fix of a missing key)."""
    from pathlib import Path

    from store.reader import read_jsonl

    want = set(video_ids)
    for m in sorted(Path(store_root, "datasets").glob("*/manifest.jsonl")):
        if want and any(r.get("video_id") in want for r in read_jsonl(m)):
            return m.parent.name
    return "<dataset>"


def store_pooled(store_root, video_ids, groups, features, per_group: bool) -> np.ndarray:
    """Pooled vectors of cached frame features, side by side over features."""
    from store.reader import read_concat

    parts = []
    for f in features:
        extractor, key = _feature_key(store_root, f, video_ids)
        cat = read_concat(store_root, extractor, key, video_ids, arrays=("data", "mask"))
        x = cat.arrays["data"].reshape(len(cat.arrays["data"]), -1).astype(np.float32)
        mask = cat.arrays["mask"].astype(bool)
        if per_group:
            frame_groups = np.repeat(np.asarray(groups), np.diff(cat.offsets))
            x = standardize_groups(x, frame_groups, mask)
        parts.append(pool(x, cat.offsets, mask))
    return np.concatenate(parts, axis=1)


def opensmile_available() -> str | None:
    """None when opensmile imports, else why not (the report says so)."""
    try:
        import opensmile  # noqa: F401
    except ImportError as e:
        return f"opensmile is not installed ({e}); `pip install emocache[egemaps]` adds it"
    return None


def egemaps_functionals(paths, feature_set: str = "egemaps", cache_dir=None) -> np.ndarray:
    """openSMILE functionals from the raw audio files: eGeMAPSv02 (88 per file) or, with
    ``feature_set="compare"``, ComParE 2016 (6,373 per file).

    ``cache_dir``: one .npy per file, named by the file's path, size and mtime and the
    openSMILE version, so a study run again (another seed, an ablation) reads them back: on
    EmoDB ComParE took 57 of a 10-fold run's 89 minutes (2 shared cores) when recomputed."""
    import opensmile

    fs = opensmile.FeatureSet.ComParE_2016 if feature_set == "compare" else opensmile.FeatureSet.eGeMAPSv02
    smile = None
    folder = Path(cache_dir) / f"{feature_set}-opensmile-{opensmile.__version__}" if cache_dir else None
    out = []
    for p in paths:
        if not p:
            raise InputError("<manifest>", "missing_file", "a row has no media path", fix="rebuild the manifest")
        cached = _functionals_file(folder, p) if folder else None
        if cached is not None and cached.is_file():
            out.append(np.load(cached, allow_pickle=False))
            continue
        smile = smile or opensmile.Smile(feature_set=fs, feature_level=opensmile.FeatureLevel.Functionals)
        v = smile.process_file(str(p)).to_numpy(np.float64).reshape(-1)
        if cached is not None:
            from store.writer import atomic_write

            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cached, lambda fh: np.save(fh, v, allow_pickle=False), binary=True)
        out.append(v)
    return np.stack(out)


def _functionals_file(folder: Path, media) -> Path:
    import hashlib

    from store.keys import sanitize_id

    st = Path(media).stat()
    tag = hashlib.sha1(f"{Path(media).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return folder / f"{sanitize_id(Path(media).stem)}-{tag}.npy"


# ----------------------------------------------------------------------------- fitting


@MODELS.register("logreg")
def logreg(C: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=5000)


@MODELS.register("linear_svm")
def linear_svm(C: float, seed: int):
    from sklearn.svm import LinearSVC

    return LinearSVC(C=C, max_iter=20000, random_state=seed)


def _model(spec: BaselineSpec, seed: int, C: float | None = None):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), MODELS.get(spec.model)(spec.C if C is None else C, seed))


def choose_C(X, y, fold, train, val_folds, spec: BaselineSpec, n_classes: int, seed: int = 0) -> float:
    """The candidate C (``spec.C``, a list) with the best UAR on the validation folds
    ``val_folds``, fitted on the rest of ``train`` (nested: the test fold is never seen;
    ties go to the smaller C, the stronger regularisation)."""
    val = train & np.isin(fold, [str(f) for f in val_folds])
    fit = train & ~val
    cands, scores = sorted(spec.C), []
    for c in cands:
        pred = _model(spec, seed, c).fit(X[fit], y[fit]).predict(X[val])
        scores.append(_scores(pred, y[val], n_classes)["uar"])
    return float(cands[int(np.argmax(scores))])


def _scores(pred: np.ndarray, true: np.ndarray, n: int) -> dict:
    p, t = torch.as_tensor(pred), torch.as_tensor(true)
    return {"uar": metrics.uar(p, t, n), "accuracy": metrics.accuracy(p, t), "n_clips": int(len(t))}


def cross_validate(X: np.ndarray, y: np.ndarray, fold: np.ndarray, test_folds, spec: BaselineSpec,
                   classes, seed: int = 0, inner: dict | None = None) -> dict:
    """Fit on every other fold, predict each test fold; per-fold and pooled scores.

    A list ``spec.C`` is searched per test fold on its validation folds ``inner[fold]`` (the
    head's nested validation speakers), then the model is refitted on all its training folds."""
    pred = np.full(len(y), -1, np.int64)
    per_fold = {}
    if isinstance(spec.C, list) and not inner:
        raise InputError("<config>", "bad_config", f"baseline {spec.name!r}: a list of C needs validation folds",
                         fix="set folds.inner_val (validation speakers per fold), or give C one number")
    for f in test_folds:
        te = fold == str(f)
        tr = ~te & (y >= 0)
        if not te.any():
            continue
        c = choose_C(X, y, fold, tr, inner[str(f)], spec, len(classes), seed) if isinstance(spec.C, list) else None
        clf = _model(spec, seed, c).fit(X[tr], y[tr])
        pred[te] = clf.predict(X[te])
        per_fold[str(f)] = _scores(pred[te], y[te], len(classes))
        if c is not None:
            per_fold[str(f)]["C"] = c
    done = pred >= 0
    out = _scores(pred[done], y[done], len(classes))
    p, t = torch.as_tensor(pred[done]), torch.as_tensor(y[done])
    out["per_class_recall"] = dict(zip(classes, metrics.per_class_recall(p, t, len(classes))))
    out["confusion"] = metrics.confusion_matrix(p, t, len(classes))
    out["per_fold"] = per_fold
    out["pred"] = pred
    return out


def run_baselines(specs, rows: list[dict], fold_of: dict, store_root, classes, *, target: str = "emotion",
                  group: str = "group", per_group: bool = False, test_folds=None, seed: int = 0,
                  inner: dict | None = None) -> dict:
    """Every baseline on ``rows`` under the fold assignment ``fold_of`` (video_id -> fold).

    Returns {name: metrics} with pooled ``uar``/``accuracy`` over the test folds, ``per_fold``,
    the confusion matrix, ``pred`` (class index per row, -1 where not tested) and what was
    used; a baseline that cannot run here (opensmile missing) has ``skipped``: the reason.
    ``inner``: {test fold: its validation folds}, where a list of C is searched (nested).
    """
    # the rows with a fold and a known class (what the head is scored on too)
    rows = [r for r in rows if r["video_id"] in fold_of and (r.get("labels") or {}).get(target) in classes]
    ids = [r["video_id"] for r in rows]
    groups = np.array([str(r.get(group)) for r in rows])
    y = np.array([classes.index(r["labels"].get(target)) if r["labels"].get(target) in classes else -1
                  for r in rows], np.int64)
    fold = np.array([str(fold_of[v]) for v in ids])
    test_folds = sorted({str(f) for f in fold}) if test_folds is None else [str(f) for f in test_folds]
    results: dict = {}
    cache: dict = {}
    for spec in specs:
        modes = spec.per_group if spec.per_group is not None else per_group
        modes = [True, False] if modes == "both" else [bool(modes)]
        for pg in modes:
            name = spec.name + (f" (per-{group} std)" if pg else "")
            info = {"features": [BaselineSpec._extractor(f) for f in spec.features], "model": spec.model,
                    "C": spec.C, "per_group_std": pg, "video_ids": ids}
            if spec.opensmile and (why := opensmile_available()):
                results[name] = {**info, "skipped": why}
                continue
            t0 = time.time()
            ck = (tuple(map(str, spec.features)), pg)
            if ck not in cache:
                if spec.opensmile:
                    fs = BaselineSpec._extractor(spec.features[0])
                    raw = cache.setdefault((fs, "raw"), egemaps_functionals(
                        [r.get("path") for r in rows], fs, cache_dir=Path(store_root) / FUNCTIONALS_CACHE))
                    cache[ck] = standardize_groups(raw, groups) if pg else raw
                else:
                    cache[ck] = store_pooled(store_root, ids, groups, spec.features, pg)
            res = cross_validate(cache[ck], y, fold, test_folds, spec, classes, seed, inner)
            results[name] = {**info, **res, "seconds": round(time.time() - t0, 2)}
    return results


def summary_lines(results: dict) -> list[str]:
    """One line per baseline for a printout or a report."""
    lines = []
    for name, r in results.items():
        if "skipped" in r:
            lines.append(f"  {name:<40} skipped: {r['skipped']}")
        else:
            lines.append(f"  {name:<40} UAR {r['uar']:.3f}  accuracy {r['accuracy']:.3f}  ({r['n_clips']} clips)")
    return lines
