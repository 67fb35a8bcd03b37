"""Phone videos stored sideways with a rotation display matrix decode upright, and the faces
found in them match those of the upright copy (90, 180 and 270 degrees)."""
import numpy as np
import pytest

from featurize import decode
from featurize.demo import write_demo_corpus
from featurize.pipeline import run_features
from store.reader import read_video


def _write(path, frames, rotation=None, fps=25):
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": "12", "threads": "1"}
        if rotation is not None:
            vs.set_display_rotation(rotation)  # counter-clockwise degrees, as players apply it
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f.pts = i
            for pkt in vs.encode(f):
                out.mux(pkt)
        for pkt in vs.encode(None):
            out.mux(pkt)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """An upright drawn-face clip, then copies whose pixels are stored turned by -angle and
    whose display matrix turns them back by +angle."""
    root = tmp_path_factory.mktemp("rot")
    write_demo_corpus(root / "demo", n=1, seconds=1.2, seed=3)
    src = next((root / "demo" / "videos").glob("*.mp4"))
    frames = np.concatenate([f for f, _t in decode.iter_frames(src)])
    paths = {0: root / "upright.mp4"}
    _write(paths[0], frames)
    for angle in (90, 180, 270):
        paths[angle] = root / f"rot{angle}.mp4"
        _write(paths[angle], [np.rot90(f, -angle // 90) for f in frames], rotation=angle)
    return paths


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_rotated_video_decodes_upright(clips, angle):
    up = np.concatenate([f for f, _t in decode.iter_frames(clips[0])])
    report = {}
    rot = np.concatenate([f for f, _t in decode.iter_frames(clips[angle], report=report)])
    assert rot.shape == up.shape
    assert report["rotation"] == angle
    # same pixels up to the codec's loss (a frame on its side would differ by ~50 grey levels)
    assert np.abs(rot.astype(np.int16) - up.astype(np.int16)).mean() < 3.0


def test_faces_of_rotated_copies_match_the_upright_one(clips, tmp_path):
    rows = [{"video_id": f"r{a}", "path": str(p)} for a, p in clips.items()]
    s = run_features(rows, tmp_path, ["faces"], scheduler="inline", progress=False)
    assert s.failed_total == 0
    key = s.keys["faces"]
    ref, ref_attrs = read_video(tmp_path, "faces", key, "r0")
    assert ref["mask"].all() and ref_attrs["rotation"] == 0
    for angle in (90, 180, 270):
        got, attrs = read_video(tmp_path, "faces", key, f"r{angle}")
        assert attrs["rotation"] == angle
        np.testing.assert_array_equal(got["mask"], ref["mask"])
        assert np.abs(got["box"] - ref["box"]).max() < 4.0, angle
