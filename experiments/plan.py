"""What a study needs from the store, all at once: `emocache studies` and `emocache plan`.

Why: training used to stop at the first missing feature key (mesh; then, after featurizing
mesh, fer; then ...), each time after minutes of work. The plan computes every key the study
reads (the same key function the trainer uses), says which exist, and writes the one
`emocache features` command that makes all the missing ones.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from . import config


@dataclass(frozen=True)
class Need:
    """One feature a study reads: where it goes, what makes it, whether the store has it."""
    modality: str
    extractor: str
    params: dict
    upstream: dict
    key: str
    present: bool
    videos: int          # finished videos in that key (0 when absent)
    problem: str = ""    # why no key can be computed yet (e.g. backbone weights not named)


def studies() -> list[dict]:
    """Every study in experiments/configs: name, task, extractors, description (or its error)."""
    out = []
    for name in config.available():
        try:
            cfg = config.load(name)
        except Exception as e:  # noqa: BLE001  (a broken YAML is listed, not fatal)
            out.append({"name": name, "task": "?", "features": [], "description": f"cannot load: {e}"})
            continue
        feats = [s.extractor for specs in cfg.features.values() for s in specs]
        out.append({"name": name, "task": cfg.task, "dataset": cfg.dataset,
                    "features": list(dict.fromkeys(feats)), "description": cfg.description})
    return out


def need(modality: str, spec, store_root) -> Need:
    """One feature spec -> its key (featurize.registry.resolve_key, the key `featurize` writes),
    whether the store has it, and the params that make it under their field names (aliases
    such as backbone's `on` mapped; the faces params only for an extractor that reads crops)."""
    from featurize import registry
    from store.errors import InputError
    from store.reader import key_counts, key_dir

    try:
        params = registry.canonical_params(spec.extractor, spec.params)
        kind = registry.get(spec.extractor).input_kind(registry.parse_config(spec.extractor, params))
        upstream = ({u: registry.canonical_params(u, p) for u, p in (spec.upstream or {}).items()}
                    if kind == "crops" else {})
        key = spec.key or registry.resolve_key(spec.extractor, params, upstream)[0]
    except InputError as e:
        if spec.key:      # a pinned key of an extractor this code lacks or cannot parse
            params, upstream, key = dict(spec.params or {}), dict(spec.upstream or {}), spec.key
        else:
            return Need(modality, spec.extractor, dict(spec.params or {}), dict(spec.upstream or {}),
                        "?", False, 0, problem=f"{e.message} — fix: {e.fix}" if e.fix else e.message)
    kdir = key_dir(store_root, spec.extractor, key)
    present = (kdir / "extractor.json").is_file()
    return Need(modality, spec.extractor, params, upstream, key, present,
                key_counts(kdir)["n_done"] if present else 0)


def needs(cfg: config.StudyConfig, store_root) -> list[Need]:
    return [need(modality, spec, store_root) for modality, specs in cfg.features.items() for spec in specs]


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return ",".join(_value(x) for x in v)
    return str(v)


def features_commands(dataset: str, store_root, missing: list[Need]) -> list[str]:
    """`emocache features` command(s) that make `missing`: one, unless the study reads one
    extractor with two different parameter sets (one command per set then). Needs with a
    problem (no key computable) are left to their own fix."""
    if not [n for n in missing if not n.problem]:
        return []
    store = Path(store_root)
    manifest = store / "datasets" / dataset / "manifest.jsonl"
    if manifest.is_file():
        source = ["--input", str(manifest), "--name", dataset]
    else:
        from featurize import datasets

        try:
            datasets.get(dataset)
            source = ["--input", "CORPUS_ROOT", "--dataset", dataset]
        except ValueError:
            source = ["--input", "CORPUS_ROOT", "--dataset", "ADAPTER", "--name", dataset]
    groups: list[dict] = []          # each: extractor -> params (incl. upstream extractors')
    for n in missing:
        if n.problem:
            continue
        wanted = {n.extractor: n.params, **{u: dict(p or {}) for u, p in n.upstream.items()}}
        for g in groups:
            if all(g.get(e, p) == p for e, p in wanted.items()):
                g.update(wanted)
                g.setdefault("_names", []).append(n.extractor)
                break
        else:
            groups.append({**wanted, "_names": [n.extractor]})
    cmds = []
    for g in groups:
        if not g:
            continue
        names = list(dict.fromkeys(g.pop("_names")))
        args = ["emocache", "features", *source, "--store", str(store), "--extractors", ",".join(names)]
        for ext in sorted(g):
            for k, v in sorted(g[ext].items()):
                args += ["--param", f"{ext}.{k}={_value(v)}"]
        cmds.append(shlex.join(args))
    return cmds


def plan_text(cfg: config.StudyConfig, store_root) -> tuple[str, int]:
    """The printout of `emocache plan` and the number of missing keys."""
    rows = needs(cfg, store_root)
    missing = [n for n in rows if not n.present]
    lines = [f"study {cfg.name} ({cfg.task}) reads {len(rows)} feature key(s) of dataset {cfg.dataset!r} "
             f"from {store_root}: {len(rows) - len(missing)} present, {len(missing)} missing"]
    w_mod = max(len(n.modality) for n in rows) if rows else 0
    w_key = max(len(f"{n.extractor}/{n.key}") for n in rows) if rows else 0
    for n in rows:
        state = f"present, {n.videos} video(s)" if n.present else \
            f"CANNOT KEY: {n.problem}" if n.problem else "MISSING"
        params = f"  params {n.params}" if n.params and not n.problem else ""
        lines.append(f"  {n.modality:<{w_mod}}  {n.extractor + '/' + n.key:<{w_key}}  {state}{params}")
    cmds = features_commands(cfg.dataset, store_root, missing)
    if cmds:
        lines.append("make the missing key(s) with:" if len(cmds) == 1 else
                     "make the missing keys with (one extractor, two parameter sets: one command each):")
        lines += [f"  {c}" for c in cmds]
    elif not missing:
        lines.append(f"ready: emocache train --exp {cfg.name} --store {store_root}")
    return "\n".join(lines), len(missing)
