"""The conditional UNet of Diffused Heads (paper, sec. 3; SPEC, network), weight-compatible with the reference."""

from __future__ import annotations

import torch
from torch import nn

from diffheads.conditioning import Conditioning
from diffheads.config import AudioCondition, IdCondition, ModelConfig, TimeFrequencies
from diffheads.errors import DiffheadsError
from diffheads.models.blocks import (
    AttentionBlock,
    AudioAttentionBlock,
    BlockEmbeddings,
    CondResBlock,
    EmbedSequential,
    ResBlock,
    head_count,
    zero_init,
)
from diffheads.models.embeddings import AudioTokenEmbedding, IdentityEncoder, TimestepEmbedding, audio_mlp
from diffheads.models.mouth_bank import MouthBank, MouthPredictor
from diffheads.models.mouth_sketch import MOUTH_POINTS, render_sketch


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters."""
    return sum(p.numel() for p in model.parameters())


def _check(cfg: ModelConfig) -> None:
    """Reject widths and sizes the network cannot be built with, naming the config key."""
    widths = [cfg.model_channels * m for m in cfg.channel_mult]
    if cfg.norm_groups < 1 or any(w % cfg.norm_groups for w in widths):
        raise DiffheadsError(
            f"model.model_channels * model.channel_mult gives widths {widths}; "
            f"each must be a multiple of model.norm_groups ({cfg.norm_groups})"
        )
    if cfg.image_size % 2 ** (len(widths) - 1):
        raise DiffheadsError(
            f"model.image_size {cfg.image_size} must be divisible by {2 ** (len(widths) - 1)} for {len(widths)} levels"
        )
    if any(r <= 0 for r in cfg.attention_resolutions):
        raise DiffheadsError(f"model.attention_resolutions {cfg.attention_resolutions} must hold feature-map sides > 0")


def attention_heads(cfg: ModelConfig, channels: int) -> int:
    """Heads of an attention block of `channels` (reference rule), as a config error when they do not split."""
    try:
        return head_count(channels, cfg.num_heads, cfg.num_head_channels)
    except ValueError as exc:
        raise DiffheadsError(f"{exc}; change model.num_head_channels or model.num_heads") from None


def attention_factors(cfg: ModelConfig) -> set[int]:
    """Downsample factors with attention: the reference stores image_size // r for each side r."""
    return {cfg.image_size // r for r in cfg.attention_resolutions}


class UNetIdentityEncoder(nn.Module):
    """The reference identity encoder (identity pre_gn / post_gn): the UNet's encoder half, unconditioned.

    `input_blocks` (first conv on the identity frame, per level num_res_blocks plain residual blocks
    with self-attention at the UNet's attention levels, a down-sampling residual block between
    levels), `middle_block` (res, attention, res), then `out`: GroupNorm, SiLU, global average
    pooling and a zero-initialised 1x1 conv to the 4C embedding width. At initialisation its vector is 0.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.model_channels
        factors = attention_factors(cfg)
        ch = c * cfg.channel_mult[0]
        self.input_blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        ds = 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, cfg.dropout, c * mult, norm_groups=cfg.norm_groups)]
                ch = c * mult
                if ds in factors:
                    layers.append(AttentionBlock(ch, attention_heads(cfg, ch), cfg.norm_groups))
                self.input_blocks.append(nn.Sequential(*layers))
            if level != len(cfg.channel_mult) - 1:
                if cfg.resblock_updown:
                    down = ResBlock(ch, cfg.dropout, ch, down=True, norm_groups=cfg.norm_groups)
                    self.input_blocks.append(nn.Sequential(down))
                else:
                    self.input_blocks.append(nn.AvgPool2d(2))
                ds *= 2
        self.middle_block = nn.Sequential(
            ResBlock(ch, cfg.dropout, norm_groups=cfg.norm_groups),
            AttentionBlock(ch, attention_heads(cfg, ch), cfg.norm_groups),
            ResBlock(ch, cfg.dropout, norm_groups=cfg.norm_groups),
        )
        self.out = nn.Sequential(
            nn.GroupNorm(cfg.norm_groups, ch),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            zero_init(nn.Conv2d(ch, 4 * c, 1)),
            nn.Flatten(),
        )

    def forward(self, identity_frame: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 4C)."""
        h = identity_frame
        for block in self.input_blocks:
            h = block(h)
        return self.out(self.middle_block(h))


class UNet(nn.Module):
    """Predicts noise (and variance interpolation) of x_t given timestep, identity, motion frames and audio.

    Layout of the reference: `input_blocks` (first conv, then per level num_res_blocks residual blocks with
    self-attention at the attention resolutions, and a resampling residual block between levels),
    `middle_block` (res, attention, res), `output_blocks` (num_res_blocks + 1 per level on the skip stack),
    head `out`. attention_resolutions are feature-map sides: attention sits where
    image_size // downsample factor equals one of them (reference stores image_size // r).
    Every variant under the reference's name has the reference's parameters and arithmetic:
    identity pre_gn / post_gn add `identity_encoder` (registered first, as there) and, for post_gn,
    per-block `x_emb_layers`; audio post_gn has per-block `audio_emb_layers` of width out, pre_gn none,
    and attention replaces every self-attention block by an `AudioAttentionBlock`. Our own designs
    (`_ours`) add `id_encoder` (identity pre_gn_ours / post_gn_ours), per-block `id_emb_layers`
    (post_gn_ours), and per-block `audio_attn` with `audio_embed.pos` (audio attention_ours).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _check(cfg)
        self.cfg = cfg
        self.id_condition = IdCondition(cfg.id_condition_type)
        self.audio_condition = AudioCondition(cfg.audio_condition_type)
        self.audio_dim = cfg.audio_dim if cfg.audio_dim is not None else cfg.model_channels
        self.in_channels = cfg.in_channels + cfg.n_motion_frames * cfg.motion_channels
        if self.id_condition is IdCondition.FRAME:
            self.in_channels += cfg.in_channels
        if cfg.mouth_sketch_centre:
            self.in_channels += 1
        # registration order (embeddings, input, middle, output, head) fixes the seeded init and state-dict order
        self._build_embeddings()
        ch, ds, skip_widths = self._build_input_blocks()
        self.middle_block = EmbedSequential(self._res_block(ch, ch), self._attention(ch, ds), self._res_block(ch, ch))
        ch = self._build_output_blocks(ch, ds, skip_widths)
        self.out = nn.Sequential(
            nn.GroupNorm(cfg.norm_groups, ch),
            nn.SiLU(),
            zero_init(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)),
        )
        if cfg.mouth_bank:  # registered last: every other variant keeps its seeded init
            self.mouth_bank = MouthBank(cfg.mouth_bank, cfg.mouth_bank_box, cfg.image_size)
            self.mouth_predictor = MouthPredictor(cfg.audio_window_len * self.audio_dim)
            if cfg.frame_size != cfg.image_size:  # the same mouths at the output size
                self.mouth_bank_out = MouthBank(cfg.mouth_bank, cfg.mouth_bank_box, cfg.frame_size)

    @property
    def _emb_dim(self) -> int:
        """Width of the time, audio and identity vectors the blocks receive."""
        return 4 * self.cfg.model_channels

    def _cross_heads(self, ch: int) -> int:
        """Heads of the audio cross-attention of a block of `ch` channels."""
        # audio cross-attention runs in every block; widths the head rule cannot split get one head
        try:
            return head_count(ch, self.cfg.num_heads, self.cfg.num_head_channels)
        except ValueError:
            return 1

    def _res_block(self, ch: int, out_ch: int, **updown: bool) -> CondResBlock:
        """A conditioned residual block from `ch` to `out_ch` channels (optionally resampling)."""
        return CondResBlock(
            ch,
            self._emb_dim,
            self.cfg.dropout,
            out_ch,
            audio_condition=self.audio_condition,
            id_condition=self.id_condition,
            num_heads=self._cross_heads(out_ch),
            norm_groups=self.cfg.norm_groups,
            **updown,
        )

    def _attention(self, ch: int, ds: int) -> nn.Module:
        """The self-attention block at downsample factor `ds` (audio-attending for audio attention)."""
        cfg = self.cfg
        if self.audio_condition is AudioCondition.ATTENTION:
            return AudioAttentionBlock(
                ch, self._emb_dim, cfg.image_size // ds, attention_heads(cfg, ch), cfg.norm_groups
            )
        return AttentionBlock(ch, attention_heads(cfg, ch), cfg.norm_groups)

    def _resample(self, ch: int, up: bool) -> nn.Module:
        """The block between levels: a resampling residual block, or plain up/down-sampling."""
        if self.cfg.resblock_updown:
            return self._res_block(ch, ch, up=up, down=not up)
        return nn.Upsample(scale_factor=2, mode="nearest") if up else nn.AvgPool2d(2)

    def _build_embeddings(self) -> None:
        """Register the identity encoder (reference variants), time and audio embeddings, and our id encoder."""
        cfg, c, emb_dim = self.cfg, self.cfg.model_channels, self._emb_dim
        if self.id_condition in (IdCondition.PRE_GN, IdCondition.POST_GN):
            self.identity_encoder = UNetIdentityEncoder(cfg)
        self.time_embed = TimestepEmbedding(c, standard=cfg.time_frequencies is TimeFrequencies.STANDARD)
        if self.audio_condition is AudioCondition.ATTENTION_OURS:
            self.audio_embed: nn.Module = AudioTokenEmbedding(cfg.audio_window_len, self.audio_dim, emb_dim)
        else:
            self.audio_embed = audio_mlp(cfg.audio_window_len, self.audio_dim, emb_dim)
        if cfg.mouth_shape_head:
            if self.audio_condition is AudioCondition.ATTENTION_OURS:
                raise DiffheadsError(
                    "model.mouth_shape_head needs one audio vector per frame; audio_condition_type attention_ours "
                    "makes tokens: choose another audio_condition_type or turn the head off"
                )
            self.mouth_head = nn.Linear(emb_dim, 2 * MOUTH_POINTS)
        if self.id_condition in (IdCondition.PRE_GN_OURS, IdCondition.POST_GN_OURS):
            widths = [c * m for m in cfg.channel_mult]
            self.id_encoder = IdentityEncoder(cfg.in_channels, widths, emb_dim, cfg.norm_groups)

    def _build_input_blocks(self) -> tuple[int, int, list[int]]:
        """Register `input_blocks`; return the last width, the downsample factor reached and the skip widths."""
        cfg, c = self.cfg, self.cfg.model_channels
        factors = attention_factors(cfg)
        ch = c * cfg.channel_mult[0]
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(self.in_channels, ch, 3, padding=1))])
        skip_widths = [ch]
        ds = 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [self._res_block(ch, c * mult)]
                ch = c * mult
                if ds in factors:
                    layers.append(self._attention(ch, ds))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_widths.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(self._resample(ch, up=False)))
                skip_widths.append(ch)
                ds *= 2
        return ch, ds, skip_widths

    def _build_output_blocks(self, ch: int, ds: int, skip_widths: list[int]) -> int:
        """Register `output_blocks`, consuming the skip widths; return the final width."""
        cfg, c = self.cfg, self.cfg.model_channels
        factors = attention_factors(cfg)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [self._res_block(ch + skip_widths.pop(), c * mult)]
                ch = c * mult
                if ds in factors:
                    layers.append(self._attention(ch, ds))
                if level and i == cfg.num_res_blocks:
                    layers.append(self._resample(ch, up=True))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        return ch

    def embed(self, t: torch.Tensor, cond: Conditioning) -> BlockEmbeddings:
        """Time, audio and identity vectors for the blocks, combined as the variants prescribe.

        Reference order of the sums: identity pre_gn gives identity + time, then audio pre_gn adds the audio.
        """
        emb = BlockEmbeddings(time=self.time_embed(t))
        if self.id_condition is IdCondition.PRE_GN:
            emb.time = self.identity_encoder(cond.identity_frame) + emb.time
        elif self.id_condition is IdCondition.POST_GN:
            emb.identity = self.identity_encoder(cond.identity_frame)
        window = cond.audio_window
        if self.audio_condition is AudioCondition.ATTENTION_OURS:
            emb.audio_tokens = self.audio_embed(window)
        else:
            audio = self.audio_embed(window.reshape(window.shape[0], -1))
            if self.audio_condition is AudioCondition.PRE_GN:
                emb.time = emb.time + audio
            else:
                emb.audio = audio
        if self.id_condition in (IdCondition.PRE_GN_OURS, IdCondition.POST_GN_OURS):
            identity = self.id_encoder(cond.identity_frame)
            if self.id_condition is IdCondition.PRE_GN_OURS:
                emb.time = emb.time + identity
            else:
                emb.identity = identity
        return emb

    def mouth_shape(self, audio_window: torch.Tensor) -> torch.Tensor:
        """(B, 2k+1, audio_dim) -> (B, 20, 2): the mouth shape the audio embedding predicts (model.mouth_shape_head;
        models/mouth_sketch.py gives its units)."""
        audio = self.audio_embed(audio_window.reshape(audio_window.shape[0], -1))
        return self.mouth_head(audio).view(-1, MOUTH_POINTS, 2)

    def base_frame(
        self,
        identity_frames: torch.Tensor,
        audio_window: torch.Tensor,
        shapes: torch.Tensor | None = None,
        output: bool = False,
    ) -> torch.Tensor:
        """The frame this network starts from: the identity frame, with model.mouth_bank its mouth box showing the
        person's mouth for `shapes` (B, 20, 2) or, when None, for the shapes the audio predicts. `output`: the
        identity frames are at model.output_size and so is the base (the bank's mouths at that size)."""
        if not self.cfg.mouth_bank:
            return identity_frames
        if shapes is None:
            shapes = self.mouth_predictor(audio_window)
        bank = self.mouth_bank_out if output and self.cfg.frame_size != self.cfg.image_size else self.mouth_bank
        return bank.base(identity_frames, shapes)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """(B, 3, H, W) noisy frame, (B,) original timesteps -> (B, out_channels, H, W)."""
        window = cond.audio_window
        if tuple(window.shape[1:]) != (self.cfg.audio_window_len, self.audio_dim):
            raise DiffheadsError(
                f"audio window has shape {tuple(window.shape)}, the model expects (B, {self.cfg.audio_window_len}, "
                f"{self.audio_dim}); set model.audio_dim / model.n_audio_motion_embs to match the embeddings"
            )
        side = self.cfg.image_size
        if self.audio_condition is AudioCondition.ATTENTION and tuple(x_t.shape[-2:]) != (side, side):
            raise DiffheadsError(
                f"frames are {tuple(x_t.shape[-2:])}, but audio_condition_type attention only works on "
                f"{side}x{side} frames (model.image_size): its audio projection has one value per position"
            )
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        emb = self.embed(t, cond)
        parts = [x_t, cond.motion_frames]
        if self.id_condition is IdCondition.FRAME:
            parts.append(cond.identity_frame)
        if self.cfg.mouth_sketch_centre:
            shape = cond.mouth_shape if cond.mouth_shape is not None else self.mouth_shape(window)
            parts.append(render_sketch(shape.to(x_t.dtype), self.cfg.mouth_sketch_centre, x_t.shape[-1]))
        h = torch.cat(parts, dim=1)
        if h.shape[1] != self.in_channels:
            raise DiffheadsError(
                f"network input has {h.shape[1]} channels (x_t, motion frames, identity), the model expects "
                f"{self.in_channels}; check model.grayscale_motion and model.n_motion_frames"
            )
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
