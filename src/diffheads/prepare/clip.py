"""Prepare one raw clip: 25 fps frames -> landmarks -> aligned crop video, 16 kHz wav, 68-point landmarks."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffheads.data.layout import DataLayout
from diffheads.errors import DiffheadsError
from diffheads.face.align import AlignConfig, fill_missing, frame_transforms, transform_points, warp
from diffheads.face.mean_face import MeanFace
from diffheads.face.track import track_landmarks
from diffheads.io.atomic import atomic_path, atomic_write_text
from diffheads.io.audio import NoAudioError, load_audio, write_wav
from diffheads.io.video import iter_frames_at, video_fps, write_video
from diffheads.prepare.segments import (
    Span,
    Thumbnails,
    find_cuts,
    plan_segments,
    segment_ids,
    segments_file,
    written_ids,
)
from diffheads.prepare.sources import RawClip

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS


@dataclass(frozen=True)
class PrepareConfig:
    """What `prepare` does to each clip."""

    align: AlignConfig = field(default_factory=AlignConfig)
    min_frames: int = 16  # shorter clips are skipped ("too short"), shorter segments of a split clip dropped
    max_missing: float = 0.2  # largest fraction of frames without a face in a segment before it is dropped
    max_gap_frames: int = 3  # faceless runs up to this long inside a shot are interpolated; longer ones split the clip
    cut_threshold: float = 12.0  # mean absolute change (0-255, 32 px thumbnails) across a hard scene cut; 0 = off
    cut_ratio: float = 6.0  # a cut also changes the picture this many times more than the clip's median frame step
    max_length_mismatch_s: float = 0.5  # audio and video durations may differ by this much (then trimmed/padded)
    min_audio_rms: float = 1e-4  # quieter audio is skipped as silent
    detect_max_side: int = 640  # frames are shrunk to this longest side for landmark detection
    crf: int = 18  # H.264 quality of the aligned clips
    frame_cache_mb: int = 768  # clips whose frames fit are decoded once; longer ones are decoded twice

    def __post_init__(self) -> None:
        if self.min_frames < 1:
            raise DiffheadsError(f"min_frames must be >= 1, got {self.min_frames}")
        if not 0.0 <= self.max_missing < 1.0:
            raise DiffheadsError(f"max_missing must be in [0, 1), got {self.max_missing}")
        if self.max_gap_frames < 0:
            raise DiffheadsError(f"max_gap_frames must be >= 0, got {self.max_gap_frames}")
        if self.cut_threshold < 0 or self.cut_ratio < 0:
            raise DiffheadsError(f"cut threshold and ratio must be >= 0, got {self.cut_threshold} and {self.cut_ratio}")


class ClipSkipped(Exception):
    """A clip that cannot be prepared; `reason` is one of the report's categories."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class ClipResult:
    """What happened to one clip."""

    rel: str
    status: str  # "prepared" or "skipped"
    frames: int = 0
    reason: str = ""
    detail: str = ""
    missing_face_frames: int = 0
    record: dict | None = None  # segments, dropped spans and cuts of a split or trimmed clip (DATA/segments/<rel>.json)


def _outputs(layout: DataLayout, cid: str) -> tuple[Path, ...]:
    """The files of one clip id, in the order they are written (the video last)."""
    return layout.landmarks(cid), layout.alignment(cid), layout.audio(cid), layout.video(cid)


def is_prepared(layout: DataLayout, rel: str) -> bool:
    """All outputs of the clip, or of each of its segments, exist (each written atomically, a split clip's record last)."""
    return all(p.is_file() for cid in written_ids(layout, rel) for p in _outputs(layout, cid))


def _keep_frames(
    frames: Iterator[tuple[float, np.ndarray]], kept: list[np.ndarray], budget_mb: int
) -> Iterator[tuple[float, np.ndarray]]:
    """Pass frames through, keeping them in `kept` until they exceed the budget (then `kept` is emptied)."""
    used, budget = 0, budget_mb * 2**20
    for time, frame in frames:
        if used <= budget:
            used += frame.nbytes
            if used <= budget:
                kept.append(frame)
            else:
                kept.clear()
        yield time, frame


def _clip_audio(raw: RawClip, cfg: PrepareConfig) -> np.ndarray:
    """16 kHz mono audio of a clip, or ClipSkipped when there is none or it is silent."""
    try:
        audio = load_audio(raw.audio, SAMPLE_RATE)
    except NoAudioError as err:
        if raw.audio == raw.video:
            raise ClipSkipped(
                "no audio",
                f"{raw.video} has no sound and no audio file of its name lies beside it; "
                f"put one there ({raw.video.stem}.wav, .flac, .mp3, ...)",
            ) from None
        raise ClipSkipped("no audio", str(err)) from None
    except DiffheadsError as err:
        raise ClipSkipped("unreadable", str(err)) from None
    if float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) < cfg.min_audio_rms:
        raise ClipSkipped("silent audio", f"the audio of {raw.audio.name} is silent; use a recording with speech")
    return audio


def _matched_length(audio: np.ndarray, n_frames: int, cfg: PrepareConfig) -> np.ndarray:
    """Audio trimmed or zero-padded to exactly n_frames * 640 samples, unless the lengths differ too much."""
    want = n_frames * SAMPLES_PER_FRAME
    if abs(len(audio) - want) / SAMPLE_RATE > cfg.max_length_mismatch_s:
        raise ClipSkipped(
            "length mismatch",
            f"audio lasts {len(audio) / SAMPLE_RATE:.2f} s, video {n_frames / FPS:.2f} s; "
            "give audio of the video's length",
        )
    return np.pad(audio[:want], (0, max(0, want - len(audio))))


def _faces_found(landmarks: np.ndarray, faces_seen: int, cfg: PrepareConfig) -> np.ndarray:
    """(T,) whether each frame has a face, or ClipSkipped when the clip is too short or shows no or several faces."""
    n = len(landmarks)
    if n == 0:
        raise ClipSkipped("unreadable", "no frames could be decoded")
    if n < cfg.min_frames:
        raise ClipSkipped(
            "too short", f"{n} frames at 25 fps, need {cfg.min_frames}; use a longer clip or lower --min-frames"
        )
    has_face = np.isfinite(landmarks).all(axis=(1, 2))
    missing = int((~has_face).sum())
    if faces_seen > 1:
        raise ClipSkipped("several faces", f"{faces_seen} faces in one frame; crop the video to one speaker")
    if missing == n:
        raise ClipSkipped("no face", f"no face found in any of its {n} frames; use videos that show the speaker's face")
    return has_face


def _segments_record(rel: str, n: int, ids: list[str], spans: list[Span], dropped: list[Span], cuts: list[int]) -> dict:
    """DATA/segments/<rel>.json of a split or trimmed clip: its segments, dropped spans and cuts."""
    return {
        "clip": rel,
        "frames": n,
        "segments": [{"id": cid} | span.describe() for cid, span in zip(ids, spans)],
        "dropped": [span.describe() for span in dropped],
        "cuts": cuts,
    }


def prepare_clip(raw: RawClip, layout: DataLayout, mean_face: MeanFace, cfg: PrepareConfig) -> ClipResult:
    """Align one clip and write DATA/video, audio, lmks and align for it, or for each of its segments when faceless
    stretches or scene cuts split it (segments.py); ClipSkipped says why not."""
    if raw.audio == raw.video:
        try:
            video_fps(raw.video)  # an unreadable video is reported as one, not as unreadable audio
        except DiffheadsError as err:
            raise ClipSkipped("unreadable", str(err)) from None
    audio = _clip_audio(raw, cfg)  # first: it is cheap, and a clip without sound needs no landmarks
    kept: list[np.ndarray] = []
    thumbs = Thumbnails(cfg.cut_threshold)
    try:
        landmarks, times, faces_seen = track_landmarks(
            _keep_frames(iter_frames_at(raw.video, FPS), kept, cfg.frame_cache_mb), cfg.detect_max_side, new_shot=thumbs
        )
    except DiffheadsError as err:
        raise ClipSkipped("unreadable", str(err)) from None
    n = len(landmarks)
    has_face = _faces_found(landmarks, faces_seen, cfg)
    cuts = find_cuts(np.stack(thumbs.thumbs), cfg.max_gap_frames, cfg.cut_threshold, cfg.cut_ratio)
    spans, dropped = plan_segments(has_face, cuts, cfg.min_frames, cfg.max_gap_frames, cfg.max_missing)
    if not spans:
        raise _nothing_kept(has_face, dropped, cfg)
    audio = _matched_length(audio, n, cfg)

    transforms = [
        frame_transforms(landmarks[s.start : s.end], mean_face, cfg.align, times[s.start : s.end]) for s in spans
    ]
    crops = _warp_spans(raw, kept, n, spans, transforms, cfg.align.size)
    ids = segment_ids(raw.rel, len(spans))
    record = _segments_record(raw.rel, n, ids, spans, dropped, cuts) if len(spans) > 1 or dropped else None
    if record is None:
        segments_file(layout, raw.rel).unlink(missing_ok=True)  # a stale record would name segments not written now
    written: list[Path] = []
    try:  # all files or none: a clip half written (disk full) is not left behind
        for cid, span, maps, clip_crops in zip(ids, spans, transforms, crops):
            points = fill_missing(landmarks[span.start : span.end])
            crop_landmarks = np.stack([transform_points(m, p) for m, p in zip(maps, points)])
            clip_audio = audio[span.start * SAMPLES_PER_FRAME : span.end * SAMPLES_PER_FRAME]
            _write_outputs(layout, cid, crop_landmarks, maps, clip_audio, clip_crops, cfg.crf, written)
        if record is not None:
            atomic_write_text(segments_file(layout, raw.rel), json.dumps(record, indent=2) + "\n")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    kept_missing = sum(int((~has_face[s.start : s.end]).sum()) for s in spans)
    return ClipResult(raw.rel, "prepared", frames=sum(map(len, spans)), missing_face_frames=kept_missing, record=record)


def _nothing_kept(has_face: np.ndarray, dropped: list[Span], cfg: PrepareConfig) -> ClipSkipped:
    """Why no segment of a clip was kept: the reason of its longest stretch with a face."""
    longest = max((d for d in dropped if d.reason != "no face"), key=len)
    if longest.reason == "too short":
        return ClipSkipped(
            "too short",
            f"its longest stretch with a face and no cut lasts {len(longest)} frames at 25 fps, need {cfg.min_frames}; "
            "use a longer clip or lower --min-frames",
        )
    lost = int((~has_face[longest.start : longest.end]).sum())
    where = "" if len(longest) == len(has_face) else " of its longest stretch with a face"
    return ClipSkipped(
        "face lost", f"no face in {lost} of {len(longest)} frames{where}; trim the clip or raise --max-missing"
    )


def _warp_spans(
    raw: RawClip, cached: list[np.ndarray], n: int, spans: list[Span], transforms: list[np.ndarray], size: int
) -> list[np.ndarray]:
    """The crops of each span's frames, warped from the cached frames or from a second decode."""
    crops = [np.empty((len(s), size, size, 3), np.uint8) for s in spans]
    owner = np.full(n, -1)
    for i, span in enumerate(spans):
        owner[span.start : span.end] = i
    count = 0
    frames = cached if len(cached) == n else (frame for _, frame in iter_frames_at(raw.video, FPS))
    try:
        for t, frame in enumerate(frames):
            if t < n and owner[t] >= 0:
                i = owner[t]
                crops[i][t - spans[i].start] = warp(frame, transforms[i][t - spans[i].start], size)
            count += 1
    except DiffheadsError as err:
        raise ClipSkipped("unreadable", str(err)) from None
    if count != n:
        raise ClipSkipped("unreadable", f"decoding gave {count} frames the second time, {n} the first")
    return crops


def _write_outputs(
    layout: DataLayout,
    cid: str,
    crop_landmarks: np.ndarray,
    transforms: np.ndarray,
    audio: np.ndarray,
    crops: np.ndarray,
    crf: int,
    written: list[Path],
) -> None:
    """lmks, align, audio and video of one clip id, the video last; each file is added to `written` once it exists."""
    with atomic_path(layout.landmarks(cid)) as tmp:
        np.save(tmp, crop_landmarks.astype(np.float32))
    written.append(layout.landmarks(cid))
    with atomic_path(layout.alignment(cid)) as tmp:
        np.save(tmp, transforms[:, :2].astype(np.float32))
    written.append(layout.alignment(cid))
    write_wav(layout.audio(cid), audio, SAMPLE_RATE)
    written.append(layout.audio(cid))
    write_video(layout.video(cid), crops, fps=FPS, crf=crf)
    written.append(layout.video(cid))


def prepare_or_skip(job: tuple[RawClip, DataLayout, MeanFace, PrepareConfig]) -> ClipResult:
    """Worker entry point: one clip, never raising for a bad clip (this module does not import torch,
    so spawned workers start quickly)."""
    raw, layout, mean_face, cfg = job
    try:
        return prepare_clip(raw, layout, mean_face, cfg)
    except ClipSkipped as skip:
        return ClipResult(raw.rel, "skipped", reason=skip.reason, detail=skip.detail)
    except OSError as err:
        if _in_output(err, layout):
            raise  # a full disk or a read-only output stops the run: every other clip would fail the same way
        return ClipResult(raw.rel, "skipped", reason="error", detail=f"{type(err).__name__}: {err}")
    except Exception as err:  # noqa: BLE001 - one odd file must not stop a run of thousands
        return ClipResult(raw.rel, "skipped", reason="error", detail=f"{type(err).__name__}: {err}")


def _in_output(err: OSError, layout: DataLayout) -> bool:
    """Whether a file-system error is about the output folder (not about one raw clip)."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    names = [n for n in (err.filename, err.filename2) if n]
    root = layout.root.resolve()
    return any(Path(n).resolve().is_relative_to(root) for n in names)
