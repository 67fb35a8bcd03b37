"""Any folder of media files, with an optional labels CSV (`path,label[,split]`).

Ids are the file stems when they are unique in the folder, else the relative path without
extension (sanitized: '/' becomes '_' plus a hash). Every media file gets a row; a CSV
line whose file is missing still gets a row, so the pipeline names it (`missing_file`)
instead of the clip silently vanishing.
"""
from __future__ import annotations

import os
from pathlib import Path

from store.errors import InputError

from .common import ADAPTERS, MEDIA_EXTS, find_media, make_row, read_csv_dicts, require_dir


def _real(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # a symlink loop: its row fails with bad_path later
        return p.absolute()


def _ids(root: Path, paths: list[Path]) -> dict[Path, str]:
    stems = [p.stem for p in paths]
    unique = len(set(stems)) == len(stems)
    if root.is_file():
        return {p: p.stem for p in paths}
    return {p: (p.stem if unique else Path(os.path.relpath(p, root)).with_suffix("").as_posix())
            for p in paths}


@ADAPTERS.register("generic")
def build(input_path, labels=None, recursive: bool = True, exts=MEDIA_EXTS,
          dataset: str = "generic", label_name: str = "label") -> list[dict]:
    """Rows for every media file under `input_path`; `labels` is a CSV path (relative paths in
    it resolve against `input_path`)."""
    root = require_dir(input_path, "media folder", "give a folder (or file) of videos/audio")
    media = find_media(root, exts, recursive)
    base = root if root.is_dir() else root.parent
    by_path: dict[Path, dict] = {}
    if labels is not None:
        table = read_csv_dicts(labels)
        if table and "path" not in table[0]:
            raise InputError(labels, "bad_labels", f"no 'path' column (columns: {list(table[0])})",
                             "header: path,label[,split]")
        for r in table:
            p = Path(r["path"])
            by_path[(p if p.is_absolute() else base / p).resolve()] = r
        have = {_real(m) for m in media}
        for p in by_path:
            if p not in have:
                media.append(p)
    ids = _ids(base, media)
    rows = []
    for p in media:
        r = by_path.get(_real(p), {})
        lab = {label_name: r["label"]} if r.get("label") else {}
        lab.update({k: v for k, v in r.items() if k not in ("path", "label", "split") and v != ""})
        rows.append(make_row(ids[p], p, dataset, split=r.get("split"), labels=lab))
    return rows
