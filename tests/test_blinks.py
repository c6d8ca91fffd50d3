"""Blink detection: EAR formula, the reference's peak-picking rules on a hand-built series, synthetic faces."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from diffheads.errors import DiffheadsError
from diffheads.metrics.blinks import Blink, blink_stats, detect_blinks, eye_aspect_ratio
from diffheads.synth.dataset import make_synthetic_dataset

T = 120


def _hand_series() -> np.ndarray:
    """An EAR series whose blinks are known frame by frame (see test_detect_blinks_hand_series).

    Open eyes zig-zag 0.30 / 0.31 (even / odd frames) plus uniform noise of +-0.002, so every odd interior
    open frame is a local maximum and every open-eye step is at most 0.014, far below the 0.0425 drop height.
    """
    rng = np.random.default_rng(7)
    e = 0.30 + 0.01 * (np.arange(T) % 2) + rng.uniform(-0.002, 0.002, T)
    e[12:15] = [0.20, 0.10, 0.20]  # A: a V between the open peaks 11 and 15
    e[32:36] = [0.29, 0.15, 0.05, 0.15]  # B: a slow onset (31 -> 32 is a small step), open again at 37
    e[52:59] = [0.12, 0.12, 0.12, 0.12, 0.12, 0.02, 0.12]  # C: half-closed, then a closure, open at 59
    e[102:] = 0.05  # D: closes at 101 and never reopens
    return e


def test_detect_blinks_hand_series() -> None:
    """Expected blinks derived by hand from the rules, not from the code.

    -(e[t+1] - e[t]) exceeds 0.0425 only at the first big step of each dip: A 11 (0.11, then 0.10), B 32 (0.14;
    the 0.02 at 31 and 0.10 at 33 are lower), C 51 (0.19) and 56 (0.10, five frames later), D 101 (0.26).
    Mid-range level = (0.02 + ~0.312) / 2 ~ 0.166, so only open frames (0.30..0.312) can be open-eye peaks.
    A: e[10] ~0.30 <= e[11] ~0.31 -> start 11; first peak of e[11:31] is 15 -> (11, 15), 4 frames.
    B: e[31] ~0.31 > e[32] = 0.29 -> start = last peak of e[:33] = 31; first peak of e[32:51] is 37
       (36 is a rising open frame) -> (31, 37), 6 frames.
    C: drop 51 finds no peak in e[51:56] (0.31 at its first index, then 0.12s) and is not the last drop: skipped.
       Drop 56: e[55] = 0.12 <= e[56] = 0.12 -> start 56 (the reference's quirk: a closed frame); first peak of
       e[56:101] is 59 -> (56, 59), 3 frames.
    D: e[100] <= e[101] -> start 101; no peak in e[101:] and it is the last drop -> end T - 1 = 119, 18 frames.
    """
    blinks = detect_blinks(_hand_series())
    assert blinks == [Blink(11, 15, 4), Blink(31, 37, 6), Blink(56, 59, 3), Blink(101, 119, 18)]


def test_blink_stats_corrected_and_legacy() -> None:
    """Corrected mean = 31 / 4 frames; legacy = the reference's sum / len({"start", "end"}) = 31 / 2."""
    ear = _hand_series()
    stats = blink_stats(ear, fps=25.0)
    assert stats["blinks"] == 4
    assert stats["blinks_per_second"] == pytest.approx(4 / (T / 25.0))
    assert stats["mean_duration_frames"] == pytest.approx(31 / 4)
    assert stats["mean_duration_s"] == pytest.approx(31 / 4 / 25.0)
    assert stats["variant"] == "corrected"
    legacy = blink_stats(ear, fps=25.0, legacy=True)
    assert legacy["blinks"] == 4 and legacy["variant"] == "legacy"
    assert legacy["mean_duration_frames"] == pytest.approx(31 / 2)
    assert legacy["mean_duration_s"] == pytest.approx(31 / 2 / 25.0)


def test_legacy_halves_the_mean_of_a_single_blink() -> None:
    """With one blink the reference's sum / 2 is exactly half the mean (here 4 / 2)."""
    ear = _hand_series()[:30]  # blink A only
    assert blink_stats(ear)["mean_duration_frames"] == pytest.approx(4.0)
    assert blink_stats(ear, legacy=True)["mean_duration_frames"] == pytest.approx(2.0)


def test_no_blinks_gives_null_durations() -> None:
    """A steady eye: zero blinks and None durations that serialise to JSON null."""
    stats = blink_stats(0.3 + 0.001 * np.sin(np.arange(50)), fps=25.0)
    assert stats["blinks"] == 0 and stats["blinks_per_second"] == 0.0
    assert stats["mean_duration_frames"] is None and stats["mean_duration_s"] is None
    assert '"mean_duration_s": null' in json.dumps(stats)


def test_eye_aspect_ratio_hand_points() -> None:
    """Eye 1: vertical 2 + 2 over 2 * 4 = 0.5; eye 2: 1 + 2 over 2 * 6 = 0.25; mean 0.375."""
    pts = np.zeros((1, 68, 2))
    pts[0, 36:42] = [(0, 0), (1, -1), (3, -1), (4, 0), (3, 1), (1, 1)]
    pts[0, 42:48] = [(10, 0), (12, -0.5), (14, -1), (16, 0), (14, 1), (12, 0.5)]
    assert eye_aspect_ratio(pts) == pytest.approx([0.375])


def test_eye_aspect_ratio_random_points_vs_formula() -> None:
    """Random eyes against math.dist written out per eye."""
    pts = np.random.default_rng(3).uniform(0, 100, (5, 68, 2))
    for t in range(5):
        ears = []
        for first in (36, 42):
            p = [tuple(pts[t, first + k]) for k in range(6)]
            ears.append((math.dist(p[1], p[5]) + math.dist(p[2], p[4])) / (2 * math.dist(p[0], p[3])))
        assert eye_aspect_ratio(pts)[t] == pytest.approx(sum(ears) / 2)


def test_bad_inputs() -> None:
    """Wrong shapes and NaN are one-line errors."""
    with pytest.raises(DiffheadsError, match="68"):
        eye_aspect_ratio(np.zeros((4, 20, 2)))
    with pytest.raises(DiffheadsError, match="NaN"):
        detect_blinks(np.array([0.3, np.nan, 0.3, 0.3]))
    with pytest.raises(DiffheadsError, match="shape"):
        blink_stats(np.zeros((3, 4)))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 8 s clips at 64 px of three identities (deterministic from the seed)."""
    root = tmp_path_factory.mktemp("synth_blinks")
    make_synthetic_dataset(
        root,
        n_train_identities=2,
        n_test_identities=1,
        clips_per_identity=2,
        seconds=8.0,
        size=64,
        seed=0,
        progress=False,
    )
    return root


def test_blink_counts_on_synthetic_faces(synthetic: Path) -> None:
    """The reference threshold finds the synthetic blinks: counts within 10% of truth (rising edges of `blink`).

    Synthetic open-eye EAR is ~0.45-0.49 and a blink closes to 0 in 1-3 frames, so the first drop is >= 0.2 per
    frame, well above 0.0425; the open-eye EAR is flat up to float32 rounding (~1e-7), far below it.
    """
    truth_total = found_total = 0
    for lmks in sorted((synthetic / "lmks").rglob("*.npy")):
        truth = np.load(synthetic / "truth" / lmks.relative_to(synthetic / "lmks").with_suffix(".npz"))
        blink = truth["blink"].astype(bool)  # True while the eye is not fully open
        truth_total += int(blink[0]) + int(np.sum(blink[1:] & ~blink[:-1]))
        found_total += blink_stats(np.load(lmks), fps=25.0)["blinks"]
    assert truth_total >= 8  # enough blinks for the 10% bound to mean something
    assert abs(found_total - truth_total) <= 0.1 * truth_total
