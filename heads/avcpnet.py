"""AV-CPNet fusion on cached segment tokens (short-video emotion classification).

This is the fusion and head of the eMotions network run on cached features: the inputs are
per-segment tokens (pooled frame embeddings, pooled audio frames), not the end-to-end
Video-Swin / audio-ResNet encoders of the paper.

Stage 1 (local, pyramid): level i lets each segment see its neighbours within 2**i in the
other modality, so low levels fuse nearby moments and high levels wider context.
Stage 2 (global): full cross-attention, then mean over time.
Head: one linear layer over ``[a ; v]``; slicing its weight gives audio-only and visual-only
logits for free (each with half the bias), so the training loss can supervise both parts.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .layers import ConvResidualBlock, CrossAttention, attention_mask, band_mask, masked_mean

__all__ = ["GatedMerge", "PyramidLevel", "LevelScores", "GlobalCrossFusion", "AVCPNet"]


class GatedMerge(nn.Module):
    """``x' = sigmoid(W1[s; c]) * s + sigmoid(W2[s; c]) * c`` for self output s and cross output c."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate_self = nn.Linear(2 * dim, dim)
        self.gate_cross = nn.Linear(2 * dim, dim)

    def forward(self, s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sc = torch.cat([s, c], dim=-1)
        return torch.sigmoid(self.gate_self(sc)) * s + torch.sigmoid(self.gate_cross(sc)) * c


class PyramidLevel(nn.Module):
    """One stage-1 level: per-modality self-attention, one shared banded cross-attention
    (used in both directions), gated merge, then a dilated conv block (dilation 2**level).

    Attention is pre-LN with a residual, so the gate merges ``v + SA(v)`` and ``v + CA(v, a)``.
    Padded query rows may see themselves (keeps softmax finite); valid rows never see padding.
    """

    def __init__(self, dim: int, level: int, heads: int = 8, dropout: float = 0.1):
        super().__init__()
        self.width = 2 ** level
        self.norm_v = nn.LayerNorm(dim)
        self.norm_a = nn.LayerNorm(dim)
        self.self_v = CrossAttention(dim, heads, proj_drop=dropout)
        self.self_a = CrossAttention(dim, heads, proj_drop=dropout)
        self.cross = CrossAttention(dim, heads, proj_drop=dropout)
        self.merge_v = GatedMerge(dim)
        self.merge_a = GatedMerge(dim)
        self.conv_v = ConvResidualBlock(dim, 3, dilation=self.width, dropout=dropout)
        self.conv_a = ConvResidualBlock(dim, 3, dilation=self.width, dropout=dropout)

    def forward(self, v: torch.Tensor, a: torch.Tensor, mask: torch.Tensor | None):
        s = v.shape[1]
        full = attention_mask(mask, s, keep_diagonal=True)
        band = attention_mask(mask, s, band_mask(s, s, self.width, v.device), keep_diagonal=True)
        nv, na = self.norm_v(v), self.norm_a(a)
        v_sa = v + self.self_v(nv, nv, full)
        a_sa = a + self.self_a(na, na, full)
        v_x = v + self.cross(nv, na, band)
        a_x = a + self.cross(na, nv, band)
        v = self.conv_v(self.merge_v(v_sa, v_x), mask)
        a = self.conv_a(self.merge_a(a_sa, a_x), mask)
        return v, a


class LevelScores(nn.Module):
    """Per-level weights in (0, 1), each modality's score queried against the other's.

    For level l: ``score_v[l] = sigmoid(<Wq p_v[l], Wk p_a[l]> / sqrt(d))`` with p the
    time-pooled level output; likewise for audio with its own projections.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.q_v, self.k_v = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_a, self.k_a = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, pv: torch.Tensor, pa: torch.Tensor):  # [B, L, d] each
        sv = torch.sigmoid((self.q_v(pv) * self.k_v(pa)).sum(-1) * self.scale)
        sa = torch.sigmoid((self.q_a(pa) * self.k_a(pv)).sum(-1) * self.scale)
        return sv, sa  # [B, L]


class GlobalCrossFusion(nn.Module):
    """Stage 2: ``A' = Linear(CrossAttn(A, V, V)) + A``, ``V'`` likewise; masked mean over time."""

    def __init__(self, dim: int, heads: int = 8, dropout: float = 0.1):
        super().__init__()
        self.attn_a = CrossAttention(dim, heads, attn_drop=0.0, proj_drop=dropout)
        self.attn_v = CrossAttention(dim, heads, attn_drop=0.0, proj_drop=dropout)
        self.out_a = nn.Linear(dim, dim)
        self.out_v = nn.Linear(dim, dim)

    def forward(self, v: torch.Tensor, a: torch.Tensor, mask: torch.Tensor | None):
        m = attention_mask(mask, v.shape[1], keep_diagonal=True)
        a2 = self.out_a(self.attn_a(a, v, m)) + a
        v2 = self.out_v(self.attn_v(v, a, m)) + v
        return masked_mean(a2, mask), masked_mean(v2, mask)


class AVCPNet(nn.Module):
    """``model(visual [B,S,Dv], audio [B,S,Da], mask=None) -> (logits, logits_audio, logits_visual)``.

    ``mask`` [B, S] bool marks valid segments (both modalities share the segment grid).
    ``n_levels`` defaults to ``ceil(log2(n_segments))`` (4 for 16 segments: bands 1, 2, 4, 8);
    any number of segments works at run time.
    """

    def __init__(self, visual_dim: int, audio_dim: int, n_classes: int, n_segments: int = 16,
                 d_model: int = 512, heads: int = 8, n_levels: int | None = None, dropout: float = 0.1):
        super().__init__()
        if d_model % heads:
            raise ValueError("d_model must be divisible by heads")
        self.n_levels = n_levels or max(1, math.ceil(math.log2(max(n_segments, 2))))
        self.d_model = d_model
        self.proj_v = nn.Linear(visual_dim, d_model)
        self.proj_a = nn.Linear(audio_dim, d_model)
        self.levels = nn.ModuleList(PyramidLevel(d_model, i, heads, dropout) for i in range(self.n_levels))
        self.level_scores = LevelScores(d_model)
        self.global_fusion = GlobalCrossFusion(d_model, heads, dropout)
        self.classifier = nn.Linear(2 * d_model, n_classes)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor | None = None):
        if visual.shape[:2] != audio.shape[:2]:
            raise ValueError(f"visual {tuple(visual.shape)} and audio {tuple(audio.shape)} "
                             "must share [B, S]")
        if mask is not None:
            mask = mask.to(torch.bool)
        v, a = self.proj_v(visual), self.proj_a(audio)
        outs_v, outs_a = [], []
        for level in self.levels:
            v, a = level(v, a, mask)
            outs_v.append(v)
            outs_a.append(a)
        lv, la = torch.stack(outs_v, 1), torch.stack(outs_a, 1)  # [B, L, S, d]
        pool_mask = None if mask is None else mask[:, None, :].expand(-1, lv.shape[1], -1)
        pv = masked_mean(lv, pool_mask, dim=2)
        pa = masked_mean(la, pool_mask, dim=2)
        sv, sa = self.level_scores(pv, pa)
        v = (lv * sv[..., None, None]).sum(1)
        a = (la * sa[..., None, None]).sum(1)
        a_vec, v_vec = self.global_fusion(v, a, mask)
        return self.split_logits(a_vec, v_vec)

    def split_logits(self, a: torch.Tensor, v: torch.Tensor):
        """Full, audio-only and visual-only logits from one weight (bias halved for the parts)."""
        w, b = self.classifier.weight, self.classifier.bias
        d = self.d_model
        logits = self.classifier(torch.cat([a, v], dim=-1))
        return logits, a @ w[:, :d].t() + b / 2, v @ w[:, d:].t() + b / 2
