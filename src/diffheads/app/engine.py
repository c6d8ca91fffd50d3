"""What the web app does, without the web page: align an uploaded face, animate it, one job at a time.

`Studio` holds one loaded model and its audio encoder. Jobs from all visitors go through one lock,
so the device runs one animation at a time whatever the web server does; each visitor (a key, the
page's session) can cancel their own job, which stops it after the frame being sampled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from diffheads.audio.encoders import build_encoder, frames_in_audio
from diffheads.checkpoint import LoadedModel
from diffheads.config import SampleConfig, Solver
from diffheads.errors import DiffheadsError
from diffheads.face.portrait import FPS, Portrait
from diffheads.generate import check_audio_width, identity_of, load_portrait, load_speech, write_animation

OUTPUT_MODES = {"pasted back": "the face is pasted back into the full picture", "crop": "the aligned face crop only"}
DEFAULT_SOLVER = Solver.DPMPP_2M
DEFAULT_STEPS = 10  # benchmarks/RESULTS.md: fewest dpm++2m steps matching 200-step DDPM on the demo


class Cancelled(Exception):
    """The visitor cancelled their job; the unfinished video has been removed."""


@dataclass(frozen=True)
class Settings:
    """The choices on the page."""

    solver: str = DEFAULT_SOLVER.value
    steps: int = DEFAULT_STEPS
    stabilize_every: int = 0
    seed: int = 0
    output_mode: str = "pasted back"

    def check(self) -> None:
        if self.solver not in [s.value for s in Solver]:
            raise DiffheadsError(f"unknown sampler {self.solver!r}; choose one of {', '.join(s.value for s in Solver)}")
        if not 1 <= self.steps <= 1000:
            raise DiffheadsError(f"steps must be between 1 and 1000, got {self.steps}")
        if self.stabilize_every < 0:
            raise DiffheadsError(f"stabilisation interval must be 0 (off) or positive, got {self.stabilize_every}")
        if self.output_mode not in OUTPUT_MODES:
            raise DiffheadsError(f"unknown output mode {self.output_mode!r}; choose one of {', '.join(OUTPUT_MODES)}")


@dataclass
class Progress:
    """Where a running job is, for the progress bar."""

    done: int
    total: int
    elapsed_s: float  # since the first frame's sampling began

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the pace so far (None before the first frame)."""
        return None if self.done == 0 else self.elapsed_s / self.done * (self.total - self.done)

    def describe(self) -> str:
        eta = self.eta_s
        left = "estimating time left" if eta is None else f"about {eta:.0f} s left"
        return f"frame {self.done}/{self.total}, {left}"


@dataclass
class Animation:
    """A finished job: the video and what was used to make it."""

    video: Path
    frames: int
    seconds: float  # video duration
    settings: Settings
    timing_s: dict[str, float]

    def report(self, model_name: str, device: str) -> dict:
        """Settings and timing, as shown on the page."""
        sampling = self.timing_s["sampling"]
        return {
            "model": model_name,
            "device": device,
            **asdict(self.settings),
            "frames": self.frames,
            "duration_s": round(self.seconds, 2),
            "timing_s": {k: round(v, 2) for k, v in self.timing_s.items()},
            "sampling_s_per_video_second": round(sampling / self.seconds, 2) if self.seconds else None,
        }


class Studio:
    """One model on one device, animating faces for any number of visitors, one job at a time."""

    def __init__(self, model: LoadedModel, name: str, device: str) -> None:
        if not model.audio_encoder:
            raise DiffheadsError(f"{name} does not record its audio encoder; retrain or re-export it with diffheads")
        self.model = model
        self.name = name
        self.device = device
        self.encoder = build_encoder(model.audio_encoder, device)
        self._device_lock = threading.Lock()
        self._jobs: dict[str, set[threading.Event]] = {}  # cancellation flags of the running jobs, per visitor
        self._jobs_lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.model.cfg.model.image_size

    def default_settings(self) -> Settings:
        """The page's starting values: fast sampling, the model's own stabilisation interval."""
        return Settings(stabilize_every=self.model.cfg.sample.stabilize_every)

    def align(self, face: str | Path, is_video: bool) -> Portrait:
        """Find and align the one face of an uploaded photo or video (errors name 'the photo' / 'the video')."""
        what = "the video" if is_video else "the photo"
        try:
            return load_portrait(None if is_video else face, face if is_video else None, self.size)
        except DiffheadsError as e:
            raise DiffheadsError(str(e).replace(str(face), what)) from None

    def cancel(self, key: str) -> None:
        """Stop visitor `key`'s running or waiting jobs after their current frame (later jobs are not affected)."""
        with self._jobs_lock:
            for flag in self._jobs.get(key, ()):
                flag.set()

    @contextlib.contextmanager
    def _job(self, key: str) -> Iterator[threading.Event]:
        """A cancellation flag of this job alone, registered under `key` while the job runs."""
        flag = threading.Event()
        with self._jobs_lock:
            self._jobs.setdefault(key, set()).add(flag)
        try:
            yield flag
        finally:
            with self._jobs_lock:
                self._jobs[key].discard(flag)
                if not self._jobs[key]:
                    del self._jobs[key]

    def animate(
        self,
        key: str,
        portrait: Portrait,
        audio: str | Path,
        output: str | Path,
        settings: Settings,
        on_progress: Callable[[Progress], None] | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> Animation:
        """Animate `portrait` with `audio` into `output`; raises Cancelled if visitor `key` cancels.

        `on_wait` is called when the job has to wait for another one to finish first.
        """
        with self._job(key) as flag:
            return self._animate(flag, portrait, audio, output, settings, on_progress, on_wait)

    def _animate(
        self,
        flag: threading.Event,
        portrait: Portrait,
        audio: str | Path,
        output: str | Path,
        settings: Settings,
        on_progress: Callable[[Progress], None] | None,
        on_wait: Callable[[], None] | None,
    ) -> Animation:
        settings.check()
        started = time.perf_counter()
        wav = load_speech(audio)
        n_frames = frames_in_audio(len(wav))
        if n_frames == 0:
            raise DiffheadsError("the audio is shorter than one video frame (40 ms); record or upload longer speech")
        prepared = time.perf_counter()
        if not self._device_lock.acquire(blocking=False):
            if on_wait is not None:
                on_wait()
            self._device_lock.acquire()
        try:
            if flag.is_set():
                raise Cancelled()
            waited = time.perf_counter()
            emb = self.encoder.encode(wav, n_frames)
            check_audio_width(self.model, emb.shape[1], "the audio")
            encoded = time.perf_counter()

            def written(done: int, total: int) -> None:
                if on_progress is not None:
                    on_progress(Progress(done, total, time.perf_counter() - encoded))
                if flag.is_set():
                    raise Cancelled()

            sample = self._sample_config(settings)
            if on_progress is not None:
                on_progress(Progress(0, n_frames, 0.0))
            out = write_animation(
                self.model, identity_of(portrait, self.size), emb, wav, output, sample, settings.seed,
                portrait=portrait if settings.output_mode == "pasted back" else None, progress=False,
                on_written=written,
            )
            sampled = time.perf_counter()
        finally:
            self._device_lock.release()
        timing = {
            "audio_loading": prepared - started,
            "queue_wait": waited - prepared,
            "audio_encoding": encoded - waited,
            "sampling": sampled - encoded,
            "total": sampled - started,
        }
        return Animation(out, n_frames, n_frames / FPS, settings, timing)

    def _sample_config(self, settings: Settings) -> SampleConfig:
        """The model's own sampling configuration with the page's choices, one whole clip, no compilation."""
        return dataclasses.replace(
            self.model.cfg.sample, solver=Solver(settings.solver), steps=settings.steps,
            stabilize_every=settings.stabilize_every, batch_size=1, max_frames=0, compile=False,
        )


def crop_preview(portrait: Portrait, min_size: int = 256) -> np.ndarray:
    """The aligned crop, as the model sees it, enlarged by a whole factor (nearest neighbour) to >= min_size px."""
    crop = portrait.identity_crop
    factor = max(1, -(-min_size // crop.shape[0]))
    return np.repeat(np.repeat(crop, factor, axis=0), factor, axis=1)
