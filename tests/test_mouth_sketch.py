"""model.mouth_shape_head and model.mouth_sketch_centre: the audio predicts the mouth shape, drawn as an input channel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffheads.conditioning import Conditioning
from diffheads.config import ModelConfig, RunConfig, load_config
from diffheads.errors import DiffheadsError
from diffheads.models.mouth_sketch import mouth_shape, render_sketch
from diffheads.models.unet import UNet
from diffheads.training.module import DiffusionModule


def test_mouth_shape_is_centred_and_in_twentieths_of_the_side():
    points = torch.rand(3, 20, 2) * 64
    shape = mouth_shape(points, 64).numpy()
    want = (points.numpy() - points.numpy().mean(axis=1, keepdims=True)) / 3.2  # 64 px / 20
    np.testing.assert_allclose(shape, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mouth_shape(points * 2, 128).numpy(), shape, rtol=1e-5, atol=1e-5)  # size-free


def test_sketch_puts_a_dot_on_each_point_around_the_centre():
    shape = torch.zeros(1, 20, 2)
    shape[0, :, 0] = torch.linspace(-2.5, 2.5, 20)  # a horizontal line 16 px wide at 64 px
    sketch = render_sketch(shape, [0.5, 0.75], 64)[0, 0].numpy()
    assert sketch.shape == (64, 64) and sketch.max() <= 1.0 and sketch.min() >= -1.0
    row = int(np.argmax(sketch.max(axis=1)))
    assert row in (47, 48)  # y = 0.75 * 64 = 48, between the centres of rows 47 and 48
    lit = np.flatnonzero(sketch[row] > 0)
    assert 22 <= lit.min() <= 25 and 39 <= lit.max() <= 42  # x from 32 - 8 to 32 + 8
    assert sketch[:40].max() < -0.99 and sketch[56:].max() < -0.99  # nothing far from the line


def _sketch_model() -> UNet:
    cfg = ModelConfig(
        image_size=16,
        model_channels=16,
        channel_mult=[1, 2],
        num_res_blocks=1,
        attention_resolutions=[],
        num_head_channels=16,
        norm_groups=8,
        audio_dim=4,
        grayscale_motion=False,
        mouth_shape_head=True,
        mouth_sketch_centre=[0.5, 0.7],
    )
    return UNet(cfg).eval()


def _network_input(model: UNet, cond: Conditioning) -> torch.Tensor:
    seen = []
    hook = model.input_blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model(torch.zeros(cond.identity_frame.shape), torch.tensor([5, 5]), cond)
    hook.remove()
    return seen[0]


def test_the_network_sees_the_sketch_of_its_audio_head_or_of_a_given_shape():
    model = _sketch_model()
    cond = Conditioning(torch.zeros(2, 3, 16, 16), torch.zeros(2, 6, 16, 16), torch.randn(2, 5, 4))
    assert model.in_channels == 3 + 6 + 3 + 1
    with torch.no_grad():
        predicted = model.mouth_shape(cond.audio_window)
    torch.testing.assert_close(_network_input(model, cond)[:, -1:], render_sketch(predicted, [0.5, 0.7], 16))
    given = torch.randn(2, 20, 2)
    cond.mouth_shape = given
    torch.testing.assert_close(_network_input(model, cond)[:, -1:], render_sketch(given, [0.5, 0.7], 16))


@pytest.mark.parametrize("forcing", [0.0, 1.0])
def test_training_sketches_the_truth_or_the_prediction_and_learns_the_head(forcing):
    cfg = RunConfig(model=_sketch_model().cfg)
    cfg.diffusion.sketch_teacher_forcing = forcing
    cfg.optim.ema_decay = 0.0
    module = DiffusionModule(_sketch_model(), cfg)
    landmarks = torch.rand(2, 20, 2) * 16
    batch = {
        "target": torch.zeros(2, 3, 16, 16),
        "identity_frame": torch.zeros(2, 3, 16, 16),
        "motion_frames": torch.zeros(2, 6, 16, 16),
        "audio_window": torch.randn(2, 5, 4),
        "mouth_landmarks": landmarks,
    }
    seen = []
    module.unet.register_forward_pre_hook(lambda m, args: seen.append(args[2].mouth_shape))
    losses = module.compute_losses(batch)
    with torch.no_grad():
        predicted = module.unet.mouth_shape(batch["audio_window"])
    truth = mouth_shape(landmarks, 16)
    torch.testing.assert_close(seen[0], truth if forcing else predicted)
    assert float(losses["mouth_shape"].detach()) == pytest.approx(float(((predicted - truth) ** 2).mean()), rel=1e-5)
    assert losses["mouth_shape"].requires_grad  # the head learns from it


def test_a_sketch_needs_the_head_and_a_place():
    with pytest.raises(DiffheadsError, match="mouth_sketch_centre must be"):
        load_config(None, ["model.mouth_sketch_centre=[0.5, 0.7]"])
    with pytest.raises(DiffheadsError, match="mouth_sketch_centre must be"):
        load_config(None, ["model.mouth_shape_head=true", "model.mouth_sketch_centre=[0.5]"])
