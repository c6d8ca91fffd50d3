"""Frame fidelity against the real video: PSNR and SSIM (torchmetrics), averaged over frames."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from diffheads.errors import DiffheadsError

DATA_RANGE = 255.0
SSIM_KERNEL, SSIM_SIGMA = 11, 1.5  # torchmetrics' defaults, the Gaussian window of Wang et al. (2004)
CHUNK = 16  # frames per SSIM call: its Gaussian filtering holds several copies of the batch


def _pair(generated: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both videos as uint8 (T, H, W, 3) arrays of one shape, else a DiffheadsError naming the shapes."""
    generated, real = np.asarray(generated), np.asarray(real)
    if generated.shape != real.shape:
        # matching lengths (trimming, frame-rate conversion) is the caller's decision, not ours
        raise DiffheadsError(f"generated video has shape {generated.shape} but the real one has {real.shape}")
    if generated.ndim != 4 or generated.shape[-1] != 3 or len(generated) == 0:
        raise DiffheadsError(f"videos must be non-empty (T, H, W, 3) RGB arrays, got shape {generated.shape}")
    for name, video in (("generated", generated), ("real", real)):
        if video.dtype != np.uint8:
            raise DiffheadsError(f"the {name} video must be uint8 (0..255), got {video.dtype}")
    return generated, real


def _per_frame(
    generated: np.ndarray,
    real: np.ndarray,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    dtype: torch.dtype = torch.float64,
) -> np.ndarray:
    """score(preds, target) -> (N,) applied to chunks of (N, 3, H, W) frames in 0..255."""
    out = []
    for lo in range(0, len(generated), CHUNK):
        a = torch.from_numpy(generated[lo : lo + CHUNK]).permute(0, 3, 1, 2).to(dtype)
        b = torch.from_numpy(real[lo : lo + CHUNK]).permute(0, 3, 1, 2).to(dtype)
        out.append(score(a, b).reshape(-1).numpy())
    return np.concatenate(out)


def psnr(generated: np.ndarray, real: np.ndarray) -> float:
    """Mean over frames of per-frame PSNR (dB, data range 255); inf when some frame is identical (MSE 0)."""
    generated, real = _pair(generated, real)
    values = _per_frame(
        generated,
        real,
        lambda a, b: peak_signal_noise_ratio(a, b, data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3)),
    )
    return float(np.mean(values))


def ssim(generated: np.ndarray, real: np.ndarray) -> float:
    """Mean over frames of per-frame SSIM (Gaussian kernel 11, sigma 1.5, data range 255, over all 3 channels)."""
    generated, real = _pair(generated, real)
    if min(generated.shape[1:3]) < SSIM_KERNEL:
        raise DiffheadsError(
            f"SSIM needs frames of at least {SSIM_KERNEL} x {SSIM_KERNEL} pixels, got shape {generated.shape}"
        )
    values = _per_frame(
        generated,
        real,
        lambda a, b: structural_similarity_index_measure(
            a, b, kernel_size=SSIM_KERNEL, sigma=SSIM_SIGMA, data_range=DATA_RANGE, reduction="none"
        ),
        torch.float32,  # 13x faster than float64 on CPU; SSIM differs by ~1e-7
    )
    return float(np.mean(values))
