"""The default log-mel encoder: filterbank placement, frequency and time alignment per video frame."""

from __future__ import annotations

import numpy as np
import torch

from diffheads.audio.encoders import LogMelEncoder, build_encoder, mel_filterbank
from diffheads.audio.frames import frames_in_audio

SR = 16000


def test_filterbank_peaks_at_mel_spaced_centres():
    n_mels, n_fft = 20, 512
    fb = mel_filterbank(n_mels, n_fft, SR, 60.0, 7600.0).numpy()
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    inv = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    centres = inv(np.linspace(mel(60.0), mel(7600.0), n_mels + 2))[1:-1]
    bin_hz = SR / n_fft
    peaks = fb.argmax(axis=1) * bin_hz
    assert np.all(np.abs(peaks - centres) <= bin_hz)
    assert np.all(fb >= 0) and np.all(np.diff(peaks) > 0)


def test_sine_lands_in_its_band_and_shapes_are_per_frame():
    enc = LogMelEncoder(n_mels=40)
    t = np.arange(int(2.0 * SR)) / SR
    audio = 0.5 * np.sin(2 * np.pi * 1000.0 * t).astype(np.float32)
    n = frames_in_audio(len(audio))
    emb = enc.encode(audio, n)
    assert n == 50 and emb.shape == (50, enc.dim) and enc.dim == 5 * 40
    per_band = emb.view(n, 5, 40).mean(dim=(0, 1)).numpy()
    fb = mel_filterbank(40, 512, SR, enc.f_min, enc.f_max).numpy()
    want = int(np.argmax(fb[:, int(round(1000 / (SR / 512)))]))
    assert abs(int(np.argmax(per_band)) - want) <= 1


def test_burst_is_centred_on_its_video_frame():
    """Noise only during frame 10 (samples 6400..7040): row 10 is loudest, in its middle slot."""
    enc = LogMelEncoder(n_mels=20)
    rng = np.random.default_rng(0)
    audio = np.zeros(SR, dtype=np.float32)
    audio[6400:7040] = rng.standard_normal(640).astype(np.float32) * 0.3
    emb = enc.encode(audio, 25).view(25, 5, 20).mean(dim=2)  # (rows, slots)
    row_energy = emb.max(dim=1).values
    assert int(torch.argmax(emb[:, 2])) == 10
    assert row_energy[10] > row_energy[0] + 0.5 and row_energy[10] > row_energy[20] + 0.5
    assert int(torch.argmax(emb[10])) == 2


def test_describe_rebuilds_same_encoder():
    enc = LogMelEncoder(n_mels=16, n_slots=3)
    again = build_encoder(enc.describe())
    audio = np.random.default_rng(1).standard_normal(8000).astype(np.float32)
    assert torch.equal(enc.encode(audio, 12), again.encode(audio, 12))


def _one_shot_log_mel(audio: np.ndarray) -> torch.Tensor:
    """The compressed log-mel spectrogram from one torch.stft over the whole signal (independent of the chunking)."""
    wav = torch.from_numpy(audio)
    spec = torch.stft(wav, 512, 160, 400, torch.hann_window(400), center=True, return_complex=True).abs() ** 2
    mel = torch.log10((mel_filterbank(40, 512, 16000, 60.0, 7600.0) @ spec).clamp(min=1e-10))
    return (torch.maximum(mel, mel.max() - 8.0) + 4.0) / 4.0


def test_chunked_log_mel_equals_one_pass(monkeypatch):
    """Long audio is transformed in chunks (flat memory); the result is the one-pass spectrogram.

    Chunks of a few frames can change the matrix product's summation order by an ulp (here the two
    agree bit for bit at the real chunk size of 30 s, but BLAS kernels differ between CPUs).
    """
    audio = (np.random.default_rng(3).standard_normal(16000 * 2 + 333) * 0.1).astype(np.float32)
    monkeypatch.setattr(LogMelEncoder, "CHUNK_FRAMES", 7)  # many chunk edges, none aligned with anything
    enc = LogMelEncoder()
    assert (enc.log_mel(audio) - _one_shot_log_mel(audio)).abs().max() < 1e-6
    n = frames_in_audio(len(audio))
    chunked = enc.encode(audio, n)
    monkeypatch.setattr(LogMelEncoder, "CHUNK_FRAMES", 10**9)
    assert (chunked - enc.encode(audio, n)).abs().max() < 1e-6
    monkeypatch.undo()
    long = (np.random.default_rng(4).standard_normal(16000 * 75) * 0.1).astype(np.float32)
    assert (LogMelEncoder().log_mel(long) - _one_shot_log_mel(long)).abs().max() < 1e-6
