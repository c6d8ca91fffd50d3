"""The conditioning of one denoising call, carried as one typed structure (STYLE rule 3)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Conditioning:
    """Everything a frame is conditioned on; each layer reads only the field it needs.

    identity_frame: (B, 3, H, W) in [-1, 1].
    motion_frames: (B, n_motion_frames * motion_channels, H, W), oldest frame first.
    audio_window: (B, 2k + 1, audio_dim), rows t-k .. t+k.
    mouth_landmarks: (B, 20, 2) mouth points 48..67 of the target frame, pixel (x, y); training only.
    mouth_shape: (B, 20, 2) the mouth shape to sketch (models/mouth_sketch.py) in place of the one the network's
        audio head predicts; training only (teacher forcing), None otherwise.
    """

    identity_frame: torch.Tensor
    motion_frames: torch.Tensor
    audio_window: torch.Tensor
    mouth_landmarks: torch.Tensor | None = None
    mouth_shape: torch.Tensor | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Conditioning:
        """Move every tensor field (landmarks keep their dtype)."""
        move = (lambda x: x.to(device, dtype)) if dtype is not None else (lambda x: x.to(device))
        return Conditioning(
            identity_frame=move(self.identity_frame),
            motion_frames=move(self.motion_frames),
            audio_window=move(self.audio_window),
            mouth_landmarks=None if self.mouth_landmarks is None else self.mouth_landmarks.to(device),
            mouth_shape=None if self.mouth_shape is None else move(self.mouth_shape),
        )

    def repeat(self, n: int) -> Conditioning:
        """Repeat along the batch axis (used by tests and classifier-free tricks)."""
        rep = lambda x: None if x is None else x.repeat_interleave(n, dim=0)  # noqa: E731
        return replace(
            self,
            identity_frame=rep(self.identity_frame),
            motion_frames=rep(self.motion_frames),
            audio_window=rep(self.audio_window),
            mouth_landmarks=rep(self.mouth_landmarks),
            mouth_shape=rep(self.mouth_shape),
        )
