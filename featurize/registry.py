"""The extractor registry: a name, a version, a frozen dataclass of params, and the key.

Every extractor module defines one `Extractor` subclass and decorates it with `@register`.
The class is cheap to import; heavy libraries are imported when an instance is built.
Instances are built once per worker process per (name, config) through `get_cached`.

The key of an extractor run (store/keys.make_key) hashes the params, the weights sha256
and the versions of the distributions named in `libraries`; crop extractors (input
"crops") also hash the key of the `faces` run that made their crops (`upstream`), so new
crops mean new downstream keys.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import types
import typing
from typing import Any, ClassVar

import numpy as np

from store.errors import InputError

__all__ = ["Registry", "Extractor", "EXTRACTORS", "register", "get", "names", "parse_config", "get_cached",
           "key_for", "library_versions"]


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

    # audio extractors
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


def _coerce(value, typ, field: str, name: str):
    """Overrides from the command line arrive as strings: turn them into the field's type."""
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
                return _coerce(value, a, field, name)
            except (ValueError, TypeError):
                continue
        raise ValueError(f"{value!r} does not fit {typ}")
    if origin is tuple or typ is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        inner = args[0] if args else str
        return tuple(_coerce(v, inner, field, name) for v in value)
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


def parse_config(name: str, overrides: dict | None = None):
    """The extractor's Config with `overrides` applied (strings are coerced to the field types)."""
    cls = get(name)
    overrides = dict(overrides or {})
    hints = typing.get_type_hints(cls.Config)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InputError(name, "extractor_error", f"unknown parameter(s) {unknown} for extractor {name!r}",
                         f"parameters are: {', '.join(sorted(fields))}")
    kwargs = {}
    for k, v in overrides.items():
        try:
            kwargs[k] = _coerce(v, hints.get(k, str), k, name)
        except (ValueError, TypeError) as e:
            raise InputError(name, "extractor_error", f"parameter {k}={v!r}: {e}") from None
    try:
        return cls.Config(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ validation
        raise InputError(name, "extractor_error", f"bad parameters {overrides}: {e}") from None


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


def key_for(name: str, config=None, upstream: dict[str, str] | None = None,
            weights_sha256: str | None = ...) -> tuple[str, dict]:
    """(key, provenance) of running extractor `name` with `config`.

    `upstream` maps upstream extractor names to their keys (crop extractors: {"faces": key});
    it is hashed with the params (as params["upstream"]), so the provenance recomputes the
    key with store.keys.key_from_provenance. `weights_sha256` defaults to the sha256 of the
    extractor's `weights_file(config)`; no model is loaded.
    """
    from store.keys import make_key

    cls = get(name)
    if config is None:
        config = cls.Config()
    if not isinstance(config, cls.Config):
        raise TypeError(f"config for {name!r} must be a {cls.Config.__name__}")
    params = _jsonable(dataclasses.asdict(config))
    if upstream:
        params["upstream"] = dict(sorted(upstream.items()))
    elif cls.input_kind(config) == "crops":
        raise ValueError(f"{name!r} runs on face crops: pass upstream={{'faces': <faces key>}}")
    if weights_sha256 is ...:
        path = cls.weights_file(config)
        if path is None:
            weights_sha256 = None
        else:
            from featurize.weights import sha256_of

            weights_sha256 = sha256_of(path)
    libs = library_versions(cls.libraries)
    key = make_key(cls.version, params, weights_sha256, libs)
    provenance = {"extractor": name, "version": cls.version, "key": key, "params": params,
                  "weights_sha256": weights_sha256, "libraries": libs}
    return key, provenance
