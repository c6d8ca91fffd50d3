"""Test inputs built from a real face photo (scikit-image's astronaut) with known motion."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from diffheads.io.video import write_video
from diffheads.synth.speech import sample_voice, synth_speech


def astronaut() -> np.ndarray:
    """The 512x512 RGB astronaut portrait scikit-image ships (no download)."""
    from skimage import data

    return data.astronaut()


def motion(t: np.ndarray, fps: float, amount: float = 1.0) -> np.ndarray:
    """(T, 3, 3) known similarity motion about the image centre: sway, bob, tilt and zoom.

    At amount 1 the head moves like a lively speaker: up to 15 px per second sideways at
    512 px, 4 degrees of tilt, 5 % zoom.
    """
    s = t / fps
    angle = np.radians(4.0 * amount * np.sin(2 * np.pi * 0.4 * s))
    scale = 1.0 + 0.05 * amount * np.sin(2 * np.pi * 0.3 * s)
    dx, dy = 15.0 * amount * np.sin(2 * np.pi * 0.3 * s), 8.0 * amount * np.cos(2 * np.pi * 0.25 * s)
    c, si = scale * np.cos(angle), scale * np.sin(angle)
    m = np.zeros((len(t), 3, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -si, si, c
    m[:, 2, 2] = 1
    centre = np.array([256.0, 256.0])
    m[:, 0, 2] = centre[0] - c * centre[0] + si * centre[1] + dx
    m[:, 1, 2] = centre[1] - si * centre[0] - c * centre[1] + dy
    return m


def moving_face_video(
    path: Path, seconds: float = 2.0, fps: float = 30.0, size: int = 384, audio: bool = True, amount: float = 1.0
) -> np.ndarray:
    """Write the astronaut moving by `motion` (frames size x size) with speech; return the (T, 3, 3) motion in output pixels."""
    image = astronaut()
    n = int(round(seconds * fps))
    motions = motion(np.arange(n), fps, amount)
    shrink = np.diag([size / 512, size / 512, 1.0])
    frames = np.stack(
        [
            cv2.warpAffine(image, (shrink @ m)[:2], (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            for m in motions
        ]
    )
    rng = np.random.default_rng(0)
    sound = synth_speech(rng, sample_voice(rng), seconds).audio if audio else None
    write_video(path, frames, fps=fps, audio=sound)
    return motions
