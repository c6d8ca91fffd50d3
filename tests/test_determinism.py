"""Same seed, config and inputs: bit-identical frames on CPU, in this process and in a fresh one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffheads.audio.encoders import LogMelEncoder
from diffheads.checkpoint import load_model
from diffheads.config import SampleConfig, Solver
from diffheads.io.audio import load_audio, write_wav
from diffheads.io.image import write_png
from diffheads.io.video import VideoWriter, read_video
from diffheads.sample.animate import animate
from runcli import run_cli
from tiny import tiny_checkpoint

# the ancestral sampler draws fresh noise at every step: the most seed-dependent solver
SAMPLING = ["--solver", "ancestral", "--steps", "3", "--stabilize-every", "5", "--quiet"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny synthetic test split with embeddings, a model, a face photo and a recording."""
    from skimage import data as images

    from diffheads.synth.speech import sample_voice, synth_speech

    root = tmp_path_factory.mktemp("determinism")
    data = root / "data"
    run_cli(
        "synth",
        str(data),
        "--train-identities",
        "1",
        "--test-identities",
        "1",
        "--clips-per-identity",
        "2",
        "--seconds",
        "1.2",
        "--size",
        "16",
        "--quiet",
    )
    assert run_cli("embed", str(data), "--quiet")["dim"] == LogMelEncoder().dim
    rng = np.random.default_rng(0)
    write_wav(root / "speech.wav", synth_speech(rng, sample_voice(rng), 1.0).audio)
    write_png(root / "face.png", images.astronaut())
    return {
        "data": data,
        "model": tiny_checkpoint(root / "model.ckpt", "model.dropout=0.0"),
        "audio": root / "speech.wav",
        "image": root / "face.png",
    }


def _in_new_process(*args: str) -> None:
    """`diffheads ARGS` in a fresh interpreter (same environment), asserting it succeeded."""
    proc = subprocess.run(
        [sys.executable, "-m", "diffheads.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _decoded(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(frames, audio samples) decoded from an mp4."""
    return read_video(path)[0], load_audio(path)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact equality, printing where and how far two arrays differ when they do (for the failure report)."""
    if a.shape == b.shape and np.array_equal(a, b):
        return True
    if a.shape != b.shape:
        print(f"shapes differ: {a.shape} vs {b.shape}")
    else:
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        print(
            f"{int((diff > 0).sum())} of {diff.size} values differ, by up to {diff.max()}, first at "
            f"{np.unravel_index(np.argmax(diff > 0), diff.shape)}"
        )
    return False


def test_generate_is_bit_identical_across_processes(inputs, tmp_path):
    def args(out: Path, seed: int) -> list[str]:
        return [
            "generate",
            "--checkpoint",
            str(inputs["model"]),
            "--data",
            str(inputs["data"]),
            "--out",
            str(out),
            "--seed",
            str(seed),
            *SAMPLING,
        ]

    assert run_cli(*args(tmp_path / "a", 0))["written"] == 2
    _in_new_process(*args(tmp_path / "b", 0))
    run_cli(*args(tmp_path / "c", 1))
    clips = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.mp4"))
    assert len(clips) == 2 and clips == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.mp4"))
    for rel in clips:
        (fa, sa), (fb, sb), (fc, _) = (_decoded(tmp_path / d / rel) for d in "abc")
        assert fa.shape == (30, 16, 16, 3) and _same(fa, fb) and _same(sa, sb), f"{rel}: other process, other output"
        assert fa.shape == fc.shape and not np.array_equal(fa, fc)  # another seed, other frames


def test_animate_is_bit_identical_across_processes(inputs, tmp_path):
    def args(out: Path, seed: int) -> list[str]:
        return [
            "animate",
            "--checkpoint",
            str(inputs["model"]),
            "--image",
            str(inputs["image"]),
            "--audio",
            str(inputs["audio"]),
            "--output",
            str(out),
            "--seed",
            str(seed),
            *SAMPLING,
        ]

    run_cli(*args(tmp_path / "a.mp4", 0))
    _in_new_process(*args(tmp_path / "b.mp4", 0))
    run_cli(*args(tmp_path / "c.mp4", 7))
    (fa, sa), (fb, sb), (fc, _) = (_decoded(tmp_path / f"{n}.mp4") for n in "abc")
    assert fa.shape == (25, 512, 512, 3)  # 1 s at 25 fps, pasted back into the photo
    assert _same(fa, fb) and _same(sa, sb), "other process, other output"
    assert not np.array_equal(fa, fc)


def test_animate_frames_before_encoding_are_bit_identical(inputs, tmp_path, monkeypatch):
    """The uint8 frames handed to the encoder (no H.264 in between): equal for a seed, different across seeds."""
    handed: list[np.ndarray] = []
    original = VideoWriter.write

    def spy(self: VideoWriter, frame: np.ndarray) -> None:
        handed.append(frame.copy())
        original(self, frame)

    monkeypatch.setattr(VideoWriter, "write", spy)
    model = load_model(inputs["model"])
    sample = SampleConfig(solver=Solver.ANCESTRAL, steps=3, stabilize_every=5)
    runs = []
    for seed in (0, 0, 1):
        handed.clear()
        animate(
            model,
            inputs["audio"],
            tmp_path / f"s{seed}.mp4",
            image=inputs["image"],
            sample=sample,
            seed=seed,
            progress=False,
            crop_only=True,
        )
        runs.append(np.stack(handed))
    assert runs[0].shape == (25, 16, 16, 3)
    assert np.array_equal(runs[0], runs[1])
    # every frame differs across seeds (not only the first): the noise of each frame follows the seed
    assert all(not np.array_equal(a, c) for a, c in zip(runs[0], runs[2]))
