"""`logmel` and `mfcc`: frame-level audio features with librosa at a 10 ms hop.

Framing (both): 16 kHz mono from `decode.read_audio`, 25 ms Hann window (n_fft = win =
400 samples), 10 ms hop (160 samples), centred frames (librosa `center=True`, zero
padding): frame i is centred on sample i*160, so `t[i] = i * 0.01` s is the frame's
centre. Frames whose centre lies inside the signal are kept: T = ceil(S / 160), i.e.
T == duration*100 rounded up (within 1 of round(duration*100)).

- logmel: 64 mel bands (Slaney mel, 0..8 kHz) of the power spectrogram, natural log with
  a floor: log(max(mel, 1e-10)). data float16 [T, 64].
- mfcc: 13 DCT-II coefficients of the log-mel (power_to_db of 40 bands, librosa default
  ortho DCT) + delta + delta-delta (librosa.feature.delta, width 9, shortened for very
  short clips) = data float16 [T, 39].
mask is all True (every frame is valid audio); group attrs: hop 0.01, sr.

Set NUMBA_CACHE_DIR to a writable folder: librosa's first call compiles for ~17 s in a
process otherwise.
"""
from __future__ import annotations

import importlib.util
import sys
import threading
import types
import warnings
from dataclasses import dataclass

import numpy as np

from featurize.registry import Extractor, register


def n_frames(n_samples: int, hop: int) -> int:
    """Frames whose centre lies inside the signal: ceil(S / hop) (at least 1)."""
    return max(1, -(-int(n_samples) // int(hop)))


def _check(samples, sr, cfg_sr):
    x = np.asarray(samples, np.float32).reshape(-1)
    if sr != cfg_sr:
        raise ValueError(f"expected audio at {cfg_sr} Hz, got {sr} Hz (read_audio(path, sr={cfg_sr}))")
    return x


# librosa.core.audio's optional resamplers (lazy_loader.load at its import); neither is installed
_OPTIONAL_RESAMPLERS = ("samplerate", "resampy")


class _Absent(types.ModuleType):
    """An optional module that is not installed: any use raises ModuleNotFoundError, as the
    stand-in lazy_loader would have made does."""

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise ModuleNotFoundError(f"No module named '{self.__name__}'", name=self.__name__)


def import_librosa():
    """librosa with the feature functions logmel and mfcc call already imported.

    Why the stand-ins: librosa.core.audio asks lazy_loader for `samplerate` and `resampy`;
    for a module that is not installed, lazy_loader calls inspect.stack() to word its later
    error, which reads the source of every frame on the (deep, mid-import) stack: 2.0 of the
    3.5 CPU-s of a fresh process's first logmel+mfcc call here (cProfile; load 2). While
    librosa imports, each absent resampler is an `_Absent` module in sys.modules (removed
    after), which lazy_loader returns as it is; librosa never resamples here (decode.read_audio
    does, with PyAV), and if it did it would get the same ModuleNotFoundError."""
    if "librosa.core.audio" not in sys.modules:
        stubs = {}
        for name in _OPTIONAL_RESAMPLERS:
            if name not in sys.modules and importlib.util.find_spec(name) is None:
                stubs[name] = sys.modules[name] = _Absent(name)
        try:
            import librosa

            for f in ("melspectrogram", "mfcc", "delta"):
                getattr(librosa.feature, f)
            librosa.power_to_db
        finally:
            for name, mod in stubs.items():
                if sys.modules.get(name) is mod:
                    del sys.modules[name]
    import librosa

    return librosa


# Frames per STFT block in mel_power (41 s at a 10 ms hop).
BLOCK_FRAMES = 4096


def mel_power(x: np.ndarray, sr: int, n_fft: int, hop: int, win: int, n_mels: int,
              fmin: float, fmax: float | None, block: int | None = None) -> np.ndarray:
    """Mel power spectrogram [n_mels, T] with T = ceil(S/hop), `block` frames at a time.

    Why blocks: librosa's melspectrogram holds the whole STFT (complex64 [n_fft/2+1, T]) and
    its magnitude and power at once: 10 minutes of 16 kHz audio at n_fft 400 = 96 + 48 + 48 MB
    at its peak, the part of a worker's resident set that grew with the video's length (bench
    memory: 10-min vs 1-min 720p 1.251). Each block is the same librosa call on the samples
    its frames cover (the centre padding's zeros included, so `center=False` there), so every
    frame sees the same samples and window as in one call; memory stays at one block's STFT
    whatever the length (10 min: audio path peak 234 -> 140 MB above the models, 1 min 41 ->
    39). Clips up to `block` frames are one call, bit for bit as before; longer ones equal one
    call within float32 rounding (pocketfft and BLAS group columns by the array's width: <= 3e-8
    apart), after float16 storage on a 10-min signal: logmel identical, mfcc 594 of 2.34 M
    values one float16 step apart (tests/test_audio_features.py)."""
    librosa = import_librosa()

    if len(x) == 0:
        x = np.zeros(1, np.float32)
    T = n_frames(len(x), hop)
    block = int(block or BLOCK_FRAMES)
    kw = dict(sr=sr, n_fft=n_fft, hop_length=hop, win_length=win, window="hann", pad_mode="constant",
              power=2.0, n_mels=n_mels, fmin=fmin, fmax=fmax)
    with warnings.catch_warnings():  # clips shorter than one window: librosa warns, pads
        warnings.filterwarnings("ignore", message="n_fft=.*too large")
        if T <= block:
            return librosa.feature.melspectrogram(y=x, center=True, **kw)[:, :T]
        out = np.empty((n_mels, T), np.float32)
        half = n_fft // 2
        for a in range(0, T, block):
            b = min(T, a + block)
            lo, hi = a * hop - half, (b - 1) * hop - half + n_fft   # frame i: x[i*hop - half, +n_fft)
            seg = x[max(lo, 0):min(hi, len(x))]
            if lo < 0 or hi > len(x):
                seg = np.concatenate([np.zeros(max(0, -lo), x.dtype), seg, np.zeros(max(0, hi - len(x)), x.dtype)])
            out[:, a:b] = librosa.feature.melspectrogram(y=seg, center=False, **kw)
        return out


@dataclass(frozen=True)
class LogmelConfig:
    sr: int = 16000
    n_mels: int = 64
    win_ms: float = 25.0
    hop_ms: float = 10.0
    fmin: float = 0.0
    fmax: float = 8000.0
    floor: float = 1e-10

    def __post_init__(self):
        if self.n_mels < 1 or self.hop_ms <= 0 or self.win_ms <= 0 or self.floor <= 0:
            raise ValueError("n_mels, hop_ms, win_ms and floor must be positive")


@dataclass(frozen=True)
class MfccConfig:
    sr: int = 16000
    n_mfcc: int = 13
    n_mels: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    fmin: float = 0.0
    fmax: float = 8000.0
    deltas: bool = True               # + delta + delta-delta (39 dims with n_mfcc=13)
    delta_width: int = 9

    def __post_init__(self):
        if self.n_mfcc < 1 or self.n_mels < self.n_mfcc:
            raise ValueError("need 1 <= n_mfcc <= n_mels")
        if self.delta_width < 3 or self.delta_width % 2 == 0:
            raise ValueError("delta_width must be odd and >= 3")


_WARMING: threading.Thread | None = None


def _warm_in_background() -> None:
    """Import librosa's feature stack and load its numba kernels on a thread, once per process.

    Why: the first logmel/mfcc call in a fresh worker spent 6.2 s (load 5; 13.8 s profiled)
    importing, not computing: librosa.feature.spectral pulls scipy.signal (2.0 s, scipy's
    array-API wrappers parse docstrings at import), librosa.core.pitch and .audio build their
    numba kernels (1.2 + 0.7 s) (python -X importtime). Started when the extractor is built
    (the pipeline builds models before the first task), it runs while the worker takes its
    first task and decodes it; on video the decoder, mediapipe and torch release the GIL, so
    the import overlaps the face work of the first video instead of following it."""
    global _WARMING
    if _WARMING is None:
        _WARMING = threading.Thread(target=_warm_quietly, name="emocache-audio-warm", daemon=True)
        _WARMING.start()


def _warm_quietly() -> None:
    try:
        warm_cache(seconds=0.05)
    except Exception:  # noqa: BLE001  (the first real call raises it where it is reported)
        pass


class _Audio(Extractor):
    input = "audio"
    libraries = ("librosa", "av", "numpy")

    def __init__(self, config=None):
        super().__init__(config)
        _warm_in_background()

    def _mel(self, samples: np.ndarray, sr: int) -> np.ndarray:
        """The checked samples' mel power spectrogram [n_mels, T] (what logmel and mfcc start from)."""
        if _WARMING is not None and _WARMING is not threading.current_thread():
            _WARMING.join()   # one import at a time: the first call waits for the warm-up
        c = self.config
        x = _check(samples, sr, c.sr)
        win = int(round(c.sr * c.win_ms / 1000.0))
        hop = int(round(c.sr * c.hop_ms / 1000.0))
        return mel_power(x, c.sr, win, hop, win, c.n_mels, c.fmin, c.fmax)  # n_fft = window (400 at 16 kHz)

    def _out(self, feats: np.ndarray) -> dict[str, np.ndarray]:
        """feats [T, D] float -> data, mask, t."""
        t = np.arange(len(feats), dtype=np.float64) * (self.config.hop_ms / 1000.0)
        return {"data": feats.astype(np.float16), "mask": np.ones(len(feats), bool), "t": t}

    def finish(self) -> dict:
        return {"hop": self.config.hop_ms / 1000.0, "sr": self.config.sr,
                "t": "frame centre, t[i] = i * hop"}


@register
class Logmel(_Audio):
    name = "logmel"
    version = "1"
    Config = LogmelConfig

    def extract(self, samples: np.ndarray, sr: int) -> dict[str, np.ndarray]:
        m = self._mel(samples, sr)
        return self._out(np.log(np.maximum(m, self.config.floor)).T)


def delta_features(m: np.ndarray, width: int, order: int) -> np.ndarray:
    """librosa deltas of [D, T] along time, the width shortened to fit short clips (zeros
    below 3 frames): mfcc's and prosody's."""
    librosa = import_librosa()

    T = m.shape[1]
    w = min(width, T if T % 2 else T - 1)
    if w < 3:
        return np.zeros_like(m)
    return librosa.feature.delta(m, width=w, order=order, axis=-1)


@register
class Mfcc(_Audio):
    name = "mfcc"
    version = "1"
    Config = MfccConfig

    def extract(self, samples: np.ndarray, sr: int) -> dict[str, np.ndarray]:
        librosa = import_librosa()
        c = self.config
        m = self._mel(samples, sr)
        mf = librosa.feature.mfcc(S=librosa.power_to_db(m), n_mfcc=c.n_mfcc)
        parts = [mf]
        if c.deltas:
            parts += [delta_features(mf, c.delta_width, 1), delta_features(mf, c.delta_width, 2)]
        return self._out(np.concatenate(parts, axis=0).T)


def warm_cache(seconds: float = 1.0) -> float:
    """Run logmel and mfcc once on a short tone so numba compiles librosa's kernels into
    NUMBA_CACHE_DIR now (`make install` calls this), not inside every worker's first video.

    Measured (issue 10): one audio-only video took 90 s with an empty cache and 21 s with a
    warm one on a loaded 2-core machine; the first demo video in each worker took 466 s
    cold. Returns the seconds this took."""
    import time

    t0 = time.monotonic()
    sr = 16000
    x = (0.1 * np.sin(2 * np.pi * 220 * np.arange(int(sr * seconds)) / sr)).astype(np.float32)
    for cls in (Logmel, Mfcc):   # not through __init__: that would start the background warm-up
        ex = cls.__new__(cls)
        Extractor.__init__(ex)
        ex.extract(x, sr)
    return time.monotonic() - t0
