"""dlib's trained judges in evaluate: inner-lip opening r, LMD on dlib points, identity distance and flicker."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from diffheads.errors import DiffheadsError
from diffheads.evaluate.run import ALL_METRICS, DEFAULT_METRICS, EvaluateConfig, other_clip
from diffheads.io.audio import load_audio
from diffheads.io.video import read_video
from diffheads.metrics import flicker, identity, lip_open
from diffheads.metrics.judges import JUDGE_METRICS, judge_metrics, lip_open_metrics, lmd68_row, video_judges
from runcli import run_cli

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "grid"
S1 = ("bbbf6n", "bbbf7s", "bbbf8p")  # three sentences of speaker s1
OTHERS = ("brbk7n", "lbax4n")  # two other GRID speakers (grid/other)
ALL_JUDGES = set(JUDGE_METRICS)


@pytest.fixture(scope="module")
def judges():
    from diffheads.metrics.dlib_face import DlibJudges

    return DlibJudges()


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> dict[str, Path]:
    """GRID s1 and other speakers' clips aligned and cropped to 64 px by `prepare`, and copies as 'generated'."""
    from diffheads.face.align import AlignConfig
    from diffheads.prepare.clip import PrepareConfig
    from diffheads.prepare.run import prepare_dataset
    from diffheads.prepare.split import SplitRule

    root = tmp_path_factory.mktemp("judges")
    assert SHARED.is_dir(), f"{SHARED} missing: the tests need ../shared/data beside the repository"
    for folder, names, suffix in (("s1", S1, "mp4"), ("other", OTHERS, "mpg")):
        (root / "raw" / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(SHARED / folder / f"{name}.{suffix}", root / "raw" / folder)
    report = prepare_dataset(
        root / "raw",
        root / "data",
        PrepareConfig(align=AlignConfig(size=64)),
        split=SplitRule(test_fraction=0.0),
        workers=1,
        progress=False,
    )
    assert report["prepared"] == len(S1) + len(OTHERS)
    (root / "gen" / "s1").mkdir(parents=True)
    for name in S1[:2]:
        shutil.copy(root / "data" / "video" / "s1" / f"{name}.mp4", root / "gen" / "s1")
    return {"root": root, "data": root / "data", "gen": root / "gen"}


def _frames(grid: dict[str, Path], clip: str) -> np.ndarray:
    return read_video(grid["data"] / "video" / f"{clip}.mp4")[0]


def _spoken(clip: str, n: int) -> slice:
    """The spoken span read straight from the GRID alignment: first to last word that is not sil/sp."""
    rows = [line.split() for line in (SHARED / "align" / f"{clip}.align").read_text().splitlines() if line.strip()]
    words = [(int(a), int(b)) for a, b, w in rows if w not in ("sil", "sp")]
    return slice(words[0][0] // 1000, min(-(-words[-1][1] // 1000), n))  # 1000 units of 1/25000 s per frame


def _opening(points: np.ndarray) -> np.ndarray:
    """Inner-lip opening written out point by point (0-based dlib indices)."""
    gap = sum(np.hypot(*(points[:, a] - points[:, b]).T) for a, b in ((61, 67), (62, 66), (63, 65))) / 3
    return gap / np.hypot(*(points[:, 54] - points[:, 48]).T)


def _centred_r(gen: list[np.ndarray], real: list[np.ndarray]) -> float:
    pairs = [(g[: min(len(g), len(r))], r[: min(len(g), len(r))]) for g, r in zip(gen, real)]
    return float(np.corrcoef(*(np.concatenate([s - s.mean() for s in side]) for side in zip(*pairs)))[0, 1])


# ---------------------------------------------------------------- the measures on hand-built input


def test_lip_opening_of_a_hand_built_mouth():
    points = np.zeros((2, 68, 2))
    points[:, 48], points[:, 54] = (10, 50), (30, 50)  # mouth width 20
    points[1, 54] = (50, 50)  # frame 1: width 40, same lips
    for x, (top, bottom), gap in zip((15, 20, 25), ((61, 67), (62, 66), (63, 65)), (2.0, 4.0, 3.0)):
        points[:, top], points[:, bottom] = (x, 48), (x + 1, 48 + gap)  # the pair leans: gap^2 + 1
    gaps = np.sqrt(np.array([2.0, 4.0, 3.0]) ** 2 + 1).mean()
    np.testing.assert_allclose(lip_open.lip_opening(points), [gaps / 20, gaps / 40])
    with pytest.raises(ValueError):
        lip_open.lip_opening(np.zeros((3, 20, 2)))


def test_alignment_span_and_lookup(tmp_path):
    (tmp_path / "s1").mkdir()
    align = tmp_path / "s1" / "abc.align"
    align.write_text("0 18000 sil\n18000 24000 bin\n24000 30500 sp\n30500 52250 now\n52250 74500 sil\n")
    assert lip_open.alignment_span(align, 75) == slice(18, 53)  # 52250 / 1000 = 52.25 frames -> up to 53
    assert lip_open.alignment_span(align, 40) == slice(18, 40)
    assert lip_open.find_alignment(tmp_path, "s1/abc") == align
    assert lip_open.find_alignment(tmp_path / "s1", "s1/abc") == align  # by basename
    assert lip_open.find_alignment(tmp_path, "s1/other") is None and lip_open.find_alignment(None, "x") is None
    (tmp_path / "bad.align").write_text("0 100 sil\nzero 200 bin\n")
    with pytest.raises(DiffheadsError, match="line 2"):
        lip_open.alignment_span(tmp_path / "bad.align", 10)
    (tmp_path / "silent.align").write_text("0 74500 sil\n")
    with pytest.raises(DiffheadsError, match="no spoken word"):
        lip_open.alignment_span(tmp_path / "silent.align", 75)


def test_voice_activity_finds_grid_spoken_spans():
    # every 10th s1 sentence (59), each edge of the detected span against the word alignment
    clips = sorted(p.stem for p in (SHARED / "s1").glob("*.mp4"))[::10]
    errors = {}
    for clip in [*clips, "bbbf6n"]:  # bbbf6n: hum before the speech that a broadband level takes for speech
        audio = load_audio(SHARED / "s1" / f"{clip}.mp4")
        n = len(audio) // 640
        found, truth = lip_open.voice_span(audio, n), _spoken(f"s1/{clip}", n)
        errors[clip] = np.array([abs(found.start - truth.start), abs(found.stop - truth.stop)])
    assert errors["bbbf6n"].max() <= 5  # within 0.2 s
    pooled = np.concatenate([errors[c] for c in clips])  # in frames of 40 ms
    assert len(clips) == 59 and np.median(pooled) <= 2 and pooled.mean() <= 3
    assert (pooled <= 5).mean() >= 0.8  # an energy detector misses a soft onset now and then (0.88 here)
    quiet = 1e-3 * np.random.default_rng(0).standard_normal(16000)
    assert lip_open.voice_span(quiet, 25) == slice(0, 25)  # no speech: every frame


def test_pooled_std_and_descriptor_distances_against_numpy():
    a, b = np.array([1.0, 2.0, 6.0]), np.array([10.0, 14.0])
    centred = np.concatenate([a - 3.0, b - 12.0])
    assert lip_open.pooled_std([a, b]) == pytest.approx(np.sqrt(np.mean(centred**2)))
    x, y = np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([0.0, 1.0])
    np.testing.assert_allclose(identity.euclidean(x, y), [np.sqrt(9 + 9), np.sqrt(2)])
    np.testing.assert_allclose(identity.cosine(x, y), [4 / 5, 0.0], atol=1e-12)
    np.testing.assert_array_equal(identity.sampled_frames(23), [5, 10, 15, 20])
    np.testing.assert_array_equal(identity.sampled_frames(3), [2])


def test_planted_landmark_offsets_give_known_lmd68():
    rng = np.random.default_rng(0)
    real = rng.uniform(0, 64, (10, 68, 2))
    gen = real.copy()
    gen[:, 48:68] += (3.0, 4.0)  # mouth moved by 5 px
    row = lmd68_row(gen, real)
    assert row["m_lmd68"] == pytest.approx(5.0) and row["f_lmd68"] == pytest.approx(5.0 * 20 / 68)
    iod = np.hypot(*(real[:, 45] - real[:, 36]).T)
    assert row["m_lmd68_iod"] == pytest.approx(np.mean(5.0 / iod))


def test_flicker_ignores_the_mouth_and_counts_the_rest():
    frames = np.full((3, 40, 40, 3), 100, np.uint8)
    mouth = np.zeros((3, 68, 2))
    mouth[:, 48:68] = np.stack([np.linspace(15, 25, 20), np.full(20, 30.0)], axis=1)  # width 10: box x 10-30, y 25-35
    frames[1, 28:33, 16:24] = 0  # the mouth opens: inside the dilated box
    assert np.nanmax(flicker.outside_mouth_change(frames, mouth)) == 0
    frames[2] = 107  # the whole frame brightens by 7 levels, mouth box included
    frames[2, 28:33, 16:24] = 0
    change = flicker.outside_mouth_change(frames, mouth)
    np.testing.assert_allclose(change, [0.0, 7.0])


def test_lip_open_control_pairs_each_clip_with_the_next_real_series():
    rng = np.random.default_rng(2)
    clips = {f"c{i}": {"lip_open": (rng.normal(size=20 + i), rng.normal(size=18 + 2 * i))} for i in range(3)}
    for entry in clips.values():
        entry["span_source"] = "alignment"
    out = lip_open_metrics(clips, other_clip)
    gen = [clips[c]["lip_open"][0] for c in ("c0", "c1", "c2")]
    nxt = [clips[c]["lip_open"][1] for c in ("c1", "c2", "c0")]
    assert out["control_lip_open_r"]["value"] == pytest.approx(_centred_r(gen, nxt), abs=1e-12)
    assert out["lip_open_r"]["n_frames"] == 18 + 20 + 22  # each pair trimmed to its shorter series


# ---------------------------------------------------------------- on real GRID faces


def test_a_clip_against_itself(grid, judges):
    frames = _frames(grid, "s1/bbbf6n")
    audio = load_audio(grid["data"] / "audio" / "s1" / "bbbf6n.wav")
    row, series = video_judges(judges, (frames, frames), ALL_JUDGES, audio)
    assert row["judge_detection_rate"] == 1.0 and row["lip_open_span"] == "voice activity"
    assert row["lip_open_r"] == pytest.approx(1.0, abs=1e-9)
    assert row["m_lmd68"] == 0.0 and row["f_lmd68"] == 0.0
    assert row["id_distance"] == pytest.approx(0.0, abs=1e-9) and row["csim"] == pytest.approx(1.0, abs=1e-9)
    assert 0 < row["real_id_distance_to_identity"] < 0.6  # the same face in other frames: close, not identical
    assert row["flicker"] == 1.0 and row["flicker_real"] > 0
    # the opening written out from dlib's points agrees with the metric's series
    points = judges.track(frames).points
    span = lip_open.voice_span(audio, len(frames))
    np.testing.assert_allclose(series["lip_open"][1], _opening(points)[span], rtol=1e-5)


def test_a_translated_video_gives_the_shift_as_lmd68(grid, judges):
    real = _frames(grid, "s1/bbbf7s")[:20]
    generated = np.roll(real, 3, axis=2)  # 3 px to the right; the wrapped columns are background
    row, _ = video_judges(judges, (generated, real), {"lmd68"}, to_real=np.array([2.0, 2.0]))
    # real stored at twice the size: 6 px there; dlib's fit on the moved face moves with it within a fraction of a px
    assert row["f_lmd68"] == pytest.approx(6.0, abs=0.5)
    assert row["m_lmd68"] == pytest.approx(6.0, abs=0.5)


def test_a_frozen_mouth_scores_at_control_level(grid, judges):
    gen, real = [], []
    for name in S1:
        clip = f"s1/{name}"
        frames = _frames(grid, clip)
        # the mouth region from prepare's Face Mesh landmarks (not dlib), over the whole clip, padded by 3 px
        mouth = np.load(grid["data"] / "lmks" / f"{clip}.npy")[: len(frames), 48:68, :2]
        (x0, y0), (x1, y1) = np.floor(mouth.min(axis=(0, 1))) - 3, np.ceil(mouth.max(axis=(0, 1))) + 4
        x0, y0, x1, y1 = (int(np.clip(v, 0, 64)) for v in (x0, y0, x1, y1))
        frozen = frames.copy()
        frozen[:, y0:y1, x0:x1] = frames[0, y0:y1, x0:x1]  # the rest of the face keeps moving
        span = _spoken(clip, len(frames))
        gen.append(_opening(judges.track(frozen).points)[span])
        real.append(_opening(judges.track(frames).points)[span])
    frozen_r = _centred_r(gen, real)
    control = _centred_r(real, real[1:] + real[:1])  # each real clip against the next sentence
    assert _centred_r(real, real) == pytest.approx(1.0)
    assert frozen_r < 0.5 and frozen_r < control + 0.2
    assert lip_open.pooled_std(gen) < 0.5 * lip_open.pooled_std(real)  # a frozen mouth barely moves


def test_other_speakers_are_other_people(grid, judges):
    def descriptors(clip: str) -> np.ndarray:
        frames = _frames(grid, clip)[:30]
        return judges.descriptors(frames, judges.track(frames), identity.sampled_frames(30))

    s1 = descriptors("s1/bbbf6n")[0]
    assert identity.euclidean(descriptors("s1/bbbf7s"), s1).max() < 0.6
    for name in OTHERS:
        assert identity.euclidean(descriptors(f"other/{name}"), s1).min() >= 0.6


def test_a_crop_too_small_for_the_detector_reports_no_face(grid, judges):
    import cv2

    frames = _frames(grid, "s1/bbbf6n")[:6]
    tiny = np.stack([cv2.resize(f, (8, 8), interpolation=cv2.INTER_AREA) for f in frames])
    assert judges.track(tiny).detection_rate == 0.0
    row, series = video_judges(judges, (tiny, frames), ALL_JUDGES)
    assert row == {"judge_detection_rate": 0.0, "real_judge_detection_rate": 1.0}
    metrics, skipped = judge_metrics([{"clip": "a", **row}], {"a": series}, ALL_JUDGES, other_clip)
    assert metrics["judge_detection_rate"]["value"] == 0.0 and metrics["judge_detection_rate"]["real"] == 1.0
    assert set(skipped) == ALL_JUDGES and "dlib" in skipped["lip_open"]


# ---------------------------------------------------------------- registration in evaluate


def test_judges_are_opt_in_and_alignments_must_exist(tmp_path):
    assert set(JUDGE_METRICS) <= set(ALL_METRICS) and not set(JUDGE_METRICS) & set(DEFAULT_METRICS)
    assert EvaluateConfig().metrics == DEFAULT_METRICS
    with pytest.raises(DiffheadsError, match="alignments folder"):
        EvaluateConfig(metrics=("lip_open",), alignments=str(tmp_path / "missing"))


def test_evaluate_runs_the_judges_end_to_end(grid, judges):
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
        "lip_open,lmd68,identity,flicker",
        "--alignments",
        str(SHARED / "align"),
        "--quiet",
    )
    metrics = res["metrics"]
    assert res["skipped"] == {}
    assert (
        metrics["lip_open_r"]["value"] == pytest.approx(1.0, abs=1e-9)
        and "alignment: 2" in (metrics["lip_open_r"]["variant"])
    )
    assert metrics["id_distance"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["flicker"]["value"] == pytest.approx(1.0) and metrics["m_lmd68"]["value"] == 0.0
    assert metrics["judge_detection_rate"]["value"] == 1.0
    # the control recomputed here: dlib's points, the alignment spans read directly, the next sentence's truth
    spoken = []
    for name in S1[:2]:
        frames = _frames(grid, f"s1/{name}")
        spoken.append(_opening(judges.track(frames).points)[_spoken(f"s1/{name}", len(frames))])
    expected = _centred_r(spoken, spoken[1:] + spoken[:1])
    assert metrics["control_lip_open_r"]["value"] == pytest.approx(expected, abs=1e-5)
    assert metrics["control_lip_open_r"]["value"] < 0.6


def test_bad_frames_and_a_missing_model_package_are_one_line_errors(judges, monkeypatch):
    import importlib.util

    from diffheads.metrics import dlib_face

    with pytest.raises(DiffheadsError, match="uint8"):
        judges.track(np.zeros((2, 64, 64, 3), np.float32))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DiffheadsError, match="pip install"):
        dlib_face.model_dir()
