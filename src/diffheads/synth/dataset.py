"""Write a synthetic talking-face dataset in the SPEC data contract, with the ground truth that made it."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from diffheads.io.audio import write_wav
from diffheads.io.outdir import output_dir
from diffheads.io.video import write_video
from diffheads.synth.face import render_faces, sample_identity
from diffheads.synth.speech import sample_voice, synth_speech

BLINK_RATE = (0.2, 0.4)  # blinks per second, drawn per clip
BLINK_FRAMES = (3, 6)  # frames with the eye not fully open, per blink
HEAD_DRIFT = 0.012  # typical head translation / frame size
HEAD_ROLL = 0.025  # typical roll, radians
# SeedSequence pads short entropy with zeros, so identity and clip streams carry distinct tags
IDENTITY_STREAM, CLIP_STREAM = 1, 2


@dataclass(frozen=True)
class SyntheticClip:
    """One rendered clip and the per-frame truth it was drawn from."""

    frames: np.ndarray  # (T, S, S, 3) uint8
    audio: np.ndarray  # (T * sample_rate / fps,) float32
    landmarks: np.ndarray  # (T, 68, 2) float32 pixel (x, y)
    truth: dict[str, np.ndarray]  # per-frame mouth_open, mouth_width, eye_open, blink, loudness, vowel, head


def sample_blinks(rng: np.random.Generator, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Eye openness (T,) with random blinks (closing to 0 and back) and the blink mask (T,) bool."""
    eye_open = np.ones(n_frames, np.float32)
    rate = rng.uniform(*BLINK_RATE)
    t = rng.uniform(0.2, 1.0 / rate)
    while True:
        length = int(rng.integers(BLINK_FRAMES[0], BLINK_FRAMES[1] + 1))
        start = round(t * fps)
        if start + length > n_frames:
            break
        bump = np.sin(np.pi * np.arange(1, length + 1) / (length + 1))
        eye_open[start : start + length] = 1.0 - bump / bump.max()
        t += length / fps + rng.uniform(0.6, 1.4) / rate
    return eye_open, eye_open < 1.0


def sample_head_motion(rng: np.random.Generator, n_frames: int, fps: float) -> np.ndarray:
    """Smooth random (dx, dy, roll) per frame (T, 3): a few slow sinusoids per axis."""
    t = np.arange(n_frames) / fps
    motion = np.zeros((n_frames, 3))
    for axis, scale in enumerate((HEAD_DRIFT, HEAD_DRIFT, HEAD_ROLL)):
        freqs, phases, weights = rng.uniform(0.08, 0.6, 3), rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.3, 1.0, 3)
        wave = np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None]).T @ weights
        motion[:, axis] = scale * wave / np.sqrt(0.5 * np.sum(weights**2))
    return motion.astype(np.float32)


def make_clip(
    seed: int, identity_index: int, clip_index: int, *, seconds: float, size: int, fps: float, sample_rate: int
) -> SyntheticClip:
    """Render clip `clip_index` of identity `identity_index`: the face and voice depend on (seed, identity) only."""
    id_rng = np.random.default_rng([seed, IDENTITY_STREAM, identity_index])
    identity, voice = sample_identity(id_rng), sample_voice(id_rng)
    rng = np.random.default_rng([seed, CLIP_STREAM, identity_index, clip_index])
    speech = synth_speech(rng, voice, seconds, sample_rate, fps)
    n = len(speech.mouth_open)
    eye_open, blink = sample_blinks(rng, n, fps)
    head = sample_head_motion(rng, n, fps)
    frames, landmarks = render_faces(identity, size, speech.mouth_open, speech.mouth_width, eye_open, head)
    truth = {
        "mouth_open": speech.mouth_open,
        "mouth_width": speech.mouth_width,
        "eye_open": eye_open,
        "blink": blink,
        "loudness": speech.loudness,
        "vowel": speech.vowel,
        "head": head,
    }
    return SyntheticClip(frames, speech.audio, landmarks, truth)


def _npy_bytes(array: np.ndarray) -> bytes:
    """The .npy encoding of an array."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _write_clip(root: Path, rel: str, clip: SyntheticClip, fps: float, sample_rate: int) -> None:
    """Write video (with audio), wav, landmarks and truth of one clip, each atomically."""
    write_video(root / "video" / f"{rel}.mp4", clip.frames, fps, clip.audio, sample_rate)
    write_wav(root / "audio" / f"{rel}.wav", clip.audio, sample_rate)
    atomic_write_bytes(root / "lmks" / f"{rel}.npy", _npy_bytes(clip.landmarks.astype(np.float32)))
    with atomic_path(root / "truth" / f"{rel}.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **clip.truth)


# the command-line flag of each count, so an error names what to change
COUNT_FLAGS = {
    "n_train_identities": "--train-identities",
    "n_test_identities": "--test-identities",
    "clips_per_identity": "--clips-per-identity",
    "test_clips_per_identity": "--test-clips-per-identity",
}


def _validate(counts: dict[str, int], seconds: float, size: int, fps: float, sample_rate: int) -> None:
    """Reject arguments that cannot make a dataset, with what to pass instead."""
    for name, value in counts.items():
        if not math.isfinite(value) or int(value) != value or value < 1:
            raise DiffheadsError(
                f"{name} must be a positive whole number, got {value}; pass {COUNT_FLAGS[name]} 1 or more"
            )
    _validate_rendering(seconds, size, fps, sample_rate)


def _validate_rendering(seconds: float, size: int, fps: float, sample_rate: int) -> None:
    """Reject a clip length, frame size or rate that cannot be rendered."""
    if not math.isfinite(size) or int(size) != size or size < 16 or size % 2:
        raise DiffheadsError(f"size must be an even number of pixels >= 16, got {size}; pass e.g. --size 64")
    if not (math.isfinite(fps) and fps > 0) or sample_rate <= 0 or (sample_rate / fps) != int(sample_rate / fps):
        raise DiffheadsError(f"sample_rate / fps must be a whole number of samples, got {sample_rate} / {fps}")
    if not math.isfinite(seconds) or seconds * fps < 2:
        raise DiffheadsError(
            f"seconds must give at least 2 frames at {fps:g} fps ({2 / fps:g} s or more), got {seconds}; "
            "pass a longer --seconds"
        )


def _validate_seed(seed: int) -> None:
    """Reject a seed that is not a whole number >= 0."""
    if int(seed) != seed or seed < 0:
        raise DiffheadsError(f"seed must be a non-negative whole number, got {seed}; pass --seed 0 or more")


def identity_name(identity_index: int) -> str:
    """The folder of identity `identity_index`: id000, id001, ..."""
    return f"id{identity_index:03d}"


def _render_clips(
    root: Path,
    jobs: list[tuple[int, int]],
    seed: int,
    seconds: float,
    size: int,
    fps: float,
    sample_rate: int,
    progress: bool,
) -> list[str]:
    """Render and write each (identity index, clip index) job; return their file-list lines, in order."""
    lines = []
    for i, c in tqdm(jobs, desc="synth", unit="clip", disable=not progress):
        rel = f"{identity_name(i)}/clip{c:02d}"
        clip = make_clip(seed, i, c, seconds=seconds, size=size, fps=fps, sample_rate=sample_rate)
        _write_clip(root, rel, clip, fps, sample_rate)
        lines.append(f"./{rel}.mp4")
    return lines


def _write_lists(root: Path, lists: dict[str, list[str]]) -> None:
    """file_list_<split>.txt, one line per clip (an empty list is an empty file)."""
    for split, lines in lists.items():
        atomic_write_text(root / f"file_list_{split}.txt", "".join(line + "\n" for line in lines))


def _rendering_info(seconds: float, size: int, fps: float, sample_rate: int) -> dict[str, Any]:
    """The synth.json fields that say how every clip was rendered."""
    return {
        "seconds": float(seconds),
        "n_frames": round(seconds * fps),
        "size": int(size),
        "fps": float(fps),
        "sample_rate": int(sample_rate),
    }


def make_synthetic_dataset(
    out_dir: str | Path,
    *,
    n_train_identities: int = 8,  # identities whose clips go to file_list_train.txt
    n_test_identities: int = 2,  # held-out identities, only in file_list_test.txt
    clips_per_identity: int = 4,  # clips (different speech) per identity
    test_clips_per_identity: int | None = None,  # clips per held-out identity; None: clips_per_identity
    seconds: float = 4.0,  # clip length, rounded to whole frames
    size: int = 32,  # frame width and height in pixels (even)
    seed: int = 0,  # everything is a function of this seed
    fps: float = 25,  # video frame rate
    sample_rate: int = 16000,  # audio sample rate
    progress: bool = True,  # show a progress bar
) -> dict[str, Any]:
    """Render identities x clips into out_dir (video/, audio/, lmks/, truth/, file lists); return synth.json."""
    counts = {
        "n_train_identities": n_train_identities,
        "n_test_identities": n_test_identities,
        "clips_per_identity": clips_per_identity,
        "test_clips_per_identity": clips_per_identity if test_clips_per_identity is None else test_clips_per_identity,
    }
    _validate(counts, seconds, size, fps, sample_rate)
    _validate_seed(seed)
    root = Path(out_dir)
    n_ids = n_train_identities + n_test_identities
    names = [identity_name(i) for i in range(n_ids)]
    per_identity = [clips_per_identity] * n_train_identities + [counts["test_clips_per_identity"]] * n_test_identities
    jobs = [(i, c) for i in range(n_ids) for c in range(per_identity[i])]
    n_train_jobs = sum(per_identity[:n_train_identities])
    with output_dir(root, "output folder"):  # a path that cannot be written fails before any rendering
        lines = _render_clips(root, jobs, seed, seconds, size, fps, sample_rate, progress)
        _write_lists(root, {"train": lines[:n_train_jobs], "test": lines[n_train_jobs:]})
    info = {
        "generator": "diffheads.synth",
        "seed": int(seed),
        **{k: int(v) for k, v in counts.items()},
        **_rendering_info(seconds, size, fps, sample_rate),
        "train_identities": names[:n_train_identities],
        "test_identities": names[n_train_identities:],
    }
    atomic_write_text(root / "synth.json", json.dumps(info, indent=2) + "\n")
    return info


def _validate_clips(clips: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (identity index, clip index) pairs as ints: at least one, none repeated, each index 0 or more."""
    if len(clips) == 0:
        raise DiffheadsError("no clips to render; pass at least one (identity index, clip index) pair")
    pairs = []
    for pair in clips:
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in pair)
        ):
            raise DiffheadsError(
                f"each clip must be (identity index, clip index), two whole numbers >= 0, got {pair!r}"
            )
        pairs.append((int(pair[0]), int(pair[1])))
    repeated = sorted({p for p in pairs if pairs.count(p) > 1})
    if repeated:
        raise DiffheadsError(f"clip {repeated[0]} is listed more than once; list each (identity, clip) pair once")
    return pairs


def make_held_out_clips(
    out_dir: str | Path,
    clips: list[tuple[int, int]],  # (identity index, clip index) pairs, e.g. [(30, 10)]: id030/clip10
    *,
    seconds: float = 60.0,  # clip length, rounded to whole frames
    size: int = 32,  # frame width and height in pixels (even)
    seed: int = 0,  # the dataset's seed: with it, identity i is the face and voice of make_synthetic_dataset's id<i>
    fps: float = 25,  # video frame rate
    sample_rate: int = 16000,  # audio sample rate
    progress: bool = True,  # show a progress bar
) -> dict[str, Any]:
    """Render chosen clips into out_dir as held-out clips (file_list_test.txt, an empty train list); return synth.json.

    A clip index a dataset did not use gives that identity's face and voice saying new speech, of any length.
    """
    _validate_rendering(seconds, size, fps, sample_rate)
    _validate_seed(seed)
    pairs = _validate_clips(clips)
    root = Path(out_dir)
    with output_dir(root, "output folder"):
        lines = _render_clips(root, pairs, seed, seconds, size, fps, sample_rate, progress)
        _write_lists(root, {"train": [], "test": lines})
    info = {
        "generator": "diffheads.synth",
        "seed": int(seed),
        "clips": [[i, c] for i, c in pairs],
        **_rendering_info(seconds, size, fps, sample_rate),
        "train_identities": [],
        "test_identities": sorted({identity_name(i) for i, _ in pairs}),
    }
    atomic_write_text(root / "synth.json", json.dumps(info, indent=2) + "\n")
    return info
