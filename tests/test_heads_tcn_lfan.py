"""TCN, leader-follower fusion and the single-modality sequence classifier (CPU, tiny dims)."""
import math

import pytest
import torch

from heads.classifier import SequenceClassifier
from heads.lfan import LeaderFollower, LeaderFollowerFusion
from heads.tcn import TemporalConvNet, receptive_field


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("in_dim, ch, expected", [(512, 128, 968_832), (39, 32, 43_872), (128, 32, 60_960)])
def test_tcn_parameter_counts_match_abaw2(in_dim, ch, expected):
    assert _n_params(TemporalConvNet(in_dim, [ch] * 4, kernel_size=5)) == expected


def test_tcn_state_dict_has_weight_norm_and_downsample_only_where_needed():
    keys = set(TemporalConvNet(6, [4, 4], kernel_size=5).state_dict())
    assert "network.0.conv1.parametrizations.weight.original0" in keys  # g
    assert "network.0.conv1.parametrizations.weight.original1" in keys  # v
    assert "network.0.downsample.weight" in keys
    assert not any(k.startswith("network.1.downsample") for k in keys)


@pytest.mark.parametrize("t", [200, 50])
def test_tcn_receptive_field_is_121_frames_empirically(t):
    torch.manual_seed(0)
    tcn = TemporalConvNet(3, [4] * 4, kernel_size=5, dropout=0.0).double().eval()
    assert tcn.receptive_field == receptive_field(5, 4) == 121
    x = torch.randn(1, 300, 3, dtype=torch.float64, requires_grad=True)
    tcn(x)[0, t].sum().backward()
    nonzero = (x.grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert nonzero == list(range(max(0, t - 120), t + 1))


def test_tcn_is_causal_so_right_padding_does_not_change_valid_frames():
    torch.manual_seed(0)
    tcn = TemporalConvNet(5, [6, 6], kernel_size=5, dropout=0.0).eval()
    x = torch.randn(2, 40, 5)
    padded = torch.cat([x, 100 * torch.randn(2, 25, 5)], dim=1)
    torch.testing.assert_close(tcn(padded)[:, :40], tcn(x))


def test_tcn_channel_dropout_drops_whole_channels():
    torch.manual_seed(0)
    block = TemporalConvNet(4, [8], kernel_size=3, dropout=0.5).network[0].train()
    y = block.drop1(torch.ones(2, 8, 30))
    per_channel = y.reshape(16, 30)
    # each (sample, channel) row is all zero or all 2.0
    assert all(bool((r == 0).all() or (r == 2.0).all()) for r in per_channel)
    assert (per_channel == 0).any()
    with pytest.raises(ValueError):
        TemporalConvNet(4, [8], dropout_mode="nope")


def _lf(compat="ours", n_outputs=1, **kw):
    return LeaderFollower(10, [7, 5], visual_channels=[8, 8], audio_channels=[4, 4], kernel_size=3,
                          dropout=0.0, n_outputs=n_outputs, compat=compat, **kw)


@pytest.mark.parametrize("compat", ["ours", "reference"])
@pytest.mark.parametrize("n_outputs", [1, 2])
def test_leader_follower_shapes_and_gradients(compat, n_outputs):
    torch.manual_seed(0)
    model = _lf(compat, n_outputs)
    v, a1, a2 = torch.randn(3, 25, 10), torch.randn(3, 25, 7), torch.randn(3, 25, 5)
    out = model(v, [a1, a2])
    assert out.shape == (3, 25, n_outputs)
    out.pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_leader_follower_rejects_wrong_branch_count_and_tanh_in_reference():
    model = _lf()
    with pytest.raises(ValueError):
        model(torch.randn(1, 5, 10), [torch.randn(1, 5, 7)])
    with pytest.raises(ValueError):
        _lf("reference", tanh_output=True)


def test_leader_follower_tanh_output_bounds():
    torch.manual_seed(0)
    model = _lf(tanh_output=True)
    with torch.no_grad():
        model.regressor.bias.fill_(50.0)
    out = model(torch.randn(1, 9, 10), [torch.randn(1, 9, 7), torch.randn(1, 9, 5)])
    assert out.max() <= 1.0 and out.min() > 0.99


# ---------------------------------------------------------------- hand-checked fusion

def _matvec(w, b, x):
    return [sum(wi * xi for wi, xi in zip(row, x)) + bi for row, bi in zip(w, b)]


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [x / sum(e) for x in e]


def _fusion_by_hand(W, h_v, h_a, compat):
    """The fusion for one time step in plain Python floats."""
    d = 2
    k = [_matvec(*W["k"][0], h_v)] + [_matvec(*W["k"][j + 1], h) for j, h in enumerate(h_a)]
    src = [k[j + 1] if compat == "reference" else h for j, h in enumerate(h_a)]
    q = [_matvec(*W["q"][0], h_v)] + [_matvec(*W["q"][j + 1], s) for j, s in enumerate(src)]
    v = [_matvec(*W["v"][0], h_v)] + [_matvec(*W["v"][j + 1], s) for j, s in enumerate(src)]
    n = len(k)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    if compat == "reference":
        scores = [[dot(k[i], q[j]) / math.sqrt(d) for j in range(n)] for i in range(n)]  # K Q^T
    else:
        scores = [[dot(q[i], k[j]) / math.sqrt(d) for j in range(n)] for i in range(n)]  # Q K^T
    att = [_softmax(row) for row in scores]
    z = [[sum(att[i][j] * v[j][c] for j in range(n)) + v[i][c] for c in range(d)] for i in range(n)]
    flat = [x for row in z for x in row]
    mu = sum(flat) / len(flat)
    var = sum((x - mu) ** 2 for x in flat) / len(flat)
    gamma, beta = W["ln"]
    normed = [(x - mu) / math.sqrt(var + 1e-5) * g + b for x, g, b in zip(flat, gamma, beta)]
    return list(h_v) + normed


def _hand_weights():
    return {
        "k": [([[1.0, 0.5], [-0.5, 1.0]], [0.1, 0.0]),
              ([[0.3, -1.0], [1.2, 0.2]], [0.0, -0.2]),
              ([[-0.7, 0.4], [0.9, 0.6]], [0.05, 0.3])],
        "q": [([[0.2, 1.1], [-1.0, 0.3]], [0.0, 0.1]),
              ([[1.5, -0.2], [0.4, 0.8]], [-0.1, 0.0]),
              ([[0.6, 0.9], [-0.3, -1.2]], [0.2, -0.05])],
        "v": [([[0.5, 0.0], [0.0, -0.5]], [0.3, 0.1]),
              ([[-1.0, 0.7], [0.25, 0.5]], [0.0, 0.2]),
              ([[0.8, -0.6], [1.0, 0.1]], [-0.3, 0.0])],
        "ln": ([1.0, 0.5, 2.0, 1.5, 0.8, 1.2], [0.0, 0.1, -0.2, 0.3, 0.0, -0.1]),
    }


def _load_hand(fusion, W):
    with torch.no_grad():
        for name in ("k", "q", "v"):
            layers = {"k": fusion.key, "q": fusion.query, "v": fusion.value}[name]
            for lin, (w, b) in zip(layers, W[name]):
                lin.weight.copy_(torch.tensor(w))
                lin.bias.copy_(torch.tensor(b))
        fusion.norm.weight.copy_(torch.tensor(W["ln"][0]).view(3, 2))
        fusion.norm.bias.copy_(torch.tensor(W["ln"][1]).view(3, 2))


@pytest.mark.parametrize("compat", ["reference", "ours"])
def test_fusion_matches_hand_computation(compat):
    W = _hand_weights()
    fusion = LeaderFollowerFusion(2, [2, 2], attn_dim=2, compat=compat)
    _load_hand(fusion, W)
    h_v, h_a1, h_a2 = [0.4, -1.3], [2.0, 0.5], [-0.6, 1.1]
    got = fusion(torch.tensor([[h_v]]), [torch.tensor([[h_a1]]), torch.tensor([[h_a2]])])[0, 0]
    want = torch.tensor(_fusion_by_hand(W, h_v, [h_a1, h_a2], compat))
    assert got.shape == (2 + 3 * 2,)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_reference_and_ours_fusion_differ_on_the_same_weights():
    W = _hand_weights()
    outs = []
    for compat in ("reference", "ours"):
        fusion = LeaderFollowerFusion(2, [2, 2], attn_dim=2, compat=compat)
        _load_hand(fusion, W)
        outs.append(fusion(torch.tensor([[[0.4, -1.3]]]), [torch.tensor([[[2.0, 0.5]]]),
                                                         torch.tensor([[[-0.6, 1.1]]])]))
    assert (outs[0] - outs[1]).abs().max() > 1e-3


# ---------------------------------------------------------------- sequence classifier

@pytest.mark.parametrize("encoder,pool", [("tcn", "mean"), ("transformer", "mean"), ("conv", "meanstd"),
                                          ("tcn", "meanstd")])
def test_sequence_classifier_padding_invariant_and_gradients(encoder, pool):
    torch.manual_seed(0)
    model = SequenceClassifier(6, 4, encoder=encoder, hidden=8, depth=2, heads=2, dropout=0.0, pool=pool)
    if encoder == "conv":  # give BatchNorm non-trivial running statistics before eval
        model.train()
        model(torch.randn(4, 11, 6), torch.ones(4, 11, dtype=torch.bool))
    model.eval()
    clips = [torch.randn(1, n, 6) for n in (11, 5, 8)]
    x = 50 * torch.randn(3, 11, 6)  # junk in the padding
    mask = torch.zeros(3, 11, dtype=torch.bool)
    for i, c in enumerate(clips):
        x[i, : c.shape[1]] = c[0]
        mask[i, : c.shape[1]] = True
    batched = model(x, mask)
    assert batched.shape == (3, 4)
    single = torch.cat([model(c) for c in clips])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    model.train()
    torch.nn.functional.cross_entropy(model(x, mask), torch.tensor([0, 1, 3])).backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError):
        SequenceClassifier(6, 4, encoder="lstm")
