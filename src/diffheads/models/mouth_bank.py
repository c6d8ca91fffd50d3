"""The person's own mouths (model.mouth_bank): a base frame whose mouth already has the shape the audio asks for.

A bank holds K mouths of the training person, each as its shape (the 20 centred mouth points of
models/mouth_sketch.py) and the pixels of the mouth box around it. For a wanted shape the bank blends the mouths
of its nearest entries (inverse squared distance over `neighbours` entries) and pastes them into the identity
frame with a feathered edge: the base frame. With diffusion.target residual the process then diffuses the frame
minus this base, so a network that has not yet learnt to draw a mouth already shows one that opens and closes with
the predicted shape; training goes to the rest (head motion, blinks, how the pasted mouth meets the face).

In training the base gets the target frame's true shape; in sampling the audio head's prediction
(model.mouth_shape_head). The bank is filled from the training data before training starts
(training/mouth_bank.py) and travels in the model file as buffers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from diffheads.models.mouth_sketch import MOUTH_POINTS

FEATHER_PER_SIDE = 3.0 / 64.0  # width of the blend ramp at the box edge: 3 px at 64 px


def box_pixels(box: Sequence[float], size: int) -> tuple[int, int, int, int]:
    """[top, bottom, left, right] fractions -> pixel rows/cols (top, bottom, left, right) of a size x size frame."""
    return math.floor(box[0] * size), math.ceil(box[1] * size), math.floor(box[2] * size), math.ceil(box[3] * size)


def feather_mask(height: int, width: int, ramp: float) -> torch.Tensor:
    """(1, height, width) weights: 1 inside, falling linearly to 0 over `ramp` pixels at every edge."""
    rows = torch.arange(height, dtype=torch.float32) + 0.5
    cols = torch.arange(width, dtype=torch.float32) + 0.5
    to_edge_r = torch.minimum(rows, height - rows)
    to_edge_c = torch.minimum(cols, width - cols)
    near = torch.minimum(to_edge_r[:, None], to_edge_c[None, :])
    return (near / max(ramp, 1e-6)).clamp(0.0, 1.0).unsqueeze(0)


class MouthBank(nn.Module):
    """K mouths of one person and the blend that turns a wanted mouth shape into a base frame."""

    def __init__(self, entries: int, box: Sequence[float], image_size: int, neighbours: int = 4) -> None:
        super().__init__()
        self.box = box_pixels(box, image_size)
        top, bottom, left, right = self.box
        self.neighbours = min(neighbours, entries)
        self.register_buffer("shapes", torch.zeros(entries, MOUTH_POINTS, 2))
        self.register_buffer("pixels", torch.zeros(entries, 3, bottom - top, right - left))
        self.register_buffer("mask", feather_mask(bottom - top, right - left, FEATHER_PER_SIDE * image_size))
        self.register_buffer("filled", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fill(self, shapes: torch.Tensor, pixels: torch.Tensor) -> None:
        """Store (K, 20, 2) shapes and their (K, 3, h, w) mouth-box pixels in [-1, 1]."""
        if shapes.shape != self.shapes.shape or pixels.shape != self.pixels.shape:
            raise ValueError(
                f"bank holds shapes {tuple(self.shapes.shape)} and pixels {tuple(self.pixels.shape)}, "
                f"got {tuple(shapes.shape)} and {tuple(pixels.shape)}"
            )
        self.shapes.copy_(shapes)
        self.pixels.copy_(pixels)
        self.filled.fill_(True)

    def mouths(self, shapes: torch.Tensor) -> torch.Tensor:
        """(B, 20, 2) wanted shapes -> (B, 3, h, w): the blend of the nearest entries' mouths."""
        d2 = torch.cdist(shapes.flatten(1).to(self.shapes.dtype), self.shapes.flatten(1)).square()
        near, idx = d2.topk(self.neighbours, dim=1, largest=False)
        weights = 1.0 / (near + 1e-4)
        weights = weights / weights.sum(dim=1, keepdim=True)
        return (self.pixels[idx] * weights[:, :, None, None, None]).sum(dim=1)

    def base(self, identity_frames: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) identity frames with the mouth box blended towards the bank's mouths for `shapes`."""
        top, bottom, left, right = self.box
        out = identity_frames.clone()
        inside = out[..., top:bottom, left:right]
        mouths = self.mouths(shapes).to(out.dtype)
        out[..., top:bottom, left:right] = inside + self.mask.to(out.dtype) * (mouths - inside)
        return out


class MouthPredictor(nn.Module):
    """Audio window -> mouth shape: a two-layer MLP on the standardised window, fitted on its own before the
    diffusion network trains (training/mouth_bank.py) and frozen there after.

    The standardisation (input mean and spread) and the mean shape are buffers set by the fit, so the file that
    holds the network holds the whole predictor.
    """

    def __init__(self, window_features: int, hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(window_features))
        self.register_buffer("input_scale", torch.ones(window_features))
        self.register_buffer("shape_mean", torch.zeros(MOUTH_POINTS, 2))
        self.mlp = nn.Sequential(
            nn.Linear(window_features, hidden),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * MOUTH_POINTS),
        )

    def forward(self, audio_window: torch.Tensor) -> torch.Tensor:
        """(B, 2k+1, audio_dim) -> (B, 20, 2) centred mouth shapes (models/mouth_sketch.py units)."""
        x = (audio_window.flatten(1) - self.input_mean) / self.input_scale
        return self.mlp(x.to(self.input_mean.dtype)).view(-1, MOUTH_POINTS, 2) + self.shape_mean
