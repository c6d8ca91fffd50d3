"""How open the mouth is, measured from pixels, and the lip-sync correlation built on it."""

from __future__ import annotations

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
DARK_LEVEL = 0.10  # luma of a fully dark mouth interior (0..1); darker still counts as fully dark
MIN_CONTRAST = 0.2  # the bright reference stays at least this far above DARK_LEVEL
PAD_FRACTION = 0.1  # box padding as a fraction of the mouth width (plus half a pixel)
SPEECH_LEVEL = 0.4  # a frame is voiced above this fraction of the way from the noise floor to the peak, in dB
NOISE_PERCENTILE = 10  # the noise floor: this percentile of the frames' levels
MIN_VOICED_FRAMES = 3  # voiced runs shorter than this (clicks) are ignored


def _luma(frames: np.ndarray) -> np.ndarray:
    """Luma in 0..1 of uint8 frames, or of float frames in [-1, 1]."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        rgb = frames.astype(np.float32) / 255.0
    else:
        rgb = (frames.astype(np.float32) + 1.0) / 2.0
    return np.clip(rgb @ LUMA, 0.0, 1.0)


def _box(points: np.ndarray, height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns of the padded landmark bounding box, clipped to the frame."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = PAD_FRACTION * (hi[0] - lo[0]) + 0.5
    x0, y0 = int(np.floor(max(lo[0] - pad, 0))), int(np.floor(max(lo[1] - pad, 0)))
    x1, y1 = int(np.ceil(min(hi[0] + pad, width))), int(np.ceil(min(hi[1] + pad, height)))
    return slice(y0, max(y1, y0 + 1)), slice(x0, max(x1, x0 + 1))


def _border_median(patch: np.ndarray) -> float:
    """Median luma of the outermost rows and columns of a patch."""
    ring = np.concatenate([patch[0], patch[-1], patch[1:-1, 0], patch[1:-1, -1]])
    return float(np.median(ring))


def mouth_opening(frames: np.ndarray, mouth_landmarks: np.ndarray) -> np.ndarray:
    """Mouth opening (T,) in pixels: soft count of dark pixels in the mouth box divided by the mouth width.

    frames: (T, H, W, 3) uint8, or float in [-1, 1]. mouth_landmarks: points 48..67 in pixel (x, y) where the image
    spans [0, W] x [0, H], either per frame (T, 20, 2) or one set (20, 2) used for every frame.
    Darkness ramps linearly from 1 at DARK_LEVEL to 0 at the frame's bright reference (the median of the box border,
    i.e. the skin around the mouth),
    so a pixel half covered by the interior (after blur or anti-aliasing) counts about half, and the sum tracks the
    interior area; dividing by the corner-to-corner width gives roughly the interior height.
    """
    luma = _luma(frames)
    if luma.ndim != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {np.shape(frames)}")
    n, height, width = luma.shape
    points = np.asarray(mouth_landmarks, np.float32)
    if points.ndim == 2:
        points = np.broadcast_to(points, (n,) + points.shape)
    if points.shape != (n, 20, 2):
        raise ValueError(
            f"mouth_landmarks must be (T, 20, 2) or (20, 2) for {n} frames, got {np.shape(mouth_landmarks)}"
        )
    opening = np.zeros(n, np.float32)
    for t in range(n):
        rows, cols = _box(points[t], height, width)
        patch = luma[t, rows, cols]
        bright = max(_border_median(patch), DARK_LEVEL + MIN_CONTRAST)
        darkness = np.clip((bright - patch) / (bright - DARK_LEVEL), 0.0, 1.0)
        mouth_width = max(float(np.linalg.norm(points[t, 6] - points[t, 0])), 1.0)
        opening[t] = darkness.sum() / mouth_width
    return opening


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-length series; nan when either is constant or shorter than 2."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"series differ in length: {a.shape} vs {b.shape}")
    if len(a) < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt(np.sum(a**2) * np.sum(b**2))
    if denom <= 1e-12 * max(len(a), 1):
        return float("nan")
    return float(np.clip(np.sum(a * b) / denom, -1.0, 1.0))


def lip_sync_r(measured: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Pearson r pooled over clips (each pair trimmed to its common length); nan when undefined."""
    if len(measured) != len(truth):
        raise ValueError(f"{len(measured)} measured series but {len(truth)} truth series")
    pairs = [(np.ravel(m), np.ravel(t)) for m, t in zip(measured, truth)]
    pairs = [(m[: min(len(m), len(t))], t[: min(len(m), len(t))]) for m, t in pairs]
    if not pairs:
        return float("nan")
    return pearson_r(np.concatenate([m for m, _ in pairs]), np.concatenate([t for _, t in pairs]))


def within_clip_r(measured: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Pearson r pooled over clips after removing each clip's own mean from each of its two series; nan when undefined.

    Each pair is trimmed to its common length and frames where either series is not finite are dropped. Centring
    per clip keeps only the motion within clips: pooled raw series would also reward clip-level offsets (a clip
    whose mouth is open wider throughout), which say nothing about lip sync.
    """
    if len(measured) != len(truth):
        raise ValueError(f"{len(measured)} measured series but {len(truth)} truth series")
    centred_measured, centred_truth = [], []
    for m, t in zip(measured, truth):
        m, t = np.asarray(m, np.float64).ravel(), np.asarray(t, np.float64).ravel()
        n = min(len(m), len(t))
        m, t = m[:n], t[:n]
        keep = np.isfinite(m) & np.isfinite(t)
        if keep.any():
            centred_measured.append(m[keep] - m[keep].mean())
            centred_truth.append(t[keep] - t[keep].mean())
    if not centred_measured:
        return float("nan")
    return pearson_r(np.concatenate(centred_measured), np.concatenate(centred_truth))


def speech_span(audio: np.ndarray, n_frames: int, sample_rate: int = 16000, fps: float = 25.0) -> slice:
    """Video frames from the first to the last voiced one (an energy detector); the whole clip when none is voiced.

    Frame levels are RMS in dB over each frame's audio; voiced means above SPEECH_LEVEL of the way from the noise
    floor (NOISE_PERCENTILE) to the loudest frame, in runs of at least MIN_VOICED_FRAMES. On GRID s1 the span
    starts and ends within about a frame of the corpus's word alignments on average.
    """
    per_frame = sample_rate / fps
    audio = np.asarray(audio, np.float64).ravel()
    n = min(n_frames, int(len(audio) // per_frame))
    if n < MIN_VOICED_FRAMES:
        return slice(0, n_frames)
    cuts = (np.arange(n + 1) * per_frame).round().astype(int)
    rms = np.sqrt(np.array([np.mean(audio[a:b] ** 2) for a, b in zip(cuts[:-1], cuts[1:])]) + 1e-20)
    level = 20 * np.log10(rms)
    floor, peak = np.percentile(level, NOISE_PERCENTILE), level.max()
    voiced = level > floor + SPEECH_LEVEL * (peak - floor)
    runs = np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(int), [0]])))
    long_runs = [(a, b) for a, b in zip(runs[::2], runs[1::2]) if b - a >= MIN_VOICED_FRAMES]
    if peak - floor < 6.0 or not long_runs:  # no speech above the noise: keep every frame
        return slice(0, n_frames)
    return slice(int(long_runs[0][0]), int(long_runs[-1][1]))
