"""Align faces to the mean face: per-frame similarity fit on stable points, smoothed, then warped.

The face-processor scheme (METRICS.md): stable points (the point under the nose and the four
eye corners) are averaged over a short window, a similarity transform maps them onto the mean
face, and the crop is the mean face's landmark box widened by `margin_x` of its width on each
side, `margin_top` of its height above and `margin_bottom` below, resized to size x size (a
non-uniform scale when the box is not square, as in the reference data). One change: the
window is centred on each frame, not forward-looking, so a moving head is not led by 3 frames,
and the points are fitted with a line in time (the moving average when frames are evenly spaced).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from diffheads.errors import DiffheadsError
from diffheads.face.landmarks import STABLE_POINTS
from diffheads.face.mean_face import MeanFace


@dataclass(frozen=True)
class AlignConfig:
    """How a face crop is cut."""

    size: int = 128  # output crop side in pixels
    margin_x: float = 0.11  # of the mean face's landmark-box width, added on each side
    margin_top: float = 0.336  # of its height, added above (forehead)
    margin_bottom: float = 0.155  # of its height, added below the chin
    smoothing_window: int = 7  # frames averaged (centred) before the per-frame fit; 1 = none

    def __post_init__(self) -> None:
        if self.size < 8 or self.size % 2:
            raise DiffheadsError(f"crop size must be an even number of pixels >= 8, got {self.size}")
        if min(self.margin_x, self.margin_top, self.margin_bottom) < 0:
            raise DiffheadsError("crop margins must be >= 0")
        if self.smoothing_window < 1:
            raise DiffheadsError(f"smoothing window must be >= 1 frame, got {self.smoothing_window}")


def crop_matrix(mean_face: MeanFace, cfg: AlignConfig) -> np.ndarray:
    """(3, 3) affine map from mean-face coordinates to crop pixels."""
    lo, hi = mean_face.points.min(axis=0), mean_face.points.max(axis=0)
    w, h = hi - lo
    left, top = lo[0] - cfg.margin_x * w, lo[1] - cfg.margin_top * h
    sx = cfg.size / (w * (1 + 2 * cfg.margin_x))
    sy = cfg.size / (h * (1 + cfg.margin_top + cfg.margin_bottom))
    return np.array([[sx, 0.0, -sx * left], [0.0, sy, -sy * top], [0.0, 0.0, 1.0]])


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(3, 3) least-squares similarity (rotation, uniform scale, shift) taking src (N, 2) to dst (Umeyama 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    var = (a**2).sum() / len(src)
    if var <= 0:
        raise DiffheadsError("the stable face points coincide; the landmarks are degenerate")
    scale = np.trace(np.diag(sig) @ d) / var
    m = np.eye(3)
    m[:2, :2] = scale * rot
    m[:2, 2] = mu_d - scale * rot @ mu_s
    return m


def fill_missing(points: np.ndarray) -> np.ndarray:
    """(T, K, 2) with NaN rows for frames without a face -> linearly interpolated (edges held)."""
    points = np.array(points, dtype=np.float64)
    ok = np.isfinite(points).all(axis=(1, 2))
    if not ok.any():
        raise DiffheadsError("no face was found in any frame")
    t = np.arange(len(points))
    flat = points.reshape(len(points), -1)
    for j in range(flat.shape[1]):
        flat[:, j] = np.interp(t, t[ok], flat[ok, j])
    return flat.reshape(points.shape)


def smooth(points: np.ndarray, window: int, times: np.ndarray | None = None) -> np.ndarray:
    """Local linear fit over time of (T, K, 2) points in a centred window (shrinking at the clip ends).

    With evenly spaced times this is the moving average; with the true capture times of
    resampled frames (a 30 fps source shown at 25 fps skips frames) it follows the real
    motion, so a steadily moving head stays still in the crop.
    """
    points = np.asarray(points, np.float64)
    n = len(points)
    if window <= 1 or n < 2:
        return points
    times = np.arange(n, dtype=np.float64) if times is None else np.asarray(times, np.float64)
    half = window // 2
    out = np.empty_like(points)
    for t in range(n):
        lo, hi = max(0, t - half), min(n, t + half + 1)
        dt = times[lo:hi] - times[t]
        design = np.stack([np.ones_like(dt), dt], axis=1)
        coef, *_ = np.linalg.lstsq(design, points[lo:hi].reshape(hi - lo, -1), rcond=None)
        out[t] = coef[0].reshape(points.shape[1:])
    return out


def frame_transforms(
    landmarks_68: np.ndarray, mean_face: MeanFace, cfg: AlignConfig, times: np.ndarray | None = None
) -> np.ndarray:
    """(T, 68, 2+) source landmarks (NaN where no face) -> (T, 3, 3) maps from source to crop pixels."""
    stable = smooth(fill_missing(landmarks_68[:, STABLE_POINTS, :2]), cfg.smoothing_window, times)
    to_crop = crop_matrix(mean_face, cfg)
    return np.stack([to_crop @ fit_similarity(s, mean_face.stable_points) for s in stable])


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (3, 3) affine map to (..., 2) points."""
    return points[..., :2] @ matrix[:2, :2].T + matrix[:2, 2]


def to_pixel_centres(matrix: np.ndarray) -> np.ndarray:
    """The (3, 3) map between continuous coordinates (image spans [0, W], as landmarks are) rewritten for
    OpenCV's convention (pixel centres at integers): x_cv = x - 0.5 on both sides."""
    out = np.array(matrix, dtype=np.float64)
    out[:2, 2] = matrix[:2, 2] + matrix[:2, :2] @ np.array([0.5, 0.5]) - 0.5
    return out


def warp(frame: np.ndarray, matrix: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Warp a uint8 (H, W, C) frame by a (3, 3) affine map of continuous coordinates into a (size, size) or
    (h, w) image, bilinear.

    When the map shrinks the image by more than 2x, the frame is first reduced with area
    averaging, so the small crop is not aliased.
    """
    h, w = (size, size) if isinstance(size, int) else size
    matrix = to_pixel_centres(matrix)
    shrink = float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))
    if shrink < 0.5:
        factor = min(1.0, 2.0 * shrink)
        small = cv2.resize(frame, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        # the resize maps pixel centres: x' = (x + 0.5) * fx' - 0.5 with fx' the exact size ratio
        fx, fy = small.shape[1] / frame.shape[1], small.shape[0] / frame.shape[0]
        down = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1.0]])
        frame, matrix = small, matrix @ np.linalg.inv(down)
    return cv2.warpAffine(frame, matrix[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
