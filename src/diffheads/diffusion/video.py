"""Autoregressive video sampling: each frame is a full diffusion sample (SPEC, sampling a video).

The loop only feeds motion frames and audio windows; the per-frame solver is pluggable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffheads.conditioning import Conditioning
from diffheads.config import ModelConfig, SampleConfig
from diffheads.diffusion import target as diffused
from diffheads.diffusion.gaussian import GaussianDiffusion
from diffheads.diffusion.motion import hide_mouth, motion_transform
from diffheads.diffusion.samplers import Generators, randn, sample_frame


def downscale(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, S, S) -> (B, 3, size, size): antialiased bilinear, as the training loader resizes."""
    return F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def audio_window_indices(t: int, k: int, lengths: torch.Tensor) -> torch.Tensor:
    """(B, 2k+1) rows t-k .. t+k clamped into each clip's [0, length-1]."""
    offsets = torch.arange(-k, k + 1, device=lengths.device)
    return (t + offsets)[None].clamp(min=0).minimum(lengths[:, None] - 1)


def pad_embeddings(audio_embs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack clips of different lengths into (B, T_max, D) plus their lengths (padding repeats the last row)."""
    lengths = torch.tensor([len(a) for a in audio_embs], dtype=torch.int64)
    if len(audio_embs) == 1:
        return audio_embs[0][None], lengths  # a view: one clip needs no padding, and a long one no second copy
    t_max = int(lengths.max())
    padded = torch.stack([torch.cat([a, a[-1:].expand(t_max - len(a), -1)]) for a in audio_embs])
    return padded, lengths


def anchor_colour(frames: torch.Tensor, identity_frames: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) frames in [-1, 1], each channel shifted so that the median of the face box equals that of the
    matching identity frame's, clamped to [-1, 1] (colour re-anchoring, docs/long_video.md).

    The face box is the central half of the frame in each direction (rows H//4 .. 3H//4, columns likewise): in an
    aligned crop it holds the face, so the shift follows the skin, not the background. The median (the lower of the
    two middle values) is the skin's colour whatever the mouth and eyes do: a mean would darken with an open mouth
    and brighten the whole frame in time with the speech.
    """
    h, w = frames.shape[-2:]
    rows, cols = slice(h // 4, h - h // 4), slice(w // 4, w - w // 4)

    def box_median(x: torch.Tensor) -> torch.Tensor:
        return x[..., rows, cols].flatten(-2).median(dim=-1).values[..., None, None]

    return (frames + (box_median(identity_frames) - box_median(frames))).clamp(-1.0, 1.0)


class FrameStepper:
    """The per-frame step of the video loop, carrying the motion frames from one frame to the next (SPEC).

    A step conditions on the motion frames and an audio window, draws the noise, solves, then slides the motion
    frames. The stepper keeps the motion frames (and `generator` the noise state) between steps, so `sample_video`
    and a caller fed audio piece by piece (diffheads.sample.stream) make the same frames.

    Motion frames start as the identity frame; after each frame the newest generated frame (motion-transformed) is
    appended and the oldest dropped; every `stabilize_every` frames the oldest slot is reset to the identity frame.
    With `colour_anchor` each sampled frame is re-anchored on its identity frame's colour (`anchor_colour`) before
    it is returned and fed back.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        process: GaussianDiffusion,
        identity_frames: torch.Tensor,
        model_cfg: ModelConfig,
        sample_cfg: SampleConfig,
        generator: Generators = None,
        motion_blur: bool = False,
    ) -> None:
        self.model, self.process, self.sample_cfg, self.generator = model, process, sample_cfg, generator
        # identity frames at model.output_size: the network gets them at image_size, the frames come back upscaled
        upscaled = model_cfg.frame_size != model_cfg.image_size and identity_frames.shape[-1] == model_cfg.frame_size
        self.identity_out = identity_frames if upscaled else None
        if upscaled:
            identity_frames = downscale(identity_frames, model_cfg.image_size)
        self.identity_frames = identity_frames
        self.grayscale, self.motion_blur = model_cfg.grayscale_motion, motion_blur
        self.mouth_box = model_cfg.motion_mouth_box
        self.mouth_bank = model_cfg.mouth_bank > 0
        if self.mouth_bank and not hasattr(model, "base_frame"):
            raise TypeError("a model.mouth_bank network must be sampled through a model with base_frame")
        self.identity_motion = self.to_motion(identity_frames, identity_frames)
        self.motion = [self.identity_motion.clone() for _ in range(model_cfg.n_motion_frames)]  # oldest first
        self.t = 0  # the frame the next step samples
        self.first_noise: torch.Tensor | None = None  # sample.noise_correlation: every clip's first-frame noise

    def base_frame(
        self, identity_frames: torch.Tensor, audio_window: torch.Tensor, output: bool = False
    ) -> torch.Tensor:
        """The identity frames with, for a model.mouth_bank network, the mouths their audio windows ask for."""
        if not self.mouth_bank:
            return identity_frames
        if output:
            return self.model.base_frame(identity_frames, audio_window, output=True)
        return self.model.base_frame(identity_frames, audio_window)

    def to_output(
        self, frame: torch.Tensor, base: torch.Tensor, audio_window: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        """model.output_size: the base frame at the output size plus the upsampled residual of `frame` to `base`."""
        if self.identity_out is None:
            return frame
        base_out = self.base_frame(self.identity_out[active], audio_window, output=True)
        residual = F.interpolate(frame - base, size=base_out.shape[-2:], mode="bilinear", align_corners=False)
        return (base_out + residual).clamp(-1.0, 1.0)

    def start_noise(self, shape: torch.Size, generator: Generators, active: torch.Tensor) -> torch.Tensor:
        """The noise frame t starts from: fresh, or with sample.noise_correlation c mixed with the clips'
        first-frame noise (c x first + sqrt(1 - c^2) x fresh, again standard normal)."""
        fresh = randn(shape, generator, self.identity_frames.device)
        c = self.sample_cfg.noise_correlation
        if c == 0:
            return fresh
        if self.first_noise is None:
            if len(active) != self.identity_frames.shape[0]:
                raise ValueError("with sample.noise_correlation every clip must take part in the first frame")
            self.first_noise = fresh
            return fresh
        return c * self.first_noise[active] + math.sqrt(1.0 - c * c) * fresh

    def to_motion(self, frames: torch.Tensor, identity_frames: torch.Tensor) -> torch.Tensor:
        """Frames as the network sees them in the motion slots (mouth box from the identity frame, grayscale / blur,
        as trained)."""
        return motion_transform(hide_mouth(frames, identity_frames, self.mouth_box), self.grayscale, self.motion_blur)

    @torch.no_grad()
    def step(self, audio_window: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """Frame `t` in [-1, 1], (n_active, 3, H, W), of the clips `active` (all when None) from their (n_active,
        2k+1, audio_dim) audio windows; `t` then moves on to the next frame."""
        if active is None:
            active = torch.arange(self.identity_frames.shape[0], device=self.identity_frames.device)
        if self.sample_cfg.stabilize_every > 0 and self.t > 0 and self.t % self.sample_cfg.stabilize_every == 0:
            self.motion[0] = self.identity_motion.clone()
        identity = self.identity_frames[active]
        cond = Conditioning(
            identity_frame=self.base_frame(identity, audio_window),
            motion_frames=torch.cat([m[active] for m in self.motion], dim=1),
            audio_window=audio_window,
        )
        generator = self.generator
        rows_generator = (
            generator
            if generator is None or isinstance(generator, torch.Generator)
            else [generator[i] for i in active.tolist()]
        )
        noise = self.start_noise(cond.identity_frame.shape, rows_generator, active)
        signal = sample_frame(
            lambda x, tt: self.model(x, tt, cond),
            noise,
            self.process,
            self.sample_cfg.solver,
            rows_generator,
            self.sample_cfg.clip_denoised,
            self.sample_cfg.eta,
        )
        frame = diffused.decode(signal, cond.identity_frame, self.process.cfg)
        if self.sample_cfg.colour_anchor:
            frame = anchor_colour(frame, cond.identity_frame)
        newest = self.motion[-1].clone()
        newest[active] = self.to_motion(frame, identity)
        self.motion = self.motion[1:] + [newest]
        self.t += 1
        return self.to_output(frame, cond.identity_frame, audio_window, active)


@torch.no_grad()
def sample_video(
    model: torch.nn.Module,
    process: GaussianDiffusion,
    identity_frames: torch.Tensor,
    audio_embs: Sequence[torch.Tensor],
    model_cfg: ModelConfig,
    sample_cfg: SampleConfig,
    generator: Generators = None,
    motion_blur: bool = False,
    progress: bool = True,
    on_frame: Callable[[int, torch.Tensor], None] | None = None,
    keep_frames: bool = True,
) -> list[torch.Tensor]:
    """Generate one clip per identity frame; clip i has len(audio_embs[i]) frames, returned as (T_i, 3, H, W).

    Each frame is one FrameStepper step (motion frames, stabilisation); the audio window slides with the frame,
    clamped to each clip's ends. Clips that are finished leave the batch.

    `on_frame(t, frames)` is called as soon as step t is sampled, with frames (n_t, 3, H, W) in
    [-1, 1]: row j is frame t of the j-th clip still running (the clips longer than t, in order).
    With `keep_frames=False` nothing is collected (memory does not grow with the clip length: a
    streaming caller encodes each frame in `on_frame`) and an empty list is returned; the frames
    are the same either way.

    `generator` may be one generator per clip: each clip's noise then comes from its own generator
    only, so a clip's frames do not depend on which other clips share its batch.
    """
    device = identity_frames.device
    padded, lengths = pad_embeddings(audio_embs)
    padded, lengths = padded.to(device), lengths.to(device)
    if sample_cfg.max_frames > 0:
        lengths = lengths.clamp(max=sample_cfg.max_frames)
    n_clips, t_max = identity_frames.shape[0], int(lengths.max())
    stepper = FrameStepper(model, process, identity_frames, model_cfg, sample_cfg, generator, motion_blur)
    frames = torch.zeros(n_clips, t_max, *identity_frames.shape[1:], device=device) if keep_frames else None  # out size
    bar = tqdm(total=int(lengths.sum()), desc="frames", unit="frame", disable=not progress)
    for t in range(t_max):
        active = torch.nonzero(lengths > t).flatten()
        rows = audio_window_indices(t, model_cfg.n_audio_motion_embs, lengths[active])
        frame = stepper.step(padded[active[:, None], rows], active)
        if frames is not None:
            frames[active, t] = frame
        bar.update(len(active))
        if on_frame is not None:
            on_frame(t, frame)
    bar.close()
    if frames is None:
        return []
    return [frames[i, : int(lengths[i])] for i in range(n_clips)]
