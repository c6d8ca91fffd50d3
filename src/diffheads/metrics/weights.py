"""Pretrained weights the metrics need: file names, where they are published, and how to find them locally."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffheads.errors import DiffheadsError


@dataclass(frozen=True)
class WeightsFile:
    """One published weights file."""

    key: str  # the metric family that needs it
    filename: str
    url: str
    flag: str  # command-line flag that names the file directly


WEIGHTS = {
    "inception": WeightsFile(
        "inception",
        "weights-inception-2015-12-05-6726825d.pth",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
        "--inception-weights",
    ),
    "i3d": WeightsFile(
        "i3d",
        "i3d_torchscript.pt",
        "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (the StyleGAN-V / StyleGAN2-ADA FVD detector)",
        "--i3d-weights",
    ),
    "syncnet": WeightsFile(
        "syncnet",
        "syncnet_v2.model",
        "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model (joonson/syncnet_python)",
        "--syncnet-weights",
    ),
}


class MissingWeightsError(DiffheadsError):
    """A metric's weights file is not on disk."""


def find_weights(key: str, weights_dir: str | Path | None = None, path: str | Path | None = None) -> Path:
    """The local file for `key`: `path` if given, else WEIGHTS_DIR/<published file name>; a clear error if absent."""
    spec = WEIGHTS[key]
    candidate = Path(path) if path else (Path(weights_dir) / spec.filename if weights_dir else None)
    if candidate is None or not candidate.is_file():
        where = f"{candidate} not found" if candidate is not None else "no weights given"
        raise MissingWeightsError(
            f"{key} weights: {where}; download {spec.filename} from {spec.url} and pass "
            f"--weights-dir DIR (holding {spec.filename}) or {spec.flag} FILE"
        )
    return candidate
