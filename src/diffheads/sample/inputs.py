"""The inputs of a sampling run: the portrait (aligned photo or video, or an aligned crop), the speech, and
the frame as written (pasted back into the portrait)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffheads.data.dataset import to_model_frames
from diffheads.errors import DiffheadsError
from diffheads.face.align import AlignConfig
from diffheads.face.mean_face import load_mean_face
from diffheads.face.paste import paste_back
from diffheads.face.portrait import Portrait, align_photo, align_video
from diffheads.io.audio import load_audio
from diffheads.io.image import read_image
from diffheads.io.video import read_video
from diffheads.sample.runtime import to_uint8

SYNTHETIC_FACES_NOTE = (
    "this model was trained only on synthetic cartoon faces, so a real face comes out blurred; for a real face run "
    "`make demo-real` (a person-specific model of GRID speaker s1, outputs/demo-grid/model.ckpt) or train your own "
    "with configs/person.yaml (docs/person.md)"
)


def synthetic_faces_note(provenance: dict[str, Any]) -> str | None:
    """The one-line warning for a model that knows only synthetic faces (checkpoint.model_provenance), else None."""
    return SYNTHETIC_FACES_NOTE if provenance.get("synthetic") is True else None


def load_identity_frame(image: str | Path | None, video: str | Path | None, size: int) -> torch.Tensor:
    """(3, size, size) identity frame from an already aligned photo or the first frame of such a video."""
    if (image is None) == (video is None):
        raise DiffheadsError("give exactly one of --image or --video")
    if image is not None:
        rgb = read_image(image)
    else:
        rgb = read_video(video)[0][0]
    return to_model_frames(rgb[None], size)[0]


def load_portrait(
    image: str | Path | None,
    video: str | Path | None,
    size: int,
    mean_face: str | Path | None = None,
    margins: tuple[float, float, float] | None = None,
) -> Portrait:
    """Find and align the face of a photo or a video at the model's resolution, as `prepare` does."""
    if (image is None) == (video is None):
        raise DiffheadsError("give exactly one of --image or --video")
    cfg = AlignConfig(size=size)
    if margins is not None:
        cfg = dataclasses.replace(cfg, margin_x=margins[0], margin_top=margins[1], margin_bottom=margins[2])
    face = load_mean_face(mean_face)
    return align_photo(image, cfg, face) if image is not None else align_video(video, cfg, face)


def output_image(frames: torch.Tensor, t: int, portrait: Portrait | None) -> np.ndarray:
    """Frame t as written: the first of `frames` (N, 3, S, S) as uint8 (S, S, 3), pasted back into `portrait` if any."""
    crop = to_uint8(frames)[0]
    if portrait is None:
        return crop
    background, to_crop = portrait.background(t)
    return paste_back(background, crop, to_crop)


def load_speech(audio: str | Path) -> np.ndarray:
    """16 kHz mono float32 samples of `audio` (any format PyAV reads); a silent recording is an error."""
    wav = load_audio(audio)
    if max(float(wav.max()), -float(wav.min())) < 1e-4:  # no np.abs(wav): a copy of a long recording
        raise DiffheadsError(f"audio {audio} is silent; give a recording with speech")
    return wav


def identity_of(portrait: Portrait, size: int) -> torch.Tensor:
    """(3, size, size) model-ready identity frame of an aligned portrait."""
    return to_model_frames(portrait.identity_crop[None], size)[0]
