"""What the diffusion process diffuses: the frame (the paper) or its scaled residual to the identity frame.

With `diffusion.target: residual` the process runs on z = (frame - identity frame) * residual_scale. A person
model then starts from its identity frame: a network that outputs nothing yet already gives the face, and its
training goes to what changes from frame to frame (the mouth, the eyes, small head motion) instead of to
redrawing the whole face. The scale brings the residual (std about 0.07 on aligned GRID frames in [-1, 1]) back
to a magnitude the noise schedule was designed for.
"""

from __future__ import annotations

import torch

from diffheads.config import DiffusedTarget, DiffusionConfig


def bound(cfg: DiffusionConfig) -> float:
    """The largest |value| the diffused signal can take (what clipping the x0 prediction clips to)."""
    return 2.0 * cfg.residual_scale if DiffusedTarget(cfg.target) == DiffusedTarget.RESIDUAL else 1.0


def encode(frames: torch.Tensor, identity_frames: torch.Tensor, cfg: DiffusionConfig) -> torch.Tensor:
    """The diffused signal of `frames` (B, 3, H, W) in [-1, 1] given their identity frames."""
    if DiffusedTarget(cfg.target) == DiffusedTarget.RESIDUAL:
        return (frames - identity_frames) * cfg.residual_scale
    return frames


def decode(signal: torch.Tensor, identity_frames: torch.Tensor, cfg: DiffusionConfig) -> torch.Tensor:
    """Frames in [-1, 1] from a sampled signal (the inverse of `encode`, clamped)."""
    if DiffusedTarget(cfg.target) == DiffusedTarget.RESIDUAL:
        signal = identity_frames + signal / cfg.residual_scale
    return signal.clamp(-1.0, 1.0)
