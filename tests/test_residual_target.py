"""diffusion.target: residual diffuses (frame - identity frame) * residual_scale; frames come back in [-1, 1]."""

from __future__ import annotations

import pytest
import torch

from diffheads.config import (
    DiffusedTarget,
    DiffusionConfig,
    ModelConfig,
    Prediction,
    RunConfig,
    SampleConfig,
    Solver,
    load_config,
)
from diffheads.diffusion.gaussian import GaussianDiffusion
from diffheads.diffusion.motion import motion_transform
from diffheads.diffusion.video import sample_video
from diffheads.errors import DiffheadsError
from diffheads.training.module import DiffusionModule


class ConstantX0(torch.nn.Module):
    """Predicts x0 = t_frame / 100 everywhere (t_frame from the centre audio row) and records its conditioning."""

    def __init__(self, k: int):
        super().__init__()
        self.k, self.seen = k, []

    def forward(self, x, t, cond):  # noqa: ANN001, ANN201
        self.seen.append(cond)
        x0 = (cond.audio_window[:, self.k, 0] / 100.0).view(-1, 1, 1, 1).expand_as(x)
        return torch.cat([x0, torch.zeros_like(x0)], dim=1)


def test_video_loop_returns_identity_plus_the_scaled_signal_and_feeds_frames_back():
    k, steps, scale = 1, 2, 4.0
    mcfg = ModelConfig(n_motion_frames=2, n_audio_motion_embs=k, grayscale_motion=False)
    dcfg = DiffusionConfig(prediction=Prediction.X0, target=DiffusedTarget.RESIDUAL, residual_scale=scale)
    process = GaussianDiffusion.from_config(dcfg).respace(steps)
    embs = [torch.arange(5, dtype=torch.float32)[:, None].repeat(1, 3) * 10]  # x0 = 0, 0.1, 0.2, ...
    identity = torch.linspace(-0.9, 0.9, 3 * 6 * 6).view(1, 3, 6, 6)
    model = ConstantX0(k)
    sample = SampleConfig(solver=Solver.DDIM, steps=steps, clip_denoised=True)
    (clip,) = sample_video(
        model, process, identity, embs, mcfg, sample, torch.Generator().manual_seed(0), progress=False
    )
    for t, frame in enumerate(clip):
        want = (identity[0] + (t * 0.1) / scale).clamp(-1.0, 1.0)  # by hand: identity + signal / scale
        torch.testing.assert_close(frame, want, atol=1e-5, rtol=0)
    # frame 2 conditions on frames 0 and 1 as frames, not on the diffused signal
    cond = model.seen[2 * steps]
    torch.testing.assert_close(cond.motion_frames[:, 3:], motion_transform(clip[1:2], False, False), atol=1e-5, rtol=0)


def test_x0_clipping_follows_the_signal_range():
    out = torch.full((1, 6, 2, 2), 5.0)  # x0 prediction 5 (the variance half ignored)
    xt, idx = torch.zeros(1, 3, 2, 2), torch.tensor([10])
    for target, scale, want in [(DiffusedTarget.FRAME, 4.0, 1.0), (DiffusedTarget.RESIDUAL, 4.0, 5.0)]:
        cfg = DiffusionConfig(prediction=Prediction.X0, target=target, residual_scale=scale)
        x0 = GaussianDiffusion.from_config(cfg).p_mean_variance(out, xt, idx, clip_denoised=True)["x0"]
        assert float(x0.max()) == pytest.approx(want)
    cfg = DiffusionConfig(prediction=Prediction.X0, target=DiffusedTarget.RESIDUAL, residual_scale=2.0)
    x0 = GaussianDiffusion.from_config(cfg).p_mean_variance(out, xt, idx, clip_denoised=True)["x0"]
    assert float(x0.max()) == pytest.approx(4.0)  # residuals of frames in [-1, 1] lie within +-2, times the scale


class Oracle(torch.nn.Module):
    """Outputs a fixed x0 whatever it is given."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, cond):  # noqa: ANN001, ANN201
        return self.x0


@pytest.mark.parametrize("target", list(DiffusedTarget))
def test_training_loss_is_zero_only_for_the_signal_of_its_target(target):
    g = torch.Generator().manual_seed(0)
    frames, identity = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    batch = {
        "target": frames,
        "identity_frame": identity,
        "motion_frames": torch.zeros(4, 6, 8, 8),
        "audio_window": torch.zeros(4, 5, 8),
    }
    cfg = RunConfig()
    cfg.diffusion = DiffusionConfig(prediction=Prediction.X0, learn_sigma=False, lip_loss_weight=0.0, target=target)
    cfg.optim.ema_decay = 0.0
    residual = (frames - identity) * cfg.diffusion.residual_scale
    right, wrong = (residual, frames) if target == DiffusedTarget.RESIDUAL else (frames, residual)
    assert float(DiffusionModule(Oracle(right), cfg).compute_losses(batch)["mse"]) == pytest.approx(0.0, abs=1e-10)
    assert float(DiffusionModule(Oracle(wrong), cfg).compute_losses(batch)["mse"]) > 0.1


def test_target_is_read_from_configs_and_a_wrong_one_is_named():
    cfg = load_config(None, ["diffusion.target=residual", "diffusion.residual_scale=3"])
    assert cfg.diffusion.target == DiffusedTarget.RESIDUAL and cfg.diffusion.residual_scale == 3.0
    with pytest.raises(DiffheadsError, match="diffusion.target"):
        load_config(None, ["diffusion.target=latent"])
    with pytest.raises(DiffheadsError, match="residual_scale must be > 0"):
        load_config(None, ["diffusion.residual_scale=0"])
