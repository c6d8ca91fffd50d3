"""Noise schedules and timestep respacing (Nichol & Dhariwal 2021, "Improved DDPM")."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def cosine_betas(n_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule, float64: beta_t = 1 - abar(t+1)/abar(t), abar(t) = cos^2(((t/T)+s)/(1+s) pi/2) (eq. 17)."""

    def f(t: float) -> float:
        return math.cos((t / n_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(n_timesteps)]
    return np.asarray(betas, dtype=np.float64)


def respaced_timesteps(n_timesteps: int, n_steps: int) -> list[int]:
    """Keep `n_steps` of `n_timesteps` evenly spaced, first and last included (reference rounding)."""
    if not 1 <= n_steps <= n_timesteps:
        raise ValueError(f"steps must be in [1, {n_timesteps}], got {n_steps}")
    if n_steps == 1:
        return [n_timesteps - 1]
    stride = (n_timesteps - 1) / (n_steps - 1)
    kept, position = [], 0.0
    for _ in range(n_steps):
        kept.append(round(position))
        position += stride
    return kept


@dataclass(frozen=True)
class Schedule:
    """A (possibly respaced) discrete process: every per-step array the diffusion maths needs.

    `timesteps[i]` is the original (0..999) time the network sees at position i.
    """

    timesteps: torch.Tensor  # int64 (K,)
    beta: torch.Tensor
    alpha: torch.Tensor
    alpha_bar: torch.Tensor
    alpha_bar_prev: torch.Tensor
    beta_tilde: torch.Tensor  # posterior variance (Ho et al. 2020, eq. 7)
    log_beta_tilde_clipped: torch.Tensor  # position 0 copies position 1 (beta_tilde_0 = 0)
    coef1_x0: torch.Tensor  # sqrt(1 / abar): x0 = coef1_x0 x_t - coef2_x0 eps
    coef2_x0: torch.Tensor  # sqrt(1 / abar - 1)
    coef1_q: torch.Tensor  # posterior mean = coef1_q x0 + coef2_q x_t (eq. 7)
    coef2_q: torch.Tensor

    @property
    def n_steps(self) -> int:
        """Number of positions in this process."""
        return int(self.beta.shape[0])

    @staticmethod
    def from_betas(
        beta: torch.Tensor, timesteps: torch.Tensor | None = None, alpha_bar: torch.Tensor | None = None
    ) -> "Schedule":
        """Derive every array from betas in the betas' own dtype (float32 reproduces the reference).

        A respaced process also passes the kept alpha_bar: the reference's cumulative product of
        the respaced betas underflows to 0 in float32 when few steps are kept (the last beta rounds
        to 1), so there the kept value is used instead.
        """
        alpha = 1.0 - beta
        product = torch.cumprod(alpha, dim=0)
        alpha_bar = product if alpha_bar is None else torch.where(product > 0, product, alpha_bar)
        one = torch.ones(1, dtype=beta.dtype)
        alpha_bar_prev = torch.cat([one, alpha_bar[:-1]])
        beta_tilde = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        clipped = torch.cat([beta_tilde[1:2], beta_tilde[1:]]) if len(beta) > 1 else beta_tilde.clamp_min(1e-20)
        if timesteps is None:
            timesteps = torch.arange(len(beta), dtype=torch.int64)
        return Schedule(
            timesteps=timesteps,
            beta=beta,
            alpha=alpha,
            alpha_bar=alpha_bar,
            alpha_bar_prev=alpha_bar_prev,
            beta_tilde=beta_tilde,
            log_beta_tilde_clipped=torch.log(clipped),
            coef1_x0=torch.sqrt(1.0 / alpha_bar),
            coef2_x0=torch.sqrt(1.0 / alpha_bar - 1.0),
            coef1_q=beta * torch.sqrt(alpha_bar_prev) / (1.0 - alpha_bar),
            coef2_q=(1.0 - alpha_bar_prev) * torch.sqrt(alpha) / (1.0 - alpha_bar),
        )

    def respace(self, n_steps: int) -> "Schedule":
        """Keep `n_steps` evenly spaced steps; new beta_k = 1 - abar[kept_k] / abar[kept_(k-1)] (Improved DDPM, sec. 4)."""
        if self.n_steps != len(self.timesteps) or not torch.equal(self.timesteps, torch.arange(self.n_steps)):
            raise ValueError("respace a full (unspaced) schedule")
        kept = respaced_timesteps(self.n_steps, n_steps)
        abar = self.alpha_bar[kept]
        prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
        return Schedule.from_betas(1.0 - abar / prev, torch.tensor(kept, dtype=torch.int64), abar)


def cosine_schedule(
    n_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999, float32: bool = True
) -> Schedule:
    """The reference schedule: float64 cosine betas, then (by default) everything derived in float32."""
    betas = torch.from_numpy(cosine_betas(n_timesteps, s, max_beta))
    return Schedule.from_betas(betas.float() if float32 else betas)
