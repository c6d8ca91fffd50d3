"""The mouth shape the audio predicts (model.mouth_shape_head), and its sketch as an input channel of the network.

A shape is the 20 mouth points (68-point indices 48-67) centred on their mean, which drops where the head is and
keeps width, opening and rounding, in units of a twentieth of the frame side (3.2 px at 64 px), so that values
are about 1 and read the same at every image size. With model.mouth_sketch_centre the shape is drawn at that
place of the frame as one channel (a Gaussian dot per point, sigma = side / 85) that the network sees beside the
noisy frame: where the lips should be is then a picture, which a convolutional network follows far sooner than a
vector that modulates every block alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MOUTH_POINTS = 20  # the mouth of the 68-point layout (indices 48-67)
UNITS_PER_SIDE = 20.0
SIGMA_PER_SIDE = 1.0 / 85.0  # dot width: 0.75 px at 64 px


def mouth_shape(mouth_landmarks: torch.Tensor, image_size: int) -> torch.Tensor:
    """(B, 20, 2) mouth landmarks (x, y) in pixels -> the centred shape in units of image_size / 20."""
    centred = mouth_landmarks - mouth_landmarks.mean(dim=1, keepdim=True)
    return centred * (UNITS_PER_SIDE / image_size)


def render_sketch(shape: torch.Tensor, centre: Sequence[float], size: int) -> torch.Tensor:
    """(B, 20, 2) shapes -> (B, 1, size, size) in [-1, 1]: 1 on the points drawn around `centre` ([x, y] as
    fractions of the frame), -1 far from them."""
    points = shape * (size / UNITS_PER_SIDE) + torch.tensor(centre, dtype=shape.dtype, device=shape.device) * size
    grid = torch.arange(size, dtype=shape.dtype, device=shape.device) + 0.5  # pixel centres
    dx = grid.view(1, 1, 1, size) - points[..., 0].view(*points.shape[:2], 1, 1)
    dy = grid.view(1, 1, size, 1) - points[..., 1].view(*points.shape[:2], 1, 1)
    sigma = SIGMA_PER_SIDE * size
    dots = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2)).amax(dim=1, keepdim=True)
    return dots * 2.0 - 1.0
