"""Drift metrics (metrics/drift.py) against independent computations, and `diffheads evaluate --metrics drift`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import procrustes

from diffheads.data.layout import DataLayout
from diffheads.face.mean_face import load_mean_face
from diffheads.io.audio import load_audio
from diffheads.io.video import read_video, write_video
from diffheads.metrics import drift
from diffheads.synth.face import render_faces, sample_identity
from runcli import run_cli

# Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes, supplementary test
# data, and mathematical observations", Table 1: (L, a, b) pairs and their Delta E 00 (hue wrap-around included).
SHARMA = [
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 3.1571, -77.2803), (50.0, 0.0, -82.7485), 2.8615),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.49, -0.001), (50.0, -2.49, 0.0011), 7.2195),
    ((50.0, -0.001, 2.49), (50.0, 0.0009, -2.49), 4.8045),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((50.0, 2.5, 0.0), (56.0, -27.0, -3.0), 31.9030),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """Delta E 00 written out from Sharma et al. (2005), eqs. (1)-(22), for (..., 3) Lab arrays."""
    L1, a1, b1 = np.moveaxis(np.asarray(lab1, np.float64), -1, 0)
    L2, a2, b2 = np.moveaxis(np.asarray(lab2, np.float64), -1, 0)
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.where((a1p == 0) & (b1 == 0), 0.0, np.degrees(np.arctan2(b1, a1p)) % 360)
    h2p = np.where((a2p == 0) & (b2 == 0), 0.0, np.degrees(np.arctan2(b2, a2p)) % 360)
    dlp, dcp = L2 - L1, c2p - c1p
    dh = h2p - h1p
    dhp = np.where(c1p * c2p == 0, 0.0, np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh)))
    dHp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dhp) / 2)
    lp_bar, cp_bar = (L1 + L2) / 2, (c1p + c2p) / 2
    hsum = h1p + h2p
    hp_bar = np.where(
        c1p * c2p == 0,
        hsum,
        np.where(np.abs(h1p - h2p) <= 180, hsum / 2, np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2)),
    )
    t = (
        1
        - 0.17 * np.cos(np.radians(hp_bar - 30))
        + 0.24 * np.cos(np.radians(2 * hp_bar))
        + 0.32 * np.cos(np.radians(3 * hp_bar + 6))
        - 0.20 * np.cos(np.radians(4 * hp_bar - 63))
    )
    d_theta = 30 * np.exp(-(((hp_bar - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(cp_bar**7 / (cp_bar**7 + 25.0**7))
    s_l = 1 + 0.015 * (lp_bar - 50) ** 2 / np.sqrt(20 + (lp_bar - 50) ** 2)
    s_c, s_h = 1 + 0.045 * cp_bar, 1 + 0.015 * cp_bar * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    return np.sqrt((dlp / s_l) ** 2 + (dcp / s_c) ** 2 + (dHp / s_h) ** 2 + r_t * (dcp / s_c) * (dHp / s_h))


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in 0..255 -> CIELAB (D65, 2 degrees), from the sRGB (IEC 61966-2-1) and CIE 1976 definitions."""
    c = np.asarray(rgb, np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
    )
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    delta = 6 / 29
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def face_points(size: int, scale: float = 0.42) -> np.ndarray:
    """(68, 2) mean-face landmarks placed in a size x size frame (outer eye corners `scale * size` apart)."""
    points = load_mean_face().points[:, :2]
    points = (points - points.mean(axis=0)) * scale * size / drift.inter_ocular(points)
    return points + size / 2


def test_our_ciede2000_and_the_reference_formula_match_sharma_data():
    lab1 = np.array([p[0] for p in SHARMA])
    lab2 = np.array([p[1] for p in SHARMA])
    expected = np.array([p[2] for p in SHARMA])
    np.testing.assert_allclose(ciede2000(lab1, lab2), expected, atol=5e-5)
    np.testing.assert_allclose(drift.colour_difference(lab1, lab2), expected, atol=5e-5)
    assert drift.colour_difference(lab1, lab1[0]).shape == (len(SHARMA),)  # broadcasts one reference


def _ramp_video(size: int, n: int, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A grey frame whose face (an ellipse around the landmarks) is one colour shifted by `step` per frame."""
    points = face_points(size)
    base = np.array([200.0, 150.0, 120.0])
    colours = np.clip(np.rint(base + np.arange(n)[:, None] * step), 0, 255).astype(np.uint8)
    frames = np.full((n, size, size, 3), 90, np.uint8)
    lo, hi = points.min(axis=0), points.max(axis=0)
    centre, axes = (lo + hi) / 2, (hi - lo) / 2 * 1.15
    yy, xx = np.mgrid[:size, :size] + 0.5
    face = ((xx - centre[0]) / axes[0]) ** 2 + ((yy - centre[1]) / axes[1]) ** 2 <= 1
    frames[:, face] = colours[:, None]
    return frames, np.broadcast_to(points, (n, 68, 2)).copy()


def test_colour_ramp_gives_the_ciede2000_of_the_face_colours():
    fps, n = 5, 60  # 12 "seconds" of 5 frames
    frames, landmarks = _ramp_video(64, n, np.array([0.4, 0.5, 0.6]))  # lighter and bluer
    colours = frames[:, 32, 32].astype(np.float64)  # the face colour in each frame (uniform inside the face)
    assert drift.face_mask(landmarks[0], 64, 64).sum() > 400  # the region lies inside the painted face
    expected_frames = ciede2000(srgb_to_lab(colours), srgb_to_lab(colours[0]))
    expected = expected_frames.reshape(-1, fps).mean(axis=1)

    alone = drift.video_drift(frames, landmarks, fps=fps)  # identity: generated frame 0
    curve = alone["against_identity"]["colour_de2000"]
    assert alone["identity"] == "generated frame 0" and alone["face_region"] == "face mesh"
    np.testing.assert_allclose(curve, expected, rtol=2e-3, atol=1e-3)
    # the colour moves linearly, so does its difference (nearly: Delta E 00 weights depend on the colour)
    assert np.all(np.diff(curve) > 0)
    fit = np.polyfit(alone["times_s"], curve, 1)
    residual = curve - np.polyval(fit, alone["times_s"])
    assert np.abs(residual).max() < 0.02 * curve[-1]
    assert drift.slope_per_minute(curve, alone["times_s"]) == pytest.approx(fit[0] * 60, rel=1e-9)

    # against a real clip holding the identity frame still: the same curve against both references
    still = np.repeat(frames[:1], n, axis=0)
    paired = drift.video_drift(frames, landmarks, still, landmarks, fps=fps)
    assert paired["identity"] == "real frame 0"
    np.testing.assert_allclose(paired["against_real"]["colour_de2000"], curve, rtol=1e-12)
    np.testing.assert_allclose(paired["against_identity"]["colour_de2000"], curve, rtol=1e-12)

    constant = drift.video_drift(still, landmarks, still, landmarks, fps=fps)
    for comparison in ("against_identity", "against_real"):
        assert np.all(constant[comparison]["colour_de2000"] == 0)
        assert np.all(constant[comparison]["sharpness_ratio"] == 1)
    assert drift.slope_per_minute(constant["against_identity"]["colour_de2000"], constant["times_s"]) == 0


def test_centre_box_when_no_face_is_found():
    frames, _ = _ramp_video(64, 10, np.array([1.0, 1.0, 1.0]))
    result = drift.video_drift(frames, np.full((10, 68, 2), np.nan), fps=10)
    assert result["face_region"] == "centre box" and result["detection_rate"] == 0.0
    colours = frames[:, 32, 32].astype(np.float64)  # the centre box lies inside the face
    expected = ciede2000(srgb_to_lab(colours), srgb_to_lab(colours[0])).mean()
    assert result["against_identity"]["colour_de2000"][0] == pytest.approx(expected, rel=2e-3)
    assert np.isnan(result["against_identity"]["shape_rms_iod"]).all()
    assert drift.video_columns(result)["drift_face_region"] == "centre box"


def _similarity(points: np.ndarray, scale: float, angle: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return scale * points @ np.array([[c, -s], [s, c]]).T + np.array(shift)


def test_similarity_transforms_leave_no_shape_drift():
    reference = face_points(128)
    rng = np.random.default_rng(0)
    moved = np.stack(
        [
            _similarity(reference, rng.uniform(0.5, 2.0), rng.uniform(-np.pi, np.pi), rng.uniform(-50, 50, 2))
            for _ in range(20)
        ]
    )
    assert np.abs(drift.similarity_residual(moved, reference)).max() < 1e-9
    # per-frame references (the real clip), moved by other similarities
    refs = np.stack([_similarity(reference, 1.3, 0.2 * i, (i, -i)) for i in range(20)])
    assert np.abs(drift.similarity_residual(moved, refs)).max() < 1e-9


@pytest.mark.parametrize("fraction", [0.05, 0.2])
def test_mouth_moved_by_a_fraction_of_the_eye_distance(fraction):
    reference = face_points(128)
    iod = drift.inter_ocular(reference)
    deformed = reference.copy()
    deformed[48:68, 1] += fraction * iod  # the mouth moves down: not a similarity
    frames = np.stack([deformed, _similarity(deformed, 0.7, 0.4, (10.0, -3.0)), np.full((68, 2), np.nan)])
    got = drift.similarity_residual(frames, reference)

    # scipy's Procrustes analysis on the same points: disparity is the residual over the reference's centred norm
    _, _, disparity = procrustes(reference, deformed)
    centred = reference - reference.mean(axis=0)
    expected = np.sqrt(disparity * (centred**2).sum() / 68) / iod
    np.testing.assert_allclose(got[:2], expected, rtol=1e-9)
    assert np.isnan(got[2])  # no face in that frame
    # most of the move stays after the fit: the 20 mouth points of 68 moved by `fraction`
    assert 0.5 * fraction * np.sqrt(20 / 68) < got[0] < fraction * np.sqrt(20 / 68)


def _synthetic_face(size: int) -> tuple[np.ndarray, np.ndarray]:
    """One rendered synthetic face frame (textured enough for a Laplacian) and its exact landmarks."""
    identity = sample_identity(np.random.default_rng(3))
    frames, landmarks = render_faces(identity, size, [0.3], [0.5], [1.0], [(0.0, 0.0, 0.0)])
    return frames[0], landmarks[0].astype(np.float64)


def test_blur_lowers_sharpness_monotonically():
    frame, points = _synthetic_face(96)
    sigmas = [0.0, 0.5, 1.0, 1.5, 2.5]
    frames = np.stack(
        [frame]
        + [
            np.clip(np.rint(ndimage.gaussian_filter(frame.astype(np.float64), (s, s, 0))), 0, 255).astype(np.uint8)
            for s in sigmas[1:]
        ]
    )
    landmarks = np.broadcast_to(points, (len(frames), 68, 2))
    result = drift.video_drift(frames, landmarks, fps=1)  # one frame per "second": the curve is per frame
    ratio = result["against_identity"]["sharpness_ratio"]
    assert ratio[0] == 1.0 and np.all(np.diff(ratio) < 0) and ratio[-1] < 0.2

    # independently: scipy's Laplace filter (4 neighbours) of the luma, variance over the same face pixels
    mask = drift.face_mask(points, 96, 96, drift.SHARPNESS_EXCLUDES)
    assert not mask[[0, -1]].any() and not mask[:, [0, -1]].any()  # borders (where filters differ) left out
    luma = frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    variances = np.array([ndimage.laplace(y)[mask].var() for y in luma])
    np.testing.assert_allclose(ratio, variances / variances[0], rtol=1e-9)

    same = drift.video_drift(np.repeat(frames[:1], 3, axis=0), landmarks[:3], fps=1)
    np.testing.assert_array_equal(same["against_identity"]["sharpness_ratio"], 1.0)


def test_per_second_curves_and_summaries():
    fps = 25
    n = 12 * fps + 7  # 12 whole seconds and a partial one
    t = np.arange(n) / fps
    values = 2.0 + 0.3 * t
    curve, times = drift.per_second(values, fps)
    assert len(curve) == 13
    whole = values[: 12 * fps].reshape(12, fps).mean(axis=1)
    np.testing.assert_allclose(curve[:12], whole, rtol=1e-12)
    assert curve[12] == pytest.approx(values[12 * fps :].mean())
    np.testing.assert_allclose(times[:12], t[: 12 * fps].reshape(12, fps).mean(axis=1))
    summary = drift.summarise_curve(curve, times, n, fps)
    assert set(summary) == {"at_5s", "at_10s", "slope_per_min"}  # 12.3 s reach 5 and 10 s only
    assert summary["at_5s"] == pytest.approx(values[4 * fps : 5 * fps].mean())
    assert summary["at_10s"] == pytest.approx(values[9 * fps : 10 * fps].mean())
    assert summary["slope_per_min"] == pytest.approx(0.3 * 60, rel=1e-9)  # a line stays a line

    # NaN frames (no face) are left out of their second; a noisy curve's slope is numpy's least-squares one
    rng = np.random.default_rng(1)
    noisy = values + rng.normal(0, 0.5, n)
    noisy[30:40] = np.nan
    noisy[50:75] = np.nan  # all of second 2
    curve, times = drift.per_second(noisy, fps)
    assert curve[1] == pytest.approx(np.nanmean(noisy[25:50])) and np.isnan(curve[2])
    keep = np.isfinite(curve)
    expected = np.polyfit(times[keep] / 60, curve[keep], 1)[0]
    assert drift.slope_per_minute(curve, times) == pytest.approx(expected, rel=1e-9)
    assert np.isnan(drift.slope_per_minute(curve[:1], times[:1]))

    # the mean over videos of different lengths
    mean, count = drift.mean_curve([np.array([1.0, 2.0, 3.0]), np.array([3.0, np.nan]), np.array([5.0])])
    np.testing.assert_allclose(mean, [3.0, 2.0, 3.0])
    np.testing.assert_array_equal(count, [3, 1, 1])


def test_windowed_lip_sync_r():
    fps = 25
    rng = np.random.default_rng(2)
    real = rng.normal(size=30 * fps)
    generated = real.copy()
    generated[15 * fps :] = rng.normal(size=15 * fps)  # lip sync lost half-way
    r = drift.windowed_r(generated, real, fps, window_s=10)
    assert len(r) == 30
    for k in (0, 7, 14, 29):  # windows centred on second k, kept inside the clip
        start = min(max(round(k * fps + (fps - 1) / 2 + 0.5 - 5 * fps), 0), 20 * fps)
        window = slice(start, start + 10 * fps)
        assert r[k] == pytest.approx(np.corrcoef(generated[window], real[window])[0, 1], rel=1e-9)
    assert r[0] == pytest.approx(1.0) and abs(r[-1]) < 0.2
    # a clip shorter than the window: one window, the whole clip
    short = drift.windowed_r(generated[: 3 * fps], real[: 3 * fps] + generated[: 3 * fps], fps, window_s=10)
    expected = np.corrcoef(generated[: 3 * fps], real[: 3 * fps] + generated[: 3 * fps])[0, 1]
    np.testing.assert_allclose(short, expected, rtol=1e-9)


def test_drift_metrics_average_the_videos_that_reach_each_second():
    def fake(n_frames: int, level: float) -> dict:
        curve, times = drift.per_second(np.full(n_frames, level) + np.arange(n_frames) / 25 / 60, 25)
        return {
            "frames": n_frames,
            "times_s": times,
            "identity": "real frame 0",
            "face_region": "face mesh",
            "detection_rate": 1.0,
            "real_detection_rate": 1.0,
            "against_identity": {"colour_de2000": curve},
            "against_real": {},
        }

    section = drift.drift_metrics([fake(6 * 25, 1.0), fake(11 * 25, 3.0), fake(3 * 25, 10.0)], fps=25)
    entry = section["against_identity"]["colour_de2000"]
    minutes = (np.arange(11) + 12 / 25) / 60  # the mean time of each second's frames, in minutes
    assert entry["at_5s"] == pytest.approx((1.0 + 3.0) / 2 + minutes[4])
    assert entry["at_10s"] == pytest.approx(3.0 + minutes[9]) and "at_30s" not in entry
    assert entry["slope_per_min"] == pytest.approx(1.0) and entry["n_videos_slope"] == 3
    assert entry["curve_n_videos"][:4] == [3, 3, 3, 2] and len(entry["curve"]) == 11
    assert section["videos_reaching"] == {"5s": 2, "10s": 1, "30s": 0, "60s": 0}
    assert "against_real_reason" in section


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    """Held-out synthetic clips of 12 s at 32 px: exact copies as 'generated', and a copy that drifts."""
    root = tmp_path_factory.mktemp("drift")
    data = root / "data"
    run_cli(
        "synth",
        str(data),
        "--train-identities",
        "1",
        "--test-identities",
        "3",
        "--clips-per-identity",
        "1",
        "--seconds",
        "12",
        "--size",
        "32",
        "--quiet",
    )
    layout = DataLayout.of(data)
    copies, drifting = root / "copies", root / "drifting"
    clips = sorted(layout.clips("test"))
    for cid in clips[:2]:  # the real clips as generated: byte for byte
        (copies / cid).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(layout.video(cid), copies / f"{cid}.mp4")
    frames, _ = read_video(layout.video(clips[2]))
    progress = np.linspace(0.0, 1.0, len(frames))
    drifted = []
    for frame, p in zip(frames, progress):  # warmer and blurrier over time
        tinted = np.clip(frame.astype(np.float64) + p * np.array([30.0, 0.0, -30.0]), 0, 255)
        drifted.append(cv2.GaussianBlur(tinted, (0, 0), 0.01 + 1.2 * p) if p > 0 else tinted)
    write_video(
        drifting / f"{clips[2]}.mp4",
        np.rint(drifted).astype(np.uint8),
        fps=25,
        audio=load_audio(layout.audio(clips[2])),
    )
    return {"root": root, "data": data, "copies": copies, "drifting": drifting}


def test_real_clips_as_generated_do_not_drift(synthetic):
    out = synthetic["root"] / "eval_copies"
    res = run_cli(
        "evaluate",
        "--generated",
        str(synthetic["copies"]),
        "--real",
        str(synthetic["data"]),
        "--out",
        str(out),
        "--metrics",
        "drift",
        "--quiet",
    )
    section = json.loads((out / "metrics.json").read_text())["metrics"]["drift"]
    assert res["skipped"] == {} and section["n_videos"] == 2
    # Face Mesh finds the cartoon faces at 32 px, so the face region is the landmark hull
    assert section["face_region"] == {"face mesh": 2} and section["detection_rate"] > 0.95
    assert section["identity"] == ["real frame 0"] and section["videos_reaching"]["10s"] == 2

    real = section["against_real"]
    assert max(real["colour_de2000"]["curve"]) == 0 and max(real["shape_rms_iod"]["curve"]) < 1e-9
    assert set(real["sharpness_ratio"]["curve"]) == {1.0} and min(real["lip_sync_r"]["curve"]) > 0.999

    identity = section["against_identity"]
    colour, shape, sharp = (identity[k] for k in ("colour_de2000", "shape_rms_iod", "sharpness_ratio"))
    assert len(colour["curve"]) == 12 and colour["at_5s"] == colour["curve"][4]
    # the synthetic faces keep their colour and shape while the mouth moves and the head sways
    assert max(colour["curve"]) < 2.5 and max(shape["curve"]) < 0.08
    assert all(0.6 < v < 1.4 for v in sharp["curve"])  # the key frame 0 is a little sharper than the rest
    assert abs(colour["slope_per_min"]) < 1.5 and abs(shape["slope_per_min"]) < 0.03
    assert abs(sharp["slope_per_min"]) < 0.3

    rows = list(csv.DictReader((out / "per_video.csv").open()))
    assert [r["drift_face_region"] for r in rows] == ["face mesh"] * 2
    assert float(rows[0]["drift_lip_sync_r_end"]) == pytest.approx(1.0)
    report = (out / "report.md").read_text()
    assert "## Drift" in report and "| colour (Delta E 00) | identity frame |" in report
    assert (out / "plots" / "drift.png").is_file()


def test_a_drifting_copy_shows_its_drift(synthetic):
    out = synthetic["root"] / "eval_drifting"
    run_cli(
        "evaluate",
        "--generated",
        str(synthetic["drifting"]),
        "--real",
        str(synthetic["data"]),
        "--out",
        str(out),
        "--metrics",
        "drift,mouth_open",
        "--quiet",
    )
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    identity = metrics["drift"]["against_identity"]
    colour, sharp = identity["colour_de2000"], identity["sharpness_ratio"]
    # a tint of (+30, 0, -30) levels reached at 12 s, and a blur growing to sigma 1.2
    assert colour["at_10s"] > colour["at_5s"] > 3 and colour["slope_per_min"] > 20
    assert sharp["at_10s"] < sharp["at_5s"] < 1 and sharp["slope_per_min"] < -0.5
    assert metrics["drift"]["against_real"]["colour_de2000"]["slope_per_min"] > 20
    assert "mouth_open_r" in metrics  # the mouth-opening series are measured once for both metrics
