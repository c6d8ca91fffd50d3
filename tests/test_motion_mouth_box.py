"""model.motion_mouth_box: the mouth box of every motion frame shows the identity frame (training and sampling)."""

from __future__ import annotations

import pytest
import torch

from diffheads.config import DataConfig, DiffusionConfig, ModelConfig, Prediction, SampleConfig, Solver, load_config
from diffheads.data.dataset import TalkingFaceDataset
from diffheads.diffusion.gaussian import GaussianDiffusion
from diffheads.diffusion.motion import hide_mouth
from diffheads.diffusion.video import sample_video
from diffheads.errors import DiffheadsError
from test_dataset import _example_as_before, make_indexed_dataset
from test_residual_target import ConstantX0

BOX = [0.5, 0.75, 0.25, 1.0]  # rows 8..11 and columns 4..15 of a 16 px frame


def _inside(size: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[8:12, 4:16] = True
    return mask


def test_hide_mouth_copies_exactly_the_box_from_the_identity_frame():
    frames, identity = torch.rand(2, 3, 3, 16, 16), torch.rand(2, 3, 16, 16)
    out = hide_mouth(frames, identity, BOX)
    inside = _inside(16)
    for m in range(3):
        assert torch.equal(out[:, m][..., inside], identity[..., inside])
        assert torch.equal(out[:, m][..., ~inside], frames[:, m][..., ~inside])
    assert hide_mouth(frames, identity, []) is frames


def test_training_examples_show_the_identity_mouth_in_their_motion_frames(tmp_path):
    make_indexed_dataset(tmp_path)
    plain = ModelConfig(image_size=16, grayscale_motion=False, n_motion_frames=2, n_audio_motion_embs=2)
    boxed = ModelConfig(**{**plain.__dict__, "motion_mouth_box": BOX})
    ds_plain = TalkingFaceDataset(DataConfig(root=str(tmp_path)), plain, "train")
    ds_boxed = TalkingFaceDataset(DataConfig(root=str(tmp_path)), boxed, "train")
    inside, changed = _inside(16), 0
    for seed in range(10):
        ex, ref = ds_boxed[(0, seed)], _example_as_before(ds_plain, 0, seed)
        for key in ("target", "identity_frame", "audio_window"):
            assert torch.equal(ex[key], ref[key]), key
        motion, ref_motion = ex["motion_frames"].view(2, 3, 16, 16), ref["motion_frames"].view(2, 3, 16, 16)
        for m in range(2):
            assert torch.equal(motion[m][:, inside], ex["identity_frame"][:, inside])
            assert torch.equal(motion[m][:, ~inside], ref_motion[m][:, ~inside])
            changed += int(not torch.equal(motion[m], ref_motion[m]))
    assert changed > 0  # some motion frames were real previous frames whose mouth was replaced


def test_the_video_loop_feeds_back_frames_with_the_identity_mouth():
    k, steps = 1, 2
    mcfg = ModelConfig(n_motion_frames=2, n_audio_motion_embs=k, grayscale_motion=False, motion_mouth_box=BOX)
    process = GaussianDiffusion.from_config(DiffusionConfig(prediction=Prediction.X0)).respace(steps)
    embs = [torch.arange(4, dtype=torch.float32)[:, None].repeat(1, 3) * 10]  # frame t is flat t / 10
    identity = torch.full((1, 3, 16, 16), -0.5)
    model = ConstantX0(k)
    sample = SampleConfig(solver=Solver.DDIM, steps=steps)
    (clip,) = sample_video(
        model, process, identity, embs, mcfg, sample, torch.Generator().manual_seed(0), progress=False
    )
    torch.testing.assert_close(clip[2], torch.full((3, 16, 16), 0.2), atol=1e-5, rtol=0)  # the output is untouched
    newest = model.seen[2 * steps].motion_frames[0, 3:]  # frame 1 as the motion slot of frame 2
    inside = _inside(16)
    assert torch.allclose(newest[:, inside], torch.tensor(-0.5)) and torch.allclose(
        newest[:, ~inside], torch.tensor(0.1)
    )


@pytest.mark.parametrize("box", ["[0.5, 0.4, 0, 1]", "[0, 1, 0]", "[0, 1.5, 0, 1]"])
def test_a_bad_box_is_refused_in_one_line(box):
    with pytest.raises(DiffheadsError, match="motion_mouth_box must be"):
        load_config(None, [f"model.motion_mouth_box={box}"])
