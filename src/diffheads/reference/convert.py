"""`diffheads import-reference`: the authors' UNet (TorchScript release or training-branch checkpoint) as our model file.

The reference network's state_dict keys and shapes equal ours for every conditioning variant
(tests/test_unet.py, tests/test_reference_variants.py), so importing is: find the network's tensors
in the file, infer the configuration from their names and shapes, load them strictly into our UNet
and export a safetensors model file with that configuration.

What the keys and shapes decide: the identity conditioning (`identity_encoder.*`: pre_gn, plus
per-block `x_emb_layers`: post_gn, else frame), the audio conditioning (`audio_emb_proj` in the
attention blocks: attention; per-block `audio_emb_layers` of width 2*out: double_pre_gn, of width
out: post_gn; none: pre_gn), model_channels, channel_mult, num_res_blocks, the levels with
attention, out_channels, motion channels per frame (grayscale or RGB) and the audio window's width;
for audio attention also image_size (its projection has one output per feature-map position). What
they cannot decide is given as options with the reference's values as defaults: image_size (128),
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
from diffheads.config import AudioCondition, IdCondition, ModelConfig, RunConfig, to_dict
from diffheads.errors import DiffheadsError
from diffheads.models.unet import UNet

NETWORK_PREFIXES = ("unet.", "diffusion.nn_backbone.", "nn_backbone.", "model.")
FIRST_CONV = "input_blocks.0.0.weight"
IDENTITY_ENCODER = "identity_encoder."
OUR_DESIGN_KEYS = ("id_encoder.", "id_emb_layers.", "audio_attn.", "audio_embed.pos")


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
    prefixes = sorted(
        {
            k[: -len(FIRST_CONV)]
            for k in state
            if k.endswith(FIRST_CONV) and not k[: -len(FIRST_CONV)].endswith(IDENTITY_ENCODER)
        },
        key=len,
    )
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


def infer_conditioning(shapes: dict[str, tuple[int, ...]]) -> tuple[IdCondition, AudioCondition]:
    """The reference conditioning variants (identity, audio) that a UNet's parameter names and shapes imply."""
    ours = sorted({f for f in OUR_DESIGN_KEYS for k in shapes if k.startswith(f) or f".{f}" in k})
    if ours:
        raise DiffheadsError(
            f"the weights hold {', '.join(ours)}: diffheads' own conditioning designs, not the "
            "reference's; a diffheads model file or checkpoint loads directly (no import needed)"
        )
    if any(k.startswith(IDENTITY_ENCODER) for k in shapes):
        identity = IdCondition.POST_GN if any(".x_emb_layers." in k for k in shapes) else IdCondition.PRE_GN
    else:
        identity = IdCondition.FRAME
    gate = "input_blocks.1.0.audio_emb_layers.1.weight"
    if any(k.endswith(".audio_emb_proj.weight") for k in shapes):
        audio = AudioCondition.ATTENTION
    elif gate in shapes:
        width = shapes["input_blocks.1.0.out_layers.3.weight"][0]
        audio = AudioCondition.DOUBLE_PRE_GN if shapes[gate][0] == 2 * width else AudioCondition.POST_GN
    else:
        audio = AudioCondition.PRE_GN
    return identity, audio


def _grayscale_motion(first_in: int, in_channels: int, identity: IdCondition, options: ReferenceOptions) -> bool:
    """Whether the motion frames are grayscale, from the input channels of the first convolution."""
    # noisy frame + motion frames (+ identity frame when it is concatenated)
    motion = first_in - (2 if identity is IdCondition.FRAME else 1) * in_channels
    if motion == options.n_motion_frames:
        return True
    if motion == 3 * options.n_motion_frames:
        return False
    raise DiffheadsError(
        f"the first convolution takes {first_in} channels, which fits no motion layout for "
        f"{options.n_motion_frames} motion frames; pass --n-motion-frames"
    )


def _level_layout(shapes: dict[str, tuple[int, ...]], channels: int) -> tuple[int, list[int], list[int]]:
    """num_res_blocks, channel_mult, and the downsample factors of the levels with attention."""
    outputs = _blocks(shapes, "output_blocks")
    # an output block that ends a level (all but the last level) carries an upsampling residual block
    ups = [
        j
        for j in outputs
        if any(
            k.startswith(f"output_blocks.{j}.") and k.endswith("in_layers.2.weight") and k.split(".")[2] != "0"
            for k in shapes
        )
    ]
    levels = len(ups) + 1
    if len(outputs) % levels:
        raise DiffheadsError(f"{len(outputs)} output blocks do not divide into {levels} levels: unknown layout")
    per_level = len(outputs) // levels - 1
    mult, factors = [], []
    for level in range(levels):
        first = 1 + level * (per_level + 1)
        width = shapes[f"input_blocks.{first}.0.out_layers.3.weight"][0]
        mult.append(width // channels)
        if any(k.startswith(f"input_blocks.{first + r}.1.") for r in range(per_level) for k in shapes):
            factors.append(2**level)  # a downsample factor: a side once image_size is known
    return per_level, mult, factors


def _audio_dim(shapes: dict[str, tuple[int, ...]], options: ReferenceOptions) -> int:
    """Width of one audio embedding row: the audio projection's inputs over the window's rows."""
    window = 2 * options.n_audio_motion_embs + 1
    audio_in = shapes["audio_embed.0.weight"][1]
    if audio_in % window:
        raise DiffheadsError(
            f"the audio projection takes {audio_in} inputs, not a multiple of the {window}-row window; "
            "pass --n-audio-motion-embs"
        )
    return audio_in // window


def infer_model_config(
    shapes: dict[str, tuple[int, ...]], options: ReferenceOptions = ReferenceOptions()
) -> ModelConfig:
    """The ModelConfig of a reference UNet, any conditioning variant, from its parameter shapes (name -> shape)."""
    if FIRST_CONV not in shapes or "out.2.weight" not in shapes or "audio_embed.0.weight" not in shapes:
        raise DiffheadsError("the weights lack input_blocks.0.0, out.2 or audio_embed.0: not a Diffused Heads UNet")
    identity, audio = infer_conditioning(shapes)
    channels, first_in = shapes[FIRST_CONV][:2]
    out_channels = shapes["out.2.weight"][0]
    in_channels = 3
    grayscale = _grayscale_motion(first_in, in_channels, identity, options)
    per_level, mult, factors = _level_layout(shapes, channels)
    image_size = options.image_size
    if audio is AudioCondition.ATTENTION:  # its projection has one output per position of the middle block's maps
        side = round(shapes["middle_block.1.audio_emb_proj.weight"][0] ** 0.5)
        image_size = side * 2 ** (len(mult) - 1)
    audio_dim = _audio_dim(shapes, options)
    return ModelConfig(
        image_size=image_size,
        in_channels=in_channels,
        model_channels=channels,
        out_channels=out_channels,
        num_res_blocks=per_level,
        attention_resolutions=[image_size // factor for factor in factors],
        channel_mult=mult,
        num_head_channels=options.num_head_channels,
        n_motion_frames=options.n_motion_frames,
        grayscale_motion=grayscale,
        n_audio_motion_embs=options.n_audio_motion_embs,
        audio_dim=audio_dim,
        id_condition_type=identity,
        audio_condition_type=audio,
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
        raise DiffheadsError(
            f"the weights of {path} do not fit the inferred configuration: "
            f"{(lines[1] if len(lines) > 1 else lines[0]).strip()[:200]}"
        ) from None
    encoder = {"name": "sda", "path": os.path.abspath(sda_path) if sda_path else "", "dim": model_cfg.audio_dim}
    cfg = dataclasses.replace(RunConfig(), model=model_cfg)
    save_model(out, unet, cfg, encoder)
    return {"output": str(out), "model": to_dict(model_cfg), "audio_encoder": encoder}
