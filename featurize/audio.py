"""`logmel` and `mfcc`: frame-level audio features at a 10 ms hop, numpy only (featurize/dsp.py).

Framing (both): 16 kHz mono from `decode.read_audio`, 25 ms Hann window (n_fft = win =
400 samples), 10 ms hop (160 samples), centred frames (zero padding, librosa's
`center=True`): frame i is centred on sample i*160, so `t[i] = i * 0.01` s is the frame's
centre. Frames whose centre lies inside the signal are kept: T = ceil(S / 160), i.e.
T == duration*100 rounded up (within 1 of round(duration*100)).

- logmel: 64 mel bands (Slaney mel, 0..8 kHz) of the power spectrogram, natural log with
  a floor: log(max(mel, 1e-10)). data float16 [T, 64].
- mfcc: 13 orthonormal DCT-II coefficients of power_to_db of 40 bands (top_db 80) + delta +
  delta-delta (Savitzky-Golay, width 9, shortened for very short clips) = data float16 [T, 39].
mask is all True (every frame is valid audio); group attrs: hop, sr.

Version 2 (2026-12-03): the same definitions as version 1's librosa 0.11 calls, computed with
numpy: after float16 storage on EmoDB speech logmel and mfcc equal librosa's but for a few
values one float16 step apart (tests/test_audio_features.py). The key changed because
librosa no longer computes it (its version was part of version 1's key).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurize import dsp
from featurize.registry import Extractor, register


def n_frames(n_samples: int, hop: int) -> int:
    """Frames whose centre lies inside the signal: ceil(S / hop) (at least 1)."""
    return max(1, -(-int(n_samples) // int(hop)))


def _check(samples, sr, cfg_sr):
    x = np.asarray(samples, np.float32).reshape(-1)
    if sr != cfg_sr:
        raise ValueError(f"expected audio at {cfg_sr} Hz, got {sr} Hz (read_audio(path, sr={cfg_sr}))")
    return x


# Frames per STFT block in mel_power (41 s at a 10 ms hop).
BLOCK_FRAMES = 4096


def mel_power(x: np.ndarray, sr: int, n_fft: int, hop: int, win: int, n_mels: int,
              fmin: float, fmax: float | None, block: int | None = None,
              shared: dict | None = None) -> np.ndarray:
    """Mel power spectrogram [n_mels, T] float32 with T = ceil(S/hop), `block` frames at a time.

    Frame i covers x[i*hop - n_fft/2, +n_fft) with zeros outside the signal (librosa's
    `center=True, pad_mode="constant"`), a periodic Hann window of `win` samples centred in
    n_fft. Why blocks: one STFT of the whole signal (complex [n_fft/2+1, T] plus its power)
    grew a worker's resident set with the video's length (10 minutes of 16 kHz audio at n_fft
    400: 96 + 48 + 48 MB in librosa; bench memory 10-min vs 1-min 720p 1.251); a block's
    frames see the same samples as in one pass, so memory stays at one block's STFT (10-min
    vs 1-min 1.065, 2026-12-02-2e290c3) and the frames do not depend on the block size
    (within float32 rounding of the mel product: tests/test_audio_features.py).

    `shared`: a dict kept for one file's samples by the caller (the pipeline's _run_audio).
    When the signal fits one block, its power spectrum is kept there under the framing
    (n_fft, hop, win), so the next mel of the same samples and framing (logmel's 64 bands,
    then mfcc's 40) reuses it: the same numbers bit for bit, one FFT per file instead of one
    per extractor. Only one block is ever kept (<= 3.3 MB at n_fft 400), so memory stays
    bounded on long audio, which gets no sharing (there the FFT is ~1 % of a video's work).
    Why: the FFT framing was 20 % of the pipeline's time on 500 three-second EmoDB clips
    (py-spy, logmel + mfcc inline, load 0.2)."""
    x = np.asarray(x, np.float32).reshape(-1)
    if len(x) == 0:
        x = np.zeros(1, np.float32)
    T = n_frames(len(x), hop)
    block = int(block or BLOCK_FRAMES)
    fb = dsp.mel_filterbank(sr, n_fft, n_mels, float(fmin), None if fmax is None else float(fmax))
    if shared is not None and T <= block:
        key = ("power", len(x), n_fft, hop, win)
        power = shared.get(key)
        if power is None:
            power = shared[key] = _power_block(x, 0, T, n_fft, hop, win)
        return fb @ power.T
    out = np.empty((n_mels, T), np.float32)
    for a in range(0, T, block):
        b = min(T, a + block)
        out[:, a:b] = fb @ _power_block(x, a, b, n_fft, hop, win).T
    return out


def _power_block(x: np.ndarray, a: int, b: int, n_fft: int, hop: int, win: int) -> np.ndarray:
    """Power spectra [b - a, n_fft/2 + 1] of frames a..b-1 (centred, zeros outside x)."""
    window = np.zeros(n_fft)
    window[(n_fft - win) // 2:(n_fft - win) // 2 + win] = dsp.hann(win)
    half = n_fft // 2
    lo, hi = a * hop - half, (b - 1) * hop - half + n_fft   # frame i: x[i*hop - half, +n_fft)
    seg = x[max(lo, 0):min(hi, len(x))]
    if lo < 0 or hi > len(x):
        seg = np.concatenate([np.zeros(max(0, -lo), x.dtype), seg, np.zeros(max(0, hi - len(x)), x.dtype)])
    return dsp.framed_power(seg, b - a, hop, window)


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


class _Audio(Extractor):
    input = "audio"
    libraries = ("av", "numpy")

    shares = True                     # extract takes `shared` (see mel_power)

    def _mel(self, samples: np.ndarray, sr: int, shared: dict | None = None) -> np.ndarray:
        """The checked samples' mel power spectrogram [n_mels, T] (what logmel and mfcc start from)."""
        c = self.config
        x = _check(samples, sr, c.sr)
        win = int(round(c.sr * c.win_ms / 1000.0))
        hop = int(round(c.sr * c.hop_ms / 1000.0))
        return mel_power(x, c.sr, win, hop, win, c.n_mels, c.fmin, c.fmax, shared=shared)  # n_fft = window (400 at 16 kHz)

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
    version = "2"
    Config = LogmelConfig

    def extract(self, samples: np.ndarray, sr: int, shared: dict | None = None) -> dict[str, np.ndarray]:
        with dsp.one_blas_thread():
            m = self._mel(samples, sr, shared)
        return self._out(np.log(np.maximum(m, self.config.floor)).T)


def delta_features(m: np.ndarray, width: int, order: int) -> np.ndarray:
    """Deltas of [D, T] along time, the width shortened to fit short clips (zeros below 3
    frames): mfcc's and prosody's."""
    T = m.shape[1]
    w = min(width, T if T % 2 else T - 1)
    if w < 3:
        return np.zeros_like(m)
    return dsp.savgol_delta(m, w, order)


@register
class Mfcc(_Audio):
    name = "mfcc"
    version = "2"
    Config = MfccConfig

    def extract(self, samples: np.ndarray, sr: int, shared: dict | None = None) -> dict[str, np.ndarray]:
        c = self.config
        with dsp.one_blas_thread():
            m = self._mel(samples, sr, shared)
            mf = (dsp.dct_matrix(c.n_mfcc, c.n_mels) @ dsp.power_to_db(m)).astype(np.float32)
            parts = [mf]
            if c.deltas:
                parts += [delta_features(mf, c.delta_width, 1), delta_features(mf, c.delta_width, 2)]
        return self._out(np.concatenate(parts, axis=0).T)
