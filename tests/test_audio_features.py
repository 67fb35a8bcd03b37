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


def test_absent_resamplers_stay_absent_after_librosa_imports():
    """import_librosa's stand-ins for the uninstalled resamplers are gone from sys.modules
    afterwards, and librosa's handles on them still raise ModuleNotFoundError when used."""
    from clirun import fresh_python

    code = ("import importlib.util, sys\n"
            "from featurize import audio\n"
            "lib = audio.import_librosa()\n"
            "import librosa.core.audio as a\n"
            "for name in audio._OPTIONAL_RESAMPLERS:\n"
            "    if importlib.util.find_spec(name) is not None: continue\n"
            "    assert name not in sys.modules, name\n"
            "    try: getattr(a, name).resample\n"
            "    except ModuleNotFoundError as e: assert e.name == name\n"
            "    else: raise AssertionError(name)\n"
            "print(lib.feature.melspectrogram.__name__)\n")
    assert fresh_python(code) == "melspectrogram"
