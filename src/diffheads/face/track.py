"""Landmarks of one face through a clip: Face Mesh tracking plus a check for a second face."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import cv2
import numpy as np

from diffheads.face.landmarks import FaceCounter, FaceMesh, to_68


def detect_faces(mesh: FaceMesh, frame: np.ndarray, max_side: int = 640, min_side: int = 0) -> np.ndarray:
    """(n_faces, 468, 3) landmarks in the frame's pixels, found on a copy shrunk to `max_side` or, for small
    crops, enlarged to `min_side` (Face Mesh finds faces in 32 px crops once they are enlarged)."""
    h, w = frame.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if min(h, w) < min_side:
        scale = min_side / min(h, w)
    if scale == 1.0:
        return mesh(frame)
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
    small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=interp)
    sx, sy = frame.shape[1] / small.shape[1], frame.shape[0] / small.shape[0]
    faces = mesh(small)
    faces[..., 0] *= sx  # landmarks use continuous coordinates (the image spans [0, W]), so scaling is exact
    faces[..., 1] *= sy
    faces[..., 2] *= sx
    return faces


def track_landmarks(
    frames: Iterable[tuple[float, np.ndarray]],
    max_side: int = 640,
    min_side: int = 0,
    new_shot: Callable[[np.ndarray], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(T, 68, 2) landmarks (NaN where no face), the frames' times, and the most faces seen in a probe frame.

    A second face is looked for in a few frames spread over the clip (the first one and the
    last two with a power-of-two index) by MediaPipe's full-range face detector. When
    `new_shot(frame)` says a frame may start a new shot, tracking starts afresh there: a track
    carried over a cut would put the first landmarks of the new shot where the old face was.
    """
    points, times, probes = [], [], {}
    with FaceMesh(video=True, max_faces=1) as mesh:
        for time, frame in frames:
            if new_shot is not None and new_shot(frame) and points:
                mesh.restart()
            faces = detect_faces(mesh, frame, max_side, min_side)
            points.append(to_68(faces[0])[:, :2] if len(faces) else np.full((68, 2), np.nan, np.float32))
            times.append(time)
            index = len(points) - 1
            if index & (index + 1) == 0 or index == 0:
                probes[index] = frame
                probes = {k: v for k, v in probes.items() if k == 0 or k >= index // 2}
    if not points:
        return np.zeros((0, 68, 2)), np.zeros(0), 0
    with FaceCounter() as counter:
        faces_seen = max(counter(f) for f in probes.values())
    return np.stack(points).astype(np.float64), np.array(times), faces_seen
