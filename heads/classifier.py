"""A small single-modality sequence classifier (e.g. audio-only EmoDB emotions).

Encoder (causal TCN or pre-LN transformer) -> masked mean over time -> LayerNorm -> Linear.
Masked steps never reach the pooled vector, so padding a batch does not change a clip's
logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .layers import PreNormEncoder, masked_mean, sinusoidal_positions
from .tcn import TemporalConvNet

__all__ = ["SequenceClassifier"]


class SequenceClassifier(nn.Module):
    """``model(x [B,T,D], mask=None) -> [B, n_classes]`` logits.

    ``encoder="tcn"``: ``depth`` causal levels of width ``hidden`` (kernel ``kernel_size``).
    ``encoder="transformer"``: Linear to ``hidden``, sine positions, ``depth`` pre-LN blocks.
    """

    def __init__(self, input_dim: int, n_classes: int, encoder: str = "tcn", hidden: int = 128, depth: int = 3,
                 heads: int = 4, kernel_size: int = 3, dropout: float = 0.1):
        super().__init__()
        self.kind = encoder
        if encoder == "tcn":
            self.encoder = TemporalConvNet(input_dim, [hidden] * depth, kernel_size, dropout, "channel")
        elif encoder == "transformer":
            if hidden % heads:
                raise ValueError("hidden must be divisible by heads")
            self.input_proj = nn.Linear(input_dim, hidden)
            self.encoder = PreNormEncoder(hidden, depth, heads, hidden // heads, 2 * hidden, dropout, qkv_bias=True)
        else:
            raise ValueError(f"encoder must be 'tcn' or 'transformer', not {encoder!r}")
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            mask = mask.to(torch.bool)
            x = x * mask.unsqueeze(-1).to(x.dtype)  # no padded values leak into causal convs
        if self.kind == "tcn":
            h = self.encoder(x)
        else:
            h = self.input_proj(x)
            h = h + sinusoidal_positions(h.shape[1], h.shape[2], h.device, h.dtype)
            h = self.encoder(h, mask)
        return self.fc(self.drop(self.norm(masked_mean(h, mask))))
