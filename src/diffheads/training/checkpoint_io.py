"""Training checkpoints that are complete or absent: written beside the target, synced, then renamed.

A crash (SIGKILL, power loss, full disk) during a write leaves the previous checkpoint as it was
and at worst a temporary `.NAME.XXXX.tmp.ckpt` file, which the next run removes. A checkpoint
whose weights are not finite is refused, so a diverged run cannot overwrite the last good one.
Checkpoints are read back with `torch.load(weights_only=True)` (see checkpoint.read_checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_path

TEMP_GLOB = ".*.tmp.ckpt"  # what atomic_path names its temporary files for *.ckpt targets


def first_nonfinite(state_dict: dict[str, Any]) -> str | None:
    """Name of the first floating-point tensor with a NaN or Inf, or None."""
    for name, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def write_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    """torch.save into an open file and flush it to the disk (the rename comes after)."""
    with open(path, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files that a crashed run left in a checkpoint folder."""
    removed = []
    for tmp in Path(folder).glob(TEMP_GLOB):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O with atomic, fsynced writes and a refusal to save non-finite weights."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        bad = first_nonfinite(checkpoint.get("state_dict", {}))
        if bad is not None:
            raise DiffheadsError(
                f"refusing to write checkpoint {path}: weight {bad} is not finite (the run diverged); "
                "the previous checkpoint is kept, resume from it with a lower optim.lr or optim.grad_clip"
            )
        path = Path(path)
        with atomic_path(path) as tmp:
            write_checkpoint(checkpoint, tmp)
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
