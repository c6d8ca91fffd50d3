"""`diffheads import-reference`: the authors' UNet (TorchScript release or training-branch checkpoint) as our model file.

The reference network's state_dict keys and shapes equal ours (tests/test_unet.py), so importing
is: find the network's tensors in the file, infer the configuration from their shapes, load them
strictly into our UNet and export a safetensors model file with that configuration.

What the shapes decide: model_channels, channel_mult, num_res_blocks, the levels with attention,
out_channels, motion channels per frame (grayscale or RGB) and the audio window's width. What they
cannot decide is given as options with the reference's values as defaults: image_size (128),
n_motion_frames (2), n_audio_motion_embs k (2; the audio embedding width is then the window's
width / (2k + 1)) and num_head_channels (64).
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffheads.checkpoint import read_checkpoint, save_model
from diffheads.config import ModelConfig, RunConfig, to_dict
from diffheads.errors import DiffheadsError
from diffheads.models.unet import UNet

NETWORK_PREFIXES = ("unet.", "diffusion.nn_backbone.", "nn_backbone.", "model.")
FIRST_CONV = "input_blocks.0.0.weight"


@dataclass(frozen=True)
class ReferenceOptions:
    """What the weights cannot tell; the defaults are the paper's CREMA / LRW settings."""

    image_size: int = 128
    n_motion_frames: int = 2
    n_audio_motion_embs: int = 2
    num_head_channels: int = 64


def is_torchscript(path: Path) -> bool:
    """A zip archive with TorchScript code inside (torch.jit.save), as opposed to a torch.save file."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name or name.endswith("constants.pkl") for name in z.namelist())


def network_tensors(state: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The UNet's tensors of a state dict, under whatever prefix the file uses.

    The training branch's Lightning checkpoints hold the network twice (`unet.` and
    `diffusion.nn_backbone.`); the first known prefix wins, else the shortest one found.
    """
    prefixes = sorted({k[: -len(FIRST_CONV)] for k in state if k.endswith(FIRST_CONV)}, key=len)
    if not prefixes:
        raise DiffheadsError(f"{source} holds no Diffused Heads UNet (no parameter named like '{FIRST_CONV}')")
    prefix = next((p for p in ("", *NETWORK_PREFIXES) if p in prefixes), prefixes[0])
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and torch.is_tensor(v)}


def read_reference(path: str | Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """The reference UNet's state dict from a TorchScript file (needs trust) or a (Lightning) checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise DiffheadsError(f"reference checkpoint {path} not found; the CREMA release is crema_script.pt")
    if is_torchscript(path):
        if not trust:
            raise DiffheadsError(
                f"{path} is TorchScript, which runs its stored program when loaded; if it is the authors' release "
                "(or you trust its source otherwise), pass --trust-checkpoint"
            )
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as exc:
            raise DiffheadsError(f"{path} cannot be loaded as TorchScript ({str(exc).splitlines()[0][:120]})") from None
        return network_tensors(dict(module.state_dict()), str(path))
    data = read_checkpoint(path, trust)
    return network_tensors(data.get("state_dict", data), str(path))


def _blocks(shapes: dict[str, tuple[int, ...]], part: str) -> list[int]:
    return sorted({int(k.split(".")[1]) for k in shapes if k.startswith(part + ".")})


def infer_model_config(shapes: dict[str, tuple[int, ...]], options: ReferenceOptions = ReferenceOptions()) -> ModelConfig:
    """The ModelConfig of a reference UNet from its parameter shapes (name -> shape)."""
    if FIRST_CONV not in shapes or "out.2.weight" not in shapes or "audio_embed.0.weight" not in shapes:
        raise DiffheadsError("the weights lack input_blocks.0.0, out.2 or audio_embed.0: not a Diffused Heads UNet")
    channels, first_in = shapes[FIRST_CONV][:2]
    out_channels = shapes["out.2.weight"][0]
    in_channels = 3
    motion = first_in - 2 * in_channels  # noisy frame + identity frame + motion frames
    if motion == options.n_motion_frames:
        grayscale = True
    elif motion == 3 * options.n_motion_frames:
        grayscale = False
    else:
        raise DiffheadsError(
            f"the first convolution takes {first_in} channels, which fits no motion layout for "
            f"{options.n_motion_frames} motion frames; pass --n-motion-frames"
        )
    outputs = _blocks(shapes, "output_blocks")
    # an output block that ends a level (all but the last level) carries an upsampling residual block
    ups = [j for j in outputs if any(k.startswith(f"output_blocks.{j}.") and k.endswith("in_layers.2.weight")
                                     and k.split(".")[2] != "0" for k in shapes)]
    levels = len(ups) + 1
    if len(outputs) % levels:
        raise DiffheadsError(f"{len(outputs)} output blocks do not divide into {levels} levels: unknown layout")
    per_level = len(outputs) // levels - 1
    mult, attention = [], []
    for level in range(levels):
        first = 1 + level * (per_level + 1)
        width = shapes[f"input_blocks.{first}.0.out_layers.3.weight"][0]
        mult.append(width // channels)
        if any(f"input_blocks.{first + r}.1.qkv.weight" in shapes for r in range(per_level)):
            attention.append(options.image_size // 2**level)
    window = 2 * options.n_audio_motion_embs + 1
    audio_in = shapes["audio_embed.0.weight"][1]
    if audio_in % window:
        raise DiffheadsError(f"the audio projection takes {audio_in} inputs, not a multiple of the {window}-row window; "
                             "pass --n-audio-motion-embs")
    return ModelConfig(
        image_size=options.image_size,
        in_channels=in_channels,
        model_channels=channels,
        out_channels=out_channels,
        num_res_blocks=per_level,
        attention_resolutions=attention,
        channel_mult=mult,
        num_head_channels=options.num_head_channels,
        n_motion_frames=options.n_motion_frames,
        grayscale_motion=grayscale,
        n_audio_motion_embs=options.n_audio_motion_embs,
        audio_dim=audio_in // window,
    )


def import_reference(
    path: str | Path,
    out: str | Path,
    options: ReferenceOptions = ReferenceOptions(),
    trust: bool = False,
    sda_path: str | Path | None = None,
) -> dict[str, Any]:
    """Write the reference UNet in `path` as our model file `out`; returns the inferred configuration."""
    state = read_reference(path, trust)
    model_cfg = infer_model_config({k: tuple(v.shape) for k, v in state.items()}, options)
    unet = UNet(model_cfg)
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        raise DiffheadsError(f"the weights of {path} do not fit the inferred configuration: "
                             f"{(lines[1] if len(lines) > 1 else lines[0]).strip()[:200]}") from None
    encoder = {"name": "sda", "path": os.path.abspath(sda_path) if sda_path else "", "dim": model_cfg.audio_dim}
    cfg = dataclasses.replace(RunConfig(), model=model_cfg)
    save_model(out, unet, cfg, encoder)
    return {"output": str(out), "model": to_dict(model_cfg), "audio_encoder": encoder}
