"""Ablations and several seeds: real one-epoch runs on a real Zarr store (tests/test_train.py's
synthetic corpus: the visual feature sees valence and arousal, the audio feature hears arousal
only) and, through the CLI, on the demo corpus."""
import json
import re

import numpy as np
import pytest
import yaml
from test_train import CLASSES, make_store, study_yaml

CI = r"-?\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]"      # "0.342 [0.241, 0.489]"


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = tmp_path_factory.mktemp("abl")
    return root, make_store(root / "store", n_videos=12)


@pytest.fixture(scope="module")
def frames_run(syn):
    from experiments.train import run_study

    root, keys = syn
    y = study_yaml(root / "frames.yaml", keys, name="frames", train={"epochs": 1},
                   report={"ablations": True})
    return run_study(y, root / "store", root / "runs", progress=False)


def test_frames_ablation_report_rows_cis_and_same_test_frames(frames_run, syn):
    from experiments.train import latest_finished

    run = frames_run
    m = json.loads((run / "metrics.json").read_text())
    ab = m["ablation"]
    assert ab["metric"] == "ccc_mean" and ab["heads"] == {"fusion": "lfan", "visual": "tcn", "audio": "tcn"}
    assert ab["runs"] == {"fusion": ".", "visual": "modality-visual", "audio": "modality-audio"}
    for method, sub in (("fusion", run), ("visual", run / "modality-visual"), ("audio", run / "modality-audio")):
        sm = json.loads((sub / "metrics.json").read_text())["test"]["model"]
        pooled = ab["pooled"][method]
        # the bootstrap's point estimate is the run's own metric (sufficient statistics of its CSVs)
        for k in ("ccc_mean", "ccc_valence", "ccc_arousal"):
            assert pooled[k]["value"] == pytest.approx(sm[k], abs=2e-4), (method, k)
            lo, hi = pooled[k]["ci"]
            assert lo <= hi and np.isfinite([lo, hi]).all()
        # every method is scored on the same frames: the grid's face mask, not the audio's (all valid)
        assert sm["n_frames"] == m["test"]["model"]["n_frames"]
    sub_cfg = yaml.safe_load((run / "modality-audio" / "config.yaml").read_text())
    assert sub_cfg["data"]["modalities"] == ["audio"] and sub_cfg["head"]["name"] == "tcn"
    assert sub_cfg["head"]["args"]["channels"] == [4, 4]           # the audio branch's own sizes
    assert sub_cfg["seed"] == 3 and sub_cfg["optim"] == yaml.safe_load((run / "config.yaml").read_text())["optim"]
    text = (run / "report.md").read_text()
    for row in ("fusion", "visual alone", "audio alone"):
        assert re.search(rf"^\| {row} \| `\w+` \| `[\w.-]+` \| {CI} \| {CI} \| {CI} \|$", text, re.M), (row, text)
    assert "3 videos the bootstrap has few distinct resamples" in text
    verdict_line = [ln for ln in text.splitlines() if "best single modality" in ln]
    assert len(verdict_line) == 1
    assert ("FLAG" in verdict_line[0]) == (ab["flag"] is not None) == (not ab["fusion_beats_best_single"])
    assert (run / "ablation.png").stat().st_size > 5000
    assert latest_finished(run.parent) == run                       # not one of its modality runs


def test_flag_fires_exactly_when_fusion_does_not_beat_its_best_modality(frames_run):
    from experiments.ablate import verdict

    ab = json.loads((frames_run / "metrics.json").read_text())["ablation"]
    real = {m: ab["pooled"][m]["ccc_mean"]["value"] for m in ab["runs"]}
    best = max((v, m) for m, v in real.items() if m != "fusion")
    again = verdict(real, "ccc_mean")
    assert again["best_single"] == best[1] and again["fusion_beats_best_single"] == (real["fusion"] > best[0])
    above = verdict({**real, "fusion": best[0] + 0.01}, "ccc_mean")
    assert above["fusion_beats_best_single"] is True and above["flag"] is None
    for worse in (best[0], best[0] - 0.01):                           # a tie buys nothing: flagged
        v = verdict({**real, "fusion": worse}, "ccc_mean")
        assert v["fusion_beats_best_single"] is False
        assert v["flag"].startswith("FLAG") and best[1] in v["flag"]
    # the same line reaches metrics.json and report.md
    assert (ab["flag"] is None) == ab["fusion_beats_best_single"]


def test_avcpnet_cross_validated_ablation_over_two_seeds(syn):
    """Classification, folds.test: all: per-fold and pooled UAR with CIs per method, the fusion's
    pooled numbers equal to the cross-validation's own, and the seeds' mean ± sd."""
    from experiments.train import latest_finished, run_study

    root, keys = syn
    y = study_yaml(root / "cls.yaml", keys, name="cls", task="clip_classification",
                   labels={"source": "frames", "targets": ["quadrant(valence,arousal)"], "classes": CLASSES},
                   data={"clip": 80, "clip_hop": 80, "min_clip": 40, "segments": 8},
                   folds={"n": 2, "test": "all", "val": None},
                   head={"name": "avcpnet", "args": {"d_model": 8, "heads": 2}},
                   loss={"name": "ep_ce", "args": {"polarity": {"pos_high": "p", "pos_low": "p", "neg_high": "n",
                                                                "neg_low": "n"}}},
                   train={"epochs": 1, "batch_size": 8, "select": "last"},
                   report={"ablations": True, "seeds": [0, 1]})
    run = run_study(y, root / "store", root / "runs", progress=False)
    assert latest_finished(run.parent) == run
    for s in (0, 1):
        seed_run = run / f"seed-{s}"
        sm = json.loads((seed_run / "metrics.json").read_text())
        ab = sm["ablation"]
        assert ab["heads"]["visual"] == ab["heads"]["audio"] == "segment_classifier" and ab["metric"] == "accuracy"
        assert ab["pooled"]["fusion"]["uar"]["value"] == pytest.approx(sm["model"]["uar"], abs=1e-9)
        assert ab["pooled"]["fusion"]["accuracy"]["value"] == pytest.approx(sm["model"]["accuracy"], abs=1e-9)
        assert set(ab["per_fold"]) == {"0", "1"}
        for f in ab["per_fold"]:
            fold_uar = sm["model"]["per_fold"][f]["uar"]
            assert ab["per_fold"][f]["fusion"]["uar"]["value"] == pytest.approx(fold_uar, abs=1e-9)
        assert yaml.safe_load((seed_run / "config.yaml").read_text())["seed"] == s
        assert (seed_run / "modality-audio" / "fold-1" / "metrics.json").is_file()
        text = (seed_run / "report.md").read_text()
        assert "UAR per held-out fold" in text and "accuracy [95% CI] per held-out fold" in text
        assert re.search(rf"^\| audio alone \| {CI} \| {CI} \|$", text, re.M), text   # one CI a fold
    agg = json.loads((run / "metrics.json").read_text())
    per = [json.loads((run / f"seed-{s}" / "metrics.json").read_text())["model"]["uar"] for s in (0, 1)]
    cell = agg["summary"]["head (cls)"]["uar"]
    assert cell["mean"] == pytest.approx(np.mean(per)) and cell["sd"] == pytest.approx(np.std(per, ddof=1))
    assert set(agg["summary"]) >= {"visual alone (pooled)", "audio alone (pooled)"}
    assert "fusion (pooled)" not in agg["summary"]          # the same numbers as the head's pooled row
    text = (run / "report.md").read_text()
    assert "2 seeds (0, 1)" in text
    assert re.search(r"^\| head \(cls\) \| uar \| \d\.\d{3} ± \d\.\d{3} \| \d\.\d{3} \| \d\.\d{3} \|$", text, re.M)
    assert re.search(r"^\| audio alone \(pooled\) \| accuracy \| \d\.\d{3} ± \d\.\d{3} \|", text, re.M)
    assert "best single modality" in text and (run / "seeds.png").is_file()


def test_eri_clip_regression_ablation_points_match_the_runs(syn):
    from experiments.train import run_study

    root, keys = syn
    y = study_yaml(root / "eri.yaml", keys, name="eri", task="clip_regression",
                   labels={"source": "frames", "targets": ["mean(valence)", "mean(arousal)"], "scale": [-1, 1, 0, 1]},
                   data={"clip": 100, "clip_hop": 100, "min_clip": 50},
                   head={"name": "eri", "args": {"hidden": 8, "gru_layers": 1, "depth": 1, "heads": 2, "dim_head": 4,
                                                 "mlp_dim": 8, "head_hidden": 8}},
                   loss={"name": "mse"}, train={"epochs": 1, "batch_size": 8}, report={"ablations": True})
    run = run_study(y, root / "store", root / "runs", progress=False)
    ab = json.loads((run / "metrics.json").read_text())["ablation"]
    assert ab["metric"] == "apcc" and ab["heads"]["audio"] == "eri"
    for m, d in ab["runs"].items():
        want = json.loads((run / d / "metrics.json").read_text())["test"]["model"]["apcc"]
        assert ab["pooled"][m]["apcc"]["value"] == pytest.approx(want, abs=1e-3)


def test_bad_seeds_and_a_head_without_single_form_fail_before_a_run_folder(syn, tmp_path):
    from experiments import models
    from experiments.seeds import parse
    from experiments.train import run_study
    from store.errors import InputError

    assert parse("3") == [0, 1, 2] and parse("4,7") == [4, 7]
    for bad in ("0,0", "x", "-1,2"):
        with pytest.raises(InputError):
            parse(bad)
    root, keys = syn

    @models.HEADS.register("plain_lfan_test", batch="split", call=lambda model, b: model(b["x"][0], b["x"][1:]))
    def _build(inputs, **args):
        return models.build_lfan(inputs, **args)

    y = study_yaml(tmp_path / "x.yaml", keys, name="nosingle", train={"epochs": 1}, report={"ablations": True},
                   head={"name": "plain_lfan_test", "args": {"visual_channels": [4], "audio_channels": [4]}})
    with pytest.raises(InputError, match="no single-modality form"):
        run_study(y, root / "store", tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_seeds_resume_keeps_finished_seeds_and_redoes_the_rest(syn):
    from experiments.train import FAILED, is_finished, run_study

    root, keys = syn
    y = study_yaml(root / "seeds.yaml", keys, name="seeds", train={"epochs": 1}, report={"seeds": [5, 6]})
    run = run_study(y, root / "store", root / "runs", progress=False)
    assert is_finished(run) and [p.name for p in sorted(run.glob("seed-*"))] == ["seed-5", "seed-6"]
    kept = (run / "seed-5" / "best.pt").stat().st_mtime_ns
    first = json.loads((run / "metrics.json").read_text())["summary"]["head (seeds)"]["ccc_mean"]
    # as if interrupted in seed 6: its metrics gone, the top marked FAILED
    (run / "seed-6" / "metrics.json").unlink()
    (run / FAILED).write_text("interrupted\n")
    again = run_study(None, root / "store", resume=run, progress=False)
    assert again == run and is_finished(run)
    assert (run / "seed-5" / "best.pt").stat().st_mtime_ns == kept
    assert yaml.safe_load((run / "seed-6" / "config.yaml").read_text())["seed"] == 6
    cell = json.loads((run / "metrics.json").read_text())["summary"]["head (seeds)"]["ccc_mean"]
    assert cell["per_seed"] == pytest.approx(first["per_seed"], abs=1e-6)   # seed 6 re-finished the same
    # predict names one seed's run instead of "not a finished run"
    from experiments.predict import predict_video
    from store.errors import InputError

    with pytest.raises(InputError, match="multi-seed run") as e:
        predict_video(y, run)
    assert str(run / "seed-5") in e.value.fix
