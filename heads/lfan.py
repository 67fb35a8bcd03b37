"""ABAW2 leader-follower attentive fusion (continuous valence/arousal per frame).

The visual branch leads: its TCN output is always passed straight to the regressor, and the
audio branches only add an attention-fused summary next to it. Each modality is encoded by
a causal TCN, so every output frame sees the past ``receptive_field`` frames only.

``compat="reference"`` reproduces the published code exactly (audio q/v projected from the
already-projected key, scores ``K Q^T``, no output squashing) so its checkpoints give
identical outputs; ``compat="ours"`` is the computation the paper describes.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from .tcn import TemporalConvNet

__all__ = ["LeaderFollowerFusion", "LeaderFollower"]

_COMPAT = ("ours", "reference")


class LeaderFollowerFusion(nn.Module):
    """Per-time-step attention across modalities.

    For ``M`` audio branches the block is ``[1 + M, attn_dim]``: row 0 from the leader
    (visual), row j from audio branch j. ``F = LayerNorm_{[1+M, d]}(S V + V)`` with
    ``S = softmax(Q K^T / sqrt(d))`` (ours) or ``softmax(K Q^T / sqrt(d))`` (reference);
    returns ``[h_v ; flatten(F)]``.
    """

    def __init__(self, leader_dim: int, follower_dims: Sequence[int], attn_dim: int = 32, compat: str = "ours"):
        super().__init__()
        if compat not in _COMPAT:
            raise ValueError(f"compat must be one of {_COMPAT}, not {compat!r}")
        self.compat = compat
        self.attn_dim = attn_dim
        follower_dims = list(follower_dims)
        # reference: follower q/v read the follower's key (width attn_dim), not its features
        qv_in = [attn_dim] * len(follower_dims) if compat == "reference" else follower_dims
        self.key = nn.ModuleList([nn.Linear(leader_dim, attn_dim)] + [nn.Linear(d, attn_dim) for d in follower_dims])
        self.query = nn.ModuleList([nn.Linear(leader_dim, attn_dim)] + [nn.Linear(d, attn_dim) for d in qv_in])
        self.value = nn.ModuleList([nn.Linear(leader_dim, attn_dim)] + [nn.Linear(d, attn_dim) for d in qv_in])
        self.norm = nn.LayerNorm([1 + len(follower_dims), attn_dim])
        self.out_dim = leader_dim + (1 + len(follower_dims)) * attn_dim

    def forward(self, leader: torch.Tensor, followers: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(followers) != len(self.key) - 1:
            raise ValueError(f"expected {len(self.key) - 1} follower inputs, got {len(followers)}")
        keys = [self.key[0](leader)]
        queries = [self.query[0](leader)]
        values = [self.value[0](leader)]
        for j, h in enumerate(followers, start=1):
            k = self.key[j](h)
            src = k if self.compat == "reference" else h
            keys.append(k)
            queries.append(self.query[j](src))
            values.append(self.value[j](src))
        k = torch.stack(keys, dim=-2)  # [B, T, 1+M, d]
        q = torch.stack(queries, dim=-2)
        v = torch.stack(values, dim=-2)
        if self.compat == "reference":
            scores = k @ q.transpose(-1, -2)
        else:
            scores = q @ k.transpose(-1, -2)
        attn = torch.softmax(scores / math.sqrt(self.attn_dim), dim=-1)
        fused = self.norm(attn @ v + v)
        return torch.cat([leader, fused.flatten(-2)], dim=-1)


class LeaderFollower(nn.Module):
    """Visual-led audio-visual regressor: ``model(visual [B,T,Dv], [audio_i [B,T,Da_i]]) -> [B,T,n_outputs]``.

    ``audio_channels`` is one list used for every audio branch, or one list per branch.
    ``attn_dim`` defaults to the audio branches' last width (32 in ABAW2). One model per
    target was the reference; ``n_outputs=2`` regresses valence and arousal together.
    ``tanh_output`` (ours only) bounds outputs to [-1, 1] like the labels.
    """

    def __init__(self, visual_dim: int, audio_dims: Sequence[int],
                 visual_channels: Sequence[int] = (128, 128, 128, 128),
                 audio_channels: Sequence[int] | Sequence[Sequence[int]] = (32, 32, 32, 32),
                 kernel_size: int = 5, dropout: float = 0.1, dropout_mode: str = "channel",
                 attn_dim: int | None = None, n_outputs: int = 1, compat: str = "ours",
                 tanh_output: bool = False):
        super().__init__()
        audio_dims = list(audio_dims)
        if not audio_dims:
            raise ValueError("LeaderFollower needs at least one audio branch")
        if compat == "reference" and tanh_output:
            raise ValueError("compat='reference' has no tanh on the output")
        audio_channels = list(audio_channels)
        if audio_channels and isinstance(audio_channels[0], (list, tuple)):
            per_branch = [list(c) for c in audio_channels]
            if len(per_branch) != len(audio_dims):
                raise ValueError("one audio_channels list per audio branch")
        else:
            per_branch = [list(audio_channels)] * len(audio_dims)
        self.visual_tcn = TemporalConvNet(visual_dim, visual_channels, kernel_size, dropout, dropout_mode)
        self.audio_tcns = nn.ModuleList(
            TemporalConvNet(d, c, kernel_size, dropout, dropout_mode) for d, c in zip(audio_dims, per_branch))
        attn_dim = attn_dim or per_branch[0][-1]
        self.fusion = LeaderFollowerFusion(self.visual_tcn.out_dim, [t.out_dim for t in self.audio_tcns],
                                           attn_dim, compat)
        self.regressor = nn.Linear(self.fusion.out_dim, n_outputs)
        self.compat = compat
        self.tanh_output = tanh_output

    @property
    def receptive_field(self) -> int:
        return max([self.visual_tcn.receptive_field] + [t.receptive_field for t in self.audio_tcns])

    def forward(self, visual: torch.Tensor, audio: Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(audio, torch.Tensor):
            audio = [audio]
        if len(audio) != len(self.audio_tcns):
            raise ValueError(f"expected {len(self.audio_tcns)} audio inputs, got {len(audio)}")
        h_v = self.visual_tcn(visual)
        h_a = [tcn(a) for tcn, a in zip(self.audio_tcns, audio)]
        out = self.regressor(self.fusion(h_v, h_a))
        return torch.tanh(out) if self.tanh_output else out
