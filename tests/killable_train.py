"""Run `diffheads train` in this process and SIGKILL it at a chosen moment (for the crash-resume tests).

    python tests/killable_train.py [--kill-in-save N | --kill-in-step N] CONFIG [overrides ...]

--kill-in-save N: the N-th checkpoint write (1-based) stops half-way through the temporary file.
--kill-in-step N: the process dies inside the training step that will become global step N + 1.
Without either flag the run is an ordinary one.
"""

from __future__ import annotations

import io
import os
import signal
import sys

from diffheads.config import load_config
from diffheads.training import checkpoint_io, module
from diffheads.training.train import train


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_in_save(n: int) -> None:
    real = checkpoint_io.write_checkpoint
    count = {"saves": 0}

    def half_then_die(checkpoint, path):
        count["saves"] += 1
        if count["saves"] < n:
            return real(checkpoint, path)
        buf = io.BytesIO()
        checkpoint_io.torch.save(checkpoint, buf)
        data = buf.getvalue()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        _die()

    checkpoint_io.write_checkpoint = half_then_die


def kill_in_step(n: int) -> None:
    real = module.DiffusionModule.compute_losses

    def losses_then_die(self, batch):
        out = real(self, batch)
        if self.global_step == n:
            _die()
        return out

    module.DiffusionModule.compute_losses = losses_then_die


def main(argv: list[str]) -> None:
    if argv[0] == "--kill-in-save":
        kill_in_save(int(argv[1]))
        argv = argv[2:]
    elif argv[0] == "--kill-in-step":
        kill_in_step(int(argv[1]))
        argv = argv[2:]
    train(load_config(argv[0], argv[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
