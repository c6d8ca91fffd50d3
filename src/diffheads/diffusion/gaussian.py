"""Gaussian diffusion maths: forward process, learned-range posterior, hybrid loss (Improved DDPM).

The network never sees the schedule (STYLE rule 1): it maps (x_t, t, cond) to 6 channels; this
module turns them into a predicted noise, x0, mean and variance.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from diffheads.config import DiffusionConfig, Prediction
from diffheads.diffusion import target as diffused
from diffheads.diffusion.schedule import Schedule, cosine_schedule


def _at(arr: torch.Tensor, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """arr[idx] broadcast to the shape of `like` (B, C, H, W), in like's dtype."""
    out = arr.to(like.device)[idx.to(like.device)].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Tanh approximation of the standard normal CDF used by the reference decoder (Ho et al. 2020)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) of 8-bit data in [-1, 1] under a Gaussian integrated over each bin (Ho et al. 2020, eq. 13)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def mouth_box_mask(mouth_landmarks: torch.Tensor, height: int, width: int, padding: int) -> torch.Tensor:
    """(B, 1, H, W) mask of the mouth box: floor(min)-pad .. ceil(max)+pad of the (x, y) points, clipped."""
    lo = torch.floor(mouth_landmarks.amin(dim=1)).long() - padding  # (B, 2) as (x, y)
    hi = torch.ceil(mouth_landmarks.amax(dim=1)).long() + padding
    cols = torch.arange(width, device=mouth_landmarks.device)
    rows = torch.arange(height, device=mouth_landmarks.device)
    in_x = (cols[None] >= lo[:, :1]) & (cols[None] < hi[:, :1])  # (B, W)
    in_y = (rows[None] >= lo[:, 1:]) & (rows[None] < hi[:, 1:])  # (B, H)
    return (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)


def lip_loss(
    target: torch.Tensor, prediction: torch.Tensor, mouth_landmarks: torch.Tensor, padding: int
) -> torch.Tensor:
    """Mean over the batch of the per-sample MSE inside the mouth box (SPEC lip loss)."""
    mask = mouth_box_mask(mouth_landmarks, target.shape[-2], target.shape[-1], padding).to(target.dtype)
    sq = ((target - prediction) ** 2 * mask).sum(dim=(1, 2, 3))
    count = (mask.sum(dim=(1, 2, 3)) * target.shape[1]).clamp(min=1.0)
    return (sq / count).mean()


class GaussianDiffusion:
    """One discrete diffusion process (full or respaced) and its losses and posteriors."""

    def __init__(self, schedule: Schedule, cfg: DiffusionConfig):
        self.schedule = schedule
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> GaussianDiffusion:
        """The full process of `cfg` (cosine schedule)."""
        schedule = cosine_schedule(cfg.n_timesteps, cfg.cosine_s, cfg.max_beta, float32=cfg.legacy_float32_schedule)
        return cls(schedule, cfg)

    def respace(self, n_steps: int) -> GaussianDiffusion:
        """The same process restricted to `n_steps` steps, chosen by `diffusion.timestep_spacing`."""
        return GaussianDiffusion(self.schedule.respace(n_steps, self.cfg.timestep_spacing), self.cfg)

    def keep(self, timesteps: list[int]) -> GaussianDiffusion:
        """The same process restricted to the given (strictly increasing) timesteps; see Schedule.keep."""
        return GaussianDiffusion(self.schedule.keep(timesteps), self.cfg)

    def to(self, device: torch.device | str) -> GaussianDiffusion:
        """This process with its schedule on `device`, so sampling and training loops make no host copies."""
        arrays = {f.name: getattr(self.schedule, f.name).to(device) for f in dataclasses.fields(self.schedule)}
        return GaussianDiffusion(dataclasses.replace(self.schedule, **arrays), self.cfg)

    def with_steps(self, n_steps: int) -> GaussianDiffusion:
        """This process respaced to `n_steps` (itself when that keeps every step)."""
        return self if n_steps >= self.n_steps else self.respace(n_steps)

    @property
    def x0_bound(self) -> float:
        """The largest |x0| of the diffused signal (1 for frames in [-1, 1]; see diffusion/target.py)."""
        return diffused.bound(self.cfg)

    @property
    def n_steps(self) -> int:
        """Number of positions of this process."""
        return self.schedule.n_steps

    def model_timesteps(self, idx: torch.Tensor) -> torch.Tensor:
        """Original time values the network sees at positions `idx`."""
        return self.schedule.timesteps.to(idx.device)[idx]

    def q_sample(self, x0: torch.Tensor, idx: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar) x0 + sqrt(1 - abar) eps (Ho et al. 2020, eq. 4)."""
        abar = _at(self.schedule.alpha_bar, idx, x0)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log variance of q(x_{t-1} | x_t, x0) (eq. 6-7)."""
        s = self.schedule
        mean = _at(s.coef1_q, idx, xt) * x0 + _at(s.coef2_q, idx, xt) * xt
        return mean, _at(s.log_beta_tilde_clipped, idx, xt).expand_as(xt)

    def split_output(self, model_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean half, variance half or None) of the network output."""
        if self.cfg.learn_sigma:
            return model_out[:, :3], model_out[:, 3:6]
        return model_out[:, :3], None

    def predict_eps_x0(
        self, pred: torch.Tensor, xt: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) implied by the mean half of the output under the configured prediction type."""
        s = self.schedule
        abar = _at(s.alpha_bar, idx, xt)
        if self.cfg.prediction == Prediction.EPS:
            return pred, _at(s.coef1_x0, idx, xt) * xt - _at(s.coef2_x0, idx, xt) * pred
        if self.cfg.prediction == Prediction.V:
            x0 = abar.sqrt() * xt - (1.0 - abar).sqrt() * pred
            eps = (1.0 - abar).sqrt() * xt + abar.sqrt() * pred
            return eps, x0
        eps = (_at(s.coef1_x0, idx, xt) * xt - pred) / _at(s.coef2_x0, idx, xt)
        return eps, pred

    def eps_from_x0(self, x0: torch.Tensor, xt: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """eps = (x_t / sqrt(abar) - x0) / sqrt(1/abar - 1)."""
        s = self.schedule
        return (_at(s.coef1_x0, idx, xt) * xt - x0) / _at(s.coef2_x0, idx, xt)

    def model_log_variance(self, var_out: torch.Tensor | None, xt: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Learned range: log sigma^2 = f log beta + (1 - f) log beta_tilde, f = (v + 1) / 2 (Improved DDPM eq. 15)."""
        s = self.schedule
        if var_out is None:  # fixed small variance
            return _at(s.log_beta_tilde_clipped, idx, xt).expand_as(xt)
        frac = (var_out + 1.0) / 2.0
        return frac * _at(torch.log(s.beta), idx, xt) + (1.0 - frac) * _at(s.log_beta_tilde_clipped, idx, xt)

    def p_mean_variance(
        self, model_out: torch.Tensor, xt: torch.Tensor, idx: torch.Tensor, clip_denoised: bool = True
    ) -> dict[str, torch.Tensor]:
        """Mean, log variance, x0 and eps of p(x_{t-1} | x_t) from the network output."""
        pred, var_out = self.split_output(model_out)
        eps, x0 = self.predict_eps_x0(pred, xt, idx)
        if clip_denoised:
            x0 = x0.clamp(-self.x0_bound, self.x0_bound)
        mean, _ = self.q_posterior(x0, xt, idx)
        return {"mean": mean, "log_variance": self.model_log_variance(var_out, xt, idx), "x0": x0, "eps": eps}

    def vlb_terms(
        self, model_out: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, idx: torch.Tensor, clip_denoised: bool = True
    ) -> torch.Tensor:
        """Per-sample variational bound in bits per dimension: KL(q || p) for t > 0, decoder NLL at t = 0 (eq. 5)."""
        true_mean, true_logvar = self.q_posterior(x0, xt, idx)
        p = self.p_mean_variance(model_out, xt, idx, clip_denoised)
        kl = normal_kl(true_mean, true_logvar, p["mean"], p["log_variance"]).mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])
        nll = nll.mean(dim=(1, 2, 3)) / math.log(2.0)
        return torch.where(idx.to(xt.device) == 0, nll, kl)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """What the mean half should output: eps, v or x0."""
        if self.cfg.prediction == Prediction.EPS:
            return noise
        if self.cfg.prediction == Prediction.X0:
            return x0
        abar = _at(self.schedule.alpha_bar, idx, x0)
        return abar.sqrt() * noise - (1.0 - abar).sqrt() * x0

    def training_losses(
        self,
        model_out: torch.Tensor,
        x0: torch.Tensor,
        xt: torch.Tensor,
        noise: torch.Tensor,
        idx: torch.Tensor,
        mouth_landmarks: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Hybrid loss: MSE(target, pred) + vlb_weight * VLB (mean detached) + lip_loss_weight * lip MSE."""
        pred, var_out = self.split_output(model_out)
        target = self.training_target(x0, noise, idx)
        mse = F.mse_loss(pred, target)
        losses = {"mse": mse}
        total = mse
        if var_out is not None and self.cfg.vlb_weight > 0:
            frozen = torch.cat([pred.detach(), var_out], dim=1)
            vlb = self.vlb_terms(frozen, x0, xt, idx).mean()
            losses["vlb"] = vlb
            total = total + self.cfg.vlb_weight * vlb
        if mouth_landmarks is not None and self.cfg.lip_loss_weight > 0:
            padding = max(1, round(self.cfg.lip_padding * x0.shape[-1] / 128))
            lip = lip_loss(target, pred, mouth_landmarks, padding)
            losses["lip"] = lip
            total = total + self.cfg.lip_loss_weight * lip
        losses["loss"] = total
        return losses
