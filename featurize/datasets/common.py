"""Pieces every adapter shares: the row shape, media discovery, manifest reading."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from featurize.registry import Registry
from store.errors import InputError
from store.keys import is_safe_name, sanitize_id

# dataset adapter name -> its build(input_path, **options); filled by @ADAPTERS.register in each module
ADAPTERS = Registry("dataset adapter", where=None)

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv", ".m4v", ".mpg", ".mpeg", ".wmv")
AUDIO_EXTS = (".wav", ".mp3", ".flac", ".m4a", ".aac", ".ogg", ".opus")
MEDIA_EXTS = VIDEO_EXTS + AUDIO_EXTS
SPLITS = {"train": "train", "training": "train", "train_set": "train",
          "val": "val", "valid": "val", "validation": "val", "dev": "val", "validation_set": "val",
          "test": "test", "testing": "test", "test_set": "test"}


def norm_split(value) -> str | None:
    """'Train'/'Validation_Set'/'dev'/... -> train|val|test; empty -> None; unknown kept lower-case."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    return SPLITS.get(text.lower(), text.lower())


def make_row(original_id: str, path, dataset: str, *, split=None, fold=None, group=None,
             labels: dict | None = None, frame_labels: dict | None = None, **extra) -> dict:
    """One manifest row; the id is sanitized for the store, the raw one kept."""
    row = {
        "video_id": sanitize_id(original_id),
        "original_id": str(original_id),
        "path": str(Path(path).absolute()) if path is not None else None,
        "dataset": dataset,
        "split": norm_split(split),
        "fold": fold,
        "group": None if group is None else str(group),
        "labels": dict(labels or {}),
        "frame_labels": frame_labels,
    }
    row.update(extra)
    return row


def _walk_media(root: Path, exts, recursive: bool):
    """(media, skipped): every name with a media extension, whatever it turns out to be.

    Dangling links, link loops, folders and FIFOs named like media are media here: they
    get rows, and the pipeline fails those rows with a reason (`missing_file`, `bad_path`)
    instead of dropping them. Folder links are followed (a corpus linked in from elsewhere),
    each real folder once. Hidden names are `skipped` as (path, why)."""
    media, skipped, seen = [], [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
            ident = (st.st_dev, st.st_ino)
        except OSError:
            ident = None
        if ident in seen:
            skipped.append((Path(dirpath), "folder link loop (already listed)"))
            dirnames[:] = []
            continue
        seen.add(ident)
        keep = []
        for d in sorted(dirnames):
            full = Path(dirpath) / d
            if d.startswith("."):
                skipped.append((full, "hidden folder"))
            elif d.lower().endswith(exts):
                media.append(full)  # a folder named like a video: a row that fails bad_path
            else:
                keep.append(d)
        dirnames[:] = keep if recursive else []
        for f in filenames:
            if not f.lower().endswith(exts):
                continue
            full = Path(dirpath) / f
            (skipped.append((full, "hidden name")) if f.startswith(".") else media.append(full))
    return sorted(media), sorted(skipped)


def find_media(root, exts=MEDIA_EXTS, recursive: bool = True) -> list[Path]:
    """Every media name under `root`, sorted; hidden files and folders left out (they are
    listed by `hidden_names`, and the summary names them)."""
    root = Path(root)
    if not root.is_dir():
        return [root]
    return _walk_media(root, tuple(e.lower() for e in exts), recursive)[0]


def skipped_names(root, exts=MEDIA_EXTS) -> list[tuple[Path, str]]:
    """(path, why) for the names `find_media` leaves out on purpose (hidden, folder loops)."""
    root = Path(root)
    return _walk_media(root, tuple(e.lower() for e in exts), True)[1] if root.is_dir() else []


def one_per_stem(paths: list[Path], prefer=VIDEO_EXTS + AUDIO_EXTS) -> dict[str, Path]:
    """stem -> one file. Corpora ship the same clip several times (CREMA-D: flv, wav, mp3);
    keep the first by `prefer` order (video before audio), then by path, so the choice is
    deterministic and a clip is featurized once."""
    rank = {e: i for i, e in enumerate(prefer)}
    best: dict[str, Path] = {}
    for p in sorted(paths):
        cur = best.get(p.stem)
        if cur is None or rank.get(p.suffix.lower(), 99) < rank.get(cur.suffix.lower(), 99):
            best[p.stem] = p
    return dict(sorted(best.items()))


def require_dir(path, what: str, fix: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "missing_file", f"{what} not found", fix)
    return path


def read_csv_dicts(path) -> list[dict]:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(path, "bad_labels", f"cannot read CSV ({e})", "save it as UTF-8 CSV with a header") from None


_REQUIRED = ("video_id", "path")


def read_manifest_jsonl(path) -> list[dict]:
    """Rows from a manifest .jsonl (ours, or hand-written): ids are sanitized, missing
    optional fields are filled, relative paths resolve against the manifest's folder."""
    path = Path(path)
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError as e:
            raise InputError(path, "bad_labels", f"line {n} is not JSON ({e})",
                             "one JSON object per line") from None
        if not isinstance(raw, dict) or any(k not in raw for k in _REQUIRED):
            raise InputError(path, "bad_labels", f"line {n} lacks {list(_REQUIRED)}",
                             'each line needs at least {"video_id": ..., "path": ...}')
        media = Path(raw["path"])
        if not media.is_absolute():
            media = path.parent / media
        known = ("video_id", "original_id", "path", "dataset", "split", "fold", "group", "labels",
                 "frame_labels")
        extra = {k: v for k, v in raw.items() if k not in known}
        rows.append(make_row(raw.get("original_id") or raw["video_id"], media,
                             raw.get("dataset") or path.stem, split=raw.get("split"),
                             fold=raw.get("fold"), group=raw.get("group"), labels=raw.get("labels"),
                             frame_labels=raw.get("frame_labels"), **extra))
        if is_safe_name(str(raw["video_id"])):  # a safe id given by hand is kept as is
            rows[-1]["video_id"] = str(raw["video_id"])
    return rows
