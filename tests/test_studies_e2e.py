"""The published studies (abaw2, eri, avcpnet: the real YAMLs, not the -demo variants) end to
end on miniature corpora in their real layouts, through the console script as a user runs it:
`emocache features` -> `emocache train` -> metrics.json -> `emocache predict` on one video.

The corpora are cut from the real media in ../shared/data (tests/corpora.py); the `backbone`
is a random-init torchvision resnet18 state dict the test writes (on face crops for abaw2 and
eri, on whole frames for avcpnet). Overrides beyond the YAML: `train.epochs=1`, the backbone's
weights/arch (the YAMLs leave them for the user to name) and a small `backbone.size` (64) to
keep CPU time down; everything else (heads, losses, folds, windows, batch sizes) is the YAML's.
The keys each study resolved are printed (pytest -s shows them). Measured: the three tests
take 3 min 27 s user CPU together (wall 11-14 min at load average 14-17 on the shared 2-core
machine); most of it is the three processes per study loading torch/mediapipe and the
features runs.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

import corpora
from clirun import emocache
from store.errors import InputError

ARCH = "torchvision:resnet18"
SIZE = 64


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory) -> Path:
    """A random-init torchvision resnet18 state dict (what a user's trained weights look like)."""
    import torch

    from featurize.backbone import import_torchvision

    try:
        tv = import_torchvision()   # the CUDA-built wheel beside the CPU torch: see there
    except InputError as e:         # torchvision not installed
        pytest.skip(str(e))

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(tv.models.resnet18(weights=None).state_dict(), path)
    return path


def backbone_params(weights: Path, source: str | None = None) -> list[str]:
    out = [f"backbone.weights={weights}", f"backbone.arch={ARCH}", f"backbone.size={SIZE}"]
    return out + ([f"backbone.source={source}"] if source else [])


def features(input_path, store, dataset, extractors, params, name=None):
    args = ["features", "--input", input_path, "--dataset", dataset, "--store", store,
            "--extractors", ",".join(extractors), "--workers", 1, "--quiet"]
    if name:
        args += ["--name", name]
    for p in params:
        args += ["--param", p]
    p = emocache(*args)
    keys = dict(re.findall(r"key (\w+)/(\S+)", p.stdout))
    assert "failed 0" in p.stdout, p.stdout
    return keys, p.stdout


def train(study, store, runs, sets):
    args = ["train", "--exp", study, "--store", store, "--runs", runs, "--device", "cpu",
            "--set", "train.epochs=1"]
    for s in sets:
        args += ["--set", s]
    p = emocache(*args)
    run_dir = Path(re.findall(r"run: (\S+)", p.stdout)[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    data = json.loads((run_dir / "data.json").read_text())
    resolved = {f["extractor"]: f["key"] for f in data["features"]}
    print(f"\n{study}: resolved keys {resolved}")
    return run_dir, metrics, resolved, p.stdout


def predict(video, run_dir, tmp_path):
    out = tmp_path / "predict"
    p = emocache("predict", video, "--run", run_dir, "--out", out, "--store", tmp_path / "predict-store")
    csv_path = out / f"{Path(video).stem}.csv"
    assert csv_path.is_file(), p.stdout
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_abaw2_on_affwild2_layout(shared_data, resnet18, tmp_path):
    root = tmp_path / "affwild2"
    made = corpora.affwild2(root, shared_data)
    store, runs = tmp_path / "store", tmp_path / "runs"
    keys, _ = features(root, store, "affwild2", ["backbone", "logmel", "mfcc"], backbone_params(resnet18))
    assert set(keys) == {"faces", "backbone", "logmel", "mfcc"}
    run_dir, metrics, resolved, out = train(
        "abaw2", store, runs, [f"features.visual.0.params.{p.split('.', 1)[1]}" for p in backbone_params(resnet18)])
    assert resolved == {k: keys[k] for k in ("backbone", "logmel", "mfcc")}
    data = json.loads((run_dir / "data.json").read_text())
    # _left / _right are two training videos of one media file; the validation set is held out
    assert sorted(data["folds"]["videos"]["test"]) == ["3-25-320x180", "4-25-320x180"]
    assert {"10-60-640x360_left", "10-60-640x360_right"} <= set(data["folds"]["videos"]["train"])
    test = metrics["test"]["model"]
    assert metrics["epochs_run"] == 1 and test["n_frames"] > 0
    assert all(-1.0 <= test[f"ccc_{t}"] <= 1.0 for t in ("valence", "arousal")), test
    rows = predict(made["solo"], run_dir, tmp_path)
    assert len(rows) == made["frames"]["2-30-320x180"]
    assert {"pred_valence", "pred_arousal"} <= set(rows[0])


@pytest.mark.slow
def test_eri_on_hume_reaction_layout(shared_data, resnet18, tmp_path):
    root = tmp_path / "hume"
    corpora.hume(root, shared_data)
    store, runs = tmp_path / "store", tmp_path / "runs"
    keys, _ = features(root, store, "hume", ["backbone", "mesh", "mfcc"],
                       backbone_params(resnet18) + ["mfcc.n_mfcc=40", "mfcc.deltas=false"])
    run_dir, metrics, resolved, out = train(
        "eri", store, runs, [f"features.visual.0.params.{p.split('.', 1)[1]}" for p in backbone_params(resnet18)])
    assert resolved == {k: keys[k] for k in ("backbone", "mesh", "mfcc")}
    test = metrics["test"]["model"]
    assert test["n_clips"] == 2 and "apcc" in test
    rows = predict(root / "mp4" / "00007.mp4", run_dir, tmp_path)
    assert rows and {f"pred_{e}" for e in corpora.HUME_EMOTIONS} <= set(rows[0])


@pytest.mark.slow
def test_avcpnet_on_emotions_layout(shared_data, resnet18, tmp_path):
    root = tmp_path / "emotions"
    labels = corpora.emotions(root, shared_data)
    store, runs = tmp_path / "store", tmp_path / "runs"
    keys, _ = features(labels, store, "labelled-csv", ["backbone", "logmel"],
                       backbone_params(resnet18, source="frames"), name="emotions")
    assert "faces" not in keys    # whole frames: no face detection
    run_dir, metrics, resolved, out = train(
        "avcpnet", store, runs,
        [f"features.visual.0.params.{p.split('.', 1)[1]}" for p in backbone_params(resnet18, source="frames")])
    assert resolved == {k: keys[k] for k in ("backbone", "logmel")}
    test = metrics["test"]["model"]
    assert test["n_clips"] == 3 and 0.0 <= test["accuracy"] <= 1.0
    video = next(root.glob("clips/Neutral/*.mp4"))
    rows = predict(video, run_dir, tmp_path)
    assert rows and {f"p_{c}" for c in corpora.EMOTIONS_CLASSES} <= set(rows[0])
