"""Find the raw clips under RAW_DIR: video files, with their audio inside or in a file beside them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffheads.errors import DiffheadsError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp", ".ts")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus")


@dataclass(frozen=True)
class RawClip:
    """One raw video; `rel` is its path under RAW_DIR without suffix, and becomes the clip id."""

    rel: str
    video: Path
    audio: Path  # the video file itself when no separate audio file lies beside it


def _beside(video: Path) -> Path:
    """An audio file with the video's name, else the video (its own audio track)."""
    for suffix in AUDIO_SUFFIXES:
        candidate = video.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return video


def find_raw_clips(raw_dir: str | Path) -> list[RawClip]:
    """Every file with a video suffix under `raw_dir` (recursively), sorted by path."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DiffheadsError(f"raw video folder {raw_dir} not found; pass the folder that holds your videos")
    videos = sorted(p for p in raw_dir.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise DiffheadsError(f"no videos under {raw_dir} (looked for {', '.join(VIDEO_SUFFIXES)}); check the folder")
    clips, seen = [], {}
    for video in videos:
        rel = video.relative_to(raw_dir).with_suffix("").as_posix()
        if rel in seen:
            raise DiffheadsError(f"{seen[rel].name} and {video.name} would both become clip '{rel}'; rename one")
        seen[rel] = video
        clips.append(RawClip(rel, video, _beside(video)))
    return clips
