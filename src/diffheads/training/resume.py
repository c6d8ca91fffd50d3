"""What a checkpoint needs beyond Lightning's own state for a resumed run to continue the same loss curve.

Lightning restores the weights, the EMA copy (a submodule), the optimiser, the scheduler, the
step and the epoch. This callback adds the random number generators (Python, NumPy, torch CPU
and CUDA) and the data position: the epoch and how many of its batches were used, so the
resumed loader skips exactly those (the order itself is a function of the seed and the epoch,
see data.sampler). The per-step randomness of the loss (timesteps, noise, dropout) is drawn
from a generator seeded by (seed, step, rank) in DiffusionModule, so it does not depend on
what ran before either.

States are stored as tensors, lists and numbers, so the checkpoint loads with weights_only=True.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch

from diffheads.data.sampler import ExampleSampler


def rng_states() -> dict[str, Any]:
    """The global generators' states in a weights-only-loadable form."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what rng_states() returned."""
    version, mt, gauss = states["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeState(L.Callback):
    """Saves and restores RNG states and the loader's position in the epoch."""

    def __init__(self, sampler: ExampleSampler, batch_size: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self._position = (0, 0)  # (epoch, batches of it used); updated after every batch

    @property
    def state_key(self) -> str:
        return "diffheads.ResumeState"

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # runs before ModelCheckpoint (Lightning calls checkpoint callbacks last)
        epoch, used = trainer.current_epoch, batch_idx + 1
        if used >= trainer.num_training_batches:
            epoch, used = epoch + 1, 0
        self._position = (epoch, used)

    def state_dict(self) -> dict[str, Any]:
        epoch, used = self._position
        return {"epoch": epoch, "batches_used": used, "rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        epoch, used = int(state_dict["epoch"]), int(state_dict["batches_used"])
        self._position = (epoch, used)
        self.sampler.skip_to(epoch, used * self.batch_size)
        set_rng_states(state_dict["rng"])
