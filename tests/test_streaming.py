"""Streaming output: the atomic VideoWriter, frame-by-frame sampling, and animate on a longer recording."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from diffheads.audio.encoders import LogMelEncoder
from diffheads.checkpoint import load_model
from diffheads.config import DiffusionConfig, ModelConfig, Prediction, SampleConfig, Solver
from diffheads.data.dataset import to_model_frames
from diffheads.diffusion.gaussian import GaussianDiffusion
from diffheads.diffusion.video import sample_video
from diffheads.errors import DiffheadsError
from diffheads.face.paste import paste_back
from diffheads.io.audio import load_audio, write_wav
from diffheads.io.image import write_png
from diffheads.io.video import VideoWriter, read_video, write_video
from diffheads.sample.animate import animate
from diffheads.sample.inputs import load_portrait
from diffheads.sample.runtime import sample_clips, to_uint8
from tiny import tiny_checkpoint


def _gradient_clip(n: int, height: int, width: int) -> np.ndarray:
    """Compressible frames that all differ: a colour ramp and a square moving one pixel per frame."""
    y, x = np.mgrid[0:height, 0:width]
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        frames[t, ..., 0] = 40 + 150 * x / width
        frames[t, ..., 1] = 60 + 120 * y / height
        frames[t, ..., 2] = 100
        frames[t, 4:12, t % (width - 8) : t % (width - 8) + 8] = (230, 30, 30)
    return frames


def _durations(path: Path) -> tuple[float, float]:
    """(video, audio) stream durations in seconds, from the container."""
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        return float(v.duration * v.time_base), float(a.duration * a.time_base)


def _peak_hz(audio: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1.0 / sample_rate)[np.argmax(spectrum)])


def test_video_writer_streams_frames_and_audio(tmp_path):
    n, height, width, sr = 40, 32, 48, 16000
    frames = _gradient_clip(n, height, width)
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(n * sr // 25) / sr)).astype(np.float32)
    path = tmp_path / "out" / "clip.mp4"
    with VideoWriter(path, 25, width, height, audio=tone, sample_rate=sr) as writer:
        for frame in frames:
            writer.write(frame)
            assert not path.exists()  # the target appears only when the block ends
    back, fps = read_video(path)
    assert back.shape == (n, height, width, 3) and fps == 25.0
    assert np.abs(back.astype(float) - frames).mean() < 3.0
    video_s, audio_s = _durations(path)
    assert abs(video_s - n / 25) < 1e-3 and abs(audio_s - n / 25) < 1e-3
    sound = load_audio(path, sr)
    assert len(sound) == len(tone) and abs(_peak_hz(sound, sr) - 440.0) < 2.0
    assert sorted(p.name for p in path.parent.iterdir()) == ["clip.mp4"]


def test_write_video_is_the_writer(tmp_path):
    frames = _gradient_clip(12, 32, 32)
    tone = (0.3 * np.sin(np.arange(12 * 640) / 7)).astype(np.float32)
    write_video(tmp_path / "a.mp4", frames, fps=25, audio=tone)
    with VideoWriter(tmp_path / "b.mp4", 25, 32, 32, audio=tone) as writer:
        for frame in frames:
            writer.write(frame)
    a, b = read_video(tmp_path / "a.mp4")[0], read_video(tmp_path / "b.mp4")[0]
    assert a.shape == (12, 32, 32, 3) and np.array_equal(a, b)
    np.testing.assert_array_equal(load_audio(tmp_path / "a.mp4"), load_audio(tmp_path / "b.mp4"))


@pytest.mark.parametrize("failure", ["exception", "bad_frame", "no_frames"])
def test_video_writer_failure_leaves_no_file(tmp_path, failure):
    folder = tmp_path / "out"
    folder.mkdir()
    frames = _gradient_clip(10, 32, 32) if failure != "no_frames" else []
    error = RuntimeError if failure == "exception" else DiffheadsError
    with (
        pytest.raises(error),
        VideoWriter(folder / "clip.mp4", 25, 32, 32, audio=np.full(6400, 0.1, np.float32)) as writer,
    ):
        for k, frame in enumerate(frames):
            writer.write(frame)
            assert len(list(folder.iterdir())) == 1  # the temporary file, being written
            if k == 5 and failure == "exception":
                raise RuntimeError("interrupted")
            if k == 5 and failure == "bad_frame":
                writer.write(frame[:16])
    assert list(folder.iterdir()) == []


def test_failed_rewrite_keeps_the_old_file(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, _gradient_clip(5, 32, 32))
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt), VideoWriter(path, 25, 32, 32) as writer:
        writer.write(_gradient_clip(1, 32, 32)[0])
        raise KeyboardInterrupt
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_video_writer_rejects_odd_size(tmp_path):
    with pytest.raises(DiffheadsError, match="even"):
        VideoWriter(tmp_path / "odd.mp4", 25, 31, 32)
    assert list(tmp_path.iterdir()) == []


class _MotionEcho(torch.nn.Module):
    """x0 = tanh(noise + newest motion frame + audio): every frame depends on the frames before it."""

    def __init__(self, log: list[str] | None = None) -> None:
        super().__init__()
        self.log = log

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:  # noqa: ANN001
        if self.log is not None:
            self.log.append("model")
        x0 = torch.tanh(x + cond.motion_frames[:, -1:] + cond.audio_window[:, :1, :1, None])
        return torch.cat([x0, torch.zeros_like(x0)], dim=1)


def _loop_args(lengths: list[int], size: int = 8, dim: int = 2) -> tuple:
    mcfg = ModelConfig(image_size=size, n_motion_frames=2, n_audio_motion_embs=2, grayscale_motion=True)
    process = GaussianDiffusion.from_config(DiffusionConfig(prediction=Prediction.X0)).respace(2)
    sample = SampleConfig(solver=Solver.DDIM, steps=2, eta=0.5, stabilize_every=4)
    g = torch.Generator().manual_seed(1)
    identity = torch.rand(len(lengths), 3, size, size, generator=g) * 2 - 1
    embs = [torch.randn(n, dim, generator=g) for n in lengths]
    return process, identity, embs, mcfg, sample


def test_streamed_frames_equal_the_collected_ones():
    """Same seed: the frames handed to on_frame without collecting are bit-identical to the returned clips."""
    lengths = [9, 5, 7]
    process, identity, embs, mcfg, sample = _loop_args(lengths)
    collected = sample_video(
        _MotionEcho(), process, identity, embs, mcfg, sample, torch.Generator().manual_seed(3), progress=False
    )
    streamed: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(lengths))}

    def keep(t: int, frames: torch.Tensor) -> None:
        active = [i for i, n in enumerate(lengths) if n > t]
        assert frames.shape[0] == len(active)
        for row, i in enumerate(active):
            streamed[i].append(frames[row].clone())

    out = sample_video(
        _MotionEcho(),
        process,
        identity,
        embs,
        mcfg,
        sample,
        torch.Generator().manual_seed(3),
        progress=False,
        on_frame=keep,
        keep_frames=False,
    )
    assert out == []
    for i, n in enumerate(lengths):
        assert len(streamed[i]) == n
        assert torch.equal(torch.stack(streamed[i]), collected[i])


def test_streaming_hands_each_frame_over_before_the_next_is_sampled():
    log: list[str] = []
    process, identity, embs, mcfg, sample = _loop_args([6])
    sample_video(
        _MotionEcho(log),
        process,
        identity,
        embs,
        mcfg,
        sample,
        progress=False,
        on_frame=lambda t, f: log.append(f"frame {t}"),
        keep_frames=False,
    )
    # 2 solver steps per frame, each frame delivered right after its own steps
    assert log == [e for t in range(6) for e in ("model", "model", f"frame {t}")]


def _largest_allocation(fn) -> int:  # noqa: ANN001
    """Bytes of the largest memory any single torch operator allocated (and kept) while fn ran."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(e.self_cpu_memory_usage for e in prof.events())


def test_streaming_allocates_nothing_that_grows_with_the_clip():
    n_frames, size = 80, 16
    process, identity, embs, mcfg, sample = _loop_args([n_frames], size=size, dim=2)
    frame_bytes = 3 * size * size * 4

    def run(keep_frames: bool) -> int:
        return _largest_allocation(
            lambda: sample_video(
                _MotionEcho(),
                process,
                identity,
                embs,
                mcfg,
                sample,
                progress=False,
                on_frame=lambda t, f: None,
                keep_frames=keep_frames,
            )
        )

    # the collecting loop holds the whole clip in one tensor: the measurement can see it
    assert run(True) >= n_frames * frame_bytes
    assert run(False) <= 4 * frame_bytes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(
        tmp_path_factory.mktemp("streaming") / "model.ckpt", "model.dropout=0.0", "sample.solver=ddim", "sample.steps=2"
    )


def test_animate_streams_a_long_recording(checkpoint, tmp_path, monkeypatch):
    """4.2 s of speech onto the astronaut, pasted back: 105 frames, both tracks 4.2 s, the frames the loop made."""
    from skimage import data

    from diffheads.synth.speech import sample_voice, synth_speech

    rng = np.random.default_rng(0)
    seconds, sr = 4.2, 16000
    write_wav(tmp_path / "speech.wav", synth_speech(rng, sample_voice(rng), seconds, sr).audio, sr)
    write_png(tmp_path / "face.png", data.astronaut())
    written: list[np.ndarray] = []
    original = VideoWriter.write

    def spy(self: VideoWriter, frame: np.ndarray) -> None:
        written.append(frame.copy())
        original(self, frame)

    monkeypatch.setattr(VideoWriter, "write", spy)
    model = load_model(checkpoint)
    sample = SampleConfig(solver=Solver.DDIM, steps=2, stabilize_every=10)
    out = animate(
        model,
        tmp_path / "speech.wav",
        tmp_path / "talk.mp4",
        image=tmp_path / "face.png",
        sample=sample,
        progress=False,
    )
    frames, fps = read_video(out)
    n = round(seconds * 25)
    assert frames.shape == (n, 512, 512, 3) and fps == 25.0 and len(written) == n
    video_s, audio_s = _durations(out)
    assert abs(video_s - seconds) < 1e-3 and abs(audio_s - seconds) < 0.03  # AAC: within a 1024-sample frame
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.png", "speech.wav", "talk.mp4"]
    # what was encoded is exactly the non-streaming pipeline: the whole clip sampled, then pasted back
    portrait = load_portrait(tmp_path / "face.png", None, 16)
    identity = to_model_frames(portrait.identity_crop[None], 16)
    emb = LogMelEncoder().encode(load_audio(tmp_path / "speech.wav"), n)
    clip = to_uint8(sample_clips(model, identity, [emb], sample, seed=0, progress=False)[0])
    for k in (0, 9, 10, 11, n - 1):
        background, to_crop = portrait.background(k)
        assert np.array_equal(written[k], paste_back(background, clip[k], to_crop))
