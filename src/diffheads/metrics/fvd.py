"""FVD: Frechet distance between I3D (Kinetics-400) logits of real and generated 16-frame clips.

Facts (StyleGAN-V src/metrics/frechet_video_distance.py and src/metrics/metric_utils.py, src/training/dataset.py;
Laughing-Matters src/models/components/modules/metrics.py):
- detector: torch.jit.load of i3d_torchscript.pt, .eval(); called as detector(x, rescale=True, resize=True,
  return_features=True) -> (B, 400) float32 raw logits before the softmax.
- x is (B, C, T, H, W), C = 3 RGB: StyleGAN-V permutes its (B, T, C, H, W) batches with permute(0, 2, 1, 3, 4).
- StyleGAN-V passes uint8 0..255: dataset clips are uint8 (asserted in VideoFramesFolderDataset.__getitem__), and
  generator output in [-1, 1] becomes (img * 127.5 + 128).clamp(0, 255).to(torch.uint8) before the detector;
  rescale=True lets the detector map 0..255 to its own input range. Laughing-Matters passes float 0..255
  (video * 255, unrounded); we pass uint8 as StyleGAN-V does.
- StyleGAN-V accumulates float64 sums of x and x x^T and returns cov = E[xx^T] - mu mu^T (over N, biased), then
  sqrtm(sigma_gen @ sigma_real) with disp=False and the real part of the trace. Laughing-Matters uses the same
  sums over N-1 (unbiased) and sqrtm(sigma_real @ sigma_fake), retrying with 1e-6*I when not finite.
- StyleGAN-V takes one clip of num_frames=16 consecutive frames per real video at a random offset and discards
  shorter videos; here every video gives all its non-overlapping 16-frame clips (deterministic, uses all frames).
"""

from __future__ import annotations

import warnings
from enum import Enum
from pathlib import Path

import numpy as np
import torch

from diffheads.errors import DiffheadsError
from diffheads.metrics.frechet import frechet_distance, gaussian_stats
from diffheads.metrics.weights import find_weights

# The kwargs StyleGAN-V passes: resize to 224, rescale 0..255 inside, logits before the softmax.
DETECTOR_KWARGS = {"rescale": True, "resize": True, "return_features": True}


class FVDVariant(str, Enum):
    """Which reference's covariance estimate (and product order) to reproduce."""

    STYLEGAN_V = "stylegan-v"  # biased covariance (N)
    LAUGHING_MATTERS = "laughing-matters"  # unbiased covariance (N-1)


def load_i3d(path: str | Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript I3D detector from i3d_torchscript.pt, in eval mode on `device`."""
    file = find_weights("i3d", path=path)
    try:
        with warnings.catch_warnings():
            # torch.jit.load is deprecated in favour of torch.export, but the detector is published only as TorchScript.
            warnings.simplefilter("ignore", FutureWarning)
            detector = torch.jit.load(str(file), map_location=torch.device(device))
    except (RuntimeError, ValueError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DiffheadsError(
            f"{file} is not a TorchScript archive ({first_line}); download i3d_torchscript.pt again"
        ) from err
    return detector.eval()


@torch.no_grad()
def i3d_features(
    detector: torch.nn.Module | torch.jit.ScriptModule,
    videos: np.ndarray,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """(B, 400) float64 I3D logits of uint8 clips (B, T, H, W, 3), fed as uint8 (B, 3, T, H, W) like StyleGAN-V."""
    clips = np.asarray(videos)
    if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
        raise DiffheadsError(f"videos must be uint8 (B, T, H, W, 3), got {clips.dtype} {clips.shape}")
    chunks = []
    for start in range(0, clips.shape[0], batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(clips[start : start + batch_size]))
        batch = batch.permute(0, 4, 1, 2, 3).contiguous().to(device)
        chunks.append(detector(batch, **DETECTOR_KWARGS).detach().to(torch.float64).cpu())
    if not chunks:
        return np.zeros((0, 400), dtype=np.float64)
    return torch.cat(chunks).numpy()


def video_clips(frames: np.ndarray, clip_len: int = 16, stride: int | None = None) -> list[np.ndarray]:
    """Clips of clip_len consecutive frames every stride frames (default: no overlap); a short tail is dropped."""
    if clip_len < 1 or (stride is not None and stride < 1):
        raise DiffheadsError(f"clip_len and stride must be positive, got clip_len={clip_len} stride={stride}")
    step = clip_len if stride is None else stride
    n_frames = len(frames)
    return [frames[start : start + clip_len] for start in range(0, n_frames - clip_len + 1, step)]


class FVDScorer:
    """Accumulates clips of real and generated videos and returns their FVD in the chosen reference's variant."""

    def __init__(
        self,
        weights_path: str | Path,
        variant: str | FVDVariant = FVDVariant.STYLEGAN_V,
        clip_len: int = 16,  # frames per clip; the references use 16
        device: str | torch.device = "cpu",
        batch_size: int = 8,  # clips per detector call
    ) -> None:
        try:
            self.variant = FVDVariant(variant)
        except ValueError:
            choices = ", ".join(v.value for v in FVDVariant)
            raise DiffheadsError(f"unknown FVD variant {variant!r}; choose one of: {choices}") from None
        self.clip_len = clip_len
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.detector = load_i3d(weights_path, self.device)
        self.features: dict[bool, list[np.ndarray]] = {True: [], False: []}

    def update(self, video_frames: np.ndarray, real: bool) -> int:
        """Add one uint8 video (T, H, W, 3) as its clips to the real or generated set; returns the clip count."""
        frames = np.asarray(video_frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise DiffheadsError(
                f"video must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}; "
                "convert floats with diffheads.metrics.fid.to_uint8"
            )
        clips = video_clips(frames, self.clip_len)
        if clips:
            self.features[real].append(i3d_features(self.detector, np.stack(clips), self.batch_size, self.device))
        return len(clips)

    def compute(self) -> dict:
        """{'fvd', 'variant', 'clip_len', 'n_real_clips', 'n_generated_clips'}; at least 2 clips per set."""
        real = np.concatenate(self.features[True]) if self.features[True] else np.zeros((0, 400))
        generated = np.concatenate(self.features[False]) if self.features[False] else np.zeros((0, 400))
        if len(real) < 2 or len(generated) < 2:
            raise DiffheadsError(
                f"FVD needs at least 2 clips of {self.clip_len} frames on each side, got {len(real)} real and "
                f"{len(generated)} generated (videos shorter than {self.clip_len} frames give no clip)"
            )
        unbiased = self.variant is FVDVariant.LAUGHING_MATTERS
        mu_real, sigma_real = gaussian_stats(real, unbiased=unbiased)
        mu_gen, sigma_gen = gaussian_stats(generated, unbiased=unbiased)
        # Each reference's own product order; Tr sqrtm(AB) = Tr sqrtm(BA), so only rounding differs.
        if unbiased:
            fvd = frechet_distance(mu_real, sigma_real, mu_gen, sigma_gen)
        else:
            fvd = frechet_distance(mu_gen, sigma_gen, mu_real, sigma_real)
        return {
            "fvd": fvd,
            "variant": self.variant.value,
            "clip_len": self.clip_len,
            "n_real_clips": len(real),
            "n_generated_clips": len(generated),
        }

    def reset(self) -> None:
        """Forget both sets."""
        self.features = {True: [], False: []}

    def take_features(self) -> dict[bool, list[np.ndarray]]:
        """The I3D features added since the last take (real: True, generated: False), removed from this scorer."""
        taken, self.features = self.features, {True: [], False: []}
        return taken

    def add_features(self, features: dict[bool, list[np.ndarray]]) -> None:
        """Add features that take_features returned (here or in another process), after those already held."""
        for real, arrays in features.items():
            self.features[real].extend(arrays)
