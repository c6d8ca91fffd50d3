"""`diffheads stream`: audio in chunks (a file, or PCM on standard input) through a SpeechStream into an mp4."""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm.auto import tqdm

from diffheads.audio.frames import FPS, SAMPLE_RATE
from diffheads.checkpoint import LoadedModel
from diffheads.config import SampleConfig
from diffheads.errors import DiffheadsError
from diffheads.io.outdir import output_dir
from diffheads.io.video import LiveAudioVideoWriter
from diffheads.sample.inputs import identity_of, load_identity_frame, load_portrait, load_speech
from diffheads.sample.person import refuse_strangers
from diffheads.sample.runtime import model_on
from diffheads.sample.stream import SAMPLES_PER_FRAME, SpeechStream, StreamFrame

PCM_HINT = "send 16 kHz mono s16le PCM: ffmpeg -i SPEECH -f s16le -ar 16000 -ac 1 - | diffheads stream ... --audio -"


def file_chunks(path: str | Path, chunk: int) -> Iterator[np.ndarray]:
    """A recording (any format PyAV reads, as 16 kHz mono float32) in pieces of `chunk` samples."""
    wav = load_speech(path)
    for start in range(0, len(wav), chunk):
        yield wav[start : start + chunk]


def pcm_chunks(source: BinaryIO, chunk: int) -> Iterator[np.ndarray]:
    """16 kHz mono s16le PCM from a byte stream as float32, each piece what has arrived (at most `chunk` samples)."""
    read = getattr(source, "read1", source.read)  # read1: return what a pipe holds now, not wait for a full chunk
    rest = b""
    while data := read(2 * chunk):
        data = rest + data
        usable = len(data) // 2 * 2
        rest = data[usable:]
        if usable:
            yield np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
    if rest:
        raise DiffheadsError(f"standard input ended in the middle of a 16-bit sample; {PCM_HINT}")


def paced(chunks: Iterable[np.ndarray], realtime: bool) -> Iterator[tuple[np.ndarray, float]]:
    """(chunk, time.monotonic() it arrived at): when read, or with `realtime` when its last sample is spoken.

    Real time starts with the first chunk; a chunk read early waits for its time, one read late (the stream fell
    behind) still arrived at its time, so its frames' latency counts the wait.
    """
    start, fed = None, 0
    for chunk in chunks:
        now = time.monotonic()
        if not realtime:
            yield chunk, now
            continue
        start = now if start is None else start
        fed += len(chunk)
        spoken = start + fed / SAMPLE_RATE
        time.sleep(max(0.0, spoken - now))
        yield chunk, spoken


class _Timings:
    """When the chunks arrived and the frames were written; a frame's latency runs from the arrival of the last
    sample its audio window needs (the end of the input for the last frames) to its write."""

    def __init__(self) -> None:
        self.chunk_ends: list[int] = []  # samples received after each chunk
        self.arrived: list[float] = []  # when each chunk arrived (time.monotonic)
        self.latencies: list[float] = []
        self.first_frame: float | None = None
        self.busy = 0.0  # seconds spent sampling, pasting and encoding: not waiting for audio

    def chunk(self, n_samples: int, at: float) -> None:
        self.chunk_ends.append((self.chunk_ends[-1] if self.chunk_ends else 0) + n_samples)
        self.arrived.append(at)

    def written(self, frame: StreamFrame, ready: float | None = None) -> None:
        now = time.monotonic()
        self.first_frame = self.first_frame or now
        if ready is None:
            ready = self.arrived[bisect.bisect_left(self.chunk_ends, frame.audio_needed)]
        self.latencies.append(now - ready)

    def report(self) -> dict:
        """Frames, latency (median, p95, first frame from the first chunk), real-time factor (video s per busy s)."""
        seconds = len(self.latencies) / FPS
        median, p95 = np.percentile(self.latencies, [50, 95]) * 1000.0
        return {
            "frames": len(self.latencies),
            "seconds": seconds,
            "latency_median_ms": round(float(median), 3),
            "latency_p95_ms": round(float(p95), 3),
            "first_frame_latency_ms": round((self.first_frame - self.arrived[0]) * 1000.0, 3),
            "realtime_factor": round(seconds / max(self.busy, 1e-9), 4),
        }


def stream_video(
    checkpoint: str | Path | LoadedModel,
    audio: str | Path | BinaryIO,
    output: str | Path,
    image: str | Path | None = None,
    video: str | Path | None = None,
    sample: SampleConfig | None = None,
    seed: int = 0,
    device: str = "cpu",
    realtime: bool = False,
    chunk_ms: float = 20.0,
    progress: bool = True,
    align: bool = True,
    crop_only: bool = False,
    mean_face: str | Path | None = None,
    margins: tuple[float, float, float] | None = None,
    any_face: bool = False,
) -> dict:
    """Animate the face of `image` / `video` (as `animate` does) with `audio` fed in chunks of `chunk_ms`, writing each
    frame into `output` (with the audio) as soon as the stream gives it; returns the frame count and timings.

    `audio` is a file (read at its real pace with `realtime`, else as fast as possible) or a binary stream of 16 kHz
    mono s16le PCM (standard input). Latency of a frame: from the arrival of the last sample its audio window needs
    (the end of the input for the last frames) to its write. The output appears only once complete. A model that
    records its person refuses anyone else's face (sample/person.py) unless `any_face`.
    """
    if chunk_ms <= 0:
        raise DiffheadsError(f"--chunk-ms must be positive, got {chunk_ms}")
    model = model_on(checkpoint, device)
    size = model.cfg.model.frame_size
    portrait = load_portrait(image, video, size, mean_face, margins) if align else None
    identity = identity_of(portrait, size) if portrait is not None else load_identity_frame(image, video, size)
    refuse_strangers(model, identity, any_face, "stream")
    stream = SpeechStream(model, identity if crop_only or portrait is None else portrait, sample, seed)
    chunk = max(1, round(chunk_ms * SAMPLE_RATE / 1000.0))
    pieces = pcm_chunks(audio, chunk) if hasattr(audio, "read") else file_chunks(audio, chunk)
    out = Path(output)
    height, width = stream.frame_size
    timings = _Timings()
    with (
        output_dir(out.parent, "folder of --output"),
        LiveAudioVideoWriter(out, FPS, width, height, SAMPLE_RATE) as writer,
        tqdm(desc="frames", unit="frame", disable=not progress) as bar,
    ):
        _feed(stream, paced(pieces, realtime), writer, timings, bar)
        _finish(stream, realtime, writer, timings, bar)
    return {
        "output": str(out),
        **timings.report(),
        "lookahead_ms": stream.lookahead * 1000.0 / SAMPLE_RATE,
        "matches_whole_recording": stream.matches_whole_recording,
    }


def _feed(
    stream: SpeechStream,
    chunks: Iterable[tuple[np.ndarray, float]],
    writer: LiveAudioVideoWriter,
    timings: _Timings,
    bar: tqdm,
) -> None:
    """Push each (chunk, arrival time) into `stream`, writing its audio and the frames it completes."""
    for piece, at in chunks:
        began = time.monotonic()
        timings.chunk(len(piece), at)
        writer.append_audio(piece)
        for frame in stream.push(piece):
            writer.write(frame.image)
            timings.written(frame)
            bar.update()
        timings.busy += time.monotonic() - began


def _finish(stream: SpeechStream, realtime: bool, writer: LiveAudioVideoWriter, timings: _Timings, bar: tqdm) -> None:
    """Write the frames left once the input has ended, and trim the audio to the video's length."""
    if not timings.arrived:
        raise DiffheadsError(f"no audio arrived; {PCM_HINT}")
    began = time.monotonic()
    end_of_input = timings.arrived[-1] if realtime else began  # a live input ends when its last chunk is spoken
    for frame in stream.finish():
        writer.write(frame.image)
        timings.written(frame, end_of_input)
        bar.update()
    writer.limit_audio(round(writer.frames_written * SAMPLES_PER_FRAME))
    timings.busy += time.monotonic() - began
