"""Reusable blocks shared by the heads (torch only).

Everything here works on channels-last sequences ``[B, T, D]`` with an optional
boolean mask ``[B, T]`` (True = valid), except the convolution blocks, which take
``[B, C, T]`` like ``nn.Conv1d`` does.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

__all__ = [
    "Chomp1d",
    "TemporalBlock",
    "ConvResidualBlock",
    "Attention",
    "CrossAttention",
    "FeedForward",
    "PreNormBlock",
    "PreNormEncoder",
    "band_mask",
    "attention_mask",
    "masked_mean",
    "pool_frames",
    "compact_valid",
    "sinusoidal_positions",
]


# ----------------------------------------------------------------------------- convolutions


class Chomp1d(nn.Module):
    """Drop the last ``chomp`` steps: symmetric padding + chomp = a causal convolution."""

    def __init__(self, chomp: int):
        super().__init__()
        self.chomp = int(chomp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : -self.chomp].contiguous() if self.chomp > 0 else x


def _dropout(p: float, mode: str) -> nn.Module:
    # "channel" zeroes whole channels of one sample (what Dropout2d did on [B, C, T] in the
    # torch of the reference); "element" is ordinary dropout.
    if mode == "channel":
        return nn.Dropout1d(p)
    if mode == "element":
        return nn.Dropout(p)
    raise ValueError(f"dropout_mode must be 'channel' or 'element', not {mode!r}")


class TemporalBlock(nn.Module):
    """One causal TCN level: two weight-normed dilated convs, residual, LeakyReLU.

    Attribute names (``conv1``, ``conv2``, ``downsample``) follow the usual TCN layout so
    that published checkpoints map onto it key by key. ``conv1.weight`` is weight-normed via
    ``torch.nn.utils.parametrizations``; old ``weight_g``/``weight_v`` keys load directly.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 5, dilation: int = 1,
                 dropout: float = 0.1, dropout_mode: str = "channel", negative_slope: float = 0.01):
        super().__init__()
        pad = (kernel_size - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(in_ch, out_ch, kernel_size, padding=pad, dilation=dilation))
        self.chomp1 = Chomp1d(pad)
        self.act1 = nn.LeakyReLU(negative_slope)
        self.drop1 = _dropout(dropout, dropout_mode)
        self.conv2 = weight_norm(nn.Conv1d(out_ch, out_ch, kernel_size, padding=pad, dilation=dilation))
        self.chomp2 = Chomp1d(pad)
        self.act2 = nn.LeakyReLU(negative_slope)
        self.drop2 = _dropout(dropout, dropout_mode)
        self.downsample = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else None
        self.act = nn.LeakyReLU(negative_slope)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The common TCN code re-inits conv1/conv2 ``.weight`` with N(0, 0.01) after weight
        # norm, but there ``.weight`` is recomputed from g, v at every forward, so that init is
        # a no-op and the default init is what trains. We keep the default init for the
        # weight-normed convs and do the (effective) small-normal init of the 1x1 downsample.
        if self.downsample is not None:
            self.downsample.weight.data.normal_(0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        y = self.drop1(self.act1(self.chomp1(self.conv1(x))))
        y = self.drop2(self.act2(self.chomp2(self.conv2(y))))
        res = x if self.downsample is None else self.downsample(x)
        return self.act(y + res)


class ConvResidualBlock(nn.Module):
    """Non-causal dilated conv with a residual and post-LayerNorm, on ``[B, T, D]``.

    Padding keeps the length (``dilation * (k - 1) / 2`` each side); masked steps are zeroed
    before the conv so padding never leaks into valid steps' values.
    """

    def __init__(self, dim: int, kernel_size: int = 3, dilation: int = 1, dropout: float = 0.1):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd to keep the length")
        self.conv = nn.Conv1d(dim, dim, kernel_size, dilation=dilation,
                              padding=dilation * (kernel_size - 1) // 2)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(x + self.drop(self.act(y)))


# ----------------------------------------------------------------------------- attention


def band_mask(n_q: int, n_k: int, width: int, device=None) -> torch.Tensor:
    """Bool ``[n_q, n_k]``: True where ``|i - j| <= width`` (local attention window)."""
    i = torch.arange(n_q, device=device).unsqueeze(1)
    j = torch.arange(n_k, device=device).unsqueeze(0)
    return (i - j).abs() <= width


def attention_mask(key_mask: torch.Tensor | None, n_q: int, allowed: torch.Tensor | None = None,
                   keep_diagonal: bool = False) -> torch.Tensor | None:
    """Combine a key-padding mask ``[B, Tk]`` and a pattern ``[Tq, Tk]`` into ``[B, 1, Tq, Tk]``.

    ``keep_diagonal`` lets query i always see key i, so a padded query row never has zero
    allowed keys (softmax over nothing is NaN); valid rows are unchanged when the same step
    is valid in both sequences.
    """
    if key_mask is None and allowed is None:
        return None
    m = None
    if key_mask is not None:
        m = key_mask[:, None, None, :].expand(-1, 1, n_q, -1)
    if allowed is not None:
        m = allowed[None, None] if m is None else m & allowed[None, None]
    if keep_diagonal:
        n_k = m.shape[-1]
        m = m | torch.eye(n_q, n_k, dtype=torch.bool, device=m.device)[None, None]
    return m


def _attend(q, k, v, heads: int, mask, dropout_p: float, training: bool) -> torch.Tensor:
    b, tq, inner = q.shape
    tk = k.shape[1]
    dh = inner // heads
    q = q.view(b, tq, heads, dh).transpose(1, 2)
    k = k.view(b, tk, heads, dh).transpose(1, 2)
    v = v.view(b, tk, heads, dh).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                         dropout_p=dropout_p if training else 0.0)
    return out.transpose(1, 2).reshape(b, tq, inner)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (ViT layout)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 64, qkv_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        out = _attend(q, k, v, self.heads, mask, self.attn_drop, self.training)
        return self.proj_drop(self.proj(out))


class CrossAttention(nn.Module):
    """Multi-head attention with queries from ``x`` and keys/values from ``context``."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int | None = None, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, context_dim: int | None = None):
        super().__init__()
        dim_head = dim_head or dim // heads
        inner = heads * dim_head
        self.heads = heads
        self.q = nn.Linear(dim, inner, bias=qkv_bias)
        self.kv = nn.Linear(context_dim or dim, 2 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        k, v = self.kv(context).chunk(2, dim=-1)
        out = _attend(self.q(x), k, v, self.heads, mask, self.attn_drop, self.training)
        return self.proj_drop(self.proj(out))


class FeedForward(nn.Module):
    """Linear -> GELU -> Dropout -> Linear -> Dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class PreNormBlock(nn.Module):
    """``x += Attn(LN(x)); x += FF(LN(x))`` — pre-LN keeps deep stacks stable without warm-up."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 64, mlp_dim: int = 256,
                 dropout: float = 0.0, attn_drop: float = 0.0, qkv_bias: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class PreNormEncoder(nn.Module):
    """A stack of :class:`PreNormBlock` with a key-padding mask ``[B, T]`` (True = valid)."""

    def __init__(self, dim: int, depth: int = 4, heads: int = 4, dim_head: int = 64, mlp_dim: int = 256,
                 dropout: float = 0.0, attn_drop: float = 0.0, qkv_bias: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(
            PreNormBlock(dim, heads, dim_head, mlp_dim, dropout, attn_drop, qkv_bias) for _ in range(depth))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        attn_mask = attention_mask(mask, x.shape[1], keep_diagonal=True) if mask is not None else None
        for blk in self.blocks:
            x = blk(x, attn_mask)
        return x


# ----------------------------------------------------------------------------- sequences


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None, dim: int = 1) -> torch.Tensor:
    """Mean of ``x [B, T, ...]`` over valid steps; an all-masked row gives 0, not NaN."""
    if mask is None:
        return x.mean(dim)
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1.0)


def pool_frames(x: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean over every ``k`` consecutive steps: [B, T, D] -> [B, ceil(T/k), D].

    Why: a clip-level label needs no 10 ms resolution, and k-fold fewer steps make a
    convolutional head k times cheaper. A pooled step is valid when any of its frames is.
    The pad copy is skipped when T is a multiple of k, and the multiply by the mask when
    every frame is valid on the CPU (x * 1 is x, so the sums are the same bits): the two
    were ~40 % of EmoDB's data path per batch (32 x 200 x 103, CPU).
    """
    b, t = mask.shape
    pad = -t % k
    if pad:
        mask = torch.nn.functional.pad(mask, (0, pad))
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    m = mask.reshape(b, -1, k).to(x.dtype)
    xp = x.reshape(b, -1, k, x.shape[-1])
    n = m.sum(-1)
    if pad or x.is_cuda or not bool(mask.all()):
        xp = xp * m[..., None]
    return xp.sum(2) / n.clamp_min(1)[..., None], n > 0


def compact_valid(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the valid steps of each row to the front, in order; return ``(x, lengths)``.

    A prefix mask (ordinary right padding) leaves ``x`` unchanged; a mask with holes (a frame
    without a face) drops those frames, as if the clip had been cut without them.
    """
    t = x.shape[1]
    idx = torch.arange(t, device=x.device).expand(x.shape[0], t)
    # invalid steps sort after all valid ones; stable order inside each group
    key = torch.where(mask, idx, idx + t)
    order = key.argsort(dim=1)
    gathered = x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return gathered, mask.sum(1)


def sinusoidal_positions(n: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed sine/cosine position table ``[n, dim]``."""
    pos = torch.arange(n, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.to(dtype)
