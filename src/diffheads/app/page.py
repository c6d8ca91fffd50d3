"""The Gradio page of `diffheads app`: inputs, settings, progress, result. All work is done by a Studio."""

from __future__ import annotations

import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np

from diffheads.app.engine import (
    OUTPUT_MODES,
    Animation,
    Cancelled,
    ModelChoice,
    Progress,
    Settings,
    Studio,
    crop_preview,
    enlarged,
)
from diffheads.app.live import LiveSession, LiveView
from diffheads.checkpoint import describe_provenance
from diffheads.config import Solver
from diffheads.errors import DiffheadsError
from diffheads.face.portrait import Portrait

SOLVER_HELP = (
    "dpm++2m and unipc give good frames in 10-20 steps; ddim needs more; "
    "ancestral is the paper's sampler (100+ steps, slow)"
)
ELEM = {  # element ids, for styling and for the browser tests
    "photo": "face-photo",
    "video": "face-video",
    "crop": "aligned-crop",
    "face_message": "face-message",
    "audio": "speech",
    "generate": "generate",
    "cancel": "cancel",
    "result": "result-video",
    "download": "download",
    "status": "status",
    "report": "run-report",
    "model": "model-info",
    "steps": "steps",
    "seed": "seed",
    "model_choice": "model-choice",
    "model_note": "model-note",
    "live_note": "live-note",
    "live_mic": "live-mic",
    "live_frame": "live-frame",
    "live_readout": "live-readout",
    "live_video": "live-video",
}
CSS = (
    "#face-message p { font-size: 1.05em; } #status p { font-size: 1.05em; } "
    "#model-note p { font-size: 1.05em; color: #b45309; } #live-note p { color: #b45309; }"
)
MODEL_HELP = "the models under outputs/ and --checkpoint, with what each was trained on"
LIVE_HELP = (
    "Give the face above, press Record and speak: the face speaks along, frame by frame, as your audio arrives. "
    "Stop gives the whole video. The settings below apply; one visitor at a time is live."
)
LIVE_WAITING = "Recording: waiting for the first audio (or, while another visitor is live, for them to stop)."
LIVE_CHUNK_S = 0.1  # the browser sends the microphone's audio in pieces this long
LIVE_POLL_S = 0.25  # after Stop, the page is updated this often while the last frames are made


def theme() -> gr.themes.Base:
    """Gradio's default look with the system's fonts (no web fonts: the page works offline)."""
    return gr.themes.Default(
        primary_hue="indigo", font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )


class Page:
    """Builds the page for `studio` (None: no model, the page says how to get one) and handles its events."""

    def __init__(self, studio: Studio | None, no_model_help: str, workdir: Path) -> None:
        self.studio = studio
        self.no_model_help = no_model_help
        self.workdir = workdir
        self._last_video: dict[str, Path] = {}  # per visitor, removed when they generate the next one
        self._live: dict[str, LiveSession] = {}  # per visitor, the live recording in progress
        self._last_live: dict[str, Path] = {}  # per visitor, the live mp4, removed when they record the next one
        self._live_lock = threading.Lock()

    # ---- events -------------------------------------------------------------------------------------
    def on_face(self, face: str | None, is_video: bool, model: str | None = None) -> tuple:
        """A photo or video was given (or cleared): (crop, message, portrait, face source) for the chosen model."""
        if face is None:
            return None, "", None, None
        if self.studio is None:
            return None, f"**No model loaded.** {self.no_model_help}", None, None
        source = (str(face), is_video)  # to align again when another model is chosen
        try:
            size = self.studio.choice(model).image_size
            portrait = self.studio.align(face, is_video, size, model)
        except DiffheadsError as e:
            return None, f"**{_sentence(str(e))}**", None, source
        found = f"Face found and aligned to {size}x{size} px: this is what the model sees."
        return crop_preview(portrait), found, portrait, source

    def on_photo(self, photo: str | None, model: str | None = None) -> tuple:
        return self.on_face(photo, False, model)

    def on_video(self, video: str | None, model: str | None = None) -> tuple:
        return self.on_face(video, True, model)

    def on_model(self, model: str, source: tuple[str, bool] | None) -> tuple:
        """Another model was chosen: load it (after the running job), say what it knows, align the face for it."""
        try:
            choice = self.studio.select(model)
        except DiffheadsError as e:
            raise gr.Error(_sentence(str(e))) from None
        face = self.on_face(*source, model) if source else (gr.skip(),) * 4
        return (self._model_line(choice), _note(choice), *face)

    def generate(
        self,
        portrait,
        audio: str | None,
        solver: str,
        steps: float,
        stabilize: float,
        seed: float,
        mode: str,  # noqa: ANN001
        model: str | None = None,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's way to ask for a bar)
    ) -> tuple:
        if self.studio is None:
            raise gr.Error(f"No model loaded. {self.no_model_help}")
        if portrait is None:
            raise gr.Error("Give a photo or a video with one face first (and wait for its aligned crop to appear).")
        if audio is None:
            raise gr.Error("Give the speech: upload an audio file or record one with the microphone.")
        settings = Settings(
            solver=solver, steps=int(steps), stabilize_every=int(stabilize), seed=int(seed), output_mode=mode
        )
        key = _key(request)
        _forget(self._last_video, key)
        target = self.workdir / f"diffheads-{uuid.uuid4().hex[:8]}.mp4"

        def on_progress(p: Progress) -> None:
            progress((p.done, p.total), desc=p.describe(), unit="frames")

        try:
            result = self.studio.animate(
                key,
                portrait,
                audio,
                target,
                settings,
                on_progress,
                on_wait=lambda: progress(0.0, desc="waiting for the job before yours"),
                model=model,
            )
        except Cancelled:
            return None, None, "Cancelled: nothing was written.", None
        except DiffheadsError as e:
            raise gr.Error(_sentence(str(e).replace(str(audio), "the audio"))) from None
        self._last_video[key] = result.video
        report = result.report(model or self.studio.name, self.studio.device)
        return str(result.video), str(result.video), self._summary(result), report

    def cancel(self, request: gr.Request) -> str:
        if self.studio is not None:
            self.studio.cancel(_key(request))
        return "Cancelled."

    # ---- live -------------------------------------------------------------------------------------------
    def live_note(self, model: str | None = None) -> str:
        """The Live tab's line for the chosen model: empty, or why its encoder cannot stream."""
        if self.studio is None:
            return ""
        try:
            problem = self.studio.live_problem(model)
        except DiffheadsError as e:
            problem = str(e)
        return "" if problem is None else f"**{_sentence(problem)}**"

    def live_start(self, request: gr.Request = None) -> tuple:
        """Record was pressed: drop what is left of this visitor's previous live session, clear the outputs."""
        self._drop_live(_key(request))
        return None, LIVE_WAITING, None

    def live_chunk(
        self,
        chunk: tuple[int, np.ndarray] | None,
        portrait: Portrait | None,
        solver: str,
        steps: float,
        stabilize: float,
        seed: float,
        mode: str,
        model: str | None = None,
        request: gr.Request = None,
    ) -> tuple:
        """A microphone chunk (rate, samples) arrived: queue it; (the newest frame or skip, the readout).

        Returns at once (the frames are made by the session's worker thread): Gradio hands a stream handler only
        the newest chunk once it returns, so a slow handler would lose audio.
        """
        if self.studio is None:
            return gr.skip(), f"**No model loaded.** {self.no_model_help}"
        if portrait is None:
            return gr.skip(), "**Give a photo or a video with one face first**, then record."
        if chunk is None:
            return gr.skip(), gr.skip()
        key = _key(request)
        try:
            with self._live_lock:
                session = self._live.get(key)
                if session is None:
                    _forget(self._last_live, key)
                    target = self.workdir / f"diffheads-live-{uuid.uuid4().hex[:8]}.mp4"
                    settings = Settings(
                        solver=solver,
                        steps=int(steps),
                        stabilize_every=int(stabilize),
                        seed=int(seed),
                        output_mode=mode,
                    )
                    session = self.studio.live(portrait, target, settings, model)
                    self._live[key] = session
                    self._last_live[key] = target
            session.feed(*chunk)
        except DiffheadsError as e:
            return gr.skip(), f"**{_sentence(str(e))}**"
        return self._live_outputs(session.show())[:2]

    def live_stop(self, request: gr.Request = None) -> Iterator[tuple]:
        """The recording stopped: the last frames as they are made, then the whole video."""
        with self._live_lock:
            session = self._live.pop(_key(request), None)
        if session is None:
            yield gr.skip(), gr.skip(), None
            return
        session.finish()
        while not session.wait(LIVE_POLL_S):
            yield self._live_outputs(session.show())
        yield self._live_outputs(session.show())

    def live_leave(self, request: gr.Request = None) -> None:
        """The visitor closed the page: drop their live session."""
        self._drop_live(_key(request))

    def _drop_live(self, key: str) -> None:
        with self._live_lock:
            session = self._live.pop(key, None)
        if session is not None:
            session.close()

    @staticmethod
    def _live_outputs(view: LiveView) -> tuple:
        """(frame, readout, video) for the Live tab."""
        frame = gr.skip() if view.frame is None else enlarged(view.frame)
        readout = f"**{_sentence(view.error)}**" if view.error is not None else view.describe()
        return frame, readout, str(view.video) if view.video is not None else None

    @staticmethod
    def _summary(result: Animation) -> str:
        t = result.timing_s
        return (
            f"Done: {result.frames} frames ({result.seconds:.2f} s) in {t['total']:.1f} s "
            f"(sampling {t['sampling']:.1f} s)."
        )

    # ---- layout -------------------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        defaults = self.studio.default_settings() if self.studio is not None else Settings()
        # no usage statistics sent; Gradio's copies of uploads and results older than a day are deleted hourly
        with gr.Blocks(title="diffheads: talking faces", analytics_enabled=False, delete_cache=(3600, 86400)) as page:
            gr.Markdown(
                "# diffheads: make a face speak\nDiffused Heads (Stypulkowski et al., WACV 2024): "
                "one face picture + speech -> a video of that face speaking, frame by frame."
            )
            current = self.studio.current if self.studio is not None else None
            ui = self._model_section(current)
            with gr.Row():
                with gr.Column():
                    self._face_inputs(ui)
                    self._speech_tabs(ui, current)
                    self._settings(ui, defaults)
                with gr.Column():
                    self._results(ui)
            self._wire_jobs(ui, current)
            self._wire_live(ui)
            page.unload(self.live_leave)
        return page

    def _model_section(self, current: ModelChoice | None) -> SimpleNamespace:
        """The model chooser (or a State without a model), its lines, and the face's states; the page's controls."""
        if current is not None:
            model = gr.Dropdown(
                [(c.label, str(c.path)) for c in self.studio.choices],
                value=str(current.path),
                label="Model",
                info=MODEL_HELP,
                elem_id=ELEM["model_choice"],
            )
        else:
            model = gr.State(None)
        return SimpleNamespace(
            model=model,
            model_info=gr.Markdown(self._model_line(current), elem_id=ELEM["model"]),
            model_note=gr.Markdown(_note(current), elem_id=ELEM["model_note"]),
            portrait=gr.State(None),
            face_source=gr.State(None),
        )

    @staticmethod
    def _face_inputs(ui: SimpleNamespace) -> None:
        """The Photo and Video tabs, then the aligned crop and its message."""
        with gr.Tabs():
            with gr.Tab("Photo"):
                ui.photo = gr.Image(
                    label="Face photo",
                    type="filepath",
                    sources=["upload", "webcam", "clipboard"],
                    elem_id=ELEM["photo"],
                    height=280,
                )
            with gr.Tab("Video"):
                ui.video = gr.Video(
                    label="Face video (its frames become the background)",
                    sources=["upload", "webcam"],
                    elem_id=ELEM["video"],
                    height=280,
                )
        with gr.Row():
            ui.crop = gr.Image(label="Aligned face", interactive=False, elem_id=ELEM["crop"], height=180, format="png")
            ui.face_message = gr.Markdown(
                "Give a photo or a video with one face, facing the camera.", elem_id=ELEM["face_message"]
            )

    def _speech_tabs(self, ui: SimpleNamespace, current: ModelChoice | None) -> None:
        """The Speech file tab (audio, Generate, Cancel) and the Live tab (microphone, frame, readout, video)."""
        with gr.Tabs():
            with gr.Tab("Speech file"):
                ui.audio = gr.Audio(
                    label="Speech (any format; resampled to 16 kHz mono)",
                    type="filepath",
                    sources=["upload", "microphone"],
                    elem_id=ELEM["audio"],
                )
                with gr.Row():
                    ui.go = gr.Button(
                        "Generate", variant="primary", elem_id=ELEM["generate"], interactive=self.studio is not None
                    )
                    ui.stop = gr.Button("Cancel", variant="stop", elem_id=ELEM["cancel"])
            with gr.Tab("Live"):
                ui.live_note = gr.Markdown(self.live_note() if current is not None else "", elem_id=ELEM["live_note"])
                ui.mic = gr.Audio(
                    label="Microphone (live)",
                    sources=["microphone"],
                    streaming=True,
                    type="numpy",
                    elem_id=ELEM["live_mic"],
                )
                ui.live_frame = gr.Image(
                    label="Live", interactive=False, elem_id=ELEM["live_frame"], height=280, format="jpeg"
                )
                ui.live_readout = gr.Markdown(LIVE_HELP, elem_id=ELEM["live_readout"])
                ui.live_video = gr.Video(
                    label="The live recording",
                    interactive=False,
                    elem_id=ELEM["live_video"],
                    autoplay=False,
                    height=280,
                )

    @staticmethod
    def _settings(ui: SimpleNamespace, defaults: Settings) -> None:
        """The Settings accordion: sampler, steps, stabilisation, seed, output mode."""
        with gr.Accordion("Settings", open=True):
            ui.solver = gr.Dropdown([s.value for s in Solver], value=defaults.solver, label="Sampler", info=SOLVER_HELP)
            ui.steps = gr.Slider(
                1,
                200,
                value=defaults.steps,
                step=1,
                label="Steps per frame",
                info="more steps: slower, finer detail",
                elem_id=ELEM["steps"],
            )
            ui.stabilize = gr.Slider(
                0,
                100,
                value=defaults.stabilize_every,
                step=1,
                label="Stabilisation interval (frames)",
                info="every N frames the identity frame re-anchors the motion; 0: off (long videos may drift)",
            )
            ui.seed = gr.Number(
                value=defaults.seed,
                precision=0,
                label="Seed",
                info="same seed and settings: same video",
                elem_id=ELEM["seed"],
            )
            ui.mode = gr.Radio(
                list(OUTPUT_MODES),
                value=defaults.output_mode,
                label="Output",
                info="; ".join(f"{k}: {v}" for k, v in OUTPUT_MODES.items()),
            )

    @staticmethod
    def _results(ui: SimpleNamespace) -> None:
        """The result column: video, download, status line, settings and timing."""
        ui.result = gr.Video(label="Result", interactive=False, elem_id=ELEM["result"], autoplay=False)
        ui.download = gr.File(label="Download", interactive=False, elem_id=ELEM["download"])
        ui.status = gr.Markdown("", elem_id=ELEM["status"])
        ui.report = gr.JSON(label="Settings and timing", elem_id=ELEM["report"])

    def _wire_jobs(self, ui: SimpleNamespace, current: ModelChoice | None) -> None:
        """The face and model events, then Generate and Cancel."""
        face_outputs = [ui.crop, ui.face_message, ui.portrait, ui.face_source]
        ui.photo.change(self.on_photo, [ui.photo, ui.model], face_outputs)
        ui.video.change(self.on_video, [ui.video, ui.model], face_outputs)
        if current is not None:  # loading a model waits for the device like a job
            ui.model.change(
                self.on_model,
                [ui.model, ui.face_source],
                [ui.model_info, ui.model_note, *face_outputs],
                concurrency_limit=1,
                concurrency_id="device",
            ).then(self.live_note, [ui.model], [ui.live_note], concurrency_limit=1, concurrency_id="device")
        job = ui.go.click(
            self.generate,
            [ui.portrait, ui.audio, ui.solver, ui.steps, ui.stabilize, ui.seed, ui.mode, ui.model],
            [ui.result, ui.download, ui.status, ui.report],
            concurrency_limit=1,
            concurrency_id="device",
            show_progress_on=[ui.result],
        )
        ui.stop.click(self.cancel, None, [ui.status], cancels=[job], queue=False)

    def _wire_live(self, ui: SimpleNamespace) -> None:
        """The microphone's events: Record, each chunk, Stop."""
        # the stream event holds the device's queue slot while the visitor records (a second visitor waits, as
        # for Generate); each chunk only queues audio for the session's worker thread
        live_outputs = [ui.live_frame, ui.live_readout, ui.live_video]
        ui.mic.start_recording(self.live_start, None, live_outputs, concurrency_limit=None, show_progress="hidden")
        ui.mic.stream(
            self.live_chunk,
            [ui.mic, ui.portrait, ui.solver, ui.steps, ui.stabilize, ui.seed, ui.mode, ui.model],
            [ui.live_frame, ui.live_readout],
            stream_every=LIVE_CHUNK_S,
            concurrency_limit=1,
            concurrency_id="device",
            show_progress_on=[ui.live_frame],
        )
        ui.mic.stop_recording(self.live_stop, None, live_outputs, concurrency_limit=None, show_progress="hidden")

    def _model_line(self, choice: ModelChoice | None) -> str:
        if self.studio is None or choice is None:
            return f"**No model loaded.** {self.no_model_help}"
        return f"**Model:** `{choice.path}` on `{self.studio.device}`: {describe_provenance(choice.provenance)}."


def _note(choice: ModelChoice | None) -> str:
    """The chosen model's warning (synthetic faces) as a visible line, or nothing."""
    note = choice.note if choice is not None else None
    return f"**Note:** {_sentence(note)}" if note else ""


def _key(request: gr.Request | None) -> str:
    """The visitor: their page session (one key for calls without one)."""
    return (request.session_hash if request is not None else None) or "local"


def _forget(last: dict[str, Path], key: str) -> None:
    """Remove the file `last` holds for visitor `key`."""
    previous = last.pop(key, None)
    if previous is not None:
        previous.unlink(missing_ok=True)


def _sentence(message: str) -> str:
    """A library error message as a sentence for the page."""
    message = message.strip()
    return message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")


def new_workdir() -> tempfile.TemporaryDirectory:
    """Where the app writes its videos; removed when the app stops."""
    return tempfile.TemporaryDirectory(prefix="diffheads-app-")
