"""Per-frame audio encoders: one embedding row per 25 fps video frame (SPEC, audio embeddings)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from diffheads.audio.frames import FPS, SAMPLE_RATE
from diffheads.errors import DiffheadsError


class AudioEncoder(Protocol):
    """Maps 16 kHz mono audio to a (n_frames, dim) tensor, row i describing video frame i."""

    name: str
    dim: int

    def encode(self, audio: np.ndarray, n_frames: int) -> torch.Tensor:
        """Embeddings for the first `n_frames` video frames of `audio`."""
        ...

    def describe(self) -> dict[str, Any]:
        """Everything needed to rebuild the encoder, stored beside the embeddings."""
        ...


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of hz_to_mel."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on the mel scale, area-normalised (Slaney)."""
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (center - lower)
    falling = (upper - freqs[None]) / (upper - center)
    fb = np.clip(np.minimum(rising, falling), 0.0, None)
    fb *= 2.0 / (upper - lower)
    return torch.from_numpy(fb).float()


@dataclass
class LogMelEncoder:
    """Log-mel features of a window centred on each video frame, split into time slots (no weights).

    With the defaults each row covers 0.2 s (5 slots of 40 ms x n_mels bands), Whisper-style
    compressed: log10, floor at (clip max - 8), then (x + 4) / 4.
    """

    n_mels: int = 40
    window_s: float = 0.2
    n_slots: int = 5
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    f_min: float = 60.0
    f_max: float = 7600.0
    sample_rate: int = SAMPLE_RATE
    fps: float = FPS
    name: str = "logmel"
    CHUNK_FRAMES: ClassVar[int] = 3000  # STFT frames (30 s) or video frames (2 min) computed at a time

    @property
    def dim(self) -> int:
        """Width of one row: n_slots * n_mels."""
        return self.n_slots * self.n_mels

    def describe(self) -> dict[str, Any]:
        """Constructor arguments (stored in EMB/encoder.json)."""
        return asdict(self) | {"dim": self.dim}

    def log_mel(self, audio: np.ndarray) -> torch.Tensor:
        """(n_mels, n_stft_frames) compressed log-mel spectrogram, frame j centred at sample j * hop.

        The STFT (the largest intermediate: n_fft / 2 + 1 complex bins per 10 ms) is computed
        CHUNK_FRAMES frames at a time from the reflect-padded signal, as torch.stft(center=True)
        pads it, so memory stays flat for hours of audio; only the small mel rows are kept whole,
        because the compression floor depends on the whole clip's maximum.
        """
        wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        pad = self.n_fft // 2
        mode = "reflect" if len(wav) > pad else "constant"
        padded = torch.nn.functional.pad(wav[None, None], (pad, pad), mode=mode)[0, 0]
        n_stft = len(wav) // self.hop_length + 1
        window, fb = self.stft_window(), self.filterbank()
        pieces = []
        for j0 in range(0, n_stft, self.CHUNK_FRAMES):
            j1 = min(n_stft, j0 + self.CHUNK_FRAMES)
            pieces.append(
                self.mel_frames(padded[j0 * self.hop_length : (j1 - 1) * self.hop_length + self.n_fft], window, fb)
            )
        mel = torch.cat(pieces, dim=1)
        return self.compress(mel, mel.max())

    def stft_window(self) -> torch.Tensor:
        """The analysis window (periodic Hann of win_length; torch.stft centres it in n_fft with zeros)."""
        return torch.hann_window(self.win_length)

    def filterbank(self) -> torch.Tensor:
        """(n_mels, n_fft // 2 + 1) mel filters of this encoder."""
        return mel_filterbank(self.n_mels, self.n_fft, self.sample_rate, self.f_min, self.f_max)

    def mel_frames(self, piece: torch.Tensor, window: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        """(n_mels, n) log10 mel power, not yet compressed, of the n STFT frames of a piece of the padded signal."""
        spec = (
            torch.stft(
                piece, self.n_fft, self.hop_length, self.win_length, window, center=False, return_complex=True
            ).abs()
            ** 2
        )
        return torch.log10((fb @ spec).clamp(min=1e-10))

    @staticmethod
    def compress(mel: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
        """Whisper-style compression of log10 mel power: floor at peak - 8 (80 dB under the peak), then (x + 4) / 4."""
        return (torch.maximum(mel, peak - 8.0) + 4.0) / 4.0

    def slot_columns(self, t: torch.Tensor) -> torch.Tensor:
        """(T, n_slots * per_slot) STFT frames averaged into rows t (per_slot a slot), before clamping into the clip."""
        per_window = round(self.window_s * self.sample_rate / self.hop_length)
        per_slot = max(1, per_window // self.n_slots)
        centers = (t + 0.5) * (self.sample_rate / self.fps) / self.hop_length
        start = torch.round(centers - per_slot * self.n_slots / 2).long()
        return start[:, None] + torch.arange(per_slot * self.n_slots)[None]

    def rows(self, mel: torch.Tensor, t: torch.Tensor, first_column: int = 0) -> torch.Tensor:
        """(T, dim) rows t from compressed STFT frames first_column.. (mel's last column is the clip's last)."""
        cols = self.slot_columns(t).clamp(0, first_column + mel.shape[1] - 1) - first_column
        slots = mel[:, cols].view(self.n_mels, len(t), self.n_slots, -1).mean(dim=-1)
        return slots.permute(1, 2, 0).reshape(len(t), self.dim)

    def encode(self, audio: np.ndarray, n_frames: int) -> torch.Tensor:
        """(n_frames, n_slots * n_mels): slot s of row i averages the STFT frames in its part of frame i's window."""
        mel = self.log_mel(audio)
        out = torch.empty(n_frames, self.dim)
        for t0 in range(0, n_frames, self.CHUNK_FRAMES):  # (n_mels, T, window) gathers stay small
            t = torch.arange(t0, min(n_frames, t0 + self.CHUNK_FRAMES))
            out[t0 : t0 + len(t)] = self.rows(mel, t)
        return out

    @property
    def window_reach(self) -> int:
        """Samples after an STFT frame's centre up to its last one with a non-zero window weight (199 by default)."""
        left = (self.n_fft - self.win_length) // 2  # torch.stft centres the shorter window in n_fft
        return left + self.win_length - 1 - self.n_fft // 2

    def samples_for_row(self, t: int) -> int:
        """Audio samples from the start that row t depends on, when the clip goes on past them (no end clamping)."""
        last = int(self.slot_columns(torch.tensor([t]))[0, -1])
        return max(0, last * self.hop_length + self.window_reach + 1)

    @property
    def lookahead(self) -> int:
        """Samples past the end of video frame t that row t needs (1320 = 82.5 ms by default), the most over t."""
        per_frame = self.sample_rate / self.fps
        return max(self.samples_for_row(t) - math.ceil((t + 1) * per_frame) for t in range(1, 2 * int(self.fps) + 1))


ENCODER_NAMES = ("logmel", "whisper", "wav2vec2", "hubert", "sda")


def _weights_hint(name: str) -> str:
    """What --encoder-path must point at for encoder `name`."""
    return {
        "whisper": "DIR (a Whisper model saved with save_pretrained, e.g. from huggingface.co/openai/whisper-tiny)",
        "wav2vec2": (
            "DIR (a wav2vec2 model saved with save_pretrained, e.g. from huggingface.co/facebook/wav2vec2-base-960h)"
        ),
        "hubert": (
            "DIR (a HuBERT model saved with save_pretrained, e.g. from huggingface.co/facebook/hubert-base-ls960)"
        ),
        "sda": "FILE (the SDA audio encoder of the Diffused Heads release exported to TorchScript, see docs/data.md)",
    }[name]


def _encoder_class(name: str) -> type:
    """The class implementing encoder `name` (imported here: the modules import this one)."""
    if name == "logmel":
        return LogMelEncoder
    if name == "whisper":
        from diffheads.audio.whisper import WhisperEncoder

        return WhisperEncoder
    if name in ("wav2vec2", "hubert"):
        from diffheads.audio.hf_speech import HFSpeechEncoder

        return HFSpeechEncoder
    if name == "sda":
        from diffheads.audio.sda import SDAEncoder

        return SDAEncoder
    raise ValueError(f"unknown audio encoder '{name}'; available: {', '.join(ENCODER_NAMES)}")


def build_encoder(spec: dict[str, Any], device: str = "cpu") -> AudioEncoder:
    """Rebuild an encoder from its `describe()` dict; networks run on `device` (not part of the description)."""
    spec = dict(spec)
    name = spec.pop("name", "logmel")
    spec.pop("dim", None)
    spec.pop("device", None)
    cls = _encoder_class(name)
    if name == "logmel":
        return cls(**spec)
    if not spec.get("path"):
        raise DiffheadsError(
            f"this model's {name} audio encoder file is not recorded; give it when importing "
            "(diffheads import-reference ... --sda audio_encoder.pt) or export the model again"
        )
    return cls(name=name, device=device, **spec)


def make_encoder(name: str, path: str | None = None, **options: Any) -> AudioEncoder:
    """The encoder chosen on the command line (--encoder NAME [--encoder-path PATH])."""
    if name not in ENCODER_NAMES:
        raise DiffheadsError(f"unknown --encoder '{name}'; available: {', '.join(ENCODER_NAMES)}")
    cls = _encoder_class(name)
    accepted = {f.name for f in fields(cls) if f.init} - {"name", "path"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise DiffheadsError(
            f"--encoder {name} does not take {', '.join(unknown)}; it takes: {', '.join(sorted(accepted)) or 'nothing'}"
        )
    if name == "logmel":
        if path is not None:
            raise DiffheadsError("--encoder logmel has no weights; drop --encoder-path")
        return cls(**options)
    if path is None:
        raise DiffheadsError(f"--encoder {name} needs --encoder-path {_weights_hint(name)}")
    encoder = cls(path=str(path), name=name, **options)
    if encoder.name != name:
        # wav2vec2 and HuBERT share a class; the config decides which one the directory holds.
        raise DiffheadsError(
            f"--encoder {name} was given {path}, which holds a {encoder.name} model; use --encoder {encoder.name}"
        )
    return encoder
