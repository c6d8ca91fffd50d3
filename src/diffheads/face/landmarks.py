"""MediaPipe Face Mesh landmarks and their mapping onto the 68-point (iBUG / dlib) layout."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from diffheads.errors import DiffheadsError

# Face Mesh index for each point of the 68-point layout, in that layout's order: jaw 0-16,
# brows 17-26, nose 27-35, eyes 36-47 (the usual EAR sets), mouth 48-67 (outer 48-59, inner 60-67).
MEDIAPIPE_TO_68 = np.array(
    [162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389]
    + [71, 63, 105, 66, 107, 336, 296, 334, 293, 301]
    + [168, 197, 5, 4, 75, 97, 2, 326, 305]
    + [33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380]
    + [61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87],
    dtype=np.int64,
)

# Stable points of the face-processor scheme in the 68-point layout: the point under the nose
# and the four eye corners (Face Mesh 2, 33, 133, 362, 263).
STABLE_POINTS = np.array([33, 36, 39, 42, 45], dtype=np.int64)
EYE_CORNERS = np.array([36, 39, 42, 45], dtype=np.int64)
MOUTH = slice(48, 68)

# Mirror partner of each point of the 68-point layout (points on the midline map to themselves).
MIRROR_68 = np.array(
    list(range(16, -1, -1))
    + list(range(26, 16, -1))
    + [27, 28, 29, 30, 35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65],
    dtype=np.int64,
)


def to_68(mesh: np.ndarray) -> np.ndarray:
    """(..., 468|478, D) Face Mesh points -> (..., 68, D) points in the 68-point layout."""
    return mesh[..., MEDIAPIPE_TO_68, :]


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Silence the C++ start-up chatter of MediaPipe/TFLite (written straight to fd 2) for a block."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (some embedded interpreters): nothing to hide
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _solutions():  # noqa: ANN202 - MediaPipe's legacy solutions module
    """MediaPipe's legacy solutions (their models ship inside the 0.10.21 wheel)."""
    try:
        from mediapipe.python import solutions
    except ImportError as err:  # pragma: no cover - a broken install
        raise DiffheadsError(
            f"MediaPipe cannot be imported ({err}); reinstall with 'pip install mediapipe==0.10.21'"
        ) from None
    return solutions


class _Graph:
    """A MediaPipe graph held in `self._graph`, closed when the `with` block ends."""

    _graph: Any

    def close(self) -> None:
        """Release the MediaPipe graph."""
        self._graph.close()

    def __enter__(self) -> _Graph:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass
class FaceMesh(_Graph):
    """Per-frame Face Mesh landmarks in pixels, (x, y, z) with z on the x scale.

    `video=True` tracks the face from frame to frame (detection runs only when the track is
    lost), which is both faster and steadier than detecting in every frame. Its detector is
    the short-range one: faces should fill a good part of the frame (close-up talking heads).
    """

    video: bool = True
    max_faces: int = 1
    min_confidence: float = 0.5

    def __post_init__(self) -> None:
        with quiet_native_logs():
            self._graph = _solutions().face_mesh.FaceMesh(
                static_image_mode=not self.video,
                max_num_faces=self.max_faces,
                refine_landmarks=False,
                min_detection_confidence=self.min_confidence,
                min_tracking_confidence=self.min_confidence,
            )
            # the graph opens its models on worker threads; one blank frame waits for them while quiet
            self._graph.process(np.zeros((64, 64, 3), np.uint8))
        self._seen_face = False

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """(n_faces, 468, 3) landmarks of an RGB uint8 (H, W, 3) frame; n_faces may be 0."""
        h, w = frame.shape[:2]
        if self._seen_face:
            result = self._graph.process(np.ascontiguousarray(frame))
        else:  # the landmark stage warns once, on its first face
            with quiet_native_logs():
                result = self._graph.process(np.ascontiguousarray(frame))
        faces = result.multi_face_landmarks or []
        self._seen_face = self._seen_face or bool(faces)
        out = np.empty((len(faces), 468, 3), dtype=np.float32)
        for k, face in enumerate(faces):
            out[k] = [(p.x * w, p.y * h, p.z * w) for p in face.landmark]
        return out

    def restart(self) -> None:
        """Forget the tracked face, so the next frame is searched afresh (after a scene cut)."""
        with quiet_native_logs():
            self._graph.reset()


@dataclass
class FaceCounter(_Graph):
    """Counts the faces in a frame with MediaPipe's full-range detector (it finds faces side by side that
    the short-range one used by Face Mesh misses). Faces narrower than `min_relative_size` of the
    largest one (a poster, a passer-by far behind) are not counted."""

    min_confidence: float = 0.5
    min_relative_size: float = 0.5

    def __post_init__(self) -> None:
        with quiet_native_logs():
            self._graph = _solutions().face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=self.min_confidence
            )
            self._graph.process(np.zeros((64, 64, 3), np.uint8))  # as in FaceMesh: open the models quietly

    def __call__(self, frame: np.ndarray) -> int:
        """Number of faces of comparable size in an RGB uint8 frame."""
        result = self._graph.process(np.ascontiguousarray(frame))
        widths = [d.location_data.relative_bounding_box.width for d in result.detections or []]
        if not widths:
            return 0
        return sum(w >= self.min_relative_size * max(widths) for w in widths)
