"""`diffheads app` end to end: the real command serves the page, headless Chromium uses it as a person would.

Needs Debian's `chromium` (`.ci/run` installs it) and Playwright (the test extra). The finished page's
screenshot is kept in outputs/test-artifacts/ (or $DIFFHEADS_TEST_ARTIFACTS).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest

from diffheads.io.audio import write_wav
from diffheads.io.image import write_png
from facevideo import astronaut, moving_face_video
from tiny import train_tiny

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [  # root in a container, no GPU, no network beyond loopback
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SPEECH_SECONDS = 0.8  # -> 20 frames at 25 fps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("DIFFHEADS_TEST_ARTIFACTS", ROOT / "outputs" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    write_png(folder / "astronaut.png", astronaut())
    write_png(folder / "noise.png", np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    t = np.arange(int(SPEECH_SECONDS * 16000)) / 16000
    write_wav(folder / "speech.wav", (0.3 * np.sin(2 * np.pi * 200 * t) * np.sin(2 * np.pi * 2 * t)).astype(np.float32))
    moving_face_video(folder / "face_video.mp4", seconds=0.6, fps=25, size=256)
    t = np.arange(20 * 16000) / 16000  # long enough to cancel half-way
    write_wav(folder / "long.wav", (0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32))
    return {p.stem: p for p in folder.iterdir()}


@pytest.fixture(scope="module")
def app_url(tmp_path_factory) -> str:
    """`diffheads app --checkpoint MODEL --port PORT` running in its own process, with a tiny trained model."""
    model = train_tiny(tmp_path_factory.mktemp("app"))["model"]
    port = free_port()
    log = open(tmp_path_factory.mktemp("applog") / "app.log", "w+")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffheads.cli", "app", "--checkpoint", str(model), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                assert r.status == 200
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"the app did not start (exit {proc.poll()}):\n{log.read()}")
            time.sleep(0.5)
    yield url
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "the browser tests need Debian's chromium: apt-get install chromium (.ci/run installs it)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield b
        b.close()


def open_page(browser, url: str):  # noqa: ANN001, ANN201
    """A new visitor (own browser context, so own Gradio session) on the app."""
    context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    return page


@pytest.fixture
def page(browser, app_url):
    page = open_page(browser, app_url)
    yield page
    page.context.close()


def upload(page, elem_id: str, path: Path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_upload_generate_and_download(page, inputs, tmp_path):
    upload(page, "face-photo", inputs["astronaut"])
    page.wait_for_selector("#aligned-crop img")
    assert "Face found and aligned to 16x16" in page.locator("#face-message").inner_text()
    upload(page, "speech", inputs["speech"])
    page.wait_for_selector("#speech audio, #speech .waveform-container, #speech wave", state="attached")
    set_number(page, "steps", 2)
    set_number(page, "seed", 3)
    page.locator("#generate").click()
    page.wait_for_selector("#result-video video")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Done')")

    # playable in the browser: metadata loaded, the expected duration
    page.wait_for_function("document.querySelector('#result-video video').readyState >= 1")
    duration = page.evaluate("document.querySelector('#result-video video').duration")
    assert duration == pytest.approx(SPEECH_SECONDS, abs=0.04)

    # the downloaded file: H.264 at 25 fps, one frame per 40 ms of speech, the full photo size, with the audio
    with page.expect_download() as dl:
        page.locator("#download a").first.click()
    video = tmp_path / "result.mp4"
    dl.value.save_as(video)
    with av.open(str(video)) as c:
        vs = c.streams.video[0]
        assert vs.codec_context.name == "h264" and len(c.streams.audio) == 1
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(vs)]
    assert len(frames) == round(SPEECH_SECONDS * 25)
    assert frames[0].shape == (512, 512, 3)  # pasted back into the photo

    shown = page.locator("#run-report").inner_text()  # "Settings and timing" then the JSON, one token a line
    report = json.loads(shown[shown.index("{") :])
    assert {k: report[k] for k in ("solver", "steps", "seed", "output_mode", "frames")} == {
        "solver": "dpm++2m",
        "steps": 2,
        "seed": 3,
        "output_mode": "pasted back",
        "frames": 20,
    }
    assert report["timing_s"]["sampling"] > 0 and report["timing_s"]["total"] >= report["timing_s"]["sampling"]
    assert report["trained_on"].startswith("synthetic cartoon faces") and "make demo-real" in report["note"]
    page.screenshot(path=str(artifacts_dir() / "app_finished.png"), full_page=True)


def test_the_model_list_says_what_the_model_learnt_from(page):
    chosen = page.locator("#model-choice input").input_value()  # --checkpoint: listed first and selected
    assert chosen.endswith("model.ckpt — synthetic cartoon faces, 4 clips (4.8 s), 16 px, 4 steps")
    note = page.locator("#model-note").inner_text()
    assert "This model was trained only on synthetic cartoon faces" in note and "make demo-real" in note


def test_progress_then_cancel_then_generate_again(page, inputs):
    upload(page, "face-photo", inputs["astronaut"])
    page.wait_for_selector("#aligned-crop img")
    upload(page, "speech", inputs["long"])
    set_number(page, "steps", 50)
    page.locator("#generate").click()
    # the progress bar counts frames and estimates the time left
    page.wait_for_function("/frame [1-9][0-9]*\\/500, about [0-9]+ s left/.test(document.body.innerText)")
    page.screenshot(path=str(artifacts_dir() / "app_progress.png"), full_page=True)
    page.locator("#cancel").click()
    page.wait_for_function("document.querySelector('#status').innerText.includes('Cancelled')")
    assert page.locator("#result-video video").count() == 0

    page.locator("#speech button[aria-label='Clear']").click()
    upload(page, "speech", inputs["speech"])  # the cancel does not stick to the next job
    set_number(page, "steps", 2)
    page.locator("#generate").click()
    page.wait_for_function("document.querySelector('#status').innerText.includes('Done: 20 frames')")


def test_photo_without_a_face_says_so(page, inputs):
    upload(page, "face-photo", inputs["noise"])
    page.wait_for_function("document.querySelector('#face-message').innerText.includes('No face found')")
    message = page.locator("#face-message").inner_text()
    assert "No face found in the photo" in message and "one face is clearly visible" in message
    assert page.locator("#aligned-crop img").count() == 0
    upload(page, "speech", inputs["speech"])
    page.locator("#generate").click()  # generating anyway says what is missing
    page.wait_for_selector("text=Give a photo or a video with one face first")
    page.screenshot(path=str(artifacts_dir() / "app_no_face.png"), full_page=True)


def test_a_face_video_is_aligned_on_upload(page, inputs):
    page.get_by_role("tab", name="Video").click()
    upload(page, "face-video", inputs["face_video"])
    page.wait_for_function("document.querySelector('#face-message').innerText.includes('Face found')")
    page.wait_for_selector("#aligned-crop img")


def test_a_second_visitor_waits_in_the_queue(page, browser, app_url, inputs):
    upload(page, "face-photo", inputs["astronaut"])
    page.wait_for_selector("#aligned-crop img")
    upload(page, "speech", inputs["long"])
    set_number(page, "steps", 50)
    page.locator("#generate").click()
    page.wait_for_function("/frame [1-9][0-9]*\\/500/.test(document.body.innerText)")

    other = open_page(browser, app_url)
    try:
        upload(other, "face-photo", inputs["astronaut"])
        other.wait_for_selector("#aligned-crop img")  # aligning does not wait for the running job
        upload(other, "speech", inputs["speech"])
        set_number(other, "steps", 2)
        other.locator("#generate").click()
        other.wait_for_function("/queue: 1\\/1/.test(document.querySelector('#result-video').innerText)")
        assert "Done" not in other.locator("#status").inner_text()
        page.locator("#cancel").click()  # the first visitor gives up: the second one's job runs
        other.wait_for_function("document.querySelector('#status').innerText.includes('Done: 20 frames')")
        page.wait_for_function("document.querySelector('#status').innerText.includes('Cancelled')")
    finally:
        other.context.close()
