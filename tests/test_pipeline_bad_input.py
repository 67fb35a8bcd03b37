"""Bad inputs in one batch: each ends as a named reason in errors.jsonl (or a sanitized id),
and the good videos still finish."""
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from featurize import datasets
from featurize.demo import draw_face, write_demo_corpus
from featurize.pipeline import run_features
from store.reader import error_rows, manifest_rows, read_video

EXTRACTORS = ["faces", "logmel"]


def silent_video(path: Path, n=20, size=(320, 180), fps=25):
    """H.264 only, no audio stream."""
    import av

    bg = np.full((size[1], size[0], 3), 200, np.uint8)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(n):
            img = draw_face(bg.copy(), 0.5, 0.0, size[0] / 2, size[1] / 2, 1.0)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)


def tone_wav(path: Path, seconds=1.0, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    x = (0.2 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(x.tobytes())


def faststart_copy(src: Path, dst: Path):
    """Remux with the moov atom first, so a cut file still opens and decoding stops midway."""
    import av

    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "faststart"}) as o:
        m = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for pkt in i.demux():
            if pkt.dts is None:
                continue
            pkt.stream = m[pkt.stream.index]
            o.mux(pkt)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    write_demo_corpus(d / "demo", n=2, seconds=1.2, seed=5)
    good = datasets.build("demo", d / "demo")
    media = d / "media"
    media.mkdir()
    (media / "zero.mp4").write_bytes(b"")
    data = Path(good[0]["path"]).read_bytes()
    (media / "half.mp4").write_bytes(data[: len(data) // 2])                 # moov lost
    faststart_copy(Path(good[0]["path"]), media / "fs.mp4")
    fs = (media / "fs.mp4").read_bytes()
    (media / "cut.mp4").write_bytes(fs[: int(len(fs) * 0.6)])                # opens, stops midway
    (media / "text.mp4").write_text("this is not a video\n" * 20)
    silent_video(media / "silent.mp4")
    tone_wav(media / "voice.wav")

    def row(vid, path):
        return {"video_id": vid, "path": str(path), "dataset": "bad", "labels": {}}

    rows = good + [row("zero", media / "zero.mp4"), row("half", media / "half.mp4"),
                   row("cut", media / "cut.mp4"), row("text", media / "text.mp4"),
                   row("silent", media / "silent.mp4"), row("voice", media / "voice.wav"),
                   row("missing", media / "nope.mp4"),
                   row(good[1]["video_id"], media / "silent.mp4"),              # duplicate id
                   row("../escape", good[1]["path"])]
    store = d / "store"
    summary = run_features(rows, store, EXTRACTORS, scheduler="inline", progress=False)
    return store, summary, good


def last_error(store, summary, extractor):
    return {r["video_id"]: r for r in error_rows(store, extractor, summary.keys[extractor])}


def test_good_videos_finish(batch):
    store, s, good = batch
    for ext in EXTRACTORS:
        done = {m["video_id"] for m in manifest_rows(store, ext, s.keys[ext])}
        assert {g["video_id"] for g in good} <= done


def test_each_bad_input_is_named(batch):
    store, s, good = batch
    faces = last_error(store, s, "faces")
    logmel = last_error(store, s, "logmel")
    for vid, reason in [("zero", "empty_file"), ("half", "truncated"), ("cut", "truncated"),
                        ("text", "not_media"), ("missing", "missing_file")]:
        assert faces[vid]["reason"] == reason, (vid, faces[vid])
        assert logmel[vid]["reason"] == reason, (vid, logmel[vid])
        assert faces[vid]["message"] and not faces[vid]["not_applicable"]
    dup = good[1]["video_id"]
    assert faces[dup]["reason"] == "duplicate_id" and "silent.mp4" in faces[dup]["message"]
    # the first row with that id still finished: done wins over the duplicate's error line
    assert dup in {m["video_id"] for m in manifest_rows(store, "faces", s.keys["faces"])}


def test_missing_streams_are_not_applicable(batch):
    store, s, _ = batch
    faces = last_error(store, s, "faces")
    logmel = last_error(store, s, "logmel")
    assert faces["voice"]["reason"] == "no_video_stream" and faces["voice"]["not_applicable"]
    assert logmel["silent"]["reason"] == "no_audio_stream" and logmel["silent"]["not_applicable"]
    # and the other modality ran
    mel, attrs = read_video(store, "logmel", s.keys["logmel"], "voice")
    assert mel["data"].shape[0] == pytest.approx(100, abs=2) and attrs["hop"] == pytest.approx(0.01)
    face, _ = read_video(store, "faces", s.keys["faces"], "silent")
    assert face["data"].shape[0] == 20 and face["mask"].any()


def test_bad_id_is_sanitized_inside_the_key(batch):
    store, s, _ = batch
    for ext in EXTRACTORS:
        kdir = store / "features" / ext / s.keys[ext]
        lines = [m for m in manifest_rows(store, ext, s.keys[ext]) if m["original_id"] == "../escape"]
        assert len(lines) == 1
        vid = lines[0]["video_id"]
        assert "/" not in vid and ".." not in vid and (kdir / vid).is_dir()
    assert not (store / "features" / "escape").exists() and not (store / "escape").exists()


def test_summary_counts_and_rerun(batch):
    store, s, _ = batch
    assert s.failed == {"empty_file": 2, "truncated": 4, "not_media": 2, "missing_file": 2, "duplicate_id": 2}
    assert s.not_applicable == 2 and s.exit_code == 1
    assert s.done == 2 * 5 - 2                       # 2 good + silent + voice + escape, minus the n/a pair
    text = str(s)
    assert "failed 12 in 6 video(s)" in text and "FAILED" in text and len(s.failed_ids) == 6
    again = run_features([{"video_id": "voice", "path": "unused"}], store, EXTRACTORS,
                         scheduler="inline", progress=False)
    assert (again.done, again.skipped, again.failed_total) == (0, 2, 0)   # done + not applicable: skipped
    json.dumps(s.failures)
