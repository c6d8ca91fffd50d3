"""End to end through the command line: synth -> embed -> train -> checkpoint -> generate / animate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from diffheads.checkpoint import load_model
from diffheads.cli import main
from diffheads.io.audio import write_wav
from diffheads.io.image import write_png
from diffheads.io.video import read_video
from runcli import run_cli
from tiny import TINY_TRAINING, train_tiny

TINY = TINY_TRAINING


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A 16 px synthetic dataset, its embeddings and a model trained for 4 steps."""
    return train_tiny(tmp_path_factory.mktemp("pipe"))


def test_train_writes_config_logs_and_checkpoints(trained):
    run = trained["run"]
    assert (run / "config.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) == [
        "last.ckpt",
        "step0000002.ckpt",
        "step0000004.ckpt",
    ]
    assert list(run.glob("csv/version_*/metrics.csv")) and list(run.glob("tensorboard/version_*/events.*"))
    samples = sorted((run / "samples").glob("*.mp4"))
    assert [p.name for p in samples] == ["step0000002.mp4", "step0000004.mp4"]
    frames, _ = read_video(samples[0])
    assert frames.shape == (3, 16, 32, 3)  # real | generated side by side


def test_ema_weights_are_exported(trained):
    raw = torch.load(trained["last"], weights_only=True)["state_dict"]
    ema = {k[len("ema_unet.") :]: v for k, v in raw.items() if k.startswith("ema_unet.")}
    live = {k[len("unet.") :]: v for k, v in raw.items() if k.startswith("unet.")}
    exported = safetensors.torch.load_file(str(trained["model"]))  # the exported model is plain safetensors
    assert ema and set(exported) == set(ema) and all(torch.equal(exported[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema[k], live[k]) for k in ema)


@pytest.mark.slow
def test_swa_and_bf16_precision_run(trained, tmp_path):
    run = tmp_path / "swa"
    res = run_cli(
        "train",
        "configs/demo.yaml",
        f"data.root={trained['data']}",
        f"trainer.out_dir={run}",
        *[o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.sample"))],
        "trainer.max_steps=-1",
        "optim.swa=true",
        "trainer.precision=bf16-mixed",
    )
    assert res["steps"] == 2 * 4  # 2 epochs of 4 training clips x 4 examples / batch 4
    assert load_model(run / "model.ckpt").cfg.trainer.precision == "bf16-mixed"


def test_checkpoint_alone_rebuilds_the_model(trained):
    """Both checkpoint kinds rebuild the same network, from their stored config only."""
    a = load_model(trained["model"])
    b = load_model(trained["last"])
    assert a.cfg.model.image_size == 16 and a.cfg.model.audio_dim == 200 and a.audio_encoder["name"] == "logmel"
    for (ka, va), (kb, vb) in zip(a.unet.state_dict().items(), b.unet.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    # weights-only: the Lightning checkpoint loads without unpickling code
    torch.load(trained["last"], weights_only=True)


def test_generate_trims_each_clip_and_skips_existing(trained, tmp_path):
    out = tmp_path / "gen"
    res = run_cli(
        "generate",
        "--checkpoint",
        str(trained["model"]),
        "--data",
        str(trained["data"]),
        "--out",
        str(out),
        "--steps",
        "2",
        "--quiet",
    )
    assert res["written"] == 2 and res["skipped"] == 0
    for mp4 in out.rglob("*.mp4"):
        frames, fps = read_video(mp4)
        cid = str(mp4.relative_to(out).with_suffix(""))
        assert fps == 25 and frames.shape[1:] == (16, 16, 3)
        assert len(frames) == len(torch.load(trained["data"] / "emb" / f"{cid}.pth"))
    again = run_cli(
        "generate",
        "--checkpoint",
        str(trained["model"]),
        "--data",
        str(trained["data"]),
        "--out",
        str(out),
        "--steps",
        "2",
        "--quiet",
    )
    assert again.pop("seconds") < 1.0  # nothing left to sample
    assert again == {"written": 0, "skipped": 2, "out": str(out), "processes": 1}


def test_generate_is_deterministic_for_a_seed(trained, tmp_path):
    from diffheads.sample.runtime import sample_clips

    model = load_model(trained["model"])
    ident = torch.rand(2, 3, 16, 16) * 2 - 1
    embs = [torch.randn(5, 200), torch.randn(3, 200)]
    sample = model.cfg.sample
    a = sample_clips(model, ident, embs, sample, seed=3, progress=False)
    b = sample_clips(model, ident, embs, sample, seed=3, progress=False)
    c = sample_clips(model, ident, embs, sample, seed=4, progress=False)
    assert [len(x) for x in a] == [5, 3]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_animate_any_audio_format(trained, tmp_path):
    import av

    face = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    write_png(tmp_path / "face.png", face)
    # 0.6 s of 44.1 kHz stereo audio in an m4a (AAC) container
    sr, n = 44100, int(0.6 * 44100)
    t = np.arange(n) / sr
    stereo = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)]).astype(np.float32) * 0.3
    with av.open(str(tmp_path / "voice.m4a"), "w") as c:
        s = c.add_stream("aac", rate=sr, layout="stereo")
        frame = av.AudioFrame.from_ndarray(stereo, format="fltp", layout="stereo")
        frame.sample_rate = sr
        for packet in s.encode(frame):
            c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    out = tmp_path / "talk.mp4"
    res = run_cli(
        "animate",
        "--checkpoint",
        str(trained["model"]),
        "--image",
        str(tmp_path / "face.png"),
        "--audio",
        str(tmp_path / "voice.m4a"),
        "--output",
        str(out),
        "--steps",
        "2",
        "--quiet",
        "--no-align",
    )
    frames, _fps = read_video(out)
    # 0.6 s -> 15 frames; AAC priming may add up to a frame of decoded duration
    assert res["output"] == str(out) and len(frames) in (15, 16) and frames.shape[1:] == (16, 16, 3)
    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 1 and c.streams.audio[0].rate == 16000
    # a wav at 16 kHz and a video as the identity source work too
    write_wav(tmp_path / "v.wav", (0.3 * np.sin(np.arange(8000) / 5)).astype(np.float32), 16000)
    clip = next((trained["data"] / "video").rglob("*.mp4"))
    run_cli(
        "animate",
        "--checkpoint",
        str(trained["model"]),
        "--video",
        str(clip),
        "--audio",
        str(tmp_path / "v.wav"),
        "--output",
        str(tmp_path / "v.mp4"),
        "--steps",
        "2",
        "--quiet",
        "--no-align",
    )
    assert len(read_video(tmp_path / "v.mp4")[0]) == 13  # 0.5 s -> 12.5 -> 13 frames


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "configs/nope.yaml"], "does not exist"),
        (["train", "configs/demo.yaml", "optim.learnrate=1"], "unknown config key 'optim.learnrate'"),
        (
            ["animate", "--checkpoint", "missing.ckpt", "--image", "x.png", "--audio", "a.wav", "--output", "o.mp4"],
            "checkpoint missing.ckpt not found",
        ),
        (["embed", "/nonexistent/data"], "file list"),
        (["synth", "/tmp/never", "--size", "33"], "size must be an even number"),
        (["generate", "--checkpoint", "nope.ckpt", "--data", "d", "--out", "o"], "checkpoint nope.ckpt not found"),
    ],
)
def test_bad_input_gives_one_line_error(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_animate_errors(trained, tmp_path, capsys):
    write_png(tmp_path / "face.png", np.zeros((16, 16, 3), np.uint8))
    write_wav(tmp_path / "silence.wav", np.zeros(8000, np.float32), 16000)
    code = main(
        [
            "animate",
            "--checkpoint",
            str(trained["model"]),
            "--image",
            str(tmp_path / "face.png"),
            "--audio",
            str(tmp_path / "silence.wav"),
            "--output",
            str(tmp_path / "o.mp4"),
            "--quiet",
            "--no-align",
        ]
    )
    assert code == 2 and "silent" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code = main(
        [
            "animate",
            "--checkpoint",
            str(trained["model"]),
            "--image",
            str(tmp_path / "bad.png"),
            "--audio",
            str(tmp_path / "silence.wav"),
            "--output",
            str(tmp_path / "o.mp4"),
            "--quiet",
        ]
    )
    assert code == 2 and "not a readable image" in capsys.readouterr().err


def test_resume_continues_from_last(trained, tmp_path):
    run = tmp_path / "resumed"
    import shutil

    shutil.copytree(trained["run"], run)
    res = run_cli(
        "train",
        "configs/demo.yaml",
        f"data.root={trained['data']}",
        f"trainer.out_dir={run}",
        *[o for o in TINY if not o.startswith("trainer.max_steps")],
        "trainer.max_steps=6",
        "trainer.resume=last",
    )
    assert res["steps"] == 6


def test_console_script_runs(trained):
    exe = Path(sys.executable).parent / "diffheads"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("synth", "embed", "prepare", "train", "generate", "animate", "app", "demo"):
        assert command in out


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(trained, tmp_path):
    """Two gloo processes train a few steps and write one model."""
    exe = Path(sys.executable).parent / "diffheads"
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            str(exe),
            "train",
            "configs/demo.yaml",
            f"data.root={trained['data']}",
            f"trainer.out_dir={run}",
            *TINY,
            "trainer.devices=2",
            "trainer.strategy=ddp",
            "trainer.accelerator=cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert result["steps"] == 4
    assert load_model(run / "model.ckpt").cfg.trainer.devices == 2


def test_animate_aligns_a_photo_and_pastes_the_face_back(trained, tmp_path, capsys):
    from facevideo import astronaut

    photo = astronaut()
    write_png(tmp_path / "astronaut.png", photo)
    t = np.arange(int(0.8 * 16000)) / 16000
    write_wav(
        tmp_path / "speech.wav", (0.3 * np.sin(2 * np.pi * 200 * t) * np.sin(2 * np.pi * 2 * t)).astype(np.float32)
    )
    common = ["--checkpoint", str(trained["model"]), "--audio", str(tmp_path / "speech.wav"), "--steps", "2", "--quiet"]
    out = tmp_path / "full.mp4"
    run_cli("animate", "--image", str(tmp_path / "astronaut.png"), "--output", str(out), *common)
    frames, fps = read_video(out)
    assert frames.shape == (20, 512, 512, 3) and fps == 25  # full resolution, 0.8 s at 25 fps
    import av

    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 1
    # the picture away from the face is the photo (up to H.264); the face region is generated
    corner = np.abs(frames[:, 400:, :100].astype(int) - photo[None, 400:, :100].astype(int)).mean()
    face = np.abs(frames[:, 100:150, 200:250].astype(int) - photo[None, 100:150, 200:250].astype(int)).mean()
    assert corner < 4 and face > 3 * corner

    run_cli(
        "animate",
        "--image",
        str(tmp_path / "astronaut.png"),
        "--output",
        str(tmp_path / "crop.mp4"),
        "--crop-only",
        *common,
    )
    assert read_video(tmp_path / "crop.mp4")[0].shape == (20, 16, 16, 3)

    write_png(tmp_path / "noise.png", np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    assert main(["animate", "--image", str(tmp_path / "noise.png"), "--output", str(tmp_path / "x.mp4"), *common]) == 2
    assert "no face found" in capsys.readouterr().err
    small = photo[::2, ::2]
    write_png(tmp_path / "two.png", np.concatenate([small, small], axis=1))
    assert main(["animate", "--image", str(tmp_path / "two.png"), "--output", str(tmp_path / "x.mp4"), *common]) == 2
    assert "2 faces found" in capsys.readouterr().err
    assert (
        main(
            [
                "animate",
                "--image",
                str(tmp_path / "astronaut.png"),
                "--output",
                str(tmp_path / "x.mp4"),
                "--mean-face",
                str(tmp_path / "mine.json"),
                *common,
            ]
        )
        == 2
    )
    assert "mean face" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_animate_a_face_video_follows_its_frames(trained, tmp_path):
    from facevideo import moving_face_video

    moving_face_video(tmp_path / "face.mp4", seconds=0.6, fps=25.0, size=256, audio=False)
    write_wav(tmp_path / "v.wav", (0.3 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000)
    run_cli(
        "animate",
        "--checkpoint",
        str(trained["model"]),
        "--video",
        str(tmp_path / "face.mp4"),
        "--audio",
        str(tmp_path / "v.wav"),
        "--output",
        str(tmp_path / "o.mp4"),
        "--steps",
        "2",
        "--quiet",
    )
    frames, _ = read_video(tmp_path / "o.mp4")
    assert frames.shape == (25, 256, 256, 3)  # 1 s of audio over a 0.6 s video played back and forth


def test_train_quiet_prints_nothing(trained, tmp_path):
    """--quiet: no progress bar, no Lightning banners, tips or warnings; only the JSON result on stdout."""
    repo = Path(__file__).parents[1]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffheads.cli",
            "train",
            "configs/demo.yaml",
            f"data.root={trained['data']}",
            f"trainer.out_dir={tmp_path / 'quiet'}",
            *TINY,
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo / "src")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""
    assert json.loads(proc.stdout)["steps"] == 4
