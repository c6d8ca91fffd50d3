"""LightningModule: receives a built UNet, trains it with the hybrid diffusion loss."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch

from diffheads.conditioning import Conditioning
from diffheads.config import RunConfig, to_dict
from diffheads.diffusion.gaussian import GaussianDiffusion


def conditioning_of(batch: dict[str, Any]) -> Conditioning:
    """The Conditioning of a collated training batch."""
    return Conditioning(
        identity_frame=batch["identity_frame"],
        motion_frames=batch["motion_frames"],
        audio_window=batch["audio_window"],
        mouth_landmarks=batch.get("mouth_landmarks"),
    )


class DiffusionModule(L.LightningModule):
    """Training wrapper; `unet` is the network, `ema_unet` its moving average when enabled."""

    def __init__(self, unet: torch.nn.Module, cfg: RunConfig, audio_encoder: dict[str, Any] | None = None):
        super().__init__()
        self.cfg = cfg
        self.save_hyperparameters({"config": to_dict(cfg), "audio_encoder": audio_encoder or {}})
        self.unet = unet
        self.diffusion = GaussianDiffusion.from_config(cfg.diffusion)
        self.ema_unet = None
        if cfg.optim.ema_decay > 0:
            self.ema_unet = copy.deepcopy(unet).eval().requires_grad_(False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.unet(x_t, t, cond)

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Hybrid loss of one batch at uniformly drawn timesteps."""
        x0 = batch["target"]
        if self.diffusion.schedule.beta.device != x0.device:
            self.diffusion = self.diffusion.to(x0.device)
        idx = torch.randint(0, self.diffusion.n_steps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        xt = self.diffusion.q_sample(x0, idx, noise)
        cond = conditioning_of(batch)
        out = self.unet(xt, self.diffusion.model_timesteps(idx), cond)
        return self.diffusion.training_losses(out, x0, xt, noise, idx, cond.mouth_landmarks)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.compute_losses(batch)
        bs = batch["target"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=False, batch_size=bs, sync_dist=False)
        self.log("loss", losses["loss"].detach(), prog_bar=True, batch_size=bs, logger=False)
        return losses["loss"]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # EMA right after the weight update, so checkpoints written in the same step include it
        super().optimizer_step(*args, **kwargs)
        if self.ema_unet is None:
            return
        decay = self.cfg.optim.ema_decay
        with torch.no_grad():
            for ema, p in zip(self.ema_unet.parameters(), self.unet.parameters()):
                ema.lerp_(p.detach(), 1.0 - decay)

    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        opt = torch.optim.Adam(self.unet.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        every = o.lr_decay_every or max(1, self.cfg.trainer.max_epochs // 18)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=every, gamma=o.lr_decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def sampling_network(self) -> torch.nn.Module:
        """The weights to sample with: the EMA copy when there is one."""
        return self.ema_unet if self.ema_unet is not None else self.unet
