"""SpeechStream and `diffheads stream`: audio pushed in any chunks gives animate's frames, each as soon as it can."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from diffheads.audio.encoders import LogMelEncoder
from diffheads.audio.frames import frames_in_audio
from diffheads.checkpoint import load_model, save_model
from diffheads.cli import main
from diffheads.config import SampleConfig, Solver
from diffheads.diffusion.video import FrameStepper
from diffheads.errors import DiffheadsError
from diffheads.face.portrait import Portrait
from diffheads.io.audio import write_wav
from diffheads.io.image import write_png
from diffheads.io.video import VideoWriter, count_frames
from diffheads.sample.animate import animate, write_animation
from diffheads.sample.inputs import identity_of, load_identity_frame, load_speech
from diffheads.sample.stream import SpeechStream
from diffheads.synth.speech import sample_voice, synth_speech
from runcli import run_cli
from tiny import tiny_checkpoint

SAMPLE = SampleConfig(solver=Solver.ANCESTRAL, steps=2, stabilize_every=7)
SR = 16000


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stream")


@pytest.fixture(scope="module")
def checkpoint(root) -> Path:
    """The tiny model with its zero-initialised layers made random: a fresh one ignores its audio (and most else)."""
    model = load_model(tiny_checkpoint(root / "fresh.ckpt", "model.dropout=0.0"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.unet.parameters():
            if not p.any():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return save_model(root / "model.ckpt", model.unet, model.cfg, model.audio_encoder)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint)


def _speech(path: Path, seconds: float, seed: int, silence_s: float = 0.0, noise: float = 1e-3) -> Path:
    """Synthetic speech with a noise floor `noise` (1e-3: every mel value within 80 dB of the peak), after silence."""
    rng = np.random.default_rng(seed)
    wav = synth_speech(rng, sample_voice(rng), seconds, SR).audio[: round(seconds * SR)]
    wav = wav + noise * rng.standard_normal(len(wav))
    wav[: round(silence_s * SR)] = 0.0
    write_wav(path, wav, SR)
    return path


@pytest.fixture(scope="module")
def face(root) -> Path:
    return write_png(root / "face.png", (np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8))


def _identity(face: Path) -> torch.Tensor:
    return load_identity_frame(face, None, 16)


class _Record:
    """Spies on FrameStepper.step (audio windows, frames in [-1, 1]) and VideoWriter.write (uint8 images)."""

    def __init__(self, monkeypatch) -> None:  # noqa: ANN001
        self.windows: list[torch.Tensor] = []
        self.frames: list[torch.Tensor] = []
        self.images: list[np.ndarray] = []
        step, write = FrameStepper.step, VideoWriter.write

        def spy_step(stepper, audio_window, active=None):  # noqa: ANN001, ANN202
            frame = step(stepper, audio_window, active)
            self.windows.append(audio_window.clone())
            self.frames.append(frame.clone())
            return frame

        def spy_write(writer, image):  # noqa: ANN001, ANN202
            self.images.append(np.array(image))
            write(writer, image)

        monkeypatch.setattr(FrameStepper, "step", spy_step)
        monkeypatch.setattr(VideoWriter, "write", spy_write)

    def take(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[np.ndarray]]:
        out = (self.windows, self.frames, self.images)
        self.windows, self.frames, self.images = [], [], []
        return out


def _animate(model, audio: Path, face: Path, out: Path, record: _Record, sample: SampleConfig = SAMPLE):  # noqa: ANN001
    animate(model, audio, out, image=face, sample=sample, seed=5, progress=False, align=False)
    return record.take()


def _push(stream: SpeechStream, wav: np.ndarray, sizes) -> list:  # noqa: ANN001
    """Push `wav` in chunks of the given sizes (the rest in one), then finish; check each frame came out at once."""
    frames, start = [], 0
    for size in [*sizes, len(wav)]:
        piece = wav[start : start + size]
        start += len(piece)
        got = stream.push(piece)
        # a frame is handed over by the very push that completed its audio window, not later
        assert all(start >= f.audio_needed > start - len(piece) for f in got)
        frames += got
        if start == len(wav):
            break
    return frames + stream.finish()


def _assert_same(streamed: list, record: _Record, reference) -> None:  # noqa: ANN001
    ref_windows, ref_frames, ref_images = reference
    windows, frames, _ = record.take()
    assert [f.index for f in streamed] == list(range(len(ref_images)))
    assert len(windows) == len(ref_windows)
    for a, b in zip(windows, ref_windows):
        assert torch.equal(a, b)  # the embedding rows, bit for bit
    for a, b in zip(frames, ref_frames):
        assert torch.equal(a, b)
    assert np.array_equal(np.stack([f.image for f in streamed]), np.stack(ref_images))


@pytest.mark.parametrize("chunks", ["one_sample", "random", "max_frames"])
def test_short_recording_in_any_chunks_is_animate(model, face, root, monkeypatch, chunks):
    audio = _speech(root / "short.wav", 0.3, seed=2)
    record = _Record(monkeypatch)
    sample = SampleConfig(**{**SAMPLE.__dict__, "max_frames": 5}) if chunks == "max_frames" else SAMPLE
    reference = _animate(model, audio, face, root / "short.mp4", record, sample)
    wav = load_speech(audio)
    assert len(reference[2]) == (5 if chunks == "max_frames" else frames_in_audio(len(wav))) and len(wav) == 4800
    stream = SpeechStream(model, _identity(face), sample, seed=5)
    sizes = [1] * len(wav) if chunks == "one_sample" else np.random.default_rng(3).integers(1, 700, 100).tolist()
    streamed = _push(stream, wav, sizes)
    _assert_same(streamed, record, reference)
    assert stream.matches_whole_recording is True
    # frame t came out as soon as 640 (t + k) + 1960 samples had arrived (k = 2; with max_frames 5, row 4 is the
    # last any frame needs), the others at the end
    last_row = [min(t + 2, 4) if chunks == "max_frames" else t + 2 for t in range(len(streamed))]
    needed = [min(640 * r + 1960, len(wav)) for r in last_row]  # the ones at the end waited for the end
    assert [f.audio_needed for f in streamed] == needed
    assert needed.count(len(wav)) == (0 if chunks == "max_frames" else 5)


def test_long_recording_random_and_ten_second_chunks(model, face, root, monkeypatch):
    audio = _speech(root / "long.wav", 10.5, seed=4)
    record = _Record(monkeypatch)
    reference = _animate(model, audio, face, root / "long.mp4", record)
    wav = load_speech(audio)
    for sizes in (np.random.default_rng(5).integers(1, 4000, 200).tolist(), [10 * SR]):
        stream = SpeechStream(model, _identity(face), SAMPLE, seed=5)
        _assert_same(_push(stream, wav, sizes), record, reference)
        assert stream.matches_whole_recording is True


def test_quiet_start_before_the_peak_is_reported(model, face, root, monkeypatch):
    """Digital silence, then the loudest speech later: the floor (peak - 8) a stream knows early is too low."""
    audio = _speech(root / "quiet.wav", 1.5, seed=6, silence_s=0.4, noise=0.0)
    record = _Record(monkeypatch)
    reference = _animate(model, audio, face, root / "quiet.mp4", record)
    wav = load_speech(audio)
    stream = SpeechStream(model, _identity(face), SAMPLE, seed=5)
    streamed = _push(stream, wav, [320] * 200)
    windows, frames, _ = record.take()
    assert stream.matches_whole_recording is False
    assert not torch.equal(windows[0], reference[0][0])  # the silent rows were floored lower
    assert not all(torch.equal(a, b) for a, b in zip(frames, reference[1]))  # and the model hears it
    assert len(streamed) == len(reference[2])
    # the whole recording in one push: the peak is known before any frame, the frames are animate's again
    stream = SpeechStream(model, _identity(face), SAMPLE, seed=5)
    _assert_same(_push(stream, wav, [len(wav)]), record, reference)
    assert stream.matches_whole_recording is True


def test_portrait_frames_are_pasted_back_as_animate_does(model, root, monkeypatch):
    audio = _speech(root / "short.wav", 0.3, seed=2)
    rng = np.random.default_rng(7)
    to_crop = np.array([[0.5, 0.0, -2.0], [0.0, 0.5, -1.0], [0.0, 0.0, 1.0]])
    portrait = Portrait(
        frames=(rng.random((3, 40, 36, 3)) * 255).astype(np.uint8),
        to_crop=np.stack([to_crop] * 3),
        identity_crop=(rng.random((16, 16, 3)) * 255).astype(np.uint8),
    )
    record = _Record(monkeypatch)
    wav = load_speech(audio)
    emb = LogMelEncoder().encode(wav, frames_in_audio(len(wav)))
    write_animation(
        model,
        identity_of(portrait, 16),
        emb,
        wav,
        root / "pasted.mp4",
        SAMPLE,
        seed=5,
        portrait=portrait,
        progress=False,
    )
    reference = record.take()
    stream = SpeechStream(model, portrait, SAMPLE, seed=5)
    assert stream.frame_size == (40, 36)
    _assert_same(_push(stream, wav, [500] * 20), record, reference)


@pytest.mark.parametrize("name", ["whisper", "wav2vec2", "hubert", "sda"])
def test_whole_recording_encoders_are_refused(model, face, root, name, capsys):
    path = save_model(root / f"{name}.ckpt", model.unet, model.cfg, {"name": name, "path": "/no/weights", "dim": 200})
    with pytest.raises(DiffheadsError, match=f"{name} audio encoder needs the whole recording.*log-mel"):
        SpeechStream(load_model(path), _identity(face))
    code = main(
        [
            "stream",
            "--checkpoint",
            str(path),
            "--image",
            str(face),
            "--no-align",
            "--audio",
            "-",
            "--output",
            str(root / f"{name}.mp4"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot stream" in err[0] and not (root / f"{name}.mp4").exists()


def _tracks(path: Path) -> tuple[float, float]:
    """(video, audio) stream durations in seconds."""
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        return float(v.duration * v.time_base), float(a.duration * a.time_base)


KEYS = {
    "output",
    "frames",
    "seconds",
    "latency_median_ms",
    "latency_p95_ms",
    "first_frame_latency_ms",
    "realtime_factor",
    "lookahead_ms",
    "matches_whole_recording",
}


def test_cli_streams_a_file_in_real_time_and_stdin(checkpoint, face, root, monkeypatch):
    audio = _speech(root / "cli.wav", 0.64, seed=8)
    out = root / "cli" / "file.mp4"
    flags = [
        "--checkpoint",
        str(checkpoint),
        "--image",
        str(face),
        "--no-align",
        "--steps",
        "2",
        "--solver",
        "ancestral",
        "--seed",
        "5",
        "--quiet",
    ]
    began = time.monotonic()
    report = run_cli("stream", *flags, "--audio", str(audio), "--output", str(out), "--realtime")
    assert time.monotonic() - began >= 0.64  # paced as spoken
    assert set(report) == KEYS and report["frames"] == 16 and report["seconds"] == 0.64
    assert report["lookahead_ms"] == 162.5 and report["matches_whole_recording"] is True
    # frame 0 cannot be written before 3240 samples (202.5 ms) were spoken; the first 20 ms chunk came at 20 ms
    assert report["first_frame_latency_ms"] >= 182.5 and report["realtime_factor"] > 0
    assert 0 <= report["latency_median_ms"] <= report["latency_p95_ms"]
    assert count_frames(out) == 16
    video_s, audio_s = _tracks(out)
    assert abs(video_s - 0.64) < 1e-3 and abs(audio_s - 0.64) < 0.03

    pcm = np.round(load_speech(audio) * 32768).clip(-32768, 32767).astype("<i2").tobytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(pcm)))
    piped = root / "cli" / "stdin.mp4"
    report = run_cli("stream", *flags, "--audio", "-", "--output", str(piped), "--chunk-ms", "7")
    assert set(report) == KEYS and report["frames"] == 16 and count_frames(piped) == 16
    assert abs(_tracks(piped)[1] - 0.64) < 0.03
    assert sorted(p.name for p in out.parent.iterdir()) == ["file.mp4", "stdin.mp4"]


def test_cli_stdin_errors_are_one_line(checkpoint, face, root, monkeypatch, capsys):
    for data, message in ((b"", "no audio arrived"), (b"\x01\x02\x03", "middle of a 16-bit sample")):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        code = main(
            [
                "stream",
                "--checkpoint",
                str(checkpoint),
                "--image",
                str(face),
                "--no-align",
                "--audio",
                "-",
                "--output",
                str(root / "bad" / "x.mp4"),
                "--quiet",
            ]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0]
        assert not (root / "bad").exists() or list((root / "bad").iterdir()) == []


@pytest.mark.parametrize("seconds", [2.05, 2.1, 2.5, 2.7])
def test_the_last_stft_chunk_as_log_mel_computes_it(model, face, root, monkeypatch, seconds):
    """log_mel projects its last chunk of STFT frames in one product; with 100-frame chunks, 2.05 s and 2.1 s end in
    chunks of 5 and 11 frames, which MKL multiplies with other kernels: the frames made before the end did not read
    them (2.05 s) or did (2.1 s), and the flag must say which."""
    monkeypatch.setattr(LogMelEncoder, "CHUNK_FRAMES", 100)
    audio = _speech(root / f"chunked{seconds}.wav", seconds, seed=9)
    record = _Record(monkeypatch)
    sample = SampleConfig(solver=Solver.DDIM, steps=1)
    reference = _animate(model, audio, face, root / "chunked.mp4", record, sample)
    stream = SpeechStream(model, _identity(face), sample, seed=5)
    streamed = _push(stream, load_speech(audio), [320] * 1000)
    windows, _, _ = record.take()
    same = all(torch.equal(a, b) for a, b in zip(windows, reference[0]))
    assert stream.matches_whole_recording is same and len(streamed) == len(reference[2])
    if torch.backends.mkl.is_available():  # the case this test is for happens (MKL's narrow kernels round apart)
        assert same is (seconds != 2.1)
    # the frames made at the end read the last chunk as log_mel computes it, whatever the earlier ones did
    at_end = sum(f.audio_needed == len(load_speech(audio)) for f in streamed)
    assert at_end > 0 and all(torch.equal(a, b) for a, b in zip(windows[-at_end:], reference[0][-at_end:]))
