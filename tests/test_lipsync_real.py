"""Lip sync against real clips without weights: within-clip mouth-opening r, M-LMD / F-LMD, and their controls."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from diffheads.errors import DiffheadsError
from diffheads.evaluate.clips import LoadedPair
from diffheads.evaluate.run import EvaluateConfig, _to_real_pixels, evaluate, other_clip
from diffheads.io.audio import load_audio
from diffheads.io.video import read_video
from diffheads.metrics.lmd import detection_rate, f_lmd, frame_distances, frames_compared, inter_ocular, m_lmd
from diffheads.metrics.mouth import lip_sync_r, mouth_opening, speech_span, within_clip_r
from runcli import run_cli

GRID = Path(__file__).resolve().parents[2] / "shared" / "data" / "grid" / "s1"
GRID_CLIPS = ("bbbf6n", "bbbf7s")  # two different sentences of speaker s1


# ---------------------------------------------------------------- within-clip r


def test_within_clip_r_hand_computed():
    # clip A centred: m [-1, 0, 1], t [-1/3, -4/3, 5/3]; clip B (trimmed to 2): m [-1, 1], t [-2, 2]
    # sum(m t) = 6, sum(m^2) = 4, sum(t^2) = 38/3  ->  r = 6 / sqrt(4 * 38/3) = 3 sqrt(3/38)
    measured = [np.array([1.0, 2.0, 3.0]), np.array([10.0, 12.0, 14.0])]
    truth = [np.array([2.0, 1.0, 4.0]), np.array([5.0, 9.0])]
    assert within_clip_r(measured, truth) == pytest.approx(3 * math.sqrt(3 / 38), abs=1e-12)


def test_clip_level_offsets_do_not_count_as_lip_sync():
    rng = np.random.default_rng(0)
    n = 500
    # two clips whose levels differ by 100 in both series, with independent motion inside each clip
    measured = [100 + rng.normal(size=n), rng.normal(size=n)]
    truth = [100 + rng.normal(size=n), rng.normal(size=n)]
    assert lip_sync_r(measured, truth) > 0.99  # pooled raw series: the offset alone gives r ~ 1
    assert abs(within_clip_r(measured, truth)) < 0.1  # ~ N(0, 1/sqrt(1000))


def test_within_clip_r_of_clips_against_themselves_is_one():
    rng = np.random.default_rng(1)
    clips = [rng.normal(size=40) + 5, 3 * rng.normal(size=25) - 7]
    assert within_clip_r(clips, clips) == pytest.approx(1.0, abs=1e-12)
    # each clip against itself with its own offset and a common gain is still 1
    assert within_clip_r(clips, [2 * clips[0] + 9, 2 * clips[1] - 100]) == pytest.approx(1.0, abs=1e-12)
    # a gain on one clip only is not: the clips' motion is pooled on one scale
    assert within_clip_r(clips, [2 * clips[0], clips[1]]) < 1 - 1e-3


def test_within_clip_r_drops_non_finite_frames_and_rejects_mismatched_lists():
    measured = [np.array([1.0, 2.0, np.nan, 3.0])]
    truth = [np.array([2.0, 1.0, 50.0, 4.0])]
    assert within_clip_r(measured, truth) == pytest.approx(np.corrcoef([1, 2, 3], [2, 1, 4])[0, 1], abs=1e-12)
    assert np.isnan(within_clip_r([], []))
    with pytest.raises(ValueError):
        within_clip_r([np.zeros(3)], [])


def test_control_pairing_is_a_fixed_derangement():
    clips = ["b/2", "a/1", "c/3", "a/0"]
    other = other_clip(clips)
    assert other == {"a/0": "a/1", "a/1": "b/2", "b/2": "c/3", "c/3": "a/0"}
    assert all(k != v for k, v in other.items()) and sorted(other.values()) == sorted(clips)


# ---------------------------------------------------------------- LMD


def _face(t: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 100, (t, 68, 2))


def test_planted_mouth_offset_gives_known_lmd():
    real = _face()
    gen = real.copy()
    gen[:, 48:68] += [3.0, 4.0]  # every mouth point 5 px away
    assert m_lmd(gen, real) == pytest.approx(5.0, abs=1e-12)
    assert f_lmd(gen, real) == pytest.approx(5.0 * 20 / 68, abs=1e-12)
    assert m_lmd(real, real) == 0.0 and f_lmd(real, real) == 0.0


def test_lmd_matches_a_direct_loop_and_trims_to_common_length():
    gen, real = _face(12, seed=1), _face(9, seed=2)
    per_frame = [np.mean([math.hypot(*(gen[t, p] - real[t, p])) for p in range(48, 68)]) for t in range(9)]
    assert m_lmd(gen, real) == pytest.approx(np.mean(per_frame), rel=1e-12)
    whole = [np.mean([math.hypot(*(gen[t, p] - real[t, p])) for p in range(68)]) for t in range(9)]
    assert f_lmd(gen, real) == pytest.approx(np.mean(whole), rel=1e-12)


def test_frames_without_a_face_are_left_out():
    real = _face()
    gen = real.copy()
    gen[:, 48:68] += [3.0, 4.0]
    gen[2] = np.nan  # no face in generated frame 2
    real[5] = np.nan  # no face in real frame 5
    gen[7, 50] = np.nan  # one missing point: the frame has no (complete) face
    assert m_lmd(gen, real) == pytest.approx(5.0, abs=1e-12)
    assert frames_compared(gen, real) == 7
    assert detection_rate(gen) == pytest.approx(0.8) and detection_rate(real) == pytest.approx(0.9)
    assert np.isnan(frame_distances(gen, real)[[2, 5, 7]]).all()
    assert np.isnan(m_lmd(np.full((3, 68, 2), np.nan), real[:3]))


def test_normalised_lmd_divides_by_the_inter_ocular_distance():
    real = _face()
    real[:, 36] = [10.0, 20.0]
    real[:, 45] = [70.0, 100.0]  # outer eye corners 100 px apart
    gen = real.copy()
    gen[:, 48:68] += [3.0, 4.0]
    np.testing.assert_allclose(inter_ocular(real), 100.0)
    assert m_lmd(gen, real, inter_ocular(real)) == pytest.approx(0.05, abs=1e-12)


def test_generated_pixels_map_to_the_real_clip_resolution():
    pair = LoadedPair(
        "x",
        np.zeros((2, 32, 48, 3), np.uint8),
        np.zeros((2, 32, 48, 3), np.uint8),
        None,
        None,
        None,
        real_size=(64, 144),
    )
    np.testing.assert_allclose(_to_real_pixels(pair), [3.0, 2.0])  # x: 144 / 48, y: 64 / 32


# ---------------------------------------------------------------- end to end on real GRID footage


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> dict[str, Path]:
    """Two GRID s1 clips prepared at 64 px, and 'generated' copies of the prepared videos."""
    from diffheads.face.align import AlignConfig
    from diffheads.prepare.clip import PrepareConfig
    from diffheads.prepare.run import prepare_dataset
    from diffheads.prepare.split import SplitRule

    root = tmp_path_factory.mktemp("grid")
    assert GRID.is_dir(), f"{GRID} missing: the tests need ../shared/data beside the repository"
    (root / "raw" / "s1").mkdir(parents=True)
    for name in GRID_CLIPS:
        shutil.copy(GRID / f"{name}.mp4", root / "raw" / "s1")
    report = prepare_dataset(
        root / "raw",
        root / "data",
        PrepareConfig(align=AlignConfig(size=64)),
        split=SplitRule(test_fraction=0.0),
        workers=1,
        progress=False,
    )
    assert report["prepared"] == len(GRID_CLIPS)
    shutil.copytree(root / "data" / "video", root / "gen")
    return {"root": root, "data": root / "data", "gen": root / "gen"}


def _centred(series: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([s - s.mean() for s in series])


def test_real_clips_against_themselves(grid):
    out = grid["root"] / "out"
    res = run_cli(
        "evaluate",
        "--generated",
        str(grid["gen"]),
        "--real",
        str(grid["data"]),
        "--out",
        str(out),
        "--metrics",
        "mouth_open,lmd",
        "--quiet",
    )
    metrics = res["metrics"]
    assert set(metrics) == {
        "mouth_open_r",
        "control_mouth_open_r",
        "m_lmd",
        "f_lmd",
        "control_m_lmd",
        "control_f_lmd",
        "lmd_detection_rate",
        "mouth_open_r_whole_clip",
        "control_mouth_open_r_whole_clip",
    }
    assert res["skipped"] == {}
    # identical frames: the same opening series and the same Face Mesh landmarks
    assert metrics["mouth_open_r"]["value"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["m_lmd"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["f_lmd"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["m_lmd"]["n_videos"] == 2 and metrics["m_lmd"]["lmd_detection_rate"] > 0.9
    assert metrics["lmd_detection_rate"]["value"] > 0.9 and metrics["lmd_detection_rate"]["real"] > 0.9

    # the control pairs each clip with the other sentence: computed here from the prepared data directly
    clips = [f"s1/{n}" for n in sorted(GRID_CLIPS)]
    series = []
    for cid in clips:
        frames, _ = read_video(grid["data"] / "video" / f"{cid}.mp4")
        lmks = np.load(grid["data"] / "lmks" / f"{cid}.npy").astype(np.float64)[:, :, :2]
        series.append(mouth_opening(frames, lmks[: len(frames), 48:68]).astype(np.float64))
    n = min(len(s) for s in series)
    gen, real = [series[0][:n], series[1][:n]], [series[1][:n], series[0][:n]]
    expected = np.corrcoef(_centred(gen), _centred(real))[0, 1]
    control = metrics["control_mouth_open_r_whole_clip"]["value"]
    assert control == pytest.approx(expected, abs=1e-5) and control < 0.9
    # the headline control uses each clip's speech span only (both series start at their own speech onset)
    spans = [speech_span(load_audio(grid["data"] / "audio" / f"{cid}.wav"), len(s)) for cid, s in zip(clips, series)]
    spoken = [s[span] for s, span in zip(series, spans)]
    assert all(10 < len(s) < len(full) for s, full in zip(spoken, series))
    n = min(len(s) for s in spoken)
    expected = np.corrcoef(_centred([spoken[0][:n], spoken[1][:n]]), _centred([spoken[1][:n], spoken[0][:n]]))[0, 1]
    assert metrics["control_mouth_open_r"]["value"] == pytest.approx(expected, abs=1e-5)
    assert metrics["mouth_open_r_whole_clip"]["value"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["control_m_lmd"]["value"] > 0.1 and metrics["control_f_lmd"]["value"] > 0.1

    rows = list(csv.DictReader((out / "per_video.csv").open()))
    assert [r["clip"] for r in rows] == clips
    assert all(float(r["mouth_open_r"]) == pytest.approx(1.0) and float(r["m_lmd"]) == 0.0 for r in rows)
    assert all(r["mouth_box"] == "DATA/lmks" for r in rows)
    report = (out / "report.md").read_text()
    assert "M-LMD" in report and "mouth-open r (control)" in report
    assert (out / "plots" / "mouth_real_s1_bbbf6n.png").is_file()


def test_face_mesh_mouth_box_for_a_folder_of_videos_and_one_clip(grid, tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    shutil.copy(grid["gen"] / "s1" / f"{GRID_CLIPS[0]}.mp4", gen)
    real = tmp_path / "real"
    shutil.copytree(gen, real)  # a plain folder of videos: no DATA/lmks, the box comes from Face Mesh
    res = evaluate(gen, real, tmp_path / "out", EvaluateConfig(metrics=("mouth_open", "lmd")), progress=False)
    metrics = res["metrics"]
    assert metrics["mouth_open_r"]["value"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["m_lmd"]["value"] == pytest.approx(0.0, abs=1e-9)
    for key in ("control_mouth_open_r", "control_m_lmd", "control_f_lmd"):
        assert metrics[key]["value"] is None and "2 clips" in metrics[key]["reason"]
    rows = list(csv.DictReader((tmp_path / "out" / "per_video.csv").open()))
    assert rows[0]["mouth_box"] == "face mesh"


def test_without_real_clips_the_measures_are_skipped_with_a_reason(grid, tmp_path):
    cfg = EvaluateConfig(metrics=("smoothness", "mouth_open", "lmd"))
    res = evaluate(grid["gen"], None, tmp_path / "out", cfg, progress=False)
    assert set(res["metrics"]) == {"ofm", "fmse"}
    assert "--real" in res["skipped"]["mouth_open"] and "--real" in res["skipped"]["lmd"]
    with pytest.raises(DiffheadsError, match="no metric could be computed"):
        evaluate(grid["gen"], None, tmp_path / "out2", EvaluateConfig(metrics=("mouth_open", "lmd")), progress=False)


def test_speech_span_finds_the_voiced_frames_and_ignores_clicks():
    from diffheads.metrics.mouth import speech_span

    rng = np.random.default_rng(0)
    per_frame = 640
    quiet = 1e-3 * rng.standard_normal(10 * per_frame)
    t = np.arange(30 * per_frame) / 16000
    voiced = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    click = np.zeros(8 * per_frame)
    click[3 * per_frame : 3 * per_frame + 200] = 0.5  # one loud frame: not speech
    audio = np.concatenate([quiet, voiced, quiet, click + 1e-3 * rng.standard_normal(len(click))])
    n = len(audio) // per_frame
    assert speech_span(audio, n) == slice(10, 40)
    # silence alone, or a clip too short to judge, keeps every frame
    assert speech_span(quiet, 10) == slice(0, 10)
    assert speech_span(voiced[:per_frame], 1) == slice(0, 1)
