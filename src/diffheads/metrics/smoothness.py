"""Temporal smoothness of a video: optical-flow magnitude (OFM) and frame-difference MSE (F-MSE).

Facts of the reference, Diffused Heads `smoothness_eval.py` (MStypulkowski/diffused-heads):
- frames come from cv.VideoCapture (BGR uint8) and go through cv.resize(frame, (128, 128)) (bilinear, the default);
  the flow input is cv.cvtColor(resized, cv.COLOR_BGR2GRAY).
- flow: cv.calcOpticalFlowFarneback(prev_gray, gray, None, 0.5, 7, 5, 15, 5, 1.2, 0) (pyr_scale, levels, winsize,
  iterations, poly_n, poly_sigma, flags) between consecutive frames.
- OFM: magnitude from cv.cartToPolar; cv.normalize(magnitude, None, 0, 255, cv.NORM_MINMAX) per flow map;
  .astype(np.uint8) (truncation); cv.applyColorMap(..., cv.COLORMAP_JET); the video's value is the mean of all those
  colour values (all pairs, pixels and 3 channels). So it measures how the flow is spread within each map, in colour
  units, not how large it is: a uniform translation of any size scores the colour of 0, a pure blue 42.5.
- F-MSE: ((frame - prev_frame) ** 2).mean() on the resized uint8 BGR frames (3 channels): uint8 arithmetic, so the
  difference wraps modulo 256 and so does its square.
- both are per video (it writes mean and std per file); a video it cannot read is skipped.

Our frames are RGB; grayscale uses COLOR_RGB2GRAY (the same weights as BGR2GRAY on the BGR frame), and the colour
map and the squared differences do not depend on the channel order.
"""

from __future__ import annotations

import cv2
import numpy as np

from diffheads.errors import DiffheadsError

SIZE = 128  # the reference resizes every frame to 128 x 128 before anything else
# pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags, as in smoothness_eval.py
FARNEBACK = (0.5, 7, 5, 15, 5, 1.2, 0)


def _check(frames: np.ndarray) -> np.ndarray:
    """The frames as a uint8 (T, H, W, 3) array with T >= 2, else a DiffheadsError."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise DiffheadsError(f"frames must be a (T, H, W, 3) RGB video, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise DiffheadsError(f"frames must be uint8 (0..255), got {frames.dtype}")
    if len(frames) < 2:
        raise DiffheadsError(f"smoothness needs at least 2 frames, got {len(frames)}")
    return frames


def _resized(frames: np.ndarray) -> np.ndarray:
    """Each frame resized to 128 x 128 as the reference does (cv2 bilinear on uint8)."""
    return np.stack([cv2.resize(np.ascontiguousarray(f), (SIZE, SIZE)) for f in frames])


def _flows(small: np.ndarray) -> np.ndarray:
    """Farneback flow (T-1, 128, 128, 2) between consecutive already-resized uint8 RGB frames."""
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in small]
    return np.stack([cv2.calcOpticalFlowFarneback(a, b, None, *FARNEBACK) for a, b in zip(gray[:-1], gray[1:])])


def optical_flow(frames: np.ndarray) -> np.ndarray:
    """Farneback flow (T-1, 128, 128, 2) in pixels of the 128 px frames, for a uint8 (T, H, W, 3) RGB video."""
    return _flows(_resized(_check(frames)))


def ofm(frames: np.ndarray, legacy: bool = False) -> float:
    """Optical-flow magnitude of one video: mean flow length in 128 px pixels, or the reference's JET colour mean."""
    flow = optical_flow(frames)
    if not legacy:
        return float(np.mean(np.hypot(flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64))))
    colours = []
    for f in flow:
        magnitude, _ = cv2.cartToPolar(f[..., 0], f[..., 1])
        magnitude = cv2.normalize(magnitude, None, 0, 255, cv2.NORM_MINMAX)
        colours.append(cv2.applyColorMap(magnitude.astype(np.uint8), cv2.COLORMAP_JET))
    return float(np.mean(colours))


def fmse(frames: np.ndarray, legacy: bool = False) -> float:
    """Mean squared difference of consecutive 128 px colour frames, in float (default) or wrapping uint8 (legacy)."""
    small = _resized(_check(frames))
    if legacy:  # the reference's uint8 arithmetic: difference and square both wrap modulo 256
        return float(np.mean((small[1:] - small[:-1]) ** 2))
    diff = small[1:].astype(np.float64) - small[:-1].astype(np.float64)
    return float(np.mean(diff**2))
