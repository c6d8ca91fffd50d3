"""Per-frame solvers: small functions of (denoiser, x, process, generator) (STYLE rule 2).

A denoiser is any callable `denoiser(x_t, t) -> network output` where `t` holds the original
(unspaced) time values; the video loop binds the conditioning into it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffheads.config import Solver
from diffheads.diffusion.gaussian import GaussianDiffusion, _at

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@torch.no_grad()
def sample_ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    process: GaussianDiffusion,
    generator: torch.Generator | None = None,
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
    generator: torch.Generator | None = None,
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


def sample_frame(
    denoiser: Denoiser,
    noise: torch.Tensor,
    process: GaussianDiffusion,
    solver: Solver,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    eta: float = 0.0,
) -> torch.Tensor:
    """Run the chosen solver from `noise` to a frame batch in [-1, 1]."""
    if solver == Solver.ANCESTRAL:
        return sample_ancestral(denoiser, noise, process, generator, clip_denoised)
    if solver == Solver.DDIM:
        return sample_ddim(denoiser, noise, process, generator, clip_denoised, eta)
    raise ValueError(f"unknown solver {solver}")
