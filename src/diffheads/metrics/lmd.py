"""Landmark distance (LMD) between generated and real faces, NaN-aware.

Chen et al., "Lip movements generation at a glance" (ECCV 2018) and "Hierarchical cross-modal talking face
generation with dynamic pixel-wise loss" (CVPR 2019, ATVGnet): the Euclidean distance between corresponding
landmarks of a generated and a real frame, averaged over the points and the frames (then over the videos);
M-LMD uses the mouth points, F-LMD the whole face.
"""

from __future__ import annotations

import numpy as np

MOUTH = tuple(range(48, 68))  # 68-point scheme: outer and inner lip contours
FACE = tuple(range(68))
OUTER_EYE_CORNERS = (36, 45)  # 68-point scheme: left corner of the left eye, right corner of the right eye


def detected(landmarks: np.ndarray) -> np.ndarray:
    """(T,) True for the frames whose landmarks are all finite (a face was found)."""
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.ndim != 3 or landmarks.shape[2] != 2:
        raise ValueError(f"landmarks must be (T, P, 2), got {landmarks.shape}")
    return np.isfinite(landmarks).all(axis=(1, 2))


def detection_rate(landmarks: np.ndarray) -> float:
    """Fraction of frames with a face; nan for a clip without frames."""
    found = detected(landmarks)
    return float(found.mean()) if len(found) else float("nan")


def _trimmed(generated: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both landmark series cut to their common length (checked to have the same points)."""
    generated, real = np.asarray(generated, np.float64), np.asarray(real, np.float64)
    for landmarks in (generated, real):
        detected(landmarks)  # raises on a bad shape
    if generated.shape[1] != real.shape[1]:
        raise ValueError(f"landmark sets differ: {generated.shape[1]} vs {real.shape[1]} points")
    n = min(len(generated), len(real))
    return generated[:n], real[:n]


def frame_distances(generated: np.ndarray, real: np.ndarray, points: tuple[int, ...] = FACE) -> np.ndarray:
    """(T,) mean Euclidean distance over `points` per frame; NaN where either side has no face."""
    generated, real = _trimmed(generated, real)
    both = detected(generated) & detected(real)
    idx = list(points)
    dist = np.linalg.norm(generated[:, idx] - real[:, idx], axis=-1).mean(axis=1)
    return np.where(both, dist, np.nan)


def inter_ocular(landmarks: np.ndarray) -> np.ndarray:
    """(T,) distance between the outer eye corners (NaN where there is no face)."""
    landmarks = np.asarray(landmarks, np.float64)
    return np.linalg.norm(landmarks[:, OUTER_EYE_CORNERS[1]] - landmarks[:, OUTER_EYE_CORNERS[0]], axis=-1)


def landmark_distance(
    generated: np.ndarray, real: np.ndarray, points: tuple[int, ...] = FACE, scale: np.ndarray | None = None
) -> float:
    """LMD: mean over points, then over the frames where both sides have a face; nan when there is none.

    scale: optional (T,) per-frame divisor (e.g. the real face's inter-ocular distance) for a normalised LMD.
    """
    dist = frame_distances(generated, real, points)
    if scale is not None:
        dist = dist / np.asarray(scale, np.float64)[: len(dist)]
    dist = dist[np.isfinite(dist)]
    return float(dist.mean()) if len(dist) else float("nan")


def m_lmd(generated: np.ndarray, real: np.ndarray, scale: np.ndarray | None = None) -> float:
    """Mouth LMD (points 48..67 of 68)."""
    return landmark_distance(generated, real, MOUTH, scale)


def f_lmd(generated: np.ndarray, real: np.ndarray, scale: np.ndarray | None = None) -> float:
    """Face LMD (all 68 points)."""
    return landmark_distance(generated, real, FACE, scale)


def frames_compared(generated: np.ndarray, real: np.ndarray) -> int:
    """How many frames enter the LMD (both sides have a face)."""
    generated, real = _trimmed(generated, real)
    return int((detected(generated) & detected(real)).sum())
