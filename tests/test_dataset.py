"""Dataset sampling rules (SPEC, one training example), at the clip edges and on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffheads.config import DataConfig, IdentityFrameMode, ModelConfig
from diffheads.data.dataset import TalkingFaceDataset, SplitClips, audio_rows, example_indices
from diffheads.data.motion import blur, motion_transform
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
    with pytest.raises(DiffheadsError, match=r"2 file\(s\) of clips listed in file_list_train.txt are missing .*missing.mp4"):
        TalkingFaceDataset(DataConfig(root=str(tmp_path)), model, "train", lip_loss=False)
    with pytest.raises(DiffheadsError, match="file list .* not found"):
        TalkingFaceDataset(DataConfig(root=str(tmp_path / "nowhere")), model)
