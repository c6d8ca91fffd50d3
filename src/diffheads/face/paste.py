"""Put a generated face crop back into the full frame it was cut from (inverse warp, feathered edge)."""

from __future__ import annotations

import cv2
import numpy as np

from diffheads.face.align import to_pixel_centres


def feather_mask(size: int, feather: float = 0.12) -> np.ndarray:
    """(size, size) float32 weights: 1 inside, falling smoothly to 0 over `feather` of the side at each edge."""
    ramp = np.clip((np.arange(size) + 0.5) / max(feather * size, 1e-6), 0.0, 1.0)
    ramp = np.minimum(ramp, ramp[::-1])
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep: no visible crease where the fade starts
    return np.outer(ramp, ramp).astype(np.float32)


def paste_back(frame: np.ndarray, crop: np.ndarray, to_crop: np.ndarray, feather: float = 0.12) -> np.ndarray:
    """uint8 frame (H, W, 3) with `crop` (s, s, 3) laid over the region that the (3, 3) map `to_crop` cut out."""
    h, w = frame.shape[:2]
    back = to_pixel_centres(np.linalg.inv(to_crop))[:2]
    face = cv2.warpAffine(crop, back, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(feather_mask(crop.shape[0], feather), back, (w, h), flags=cv2.INTER_LINEAR)[..., None]
    out = frame.astype(np.float32) * (1.0 - alpha) + face.astype(np.float32) * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
