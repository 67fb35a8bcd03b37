"""The extractor registry: a name, a version, a frozen dataclass of params, and the key.

Every extractor module defines one `Extractor` subclass and decorates it with `@register`.
The class is cheap to import; heavy libraries are imported when an instance is built.
Instances are built once per worker process per (name, config) through `get_cached`.

The key of an extractor run (store/keys.make_key) hashes the params, the weights sha256
and the versions of the distributions named in `libraries`; crop extractors (input
"crops") also hash the key of the `faces` run that made their crops (`upstream`), so new
crops mean new downstream keys.

`resolve_key` is the one function that turns (name, params, upstream params) into that key:
the pipeline (what it writes), the trainer, the baselines, predict, `emocache plan` and the
missing-key fix (what they read) all call it, so a written key and a looked-up key cannot
drift apart (they did once: the pipeline and the trainer each had a version and disagreed on
backbone frames).
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import types
import typing
from typing import Any, ClassVar

import numpy as np

from store.errors import InputError

__all__ = ["Registry", "Extractor", "EXTRACTORS", "register", "get", "names", "parse_config",
           "canonical_params", "coerce", "get_cached", "resolve_key", "library_versions", "UPSTREAM"]

# What a crop extractor's crops come from: the only upstream extractor there is.
UPSTREAM = "faces"


class Registry:
    """Names -> things, filled by a decorator: the one registry style of the project.

    ``@REG.register`` on a class with a ``name`` attribute, or ``@REG.register("name", **meta)``
    on a class or function. ``entry(name, obj, **meta)`` (optional) turns what is decorated
    into what is stored (e.g. a head's build + call glue) and may refuse it; the decorator
    returns the decorated object unchanged. Extractors, backbone architectures, dataset
    adapters, heads, losses, optimisers, schedulers and task kinds all use it.

    An unknown name raises ``InputError(where, reason, ...)`` listing the known ones (``where``
    None: the name itself is the path).
    ``load`` (optional) imports the modules that register, on first lookup.
    """

    def __init__(self, kind: str, *, reason: str = "bad_config", where: str | None = "<config>",
                 entry=None, load=None, aliases: dict | None = None):
        self.kind, self.reason, self.where = kind, reason, where
        self._entry, self._load, self._loaded = entry, load, load is None
        self._items: dict[str, Any] = {}
        self._objs: dict[str, Any] = {}
        self.aliases = dict(aliases or {})

    def register(self, name=None, **meta):
        if name is not None and not isinstance(name, str):     # bare @register on a named class
            return self._add(getattr(name, "name", ""), name, meta)

        def deco(obj):
            return self._add(name or getattr(obj, "name", ""), obj, meta)
        return deco

    def _add(self, name: str, obj, meta: dict):
        if not name:
            raise ValueError(f"{getattr(obj, '__name__', obj)!r} has no {self.kind} name")
        old = self._objs.get(name)
        # re-importing a module (a reload, a plugin imported twice) registers the same
        # qualified name again: allowed; a second, different thing under one name is not
        if old is not None and old is not obj and _qualname(old) != _qualname(obj):
            raise ValueError(f"{self.kind} name {name!r} registered twice")
        self._items[name] = self._entry(name, obj, **meta) if self._entry else obj
        self._objs[name] = obj
        return obj

    def set_loader(self, load) -> None:
        """``load()`` imports the modules that register; it runs once, on the first lookup."""
        self._load, self._loaded = load, False

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            self._load()

    def get(self, name: str):
        self._ensure_loaded()
        key = self.aliases.get(name, name)
        try:
            return self._items[key]
        except (KeyError, TypeError):
            raise InputError(self.where or name, self.reason, f"unknown {self.kind} {name!r}",
                             fix=f"one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._items)

    def __contains__(self, name) -> bool:
        self._ensure_loaded()
        return self.aliases.get(name, name) in self._items

    def __iter__(self):
        return iter(self.names())


def _qualname(obj) -> tuple:
    return getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)


_CACHE: dict[tuple[str, Any], "Extractor"] = {}


class Extractor:
    """Base class. Subclasses set name, version, Config, input, libraries."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = None  # a frozen dataclass
    input: str = "frames"          # "frames" | "crops" | "audio" (an instance may override)
    libraries: ClassVar[tuple[str, ...]] = ()
    # old or alternative parameter names -> field names (e.g. backbone's `on` -> `source`)
    aliases: ClassVar[dict[str, str]] = {}

    def __init__(self, config=None):
        self.config = config if config is not None else self.Config()

    def weights_sha256(self) -> str | None:
        p = type(self).weights_file(self.config)
        if p is None:
            return None
        from featurize.weights import sha256_of

        return sha256_of(p)

    @classmethod
    def weights_file(cls, config):
        """The checked model file `config` names (None: no weights). A classmethod so keys
        can be computed without loading a model (in the driver, in the trainer)."""
        return None

    @classmethod
    def input_kind(cls, config) -> str:
        """"frames" | "crops" | "audio" for this config, known without building anything."""
        return cls.input

    # frame / crop extractors
    def start(self, info) -> None:
        """Reset per-video state."""

    def process(self, frames: np.ndarray, ctx: dict) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def finish(self) -> dict:
        """Attributes for the video's group (e.g. track statistics)."""
        return {}

    def flush(self) -> dict[str, np.ndarray]:
        """Rows held back until the video ended (with their own `t`), e.g. the last clip of a
        clip model; {} for extractors that give one row per frame. `process` may likewise
        return {} while a segment is incomplete, and rows with their own `t` (segment times)."""
        return {}

    # audio extractors
    # True: extract also takes `shared`, a dict the pipeline keeps for one file's samples, where
    # extractors leave what another one would compute alike (logmel's and mfcc's spectrum)
    shares: ClassVar[bool] = False

    def extract(self, samples: np.ndarray, sr: int) -> dict[str, np.ndarray]:
        raise NotImplementedError


def _checked_extractor(name: str, cls):
    if cls.Config is None or not dataclasses.is_dataclass(cls.Config):
        raise ValueError(f"{cls.__name__}.Config must be a dataclass")
    if not cls.Config.__dataclass_params__.frozen:
        raise ValueError(f"{cls.__name__}.Config must be frozen (it is a cache key)")
    return cls


def _load_extractors():
    import featurize  # noqa: F401  (imports the extractor modules, which register)


EXTRACTORS = Registry("extractor", reason="extractor_error", where=None,
                      entry=_checked_extractor, load=_load_extractors)
register = EXTRACTORS.register      # @register on an Extractor subclass (its `name`)


def get(name: str) -> type[Extractor]:
    return EXTRACTORS.get(name)


def names() -> list[str]:
    return EXTRACTORS.names()


def coerce(value, typ):
    """Overrides from the command line (and YAML 1.1 scalars like 1e-5) arrive as strings: turn
    them into the field's type, or raise ValueError/TypeError. The one coercion helper: extractor
    params here, study configs and --set in experiments/config.py."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union or origin is types.UnionType:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a)
            except (ValueError, TypeError):
                continue
        raise ValueError(f"{value!r} does not fit {typ}")
    if origin is tuple or typ is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        inner = args[0] if args else str
        return tuple(coerce(v, inner) for v in value)
    if typ is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{value!r} is not a boolean")
        return bool(value)
    if typ is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return int(value)
    if typ is float:
        return float(value)
    if typ is str:
        return str(value)
    return value


# YAML 1.1 (PyYAML) reads these bare keys as booleans: `{on: frames}` arrives as {True: "frames"}
_YAML_BOOL_KEYS = {True: ("on", "yes", "true", "y"), False: ("off", "no", "false", "n")}


def canonical_params(name: str, params: dict | None) -> dict:
    """`params` with field names only: aliases mapped (`on` -> `source` for backbone) and a
    YAML-boolean key (`on:` read as True) mapped back to the alias it was written as."""
    cls = get(name)
    out: dict = {}
    for k, v in dict(params or {}).items():
        if isinstance(k, bool):
            spelled = [a for a in _YAML_BOOL_KEYS[k] if a in cls.aliases]
            if not spelled:
                raise InputError(name, "extractor_error",
                                 f"parameter name {k!r} for extractor {name!r} is a YAML boolean",
                                 "YAML reads bare on/off/yes/no keys as true/false: quote the key "
                                 f"('on': ...) or use a field name: {', '.join(_field_names(cls))}")
            k = spelled[0]
        k = str(k)
        field = cls.aliases.get(k, k)
        if field in out:
            raise InputError(name, "extractor_error", f"parameter {field!r} of {name!r} given twice "
                             f"(as {k!r} and under another name)", f"give only {field}")
        out[field] = v
    return out


def _field_names(cls) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(cls.Config))


def parse_config(name: str, overrides: dict | None = None):
    """The extractor's Config with `overrides` applied (strings are coerced to the field types)."""
    cls = get(name)
    overrides = canonical_params(name, overrides)
    hints = typing.get_type_hints(cls.Config)
    fields = set(_field_names(cls))
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InputError(name, "extractor_error", f"unknown parameter(s) {unknown} for extractor {name!r}",
                         f"parameters are: {', '.join(sorted(fields))}")
    kwargs = {}
    for k, v in overrides.items():
        try:
            kwargs[k] = coerce(v, hints.get(k, str))
        except (ValueError, TypeError) as e:
            raise InputError(name, "extractor_error", f"parameter {k}={v!r}: {e}",
                             f"give {k} as {getattr(hints.get(k, str), '__name__', hints.get(k, str))}") from None
    try:
        return cls.Config(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ validation
        raise InputError(name, "extractor_error", f"bad parameters {overrides}: {e}",
                         f"change the parameter the message names ({name} takes: {', '.join(sorted(fields))})") from None


def get_cached(name: str, config=None) -> Extractor:
    """One instance per (name, config) per process: models load once per worker."""
    cls = get(name)
    if config is None:
        config = cls.Config()
    k = (name, config)
    inst = _CACHE.get(k)
    if inst is None:
        inst = _CACHE[k] = cls(config)
    return inst


def release_cached() -> None:
    """Close and forget every cached extractor of this process (those with a `close`)."""
    for inst in list(_CACHE.values()):
        close = getattr(inst, "close", None)
        if callable(close):
            close()
    _CACHE.clear()


def library_versions(dists) -> dict[str, str]:
    out = {}
    for d in dists:
        try:
            out[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            out[d] = "absent"
    return out


def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def resolve_key(name: str, params=None, upstream_params: dict | None = None,
                weights_sha256: str | None = ...) -> tuple[str, dict]:
    """(key, provenance) of running extractor `name` with `params`: THE key function.

    `params` is a dict of overrides (strings are coerced, aliases accepted) or a Config.
    `upstream_params` maps upstream extractor names to their params ({"faces": {"margin": 0.3}},
    a dict or a Config): an extractor whose input is "crops" hashes the key of the `faces` run
    with those params (default params when not given) as params["upstream"], so new crops
    mean new downstream keys and the provenance recomputes the key with
    store.keys.key_from_provenance. Extractors that do not read crops have no upstream: their
    key does not depend on `upstream_params`. `weights_sha256` defaults to the sha256 of the
    extractor's `weights_file(config)`; no model is loaded.
    """
    from store.keys import make_key

    cls = get(name)
    config = params if isinstance(params, cls.Config) else parse_config(name, params)
    params_json = _jsonable(dataclasses.asdict(config))
    ups = dict(upstream_params or {})
    unknown = sorted(set(ups) - {UPSTREAM})
    if unknown:
        raise InputError(name, "extractor_error", f"unknown upstream extractor(s) {unknown} for {name!r}",
                         f"the only upstream is {UPSTREAM!r} (the crops of crop extractors)")
    if cls.input_kind(config) == "crops":
        params_json["upstream"] = {UPSTREAM: resolve_key(UPSTREAM, ups.get(UPSTREAM))[0]}
    if weights_sha256 is ...:
        path = cls.weights_file(config)
        if path is None:
            weights_sha256 = None
        else:
            from featurize.weights import sha256_of

            weights_sha256 = sha256_of(path)
    libs = library_versions(cls.libraries)
    key = make_key(cls.version, params_json, weights_sha256, libs)
    provenance = {"extractor": name, "version": cls.version, "key": key, "params": params_json,
                  "weights_sha256": weights_sha256, "libraries": libs}
    return key, provenance
