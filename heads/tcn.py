"""Causal temporal convolutional network (the ABAW2 branch encoder).

Causal means the output at frame t depends on frames <= t only, so right padding of a
window never changes the outputs of the valid frames before it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .layers import TemporalBlock

__all__ = ["TemporalConvNet", "TCNRegressor", "receptive_field"]


def receptive_field(kernel_size: int, n_levels: int) -> int:
    """Frames seen by one output: two convs per level, dilation 2**i (121 for k=5, 4 levels)."""
    return 1 + 2 * (kernel_size - 1) * (2 ** n_levels - 1)


class TemporalConvNet(nn.Module):
    """Stack of :class:`~heads.layers.TemporalBlock`, level i dilated by 2**i.

    Takes and returns channels-last ``[B, T, D] -> [B, T, channels[-1]]``.
    Blocks live in ``self.network`` so keys read ``network.{i}.conv1...`` as in the
    published ABAW2 checkpoints.
    """

    def __init__(self, in_dim: int, channels: Sequence[int] = (128, 128, 128, 128), kernel_size: int = 5,
                 dropout: float = 0.1, dropout_mode: str = "channel"):
        super().__init__()
        channels = list(channels)
        if not channels:
            raise ValueError("channels must name at least one level")
        dims = [in_dim] + channels
        self.network = nn.Sequential(*[
            TemporalBlock(dims[i], dims[i + 1], kernel_size, dilation=2 ** i, dropout=dropout,
                          dropout_mode=dropout_mode)
            for i in range(len(channels))])
        self.in_dim = in_dim
        self.out_dim = channels[-1]
        self.kernel_size = kernel_size

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.kernel_size, len(self.network))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.transpose(1, 2)).transpose(1, 2)


class TCNRegressor(nn.Module):
    """``model(x [B,T,D]) -> [B,T,n_outputs]``: one :class:`TemporalConvNet` and a per-frame
    linear regressor. The ABAW2 leader-follower head with one branch and no fusion, so an
    ablation of one modality keeps that branch's sizes (experiments.models, ``tcn``)."""

    def __init__(self, in_dim: int, n_outputs: int = 1, channels: Sequence[int] = (128, 128, 128, 128),
                 kernel_size: int = 5, dropout: float = 0.1, dropout_mode: str = "channel",
                 tanh_output: bool = False):
        super().__init__()
        self.tcn = TemporalConvNet(in_dim, channels, kernel_size, dropout, dropout_mode)
        self.regressor = nn.Linear(self.tcn.out_dim, n_outputs)
        self.tanh_output = bool(tanh_output)

    @property
    def receptive_field(self) -> int:
        return self.tcn.receptive_field

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.regressor(self.tcn(x))
        return torch.tanh(out) if self.tanh_output else out
