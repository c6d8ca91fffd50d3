"""Randomly initialised stand-ins for the published metric weights, saved in the published formats."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from diffheads.metrics.syncnet import SyncNet


def random_inception_state_dict() -> dict[str, torch.Tensor]:
    """torch-fidelity's InceptionV3 with random weights, as the published file stores it."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    class RandomInception(tfi.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the random initialisation; the constructor would load published weights here

    with pytest.MonkeyPatch.context() as mp, torch.random.fork_rng():
        mp.setattr(tfi, "load_state_dict_from_url", lambda *args, **kwargs: {})
        model = RandomInception("inception-v3-compat", ["2048"])
    g = torch.Generator().manual_seed(0)
    for module in model.modules():
        # He init keeps activations O(1) through ~20 conv layers; PyTorch's default shrinks them to ~1e-8.
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=g)
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.8, 1.2, generator=g)
            module.bias.data.uniform_(-0.1, 0.1, generator=g)
            module.running_mean.uniform_(-0.1, 0.1, generator=g)
            module.running_var.uniform_(0.5, 1.5, generator=g)
        elif isinstance(module, torch.nn.Linear):
            module.weight.data.normal_(0.0, 0.02, generator=g)
            module.bias.data.zero_()
    # The converted TF checkpoint holds weight/bias/running stats only, no num_batches_tracked, all float32 on CPU.
    state = model.state_dict()
    return {k: v.detach().float().cpu().clone() for k, v in state.items() if "num_batches_tracked" not in k}


def write_inception(path: Path) -> Path:
    """The random InceptionV3 under torch-fidelity's format (torch.save of a plain state dict)."""
    torch.save(random_inception_state_dict(), path)
    return path


class PooledI3D(torch.nn.Module):
    """Stand-in for i3d_torchscript.pt: same call signature, (B, 400) features from pooled pixels."""

    def __init__(self, clip_len: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.clip_len = clip_len
        self.register_buffer("proj", torch.randn(2 * 3 * clip_len, 400, generator=g) * 0.5)
        self.register_buffer("shift", torch.randn(400, generator=g))

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        # Refuse anything but what StyleGAN-V passes: uint8 (B, 3, T, H, W) and all three flags set.
        if x.dtype != torch.uint8:
            raise RuntimeError("expected uint8 input")
        if x.dim() != 5 or x.size(1) != 3 or x.size(2) != self.clip_len:
            raise RuntimeError("expected (B, 3, T, H, W)")
        if not (rescale and resize and return_features):
            raise RuntimeError("expected rescale=True, resize=True, return_features=True")
        v = x.float() / 255.0 * 2.0 - 1.0
        rows = torch.arange(x.size(3), dtype=torch.float32, device=x.device) / x.size(3)
        mean = v.mean(dim=(3, 4)).flatten(1)  # (B, 3*T), channel-major
        row_weighted = (v * rows.view(1, 1, 1, -1, 1)).mean(dim=(3, 4)).flatten(1)
        return torch.tanh(torch.cat([mean, row_weighted], dim=1) @ self.proj + self.shift)


def write_i3d(path: Path, clip_len: int = 16) -> Path:
    """The stand-in detector, scripted and saved as TorchScript."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but is the published format
        torch.jit.script(PooledI3D(clip_len)).save(str(path))
    return path


def random_syncnet() -> SyncNet:
    """A SyncNet with random parameters and random BatchNorm statistics."""
    torch.manual_seed(0)
    model = SyncNet()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.normal_(0.0, 0.1)
            elif name.endswith("weight") and tensor.ndim == 1:
                tensor.uniform_(0.5, 1.5)
            else:
                fan_in = tensor[0].numel()
                tensor.normal_(0.0, math.sqrt(2.0 / fan_in))
    return model.eval()


def write_syncnet(path: Path) -> Path:
    """A random SyncNet saved as the reference saves syncnet_v2.model (a plain state dict)."""
    torch.save(random_syncnet().state_dict(), path)
    return path
