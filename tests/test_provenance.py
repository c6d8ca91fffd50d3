"""What a model was trained on travels with it: recorded by train, read back, inferred for old files, told by animate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from diffheads.checkpoint import FORMAT, describe_provenance, export_model, load_model, model_provenance, save_model
from diffheads.cli import main
from diffheads.config import ModelConfig, load_config, to_dict
from diffheads.io.audio import write_wav
from diffheads.io.image import write_png
from diffheads.models.unet import UNet
from diffheads.reference.convert import ReferenceOptions, import_reference
from facevideo import astronaut
from runcli import run_cli
from tiny import TINY_MODEL, TINY_TRAINING, tiny_checkpoint, train_tiny


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> dict[str, Path]:
    """A tiny model trained for 4 steps on 2 synthetic identities x 2 clips of 1.2 s (tests/tiny.py)."""
    return train_tiny(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def real_run(synthetic_run, tmp_path_factory) -> Path:
    """A tiny model trained on the same clips without synth.json, as a prepared real dataset would be."""
    root = tmp_path_factory.mktemp("real")
    data = root / "data"
    shutil.copytree(synthetic_run["data"], data)
    (data / "synth.json").unlink()
    res = run_cli(
        "train",
        "configs/demo.yaml",
        f"data.root={data}",
        f"trainer.out_dir={root / 'run'}",
        *[o for o in TINY_TRAINING if not o.startswith("trainer.max_steps")],
        "trainer.max_steps=2",
        "trainer.sample_every_n_steps=0",
    )
    return Path(res["model"])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    write_png(folder / "face.png", astronaut())
    t = np.arange(int(0.2 * 16000)) / 16000
    write_wav(folder / "speech.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))
    return {p.stem: p for p in folder.iterdir()}


def test_train_records_the_data_in_the_model_file(synthetic_run):
    with safe_open(str(synthetic_run["model"]), framework="pt") as f:
        record = json.loads(f.metadata()["trained_on"])  # plain JSON in the safetensors metadata
    assert record == {
        "data_root": str(synthetic_run["data"].resolve()),
        "synthetic": True,
        "train_clips": 4,  # 2 training identities x 2 clips
        "train_seconds": 4.8,  # 4 clips of 1.2 s
        "image_size": 16,
        "person": {"descriptor": None, "reason": "synthetic cartoon faces: no person to recognise"},
        "steps": 4,
    }
    assert model_provenance(synthetic_run["model"]) == {"kind": "trained", "recorded": True, **record}
    assert load_model(synthetic_run["model"]).provenance == model_provenance(synthetic_run["model"])


def test_training_checkpoints_and_their_exports_carry_the_record(synthetic_run, tmp_path):
    raw = torch.load(synthetic_run["last"], map_location="cpu", weights_only=True)
    assert raw["trained_on"]["steps"] == raw["global_step"] == 4
    step2 = synthetic_run["run"] / "checkpoints" / "step0000002.ckpt"
    assert model_provenance(step2)["steps"] == 2 and model_provenance(step2)["train_clips"] == 4
    out = export_model(synthetic_run["last"], tmp_path / "exported.ckpt")
    assert model_provenance(out) == model_provenance(synthetic_run["model"])


def test_real_footage_is_recorded_as_such(real_run):
    p = model_provenance(real_run)
    assert (p["synthetic"], p["train_clips"], p["steps"], p["recorded"]) == (False, 4, 2, True)
    assert describe_provenance(p).startswith("real footage, 4 clips (4.8 s) of ")
    # 16 px cartoon faces are no face to dlib: the model records no person, and says why
    assert p["person"] == {
        "descriptor": None,
        "n_faces": 0,
        "n_frames": 4,
        "reason": "dlib found a face in 0 of 4 training frames: no person to recognise",
    }


def test_animate_warns_once_about_a_synthetic_model_even_when_quiet(synthetic_run, real_run, inputs, tmp_path, capsys):
    def animate(model: Path, name: str) -> list[str]:
        code = main(
            [
                "animate",
                "--checkpoint",
                str(model),
                "--image",
                str(inputs["face"]),
                "--audio",
                str(inputs["speech"]),
                "--output",
                str(tmp_path / f"{name}.mp4"),
                "--solver",
                "ddim",
                "--steps",
                "1",
                "--quiet",
            ]
        )
        assert code == 0
        return [line for line in capsys.readouterr().err.splitlines() if "warning" in line]

    [warning] = animate(synthetic_run["model"], "synthetic")
    assert warning.startswith("diffheads animate: warning: this model was trained only on synthetic cartoon faces")
    assert "real face comes out blurred" in warning and "`make demo-real`" in warning
    assert "outputs/demo-grid/model.ckpt" in warning and "configs/person.yaml" in warning
    assert animate(real_run, "real") == []


def test_an_older_model_file_is_described_from_its_config(tmp_path):
    synthetic = tmp_path / "synth"
    synthetic.mkdir()
    (synthetic / "synth.json").write_text("{}")
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "file_list_train.txt").write_text("./s1/a.mp4\n")
    cases = {synthetic: True, prepared: False, tmp_path / "deleted": None}
    for root, expected in cases.items():
        p = model_provenance(tiny_checkpoint(tmp_path / f"{root.name}.ckpt", f"data.root={root}"))
        assert p == {
            "kind": "trained",
            "recorded": False,
            "data_root": str(root),
            "synthetic": expected,
            "train_clips": None,
            "train_seconds": None,
            "image_size": 16,
            "steps": None,
            "person": None,
        }
    assert describe_provenance(model_provenance(tmp_path / "synth.ckpt")) == "synthetic cartoon faces, 16 px"


def test_an_older_torch_model_and_a_training_checkpoint_without_the_record(tmp_path):
    cfg = load_config(None, [*TINY_MODEL, "model.audio_dim=200", f"data.root={tmp_path / 'gone'}"])
    sd = UNet(cfg.model).state_dict()
    torch.save(
        {"format": FORMAT, "config": to_dict(cfg), "audio_encoder": {"name": "logmel", "dim": 200}, "state_dict": sd},
        tmp_path / "v1.ckpt",
    )
    torch.save(
        {
            "global_step": 7,
            "hyper_parameters": {"config": to_dict(cfg), "audio_encoder": {}},
            "state_dict": {f"unet.{k}": v for k, v in sd.items()},
        },
        tmp_path / "old_last.ckpt",
    )
    v1, ckpt = model_provenance(tmp_path / "v1.ckpt"), model_provenance(tmp_path / "old_last.ckpt")
    assert (v1["steps"], v1["synthetic"], v1["image_size"]) == (None, None, 16)
    assert (ckpt["steps"], ckpt["recorded"]) == (7, False)
    assert load_model(tmp_path / "v1.ckpt").provenance == v1  # still loads
    assert describe_provenance(ckpt) == f"unknown data ({tmp_path / 'gone'} is gone or not a dataset), 16 px, 7 steps"


def test_imported_reference_weights_say_so(tmp_path):
    net = UNet(
        ModelConfig(
            image_size=16,
            model_channels=32,
            channel_mult=[1, 2],
            num_res_blocks=1,
            attention_resolutions=[8],
            num_head_channels=32,
            audio_dim=32,
            dropout=0.0,
        )
    )
    torch.save({"state_dict": {f"unet.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "last.ckpt")
    options = ReferenceOptions(image_size=16, num_head_channels=32)
    import_reference(tmp_path / "last.ckpt", tmp_path / "ref.ckpt", options)
    p = model_provenance(tmp_path / "ref.ckpt")
    assert p["kind"] == "imported" and p["synthetic"] is False
    assert describe_provenance(p) == "imported reference weights, 16 px"


@pytest.mark.parametrize(
    ("record", "label"),
    [
        (
            {"synthetic": True, "train_clips": 48, "train_seconds": 192.0, "image_size": 32, "steps": 1500},
            "synthetic cartoon faces, 48 clips (3 min), 32 px, 1500 steps",
        ),
        (
            {
                "synthetic": False,
                "data_root": "/data/grid/s1",
                "train_clips": 540,
                "train_seconds": 1620.0,
                "image_size": 64,
                "steps": 3000,
            },
            "real footage, 540 clips (27 min) of /data/grid/s1, 64 px, 3000 steps",
        ),
    ],
)
def test_labels(record, label):
    assert describe_provenance({"kind": "trained", **record}) == label


def test_a_record_given_to_save_model_is_read_back_verbatim(tmp_path):
    cfg = load_config(None, [*TINY_MODEL, "model.audio_dim=200"])
    record = {
        "data_root": "/x",
        "synthetic": False,
        "train_clips": 3,
        "train_seconds": None,
        "image_size": 16,
        "steps": 10,
        "person": {"descriptor": [0.5] * 128, "n_faces": 8, "n_frames": 8, "spread": 0.2, "widest_pair": 0.3},
    }
    save_model(tmp_path / "m.ckpt", UNet(cfg.model), cfg, {"name": "logmel", "dim": 200}, record)
    assert model_provenance(tmp_path / "m.ckpt") == {"kind": "trained", "recorded": True, **record}
    assert load_model(tmp_path / "m.ckpt").cfg.model.image_size == 16
