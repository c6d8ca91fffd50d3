"""The reference's recurrent audio encoder (SDA), loaded from a local TorchScript file.

Windowing: 16 kHz mono audio is padded with 1280 zeros on each side and cut into windows of 3200
samples (0.2 s) every 640 samples (one 25 fps video frame): window i holds original samples
[640i - 1280, 640i + 1920), zeros outside the clip, and a clip of N samples has floor(N / 640) windows.

TorchScript contract: the module is called once per clip with a float32 tensor of shape
(1, n_windows, 3200) and returns (1, n_windows, dim), row i being the embedding of video frame i.
Because the whole clip goes in one call, the module's recurrent state carries across its windows.
To make such a file, export the SDA audio encoder of the Diffused Heads release with
`torch.jit.script(module).save(path)` (see docs/data.md).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffheads.audio.frames import fit_rows
from diffheads.errors import DiffheadsError

WINDOW = 3200
HOP = 640
PAD = 1280

_HINT = "export the SDA audio encoder of the Diffused Heads release to TorchScript (see docs/data.md)"


def sda_windows(audio: np.ndarray) -> torch.Tensor:
    """(floor(N / 640), 3200) windows: row i is samples [640i - 1280, 640i + 1920), zero outside the clip."""
    wav = np.asarray(audio, dtype=np.float32).reshape(-1)
    n_windows = len(wav) // HOP
    # Enough zeros after the clip for the last window, whatever N mod 640 is.
    padded = np.zeros(PAD + n_windows * HOP + WINDOW, dtype=np.float32)
    padded[PAD : PAD + len(wav)] = wav
    starts = np.arange(n_windows)[:, None] * HOP + np.arange(WINDOW)[None]
    return torch.from_numpy(padded[starts]).reshape(n_windows, WINDOW)


def load_sda(path: str, device: str = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript module at `path`, with one-line errors for a missing or foreign file."""
    file = Path(path)
    if not file.exists():
        raise DiffheadsError(f"SDA audio encoder not found at {path}; {_HINT}")
    if not file.is_file():
        raise DiffheadsError(f"{path} is not a file; {_HINT}")
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in torch, but it is the agreed format of the SDA export.
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(file), map_location=device)
    except Exception as err:  # torch.jit.load raises RuntimeError, ValueError or zipfile errors for foreign files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DiffheadsError(f"{path} is not a TorchScript file ({first}); {_HINT}") from None
    return module.eval()


@dataclass
class SDAEncoder:
    """SDA embeddings: one call per clip on its 0.2 s windows, one row per video frame."""

    path: str
    device: str = "cpu"
    name: str = "sda"
    dim: int = field(init=False, default=0)
    _module: Any = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Load the module and probe its width on one silent window, so describe() is complete."""
        self.path = os.path.abspath(os.path.expanduser(str(self.path)))
        self._module = load_sda(self.path, self.device)
        self.dim = int(self._call(torch.zeros(1, WINDOW)).shape[1])

    def describe(self) -> dict[str, Any]:
        """Constructor arguments (stored in EMB/encoder.json)."""
        return {"name": self.name, "path": self.path, "dim": self.dim}

    def _call(self, windows: torch.Tensor) -> torch.Tensor:
        """(n_windows, dim) from one module call on (n_windows, 3200) windows."""
        with torch.no_grad():
            out = self._module(windows[None].to(self.device))
        if not isinstance(out, torch.Tensor) or out.dim() != 3 or out.shape[:2] != (1, windows.shape[0]):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DiffheadsError(
                f"{self.path}: a (1, {windows.shape[0]}, {WINDOW}) input should give (1, {windows.shape[0]}, dim), "
                f"got {shape}; {_HINT}"
            )
        return out[0].float().cpu()

    def encode(self, audio: np.ndarray, n_frames: int) -> torch.Tensor:
        """(n_frames, dim), repeating the last row when the clip has fewer windows than frames."""
        wav = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(wav) < HOP:
            # Under one window: pad with silence so there is a row to repeat.
            wav = np.pad(wav, (0, HOP - len(wav)))
        return fit_rows(self._call(sda_windows(wav)), max(n_frames, 0))
