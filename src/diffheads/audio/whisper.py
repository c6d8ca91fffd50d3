"""Whisper encoder features, one row per video frame.

Whisper's encoder takes a fixed-length log-mel input (2 * max_source_positions mel frames, 30 s for
the released models), so audio is cut into consecutive chunks of that length, each zero-padded as
Whisper itself does. Encoder frame k of a chunk covers its samples [320k, 320k + 320) (50 Hz); only the
frames over real audio are kept. Video frame i (25 fps) is the mean of frames 2i and 2i + 1.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from diffheads.audio.frames import SAMPLE_RATE, fit_rows
from diffheads.audio.hf_speech import read_hf_config
from diffheads.errors import DiffheadsError

_HINT = (
    "save a Whisper model (huggingface.co/openai/whisper-tiny, -base, -small, ...) "
    "with save_pretrained (model and feature extractor) and pass that directory"
)


@dataclass
class WhisperEncoder:
    """Whisper encoder hidden states (`layer` -1 = last_hidden_state), averaged to 25 fps."""

    path: str
    layer: int = -1
    device: str = "cpu"
    name: str = "whisper"
    dim: int = field(init=False, default=0)
    _loaded: Any = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check the directory and read the width from its config (weights load on first encode)."""
        self.path = os.path.abspath(os.path.expanduser(str(self.path)))
        cfg = read_hf_config(self.path, "Whisper", _HINT)
        if cfg.model_type != "whisper":
            raise DiffheadsError(f"{self.path} holds a {cfg.model_type} model, not Whisper; {_HINT}")
        self.dim = int(cfg.d_model)
        n_states = int(cfg.encoder_layers) + 1
        if self.layer != -1 and not -n_states <= self.layer < n_states:
            raise DiffheadsError(f"layer {self.layer} out of range: {self.path} has hidden states 0..{n_states - 1}")

    def describe(self) -> dict[str, Any]:
        """Constructor arguments (stored in EMB/encoder.json)."""
        return {"name": self.name, "path": self.path, "layer": self.layer, "dim": self.dim}

    def _load(self) -> tuple[Any, Any]:
        """(feature extractor, encoder), loaded once."""
        if self._loaded is None:
            from transformers import WhisperFeatureExtractor, WhisperModel

            try:
                extractor = WhisperFeatureExtractor.from_pretrained(self.path)
                encoder = WhisperModel.from_pretrained(self.path, dtype=torch.float32).encoder
            except (OSError, ValueError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise DiffheadsError(f"cannot load the Whisper model in {self.path}: {first}; {_HINT}") from None
            self._loaded = (extractor, encoder.to(self.device).eval())
        return self._loaded

    def frames(self, audio: np.ndarray) -> torch.Tensor:
        """(F, dim) encoder frames of the whole clip, frame k covering samples [k*step, (k+1)*step)."""
        extractor, encoder = self._load()
        mel_frames = 2 * encoder.config.max_source_positions
        # Samples -> mel frames by the extractor's hop, mel frames -> encoder frames by the conv strides.
        conv_stride = encoder.conv1.stride[0] * encoder.conv2.stride[0]
        chunk = encoder.config.max_source_positions * conv_stride * extractor.hop_length
        step = conv_stride * extractor.hop_length
        wav = np.asarray(audio, dtype=np.float32).reshape(-1)
        parts = []
        for start in range(0, max(len(wav), 1), chunk):
            piece = wav[start : start + chunk]
            feats = extractor(
                piece,
                sampling_rate=SAMPLE_RATE,
                return_tensors="pt",
                padding="max_length",
                max_length=chunk,
                truncation=True,
            )["input_features"]
            if feats.shape[-1] != mel_frames:
                raise DiffheadsError(
                    f"{self.path}: the feature extractor gave {feats.shape[-1]} mel frames per chunk, "
                    f"the encoder needs {mel_frames}"
                )
            with torch.no_grad():
                out = encoder(feats.to(self.device, torch.float32), output_hidden_states=self.layer != -1)
            hidden = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]
            # Keep frames that overlap real audio; the rest only saw padding.
            parts.append(hidden[0, : max(1, math.ceil(len(piece) / step))].float().cpu())
        return torch.cat(parts)

    def encode(self, audio: np.ndarray, n_frames: int) -> torch.Tensor:
        """(n_frames, dim): mean of encoder frames 2i and 2i + 1 for video frame i."""
        frames = self.frames(audio)
        if frames.shape[0] % 2:
            # The last video frame is only half covered by audio: use the one frame there is.
            frames = torch.cat([frames, frames[-1:]])
        pairs = frames.view(-1, 2, self.dim).mean(dim=1)
        return fit_rows(pairs, max(n_frames, 0))
