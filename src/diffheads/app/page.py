"""The Gradio page of `diffheads app`: inputs, settings, progress, result. All work is done by a Studio."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import gradio as gr

from diffheads.app.engine import (
    OUTPUT_MODES, Animation, Cancelled, ModelChoice, Progress, Settings, Studio, crop_preview,
)
from diffheads.checkpoint import describe_provenance
from diffheads.config import Solver
from diffheads.errors import DiffheadsError

SOLVER_HELP = (
    "dpm++2m and unipc give good frames in 10-20 steps; ddim needs more; "
    "ancestral is the paper's sampler (100+ steps, slow)"
)
ELEM = {  # element ids, for styling and for the browser tests
    "photo": "face-photo", "video": "face-video", "crop": "aligned-crop", "face_message": "face-message",
    "audio": "speech", "generate": "generate", "cancel": "cancel", "result": "result-video",
    "download": "download", "status": "status", "report": "run-report", "model": "model-info", "steps": "steps",
    "seed": "seed", "model_choice": "model-choice", "model_note": "model-note",
}
CSS = ("#face-message p { font-size: 1.05em; } #status p { font-size: 1.05em; } "
       "#model-note p { font-size: 1.05em; color: #b45309; }")
MODEL_HELP = "the models under outputs/ and --checkpoint, with what each was trained on"


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
            portrait = self.studio.align(face, is_video, size)
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
        self, portrait, audio: str | None, solver: str, steps: float, stabilize: float, seed: float, mode: str,  # noqa: ANN001
        model: str | None = None,
        request: gr.Request = None, progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's way to ask for a bar)
    ) -> tuple:
        if self.studio is None:
            raise gr.Error(f"No model loaded. {self.no_model_help}")
        if portrait is None:
            raise gr.Error("Give a photo or a video with one face first (and wait for its aligned crop to appear).")
        if audio is None:
            raise gr.Error("Give the speech: upload an audio file or record one with the microphone.")
        settings = Settings(solver=solver, steps=int(steps), stabilize_every=int(stabilize), seed=int(seed),
                            output_mode=mode)
        key = request.session_hash or "local"
        self._forget_last(key)
        target = self.workdir / f"diffheads-{uuid.uuid4().hex[:8]}.mp4"

        def on_progress(p: Progress) -> None:
            progress((p.done, p.total), desc=p.describe(), unit="frames")

        try:
            result = self.studio.animate(
                key, portrait, audio, target, settings, on_progress,
                on_wait=lambda: progress(0.0, desc="waiting for the job before yours"), model=model,
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
            self.studio.cancel(request.session_hash or "local")
        return "Cancelled."

    def _forget_last(self, key: str) -> None:
        previous = self._last_video.pop(key, None)
        if previous is not None:
            previous.unlink(missing_ok=True)

    @staticmethod
    def _summary(result: Animation) -> str:
        t = result.timing_s
        return (f"Done: {result.frames} frames ({result.seconds:.2f} s) in {t['total']:.1f} s "
                f"(sampling {t['sampling']:.1f} s).")

    # ---- layout -------------------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        defaults = self.studio.default_settings() if self.studio is not None else Settings()
        # no usage statistics sent; Gradio's copies of uploads and results older than a day are deleted hourly
        with gr.Blocks(title="diffheads: talking faces", analytics_enabled=False, delete_cache=(3600, 86400)) as page:
            gr.Markdown("# diffheads: make a face speak\nDiffused Heads (Stypulkowski et al., WACV 2024): "
                        "one face picture + speech -> a video of that face speaking, frame by frame.")
            current = self.studio.current if self.studio is not None else None
            if current is not None:
                model = gr.Dropdown([(c.label, str(c.path)) for c in self.studio.choices], value=str(current.path),
                                    label="Model", info=MODEL_HELP, elem_id=ELEM["model_choice"])
            else:
                model = gr.State(None)
            model_info = gr.Markdown(self._model_line(current), elem_id=ELEM["model"])
            model_note = gr.Markdown(_note(current), elem_id=ELEM["model_note"])
            portrait = gr.State(None)
            face_source = gr.State(None)
            with gr.Row():
                with gr.Column():
                    with gr.Tabs():
                        with gr.Tab("Photo"):
                            photo = gr.Image(label="Face photo", type="filepath", sources=["upload", "webcam", "clipboard"],
                                             elem_id=ELEM["photo"], height=280)
                        with gr.Tab("Video"):
                            video = gr.Video(label="Face video (its frames become the background)",
                                             sources=["upload", "webcam"], elem_id=ELEM["video"], height=280)
                    with gr.Row():
                        crop = gr.Image(label="Aligned face", interactive=False, elem_id=ELEM["crop"], height=180,
                                        format="png")
                        face_message = gr.Markdown("Give a photo or a video with one face, facing the camera.",
                                                   elem_id=ELEM["face_message"])
                    audio = gr.Audio(label="Speech (any format; resampled to 16 kHz mono)", type="filepath",
                                     sources=["upload", "microphone"], elem_id=ELEM["audio"])
                    with gr.Row():
                        go = gr.Button("Generate", variant="primary", elem_id=ELEM["generate"],
                                       interactive=self.studio is not None)
                        stop = gr.Button("Cancel", variant="stop", elem_id=ELEM["cancel"])
                    with gr.Accordion("Settings", open=True):
                        solver = gr.Dropdown([s.value for s in Solver], value=defaults.solver, label="Sampler",
                                             info=SOLVER_HELP)
                        steps = gr.Slider(1, 200, value=defaults.steps, step=1, label="Steps per frame",
                                          info="more steps: slower, finer detail", elem_id=ELEM["steps"])
                        stabilize = gr.Slider(0, 100, value=defaults.stabilize_every, step=1,
                                              label="Stabilisation interval (frames)",
                                              info="every N frames the identity frame re-anchors the motion; "
                                                   "0: off (long videos may drift)")
                        seed = gr.Number(value=defaults.seed, precision=0, label="Seed",
                                         info="same seed and settings: same video", elem_id=ELEM["seed"])
                        mode = gr.Radio(list(OUTPUT_MODES), value=defaults.output_mode, label="Output",
                                        info="; ".join(f"{k}: {v}" for k, v in OUTPUT_MODES.items()))
                with gr.Column():
                    result = gr.Video(label="Result", interactive=False, elem_id=ELEM["result"], autoplay=False)
                    download = gr.File(label="Download", interactive=False, elem_id=ELEM["download"])
                    status = gr.Markdown("", elem_id=ELEM["status"])
                    report = gr.JSON(label="Settings and timing", elem_id=ELEM["report"])

            face_outputs = [crop, face_message, portrait, face_source]
            photo.change(self.on_photo, [photo, model], face_outputs)
            video.change(self.on_video, [video, model], face_outputs)
            if current is not None:  # loading a model waits for the device like a job
                model.change(self.on_model, [model, face_source], [model_info, model_note, *face_outputs],
                             concurrency_limit=1, concurrency_id="device")
            job = go.click(self.generate, [portrait, audio, solver, steps, stabilize, seed, mode, model],
                           [result, download, status, report], concurrency_limit=1, concurrency_id="device",
                           show_progress_on=[result])
            stop.click(self.cancel, None, [status], cancels=[job], queue=False)
        return page

    def _model_line(self, choice: ModelChoice | None) -> str:
        if self.studio is None or choice is None:
            return f"**No model loaded.** {self.no_model_help}"
        return f"**Model:** `{choice.path}` on `{self.studio.device}`: {describe_provenance(choice.provenance)}."


def _note(choice: ModelChoice | None) -> str:
    """The chosen model's warning (synthetic faces) as a visible line, or nothing."""
    note = choice.note if choice is not None else None
    return f"**Note:** {_sentence(note)}" if note else ""


def _sentence(message: str) -> str:
    """A library error message as a sentence for the page."""
    message = message.strip()
    return message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")


def new_workdir() -> tempfile.TemporaryDirectory:
    """Where the app writes its videos; removed when the app stops."""
    return tempfile.TemporaryDirectory(prefix="diffheads-app-")
