"""The clock every audio encoder shares: 16 kHz audio, 25 fps video, and rows fitted to a frame count."""

from __future__ import annotations

import torch

SAMPLE_RATE = 16000
FPS = 25


def frames_in_audio(n_samples: int, sample_rate: int = SAMPLE_RATE, fps: float = FPS) -> int:
    """Video frames for this much audio, rounding half a frame up (at least 1)."""
    return max(1, int(n_samples * fps / sample_rate + 0.5))


def fit_rows(rows: torch.Tensor, n_frames: int) -> torch.Tensor:
    """The first `n_frames` rows of a non-empty (n, dim) tensor, repeating the last row when there are too few."""
    if rows.shape[0] >= n_frames:
        return rows[:n_frames].contiguous()
    pad = rows[-1:].expand(n_frames - rows.shape[0], rows.shape[1])
    return torch.cat([rows, pad]).contiguous()
