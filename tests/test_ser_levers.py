"""The speech-emotion levers: SpecAugment-style masking, mixup, attention / multi-scale
pooling, the 2-D CNN front end, and the optional openSMILE LLD extractor (real EmoDB audio)."""
import numpy as np
import pytest
import torch

from heads.augment import mixup, mixup_loss, spec_mask
from heads.classifier import SequenceClassifier, masked_stats


def _batch():
    torch.manual_seed(0)
    x = torch.randn(6, 50, 20) + 3.0          # no natural zeros
    mask = torch.ones(6, 50, dtype=torch.bool)
    mask[0, 20:] = False
    return x, mask


def test_spec_mask_zeroes_spans_inside_the_valid_part_and_only_frequency_dims():
    x, mask = _batch()
    torch.manual_seed(1)
    out = spec_mask(x, mask, time_masks=2, time_width=6, freq_masks=2, freq_width=4, freq_dims=12)
    zero = out == 0
    assert torch.equal(out[~zero], x[~zero]) and not torch.equal(out, x)
    # a zeroed band lies in the first 12 dims; any zero beyond them comes from a whole time span
    full_steps = zero.all(-1)
    assert not (zero[..., 12:] & ~full_steps[..., None]).any()
    assert not full_steps[0, 20:].any()      # spans fall inside row 0's 20 valid steps
    assert full_steps.sum(1).le(2 * 6).all() and full_steps.any()
    assert torch.equal(spec_mask(x, mask, 0, 0, 0, 0), x)


def test_mixup_blends_rows_and_labels_with_one_lambda():
    x, mask = _batch()
    torch.manual_seed(2)
    mx, mm, perm, lam = mixup(x, mask, 0.4)
    assert 0.5 <= lam <= 1.0
    torch.testing.assert_close(mx, lam * x + (1 - lam) * x[perm])
    assert torch.equal(mm, mask | mask[perm])
    logits, y = torch.randn(6, 7), torch.arange(6)
    ce = torch.nn.functional.cross_entropy
    got = mixup_loss(ce, logits, y, perm, lam)
    assert got == pytest.approx(float(lam * ce(logits, y) + (1 - lam) * ce(logits, y[perm])))


@pytest.mark.parametrize("kw", [dict(pool="attn"), dict(pool="meanstd", multiscale=True),
                                dict(pool="attn", multiscale=True, input_stats=True),
                                dict(pool="meanstd", input_stats=["mean", "std", "p10", "p90"]),
                                dict(pool="meanstd", mel_bands=16, cnn_channels=4, cnn_blocks=2)])
def test_classifier_levers_ignore_padding(kw):
    x, mask = _batch()
    torch.manual_seed(0)
    net = SequenceClassifier(20, 7, encoder="conv", hidden=16, depth=3, **kw).eval()
    y = net(x, mask)
    x2 = x.clone()
    x2[0, 20:] = 99.0                       # garbage in the padding of row 0
    torch.testing.assert_close(net(x2, mask), y)
    torch.testing.assert_close(net(x[:1, :20], mask[:1, :20]), y[:1], atol=1e-5, rtol=1e-4)
    y.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_input_statistics_are_numpys_over_the_valid_steps():
    x, mask = _batch()
    mask[1, 7:] = False
    got = masked_stats(x, mask, ("p90", "mean", "std", "p10", "p50"))
    for i, n in ((0, 20), (1, 7), (2, 50)):
        v = x[i, :n].double().numpy()
        want = np.concatenate([np.percentile(v, 90, axis=0), v.mean(0), v.std(0),
                               *np.percentile(v, [10, 50], axis=0)])
        np.testing.assert_allclose(got[i].numpy(), want, rtol=1e-4, atol=1e-4)
    mask[3] = False                                    # no valid step: zeros, not NaN
    assert torch.isfinite(masked_stats(x, mask, ("mean", "p10"))).all()
    assert masked_stats(x, mask, ("mean", "p10"))[3].abs().max() < 1e-3


def test_nested_C_is_chosen_without_the_test_fold():
    from experiments.baselines import BaselineSpec, cross_validate
    from store.errors import InputError

    rng = np.random.default_rng(0)
    y = np.tile(np.arange(3), 40)
    fold = np.repeat(np.array([f"s{i}" for i in range(4)]), 30)
    X = rng.normal(size=(120, 30)) + 0.8 * np.eye(3)[y] @ rng.normal(size=(3, 30))
    spec = BaselineSpec("x", C=[1e-4, 1e-2, 1.0])
    inner = {f"s{i}": [f"s{(i + 1) % 4}"] for i in range(4)}
    a = cross_validate(X, y, fold, [f"s{i}" for i in range(4)], spec, ["a", "b", "c"], inner=inner)
    X2 = X.copy()
    X2[fold == "s0"] = rng.normal(size=(30, 30))       # the test fold's features say nothing about C
    b = cross_validate(X2, y, fold, ["s0"], spec, ["a", "b", "c"], inner=inner)
    assert a["per_fold"]["s0"]["C"] == b["per_fold"]["s0"]["C"] in spec.C
    assert a["uar"] > 0.6
    with pytest.raises(InputError, match="validation folds"):
        cross_validate(X, y, fold, ["s0"], spec, ["a", "b", "c"])


def test_classifier_rejects_unknown_levers():
    with pytest.raises(ValueError, match="pool"):
        SequenceClassifier(8, 3, encoder="conv", pool="max")
    with pytest.raises(ValueError, match="multiscale"):
        SequenceClassifier(8, 3, encoder="tcn", multiscale=True)
    with pytest.raises(ValueError, match="input_stats"):
        SequenceClassifier(8, 3, encoder="conv", input_stats=["mean", "kurtosis"])
    with pytest.raises(ValueError, match="bands"):
        SequenceClassifier(8, 3, encoder="conv", mel_bands=4, cnn_blocks=3)


@pytest.mark.data
def test_opensmile_llds_on_real_speech(shared_data):
    pytest.importorskip("opensmile")
    from featurize.decode import read_audio
    from featurize.registry import get_cached, parse_config, resolve_key

    wav = shared_data / "emodb" / "wav" / "03a01Fa.wav"
    if not wav.is_file():
        pytest.skip("EmoDB not in shared data")
    x = read_audio(wav, sr=16000)
    n_logmel = get_cached("logmel").extract(x, 16000)["data"].shape[0]
    for fs, deltas, dim in (("compare", True, 130), ("egemaps", False, 25)):
        cfg = parse_config("opensmile", {"feature_set": fs, "deltas": deltas})
        out = get_cached("opensmile", cfg).extract(x, 16000)
        assert out["data"].shape[1] == dim and out["data"].dtype == np.float32
        assert out["mask"].all() and np.isfinite(out["data"]).all()
        np.testing.assert_allclose(np.diff(out["t"])[:-1], 0.01, atol=1e-6)    # 10 ms (the last one cut short)
        assert abs(len(out["data"]) - n_logmel) <= 8                            # same clock as log-mel
        assert out["data"].std(0).max() > 0
    keys = {resolve_key("opensmile", p)[0]
            for p in ({}, {"feature_set": "egemaps", "deltas": False}, {"deltas": False})}
    assert len(keys) == 3
    short = get_cached("opensmile", parse_config("opensmile", {})).extract(np.zeros(400, np.float32), 16000)
    assert not short["mask"].any() and np.isfinite(short["data"]).all()
    with pytest.raises(Exception, match="deltas"):
        parse_config("opensmile", {"feature_set": "egemaps"})


def test_statistics_branch_trains_on_a_last_batch_of_one():
    """An epoch whose size is 1 mod the batch size ends on one clip: the statistics branch
    scales it with its running statistics instead of failing (BatchNorm has no batch variance)."""
    torch.manual_seed(0)
    model = SequenceClassifier(6, 3, encoder="conv", hidden=8, depth=1, pool="meanstd", input_stats=["mean", "std"])
    model.train()
    model(torch.randn(4, 10, 6)).sum().backward()          # fills the running statistics
    scaler = model.stats[0]
    before = scaler.running_mean.clone()
    out = model(torch.randn(1, 10, 6))
    out.sum().backward()
    assert out.shape == (1, 3) and torch.isfinite(out).all()
    assert torch.equal(scaler.running_mean, before)         # one clip does not move them


@pytest.mark.data
def test_opensmile_functionals_are_cached_per_file(shared_data, tmp_path):
    """A second run reads the functionals back (one .npy per file, named by path, size and
    mtime); a changed file is computed again."""
    pytest.importorskip("opensmile")
    import os
    import shutil

    from experiments.baselines import egemaps_functionals

    src = shared_data / "emodb" / "wav" / "03a01Fa.wav"
    if not src.is_file():
        pytest.skip("EmoDB not in shared data")
    wavs = [tmp_path / "a.wav", tmp_path / "b.wav"]
    for w, name in zip(wavs, ("03a01Fa.wav", "03a01Nc.wav")):
        shutil.copyfile(src.with_name(name), w)
    cache = tmp_path / "cache"
    first = egemaps_functionals(wavs, "egemaps", cache_dir=cache)
    files = sorted(cache.rglob("*.npy"))
    assert first.shape == (2, 88) and len(files) == 2
    np.testing.assert_array_equal(egemaps_functionals(wavs, "egemaps", cache_dir=cache), first)
    shutil.copyfile(src.with_name("03a01Nc.wav"), wavs[0])      # a.wav now holds other audio
    os.utime(wavs[0], ns=(1, 1))
    again = egemaps_functionals(wavs, "egemaps", cache_dir=cache)
    assert len(list(cache.rglob("*.npy"))) == 3
    np.testing.assert_allclose(again[0], first[1], rtol=1e-6)


def test_stats_experts_train_apart_and_predict_their_mean_probability():
    """stats_fusion experts: in training two logits (each gets its own loss); in eval the log
    of their mean probability, i.e. an ensemble of the encoder and the statistics classifier."""
    x, mask = _batch()
    torch.manual_seed(0)
    net = SequenceClassifier(20, 7, encoder="conv", hidden=16, depth=2, pool="meanstd",
                             input_stats=["mean", "std", "slope"], stats_fusion="experts")
    enc, side = net.train()(x, mask)
    assert enc.shape == side.shape == (6, 7)
    (enc.logsumexp(-1).sum() + side.logsumexp(-1).sum()).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    net.eval()
    with torch.no_grad():
        net.training = True                 # top module only: both experts without dropout
        enc, side = net(x, mask)
        net.training = False
        out = net(x, mask)
    torch.testing.assert_close(out.softmax(-1), (enc.softmax(-1) + side.softmax(-1)) / 2)
    with pytest.raises(ValueError, match="stats_fusion"):
        SequenceClassifier(20, 7, encoder="conv", input_stats=True, stats_fusion="mean")


def test_slope_statistic_is_the_least_squares_slope_over_valid_steps():
    x, mask = _batch()
    got = masked_stats(x, mask, ("slope",))
    for i, n in ((0, 20), (1, 50)):
        v = x[i, :n].double().numpy()
        want = np.polyfit(np.arange(n), v, 1)[0]
        np.testing.assert_allclose(got[i].numpy(), want, rtol=1e-3, atol=1e-4)


def test_mean_abs_delta_statistic_counts_only_pairs_of_valid_steps():
    x, mask = _batch()
    mask[1, 7:] = False
    mask[2, 10] = False                     # a hole: the pairs (9, 10) and (10, 11) do not count
    got = masked_stats(x, mask, ("dabs", "p25", "p75"))
    for i in (0, 1, 2):
        v, m = x[i].double().numpy(), mask[i].numpy()
        pair = m[1:] & m[:-1]
        want = np.abs(np.diff(v, axis=0))[pair].mean(0)
        np.testing.assert_allclose(got[i, :x.shape[2]].numpy(), want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[i, x.shape[2]:].numpy(),
                                   np.percentile(v[m], [25, 75], axis=0).reshape(-1), rtol=1e-4, atol=1e-4)
    mask[3] = False
    mask[3, 5] = True                       # one valid step, no valid pair: zeros, not NaN
    assert masked_stats(x, mask, ("dabs",))[3].abs().max() == 0


def test_refit_stats_is_scikit_learns_logistic_regression():
    """stats_refit: the statistics expert after refit_stats predicts what
    LogisticRegression(C) on standardised statistics predicts."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    torch.manual_seed(0)
    x = torch.randn(60, 30, 5) + torch.arange(3).repeat(20)[:, None, None] * 0.3
    y = torch.arange(3).repeat(20)
    net = SequenceClassifier(5, 3, encoder="conv", hidden=8, depth=1, pool="meanstd",
                             input_stats=["mean", "std", "slope"], stats_fusion="experts", stats_refit=0.1)
    feats = net.utterance_stats(x)
    net.refit_stats(feats, y, C=net.stats_refit)
    got = net.eval().stats(feats).softmax(-1).detach().numpy()
    f = StandardScaler().fit_transform(feats.double().numpy())
    want = LogisticRegression(C=0.1, tol=1e-8, max_iter=5000).fit(f, y.numpy()).predict_proba(f)
    np.testing.assert_allclose(got, want, atol=2e-3)
    with pytest.raises(ValueError, match="stats_refit"):
        SequenceClassifier(5, 3, encoder="conv", input_stats=True, stats_refit=0.1)


def test_head_frame_pool_feeds_the_encoder_pooled_frames_and_the_statistics_the_frames():
    """head.args.frame_pool k: the encoder's logits equal those of the same head fed
    ``pool_frames(x, k)`` (data.frame_pool), while the statistics come from the unpooled frames."""
    from heads.layers import pool_frames

    x, mask = _batch()
    x = x[:, :47]                      # T not a multiple of 4: the tail step pools 3 frames
    mask = mask[:, :47]
    torch.manual_seed(0)
    args = dict(encoder="conv", hidden=16, depth=2, pool="meanstd")
    inner = SequenceClassifier(20, 7, frame_pool=4, **args).eval()
    outer = SequenceClassifier(20, 7, **args).eval()
    outer.load_state_dict(inner.state_dict())
    xp, mp = pool_frames(x * mask[..., None], mask, 4)
    with torch.no_grad():
        torch.testing.assert_close(inner(x, mask), outer(xp, mp))
        net = SequenceClassifier(20, 7, frame_pool=4, input_stats=["p90"], stats_fusion="experts", **args).eval()
        net.training = True                 # top module only: both experts' logits, no dropout
        _, side = net(x, mask)
        want = net.stats(masked_stats(x, mask, ("p90",)))
    torch.testing.assert_close(side, want)
    assert not torch.allclose(masked_stats(x, mask, ("p90",)), masked_stats(xp, mp, ("p90",)))
    with pytest.raises(ValueError, match="frame_pool"):
        SequenceClassifier(20, 7, frame_pool=0, **args)
