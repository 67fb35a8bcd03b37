"""Hume-Reaction (ABAW5 ERI): `data_info.csv` with File_ID ("[id]"), Split, 7 intensities, Age, Country.

Media are found by file stem == the id inside the brackets (anywhere under `videos`, default
the input folder). Test clips have no intensities: their labels hold None. A listed clip whose
file is missing still gets a row, so the pipeline names it.
"""
from __future__ import annotations

from pathlib import Path

from store.errors import InputError

from .common import ADAPTERS, MEDIA_EXTS, find_media, make_row, read_csv_dicts, require_dir

EMOTIONS = ("Adoration", "Amusement", "Anxiety", "Disgust", "Empathic-Pain", "Fear", "Surprise")


def _float(text: str, path, n: int, col: str):
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise InputError(path, "bad_labels", f"line {n}, {col}: {text!r} is not a number",
                         "intensities are numbers in [0, 1] (empty for test clips)") from None


@ADAPTERS.register("hume")
def build(input_path, videos=None, dataset: str = "hume") -> list[dict]:
    """`input_path`: data_info.csv, or the folder holding it."""
    path = require_dir(input_path, "Hume-Reaction data_info.csv", "point at data_info.csv or its folder")
    csv_path = path / "data_info.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise InputError(csv_path, "missing_file", "data_info.csv not found", "point at the Hume-Reaction root")
    table = read_csv_dicts(csv_path)
    need = ["File_ID", "Split", *EMOTIONS]
    if table and [c for c in need if c not in table[0]]:
        raise InputError(csv_path, "bad_labels",
                         f"missing columns {[c for c in need if c not in table[0]]}",
                         "columns: File_ID, Split, the 7 emotions, Age, Country")
    media_root = Path(videos) if videos is not None else csv_path.parent
    index: dict[str, Path] = {}
    for p in find_media(media_root, MEDIA_EXTS):
        index.setdefault(p.stem, p)
    rows = []
    for n, r in enumerate(table, 2):
        fid = r["File_ID"].strip().strip('"').strip("[]").strip()
        if not fid:
            raise InputError(csv_path, "bad_labels", f"line {n}: empty File_ID", "File_ID is written as [id]")
        labels = {e: _float(r[e], csv_path, n, e) for e in EMOTIONS}
        age = r.get("Age", "")
        labels["age"] = _float(age, csv_path, n, "Age") if age else None
        labels["country"] = r.get("Country") or None
        media = index.get(fid) or media_root / f"{fid}.mp4"
        rows.append(make_row(fid, media, dataset, split=r["Split"], labels=labels))
    return rows
