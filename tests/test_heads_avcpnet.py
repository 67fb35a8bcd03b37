"""AV-CPNet fusion on segment tokens: shapes, logit split, masks, band restriction, gradients."""
import pytest
import torch

from heads.avcpnet import AVCPNet, GatedMerge
from heads.layers import CrossAttention, attention_mask, band_mask

TINY = dict(d_model=16, heads=2, dropout=0.0)


@pytest.mark.parametrize("s", [16, 5, 1])
def test_avcpnet_shapes_for_any_segment_count(s):
    torch.manual_seed(0)
    model = AVCPNet(10, 6, n_classes=6, n_segments=16, **TINY).eval()
    assert model.n_levels == 4
    logits, la, lv = model(torch.randn(3, s, 10), torch.randn(3, s, 6))
    assert logits.shape == la.shape == lv.shape == (3, 6)
    assert torch.isfinite(logits).all()


def test_avcpnet_partial_logits_slice_the_one_classifier():
    torch.manual_seed(0)
    model = AVCPNet(10, 6, n_classes=4, **TINY).eval()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    a, v = torch.randn(2, 16), torch.randn(2, 16)
    logits, la, lv = model.split_logits(a, v)
    w, b = model.classifier.weight, model.classifier.bias
    torch.testing.assert_close(la, a @ w[:, :16].T + b / 2)
    torch.testing.assert_close(lv, v @ w[:, 16:].T + b / 2)
    torch.testing.assert_close(logits, la + lv)


def test_avcpnet_padded_segments_change_nothing():
    torch.manual_seed(0)
    model = AVCPNet(10, 6, n_classes=5, **TINY).eval()
    v, a = torch.randn(1, 6, 10), torch.randn(1, 6, 6)
    alone = model(v, a)
    pv = torch.cat([v, 40 * torch.randn(1, 4, 10)], 1)
    pa = torch.cat([a, 40 * torch.randn(1, 4, 6)], 1)
    mask = torch.tensor([[True] * 6 + [False] * 4])
    padded = model(pv, pa, mask)
    for x, y in zip(alone, padded):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    unmasked = model(pv, pa)
    assert (unmasked[0] - alone[0]).abs().max() > 1e-4  # the mask did the work


def test_band_mask_restricts_cross_attention_to_neighbours():
    torch.manual_seed(0)
    assert band_mask(4, 4, 1).int().tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]
    attn = CrossAttention(8, heads=2)
    x = torch.randn(1, 10, 8)
    ctx = torch.randn(1, 10, 8, requires_grad=True)
    out = attn(x, ctx, attention_mask(None, 10, band_mask(10, 10, 2)))
    out[0, 4].sum().backward()
    seen = (ctx.grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert seen == [2, 3, 4, 5, 6]


def test_gated_merge_formula():
    torch.manual_seed(0)
    g = GatedMerge(4)
    s, c = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    sc = torch.cat([s, c], -1)
    want = torch.sigmoid(g.gate_self(sc)) * s + torch.sigmoid(g.gate_cross(sc)) * c
    torch.testing.assert_close(g(s, c), want)


def test_avcpnet_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = AVCPNet(10, 6, n_classes=3, n_segments=8, **TINY).train()
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    y = torch.tensor([0, 2])
    ce = torch.nn.functional.cross_entropy
    logits, la, lv = model(torch.randn(2, 8, 10), torch.randn(2, 8, 6), mask)
    (ce(logits, y) + ce(la, y) + ce(lv, y)).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_avcpnet_rejects_mismatched_segments():
    model = AVCPNet(10, 6, n_classes=3, **TINY)
    with pytest.raises(ValueError):
        model(torch.randn(1, 8, 10), torch.randn(1, 7, 6))
