"""Face alignment: the 68-point mapping, the similarity fit, smoothing, warping, paste-back, and the
acceptance check on a real face photo moved by a known motion."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from diffheads.errors import DiffheadsError
from diffheads.face.align import AlignConfig, crop_matrix, fill_missing, fit_similarity, smooth, transform_points, warp
from diffheads.face.landmarks import EYE_CORNERS, MEDIAPIPE_TO_68, MIRROR_68, STABLE_POINTS, FaceMesh, to_68
from diffheads.face.mean_face import load_mean_face, symmetrise
from diffheads.face.paste import feather_mask, paste_back
from diffheads.io.video import read_video
from facevideo import astronaut, moving_face_video


def test_mapping_uses_the_usual_eye_sets_and_mirrors_consistently():
    assert len(MEDIAPIPE_TO_68) == 68 and len(set(MEDIAPIPE_TO_68.tolist())) == 68
    # the 6-point eye sets of METRICS.md (blink EAR), in the 68-layout order p0..p5
    assert MEDIAPIPE_TO_68[36:42].tolist() == [33, 160, 158, 133, 153, 144]
    assert MEDIAPIPE_TO_68[42:48].tolist() == [362, 385, 387, 263, 373, 380]
    assert MEDIAPIPE_TO_68[STABLE_POINTS].tolist() == [2, 33, 133, 362, 263]
    assert np.array_equal(MIRROR_68[MIRROR_68], np.arange(68))


def test_landmarks_on_the_photo_follow_the_68_layout():
    with FaceMesh(video=False, max_faces=2) as mesh:
        faces = mesh(astronaut())
    assert faces.shape == (1, 468, 3)
    p = to_68(faces[0])[:, :2]
    # jaw runs left to right through the chin; outer eye corners lie outside inner ones; mouth below nose
    assert p[0, 0] < p[8, 0] < p[16, 0] and p[8, 1] > p[57, 1] > p[51, 1] > p[33, 1] > p[27, 1]
    assert p[36, 0] < p[39, 0] < p[42, 0] < p[45, 0]
    assert p[48, 0] < p[62, 0] < p[54, 0] and p[66, 1] >= p[62, 1]


def test_mean_face_file_is_normalised_symmetric_and_documented():
    face = load_mean_face()
    p = face.points
    assert np.linalg.norm(p[45] - p[36]) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(p[33], 0.0, atol=1e-6)
    assert np.allclose(symmetrise(p), p, atol=1e-5)
    assert face.sources  # how it was made travels with the points
    from importlib import resources

    meta = json.loads(resources.files("diffheads.face").joinpath("data/mean_face.json").read_text())
    assert "made_by" in meta and "MediaPipe" in meta["made_by"]


def test_bad_mean_face_file(tmp_path):
    with pytest.raises(DiffheadsError, match="not found"):
        load_mean_face(tmp_path / "none.json")
    (tmp_path / "m.json").write_text(json.dumps({"points": [[0, 0]] * 5}))
    with pytest.raises(DiffheadsError, match="68"):
        load_mean_face(tmp_path / "m.json")


def test_fit_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(5, 2)) * 30
    a, s, shift = np.radians(17.0), 1.7, np.array([4.0, -9.0])
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m = fit_similarity(src, src @ rot.T + shift)
    assert np.allclose(m[:2, :2], rot, atol=1e-9) and np.allclose(m[:2, 2], shift, atol=1e-9)
    # a reflection is never returned
    assert np.linalg.det(fit_similarity(src, src * np.array([-1.0, 1.0]))[:2, :2]) > 0


def test_crop_matrix_puts_the_margins_where_face_processor_does():
    face, cfg = load_mean_face(), AlignConfig(size=128)
    lo, hi = face.points.min(axis=0), face.points.max(axis=0)
    w, h = hi - lo
    corners = np.array([[lo[0] - 0.11 * w, lo[1] - 0.336 * h], [hi[0] + 0.11 * w, hi[1] + 0.155 * h]])
    assert np.allclose(transform_points(crop_matrix(face, cfg), corners), [[0, 0], [128, 128]])


def test_smoothing_follows_linear_motion_at_uneven_times_and_averages_noise():
    times = np.array([0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13]) / 30.0  # 30 fps shown at 25 fps
    path = np.stack([5 + 90 * times, 2 - 30 * times], axis=-1)[:, None, :].repeat(3, axis=1)
    assert np.allclose(smooth(path, 7, times), path)
    # evenly spaced: the interior is the plain moving average
    noise = np.random.default_rng(1).normal(size=(40, 1, 2))
    want = np.stack([np.convolve(noise[:, 0, j], np.ones(5) / 5, mode="valid") for j in range(2)], -1)
    assert np.allclose(smooth(noise, 5)[2:-2, 0], want)


def test_fill_missing_interpolates_and_holds_edges():
    pts = np.full((5, 1, 2), np.nan)
    pts[1], pts[3] = 2.0, 4.0
    assert fill_missing(pts)[:, 0, 0].tolist() == [2.0, 2.0, 3.0, 4.0, 4.0]
    with pytest.raises(DiffheadsError, match="no face"):
        fill_missing(np.full((3, 1, 2), np.nan))


def test_warp_with_area_shrink_matches_a_plain_warp_of_a_smooth_image():
    yy, xx = np.mgrid[0:800, 0:800]
    img = np.stack([xx * 255 / 800, yy * 255 / 800, (xx + yy) * 255 / 1600], -1).astype(np.uint8)
    m = np.array([[0.12, 0.02, -15.0], [-0.02, 0.12, -5.0], [0, 0, 1]])  # the whole crop lies inside the image
    # the same map for OpenCV's pixel-centre convention, worked out by hand: x_cv = x - 1/2 on both sides
    m_cv = m.copy()
    m_cv[:2, 2] += 0.5 * m[:2, :2].sum(axis=1) - 0.5
    plain = cv2.warpAffine(img, m_cv[:2], (64, 64), flags=cv2.INTER_LINEAR)
    assert np.abs(warp(img, m, 64).astype(int) - plain.astype(int))[2:-2, 2:-2].max() <= 2


def test_paste_back_restores_the_frame_and_leaves_the_outside_alone():
    frame = astronaut()
    cfg = AlignConfig(size=128)
    m = np.array([[0.5, 0.05, -40.0], [-0.05, 0.5, -20.0], [0, 0, 1]])
    crop = warp(frame, m, cfg.size)
    out = paste_back(frame, crop, m)
    inside = cv2.warpAffine(np.ones((128, 128), np.float32), np.linalg.inv(m)[:2], (512, 512)) > 0.999
    far = cv2.warpAffine(np.ones((128, 128), np.float32), np.linalg.inv(m)[:2], (512, 512), borderValue=0) == 0
    # inside: an upsampled copy of itself, so close; outside: untouched
    assert np.abs(out.astype(int) - frame.astype(int))[inside].mean() < 6
    assert np.array_equal(out[far], frame[far])
    mask = feather_mask(100)
    assert mask[50, 50] == 1.0 and mask[0, 0] < 0.01 and np.allclose(mask, mask.T)


def test_prepare_aligns_a_moving_real_face(tmp_path):
    """Acceptance: eye corners within 2 px of the mean face in every frame; jitter under 1 px."""
    from diffheads.prepare.run import prepare_dataset
    from diffheads.prepare.split import SplitRule

    raw = tmp_path / "raw" / "spk1"
    raw.mkdir(parents=True)
    motions = moving_face_video(raw / "take1.mp4", seconds=3.0, fps=30.0)
    report = prepare_dataset(
        tmp_path / "raw", tmp_path / "data", split=SplitRule(test_fraction=0.0), workers=1, progress=False
    )
    assert report["prepared"] == 1 and report["skipped"] == []
    frames, fps = read_video(tmp_path / "data" / "video" / "spk1" / "take1.mp4")
    assert fps == 25 and frames.shape == (75, 128, 128, 3)  # 3 s at 30 fps -> 75 frames at 25 fps

    face = load_mean_face()
    target = transform_points(crop_matrix(face, AlignConfig()), face.points)[EYE_CORNERS]
    # ground truth: the photo's eye corners moved by the known motion, then by prepare's per-frame map
    with FaceMesh(video=False) as mesh:
        still = to_68(mesh(astronaut())[0])[EYE_CORNERS, :2]
    source_times = np.round(np.arange(75) / 25 * 30)  # 30 fps -> 25 fps, nearest source frame
    maps = np.load(tmp_path / "data" / "align" / "spk1" / "take1.npy").astype(np.float64)
    shrink = np.diag([384 / 512, 384 / 512, 1.0])
    for t, m in enumerate(maps):
        moved = shrink @ motions[int(source_times[t])]
        in_source = transform_points(moved, still - 0.5) + 0.5  # the video was drawn by OpenCV: centres at integers
        assert np.linalg.norm(in_source @ m[:, :2].T + m[:, 2] - target, axis=-1).max() < 2.0, t
    # and the pixels agree: Face Mesh run again on the written crops finds the eye corners there
    with FaceMesh(video=False) as mesh:
        found = np.stack([to_68(mesh(f)[0])[EYE_CORNERS, :2] for f in frames])
    assert np.linalg.norm(found - target, axis=-1).mean() < 1.5

    lmks = np.load(tmp_path / "data" / "lmks" / "spk1" / "take1.npy")
    assert lmks.shape == (75, 68, 2) and np.isfinite(lmks).all()
    assert np.linalg.norm(lmks[:, EYE_CORNERS] - target, axis=-1).max() < 2.0
    jitter = np.linalg.norm(np.diff(lmks[:, STABLE_POINTS], axis=0), axis=-1).mean(axis=1)
    assert jitter.max() < 1.0
    # the head really moved in the source: the same points in source pixels travel tens of pixels
    assert report["frames_prepared_now"] == 75
    shutil.rmtree(tmp_path / "raw")
