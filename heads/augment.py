"""Train-time augmentation on feature sequences: SpecAugment-style masking and mixup.

Torch only, on batches ``x [B, T, D]`` with a validity ``mask [B, T]``; the random draws use
torch's global generator (so a resumed run replays them from the checkpointed RNG state).
Effects measured on EmoDB (leave-one-speaker-out) are in experiments/configs/ser.yaml.
"""
from __future__ import annotations

import torch

__all__ = ["spec_mask", "mixup", "mixup_loss"]


def spec_mask(x: torch.Tensor, mask: torch.Tensor | None, time_masks: int = 2, time_width: int = 10,
              freq_masks: int = 2, freq_width: int = 8, freq_dims: int | None = None) -> torch.Tensor:
    """Zero ``time_masks`` random spans of up to ``time_width`` steps and ``freq_masks`` random
    bands of up to ``freq_width`` feature dims in every row (a copy; zero = the speaker's mean
    after per-speaker standardisation). ``freq_dims``: only the first that many dims are
    treated as a frequency axis (log-mel before MFCCs in a concatenated input); None = all.
    A time span is drawn inside each row's valid length, so short clips are not wiped out."""
    b, t, d = x.shape
    out = x.clone()
    dev = x.device
    steps = torch.arange(t, device=dev)[None, :]
    if time_masks and time_width:
        length = (mask.sum(1) if mask is not None else torch.full((b,), t, device=dev)).clamp_min(1)
        for _ in range(time_masks):
            w = (torch.rand(b, device=dev) * (time_width + 1)).long().clamp(max=length.div(4, rounding_mode="floor"))
            start = (torch.rand(b, device=dev) * (length - w + 1).float()).long()
            hit = (steps >= start[:, None]) & (steps < (start + w)[:, None])
            out = out.masked_fill(hit[..., None], 0.0)
    fd = d if freq_dims is None else min(int(freq_dims), d)
    if freq_masks and freq_width and fd > 0:
        dims = torch.arange(d, device=dev)[None, :]
        for _ in range(freq_masks):
            w = (torch.rand(b, device=dev) * (min(freq_width, fd) + 1)).long()
            start = (torch.rand(b, device=dev) * (fd - w + 1).float()).long()
            hit = (dims >= start[:, None]) & (dims < (start + w)[:, None])
            out = out.masked_fill(hit[:, None, :], 0.0)
    return out


def mixup(x: torch.Tensor, mask: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                      torch.Tensor]:
    """Blend every row with a random partner: ``lam * x + (1 - lam) * x[perm]``, one lam ~
    Beta(alpha, alpha) per batch (folded to >= 0.5 so a row's own label dominates), so any
    mean loss mixes as ``lam * L(y) + (1 - lam) * L(y[perm])`` (`mixup_loss`). The mask is the
    union (the shorter clip's padding is zeros, i.e. the speaker mean). Returns (x, mask, perm, lam)."""
    lam = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(x.shape[0], device=x.device)
    return lam * x + (1 - lam) * x[perm], mask | mask[perm], perm, lam


def mixup_loss(loss_fn, logits: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * loss_fn(logits, y) + (1 - lam) * loss_fn(logits, y[perm])``."""
    return lam * loss_fn(logits, y) + (1 - lam) * loss_fn(logits, y[perm])
