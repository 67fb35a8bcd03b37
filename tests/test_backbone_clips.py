"""The clip backbone: a torchvision video model (r3d_18, swin3d_t; random-init state dicts
written by the test) on segments of frames, one cached row per segment with its own t."""
import numpy as np
import pytest

from featurize import datasets, registry
from featurize.demo import write_demo_corpus
from featurize.pipeline import run_features, write_manifest
from store.errors import InputError
from store.reader import read_video


def _torchvision():
    from featurize.backbone import import_torchvision   # works beside the CPU torch (see there)

    try:
        return import_torchvision()
    except InputError:
        pytest.skip("torchvision not installed")


def _weights(tmp_path, arch):
    import torch

    tv = _torchvision()
    torch.manual_seed(0)
    path = tmp_path / f"{arch}.pt"
    torch.save(tv.models.get_model(arch, weights=None).state_dict(), str(path))
    return str(path)


@pytest.fixture(scope="module")
def r3d(tmp_path_factory):
    return _weights(tmp_path_factory.mktemp("r3d"), "r3d_18")


def _frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, 40, 48, 3), dtype=np.uint8)


class _Info:
    fps = 10.0


def test_segments_do_not_depend_on_how_frames_arrive(r3d):
    """Chunks of 3 frames or all 10 at once: the same segments, starts 0, 2, 4, 6, 8 (hop 2),
    the last padded with its last frame; t = centres on the nominal grid."""
    cfg = registry.parse_config("backbone", {"weights": r3d, "arch": "torchvision:r3d_18", "source": "frames",
                                             "clip": 4, "clip_hop": 2, "size": 32, "device": "cpu"})
    ext = registry.get_cached("backbone", cfg)
    frames, t = _frames(10), np.arange(10) / 10.0
    ext.start(_Info())
    parts = [ext.process(frames[i:i + 3], {"t": t[i:i + 3]}) for i in range(0, 10, 3)]
    parts.append(ext.flush())
    parts = [p for p in parts if p]
    data = np.concatenate([p["data"] for p in parts])
    ts = np.concatenate([p["t"] for p in parts])
    ext.start(_Info())
    one = ext.process(frames, {"t": t})
    tail = ext.flush()
    assert data.shape == (5, 512) and data.dtype == np.float16   # fc stripped: the 512-d embedding
    # equal up to float16 rounding of batch-size-dependent float32 sums
    np.testing.assert_allclose(np.concatenate([one["data"], tail["data"]]).astype(np.float32), data, atol=1e-3)
    np.testing.assert_allclose(ts, np.array([0, 2, 4, 6, 8]) / 10.0 + 0.15)
    # segment 1 = frames 2..5; the padded last = frames 8, 9, 9, 9
    direct = ext.embed_clips(np.stack([frames[2:6], frames[[8, 9, 9, 9]]]))
    np.testing.assert_allclose(data[[1, 4]].astype(np.float32), direct, rtol=1e-2, atol=1e-2)
    assert ext.finish()["hop"] == pytest.approx(0.2)


def test_clip_backbone_through_the_pipeline_and_the_trainer_resolves_its_key(r3d, tmp_path):
    from experiments import config as C, data as D

    write_demo_corpus(tmp_path / "corpus", n=1, seconds=1.0, fps=10, size=(160, 120), seed=5)
    rows = datasets.build("demo", tmp_path / "corpus")
    store = tmp_path / "store"
    write_manifest(rows, store, "demo")
    params = {"weights": r3d, "arch": "torchvision:r3d_18", "on": "frames", "clip": 4, "size": 32,
              "device": "cpu"}
    s = run_features(rows, store, ["backbone"], overrides={"backbone": params}, scheduler="inline",
                     progress=False)
    assert s.failed_total == 0, s
    arrays, attrs = read_video(store, "backbone", s.keys["backbone"], rows[0]["video_id"])
    assert arrays["data"].shape == (3, 512) and arrays["mask"].all()         # ceil(10 / 4) segments
    np.testing.assert_allclose(arrays["t"], [0.15, 0.55, 0.95])
    assert attrs["hop"] == pytest.approx(0.4) and attrs["clip"] == 4
    cfg = C.from_dict({"name": "k", "dataset": "demo", "task": "frames",
                       "features": {"visual": [{"extractor": "backbone", "params": params}]}})
    (rf,) = D.resolve_features(cfg, store)
    assert rf.key == s.keys["backbone"]
    # an image model's key differs from the clip model's (clip is a param)
    assert registry.resolve_key("backbone", {**params, "clip": 0, "arch": "torchvision:r3d_18"})[0] != rf.key


def test_swin3d_t_gives_one_768d_row_per_segment(tmp_path):
    path = _weights(tmp_path, "swin3d_t")
    cfg = registry.parse_config("backbone", {"weights": path, "arch": "torchvision:swin3d_t", "source": "frames",
                                             "clip": 4, "size": 32, "device": "cpu"})
    ext = registry.get("backbone")(cfg)
    ext.start(_Info())
    out = ext.process(_frames(6, seed=1), {"t": np.arange(6) / 10.0})
    tail = ext.flush()
    assert out["data"].shape == (1, 768) and tail["data"].shape == (1, 768)
    assert np.isfinite(out["data"]).all() and out["data"].any()
