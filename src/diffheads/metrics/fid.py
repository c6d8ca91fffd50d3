"""FID: torchmetrics' FrechetInceptionDistance on torch-fidelity's InceptionV3, loaded from a local weights file.

Facts (torchmetrics 1.9.0 image/fid.py, torch-fidelity 0.4.0 feature_extractor_inceptionv3.py):
- FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=P) builds NoTrainInceptionV3, a subclass of
  torch-fidelity's FeatureExtractorInceptionV3, passing P through; with P set that constructor does
  torch.load(P, weights_only=False) + load_state_dict(strict) and never calls load_state_dict_from_url.
- The file is a plain dict of float32 tensors (conv weights, BN weight/bias/running_mean/running_var, fc) saved with
  torch.save (torch-fidelity utils/util_convert_inception_weights.py).
- Input uint8 (N, 3, H, W); inside: float, resize to 299, (x - 128) / 128; 2048-d pool features, accumulated in
  float64; covariance over N-1; distance Tr via eigvals(s1 s2).sqrt().real, result cast back to float32.
- torchmetrics 1.9 resizes with torch's antialiased bilinear by default (antialias=True); torch-fidelity and the
  original TF FID use TF1-style bilinear without antialiasing, so we pass antialias=False by default.
- update(normalize=True) computes (x * 255).byte(), which truncates; to_uint8 rounds instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffheads.errors import DiffheadsError
from diffheads.metrics.weights import find_weights

FEATURE_DIM = 2048


def to_uint8(frames: np.ndarray | torch.Tensor, value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Frames (..., H, W, 3) as uint8: uint8 passes through, floats map value_range to 0..255 rounded half up."""
    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    if x.dtype == torch.uint8:
        if value_range not in (None, (0, 255)):
            raise DiffheadsError(f"uint8 frames are already 0..255; value_range={value_range} does not apply")
        return x
    if not x.is_floating_point():
        raise DiffheadsError(f"frames must be uint8 or float, got {x.dtype}")
    if value_range is None:
        raise DiffheadsError("float frames need value_range=(0, 1) or (-1, 1) to say how they map to 0..255")
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise DiffheadsError(f"value_range must be (low, high) with high > low, got {value_range}")
    # float64 keeps x*255 exact enough that rounding, not float32 error, decides each level.
    scaled = (x.detach().to(torch.float64) - lo) * (255.0 / (hi - lo))
    # Half up, as StyleGAN's (x * 127.5 + 128).clamp(0, 255).to(uint8) does for [-1, 1].
    return torch.floor(scaled.clamp(0.0, 255.0) + 0.5).to(torch.uint8)


def _as_nchw(frames: np.ndarray | torch.Tensor, value_range: tuple[float, float] | None) -> torch.Tensor:
    """(N, H, W, 3) frames as the (N, 3, H, W) uint8 batch the Inception network expects."""
    x = to_uint8(frames, value_range)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise DiffheadsError(f"frames must be (N, H, W, 3) RGB, got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).contiguous()


class FIDScorer:
    """Accumulates real and generated frames and returns their FID (torchmetrics, feature=2048)."""

    def __init__(
        self,
        weights_path: str | Path,
        device: str | torch.device = "cpu",
        batch_size: int = 32,  # frames per Inception forward
        antialias: bool = False,  # True reproduces torchmetrics' default resize instead of TF1 bilinear
    ) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance  # slow import, only when scoring

        path = find_weights("inception", path=weights_path)
        try:
            # torch-fidelity unpickles the file without restrictions; a tensors-only load first means nothing
            # but tensors is ever unpickled (the published file is a plain state dict)
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure means: not the published file
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DiffheadsError(
                f"{path} is not a torch-fidelity InceptionV3 state dict of plain tensors ({first_line[:120]}); "
                "download weights-inception-2015-12-05-6726825d.pth again"
            ) from None
        try:
            metric = FrechetInceptionDistance(
                feature=FEATURE_DIM,
                feature_extractor_weights_path=str(path),
                antialias=antialias,
                normalize=False,
                sync_on_compute=False,  # processes merge their statistics explicitly (merge), never inside compute
            )
        except Exception as err:  # torch.load / load_state_dict failures name no file
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DiffheadsError(
                f"{path} is not a torch-fidelity InceptionV3 state dict ({first_line}); "
                "download weights-inception-2015-12-05-6726825d.pth again"
            ) from err
        self.device = torch.device(device)
        self.metric = metric.to(self.device)
        self.batch_size = batch_size
        self.weights_path = path

    def update(
        self, frames: np.ndarray | torch.Tensor, real: bool, value_range: tuple[float, float] | None = None
    ) -> None:
        """Add frames (N, H, W, 3): uint8, or float with value_range (0, 1) or (-1, 1), to the real or generated set."""
        batch = _as_nchw(frames, value_range)
        for start in range(0, batch.shape[0], self.batch_size):
            self.metric.update(batch[start : start + self.batch_size].to(self.device), real=real)

    def compute(self) -> dict:
        """{'fid', 'n_real', 'n_generated'}; at least 2 frames per set."""
        n_real = int(self.metric.real_features_num_samples)
        n_generated = int(self.metric.fake_features_num_samples)
        if n_real < 2 or n_generated < 2:
            raise DiffheadsError(
                f"FID needs at least 2 real and 2 generated frames, got {n_real} real and {n_generated} generated"
            )
        return {"fid": float(self.metric.compute()), "n_real": n_real, "n_generated": n_generated}

    def reset(self) -> None:
        """Forget both sets."""
        self.metric.reset()

    def statistics(self) -> dict[str, torch.Tensor]:
        """CPU copies of what the scorer accumulated: float64 feature sums, sums of x x^T, and frame counts."""
        return {name: value.detach().cpu().clone() for name, value in self.metric.metric_state.items()}

    def merge(self, statistics: dict[str, torch.Tensor]) -> None:
        """Add another scorer's statistics() to this one's, as if this scorer had seen those frames too."""
        self.metric.merge_state({name: value.to(self.device) for name, value in statistics.items()})


@torch.no_grad()
def inception_features(
    scorer: FIDScorer, frames: np.ndarray | torch.Tensor, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """The (N, 2048) float64 pool features the scorer accumulates for these frames."""
    batch = _as_nchw(frames, value_range)
    chunks = [
        scorer.metric.inception(batch[start : start + scorer.batch_size].to(scorer.device)).double().cpu()
        for start in range(0, batch.shape[0], scorer.batch_size)
    ]
    return torch.cat(chunks).numpy()
