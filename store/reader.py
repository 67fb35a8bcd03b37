"""Reading finished videos: only what a manifest line vouches for is visible.

Temp groups (dot-prefixed) and folders without a manifest line are never returned, so a
crashed or running writer cannot leak half a video into training.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import NOT_APPLICABLE, InputError

EXTRACTOR_JSON = "extractor.json"
MANIFEST = "manifest.jsonl"
ERRORS = "errors.jsonl"


def features_dir(root) -> Path:
    return Path(root) / "features"


def key_dir(root, extractor: str, key: str) -> Path:
    return features_dir(root) / extractor / key


def read_jsonl(path) -> list[dict]:
    """Every whole line; a torn line (a crash mid-append) is skipped with a warning, never fatal."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    rows = []
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            warnings.warn(f"{path}:{lineno}: skipping an unreadable line (torn write?)", stacklevel=2)
            continue
        rows.append(row)
    return rows


def _last_per_id(rows: list[dict]) -> dict[str, dict]:
    """The last line per id wins; a tombstone (`"retired": true`, from `verify --repair`) as the
    last line means the id is not done any more."""
    out: dict[str, dict] = {}
    for row in rows:
        if isinstance(row.get("video_id"), str):
            if row.get("retired"):
                out.pop(row["video_id"], None)
            else:
                out[row["video_id"]] = row
    return out


def read_provenance(path) -> dict:
    return json.loads((Path(path) / EXTRACTOR_JSON).read_text())


def _key_folders(root):
    base = features_dir(root)
    if not base.is_dir():
        return
    for ext_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for kdir in sorted(p for p in ext_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            yield ext_dir.name, kdir


def disk_bytes(path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def key_counts(path) -> dict:
    """done / failed / not-applicable per video id; a later success overrides an earlier failure."""
    done = _last_per_id(read_jsonl(Path(path) / MANIFEST))
    errors = {v: r for v, r in _last_per_id(read_jsonl(Path(path) / ERRORS)).items() if v not in done}
    n_na = sum(1 for r in errors.values() if _is_not_applicable(r))
    frames = sum(r["frames"] for r in done.values() if isinstance(r.get("frames"), int))
    return {"n_done": len(done), "n_failed": len(errors) - n_na, "n_not_applicable": n_na, "frames": frames}


def _is_not_applicable(row: dict) -> bool:
    return bool(row.get("not_applicable")) or row.get("reason") in NOT_APPLICABLE


def list_keys(root) -> list[dict]:
    out = []
    for extractor, kdir in _key_folders(root):
        if not (kdir / EXTRACTOR_JSON).is_file():
            continue
        try:
            provenance = read_provenance(kdir)
        except ValueError:
            provenance = None
        counts = key_counts(kdir)
        out.append({"extractor": extractor, "key": kdir.name, "path": str(kdir), "provenance": provenance,
                    "n_done": counts["n_done"], "n_failed": counts["n_failed"],
                    "n_not_applicable": counts["n_not_applicable"], "frames": counts["frames"],
                    "bytes": disk_bytes(kdir)})
    return out


def stored_key(root, extractor: str, key: str | None = None) -> str:
    """The key to read: the one given (it must exist) or the only one the extractor has.
    It looks keys up in the store; featurize.registry.resolve_key computes one from params."""
    ext_dir = features_dir(root) / extractor
    keys = sorted(k.name for e, k in _key_folders(root) if e == extractor and (k / EXTRACTOR_JSON).is_file())
    if key is not None:
        if key in keys:
            return key
        raise InputError(ext_dir / key, "missing_key", f"no feature key {key!r} for extractor {extractor!r}"
                         f" (have: {', '.join(keys) or 'none'})",
                         fix=f"run `emocache features` for {extractor} or pick one of the listed keys")
    if len(keys) == 1:
        return keys[0]
    if not keys:
        raise InputError(ext_dir, "missing_key", f"no features computed for extractor {extractor!r}",
                         fix=f"run `emocache features` with extractor {extractor}")
    raise InputError(ext_dir, "ambiguous_key", f"extractor {extractor!r} has {len(keys)} keys: {', '.join(keys)}",
                     fix="name the key explicitly")


def manifest_rows(root, extractor, key) -> list[dict]:
    return list(_last_per_id(read_jsonl(key_dir(root, extractor, key) / MANIFEST)).values())


def error_rows(root, extractor, key) -> list[dict]:
    return read_jsonl(key_dir(root, extractor, key) / ERRORS)


def _manifest_index(root, extractor, key) -> dict[str, dict]:
    kdir = key_dir(root, extractor, key)
    if not (kdir / EXTRACTOR_JSON).is_file():
        stored_key(root, extractor, key)  # raises the clear missing_key error
    return _last_per_id(read_jsonl(kdir / MANIFEST))


def _missing_video(root, extractor, key, video_id) -> InputError:
    return InputError(key_dir(root, extractor, key) / str(video_id), "missing_video",
                      f"video {video_id!r} is not finished in {extractor}/{key}",
                      fix="featurize it first (`emocache features`) or drop it from the list")


def _damaged(vdir: Path, what: str) -> InputError:
    root = vdir.parents[3]  # <root>/features/<extractor>/<key>/<video_id>
    return InputError(vdir, "damaged", f"video {vdir.name!r} is damaged: {what}",
                      fix=f"run `emocache verify --store {root} --repair`, then `emocache features` "
                          "again to redo exactly the damaged videos")


def _chunks_expected(arr) -> int:
    return int(np.prod([-(-s // c) for s, c in zip(arr.shape, arr.chunks)])) if arr.size else 0


def check_against_manifest(vdir: Path, handles: dict, row: dict) -> None:
    """Shapes and dtypes as the manifest line recorded them, every chunk file present.

    Zarr returns the fill value for a missing chunk file, so without this a lost chunk reads
    as zeros. Listing a chunk folder costs ~20 us per array here, against ms for the read."""
    recorded = row.get("arrays") or {}
    for name, arr in handles.items():
        if name in recorded:
            shape, dtype = recorded[name]
            if list(arr.shape) != list(shape) or str(arr.dtype) != dtype:
                raise _damaged(vdir, f"{name} is {list(arr.shape)} {arr.dtype} on disk, "
                                     f"the manifest recorded {list(shape)} {dtype}")
        elif "frames" in row and arr.shape[0] != row["frames"]:
            raise _damaged(vdir, f"{name} has {arr.shape[0]} frames, the manifest recorded {row['frames']}")
        have, want = arr.nchunks_initialized, _chunks_expected(arr)
        if have < want:
            raise _damaged(vdir, f"{name}: {want - have} of {want} chunk files missing")


def _open_arrays(vdir: Path, names, row: dict | None = None) -> tuple:
    """Opens only the arrays asked for: listing the group costs as much as reading a small array.
    With the video's manifest line, what is opened is checked against it (damage raises)."""
    import zarr

    try:
        group = zarr.open_group(str(vdir), mode="r")
    except Exception as e:  # noqa: BLE001  (no folder, no or broken zarr.json)
        if row is None:
            raise
        raise _damaged(vdir, f"cannot open its group ({type(e).__name__}: {e})") from None
    if names is None:
        names = sorted(row["arrays"]) if row and row.get("arrays") else sorted(group.array_keys())
    handles = {}
    for name in names:
        try:
            handles[name] = group[name]
        except KeyError:
            if row is not None and name in (row.get("arrays") or {}):
                raise _damaged(vdir, f"array {name!r} is in its manifest line but not on disk") from None
            raise InputError(vdir, "missing_video", f"no array {name!r} (has: {sorted(group.array_keys())})",
                             fix="ask only for arrays this extractor writes") from None
        except Exception as e:  # noqa: BLE001  (broken array metadata)
            raise _damaged(vdir, f"array {name!r} cannot be opened ({type(e).__name__}: {e})") from None
    if row is not None:
        check_against_manifest(vdir, handles, row)
    return group, handles


def _read_whole(vdir: Path, name: str, handle):
    try:
        return handle[...]
    except Exception as e:  # noqa: BLE001  (a truncated or garbled chunk file)
        raise _damaged(vdir, f"{name}: chunks unreadable ({type(e).__name__}: {e})") from None


def read_video(root, extractor, key, video_id, arrays=None) -> tuple[dict[str, np.ndarray], dict]:
    index = _manifest_index(root, extractor, key)
    if video_id not in index:
        raise _missing_video(root, extractor, key, video_id)
    vdir = key_dir(root, extractor, key) / video_id
    group, handles = _open_arrays(vdir, arrays, index[video_id])
    return {n: _read_whole(vdir, n, a) for n, a in handles.items()}, dict(group.attrs)


@dataclass
class Concat:
    """One contiguous array per name, so training windows come from RAM, not from Zarr."""
    arrays: dict[str, np.ndarray]
    offsets: np.ndarray
    video_ids: list[str]
    attrs: list[dict] = field(default_factory=list)

    def slice(self, i_or_id) -> dict[str, np.ndarray]:
        i = self.video_ids.index(i_or_id) if isinstance(i_or_id, str) else int(i_or_id)
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return {n: a[lo:hi] for n, a in self.arrays.items()}


def _layout(index, video_ids, names, where) -> tuple[np.ndarray, dict]:
    """Offsets and (dtype, trailing shape) per array, from manifest lines alone (no Zarr opens)."""
    lengths, specs = [], {}
    for vid in video_ids:
        row = index[vid]
        lengths.append(int(row["frames"]))
        recorded = row.get("arrays", {})
        for n in names:
            if n not in recorded:
                raise InputError(where / vid, "missing_video", f"video has no array {n!r}",
                                 fix="ask only for arrays this extractor writes")
            shape, dtype = recorded[n]
            spec = (np.dtype(dtype), tuple(shape[1:]))
            if specs.setdefault(n, spec) != spec:
                raise ValueError(f"{where}: array {n!r} of {vid!r} is {spec}, others are {specs[n]}")
    offsets = np.zeros(len(video_ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, specs


def read_concat(root, extractor, key, video_ids, arrays=("data", "mask", "t")) -> Concat:
    """Each array of each video is read whole, once, straight into a preallocated result."""
    video_ids, names = list(video_ids), list(arrays)
    index = _manifest_index(root, extractor, key)
    for vid in video_ids:
        if vid not in index:
            raise _missing_video(root, extractor, key, vid)
    kdir = key_dir(root, extractor, key)
    offsets, specs = _layout(index, video_ids, names, kdir)
    total = int(offsets[-1])
    out = {n: np.empty((total,) + specs[n][1], dtype=specs[n][0]) for n in names}
    attrs = []
    for i, vid in enumerate(video_ids):
        group, handles = _open_arrays(kdir / vid, names, index[vid])
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        for n, handle in handles.items():
            if handle.shape[0] != hi - lo:
                raise _damaged(kdir / vid, f"{n} has {handle.shape[0]} frames, the manifest recorded {hi - lo}")
            out[n][lo:hi] = _read_whole(kdir / vid, n, handle)
        attrs.append(dict(group.attrs))
    return Concat(arrays=out, offsets=offsets, video_ids=video_ids, attrs=attrs)
