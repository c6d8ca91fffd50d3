"""Smoothness metrics: Farneback flow magnitude and frame-difference MSE, corrected and legacy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from diffheads.errors import DiffheadsError
from diffheads.metrics.smoothness import fmse, ofm, optical_flow


def _texture(seed: int = 0, size: int = 256, sigma: float = 1.5) -> np.ndarray:
    """A smooth random RGB texture (blurred noise) stretched to 0..255, float32."""
    noise = np.random.default_rng(seed).uniform(0, 255, (size, size, 3)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), sigma)
    return (blurred - blurred.min()) / (blurred.max() - blurred.min()) * 255


def _translating(dx: int, dy: int, n: int = 6, seed: int = 0) -> np.ndarray:
    """128 px uint8 frames of a window that slides dx, dy pixels per frame over a texture (content moves -dx, -dy)."""
    tex = _texture(seed)
    return np.stack(
        [np.rint(tex[40 + dy * t : 168 + dy * t, 40 + dx * t : 168 + dx * t]).astype(np.uint8) for t in range(n)]
    )


def test_ofm_of_a_known_translation() -> None:
    """2 px in x and 1 px in y per frame at 128 px: mean flow length within 5% of sqrt(5)."""
    frames = _translating(2, 1)
    flow = optical_flow(frames)
    assert flow.shape == (5, 128, 128, 2)
    assert np.median(flow[..., 0]) == pytest.approx(-2.0, abs=0.05)
    assert np.median(flow[..., 1]) == pytest.approx(-1.0, abs=0.05)
    assert ofm(frames) == pytest.approx(np.sqrt(5), rel=0.05)


def test_flow_is_measured_at_128_px() -> None:
    """Doubling the frame size (each pixel a 2x2 block) leaves the flow in 128 px units unchanged."""
    frames = _translating(2, 1)
    big = np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2)
    assert ofm(big) == pytest.approx(ofm(frames), rel=1e-6)


def _reference_ofm(frames: np.ndarray) -> float:
    """The smoothness_eval.py recipe written out again: magnitude, min-max to 0..255, truncate, JET, mean."""
    jet = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(1, 256), cv2.COLORMAP_JET)[0]  # (256, 3) BGR
    gray = [cv2.cvtColor(cv2.resize(f[..., ::-1].copy(), (128, 128)), cv2.COLOR_BGR2GRAY) for f in frames]
    colours = []
    for a, b in zip(gray[:-1], gray[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 7, 5, 15, 5, 1.2, 0)
        mag = np.sqrt(flow[..., 0].astype(np.float64) ** 2 + flow[..., 1].astype(np.float64) ** 2)
        scaled = (mag - mag.min()) / (mag.max() - mag.min()) * 255
        colours.append(jet[np.floor(scaled + 1e-6).astype(np.int64)])
    return float(np.mean(colours))


def test_legacy_ofm_matches_the_reference_recipe() -> None:
    """Legacy OFM against an independent re-computation (float rounding may move a few truncations)."""
    rng = np.random.default_rng(1)
    frames = _translating(2, 1, n=4)
    # a non-uniform motion too: a brighter blob that drifts across the texture
    frames = frames.astype(np.int16)
    for t in range(len(frames)):
        y, x = np.mgrid[:128, :128]
        frames[t] += (60 * np.exp(-((x - 40 - 6 * t) ** 2 + (y - 64) ** 2) / 200)).astype(np.int16)[..., None]
    frames = np.clip(frames + rng.integers(-2, 3, frames.shape), 0, 255).astype(np.uint8)
    legacy = ofm(frames, legacy=True)
    assert legacy == pytest.approx(_reference_ofm(frames), abs=0.05)
    assert 0 < legacy < 255
    assert legacy != pytest.approx(ofm(frames), rel=0.5)  # a colour mean, not pixels


def test_fmse_corrected_against_float_differences() -> None:
    """Corrected F-MSE = mean over pairs, pixels and channels of (b - a)^2 in float at 128 px."""
    frames = _translating(2, 1)
    expected = np.mean((frames[1:].astype(np.float64) - frames[:-1].astype(np.float64)) ** 2)
    assert fmse(frames) == pytest.approx(expected, rel=1e-12)
    # 256 px frames made of 2x2 blocks resize (bilinear, exactly half-way) back to the 128 px frames
    big = np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2)
    assert fmse(big) == pytest.approx(expected, rel=1e-12)


def test_fmse_legacy_wraps_like_uint8() -> None:
    """Frames of 10 then 253 then 10: |d| = 243, 243^2 = 59049 = 230 * 256 + 169, so uint8 gives 169.

    Going down, 10 - 253 wraps to 13 and 13^2 = 169 as well. With 10 and 250, 240^2 = 57600 = 225 * 256: 0.
    """
    frames = np.stack([np.full((32, 48, 3), v, np.uint8) for v in (10, 253, 10)])
    assert fmse(frames, legacy=True) == pytest.approx(169.0)
    assert fmse(frames) == pytest.approx(243.0**2)
    frames = np.stack([np.full((32, 48, 3), v, np.uint8) for v in (10, 250)])
    assert fmse(frames, legacy=True) == 0.0
    assert fmse(frames) == pytest.approx(240.0**2)


def test_a_still_video_is_perfectly_smooth() -> None:
    """No motion: (almost) zero flow (Farneback leaves ~0.004 px of numerical residue), zero F-MSE."""
    frames = np.repeat(_translating(0, 0, n=1), 3, axis=0)
    assert ofm(frames) < 0.01
    assert fmse(frames) == 0.0 and fmse(frames, legacy=True) == 0.0


@pytest.mark.parametrize("metric", [ofm, fmse, optical_flow])
def test_too_short_or_malformed(metric) -> None:
    """One frame, or not a uint8 RGB video, is a one-line error."""
    with pytest.raises(DiffheadsError, match="at least 2 frames"):
        metric(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(DiffheadsError, match="uint8"):
        metric(np.zeros((3, 64, 64, 3), np.float32))
    with pytest.raises(DiffheadsError, match=r"\(T, H, W, 3\)"):
        metric(np.zeros((3, 64, 64), np.uint8))
