"""RAVDESS: labels from `MM-VV-EE-II-SS-RR-AA` file names; group = actor (split by actor)."""
from __future__ import annotations

import re

from .common import ADAPTERS, find_media, make_row, require_dir

NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)")
MODALITY = {"01": "full-AV", "02": "video-only", "03": "audio-only"}
CHANNEL = {"01": "speech", "02": "song"}
EMOTION = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry",
           "06": "fearful", "07": "disgust", "08": "surprised"}
INTENSITY = {"01": "normal", "02": "strong"}
STATEMENT = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}


def parse_name(stem: str) -> dict | None:
    """Labels from a RAVDESS stem (a trailing suffix like `_1` is allowed); None if not one."""
    m = NAME.match(stem)
    if not m or m.group(3) not in EMOTION:
        return None
    mod, ch, emo, inten, stmt, rep, actor = m.groups()
    a = int(actor)
    return {"emotion": EMOTION[emo], "emotion_code": emo, "intensity": INTENSITY.get(inten, inten),
            "modality": MODALITY.get(mod, mod), "vocal_channel": CHANNEL.get(ch, ch),
            "statement": int(stmt), "repetition": int(rep), "actor": a,
            "sex": "male" if a % 2 else "female"}


@ADAPTERS.register("ravdess")
def build(input_path, modalities=("full-AV", "video-only", "audio-only"), dataset: str = "ravdess") -> list[dict]:
    """Every RAVDESS-named media file under `input_path`; other files are ignored."""
    root = require_dir(input_path, "RAVDESS folder", "point at the folder of Actor_* folders or clips")
    rows = []
    for p in find_media(root):
        lab = parse_name(p.stem)
        if lab is None or lab["modality"] not in modalities:
            continue
        rows.append(make_row(p.stem, p, dataset, group=f"{lab['actor']:02d}", labels=lab))
    return rows
