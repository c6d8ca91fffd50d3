"""Mouth opening measured from pixels, and the correlations built on it."""

from __future__ import annotations

import numpy as np
import pytest

from diffheads.metrics.mouth import lip_sync_r, mouth_opening, pearson_r
from diffheads.synth.face import MAX_OPENING, render_faces, sample_identity

OPENINGS = np.linspace(0.0, 1.0, 21)


def _rendered(seed: int, size: int = 32):
    """Frames with known openings, their mouth landmarks and the drawn interior height in pixels."""
    ident = sample_identity(np.random.default_rng(seed))
    n = len(OPENINGS)
    head = np.tile([0.01, -0.01, 0.03], (n, 1))
    frames, lmks = render_faces(ident, size, OPENINGS, np.full(n, 0.5), np.ones(n), head)
    drawn = OPENINGS * MAX_OPENING * 2 * ident.face_axes[1] * size
    return frames, lmks[:, 48:68], drawn


def _gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over height and width with edge padding (independent of the metric)."""
    radius = int(3 * sigma) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    out = frames.astype(np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        out = sum(w * np.take(padded, np.arange(i, i + out.shape[axis]), axis=axis) for i, w in enumerate(kernel))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(4))
def test_opening_is_monotonic_and_linear_in_drawn_opening(seed):
    frames, mouth, drawn = _rendered(seed)
    measured = mouth_opening(frames, mouth)
    assert measured.shape == (len(OPENINGS),)
    assert np.all(np.diff(measured) > 0)
    assert np.corrcoef(measured, drawn)[0, 1] > 0.98
    # about the interior height: an ellipse's area over the mouth width is pi/4 of its height (x 0.88 inner width)
    slope = np.polyfit(drawn, measured, 1)[0]
    assert 0.5 < slope < 0.9


def test_float_frames_in_minus_one_one_match_uint8():
    frames, mouth, _ = _rendered(1)
    as_float = frames.astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(mouth_opening(as_float, mouth), mouth_opening(frames, mouth), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_blurred_frames_still_track_the_opening(seed):
    frames, mouth, drawn = _rendered(seed)
    measured = mouth_opening(_gaussian_blur(frames, 1.0), mouth)
    assert np.corrcoef(measured, drawn)[0, 1] > 0.95


def test_one_landmark_set_serves_every_frame():
    frames, mouth, drawn = _rendered(2, size=64)
    measured = mouth_opening(frames, mouth[len(mouth) // 2])
    assert np.corrcoef(measured, drawn)[0, 1] > 0.98


def test_bad_landmark_shape_is_rejected():
    frames, mouth, _ = _rendered(0)
    with pytest.raises(ValueError):
        mouth_opening(frames, mouth[:3])


def test_pearson_r_matches_numpy_and_is_nan_for_constant_series():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = 0.3 * a + rng.normal(size=200)
    assert pearson_r(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    assert pearson_r(a, -a) == pytest.approx(-1.0)
    assert np.isnan(pearson_r(a, np.full(200, 2.5)))
    assert np.isnan(pearson_r([1.0], [2.0]))


def test_lip_sync_r_pools_clips_trimmed_to_common_length():
    rng = np.random.default_rng(1)
    measured = [rng.normal(size=50), rng.normal(size=30)]
    truth = [rng.normal(size=48), rng.normal(size=35)]
    pooled_measured = np.concatenate([measured[0][:48], measured[1]])
    pooled_truth = np.concatenate([truth[0], truth[1][:30]])
    expected = np.corrcoef(pooled_measured, pooled_truth)[0, 1]
    assert lip_sync_r(measured, truth) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(lip_sync_r([], []))
