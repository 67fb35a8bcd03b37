"""Fold manifests (reproducible, reused) and CCC-centering merge."""
import json

import numpy as np
import pytest

from experiments.folds import FoldSpec, assign, ccc, ccc_centering, load_or_create, roles
from store.errors import InputError


def _rows(n_train=351, n_val=71):
    rows = [{"video_id": f"tr{i:03d}", "split": "train", "group": f"g{i % 7}"} for i in range(n_train)]
    rows += [{"video_id": f"va{i:03d}", "split": "val", "group": "gv"} for i in range(n_val)]
    return rows


def test_abaw2_scheme_chunk_sizes_and_validation_fold():
    folds = assign(_rows(), FoldSpec("abaw2"))
    sizes = [sum(1 for f in folds.values() if f == k) for k in range(6)]
    assert sizes == [70, 70, 70, 70, 71, 71]
    assert all(folds[f"va{i:03d}"] == 5 for i in range(71))


def test_fold_manifest_written_once_reused_and_reproducible(tmp_path):
    rows = _rows(40, 5)
    spec = FoldSpec("kfold", n=4, seed=3)
    a = load_or_create(tmp_path, "ds", rows, spec)
    path = tmp_path / "datasets" / "ds" / "folds" / spec.file_name()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 45 and {x["video_id"] for x in lines} == set(a)
    # a fresh assignment in another store gives the same folds (seeded)
    assert load_or_create(tmp_path / "other", "ds", rows, spec) == a
    # the file wins over the code: edit it and the edit is what we read back
    lines[0]["fold"] = 99
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert load_or_create(tmp_path, "ds", rows, spec)[lines[0]["video_id"]] == 99
    # a changed dataset is an error with a fix, not a silent re-shuffle
    with pytest.raises(InputError, match="delete"):
        load_or_create(tmp_path, "ds", rows + [{"video_id": "new"}], spec)


def test_grouped_kfold_keeps_groups_together():
    folds = assign(_rows(40, 0), FoldSpec("kfold", n=3, by="group"))
    by_group = {}
    for r in _rows(40, 0):
        by_group.setdefault(r["group"], set()).add(folds[r["video_id"]])
    assert all(len(v) == 1 for v in by_group.values())


def test_roles_exclude_test_and_val_from_train():
    folds = {f"v{i}": i % 4 for i in range(12)}
    r = roles(folds, test=0, val=1)
    assert set(r["test"]) == {"v0", "v4", "v8"} and set(r["val"]) == {"v1", "v5", "v9"}
    assert not set(r["train"]) & (set(r["test"]) | set(r["val"])) and len(r["train"]) == 6
    r = roles(folds, test=2)
    assert r["val"] == r["test"] and len(r["train"]) == 9
    with pytest.raises(InputError):
        roles(folds, test=7)


def test_ccc_centering_matches_the_formula():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 6, 200)
    y = np.stack([0.5 * np.sin(t) + 0.1 * k + 0.05 * rng.standard_normal(200) for k in range(4)])
    y[3] = 0.3 * rng.standard_normal(200) - 0.4           # a fold that disagrees
    out = ccc_centering(y, clip=None)
    # the formula, written out independently
    def c(a, b):
        return 2 * np.cov(a, b, bias=True)[0, 1] / (a.var() + b.var() + (a.mean() - b.mean()) ** 2)
    a = np.array([np.mean([c(y[i], y[j]) for j in range(4)]) for i in range(4)])
    mu = y.mean(1)
    w = (mu * a).sum() / a.sum()
    ref = np.mean([y[i] - mu[i] + w for i in range(4)], axis=0)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    # equivalently: the fold mean with its overall mean replaced by w
    np.testing.assert_allclose(out, y.mean(0) - y.mean() + w, rtol=1e-12)
    assert abs(w - mu[:3].mean()) < abs(mu.mean() - mu[:3].mean())   # the outlier fold counts less
    assert ccc(y[0], y[0]) == pytest.approx(1.0)
    clipped = ccc_centering(np.stack([np.full(5, 3.0), np.full(5, 2.0)]))
    assert clipped.max() <= 1.0


def test_ccc_centering_identical_folds_is_identity():
    y = np.sin(np.linspace(0, 3, 50)) * 0.8
    np.testing.assert_allclose(ccc_centering(np.stack([y, y, y])), y)


def test_stratified_kfold_balances_each_class_over_folds():
    rows = [{"video_id": f"v{i:02d}", "labels": {"q": "abcd"[i % 4]}} for i in range(16)]
    folds = assign(rows, FoldSpec("kfold", n=4, seed=1, stratify="labels.q"))
    for f in range(4):
        members = [r for r in rows if folds[r["video_id"]] == f]
        assert sorted(r["labels"]["q"] for r in members) == ["a", "b", "c", "d"]


def test_roles_with_named_training_folds_leave_the_rest_out():
    folds = {"a": "train", "b": "train", "c": "val", "d": "test"}
    r = roles(folds, test="val", val=None, train=["train"])
    assert r == {"train": ["a", "b"], "val": ["c"], "test": ["c"]}


def test_merge_prediction_csvs_applies_ccc_centering_per_column(tmp_path):
    from experiments.folds import merge_prediction_csvs

    rng = np.random.default_rng(2)
    preds = rng.uniform(-0.8, 0.8, (3, 40, 2))
    paths = []
    for k in range(3):
        p = tmp_path / f"fold{k}.csv"
        p.write_text("frame,t,pred_valence,pred_arousal,face\n" + "".join(
            f"{i},{i / 25:.4f},{preds[k, i, 0]:.6f},{preds[k, i, 1]:.6f},1\n" for i in range(40)))
        paths.append(p)
    out = merge_prediction_csvs(paths, tmp_path / "merged.csv")
    rows = out.read_text().splitlines()
    assert rows[0] == "frame,t,face,pred_valence,pred_arousal" and len(rows) == 41
    got = np.array([[float(x) for x in r.split(",")[3:]] for r in rows[1:]])
    ref = np.stack([ccc_centering(np.round(preds[:, :, j], 6)) for j in range(2)], 1)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_clip_fold_predictions_average_per_frame_and_keep_uncovered_frames_empty(tmp_path):
    from experiments.folds import mean_prediction_csvs

    head = "frame,t,p_a,p_b,face,pred\n"
    (tmp_path / "f0.csv").write_text(head + "0,0.0,0.9,0.1,1,a\n1,0.04,0.2,0.8,1,b\n2,0.08,nan,nan,0,\n")
    (tmp_path / "f1.csv").write_text(head + "0,0.0,0.5,0.5,1,a\n1,0.04,0.6,0.4,1,a\n2,0.08,nan,nan,0,\n")
    mean_prediction_csvs([tmp_path / "f0.csv", tmp_path / "f1.csv"], tmp_path / "m.csv")
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0] == "frame,t,p_a,p_b,face,pred"
    assert lines[1] == "0,0.0,0.70000,0.30000,1,a"
    assert lines[2] == "1,0.04,0.40000,0.60000,1,b"          # the mean decides, not the first fold
    assert lines[3] == "2,0.08,nan,nan,0,"
    # fold files of different lengths: the error the CCC merge gives too, not an IndexError
    (tmp_path / "f2.csv").write_text(head + "0,0.0,0.5,0.5,1,a\n")
    with pytest.raises(InputError) as e:
        mean_prediction_csvs([tmp_path / "f0.csv", tmp_path / "f2.csv"], tmp_path / "m2.csv")
    assert e.value.reason == "bad_labels" and "differ in length" in e.value.message
