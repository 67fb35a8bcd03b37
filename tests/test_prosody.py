"""prosody: pitch that follows real voices, voicing that tells a tone from noise, and the
same framing as logmel/mfcc."""
import numpy as np
import pytest

from featurize.decode import read_audio
from featurize.prosody import NAMES, ProsodyConfig, prosody_llds
from featurize.registry import get_cached

SR = 16000
CFG = ProsodyConfig()


def _tone(f0, seconds=1.5, amps=(1, 0.5, 0.33, 0.25, 0.2, 0.16)):
    t = np.arange(int(SR * seconds)) / SR
    return (0.1 * sum(a * np.sin(2 * np.pi * f0 * (k + 1) * t) for k, a in enumerate(amps))).astype(np.float32)


@pytest.mark.parametrize("f0", [70, 110, 180, 260, 420])
def test_pitch_of_harmonic_tones(f0):
    llds = prosody_llds(_tone(f0), CFG)
    assert abs(np.exp(np.median(llds[:, 0])) / f0 - 1) < 0.01
    assert np.median(llds[:, 1]) > 0.9                                    # periodic


def test_a_weak_fundamental_is_not_taken_an_octave_up_or_down():
    llds = prosody_llds(_tone(120, amps=(0.3, 1, 0.8, 0.5, 0.3)), CFG)
    assert abs(np.exp(np.median(llds[:, 0])) / 120 - 1) < 0.02


def test_noise_and_silence_are_unvoiced():
    noise = np.random.default_rng(0).normal(0, 0.1, SR * 2).astype(np.float32)
    assert (prosody_llds(noise, CFG)[:, 1] >= CFG.voiced_threshold).mean() < 0.02
    silent = prosody_llds(np.zeros(SR, np.float32), CFG)
    assert np.isfinite(silent).all() and (silent[:, 1] == 0).all()
    for n in (0, 1, 159, 160, 161, 1600):                 # framing as logmel: ceil(S / 160)
        out = get_cached("prosody").extract(np.zeros(n, np.float32), SR)
        assert len(out["data"]) == max(1, -(-n // 160)) and np.isfinite(out["data"]).all()


def test_real_voices_emodb(shared_data):
    """EmoDB speaker 03 is a man, 08 a woman; the same sentence said in anger is higher than
    said neutrally (raised pitch is the best-known acoustic mark of anger)."""
    wav = shared_data / "emodb" / "wav"
    ex = get_cached("prosody")
    med = {}
    for name in ("03a01Wa", "03a01Nc", "08a01Wa", "08a01Na"):
        path = next(wav.glob(name[:6] + name[6] + "*.wav"))
        x = read_audio(path, sr=SR)
        out = ex.extract(x, SR)
        data = out["data"]
        assert data.shape == (int(np.ceil(len(x) / 160)), 2 * len(NAMES)) and data.dtype == np.float32
        assert np.isfinite(data).all() and out["mask"].all() and np.allclose(np.diff(out["t"]), 0.01)
        voiced = data[:, 1] >= CFG.voiced_threshold
        assert voiced.mean() > 0.4, name                  # read speech: mostly voiced
        med[name] = float(np.exp(np.median(data[voiced, 0])))
    assert 80 < med["03a01Nc"] < 180 and 150 < med["08a01Na"] < 300, med
    assert med["03a01Wa"] > 1.2 * med["03a01Nc"] and med["08a01Wa"] > 1.2 * med["08a01Na"], med
    assert ex.finish()["names"][:len(NAMES)] == list(NAMES)


def test_blocks_equal_one_call():
    rng = np.random.default_rng(1)
    x = np.concatenate([_tone(150, 3.0), rng.normal(0, 0.05, SR * 2).astype(np.float32), _tone(230, 2.0)])
    assert np.array_equal(prosody_llds(x, CFG, block=97), prosody_llds(x, CFG))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="44100"):
        get_cached("prosody").extract(np.zeros(100, np.float32), 44100)
    with pytest.raises(ValueError, match="f0_min"):
        ProsodyConfig(f0_min=300, f0_max=200)
    with pytest.raises(ValueError, match="two periods"):
        ProsodyConfig(pitch_window_ms=20.0)
