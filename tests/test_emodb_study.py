"""The general speech-emotion study (ser.yaml) on real EmoDB audio given as a labelled CSV
(path,label,group = speaker), only the class list set: featurized through the cache,
leave-one-speaker-out with a validation speaker drawn from each fold's training speakers,
the head beside the classical baselines in one report. emodb.yaml is ser.yaml + EmoDB's
adapter and class list.

CI-sized: 3 speakers x 20 utterances (every emotion, round robin), tiny head, 2 epochs,
3 folds (1 training, 1 validation, 1 test speaker each). The full study is
`make train EXP=emodb STORE=...` (see experiments/configs/emodb.yaml).
"""
import json

import numpy as np
import pytest
import torch

from experiments import baselines as B
from experiments import config as C
from experiments import data as D
from experiments.folds import FoldSpec, assign
from experiments.windows import pool_frames
from store.errors import InputError
from store.reader import read_concat

SPEAKERS = ("03", "10", "15")     # two male, one female speaker
PER_SPEAKER = 20
CLASSES = ["anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral"]


def _subset(rows):
    """PER_SPEAKER utterances of each speaker, dealt over the emotions in turn."""
    out = []
    for spk in SPEAKERS:
        by_emo = {}
        for r in sorted(rows, key=lambda r: r["video_id"]):
            if r["group"] == spk:
                by_emo.setdefault(r["labels"]["emotion"], []).append(r)
        picked, k = [], 0
        while len(picked) < PER_SPEAKER and any(by_emo.values()):
            emo = sorted(by_emo)[k % len(by_emo)]
            if by_emo[emo]:
                picked.append(by_emo[emo].pop(0))
            k += 1
        out += picked
    return out


@pytest.fixture(scope="module")
def emodb_store(shared_data, tmp_path_factory):
    """The subset as a labelled-csv corpus (path,label,group), as a user's own corpus."""
    from featurize import datasets
    from featurize.pipeline import run_features, write_manifest

    root = tmp_path_factory.mktemp("emodb-store")
    picked = _subset(datasets.build("emodb", shared_data / "emodb"))
    csv_path = root / "corpus.csv"
    csv_path.write_text("path,label,group\n" + "".join(
        f"{r['video_id']}.wav,{r['labels']['emotion']},{r['group']}\n" for r in picked))
    rows = datasets.build("labelled-csv", csv_path, root=shared_data / "emodb" / "wav")
    assert [r["video_id"] for r in rows] == [r["video_id"] for r in picked]
    write_manifest(rows, root, "labelled-csv")
    summary = run_features(rows, root, ["logmel", "mfcc", "prosody"], scheduler="inline", progress=False)
    assert summary.failed_total == 0 and summary.done == 3 * len(rows)
    return root, rows


@pytest.fixture(scope="module")
def study_run(emodb_store, tmp_path_factory):
    from experiments.train import run_study

    root, _ = emodb_store
    runs = tmp_path_factory.mktemp("runs")
    run_dir = run_study("ser", root, runs, progress=False, overrides=[
        f"labels.classes=[{', '.join(CLASSES)}]", "folds.inner_val=1",
        "train.epochs=2", "train.fold_jobs=1", "train.members=1", "head.args.hidden=16", "head.args.depth=2",
        # the eGeMAPS baseline (when opensmile is installed) is exercised on the same folds
        "baselines=[{name: pooled MFCC + LR, features: [mfcc], per_group: both},"
        " {name: nested C, features: [mfcc], C: [0.01, 1.0]},"
        " {name: eGeMAPS + linear SVM, features: [egemaps], model: linear_svm}]"])
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.data
@pytest.mark.slow
def test_report_has_head_and_baselines_side_by_side(study_run):
    run_dir, m = study_run
    assert m["protocol"]["folds"] == list(SPEAKERS)
    assert m["protocol"]["select"] == "best" and m["protocol"]["model_selected_on_test"] is False
    assert m["model"]["n_clips"] == len(SPEAKERS) * PER_SPEAKER
    for r in (m["model"], m["baselines"]["pooled MFCC + LR (per-group std)"], m["baselines"]["pooled MFCC + LR"]):
        assert 0.0 <= r["uar"] <= 1.0 and 0.0 <= r["accuracy"] <= 1.0
        assert sorted(r["per_fold"]) == list(SPEAKERS)
        assert sum(f["n_clips"] for f in r["per_fold"].values()) == len(SPEAKERS) * PER_SPEAKER
    # a list of C: one chosen per fold on that fold's validation speaker, recorded
    nested = m["baselines"]["nested C (per-group std)"]
    assert {f["C"] for f in nested["per_fold"].values()} <= {0.01, 1.0} and nested["C"] == [0.01, 1.0]
    egemaps = [v for k, v in m["baselines"].items() if k.startswith("eGeMAPS")]
    assert len(egemaps) == 1      # standardised per speaker, as the study
    if B.opensmile_available() is None:
        assert all("uar" in v for v in egemaps)
    else:   # skipped, and the report says why
        assert all("opensmile" in v["skipped"] for v in egemaps)
    report = (run_dir / "report.md").read_text()
    assert "head (ser)" in report and "pooled MFCC + LR" in report and "eGeMAPS + linear SVM" in report
    assert (run_dir / "confusion.png").stat().st_size > 0
    header = (run_dir / "predictions.csv").read_text().splitlines()[0]
    assert header.startswith("video_id,fold,start,length,true,pred") and "pred[pooled MFCC + LR]" in header


@pytest.mark.data
@pytest.mark.slow
def test_folds_are_speaker_disjoint(study_run, emodb_store):
    run_dir, m = study_run
    speaker = {r["video_id"]: r["group"] for r in emodb_store[1]}
    tested = []
    for spk in SPEAKERS:
        vids = json.loads((run_dir / f"fold-{spk}" / "data.json").read_text())["folds"]["videos"]
        assert {speaker[v] for v in vids["test"]} == {spk}
        # nested: one validation speaker from this fold's training speakers, never the test one
        train, val = {speaker[v] for v in vids["train"]}, {speaker[v] for v in vids["val"]}
        assert len(train) == 1 and len(val) == 1 and len(train | val | {spk}) == 3
        assert len(vids["train"]) == len(vids["val"]) == PER_SPEAKER
        tested += vids["test"]
    assert sorted(tested) == sorted(speaker)     # every utterance held out exactly once


@pytest.mark.data
@pytest.mark.slow
def test_pooled_mfcc_baseline_beats_chance_clearly(study_run):
    _, m = study_run
    # chance is 1/7 = 0.14; with only 40 training utterances per fold pooled MFCC statistics
    # still get ~0.46 here (0.74 on the full corpus)
    assert m["baselines"]["pooled MFCC + LR (per-group std)"]["uar"] > 0.35
    assert m["trivial"]["uar"] == pytest.approx(1 / 7, abs=0.02)


@pytest.mark.data
@pytest.mark.slow
def test_resume_keeps_finished_folds(study_run, emodb_store):
    from experiments.train import run_study

    run_dir, m = study_run
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.glob("fold-*/best.pt")}
    again = run_study(None, emodb_store[0], resume=run_dir, progress=False)
    assert again == run_dir and {p: p.stat().st_mtime_ns for p in run_dir.glob("fold-*/best.pt")} == stamps
    m2 = json.loads((run_dir / "metrics.json").read_text())
    assert m2["model"]["uar"] == m["model"]["uar"] and m2["fold_seconds"] == {}


@pytest.mark.data
def test_per_speaker_statistics_come_from_that_speaker_only(emodb_store):
    root, rows = emodb_store
    cfg = C.load("ser")
    corpus = D.load_corpus(cfg, root, progress=False)
    stats = D.fit_group_norm(corpus, "group")
    assert {k.split("/")[0] for k in stats} == set(SPEAKERS)
    for spk in SPEAKERS:
        vids = [r["video_id"] for r in rows if r["group"] == spk]
        frames = np.concatenate([read_concat(root, f.spec.extractor, f.key, vids, arrays=("data",))
                                 .arrays["data"].astype(np.float64) for f in corpus.features], axis=1)
        np.testing.assert_allclose(stats[f"{spk}/audio.mean"].numpy(), frames.mean(0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(stats[f"{spk}/audio.std"].numpy(), frames.std(0), rtol=1e-3, atol=1e-3)
    # changing another speaker's audio leaves this speaker's statistics alone
    other = [i for i, r in enumerate(corpus.rows) if r["group"] == SPEAKERS[1]]
    x = corpus.modalities["audio"].x
    for i in other:
        x[int(corpus.offsets[i]):int(corpus.offsets[i + 1])] *= 3.0
    again = D.fit_group_norm(corpus, "group")
    assert torch.equal(again[f"{SPEAKERS[0]}/audio.mean"], stats[f"{SPEAKERS[0]}/audio.mean"])
    assert not torch.allclose(again[f"{SPEAKERS[1]}/audio.std"], stats[f"{SPEAKERS[1]}/audio.std"])
    # after applying, each speaker's frames are centred and scaled by its own statistics
    D.apply_group_norm(corpus, again, "group")
    for spk in SPEAKERS:
        sel = corpus.frames_of([i for i, r in enumerate(corpus.rows) if r["group"] == spk])
        z = x[sel].double()
        assert z.mean(0).abs().max() < 1e-3 and (z.std(0, unbiased=False) - 1).abs().max() < 1e-2
    # the baselines' numpy version agrees: group statistics from the group's own rows
    g = np.repeat([r["group"] for r in corpus.rows], np.diff(corpus.offsets))
    raw = np.random.default_rng(0).normal(size=(len(g), 3))
    raw[g == SPEAKERS[2]] += 5.0
    st = B.group_stats(raw, g)
    np.testing.assert_allclose(st[SPEAKERS[0]][0], raw[g == SPEAKERS[0]].mean(0))
    assert np.abs(B.standardize_groups(raw, g)[g == SPEAKERS[2]].mean(0)).max() < 1e-5


def test_group_fold_scheme_is_leave_one_group_out():
    rows = [{"video_id": f"v{i}", "group": f"s{i % 4}"} for i in range(12)]
    folds = assign(rows, FoldSpec("group", by="group"))
    assert folds == {f"v{i}": f"s{i % 4}" for i in range(12)}
    with pytest.raises(InputError, match="no 'group'"):
        assign(rows + [{"video_id": "x", "group": None}], FoldSpec("group", by="group"))


def test_pool_frames_is_a_masked_mean():
    x = torch.arange(10, dtype=torch.float32).reshape(1, 5, 2)      # frames (0,1) (2,3) ... (8,9)
    mask = torch.tensor([[True, True, True, False, True]])
    y, m = pool_frames(x, mask, 2)
    assert y.shape == (1, 3, 2) and m.tolist() == [[True, True, True]]
    assert y[0, 0].tolist() == [1.0, 2.0] and y[0, 1].tolist() == [4.0, 5.0] and y[0, 2].tolist() == [8.0, 9.0]
    y, m = pool_frames(x, torch.tensor([[True, True, False, False, False]]), 2)
    assert m.tolist() == [[True, False, False]] and y[0, 1].tolist() == [0.0, 0.0]


def test_emodb_study_is_ser_with_its_class_list():
    cfg, ser = C.load("emodb"), C.load("ser")
    assert cfg.folds.scheme == "group" and cfg.folds.test == "all" and cfg.folds.val is None
    assert cfg.folds.inner_val == 2 and cfg.train.select == "best" and cfg.train.monitor == "uar"
    assert cfg.data.normalize_by == "group"
    assert [s.name for s in B.parse_specs(cfg.baselines)][0] == "pooled MFCC + LR"
    a, b = cfg.to_dict(), ser.to_dict()
    assert {k for k in a if a[k] != b[k]} == {"name", "dataset", "description", "labels"}
    assert {k for k in a["labels"] if a["labels"][k] != b["labels"][k]} == {"targets", "classes"}


def test_opensmile_study_is_emodb_plus_the_compare_llds():
    cfg, emodb = C.load("emodb-opensmile"), C.load("emodb")
    a, b = cfg.to_dict(), emodb.to_dict()
    assert {k for k in a if a[k] != b[k]} == {"name", "description", "features"}
    assert [f.extractor for f in cfg.features["audio"]] == ["logmel", "mfcc", "opensmile"]
    assert cfg.features["audio"][2].params == {"feature_set": "compare", "deltas": True}
    # the general recipe never needs the optional (research-licence) opensmile for its head
    assert "opensmile" not in [f.extractor for f in C.load("ser").features["audio"]]


def test_inner_validation_folds_come_from_the_training_folds():
    from experiments.crossval import inner_val_folds
    from experiments.folds import roles

    folds = [f"s{i}" for i in range(10)]
    drawn = {f: inner_val_folds(folds, f, 2, seed=0) for f in folds}
    assert all(len(v) == 2 and f not in v for f, v in drawn.items())
    assert drawn == {f: inner_val_folds(folds, f, 2, seed=0) for f in folds}     # resumable
    assert len({tuple(v) for v in drawn.values()}) > 1
    fold_of = {f"v{i}": f"s{i % 10}" for i in range(40)}
    r = roles(fold_of, "s3", drawn["s3"])
    assert {fold_of[v] for v in r["val"]} == set(drawn["s3"]) and {fold_of[v] for v in r["test"]} == {"s3"}
    assert not {fold_of[v] for v in r["train"]} & (set(drawn["s3"]) | {"s3"}) and len(r["train"]) == 28
    with pytest.raises(InputError, match="inner_val"):
        inner_val_folds(folds[:3], "s0", 2, seed=0)
    with pytest.raises(InputError, match="baselines"):
        B.parse_specs([{"name": "x", "modle": "logreg"}])


@pytest.mark.data
@pytest.mark.slow
def test_fold_members_average_their_probabilities(emodb_store, tmp_path):
    """train.members: 2 models per fold, each with its own seed and validation draw; the
    fold's predictions are the mean of its members' probabilities and pooling reads those."""
    from experiments.folds import read_prediction_csvs
    from experiments.train import run_study

    root, _ = emodb_store
    run_dir = run_study("ser", root, tmp_path, progress=False, overrides=[
        f"labels.classes=[{', '.join(CLASSES)}]", "folds.inner_val=1", "train.members=2",
        "train.epochs=1", "train.fold_jobs=1", "head.args.hidden=8", "head.args.depth=1", "baselines=[]"])
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["model"]["n_clips"] == len(SPEAKERS) * PER_SPEAKER
    for spk in SPEAKERS:
        fold = run_dir / f"fold-{spk}"
        members = [json.loads((fold / f"member-{k}" / "metrics.json").read_text()) for k in (0, 1)]
        assert members[0]["seed"] != members[1]["seed"]
        both, mean = read_prediction_csvs([fold / f"member-{k}" / "predictions_test.csv" for k in (0, 1)]), \
            read_prediction_csvs([fold / "predictions_test.csv"])[0]
        for a, b, r in zip(*both, mean):
            assert a["video_id"] == b["video_id"] == r["video_id"]
            for c in CLASSES:
                assert float(r[f"p_{c}"]) == pytest.approx((float(a[f"p_{c}"]) + float(b[f"p_{c}"])) / 2, abs=1e-4)
        fm = json.loads((fold / "metrics.json").read_text())
        assert [x["seed"] for x in fm["members"]] == [x["seed"] for x in members]
        assert m["model"]["per_fold"][spk]["uar"] == pytest.approx(fm["test"]["model"]["uar"])
    # stopped after a fold's members finished but before they were combined: resume combines
    fold = run_dir / f"fold-{SPEAKERS[0]}"
    (fold / "metrics.json").unlink()
    (fold / "predictions_test.csv").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.glob("fold-*/member-*/best.pt")}
    run_study(None, root, resume=run_dir, progress=False)
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("fold-*/member-*/best.pt")} == stamps
    assert json.loads((run_dir / "metrics.json").read_text())["model"]["uar"] == pytest.approx(m["model"]["uar"])
    # predict: every fold's every member, averaged
    from experiments.predict import predict_video

    wav = emodb_store[1][0]["path"]
    out = read_prediction_csvs([predict_video(wav, run_dir, tmp_path / "pred", tmp_path / "pred-store")])[0]
    assert out and all(abs(sum(float(r[f"p_{c}"]) for c in CLASSES) - 1) < 1e-3 for r in out)
    assert len(list((tmp_path / "pred").rglob("member-*/*.csv"))) == 2 * len(SPEAKERS)
    with pytest.raises(InputError, match="members"):
        run_study("ser", root, tmp_path / "bad", progress=False, overrides=["train.members=0"])


@pytest.mark.data
def test_members_reuse_one_corpus_read_per_process(emodb_store):
    """With train.members > 1 the next model of a fold gets a copy of the corpus already read
    (not the same tensors: per-speaker standardisation changes them in place)."""
    from experiments import prepare as P

    root, rows = emodb_store
    cfg = C.load("ser", overrides=[f"labels.classes=[{', '.join(CLASSES)}]", "train.members=2"])
    feats = D.resolve_features(cfg, root)
    a = P.load_corpus_once(cfg, root, torch.device("cpu"), feats, rows, False)
    kept = P._LAST_CORPUS["corpus"]
    b = P.load_corpus_once(cfg, root, torch.device("cpu"), feats, rows, False)
    assert P._LAST_CORPUS["corpus"] is kept                     # not read again
    x_a, x_b = a.modalities["audio"].x, b.modalities["audio"].x
    assert torch.equal(x_a, x_b) and x_a.data_ptr() != x_b.data_ptr()
    x_a.zero_()
    assert torch.equal(kept.modalities["audio"].x, x_b) and x_b.abs().sum() > 0
    other = P.load_corpus_once(cfg, root, torch.device("cpu"), feats, rows[:10], False)
    assert len(other.video_ids) == 10 and P._LAST_CORPUS["corpus"] is not kept
    single = C.load("ser", overrides=[f"labels.classes=[{', '.join(CLASSES)}]", "train.members=1"])
    P.load_corpus_once(single, root, torch.device("cpu"), feats, rows, False)
    assert not P._LAST_CORPUS                                   # one model per fold keeps nothing
