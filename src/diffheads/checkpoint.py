"""Checkpoints that rebuild their model: the resolved config travels with the weights (nanoGPT style).

Two files are accepted wherever `--checkpoint` is: a Lightning training checkpoint (`*.ckpt` from
`diffheads train`, resumable) and an exported model file (`save_model`), both read with
`torch.load(weights_only=True)`, so loading never runs code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffheads.config import RunConfig, from_dict, to_dict
from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_path
from diffheads.models.unet import UNet

FORMAT = "diffheads-model"


@dataclass
class LoadedModel:
    """A network ready to sample, with the run config and audio encoder it was trained with."""

    unet: UNet
    cfg: RunConfig
    audio_encoder: dict[str, Any]


def save_model(path: str | Path, unet: torch.nn.Module, cfg: RunConfig, audio_encoder: dict[str, Any]) -> Path:
    """Write weights + resolved config + encoder description as one weights-only torch file."""
    payload = {
        "format": FORMAT,
        "version": 1,
        "config": to_dict(cfg),
        "audio_encoder": dict(audio_encoder),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DiffheadsError(f"checkpoint {path} not found; train one with 'diffheads train' or run 'make demo'")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DiffheadsError(
            f"checkpoint {path} needs arbitrary unpickling ({str(exc).splitlines()[0][:120]}); refusing to load it"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise DiffheadsError(f"checkpoint {path} is unreadable or truncated ({type(exc).__name__}); re-export it") from None
    if not isinstance(data, dict):
        raise DiffheadsError(f"{path} is not a diffheads checkpoint (top level is {type(data).__name__})")
    return data


def _unpack(data: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, encoder dict, UNet state dict) of either checkpoint kind."""
    if data.get("format") == FORMAT:
        return data["config"], data.get("audio_encoder", {}), data["state_dict"]
    hp = data.get("hyper_parameters", {})
    if "config" in hp and "state_dict" in data:
        sd = data["state_dict"]
        prefix = "ema_unet." if any(k.startswith("ema_unet.") for k in sd) else "unet."
        unet_sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        return hp["config"], hp.get("audio_encoder", {}), unet_sd
    raise DiffheadsError(
        f"{path} is not a diffheads checkpoint (no config inside); reference checkpoints need 'diffheads import-reference'"
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the UNet from the config stored in `path` and load its weights strictly."""
    path = Path(path)
    cfg_dict, encoder, state_dict = _unpack(_read(path), path)
    cfg = from_dict(cfg_dict, source=f"{path} (stored config)")
    unet = UNet(cfg.model)
    try:
        unet.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise DiffheadsError(f"weights in {path} do not fit the stored config: {first[:200]}") from None
    return LoadedModel(unet.to(device).eval(), cfg, encoder)
