"""UNet building blocks: residual blocks, self-attention and the audio attention variants (SPEC, network).

Parameter names follow the reference (guided-diffusion family) so its weights load unchanged; the
`_ours` conditioning variants (docs/model.md) add parameters of our own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffheads.config import AudioCondition, IdCondition


def zero_init(module: nn.Module) -> nn.Module:
    """Zero every parameter, so a residual branch starts as the identity (guided-diffusion convention)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def head_count(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Heads of width num_head_channels, or num_heads when num_head_channels is -1 (reference rule)."""
    if num_head_channels == -1:
        if channels % num_heads:
            raise ValueError(f"{channels} attention channels do not split into {num_heads} heads")
        return num_heads
    if channels % num_head_channels:
        raise ValueError(f"{channels} attention channels do not split into heads of {num_head_channels}")
    return channels // num_head_channels


@dataclass
class BlockEmbeddings:
    """The per-call vectors the residual blocks read; each block uses only the fields of its variant.

    time: (B, E) time embedding, with the audio / identity vectors already added for the pre_gn variants.
    audio: (B, E) audio embedding (audio double_pre_gn, post_gn, post_gn_ours, attention).
    audio_tokens: (B, 2k+1, E) one token per audio row (audio attention_ours).
    identity: (B, E) identity-encoder vector (identity post_gn, post_gn_ours).
    """

    time: torch.Tensor
    audio: torch.Tensor | None = None
    audio_tokens: torch.Tensor | None = None
    identity: torch.Tensor | None = None


ATTENTION_IMPLS = ("sdpa", "einsum")
"""Attention arithmetic: `sdpa` F.scaled_dot_product_attention (default, fused kernels where available);
`einsum` the reference's QKVAttentionLegacy arithmetic (q and k each scaled by d^-1/4, einsum, softmax
in float32 cast back to the input dtype, einsum), to reproduce the original operation order."""


def _check_impl(impl: str) -> str:
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose one of {', '.join(ATTENTION_IMPLS)}")
    return impl


def legacy_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """QKVAttentionLegacy core: q (N, d, T), k and v (N, d, S) -> (N, d, T).

    scale = 1/sqrt(sqrt(d)) on q and k separately, weight = einsum("bct,bcs->bts"), softmax over s
    in float32 then cast back to the weight dtype, a = einsum("bts,bcs->bct", weight, v).
    One deliberate difference: float64 inputs keep a float64 softmax (the reference's `.float()` would
    round it to float32); for float16 / bfloat16 / float32 the arithmetic is the reference's.
    """
    scale = 1 / math.sqrt(math.sqrt(q.shape[1]))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    softmax_dtype = torch.promote_types(weight.dtype, torch.float32)
    weight = torch.softmax(weight.to(softmax_dtype), dim=-1).type(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v)


def qkv_attention(qkv: torch.Tensor, num_heads: int, impl: str) -> torch.Tensor:
    """QKVAttentionLegacy on (B, 3C, T) -> (B, C, T): heads are contiguous groups of 3d rows, each [q | k | v].

    `impl` "einsum" is the reference's arithmetic (`legacy_attention`); "sdpa" the same maths through
    F.scaled_dot_product_attention.
    """
    b, width, length = qkv.shape
    d = width // (3 * num_heads)
    if impl == "einsum":
        q, k, v = qkv.reshape(b * num_heads, 3 * d, length).split(d, dim=1)
        return legacy_attention(q, k, v).reshape(b, -1, length)
    if impl == "sdpa":
        q, k, v = qkv.reshape(b, num_heads, 3 * d, length).transpose(2, 3).split(d, dim=-1)
        return F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, -1, length)
    raise ValueError(f"unknown attention implementation {impl!r}; use set_attention()")


def set_attention(model: nn.Module, impl: str) -> None:
    """Switch every self- and cross-attention module of `model` to `impl` ("sdpa" or "einsum").

    Runtime behaviour only: no parameter, buffer or state_dict key changes. Raises ValueError for unknown names.
    """
    _check_impl(impl)
    for module in model.modules():
        if isinstance(module, (AttentionBlock, AudioAttentionBlock, AudioCrossAttention)):
            module.impl = impl


def _spatial(v: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, C, 1, 1) for broadcasting over feature maps."""
    return v[:, :, None, None]


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions, residual, with the legacy per-head [q, k, v] qkv layout.

    The qkv conv output (3C channels) is n_heads groups of 3d channels, each ordered [q | k | v]
    (guided-diffusion QKVAttentionLegacy); softmax(q k^T / sqrt(d)) v via scaled_dot_product_attention
    (`impl` "sdpa", default), whose kernels accumulate the softmax in float32, or via the reference's
    einsum arithmetic (`impl` "einsum", see `legacy_attention`). `impl` is a plain attribute, not state.
    """

    def __init__(self, channels: int, num_heads: int, norm_groups: int = 32, impl: str = "sdpa") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.impl = _check_impl(impl)
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.impl)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class AudioAttentionBlock(nn.Module):
    """The reference's audio `attention` variant: takes the place of every self-attention block.

    The audio vector (B, E) is projected to one value per feature-map position (`audio_emb_proj`,
    E -> side^2), repeated over the C channels, group-normalised (`norm_emb`) and mapped to 2C rows
    (`kv`); the queries are a 1x1 conv of the normalised features (`norm_x`, `q`). The 3C rows
    [q | kv] are then split per head exactly like a self-attention qkv (legacy layout, `qkv_attention`):
    with several heads, a head's q, k and v are consecutive d-row slices of that concatenation, so
    query rows can serve as keys. That is the reference's arithmetic, kept because its weights were
    trained with it. Residual, zero-initialised `proj_out`. Feature maps must be side x side.
    """

    def __init__(
        self, channels: int, emb_dim: int, side: int, num_heads: int, norm_groups: int = 32, impl: str = "sdpa"
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.impl = _check_impl(impl)
        self.audio_emb_proj = nn.Linear(emb_dim, side * side)
        self.norm_x = nn.GroupNorm(norm_groups, channels)
        self.norm_emb = nn.GroupNorm(norm_groups, channels)
        self.q = nn.Conv1d(channels, channels, 1)
        self.kv = nn.Conv1d(channels, 2 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: BlockEmbeddings) -> torch.Tensor:
        """(B, C, H, W) features, emb.audio (B, E) -> (B, C, H, W)."""
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        audio = self.audio_emb_proj(emb.audio)
        if audio.shape[1] != x.shape[2]:
            raise ValueError(f"audio attention was built for {audio.shape[1]} positions, got feature maps {spatial}")
        audio = audio[:, None, :].expand(-1, c, -1)
        qkv = torch.cat([self.q(self.norm_x(x)), self.kv(self.norm_emb(audio))], dim=1)
        h = qkv_attention(qkv, self.num_heads, self.impl)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class AudioCrossAttention(nn.Module):
    """Residual cross-attention from every feature position to the 2k+1 audio tokens (audio `attention_ours`).

    Queries: 1x1 conv of the group-normalised features; keys and values: one Linear of the audio
    tokens (B, 2k+1, E) to 2C channels, laid out [k | v], each head-major. Output projection zero-initialised.
    `impl` as in AttentionBlock ("sdpa" default, "einsum" the reference arithmetic).
    """

    def __init__(
        self, channels: int, context_dim: int, num_heads: int, norm_groups: int = 32, impl: str = "sdpa"
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.impl = _check_impl(impl)
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.q = nn.Conv1d(channels, channels, 1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), (B, S, E) -> (B, C, H, W)."""
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        d = c // self.num_heads
        q = self.q(self.norm(x))
        k, v = self.kv(tokens).reshape(b, -1, 2, self.num_heads, d).permute(2, 0, 3, 1, 4)  # (B, heads, S, d)
        if self.impl == "einsum":
            q = q.reshape(b * self.num_heads, d, -1)
            k = k.transpose(2, 3).reshape(b * self.num_heads, d, -1)
            v = v.transpose(2, 3).reshape(b * self.num_heads, d, -1)
            h = legacy_attention(q, k, v).reshape(b, c, -1)
        elif self.impl == "sdpa":
            q = q.reshape(b, self.num_heads, d, -1).transpose(2, 3)
            h = F.scaled_dot_product_attention(q, k, v)
            h = h.transpose(2, 3).reshape(b, c, -1)
        else:
            raise ValueError(f"unknown attention implementation {self.impl!r}; use set_attention()")
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


def _out_layers(channels: int, norm_groups: int, dropout: float) -> nn.Sequential:
    """A residual block's second half: norm, SiLU, dropout, zero-initialised 3x3 conv (the reference's out_layers)."""
    return nn.Sequential(
        nn.GroupNorm(norm_groups, channels),
        nn.SiLU(),
        nn.Dropout(p=dropout),
        zero_init(nn.Conv2d(channels, channels, 3, padding=1)),
    )


def _resampler(up: bool, down: bool) -> nn.Module | None:
    """Nearest x2 (up), 2x2 average pooling (down) or nothing: parameter-free, as the reference."""
    if up:
        return nn.Upsample(scale_factor=2, mode="nearest")
    return nn.AvgPool2d(2) if down else None


def _input_path(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, x) after `in_layers`; up/down blocks resample both paths after the first norm + SiLU, before the conv."""
    if block.resample is None:
        return block.in_layers(x), x
    h = block.resample(block.in_layers[:-1](x))
    return block.in_layers[-1](h), block.resample(x)


class ResBlock(nn.Module):
    """Unconditioned residual block of the reference identity encoder: CondResBlock without conditioning."""

    def __init__(
        self,
        channels: int,
        dropout: float,
        out_channels: int | None = None,
        up: bool = False,
        down: bool = False,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            nn.GroupNorm(norm_groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.resample = _resampler(up, down)
        self.out_layers = _out_layers(out_channels, norm_groups, dropout)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H', W')."""
        h, x = _input_path(self, x)
        return self.skip_connection(x) + self.out_layers(h)


class CondResBlock(nn.Module):
    """Residual block conditioned on time, audio and optionally identity (paper, sec. 3; SPEC, network).

    After the second GroupNorm: h = GN(h) * (1 + s_t) + b_t, then by audio variant
      double_pre_gn: h = h * (1 + s_a) + b_a      (`audio_emb_layers`: SiLU, Linear E -> 2*out)
      post_gn:       h = h * s_a                  (`audio_emb_layers`: SiLU, Linear E -> out; reference)
      post_gn_ours:  h = h * (1 + s_a)            (same layers; ours)
      pre_gn, attention: nothing here (the audio vector is in the time embedding / the attention blocks)
      attention_ours: nothing here; `audio_attn` cross-attends to the audio tokens after the residual sum,
    then by identity variant
      post_gn:       h = h * s_id                 (`x_emb_layers`: SiLU, Linear E -> out; reference)
      post_gn_ours:  h = h * (1 + s_id)           (`id_emb_layers`: SiLU, Linear E -> out; ours)
    then SiLU, dropout, zero-initialised conv, plus the skip path. Up/down blocks resample after
    the first norm + SiLU (nearest x2 / 2x2 average pooling), on both paths, before the first conv.
    Our post_gn designs use 1 + s, which keeps the block well-conditioned at initialisation like the
    other modulations; the reference names keep the reference's plain product.
    """

    def __init__(
        self,
        channels: int,
        emb_dim: int,
        dropout: float,
        out_channels: int | None = None,
        up: bool = False,
        down: bool = False,
        audio_condition: AudioCondition = AudioCondition.DOUBLE_PRE_GN,
        id_condition: IdCondition = IdCondition.FRAME,
        num_heads: int = 1,  # heads of the audio cross-attention (audio attention variant only)
        norm_groups: int = 32,  # GroupNorm groups (the reference's 32)
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.audio_condition = AudioCondition(audio_condition)
        self.id_condition = IdCondition(id_condition)
        self.in_layers = nn.Sequential(
            nn.GroupNorm(norm_groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.resample = _resampler(up, down)
        self.t_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        if self.id_condition is IdCondition.POST_GN:  # registered before the audio layers, as the reference
            self.x_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        if self.audio_condition is AudioCondition.DOUBLE_PRE_GN:
            self.audio_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        elif self.audio_condition in (AudioCondition.POST_GN, AudioCondition.POST_GN_OURS):
            self.audio_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        if self.id_condition is IdCondition.POST_GN_OURS:
            self.id_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = _out_layers(out_channels, norm_groups, dropout)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        if self.audio_condition is AudioCondition.ATTENTION_OURS:
            self.audio_attn = AudioCrossAttention(out_channels, emb_dim, num_heads, norm_groups)

    def forward(self, x: torch.Tensor, emb: BlockEmbeddings) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H', W')."""
        h, x = _input_path(self, x)
        scale, shift = _spatial(self.t_emb_layers(emb.time)).chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        if self.audio_condition is AudioCondition.DOUBLE_PRE_GN:
            scale, shift = _spatial(self.audio_emb_layers(emb.audio)).chunk(2, dim=1)
            h = h * (1 + scale) + shift
        elif self.audio_condition is AudioCondition.POST_GN:
            h = h * _spatial(self.audio_emb_layers(emb.audio))
        elif self.audio_condition is AudioCondition.POST_GN_OURS:
            h = h * (1 + _spatial(self.audio_emb_layers(emb.audio)))
        if self.id_condition is IdCondition.POST_GN:
            h = h * _spatial(self.x_emb_layers(emb.identity))
        elif self.id_condition is IdCondition.POST_GN_OURS:
            h = h * (1 + _spatial(self.id_emb_layers(emb.identity)))
        h = self.skip_connection(x) + self.out_layers[1:](h)
        if self.audio_condition is AudioCondition.ATTENTION_OURS:
            h = self.audio_attn(h, emb.audio_tokens)
        return h


class EmbedSequential(nn.Sequential):
    """Sequential that hands the block embeddings to the conditioned blocks and plain inputs to the rest."""

    def forward(self, x: torch.Tensor, emb: BlockEmbeddings) -> torch.Tensor:  # type: ignore[override]
        """Apply the layers in order."""
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (CondResBlock, AudioAttentionBlock)) else layer(x)
        return x
