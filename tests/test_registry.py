"""The extractor registry and keys; the backbone extractor with tiny models saved by the test."""
import dataclasses

import numpy as np
import pytest

import featurize
from featurize import registry
from featurize.backbone import BackboneConfig, tiny_cnn
from store.errors import InputError
from store.keys import key_from_provenance


def test_all_extractors_register_without_heavy_imports():
    import subprocess
    import sys

    code = ("import sys, featurize; print(featurize.names()); "
            "print(sorted(m for m in ('torch','mediapipe','librosa','cv2','av','opensmile') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["['backbone', 'faces', 'fer', 'logmel', 'mesh', 'mfcc', 'opensmile', 'prosody']", "[]"]


def test_configs_are_frozen_dataclasses():
    for name in featurize.names():
        cls = registry.get(name)
        assert dataclasses.is_dataclass(cls.Config) and cls.Config.__dataclass_params__.frozen
        assert cls.version and cls.input in ("frames", "crops", "audio")


def test_key_changes_with_params_and_only_then():
    k1, prov = registry.resolve_key("logmel")
    assert registry.resolve_key("logmel", registry.parse_config("logmel", {}))[0] == k1
    assert registry.resolve_key("logmel", {})[0] == k1
    assert registry.resolve_key("logmel", {"n_mels": "80"})[0] != k1
    assert registry.resolve_key("logmel", {"n_mels": "80"})[0] == registry.resolve_key("logmel", {"n_mels": 80})[0]
    assert key_from_provenance(prov) == k1 and prov["libraries"]["numpy"]
    # a frames/audio extractor has no upstream: faces params do not move its key
    assert registry.resolve_key("logmel", {}, {"faces": {"margin": 0.3}})[0] == k1
    f1 = registry.resolve_key("faces")[0]
    f2 = registry.resolve_key("faces", {"margin": 0.3})[0]
    assert f1 != f2 and f1.startswith(registry.get("faces").version + "-")


def test_crop_extractor_keys_include_the_faces_key(fer_weights):
    f1 = registry.resolve_key("faces")[0]
    f2 = registry.resolve_key("faces", {"margin": 0.3})[0]
    for name in ("mesh", "fer"):
        a, prov = registry.resolve_key(name)           # default faces params upstream
        assert registry.resolve_key(name, {}, {"faces": {}})[0] == a
        assert registry.resolve_key(name, {}, {"faces": registry.parse_config("faces")})[0] == a
        b, prov_b = registry.resolve_key(name, {}, {"faces": {"margin": "0.3"}})
        assert b != a and prov_b["params"]["upstream"] == {"faces": f2}
        assert prov["params"]["upstream"] == {"faces": f1} and key_from_provenance(prov) == a
    _, prov = registry.resolve_key("fer")
    assert prov["weights_sha256"].startswith("59534287")
    with pytest.raises(InputError) as e:
        registry.resolve_key("fer", {}, {"mesh": {}})
    assert "upstream" in str(e.value)


def test_parse_config_coerces_and_refuses():
    c = registry.parse_config("faces", {"size": "96", "smooth": "0.5", "margin": 0})
    assert (c.size, c.smooth, c.margin) == (96, 0.5, 0.0)
    c = registry.parse_config("mesh", {"static": "false"})
    assert c.static is False
    c = registry.parse_config("backbone", {"mean": "0.5,0.5,0.5", "weights": "x.pt"})
    assert c.mean == (0.5, 0.5, 0.5)
    with pytest.raises(InputError) as e:
        registry.parse_config("faces", {"margn": 0.2})
    assert "margin" in str(e.value)
    with pytest.raises(InputError):
        registry.parse_config("faces", {"smooth": 2.0})
    with pytest.raises(InputError):
        registry.get("nope")


def test_get_cached_builds_once():
    a = registry.get_cached("logmel")
    assert registry.get_cached("logmel", registry.parse_config("logmel")) is a
    assert registry.get_cached("logmel", registry.parse_config("logmel", {"n_mels": 32})) is not a


# --- backbone -------------------------------------------------------------------------------

def _crops(n=5, size=40):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def test_backbone_torchscript_on_crops(tmp_path):
    import torch

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(tiny_cnn(out_dim=6).eval()), str(path))
    cfg = registry.parse_config("backbone", {"weights": str(path), "size": 32, "batch": 2, "device": "cpu"})
    ext = registry.get_cached("backbone", cfg)
    assert ext.input == "crops"
    crops, mask = _crops(), np.array([1, 0, 1, 1, 0], bool)
    out = ext.process(crops, {"t": np.arange(5) / 25, "mask": mask})
    assert out["data"].dtype == np.float16 and out["data"].shape == (5, 6)
    assert (out["mask"] == mask).all() and not out["data"][~mask].any() and out["data"][mask].any()
    none = ext.process(crops, {"mask": np.zeros(5, bool)})
    assert none["data"].shape == (5, 6) and not none["mask"].any()
    # same numbers whatever the batching
    again = ext.embed(crops[[0, 2, 3]])
    assert np.allclose(again.astype(np.float16), out["data"][mask], atol=1e-2)
    key, prov = registry.resolve_key("backbone", cfg)
    assert prov["weights_sha256"] and key_from_provenance(prov) == key
    assert prov["params"]["upstream"] == {"faces": registry.resolve_key("faces")[0]}


def test_backbone_state_dict_on_frames(tmp_path):
    import torch

    torch.manual_seed(1)
    path = tmp_path / "tiny_sd.pt"
    torch.save(tiny_cnn().state_dict(), str(path))
    cfg = BackboneConfig(weights=str(path), arch="tiny_cnn", source="frames", size=32, device="cpu")
    ext = registry.get_cached("backbone", cfg)
    assert ext.input == "frames"
    frames = _crops(3, size=64)
    out = ext.process(frames, {"t": np.arange(3) / 25})
    assert out["data"].shape == (3, 16) and out["mask"].all()
    k_frames, prov = registry.resolve_key("backbone", cfg)  # whole frames need no upstream
    assert "upstream" not in prov["params"]
    assert registry.resolve_key("backbone", cfg, {"faces": {"margin": 0.3}})[0] == k_frames
    torch.save(tiny_cnn().state_dict(), str(tmp_path / "other.pt"))
    other = dataclasses.replace(cfg, weights=str(tmp_path / "other.pt"))
    assert registry.resolve_key("backbone", other)[0] != k_frames  # new weights, new key


def test_backbone_source_survives_yaml_and_the_old_name(tmp_path):
    """`on` was the field's name; YAML 1.1 reads a bare `on:` key as True. All spellings
    give the same config and key; a boolean key an extractor has no alias for is refused."""
    import torch
    import yaml

    path = tmp_path / "tiny_sd.pt"
    torch.save(tiny_cnn().state_dict(), str(path))
    base = {"weights": str(path), "arch": "tiny_cnn"}
    loaded = yaml.safe_load("{extractor: backbone, params: {on: frames}}")["params"]
    assert loaded == {True: "frames"}                   # what PyYAML hands over
    want = registry.parse_config("backbone", {**base, "source": "frames"})
    assert want.source == "frames"
    quoted = yaml.safe_load("{'on': frames}")           # a quoted key stays a string
    for spelled in ({**base, **loaded}, {**base, "on": "frames"}, {**base, **quoted}):
        assert registry.parse_config("backbone", spelled) == want
    assert registry.resolve_key("backbone", {**base, **loaded})[0] == registry.resolve_key("backbone", want)[0]
    assert registry.canonical_params("backbone", {**base, True: "frames"})["source"] == "frames"
    with pytest.raises(InputError) as e:
        registry.parse_config("backbone", {**base, "on": "frames", "source": "crops"})
    assert "twice" in str(e.value)
    with pytest.raises(InputError) as e:
        registry.parse_config("faces", yaml.safe_load("{yes: 1}"))
    assert "YAML" in e.value.fix and "quote" in e.value.fix


def test_backbone_bad_files(tmp_path):
    with pytest.raises(InputError) as e:
        registry.get("backbone")(BackboneConfig())
    assert "backbone.weights" in str(e.value)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError) as e:
        registry.get("backbone")(BackboneConfig(weights=str(junk), device="cpu"))
    assert "TorchScript" in str(e.value)
    with pytest.raises(InputError):
        registry.get("backbone")(BackboneConfig(weights=str(junk), arch="tiny_cnn", device="cpu"))
    with pytest.raises(InputError) as e:
        registry.get("backbone")(BackboneConfig(weights=str(tmp_path / "gone.pt")))
    assert e.value.reason == "missing_file"


def test_planning_keys_loads_no_model(fer_weights):
    """The driver (and the trainer) compute keys from configs and weight files alone: no
    mediapipe graph, no network, no CUDA context in the process that only plans."""
    import subprocess
    import sys

    code = ("from featurize import registry\n"
            "from featurize.pipeline import plan_extractors\n"
            "specs = plan_extractors(['faces', 'mesh', 'fer', 'logmel'])\n"
            "assert all(s.key for s in specs)\n"
            "print(len(registry._CACHE))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0"
