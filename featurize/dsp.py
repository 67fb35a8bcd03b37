"""Numpy signal blocks of the audio extractors: framed power spectra, a Slaney mel filterbank,
an orthonormal DCT-II and Savitzky-Golay deltas.

Why not librosa: importing its feature stack cost every fresh worker ~2.3 s (scipy.signal
1.2 s, numba kernels of librosa.core.pitch/.audio 0.8 s; python -X importtime, load 0.5),
more than 500 three-second clips' worth of fixed cost per run, and its first call needed a
warm NUMBA_CACHE_DIR. These are the same definitions (librosa 0.11's melspectrogram with
`center=True, pad_mode="constant"`, filters.mel with Slaney scale and norm, power_to_db,
scipy's dct type 2 ortho, savgol_filter(mode="interp") as librosa.feature.delta calls it);
tests/test_audio_features.py holds them to librosa on real EmoDB speech.
"""
from __future__ import annotations

from functools import lru_cache
from math import factorial

import numpy as np


def framed_power(x: np.ndarray, n_frames: int, hop: int, window: np.ndarray) -> np.ndarray:
    """Power spectra [n_frames, len(window)//2 + 1] float32 of the frames x[i*hop : i*hop +
    len(window)] times `window`; x must hold every frame (callers pad). The FFT runs in
    float64 and is rounded to complex64, as librosa's stft does with a float64 window."""
    fr = np.lib.stride_tricks.sliding_window_view(x, len(window))[::hop][:n_frames]
    spec = np.fft.rfft(fr * window, axis=-1).astype(np.complex64)
    return (spec.real ** 2 + spec.imag ** 2).astype(np.float32, copy=False)


@lru_cache(maxsize=8)
def hann(n: int) -> np.ndarray:
    """Periodic Hann window (scipy.signal.get_window('hann', n, fftbins=True))."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def _hz_to_mel(f):
    f = np.asarray(f, np.float64)
    lin = f / (200.0 / 3)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-300) / 1000.0) / (np.log(6.4) / 27.0), lin)


def _mel_to_hz(m):
    m = np.asarray(m, np.float64)
    lin = m * (200.0 / 3)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), lin)


@lru_cache(maxsize=16)
def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """[n_mels, n_fft//2 + 1] float32 triangles on the Slaney mel scale, area-normalised
    (librosa.filters.mel defaults). Read-only: it is shared between calls."""
    fmax = sr / 2.0 if fmax is None else float(fmax)
    fft_f = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_f[None, :]
    w = np.zeros((n_mels, len(fft_f)), np.float32)
    for i in range(n_mels):
        w[i] = np.maximum(0.0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    w *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    w.setflags(write=False)
    return w


def power_to_db(S: np.ndarray, amin: float = 1e-10, top_db: float | None = 80.0) -> np.ndarray:
    """10 log10(max(S, amin)) floored at top_db below its maximum (reference power 1)."""
    db = 10.0 * np.log10(np.maximum(amin, S))
    if top_db is not None:
        db = np.maximum(db, db.max() - top_db)
    return db


@lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread():
    """A context in which BLAS runs one thread: its products then sum in one order whatever
    threads the process gave BLAS, so an audio feature is the same bits inline, in a Dask
    worker (one thread, pipeline.WORKER_ENV) and in a user's own call. Why: at 2 OpenBLAS
    threads 47 of 3,900 mfcc values of a tone were 4e-7 from the 1-thread ones (CI 2026-12-04;
    float16 storage keeps such a difference where it crosses a rounding edge). ~0.02 ms a use
    (the library scan is done once)."""
    return _blas_controller().limit(limits=1, user_api="blas")


@lru_cache(maxsize=8)
def dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    """[n_out, n_in] float64 orthonormal DCT-II rows: dct_matrix(k, n) @ x == dct(x, 2, 'ortho')[:k]."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    d = np.sqrt(2.0 / n_in) * np.cos(np.pi * k * (2 * n + 1) / (2.0 * n_in))
    d[0] /= np.sqrt(2.0)
    d.setflags(write=False)
    return d


@lru_cache(maxsize=16)
def _savgol_weights(width: int, order: int) -> np.ndarray:
    """[width] weights of the `order`-th derivative of a degree-`order` least-squares fit:
    that derivative is order! times the fit's top coefficient, so one row serves every frame
    (and the edge fits give the first and last centred window's value)."""
    vander = np.vander(np.arange(width, dtype=np.float64), order + 1, increasing=True)
    w = factorial(order) * np.linalg.pinv(vander)[order]
    w.setflags(write=False)
    return w


def savgol_delta(m: np.ndarray, width: int, order: int) -> np.ndarray:
    """Delta features of [D, T] along time (savgol_filter(m, width, polyorder=order,
    deriv=order, mode='interp'), as librosa.feature.delta calls it)."""
    m = np.asarray(m)
    T = m.shape[1]
    if width > T or width < 3 or width % 2 == 0:
        raise ValueError(f"delta width {width} must be odd, >= 3 and <= the {T} frames")
    half = width // 2
    win = np.lib.stride_tricks.sliding_window_view(m.astype(np.float64, copy=False), width, axis=1)
    inner = win @ _savgol_weights(width, order)                                # frames half .. T-half-1
    out = np.concatenate([np.repeat(inner[:, :1], half, 1), inner, np.repeat(inner[:, -1:], half, 1)], 1)
    return out.astype(m.dtype if m.dtype in (np.float32, np.float64) else np.float64)
