"""Window / clip / segment tables and the one-op gather."""
import numpy as np
import torch

from experiments.windows import (clip_table, gather, index_tensor, pool_frames, segment_bounds, segment_pool,
                                 window_starts, window_table)


def test_window_starts_regular_plus_back_aligned_tail():
    assert window_starts(1000) == [0, 200, 400, 600, 700]
    assert window_starts(700) == [0, 200, 400]          # 400 + 300 == 700: no extra tail
    assert window_starts(301) == [0, 1]
    assert window_starts(300) == [0]
    assert window_starts(120) == [0]                    # short video: one padded window
    assert window_starts(0) == []


def test_every_frame_is_covered_and_tail_ends_at_n():
    for n in (1, 299, 300, 301, 555, 1234):
        starts = window_starts(n)
        covered = np.zeros(n, bool)
        for s in starts:
            covered[s:s + 300] = True
        assert covered.all()
        assert min(n, starts[-1] + 300) == n


def test_gather_matches_per_video_slicing_and_pads_with_masked_zeros():
    lengths = [450, 120, 300]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    x = torch.arange(offsets[-1] * 2, dtype=torch.float32).reshape(-1, 2) + 1   # no zeros in data
    table = window_table(lengths)
    assert list(table.video) == [0, 0, 1, 2] and list(table.start) == [0, 150, 0, 0]
    idx, valid = index_tensor(table, offsets, width=300)
    out = gather(x, idx, valid)
    assert out.shape == (4, 300, 2)
    for r in range(len(table)):
        v, s, n = table.video[r], table.start[r], table.length[r]
        ref = x[offsets[v] + s: offsets[v] + s + n]
        assert torch.equal(out[r, :n], ref)
        assert not valid[r, n:].any() and (out[r, n:] == 0).all()
    assert int(valid.sum()) == 300 + 300 + 120 + 300
    # padding points at the sample's first frame: a non-finite value there stays out of it
    x[offsets[1]] = float("nan")
    out = gather(x, idx, valid)
    assert torch.isnan(out[2, 0]).all() and (out[2, 120:] == 0).all()


def test_gather_without_padding_is_the_plain_index_copy_and_a_fresh_tensor():
    x = torch.arange(7000, dtype=torch.float32).reshape(1000, 7)
    idx, valid = index_tensor(window_table([400, 600], 300, 200), [0, 400], 300)
    assert bool(valid.all())
    out = gather(x, idx, valid)
    assert torch.equal(out, x[idx])
    out += 1                                   # the batch is a copy: the corpus is untouched
    assert torch.equal(out - 1, x[idx])


def test_gather_widens_a_float16_corpus_in_the_copy():
    lengths = [450, 120, 300]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    g = torch.Generator().manual_seed(0)
    idx, valid = index_tensor(window_table(lengths), offsets, width=300)
    for dim in (5, 300):             # a narrow feature (index_select + cast) and a wide one (slice copies)
        x16 = (torch.randn(int(offsets[-1]), dim, generator=g) * 100).half()
        out = gather(x16, idx, valid)
        assert out.dtype == torch.float32 and out.shape == (4, 300, dim)
        assert torch.equal(out, x16.float()[idx] * valid[..., None])    # exact: every float16 is a float32
        assert torch.equal(out[2, :120], x16[offsets[1]:offsets[2]].float()) and (out[2, 120:] == 0).all()
        assert torch.equal(gather(x16.float(), idx, valid), out)


def test_pool_frames_skips_the_mask_only_where_it_changes_nothing():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 12, 5, generator=g)
    full = torch.ones(3, 12, dtype=torch.bool)
    y, m = pool_frames(x, full, 4)              # no pad, every frame valid: the multiply is skipped
    ref = (x.reshape(3, 3, 4, 5) * torch.ones(3, 3, 4, 1)).sum(2) / 4
    assert torch.equal(y, ref) and bool(m.all())
    part = full.clone()
    part[0, 4:8] = False                       # a fully masked step: zero and invalid
    part[1, 1] = False
    y, m = pool_frames(x, part, 4)
    assert not m[0, 1] and torch.equal(y[0, 1], torch.zeros(5))
    assert torch.allclose(y[1, 0], x[1, [0, 2, 3]].mean(0))
    y, m = pool_frames(x[:, :10], full[:, :10], 4)   # T not a multiple of k: the tail step pools 2 frames
    assert y.shape == (3, 3, 5) and torch.allclose(y[:, 2], x[:, 8:10].mean(1))


def test_clip_table_cuts_and_drops_short_remainders():
    t = clip_table([250, 90], clip=100, hop=100, min_frames=40)
    assert list(zip(t.video, t.start, t.length)) == [(0, 0, 100), (0, 100, 100), (0, 200, 50), (1, 0, 90)]
    t = clip_table([250], clip=100, hop=100, min_frames=60)
    assert list(t.length) == [100, 100]
    whole = clip_table([250, 90])
    assert list(whole.length) == [250, 90]


def test_segment_pool_means_over_equal_spans_and_masks_empty_segments():
    x = torch.arange(32, dtype=torch.float32)[:, None]
    mask = torch.ones(32, dtype=torch.bool)
    mask[4:6] = False                                  # segment 2 (frames 4, 5) has no face
    tok, m = segment_pool(x, mask, n_segments=16)
    assert tok.shape == (16, 1)
    assert tok[0, 0] == 0.5 and tok[15, 0] == 30.5
    assert not m[2] and tok[2, 0] == 0 and m.sum() == 15


def test_segment_bounds_short_clip_never_empty():
    start, end = segment_bounds(5, 16)
    assert (end > start).all() and end.max() == 5 and start.min() == 0


def test_recut_flattens_valid_frames_time_major_into_tokens():
    from experiments.windows import recut

    # the ERI reference's audio: 40 MFCCs per frame -> 32 tokens of 1024 values
    x = torch.arange(2 * 900 * 40, dtype=torch.float32).reshape(2, 900, 40)
    mask = torch.ones(2, 900, dtype=torch.bool)
    mask[1, 100:] = False                       # the second clip: 100 frames, then padding
    mask[1, 10] = False                         # and one invalid frame inside it
    tok, m = recut(x, mask, 32, 1024)
    assert tok.shape == (2, 32, 1024) and m.shape == (2, 32)
    torch.testing.assert_close(tok[0].reshape(-1), x[0].reshape(-1)[: 32 * 1024])   # 36000 values cut to 32768
    assert m[0].all()
    second = torch.cat([x[1, :10], x[1, 11:100]]).reshape(-1)                        # 99 frames = 3960 values
    torch.testing.assert_close(tok[1].reshape(-1)[:3960], second)
    assert (tok[1].reshape(-1)[3960:] == 0).all()
    assert m[1].tolist() == [True] * 4 + [False] * 28                                 # ceil(3960 / 1024) = 4
