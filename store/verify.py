"""A full read of the store that reports damage instead of raising.

Every problem is one human line naming the path. Lines that start with "warning:" are
harmless to readers (leftover temp folders of a crashed run, a torn last manifest line);
every other line means data that cannot be trusted.
"""
from __future__ import annotations

import json
import os
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .claims import CLAIM_PREFIX, is_stale, read_claim
from .keys import key_from_provenance
from .reader import ERRORS, EXTRACTOR_JSON, MANIFEST, _key_folders, _last_per_id, read_jsonl
from .writer import append_jsonl, temp_owner


RETIRED_PREFIX = ".retired-"


def verify(root) -> list[str]:
    problems: list[str] = []
    for _extractor, kdir in _key_folders(root):
        problems += _verify_key(kdir)
    return problems


def repair(root) -> list[str]:
    """Retire every damaged finished video: its folder moves aside to `.retired-<id>-<hex8>`
    (kept for inspection, nothing deleted) and a tombstone line `{"retired": true}` goes into
    the manifest, so the next `emocache features` run redoes exactly those videos.
    Returns one line per retired video."""
    done = []
    for _extractor, kdir in _key_folders(root):
        rows = _last_per_id(read_jsonl(kdir / MANIFEST))
        for vid, row in sorted(rows.items()):
            vdir = kdir / vid
            try:
                found = _verify_video(vdir, row) if vdir.is_dir() else ["manifest line but no video folder"]
            except Exception as exc:  # noqa: BLE001
                found = [f"unreadable ({type(exc).__name__}: {exc})"]
            if not found:
                continue
            if vdir.is_dir():
                os.rename(vdir, kdir / f"{RETIRED_PREFIX}{vid}-{uuid.uuid4().hex[:8]}")
            append_jsonl(kdir / MANIFEST, {
                "video_id": vid, "retired": True, "reason": "damaged", "problems": found,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            done.append(f"{vdir}: retired ({'; '.join(found)})")
    return done


def _read_jsonl_noting(path: Path, problems: list[str]) -> list[dict]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = read_jsonl(path)
    problems += [f"warning: {w.message}" for w in caught]
    return rows


def _verify_provenance(kdir: Path) -> list[str]:
    path = kdir / EXTRACTOR_JSON
    if not path.is_file():
        return [f"{kdir}: no {EXTRACTOR_JSON} (not a key folder made by the store)"]
    try:
        provenance = json.loads(path.read_text())
        expected = key_from_provenance(provenance)
    except (ValueError, TypeError) as exc:
        return [f"{path}: unusable provenance: {exc}"]
    if expected != kdir.name:
        return [f"{path}: provenance hashes to key {expected!r} but lives in {kdir.name!r}"]
    return []


def _verify_key(kdir: Path) -> list[str]:
    problems = _verify_provenance(kdir)
    rows = _last_per_id(_read_jsonl_noting(kdir / MANIFEST, problems))
    _read_jsonl_noting(kdir / ERRORS, problems)
    folders = {p.name for p in kdir.iterdir() if p.is_dir()}
    for claim in sorted(kdir.glob(f"{CLAIM_PREFIX}*")):
        info = read_claim(claim)
        who = f"{(info or {}).get('host')} pid {(info or {}).get('pid')}"
        state = ("its writer is gone; the next writer of it breaks the claim" if is_stale(claim, info)
                 else "being written now")
        problems.append(f"warning: {claim}: claim by {who} ({state})")
    for name in sorted(folders):
        if name.startswith(RETIRED_PREFIX):
            problems.append(f"warning: {kdir / name}: a damaged video retired by `verify --repair` "
                            "(kept for inspection; delete it when done)")
        elif temp_owner(name) is not None:
            problems.append(f"warning: {kdir / name}: leftover temp folder of an unfinished write "
                            f"(a re-run of {temp_owner(name)!r} removes it)")
        elif not name.startswith(".") and name not in rows:
            problems.append(f"{kdir / name}: video folder without a manifest line (unfinished; "
                            "a re-run rewrites it)")
    for vid, row in sorted(rows.items()):
        if vid not in folders:
            problems.append(f"{kdir / vid}: manifest line but no video folder")
            continue
        try:
            problems += _verify_video(kdir / vid, row)
        except Exception as exc:  # any read failure is a finding, never a crash
            problems.append(f"{kdir / vid}: unreadable ({type(exc).__name__}: {exc})")
    return problems


def _verify_video(vdir: Path, row: dict) -> list[str]:
    import zarr

    group = zarr.open_group(str(vdir), mode="r")
    arrays = {n: group[n] for n in sorted(group.array_keys())}
    out: list[str] = []
    recorded = row.get("arrays", {})
    frames = row.get("frames")
    if set(recorded) != set(arrays):
        out.append(f"{vdir}: arrays on disk {sorted(arrays)} != manifest {sorted(recorded)}")
    lengths = {n: a.shape[0] for n, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        out.append(f"{vdir}: arrays differ in length: {lengths}")
    for name, arr in arrays.items():
        out += _verify_array(vdir / name, arr, frames, recorded.get(name))
    return out


def _verify_array(where: Path, arr, frames, recorded) -> list[str]:
    out = []
    if arr.shape[0] != frames:
        out.append(f"{where}: {arr.shape[0]} frames, manifest says {frames}")
    if recorded is not None and (list(arr.shape) != list(recorded[0]) or str(arr.dtype) != recorded[1]):
        out.append(f"{where}: {list(arr.shape)} {arr.dtype}, manifest recorded {recorded[0]} {recorded[1]}")
    if arr.nchunks_initialized != arr.nchunks:
        out.append(f"{where}: {arr.nchunks - arr.nchunks_initialized} of {arr.nchunks} chunk files missing")
    try:
        values = arr[...]
    except Exception as exc:
        return out + [f"{where}: chunks unreadable ({type(exc).__name__}: {exc})"]
    name = where.name
    if name == "mask" and values.dtype != np.bool_:
        out.append(f"{where}: mask is {values.dtype}, must be bool")
    if name == "t":
        out += _verify_time(where, values)
    return out


def _verify_time(where: Path, t: np.ndarray) -> list[str]:
    if t.dtype != np.float64:
        return [f"{where}: t is {t.dtype}, must be float64 seconds"]
    if t.ndim != 1:
        return [f"{where}: t has shape {t.shape}, must be (T,)"]
    if not np.all(np.isfinite(t)):
        return [f"{where}: t has non-finite values"]
    if t.size > 1 and np.any(np.diff(t) < 0):
        return [f"{where}: t decreases at frame {int(np.argmax(np.diff(t) < 0)) + 1}"]
    return []
