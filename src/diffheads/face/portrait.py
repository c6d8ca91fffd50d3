"""The face to animate: found and aligned in a photo or a video, with what is needed to paste it back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffheads.errors import DiffheadsError
from diffheads.face.align import AlignConfig, frame_transforms, warp
from diffheads.face.landmarks import FaceCounter, FaceMesh, to_68
from diffheads.face.mean_face import MeanFace, load_mean_face
from diffheads.face.track import detect_faces, track_landmarks
from diffheads.io.image import read_image
from diffheads.io.video import iter_frames_at

FPS = 25


@dataclass
class Portrait:
    """Full-resolution frames (one for a photo), their maps to the aligned crop, and the identity crop."""

    frames: np.ndarray  # (N, H, W, 3) uint8
    to_crop: np.ndarray  # (N, 3, 3) source pixels -> crop pixels
    identity_crop: np.ndarray  # (size, size, 3) uint8, the first frame aligned

    def background(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame and map for output frame k: a video plays forwards then backwards (ping-pong) to any length."""
        n = len(self.frames)
        if n == 1:
            return self.frames[0], self.to_crop[0]
        period = 2 * (n - 1)
        i = k % period
        i = i if i < n else period - i
        return self.frames[i], self.to_crop[i]


def _check_face_count(count: int, where: str) -> None:
    """One face, else a clear error."""
    if count == 0:
        raise DiffheadsError(
            f"no face found in {where}; use a picture where one face is clearly visible, facing the camera"
        )
    if count > 1:
        raise DiffheadsError(f"{count} faces found in {where}; crop the picture to the one face to animate")


def even_size(frames: np.ndarray) -> np.ndarray:
    """Drop a last row/column so H.264 (yuv420p) can store the frames."""
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    return frames[:, :h, :w]


def align_photo(path: str | Path, cfg: AlignConfig, mean_face: MeanFace | None = None) -> Portrait:
    """Find the one face of a photo and align it."""
    mean_face = mean_face or load_mean_face()
    frame = even_size(read_image(path)[None])[0]
    with FaceCounter() as counter:
        count = counter(frame)
    if count > 1:
        _check_face_count(count, str(path))
    with FaceMesh(video=False, max_faces=1) as mesh:
        faces = detect_faces(mesh, frame)
    _check_face_count(len(faces), str(path))
    face = faces[0]
    to_crop = frame_transforms(to_68(face)[None, :, :2].astype(np.float64), mean_face, cfg)
    return Portrait(frame[None], to_crop, warp(frame, to_crop[0], cfg.size))


def align_video(path: str | Path, cfg: AlignConfig, mean_face: MeanFace | None = None) -> Portrait:
    """Track the one face of a video (resampled to 25 fps) and align every frame."""
    mean_face = mean_face or load_mean_face()
    timed = list(iter_frames_at(path, FPS))
    if not timed:
        raise DiffheadsError(f"video {path} holds no frames; re-encode it")
    frames = even_size(np.stack([f for _, f in timed]))
    landmarks, times, faces_seen = track_landmarks(((t, f) for (t, _), f in zip(timed, frames)))
    _check_face_count(faces_seen if faces_seen > 1 else int(not np.isnan(landmarks).all()), str(path))
    to_crop = frame_transforms(landmarks, mean_face, cfg, times)
    return Portrait(frames, to_crop, warp(frames[0], to_crop[0], cfg.size))
