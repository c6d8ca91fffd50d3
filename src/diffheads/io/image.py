"""Read still images as RGB arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffheads.errors import DiffheadsError


def read_image(path: str | Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB of any image Pillow reads."""
    path = Path(path)
    if not path.is_file():
        raise DiffheadsError(f"image {path} not found; give the path of a face photo (png, jpg)")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError):
        raise DiffheadsError(f"{path} is not a readable image; give a png or jpg face photo") from None


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write uint8 (H, W, 3) as PNG atomically."""
    from diffheads.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return path
