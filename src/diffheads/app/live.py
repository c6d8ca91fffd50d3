"""The app's live mode: microphone chunks in, frames out while the person speaks, with the latency measured.

A `LiveSession` wraps one `SpeechStream`. The page's stream handler calls `feed` with each chunk as the browser
sends it (any rate, int or float, mono or multichannel): it is resampled to 16 kHz mono (one soxr stream across
the chunks, so the result equals resampling the whole recording at once) and queued, and the handler returns at
once with `show()`, the newest frame and the readout. A worker thread pushes the queued audio into the stream in
arrival order, chunk by chunk, holding the device lock for each push, and writes every frame with the audio
into an mp4. `finish` (the recording stopped) lets the worker drain the queue, call the stream's `finish` and
close the mp4; `close` (the visitor left) drops everything.

Falling behind: every chunk is processed, in order; nothing is dropped or merged. A device slower than 25 frames/s
therefore builds a backlog of queued audio and the latency grows with it, which the readout shows (latency,
frames/s, backlog); a session takes at most `max_seconds` of audio, so the work a visitor can queue is bounded.
The handler must stay quick: Gradio sends a stream handler only the newest chunk once it returns, so audio
captured during a slow handler would be lost.

Latency of a frame: from the arrival of the chunk that completed its audio window (the stop, for the last
frames) to the moment the page is handed the frame. Add the stream's look-ahead (`SpeechStream.lookahead`,
162.5 ms with the defaults) and the chunk length to get from the speaker's mouth to the page.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from diffheads.audio.frames import FPS, SAMPLE_RATE
from diffheads.errors import DiffheadsError
from diffheads.io.video import LiveAudioVideoWriter
from diffheads.sample.stream import SAMPLES_PER_FRAME, SpeechStream, StreamFrame

LIVE_SECONDS = 120.0  # most audio one live session takes: bounds the work a visitor can queue on a slow device
RATE_WINDOW_S = 2.0  # frames/s counts the frames made in this many latest seconds


def to_float_mono(samples: np.ndarray) -> np.ndarray:
    """A microphone chunk (samples,) or (samples, channels), int PCM or float in [-1, 1], as mono float32."""
    data = np.asarray(samples)
    if data.ndim not in (1, 2) or not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise DiffheadsError(
            f"a microphone chunk must be a 1-D or (samples, channels) array of numbers, got {data.dtype} {data.shape}"
        )
    if np.issubdtype(data.dtype, np.integer):
        data = data / float(2 ** (8 * data.dtype.itemsize - 1))  # int16: / 32768, as PCM is read everywhere
    if data.ndim == 2:
        data = data.mean(axis=1)
    return np.ascontiguousarray(data, dtype=np.float32)


class Resampler:
    """Chunks at the microphone's rate to 16 kHz mono float32, with one soxr stream across chunk boundaries."""

    def __init__(self) -> None:
        self.rate: int | None = None
        self._soxr: soxr.ResampleStream | None = None

    def __call__(self, rate: int, samples: np.ndarray) -> np.ndarray:
        rate = int(rate)
        if rate <= 0:
            raise DiffheadsError(f"the microphone's sample rate must be positive, got {rate}")
        if self.rate is None:
            self.rate = rate
            self._soxr = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
        elif rate != self.rate:
            raise DiffheadsError(
                f"the microphone's sample rate changed from {self.rate} to {rate} Hz during the "
                "recording; stop and record again"
            )
        mono = to_float_mono(samples)
        return mono if self._soxr is None else self._soxr.resample_chunk(mono)

    def flush(self) -> np.ndarray:
        """The samples soxr still holds back, at the end of the recording."""
        if self._soxr is None:
            return np.zeros(0, np.float32)
        return self._soxr.resample_chunk(np.zeros(0, np.float32), last=True)


@dataclass(frozen=True)
class LiveView:
    """What the live tab shows after a chunk: the newest frame (None: none new since the last view) and numbers."""

    frame: np.ndarray | None  # uint8 (H, W, 3), only when not shown before
    frames: int  # frames made so far
    latency_s: float | None  # the last frame shown: from the arrival of its audio to being handed to the page
    median_latency_s: float | None  # over the frames shown
    fps: float | None  # frames made per second over the latest RATE_WINDOW_S (25 when keeping up with speech)
    backlog_s: float  # audio received and not yet pushed into the stream
    received_s: float  # audio received in all
    lookahead_s: float  # the stream's look-ahead, not part of latency_s
    work_fps: float | None  # frames made per second of work (pushing, sampling, encoding; not waiting for audio)
    limited: bool  # the session reached its audio limit; later audio is ignored
    max_seconds: float
    done: bool  # finished (or failed): nothing more will come
    video: Path | None  # the mp4, once finished
    error: str | None  # one line, when the session failed

    def describe(self) -> str:
        """The readout, one line of Markdown (the error, if any, is the caller's to show)."""
        if self.done:
            median = "n/a" if self.median_latency_s is None else f"{self.median_latency_s * 1000:.0f} ms"
            work = "n/a" if self.work_fps is None else f"{self.work_fps:.1f}"
            return (
                f"**Done: {self.frames} frames ({self.frames / FPS:.2f} s)** · median latency {median} · "
                f"{work} frames per second of work (25 keeps up) · the video with its audio is below."
            )
        if self.frames == 0:
            line = (
                f"Listening: {self.received_s:.1f} s of audio received; the first frame needs "
                f"{self.lookahead_s + SAMPLES_PER_FRAME / SAMPLE_RATE:.2f} s of it"
            )
        else:
            latency = "n/a" if self.latency_s is None else f"{self.latency_s * 1000:.0f} ms"
            fps = "n/a" if self.fps is None else f"{self.fps:.1f}"
            line = (
                f"**{self.frames} frames** · latency **{latency}** (last frame, from the arrival of the audio "
                f"that completed it; plus {self.lookahead_s * 1000:.1f} ms of look-ahead) · **{fps} frames/s** "
                f"(25 keeps up) · backlog {self.backlog_s:.1f} s of audio"
            )
        if self.limited:
            line += f" · reached the {self.max_seconds:g} s limit: stop the recording to get the video"
        return line + "."


class _Closed(Exception):
    """The session was dropped (the visitor left): the worker stops and removes the unfinished mp4."""


class LiveSession:
    """One visitor's live recording through `stream`, written into `output` (mp4) as the frames come.

    `device_lock` is held around each push (the app's one-job-at-a-time lock); `on_frame` sees every frame as it is
    made (tests, or another display); `clock` gives arrival and display times (time.monotonic).
    """

    def __init__(
        self,
        stream: SpeechStream,
        output: str | Path,
        device_lock: threading.Lock | None = None,
        max_seconds: float = LIVE_SECONDS,
        on_frame: Callable[[StreamFrame], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_seconds <= 0:
            raise DiffheadsError(f"max_seconds must be positive, got {max_seconds}")
        self.stream = stream
        self.output = Path(output)
        self.max_seconds = float(max_seconds)
        self._device = device_lock if device_lock is not None else contextlib.nullcontext()
        self._on_frame = on_frame
        self._clock = clock
        height, width = stream.frame_size
        self._writer = LiveAudioVideoWriter(self.output, FPS, width, height, SAMPLE_RATE)
        self._writer.__enter__()
        self._resample = Resampler()
        self._cond = threading.Condition()
        # shared with the worker, under _cond
        self._pending: deque[tuple[np.ndarray, float]] = deque()  # (16 kHz samples, arrival) not yet pushed
        self._backlog = 0  # samples in _pending
        self._received = 0
        self._limited = False
        self._ended_at: float | None = None  # when finish() was called
        self._closed = False
        self._frames = 0
        self._newest: tuple[StreamFrame, float] | None = None  # (frame, arrival of the audio that completed it)
        self._made: deque[float] = deque()  # when the frames of the latest RATE_WINDOW_S were made
        self._first_made: float | None = None
        self._shown = -1  # index of the newest frame handed to the page
        self._latency: float | None = None
        self._latencies: list[float] = []
        self._busy = 0.0  # seconds the worker spent pushing, sampling and encoding
        self._error: str | None = None
        self.video: Path | None = None
        self._done = threading.Event()
        self._worker = threading.Thread(target=self._run, name="diffheads-live", daemon=True)
        self._worker.start()

    # ---- the page's side ------------------------------------------------------------------------------
    def feed(self, rate: int, samples: np.ndarray) -> None:
        """Queue a microphone chunk (`rate` Hz) for the worker; quick. Ignored once finished or at the limit."""
        arrived = self._clock()
        with self._cond:
            if self._ended_at is not None or self._closed:
                return
            mono = self._resample(rate, samples)
            self._queue(mono, arrived)

    def finish(self) -> None:
        """The recording has ended: the worker pushes what is queued, then the stream's last frames, then closes
        the mp4. Returns at once; `wait` for the end."""
        with self._cond:
            if self._ended_at is not None or self._closed:
                return
            self._ended_at = self._clock()
            self._queue(self._resample.flush(), self._ended_at)
            self._cond.notify_all()

    def close(self) -> None:
        """Drop the session (the visitor left): the worker stops after its current push, the mp4 is not written."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the session has ended (finished, failed or closed), waiting up to `timeout` seconds."""
        return self._done.wait(timeout)

    def show(self) -> LiveView:
        """The view to hand to the page now; its frame is the newest one if the page has not been given it yet."""
        with self._cond:
            now = self._clock()
            frame = None
            if self._newest is not None and self._newest[0].index > self._shown:
                newest, arrived = self._newest
                frame, self._shown = newest.image, newest.index
                self._latency = now - arrived
                self._latencies.append(self._latency)
            while self._made and self._made[0] <= now - RATE_WINDOW_S:
                self._made.popleft()
            span = min(RATE_WINDOW_S, now - self._first_made) if self._first_made is not None else 0.0
            fps = len(self._made) / span if span >= RATE_WINDOW_S / 4 else None  # too early to tell before
            return LiveView(
                frame=frame,
                frames=self._frames,
                latency_s=self._latency,
                median_latency_s=float(np.median(self._latencies)) if self._latencies else None,
                fps=fps,
                backlog_s=self._backlog / SAMPLE_RATE,
                received_s=self._received / SAMPLE_RATE,
                lookahead_s=self.stream.lookahead / SAMPLE_RATE,
                work_fps=self._frames / self._busy if self._frames and self._busy > 0 else None,
                limited=self._limited,
                max_seconds=self.max_seconds,
                done=self._done.is_set(),
                video=self.video,
                error=self._error,
            )

    def _queue(self, samples: np.ndarray, arrived: float) -> None:
        """Add resampled audio to the worker's queue, up to the session's limit; _cond is held."""
        room = round(self.max_seconds * SAMPLE_RATE) - self._received
        if len(samples) > room:
            samples, self._limited = samples[: max(room, 0)], True
        if len(samples):
            self._pending.append((samples, arrived))
            self._backlog += len(samples)
            self._received += len(samples)
            self._cond.notify_all()

    # ---- the worker ------------------------------------------------------------------------------------
    def _run(self) -> None:
        failure: BaseException | None = None
        try:
            while (piece := self._next()) is not None:
                samples, arrived = piece
                began = time.perf_counter()
                with self._device:
                    frames = self.stream.push(samples)
                self._writer.append_audio(samples)
                for frame in frames:
                    self._made_frame(frame, arrived)
                self._work(began)
            began = time.perf_counter()
            self._end()
            self._work(began)
        except BaseException as e:  # noqa: BLE001 (any failure ends the session; the mp4 is removed)
            failure = e
            if not isinstance(e, _Closed):
                with self._cond:
                    self._error = str(e) if isinstance(e, DiffheadsError) else f"the live stream failed: {e}"
            self._writer.__exit__(type(e), e, e.__traceback__)
        finally:
            self._done.set()
        if failure is not None and not isinstance(failure, DiffheadsError | _Closed):
            raise failure  # a bug: threading's excepthook prints it

    def _next(self) -> tuple[np.ndarray, float] | None:
        """The next queued piece, waiting for one; None once the recording has ended and all was pushed."""
        with self._cond:
            while not self._pending and self._ended_at is None and not self._closed:
                self._cond.wait()
            if self._closed:
                raise _Closed()
            if not self._pending:
                return None
            samples, arrived = self._pending.popleft()
            self._backlog -= len(samples)
            return samples, arrived

    def _work(self, began: float) -> None:
        with self._cond:
            self._busy += time.perf_counter() - began

    def _made_frame(self, frame: StreamFrame, arrived: float) -> None:
        self._writer.write(frame.image)
        if self._on_frame is not None:
            self._on_frame(frame)
        with self._cond:
            self._frames += 1
            self._newest = (frame, arrived)
            now = self._clock()
            self._made.append(now)
            while self._made[0] <= now - RATE_WINDOW_S:
                self._made.popleft()
            if self._first_made is None:
                self._first_made = now

    def _end(self) -> None:
        """The stream's last frames, then the mp4 (audio cut at the last frame's end)."""
        if self._received == 0:
            raise DiffheadsError(
                "no audio arrived from the microphone; check it is allowed and not muted, then record again"
            )
        with self._device:
            frames = self.stream.finish()
        for frame in frames:
            self._made_frame(frame, self._ended_at)
        self._writer.limit_audio(self._writer.frames_written * SAMPLES_PER_FRAME)
        self._writer.__exit__(None, None, None)
        with self._cond:
            self.video = self.output
