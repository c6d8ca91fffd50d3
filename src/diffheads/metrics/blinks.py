"""Blinks per second and blink duration from 68-point eye landmarks, after DinoMan/blink-detector.

Facts of the reference (blink/detector.py and blink/utils.py of DinoMan/blink-detector):
- EAR per eye = (|p1-p5| + |p2-p4|) / (2 |p0-p3|) over the six eye points (36-41, 42-47), averaged over both eyes.
- drops: `scipy.signal.find_peaks(-(e[t+1] - e[t]), 0.0425, None, 4)`, i.e. height 0.0425 and distance 4.
- for a drop at p (from e[p] to e[p+1]): the blink starts at p when e[p-1] <= e[p]; otherwise at the last peak of
  e[:p+1] with height >= (min(e) + max(e)) / 2 (distance 1), or at 0 when there is none.
- it ends at p + the first such peak of e[p:next_p] (e[p:] for the last drop); a drop with no peak there is
  dropped, except the last one, which then ends at len(e) - 1.
- duration = end - start in frames.
- `get_mean_blink_duration` returns the *sum* of the durations divided by len(blink_limits), and blink_limits is the
  dict {"start": [...], "end": [...]}: so it always divides by 2. With one blink this is half the mean; in general it
  is half the total. The legacy variant reproduces exactly that (the reference gives 0 without blinks; we give None).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import find_peaks

from diffheads.errors import DiffheadsError

REFERENCE_HEIGHT = 0.0425  # drop threshold in EAR units, tuned on dlib landmarks of real faces
REFERENCE_DISTANCE = 4  # minimum frames between two drops
EYES = (slice(36, 42), slice(42, 48))


@dataclass(frozen=True)
class Blink:
    """One blink: start and end frame (normally the open-eye peaks around the drop) and end - start."""

    start: int
    end: int
    duration_frames: int


def eye_aspect_ratio(landmarks: np.ndarray) -> np.ndarray:
    """(T, 68, 2) landmarks -> (T,) eye aspect ratio averaged over both eyes."""
    points = np.asarray(landmarks, np.float64)
    if points.ndim != 3 or points.shape[1] < 48 or points.shape[2] < 2:
        raise DiffheadsError(f"landmarks must be (T, 68, 2) in the 68-point layout, got shape {points.shape}")
    ears = []
    for eye in EYES:
        p = points[:, eye, :2]
        vertical = np.linalg.norm(p[:, 1] - p[:, 5], axis=-1) + np.linalg.norm(p[:, 2] - p[:, 4], axis=-1)
        horizontal = np.linalg.norm(p[:, 0] - p[:, 3], axis=-1)
        if np.any(horizontal <= 0):
            raise DiffheadsError("eye corners coincide in some frame (p0 == p3): the landmarks are degenerate")
        ears.append(vertical / (2.0 * horizontal))
    return (ears[0] + ears[1]) / 2.0


def _open_peaks(signal: np.ndarray, level: float) -> np.ndarray:
    """Indices of local maxima of `signal` at or above `level` (find_peaks with height=level, distance=1)."""
    return find_peaks(signal, height=level, distance=1)[0]


def detect_blinks(ear: np.ndarray, height: float = REFERENCE_HEIGHT, distance: int = REFERENCE_DISTANCE) -> list[Blink]:
    """Blinks in an EAR series by the reference's rules (see the module docstring)."""
    e = np.asarray(ear, np.float64).reshape(-1)
    if not np.all(np.isfinite(e)):
        raise DiffheadsError("the eye aspect ratio has NaN or infinite values: fill or drop the frames without a face")
    if len(e) < 3:  # find_peaks cannot find an interior peak in fewer than 3 derivative samples anyway
        return []
    drops = find_peaks(-np.diff(e), height=height, distance=distance)[0]
    level = (e.min() + e.max()) / 2.0
    blinks: list[Blink] = []
    for k, p in enumerate(drops):
        if e[p - 1] <= e[p]:  # p >= 1 always: find_peaks never returns an end point
            start = int(p)
        else:
            left = _open_peaks(e[: p + 1], level)
            start = int(left[-1]) if len(left) else 0
        last = k == len(drops) - 1
        right = _open_peaks(e[p:] if last else e[p : drops[k + 1]], level)
        if len(right):
            end = int(p + right[0])
        elif last:
            end = len(e) - 1
        else:  # the reference drops a drop that the eye does not recover from before the next one
            continue
        blinks.append(Blink(start, end, end - start))
    return blinks


def blink_stats(
    landmarks_or_ear: np.ndarray,
    fps: float = 25.0,
    legacy: bool = False,
    height: float = REFERENCE_HEIGHT,
    distance: int = REFERENCE_DISTANCE,
) -> dict:
    """Blink count, blinks per second and mean duration (frames, s) of one clip; durations are None without blinks.

    Accepts (T, 68, 2) landmarks or a (T,) EAR series; height and distance go to `detect_blinks`.
    legacy=True reports the reference's `get_mean_blink_duration`: the sum of the durations divided by 2.
    """
    if fps <= 0:
        raise DiffheadsError(f"fps must be positive, got {fps}")
    values = np.asarray(landmarks_or_ear)
    if values.ndim == 3:
        ear = eye_aspect_ratio(values)
    elif values.ndim == 1:
        ear = values.astype(np.float64)
    else:
        raise DiffheadsError(f"expected (T, 68, 2) landmarks or a (T,) eye aspect ratio, got shape {values.shape}")
    if len(ear) == 0:
        raise DiffheadsError("no frames: blink statistics need at least one frame")
    blinks = detect_blinks(ear, height=height, distance=distance)
    durations = [b.duration_frames for b in blinks]
    if not durations:
        mean_frames = None
    elif legacy:
        mean_frames = float(sum(durations)) / 2.0
    else:
        mean_frames = float(np.mean(durations))
    return {
        "blinks": len(blinks),
        "blinks_per_second": len(blinks) / (len(ear) / fps),
        "mean_duration_frames": mean_frames,
        "mean_duration_s": None if mean_frames is None else mean_frames / fps,
        "variant": "legacy" if legacy else "corrected",
    }
