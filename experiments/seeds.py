"""Several seeds (``emocache train --seeds 0,1,2`` or ``--seeds 3`` / ``report.seeds``): the
study once per seed, then every number of the report as mean +- sd with each seed beside.

Why: on EmoDB two seeds of one recipe gave UAR 0.807 and 0.794; one run cannot tell a
lever's effect of 0.01 from seed noise. Only the training seed (``seed``: initialisation,
batch order, augmentation) changes; the folds (``folds.seed``) and the nested validation
draws stay the study's, so the spread is that of training alone.

Layout: ``RUN/seed-<s>/`` is an ordinary run of seed ``s`` (with its ``modality-*`` ablations
when asked); ``RUN/`` holds the aggregate: config.yaml (the study, ``report.seeds`` set, so
``--resume RUN`` continues the unfinished seeds), metrics.json, report.md and seeds.png.
`emocache predict` takes one seed's run (``RUN/seed-<s>``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from store.errors import InputError

from . import config
from .checkpoints import write_json

PREFIX = "seed-"


def parse(text) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; ``"3"`` -> the first 3 seeds [0, 1, 2]; a list is kept."""
    if isinstance(text, (list, tuple)):
        seeds = [int(s) for s in text]
    else:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        try:
            seeds = list(range(int(parts[0]))) if len(parts) == 1 else [int(p) for p in parts]
        except (ValueError, IndexError):
            raise InputError("--seeds", "bad_config", f"{text!r} is not a seed list",
                             fix="--seeds 0,1,2 (those seeds) or --seeds 3 (seeds 0, 1, 2)") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise InputError("--seeds", "bad_config", f"seeds {seeds}: need distinct seeds >= 0",
                         fix="--seeds 0,1,2 (those seeds) or --seeds 3 (seeds 0, 1, 2)")
    return seeds


def seed_config(cfg: config.StudyConfig, seed: int) -> config.StudyConfig:
    raw = cfg.to_dict()
    raw["seed"] = int(seed)
    raw["report"]["seeds"] = None
    return config.from_dict(raw)


def headline(result: dict) -> dict[str, dict[str, float]]:
    """The numbers of one run's metrics.json, by row (method) and metric."""
    rows: dict[str, dict[str, float]] = {}

    def numbers(d):
        return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and not k.startswith("n_") and k not in ("epochs_run", "best_epoch")}

    head = f"head ({result['study']})"
    if "protocol" in result:
        model = result["model"]
        rows[head] = numbers(model.get("mean_over_folds", model))
        for name, b in (result.get("baselines") or {}).items():
            if "skipped" not in b:
                rows[name] = numbers(b)
        if "trivial" in result:
            rows["majority class"] = numbers(result["trivial"])
        if result.get("merged", {}).get("labelled"):
            rows["merged fold models (test split)"] = numbers(result["merged"]["model"])
    else:
        rows[head] = numbers(result["test"]["model"])
        rows["trivial baseline"] = numbers(result["test"]["baseline"])
    ab = result.get("ablation")
    if ab:
        from .ablate import FUSION, label

        for m in ab["runs"]:
            vals = {k: v["value"] for k, v in ab["pooled"][m].items()}
            if m == FUSION and all(np.isclose(rows[head].get(k, np.nan), v, atol=5e-4) for k, v in vals.items()):
                continue            # the head's own row already says it (one fold, or pooled classification)
            rows[f"{label(m)} (pooled)"] = vals
    return rows


def aggregate(per_seed: dict[int, dict]) -> dict:
    """mean, sd (n - 1) and each seed's value of every (row, metric) all seeds have."""
    seeds = list(per_seed)
    heads = [headline(per_seed[s]) for s in seeds]
    out: dict[str, dict] = {}
    for row in heads[0]:
        for k in heads[0][row]:
            vals = [h.get(row, {}).get(k) for h in heads]
            if any(v is None for v in vals):
                continue
            a = np.array(vals, float)
            out.setdefault(row, {})[k] = {"mean": float(np.mean(a)),
                                          "sd": float(np.std(a, ddof=1)) if len(a) > 1 else 0.0,
                                          "per_seed": dict(zip(map(str, seeds), map(float, a)))}
    return out


def run(cfg: config.StudyConfig, run_dir, fit_one) -> Path:
    """Each seed into RUN/seed-<s>/ (``fit_one(cfg, run_dir)``: the study with its ablations;
    finished seeds are kept), then the aggregate metrics.json, report.md and seeds.png."""
    from .ablate import label, verdict

    run_dir = Path(run_dir)
    seeds = parse(cfg.report.seeds)
    config.dump(cfg, run_dir / "config.yaml")
    per_seed = {}
    for s in seeds:
        print(f"{cfg.name}: seed {s} ({seeds.index(s) + 1} of {len(seeds)}) -> {run_dir / f'{PREFIX}{s}'}", flush=True)
        d = Path(fit_one(seed_config(cfg, s), run_dir / f"{PREFIX}{s}"))
        per_seed[s] = json.loads((d / "metrics.json").read_text())
    out = {"study": cfg.name, "task": cfg.task, "seeds": seeds,
           "runs": {str(s): f"{PREFIX}{s}" for s in seeds}, "summary": aggregate(per_seed)}
    first = per_seed[seeds[0]]
    out["primary"] = first["ablation"]["metric"] if "ablation" in first else None
    if "ablation" in first:
        metric = first["ablation"]["metric"]
        head = f"head ({cfg.name})"
        means = {m: out["summary"][f"{label(m)} (pooled)" if f"{label(m)} (pooled)" in out["summary"] else head]
                 [metric]["mean"] for m in first["ablation"]["runs"]}
        flagged = [s for s in seeds if per_seed[s]["ablation"].get("flag")]
        out["ablation"] = {"metric": metric, **verdict(means, metric),
                           "flagged_seeds": flagged, "basis": "mean over seeds of the pooled values"}
        out["ablation"]["methods"] = list(means)
    write_json(out, run_dir / "metrics.json")
    plot(out, run_dir / "seeds.png")
    from store.writer import atomic_write_text

    atomic_write_text(run_dir / "report.md", report_text(out))   # never half a report after a crash
    print(f"{len(seeds)} seeds: report {run_dir / 'report.md'}")
    return run_dir


def _primary(out: dict, row: str) -> str | None:
    keys = list(out["summary"][row])
    for k in (out.get("primary"), "uar", "ccc_mean", "apcc", "accuracy"):
        if k in keys:
            return k
    return keys[0] if keys else None


def plot(out: dict, path: Path) -> Path | None:
    from . import report

    rows = list(out["summary"])
    metric = _primary(out, rows[0]) if rows else None
    bars = [(r, s[metric]["mean"], s[metric]["mean"] - s[metric]["sd"], s[metric]["mean"] + s[metric]["sd"],
             list(s[metric]["per_seed"].values())) for r in rows if metric in (s := out["summary"][r])]
    if not bars:
        return None
    return report.bars(bars, metric, path, title=f"{metric}: mean +- sd over {len(out['seeds'])} seeds (dots: each seed)")


def report_text(out: dict) -> str:
    seeds = out["seeds"]
    lines = [f"# {out['study']}: {len(seeds)} seeds ({', '.join(map(str, seeds))})", "",
             "Each number: mean ± sd over the seeds (sd with n - 1), then each seed's value. Only the "
             "training seed changes; the folds are the same. Per-seed runs (their own report.md, "
             "figures and predictions): " + ", ".join(f"`{r}/`" for r in out["runs"].values()) + ".", ""]
    ab = out.get("ablation")
    if ab:
        if ab.get("flag"):
            lines += [f"**{ab['flag']}** (on the mean over seeds; flagged in {len(ab['flagged_seeds'])} of "
                      f"{len(seeds)} seeds)", ""]
        else:
            lines += [f"The fusion beats its best single modality on the mean over seeds: {ab['line']} "
                      f"(flagged in {len(ab['flagged_seeds'])} of {len(seeds)} seeds).", ""]
    lines += ["| method | metric | mean ± sd | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|---|---|" + "---|" * len(seeds)]
    for row, metrics in out["summary"].items():
        for k, v in metrics.items():
            if k.startswith(("per_class", "rmse_", "r_")):
                continue
            lines.append(f"| {row} | {k} | {v['mean']:.3f} ± {v['sd']:.3f} | "
                         + " | ".join(f"{v['per_seed'][str(s)]:.3f}" for s in seeds) + " |")
    lines += ["", "Figure: seeds.png (mean ± sd, each seed a dot)."]
    return "\n".join(lines) + "\n"
