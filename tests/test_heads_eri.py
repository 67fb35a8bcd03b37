"""ERI model: shapes, padding invariance, masks with holes, gradients, options (CPU, tiny dims)."""
import pytest
import torch

from heads.eri import ERIModel
from heads.layers import compact_valid

TINY = dict(hidden=16, depth=2, heads=2, dim_head=8, mlp_dim=24)


def _pad(clips, junk=30.0):
    t = max(c.shape[0] for c in clips)
    x = junk * torch.randn(len(clips), t, clips[0].shape[1])
    mask = torch.zeros(len(clips), t, dtype=torch.bool)
    for i, c in enumerate(clips):
        x[i, : c.shape[0]] = c
        mask[i, : c.shape[0]] = True
    return x, mask


def test_eri_shapes_and_range():
    torch.manual_seed(0)
    model = ERIModel(10, 6, **TINY).eval()
    out = model(torch.randn(3, 12, 10), torch.randn(3, 20, 6))
    assert out.shape == (3, 7)
    assert bool(((out > 0) & (out < 1)).all())


def test_eri_default_layout_matches_the_published_sizes():
    model = ERIModel(547, 40)
    blk = model.video.encoder.blocks[0]
    assert model.video.gru.hidden_size == 256 and model.video.gru.num_layers == 2
    assert len(model.video.encoder.blocks) == 4
    assert blk.attn.qkv.weight.shape == (768, 256) and blk.attn.qkv.bias is None
    assert blk.mlp.fc1.weight.shape == (256, 256)
    assert model.video.token.shape == (1, 1, 256)
    assert model.head[0].weight.shape == (256, 512) and model.head[0].bias is None
    assert model.head[2].weight.shape == (7, 256) and model.head[2].bias is None
    assert model.head[1].p == 0.3


def test_eri_padded_batch_equals_one_clip_at_a_time():
    torch.manual_seed(0)
    model = ERIModel(10, 6, **TINY).eval()
    lengths_v, lengths_a = (9, 4, 13), (17, 25, 6)
    videos = [torch.randn(n, 10) for n in lengths_v]
    audios = [torch.randn(n, 6) for n in lengths_a]
    xv, mv = _pad(videos)
    xa, ma = _pad(audios)
    batched = model(xv, xa, mv, ma)
    single = torch.cat([model(v[None], a[None]) for v, a in zip(videos, audios)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_eri_mask_with_holes_equals_clip_without_those_frames():
    torch.manual_seed(0)
    model = ERIModel(10, 6, **TINY).eval()
    v, a = torch.randn(1, 12, 10), torch.randn(1, 9, 6)
    keep = torch.ones(1, 12, dtype=torch.bool)
    keep[0, [2, 3, 7]] = False
    out = model(v, a, video_mask=keep)
    ref = model(v[:, keep[0]], a)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert (model(v, a) - out).abs().max() > 1e-6  # the holes did matter


def test_compact_valid_moves_valid_steps_to_front_in_order():
    x = torch.arange(6.0).view(1, 6, 1)
    m = torch.tensor([[False, True, True, False, True, False]])
    y, n = compact_valid(x, m)
    assert n.tolist() == [3]
    assert y[0, :3, 0].tolist() == [1.0, 2.0, 4.0]


def test_eri_clip_with_no_valid_audio_is_finite():
    torch.manual_seed(0)
    model = ERIModel(10, 6, **TINY).eval()
    out = model(torch.randn(2, 5, 10), torch.randn(2, 4, 6), audio_mask=torch.tensor([[True] * 4, [False] * 4]))
    assert torch.isfinite(out).all()


def test_eri_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = ERIModel(10, 6, **TINY).train()
    xv, mv = _pad([torch.randn(n, 10) for n in (7, 4)])
    xa, ma = _pad([torch.randn(n, 6) for n in (5, 9)])
    loss = (model(xv, xa, mv, ma) - torch.rand(2, 7)).pow(2).mean()
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_eri_local_projection_and_single_branch_options():
    torch.manual_seed(0)
    model = ERIModel(12, 6, local_dim=5, local_proj=3, **TINY).eval()
    assert model.video.gru.input_size == 12 - 5 + 3
    v, a = torch.randn(2, 8, 12), torch.randn(2, 6, 6)
    out = model(v, a)
    assert out.shape == (2, 7)
    v2 = v.clone()
    v2[..., -5:] += 1.0  # local columns go through the projection
    assert (model(v2, a) - out).abs().max() > 1e-6

    video_only = ERIModel(12, None, n_outputs=3, **TINY).eval()
    assert video_only.head[0].in_features == 16
    assert video_only(v, None).shape == (2, 3)
    audio_only = ERIModel(None, 6, **TINY).eval()
    assert audio_only(None, a).shape == (2, 7)
    with pytest.raises(ValueError):
        ERIModel(None, None)
