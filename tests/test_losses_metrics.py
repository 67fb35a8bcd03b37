"""Losses and metrics against numpy / scipy / sklearn and hand examples."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from heads import losses as L
from heads import metrics as M


def _np_ccc(x, y, ddof_cov=0, ddof_var=0, eps=0.0):
    n = len(x)
    cov = ((x - x.mean()) * (y - y.mean())).sum() / (n - ddof_cov)
    return 2 * cov / (x.var(ddof=ddof_var) + y.var(ddof=ddof_var) + (x.mean() - y.mean()) ** 2 + eps)


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 40))
    y = 0.6 * x + rng.normal(scale=0.5, size=(3, 40)) + 0.3
    return x, y


def test_ccc_estimators_match_numpy(pair):
    x, y = pair
    px, py = torch.tensor(x), torch.tensor(y)
    for est, dc, dv in [("population", 0, 0), ("sample", 1, 1), ("reference", 0, 1)]:
        got = L.ccc(px, py, estimator=est, eps=1e-8).numpy()
        want = [_np_ccc(a, b, dc, dv, 1e-8) for a, b in zip(x, y)]
        np.testing.assert_allclose(got, want, rtol=1e-10)


def test_ccc_self_is_one_or_reference_n_minus_1_over_n():
    x = torch.randn(2, 10, dtype=torch.float64)
    torch.testing.assert_close(L.ccc(x, x), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(L.ccc(x, x, estimator="reference"), torch.full((2,), 0.9, dtype=torch.float64))
    with pytest.raises(ValueError):
        L.ccc(x, x, estimator="biased")


def test_ccc_masked_equals_ccc_of_valid_part(pair):
    x, y = pair
    px, py = torch.tensor(x), torch.tensor(y)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[0, 25:] = False
    mask[2, [1, 5, 9]] = False
    got = L.ccc(px, py, mask)
    for i in range(3):
        m = mask[i].numpy()
        assert got[i].item() == pytest.approx(_np_ccc(x[i][m], y[i][m], eps=1e-8), rel=1e-10)


def test_ccc_multi_target_and_loss_gradient():
    torch.manual_seed(0)
    p = torch.randn(2, 30, 2, requires_grad=True)
    t = torch.randn(2, 30, 2)
    c = L.ccc(p, t)
    assert c.shape == (2, 2)
    assert c[1, 0].item() == pytest.approx(L.ccc(p[1:, :, 0], t[1:, :, 0]).item(), rel=1e-6)
    loss = L.ccc_loss(p, t)
    assert loss.item() == pytest.approx((1 - c).mean().item(), rel=1e-6)
    loss.backward()
    assert p.grad.abs().sum() > 0
    assert L.CCCLoss("reference")(p, t).item() == pytest.approx(
        L.ccc_loss(p, t, estimator="reference").item(), rel=1e-6)


def test_ccc_loss_skips_windows_without_valid_frames():
    torch.manual_seed(0)
    p, t = torch.randn(2, 12), torch.randn(2, 12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1] = False
    assert L.ccc_loss(p, t, mask).item() == pytest.approx(1 - L.ccc(p[:1], t[:1]).item(), rel=1e-6)


def test_mse_l1_masked_match_numpy(pair):
    x, y = pair
    mask = np.ones((3, 40), bool)
    mask[1, 30:] = False
    mse = L.mse_loss(torch.tensor(x), torch.tensor(y), torch.tensor(mask)).item()
    l1 = L.l1_loss(torch.tensor(x), torch.tensor(y), torch.tensor(mask)).item()
    assert mse == pytest.approx(((x - y) ** 2)[mask].mean(), rel=1e-12)
    assert l1 == pytest.approx(np.abs(x - y)[mask].mean(), rel=1e-12)
    # mask broadcasts over a trailing target axis
    x3, y3 = torch.tensor(x)[..., None].repeat(1, 1, 2), torch.tensor(y)[..., None].repeat(1, 1, 2)
    assert L.mse_loss(x3, y3, torch.tensor(mask)).item() == pytest.approx(mse, rel=1e-12)


def test_pearson_apcc_match_scipy_and_floor_constant_columns():
    rng = np.random.default_rng(1)
    pred = rng.random((20, 7))
    true = 0.5 * pred + rng.random((20, 7))
    want = [stats.pearsonr(pred[:, k], true[:, k])[0] for k in range(7)]
    np.testing.assert_allclose(L.pearson(torch.tensor(pred), torch.tensor(true)).numpy(), want, rtol=1e-9)
    np.testing.assert_allclose(M.pearson_per_target(torch.tensor(pred), torch.tensor(true)), want, rtol=1e-9)
    assert M.apcc(torch.tensor(pred), torch.tensor(true)) == pytest.approx(np.mean(want), rel=1e-9)
    assert L.apcc_loss(torch.tensor(pred), torch.tensor(true)).item() == pytest.approx(1 - np.mean(want), rel=1e-9)
    const = pred.copy()
    const[:, 3] = 0.25
    r = M.pearson_per_target(torch.tensor(const), torch.tensor(true))
    assert r[3] == 0.0 and all(math.isfinite(v) for v in r)


def test_metric_ccc_matches_numpy_and_honours_mask_and_nan():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=500), rng.normal(size=500) * 0.3 + 0.1
    assert M.ccc(torch.tensor(x), torch.tensor(y)) == pytest.approx(_np_ccc(x, y), rel=1e-10)
    m = np.arange(500) % 3 != 0
    assert M.ccc(torch.tensor(x), torch.tensor(y), torch.tensor(m)) == pytest.approx(_np_ccc(x[m], y[m]), rel=1e-10)
    y_nan = y.copy()
    y_nan[~m] = np.nan
    assert M.ccc(torch.tensor(x), torch.tensor(y_nan)) == pytest.approx(_np_ccc(x[m], y[m]), rel=1e-10)
    assert isinstance(M.ccc(torch.tensor(x), torch.tensor(y)), float)
    # a per-frame mask broadcasts over a target axis (pooled over both columns)
    x2, y2 = np.stack([x, y], 1), np.stack([y, x], 1)
    pooled = _np_ccc(x2[m].ravel(), y2[m].ravel())
    assert M.ccc(torch.tensor(x2), torch.tensor(y2), torch.tensor(m)) == pytest.approx(pooled, rel=1e-10)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 200)
    y[:3] = 4
    logits = rng.normal(size=(200, 6))  # class 5 is predicted but never true
    logits[np.arange(200), y] += rng.normal(1.0, 1.0, 200)
    pred = logits.argmax(1)
    tl, ty = torch.tensor(logits), torch.tensor(y)
    assert M.accuracy(tl, ty) == pytest.approx(skm.accuracy_score(y, pred))
    assert M.weighted_f1(tl, ty) == pytest.approx(skm.f1_score(y, pred, average="weighted", zero_division=0))
    assert M.uar(tl, ty) == pytest.approx(skm.recall_score(y, pred, average="macro", labels=np.unique(y),
                                                           zero_division=0))
    assert M.uar(tl, ty) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert M.confusion_matrix(tl, ty) == skm.confusion_matrix(y, pred, labels=range(6)).tolist()
    assert M.confusion_matrix(torch.tensor(pred), ty, n_classes=7) == skm.confusion_matrix(
        y, pred, labels=range(7)).tolist()
    rec = M.per_class_recall(tl, ty)
    assert math.isnan(rec[5])
    np.testing.assert_allclose(rec[:5], skm.recall_score(y, pred, average=None, labels=range(5)))


# ---------------------------------------------------------------- EP-CE / PCCE

POLARITY = ["pos", "neg", "neu", "neg"]  # class -> polarity
LAMBDAS = {"pos": 0.3, "neg": 0.7, "neu": 0.1}


def _ce(row, y):
    return -row[y] + math.log(sum(math.exp(v) for v in row))


def test_ep_ce_weights_on_a_hand_example():
    logits = [[2.0, 0.0, 0.5, -1.0],   # y=0 pos, pred 0 pos   -> w 1
              [1.5, 0.2, 0.1, 0.0],    # y=1 neg, pred 0 pos   -> w 1.7
              [0.0, 0.3, 0.1, 0.9],    # y=2 neu, pred 3 neg   -> w 1.1
              [0.0, 1.0, 0.2, 0.3],    # y=3 neg, pred 1 neg   -> w 1 (same polarity, wrong class)
              [0.1, 0.2, 3.0, 0.0]]    # y=0 pos, pred 2 neu   -> w 1.3
    y = [0, 1, 2, 3, 0]
    w = [1.0, 1.7, 1.1, 1.0, 1.3]
    want = sum(wi * _ce(r, yi) for wi, r, yi in zip(w, logits, y)) / 5
    z = torch.tensor(logits, requires_grad=True)
    loss = L.ep_ce_loss(z, torch.tensor(y), POLARITY, LAMBDAS)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    per = L.ep_ce_loss(z, torch.tensor(y), POLARITY, LAMBDAS, reduction="none")
    np.testing.assert_allclose(per.detach().numpy(), [wi * _ce(r, yi) for wi, r, yi in zip(w, logits, y)],
                               rtol=1e-6)
    # the weight is a constant: the gradient is that of the weighted CE with w fixed
    loss.backward()
    z2 = torch.tensor(logits, requires_grad=True)
    (torch.tensor(w) * torch.nn.functional.cross_entropy(z2, torch.tensor(y), reduction="none")).mean().backward()
    torch.testing.assert_close(z.grad, z2.grad)
    # the module form and a {class: polarity} mapping agree
    mod = L.EPCELoss(dict(enumerate(POLARITY)), LAMBDAS)
    assert mod(torch.tensor(logits), torch.tensor(y)).item() == pytest.approx(want, rel=1e-6)


def test_ep_ce_rejects_incomplete_maps():
    z, y = torch.randn(2, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError):
        L.ep_ce_loss(z, y, ["pos", "neg", "neu"], 0.5)
    with pytest.raises(ValueError):
        L.ep_ce_loss(z, y, POLARITY, {"pos": 0.5, "neg": 0.5})


def test_pcce_is_two_polarity_ep_ce():
    torch.manual_seed(0)
    pol = [1, 0, 0, 1, 1, 0, 1, 0]  # VideoEmotion-8-like: two polarities
    z, y = torch.randn(16, 8), torch.randint(0, 8, (16,))
    assert L.pcce_loss(z, y, pol, 0.4).item() == pytest.approx(L.ep_ce_loss(z, y, pol, {0: 0.4, 1: 0.4}).item())
    plain = torch.nn.functional.cross_entropy(z, y).item()
    assert L.pcce_loss(z, y, pol, 0.4).item() > plain  # some predictions cross polarity here
    with pytest.raises(ValueError):
        L.pcce_loss(torch.randn(2, 4), torch.tensor([0, 1]), POLARITY)
