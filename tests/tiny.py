"""The tiny 16 px network the tests train or export: its config overrides, an untrained model file, a short training."""

from __future__ import annotations

from pathlib import Path

import torch

from diffheads.audio.encoders import LogMelEncoder
from diffheads.checkpoint import save_model
from diffheads.config import load_config
from diffheads.models.unet import UNet
from runcli import run_cli

TINY_MODEL = [
    "model.image_size=16",
    "model.model_channels=32",
    "model.channel_mult=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[8]",
    "model.num_head_channels=32",
]

TINY_TRAINING = [
    *TINY_MODEL,
    "trainer.max_steps=4",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "trainer.checkpoint_every_n_steps=2",
    "optim.batch_size=4",
    "data.examples_per_clip=4",
    "sample.steps=3",
    "optim.ema_decay=0.9",
    "trainer.sample_every_n_steps=2",
    "trainer.sample_frames=3",
]


def tiny_data(data: Path) -> tuple[dict, dict]:
    """`diffheads synth` of a 16 px dataset (2 train and 1 test identities, 2 clips of 1.2 s each) and `embed`."""
    args = ["--train-identities", "2", "--test-identities", "1", "--clips-per-identity", "2", "--seconds", "1.2"]
    out = run_cli("synth", str(data), *args, "--size", "16", "--quiet")
    return out, run_cli("embed", str(data), "--quiet")


def train_tiny(root: Path) -> dict[str, Path]:
    """A 16 px synthetic dataset under `root`, its log-mel embeddings and a model trained on it for 4 steps."""
    data, run = root / "data", root / "run"
    out, emb = tiny_data(data)
    assert (data / "file_list_test.txt").is_file() and out
    assert emb["written"] == 6 and emb["dim"] == 200
    res = run_cli("train", "configs/demo.yaml", f"data.root={data}", f"trainer.out_dir={run}", *TINY_TRAINING)
    assert res["steps"] == 4
    return {"data": data, "run": run, "model": Path(res["model"]), "last": Path(res["last_checkpoint"])}


def tiny_checkpoint(path: Path, *overrides: str, seed: int = 0) -> Path:
    """A randomly initialised (torch seed `seed`) tiny UNet with the log-mel encoder, exported with save_model."""
    encoder = LogMelEncoder()
    cfg = load_config(None, [*TINY_MODEL, f"model.audio_dim={encoder.dim}", *overrides])
    torch.manual_seed(seed)
    return save_model(path, UNet(cfg.model), cfg, encoder.describe())
