"""dlib's trained face judges: the HOG face detector, the 68-point shape predictor and the face-recognition ResNet.

The model files ship in the PyPI package `face-recognition-models` (CC0 data files) and run with the `dlib-bin`
wheel, so nothing is fetched at run time. Landmarks use the 0-based iBUG 300-W 68-point scheme (mouth 48-67).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from diffheads.errors import DiffheadsError

MIN_SIDE = 256  # frames with a shorter side are enlarged (bicubic) to this before detection: aligned 64-128 px crops
MAX_SCALE = 4.0  # but never more: a smaller crop (8 px) holds too little face to judge, and blown up it fools the HOG
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
RECOGNISER_FILE = "dlib_face_recognition_resnet_model_v1.dat"
SAME_PERSON_DISTANCE = 0.6  # dlib's rule for its 128-d descriptors: closer than this is the same person
INSTALL_HINT = "install them with: pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0"


def model_dir() -> Path:
    """Folder of the dlib model files inside the installed face-recognition-models package."""
    # find_spec locates the package without running its __init__, which needs pkg_resources (gone from setuptools 81+)
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DiffheadsError(f"the dlib judges need the package face-recognition-models; {INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    for name in (PREDICTOR_FILE, RECOGNISER_FILE):
        if not (folder / name).is_file():
            raise DiffheadsError(
                f"{folder / name} is missing from face-recognition-models; reinstall it: {INSTALL_HINT}"
            )
    return folder


@dataclass
class FaceTrack:
    """dlib's 68 points of every frame of a video, in that video's pixels, and how each frame's face box was found."""

    points: np.ndarray  # (T, 68, 2) float64 (x, y)
    detected: np.ndarray  # (T,) bool: the detector found a face; else the previous box, or the whole frame, was used
    boxes: np.ndarray  # (T, 4) left, top, right, bottom in the enlarged frame the predictor saw
    scale: float  # enlargement applied before detection (points are divided by it)

    @property
    def detection_rate(self) -> float:
        """Fraction of frames where the detector found a face; nan for no frames."""
        return float(self.detected.mean()) if len(self.detected) else float("nan")


class DlibJudges:
    """The three dlib networks, loaded once from the installed model files."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError:
            raise DiffheadsError(f"the dlib judges need dlib; {INSTALL_HINT}") from None
        folder = model_dir()
        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(folder / PREDICTOR_FILE))
        self.recogniser = dlib.face_recognition_model_v1(str(folder / RECOGNISER_FILE))
        self.files = {name: folder / name for name in (PREDICTOR_FILE, RECOGNISER_FILE)}

    def track(self, frames: np.ndarray) -> FaceTrack:
        """Detect and fit the 68 points in every frame; a missed frame reuses the previous box, else the whole frame."""
        frames = _check_frames(frames)
        n, height, width = frames.shape[:3]
        scale = min(max(1.0, MIN_SIDE / min(height, width)), MAX_SCALE)
        points = np.zeros((n, 68, 2))
        detected = np.zeros(n, bool)
        boxes = np.zeros((n, 4), np.int64)
        previous = None
        for t in range(n):
            image = _enlarged(frames[t], scale)
            found = self.detector(image, 0)
            detected[t] = len(found) > 0
            if detected[t]:
                # the largest face: aligned crops hold one, and a stray small hit is background
                rect = max(found, key=lambda r: r.width() * r.height())
            else:
                whole = self.dlib.rectangle(0, 0, image.shape[1] - 1, image.shape[0] - 1)
                rect = previous if previous is not None else whole
            shape = self.predictor(image, rect)
            points[t] = [(p.x, p.y) for p in shape.parts()]
            boxes[t] = (rect.left(), rect.top(), rect.right(), rect.bottom())
            previous = rect
        # dlib's pixel centres are integers; map (x + 0.5) / scale - 0.5 back to the original pixel grid
        return FaceTrack((points + 0.5) / scale - 0.5, detected, boxes, scale)

    def descriptors(self, frames: np.ndarray, track: FaceTrack, indices: np.ndarray) -> np.ndarray:
        """(len(indices), 128) face descriptors of the chosen frames, from the tracked 68 points."""
        frames = _check_frames(frames)
        out = np.zeros((len(indices), 128))
        for i, t in enumerate(indices):
            image = _enlarged(frames[t], track.scale)
            enlarged = (track.points[t] + 0.5) * track.scale - 0.5
            parts = self.dlib.points([self.dlib.point(int(round(x)), int(round(y))) for x, y in enlarged])
            shape = self.dlib.full_object_detection(self.dlib.rectangle(*map(int, track.boxes[t])), parts)
            out[i] = np.asarray(self.recogniser.compute_face_descriptor(image, shape))
        return out

    def describe(self) -> dict[str, Any]:
        """Which packages and model files scored (for metrics.json)."""
        from importlib.metadata import PackageNotFoundError, version

        versions = {}
        for package in ("dlib-bin", "face-recognition-models"):
            try:
                versions[package] = version(package)
            except PackageNotFoundError:  # dlib built from source under another distribution name
                versions[package] = None
        return {"packages": versions, "files": [str(v) for v in self.files.values()]}


def _check_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) frames, contiguous for dlib; a one-line error otherwise."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise DiffheadsError(f"the dlib judges need uint8 (T, H, W, 3) RGB frames, got {frames.dtype} {frames.shape}")
    return np.ascontiguousarray(frames)


def _enlarged(frame: np.ndarray, scale: float) -> np.ndarray:
    """The frame enlarged by `scale` (bicubic), or itself when the scale is 1."""
    if scale == 1.0:
        return frame
    height, width = frame.shape[:2]
    size = (int(round(width * scale)), int(round(height * scale)))
    return np.ascontiguousarray(cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC))
