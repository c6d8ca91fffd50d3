"""LightningModule: receives a built UNet, trains it with the hybrid diffusion loss."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from diffheads.conditioning import Conditioning
from diffheads.config import NonFinite, RunConfig, to_dict
from diffheads.data.sampler import derive_seed
from diffheads.diffusion import target as diffused
from diffheads.diffusion.gaussian import GaussianDiffusion
from diffheads.errors import DiffheadsError
from diffheads.models.mouth_sketch import mouth_shape


def conditioning_of(batch: dict[str, Any]) -> Conditioning:
    """The Conditioning of a collated training batch."""
    return Conditioning(
        identity_frame=batch["identity_frame"],
        motion_frames=batch["motion_frames"],
        audio_window=batch["audio_window"],
        mouth_landmarks=batch.get("mouth_landmarks"),
    )


def with_base_frame(unet: torch.nn.Module, cond: Conditioning) -> Conditioning:
    """`cond` with, for a model.mouth_bank network, the identity frame replaced by its base frame for the target
    frame's true mouth shape (models/mouth_bank.py); unchanged otherwise."""
    if not getattr(getattr(unet, "cfg", None), "mouth_bank", 0):  # toy networks in tests carry no config
        return cond
    if cond.mouth_landmarks is None:
        raise DiffheadsError(
            "model.mouth_bank builds each frame on the mouth its landmarks show, but the batch has none; "
            "prepare the data with its lmks/ and set data.use_landmarks=true"
        )
    truth = mouth_shape(cond.mouth_landmarks.to(cond.identity_frame.dtype), cond.identity_frame.shape[-1])
    cond.identity_frame = unet.base_frame(cond.identity_frame, cond.audio_window, truth)
    return cond


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
        self._last_loss = torch.zeros(())  # this step's loss, checked before the update
        self._skip_update = False  # this step's gradients were dropped
        self._skips_in_a_row = 0
        self._skips_total = 0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.unet(x_t, t, cond)

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Hybrid loss of one batch at uniformly drawn timesteps (plus the mouth-shape loss when the head is on)."""
        cond = with_base_frame(self.unet, conditioning_of(batch))
        x0 = diffused.encode(batch["target"], cond.identity_frame, self.cfg.diffusion)
        if self.diffusion.schedule.beta.device != x0.device:
            self.diffusion = self.diffusion.to(x0.device)
        idx = torch.randint(0, self.diffusion.n_steps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        xt = self.diffusion.q_sample(x0, idx, noise)
        shape_loss = self.mouth_shape_loss(cond, x0.shape[-1]) if self.cfg.model.mouth_shape_head else None
        out = self.unet(xt, self.diffusion.model_timesteps(idx), cond)
        losses = self.diffusion.training_losses(out, x0, xt, noise, idx, cond.mouth_landmarks)
        if shape_loss is not None:
            losses["mouth_shape"] = shape_loss
            losses["loss"] = losses["loss"] + self.cfg.diffusion.mouth_shape_weight * shape_loss
        return losses

    def mouth_shape_loss(self, cond: Conditioning, image_size: int) -> torch.Tensor:
        """MSE of the audio head's mouth shape against the target frame's; with a mouth sketch, sets the shape the
        network sketches: the truth for a `sketch_teacher_forcing` share of the examples, else the prediction."""
        if cond.mouth_landmarks is None:
            raise DiffheadsError(
                "model.mouth_shape_head learns from the mouth landmarks, but the batch has none; "
                "prepare the data with its lmks/ and set data.use_landmarks=true"
            )
        predicted = self.unet.mouth_shape(cond.audio_window)
        truth = mouth_shape(cond.mouth_landmarks.to(predicted.dtype), image_size)
        if self.cfg.model.mouth_sketch_centre:
            forced = torch.rand(truth.shape[0], device=truth.device) < self.cfg.diffusion.sketch_teacher_forcing
            cond.mouth_shape = torch.where(forced[:, None, None], truth, predicted.detach())
        return F.mse_loss(predicted, truth)

    @contextlib.contextmanager
    def step_randomness(self) -> Iterator[None]:
        """Draw this step's timesteps, noise and dropout from a generator seeded by (seed, step, rank).

        The global generators are left as they were (fork_rng), so a resumed run draws exactly what
        the uninterrupted run drew at the same step, whatever ran before.
        """
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            seed = derive_seed(self.cfg.trainer.seed, self.global_step, self.global_rank)
            torch.manual_seed(seed)
            yield

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        with self.step_randomness():
            losses = self.compute_losses(batch)
        bs = batch["target"].shape[0]
        self._last_loss = losses["loss"].detach()
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=False, batch_size=bs, sync_dist=False
        )
        self.log("loss", losses["loss"].detach(), prog_bar=True, batch_size=bs, logger=False)
        return losses["loss"]

    def _nonfinite(self) -> tuple[bool, list[str]]:
        """(loss is not finite, names of parameters whose gradient holds a NaN or Inf), with one host sync.

        Under fp16 mixed precision gradients are not checked: the GradScaler skips steps with Inf
        gradients itself, and scaled gradients overflow by design now and then.
        """
        named = (
            []
            if self.trainer.precision.startswith("16")
            else [(n, p.grad) for n, p in self.unet.named_parameters() if p.grad is not None]
        )
        flags = torch.stack([self._last_loss.isfinite(), *(g.isfinite().all() for _, g in named)]).tolist()
        return not flags[0], [n for (n, _), ok in zip(named, flags[1:]) if not ok]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop, or drop this step's update, when the loss or a gradient is not finite (before clipping)."""
        self._skip_update = False
        loss_bad, bad_grads = self._nonfinite()
        if not self.trainer.strategy.reduce_boolean_decision(loss_bad or bool(bad_grads), all=False):
            self._skips_in_a_row = 0
            return
        what = f"the loss is {float(self._last_loss)}" if loss_bad else f"the gradient of {bad_grads[0]} is not finite"
        where = f"at step {self.global_step} (epoch {self.current_epoch})"
        t = self.cfg.trainer
        if t.on_nonfinite == NonFinite.SKIP and self._skips_in_a_row < t.max_nonfinite_skips:
            optimizer.zero_grad(set_to_none=True)  # Adam leaves parameters without gradients untouched
            self._skip_update = True
            self._skips_in_a_row += 1
            self._skips_total += 1
            self.log("train/skipped_steps", float(self._skips_total), batch_size=1)
            return
        last = f"{t.out_dir}/checkpoints/last.ckpt"
        if t.on_nonfinite == NonFinite.SKIP:
            raise DiffheadsError(
                f"{what} {where}, {self._skips_in_a_row} steps in a row were skipped (trainer.max_nonfinite_skips); "
                f"the run diverged: resume from {last} with a lower optim.lr or set optim.grad_clip"
            )
        raise DiffheadsError(
            f"{what} {where}; stopped before updating the weights, no checkpoint was written for this step; "
            f"resume from {last} (trainer.resume=last) with a lower optim.lr or optim.grad_clip, "
            "or set trainer.on_nonfinite=skip"
        )

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # EMA right after the weight update, so checkpoints written in the same step include it
        super().optimizer_step(*args, **kwargs)
        if self.ema_unet is None or self._skip_update:
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
