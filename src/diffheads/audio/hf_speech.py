"""wav2vec2 / HuBERT features (any transformers model that takes `input_values`), one row per video frame.

The convolutional front end turns samples [S*j, S*j + R) into frame j, where S is the product of
`config.conv_stride` and R the receptive field of `config.conv_kernel` (320 and 400 samples, ~50 Hz,
for the released models). Row i of the output is the frames linearly interpolated at the centre of
video frame i, sample (i + 0.5) * 640.

Long audio is run in chunks of `chunk_s` seconds with `context_s` seconds of extra audio on each side;
each chunk keeps only the frames whose centres fall inside it. The context windows start on a multiple
of S, so every kept frame sees exactly the samples it would in a single pass: the result equals a
single pass wherever the model's reach across time (attention, positional convolution, group norm)
does not exceed the context.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffheads.audio.frames import FPS, SAMPLE_RATE
from diffheads.errors import DiffheadsError


def read_hf_config(path: str, what: str, hint: str) -> Any:
    """The transformers config of a save_pretrained directory, with one-line errors for a bad path."""
    root = Path(path)
    if not root.exists():
        raise DiffheadsError(f"{what} weights not found at {path}; {hint}")
    if not root.is_dir() or not (root / "config.json").is_file():
        raise DiffheadsError(f"{path} is not a save_pretrained directory (no config.json); {hint}")
    try:
        from transformers import AutoConfig
    except ImportError as err:
        raise DiffheadsError(f"the {what} encoder needs transformers: pip install transformers ({err})") from None
    try:
        return AutoConfig.from_pretrained(str(root))
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DiffheadsError(f"cannot read {root / 'config.json'}: {first}") from None


def conv_geometry(kernels: list[int] | tuple[int, ...], strides: list[int] | tuple[int, ...]) -> tuple[int, int]:
    """(receptive field R, total stride S) in samples of a stack of unpadded 1-D convolutions."""
    field_, stride = 1, 1
    for k, s in zip(kernels, strides, strict=True):
        field_ += (k - 1) * stride
        stride *= s
    return field_, stride


def conv_frames(n_samples: int, kernels: list[int] | tuple[int, ...], strides: list[int] | tuple[int, ...]) -> int:
    """Output frames of the conv stack for `n_samples` inputs (0 when too short)."""
    n = n_samples
    for k, s in zip(kernels, strides, strict=True):
        n = (n - k) // s + 1 if n >= k else 0
    return n


def _hint(name: str) -> str:
    """Where to get weights for `name`."""
    if name == "hubert":
        return "save huggingface.co/facebook/hubert-base-ls960 with save_pretrained and pass that directory"
    return "save huggingface.co/facebook/wav2vec2-base-960h with save_pretrained and pass that directory"


@dataclass
class HFSpeechEncoder:
    """Hidden states of a wav2vec2-style model (`layer` -1 = last_hidden_state), interpolated to 25 fps."""

    path: str
    layer: int = -1
    chunk_s: float = 20.0
    context_s: float = 1.0
    device: str = "cpu"
    name: str = "wav2vec2"
    dim: int = field(init=False, default=0)
    _kernels: tuple[int, ...] = field(init=False, default=(), repr=False, compare=False)
    _strides: tuple[int, ...] = field(init=False, default=(), repr=False, compare=False)
    _loaded: Any = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check the directory and read the geometry from its config (weights load on first encode)."""
        self.path = os.path.abspath(os.path.expanduser(str(self.path)))
        if self.chunk_s <= 0 or self.context_s < 0:
            raise DiffheadsError(f"chunk_s must be > 0 and context_s >= 0, got {self.chunk_s} and {self.context_s}")
        cfg = read_hf_config(self.path, "HuBERT" if self.name == "hubert" else "wav2vec2", _hint(self.name))
        needed = ("conv_kernel", "conv_stride", "hidden_size")
        if not all(hasattr(cfg, key) for key in needed):
            raise DiffheadsError(
                f"{self.path} holds a {cfg.model_type} model, not a wav2vec2/HuBERT-style speech encoder "
                f"(its config lacks {', '.join(k for k in needed if not hasattr(cfg, k))})"
            )
        # Name follows the weights so build_encoder and the CLI agree on what was used.
        self.name = "hubert" if cfg.model_type == "hubert" else "wav2vec2"
        self.dim = int(cfg.hidden_size)
        self._kernels = tuple(int(k) for k in cfg.conv_kernel)
        self._strides = tuple(int(s) for s in cfg.conv_stride)
        n_states = int(getattr(cfg, "num_hidden_layers", 0)) + 1
        if self.layer != -1 and not -n_states <= self.layer < n_states:
            raise DiffheadsError(f"layer {self.layer} out of range: {self.path} has hidden states 0..{n_states - 1}")

    def describe(self) -> dict[str, Any]:
        """Constructor arguments (stored in EMB/encoder.json)."""
        return {
            "name": self.name,
            "path": self.path,
            "layer": self.layer,
            "chunk_s": self.chunk_s,
            "context_s": self.context_s,
            "dim": self.dim,
        }

    def _load(self) -> tuple[Any, Any]:
        """(feature extractor, model), loaded once."""
        if self._loaded is None:
            from transformers import AutoFeatureExtractor, AutoModel

            try:
                extractor = AutoFeatureExtractor.from_pretrained(self.path)
                model = AutoModel.from_pretrained(self.path, dtype=torch.float32)
            except (OSError, ValueError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise DiffheadsError(f"cannot load the {self.name} model in {self.path}: {first}") from None
            self._loaded = (extractor, model.to(self.device).eval())
        return self._loaded

    @property
    def geometry(self) -> tuple[int, int]:
        """(receptive field, stride) of one model frame, in samples."""
        return conv_geometry(self._kernels, self._strides)

    def frames(self, audio: np.ndarray) -> torch.Tensor:
        """(F, dim) model frames of the whole clip, frame j centred at sample S*j + R/2."""
        extractor, model = self._load()
        field_, stride = self.geometry
        wav = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(wav) < field_:
            # Too short for one frame: zero padding gives one row to repeat.
            wav = np.pad(wav, (0, field_ - len(wav)))
        # Normalise the clip as a whole, so chunking cannot change the model's input.
        values = extractor(wav, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_values"][0].astype(np.float32)
        n = len(values)
        total = conv_frames(n, self._kernels, self._strides)
        chunk = max(1, int(round(self.chunk_s * SAMPLE_RATE)))
        context_frames = math.ceil(self.context_s * SAMPLE_RATE / stride)
        parts = []
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            # Frames whose centre S*j + R/2 lies in [c0, c1), in integers: 2*S*j + R >= 2*c0.
            lo = max(0, -((field_ - 2 * c0) // (2 * stride)))
            hi = min(total, -((field_ - 2 * c1) // (2 * stride)))
            if hi <= lo:
                continue
            first = max(0, lo - context_frames)
            w0 = first * stride
            w1 = min(n, (hi - 1 + context_frames) * stride + field_)
            hidden = self._run(model, values[w0:w1])
            parts.append(hidden[lo - first : hi - first])
        out = torch.cat(parts)
        if out.shape[0] != total:
            raise DiffheadsError(f"{self.path}: expected {total} frames from the conv front end, got {out.shape[0]}")
        return out

    def _run(self, model: Any, values: np.ndarray) -> torch.Tensor:
        """(frames, dim) hidden states of one stretch of normalised audio."""
        x = torch.from_numpy(np.ascontiguousarray(values))[None].to(self.device)
        with torch.no_grad():
            out = model(input_values=x, output_hidden_states=self.layer != -1)
        hidden = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]
        return hidden[0].float().cpu()

    def encode(self, audio: np.ndarray, n_frames: int) -> torch.Tensor:
        """(n_frames, dim): model frames linearly interpolated at each video frame centre."""
        frames = self.frames(audio)
        if n_frames <= 0:
            return frames.new_zeros(0, self.dim)
        field_, stride = self.geometry
        centres = (torch.arange(n_frames, dtype=torch.float64) + 0.5) * (SAMPLE_RATE / FPS)
        # Clamping repeats the edge frames for video frames past the audio.
        pos = ((centres - field_ / 2) / stride).clamp(0, frames.shape[0] - 1)
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=frames.shape[0] - 1)
        w = (pos - lo).float()[:, None]
        return (frames[lo] * (1 - w) + frames[hi] * w).contiguous()
