"""MFCC features exactly as python_speech_features.mfcc computes them with its defaults (numpy only)."""

from __future__ import annotations

import decimal
import math

import numpy as np

WINLEN = 0.025  # seconds per analysis frame
WINSTEP = 0.01  # seconds between frame starts
NUMCEP = 13
NFILT = 26
NFFT = 512
PREEMPH = 0.97
CEPLIFTER = 22


def _round_half_up(x: float) -> int:
    """Round half away from zero on the exact binary value, as python_speech_features' sigproc does."""
    return int(decimal.Decimal(x).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def _frames(signal: np.ndarray, frame_len: int, frame_step: int) -> np.ndarray:
    """(n_frames, frame_len) frames, the last ones zero padded; one frame when the signal is not longer than a frame."""
    n = len(signal)
    n_frames = 1 if n <= frame_len else 1 + math.ceil((n - frame_len) / frame_step)
    padded = np.zeros((n_frames - 1) * frame_step + frame_len, dtype=np.float64)
    padded[:n] = signal
    starts = np.arange(n_frames)[:, None] * frame_step
    return padded[starts + np.arange(frame_len)[None, :]]


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray | float:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel: np.ndarray | float) -> np.ndarray | float:
    """Inverse of _hz_to_mel."""
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, nfilt: int = NFILT, nfft: int = NFFT) -> np.ndarray:
    """(nfilt, nfft//2 + 1) triangular filters on FFT bins floor((nfft+1) * hz / sr), 0 Hz to sr/2."""
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel_to_hz(mels) / sample_rate)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    k = np.arange(nfft // 2 + 1, dtype=np.float64)
    for j in range(nfilt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        # Half-open ranges [lo, mid) and [mid, hi): the peak bin belongs to the falling edge, and a
        # zero-width edge (lo == mid at low frequencies) contributes nothing instead of dividing by zero.
        rising = (k >= lo) & (k < mid)
        falling = (k >= mid) & (k < hi)
        if mid > lo:
            bank[j, rising] = (k[rising] - lo) / (mid - lo)
        if hi > mid:
            bank[j, falling] = (hi - k[falling]) / (hi - mid)
    return bank


def _dct2_ortho(x: np.ndarray, n_out: int) -> np.ndarray:
    """First n_out coefficients of the orthonormal DCT-II along the last axis."""
    n = x.shape[-1]
    k = np.arange(n_out)[:, None]
    basis = np.cos(np.pi * k * (2 * np.arange(n)[None, :] + 1) / (2 * n))
    scale = np.full(n_out, math.sqrt(2.0 / n))
    scale[0] = math.sqrt(1.0 / n)
    return (x @ basis.T) * scale


def mfcc(signal: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """(n_frames, 13) MFCCs of a mono signal, matching python_speech_features.mfcc(signal, sample_rate)."""
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"mfcc needs a non-empty mono signal, got shape {x.shape}")
    emphasised = np.concatenate([x[:1], x[1:] - PREEMPH * x[:-1]])
    frame_len = _round_half_up(WINLEN * sample_rate)
    frame_step = _round_half_up(WINSTEP * sample_rate)
    frames = _frames(emphasised, frame_len, frame_step)
    power = np.square(np.abs(np.fft.rfft(frames, NFFT))) / NFFT
    eps = np.finfo(np.float64).eps
    # Only exact zeros are replaced (spectra are non-negative), as the reference does before the logs.
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, eps, energy)
    feat = power @ mel_filterbank(sample_rate).T
    feat = np.where(feat == 0, eps, feat)
    cep = _dct2_ortho(np.log(feat), NUMCEP)
    cep *= 1.0 + (CEPLIFTER / 2.0) * np.sin(np.pi * np.arange(NUMCEP) / CEPLIFTER)
    cep[:, 0] = np.log(energy)
    return cep
