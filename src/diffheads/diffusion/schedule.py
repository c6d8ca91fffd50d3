"""Noise schedules and timestep respacing (Nichol & Dhariwal 2021, "Improved DDPM")."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from diffheads.config import TimestepSpacing


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


def trailing_timesteps(n_timesteps: int, n_steps: int) -> list[int]:
    """Keep round(T k / n) - 1 for k = 1..n (ascending, rounded half up in integers): T-1 is the top and the last
    step jumps to the clean frame (the "trailing" spacing of Lin et al. 2024, "Common diffusion noise schedules
    and sample steps are flawed").

    Point 2k of the 2n grid is point k of the n grid, exactly (the integer formula has the same value for k/n and
    2k/2n), so an n-step grid is every other point of the 2n-step grid: what progressive distillation needs.
    """
    if not 1 <= n_steps <= n_timesteps:
        raise ValueError(f"steps must be in [1, {n_timesteps}], got {n_steps}")
    return [(2 * n_timesteps * k + n_steps) // (2 * n_steps) - 1 for k in range(1, n_steps + 1)]


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
        beta: torch.Tensor,
        timesteps: torch.Tensor | None = None,
        alpha_bar: torch.Tensor | None = None,
        exact_alpha_bar: bool = False,
    ) -> Schedule:
        """Derive every array from betas in the betas' own dtype (float32 reproduces the reference).

        A respaced process also passes the kept alpha_bar: the reference's cumulative product of
        the respaced betas underflows to 0 in float32 when few steps are kept (the last beta rounds
        to 1), so there the kept value is used instead. With `exact_alpha_bar` the kept values are
        used everywhere (no cumulative product), so every grid has the full schedule's values.
        """
        alpha = 1.0 - beta
        product = torch.cumprod(alpha, dim=0)
        if alpha_bar is None:
            alpha_bar = product
        elif not exact_alpha_bar:
            alpha_bar = torch.where(product > 0, product, alpha_bar)
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

    def _check_full(self) -> None:
        if self.n_steps != len(self.timesteps) or not torch.equal(self.timesteps, torch.arange(self.n_steps)):
            raise ValueError("respace a full (unspaced) schedule")

    def respace(self, n_steps: int, spacing: TimestepSpacing = TimestepSpacing.REFERENCE) -> Schedule:
        """Keep `n_steps` steps; new beta_k = 1 - abar[kept_k] / abar[kept_(k-1)] (Improved DDPM, sec. 4).

        `reference` spacing keeps them evenly spaced with the reference's arithmetic; `trailing` is `keep` of
        trailing_timesteps.
        """
        if TimestepSpacing(spacing) == TimestepSpacing.TRAILING:
            return self.keep(trailing_timesteps(self.n_steps, n_steps))
        self._check_full()
        kept = respaced_timesteps(self.n_steps, n_steps)
        abar = self.alpha_bar[kept]
        prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
        return Schedule.from_betas(1.0 - abar / prev, torch.tensor(kept, dtype=torch.int64), abar)

    def keep(self, timesteps: list[int]) -> Schedule:
        """The process restricted to `timesteps` (strictly increasing), alpha_bar exactly the full schedule's there.

        Position 0 steps to the clean frame (alpha_bar_prev = 1), position k to timesteps[k-1].
        """
        self._check_full()
        kept = [int(t) for t in timesteps]
        if not kept or any(b <= a for a, b in zip(kept, kept[1:])) or kept[0] < 0 or kept[-1] >= self.n_steps:
            raise ValueError(f"timesteps must increase strictly within [0, {self.n_steps - 1}], got {kept}")
        abar = self.alpha_bar[kept]
        prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
        return Schedule.from_betas(1.0 - abar / prev, torch.tensor(kept, dtype=torch.int64), abar, exact_alpha_bar=True)


def cosine_schedule(
    n_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999, float32: bool = True
) -> Schedule:
    """The reference schedule: float64 cosine betas, then (by default) everything derived in float32."""
    betas = torch.from_numpy(cosine_betas(n_timesteps, s, max_beta))
    return Schedule.from_betas(betas.float() if float32 else betas)
