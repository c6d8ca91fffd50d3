"""Speech-like audio (syllables, consonant noise, pauses) with the mouth track that matches it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (F1, F2, F3) in Hz of a typical adult voice, and how far each vowel opens the mouth and spreads the lips
VOWELS = ("a", "e", "i", "o", "u")
FORMANTS = np.array(
    [[730, 1090, 2440], [530, 1840, 2480], [290, 2250, 3000], [570, 840, 2410], [320, 870, 2240]], float
)
BANDWIDTHS = np.array([90.0, 110.0, 170.0])
VOWEL_OPENING = np.array([1.0, 0.75, 0.5, 0.8, 0.55])
VOWEL_WIDTH = np.array([0.6, 0.8, 0.95, 0.3, 0.15])
NEUTRAL_WIDTH = 0.5
CONSONANT_OPENING = 0.12
# noise bands (centre Hz, half-width Hz) of consonant families: s, sh, f/th, plosive burst
CONSONANT_BANDS = np.array([[5500, 1500], [3000, 900], [3500, 3000], [1800, 1300]], float)
SMOOTHING = np.array([0.25, 0.5, 0.25])


@dataclass(frozen=True)
class Voice:
    """A speaker: mean pitch (Hz) and a formant scale (shorter vocal tracts resonate higher)."""

    pitch_hz: float
    formant_scale: float


@dataclass(frozen=True)
class Speech:
    """Audio and its per-video-frame track; `vowel` is an index into VOWELS or -1."""

    audio: np.ndarray  # (n_samples,) float32 in [-1, 1]
    loudness: np.ndarray  # (T,) frame RMS normalised to 0..1
    vowel: np.ndarray  # (T,) int
    mouth_open: np.ndarray  # (T,) 0..1
    mouth_width: np.ndarray  # (T,) 0..1


def sample_voice(rng: np.random.Generator) -> Voice:
    """A random speaker with mean pitch 95..220 Hz (low and high voices alike)."""
    pitch = float(np.exp(rng.uniform(np.log(95.0), np.log(220.0))))
    scale = 1.0 + 0.15 * (pitch - 95.0) / 125.0 + rng.uniform(-0.03, 0.03)
    return Voice(pitch, scale)


def _pitch_contour(rng: np.random.Generator, voice: Voice, n: int, sample_rate: int) -> np.ndarray:
    """Smooth f0 per sample: slow random wander and a falling declination, kept in 85..260 Hz."""
    t = np.arange(n) / sample_rate
    depth, rate, phase = rng.uniform(0.03, 0.08, 3), rng.uniform(0.3, 2.5, 3), rng.uniform(0, 2 * np.pi, 3)
    wander = depth @ np.sin(2 * np.pi * rate[:, None] * t + phase[:, None])
    declination = -0.08 * (t / max(t[-1], 1e-6))
    return np.clip(voice.pitch_hz * np.exp(wander + declination), 85.0, 260.0)


def _plan(rng: np.random.Generator, n: int, sample_rate: int) -> list[tuple[str, int, int, int]]:
    """Segments (kind, start, length, class) covering n samples: 'pause', 'cons' (class = band) or 'vowel'."""
    ms = sample_rate // 1000
    segments, pos = [], 0
    # leading pause so that clips start with a closed mouth, as real recordings do
    length = int(rng.uniform(80, 300)) * ms
    segments.append(("pause", pos, length, -1))
    pos += length
    while pos < n:
        if rng.random() < 0.65:
            band = int(rng.integers(len(CONSONANT_BANDS)))
            if band == 3:  # plosive: closure silence, then a short burst
                closure = int(rng.uniform(30, 70)) * ms
                segments.append(("pause", pos, closure, -1))
                pos += closure
                length = int(rng.uniform(15, 35)) * ms
            else:
                length = int(rng.uniform(50, 130)) * ms
            segments.append(("cons", pos, length, band))
            pos += length
        length = int(rng.uniform(110, 320)) * ms
        segments.append(("vowel", pos, length, int(rng.integers(len(VOWELS)))))
        pos += length
        if rng.random() < 0.3:
            length = int(rng.uniform(120, 450)) * ms
            segments.append(("pause", pos, length, -1))
            pos += length
    return [(kind, start, min(length, n - start), cls) for kind, start, length, cls in segments if start < n]


def _envelope(length: int, attack: float, release: float) -> np.ndarray:
    """Raised-cosine attack and release over `length` samples (fractions of the length), 1 between."""
    x = (np.arange(length) + 0.5) / length
    rise = np.clip(x / attack, 0, 1)
    fall = np.clip((1 - x) / release, 0, 1)
    return (0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))).astype(np.float64)


def _vowel(f0: np.ndarray, phase: np.ndarray, formants: np.ndarray, sample_rate: int) -> np.ndarray:
    """Unit-RMS voiced sound: sawtooth harmonics weighted by a cascade of formant resonances."""
    mean_f0 = float(f0.mean())
    k = np.arange(1, int(min(5000.0, 0.45 * sample_rate) / mean_f0) + 1)
    f = k * mean_f0
    # magnitude of a cascade of 2-pole resonators at each harmonic, on a 1/k (sawtooth) source
    centre, width = formants[:, None], BANDWIDTHS[:, None]
    gain = np.prod(centre**2 / np.sqrt((centre**2 - f**2) ** 2 + (width * f) ** 2), axis=0)
    amp = gain / k
    amp /= np.sqrt(0.5 * np.sum(amp**2))
    return amp @ np.sin(np.outer(k, phase))


def _consonant(rng: np.random.Generator, length: int, band: int, sample_rate: int) -> np.ndarray:
    """Unit-RMS band-limited noise (shaped in the frequency domain)."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length, 1.0 / sample_rate)
    centre, half = CONSONANT_BANDS[band]
    spectrum *= np.exp(-0.5 * ((freqs - centre) / half) ** 2)
    noise = np.fft.irfft(spectrum, length)
    return noise / max(np.sqrt(np.mean(noise**2)), 1e-9)


def _smooth(x: np.ndarray) -> np.ndarray:
    """Short symmetric smoothing over about two frames (edges repeat)."""
    padded = np.pad(x, 1, mode="edge")
    return np.convolve(padded, SMOOTHING, mode="valid")


def synth_speech(
    rng: np.random.Generator,
    voice: Voice,
    seconds: float = 4.0,
    sample_rate: int = 16000,
    fps: float = 25,
) -> Speech:
    """Speech-like audio of `seconds` (rounded to whole video frames) and its per-frame mouth track."""
    spf = sample_rate / fps
    if spf != int(spf):
        raise ValueError(f"sample_rate / fps must be a whole number of samples, got {spf}")
    spf = int(spf)
    n_frames = max(1, round(seconds * fps))
    n = n_frames * spf
    f0 = _pitch_contour(rng, voice, n, sample_rate)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    audio = np.zeros(n)
    voiced_amp = np.zeros(n)  # RMS amplitude of the voiced sound at each sample: what opens the jaw
    consonant = np.zeros(n)
    vowel_of = np.full(n, -1)
    width_of = np.zeros(n)
    for kind, start, length, cls in _plan(rng, n, sample_rate):
        span = slice(start, start + length)
        if kind == "vowel":
            stress = rng.uniform(0.6, 1.0)
            env = stress * VOWEL_OPENING[cls] * _envelope(length, rng.uniform(0.15, 0.3), rng.uniform(0.25, 0.45))
            wave = _vowel(f0[span], phase[span], FORMANTS[cls] * voice.formant_scale, sample_rate)
            breath = 0.03 * rng.standard_normal(length)
            audio[span] += env * (wave + breath)
            voiced_amp[span] = env
            vowel_of[span] = cls
            width_of[span] = VOWEL_WIDTH[cls]
        elif kind == "cons":
            level = rng.uniform(0.08, 0.2) if cls != 3 else rng.uniform(0.2, 0.35)
            env = level * _envelope(length, 0.1 if cls == 3 else 0.3, 0.5 if cls == 3 else 0.3)
            audio[span] += env * _consonant(rng, length, cls, sample_rate)
            consonant[span] = 1.0
    audio += 1e-3 * rng.standard_normal(n)  # room noise floor
    audio *= 0.7 / max(np.abs(audio).max(), 1e-9)

    frames = audio.reshape(n_frames, spf)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loudness = rms / max(rms.max(), 1e-9)
    voiced_rms = np.sqrt(np.mean(voiced_amp.reshape(n_frames, spf) ** 2, axis=1))
    opening = voiced_rms / max(voiced_rms.max(), 1e-9)
    opening = np.maximum(opening, CONSONANT_OPENING * consonant.reshape(n_frames, spf).mean(axis=1))
    spread = np.where(vowel_of >= 0, width_of - NEUTRAL_WIDTH, 0.0)
    width = NEUTRAL_WIDTH + spread.reshape(n_frames, spf).mean(axis=1)
    vowel = vowel_of[spf // 2 :: spf]  # the vowel sounding at the middle of each frame
    return Speech(
        audio=audio.astype(np.float32),
        loudness=loudness.astype(np.float32),
        vowel=vowel.astype(np.int64),
        mouth_open=np.clip(_smooth(opening), 0, 1).astype(np.float32),
        mouth_width=np.clip(_smooth(width), 0, 1).astype(np.float32),
    )
