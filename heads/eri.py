"""ABAW5 ERI model: GRU + transformer with a learned regression token, per modality.

The reference ran whole clips one at a time. Here clips are batched with padding; the GRU
reads packed sequences and the transformer gets a key-padding mask, so a padded batch
gives the same outputs as one clip at a time. No positional encoding: the GRU gives order.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .layers import PreNormEncoder, compact_valid

__all__ = ["TokenGRUEncoder", "ERIModel"]


class TokenGRUEncoder(nn.Module):
    """``[B, T, D]`` (+ mask) -> ``[B, hidden]``: GRU, prepend a token, pre-LN transformer, token out.

    Masked-out steps are removed (valid steps moved to the front) before the GRU, so a mask
    with holes behaves like the clip without those frames. A clip with no valid step gives
    the transformer only the token.
    """

    def __init__(self, in_dim: int, hidden: int = 256, gru_layers: int = 2, depth: int = 4, heads: int = 4,
                 dim_head: int = 64, mlp_dim: int = 256, dropout: float = 0.2, attn_drop: float = 0.0):
        super().__init__()
        self.gru = nn.GRU(in_dim, hidden, num_layers=gru_layers, batch_first=True)
        self.token = nn.Parameter(torch.randn(1, 1, hidden))
        self.encoder = PreNormEncoder(hidden, depth, heads, dim_head, mlp_dim, dropout, attn_drop, qkv_bias=False)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        if mask is None:
            h, _ = self.gru(x)
            valid = None
        else:
            mask = mask.to(torch.bool)
            x, lengths = compact_valid(x, mask)
            packed = pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
            h, _ = self.gru(packed)
            h, _ = pad_packed_sequence(h, batch_first=True, total_length=t)
            valid = torch.arange(t, device=x.device)[None] < lengths[:, None]
        tokens = torch.cat([self.token.expand(b, -1, -1).to(h.dtype), h], dim=1)
        if valid is not None:
            valid = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), valid], dim=1)
        return self.encoder(tokens, valid)[:, 0]


class ERIModel(nn.Module):
    """Video + audio reaction-intensity regressor.

    ``model(video [B,T,D], audio [B,Ta,Da], video_mask=None, audio_mask=None) -> [B, n_outputs]``
    in (0, 1). Masks are bool, True = valid.

    ``local_dim``: the last ``local_dim`` columns of ``video`` are local features (AUs,
    landmarks) concatenated after the holistic embedding; with ``local_proj`` they get their
    own ``Linear -> GELU`` to that width before the concat, so a wide landmark vector does
    not swamp the holistic one. ``video_dim`` / ``audio_dim`` = None drops that branch
    (single-modality ablations); its forward argument is then ignored.
    """

    def __init__(self, video_dim: int | None, audio_dim: int | None, n_outputs: int = 7, hidden: int = 256,
                 gru_layers: int = 2, depth: int = 4, heads: int = 4, dim_head: int = 64, mlp_dim: int = 256,
                 dropout: float = 0.2, attn_drop: float = 0.0, head_hidden: int = 256, head_dropout: float = 0.3,
                 local_dim: int = 0, local_proj: int | None = None):
        super().__init__()
        if video_dim is None and audio_dim is None:
            raise ValueError("ERIModel needs a video or an audio branch")
        enc = dict(hidden=hidden, gru_layers=gru_layers, depth=depth, heads=heads, dim_head=dim_head,
                   mlp_dim=mlp_dim, dropout=dropout, attn_drop=attn_drop)
        self.local_dim = int(local_dim)
        self.local_proj = None
        if video_dim is not None:
            if not 0 <= self.local_dim <= video_dim:
                raise ValueError("local_dim must be within video_dim")
            gru_in = video_dim
            if self.local_dim and local_proj:
                self.local_proj = nn.Sequential(nn.Linear(self.local_dim, local_proj), nn.GELU())
                gru_in = video_dim - self.local_dim + local_proj
            self.video = TokenGRUEncoder(gru_in, **enc)
        else:
            self.video = None
        self.audio = TokenGRUEncoder(audio_dim, **enc) if audio_dim is not None else None
        n_branches = (self.video is not None) + (self.audio is not None)
        self.head = nn.Sequential(
            nn.Linear(n_branches * hidden, head_hidden, bias=False),
            nn.Dropout(head_dropout),
            nn.Linear(head_hidden, n_outputs, bias=False),
        )

    def forward(self, video: torch.Tensor | None, audio: torch.Tensor | None = None,
                video_mask: torch.Tensor | None = None, audio_mask: torch.Tensor | None = None) -> torch.Tensor:
        parts = []
        if self.video is not None:
            if self.local_proj is not None:
                split = video.shape[-1] - self.local_dim
                video = torch.cat([video[..., :split], self.local_proj(video[..., split:])], dim=-1)
            parts.append(self.video(video, video_mask))
        if self.audio is not None:
            parts.append(self.audio(audio, audio_mask))
        return torch.sigmoid(self.head(torch.cat(parts, dim=-1)))
