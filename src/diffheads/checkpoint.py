"""Checkpoints that rebuild their model: the resolved config travels with the weights (nanoGPT style).

Two kinds are accepted wherever `--checkpoint` is, told apart by their content, not their name:
  * an exported model (`save_model`, e.g. RUN/model.ckpt): a safetensors file whose metadata holds
    the config and the audio encoder as JSON. Reading it runs no code by construction.
  * a Lightning training checkpoint (`RUN/checkpoints/*.ckpt`, resumable): a torch file read with
    `torch.load(weights_only=True)`, which refuses anything but tensors and plain containers.
Older exported models (torch files with format "diffheads-model") load the same way.

A file that would need arbitrary unpickling (it can run any code while loading) is refused unless
the caller passes trust=True (`--trust-checkpoint` on the command line).
"""

from __future__ import annotations

import json
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from diffheads.config import RunConfig, from_dict, to_dict
from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_path
from diffheads.models.unet import UNet

FORMAT = "diffheads-model"
VERSION = 2  # 1: torch file with a "state_dict" entry; 2: safetensors with JSON metadata


@dataclass
class LoadedModel:
    """A network ready to sample, with the run config and audio encoder it was trained with."""

    unet: UNet
    cfg: RunConfig
    audio_encoder: dict[str, Any]


def save_model(path: str | Path, unet: torch.nn.Module, cfg: RunConfig, audio_encoder: dict[str, Any]) -> Path:
    """Write weights (safetensors) with the resolved config and encoder description in its metadata, atomically."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in unet.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "config": json.dumps(to_dict(cfg)),
        "audio_encoder": json.dumps(dict(audio_encoder)),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def is_safetensors(path: Path) -> bool:
    """True when the file starts like a safetensors file (8-byte header length, then a JSON object)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n < path.stat().st_size


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DiffheadsError(f"checkpoint {path} is unreadable or truncated ({str(exc)[:120]}); export it again") from None
    if meta.get("format") != FORMAT:
        raise DiffheadsError(
            f"{path} is a safetensors file without a diffheads config; reference weights need 'diffheads import-reference'"
        )
    try:
        return {
            "format": FORMAT,
            "config": json.loads(meta["config"]),
            "audio_encoder": json.loads(meta.get("audio_encoder", "{}")),
            "state_dict": tensors,
        }
    except (KeyError, json.JSONDecodeError) as exc:
        raise DiffheadsError(f"{path} has damaged metadata ({exc}); export it again") from None


def _refusal(path: Path, exc: Exception) -> DiffheadsError:
    """Why a weights-only load failed, and how to proceed."""
    detail = str(exc).splitlines()
    culprit = next((line.strip() for line in detail if "GLOBAL" in line or "Unsupported" in line), detail[0][:120])
    return DiffheadsError(
        f"checkpoint {path} needs arbitrary unpickling, which can run any code on this machine ({culprit[:120]}); "
        "refusing to load it. Load it only if you trust its source: pass --trust-checkpoint"
    )


def read_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """The contents of a checkpoint file as a dict; never runs code unless `trust`."""
    path = Path(path)
    if not path.is_file():
        raise DiffheadsError(f"checkpoint {path} not found; train one with 'diffheads train' or run 'make demo'")
    if path.stat().st_size == 0:
        raise DiffheadsError(f"checkpoint {path} is empty (0 bytes); export or copy it again")
    if is_safetensors(path):
        return _read_safetensors(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise DiffheadsError(f"checkpoint {path} is unreadable or truncated ({type(exc).__name__}); copy or export it again") from None
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


def load_model(path: str | Path, device: str | torch.device = "cpu", trust: bool = False) -> LoadedModel:
    """Rebuild the UNet from the config stored in `path` and load its weights strictly."""
    path = Path(path)
    cfg_dict, encoder, state_dict = _unpack(read_checkpoint(path, trust), path)
    cfg = from_dict(cfg_dict, source=f"{path} (stored config)")
    unet = UNet(cfg.model)
    try:
        unet.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(exc)
        raise DiffheadsError(f"weights in {path} do not fit the stored config: {first[:200]}") from None
    return LoadedModel(unet.to(device).eval(), cfg, encoder)


def export_model(checkpoint: str | Path, out: str | Path, trust: bool = False) -> Path:
    """Write the sampling weights (EMA when present) of any checkpoint as an exported model file."""
    model = load_model(checkpoint, "cpu", trust)
    return save_model(out, model.unet, model.cfg, model.audio_encoder)
