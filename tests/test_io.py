"""Video and audio reading/writing: round trips, resampling, mixing and errors."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf

from diffheads.errors import DiffheadsError
from diffheads.io.audio import load_audio, write_wav
from diffheads.io.video import count_frames, iter_video_frames, read_video, write_video


def _smooth_clip(n: int, height: int, width: int) -> np.ndarray:
    """A moving colour gradient with a drifting square: compressible, yet every frame differs."""
    y, x = np.mgrid[0:height, 0:width]
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        frames[t, ..., 0] = 40 + 150 * x / width
        frames[t, ..., 1] = 60 + 120 * y / height
        frames[t, ..., 2] = 128 + 60 * np.sin(t / 5)
        frames[t, 8:16, t % (width - 8) : t % (width - 8) + 8] = (230, 30, 30)
    return frames


def _peak_hz(audio: np.ndarray, sample_rate: int) -> float:
    """Frequency of the largest FFT bin of a Hann-windowed signal."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1.0 / sample_rate)[np.argmax(spectrum)])


def _sine(freq: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_video_round_trip_keeps_count_fps_size_and_pixels(tmp_path):
    frames = _smooth_clip(30, 32, 48)
    path = tmp_path / "clip.mp4"
    write_video(path, frames, fps=25)
    back, fps = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert fps == 25.0
    assert np.abs(back.astype(float) - frames).mean() < 3.0
    assert count_frames(path) == 30
    assert len(list(iter_video_frames(path))) == 30
    assert not list(tmp_path.glob(".*tmp*")), "atomic write left a temporary file"


def test_video_audio_track_matches_duration_and_content(tmp_path):
    sr, n_frames = 16000, 50
    audio = _sine(440.0, n_frames / 25, sr)
    path = tmp_path / "talk.mp4"
    write_video(path, _smooth_clip(n_frames, 32, 32), fps=25, audio=audio, sample_rate=sr)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert abs(float(stream.duration * stream.time_base) - n_frames / 25) < 1e-3
    back = load_audio(path, sr)
    assert len(back) == len(audio)
    assert abs(_peak_hz(back, sr) - 440.0) < 2.0
    assert np.corrcoef(back[2000:-2000], audio[2000:-2000])[0, 1] > 0.99
    assert len(read_video(path)[0]) == n_frames


def test_write_video_rejects_odd_size_and_bad_dtype(tmp_path):
    with pytest.raises(DiffheadsError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8))
    with pytest.raises(DiffheadsError, match="uint8"):
        write_video(tmp_path / "float.mp4", np.zeros((2, 32, 32, 3), np.float32))
    assert not list(tmp_path.iterdir())


def test_wav_round_trip_is_16_bit_exact(tmp_path):
    audio = _sine(300.0, 0.5, 16000, 0.8)
    path = tmp_path / "a.wav"
    write_wav(path, audio)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    back = load_audio(path)
    assert back.dtype == np.float32 and len(back) == len(audio)
    assert np.abs(back - audio).max() <= 1.0 / 32768 + 1e-6


def test_load_audio_resamples_48k_stereo_float_and_mixes_channels(tmp_path):
    sr = 48000
    left, right = _sine(440.0, 1.5, sr, 0.6), _sine(440.0, 1.5, sr, 0.2)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], 1), sr, subtype="FLOAT")
    mono = load_audio(path, 16000)
    assert mono.dtype == np.float32 and mono.ndim == 1
    assert abs(len(mono) - 24000) <= 1
    assert abs(_peak_hz(mono, 16000) - 440.0) < 1.0
    assert np.sqrt(np.mean(mono[1000:-1000] ** 2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.01)


def _encode_compressed(path, data: np.ndarray, sample_rate: int) -> None:
    """Encode (2, n) float audio with PyAV: mp3 if libmp3lame exists, else AAC in .m4a."""
    codec = "libmp3lame" if path.suffix == ".mp3" else "aac"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=sample_rate, layout="stereo")
        for start in range(0, data.shape[1], 1000):
            chunk = np.ascontiguousarray(data[:, start : start + 1000])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_load_audio_decodes_8k_stereo_compressed(tmp_path):
    suffix = ".mp3" if "libmp3lame" in av.codecs_available else ".m4a"
    sr = 8000
    tone = _sine(500.0, 2.0, sr, 0.3)
    path = tmp_path / f"speech{suffix}"
    _encode_compressed(path, np.stack([tone, tone]), sr)
    mono = load_audio(path, 16000)
    assert abs(len(mono) - 32000) <= 16000 * 0.03
    assert abs(_peak_hz(mono, 16000) - 500.0) < 2.0


def test_missing_files_and_silent_video_are_user_errors(tmp_path):
    with pytest.raises(DiffheadsError, match="not found"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(DiffheadsError, match="not found"):
        read_video(tmp_path / "nope.mp4")
    silent = tmp_path / "silent.mp4"
    write_video(silent, _smooth_clip(5, 32, 32))
    with pytest.raises(DiffheadsError, match="no audio stream"):
        load_audio(silent)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 10)
    with pytest.raises(DiffheadsError, match=str(garbage.name)):
        read_video(garbage)
    with pytest.raises(DiffheadsError, match=str(garbage.name)):
        load_audio(garbage)


def test_empty_audio_is_a_user_error(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0, np.float32), 16000)
    with pytest.raises(DiffheadsError, match="no samples"):
        load_audio(path)
