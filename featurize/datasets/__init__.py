"""Dataset adapters: a corpus on disk -> manifest rows (one per video) for the pipeline.

Each adapter module registers its `build(input_path, **options) -> list[dict]` with
`@ADAPTERS.register("name")` (featurize.registry.Registry); the rows follow the
contract (docs/interfaces.md, "Dataset manifests"). Labels stay out of the feature store:
per-clip labels ride in the row, per-frame labels are referenced (`frame_labels`) and read
by `load_frame_labels` at training time, so one cache serves every labelling of a corpus.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from store.errors import InputError

from .common import ADAPTERS, make_row, read_manifest_jsonl, skipped_names

def _load_adapters():
    # importing an adapter module registers it (they import nothing heavy)
    from . import affwild2, cremad, demo, emodb, generic, hume, labelled_csv, ravdess  # noqa: F401


ADAPTERS.aliases.update({"crema-d": "cremad", "crema_d": "cremad", "aff-wild2": "affwild2",
                         "affwild": "affwild2", "hume-reaction": "hume", "labelled_csv": "labelled-csv",
                         "labeled-csv": "labelled-csv", "csv": "labelled-csv", "emotions": "labelled-csv"})
ADAPTERS.set_loader(_load_adapters)

__all__ = ["ADAPTERS", "names", "get", "build", "build_rows", "load_frame_labels", "make_row",
           "read_manifest_jsonl"]


def names() -> list[str]:
    return ADAPTERS.names()


def get(name: str):
    """The adapter's `build(input_path, **options)` for `name` (case-insensitive, aliases too)."""
    key = str(name).lower()
    if key not in ADAPTERS:
        raise ValueError(f"unknown dataset adapter {name!r}; known: {', '.join(names())}")
    return ADAPTERS.get(key)


def build(name: str | None, input_path, **options) -> list[dict]:
    """Rows for `input_path` through adapter `name`.

    `name` None picks one: a `.jsonl` manifest is read as is, a folder with `corpus.json` is
    the demo corpus, anything else the generic folder adapter.
    """
    path = Path(input_path)
    if not path.exists():
        raise InputError(path, "missing_file", "input not found",
                         "give a folder of media, a dataset root, or a manifest .jsonl")
    if name is None:
        if path.is_file() and path.suffix == ".jsonl":
            return read_manifest_jsonl(path)
        name = "demo" if (path / "corpus.json").is_file() else "generic"
    rows = get(name)(path, **options)
    # names left out on purpose still show: the pipeline lists them as skipped, never as work
    dataset = rows[0].get("dataset") if rows else name
    for p, why in skipped_names(path):
        rows.append(make_row(p.name, p, dataset, skipped=why))
    return rows


def build_rows(input_path, dataset: str | None = None, **options) -> list[dict]:
    """CLI helper: `--input DIR_OR_MANIFEST --dataset NAME` -> rows (a .jsonl is always read as is)."""
    path = Path(input_path)
    if path.is_file() and path.suffix == ".jsonl":
        return read_manifest_jsonl(path)
    return build(dataset, path, **options)


# ------------------------------------------------------------------ per-frame labels

_TIME_COLUMNS = {"frame", "t", "time", "timestamp", "frame_index", "index"}


def _read_affwild2_va(path: Path) -> tuple[list[str], np.ndarray]:
    """`valence,arousal` header, one line per frame; -5 (either value) marks an unlabelled frame."""
    lines = path.read_text().splitlines()
    if not lines:
        raise InputError(path, "bad_labels", "empty annotation file",
                         "an Aff-Wild2 VA file starts with the line 'valence,arousal'")
    names = [c.strip().lower() for c in lines[0].split(",")]
    if names != ["valence", "arousal"]:
        raise InputError(path, "bad_labels", f"first line is {lines[0]!r}, expected 'valence,arousal'",
                         "point the affwild2 adapter at VA_Set annotation files")
    body = [ln for ln in lines[1:] if ln.strip()]
    try:
        values = np.array([[float(x) for x in ln.split(",")] for ln in body], dtype=np.float32)
    except ValueError as e:
        raise InputError(path, "bad_labels", f"a value is not a number ({e})",
                         "each line after the header is 'valence,arousal'") from None
    values = values.reshape(-1, 2)
    values[(values == -5).any(axis=1)] = np.nan
    return ["valence", "arousal"], values


def _read_csv_labels(path: Path, columns=None) -> tuple[list[str], np.ndarray]:
    """A CSV with a header; time columns (frame, t, ...) are dropped, empty cells become NaN."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise InputError(path, "bad_labels", "empty label file", "a header line, then one line per frame")
    header = [h.strip() for h in rows[0]]
    keep = [i for i, h in enumerate(header)
            if (h in columns if columns else h.lower() not in _TIME_COLUMNS)]
    if columns:
        missing = [c for c in columns if c not in header]
        if missing:
            raise InputError(path, "bad_labels", f"columns {missing} not in header {header}",
                             "fix the frame_labels.columns of the row or the file")
    values = np.full((len(rows) - 1, len(keep)), np.nan, dtype=np.float32)
    for r, row in enumerate(rows[1:]):
        for j, i in enumerate(keep):
            cell = row[i].strip() if i < len(row) else ""
            if cell:
                try:
                    values[r, j] = float(cell)
                except ValueError:
                    raise InputError(path, "bad_labels", f"line {r + 2}, column {header[i]!r}: "
                                     f"{cell!r} is not a number", "numbers only; leave unlabelled cells empty"
                                     ) from None
    return [header[i] for i in keep], values


def load_frame_labels(row: dict) -> tuple[list[str], np.ndarray]:
    """(names, values float32 [T, K]) for a row's per-frame labels; NaN = unlabelled.

    Formats: `affwild2_va` (-5 -> NaN) and `csv` (header; optional `columns` in the ref).
    """
    ref = row.get("frame_labels")
    if not ref:
        raise InputError(row.get("path", row.get("video_id", "?")), "bad_labels",
                         f"row {row.get('video_id')!r} has no per-frame labels",
                         "use a dataset with frame labels (demo, affwild2) or per-clip labels")
    path = Path(ref["path"])
    if not path.is_file():
        raise InputError(path, "missing_file", "per-frame label file not found",
                         "rebuild the dataset manifest where the labels are")
    fmt = ref.get("format", "csv")
    if fmt == "affwild2_va":
        return _read_affwild2_va(path)
    if fmt == "csv":
        return _read_csv_labels(path, ref.get("columns"))
    raise InputError(path, "bad_labels", f"unknown frame label format {fmt!r}", "use 'affwild2_va' or 'csv'")


def read_clip_meta(path) -> dict:
    """Small helper for adapters that keep a JSON sidecar (demo's corpus.json)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(path, "bad_labels", f"cannot read JSON ({e})", "regenerate the file") from None
