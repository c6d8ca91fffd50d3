"""Inner-lip opening from 68-point landmarks, the spoken span of a clip, and the within-clip correlation on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffheads.errors import DiffheadsError

INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))  # upper and lower inner-lip points facing each other (0-based)
MOUTH_CORNERS = (48, 54)
ALIGN_UNITS_PER_SECOND = 25000  # GRID .align files count time in 1/25000 s
SILENCE_WORDS = {"sil", "sp"}
SPEECH_BAND_HZ = (400.0, 7000.0)  # above mains hum and the low thumps GRID's silences hold, which are as loud as speech
VOICED_LEVEL = 0.25  # voiced: above this fraction of the way from the noise floor to the peak band level, in dB
FLOOR_PERCENTILE = 10
MIN_VOICED_RUN = 3  # frames; shorter loud runs are clicks
MIN_RANGE_DB = 6.0  # a clip whose band level never rises this far above its floor has no speech to find


def lip_opening(points: np.ndarray) -> np.ndarray:
    """(T,) mean inner-lip gap (61-67, 62-66, 63-65) over the mouth-corner width (48-54): scale-free."""
    points = np.asarray(points, np.float64)
    if points.ndim != 3 or points.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must be (T, 68, 2), got {points.shape}")
    gaps = np.stack([np.linalg.norm(points[:, a] - points[:, b], axis=-1) for a, b in INNER_LIP_PAIRS], axis=1)
    width = np.linalg.norm(points[:, MOUTH_CORNERS[1]] - points[:, MOUTH_CORNERS[0]], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(width > 0, gaps.mean(axis=1) / width, np.nan)


def find_alignment(alignments_dir: str | Path | None, clip: str) -> Path | None:
    """The GRID .align file of a clip: DIR/<clip id>.align, else DIR/<clip basename>.align; None when absent."""
    if alignments_dir is None:
        return None
    for name in (f"{clip}.align", f"{Path(clip).name}.align"):
        path = Path(alignments_dir) / name
        if path.is_file():
            return path
    return None


def alignment_span(path: str | Path, n_frames: int, fps: float = 25.0) -> slice:
    """Video frames from the start of the first to the end of the last spoken word of a GRID alignment file."""
    words = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            start, end, word = int(fields[0]), int(fields[1]), fields[2]
        except (ValueError, IndexError):
            raise DiffheadsError(
                f"{path} line {number} is not '<start> <end> <word>' (GRID alignment); fix or remove the file"
            ) from None
        if word.lower() not in SILENCE_WORDS:
            words.append((start, end))
    if not words:
        raise DiffheadsError(f"{path} has no spoken word (only sil/sp); fix or remove the file")
    per_frame = ALIGN_UNITS_PER_SECOND / fps
    first = int(np.floor(words[0][0] / per_frame))
    last = int(np.ceil(words[-1][1] / per_frame))
    first, last = min(max(first, 0), n_frames), min(max(last, 0), n_frames)
    return slice(first, last) if last > first else slice(0, n_frames)


def voice_span(audio: np.ndarray, n_frames: int, sample_rate: int = 16000, fps: float = 25.0) -> slice:
    """Frames from the first to the last voiced run of an energy detector on the 400-7000 Hz band; all when none.

    Per video frame: Hann-windowed power in SPEECH_BAND_HZ, in dB; voiced above VOICED_LEVEL of the way from the
    floor (FLOOR_PERCENTILE) to the loudest frame, in runs of MIN_VOICED_RUN frames or more.
    """
    per_frame = int(round(sample_rate / fps))
    audio = np.asarray(audio, np.float64).ravel()
    n = min(n_frames, len(audio) // per_frame)
    if n < MIN_VOICED_RUN:
        return slice(0, n_frames)
    chunks = audio[: n * per_frame].reshape(n, per_frame) * np.hanning(per_frame)
    freqs = np.fft.rfftfreq(per_frame, 1.0 / sample_rate)
    band = (freqs >= SPEECH_BAND_HZ[0]) & (freqs <= SPEECH_BAND_HZ[1])
    level = 10 * np.log10((np.abs(np.fft.rfft(chunks, axis=1)) ** 2)[:, band].sum(axis=1) + 1e-20)
    floor, peak = np.percentile(level, FLOOR_PERCENTILE), level.max()
    voiced = level > floor + VOICED_LEVEL * (peak - floor)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(int), [0]])))
    runs = [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b - a >= MIN_VOICED_RUN]
    if peak - floor < MIN_RANGE_DB or not runs:
        return slice(0, n_frames)
    return slice(int(runs[0][0]), int(runs[-1][1]))


def pooled_std(series: list[np.ndarray]) -> float:
    """Standard deviation of the clips' series about each clip's own mean, pooled over clips (finite values only)."""
    centred = [s[np.isfinite(s)] - s[np.isfinite(s)].mean() for s in map(np.asarray, series) if np.isfinite(s).any()]
    if not centred:
        return float("nan")
    values = np.concatenate(centred)
    return float(np.sqrt(np.mean(values**2)))
