"""Training and test datasets with exactly the sampling rules of SPEC ("One training example")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from diffheads.audio.embed import load_embedding
from diffheads.config import DataConfig, IdentityFrameMode, ModelConfig
from diffheads.data.layout import DataLayout
from diffheads.data.motion import motion_transform
from diffheads.errors import DiffheadsError
from diffheads.io.video import read_video

MOUTH = slice(48, 68)


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
    """uint8 (T, H, W, 3) -> float (T, 3, size, size) in [-1, 1], area-resized when needed."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


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


def load_clip(layout: DataLayout, cid: str, size: int, with_landmarks: bool) -> Clip:
    """Decode a clip's video, embeddings and (optionally) landmarks, scaled to `size`."""
    video_path = layout.video(cid)
    if not video_path.is_file():
        raise DiffheadsError(f"clip {cid}: video {video_path} is listed but missing; fix the file list or the data")
    raw, _fps = read_video(video_path)
    frames = to_model_frames(raw, size)
    emb = load_embedding(layout.embedding(cid))
    landmarks = None
    if with_landmarks:
        path = layout.landmarks(cid)
        if not path.is_file():
            raise DiffheadsError(
                f"clip {cid}: landmarks {path} missing but the lip loss is on; "
                "add lmks/ or set diffusion.lip_loss_weight=0"
            )
        lm = np.load(path).astype(np.float32)[..., :2]
        landmarks = torch.from_numpy(lm) * (size / raw.shape[2])
    return Clip(cid, frames, emb, landmarks)


class TalkingFaceDataset(Dataset):
    """Training examples: target frame, identity frame, motion frames, audio window, mouth landmarks."""

    def __init__(self, data: DataConfig, model: ModelConfig, split: str = "train", lip_loss: bool = True):
        self.data, self.model = data, model
        self.layout = DataLayout.of(data.root, data.embeddings or None)
        self.ids = self.layout.clips(split)
        self.with_landmarks = lip_loss and data.use_landmarks
        self._cache: dict[int, Clip] = {}

    def __len__(self) -> int:
        return len(self.ids) * self.data.examples_per_clip

    def clip(self, i: int) -> Clip:
        """Clip i, decoded once when caching is on."""
        if i in self._cache:
            return self._cache[i]
        clip = load_clip(self.layout, self.ids[i], self.model.image_size, self.with_landmarks)
        if clip.n < 2:
            raise DiffheadsError(f"clip {clip.cid} has {clip.n} usable frames; training needs at least 2")
        if self.data.cache_frames:
            self._cache[i] = clip
        return clip

    def __getitem__(self, item: int) -> dict[str, Any]:
        clip = self.clip(item % len(self.ids))
        seed = torch.randint(0, 2**62, (1,)).item()  # follows torch's seeded (per-worker) generator
        idx = example_indices(clip.n, self.data.identity_frame, self.model.n_motion_frames, np.random.default_rng(seed))
        identity = clip.frames[idx.identity]
        motion = torch.stack([clip.frames[i] if i >= 0 else identity for i in idx.motion])
        motion = motion_transform(motion, self.model.grayscale_motion, self.data.motion_blur)
        rows = audio_rows(idx.target, self.model.n_audio_motion_embs, clip.n)
        example = {
            "target": clip.frames[idx.target],
            "identity_frame": identity,
            "motion_frames": motion.flatten(0, 1),
            "audio_window": clip.audio_emb[torch.from_numpy(rows)],
        }
        if clip.landmarks is not None:
            example["mouth_landmarks"] = clip.landmarks[idx.target, MOUTH]
        return example


class SplitClips(Dataset):
    """Test split: identity frame (frame 0), full audio embeddings, audio path and clip id."""

    def __init__(self, data: DataConfig, model: ModelConfig, split: str = "test"):
        self.layout = DataLayout.of(data.root, data.embeddings or None)
        self.ids = self.layout.clips(split)
        self.size = model.image_size

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
