"""The app's live mode: microphone chunks in, frames out while the person speaks, latency shown.

Without a browser: the resampling across chunks, a LiveSession against the stream fed the whole recording, the
page's handlers (start, chunks, stop), falling behind, the session limit, leaving, and a model that cannot stream.
In headless Chromium: the real command with a tiny model, a fake microphone playing a WAV file
(--use-file-for-fake-audio-capture), Record on the Live tab, frames and the latency readout, Stop, the video; a
second visitor waits for the first. Screenshots go to outputs/test-artifacts/ (or $DIFFHEADS_TEST_ARTIFACTS).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
import urllib.request
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import soxr
import torch
from torch import nn

from diffheads.app.engine import Studio
from diffheads.app.live import LiveSession, Resampler, to_float_mono
from diffheads.audio.frames import frames_in_audio
from diffheads.audio.sda import SDAEncoder
from diffheads.checkpoint import load_model, save_model
from diffheads.config import SampleConfig, Solver
from diffheads.errors import DiffheadsError
from diffheads.io.audio import write_wav
from diffheads.io.image import write_png
from diffheads.io.video import count_frames
from diffheads.sample.inputs import identity_of
from diffheads.sample.stream import SpeechStream
from diffheads.synth.speech import sample_voice, synth_speech
from facevideo import astronaut
from test_app_browser import CHROMIUM_FLAGS, artifacts_dir, free_port, upload
from tiny import tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "data" / "speech" / "librivox_sense_and_sensibility_0870.wav"  # 7.1 s, 16 kHz
MIC_RATE = 48000  # what a browser's microphone delivers (Chromium's fake device too)
CHUNK = MIC_RATE // 10  # Gradio's streaming audio: 100 ms pieces
SAMPLE = SampleConfig(solver=Solver.DDIM, steps=1, stabilize_every=0)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("live")


@pytest.fixture(scope="module")
def checkpoint(root) -> Path:
    """The tiny log-mel model with its zero-initialised layers made random, so that its frames depend on the audio."""
    model = load_model(tiny_checkpoint(root / "fresh.ckpt", "model.dropout=0.0"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.unet.parameters():
            if not p.any():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return save_model(root / "model.ckpt", model.unet, model.cfg, model.audio_encoder)


@pytest.fixture(scope="module")
def studio(checkpoint) -> Studio:
    return Studio(load_model(checkpoint, "cpu"), "tiny", "cpu")


@pytest.fixture(scope="module")
def face(root) -> Path:
    return write_png(root / "face.png", astronaut())


@pytest.fixture(scope="module")
def portrait(studio, face):
    return studio.align(face, is_video=False)


def mic_recording(seconds: float, seed: int = 0, channels: int = 1, rate: int = MIC_RATE) -> np.ndarray:
    """Synthetic speech at `rate` (the microphone's) as int16 PCM, with a noise floor (every mel value within 80 dB
    of the peak: the streamed frames are then the whole recording's, bit for bit), (samples,) or (samples, channels)."""
    rng = np.random.default_rng(seed)
    wav = synth_speech(rng, sample_voice(rng), seconds, rate).audio[: round(seconds * rate)]
    wav = wav + 1e-3 * rng.standard_normal(len(wav))
    pcm = np.round(np.clip(wav, -1, 1) * 32767).astype(np.int16)
    if channels == 1:
        return pcm
    return np.stack([pcm] + [(pcm // (c + 1)).astype(np.int16) for c in range(1, channels)], axis=1)


def whole_16k(pcm: np.ndarray, rate: int = MIC_RATE) -> np.ndarray:
    """The reference: the whole recording downmixed and resampled at once."""
    data = pcm.astype(np.float64) / 32768.0
    mono = data.mean(axis=1) if data.ndim == 2 else data
    return soxr.resample(mono.astype(np.float32), rate, 16000)


def chunks(pcm: np.ndarray, sizes: list[int] | None = None):  # noqa: ANN201
    """The recording in pieces of CHUNK samples (or the given sizes, cycled)."""
    sizes = sizes or [CHUNK]
    start, i = 0, 0
    while start < len(pcm):
        yield pcm[start : start + sizes[i % len(sizes)]]
        start += sizes[i % len(sizes)]
        i += 1


# ---------------------------------------------------------------- without a browser


def test_resampling_chunk_by_chunk_equals_resampling_the_whole_recording():
    pcm = mic_recording(1.3, channels=2, rate=44100)
    resample = Resampler()
    pieces = [resample(44100, piece) for piece in chunks(pcm, [4410, 1, 777, 9000])]
    got = np.concatenate([*pieces, resample.flush()])
    want = whole_16k(pcm, 44100)
    assert got.dtype == np.float32 and len(got) == len(want) == round(len(pcm) * 16000 / 44100)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # resampling each chunk on its own, the naive way, is audibly different at the boundaries
    naive = np.concatenate([soxr.resample(to_float_mono(p), 44100, 16000) for p in chunks(pcm, [4410])])
    assert np.abs(naive[: len(want)] - want[: len(naive)]).max() > 1e-3
    # int16 is read as PCM (/ 32768), channels are averaged; 16 kHz input goes through untouched
    assert np.array_equal(to_float_mono(np.array([[-32768, 0], [16384, 16384]], np.int16)), [-0.5, 0.5])
    same = Resampler()
    assert np.array_equal(same(16000, pcm[:, 0]), pcm[:, 0] / np.float32(32768)) and len(same.flush()) == 0
    with pytest.raises(DiffheadsError, match="sample rate changed from 16000 to 48000 Hz"):
        same(48000, pcm[:10, 0])


def test_a_live_session_gives_the_frames_of_the_whole_recording(checkpoint, portrait, root):
    """48 kHz stereo int16 in 100 ms chunks through resampling, a worker thread and pushes: the frames are those
    of the stream fed the whole recording, resampled at once, in the same pieces; the mp4 holds all of them.

    (The same pieces, not one push: the resampler's low-pass leaves the top mel band more than 80 dB under the
    peak, so the frames depend on when the peak is known; see stream.py.)"""
    model = load_model(checkpoint)
    identity = identity_of(portrait, 16)
    pcm = mic_recording(1.5, seed=3, channels=2)
    seen = []
    session = LiveSession(SpeechStream(model, identity, SAMPLE, seed=4), root / "session.mp4", on_frame=seen.append)
    for piece in chunks(pcm):
        session.feed(MIC_RATE, piece)
    session.finish()
    assert session.wait(120)
    view = session.show()
    assert view.error is None and view.done and view.video == root / "session.mp4"

    reference = SpeechStream(load_model(checkpoint), identity, SAMPLE, seed=4)
    wav = whole_16k(pcm)
    resampler = soxr.ResampleStream(MIC_RATE, 16000, 1, dtype="float32")
    ends = np.cumsum([len(resampler.resample_chunk(to_float_mono(p))) for p in chunks(pcm)])
    want = [f for piece in np.split(wav, ends) for f in reference.push(piece)] + reference.finish()
    assert len(seen) == len(want) == frames_in_audio(len(wav)) == view.frames == 38
    assert [f.index for f in seen] == list(range(38))  # in order, none dropped
    assert all(np.array_equal(a.image, b.image) for a, b in zip(seen, want, strict=True))
    assert len({f.image.tobytes() for f in seen}) > 30  # the frames move: equality above means something
    assert count_frames(view.video) == 38
    with av.open(str(view.video)) as c:
        audio = c.streams.audio[0]
        assert float(audio.duration * audio.time_base) == pytest.approx(38 * 0.04, abs=0.03)


def _request(name: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(session_hash=name)


def _readout_numbers(readout: str) -> tuple[int, float]:
    frames = re.search(r"(\d+) frames", readout)
    latency = re.search(r"latency \**(\d+) ms", readout)
    assert frames and latency, readout
    return int(frames.group(1)), float(latency.group(1))


def test_the_page_handlers_stream_frames_then_the_video(studio, portrait, root):
    from diffheads.app.page import LIVE_HELP, LIVE_WAITING, Page

    page = Page(studio, "help", root / "page")
    (root / "page").mkdir()
    page.build()
    me = _request("visitor")
    settings = ("ddim", 1, 0, 0, "pasted back", None)
    assert page.live_chunk((MIC_RATE, np.zeros(CHUNK, np.int16)), None, *settings, request=me)[1].startswith(
        "**Give a photo or a video with one face first**"
    )
    assert page.live_start(me) == (None, LIVE_WAITING, None)
    assert LIVE_HELP.startswith("Give the face above, press Record")

    pcm = mic_recording(1.2, seed=5)
    shown, readouts = [], []
    for piece in chunks(pcm):
        began = time.monotonic()
        frame, readout = page.live_chunk((MIC_RATE, piece), portrait, *settings, request=me)
        assert time.monotonic() - began < 0.5  # the handler only queues (model load aside): Gradio needs it quick
        readouts.append(readout)
        if isinstance(frame, np.ndarray):
            shown.append(frame)
        time.sleep(0.1)  # a microphone's pace
    assert readouts[0].startswith("Listening: 0.1 s of audio received; the first frame needs 0.20 s")
    frames, latency = _readout_numbers(readouts[-1])
    assert frames > 0 and latency >= 0 and "look-ahead" in readouts[-1] and "frames/s" in readouts[-1]
    assert shown and all(f.shape == (512, 512, 3) and f.dtype == np.uint8 for f in shown)  # the photo, pasted back

    updates = list(page.live_stop(me))
    frame, readout, video = updates[-1]
    n = frames_in_audio(len(whole_16k(pcm)))
    assert readout.startswith(f"**Done: {n} frames ({n * 0.04:.2f} s)** · median latency ") and "ms" in readout
    assert video is not None and count_frames(video) == n
    assert all(u[2] is None for u in updates[:-1])  # the video comes once complete
    # a new recording replaces the last one's video; stopping with nothing recorded changes nothing
    page.live_start(me)
    page.live_chunk((MIC_RATE, pcm[:CHUNK]), portrait, *settings, request=me)
    assert not Path(video).exists()
    page.live_leave(me)
    assert next(iter(page.live_stop(me)))[2] is None


def test_falling_behind_processes_every_chunk_in_order_and_shows_the_growing_latency(checkpoint, portrait, root):
    now = [0.0]
    busy = threading.Lock()  # the device, held by "another job"
    seen = []
    session = LiveSession(
        SpeechStream(load_model(checkpoint), identity_of(portrait, 16), SAMPLE),
        root / "behind.mp4",
        busy,
        on_frame=seen.append,
        clock=lambda: now[0],
    )
    pcm = mic_recording(1.0, seed=6)
    with busy:
        for i, piece in enumerate(chunks(pcm)):
            now[0] = 0.1 * (i + 1)
            session.feed(MIC_RATE, piece)
        time.sleep(0.2)
        view = session.show()
        assert view.frames == 0 and view.received_s == pytest.approx(1.0, abs=0.03)  # soxr holds a few ms back
        assert view.backlog_s > 0.85  # all but what the worker took before waiting for the device
        assert "Listening" in view.describe()
        now[0] = 3.0  # the device comes back 2 s after the last chunk
    received = round(view.received_s * 16000)
    ready = sum(session.stream.samples_for_frame(t) <= received for t in range(25))  # windows complete before the end
    deadline = time.monotonic() + 60
    while len(seen) < ready:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    now[0] = 3.5
    view = session.show()
    # the newest frame's audio arrived with the last chunk (1.0 s), its frame is handed over at 3.5 s
    assert view.latency_s == pytest.approx(2.5) and "latency **2500 ms**" in view.describe()
    session.finish()
    assert session.wait(60)
    assert [f.index for f in seen] == list(range(25)) and session.show().frames == 25


def test_the_session_takes_at_most_its_limit_and_the_rest_is_said(checkpoint, portrait, root):
    session = LiveSession(
        SpeechStream(load_model(checkpoint), identity_of(portrait, 16), SAMPLE), root / "limited.mp4", max_seconds=0.5
    )
    for piece in chunks(mic_recording(1.0, seed=7)):
        session.feed(MIC_RATE, piece)
    view = session.show()
    assert view.limited and view.received_s == 0.5
    assert view.describe().endswith("reached the 0.5 s limit: stop the recording to get the video.")
    session.finish()
    assert session.wait(60)
    view = session.show()
    assert view.limited and view.frames == frames_in_audio(8000) == 13 and count_frames(view.video) == 13
    assert session.stream._samples.count == 8000  # the first 0.5 s, nothing after
    with pytest.raises(DiffheadsError, match="max_seconds must be positive"):
        LiveSession(session.stream, root / "x.mp4", max_seconds=0)


def test_leaving_drops_the_session_and_its_unfinished_video(checkpoint, portrait, root):
    session = LiveSession(SpeechStream(load_model(checkpoint), identity_of(portrait, 16), SAMPLE), root / "left.mp4")
    for piece in chunks(mic_recording(0.5, seed=8)):
        session.feed(MIC_RATE, piece)
    session.close()
    assert session.wait(60)
    view = session.show()
    assert view.error is None and view.video is None
    assert not (root / "left.mp4").exists() and not list(root.glob("*left*"))


def test_no_audio_is_a_one_line_message(checkpoint, portrait, root):
    session = LiveSession(SpeechStream(load_model(checkpoint), identity_of(portrait, 16), SAMPLE), root / "short.mp4")
    session.finish()
    assert session.wait(60)
    assert session.show().error.startswith("no audio arrived from the microphone")
    assert not (root / "short.mp4").exists()


class TinySDA(nn.Module):
    """A stand-in for the SDA audio encoder (a recurrent module over the whole clip): linear map, then a GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3200, 8)
        self.gru = nn.GRU(8, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(torch.tanh(self.proj(x)))
        return h


def test_a_model_that_cannot_stream_says_so_in_one_line(checkpoint, portrait, root):
    from diffheads.app.page import Page

    sda = root / "sda.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, yet it is the SDA export format
        torch.jit.script(TinySDA().eval()).save(str(sda))
    model = load_model(checkpoint)
    path = save_model(root / "sda.ckpt", model.unet, model.cfg, SDAEncoder(path=str(sda)).describe())
    page = Page(Studio(load_model(path), "sda", "cpu"), "help", root)
    page.build()
    note = page.live_note()
    assert note.startswith(
        "**This model's sda audio encoder needs the whole recording (its recurrent module takes "
        "the whole clip in one call), so it cannot stream; use a model trained on log-mel"
    )
    assert "\n" not in note
    _frame, readout = page.live_chunk(
        (MIC_RATE, mic_recording(0.1)), portrait, "ddim", 1, 0, 0, "crop", None, request=_request("sda")
    )
    assert readout == note and not page._live


# ---------------------------------------------------------------- in the browser

LIVE_FLAGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


@pytest.fixture(scope="module")
def mic_file(root) -> Path:
    """What the fake microphone plays (looped): read speech from ../shared/data if there, else synthetic; 16-bit."""
    if SPEECH.is_file():
        return SPEECH
    rng = np.random.default_rng(0)
    write_wav(root / "mic.wav", synth_speech(rng, sample_voice(rng), 6.0, 16000).audio)
    return root / "mic.wav"


@pytest.fixture(scope="module")
def live_app(checkpoint, tmp_path_factory) -> str:
    """`diffheads app --checkpoint MODEL --port PORT` in its own process, with the tiny log-mel model."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("applog") / "app.log", "w+")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffheads.cli", "app", "--checkpoint", str(checkpoint), "--port", str(port)],
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
def live_browser(mic_file):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "the browser tests need Debian's chromium: apt-get install chromium (.ci/install-chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium,
            args=[*CHROMIUM_FLAGS, *LIVE_FLAGS, f"--use-file-for-fake-audio-capture={mic_file}"],
        )
        yield b
        b.close()


class Visitor:
    """A browser context on the app with its console messages kept (they say why a microphone fails)."""

    def __init__(self, browser, url: str) -> None:  # noqa: ANN001
        self.context = browser.new_context(viewport={"width": 1400, "height": 1300})
        self.context.grant_permissions(["microphone"])
        self.page = self.context.new_page()
        self.page.set_default_timeout(120_000)
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.page.goto(url)

    def readout(self) -> str:
        return self.page.locator("#live-readout").inner_text()

    def frames(self) -> int:
        found = re.search(r"(\d+) frames", self.readout())
        return int(found.group(1)) if found else 0

    def wait_frames(self, at_least: int, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while self.frames() < at_least:
            assert time.monotonic() < deadline, (
                f"{self.frames()} frames shown, not {at_least}; readout: {self.readout()!r}; console: {self.console}"
            )
            time.sleep(0.2)

    def go_live(self, face: Path) -> None:
        """Give the face, make the frames the crop (light on the CPU), one step, open the Live tab."""
        upload(self.page, "face-photo", face)
        self.page.wait_for_selector("#aligned-crop img")
        steps = self.page.locator("#steps input[type=number]")
        steps.fill("1")
        steps.press("Enter")
        self.page.get_by_label("crop", exact=True).check()
        self.page.get_by_role("tab", name="Live").click()
        self.page.wait_for_selector("#live-mic")

    def record(self) -> None:
        self.page.locator("#live-mic button", has_text="Record").first.click()

    def stop(self) -> None:
        self.page.locator("#live-mic button", has_text="Stop").first.click()

    def close(self) -> None:
        self.context.close()


@pytest.mark.slow
def test_live_in_the_browser_with_a_fake_microphone(live_browser, live_app, face):
    me = Visitor(live_browser, live_app)
    try:
        me.go_live(face)
        assert me.page.locator("#live-note").inner_text().strip() == ""  # the log-mel model streams
        me.record()
        me.wait_frames(10)
        first, latency = _readout_numbers(me.readout())
        assert latency > 0 and "frames/s" in me.readout()
        me.page.wait_for_selector("#live-frame img")
        me.page.screenshot(path=str(artifacts_dir() / "app_live.png"), full_page=True)
        me.wait_frames(first + 10)  # still coming while the microphone plays
        me.stop()
        me.page.wait_for_function("document.querySelector('#live-readout').innerText.includes('Done:')")
        done = me.readout()
        total = int(re.search(r"Done: (\d+) frames", done).group(1))
        assert total >= first + 10 and "median latency" in done
        me.page.wait_for_selector("#live-video video")
        me.page.wait_for_function("document.querySelector('#live-video video').readyState >= 1")
        duration = me.page.evaluate("document.querySelector('#live-video video').duration")
        assert duration == pytest.approx(total * 0.04, abs=0.1)
        assert me.page.locator(".toast-body.error, .toast-wrap .error").count() == 0
        assert not [m for m in me.console if m.startswith(("error", "pageerror"))], me.console
        me.page.screenshot(path=str(artifacts_dir() / "app_live_done.png"), full_page=True)
    finally:
        me.close()


@pytest.mark.slow
def test_a_second_visitor_waits_until_the_first_stops(live_browser, live_app, face):
    first = Visitor(live_browser, live_app)
    second = Visitor(live_browser, live_app)
    try:
        first.go_live(face)
        second.go_live(face)
        first.record()
        first.wait_frames(5)
        second.record()
        second.page.wait_for_function("/queue: 1\\/1/.test(document.querySelector('#live-frame').innerText)")
        assert second.frames() == 0
        second.page.screenshot(path=str(artifacts_dir() / "app_live_queue.png"), full_page=True)
        first.stop()
        first.page.wait_for_function("document.querySelector('#live-readout').innerText.includes('Done:')")
        second.wait_frames(5)  # the device is theirs now
        second.stop()
        second.page.wait_for_function("document.querySelector('#live-readout').innerText.includes('Done:')")
    finally:
        first.close()
        second.close()
