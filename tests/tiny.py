"""The tiny 16 px network the tests train or export: its config overrides and an untrained model file."""

from __future__ import annotations

from pathlib import Path

import torch

from diffheads.audio.encoders import LogMelEncoder
from diffheads.checkpoint import save_model
from diffheads.config import load_config
from diffheads.models.unet import UNet

TINY_MODEL = [
    "model.image_size=16",
    "model.model_channels=32",
    "model.channel_mult=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[8]",
    "model.num_head_channels=32",
]


def tiny_checkpoint(path: Path, *overrides: str, seed: int = 0) -> Path:
    """A randomly initialised (torch seed `seed`) tiny UNet with the log-mel encoder, exported with save_model."""
    encoder = LogMelEncoder()
    cfg = load_config(None, [*TINY_MODEL, f"model.audio_dim={encoder.dim}", *overrides])
    torch.manual_seed(seed)
    return save_model(path, UNet(cfg.model), cfg, encoder.describe())
