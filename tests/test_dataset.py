"""Dataset sampling rules (SPEC, one training example), at the clip edges and on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffheads.config import DataConfig, IdentityFrameMode, ModelConfig
from diffheads.data.dataset import SplitClips, TalkingFaceDataset, audio_rows, example_indices
from diffheads.diffusion.motion import blur, motion_transform, perturb_motion
from diffheads.errors import DiffheadsError
from diffheads.io.video import write_video


def test_random_mode_picks_two_distinct_frames_and_pads_motion_with_identity():
    rng = np.random.default_rng(0)
    seen_targets = set()
    for _ in range(400):
        ex = example_indices(5, IdentityFrameMode.RANDOM, 2, rng)
        assert ex.target != ex.identity and 0 <= ex.target < 5 and 0 <= ex.identity < 5
        want = tuple(i if i >= 0 else -1 for i in (ex.target - 2, ex.target - 1))
        assert ex.motion == want
        seen_targets.add(ex.target)
    assert seen_targets == {0, 1, 2, 3, 4}


def test_edges_target_zero_and_one():
    class Fixed:
        def __init__(self, values):
            self.values = values

        def choice(self, n, size, replace):
            return np.array(self.values)

        def integers(self, lo, hi):
            return self.values[0]

    assert example_indices(10, IdentityFrameMode.RANDOM, 2, Fixed([0, 7])).motion == (-1, -1)
    assert example_indices(10, IdentityFrameMode.RANDOM, 2, Fixed([1, 7])).motion == (-1, 0)
    assert example_indices(10, IdentityFrameMode.RANDOM, 3, Fixed([9, 2])).motion == (6, 7, 8)
    first = example_indices(10, IdentityFrameMode.FIRST, 2, Fixed([1]))
    assert (first.target, first.identity, first.motion) == (1, 0, (-1, 0))


def test_first_mode_target_range():
    rng = np.random.default_rng(1)
    targets = {example_indices(4, IdentityFrameMode.FIRST, 2, rng).target for _ in range(200)}
    assert targets == {1, 2, 3}
    with pytest.raises(ValueError):
        example_indices(1, IdentityFrameMode.FIRST, 2, rng)


def test_audio_rows_are_clamped_at_both_ends():
    assert audio_rows(0, 2, 10).tolist() == [0, 0, 0, 1, 2]
    assert audio_rows(9, 2, 10).tolist() == [7, 8, 9, 9, 9]
    assert audio_rows(5, 1, 10).tolist() == [4, 5, 6]


def test_motion_transform_grayscale_and_blur():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    g = motion_transform(x, grayscale=True, blurred=False)
    want = 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    torch.testing.assert_close(g, want)
    const = torch.full((1, 1, 9, 9), 0.3)
    torch.testing.assert_close(blur(const), const)  # a normalised kernel keeps constants
    impulse = torch.zeros(1, 1, 9, 9)
    impulse[0, 0, 4, 4] = 1.0
    k = np.exp(-0.5 * (np.arange(-2, 3) / 2.0) ** 2)
    k2 = np.outer(k, k) / np.outer(k, k).sum()
    np.testing.assert_allclose(blur(impulse)[0, 0, 2:7, 2:7].numpy(), k2, atol=1e-6)


def make_indexed_dataset(root: Path, n_frames: int = 12, size: int = 16) -> None:
    """One clip whose frame i is a flat grey of level 20 i, embeddings row r = r, landmarks encode i."""
    levels = (np.arange(n_frames) * 20).astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (n_frames, size, size, 3)).copy()
    write_video(root / "video" / "a" / "c.mp4", frames, fps=25)
    (root / "emb" / "a").mkdir(parents=True)
    torch.save(torch.arange(n_frames + 3, dtype=torch.float32)[:, None].repeat(1, 4), root / "emb" / "a" / "c.pth")
    lm = np.zeros((n_frames, 68, 2), np.float32)
    lm[:, 48:68, 0] = np.arange(n_frames)[:, None] / 2.0  # x of the mouth = i / 2 (in 16 px frames)
    (root / "lmks" / "a").mkdir(parents=True)
    np.save(root / "lmks" / "a" / "c.npy", lm)
    (root / "file_list_train.txt").write_text("./a/c.mp4\n")
    (root / "file_list_test.txt").write_text("./a/c.mp4\n")


def test_examples_read_the_right_frames_rows_and_target_landmarks(tmp_path):
    make_indexed_dataset(tmp_path)
    model = ModelConfig(image_size=8, grayscale_motion=False, n_motion_frames=2, n_audio_motion_embs=2)
    data = DataConfig(root=str(tmp_path), examples_per_clip=50)
    ds = TalkingFaceDataset(data, model, "train", lip_loss=True)
    torch.manual_seed(0)
    level = lambda img: round(((img.mean().item() + 1) * 127.5) / 20)  # noqa: E731
    for i in range(50):
        ex = ds[i]
        t, ident = level(ex["target"]), level(ex["identity_frame"])
        assert t != ident
        motion = [level(ex["motion_frames"][3 * s : 3 * s + 3]) for s in range(2)]
        assert motion == [j if j >= 0 else ident for j in (t - 2, t - 1)]
        # n = min(12 video frames, 15 embeddings) = 12: rows clamp at 11
        assert ex["audio_window"][:, 0].tolist() == np.clip(np.arange(t - 2, t + 3), 0, 11).tolist()
        # target landmarks (not identity): x = t / 2 at 16 px, scaled to 8 px
        torch.testing.assert_close(ex["mouth_landmarks"][:, 0], torch.full((20,), t / 4.0))


def test_test_split_and_missing_files(tmp_path):
    make_indexed_dataset(tmp_path)
    model = ModelConfig(image_size=16)
    item = SplitClips(DataConfig(root=str(tmp_path)), model)[0]
    assert item["cid"] == "a/c" and item["identity_frame"].shape == (3, 16, 16) and item["n_frames"] == 15
    (tmp_path / "file_list_train.txt").write_text("./a/c.mp4\n./a/missing.mp4\n")
    with pytest.raises(
        DiffheadsError, match=r"2 file\(s\) of clips listed in file_list_train.txt are missing .*missing.mp4"
    ):
        TalkingFaceDataset(DataConfig(root=str(tmp_path)), model, "train", lip_loss=False)
    with pytest.raises(DiffheadsError, match="file list .* not found"):
        TalkingFaceDataset(DataConfig(root=str(tmp_path / "nowhere")), model)


# ---------------------------------------------------------------- motion-frame perturbation (data.motion_colour_jitter, data.motion_noise)


def _fit_gain_offset(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares y = g x + o over pixels that no clamp touched: an estimate independent of the draws."""
    keep = np.abs(y) < 1 - 1e-6
    g, o = np.polyfit(x[keep].astype(np.float64), y[keep].astype(np.float64), 1)
    return g, o


def test_jitter_is_gain_times_x_plus_offset_from_the_documented_draws():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1  # spans [-1, 1]: some pixels clamp
    for seed in range(5):
        y = perturb_motion(x, np.random.default_rng(seed), 0.3, 0.0)
        rng = np.random.default_rng(seed)  # documented order: gain (3), then offset (3)
        gain, offset = rng.uniform(0.7, 1.3, size=3), rng.uniform(-0.3, 0.3, size=3)
        want = np.clip(x.numpy().astype(np.float64) * gain[:, None, None] + offset[:, None, None], -1, 1)
        np.testing.assert_allclose(y.numpy(), want, atol=1e-6)
    assert perturb_motion(x, np.random.default_rng(0), 0.3, 0.0).abs().max() <= 1.0  # clamped like sampled frames


def test_jitter_gains_and_offsets_are_per_channel_in_bounds_and_shared_by_the_frames():
    j = 0.2
    x = torch.linspace(-0.6, 0.6, 3 * 64).view(1, 3, 8, 8).repeat(3, 1, 1, 1)  # three equal motion frames
    gains, offsets = [], []
    for seed in range(200):
        y = perturb_motion(x, np.random.default_rng(seed), j, 0.0).numpy()
        fits = np.array([[_fit_gain_offset(x[m, c].numpy(), y[m, c]) for c in range(3)] for m in range(3)])
        np.testing.assert_allclose(fits[1:], fits[:1].repeat(2, axis=0), atol=1e-5)  # same for every frame
        gains.append(fits[0, :, 0])
        offsets.append(fits[0, :, 1])
    gains, offsets = np.array(gains), np.array(offsets)
    assert (gains >= 1 - j - 1e-5).all() and (gains <= 1 + j + 1e-5).all()
    assert (np.abs(offsets) <= j + 1e-5).all()
    assert (
        gains.min() < 1 - 0.9 * j and gains.max() > 1 + 0.9 * j and np.abs(offsets).max() > 0.9 * j
    )  # spans the range
    assert np.ptp(gains, axis=1).mean() > 0.05  # one gain per channel, not one per frame


def test_noise_has_the_drawn_standard_deviation_and_is_not_clamped():
    x = torch.ones(2, 3, 128, 128)  # saturated: a clamp would shift the mean
    stds = []
    for seed in range(20):
        y = perturb_motion(x, np.random.default_rng(seed), 0.0, 0.3)
        s = np.random.default_rng(seed).uniform(0.0, 0.3)  # without jitter the level is the first draw
        e = (y - x).numpy().astype(np.float64)
        assert abs(e.std() - s) < 0.01 * s and abs(e.mean()) < 5 * s / np.sqrt(e.size)
        assert abs(np.corrcoef(e[0].ravel(), e[1].ravel())[0, 1]) < 0.02  # independent between frames
        stds.append(e.std())
    assert max(stds) <= 0.3 and max(stds) > 0.2 and min(stds) < 0.1  # s ~ uniform(0, 0.3), one per example


def test_jitter_then_noise_order_and_zero_is_a_no_op():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    assert perturb_motion(x, rng, 0.0, 0.0) is x and rng.bit_generator.state == state  # no draw, no arithmetic
    y = perturb_motion(x, np.random.default_rng(3), 0.1, 0.05)
    rng = np.random.default_rng(3)
    gain, offset = rng.uniform(0.9, 1.1, size=3), rng.uniform(-0.1, 0.1, size=3)
    s = rng.uniform(0.0, 0.05)
    z = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
    want = np.clip(x.numpy() * gain[:, None, None] + offset[:, None, None], -1, 1) + s * z
    np.testing.assert_allclose(y.numpy(), want, atol=1e-6)


def _example_as_before(ds: TalkingFaceDataset, item: int, seed: int) -> dict:
    """Example (item, seed) rebuilt by hand with the sampling rules as they were before the perturbation existed."""
    source = ds._source(item % len(ds.ids))
    rng = np.random.default_rng(seed)
    idx = example_indices(source.n, ds.data.identity_frame, ds.model.n_motion_frames, rng)
    if ds.data.motion_dropout > 0 and rng.random() < ds.data.motion_dropout:
        idx = type(idx)(idx.target, idx.identity, (-1,) * len(idx.motion))
    clip = source.clip().frames
    motion = torch.stack([clip[i] if i >= 0 else clip[idx.identity] for i in idx.motion])
    return {
        "target": clip[idx.target],
        "identity_frame": clip[idx.identity],
        "motion_frames": motion_transform(motion, ds.model.grayscale_motion, ds.data.motion_blur).flatten(0, 1),
        "audio_window": source.audio_emb[
            torch.from_numpy(audio_rows(idx.target, ds.model.n_audio_motion_embs, source.n))
        ],
        "mouth_landmarks": source.landmarks[idx.target, 48:68],
        "rng": rng,
    }


@pytest.mark.parametrize("gray,blurred", [(False, True), (True, False)])
def test_examples_without_perturbation_are_bit_identical_to_the_unperturbed_rules(tmp_path, gray, blurred):
    make_indexed_dataset(tmp_path)
    model = ModelConfig(image_size=8, grayscale_motion=gray, n_motion_frames=2, n_audio_motion_embs=2)
    ds = TalkingFaceDataset(DataConfig(root=str(tmp_path), motion_blur=blurred, motion_dropout=0.5), model, "train")
    for seed in range(30):
        ex, want = ds[(0, seed)], _example_as_before(ds, 0, seed)
        assert ex.keys() == want.keys() - {"rng"}
        for key in ex:
            assert torch.equal(ex[key], want[key]), key


def test_perturbed_examples_change_only_the_motion_frames(tmp_path):
    make_indexed_dataset(tmp_path)
    model = ModelConfig(image_size=8, grayscale_motion=False, n_motion_frames=2, n_audio_motion_embs=2)
    clean = TalkingFaceDataset(DataConfig(root=str(tmp_path), motion_dropout=0.5), model, "train")
    on = TalkingFaceDataset(
        DataConfig(root=str(tmp_path), motion_dropout=0.5, motion_colour_jitter=0.2), model, "train"
    )
    identity_slots = 0
    for seed in range(40):
        ex, ref = on[(0, seed)], _example_as_before(clean, 0, seed)
        for key in ("target", "identity_frame", "audio_window", "mouth_landmarks"):
            assert torch.equal(ex[key], ref[key]), key  # same frames, rows and landmarks: draws come after
        rng = ref["rng"]  # continues after the index and dropout draws
        gain, offset = rng.uniform(0.8, 1.2, size=3), rng.uniform(-0.2, 0.2, size=3)
        clean_motion = ref["motion_frames"].view(2, 3, 8, 8).numpy().astype(np.float64)
        want = np.clip(clean_motion * gain[:, None, None] + offset[:, None, None], -1, 1)
        np.testing.assert_allclose(ex["motion_frames"].view(2, 3, 8, 8).numpy(), want, atol=1e-6)
        saturated = bool((ref["identity_frame"] == -1).all())  # frame 0 is black: a darker jitter clamps back to it
        if torch.equal(ref["motion_frames"][:3], ref["identity_frame"]) and not saturated:  # a copy (t = 0 or dropout)
            identity_slots += 1
            assert not torch.equal(ex["motion_frames"][:3], ex["identity_frame"])  # jittered too
    assert identity_slots > 5


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"motion_colour_jitter": -0.1}, r"data\.motion_colour_jitter must be in \[0, 1\), got -0\.1"),
        ({"motion_colour_jitter": 1.0}, r"data\.motion_colour_jitter must be in \[0, 1\), got 1\.0"),
        ({"motion_colour_jitter": float("nan")}, r"data\.motion_colour_jitter must be in \[0, 1\), got nan"),
        ({"motion_noise": -0.01}, r"data\.motion_noise must be a finite number >= 0, got -0\.01"),
        ({"motion_noise": float("inf")}, r"data\.motion_noise must be a finite number >= 0, got inf"),
    ],
)
def test_bad_perturbation_levels_are_rejected_in_one_line(tmp_path, kw, match):
    with pytest.raises(DiffheadsError, match=match) as err:
        TalkingFaceDataset(DataConfig(root=str(tmp_path / "never-read"), **kw), ModelConfig(image_size=8))
    assert "\n" not in str(err.value) and "0 turns it off" in str(err.value)
