"""The mean face that clips are aligned to: 68 points in the layout of `landmarks.py`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from diffheads.errors import DiffheadsError
from diffheads.face.landmarks import EYE_CORNERS, MIRROR_68, STABLE_POINTS, to_68
from diffheads.io.atomic import atomic_write_text


@dataclass(frozen=True)
class MeanFace:
    """68 (x, y) points, outer-eye-corner distance 1, origin at the point under the nose."""

    points: np.ndarray
    sources: tuple[str, ...] = ()

    @property
    def stable_points(self) -> np.ndarray:
        """(5, 2) points the per-frame similarity transform is fitted to."""
        return self.points[STABLE_POINTS]


def _rotation(yaw: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations: yaw about the vertical axis, then roll in the image plane."""
    cy, sy, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(roll), np.sin(roll)
    zero, one = np.zeros_like(yaw), np.ones_like(yaw)
    ry = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1), np.stack([-sy, zero, cy], -1)], -2)
    rz = np.stack([np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1), np.stack([zero, zero, one], -1)], -2)
    return rz @ ry


def _asymmetry(points: np.ndarray) -> np.ndarray:
    """Squared distance between (..., 68, 3) faces and their mirror images about x = mean x."""
    mirrored = points[..., MIRROR_68, :]
    centre = points[..., :1].mean(axis=-2, keepdims=True)
    dx = points[..., 0:1] + mirrored[..., 0:1] - 2 * centre
    rest = points[..., 1:] - mirrored[..., 1:]
    return (dx**2).sum(axis=(-2, -1)) + (rest**2).sum(axis=(-2, -1))


def frontalise(face: np.ndarray) -> np.ndarray:
    """(68, 3) -> (68, 2): rotate (yaw, roll) to the most symmetric pose, then drop depth."""
    centred = face - face.mean(axis=0)
    best, span = np.zeros(2), np.radians(30.0)
    for _ in range(4):  # coarse-to-fine grid search; the optimum is smooth and unique near frontal
        grid = np.linspace(-span, span, 41)
        yaw, roll = np.meshgrid(best[0] + grid, best[1] + grid, indexing="ij")
        rotated = centred @ np.swapaxes(_rotation(yaw, roll), -1, -2)
        k = np.unravel_index(np.argmin(_asymmetry(rotated)), yaw.shape)
        best, span = np.array([yaw[k], roll[k]]), span / 10
    return (centred @ _rotation(best[0], best[1]).T)[:, :2]


def normalise(points: np.ndarray) -> np.ndarray:
    """Scale to an outer-eye-corner distance of 1 with the point under the nose at the origin."""
    eye_distance = np.linalg.norm(points[45] - points[36])
    return (points - points[STABLE_POINTS[0]]) / eye_distance


def symmetrise(points: np.ndarray) -> np.ndarray:
    """Average a (68, 2) face with its mirror image about x = 0."""
    mirrored = points[MIRROR_68] * np.array([-1.0, 1.0])
    return (points + mirrored) / 2


def frontal_mean_face(meshes: np.ndarray) -> np.ndarray:
    """(N, 468, 3) Face Mesh landmarks of N faces -> (68, 2) symmetric frontal mean face."""
    faces = [normalise(frontalise(to_68(mesh).astype(np.float64))) for mesh in meshes]
    centred = [f - np.array([f[:, 0].mean(), 0.0]) for f in faces]
    return normalise(symmetrise(np.mean(centred, axis=0)))


def save_mean_face(path: str | Path, points: np.ndarray, sources: list[str]) -> None:
    """Write the mean face with a note of how it was made."""
    payload = {
        "layout": "68-point (iBUG/dlib order), read from MediaPipe Face Mesh by diffheads.face.landmarks.MEDIAPIPE_TO_68",
        "units": "outer eye corner distance = 1; origin at the point under the nose (68-layout 33); y points down",
        "made_by": "scripts/make_mean_face.py: MediaPipe Face Mesh 0.10.21 (static mode), 3-D yaw/roll "
        "frontalisation to the most symmetric pose, orthographic projection, mean over faces, mirror-symmetrised",
        "sources": list(sources),
        "points": "POINTS",
    }
    rows = ",\n  ".join(json.dumps([round(float(x), 6), round(float(y), 6)]) for x, y in points)
    text = json.dumps(payload, indent=1).replace('"POINTS"', f"[\n  {rows}\n ]")
    atomic_write_text(path, text + "\n")


def load_mean_face(path: str | Path | None = None) -> MeanFace:
    """The shipped mean face, or one written by scripts/make_mean_face.py."""
    if path is None:
        text = resources.files("diffheads.face").joinpath("data/mean_face.json").read_text()
        where = "the packaged mean face"
    else:
        path = Path(path)
        if not path.is_file():
            raise DiffheadsError(
                f"mean face {path} not found; make one with scripts/make_mean_face.py or omit the option"
            )
        text, where = path.read_text(), str(path)
    try:
        payload = json.loads(text)
        points = np.asarray(payload["points"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as err:
        raise DiffheadsError(
            f"{where} is not a mean-face file ({err}); rebuild it with scripts/make_mean_face.py"
        ) from None
    if points.shape != (68, 2) or not np.isfinite(points).all():
        raise DiffheadsError(f"{where} must hold 68 (x, y) points, got shape {points.shape}")
    if np.linalg.norm(points[EYE_CORNERS[3]] - points[EYE_CORNERS[0]]) <= 0:
        raise DiffheadsError(f"{where} has coincident eye corners; rebuild it with scripts/make_mean_face.py")
    return MeanFace(points, tuple(payload.get("sources", ())))
