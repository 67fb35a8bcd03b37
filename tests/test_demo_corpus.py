"""The synthetic corpus: real H.264/AAC files, labels that agree with frames and audio,
balanced quadrants, determinism, and a face the real mediapipe detector finds."""
import csv
import json

import numpy as np
import pytest

from featurize.demo import quadrant_of, write_demo_corpus

SECONDS, FPS = 3.0, 25


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    write_demo_corpus(out, n=4, seconds=SECONDS, fps=FPS, seed=3)
    return out


def read_labels(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(r["valence"]), float(r["arousal"])] for r in rows]), rows


def test_files_codecs_and_durations(corpus):
    import av

    meta = json.loads((corpus / "corpus.json").read_text())
    assert meta["generator_version"] and meta["params"]["fps"] == FPS and len(meta["clips"]) == 4
    for clip in meta["clips"]:
        values, rows = read_labels(corpus / clip["labels"])
        assert len(rows) == clip["frames"] == int(SECONDS * FPS)
        assert [int(r["frame"]) for r in rows] == list(range(len(rows)))
        assert float(rows[-1]["t"]) == pytest.approx((len(rows) - 1) / FPS)
        assert np.all(np.abs(values) <= 1.0)
        with av.open(str(corpus / clip["video"])) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
            assert (v.codec_context.width, v.codec_context.height) == (640, 360)
            n_frames = sum(1 for _ in c.decode(v))
        assert n_frames == len(rows)
        from featurize.decode import read_audio
        audio = read_audio(corpus / clip["video"], sr=16000)
        assert abs(len(audio) / 16000 - SECONDS) < 0.1       # AAC priming/padding only


def test_quadrants_balanced_and_means(corpus):
    meta = json.loads((corpus / "corpus.json").read_text())
    assert sorted(c["quadrant"] for c in meta["clips"]) == sorted(["pos_high", "neg_high", "neg_low", "pos_low"])
    for clip in meta["clips"]:
        values, _ = read_labels(corpus / clip["labels"])
        assert quadrant_of(*values.mean(axis=0)) == clip["quadrant"]
        assert values.std(axis=0).min() > 0.005             # trajectories move


def test_loudness_follows_arousal(corpus):
    from featurize.decode import read_audio

    meta = json.loads((corpus / "corpus.json").read_text())
    hi = [c for c in meta["clips"] if c["arousal_mean"] > 0]
    lo = [c for c in meta["clips"] if c["arousal_mean"] < 0]
    rms = lambda c: float(np.sqrt(np.mean(read_audio(corpus / c["video"]) ** 2)))  # noqa: E731
    assert min(map(rms, hi)) > max(map(rms, lo))


def test_deterministic(corpus, tmp_path):
    write_demo_corpus(tmp_path, n=4, seconds=SECONDS, fps=FPS, seed=3)
    for name in ["corpus.json", "labels/demo_02.csv", "videos/demo_02.mp4"]:
        assert (tmp_path / name).read_bytes() == (corpus / name).read_bytes(), name


def _detector():
    """The project's `faces` extractor (mediapipe short-range, its default settings)."""
    from featurize import registry

    faces = registry.get_cached("faces", registry.parse_config("faces"))
    assert faces.config.model_selection == 0
    return lambda rgb: bool(len(faces.detect(rgb)[0]))


def test_mediapipe_finds_the_drawn_face(corpus):
    import av

    found = total = 0
    detect = _detector()
    for video in sorted((corpus / "videos").glob("*.mp4")):
        with av.open(str(video)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i % 3 == 0:
                    total += 1
                    found += detect(frame.to_ndarray(format="rgb24"))
    rate = found / total
    print(f"mediapipe short-range detection on the demo corpus: {found}/{total} = {rate:.3f}")
    assert rate >= 0.95
