"""Per-frame solvers: small functions of (denoiser, x, process, generator) (STYLE rule 2).

A denoiser is any callable `denoiser(x_t, t) -> network output` where `t` holds the original
(unspaced) time values; the video loop binds the conditioning into it.

Every solver makes one network call per position of the (respaced) process, from position K-1
(t = 999) down to position 0 (t = 0), and returns the clean frame: the x0 prediction (posterior
mean) made at position 0, whose noise level sigma_0 = sqrt(1 - abar_0) ~ 0.006 is below one 8-bit
level. The multistep ODE solvers (DPM-Solver++(2M), UniPC) work on lambda_t = log(alpha_t / sigma_t),
alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), of the process's own positions; their first step
and their step into position 0 are first order. The latter is diffusers' lower_order_final, taken at
every step count: on a respaced grid the last interval is always 3-5x longer in lambda than the one
before (lambda_0 ~ 5.0 is an outlier of the cosine schedule), and a second-order step across it
overshoots (on a Gaussian toy, 2M with a second-order last step is worse than DDIM up to ~25 steps).
So each equals diffusers' scheduler run over positions K-1 .. 1 with the final sigma = sigma_0
(final_sigmas_type="sigma_min", first-order last step), followed by one x0 prediction at t = 0;
tests/test_solvers.py checks both against diffusers step for step. UniPC is written out here rather
than called through UniPCMultistepScheduler: none of its timestep spacings evaluates at t = 0, it
needs the un-respaced betas, and its step copies sigmas to the device and solves a linear system
there (host syncs on CUDA).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from diffheads.config import Solver
from diffheads.diffusion.gaussian import GaussianDiffusion, _at

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None
"""Where noise comes from: one generator for the batch, or one per row (each clip its own noise, whatever its batch)."""


def randn(
    shape: tuple[int, ...] | torch.Size, generator: Generators, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normal noise of `shape`; with one generator per row, row i is drawn from generator[i] alone."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]} rows")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])


def _randn_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    return randn(x.shape, generator, x.device, x.dtype)


@torch.no_grad()
def sample_ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    process: GaussianDiffusion,
    generator: Generators = None,
    clip_denoised: bool = True,
) -> torch.Tensor:
    """Ancestral DDPM sampling with the learned variance over the process's (respaced) steps (Ho et al. 2020, alg. 2)."""
    for i in reversed(range(process.n_steps)):
        idx = torch.full((x.shape[0],), i, dtype=torch.int64, device=x.device)
        p = process.p_mean_variance(denoiser(x, process.model_timesteps(idx)), x, idx, clip_denoised)
        if i > 0:
            x = p["mean"] + torch.exp(0.5 * p["log_variance"]) * _randn_like(x, generator)
        else:
            x = p["mean"]
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    process: GaussianDiffusion,
    generator: Generators = None,
    clip_denoised: bool = True,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) over the process's steps; eta = 0 is deterministic."""
    s = process.schedule
    for i in reversed(range(process.n_steps)):
        idx = torch.full((x.shape[0],), i, dtype=torch.int64, device=x.device)
        p = process.p_mean_variance(denoiser(x, process.model_timesteps(idx)), x, idx, clip_denoised)
        x0 = p["x0"]
        eps = process.eps_from_x0(x0, x, idx) if clip_denoised else p["eps"]
        abar_prev = _at(s.alpha_bar_prev, idx, x)
        abar = _at(s.alpha_bar, idx, x)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        x = abar_prev.sqrt() * x0 + torch.sqrt((1 - abar_prev - sigma**2).clamp(min=0.0)) * eps
        if eta > 0 and i > 0:
            x = x + sigma * _randn_like(x, generator)
    return x


def _x0(denoiser: Denoiser, x: torch.Tensor, process: GaussianDiffusion, i: int, clip_denoised: bool) -> torch.Tensor:
    """Data prediction x0(x_t) at position i from any parameterisation (variance half ignored), clipped on request."""
    idx = torch.full((x.shape[0],), i, dtype=torch.int64, device=x.device)
    return process.p_mean_variance(denoiser(x, process.model_timesteps(idx)), x, idx, clip_denoised)["x0"]


def _vp_grid(process: GaussianDiffusion) -> tuple[list[float], list[float], list[float]]:
    """alpha_t = sqrt(abar), sigma_t = sqrt(1 - abar), lambda_t = log(alpha_t / sigma_t), position K-1 first."""
    abar = process.schedule.alpha_bar.detach().double().cpu().flip(0)
    lam = 0.5 * (torch.log(abar) - torch.log1p(-abar))
    return abar.sqrt().tolist(), (1.0 - abar).sqrt().tolist(), lam.tolist()


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    process: GaussianDiffusion,
    generator: Generators = None,
    clip_denoised: bool = True,
) -> torch.Tensor:
    """DPM-Solver++(2M) over the process's steps (Lu et al. 2022, alg. 2), then the x0 prediction at t = 0.

    The first step and the step into position 0 are first order (DDIM); see the module docstring.
    """
    alpha, sigma, lam = _vp_grid(process)
    n = process.n_steps
    d_prev = None
    for j in range(n):
        d = _x0(denoiser, x, process, n - 1 - j, clip_denoised)
        if j == n - 1:
            return d
        h = lam[j + 1] - lam[j]
        phi = -alpha[j + 1] * math.expm1(-h)
        x = sigma[j + 1] / sigma[j] * x + phi * d  # first order (eq. 5): the DDIM step
        if 0 < j < n - 2:  # 2M: D = d + (d - d_prev) / (2 r), r = h_prev / h
            x = x + phi * (d - d_prev) * (h / (2.0 * (lam[j] - lam[j - 1])))
        d_prev = d
    return x


@torch.no_grad()
def sample_unipc(
    denoiser: Denoiser,
    x: torch.Tensor,
    process: GaussianDiffusion,
    generator: Generators = None,
    clip_denoised: bool = True,
) -> torch.Tensor:
    """UniPC-bh2, order 2, data prediction (Zhao et al. 2023, alg. 2-3), then the x0 prediction at t = 0.

    B(h) = e^h - 1 (bh2) makes UniP-2 the DPM-Solver++(2M) update; UniC corrects x_t with the x0
    prediction made at it (no extra network call). Orders as in DPM-Solver++(2M) above; each
    corrector takes the order of the predictor step it corrects (diffusers' UniPCMultistepScheduler).
    """
    alpha, sigma, lam = _vp_grid(process)
    n = process.n_steps
    x_prev = d_prev = d_prev2 = None
    for j in range(n):
        d = _x0(denoiser, x, process, n - 1 - j, clip_denoised)
        if j == n - 1:
            return d
        if x_prev is not None:  # UniC-bh2 from x_prev (j - 1) to x (j)
            h = lam[j] - lam[j - 1]
            b_h = math.expm1(-h)
            base = sigma[j] / sigma[j - 1] * x_prev - alpha[j] * b_h * d_prev
            if d_prev2 is None:  # order 1: rho = 1/2
                x = base - alpha[j] * b_h * 0.5 * (d - d_prev)
            else:  # order 2: rho solves [[1, 1], [r, 1]] rho = (b1, b2), r = (lambda_{j-2} - lambda_{j-1}) / h
                r = (lam[j - 2] - lam[j - 1]) / h
                g1 = b_h / -h - 1.0
                b1 = g1 / b_h
                b2 = 2.0 * (g1 / -h - 0.5) / b_h
                rho0 = (b1 - b2) / (1.0 - r)
                rho1 = b1 - rho0
                x = base - alpha[j] * b_h * (rho0 * (d_prev2 - d_prev) / r + rho1 * (d - d_prev))
        h = lam[j + 1] - lam[j]  # UniP-bh2 from x (j) to j + 1
        b_h = math.expm1(-h)
        x_next = sigma[j + 1] / sigma[j] * x - alpha[j + 1] * b_h * d
        if 0 < j < n - 2:  # order 2: rho = 1/2
            x_next = x_next - alpha[j + 1] * b_h * 0.5 * (d_prev - d) * (h / (lam[j - 1] - lam[j]))
        x_prev, d_prev2, d_prev, x = x, d_prev, d, x_next
    return x


def sample_frame(
    denoiser: Denoiser,
    noise: torch.Tensor,
    process: GaussianDiffusion,
    solver: Solver,
    generator: Generators = None,
    clip_denoised: bool = True,
    eta: float = 0.0,
) -> torch.Tensor:
    """Run the chosen solver from `noise` to a frame batch in [-1, 1] (eta only affects DDIM)."""
    if solver == Solver.ANCESTRAL:
        return sample_ancestral(denoiser, noise, process, generator, clip_denoised)
    if solver == Solver.DDIM:
        return sample_ddim(denoiser, noise, process, generator, clip_denoised, eta)
    if solver == Solver.DPMPP_2M:
        return sample_dpmpp_2m(denoiser, noise, process, generator, clip_denoised)
    if solver == Solver.UNIPC:
        return sample_unipc(denoiser, noise, process, generator, clip_denoised)
    raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(s.value for s in Solver)}")
