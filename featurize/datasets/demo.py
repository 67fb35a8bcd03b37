"""The synthetic demo corpus written by `featurize.demo.write_demo_corpus`.

Per-frame labels (valence, arousal) are referenced as CSV; per-clip labels carry the clip
means and their quadrant (the 4-class target).
"""
from __future__ import annotations

from pathlib import Path

from store.errors import InputError

from .common import ADAPTERS, make_row


@ADAPTERS.register("demo")
def build(input_path, dataset: str = "demo") -> list[dict]:
    from . import read_clip_meta

    root = Path(input_path)
    meta_path = root / "corpus.json"
    if not meta_path.is_file():
        raise InputError(meta_path, "missing_file", "no corpus.json: not a demo corpus folder",
                         "write one with `emocache demo-data --out DIR`")
    meta = read_clip_meta(meta_path)
    rows = []
    for c in meta.get("clips", []):
        labels = {"quadrant": c["quadrant"], "valence_mean": c["valence_mean"],
                  "arousal_mean": c["arousal_mean"]}
        rows.append(make_row(c["id"], root / c["video"], dataset, split=c.get("split"), group=c["id"],
                             labels=labels,
                             frame_labels={"path": str((root / c["labels"]).absolute()), "format": "csv",
                                           "columns": ["valence", "arousal"]}))
    return rows
