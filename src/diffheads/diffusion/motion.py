"""The motion-frame transform shared by training examples and the video sampler (SPEC), and the training-only
perturbation of motion frames against exposure bias (docs/model.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale uses.
_LUMA = (0.2989, 0.587, 0.114)


def gaussian_kernel1d(kernel_size: int = 5, sigma: float = 2.0) -> torch.Tensor:
    """Normalised 1-D Gaussian taps."""
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(frames: torch.Tensor, kernel_size: int = 5, sigma: float = 2.0) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflect padding (as torchvision's GaussianBlur)."""
    n, c, h, w = frames.shape
    k = gaussian_kernel1d(kernel_size, sigma).to(frames)
    pad = kernel_size // 2
    x = F.pad(frames.reshape(n * c, 1, h, w), (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x.reshape(n, c, h, w)


def hide_mouth(frames: torch.Tensor, identity_frames: torch.Tensor, box: Sequence[float]) -> torch.Tensor:
    """(B, M, 3, H, W) or (B, 3, H, W) frames with `box` ([top, bottom, left, right], fractions of the frame)
    copied from their (B, 3, H, W) identity frames; `frames` itself when the box is empty."""
    if not box:
        return frames
    h, w = frames.shape[-2:]
    rows = slice(math.floor(box[0] * h), math.ceil(box[1] * h))
    cols = slice(math.floor(box[2] * w), math.ceil(box[3] * w))
    out = frames.clone()
    ident = identity_frames if frames.dim() == identity_frames.dim() else identity_frames.unsqueeze(-4)
    out[..., rows, cols] = ident[..., rows, cols].expand_as(out[..., rows, cols])
    return out


def motion_transform(frames: torch.Tensor, grayscale: bool, blurred: bool) -> torch.Tensor:
    """(..., 3, H, W) frames -> (..., 1 or 3, H, W) motion frames: optional grayscale then optional blur."""
    lead = frames.shape[:-3]
    x = frames.reshape(-1, *frames.shape[-3:])
    if grayscale:
        w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * w).sum(dim=1, keepdim=True)
    if blurred:
        x = blur(x)
    return x.reshape(*lead, *x.shape[-3:])


def perturb_motion(frames: torch.Tensor, rng: np.random.Generator, colour_jitter: float, noise: float) -> torch.Tensor:
    """One example's (M, C, H, W) motion frames in [-1, 1], colour-jittered then noised; unchanged at 0 (docs/model.md).

    Draws from `rng`, in this order and only for the options that are on: `gain` = uniform(1 - j, 1 + j, size=C),
    `offset` = uniform(-j, j, size=C), then `s` = uniform(0, noise) and standard_normal(frames.shape, float32).
    Result: clamp(gain_c x + offset_c, -1, 1) + s z, the same gain and offset for all M frames.
    """
    x = frames
    if colour_jitter > 0:
        c = x.shape[-3]
        gain = torch.from_numpy(rng.uniform(1 - colour_jitter, 1 + colour_jitter, size=c)).to(x.dtype).view(c, 1, 1)
        offset = torch.from_numpy(rng.uniform(-colour_jitter, colour_jitter, size=c)).to(x.dtype).view(c, 1, 1)
        # clamped as sampling clamps every generated frame: a jittered frame is still one the sampler could feed back
        x = (x * gain + offset).clamp(-1.0, 1.0)
    if noise > 0:
        s = rng.uniform(0.0, noise)
        z = torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32)).to(x.dtype)
        # not clamped: at saturated pixels a clamp would turn zero-mean noise into a one-sided colour shift
        x = x + s * z
    return x
