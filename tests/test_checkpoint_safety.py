"""Checkpoints never run code: a malicious pickle is refused everywhere a checkpoint is read."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from diffheads.checkpoint import FORMAT, load_model, save_model
from diffheads.cli import main
from diffheads.config import load_config, to_dict
from diffheads.models.unet import UNet
from tiny import TINY_MODEL

TINY = [*TINY_MODEL, "model.audio_dim=200"]


class _CreatesFile:
    """Unpickling this calls open(path, 'w'): it creates a file, as a real attack would run a shell."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture()
def evil(tmp_path) -> tuple[Path, Path]:
    """(malicious checkpoint, the file its unpickling would create)."""
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.ckpt"
    torch.save({"format": FORMAT, "config": {}, "state_dict": {}, "payload": _CreatesFile(marker)}, path)
    return path, marker


def test_the_crafted_file_is_really_malicious(evil, tmp_path):
    path, marker = evil
    torch.load(path, weights_only=False)  # what a naive loader does
    assert marker.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "--checkpoint", "{ckpt}", "--data", "{tmp}/data", "--out", "{tmp}/gen", "--quiet"],
        [
            "animate",
            "--checkpoint",
            "{ckpt}",
            "--image",
            "{tmp}/face.png",
            "--audio",
            "{tmp}/a.wav",
            "--output",
            "{tmp}/out.mp4",
            "--quiet",
        ],
        ["export", "{ckpt}", "{tmp}/model.safetensors"],
        ["train", "configs/demo.yaml", "data.root={tmp}/data", "trainer.out_dir={tmp}/run", "trainer.resume={ckpt}"],
    ],
    ids=["generate", "animate", "export", "train-resume"],
)
def test_malicious_pickle_is_refused_and_runs_nothing(evil, tmp_path, capsys, command):
    path, marker = evil
    if command[0] == "train":  # the training data must exist for the run to get as far as the checkpoint
        from runcli import run_cli

        run_cli(
            "synth",
            str(tmp_path / "data"),
            "--train-identities",
            "1",
            "--test-identities",
            "1",
            "--clips-per-identity",
            "1",
            "--seconds",
            "0.6",
            "--size",
            "16",
            "--quiet",
        )
        run_cli("embed", str(tmp_path / "data"), "--quiet")
    before = set(tmp_path.rglob("*"))
    argv = [a.format(ckpt=path, tmp=tmp_path) for a in command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs arbitrary unpickling" in err[0] and "--trust-checkpoint" in err[0], err
    assert not marker.exists()
    new = set(tmp_path.rglob("*")) - before
    assert not [p for p in new if p.is_file() and p.suffix in (".mp4", ".safetensors", ".ckpt")]


def test_raw_pickle_file_is_refused_too(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "old.pkl"
    path.write_bytes(pickle.dumps({"state_dict": _CreatesFile(marker)}))
    from diffheads.errors import DiffheadsError

    with pytest.raises(DiffheadsError, match="needs arbitrary unpickling"):
        load_model(path)
    assert not marker.exists()


def _pickled_but_harmless(tmp_path) -> Path:
    """An old-style torch checkpoint that holds a NumPy array: not weights-only loadable, not malicious."""
    cfg = load_config("configs/demo.yaml", TINY)
    unet = UNet(cfg.model)
    path = tmp_path / "old_style.ckpt"
    torch.save(
        {
            "format": FORMAT,
            "version": 1,
            "config": to_dict(cfg),
            "audio_encoder": {"name": "logmel"},
            "state_dict": unet.state_dict(),
            "notes": np.arange(3),
        },
        path,
    )
    return path


def test_trust_flag_loads_a_pickled_checkpoint_the_user_vouches_for(tmp_path):
    from diffheads.errors import DiffheadsError

    path = _pickled_but_harmless(tmp_path)
    with pytest.raises(DiffheadsError, match="--trust-checkpoint"):
        load_model(path)
    model = load_model(path, trust=True)
    assert model.cfg.model.image_size == 16
    out = tmp_path / "clean.safetensors"
    assert main(["export", str(path), str(out), "--trust-checkpoint"]) == 0
    assert load_model(out).cfg.model.model_channels == 32  # the export loads without trust


def test_exported_model_is_safetensors_with_the_config_in_its_metadata(tmp_path):
    cfg = load_config("configs/demo.yaml", TINY)
    unet = UNet(cfg.model)
    path = save_model(tmp_path / "model.ckpt", unet, cfg, {"name": "logmel", "dim": 200})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT and '"image_size": 16' in meta["config"]
    tensors = safetensors.torch.load_file(str(path))
    assert tensors.keys() == unet.state_dict().keys()
    loaded = load_model(path)
    assert all(torch.equal(loaded.unet.state_dict()[k], v) for k, v in unet.state_dict().items())
    assert loaded.audio_encoder == {"name": "logmel", "dim": 200}
