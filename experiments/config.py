"""Study configs: one YAML per study, read with `yaml.safe_load` into dataclasses.

Why dataclasses: a typo in a YAML key or a `--set` path stops the run at load time with the
list of valid keys, instead of being silently ignored 40 minutes into training.

A study YAML may start with ``extends: <study or path>``: the parent is loaded first and
the child's keys are merged into it (dicts merge, everything else replaces).
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from featurize.registry import coerce
from store.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class FeatureSpec:
    """One cached feature: extractor + params resolve to a store key (or give ``key``)."""
    extractor: str
    params: dict = field(default_factory=dict)
    upstream: dict = field(default_factory=dict)   # e.g. {faces: {margin: 0.6}} for crop extractors
    key: str | None = None                         # pin a key instead of computing it
    array: str = "data"                            # which array of the group ("logits" for fer)


@dataclass
class LabelsConfig:
    source: str = "frames"        # frames: per-frame labels (load_frame_labels); clip: row["labels"]
    targets: list = field(default_factory=list)
    # frame targets: label names; clip targets from frames: "mean(valence)", "q25(arousal)", ...;
    # classification: one target, a clip label name or "quadrant(valence,arousal)"
    scale: list | None = None     # [lo, hi, new_lo, new_hi]: linear map applied to targets
    classes: list | None = None   # classification: class names in logit order


@dataclass
class DataConfig:
    window: int = 300
    hop: int = 200
    mask_no_face: bool = True          # frames without a face count in neither loss nor metrics
    squeeze_unlabelled: bool = False   # the ABAW2 reference: drop unlabelled frames before windowing
    normalize: bool = True             # per-dim mean/std from the training videos only
    clip: int | None = None            # clip tasks: cut length in frames (None = whole video)
    clip_hop: int | None = None
    min_clip: int = 1
    segments: int = 16                 # segment tasks: tokens per clip
    max_frames: int | None = None      # clip tasks: crop longer clips at train time (memory)
    # per-group standardisation: each video's features z-scored with the statistics of its own
    # group (this row field, e.g. "group" = the speaker), from that group's valid frames only.
    # It uses no labels, so a held-out speaker is normalised with its own audio (usual in SER).
    normalize_by: str | None = None
    crop: int | None = None            # clip tasks: a random `crop`-frame cut per clip at train time
    noise: float = 0.0                 # clip tasks: Gaussian noise (std, normalised units) at train time
    frame_pool: int = 1                # clip tasks: average every k frames (masked) before the head
    # clip tasks, train time, after frame_pool (heads.augment.spec_mask): zeroed time spans and
    # feature bands, {time_masks, time_width (pooled steps), freq_masks, freq_width, freq_dims}
    specaug: dict = field(default_factory=dict)
    mixup: float = 0.0                 # clip classification: mixup Beta(a, a) (0 = off)
    # clip tasks: {modality: [tokens, width]} flattens that modality's valid frames of a clip
    # (time-major) and re-cuts the values into `tokens` tokens of `width` (zero-padded or cut):
    # the ERI reference's audio ({audio: [32, 1024]}); {} keeps the time axis
    recut: dict = field(default_factory=dict)
    # the others are still loaded: the frame grid, the face mask and the scored frames stay the study's
    modalities: list | None = None     # the modalities the head reads (None: all); ablations set one


@dataclass
class FoldsConfig:
    scheme: str = "split"   # split | abaw2 | kfold | group (one fold per value of `by`: leave-one-group-out)
    n: int = 5
    seed: int = 0
    by: str | None = None          # kfold: keep rows sharing this field together (e.g. group)
    stratify: str | None = None    # kfold: balance this field over folds (e.g. labels.quadrant)
    # "all": cross-validate, every fold held out in turn (experiments.crossval); on the abaw2
    # scheme the fold models' predictions of the test split are merged (experiments.merge)
    test: typing.Any = "test"
    val: typing.Any = "val"   # None: select the model on the test fold (recorded as such)
    train: list | None = None  # training folds; None = every fold that is not test / val
    # folds.test: all: nested validation. Each outer fold holds out `inner_val` of its training
    # folds (e.g. speakers, drawn with `seed`) as validation; train.select best then picks the
    # checkpoint on them, never on the test fold. 0: no validation folds (select: last).
    inner_val: int = 0


@dataclass
class HeadConfig:
    name: str = "lfan"
    args: dict = field(default_factory=dict)


@dataclass
class LossConfig:
    name: str = "ccc"
    args: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "adam"         # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9


@dataclass
class ScheduleConfig:
    name: str = "none"         # none | plateau | step | cosine (linear warm-up then cosine) | onecycle (per batch)
    patience: int = 5
    factor: float = 0.1
    step_size: int = 10
    gamma: float = 0.5
    warmup_epochs: int = 0
    min_lr: float = 0.0
    pct_start: float = 0.3     # onecycle: share of the steps spent warming up


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 8
    grad_clip: float | None = 1.0
    early_stop: int | None = None   # epochs without improvement of the monitor
    monitor: str | None = None      # metrics key to select on (default per task), higher is better
    amp: bool = True                # only on CUDA
    accumulate: int = 1
    eval_batch_size: int = 64
    select: str = "best"            # best: the epoch best on val (monitor); last: the final epoch
    fold_jobs: int = 1              # folds.test: all: folds trained in parallel processes (CPU)
    members: int = 1                # folds.test: all: models per fold, each with its own validation draw; probabilities averaged
    threads: int | None = None      # CPU threads per model (torch.set_num_threads); none: one per core


@dataclass
class ReportConfig:
    n_traces: int = 8              # test videos in traces_<role>.png (the figure says when it is a sample)
    ablations: bool = False        # also fit each modality alone, same recipe; fusion beside them with bootstrap CIs
    seeds: list | None = None      # run the study once per seed (RUN/seed-<s>/), report.md: mean +- sd over seeds


@dataclass
class StudyConfig:
    name: str
    dataset: str
    task: str = "frames"   # frames | clip_regression | clip_classification (see experiments.tasks)
    seed: int = 0
    description: str = ""
    features: dict = field(default_factory=dict)   # modality -> [FeatureSpec]; YAML order kept
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # classical baselines beside the head (experiments.baselines.BaselineSpec mappings);
    # None: none beyond the trivial one. Computed by the cross-validated classification runs.
    baselines: list | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- loading


def study_path(study) -> Path:
    """A YAML path, or a study name looked up in experiments/configs."""
    p = Path(study)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise InputError(p, "missing_file", "study config not found",
                             fix=f"give a YAML path or one of: {', '.join(available())}")
        return p
    p = CONFIG_DIR / f"{study}.yaml"
    if not p.is_file():
        raise InputError(p, "missing_file", f"no study named {study!r}",
                         fix=f"one of: {', '.join(available())}, or a path to a YAML")
    return p


def safe_yaml(text: str, where):
    """yaml.safe_load; a tag that asks for code (`!!python/object`, ...) is a one-line
    `unsafe_file` error instead of a ConstructorError traceback."""
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        tag = getattr(e, "problem", "") or str(e)
        raise InputError(where, "unsafe_file", f"the YAML asks to build a Python object ({tag.strip()})",
                         "remove the !!python/... tag: study files hold plain values only") from None


def available() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_raw(study, _seen=()) -> dict:
    """The YAML as a dict with ``extends`` resolved."""
    path = study_path(study)
    if path.resolve() in _seen:
        raise InputError(path, "bad_config", "circular `extends`",
                         fix="make the chain of `extends:` end at a study that extends nothing")
    raw = safe_yaml(path.read_text(), path) or {}
    if not isinstance(raw, dict):
        raise InputError(path, "bad_config", "a study YAML must be a mapping",
                         fix="write `key: value` lines (name:, dataset:, task:, ...; see docs/config-reference.md)")
    parent = raw.pop("extends", None)
    if parent:
        base = load_raw(parent if not str(parent).endswith((".yaml", ".yml"))
                        else path.parent / parent, _seen + (path.resolve(),))
        raw = merge(base, raw)
    raw.setdefault("name", path.stem)
    return raw


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(raw: dict, overrides) -> dict:
    """``a.b=c`` pairs: the value is parsed as YAML, then cast to the type of the value it
    replaces (so ``optim.lr=1e-4`` stays a float and ``folds.test=3`` an int)."""
    raw = copy.deepcopy(raw)
    defaults = StudyConfig(name="", dataset="").to_dict()
    for item in overrides or ():
        if "=" not in item:
            raise InputError("--set", "bad_config", f"{item!r} is not a.b=c", fix="e.g. --set optim.lr=1e-4")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        node, dnode = raw, defaults
        for k in keys[:-1]:
            if isinstance(node, list):   # features.visual.0.params...: the i-th feature of a modality
                node, dnode = _list_item(node, k, path), {}
                continue
            node = node.setdefault(k, {})
            dnode = dnode.get(k, {}) if isinstance(dnode, dict) else {}
            if not isinstance(node, (dict, list)):
                raise InputError("--set", "bad_config", f"{path}: {k} is not a mapping",
                                 fix=f"{k} holds a value: set {k} itself, not a key below it")
        last = keys[-1]
        if isinstance(node, list):
            old = _list_item(node, last, path)
            node[int(last)] = _typed(yaml.safe_load(text) if text.strip() else None, old, path)
            continue
        old = node.get(last, dnode.get(last) if isinstance(dnode, dict) else None)
        value = safe_yaml(text, path) if text.strip() else None
        # a field that takes several types (folds.test: a fold or "all") keeps the value as parsed
        node[last] = value if _annotation(keys) is typing.Any else _typed(value, old, path)
    return raw


def _annotation(keys):
    """The declared type of a dotted config path (None where it leaves the dataclasses)."""
    cls = StudyConfig
    for k in keys:
        if not dataclasses.is_dataclass(cls):
            return None
        cls = typing.get_type_hints(cls).get(k)
    return cls


def _list_item(node: list, k: str, path: str):
    """`k` as an index into a list of the config (a modality's features), or a clear error."""
    if not k.lstrip("-").isdigit() or not -len(node) <= int(k) < len(node):
        raise InputError("--set", "bad_config", f"{path}: {k!r} is not an index of a list of {len(node)}",
                         fix=f"use 0..{len(node) - 1}, e.g. --set features.visual.0.params.weights=...")
    item = node[int(k)]
    if isinstance(item, str):    # `- mfcc` shorthand: make it a mapping so params can be set
        item = node[int(k)] = {"extractor": item}
    return item


def _typed(value, old, path):
    if value is None or type(old) not in (bool, int, float, str) or (isinstance(value, bool) and type(old) is not bool):
        return value
    try:
        return coerce(value, type(old))
    except (TypeError, ValueError):
        raise InputError("--set", "bad_config", f"{path}={value!r}: expected {type(old).__name__}",
                         fix=f"give a value like the current one ({path}={old!r})") from None


def from_dict(raw: dict) -> StudyConfig:
    raw = copy.deepcopy(raw)
    feats = raw.get("features") or {}
    if not isinstance(feats, dict):
        raise InputError("<config>", "bad_config", "features must map modality -> list of features",
                         fix="e.g. features: {visual: [faces], audio: [mfcc]}")
    raw["features"] = {m: [_build(FeatureSpec, f if isinstance(f, dict) else {"extractor": f}, f"features.{m}")
                           for f in (specs if isinstance(specs, list) else [specs])]
                       for m, specs in feats.items()}
    return _build(StudyConfig, raw, "")


def load(study, overrides=()) -> StudyConfig:
    return from_dict(apply_overrides(load_raw(study), overrides))


def dump(cfg: StudyConfig, path) -> None:
    from store.writer import atomic_write_text

    # a resume reads it back: a crash mid-write must leave the old file or the new, not half
    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _build(cls, raw, where):
    if dataclasses.is_dataclass(raw):
        return raw
    if not isinstance(raw, dict):
        raise InputError("<config>", "bad_config", f"{where or 'config'} must be a mapping, got {raw!r}",
                         fix="write it as `key: value` lines (docs/config-reference.md lists the keys)")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise InputError("<config>", "bad_config", f"unknown key(s) {unknown} in {where or 'config'}",
                         fix=f"valid keys: {', '.join(sorted(names))}")
    kw = {}
    for k, v in raw.items():
        t = hints[k]
        sub = _dataclass_of(t)
        if sub is not None and isinstance(v, dict):
            kw[k] = _build(sub, v, f"{where}.{k}".strip("."))
        else:
            kw[k] = _coerce(v, t, f"{where}.{k}".strip("."))
    try:
        return cls(**kw)
    except TypeError as e:
        raise InputError("<config>", "bad_config", f"{where or 'config'}: {e}",
                         fix="docs/config-reference.md lists the keys and their types") from None


def _dataclass_of(t):
    if dataclasses.is_dataclass(t):
        return t
    return None


def _coerce(v, t, where):
    """YAML 1.1 reads 1e-5 as a string: cast scalars to the annotated type."""
    if v is None:
        return None
    args = typing.get_args(t) if typing.get_origin(t) in (typing.Union, types.UnionType) else (t,)
    args = [a for a in args if a is not type(None)]
    if not args:
        return v
    base = args[0]
    if base not in (int, float, bool) or (isinstance(v, bool) and base is not bool):
        return v
    try:
        return coerce(v, base)
    except (TypeError, ValueError):
        raise InputError("<config>", "bad_config", f"{where}: {v!r} is not a {base.__name__}",
                         fix=f"write {where} as a {base.__name__} (docs/config-reference.md)") from None
