"""`opensmile`: openSMILE low-level descriptors per 10 ms frame (eGeMAPS or ComParE 2016).

Optional (``pip install emocache[opensmile]``) and never a default: openSMILE's licence is
research-only. The package imports only when an extractor runs, so the registry (and every
study that does not name it) works without it.

- ``feature_set: compare``: the 65 ComParE 2016 LLDs (energy, spectral, MFCC 1-14, voicing,
  F0, jitter/shimmer, HNR) + their 65 deltas (``deltas: true``) = 130 dims per frame.
- ``feature_set: egemaps``: the 25 eGeMAPSv02 LLDs (no deltas exist for that set).

Framing: openSMILE's own 10 ms hop; each frame's time ``t`` is the centre of its analysis
window ((start + end) / 2 from openSMILE's index), so the trainer aligns it to log-mel's
grid by time like any other feature. openSMILE emits no frame for a signal shorter than its
longest window (60 ms) (it fills NaN): such frames are zeros with mask False.
data float32 [T, D] (not float16: ComParE's spectral variance reaches ~1e5 on EmoDB, past
float16's 65504); mask True where openSMILE gave a frame; attrs hop 0.01 and the names.

Why per-frame LLDs and not the functionals: a head fuses them with log-mel on one time grid
(the functionals of the same sets are the classical baselines in experiments/baselines.py).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from featurize.registry import Extractor, register

SETS = ("compare", "egemaps")


@dataclass(frozen=True)
class OpensmileConfig:
    feature_set: str = "compare"      # compare (ComParE_2016) | egemaps (eGeMAPSv02)
    deltas: bool = True               # compare only: + the 65 delta LLDs
    sr: int = 16000

    def __post_init__(self):
        if self.feature_set not in SETS:
            raise ValueError(f"feature_set must be one of {SETS}, not {self.feature_set!r}")
        if self.deltas and self.feature_set != "compare":
            raise ValueError("deltas exist for feature_set compare only (set deltas: false)")


@register
class Opensmile(Extractor):
    name = "opensmile"
    version = "1"
    Config = OpensmileConfig
    input = "audio"
    libraries = ("opensmile", "numpy")

    def _smiles(self):
        if getattr(self, "_smile_cache", None) is None:
            import opensmile

            c = self.config
            fs = opensmile.FeatureSet.ComParE_2016 if c.feature_set == "compare" else opensmile.FeatureSet.eGeMAPSv02
            levels = [opensmile.FeatureLevel.LowLevelDescriptors]
            if c.deltas:
                levels.append(opensmile.FeatureLevel.LowLevelDescriptors_Deltas)
            self._smile_cache = [opensmile.Smile(feature_set=fs, feature_level=lv) for lv in levels]
        return self._smile_cache

    def extract(self, samples: np.ndarray, sr: int) -> dict[str, np.ndarray]:
        x = np.asarray(samples, np.float32).reshape(-1)
        if sr != self.config.sr:
            raise ValueError(f"expected audio at {self.config.sr} Hz, got {sr} Hz")
        frames, names, t = [], [], None
        for smile in self._smiles():
            with warnings.catch_warnings():   # "Segment too short": NaN rows, masked below
                warnings.simplefilter("ignore", UserWarning)
                df = smile.process_signal(x, sr)
            starts = df.index.get_level_values("start").total_seconds().to_numpy()
            ends = df.index.get_level_values("end").total_seconds().to_numpy()
            centre = (starts + ends) / 2.0
            if t is None:
                t = centre
            n = min(len(t), len(centre))          # LLDs and deltas come from one framing
            t = t[:n]
            frames = [f[:n] for f in frames] + [df.to_numpy(np.float64)[:n]]
            names += list(df.columns)
        data = np.concatenate(frames, axis=1)
        self._names = names
        if len(data) == 0:
            return {"data": np.zeros((1, len(names)), np.float32), "mask": np.zeros(1, bool),
                    "t": np.zeros(1, np.float64)}
        ok = np.isfinite(data).all(1)
        return {"data": np.where(np.isfinite(data), data, 0.0).astype(np.float32), "mask": ok,
                "t": t.astype(np.float64)}

    def finish(self) -> dict:
        return {"hop": 0.01, "sr": self.config.sr, "t": "centre of openSMILE's analysis window",
                "names": list(getattr(self, "_names", []))}
