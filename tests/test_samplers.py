"""Per-frame solvers on a toy Gaussian model (closed-form denoiser) and the autoregressive video loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffheads.config import DiffusionConfig, ModelConfig, Prediction, SampleConfig, Solver
from diffheads.diffusion.gaussian import GaussianDiffusion
from diffheads.diffusion.motion import motion_transform
from diffheads.diffusion.samplers import sample_ancestral, sample_ddim
from diffheads.diffusion.video import anchor_colour, sample_video
from diffheads.errors import DiffheadsError

MU, S = 0.3, 0.4  # data: every pixel i.i.d. N(MU, S^2)


def gaussian_denoiser(full: GaussianDiffusion, log_var_frac: float):  # noqa: ANN201
    """Exact E[eps | x_t] for Gaussian data; the variance half is a constant interpolation value."""
    abar_of_t = full.schedule.alpha_bar.double()

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = abar_of_t[t].view(-1, 1, 1, 1).to(x.dtype)
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * MU) / (ab * S**2 + 1 - ab)
        return torch.cat([eps, torch.full_like(eps, log_var_frac)], dim=1)

    return denoise


@pytest.mark.parametrize(
    "solver,steps,tol_mean,tol_std",
    [("ddim", 50, 0.02, 0.03), ("ancestral", 200, 0.03, 0.05)],
)
def test_solvers_reproduce_gaussian_data(solver, steps, tol_mean, tol_std):
    full = GaussianDiffusion.from_config(DiffusionConfig(legacy_float32_schedule=False))
    process = full.respace(steps)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, 3, 1, 1, generator=g, dtype=torch.float64)
    denoise = gaussian_denoiser(full, log_var_frac=0.0)
    if solver == "ddim":
        x = sample_ddim(denoise, noise, process, g, clip_denoised=False)
    else:
        x = sample_ancestral(denoise, noise, process, g, clip_denoised=False)
    assert abs(x.mean().item() - MU) < tol_mean
    assert abs(x.std().item() - S) / S < tol_std


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    full = GaussianDiffusion.from_config(DiffusionConfig(legacy_float32_schedule=False))
    process = full.respace(10)
    denoise = gaussian_denoiser(full, 0.0)
    noise = torch.randn(8, 3, 2, 2, dtype=torch.float64)
    a = sample_ddim(denoise, noise, process, torch.Generator().manual_seed(1))
    b = sample_ddim(denoise, noise, process, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = sample_ddim(denoise, noise, process, torch.Generator().manual_seed(1), eta=1.0)
    d = sample_ddim(denoise, noise, process, torch.Generator().manual_seed(2), eta=1.0)
    assert not torch.equal(c, d)


class FrameIndexModel(torch.nn.Module):
    """Predicts x0 = (row of the centre audio embedding) / 100 and records every conditioning it sees."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.seen: list = []

    def forward(self, x, t, cond):  # noqa: ANN001, ANN201
        self.seen.append(cond)
        value = cond.audio_window[:, self.k, 0] / 100.0
        x0 = value.view(-1, 1, 1, 1).expand_as(x)
        return torch.cat([x0, torch.zeros_like(x0)], dim=1)


@pytest.mark.parametrize("grayscale", [True, False])
def test_video_loop_feeds_motion_frames_and_audio_windows(grayscale):
    k, n_motion, steps = 2, 2, 3
    mcfg = ModelConfig(n_motion_frames=n_motion, n_audio_motion_embs=k, grayscale_motion=grayscale)
    process = GaussianDiffusion.from_config(DiffusionConfig(prediction=Prediction.X0)).respace(steps)
    lengths = [7, 4]
    # embeddings: row r of every clip holds r in all its columns
    embs = [torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3) for n in lengths]
    identity = torch.stack([torch.full((3, 4, 4), -0.5), torch.full((3, 4, 4), 0.7)])
    model = FrameIndexModel(k)
    sample = SampleConfig(solver=Solver.DDIM, steps=steps, stabilize_every=3, clip_denoised=True)
    out = sample_video(model, process, identity, embs, mcfg, sample, torch.Generator().manual_seed(0), progress=False)
    assert [len(o) for o in out] == lengths
    for clip, n in zip(out, lengths):
        np.testing.assert_allclose(clip[:, 0, 0, 0].numpy(), np.arange(n) / 100.0, atol=1e-6)
    per_frame = model.seen[::steps]  # every step of one frame sees the same conditioning
    assert len(per_frame) == max(lengths)
    to_m = lambda f: motion_transform(f, grayscale, False)  # noqa: E731
    c = 1 if grayscale else 3
    for t, cond in enumerate(per_frame):
        active = [i for i, n in enumerate(lengths) if n > t]
        assert cond.identity_frame.shape[0] == len(active)
        for row, i in enumerate(active):
            # audio rows t-k..t+k clamped into the clip's own length
            want_rows = np.clip(np.arange(t - k, t + k + 1), 0, lengths[i] - 1)
            np.testing.assert_allclose(cond.audio_window[row, :, 0].numpy(), want_rows)
            # motion slots, oldest first: generated frames t-2, t-1, or the identity frame before the start
            for slot in range(n_motion):
                src = t - n_motion + slot
                # stabilisation: at frames 3, 6, ... the oldest slot holds the identity frame
                stabilised = slot == 0 and t > 0 and t % 3 == 0
                if src < 0 or stabilised:
                    want = to_m(identity[i : i + 1])[0]
                else:
                    want = to_m(torch.full((1, 3, 4, 4), src / 100.0))[0]
                got = cond.motion_frames[row, slot * c : (slot + 1) * c]
                torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_anchor_colour_moves_the_face_box_skin_onto_the_identity_frame():
    g = torch.Generator().manual_seed(3)
    identity = torch.rand(2, 3, 8, 8, generator=g) * 0.6 - 0.3  # background
    skin = torch.tensor([[0.4, 0.1, -0.1], [-0.2, 0.3, 0.0]]).view(2, 3, 1, 1)
    identity[..., 2:6, 2:6] = skin  # the face box (rows and columns 2..5 of 8) is skin ...
    identity[..., 3, 2] = -0.8  # ... with an eye
    # a frame = the identity with a known colour cast on the face box, an open mouth and a changed background
    cast = torch.tensor([[0.2, -0.1, 0.05], [-0.15, 0.1, 0.0]]).view(2, 3, 1, 1)
    frame = identity.clone()
    frame[..., 2:6, 2:6] += cast
    frame[..., 4:6, 3:5] = -0.9  # the mouth: 4 of the box's 16 pixels, dark
    frame[..., 0, :] = 0.9  # background pixels outside the box must not steer the shift
    got = anchor_colour(frame, identity)
    # independent: the box's skin differs from the identity's by exactly `cast` (a mean would also see the mouth), so
    # the whole frame moves by -cast; the background row at 0.9 goes past 1 where the cast is negative and is clamped
    want = (frame - cast).clamp(-1, 1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    skin_pixels = torch.ones(8, 8, dtype=torch.bool)
    skin_pixels[4:6, 3:5] = False
    torch.testing.assert_close(
        got[..., 2:6, 2:6][..., skin_pixels[2:6, 2:6]],
        identity[..., 2:6, 2:6][..., skin_pixels[2:6, 2:6]],
        atol=1e-6,
        rtol=0,
    )


def test_colour_anchor_in_the_video_loop_returns_and_feeds_back_anchored_frames():
    k, steps = 1, 2
    mcfg = ModelConfig(n_motion_frames=2, n_audio_motion_embs=k, grayscale_motion=False)
    process = GaussianDiffusion.from_config(DiffusionConfig(prediction=Prediction.X0)).respace(steps)
    lengths = [5, 3]  # the second clip leaves the batch after frame 2: rows must stay matched to their identity
    embs = [torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3) for n in lengths]
    identity = torch.stack([torch.full((3, 8, 8), 0.25), torch.full((3, 8, 8), -0.5)])
    identity[:, 1] = torch.tensor([-0.4, 0.6]).view(2, 1, 1)  # the model's frames are grey (all channels t / 100)
    sample = SampleConfig(solver=Solver.DDIM, steps=steps, colour_anchor=True)
    model = FrameIndexModel(k)
    clips = sample_video(model, process, identity, embs, mcfg, sample, torch.Generator().manual_seed(0), progress=False)
    # each frame is flat, so anchoring makes it its own identity frame's colour exactly
    for clip, ident, n in zip(clips, identity, lengths):
        assert len(clip) == n
        for frame in clip:
            torch.testing.assert_close(frame, ident, atol=1e-6, rtol=0)
    # frame 2 conditions on the anchored frames 0 and 1, not on the grey ones the model made
    cond = model.seen[2 * steps]
    torch.testing.assert_close(cond.motion_frames[:, 3:], motion_transform(identity, False, False), atol=1e-6, rtol=0)


@pytest.mark.parametrize("flags,want", [([], None), (["--no-colour-anchor"], False), (["--colour-anchor"], True)])
def test_colour_anchor_flag_overrides_the_checkpoint(flags, want):
    from diffheads.cli import _sample_overrides, build_parser

    for base in (SampleConfig(colour_anchor=True), SampleConfig(colour_anchor=False)):
        args = build_parser().parse_args(["generate", "--checkpoint", "m.ckpt", "--data", "d", "--out", "o", *flags])
        expected = base.colour_anchor if want is None else want  # no flag: the checkpoint's own setting
        assert _sample_overrides(args, base).colour_anchor is expected


class FirstInputModel(torch.nn.Module):
    """Predicts x0 = 0 and records the noisy input of every call."""

    def __init__(self):
        super().__init__()
        self.inputs: list = []

    def forward(self, x, t, cond):  # noqa: ANN001, ANN201
        self.inputs.append(x.clone())
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])


@pytest.mark.parametrize("c", [0.0, 0.6, 1.0])
def test_noise_correlation_mixes_each_frames_noise_with_the_first_frames(c):
    steps, lengths = 2, [3, 2]
    mcfg = ModelConfig(n_motion_frames=1, n_audio_motion_embs=1, grayscale_motion=False)
    process = GaussianDiffusion.from_config(DiffusionConfig(prediction=Prediction.X0)).respace(steps)
    embs = [torch.zeros(n, 3) for n in lengths]
    identity = torch.zeros(2, 3, 4, 4)
    model = FirstInputModel()
    sample = SampleConfig(solver=Solver.DDIM, steps=steps, noise_correlation=c)
    sample_video(model, process, identity, embs, mcfg, sample, torch.Generator().manual_seed(0), progress=False)
    starts = model.inputs[::steps]  # the first solver call of each frame sees its starting noise, scaled
    # by hand: DDIM (eta 0) draws only each frame's fresh noise, (active clips, 3, 4, 4), in frame order
    g = torch.Generator().manual_seed(0)
    fresh = [torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)]
    fresh.append(torch.randn(1, 3, 4, 4, generator=g))  # frame 2: only the 3-frame clip runs
    scale = starts[0].flatten()[0] / fresh[0].flatten()[0]
    for t, rows in enumerate([[0, 1], [0, 1], [0]]):
        want = fresh[t] if t == 0 else c * fresh[0][rows] + (1 - c * c) ** 0.5 * fresh[t]
        torch.testing.assert_close(starts[t], want * scale, atol=1e-5, rtol=0)


def test_noise_correlation_is_checked():
    with pytest.raises(DiffheadsError, match="noise_correlation"):
        SampleConfig(noise_correlation=1.5)
