"""Flicker: how much the frame changes from one frame to the next away from the mouth, which speech moves."""

from __future__ import annotations

import numpy as np

MOUTH = slice(48, 68)  # 68-point scheme: outer and inner lips
PAD_WIDTHS = 0.5  # the mouth box is dilated by this many mouth widths on every side (lips stretch, the chin follows)


def mouth_mask(mouth_points: np.ndarray, height: int, width: int, pad_widths: float = PAD_WIDTHS) -> np.ndarray:
    """(H, W) True inside the dilated bounding box of one frame's mouth points (20, 2) in pixel (x, y)."""
    points = np.asarray(mouth_points, np.float64)
    mask = np.zeros((height, width), bool)
    if not np.isfinite(points).all():
        return mask
    pad = pad_widths * float(np.linalg.norm(points[6] - points[0]))  # points 48 and 54: the mouth corners
    lo, hi = points.min(axis=0) - pad, points.max(axis=0) + pad
    x0, y0 = int(np.clip(np.floor(lo[0]), 0, width)), int(np.clip(np.floor(lo[1]), 0, height))
    x1, y1 = int(np.clip(np.ceil(hi[0]) + 1, 0, width)), int(np.clip(np.ceil(hi[1]) + 1, 0, height))
    mask[y0:y1, x0:x1] = True
    return mask


def outside_mouth_change(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(T-1,) mean |frame t+1 - frame t| in uint8 levels over the pixels outside both frames' mouth boxes."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, C), got {frames.dtype} {frames.shape}")
    n, height, width = frames.shape[:3]
    masks = [mouth_mask(landmarks[t, MOUTH], height, width) for t in range(min(n, len(landmarks)))]
    change = np.full(max(n - 1, 0), np.nan)
    for t in range(min(n, len(masks)) - 1):
        keep = ~(masks[t] | masks[t + 1])
        if keep.any():
            diff = np.abs(frames[t + 1].astype(np.int16) - frames[t].astype(np.int16))
            change[t] = float(diff[keep].mean())
    return change
