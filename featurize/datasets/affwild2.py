"""Aff-Wild2 valence/arousal (ABAW VA track): `VA_Set/{Train_Set,Validation_Set}/<video>.txt`.

Each txt is one video's per-frame labels (`valence,arousal` header, -5 = unlabelled); the
split comes from the folder. `<name>_left` / `<name>_right` are two people in one video: both
rows point at the same media file `<name>.*` (and so share its audio) under their own ids;
`hints.faces.person` (left / right) makes the `faces` extractor follow that row's person, so
each id gets its own face track and crops. group = the media file, so both people land in
the same fold.
A txt whose video is not found still gets a row (path where it was looked for), so the
pipeline reports `missing_file` rather than dropping the video.
"""
from __future__ import annotations

from pathlib import Path

from store.errors import InputError

from .common import ADAPTERS, VIDEO_EXTS, find_media, make_row, require_dir

SPLIT_DIRS = {"Train_Set": "train", "Validation_Set": "val", "Test_Set": "test"}


def find_va_set(root: Path) -> Path:
    """VA_Set under `root` (root itself, root/VA_Set, root/annotations/VA_Set or deeper)."""
    if root.name == "VA_Set" or any((root / d).is_dir() for d in SPLIT_DIRS):
        return root
    for cand in (root / "VA_Set", root / "annotations" / "VA_Set"):
        if cand.is_dir():
            return cand
    found = sorted(p for p in root.rglob("VA_Set") if p.is_dir())
    if not found:
        raise InputError(root, "missing_file", "no VA_Set folder (with Train_Set/Validation_Set) found",
                         "point --input at the Aff-Wild2 root or its annotations folder")
    return found[0]


def media_name(stem: str) -> tuple[str, str | None]:
    """`x_left` -> (`x`, 'left'); `x` -> (`x`, None)."""
    for side in ("left", "right"):
        if stem.endswith("_" + side):
            return stem[: -len(side) - 1], side
    return stem, None


@ADAPTERS.register("affwild2")
def build(input_path, videos=None, dataset: str = "affwild2") -> list[dict]:
    """`videos`: folder searched (recursively) for the media; default the input folder."""
    root = require_dir(input_path, "Aff-Wild2 folder", "point at the folder holding VA_Set")
    va = find_va_set(root)
    media_root = Path(videos) if videos is not None else root
    index: dict[str, Path] = {}
    for p in find_media(media_root, VIDEO_EXTS):
        index.setdefault(p.stem, p)
    rows = []
    for split_dir, split in SPLIT_DIRS.items():
        folder = va / split_dir
        if not folder.is_dir():
            continue
        for txt in sorted(folder.glob("*.txt")):
            name, side = media_name(txt.stem)
            media = index.get(name) or index.get(txt.stem) or (media_root / f"{name}.mp4")
            rows.append(make_row(txt.stem, media, dataset, split=split, group=name,
                                 labels={}, hints={"faces": {"person": side}} if side else {},
                                 frame_labels={"path": str(txt.absolute()), "format": "affwild2_va"}))
    if not rows:
        raise InputError(va, "bad_labels", "no annotation .txt files under Train_Set/Validation_Set",
                         "check the VA_Set folder")
    return rows
