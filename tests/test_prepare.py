"""`diffheads prepare`: frame-rate conversion, split rules, and a folder of good and broken videos."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from diffheads.cli import main
from diffheads.config import DataConfig, ModelConfig
from diffheads.data.dataset import TalkingFaceDataset
from diffheads.io.audio import load_audio, write_wav
from diffheads.io.video import iter_frames_at, read_video, write_video
from diffheads.prepare.split import CREMA_TEST_ACTORS, SplitRule
from facevideo import astronaut, moving_face_video
from runcli import run_cli


@pytest.mark.parametrize("fps,n", [(25, 20), (30, 36), (50, 40), (15, 12), (29.97, 30)])
def test_frames_are_resampled_to_25_fps_by_nearest_timestamp(tmp_path, fps, n):
    frames = np.zeros((n, 16, 16, 3), np.uint8)
    for i in range(n):
        frames[i, :, : 2 + i % 14] = 255  # a bar whose width tells the frame index mod 14
        frames[i, :8] = 6 * (i // 14) + 40
    write_video(tmp_path / "v.mp4", frames, fps=fps, crf=0)
    got = list(iter_frames_at(tmp_path / "v.mp4", 25))
    duration = n / fps
    want_count = int(np.ceil(duration * 25 - 1e-6))
    assert len(got) == want_count
    for k, (time, frame) in enumerate(got):
        j = min(int(np.floor(k * fps / 25 + 0.5)), n - 1)  # nearest source frame to k / 25 (ties go later)
        assert time == pytest.approx(j / fps, abs=2e-3)
        width = int((frame[12, :, 0] > 128).sum())
        assert width == 2 + j % 14


def test_split_rules():
    crema = SplitRule.preset("crema")
    assert crema.split("s15/1015_DFA_ANG_XX") == "test" and crema.split("1001_IEO_HAP_HI") == "train"
    assert all(crema.split(f"x/{a}_TIE_SAD_LO") == "test" for a in CREMA_TEST_ACTORS)
    speakers = SplitRule(speaker_pattern=r"^(id\d+)/", test_speakers=("id7",))
    assert speakers.split("id7/a") == "test" and speakers.split("id70/a") == "train"
    listed = SplitRule(test_clips=frozenset({"a/b"}))
    assert listed.split("a/b") == "test" and listed.split("a/c") == "train"
    by_hash = SplitRule(test_fraction=0.3)
    names = [f"spk{i}/clip" for i in range(400)]
    share = np.mean([by_hash.split(n) == "test" for n in names])
    assert 0.2 < share < 0.4
    # the speaker decides, not the clip: every clip of a speaker lands on the same side
    assert len({by_hash.split(f"spk3/clip{i}") for i in range(20)}) == 1
    with pytest.raises(Exception, match="unknown split preset"):
        SplitRule.preset("vox")


def _still_face_video(
    path: Path, frames: int, fps: float = 25.0, audio: np.ndarray | None = None, pair: bool = False
) -> None:
    face = cv2.resize(astronaut(), (192, 192), interpolation=cv2.INTER_AREA)
    if pair:
        face = np.concatenate([face, face], axis=1)
    write_video(path, np.repeat(face[None], frames, axis=0), fps=fps, audio=audio)


def _speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def raw_folder(tmp_path_factory) -> Path:
    """Two good clips (audio inside / audio beside) and seven broken ones."""
    raw = tmp_path_factory.mktemp("raw")
    for d in ("spk1", "spk2", "bad"):
        (raw / d).mkdir()
    moving_face_video(raw / "spk1" / "take1.mp4", seconds=1.2, fps=30.0, size=256)
    moving_face_video(raw / "spk2" / "take1.mp4", seconds=1.0, fps=25.0, size=256, audio=False)
    write_wav(raw / "spk2" / "take1.wav", _speech(1.0))
    (raw / "bad" / "garbage.mp4").write_bytes(b"this is not a video" * 100)
    noise = np.random.default_rng(0).integers(0, 255, (25, 128, 128, 3), dtype=np.uint8)
    write_video(raw / "bad" / "noface.mp4", noise, audio=_speech(1.0))
    _still_face_video(raw / "bad" / "short.mp4", 6, audio=_speech(0.24))
    _still_face_video(raw / "bad" / "mute.mp4", 25)
    _still_face_video(raw / "bad" / "twofaces.mp4", 25, audio=_speech(1.0), pair=True)
    _still_face_video(raw / "bad" / "silent.mp4", 25, audio=np.zeros(16000, np.float32))
    _still_face_video(raw / "bad" / "mismatch.mp4", 25)
    write_wav(raw / "bad" / "mismatch.wav", _speech(3.0))
    (raw / "notes.txt").write_text("not a video: ignored")
    return raw


def test_prepare_good_and_broken_files_then_resume(raw_folder, tmp_path):
    out = tmp_path / "data"
    report = run_cli("prepare", str(raw_folder), str(out), "--workers", "2", "--test-speakers", "spk2", "--quiet")
    reasons = {s["clip"]: s["reason"] for s in report["skipped"]}
    assert reasons == {
        "bad/garbage": "unreadable",
        "bad/noface": "no face",
        "bad/short": "too short",
        "bad/mute": "no audio",
        "bad/twofaces": "several faces",
        "bad/silent": "silent audio",
        "bad/mismatch": "length mismatch",
    }
    assert report["prepared"] == 2 and report["clips_found"] == 9
    assert (out / "file_list_train.txt").read_text() == "./spk1/take1.mp4\n"
    assert (out / "file_list_test.txt").read_text() == "./spk2/take1.mp4\n"
    saved = json.loads((out / "prepare_report.json").read_text())
    assert saved["skipped_by_reason"]["no face"] == 1

    # a valid training set: 25 fps crops, 16 kHz audio of the same length, landmarks, embeddings
    for rel, n in (("spk1/take1", 30), ("spk2/take1", 25)):
        frames, fps = read_video(out / "video" / f"{rel}.mp4")
        assert fps == 25 and frames.shape == (n, 128, 128, 3)
        assert len(load_audio(out / "audio" / f"{rel}.wav")) == n * 640
        assert np.load(out / "lmks" / f"{rel}.npy").shape == (n, 68, 2)
    encoder = json.loads((out / "emb" / "encoder.json").read_text())
    assert encoder["name"] == "logmel" and encoder["dim"] == 200
    model = ModelConfig(image_size=64, audio_dim=200)
    item = TalkingFaceDataset(DataConfig(root=str(out)), model, "train")[0]
    assert item["target"].shape == (3, 64, 64) and item["audio_window"].shape[-1] == 200 and "mouth_landmarks" in item

    # second run: nothing is redone, the broken files keep their reasons
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    again = run_cli("prepare", str(raw_folder), str(out), "--workers", "1", "--test-speakers", "spk2", "--quiet")
    assert again["prepared_now"] == 0 and again["already_done"] == 2
    assert {s["clip"]: s["reason"] for s in again["skipped"]} == reasons
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    # --retry-skipped looks at the broken ones again (and finds them still broken)
    retried = run_cli(
        "prepare", str(raw_folder), str(out), "--workers", "1", "--retry-skipped", "--no-embed", "--quiet"
    )
    assert retried["prepared_now"] == 0 and len(retried["skipped"]) == 7


def test_prepare_with_nothing_usable_says_why(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.mp4").write_bytes(b"junk")
    assert main(["prepare", str(raw), str(tmp_path / "out"), "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no clip" in err and "unreadable" in err and len(err.splitlines()) == 1
    assert json.loads((tmp_path / "out" / "prepare_report.json").read_text())["prepared"] == 0
    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "o2"), "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err


def test_long_clips_decoded_twice_give_the_same_result(raw_folder, tmp_path):
    """Clips over the frame-cache budget are decoded a second time for the warp; the output must not change."""
    from diffheads.data.layout import DataLayout
    from diffheads.face.mean_face import load_mean_face
    from diffheads.prepare.clip import PrepareConfig, prepare_clip
    from diffheads.prepare.sources import find_raw_clips

    raw = next(c for c in find_raw_clips(raw_folder) if c.rel == "spk1/take1")
    outs = []
    for budget in (768, 0):
        layout = DataLayout.of(tmp_path / f"b{budget}")
        prepare_clip(raw, layout, load_mean_face(), PrepareConfig(frame_cache_mb=budget))
        outs.append((read_video(layout.video(raw.rel))[0], np.load(layout.landmarks(raw.rel))))
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])
