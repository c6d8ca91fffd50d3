"""Periodic sample videos during training: a held-out clip, real next to generated."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from diffheads.config import RunConfig
from diffheads.data.dataset import TalkingFaceDataset
from diffheads.diffusion.gaussian import GaussianDiffusion
from diffheads.diffusion.video import sample_video


class SampleVideos(L.Callback):
    """Every N steps, sample the first frames of one held-out clip and write real|generated side by side."""

    def __init__(self, data: TalkingFaceDataset, out_dir: Path, every: int, n_frames: int, cfg: RunConfig):
        self.data, self.out_dir, self.every, self.n_frames, self.cfg = data, out_dir, every, n_frames, cfg

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every or not trainer.is_global_zero:
            return
        from diffheads.io.video import write_video
        from diffheads.sample.runtime import to_uint8

        clip = self.data.clip(0)
        n = min(self.n_frames, clip.n)
        sample = dataclasses.replace(self.cfg.sample, max_frames=n)
        process = GaussianDiffusion.from_config(self.cfg.diffusion).with_steps(sample.steps)
        net = pl_module.sampling_network()
        was_training = net.training
        net.eval()
        device = pl_module.device
        generator = torch.Generator(device=device).manual_seed(self.cfg.trainer.seed)
        fake = sample_video(
            net,
            process,
            clip.frames[:1].to(device),
            [clip.audio_emb[:n].to(device)],
            self.cfg.model,
            sample,
            generator,
            motion_blur=self.cfg.data.motion_blur,
            progress=False,
        )[0]
        net.train(was_training)
        both = np.concatenate([to_uint8(clip.frames[:n]), to_uint8(fake)], axis=2)
        write_video(self.out_dir / f"step{step:07d}.mp4", both, fps=25)
