"""`diffheads import-reference`: TorchScript and Lightning-style reference checkpoints become our model files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffheads.checkpoint import load_model
from diffheads.cli import main
from diffheads.conditioning import Conditioning
from diffheads.config import ModelConfig
from diffheads.errors import DiffheadsError
from diffheads.models.unet import UNet
from diffheads.reference.convert import ReferenceOptions, import_reference, infer_model_config
from runcli import run_cli

SMALL = ModelConfig(
    image_size=16,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_resolutions=[8],
    num_head_channels=32,
    audio_dim=32,
    dropout=0.0,
)
SMALL_OPTIONS = ReferenceOptions(image_size=16, num_head_channels=32)


def _shapes(reference_dir: Path, name: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (reference_dir / name).read_text().splitlines():
        key, shape = line.split("\t")
        shapes[key] = tuple(json.loads(shape))
    return shapes


@pytest.mark.parametrize(
    "tsv, grayscale", [("unet_keys_training_config.tsv", True), ("unet_keys_crema_release.tsv", False)]
)
def test_config_inferred_from_the_reference_shapes(reference_dir, tsv, grayscale):
    cfg = infer_model_config(_shapes(reference_dir, tsv))
    assert (cfg.model_channels, cfg.channel_mult, cfg.num_res_blocks, cfg.attention_resolutions) == (
        256,
        [1, 2, 3],
        2,
        [32],
    )
    assert (cfg.out_channels, cfg.audio_dim, cfg.n_audio_motion_embs, cfg.grayscale_motion) == (6, 256, 2, grayscale)
    # the inferred network has exactly the listed keys and shapes (built on the meta device: no memory)
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in UNet(cfg).state_dict().items()}
    assert ours == _shapes(reference_dir, tsv)


@pytest.mark.parametrize(
    "cfg",
    [
        SMALL,
        ModelConfig(
            image_size=32,
            model_channels=16,
            channel_mult=[1, 1, 2],
            num_res_blocks=2,
            attention_resolutions=[16, 8],
            num_head_channels=16,
            grayscale_motion=False,
            audio_dim=12,
            norm_groups=8,
            dropout=0.0,
        ),
    ],
    ids=["golden-small", "three-levels-rgb-motion"],
)
def test_config_inference_round_trip(cfg):
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in UNet(cfg).state_dict().items()}
    options = ReferenceOptions(image_size=cfg.image_size, num_head_channels=cfg.num_head_channels)
    got = infer_model_config(shapes, options)
    for name in (
        "model_channels",
        "channel_mult",
        "num_res_blocks",
        "attention_resolutions",
        "grayscale_motion",
        "audio_dim",
    ):
        assert getattr(got, name) == getattr(cfg, name), name


class _Traceable(torch.nn.Module):
    """Our UNet behind a tensors-only forward, as a TorchScript export of the reference is called."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x, t, x_cond, motion, audio):
        return self.unet(x, t, Conditioning(identity_frame=x_cond, motion_frames=motion, audio_window=audio))


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 3, 16, 16, generator=g),
        torch.tensor([3, 917]),
        torch.randn(2, 3, 16, 16, generator=g),
        torch.randn(2, 2, 16, 16, generator=g),
        torch.randn(2, 5, 32, generator=g),
    )


def _net(seed: int = 1) -> UNet:
    torch.manual_seed(seed)
    net = UNet(SMALL).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # the zero-initialised output conv would hide mistakes
    return net


def test_torchscript_round_trip_gives_identical_outputs(tmp_path):
    net = _net()
    scripted = torch.jit.trace(_Traceable(net), _inputs())
    scripted.save(str(tmp_path / "crema_script.pt"))
    with pytest.raises(DiffheadsError, match="TorchScript, which runs its stored program.*--trust-checkpoint"):
        import_reference(tmp_path / "crema_script.pt", tmp_path / "model.safetensors", SMALL_OPTIONS)
    assert not (tmp_path / "model.safetensors").exists()
    out = run_cli(
        "import-reference",
        str(tmp_path / "crema_script.pt"),
        str(tmp_path / "model.safetensors"),
        "--trust-checkpoint",
        "--image-size",
        "16",
        "--num-head-channels",
        "32",
        "--sda",
        "audio_encoder.pt",
    )
    assert out["model"]["model_channels"] == 32 and out["audio_encoder"]["dim"] == 32
    model = load_model(tmp_path / "model.safetensors")
    assert model.audio_encoder["name"] == "sda" and model.audio_encoder["path"].endswith("audio_encoder.pt")
    x = _inputs(seed=5)
    with torch.no_grad():
        expected = scripted(*x)
        got = model.unet(x[0], x[1], Conditioning(identity_frame=x[2], motion_frames=x[3], audio_window=x[4]))
    assert torch.equal(got, expected)


def test_lightning_checkpoint_with_the_network_twice(tmp_path):
    net = _net(seed=2)
    sd = net.state_dict()
    ckpt = {
        "epoch": 7,
        "global_step": 1234,
        "state_dict": {
            **{f"unet.{k}": v for k, v in sd.items()},
            **{f"diffusion.nn_backbone.{k}": v for k, v in sd.items()},
        },
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    import_reference(tmp_path / "last.ckpt", tmp_path / "model.safetensors", SMALL_OPTIONS)  # weights-only: no trust
    loaded = load_model(tmp_path / "model.safetensors").unet.state_dict()
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_a_file_without_the_network_is_refused(tmp_path, capsys):
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    assert main(["import-reference", str(tmp_path / "other.ckpt"), str(tmp_path / "m.safetensors")]) == 2
    assert "holds no Diffused Heads UNet" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


class _TinySDA(torch.nn.Module):
    """Stands in for audio_encoder.pt: (1, n, 3200) windows -> (1, n, 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3200, 32)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(windows))


def test_imported_model_animates_with_its_sda_encoder(tmp_path):
    """The SDA file given at import drives animate: embeddings per 40 ms, one frame each."""
    import numpy as np

    from diffheads.io.audio import write_wav
    from diffheads.io.image import write_png
    from diffheads.io.video import count_frames

    scripted = torch.jit.trace(_Traceable(_net(seed=3)), _inputs())
    scripted.save(str(tmp_path / "crema_script.pt"))
    torch.jit.script(_TinySDA().eval()).save(str(tmp_path / "audio_encoder.pt"))
    run_cli(
        "import-reference",
        str(tmp_path / "crema_script.pt"),
        str(tmp_path / "crema.safetensors"),
        "--trust-checkpoint",
        "--image-size",
        "16",
        "--num-head-channels",
        "32",
        "--sda",
        str(tmp_path / "audio_encoder.pt"),
    )
    t = np.arange(int(0.4 * 16000)) / 16000
    write_wav(tmp_path / "speech.wav", 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)))
    write_png(tmp_path / "face.png", np.full((16, 16, 3), 120, np.uint8))
    run_cli(
        "animate",
        "--checkpoint",
        str(tmp_path / "crema.safetensors"),
        "--image",
        str(tmp_path / "face.png"),
        "--audio",
        str(tmp_path / "speech.wav"),
        "--output",
        str(tmp_path / "out.mp4"),
        "--no-align",
        "--solver",
        "ddim",
        "--steps",
        "2",
        "--quiet",
    )
    assert count_frames(tmp_path / "out.mp4") == 10


def test_imported_model_without_sda_says_how_to_fix(tmp_path, capsys):
    import numpy as np

    from diffheads.io.audio import write_wav
    from diffheads.io.image import write_png

    torch.save({"state_dict": {f"unet.{k}": v for k, v in _net().state_dict().items()}}, tmp_path / "last.ckpt")
    import_reference(tmp_path / "last.ckpt", tmp_path / "m.safetensors", SMALL_OPTIONS)
    write_wav(tmp_path / "speech.wav", 0.3 * np.sin(np.arange(6400) / 10))
    write_png(tmp_path / "face.png", np.full((16, 16, 3), 120, np.uint8))
    assert (
        main(
            [
                "animate",
                "--checkpoint",
                str(tmp_path / "m.safetensors"),
                "--image",
                str(tmp_path / "face.png"),
                "--audio",
                str(tmp_path / "speech.wav"),
                "--output",
                str(tmp_path / "o.mp4"),
                "--no-align",
                "--quiet",
            ]
        )
        == 2
    )
    assert "--sda audio_encoder.pt" in capsys.readouterr().err and not (tmp_path / "o.mp4").exists()
