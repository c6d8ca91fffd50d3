"""Autoregressive video sampling: each frame is a full diffusion sample (SPEC, sampling a video).

The loop only feeds motion frames and audio windows; the per-frame solver is pluggable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from diffheads.conditioning import Conditioning
from diffheads.config import ModelConfig, SampleConfig
from diffheads.data.motion import motion_transform
from diffheads.diffusion.gaussian import GaussianDiffusion
from diffheads.diffusion.samplers import Generators, randn, sample_frame


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

    Motion frames start as the identity frame; after each frame the newest generated frame
    (motion-transformed) is appended and the oldest dropped; every `stabilize_every` frames the
    oldest slot is reset to the identity frame. Clips that are finished leave the batch.

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
    k, n_motion = model_cfg.n_audio_motion_embs, model_cfg.n_motion_frames
    to_motion = lambda f: motion_transform(f, model_cfg.grayscale_motion, motion_blur)  # noqa: E731
    identity_motion = to_motion(identity_frames)
    motion = [identity_motion.clone() for _ in range(n_motion)]  # oldest first
    frames = torch.zeros(n_clips, t_max, *identity_frames.shape[1:], device=device) if keep_frames else None
    bar = tqdm(total=int(lengths.sum()), desc="frames", unit="frame", disable=not progress)
    for t in range(t_max):
        active = torch.nonzero(lengths > t).flatten()
        if sample_cfg.stabilize_every > 0 and t > 0 and t % sample_cfg.stabilize_every == 0:
            motion[0] = identity_motion.clone()
        rows = audio_window_indices(t, k, lengths[active])
        cond = Conditioning(
            identity_frame=identity_frames[active],
            motion_frames=torch.cat([m[active] for m in motion], dim=1),
            audio_window=padded[active[:, None], rows],
        )
        rows_generator = generator if generator is None or isinstance(generator, torch.Generator) else [
            generator[i] for i in active.tolist()
        ]
        noise = randn(cond.identity_frame.shape, rows_generator, device)
        frame = sample_frame(
            lambda x, tt: model(x, tt, cond),
            noise,
            process,
            sample_cfg.solver,
            rows_generator,
            sample_cfg.clip_denoised,
            sample_cfg.eta,
        ).clamp(-1.0, 1.0)
        if frames is not None:
            frames[active, t] = frame
        newest = motion[-1].clone()
        newest[active] = to_motion(frame)
        motion = motion[1:] + [newest]
        bar.update(len(active))
        if on_frame is not None:
            on_frame(t, frame)
    bar.close()
    if frames is None:
        return []
    return [frames[i, : int(lengths[i])] for i in range(n_clips)]
