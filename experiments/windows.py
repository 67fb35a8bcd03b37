"""Window and segment tables over contiguous per-video tensors (no store, no model).

Why a table: every video is loaded once into one contiguous tensor and a training window is
just a row of an index tensor, so a whole batch is gathered with one slice copy per window of a
wide modality and one indexing op per narrow one (one per modality on the GPU). Measured in turns in one process
(benchmarks/bench_train.py, 2 cores, load 0.8, 300-frame windows, batch 8, 512 + 64 + 39
dims, 2026-12-03): per-window Zarr reads 141 windows/s (visual only), the ABAW2 code's
np.load(mmap_mode='c') per window per modality under a DataLoader 775/s, this path
(FrameTask.batch: features, labels, masks) 13,127/s: 16.9x wall, 16.3x CPU. What is left per
batch (~0.6 ms) is moving the batch through memory: reading 2.9 MB of float16 out of a corpus
far larger than the caches and writing 5.9 MB of float32, near the ~26 GB/s this machine
gives one process (a copy at 2 bytes in, 4 out, per value; not measured with hardware counters); the reference is CPU-bound (np.load and
numpy's float16 -> float32 cast per window).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from heads.layers import pool_frames  # noqa: F401  (the clip tasks' frame_pool; the sequence head's too)


def window_starts(n: int, window: int = 300, hop: int = 200) -> list[int]:
    """Starts of the windows of one video of ``n`` frames.

    Regular windows every ``hop`` frames, plus one back-aligned window [n - window, n) when the
    regular ones do not already end at ``n``; a video shorter than ``window`` is one (padded)
    window at 0; an empty video has none.
    """
    if n <= 0:
        return []
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, hop))
    if starts[-1] + window < n:
        starts.append(n - window)
    return starts


@dataclass
class Table:
    """One row per sample: which video, where it starts (frames, video-local) and how long."""
    video: np.ndarray   # int64 [S] index into the video list
    start: np.ndarray   # int64 [S]
    length: np.ndarray  # int64 [S] valid frames (<= width); the rest is padding

    def __len__(self) -> int:
        return len(self.video)

    def subset(self, idx) -> "Table":
        idx = np.asarray(idx, dtype=np.int64)
        return Table(self.video[idx], self.start[idx], self.length[idx])

    def for_videos(self, videos) -> "Table":
        """The rows of the given video indices (order of the table kept)."""
        keep = np.isin(self.video, np.asarray(list(videos), dtype=np.int64))
        return self.subset(np.flatnonzero(keep))


def window_table(lengths, window: int = 300, hop: int = 200) -> Table:
    """Windows of every video (``lengths`` frames each), see `window_starts`."""
    vid, st, ln = [], [], []
    for i, n in enumerate(int(x) for x in lengths):
        for s in window_starts(n, window, hop):
            vid.append(i)
            st.append(s)
            ln.append(min(window, n - s))
    return _table(vid, st, ln)


def clip_table(lengths, clip: int | None = None, hop: int | None = None, min_frames: int = 1) -> Table:
    """Clip samples: the whole video (``clip`` None) or cuts of ``clip`` frames every ``hop``.

    Unlike training windows, clips are samples with their own label, so there is no
    back-aligned tail: a trailing remainder shorter than ``min_frames`` is dropped, a longer
    one becomes a shorter clip.
    """
    vid, st, ln = [], [], []
    for i, n in enumerate(int(x) for x in lengths):
        if clip is None or n <= clip:
            if n >= min_frames:
                vid.append(i), st.append(0), ln.append(n)
            continue
        step = hop or clip
        for s in range(0, n, step):
            m = min(clip, n - s)
            if m < min_frames:
                break
            vid.append(i), st.append(s), ln.append(m)
            if s + clip >= n:
                break
    return _table(vid, st, ln)


def _table(vid, st, ln) -> Table:
    return Table(np.asarray(vid, dtype=np.int64), np.asarray(st, dtype=np.int64),
                 np.asarray(ln, dtype=np.int64))


def index_tensor(table: Table, offsets, width: int | None = None, device=None):
    """[S, width] global frame indices into the contiguous tensor, and the [S, width] valid mask.

    Padded positions point at the sample's first frame (any in-range index would do) and are
    False in the mask; `gather` zeroes them so no real data leaks into padding.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    width = int(width if width is not None else (table.length.max() if len(table) else 0))
    base = offsets[table.video] + table.start                      # [S]
    ar = np.arange(width, dtype=np.int64)
    valid = ar[None, :] < table.length[:, None]                      # [S, W]
    idx = base[:, None] + np.where(valid, ar[None, :], 0)
    return (torch.as_tensor(idx, device=device), torch.as_tensor(valid, device=device))


def gather(x: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x [N, ...] (float16 or float32) -> float32 [S, W, ...], padding zeroed.

    ``idx`` and ``valid`` are as `index_tensor` builds them: each row's valid positions are a
    prefix of consecutive frames. On the CPU a wide row (>= 256 values per frame) is one
    contiguous slice, copied and widened from float16 in the same pass straight into the batch;
    narrow ones are one index_select and a cast (a copy call per window cost more than their
    bytes). Measured in one process (abaw2's 512 + 64 + 39 dims, 8 random windows of 300 from
    a 120,000-frame float16 corpus, one thread, load 0.7-1.0): 0.41-0.53 ms per batch, against
    0.61-0.74 ms for index_select on the float32 corpus of before and 0.70-0.94 ms for
    index_select + cast of all three. Padding is written 0 after the copy (never ``* mask``: a
    NaN in the frame a padded index points at would stay NaN). On CUDA one index_select, a cast
    and a mask fill, without asking the host which rows are padded (that would stall the stream).
    """
    s, w = idx.shape
    tail = tuple(x.shape[1:])
    if x.is_cuda or x[:1].numel() < 256:
        out = x.index_select(0, idx.reshape(-1)).float()
        pad = ~valid.reshape(-1)
        if out.is_cuda:
            out.masked_fill_(pad.reshape((-1,) + (1,) * (out.dim() - 1)), 0)
        else:
            rows = pad.nonzero().squeeze(1)
            if len(rows):
                out.index_fill_(0, rows, 0)
        return out.view((s, w) + tail)
    out = torch.empty((s, w) + tail, dtype=torch.float32)
    for i, (lo, n) in enumerate(zip(idx[:, 0].tolist(), valid.sum(1).tolist())):
        out[i, :n].copy_(x[lo:lo + n])
        if n < w:
            out[i, n:].zero_()
    return out


def segment_bounds(n: int, n_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal time spans: segment s covers [floor(s n / S), max(floor((s+1) n / S), start + 1)).

    With n < S a frame is shared by several segments, so no segment is ever empty.
    """
    s = np.arange(n_segments, dtype=np.int64)
    start = (s * n) // n_segments
    end = np.maximum(((s + 1) * n) // n_segments, start + 1)
    return np.minimum(start, max(n - 1, 0)), np.minimum(end, max(n, 1))


def segment_pool(x: torch.Tensor, mask: torch.Tensor, n_segments: int = 16):
    """One clip [T, D] with its frame mask [T] -> tokens [S, D] (mean of valid frames) and [S] mask.

    A segment whose frames are all masked is zero and masked: never a silent zero that counts.
    """
    n = x.shape[0]
    start, end = segment_bounds(n, n_segments)
    t = torch.arange(n, device=x.device)
    member = (t[None, :] >= torch.as_tensor(start, device=x.device)[:, None]) & \
             (t[None, :] < torch.as_tensor(end, device=x.device)[:, None])          # [S, T]
    w = (member & mask[None, :].bool()).to(x.dtype)
    count = w.sum(1, keepdim=True)
    tokens = (w @ x) / count.clamp(min=1)
    return tokens, count[:, 0] > 0


def recut(x: torch.Tensor, mask: torch.Tensor, tokens: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T, D] frames -> [B, tokens, width] tokens of their flattened values, and the token mask.

    Each clip's valid frames (``mask``) are flattened time-major (frame 0's D values, then
    frame 1's, ...), zero-padded or cut to ``tokens * width`` values and re-cut into tokens:
    what the ERI reference did to its audio (40 MFCCs -> 32 x 1024). A token is valid when
    it holds at least one real value; a clip with none keeps its first token.
    """
    b, _, d = x.shape
    n = tokens * width
    out = x.new_zeros(b, n)
    filled = torch.zeros(b, dtype=torch.long, device=x.device)
    for i in range(b):
        flat = x[i][mask[i]].reshape(-1)[:n]
        out[i, : len(flat)] = flat
        filled[i] = len(flat)
    tok_mask = torch.arange(tokens, device=x.device)[None, :] * width < filled[:, None]
    tok_mask[:, 0] |= ~tok_mask.any(1)
    return out.reshape(b, tokens, width), tok_mask
