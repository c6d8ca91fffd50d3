"""Split a clip into segments with a face throughout: drop faceless stretches, cut at hard scene cuts.

A raw recording may cut to B-roll, lose the face for seconds or jump to another shot. The
frames are cut into shots at hard cuts (`find_cuts`), faceless runs longer than a few frames
are dropped, and each remaining piece becomes a segment of its own, aligned and smoothed on
its own (`plan_segments`). A split clip lists its segments in DATA/segments/<clip>.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from diffheads.data.layout import DataLayout

THUMB = 32  # side of the thumbnails compared to find cuts
FPS = 25


@dataclass(frozen=True)
class Span:
    """Frames [start, end) of the clip's 25 fps timeline; `reason` says why a dropped span was dropped."""

    start: int
    end: int
    reason: str = ""

    def __len__(self) -> int:
        return self.end - self.start

    def describe(self) -> dict:
        """The span as report fields (frames and seconds; `end` is exclusive)."""
        out = {
            "start": self.start,
            "end": self.end,
            "start_s": round(self.start / FPS, 2),
            "end_s": round(self.end / FPS, 2),
        }
        return out | ({"reason": self.reason} if self.reason else {})


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """(32, 32, 3) uint8 area-averaged copy of a frame: sensor noise and small motion average out."""
    return cv2.resize(frame, (THUMB, THUMB), interpolation=cv2.INTER_AREA)


class Thumbnails:
    """Keeps each frame's thumbnail; called with a frame, says whether it changed from the last one by more
    than `threshold` (perhaps a cut: landmark tracking starts afresh there)."""

    def __init__(self, threshold: float) -> None:
        self.threshold, self.thumbs = threshold, []

    def __call__(self, frame: np.ndarray) -> bool:
        thumb = thumbnail(frame)
        jump = bool(self.thumbs) and 0 < self.threshold < np.abs(thumb.astype(np.int16) - self.thumbs[-1]).mean()
        self.thumbs.append(thumb)
        return jump


def lag_change(thumbs: np.ndarray, lag: int, chunk: int = 2048) -> np.ndarray:
    """Mean absolute difference (0-255) between thumbnail i and i + lag, for every i."""
    out = np.empty(max(0, len(thumbs) - lag), np.float32)
    for i in range(0, len(out), chunk):
        a = thumbs[i : i + chunk].astype(np.int16)
        b = thumbs[i + lag : i + lag + chunk].astype(np.int16)
        out[i : i + len(a)] = np.abs(a[: len(b)] - b).mean(axis=(1, 2, 3))
    return out


def find_cuts(thumbs: np.ndarray, window: int, threshold: float, ratio: float) -> list[int]:
    """First frames of new shots: t where every frame among the `window` + 1 before t differs from every one
    among t and the `window` after by more than `threshold` and `ratio` times the median frame-to-frame change.

    Comparing across a window, not just neighbours, keeps a flash or a few odd frames (a dropout
    that returns to the same shot) from counting as two cuts.
    """
    n = len(thumbs)
    if threshold <= 0 or n < 2:
        return []
    thumbs = np.asarray(thumbs)
    changes = {lag: lag_change(thumbs, lag) for lag in range(1, 2 * window + 2)}
    limit = max(threshold, ratio * float(np.median(changes[1])))
    apart = np.full(n, np.inf)  # apart[t]: the least change across the boundary before frame t
    for a in range(window + 1):  # frame t - 1 - a before the boundary
        for b in range(window + 1):  # frame t + b after it
            lag = a + b + 1
            t = np.arange(1 + a, n - b)
            if len(t):
                apart[t] = np.minimum(apart[t], changes[lag][t - 1 - a])
    apart[0] = 0.0
    return [int(t) for t in np.flatnonzero(apart > limit)]


def _faceless_runs(has_face: np.ndarray, start: int, end: int) -> list[Span]:
    """Maximal runs of frames without a face in [start, end)."""
    runs, t = [], start
    while t < end:
        if has_face[t]:
            t += 1
            continue
        s = t
        while t < end and not has_face[t]:
            t += 1
        runs.append(Span(s, t, "no face"))
    return runs


def _shot_pieces(has_face: np.ndarray, start: int, end: int, max_gap: int) -> list[Span]:
    """A shot [start, end) without its faceless runs longer than `max_gap` (or filling it): pieces ("") and drops."""
    out, t = [], start
    for run in _faceless_runs(has_face, start, end):
        if len(run) <= max_gap and len(run) < end - start:
            continue  # a short dropout: its landmarks are interpolated
        if run.start > t:
            out.append(Span(t, run.start))
        out.append(run)
        t = run.end
    if t < end:
        out.append(Span(t, end))
    return out


def plan_segments(
    has_face: np.ndarray, cuts: list[int], min_frames: int, max_gap: int, max_missing: float
) -> tuple[list[Span], list[Span]]:
    """(kept segments, dropped spans with reasons "no face", "too short" or "face lost"), both in time order."""
    has_face = np.asarray(has_face, bool)
    bounds = [0, *cuts, len(has_face)]
    kept, dropped = [], []
    for start, end in zip(bounds, bounds[1:]):
        for piece in _shot_pieces(has_face, start, end, max_gap):
            missing = int((~has_face[piece.start : piece.end]).sum())
            if piece.reason:
                dropped.append(piece)
            elif len(piece) < min_frames:
                dropped.append(Span(piece.start, piece.end, "too short"))
            elif missing > max_missing * len(piece):
                dropped.append(Span(piece.start, piece.end, "face lost"))
            else:
                kept.append(piece)
    return kept, dropped


def segment_ids(rel: str, count: int) -> list[str]:
    """Clip ids of a clip's segments: the clip's own id when it is one, else <rel>_s000, <rel>_s001, ..."""
    return [rel] if count == 1 else [f"{rel}_s{i:03d}" for i in range(count)]


def segments_file(layout: DataLayout, rel: str) -> Path:
    """DATA/segments/<rel>.json: the segments of a clip written as parts of its timeline (split or trimmed)."""
    return layout.root / "segments" / f"{rel}.json"


def read_segments(layout: DataLayout, rel: str) -> dict | None:
    """A clip's segment record, or None when it has none (or it cannot be read)."""
    path = segments_file(layout, rel)
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        ok = isinstance(info["dropped"], list) and all(isinstance(s["id"], str) for s in info["segments"])
    except (ValueError, KeyError, TypeError):
        return None
    return info if ok else None


def written_ids(layout: DataLayout, rel: str) -> list[str]:
    """The clip ids a prepared clip was written as: its segments' ids, else its own."""
    info = read_segments(layout, rel)
    return [s["id"] for s in info["segments"]] if info else [rel]
