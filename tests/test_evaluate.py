"""Per-frame averaging of overlapping windows and split-level metrics, on known arrays."""
import numpy as np
import torch

from experiments.evaluate import WindowAverager, classification_metrics, clip_regression_metrics, frame_metrics
from experiments.windows import index_tensor, window_table


def test_overlapping_windows_are_averaged_and_padding_never_counts():
    lengths = [10, 4]
    offsets = np.array([0, 10, 14])
    table = window_table(lengths, window=6, hop=3)        # video 0: starts 0, 3, 4(tail); video 1: padded
    idx, valid = index_tensor(table, offsets, width=6)
    # window r predicts the constant r + 1 everywhere, padding positions predict 1000
    out = torch.full((len(table), 6, 1), 1000.0)
    for r in range(len(table)):
        out[r, valid[r]] = r + 1.0
    avg = WindowAverager(14, 1)
    avg.add(idx, valid, out)
    mean, covered = avg.result()
    assert covered.all()
    # frame 0..2: only window 0 (value 1); frame 3: windows 0,1 -> 1.5; 4,5: windows 0,1,2 -> 2;
    # 6..8: windows 1,2 -> 2.5; 9: the tail window only -> 3; video 1: window 3 only -> 4
    assert list(table.start) == [0, 3, 4, 0]
    expect = [1, 1, 1, 1.5, 2, 2, 2.5, 2.5, 2.5, 3, 4, 4, 4, 4]
    np.testing.assert_allclose(mean[:, 0].numpy(), expect)
    assert mean.max() < 1000


def test_frame_metrics_over_concatenated_frames_exclude_invalid():
    rng = np.random.default_rng(0)
    true = torch.tensor(rng.uniform(-1, 1, (200, 2)), dtype=torch.float32)
    pred = true * 0.8 + 0.1
    valid = torch.ones(200, dtype=torch.bool)
    valid[:20] = False
    pred[:20] = 50.0                                        # garbage on invalid frames must not matter
    m = frame_metrics(pred, true, valid, ["valence", "arousal"])
    t, p = true[20:, 0].double().numpy(), pred[20:, 0].double().numpy()
    ref = 2 * np.cov(t, p, bias=True)[0, 1] / (t.var() + p.var() + (t.mean() - p.mean()) ** 2)
    assert abs(m["ccc_valence"] - ref) < 1e-9 and m["n_frames"] == 180
    assert abs(m["ccc_mean"] - (m["ccc_valence"] + m["ccc_arousal"]) / 2) < 1e-12
    const = frame_metrics(torch.zeros(200, 2), true, valid, ["valence", "arousal"])
    assert const["ccc_valence"] == 0.0                      # the trivial baseline's CCC


def test_clip_and_class_metrics():
    true = torch.tensor([[0.1, 0.9], [0.4, 0.5], [0.8, 0.2]])
    m = clip_regression_metrics(true * 2, true, ["a", "b"])
    assert abs(m["apcc"] - 1) < 1e-9 and m["n_clips"] == 3
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    c = classification_metrics(torch.full_like(y, 2), y, ["x", "y", "z"])
    assert c["accuracy"] == 0.5 and abs(c["uar"] - 1 / 3) < 1e-12
    assert c["confusion"] == [[0, 0, 2], [0, 0, 1], [0, 0, 3]]
