"""The web app's work without a browser: alignment messages, progress, cancellation, one job at a time."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from diffheads.app.engine import Cancelled, Progress, Settings, Studio, crop_preview, discover_models, find_model_files
from diffheads.app.serve import NO_MODEL_HELP, check_port
from diffheads.checkpoint import load_model, save_model
from diffheads.cli import main
from diffheads.errors import DiffheadsError
from diffheads.io.audio import write_wav
from diffheads.io.image import write_png
from diffheads.io.video import read_video
from facevideo import astronaut
from tiny import tiny_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("app_inputs")
    write_png(folder / "face.png", astronaut())
    write_png(folder / "noise.png", np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    t = np.arange(int(0.4 * 16000)) / 16000
    write_wav(folder / "speech.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))
    write_wav(folder / "silence.wav", np.zeros(8000, np.float32))
    tiny_checkpoint(folder / "model.ckpt")
    return {p.stem: p for p in folder.iterdir()}


@pytest.fixture(scope="module")
def studio(files) -> Studio:
    return Studio(load_model(files["model"], "cpu"), "tiny", "cpu")


@pytest.fixture(scope="module")
def portrait(studio, files):
    return studio.align(files["face"], is_video=False)


FAST = Settings(solver="ddim", steps=1)


def test_progress_estimates_the_time_left():
    assert Progress(0, 20, 0.0).eta_s is None
    assert Progress(5, 20, 10.0).eta_s == pytest.approx(30.0)  # 2 s a frame, 15 frames to go
    assert Progress(5, 20, 10.0).describe() == "frame 5/20, about 30 s left"
    assert Progress(20, 20, 40.0).eta_s == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"solver": "euler"}, "unknown sampler 'euler'"),
        ({"steps": 0}, "steps must be between 1 and 1000"),
        ({"stabilize_every": -1}, "stabilisation interval must be 0 (off) or positive"),
        ({"output_mode": "gif"}, "unknown output mode 'gif'"),
    ],
)
def test_bad_settings_are_refused(change, message):
    with pytest.raises(DiffheadsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings(**change).check()


def test_alignment_errors_name_the_upload_not_its_temporary_path(studio, files):
    with pytest.raises(DiffheadsError) as e:
        studio.align(files["noise"], is_video=False)
    assert str(e.value).startswith("no face found in the photo;") and str(files["noise"]) not in str(e.value)


def test_several_faces_are_named_too(studio, files, tmp_path):
    small = astronaut()[::2, ::2]
    write_png(tmp_path / "two.png", np.concatenate([small, small], axis=1))
    with pytest.raises(DiffheadsError, match=r"^2 faces found in the photo; crop the picture"):
        studio.align(tmp_path / "two.png", is_video=False)


def test_a_face_video_becomes_the_background(studio, files, tmp_path):
    from facevideo import moving_face_video

    moving_face_video(tmp_path / "me.mp4", seconds=0.6, fps=25, size=256)
    portrait = studio.align(tmp_path / "me.mp4", is_video=True)
    assert portrait.frames.shape == (15, 256, 256, 3)
    result = studio.animate("a", portrait, files["speech"], tmp_path / "out.mp4", FAST)
    frames = read_video(result.video)[0]
    assert frames.shape == (10, 256, 256, 3)
    # away from the face the output follows the input video's frames, not a still picture
    corner = (slice(200, 256), slice(0, 56))
    assert np.abs(frames[0][corner].astype(int) - frames[9][corner].astype(int)).mean() > 2
    assert np.abs(frames[9][corner].astype(int) - portrait.frames[9][corner].astype(int)).mean() < 4


def test_aligned_crop_preview_is_the_model_input_enlarged(portrait):
    preview = crop_preview(portrait)
    assert preview.shape == (256, 256, 3)  # 16 px crop, x16
    np.testing.assert_array_equal(preview[::16, ::16], portrait.identity_crop)


def test_animate_reports_progress_and_writes_the_video(studio, portrait, files, tmp_path):
    seen: list[tuple[int, int]] = []
    result = studio.animate(
        "a", portrait, files["speech"], tmp_path / "out.mp4", FAST, on_progress=lambda p: seen.append((p.done, p.total))
    )
    assert seen == [(i, 10) for i in range(11)]  # 0.4 s at 25 fps, one update a frame
    frames, fps = read_video(result.video)
    assert frames.shape == (10, 512, 512, 3) and fps == 25
    report = result.report("tiny", "cpu")
    assert report["frames"] == 10 and report["duration_s"] == 0.4 and report["solver"] == "ddim"
    assert set(report["timing_s"]) == {
        "audio_loading",
        "queue_wait",
        "model_loading",
        "audio_encoding",
        "sampling",
        "total",
    }

    crop = studio.animate(
        "a", portrait, files["speech"], tmp_path / "crop.mp4", Settings(solver="ddim", steps=1, output_mode="crop")
    )
    assert read_video(crop.video)[0].shape == (10, 16, 16, 3)


def test_same_seed_same_video_other_seed_other_video(studio, portrait, files, tmp_path):
    videos = [
        read_video(
            studio.animate(
                "a",
                portrait,
                files["speech"],
                tmp_path / f"{i}.mp4",
                Settings(solver="ddim", steps=1, seed=seed, output_mode="crop"),
            ).video
        )[0]
        for i, seed in enumerate((4, 4, 5))
    ]
    np.testing.assert_array_equal(videos[0], videos[1])
    assert np.abs(videos[0].astype(int) - videos[2].astype(int)).mean() > 1


def test_cancel_stops_after_the_current_frame_and_leaves_nothing(studio, portrait, files, tmp_path):
    done: list[int] = []

    def cancel_at_3(p: Progress) -> None:
        done.append(p.done)
        if p.done == 3:
            studio.cancel("visitor")

    with pytest.raises(Cancelled):
        studio.animate("visitor", portrait, files["speech"], tmp_path / "out.mp4", FAST, on_progress=cancel_at_3)
    assert done == [0, 1, 2, 3]
    assert list(tmp_path.iterdir()) == []  # no video, no temporary file
    # the cancellation does not stick to the visitor's next job, nor touch other visitors
    assert studio.animate("visitor", portrait, files["speech"], tmp_path / "again.mp4", FAST).video.is_file()


def test_a_cancel_is_not_undone_by_the_same_visitors_next_job(studio, portrait, files, tmp_path):
    """Gradio frees the queue slot on Cancel at once: the visitor's next job may start before the old one stops."""
    results: dict[str, object] = {}
    next_job_waiting = threading.Event()

    def next_job() -> None:
        results["next"] = studio.animate(
            "v", portrait, files["speech"], tmp_path / "next.mp4", FAST, on_wait=next_job_waiting.set
        )

    thread = threading.Thread(target=next_job)

    def cancel_then_start_next(p: Progress) -> None:
        if p.done == 2:
            studio.cancel("v")
            thread.start()
            assert next_job_waiting.wait(30)  # the next job is in, waiting for the device

    with pytest.raises(Cancelled):
        studio.animate("v", portrait, files["speech"], tmp_path / "first.mp4", FAST, on_progress=cancel_then_start_next)
    thread.join(60)
    assert results["next"].frames == 10 and not (tmp_path / "first.mp4").exists()


def test_jobs_from_two_visitors_run_one_after_the_other(studio, portrait, files, tmp_path):
    events: list[tuple[str, int]] = []
    waited: list[str] = []
    second: list[threading.Thread] = []

    def run(key: str, on_progress) -> None:  # noqa: ANN001
        studio.animate(
            key,
            portrait,
            files["speech"],
            tmp_path / f"{key}.mp4",
            FAST,
            on_progress=on_progress,
            on_wait=lambda: waited.append(key),
        )

    def first_progress(p: Progress) -> None:
        events.append(("first", p.done))
        if p.done == 1:  # the second visitor arrives while the first job is sampling
            t = threading.Thread(target=run, args=("second", lambda q: events.append(("second", q.done))))
            t.start()
            second.append(t)
            t.join(0.5)  # give it time to reach the device lock

    run("first", first_progress)
    second[0].join(60)
    assert waited == ["second"]
    assert events == [("first", i) for i in range(11)] + [("second", i) for i in range(11)]


def test_silent_audio_is_refused(studio, portrait, files, tmp_path):
    with pytest.raises(DiffheadsError, match="is silent"):
        studio.animate("a", portrait, files["silence"], tmp_path / "out.mp4", FAST)
    assert list(tmp_path.iterdir()) == []


def _trained_on(synthetic: bool, size: int = 16, clips: int = 8) -> dict:
    return {
        "data_root": "/data/x",
        "synthetic": synthetic,
        "train_clips": clips,
        "train_seconds": 40.0,
        "image_size": size,
        "steps": 100,
    }


def _model_file(path: Path, trained_on: dict | None, *overrides: str, seed: int = 0) -> Path:
    """A tiny model file at `path` with this `trained_on` record (None: an older file without one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tiny_checkpoint(path, *overrides, seed=seed)
    if trained_on is not None:
        model = load_model(path)
        save_model(path, model.unet, model.cfg, model.audio_encoder, trained_on)
    return path


@pytest.fixture
def outputs(tmp_path) -> Path:
    """outputs/ with the demo model (and its copy in train/), a real-footage model and files that are not listed."""
    out = tmp_path / "outputs"
    demo = _model_file(out / "demo" / "model.ckpt", _trained_on(True))
    (out / "demo" / "train").mkdir()
    (out / "demo" / "train" / "model.ckpt").write_bytes(demo.read_bytes())  # what make demo leaves: listed once
    _model_file(out / "demo" / "train" / "checkpoints" / "model.ckpt", _trained_on(True), seed=1)  # training folder
    _model_file(out / "a" / "b" / "c" / "d" / "model.ckpt", _trained_on(True), seed=2)  # too deep
    _model_file(out / "runs" / "x" / "model.ckpt", None, f"data.root={tmp_path / 'gone'}", seed=3)  # older: no record
    _model_file(out / "demo-grid" / "model.ckpt", _trained_on(False, clips=540))
    (out / "broken").mkdir()
    (out / "broken" / "model.ckpt").write_bytes(b"not a model")
    return out


def test_the_models_under_outputs_are_listed_with_what_they_learnt_from(outputs):
    files = find_model_files(outputs)
    assert [str(p.relative_to(outputs)) for p in files] == [
        "broken/model.ckpt",
        "demo/model.ckpt",
        "demo-grid/model.ckpt",
        "demo/train/model.ckpt",
        "runs/x/model.ckpt",
    ]
    choices, skipped = discover_models(None, outputs)
    assert [c.label for c in choices] == [  # real footage first (selected), then the demo model, then the others
        f"{outputs}/demo-grid/model.ckpt — real footage, 540 clips (40 s) of /data/x, 16 px, 100 steps",
        f"{outputs}/demo/model.ckpt — synthetic cartoon faces, 8 clips (40 s), 16 px, 100 steps",
        f"{outputs}/runs/x/model.ckpt — unknown data ({outputs.parent}/gone is gone or not a dataset), 16 px",
    ]
    assert [c.note is not None for c in choices] == [False, True, False]
    assert "synthetic cartoon faces" in choices[1].note and "make demo-real" in choices[1].note
    assert len(skipped) == 1 and skipped[0].startswith(f"{outputs}/broken/model.ckpt: ")


def test_the_demo_model_is_selected_when_there_is_no_real_one(outputs):
    (outputs / "demo-grid" / "model.ckpt").unlink()
    assert discover_models(None, outputs)[0][0].path == outputs / "demo" / "model.ckpt"
    for f in outputs.rglob("model.ckpt"):
        f.unlink()
    assert discover_models(None, outputs) == ([], [])
    assert discover_models(None, outputs / "missing") == ([], [])


def test_the_checkpoint_given_comes_first(outputs, tmp_path):
    mine = _model_file(tmp_path / "mine.ckpt", _trained_on(True, size=16), seed=5)
    choices, _ = discover_models(mine, outputs)
    assert choices[0].path == mine and len(choices) == 4
    again, _ = discover_models(outputs / "demo" / "train" / "model.ckpt", outputs)  # a copy is not listed twice
    assert [c.path.relative_to(outputs).as_posix() for c in again] == [
        "demo/train/model.ckpt",
        "demo-grid/model.ckpt",
        "runs/x/model.ckpt",
    ]
    with pytest.raises(DiffheadsError, match="checkpoint .*nope.ckpt does not exist"):
        discover_models(tmp_path / "nope.ckpt", outputs)
    assert "make demo" in NO_MODEL_HELP and "make demo-real" in NO_MODEL_HELP and "--checkpoint" in NO_MODEL_HELP


def test_switching_models_loads_the_one_each_job_names(files, tmp_path):
    small = _model_file(tmp_path / "outputs" / "real" / "model.ckpt", _trained_on(False))
    large = _model_file(tmp_path / "outputs" / "demo" / "model.ckpt", _trained_on(True, size=32), "model.image_size=32")
    choices, _ = discover_models(None, tmp_path / "outputs")
    studio = Studio.open(choices, "cpu")
    assert (studio.current.path, studio.size) == (small, 16)
    face16 = studio.align(files["face"], is_video=False)
    assert studio.select(large).path == large and studio.size == 32 and studio.name == str(large)
    face32 = studio.align(files["face"], is_video=False)
    assert face32.identity_crop.shape == (32, 32, 3)

    # a job names its model: the real one is loaded back for it, on the device lock
    result = studio.animate("a", face16, files["speech"], tmp_path / "a.mp4", FAST, model=str(small))
    assert studio.current.path == small and result.timing_s["model_loading"] > 0
    report = result.report(str(small), "cpu")
    assert report["trained_on"].startswith("real footage") and "note" not in report
    result = studio.animate("a", face32, files["speech"], tmp_path / "b.mp4", FAST, model=large)
    assert studio.size == 32 and "synthetic cartoon faces" in result.report(str(large), "cpu")["note"]
    with pytest.raises(DiffheadsError, match="the face was aligned for a 16 px model but .* works at 32 px"):
        studio.animate("a", face16, files["speech"], tmp_path / "c.mp4", FAST)
    with pytest.raises(DiffheadsError, match="is not one this app offers"):
        studio.select(tmp_path / "other.ckpt")


def test_a_model_that_does_not_load_is_dropped_unless_it_was_asked_for(tmp_path):
    out = tmp_path / "outputs"
    broken = _model_file(out / "real" / "model.ckpt", None)
    model = load_model(broken)
    save_model(broken, model.unet, model.cfg, {}, _trained_on(False))  # no audio encoder recorded
    demo = _model_file(out / "demo" / "model.ckpt", _trained_on(True))
    choices, _ = discover_models(None, out)
    assert [c.path for c in choices] == [broken, demo]  # the real-footage one would be selected
    reasons: list[str] = []
    studio = Studio.open(choices, "cpu", strict=False, on_skip=reasons.append)
    assert [c.path for c in studio.choices] == [demo] and studio.current.path == demo
    assert reasons == [f"{broken}: {broken} does not record its audio encoder; retrain or re-export it with diffheads"]
    with pytest.raises(DiffheadsError, match="does not record its audio encoder"):
        Studio.open(choices, "cpu")  # a --checkpoint that does not load is an error


def test_the_page_switches_model_and_aligns_the_face_again(files, tmp_path):
    from diffheads.app.page import Page

    real = _model_file(tmp_path / "outputs" / "grid" / "model.ckpt", _trained_on(False))
    demo = _model_file(tmp_path / "outputs" / "demo" / "model.ckpt", _trained_on(True, size=32), "model.image_size=32")
    page = Page(Studio.open(discover_models(None, tmp_path / "outputs")[0], "cpu"), NO_MODEL_HELP, tmp_path)
    page.build()
    _crop, message, portrait, source = page.on_photo(str(files["face"]), str(real))
    assert portrait.identity_crop.shape == (16, 16, 3) and source == (str(files["face"]), False)
    line, note, _crop, message, portrait, source = page.on_model(str(demo), source)
    assert f"`{demo}`" in line and "synthetic cartoon faces, 8 clips" in line
    assert note.startswith("**Note:** This model was trained only on synthetic cartoon faces")
    assert portrait.identity_crop.shape == (32, 32, 3) and "aligned to 32x32 px" in message
    line, note, *_ = page.on_model(str(real), source)
    assert "real footage" in line and note == ""


def test_a_port_in_use_is_a_one_line_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(DiffheadsError, match=f"port {port} on 127.0.0.1 is in use; .* --port"):
            check_port("127.0.0.1", port)


def test_app_command_errors(tmp_path, capsys):
    assert main(["app", "--checkpoint", str(tmp_path / "nope.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffheads app: error: checkpoint") and "does not exist" in err and "\n" not in err
    assert main(["app", "--port", "70000"]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no public sharing link
        main(["app", "--share"])


def test_without_a_model_the_page_says_how_to_get_one(files, tmp_path):
    import gradio as gr

    from diffheads.app.page import Page

    page = Page(None, NO_MODEL_HELP, tmp_path)
    page.build()  # the page itself still loads
    crop, message, state, source = page.on_photo(str(files["face"]))
    assert crop is None and state is None and source is None and message == f"**No model loaded.** {NO_MODEL_HELP}"
    with pytest.raises(gr.Error, match="No model loaded. Run `make demo`"):
        page.generate(None, str(files["speech"]), "ddim", 1, 0, 0, "crop", request=None)


def test_without_the_app_extra_the_command_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["app"]) == 2
    assert capsys.readouterr().err.strip() == (
        "diffheads app: error: the app needs the optional extra: pip install 'diffheads[app]' (make demo installs it)"
    )
