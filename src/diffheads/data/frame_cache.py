"""Disk frame cache: each clip decoded once into DATA/cache/<size>px/<id>.npy, then read by memory map.

The cache holds exactly the frames the model sees: uint8 (T, size, size, 3), resized by
`resize_frames`, the one resize every loader path uses (so a cached clip, a clip kept in
memory and a clip decoded per sample give bit-identical tensors). A training example then
reads only its few frames (identity, motion, target) from the memory map, never the clip.

Files are written through `atomic_path` (a crash leaves no half file; DataLoader workers
racing on one clip each write their own temporary file and the last rename wins, every
reader sees a whole file), and are rebuilt when the video is newer than the cache or the
file is not a uint8 (T, size, size, 3) array.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from diffheads.data.layout import DataLayout
from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_path
from diffheads.io.video import iter_video_frames

CACHE_DIR = "cache"
RESIZE_CHUNK = 64  # frames resized at once: bounds the float memory of long, large clips


def cache_path(layout: DataLayout, cid: str, size: int) -> Path:
    """DATA/cache/<size>px/<id>.npy."""
    return layout.root / CACHE_DIR / f"{int(size)}px" / f"{cid}.npy"


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (T, size, size, 3): antialiased bilinear, rounded to the nearest level.

    Frames already at `size` come back unchanged. Every loader path goes through this one
    function, so the frames are the same whether they were cached, kept in memory or decoded.
    """
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for start in range(0, len(frames), RESIZE_CHUNK):
        x = torch.from_numpy(np.ascontiguousarray(frames[start : start + RESIZE_CHUNK])).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + len(x)] = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def frames_to_model(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, S, S, 3) -> contiguous float (T, 3, S, S) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x.contiguous()


def decode_resized(video: Path, size: int) -> tuple[np.ndarray, int]:
    """Decode a video into uint8 (T, size, size, 3) chunk by chunk; also the source frame width in pixels."""
    chunks: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    width = 0
    for frame in iter_video_frames(video):
        width = frame.shape[1]
        pending.append(frame)
        if len(pending) == RESIZE_CHUNK:
            chunks.append(resize_frames(np.stack(pending), size))
            pending = []
    if pending:
        chunks.append(resize_frames(np.stack(pending), size))
    if not chunks:
        raise DiffheadsError(f"video {video} holds no frames; re-encode or remove it")
    return np.concatenate(chunks) if len(chunks) > 1 else chunks[0], width


def source_width(video: Path) -> int:
    """Frame width stored in the video stream's header (no decoding): landmarks are in these pixels."""
    try:
        with av.open(str(video)) as container:
            if container.streams.video:
                width = container.streams.video[0].codec_context.width
                if width:
                    return int(width)
    except (av.FFmpegError, OSError) as err:
        raise DiffheadsError(f"video {video} cannot be read ({err}); re-encode it as mp4 (H.264)") from None
    return next(iter_video_frames(video)).shape[1]  # header without a width: decode one frame


def _usable_frames(path: Path, video: Path, size: int) -> int | None:
    """Frames in the cache file when it is usable; None when it must be (re)built.

    Usable: present, not older than the video, and a uint8 (T, size, size, 3) array with T > 0
    (a truncated or foreign file fails these checks and is rebuilt).
    """
    if not path.is_file() or video.stat().st_mtime_ns > path.stat().st_mtime_ns:
        return None
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError):
        return None
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != (size, size, 3) or len(array) == 0:
        return None
    return len(array)


def _write_cache(path: Path, video: Path, size: int) -> int:
    """Decode `video` into `path` atomically; the file gets the video's mtime as read before decoding."""
    video_mtime = video.stat().st_mtime_ns  # a video rewritten during decoding stays newer: rebuilt next time
    frames, _width = decode_resized(video, size)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, frames)
            os.utime(tmp, ns=(time.time_ns(), video_mtime))
    except PermissionError as err:
        raise DiffheadsError(
            f"cannot write the frame cache {path} ({err}); make {path.parent} writable, "
            "or set data.frame_cache=memory or decode"
        ) from None
    return len(frames)


def _ensure(layout: DataLayout, cid: str, size: int) -> tuple[Path, bool, int]:
    """(cache file, whether it was built now, frames in it)."""
    video = layout.video(cid)
    if not video.is_file():
        raise DiffheadsError(f"clip {cid}: video {video} is listed but missing; fix the file list or the data")
    path = cache_path(layout, cid, size)
    n = _usable_frames(path, video, size)
    if n is not None:
        return path, False, n
    return path, True, _write_cache(path, video, size)


def ensure_cached(layout: DataLayout, cid: str, size: int) -> Path:
    """The cache file of clip `cid` at `size` px, decoding the video into it when missing or stale."""
    return _ensure(layout, cid, size)[0]


def open_cached(path: str | Path) -> np.ndarray:
    """The cached clip as a read-only memory map, uint8 (T, S, S, 3): nothing is read until indexed."""
    return np.load(path, mmap_mode="r")


def read_frames(path: str | Path, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Frames `indices` of a cached clip as float (len(indices), 3, S, S) in [-1, 1]; reads only those frames."""
    frames = open_cached(path)
    return frames_to_model(frames[np.asarray(indices, dtype=np.int64)])
