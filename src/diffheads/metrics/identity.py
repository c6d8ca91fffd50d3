"""Identity distances between 128-d face descriptors (dlib's face-recognition ResNet)."""

from __future__ import annotations

import numpy as np

SAMPLE_EVERY = 5  # descriptors cost ~tens of ms per face on a CPU: every 5th frame (5 per second at 25 fps)


def sampled_frames(n_frames: int, every: int = SAMPLE_EVERY) -> np.ndarray:
    """Frames every, 2*every, ... (frame 0 is the identity frame itself); the last frame when the clip is shorter."""
    picked = np.arange(every, n_frames, every)
    return picked if len(picked) else np.array([max(n_frames - 1, 0)])


def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean distance of two descriptor arrays (N, D) (b may be one row, broadcast)."""
    return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two descriptor arrays (N, D) (b may be one row, broadcast)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > 0, np.sum(a * b, axis=-1) / norms, np.nan)
