"""CREMA-D: `AAAA_SSS_EEE_LL` names (actor, sentence, emotion, level); group = actor.

The corpus ships each clip as flv video, wav and mp3: one row per clip, the video preferred
(`prefer` reorders, e.g. (".wav",) for audio-only work).
"""
from __future__ import annotations

import re

from .common import ADAPTERS, AUDIO_EXTS, VIDEO_EXTS, find_media, make_row, one_per_stem, require_dir

NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
EMOTION = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
LEVEL = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}


def parse_name(stem: str) -> dict | None:
    m = NAME.match(stem)
    if not m or m.group(3) not in EMOTION:
        return None
    actor, sentence, emo, level = m.groups()
    return {"emotion": EMOTION[emo], "emotion_code": emo, "level": LEVEL.get(level, level),
            "sentence": sentence, "actor": actor}


@ADAPTERS.register("cremad")
def build(input_path, prefer=VIDEO_EXTS + AUDIO_EXTS, dataset: str = "cremad") -> list[dict]:
    root = require_dir(input_path, "CREMA-D folder", "point at VideoFlash/, AudioWAV/ or their parent")
    rows = []
    for stem, p in one_per_stem(find_media(root), prefer).items():
        lab = parse_name(stem)
        if lab is None:
            continue
        rows.append(make_row(stem, p, dataset, group=lab["actor"], labels=lab))
    return rows
