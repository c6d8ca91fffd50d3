"""Training and test datasets with exactly the sampling rules of SPEC ("One training example")."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from diffheads.config import DataConfig, DataFormat, FrameCache, IdentityFrameMode, ModelConfig
from diffheads.data.embeddings import load_embedding
from diffheads.data.frame_cache import (
    decode_resized,
    ensure_cached,
    frames_to_model,
    open_cached,
    read_frames,
    resize_frames,
    source_width,
)
from diffheads.data.layout import DataLayout
from diffheads.data.packed import PackedClips
from diffheads.diffusion.motion import hide_mouth, motion_transform, perturb_motion
from diffheads.errors import DiffheadsError

MOUTH = slice(48, 68)
DISK_ROWS_BUDGET = 256 * 2**20  # disk mode: bytes of embeddings + landmarks kept per process (least recently used go)
PACKED_BUDGET = 512 * 2**20  # packed data: bytes of clips (frames included) kept per process (least recently used go)


@dataclass(frozen=True)
class ExampleIndices:
    """Frame indices of one example; a motion index of -1 means "the identity frame"."""

    target: int
    identity: int
    motion: tuple[int, ...]  # oldest first


def example_indices(n: int, mode: IdentityFrameMode, n_motion: int, rng: np.random.Generator) -> ExampleIndices:
    """Pick target, identity and motion frames of a clip with n frames (SPEC)."""
    if n < 2:
        raise ValueError("a training clip needs at least 2 frames")
    if mode == IdentityFrameMode.RANDOM:
        target, identity = (int(i) for i in rng.choice(n, size=2, replace=False))
    else:
        target, identity = int(rng.integers(1, n)), 0
    motion = tuple(i if i >= 0 else -1 for i in range(target - n_motion, target))
    return ExampleIndices(target, identity, motion)


def audio_rows(t: int, k: int, n: int) -> np.ndarray:
    """Rows t-k .. t+k of the embeddings, clamped into [0, n-1]."""
    return np.clip(np.arange(t - k, t + k + 1), 0, n - 1)


def to_model_frames(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, size, size) in [-1, 1].

    Resized (when needed) by `frame_cache.resize_frames`, i.e. antialiased bilinear rounded to
    uint8 levels, exactly as the disk frame cache stores them.
    """
    return frames_to_model(resize_frames(frames, size))


@dataclass
class Clip:
    """One decoded clip, trimmed to n = min(len(video), len(audio_emb)) frames."""

    cid: str
    frames: torch.Tensor  # (n, 3, S, S) in [-1, 1]
    audio_emb: torch.Tensor  # (n_emb, D), kept whole for test generation
    landmarks: torch.Tensor | None  # (n, 68, 2) pixels at size S

    @property
    def n(self) -> int:
        """Usable frames."""
        return min(len(self.frames), len(self.audio_emb))


EMBEDDING_SLACK = 2  # embeddings may be this many rows shorter than the video (rounding of audio length)


def check_listed_clips(layout: DataLayout, ids: list[str], split: str) -> None:
    """Every listed clip has its video and embeddings; else one error naming how many and the first."""
    missing = [p for cid in ids for p in (layout.video(cid), layout.embedding(cid)) if not p.is_file()]
    if missing:
        raise DiffheadsError(
            f"{len(missing)} file(s) of clips listed in {layout.file_list(split).name} are missing (first: {missing[0]}); "
            "remove those clips from the list, or run 'diffheads embed' for missing embeddings"
        )


def _check_lengths(cid: str, n_frames: int, emb: torch.Tensor, path: Path) -> None:
    """Embeddings much shorter than the video were made from other audio."""
    if len(emb) < n_frames - EMBEDDING_SLACK:
        raise DiffheadsError(
            f"clip {cid}: embeddings {path} have {len(emb)} rows but the video has {n_frames} frames; "
            "the audio does not match the video: re-embed it ('diffheads embed --overwrite') or fix the clip"
        )


def check_video(layout: DataLayout, cid: str) -> Path:
    """The clip's video path, which must exist."""
    path = layout.video(cid)
    if not path.is_file():
        raise DiffheadsError(f"clip {cid}: video {path} is listed but missing; fix the file list or the data")
    return path


def load_landmarks(layout: DataLayout, cid: str, size: int, source_width: int) -> torch.Tensor:
    """(T, 68, 2) landmarks rescaled from source-video pixels to `size`."""
    path = layout.landmarks(cid)
    if not path.is_file():
        raise DiffheadsError(
            f"clip {cid}: landmarks {path} missing but the lip loss is on; add lmks/ or set diffusion.lip_loss_weight=0"
        )
    lm = np.load(path).astype(np.float32)[..., :2]
    return torch.from_numpy(lm) * (size / source_width)


@dataclass
class _ClipFrames:
    """What examples of one clip are drawn from: uint8 frames in RAM (memory, decode) or a cache file (disk)."""

    cid: str
    n_frames: int  # frames in the video
    audio_emb: torch.Tensor
    landmarks: torch.Tensor | None
    frames: np.ndarray | None = None  # uint8 (T, S, S, 3)
    path: Path | None = None  # DATA/cache/<S>px/<id>.npy

    @property
    def n(self) -> int:
        """Usable frames: min(len(video), len(audio_emb))."""
        return min(self.n_frames, len(self.audio_emb))

    @property
    def nbytes(self) -> int:
        """RAM held: embeddings, landmarks and in-memory frames."""
        held = self.audio_emb.nbytes + (self.landmarks.nbytes if self.landmarks is not None else 0)
        return held + (self.frames.nbytes if self.frames is not None else 0)

    def read(self, indices: list[int]) -> torch.Tensor:
        """Frames `indices` as float (len(indices), 3, S, S) in [-1, 1]."""
        if self.frames is not None:
            return frames_to_model(self.frames[np.asarray(indices, dtype=np.int64)])
        assert self.path is not None
        return read_frames(self.path, indices)

    def clip(self) -> Clip:
        """All frames as a Clip."""
        return Clip(self.cid, self.read(list(range(self.n_frames))), self.audio_emb, self.landmarks)


def decode_clip(layout: DataLayout, cid: str, size: int, with_landmarks: bool) -> _ClipFrames:
    """Decode a clip's video (uint8 at `size`), embeddings and (optionally) landmarks."""
    frames, width = decode_resized(check_video(layout, cid), size)
    emb = load_embedding(layout.embedding(cid))
    _check_lengths(cid, len(frames), emb, layout.embedding(cid))
    landmarks = load_landmarks(layout, cid, size, width) if with_landmarks else None
    return _ClipFrames(cid, len(frames), emb, landmarks, frames=frames)


def _cached(layout: DataLayout, cid: str, size: int, with_landmarks: bool) -> _ClipFrames:
    """A clip read from the disk frame cache (filled now when missing or stale); frames stay on disk."""
    video = check_video(layout, cid)
    path = ensure_cached(layout, cid, size)
    n_frames = len(open_cached(path))
    emb = load_embedding(layout.embedding(cid))
    _check_lengths(cid, n_frames, emb, layout.embedding(cid))
    landmarks = load_landmarks(layout, cid, size, source_width(video)) if with_landmarks else None
    return _ClipFrames(cid, n_frames, emb, landmarks, path=path)


def load_clip(layout: DataLayout, cid: str, size: int, with_landmarks: bool) -> Clip:
    """Decode a clip's video, embeddings and (optionally) landmarks, scaled to `size`."""
    return decode_clip(layout, cid, size, with_landmarks).clip()


def check_motion_perturbation(data: DataConfig) -> None:
    """Reject motion jitter and noise levels outside their ranges, naming the config key."""
    j, s = data.motion_colour_jitter, data.motion_noise
    if not (math.isfinite(j) and 0 <= j < 1):
        raise DiffheadsError(f"data.motion_colour_jitter must be in [0, 1), got {j}; pass e.g. 0.1 (0 turns it off)")
    if not (math.isfinite(s) and s >= 0):
        raise DiffheadsError(f"data.motion_noise must be a finite number >= 0, got {s}; pass e.g. 0.1 (0 turns it off)")


class TalkingFaceDataset(Dataset):
    """Training examples: target frame, identity frame, motion frames, audio window, mouth landmarks.

    `data.frame_cache` only changes where frames come from, never which example is drawn:
    memory decodes each clip once and keeps its uint8 frames in RAM (per process: each
    DataLoader worker holds its own copy); disk decodes each clip once into
    DATA/cache/<size>px/<id>.npy and reads the few frames of an example through a memory map
    (embeddings and landmarks are kept in RAM after first use, up to DISK_ROWS_BUDGET bytes
    per process, least recently used dropped first: LRW-sized datasets would otherwise hold
    tens of GB in every worker); decode decodes the whole clip for every example (the reference).
    `data.format: packed` reads each clip whole from the chunks `diffheads pack` wrote (data/packed.py),
    keeping up to PACKED_BUDGET bytes of clips per process.
    """

    def __init__(self, data: DataConfig, model: ModelConfig, split: str = "train", lip_loss: bool = True):
        check_motion_perturbation(data)
        self.data, self.model = data, model
        self.with_landmarks = lip_loss and data.use_landmarks
        self.packed: PackedClips | None = None
        if DataFormat(data.format) == DataFormat.PACKED:
            self.packed = PackedClips(data.root, split, model.image_size, data.packed_cache or None)
            self.ids = self.packed.ids
            if self.with_landmarks and not self.packed.has_landmarks:
                raise DiffheadsError(
                    f"{data.root} was packed without landmarks but the lip loss is on; "
                    "pack DATA with its lmks/, or set diffusion.lip_loss_weight=0"
                )
        else:
            self.layout = DataLayout.of(data.root, data.embeddings or None)
            self.ids = self.layout.clips(split)
            check_listed_clips(self.layout, self.ids, split)
        self.mode = FrameCache(data.frame_cache)
        self._sources: OrderedDict[int, _ClipFrames] = OrderedDict()  # memory: frames + rows; disk: path + rows
        self._held = 0  # bytes in _sources (disk mode, packed data)

    def __len__(self) -> int:
        return len(self.ids) * self.data.examples_per_clip

    def _source(self, i: int) -> _ClipFrames:
        """Where clip i's examples come from, loaded once unless frames are decoded per sample."""
        if i in self._sources:
            self._sources.move_to_end(i)
            return self._sources[i]
        cid, size = self.ids[i], self.model.image_size
        if self.packed is not None:
            frames, emb, landmarks = self.packed.load(i)
            source = _ClipFrames(cid, len(frames), emb, landmarks if self.with_landmarks else None, frames=frames)
        elif self.mode == FrameCache.DISK:
            source = _cached(self.layout, cid, size, self.with_landmarks)
        else:
            source = decode_clip(self.layout, cid, size, self.with_landmarks)
        if source.n < 2:
            raise DiffheadsError(f"clip {cid} has {source.n} usable frames; training needs at least 2")
        budget = PACKED_BUDGET if self.packed is not None else DISK_ROWS_BUDGET
        if self.packed is not None or self.mode == FrameCache.DISK:
            self._sources[i] = source
            self._held += source.nbytes
            while self._held > budget and len(self._sources) > 1:
                self._held -= self._sources.popitem(last=False)[1].nbytes
        elif self.mode == FrameCache.MEMORY:
            self._sources[i] = source
        return source

    def clip(self, i: int) -> Clip:
        """Clip i with all its frames (read from the cache in disk mode, decoded once in memory mode)."""
        return self._source(i).clip()

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        """Example `item`; an (index, seed) key (data.sampler.ExampleSampler) fixes its random draws."""
        if isinstance(item, tuple):
            item, seed = item
        else:
            seed = torch.randint(0, 2**62, (1,)).item()  # follows torch's seeded (per-worker) generator
        source = self._source(item % len(self.ids))
        rng = np.random.default_rng(seed)
        idx = example_indices(source.n, self.data.identity_frame, self.model.n_motion_frames, rng)
        if self.data.motion_dropout > 0 and rng.random() < self.data.motion_dropout:
            # without its past the network must take the mouth from the audio, not copy it from the previous frame
            idx = ExampleIndices(idx.target, idx.identity, (-1,) * len(idx.motion))
        motion_idx = [i for i in idx.motion if i >= 0]
        frames = source.read([idx.target, idx.identity, *motion_idx])  # only the frames this example needs
        target, identity = frames[0], frames[1]
        previous = iter(frames[2:])
        motion = torch.stack([next(previous) if i >= 0 else identity for i in idx.motion])
        # after every other draw, so that which frames an example uses never depends on these options; copies of
        # the identity frame (t = 0, dropout) are perturbed too, or equality with the identity frame would tell
        # the network which motion frames carry the true colour; before the transform, as the sampler's own
        # errors are in the frame it then grayscales and blurs
        motion = hide_mouth(motion, identity, self.model.motion_mouth_box)
        motion = perturb_motion(motion, rng, self.data.motion_colour_jitter, self.data.motion_noise)
        motion = motion_transform(motion, self.model.grayscale_motion, self.data.motion_blur)
        rows = audio_rows(idx.target, self.model.n_audio_motion_embs, source.n)
        example = {
            "target": target,
            "identity_frame": identity,
            "motion_frames": motion.flatten(0, 1),
            "audio_window": source.audio_emb[torch.from_numpy(rows)],
        }
        if source.landmarks is not None:
            example["mouth_landmarks"] = source.landmarks[idx.target, MOUTH]
        return example


class SplitClips(Dataset):
    """Test split: identity frame (frame 0), full audio embeddings, audio path and clip id."""

    def __init__(self, data: DataConfig, model: ModelConfig, split: str = "test"):
        self.layout = DataLayout.of(data.root, data.embeddings or None)
        self.ids = self.layout.clips(split)
        check_listed_clips(self.layout, self.ids, split)
        self.size = model.frame_size  # the identity frame at the size of the videos

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        cid = self.ids[i]
        clip = load_clip(self.layout, cid, self.size, with_landmarks=False)
        return {
            "cid": cid,
            "identity_frame": clip.frames[0],
            "audio_emb": clip.audio_emb,
            "audio_path": str(self.layout.audio(cid)),
            "n_frames": len(clip.audio_emb),
        }
