"""Ablations (``emocache train --ablate`` / ``report.ablations: true``): every modality of a
multi-modal study fitted alone with the same recipe, scored beside the fusion head on the
same test items, with bootstrap confidence intervals; a fusion that does not beat its best
single modality is flagged.

Why: a fusion number alone cannot say whether the second modality helps. On the demo corpus
the audio features follow arousal only, so an audio-alone model must lose on valence; on a
real corpus it is often the fusion head that loses to its strongest input.

Same recipe: the study's own config with ``data.modalities: [m]`` (every feature is still
loaded, so the frame grid, the face mask and the scored frames / clips are the fusion's), the
head that the study head's registration names for one modality (experiments.models,
``single``), and nothing else changed: folds, seed, epochs, optimiser, schedule, selection.
Baselines are not refitted (they do not depend on the head). Layout: the fusion run is the
run folder as always; modality ``m`` alone is ``RUN/modality-<m>/``, an ordinary run of the
same kind (one fold or ``fold-*`` cross-validation).

Confidence intervals: percentile intervals over ``RESAMPLES`` bootstrap resamples of the
test videos (a video's frames or clips go together: they are not independent), drawn with
a fixed seed and shared by every method (paired: the fusion - best single difference gets
its own interval). Each resample is a vector of multinomial counts over the videos applied
to per-video sufficient statistics (sums for CCC / Pearson, confusion counts for UAR /
accuracy), so 1000 resamples of a million frames cost one matrix product, numpy only. The
point estimates equal the runs' own metrics (tests/test_ablate.py checks them against
metrics.json).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from store.errors import InputError

from . import config
from .checkpoints import write_json

PREFIX = "modality-"     # RUN/modality-<name>/: that modality alone
RESAMPLES = 1000
BOOT_SEED = 0
FUSION = "fusion"
FEW = 10                 # fewer test videos than this: the report says the intervals are coarse


def modalities(cfg: config.StudyConfig) -> list[str]:
    """The modalities the study's head reads (data.modalities, else every `features` entry)."""
    return [str(m) for m in (cfg.data.modalities or list(cfg.features))]


def modality_config(cfg: config.StudyConfig, modality: str) -> config.StudyConfig:
    """The study with one modality feeding the head and the head for one modality; every other
    choice (folds, seed, epochs, optimiser, schedule, selection) the study's own."""
    from .models import single_head

    name, args = single_head(cfg, modality)
    raw = cfg.to_dict()
    raw["head"] = {"name": name, "args": args}
    raw["data"]["modalities"] = [modality]
    raw["data"]["recut"] = {k: v for k, v in (raw["data"].get("recut") or {}).items() if k == modality}
    raw["baselines"] = None
    raw["report"]["ablations"] = False
    raw["report"]["seeds"] = None
    return config.from_dict(raw)


# ----------------------------------------------------------------------------- test items


def metric_names(cfg: config.StudyConfig) -> list[str]:
    if cfg.task == "clip_classification":
        return ["uar", "accuracy"]
    if cfg.task == "clip_regression":
        return ["apcc"]
    return ["ccc_mean"] + [f"ccc_{t}" for t in cfg.labels.targets]


def primary_metric(cfg: config.StudyConfig) -> str:
    """What the fusion must win on: the study's monitor when it is one of the scored metrics."""
    names = metric_names(cfg)
    default = {"clip_classification": "accuracy", "clip_regression": "apcc"}.get(cfg.task, "ccc_mean")
    return cfg.train.monitor if cfg.train.monitor in names else default


def _sums(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[K, 6] per target: n, sum p, sum t, sum p^2, sum t^2, sum p*t (float64)."""
    p, t = p.astype(np.float64), t.astype(np.float64)
    return np.stack([np.full(p.shape[1], len(p), np.float64), p.sum(0), t.sum(0),
                     (p * p).sum(0), (t * t).sum(0), (p * t).sum(0)], 1)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fold_runs(run_dir: Path) -> dict[str, Path]:
    """Held-out fold -> the run folder that scored it (fold-* of a cross-validation, else the run)."""
    run_dir = Path(run_dir)
    folds = {d.name[len("fold-"):]: d for d in run_dir.glob("fold-*") if (d / "metrics.json").is_file()}
    if folds:
        from .crossval import _natural

        return {f: folds[f] for f in sorted(folds, key=_natural)}
    cfg = config.load(run_dir / "config.yaml")
    return {str(cfg.folds.test): run_dir}


def video_stats(cfg: config.StudyConfig, run: Path) -> dict[str, np.ndarray]:
    """video id -> the sufficient statistics of its held-out predictions in one scored run."""
    names = list(cfg.labels.targets)
    out: dict[str, list] = {}
    if cfg.task == "frames":
        for path in sorted((run / "predictions" / "test").glob("*.csv")):
            tab = _read_csv(path)
            if not tab:
                continue
            p = np.array([[float(r[f"pred_{n}"]) for n in names] for r in tab])
            t = np.array([[float(r[f"true_{n}"]) for n in names] for r in tab])
            ok = np.array([r["valid"] == "1" for r in tab]) & np.isfinite(p).all(1) & np.isfinite(t).all(1)
            out[path.stem] = _sums(p[ok], t[ok])
        return out
    tab = _read_csv(run / "predictions_test.csv")
    by_video: dict[str, list[dict]] = {}
    for r in tab:
        by_video.setdefault(r["video_id"], []).append(r)
    if cfg.task == "clip_classification":
        classes = json.loads((run / "metrics.json").read_text())["test"]["model"]["classes"]
        for v, rs in by_video.items():
            cm = np.zeros((len(classes), len(classes)))
            for r in rs:
                cm[classes.index(r["true"]), classes.index(r["pred"])] += 1
            out[v] = cm
        return out
    for v, rs in by_video.items():
        out[v] = _sums(np.array([[float(r[f"pred_{n}"]) for n in names] for r in rs]),
                       np.array([[float(r[f"true_{n}"]) for n in names] for r in rs]))
    return out


def scores(cfg: config.StudyConfig, agg: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of summed statistics ``agg`` [B, ...] (B resamples): each [B]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if cfg.task == "clip_classification":
            support = agg.sum(2)                              # [B, C] true counts
            present = support > 0                             # heads.metrics.uar: classes present only
            recall = np.where(present, np.diagonal(agg, axis1=1, axis2=2) / np.where(present, support, 1), 0)
            return {"uar": recall.sum(1) / present.sum(1),
                    "accuracy": np.trace(agg, axis1=1, axis2=2) / agg.sum((1, 2))}
        n, sp, st, spp, stt, spt = (agg[..., j] for j in range(6))
        mp, mt = sp / n, st / n
        vp, vt, cov = spp / n - mp ** 2, stt / n - mt ** 2, spt / n - mp * mt
        if cfg.task == "clip_regression":
            # heads.metrics.pearson_per_target: denominator floored at 1e-8
            r = (cov * n) / np.maximum(np.sqrt(np.maximum(vp * n, 0) * np.maximum(vt * n, 0)), 1e-8)
            return {"apcc": r.mean(1)}
        den = vp + vt + (mp - mt) ** 2
        ccc = np.where(den > 0, 2 * cov / den, np.nan)
        out = {f"ccc_{t}": ccc[:, j] for j, t in enumerate(cfg.labels.targets)}
        out["ccc_mean"] = ccc.mean(1)
        return out


def _interval(x: np.ndarray) -> list[float]:
    x = x[np.isfinite(x)]
    return [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))] if len(x) else [float("nan")] * 2


def bootstrap(cfg: config.StudyConfig, stats: dict[str, list[np.ndarray]], seed) -> dict:
    """``stats``: method -> per-video statistics in one shared video order. Point estimate and
    95% interval per method and metric, plus the paired resampled values of each method
    (``_draws``, not written) for differences."""
    n = len(next(iter(stats.values())))
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=RESAMPLES).astype(np.float64) if n else np.zeros((0, 0))
    out, draws = {}, {}
    for method, per_video in stats.items():
        s = np.stack(per_video)                              # [V, ...]
        point = scores(cfg, s.sum(0)[None])
        boot = scores(cfg, np.tensordot(w, s, axes=1))
        out[method] = {k: {"value": float(point[k][0]), "ci": _interval(boot[k])} for k in point}
        draws[method] = boot
    out["_draws"] = draws
    return out


# ----------------------------------------------------------------------------- the verdict


def verdict(pooled: dict[str, float], metric: str, diff_ci=None) -> dict:
    """``pooled``: method -> its pooled value of ``metric`` (higher is better), ``fusion`` among
    them. The fusion beats its best single modality only when strictly above it; otherwise the
    flag line says so (a tie is a flag: the second input bought nothing)."""
    singles = {m: v for m, v in pooled.items() if m != FUSION and v == v}
    if FUSION not in pooled or not singles:
        return {"best_single": None, "fusion_beats_best_single": None, "flag": None}
    best = max(singles, key=singles.get)
    fused, b = pooled[FUSION], singles[best]
    beats = bool(fused == fused and fused > b)
    ci = f" [95% CI {diff_ci[0]:+.3f}, {diff_ci[1]:+.3f}]" if diff_ci else ""
    line = (f"fusion {metric} {fused:.3f} vs {best} alone {b:.3f}: difference {fused - b:+.3f}{ci}")
    return {"best_single": best, "fusion_beats_best_single": beats,
            "difference": float(fused - b), "difference_ci": list(diff_ci) if diff_ci else None,
            "flag": None if beats else f"FLAG: the fusion head does not beat its best single modality ({line})",
            "line": line}


def summarize(cfg: config.StudyConfig, run_dir: Path, runs: dict[str, Path], heads: dict[str, str]) -> dict:
    """Per fold and pooled metrics with CIs for the fusion (``run_dir``) and each modality run."""
    run_dir = Path(run_dir)
    methods = {FUSION: run_dir, **runs}
    folds = fold_runs(run_dir)
    per_method = {m: {f: video_stats(cfg, d) for f, d in fold_runs(r).items()} for m, r in methods.items()}
    metric = primary_metric(cfg)
    out = {"metric": metric, "metrics": metric_names(cfg), "unit": "test video", "resamples": RESAMPLES,
           "bootstrap_seed": BOOT_SEED, "heads": heads,
           "runs": {m: str(Path(r).relative_to(run_dir)) if r != run_dir else "." for m, r in methods.items()},
           "folds": list(folds), "per_fold": {}, "pooled": {}}
    pooled_stats = {m: [] for m in methods}
    n_videos = 0
    for i, f in enumerate(folds):
        videos = sorted(per_method[FUSION][f])
        for m in methods:
            have = per_method[m].get(f, {})
            if sorted(have) != videos:
                raise InputError(methods[m], "bad_config", f"fold {f}: the {m} run scored other test videos "
                                 f"({len(have)}) than the fusion ({len(videos)})",
                                 fix="re-run the ablation (same store and folds as the fusion run)")
        stats = {m: [per_method[m][f][v] for v in videos] for m in methods}
        for m in methods:
            pooled_stats[m] += stats[m]
        n_videos += len(videos)
        res = bootstrap(cfg, stats, [BOOT_SEED, i])
        res.pop("_draws")
        out["per_fold"][f] = {**res, "n_videos": len(videos)}
    res = bootstrap(cfg, pooled_stats, [BOOT_SEED, len(folds)])
    draws = res.pop("_draws")
    out["pooled"] = {**res, "n_videos": n_videos}
    pooled = {m: res[m][metric]["value"] for m in methods}
    singles = {m: v for m, v in pooled.items() if m != FUSION and v == v}
    diff_ci = None
    if singles:
        best = max(singles, key=singles.get)
        diff_ci = _interval(draws[FUSION][metric] - draws[best][metric])
    out.update(verdict(pooled, metric, diff_ci))
    return out


# ----------------------------------------------------------------------------- report


def _cell(r: dict) -> str:
    v, (lo, hi) = r["value"], r["ci"]
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if v == v else "n/a"


def label(method: str) -> str:
    return method if method == FUSION else f"{method} alone"


def report_lines(ab: dict) -> list[str]:
    """The markdown section: pooled table (every metric), per-fold table (the primary metric), the verdict."""
    methods = list(ab["runs"])
    metric, names = ab["metric"], ab["metrics"]
    p = ab["pooled"]
    lines = ["## Ablation: the fusion beside each modality alone", "",
             f"Same folds, seed, epochs and optimiser; each modality alone through the single-modality form "
             f"of the study's head (experiments/models.py `single`). 95% CIs: {ab['resamples']} bootstrap "
             f"resamples of the {ab['unit']}s (seed {ab['bootstrap_seed']}), paired across methods.", "",
             f"Pooled over {p['n_videos']} test videos ({len(ab['folds'])} fold(s)):"
             + (f" with {p['n_videos']} videos the bootstrap has few distinct resamples, so the intervals are coarse."
                if p["n_videos"] < FEW else ""), "",
             "| method | head | run | " + " | ".join(f"{n} [95% CI]" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for m in methods:
        lines.append(f"| {label(m)} | `{ab['heads'][m]}` | `{ab['runs'][m]}` | "
                     + " | ".join(_cell(p[m][n]) for n in names) + " |")
    lines.append("")
    if ab.get("flag"):
        lines += [f"**{ab['flag']}**", ""]
    elif ab.get("line"):
        lines += [f"The fusion beats its best single modality: {ab['line']}.", ""]
    if len(ab["folds"]) > 1:
        folds = ab["folds"]
        lines += [f"{metric} [95% CI] per held-out fold:", "",
                  "| method | " + " | ".join(f"fold {f}" for f in folds) + " |", "|---|" + "---|" * len(folds)]
        for m in methods:
            lines.append(f"| {label(m)} | " + " | ".join(_cell(ab["per_fold"][f][m][metric]) for f in folds) + " |")
        lines.append("")
    lines.append("Figure: ablation.png (pooled, CI whiskers).")
    return lines


def plot(ab: dict, path: Path) -> Path:
    from . import report

    metric = ab["metric"]
    rows = [(label(m), ab["pooled"][m][metric]["value"], *ab["pooled"][m][metric]["ci"]) for m in ab["runs"]]
    return report.bars(rows, metric, path, title=f"{metric}, pooled over {ab['pooled']['n_videos']} test videos "
                                                  f"(95% bootstrap CI)")


def run(cfg: config.StudyConfig, store_root, run_dir, fit_one) -> dict | None:
    """Fit each modality alone into RUN/modality-<m>/ (``fit_one(cfg, run_dir)``: the study's
    dispatcher, finished sub-runs resume to their end), then add the ablation to the fusion
    run's metrics.json and report.md, and write ablation.png. None for a one-modality study."""
    from .models import single_head

    run_dir = Path(run_dir)
    mods = modalities(cfg)
    if len(mods) < 2:
        print(f"{cfg.name}: one modality ({', '.join(mods)}): nothing to ablate")
        return None
    subs = {m: modality_config(cfg, m) for m in mods}       # every head resolves before any training
    runs = {}
    for m, sub in subs.items():
        print(f"ablation: {m} alone (head {sub.head.name}) -> {run_dir / (PREFIX + m)}", flush=True)
        runs[m] = Path(fit_one(sub, run_dir / f"{PREFIX}{m}"))
    heads = {FUSION: cfg.head.name, **{m: single_head(cfg, m)[0] for m in mods}}
    ab = summarize(cfg, run_dir, runs, heads)
    metrics_path = run_dir / "metrics.json"
    result = json.loads(metrics_path.read_text())
    result["ablation"] = ab
    write_json(result, metrics_path)
    plot(ab, run_dir / "ablation.png")
    from store.writer import atomic_write_text

    atomic_write_text(run_dir / "report.md", report_text(result))   # never half a report after a crash
    print(ab["flag"] or f"ablation: the fusion beats its best single modality ({ab['line']})")
    print(f"report: {run_dir / 'report.md'}")
    return ab


def report_text(result: dict) -> str:
    """report.md of a run: the cross-validation tables (when it has them) or the held-out
    fold's metrics, then the ablation section when there is one."""
    from .crossval import report_text as cv_text

    if "protocol" in result:
        text = cv_text(result).rstrip("\n").split("\n")
    else:
        m = result["test"]
        keys = [k for k, v in m["model"].items() if isinstance(v, float)]
        text = [f"# {result['study']}: held-out fold", "",
                "| | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys),
                "| head | " + " | ".join(f"{m['model'][k]:.4f}" for k in keys) + " |",
                "| trivial baseline | " + " | ".join(f"{m['baseline'][k]:.4f}" if isinstance(m["baseline"].get(k), float)
                                                   else "" for k in keys) + " |"]
    if "ablation" in result:
        text += [""] + report_lines(result["ablation"])
    return "\n".join(text) + "\n"
