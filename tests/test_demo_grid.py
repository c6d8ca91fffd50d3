"""The GRID demo (`make demo-real`): the fixed sentence split, a quick end-to-end run, its learning check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diffheads.cli import main
from diffheads.demo.check import check_report
from diffheads.demo.grid import GridDemoData, grid_clips, split_sentences
from diffheads.errors import DiffheadsError
from diffheads.io.video import read_video

GRID_S1 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "grid" / "s1"


def test_split_is_fixed_disjoint_and_covers_the_corpus():
    clips = grid_clips(GRID_S1)
    assert len(clips) == 600
    train, test = split_sentences(clips, GridDemoData())
    assert len(test) == 20 and len(train) == 580
    assert not {p.stem for p in train} & {p.stem for p in test}
    names = sorted(p.name for p in clips)
    assert [p.name for p in test] == names[14::30]  # every 30th sentence in name order, from the 15th
    assert split_sentences(clips, GridDemoData()) == (train, test)


def test_missing_corpus_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "demo-grid"
    assert main(["demo", "--preset", "grid", "--quick", "--out", str(out), "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GRID speaker s1 not found" in err[0] and "--data" in err[0]
    assert not out.exists()
    with pytest.raises(DiffheadsError, match="holds 0 video"):
        grid_clips(tmp_path)


@pytest.mark.slow
def test_quick_grid_demo_writes_every_artefact(tmp_path, capsys):
    out = tmp_path / "demo-grid"
    assert main(["demo", "--preset", "grid", "--quick", "--out", str(out), "--data", str(GRID_S1)]) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out)
    assert f"--checkpoint {out}/model.ckpt" in printed.err
    for key in (
        "m_lmd",
        "f_lmd",
        "control_m_lmd",
        "control_f_lmd",
        "lmd_detection_rate",
        "n_train_clips",
        "train_seconds",
        "sample_seconds",
        "prepare_seconds",
    ):
        assert key in report, key
    assert "mouth_open_r" not in report  # the pixel measure that missed the lips is no longer reported
    assert report["n_clips"] == 2 and report["n_train_clips"] == 4 and report["train_steps"] == 3
    # the trained judges run on the demo's clips; a 3-step model's frames need not hold a face, the real ones do
    for key in ("lip_open_r", "control_lip_open_r", "id_distance", "csim", "flicker", "m_lmd68", "f_lmd68"):
        assert key in report, key
    assert 0.0 <= report["judge_detection_rate"] <= 1.0 and report["real_judge_detection_rate"] == 1.0
    for name in (
        "contact_sheet.png",
        "mouth_strip.png",
        "mouth_opening.png",
        "model.ckpt",
        "report.json",
        "eval/metrics.json",
    ):
        assert (out / name).is_file(), name
    videos = sorted((out / "videos").rglob("*.mp4"))
    assert len(videos) == 2
    frames, _ = read_video(videos[0])
    # the preset's 128 px videos (model.output_size) from its 64 px network; sample.max_frames of the quick run
    assert frames.shape[1:] == (128, 128, 3) and len(frames) == 10
    assert report["image_size"] == 128 and report["network_size"] == 64
    # the held-out sentences are the listed test clips, never trained on
    test = (out / "data" / "file_list_test.txt").read_text().split()
    train = (out / "data" / "file_list_train.txt").read_text().split()
    assert len(test) == 2 and len(train) == 4 and not set(test) & set(train)
    # the contact sheet: real rows over generated rows for both clips
    sheet = read_png(out / "contact_sheet.png")
    assert sheet.shape[0] >= 4 * 64
    # a second run reuses the prepared data and starts training afresh
    (out / "train" / "stale.txt").write_text("x")
    assert main(["demo", "--preset", "grid", "--quick", "--out", str(out), "--data", str(GRID_S1)]) == 0
    assert not (out / "train" / "stale.txt").exists()
    assert json.loads((out / "report.json").read_text())["n_clips"] == 2


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


def test_grid_learning_check_needs_a_face_and_lips_that_follow_the_speech():
    good = {"lip_open_r": 0.6, "control_lip_open_r": 0.1, "judge_detection_rate": 1.0, "n_clips": 20}
    assert check_report(good) == []
    assert check_report(dict(good, lip_open_r=0.45))
    assert check_report(dict(good, control_lip_open_r=0.18))
    assert check_report(dict(good, lip_open_r=None))
    assert check_report(dict(good, n_clips=1))
    # lips judged on frames where the trained detector finds no face (coloured noise) fail
    assert check_report(dict(good, judge_detection_rate=0.0))
    assert check_report(dict(good, judge_detection_rate=None))
    # CI's shortened run has its own floors
    assert check_report(dict(good, lip_open_r=0.35, control_lip_open_r=0.18, short=True)) == []
    assert check_report(dict(good, lip_open_r=0.25, short=True))
    assert check_report(dict(good, control_lip_open_r=0.25, short=True))
    # the old pixel measure no longer passes a model on its own
    assert check_report(dict(good, lip_open_r=0.1, mouth_open_r=0.9))


def test_mouth_strip_shows_the_real_mouth_over_the_generated_one_enlarged(tmp_path):
    from diffheads.data.layout import DataLayout
    from diffheads.demo.plots import mouth_strip
    from diffheads.io.video import write_video

    n, size = 40, 64
    points = np.zeros((n, 68, 2), np.float32)
    points[:, 48:68] = np.stack(np.meshgrid(np.linspace(24, 40, 5), np.linspace(44, 50, 4)), -1).reshape(20, 2)
    real = np.full((n, size, size, 3), 200, np.uint8)
    real[:, 44:51, 24:41] = (200, 30, 30)  # a red mouth where the landmarks are
    fake = real.copy()
    fake[:, 44:51, 24:41] = (30, 30, 200)  # the generated one blue
    write_video(tmp_path / "data" / "video" / "c.mp4", real)
    (tmp_path / "data" / "lmks").mkdir()
    np.save(tmp_path / "data" / "lmks" / "c.npy", points)
    write_video(tmp_path / "gen" / "c.mp4", fake)
    strip = read_png(
        mouth_strip(tmp_path / "strip.png", DataLayout.of(tmp_path / "data"), {"c": tmp_path / "gen" / "c.mp4"})
    )
    top, bottom = strip[: strip.shape[0] // 2].astype(int), strip[strip.shape[0] // 2 :].astype(int)
    assert strip.shape[0] >= 2 * 3 * 19  # two rows of the 19 px box (mouth + 35% of its width), enlarged 3x
    assert (top[..., 0] - top[..., 2]).max() > 100 and (bottom[..., 2] - bottom[..., 0]).max() > 100
    assert (top[..., 2] - top[..., 0]).max() < 60 and (bottom[..., 0] - bottom[..., 2]).max() < 60
