"""What the web app does, without the web page: align an uploaded face, animate it, one job at a time.

`Studio` holds one loaded model and its audio encoder, and the list of models it offers
(`discover_models`: the files under outputs/, labelled with what they were trained on). Jobs from
all visitors go through one lock, so the device runs one animation at a time whatever the web
server does; a job names its model, which is loaded on that lock when it is not the one loaded.
Each visitor (a key, the page's session) can cancel their own job, which stops it after the frame
being sampled. `Studio.live` starts a live session (app/live.py): microphone audio in, frames out as it
arrives, each push into the stream taken under the same lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import filecmp
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffheads.app.live import LIVE_SECONDS, LiveSession
from diffheads.audio.encoders import build_encoder
from diffheads.audio.frames import frames_in_audio
from diffheads.checkpoint import LoadedModel, describe_provenance, load_model, model_provenance
from diffheads.config import SampleConfig, Solver
from diffheads.errors import DiffheadsError
from diffheads.face.portrait import FPS, Portrait
from diffheads.sample.animate import write_animation
from diffheads.sample.inputs import identity_of, load_portrait, load_speech, synthetic_faces_note
from diffheads.sample.person import PersonCheck
from diffheads.sample.runtime import check_audio_width
from diffheads.sample.stream import SpeechStream, streaming_encoder

OUTPUT_MODES = {"pasted back": "the face is pasted back into the full picture", "crop": "the aligned face crop only"}
DEFAULT_SOLVER = Solver.DPMPP_2M
DEFAULT_STEPS = 10  # benchmarks/RESULTS.md: fewest dpm++2m steps matching 200-step DDPM on the demo
OUTPUTS = Path("outputs")  # where make demo, make demo-real and the docs' runs leave their models
MODEL_FILE = "model.ckpt"  # the exported model of a run (RUN/model.ckpt)
MAX_DEPTH = 3  # model files are looked for at most this many folders below outputs/
SKIPPED_FOLDERS = frozenset({"checkpoints"})  # Lightning's resumable training checkpoints, not models to try


@dataclass(frozen=True)
class ModelChoice:
    """A model file the app offers, with what it was trained on (checkpoint.model_provenance)."""

    path: Path
    provenance: dict[str, Any]
    trust: bool = False  # may need arbitrary unpickling: only a --checkpoint given with --trust-checkpoint

    @property
    def label(self) -> str:
        """'outputs/demo/model.ckpt — synthetic cartoon faces, 60 clips (4 min), 32 px, 1500 steps'."""
        return f"{self.path} — {describe_provenance(self.provenance)}"

    @property
    def note(self) -> str | None:
        """The warning to show with this model (synthetic faces only), or None."""
        return synthetic_faces_note(self.provenance)

    @property
    def image_size(self) -> int:
        return int(self.provenance["image_size"])

    def load(self, device: str) -> LoadedModel:
        return load_model(self.path, device, trust=self.trust)


def find_model_files(outputs: Path = OUTPUTS, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Every model.ckpt at most `max_depth` folders below `outputs`, shallowest first, outside checkpoints/."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(outputs):
        depth = len(Path(folder).relative_to(outputs).parts)
        keep = [d for d in dirs if d not in SKIPPED_FOLDERS and not d.startswith(".")]
        dirs[:] = keep if depth < max_depth else []
        found += [Path(folder) / f for f in files if f == MODEL_FILE]
    return sorted(found, key=lambda p: (len(p.parts), p.parts))


def _same_file(a: Path, b: Path) -> bool:
    """Same file, or a byte-for-byte copy (make demo copies train/model.ckpt to model.ckpt)."""
    return a.resolve() == b.resolve() or filecmp.cmp(a, b, shallow=False)


def _preference(choice: ModelChoice, demo: Path) -> int:
    """Default-selection rank: a model trained on real footage, then the demo model, then the others."""
    if choice.provenance.get("synthetic") is False:
        return 0
    return 1 if demo.is_file() and _same_file(choice.path, demo) else 2


def discover_models(
    checkpoint: str | Path | None = None, outputs: Path = OUTPUTS, trust: bool = False
) -> tuple[list[ModelChoice], list[str]]:
    """(models to offer, the one to select first; why files were skipped).

    First `checkpoint` if given, then the model files under `outputs` (copies listed once): those
    trained on real footage, then the demo model (outputs/demo/model.ckpt), then the others. Only
    `checkpoint` may be loaded with `trust`; the files found are read weights-only.
    """
    chosen: list[ModelChoice] = []
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise DiffheadsError(f"checkpoint {checkpoint} does not exist; give a model file (e.g. RUN/model.ckpt)")
        chosen.append(ModelChoice(path, model_provenance(path, trust), trust))
    found: list[ModelChoice] = []
    skipped: list[str] = []
    for path in find_model_files(outputs) if outputs.is_dir() else []:
        if any(_same_file(path, c.path) for c in chosen + found):
            continue
        try:
            found.append(ModelChoice(path, model_provenance(path)))
        except DiffheadsError as e:
            skipped.append(f"{path}: {e}")
    demo = outputs / "demo" / MODEL_FILE
    found.sort(key=lambda c: _preference(c, demo))  # stable: shallowest first within a rank
    return chosen + found, skipped


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
    trained_on: str = ""  # checkpoint.describe_provenance of the model used
    note: str | None = None  # the warning that goes with that model (synthetic faces), if any

    def report(self, model_name: str, device: str) -> dict:
        """Settings and timing, as shown on the page (with the model's warning, if any)."""
        sampling = self.timing_s["sampling"]
        return {
            "model": model_name,
            **({"trained_on": self.trained_on} if self.trained_on else {}),
            **({"note": self.note} if self.note else {}),
            "device": device,
            **asdict(self.settings),
            "frames": self.frames,
            "duration_s": round(self.seconds, 2),
            "timing_s": {k: round(v, 2) for k, v in self.timing_s.items()},
            "sampling_s_per_video_second": round(sampling / self.seconds, 2) if self.seconds else None,
        }


class Studio:
    """One model at a time on one device, animating faces for any number of visitors, one job at a time.

    `choices` are the models offered (the first is `model`); without them the one model is offered as `name`.
    """

    def __init__(self, model: LoadedModel, name: str, device: str, choices: Sequence[ModelChoice] = ()) -> None:
        provenance = model.provenance or {"image_size": model.cfg.model.frame_size}
        self.choices = list(choices) or [ModelChoice(Path(name), provenance)]
        self.device = device
        self._set(model, self.choices[0])
        self._device_lock = threading.Lock()
        self._jobs: dict[str, set[threading.Event]] = {}  # cancellation flags of the running jobs, per visitor
        self._jobs_lock = threading.Lock()
        self._person = PersonCheck()  # dlib's judges, loaded when a model that records its person first needs them

    @classmethod
    def open(
        cls,
        choices: Sequence[ModelChoice],
        device: str,
        strict: bool = True,
        on_skip: Callable[[str], None] | None = None,
    ) -> Studio | None:
        """A studio with the first of `choices` that loads loaded, offering it and those after it.

        With `strict` the first must load (its error is raised); otherwise a model that fails to load
        (an imported model whose SDA encoder is missing, say) is dropped, with its reason sent to
        `on_skip`, and None is returned when none loads.
        """
        for i, choice in enumerate(choices):
            try:
                return cls(choice.load(device), str(choice.path), device, [choice, *choices[i + 1 :]])
            except DiffheadsError as e:
                if strict:
                    raise
                if on_skip is not None:
                    on_skip(f"{choice.path}: {e}")
        return None

    def _set(self, model: LoadedModel, choice: ModelChoice) -> None:
        """Make `model` (the file of `choice`) the loaded one."""
        if not model.audio_encoder:
            raise DiffheadsError(
                f"{choice.path} does not record its audio encoder; retrain or re-export it with diffheads"
            )
        self.encoder = build_encoder(model.audio_encoder, self.device)
        self.model, self.current, self.name = model, choice, str(choice.path)

    @property
    def size(self) -> int:
        return self.model.cfg.model.frame_size

    def choice(self, path: str | Path | None) -> ModelChoice:
        """The offered model at `path` (None: the loaded one); a one-line error for a file not offered."""
        if path is None:
            return self.current
        for c in self.choices:
            if str(c.path) == str(path):
                return c
        raise DiffheadsError(f"model {path} is not one this app offers; choose one from the list")

    def select(self, path: str | Path) -> ModelChoice:
        """Load the offered model at `path` for the following jobs, once the running job is done (device lock)."""
        choice = self.choice(path)
        with self._device_lock:
            self._use(choice)
        return choice

    def _use(self, choice: ModelChoice) -> None:
        """Load `choice` unless it is loaded already; the device lock is held."""
        if choice is not self.current:
            self._set(choice.load(self.device), choice)

    def default_settings(self) -> Settings:
        """The page's starting values: fast sampling (a distilled student's own DDIM steps), the model's own
        stabilisation interval."""
        sample = self.model.cfg.sample
        if self.model.distilled:
            return Settings(solver=sample.solver.value, steps=sample.steps, stabilize_every=sample.stabilize_every)
        return Settings(stabilize_every=sample.stabilize_every)

    def align(
        self, face: str | Path, is_video: bool, size: int | None = None, model: str | Path | None = None
    ) -> Portrait:
        """Find and align the one face of an uploaded photo or video at `size` px (default: the loaded model's).

        Errors name 'the photo' / 'the video', not the upload's temporary path. A face that is not the person
        the offered model at `model` (default: the loaded one) was trained on is refused like a missing face.
        """
        what = "the video" if is_video else "the photo"
        try:
            portrait = load_portrait(None if is_video else face, face if is_video else None, size or self.size)
        except DiffheadsError as e:
            raise DiffheadsError(str(e).replace(str(face), what)) from None
        stranger = self._person.mismatch(self.choice(model).provenance, portrait.identity_crop)
        if stranger is not None:
            raise DiffheadsError(stranger)
        return portrait

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
        model: str | Path | None = None,
    ) -> Animation:
        """Animate `portrait` with `audio` into `output`; raises Cancelled if visitor `key` cancels.

        `on_wait` is called when the job has to wait for another one to finish first. `model` is the
        path of one of the offered models (default: the loaded one); it is loaded when its turn comes.
        """
        choice = self.choice(model)
        with self._job(key) as flag:
            return self._animate(flag, portrait, audio, output, settings, on_progress, on_wait, choice)

    def _animate(
        self,
        flag: threading.Event,
        portrait: Portrait,
        audio: str | Path,
        output: str | Path,
        settings: Settings,
        on_progress: Callable[[Progress], None] | None,
        on_wait: Callable[[], None] | None,
        choice: ModelChoice,
    ) -> Animation:
        settings.check()
        _check_face_size(portrait, choice)
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
            self._use(choice)
            loaded = time.perf_counter()
            emb = self.encoder.encode(wav, n_frames)
            check_audio_width(self.model, emb.shape[1], "the audio")
            encoded = time.perf_counter()
            out = self._write(flag, portrait, emb, wav, n_frames, output, settings, on_progress, encoded)
            sampled = time.perf_counter()
        finally:
            self._device_lock.release()
        timing = {
            "audio_loading": prepared - started,
            "queue_wait": waited - prepared,
            "model_loading": loaded - waited,  # 0 unless the job's model was not the one loaded
            "audio_encoding": encoded - loaded,
            "sampling": sampled - encoded,
            "total": sampled - started,
        }
        return Animation(
            out, n_frames, n_frames / FPS, settings, timing, describe_provenance(choice.provenance), choice.note
        )

    def _write(
        self,
        flag: threading.Event,
        portrait: Portrait,
        emb: torch.Tensor,
        wav: np.ndarray,
        n_frames: int,
        output: str | Path,
        settings: Settings,
        on_progress: Callable[[Progress], None] | None,
        encoded: float,
    ) -> Path:
        """Sample and write the video of `_animate` (the device is held), reporting progress from `encoded` on."""

        def written(done: int, total: int) -> None:
            if on_progress is not None:
                on_progress(Progress(done, total, time.perf_counter() - encoded))
            if flag.is_set():
                raise Cancelled()

        sample = self._sample_config(settings)
        if on_progress is not None:
            on_progress(Progress(0, n_frames, 0.0))
        return write_animation(
            self.model,
            identity_of(portrait, self.size),
            emb,
            wav,
            output,
            sample,
            settings.seed,
            portrait=portrait if settings.output_mode == "pasted back" else None,
            progress=False,
            on_written=written,
        )

    def live_problem(self, model: str | Path | None = None) -> str | None:
        """Why the offered model at `model` (default: the loaded one) cannot run live, in one line, or None.

        Loads it when it is not the loaded one (after the running job, like `select`).
        """
        choice = self.choice(model)
        with self._device_lock:
            self._use(choice)
            loaded = self.model
        try:
            streaming_encoder(loaded)
        except DiffheadsError as e:
            return str(e)
        return None

    def live(
        self,
        portrait: Portrait,
        output: str | Path,
        settings: Settings,
        model: str | Path | None = None,
        max_seconds: float = LIVE_SECONDS,
    ) -> LiveSession:
        """A live session animating `portrait` with the page's settings, written into `output` (mp4).

        `model` is one of the offered models (default: the loaded one), loaded now if it is not; a model whose
        audio encoder needs the whole recording is a one-line DiffheadsError (the stream's message).
        """
        settings.check()
        choice = self.choice(model)
        _check_face_size(portrait, choice)
        with self._device_lock:
            self._use(choice)
            size = self.size
            identity = portrait if settings.output_mode == "pasted back" else identity_of(portrait, size)
            stream = SpeechStream(self.model, identity, self._sample_config(settings), settings.seed)
        return LiveSession(stream, output, self._device_lock, max_seconds)

    def _sample_config(self, settings: Settings) -> SampleConfig:
        """The model's own sampling configuration with the page's choices, one whole clip, no compilation."""
        return dataclasses.replace(
            self.model.cfg.sample,
            solver=Solver(settings.solver),
            steps=settings.steps,
            stabilize_every=settings.stabilize_every,
            batch_size=1,
            max_frames=0,
            compile=False,
        )


def _check_face_size(portrait: Portrait, choice: ModelChoice) -> None:
    """A one-line error when the face was aligned for a model of another resolution than `choice`."""
    aligned = portrait.identity_crop.shape[0]
    if aligned != choice.image_size:
        raise DiffheadsError(
            f"the face was aligned for a {aligned} px model but {choice.path} works at {choice.image_size} px; "
            "give the face again"
        )


def enlarged(image: np.ndarray, min_size: int = 256) -> np.ndarray:
    """`image` enlarged by a whole factor (nearest neighbour, the pixels stay visible) to >= min_size px."""
    factor = max(1, -(-min_size // min(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def crop_preview(portrait: Portrait, min_size: int = 256) -> np.ndarray:
    """The aligned crop, as the model sees it, enlarged by a whole factor (nearest neighbour) to >= min_size px."""
    return enlarged(portrait.identity_crop, min_size)
