"""One key function: what `featurize` writes is what the trainer, the baselines and predict
look up, for every extractor, default and non-default params, upstream (faces) params too.

Real runs: a generated 1 s demo clip goes through `featurize.pipeline.run_features` (inline
scheduler), then a study YAML naming the same params is resolved by the trainer's
`experiments.data.resolve_features`; the missing-key fix is a command that, when run,
makes the key the study needs."""
import shlex

import numpy as np
import pytest
import yaml

import featurize
from featurize import datasets, registry
from featurize.backbone import tiny_cnn
from featurize.demo import write_demo_corpus
from featurize.pipeline import run_features
from store.errors import InputError
from store.reader import read_video


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import torch

    out = tmp_path_factory.mktemp("keys")
    write_demo_corpus(out / "corpus", n=1, seconds=1.0, fps=10, size=(160, 120), seed=3)
    rows = datasets.build("demo", out / "corpus")
    torch.manual_seed(0)
    weights = out / "tiny.pt"
    torch.save(tiny_cnn().state_dict(), str(weights))
    return out, rows, str(weights)


def _study(path, store_dataset, features):
    raw = {"name": "keys", "dataset": store_dataset, "task": "frames",
           "features": {f"m{i}": [f] for i, f in enumerate(features)},
           "labels": {"source": "frames", "targets": ["valence"]}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _cases(weights):
    """(extractor, params as a user writes them in YAML text, upstream) per run; each run
    holds one config per extractor (the pipeline's unit)."""
    bb = f"weights: {weights}, arch: tiny_cnn, size: 32, device: cpu"
    defaults = [("faces", "{}", None), ("mesh", "{}", None), ("fer", "{}", None),
                ("backbone", "{" + bb + "}", None), ("logmel", "{}", None), ("mfcc", "{}", None),
                ("prosody", "{}", None)]
    changed = [("faces", "{margin: 0.3}", None),
               ("mesh", "{min_confidence: 0.4}", "{faces: {margin: 0.3}}"),
               ("fer", "{batch: 8}", "{faces: {margin: 0.3}}"),
               ("backbone", "{" + bb + ", batch: 3}", "{faces: {margin: 0.3}}"),
               ("logmel", "{n_mels: 32}", None), ("mfcc", "{n_mfcc: 20, deltas: false}", None),
               ("prosody", "{f0_min: 75.0, deltas: false}", None)]
    # whole frames, written with the old name `on` that YAML 1.1 reads as True
    frames = [("backbone", "{" + bb + ", on: frames}", None), ("mesh", "{static: false}", None)]
    return [defaults, changed, frames]


def test_every_extractor_featurized_then_resolved_by_the_trainer(corpus, fer_weights):
    from experiments import config as C, data as D

    out, rows, weights = corpus
    store = out / "store"
    from featurize.pipeline import write_manifest

    write_manifest(rows, store, "demo")
    runs = _cases(weights)
    covered = {name for run in runs for name, _, _ in run}
    assert set(featurize.names()) - {"opensmile"} <= covered   # a new extractor needs a case here
    seen_keys = {}
    for i, run in enumerate(runs):
        overrides = {}
        for name, params, up in run:
            overrides[name] = yaml.safe_load(params)
            for u, p in (yaml.safe_load(up) or {}).items() if up else ():
                overrides[u] = p
        summary = run_features(rows, store, [n for n, _, _ in run], overrides=overrides,
                               scheduler="inline", progress=False)
        assert summary.failed_total == 0, summary
        feats = []
        for name, params, up in run:
            f = yaml.safe_load(f"{{extractor: {name}, params: {params}}}")
            if up:
                f["upstream"] = yaml.safe_load(up)
            feats.append(f)
        cfg = C.load(_study(out / f"study{i}.yaml", "demo", feats))
        resolved = D.resolve_features(cfg, store)
        for (name, _, _), rf in zip(run, resolved):
            assert rf.key == summary.keys[name], (name, rf.key, summary.keys)
            arrays, _ = read_video(store, name, rf.key, rows[0]["video_id"])
            assert len(arrays["data"]) > 0
            seen_keys.setdefault(name, set()).add(rf.key)
    # non-default params (and new crops upstream) gave new keys for every extractor
    assert all(len(seen_keys[n]) >= 2 for n in covered), seen_keys
    bb = [registry.resolve_key("backbone", {"weights": weights, "arch": "tiny_cnn", "size": 32,
                                            "device": "cpu", "source": "frames"})[0]]
    assert set(bb) <= seen_keys["backbone"]       # `on: frames` keyed as source=frames


def test_missing_key_fix_is_a_command_that_makes_the_key(corpus, tmp_path):
    """The study names non-default backbone params and non-default upstream faces params; the
    error's fix, run as printed, writes exactly the key the trainer then finds."""
    from experiments import cli, config as C, data as D
    from featurize.pipeline import write_manifest

    out, rows, weights = corpus
    store = tmp_path / "store"
    write_manifest(rows, store, "demo")
    feats = [{"extractor": "backbone", "params": {"weights": weights, "arch": "tiny_cnn", "size": 24,
                                                  "device": "cpu", "mean": [0.5, 0.5, 0.5]},
              "upstream": {"faces": {"margin": 0.45}}}]
    cfg = C.load(_study(tmp_path / "s.yaml", "demo", feats))
    with pytest.raises(InputError) as e:
        D.resolve_features(cfg, store)
    assert e.value.reason == "missing_key"
    fix = e.value.fix
    assert "--param faces.margin=0.45" in fix and "--param backbone.size=24" in fix
    argv = shlex.split(fix)
    assert argv[:2] == ["emocache", "features"]
    assert cli.main(argv[1:] + ["--scheduler", "inline", "--quiet"]) == 0   # in this process
    (rf,) = D.resolve_features(cfg, store)
    assert rf.key == registry.resolve_key("backbone", feats[0]["params"], feats[0]["upstream"])[0]
    data, _ = read_video(store, "backbone", rf.key, rows[0]["video_id"])
    assert data["data"].shape[1] == 16 and np.asarray(data["mask"]).any()


def test_make_features_passes_every_param():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    p = subprocess.run(["make", "-n", "-C", str(root), "features", "INPUT=x.jsonl", "STORE=s",
                        "EXTRACTORS=backbone", "PARAMS=faces.margin=0.3 backbone.on=frames"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    line = " ".join(p.stdout.replace("\\\n", " ").split())
    assert "--param 'faces.margin=0.3' --param 'backbone.on=frames'" in line


def test_a_study_yaml_with_on_frames_resolves_and_a_bad_bool_key_is_clear(corpus, tmp_path):
    from experiments import config as C, data as D

    _, _, weights = corpus
    text = ("name: k\ndataset: demo\ntask: frames\nlabels: {source: frames, targets: [valence]}\n"
            f"features:\n  visual:\n    - {{extractor: backbone, params: {{weights: {weights}, arch: tiny_cnn, "
            "on: frames}}\n")
    (tmp_path / "k.yaml").write_text(text)
    cfg = C.load(tmp_path / "k.yaml")
    with pytest.raises(InputError) as e:                  # no features yet: the fix names source=frames
        D.resolve_features(cfg, tmp_path / "store")
    assert e.value.reason == "missing_key" and "--param backbone.source=frames" in e.value.fix
    (tmp_path / "b.yaml").write_text(text.replace("backbone", "logmel").replace(
        f"weights: {weights}, arch: tiny_cnn, on: frames", "off: 1"))
    with pytest.raises(InputError) as e:
        D.resolve_features(C.load(tmp_path / "b.yaml"), tmp_path / "store")
    assert "YAML boolean" in str(e.value) and "quote the key" in str(e.value)   # named, with the fix
