"""Loading published-layout state dicts into our heads gives identical outputs.

The reference-layout modules below are written from the specs' naming and computation
(abaw2.md, eri.md), independently of heads/: old-style weight norm (``weight_g``/``weight_v``),
``network.{i}`` blocks with the duplicate ``net`` Sequential, fusion ``encoder*``/``ln``/
``regressor``; ERI ``rnn``/``reg_token``/``transformer.layers.{i}.{0,1}.{norm,fn}``/``head``.
"""
import math
import warnings

import pytest
import torch
import torch.nn as nn

from heads.compat import convert_state_dict, load_reference
from heads.eri import ERIModel
from heads.lfan import LeaderFollower

# ------------------------------------------------------------------ abaw2 reference layout


def _old_weight_norm(conv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pre-parametrization API is deprecated
        return nn.utils.weight_norm(conv)


class RefBlock(nn.Module):
    def __init__(self, cin, cout, k, d):
        super().__init__()
        pad = (k - 1) * d
        self.pad = pad
        self.conv1 = _old_weight_norm(nn.Conv1d(cin, cout, k, padding=pad, dilation=d))
        self.conv2 = _old_weight_norm(nn.Conv1d(cout, cout, k, padding=pad, dilation=d))
        self.net = nn.Sequential(self.conv1, nn.LeakyReLU(), self.conv2)  # duplicate keys, as published
        self.downsample = nn.Conv1d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        y = nn.functional.leaky_relu(self.conv1(x)[..., : -self.pad], 0.01)
        y = nn.functional.leaky_relu(self.conv2(y)[..., : -self.pad], 0.01)
        res = x if self.downsample is None else self.downsample(x)
        return nn.functional.leaky_relu(y + res, 0.01)


class RefTCN(nn.Module):
    def __init__(self, cin, chans, k):
        super().__init__()
        dims = [cin] + chans
        self.network = nn.Sequential(*[RefBlock(dims[i], dims[i + 1], k, 2 ** i) for i in range(len(chans))])

    def forward(self, x):  # [B, C, T]
        return self.network(x)


class RefLFAN(nn.Module):
    """Three branches, quirks included: audio q/v from the audio key, scores K Q^T, no tanh."""

    def __init__(self, dv=12, d1=9, d2=5, cv=(8, 8), ca=(4, 4), k=3):
        super().__init__()
        self.temporal = RefTCN(dv, list(cv), k)
        self.temporal1 = RefTCN(d1, list(ca), k)
        self.temporal2 = RefTCN(d2, list(ca), k)
        a = ca[-1]
        self.a = a
        self.encoder1, self.encoder2, self.encoder3 = nn.Linear(cv[-1], a), nn.Linear(a, a), nn.Linear(a, a)
        self.encoderQ1, self.encoderQ2, self.encoderQ3 = nn.Linear(cv[-1], a), nn.Linear(a, a), nn.Linear(a, a)
        self.encoderV1, self.encoderV2, self.encoderV3 = nn.Linear(cv[-1], a), nn.Linear(a, a), nn.Linear(a, a)
        self.ln = nn.LayerNorm([3, a])
        self.regressor = nn.Linear(cv[-1] + 3 * a, 1)

    def forward(self, frames, audio1, mfcc):
        x = self.temporal(frames.transpose(1, 2)).transpose(1, 2)
        x1 = self.temporal1(audio1.transpose(1, 2)).transpose(1, 2)
        x2 = self.temporal2(mfcc.transpose(1, 2)).transpose(1, 2)
        k1, k2, k3 = self.encoder1(x), self.encoder2(x1), self.encoder3(x2)
        q = torch.stack([self.encoderQ1(x), self.encoderQ2(k2), self.encoderQ3(k3)], dim=2)
        v = torch.stack([self.encoderV1(x), self.encoderV2(k2), self.encoderV3(k3)], dim=2)
        kk = torch.stack([k1, k2, k3], dim=2)
        s = torch.softmax(torch.matmul(kk, q.transpose(2, 3)) / math.sqrt(self.a), dim=-1)
        z = self.ln(torch.matmul(s, v) + v)
        b, t = z.shape[:2]
        return self.regressor(torch.cat([x, z.reshape(b, t, -1)], dim=-1))


def _randomize(module, scale=0.3):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, scale)


def test_abaw2_reference_checkpoint_loads_and_matches():
    ref = RefLFAN().eval()
    _randomize(ref)
    sd = ref.state_dict()
    assert "temporal.network.0.conv1.weight_g" in sd and "temporal.network.0.net.0.weight_v" in sd
    model = load_reference("abaw2", sd).eval()
    assert isinstance(model, LeaderFollower) and model.compat == "reference"
    torch.manual_seed(2)
    frames, a128, mfcc = torch.randn(2, 30, 12), torch.randn(2, 30, 9), torch.randn(2, 30, 5)
    want = ref(frames, a128, mfcc)
    got = model(frames, [a128, mfcc])  # documented order: audio[0] = temporal1, audio[1] = temporal2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    # "ours" on the same weights computes something else (the quirks matter)
    config, ours_sd = convert_state_dict("abaw2", sd)
    config["compat"] = "ours"
    ours = LeaderFollower(**config).eval()
    ours.load_state_dict(ours_sd)
    assert (ours(frames, [a128, mfcc]) - want).abs().max() > 1e-4


def test_abaw2_converter_reads_dims_and_accepts_prefixed_and_parametrized_keys():
    ref = RefLFAN(dv=7, d1=6, d2=3, cv=(8, 8, 8), ca=(5, 4, 4), k=5)
    _randomize(ref)
    sd = {"module." + k: v for k, v in ref.state_dict().items()}
    config, _ = convert_state_dict("abaw2", sd)
    assert config["visual_dim"] == 7 and config["audio_dims"] == [6, 3]
    assert config["visual_channels"] == [8, 8, 8] and config["audio_channels"] == [[5, 4, 4], [5, 4, 4]]
    assert config["kernel_size"] == 5 and config["attn_dim"] == 4 and config["n_outputs"] == 1
    # a checkpoint of our own layout's naming of weight norm also converts
    renamed = {k.replace("weight_g", "parametrizations.weight.original0")
                .replace("weight_v", "parametrizations.weight.original1"): v for k, v in sd.items()}
    x = (torch.randn(1, 20, 7), torch.randn(1, 20, 6), torch.randn(1, 20, 3))
    a = load_reference("abaw2", sd).eval()(x[0], [x[1], x[2]])
    b = load_reference("abaw2", renamed).eval()(x[0], [x[1], x[2]])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, ref.eval()(*x), atol=1e-5, rtol=1e-5)


def test_abaw2_converter_fails_loudly_on_missing_or_extra_keys():
    sd = RefLFAN().state_dict()
    broken = dict(sd)
    del broken["encoderV2.bias"]
    with pytest.raises(RuntimeError):
        load_reference("abaw2", broken)
    extra = dict(sd, **{"mystery.weight": torch.zeros(1)})
    with pytest.raises(KeyError):
        load_reference("abaw2", extra)
    with pytest.raises(ValueError):
        load_reference("abaw3", sd)


# ------------------------------------------------------------------ eri reference layout


class RefPreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class RefAttn(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.2))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).permute(0, 2, 1, 3) for t in self.to_qkv(x).chunk(3, -1))
        a = torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1]), dim=-1)
        out = torch.einsum("bhij,bhjd->bhid", a, v).permute(0, 2, 1, 3).reshape(b, n, -1)
        return self.to_out(out)


class RefFF(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.2), nn.Linear(hidden, dim),
                                 nn.Dropout(0.2))

    def forward(self, x):
        return self.net(x)


class RefTransformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleList([RefPreNorm(dim, RefAttn(dim, heads, dim_head)),
                                                   RefPreNorm(dim, RefFF(dim, mlp))]) for _ in range(depth))

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class RefERI(nn.Module):
    """One clip at a time, as the reference ran it."""

    def __init__(self, dv=11, da=6, hidden=16, depth=2, heads=2, dim_head=8, mlp=24):
        super().__init__()
        self.rnn = nn.GRU(dv, hidden, 2, batch_first=True)
        self.reg_token = nn.Parameter(torch.randn(1, 1, hidden))
        self.transformer = RefTransformer(hidden, depth, heads, dim_head, mlp)
        self.rnn_aud = nn.GRU(da, hidden, 2, batch_first=True)
        self.reg_token_aud = nn.Parameter(torch.randn(1, 1, hidden))
        self.transformer_aud = RefTransformer(hidden, depth, heads, dim_head, mlp)
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden, bias=False), nn.Dropout(0.3),
                                  nn.Linear(hidden, 7, bias=False))

    def forward(self, video, audio):
        hv, _ = self.rnn(video)
        hv = self.transformer(torch.cat([self.reg_token, hv], 1))[:, 0]
        ha, _ = self.rnn_aud(audio)
        ha = self.transformer_aud(torch.cat([self.reg_token_aud, ha], 1))[:, 0]
        return torch.sigmoid(self.head(torch.cat([hv, ha], -1)))


def test_eri_reference_checkpoint_loads_and_matches_batched():
    ref = RefERI().eval()
    _randomize(ref, 0.2)
    sd = ref.state_dict()
    assert "transformer_aud.layers.1.1.fn.net.3.weight" in sd and "head.2.weight" in sd
    model = load_reference("eri", sd, heads=2).eval()
    assert isinstance(model, ERIModel)
    assert model.video.gru.input_size == 11 and model.audio.gru.input_size == 6
    torch.manual_seed(3)
    videos = [torch.randn(n, 11) for n in (8, 13, 5)]
    audios = [torch.randn(n, 6) for n in (20, 7, 11)]
    want = torch.cat([ref(v[None], a[None]) for v, a in zip(videos, audios)])
    one_by_one = torch.cat([model(v[None], a[None]) for v, a in zip(videos, audios)])
    torch.testing.assert_close(one_by_one, want, atol=1e-5, rtol=1e-5)

    def pad(xs):
        t = max(len(x) for x in xs)
        out = torch.randn(len(xs), t, xs[0].shape[1]) * 10
        m = torch.zeros(len(xs), t, dtype=torch.bool)
        for i, x in enumerate(xs):
            out[i, : len(x)], m[i, : len(x)] = x, True
        return out, m

    (xv, mv), (xa, ma) = pad(videos), pad(audios)
    torch.testing.assert_close(model(xv, xa, mv, ma), want, atol=1e-5, rtol=1e-5)


def test_eri_wrong_head_split_changes_outputs():
    ref = RefERI().eval()
    _randomize(ref, 0.2)
    v, a = torch.randn(1, 6, 11), torch.randn(1, 9, 6)
    good = load_reference("eri", ref.state_dict(), heads=2).eval()(v, a)
    bad = load_reference("eri", ref.state_dict(), heads=4).eval()(v, a)  # 16 = 4 x 4 also fits the shapes
    assert (good - bad).abs().max() > 1e-5
    with pytest.raises(ValueError):
        load_reference("eri", ref.state_dict(), heads=3)


# ------------------------------------------------------------------ a full abaw2 checkpoint


class RefIRBlock(nn.Module):
    """IR block as insightface publishes it: BN, 3x3, BN, PReLU, 3x3 (stride), BN, + shortcut."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=stride, padding=1, bias=False)
        self.prelu = nn.PReLU(cout)
        self.downsample = None
        if stride > 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn1(x)
        out = self.prelu(self.bn2(self.conv1(out)))
        out = self.bn3(self.conv2(out))
        return out + (self.downsample(x) if self.downsample is not None else x)


class RefIR50(nn.Module):
    """The reference's `spatial` face CNN on 48x48 crops (3x3 grid before fc), 512-d."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.prelu = nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), \
            nn.PReLU(64)
        widths, depth, cin = (64, 128, 256, 512), (3, 4, 14, 3), 64
        for n, (w, d) in enumerate(zip(widths, depth), start=1):
            self.add_module(f"layer{n}", nn.Sequential(*[RefIRBlock(cin if j == 0 else w, w, 2 if j == 0 else 1)
                                                        for j in range(d)]))
            cin = w
        self.bn2, self.dropout = nn.BatchNorm2d(512), nn.Dropout(0.0)
        self.fc, self.features = nn.Linear(512 * 3 * 3, 512), nn.BatchNorm1d(512)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        for n in range(1, 5):
            x = getattr(self, f"layer{n}")(x)
        return self.features(self.fc(torch.flatten(self.bn2(x), 1)))


class RefFullABAW2(RefLFAN):
    """What the published module's state_dict() holds: the head, gn1/gn2 and spatial."""

    def __init__(self):
        super().__init__()
        self.gn1, self.gn2 = nn.GroupNorm(8, 32), nn.GroupNorm(8, 32)
        self.spatial = RefIR50()


def test_abaw2_full_checkpoint_gn_ignored_spatial_becomes_backbone_weights(tmp_path, caplog):
    """gn1/gn2 are dropped with a note, spatial.* becomes an ir50 weights file that the
    backbone extractor loads: head outputs and frame embeddings equal the reference's."""
    import logging

    import numpy as np

    from featurize import registry

    ref = RefFullABAW2().eval()
    _randomize(ref, 0.05)
    with torch.no_grad():                # BN running stats away from 0/1, so eval BN is exercised
        for m in ref.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    sd = ref.state_dict()
    assert {k.split(".")[0] for k in sd} >= {"gn1", "gn2", "spatial", "temporal", "regressor"}
    with pytest.raises(KeyError):        # the head converter alone still refuses strangers
        load_reference("abaw2", dict(sd, **{"mystery.weight": torch.zeros(1)}))
    out = tmp_path / "ir50.pt"
    with caplog.at_level(logging.INFO, logger="heads.compat"):
        model = load_reference("abaw2", sd, spatial_out=out).eval()
    notes = caplog.text
    assert "gn1.* tensors ignored" in notes and "gn2.* tensors ignored" in notes and str(out) in notes
    torch.manual_seed(2)
    frames, a128, mfcc = torch.randn(2, 30, 12), torch.randn(2, 30, 9), torch.randn(2, 30, 5)
    with torch.no_grad():
        torch.testing.assert_close(model(frames, [a128, mfcc]), ref(frames, a128, mfcc), atol=1e-5, rtol=1e-5)

    # the backbone extractor on the written file = the reference's spatial on the same crops
    cfg = registry.parse_config("backbone", {"weights": str(out), "arch": "ir50", "size": 48,
                                             "mean": "0.5,0.5,0.5", "std": "0.5,0.5,0.5", "device": "cpu"})
    ext = registry.get("backbone")(cfg)
    crops = np.random.default_rng(0).integers(0, 255, (3, 48, 48, 3), dtype=np.uint8)
    got = ext.embed(crops)
    x = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        want = ref.spatial(x).numpy()
    assert got.shape == (3, 512)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

    # without spatial_out the backbone is dropped with a note, the head is the same
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="heads.compat"):
        again = load_reference("abaw2", {"module." + k: v for k, v in sd.items()}).eval()
    assert "spatial.* tensors ignored" in caplog.text and "spatial_out" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(again(frames, [a128, mfcc]), ref(frames, a128, mfcc), atol=1e-5, rtol=1e-5)


def test_eri_full_checkpoint_is_the_head_only():
    """The published ERI module holds nothing but the head's names (specs/eri.md): a
    DataParallel-prefixed full state dict converts whole, and no key is set aside."""
    from heads.compat import split_reference

    ref = RefERI().eval()
    _randomize(ref, 0.2)
    sd = {"module." + k: v for k, v in ref.state_dict().items()}
    head, parts = split_reference("eri", sd)
    assert parts == {} and len(head) == len(sd)
    v, a = torch.randn(1, 6, 11), torch.randn(1, 9, 6)
    with torch.no_grad():
        torch.testing.assert_close(load_reference("eri", sd, heads=2).eval()(v, a), ref(v, a),
                                   atol=1e-5, rtol=1e-5)
