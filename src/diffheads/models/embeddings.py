"""Embeddings of the conditioning signals: timestep, audio window and identity frame (SPEC, network)."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_features(
    t: torch.Tensor, channels: int, max_period: float = 10000.0, standard: bool = False
) -> torch.Tensor:
    """Sinusoidal features [cos(t w_i) | sin(t w_i)], w_i = max_period^(-i / 2C), as the reference (float32).

    The reference divides by 2C (not C/2 as guided-diffusion), so its frequencies only span
    1 .. 10000^(-(C/2-1)/2C) ~ 0.1: every feature has a period under ~63 steps, and a small network
    struggles to tell t = 300 from t = 900. `standard=True` divides by C/2 (Vaswani et al. 2017;
    DDPM), reaching 1/max_period. The float32 order of the reference is kept: integer index times
    -ln(max_period), divided by the divisor, exp.
    """
    half = channels // 2
    index = torch.arange(half, device=t.device)
    freqs = torch.exp(index * -math.log(max_period) / (half if standard else 2 * channels))
    args = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Timestep features of width C, then Linear(C, 4C), SiLU, Linear(4C, 4C) (reference `time_embed`)."""

    def __init__(self, channels: int, standard: bool = False) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"timestep embedding width must be even, got {channels}")
        self.channels = channels
        self.standard = standard
        self.fc = nn.Sequential(
            nn.Linear(channels, 4 * channels),
            nn.SiLU(),
            nn.Linear(4 * channels, 4 * channels),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) timesteps (int or float, original unspaced values) -> (B, 4C)."""
        features = timestep_features(t, self.channels, standard=self.standard)
        return self.fc(features.to(self.fc[0].weight.dtype))


def audio_mlp(window_len: int, audio_dim: int, emb_dim: int) -> nn.Sequential:
    """Flattened (2k+1) x audio_dim window -> Linear, SiLU, Linear -> emb_dim (reference `audio_embed`)."""
    return nn.Sequential(
        nn.Linear(window_len * audio_dim, emb_dim),
        nn.SiLU(),
        nn.Linear(emb_dim, emb_dim),
    )


class AudioTokenEmbedding(nn.Sequential):
    """Per-row audio MLP (Linear, SiLU, Linear) plus a learned position per window row: (B, 2k+1, E) tokens.

    Used by the cross-attention audio variant, which needs one key/value per audio frame instead of
    one flattened vector; the positions tell the attention which row is the current frame.
    """

    def __init__(self, window_len: int, audio_dim: int, emb_dim: int) -> None:
        super().__init__(nn.Linear(audio_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.pos = nn.Parameter(torch.empty(window_len, emb_dim))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, audio_window: torch.Tensor) -> torch.Tensor:
        """(B, 2k+1, audio_dim) -> (B, 2k+1, E)."""
        return super().forward(audio_window) + self.pos


class IdentityEncoder(nn.Module):
    """Small conv encoder of the identity frame to one emb_dim vector (identity pre_gn / post_gn variants).

    A 3x3 stem at full resolution, one GroupNorm-SiLU-stride-2 conv per further level of `widths`,
    then GroupNorm, SiLU, global average pooling and a Linear projection.
    """

    def __init__(self, in_channels: int, widths: list[int], emb_dim: int, norm_groups: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(norm_groups, a), nn.SiLU(), nn.Conv2d(a, b, 3, stride=2, padding=1))
            for a, b in zip(widths[:-1], widths[1:])
        )
        self.norm = nn.GroupNorm(norm_groups, widths[-1])
        self.proj = nn.Linear(widths[-1], emb_dim)

    def forward(self, identity_frame: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, emb_dim)."""
        h = self.stem(identity_frame)
        for layer in self.down:
            h = layer(h)
        h = nn.functional.silu(self.norm(h)).mean(dim=(2, 3))
        return self.proj(h)
