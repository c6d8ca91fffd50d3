"""Every per-frame solver on a Gaussian toy with a known answer, against diffusers, and on a tiny UNet.

Toy: every value of x0 is N(M, S^2), so x_t = alpha_t x0 + sigma_t eps ~ N(alpha_t M, v_t),
v_t = alpha_t^2 S^2 + sigma_t^2 (alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t)), and the ideal
denoiser is E[x0 | x_t] = M + alpha_t S^2 / v_t (x_t - alpha_t M).

Exact answer of the deterministic solvers: the probability-flow ODE (Song et al. 2021, eq. 13;
Lu et al. 2022, eq. 2) dx/dt = f x - g^2 / 2 grad log q_t(x), f = dlog(alpha)/dt,
g^2 = dsigma^2/dt - 2 f sigma^2, has the affine score -(x - alpha M) / v here, so y = x - alpha M obeys
dlog(y)/dt = f + g^2 / (2 v) = dlog(sqrt(v))/dt: y_t / sqrt(v_t) = c is constant along each path, and
x_T reaches x_0 = M + c S, c = (x_T - alpha_T M) / sqrt(alpha_T^2 S^2 + sigma_T^2), at the data
(alpha = 1, sigma = 0). The solvers stop at position 0 (t = 0, sigma_0 ~ 0.0064) and return the
x0 prediction there, so their exact limit is M + c alpha_0 S^2 / sqrt(v_0); it differs from the
data endpoint by c S (1 - alpha_0 S / sqrt(v_0)) ~ 4e-5 c, checked below too.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from diffheads.conditioning import Conditioning
from diffheads.config import DiffusionConfig, ModelConfig, Prediction, Solver
from diffheads.diffusion.gaussian import GaussianDiffusion
from diffheads.diffusion.samplers import sample_ancestral, sample_ddim, sample_dpmpp_2m, sample_frame, sample_unipc
from diffheads.models.unet import UNet

M, S = 0.3, 0.5
ODE_SOLVERS = [Solver.DDIM, Solver.DPMPP_2M, Solver.UNIPC]


def full_process(prediction: Prediction = Prediction.EPS) -> GaussianDiffusion:
    """The un-respaced 1000-step cosine process, float64."""
    return GaussianDiffusion.from_config(DiffusionConfig(prediction=prediction, legacy_float32_schedule=False))


def ideal_x0(x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] for Gaussian data; abar broadcasts against x."""
    alpha = abar.sqrt()
    return M + alpha * S**2 / (abar * S**2 + 1 - abar) * (x - alpha * M)


def toy_denoiser(prediction: Prediction = Prediction.EPS, calls: list | None = None):  # noqa: ANN201
    """6-channel network output realising ideal_x0: mean half in the `prediction` parameterisation, variance half 0."""
    abar_of_t = full_process().schedule.alpha_bar

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(t.clone())
        abar = abar_of_t[t].view(-1, 1, 1, 1).to(x.dtype)
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        x0 = ideal_x0(x, abar)
        eps = (x - alpha * x0) / sigma
        pred = {Prediction.EPS: eps, Prediction.V: alpha * eps - sigma * x0, Prediction.X0: x0}[prediction]
        return torch.cat([pred, torch.zeros_like(pred)], dim=1)

    return denoise


def flow_map(x_T: torch.Tensor, to_data: bool = False) -> torch.Tensor:
    """Exact output of an ODE solver from x_T at t = 999: the x0 prediction at t = 0, or the data endpoint."""
    abar = full_process().schedule.alpha_bar
    v = lambda ab: ab * S**2 + 1 - ab  # noqa: E731
    c = (x_T - abar[-1].sqrt() * M) / v(abar[-1]).sqrt()
    if to_data:
        return M + c * S
    return M + c * abar[0].sqrt() * S**2 / v(abar[0]).sqrt()


def start_noise(n: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def ode_error(solver: Solver, steps: int, to_data: bool = False) -> float:
    """Max |solver output - exact flow map| over 3072 values, no clipping."""
    x_T = start_noise()
    out = sample_frame(toy_denoiser(), x_T, full_process().with_steps(steps), solver, None, clip_denoised=False)
    return (out - flow_map(x_T, to_data)).abs().max().item()


# 1. the deterministic solvers against the exact probability-flow map ------------------------------------


@pytest.mark.parametrize(
    "solver, steps, tol",
    [
        (Solver.DDIM, 50, 8e-2),
        (Solver.DDIM, 1000, 5e-3),
        (Solver.DPMPP_2M, 50, 8e-3),
        (Solver.UNIPC, 50, 1e-3),
    ],
)
def test_ode_solvers_reach_the_exact_flow_map(solver, steps, tol):
    assert ode_error(solver, steps) < tol
    assert ode_error(solver, steps, to_data=True) < tol + 2e-4  # the t = 0 stop costs ~4e-5 |c|


@pytest.mark.parametrize("solver", [Solver.DPMPP_2M, Solver.UNIPC])
def test_second_order_solvers_beat_ddim_and_converge(solver):
    errors = [ode_error(solver, k) for k in (5, 10, 20, 50)]
    assert errors == sorted(errors, reverse=True), errors
    for steps in (10, 20):
        assert ode_error(solver, steps) < 0.5 * ode_error(Solver.DDIM, steps)


@pytest.mark.parametrize("solver", ODE_SOLVERS)
def test_prediction_parameterisations_agree(solver):
    x_T = start_noise(8)
    outs = [
        sample_frame(toy_denoiser(p), x_T, full_process(p).respace(10), solver, None, clip_denoised=False)
        for p in Prediction
    ]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-10, rtol=0)


def test_ancestral_reproduces_the_data_distribution():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, 3, 1, 1, generator=g, dtype=torch.float64)
    x = sample_ancestral(toy_denoiser(), noise, full_process().respace(50), g, clip_denoised=False)
    # 12000 values: standard errors 0.0046 (mean) and 0.65 % (std); 50 steps bias the std by ~ -2 %
    assert abs(x.mean().item() - M) < 0.02
    assert abs(x.std().item() / S - 1) < 0.05


# 2. closed forms of single steps ----------------------------------------------------------------------


def test_one_step_closed_forms_ddim_equals_first_order_dpm_solver_pp():
    """Two positions (t = 999, 0): one solver step, then the x0 prediction at t = 0."""
    process = full_process().respace(2)
    abar = process.schedule.alpha_bar  # (abar_0, abar_999)
    x_T = start_noise(16)
    d_T = ideal_x0(x_T, abar[1])
    a_T, s_T, a_0, s_0 = abar[1].sqrt(), (1 - abar[1]).sqrt(), abar[0].sqrt(), (1 - abar[0]).sqrt()
    # DDIM, Song et al. 2021 eq. 12 with sigma = 0: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps
    eps_T = (x_T - a_T * d_T) / s_T
    ddim = a_0 * d_T + s_0 * eps_T
    # first-order DPM-Solver++ (Lu et al. 2022, eq. 5): x_t = sigma_t / sigma_s x_s - alpha_t (e^-h - 1) x0
    h = math.log(a_0 / s_0) - math.log(a_T / s_T)
    dpm = s_0 / s_T * x_T - a_0 * math.expm1(-h) * d_T
    torch.testing.assert_close(dpm, ddim, atol=1e-12, rtol=0)
    want = ideal_x0(ddim, abar[0])
    denoise = toy_denoiser()
    for sampler in (sample_ddim, sample_dpmpp_2m, sample_unipc):
        # 1e-8: the respaced abar at t = 999 is a cumulative product, 1.5e-8 (relative) off the full schedule's
        torch.testing.assert_close(sampler(denoise, x_T, process, None, False), want, atol=1e-8, rtol=0)


def test_dpm_solver_pp_is_ddim_while_every_step_is_first_order():
    """Three positions: the first step and the step into t = 0 are both first order."""
    process, x_T, denoise = full_process().respace(3), start_noise(16), toy_denoiser()
    torch.testing.assert_close(
        sample_dpmpp_2m(denoise, x_T, process, None, False),
        sample_ddim(denoise, x_T, process, None, False),
        atol=1e-12,
        rtol=0,
    )


# 3. the same updates as diffusers' schedulers ---------------------------------------------------------


def run_diffusers(scheduler, process: GaussianDiffusion, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """diffusers over positions K-1 .. 1 ending at sigma(t = 0), then the x0 prediction at t = 0 (our contract)."""
    abar = process.schedule.alpha_bar.double()
    kept = process.schedule.timesteps
    scheduler.set_timesteps(process.n_steps - 1)
    # the grid of our respaced process (diffusers' spacings never evaluate at t = 0); its sigma is sqrt(1/abar - 1)
    scheduler.timesteps = kept[1:].flip(0)
    scheduler.sigmas = ((1 - abar) / abar).sqrt().flip(0)
    scheduler.num_inference_steps = process.n_steps - 1
    scheduler.set_begin_index(0)
    abar_of_t = full_process().schedule.alpha_bar
    for t in scheduler.timesteps:
        x = scheduler.step(ideal_x0(x, abar_of_t[t]), t, x).prev_sample
    return ideal_x0(x, abar[0])


@pytest.mark.parametrize("steps", [4, 10, 25])
def test_dpm_solver_pp_matches_diffusers(steps):
    process = full_process().respace(steps)
    betas = full_process().schedule.beta.numpy()
    scheduler = DPMSolverMultistepScheduler(
        trained_betas=betas,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        prediction_type="sample",
        lower_order_final=True,
        euler_at_final=True,
    )
    x_T = start_noise(16)
    torch.testing.assert_close(
        sample_dpmpp_2m(toy_denoiser(), x_T, process, None, False),
        run_diffusers(scheduler, process, x_T),
        atol=2e-6,
        rtol=0,  # diffusers' DPM-Solver step rounds the sample to float32
    )


@pytest.mark.parametrize("steps", [3, 4, 10, 25])
def test_unipc_matches_diffusers(steps):
    process = full_process().respace(steps)
    scheduler = UniPCMultistepScheduler(
        trained_betas=full_process().schedule.beta.numpy(),
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        prediction_type="sample",
        lower_order_final=True,
    )
    # the scheduler built from our betas has our alpha_bar (to float32)
    torch.testing.assert_close(
        scheduler.alphas_cumprod.double(), full_process().schedule.alpha_bar, atol=1e-6, rtol=1e-5
    )
    x_T = start_noise(16)
    torch.testing.assert_close(
        sample_unipc(toy_denoiser(), x_T, process, None, False),
        run_diffusers(scheduler, process, x_T),
        atol=1e-8,
        rtol=0,
    )


# 4. the sample_frame contract: times, calls, a real network -------------------------------------------


@pytest.mark.parametrize("solver", list(Solver))
def test_one_call_per_step_at_the_original_times(solver):
    steps, calls = 7, []
    process = full_process().respace(steps)
    x = start_noise(4).float()
    sample_frame(toy_denoiser(calls=calls), x, process, solver, torch.Generator().manual_seed(0), False)
    assert len(calls) == steps
    want = process.schedule.timesteps.flip(0).tolist()
    assert want[0] == 999 and want[-1] == 0
    for t, w in zip(calls, want):
        assert t.dtype == torch.int64 and t.shape == (4,)
        assert int(t.min()) >= 0 and int(t.max()) <= 999
        assert t.tolist() == [w] * 4


def tiny_unet_denoiser(seed: int = 0):  # noqa: ANN201
    """A tiny conditional UNet with its zero-initialised layers made random, conditioning bound in."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        image_size=16,
        model_channels=32,
        channel_mult=[1, 2],
        num_res_blocks=1,
        attention_resolutions=[8],
        num_head_channels=32,
        audio_dim=12,
        dropout=0.1,
    )
    model = UNet(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    g = torch.Generator().manual_seed(seed)
    cond = Conditioning(
        identity_frame=torch.rand(2, 3, 16, 16, generator=g) * 2 - 1,
        motion_frames=torch.rand(2, cfg.n_motion_frames * cfg.motion_channels, 16, 16, generator=g) * 2 - 1,
        audio_window=torch.randn(2, cfg.audio_window_len, cfg.audio_dim, generator=g),
    )
    return lambda x, t: model(x, t, cond)


@pytest.mark.parametrize("solver", list(Solver))
def test_tiny_unet_frames_are_finite_in_range_and_seeded(solver):
    denoise = tiny_unet_denoiser()
    process = GaussianDiffusion.from_config(DiffusionConfig()).with_steps(6)

    def frame(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(2, 3, 16, 16, generator=g)
        return sample_frame(denoise, noise, process, solver, g, clip_denoised=True, eta=0.5)

    a, b = frame(0), frame(0)
    assert a.shape == (2, 3, 16, 16) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert a.abs().max() <= 1.0 + 1e-6
    assert torch.equal(a, b)
    assert not torch.equal(a, frame(1))


def test_unknown_solver_is_rejected():
    with pytest.raises(ValueError, match="unknown solver"):
        sample_frame(toy_denoiser(), start_noise(2), full_process().respace(3), "euler")  # type: ignore[arg-type]
