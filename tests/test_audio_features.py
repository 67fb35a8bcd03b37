"""logmel / mfcc on real audio: one frame per 10 ms, centred, finite."""
import numpy as np
import pytest

from featurize import audio
from featurize.decode import read_audio
from featurize.registry import get_cached


def _files(shared_data):
    emodb = sorted((shared_data / "emodb" / "wav").glob("*.wav"))[::60]  # 9 of 535, all speakers
    cremad = sorted((shared_data / "cremad_av_samples").rglob("*"))
    picks = [next(p for p in cremad if p.suffix == s) for s in (".wav", ".mp3", ".flv")]
    return emodb + picks + sorted((shared_data / "ravdess_av_clip").glob("*.mp4"))


def test_frames_follow_duration(shared_data):
    logmel, mfcc = get_cached("logmel"), get_cached("mfcc")
    files = _files(shared_data)
    assert {p.suffix for p in files} == {".wav", ".mp3", ".flv", ".mp4"}
    for path in files:
        x = read_audio(path, sr=16000)
        dur = len(x) / 16000
        for ext, dim in ((logmel, 64), (mfcc, 39)):
            out = ext.extract(x, 16000)
            data, t, mask = out["data"], out["t"], out["mask"]
            assert data.dtype == np.float16 and data.shape[1] == dim, path
            assert abs(len(data) - round(dur * 100)) <= 1, (path, len(data), dur)
            assert len(data) == int(np.ceil(len(x) / 160))
            assert t.dtype == np.float64 and t[0] == 0.0 and np.allclose(np.diff(t), 0.01)
            assert mask.dtype == bool and mask.all() and len(mask) == len(data)
            assert np.isfinite(data).all(), path


def test_short_and_silent_inputs():
    logmel, mfcc = get_cached("logmel"), get_cached("mfcc")
    for n in (1, 159, 160, 161, 1600):
        for ext in (logmel, mfcc):
            out = ext.extract(np.zeros(n, np.float32), 16000)
            assert len(out["data"]) == -(-n // 160) and np.isfinite(out["data"]).all()
    silent = logmel.extract(np.zeros(16000, np.float32), 16000)["data"]
    assert np.allclose(silent.astype(np.float32), np.log(1e-10), atol=0.1)  # the floor


def test_wrong_rate_is_refused():
    with pytest.raises(ValueError):
        get_cached("logmel").extract(np.zeros(100, np.float32), 44100)


def test_logmel_matches_a_plain_computation():
    import librosa

    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    ref = librosa.feature.melspectrogram(y=x, sr=16000, n_fft=400, hop_length=160, n_mels=64,
                                         fmax=8000, center=True, pad_mode="constant")
    ref = np.log(np.maximum(ref, 1e-10)).T[:100]
    got = get_cached("logmel").extract(x, 16000)["data"].astype(np.float32)
    assert got.shape == (100, 64) and np.allclose(got, ref, atol=0.02)
    assert audio.n_frames(16000, 160) == 100 and audio.n_frames(16001, 160) == 101


def test_blocked_mel_equals_one_call_frame_for_frame():
    """mel_power in blocks (memory bounded on long audio) gives one call's frames: block edges
    with and without the centre padding, a last block of 1 frame, within float32 rounding."""
    rng = np.random.default_rng(3)
    for n in (160 * 37 * 3 + 1, 160 * 37 * 2 - 5, 399):
        x = (0.1 * rng.standard_normal(n)).astype(np.float32)
        whole = audio.mel_power(x, 16000, 400, 160, 400, 64, 0.0, 8000.0, block=10**9)
        blocked = audio.mel_power(x, 16000, 400, 160, 400, 64, 0.0, 8000.0, block=37)
        assert blocked.shape == whole.shape == (64, audio.n_frames(n, 160))
        np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-9)


def test_shared_spectrum_gives_the_same_features(shared_data):
    """logmel then mfcc with one `shared` dict (as the pipeline calls them per file): the same
    arrays bit for bit as separate calls, on real EmoDB speech, a clip of a single frame and a
    signal longer than a block; one power spectrum kept for a short file, none for a long one."""
    wavs = sorted((shared_data / "emodb" / "wav").glob("*.wav"))[:5]
    if not wavs:
        pytest.skip("EmoDB is absent")
    rng = np.random.default_rng(7)
    signals = [read_audio(p, sr=16000) for p in wavs] + [np.zeros(100, np.float32),
                                                         (0.1 * rng.standard_normal(160 * 50)).astype(np.float32)]
    logmel, mfcc = get_cached("logmel"), get_cached("mfcc")
    for x in signals:
        shared: dict = {}
        for ext in (logmel, mfcc):
            got, ref = ext.extract(x, 16000, shared=shared), ext.extract(x, 16000)
            assert set(got) == set(ref)
            for k in ref:
                np.testing.assert_array_equal(got[k], ref[k])
        assert len(shared) == 1 and next(iter(shared.values())).shape == (audio.n_frames(len(x), 160), 201)
    long_x = signals[-1]
    shared = {}
    blocked = audio.mel_power(long_x, 16000, 400, 160, 400, 40, 0.0, 8000.0, block=37, shared=shared)
    assert shared == {}
    np.testing.assert_array_equal(blocked, audio.mel_power(long_x, 16000, 400, 160, 400, 40, 0.0, 8000.0, block=37))


def _float16_steps(got, ref):
    """|got - ref| in float16 steps at ref, floored at 1e-3 of the column's spread (a value
    next to zero has steps far finer than the feature's own scale)."""
    got, ref = got.astype(np.float32), ref.astype(np.float32)
    step = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float32)
    return np.abs(got - ref) / np.maximum(step, 1e-3 * ref.std(0) + 1e-12)


def _librosa_reference(x):
    """Version 1 of logmel and mfcc: the librosa 0.11 calls that version 2 reimplements."""
    import warnings

    import librosa

    T = audio.n_frames(len(x), 160)
    kw = dict(sr=16000, n_fft=400, hop_length=160, win_length=400, window="hann", center=True,
              pad_mode="constant", power=2.0, fmin=0.0, fmax=8000.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_fft=.*too large")
        mel64 = librosa.feature.melspectrogram(y=x, n_mels=64, **kw)[:, :T]
        mel40 = librosa.feature.melspectrogram(y=x, n_mels=40, **kw)[:, :T]
    m = librosa.feature.mfcc(S=librosa.power_to_db(mel40), n_mfcc=13)
    w = min(9, T if T % 2 else T - 1)
    deltas = [librosa.feature.delta(m, width=w, order=o) for o in (1, 2)] if w >= 3 else [0 * m, 0 * m]
    return (np.log(np.maximum(mel64, 1e-10)).T.astype(np.float16),
            np.concatenate([m] + deltas).T.astype(np.float16))


def test_numpy_features_equal_librosa_on_real_speech(shared_data):
    """logmel/mfcc version 2 (numpy) against version 1's librosa calls on 60 EmoDB utterances
    and on clips shorter than a window and than the delta width: no stored value more than one
    float16 step apart (measured: 51 of 956,864 logmel and 1,372 of 583,089 mfcc values differ,
    each by one step)."""
    wavs = sorted((shared_data / "emodb" / "wav").glob("*.wav"))[:60]
    if not wavs:
        pytest.skip("EmoDB is absent")
    rng = np.random.default_rng(5)
    signals = [read_audio(p, sr=16000) for p in wavs]
    signals += [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (100, 500, 1300, 16001)]
    logmel, mfcc = get_cached("logmel"), get_cached("mfcc")
    differ = 0
    for x in signals:
        ref_l, ref_m = _librosa_reference(x)
        got_l, got_m = logmel.extract(x, 16000)["data"], mfcc.extract(x, 16000)["data"]
        assert got_l.shape == ref_l.shape and got_m.shape == ref_m.shape
        assert _float16_steps(got_l, ref_l).max() <= 1.0 and _float16_steps(got_m, ref_m).max() <= 1.0
        differ += int((got_l != ref_l).sum() + (got_m != ref_m).sum())
    total = sum(audio.n_frames(len(x), 160) for x in signals) * (64 + 39)
    assert differ < 0.005 * total


def test_deltas_equal_savgol_interp():
    """dsp.savgol_delta is scipy's savgol_filter(mode='interp') as librosa.feature.delta calls it."""
    import librosa

    m = np.random.default_rng(2).standard_normal((13, 40)).astype(np.float32)
    for width in (3, 5, 9, 39):
        for order in (1, 2):
            got = audio.delta_features(m, width, order)
            ref = librosa.feature.delta(m, width=width, order=order, axis=-1)
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_audio_features_start_without_librosa():
    """A fresh worker's logmel, mfcc and prosody import neither librosa nor scipy.signal (their
    import was ~2.3 s of every worker's start)."""
    from clirun import fresh_python

    code = ("import sys\n"
            "import numpy as np\n"
            "from featurize.registry import get_cached\n"
            "x = np.random.default_rng(0).standard_normal(16000).astype(np.float32)\n"
            "dims = [get_cached(n).extract(x, 16000)['data'].shape[1] for n in ('logmel', 'mfcc', 'prosody')]\n"
            "print(dims, [m for m in ('librosa', 'scipy.signal', 'numba') if m in sys.modules])\n")
    assert fresh_python(code) == "[64, 39, 26] []"


def test_features_do_not_depend_on_the_callers_blas_threads(shared_data):
    """A Dask worker runs BLAS at one thread, an inline run or a user's call at whatever the
    process has: the stored features must be the same bits either way (they were not: CI
    2026-12-04, 47 of 3,900 mfcc values of a tone 4e-7 apart at 2 OpenBLAS threads)."""
    import os

    from threadpoolctl import threadpool_limits

    t = np.arange(16000 * 3) / 16000
    tone = (np.round(0.3 * np.sin(2 * np.pi * 280 * t) * 32767) / 32768).astype(np.float32)
    speech = read_audio(sorted((shared_data / "emodb" / "wav").glob("*.wav"))[0], sr=16000)
    names = ("logmel", "mfcc", "prosody")
    for x in (tone, speech):
        runs = []
        for n in (1, max(2, os.cpu_count() or 1)):
            with threadpool_limits(n, user_api="blas"):
                runs.append({k: get_cached(k).extract(x, 16000)["data"] for k in names})
        for k in names:
            np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)
