"""Berlin EmoDB (audio only): `SStttEv.wav` — speaker, text, emotion letter, version.

group = speaker: split leave-one-speaker-out, never by file.
"""
from __future__ import annotations

import re

from .common import ADAPTERS, AUDIO_EXTS, find_media, make_row, require_dir

NAME = re.compile(r"^(\d\d)([a-z]\d\d)([A-Z])([a-z]?)")
EMOTION = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness",
           "T": "sadness", "N": "neutral"}


def parse_name(stem: str) -> dict | None:
    m = NAME.match(stem)
    if not m or m.group(3) not in EMOTION:
        return None
    speaker, text, emo, version = m.groups()
    return {"emotion": EMOTION[emo], "emotion_code": emo, "speaker": speaker, "text": text,
            "version": version or None}


@ADAPTERS.register("emodb")
def build(input_path, dataset: str = "emodb") -> list[dict]:
    root = require_dir(input_path, "EmoDB folder", "point at EmoDB's wav/ folder or its parent")
    rows = []
    for p in find_media(root, AUDIO_EXTS):
        lab = parse_name(p.stem)
        if lab is None:
            continue
        rows.append(make_row(p.stem, p, dataset, group=lab["speaker"], labels=lab))
    return rows
