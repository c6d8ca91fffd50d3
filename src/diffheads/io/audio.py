"""Load any audio PyAV can decode as float32 mono at one rate; write 16-bit wav."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr

from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_write_bytes


class NoAudioError(DiffheadsError):
    """The file decodes but holds no sound (no audio stream, or no samples)."""


def av_reason(err: Exception) -> str:
    """FFmpeg's reason without the errno and file name PyAV puts around it."""
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _decode_mono(path: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream as float32 mono (mean of channels) at its own rate."""
    if path.stat().st_size == 0:
        raise DiffheadsError(f"audio {path} is empty (0 bytes); replace it with a recording (wav, flac, mp3, m4a)")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise DiffheadsError(
            f"audio {path} cannot be read ({av_reason(err)}); re-export it as wav, flac or mp3, or replace it"
        ) from None
    try:
        if not container.streams.audio:
            raise NoAudioError(
                f"{path} has no audio stream; pass a file with speech (wav, mp3, flac, m4a or mp4 with sound)"
            )
        stream = container.streams.audio[0]
        to_float = av.AudioResampler(format="fltp")
        chunks, rate = [], stream.rate
        for frame in container.decode(stream):
            rate = frame.sample_rate
            for converted in to_float.resample(frame):
                chunks.append(converted.to_ndarray().mean(axis=0))
        for converted in to_float.resample(None):
            chunks.append(converted.to_ndarray().mean(axis=0))
        # compressed codecs pad their last frame; the stream duration says where the sound ends
        n_total = sum(len(c) for c in chunks)
        if stream.duration and stream.time_base:
            n_total = min(n_total, round(float(stream.duration * stream.time_base) * rate))
    except av.FFmpegError as err:
        raise DiffheadsError(f"audio {path} is damaged ({av_reason(err)}); re-encode or replace it") from None
    finally:
        container.close()
    mono = np.concatenate(chunks)[:n_total] if chunks else np.zeros(0, np.float32)
    return mono.astype(np.float32, copy=False), int(rate)


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Float32 mono samples resampled (soxr, high quality) to `sample_rate`."""
    path = Path(path)
    if not path.is_file():
        raise DiffheadsError(f"audio {path} not found; check the path")
    mono, rate = _decode_mono(path)
    if len(mono) == 0:
        raise NoAudioError(f"audio {path} holds no samples (0 s); replace it with a recording of speech")
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return mono


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = 16000) -> None:
    """Write mono float audio in [-1, 1] as a 16-bit PCM wav, atomically."""
    audio = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
    # encoded in memory first: libsndfile reports a full disk as a RuntimeError, a plain write as OSError
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buffer.getvalue())
