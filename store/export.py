"""HDF5 export/import of one key, for tools that read HDF5 but not Zarr.

Layout of the file: root attrs `emocache_extractor`, `emocache_key`, `provenance` (canonical
JSON), `errors` (JSON list of errors.jsonl rows); one group per video named by its id, holding
its arrays (same dtypes, gzip) and attrs: each scalar/string attr as itself, plus `attrs_json`
and `manifest_json` so nothing is lost in translation.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import zarr

from .errors import InputError
from .keys import canonical_json
from .reader import ERRORS, error_rows, key_dir, manifest_rows, read_provenance, stored_key
from .writer import CORE_MANIFEST_FIELDS, FeatureStore, append_jsonl

FORMAT = "emocache-h5-1"


def _h5_attr(value):
    """Plain scalars and strings stay readable in HDF5 tools; anything else lives only in attrs_json."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return None


def export_h5(root, extractor, key, h5_path) -> Path:
    """Returns the written path. Arrays are copied one chunk of time at a time to bound memory."""
    key = stored_key(root, extractor, key)
    kdir = key_dir(root, extractor, key)
    h5_path = Path(h5_path)
    with h5py.File(h5_path, "w") as h5:
        h5.attrs["format"] = FORMAT
        h5.attrs["emocache_extractor"] = extractor
        h5.attrs["emocache_key"] = key
        h5.attrs["provenance"] = canonical_json(read_provenance(kdir))
        h5.attrs["errors"] = json.dumps(error_rows(root, extractor, key))
        for row in sorted(manifest_rows(root, extractor, key), key=lambda r: r["video_id"]):
            _export_video(h5, kdir / row["video_id"], row)
    return h5_path


def _export_video(h5, vdir: Path, row: dict) -> None:
    group = zarr.open_group(str(vdir), mode="r")
    out = h5.create_group(row["video_id"])
    attrs = dict(group.attrs)
    for name, value in attrs.items():
        if _h5_attr(value) is not None and name not in ("attrs_json", "manifest_json"):
            out.attrs[name] = value
    out.attrs["attrs_json"] = json.dumps(attrs)
    out.attrs["manifest_json"] = json.dumps(row)
    for name in sorted(group.array_keys()):
        arr = group[name]
        step = arr.chunks[0]
        if arr.shape[0] == 0:
            out.create_dataset(name, shape=arr.shape, dtype=arr.dtype).attrs["zarr_chunk_frames"] = step
            continue
        dset = out.create_dataset(name, shape=arr.shape, dtype=arr.dtype, compression="gzip",
                                  chunks=(min(step, arr.shape[0]),) + arr.shape[1:])
        for lo in range(0, arr.shape[0], step):
            dset[lo:lo + step] = arr[lo:lo + step]
        dset.attrs["zarr_chunk_frames"] = step


def import_h5(h5_path, root) -> str:
    """Recreates the key under `root` (skipping videos already done there) and returns the key."""
    h5_path = Path(h5_path)
    with h5py.File(h5_path, "r") as h5:
        if h5.attrs.get("format") != FORMAT:
            raise InputError(h5_path, "not_media", "not an emocache HDF5 export",
                             fix="export it with `emocache export` (store.export_h5)")
        extractor, key = str(h5.attrs["emocache_extractor"]), str(h5.attrs["emocache_key"])
        handle = FeatureStore(root).key(extractor, key, json.loads(h5.attrs["provenance"]))
        done = handle.done_ids()
        for vid in h5:
            if vid not in done:
                _import_video(handle, h5[vid])
        known_errors = {(r.get("video_id"), r.get("time")) for r in error_rows(root, extractor, key)}
        for row in json.loads(h5.attrs.get("errors", "[]")):
            if (row.get("video_id"), row.get("time")) not in known_errors:
                append_jsonl(handle.path / ERRORS, row)  # as recorded, original time included
    return key


def _import_video(handle, h5group) -> None:
    row = json.loads(h5group.attrs["manifest_json"])
    attrs = json.loads(h5group.attrs["attrs_json"])
    names = sorted(h5group.keys())
    frames = int(row["frames"])
    chunk = max([int(h5group[n].attrs.get("zarr_chunk_frames", 512)) for n in names] or [512])
    with handle.begin_video(row["video_id"], row.get("original_id"), chunk_frames=chunk) as writer:
        writer.attrs = attrs
        # the first append fixes dtype/trailing shape even for a zero-frame video
        writer.append({n: np.asarray(h5group[n][0:0]) for n in names})
        for lo in range(0, frames, writer.chunk):
            writer.append({n: h5group[n][lo:lo + writer.chunk] for n in names})
        writer.commit({k: v for k, v in row.items() if k not in CORE_MANIFEST_FIELDS})
