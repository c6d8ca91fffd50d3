"""Pair generated videos with their ground truth: frames, audio, landmarks and (synthetic) truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from diffheads.data.layout import DataLayout
from diffheads.errors import DiffheadsError
from diffheads.io.audio import NoAudioError, load_audio
from diffheads.io.video import read_video
from diffheads.prepare.sources import VIDEO_SUFFIXES


@dataclass(frozen=True)
class ClipPair:
    """Where one generated clip and its ground truth live."""

    rel: str
    generated: Path
    real: Path | None
    audio: Path | None  # real audio (DATA/audio) when the generated file has no sound
    landmarks: Path | None  # DATA/lmks of the real clip
    truth: Path | None  # DATA/truth of a synthetic clip


def _videos(root: Path) -> dict[str, Path]:
    """Relative id -> path of every video under root."""
    return {
        p.relative_to(root).with_suffix("").as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".")
    }


def find_pairs(generated_dir: str | Path, real_dir: str | Path | None) -> list[ClipPair]:
    """Every generated video, matched by relative path to a real clip (a DATA folder or a folder of videos)."""
    generated_dir = Path(generated_dir)
    if not generated_dir.is_dir():
        state = "is not a folder" if generated_dir.exists() else "not found"
        raise DiffheadsError(f"generated folder {generated_dir} {state}; pass the --out folder of 'diffheads generate'")
    generated = _videos(generated_dir)
    if not generated:
        raise DiffheadsError(f"no videos under {generated_dir}; generate some first ('diffheads generate')")
    if real_dir is None:
        return [ClipPair(rel, path, None, None, None, None) for rel, path in generated.items()]
    real_dir = Path(real_dir)
    if not real_dir.is_dir():
        state = "is not a folder" if real_dir.exists() else "not found"
        raise DiffheadsError(f"real folder {real_dir} {state}; pass the DATA folder or a folder of real videos")
    if (real_dir / "video").is_dir():
        layout = DataLayout.of(real_dir)

        def existing(p: Path) -> Path | None:
            return p if p.is_file() else None

        pairs = [
            ClipPair(
                rel,
                path,
                existing(layout.video(rel)),
                existing(layout.audio(rel)),
                existing(layout.landmarks(rel)),
                existing(layout.truth(rel)),
            )
            for rel, path in generated.items()
        ]
    else:
        real = _videos(real_dir)
        pairs = [ClipPair(rel, path, real.get(rel), None, None, None) for rel, path in generated.items()]
    if not any(p.real for p in pairs):
        raise DiffheadsError(
            f"none of the {len(pairs)} generated videos has a real clip of the same name under {real_dir}; "
            "pass the DATA folder the clips were generated from"
        )
    return pairs


@dataclass
class LoadedPair:
    """Decoded frames (same length and size), audio, landmarks and truth of one pair."""

    rel: str
    generated: np.ndarray  # (T, H, W, 3) uint8
    real: np.ndarray | None  # (T, H, W, 3) uint8, resized to the generated size
    audio: np.ndarray | None  # 16 kHz mono
    real_landmarks: np.ndarray | None  # (T, 68, 2) in generated-frame pixels
    truth: dict[str, np.ndarray] | None
    real_size: tuple[int, int] | None = None  # (H, W) of the real video as stored, before the resize


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Frames resized (area averaging when shrinking) to height x width."""
    if frames.shape[1:3] == (height, width):
        return frames
    shrink = height < frames.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (width, height), interpolation=interp) for f in frames])


def load_pair(pair: ClipPair) -> LoadedPair:
    """Decode a pair; both videos are cut to the shorter length, the real one resized to the generated size."""
    generated, _ = read_video(pair.generated)
    h, w = generated.shape[1:3]
    real, landmarks, truth = None, None, None
    real_size: tuple[int, int] | None = None
    n = len(generated)
    if pair.real is not None:
        real_full, _ = read_video(pair.real)
        n = min(n, len(real_full))
        real = _resize(real_full[:n], h, w)
        real_size = (int(real_full.shape[1]), int(real_full.shape[2]))
        if pair.landmarks is not None:
            lm = np.load(pair.landmarks).astype(np.float64)[:, :, :2]
            scale = np.array([w / real_full.shape[2], h / real_full.shape[1]])
            if len(lm) >= n and lm.shape[1] == 68:
                landmarks = lm[:n] * scale
    if pair.truth is not None:
        with np.load(pair.truth) as z:
            truth = {k: z[k][:n] for k in z.files}
    audio = None
    for source in (pair.generated, pair.audio, pair.real):
        if source is None:
            continue
        try:
            audio = load_audio(source)
            break
        except NoAudioError:
            continue
    return LoadedPair(pair.rel, generated[:n], real, audio, landmarks, truth, real_size)
