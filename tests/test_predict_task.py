"""predict builds the same Task as training, without labels: on the same video the unlabelled
task cuts, batches and calls the head exactly as the labelled one (clip tasks, all batch forms)."""
import pytest
import torch

from test_train import CLASSES, make_store, study_yaml


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt")
    return root, make_store(root / "store", n_videos=4, lengths=[260, 180, 330, 200])


@pytest.mark.parametrize("head,task", [("eri", "clip_regression"), ("sequence", "clip_classification"),
                                       ("avcpnet", "clip_classification")])
def test_unlabelled_task_predicts_what_the_labelled_one_does(store, head, task):
    from experiments import config, data, tasks

    root, keys = store
    args = {"eri": {"hidden": 8, "gru_layers": 1, "depth": 1, "heads": 2, "dim_head": 4, "mlp_dim": 8,
                    "head_hidden": 8},
            "sequence": {"encoder": "tcn", "hidden": 8, "depth": 2},
            "avcpnet": {"d_model": 8, "heads": 2}}[head]
    labels = ({"source": "frames", "targets": ["mean(valence)", "mean(arousal)"]} if task == "clip_regression"
              else {"source": "frames", "targets": ["quadrant(valence,arousal)"], "classes": CLASSES})
    loss = {"clip_regression": {"name": "mse"}, "clip_classification": {"name": "ce"}}[task]
    cfg = config.load(study_yaml(root / f"{head}.yaml", keys, task=task, labels=labels,
                                 data={"clip": 90, "clip_hop": 60, "min_clip": 30, "segments": 4},
                                 head={"name": head, "args": args}, loss=loss))
    corpus = data.load_corpus(cfg, root / "store", progress=False)
    bare = data.load_corpus(cfg, root / "store", progress=False, with_labels=False)
    assert bare.labels is None
    roles = {"test": [2]}
    train_task = tasks.make(cfg, corpus, roles, "cpu")
    pred_task = tasks.make(cfg, bare, roles, "cpu", labelled=False)
    torch.manual_seed(0)
    model = train_task.build_model().eval()
    a, b = train_task.predict(model, "test"), pred_task.predict(model, "test")
    keep = torch.as_tensor([list(pred_task.role_rows["test"]).index(j) for j in train_task.role_rows["test"]])
    torch.testing.assert_close(a.pred, b.pred[keep])       # every labelled clip, the same output
    per_frame = pred_task.frame_predictions(b)
    lo, hi = int(bare.offsets[2]), int(bare.offsets[3])
    assert torch.isfinite(per_frame[lo:hi]).all() and torch.isnan(per_frame[:lo]).all()
    # a frame covered by one clip only carries exactly that clip's output
    first = int(pred_task.role_rows["test"][0])
    assert int(pred_task.table.start[first]) == 0
    torch.testing.assert_close(per_frame[lo], b.pred[0])
