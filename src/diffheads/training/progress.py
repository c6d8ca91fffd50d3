"""What training shows: a progress bar on a terminal, one plain line every ~30 s elsewhere, no library chatter."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from tqdm.auto import tqdm

from diffheads.errors import DiffheadsError

INTERVAL_ENV = "DIFFHEADS_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0  # seconds between progress lines in a log file or CI
# Lightning logs its banners ("GPU available", tips, "`Trainer.fit` stopped") at INFO through these; the
# rank_zero loggers are named explicitly because Lightning re-points its rank-zero helpers at them on import
LIGHTNING_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)
# Warnings attributed to Lightning's own modules: advice about settings our code chooses for the user
# ("module(s) in eval mode": the EMA copy and the teacher are meant to be), and deprecations inside Lightning
LIGHTNING_MODULES = r"(lightning|lightning_fabric|lightning_utilities|pytorch_lightning)(\.|$)"


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal that can draw bars (they redraw in place; in a log every redraw is a line)."""
    try:
        # a pseudo-terminal of width 0 (a container started with -t, `script` without a terminal) shows bars as nothing
        return sys.stderr.isatty() and os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # a replaced, closed or fd-less stream
        return False


def progress_interval() -> float:
    """Seconds between progress lines off a terminal: $DIFFHEADS_PROGRESS_INTERVAL, or 30."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise DiffheadsError(f"{INTERVAL_ENV}={raw!r}: expected seconds between progress lines, a number >= 0")
    return value


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Within it Lightning prints no banners, tips, advice or deprecation notes; its WARNING logs and errors still do."""
    # levels and filters come back on exit: a notebook or program calling train() keeps its own logging settings
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        ignore_lightning_warnings()
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def ignore_lightning_warnings() -> None:
    """Filter out every warning attributed to Lightning's modules (advice, deprecations, "eval mode" notes)."""
    warnings.filterwarnings("ignore", module=LIGHTNING_MODULES)


def format_duration(seconds: float) -> str:
    """45s, 14m20s or 2h05m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _step_loss(outputs: Any) -> torch.Tensor | None:
    """The loss of a training step's outputs (a tensor, or a mapping with "loss"), detached."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return loss.detach() if isinstance(loss, torch.Tensor) else None


class TrainingProgress(L.Callback):
    """Step, loss, steps/s and time left (global rank 0): a bar on a terminal, a line every `interval` s elsewhere."""

    def __init__(self, label: str = "train", interval: float | None = None, bar: bool | None = None) -> None:
        self.label = label
        self.interval = progress_interval() if interval is None else interval
        self.bar = bar  # None: a bar when stderr is a terminal
        self._tqdm: Any = None
        self._total = math.inf
        self._timer: Timer | None = None
        self._start = self._last_shown = 0.0
        self._start_step = 0
        self._loss_sum: torch.Tensor | None = None  # on the device: summed without waiting for it
        self._loss_count = 0
        self._loss: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._start = self._last_shown = time.monotonic()
        self._start_step = trainer.global_step
        self._total = float(trainer.estimated_stepping_batches)
        self._timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if self.bar if self.bar is not None else stderr_is_terminal():
            total = int(self._total) if math.isfinite(self._total) else None
            shape = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}" if total else "{desc}: step {n_fmt}"
            self._tqdm = tqdm(
                total=total,
                initial=self._start_step,
                desc=self.label,
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format=shape + " [{elapsed}{postfix}]",
            )
        elif self._start_step:
            self._write(f"{self.label}: resuming at step {self._step_text(self._start_step)}")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero:
            return
        loss = _step_loss(outputs)
        if loss is not None:
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
        now = time.monotonic()
        if self._tqdm is not None:
            if now - self._last_shown >= 1.0:  # reading the loss waits for the device: once a second at most
                self._last_shown = now
                self._tqdm.set_postfix_str(", ".join(self._stats(trainer.global_step, now)), refresh=False)
            self._tqdm.update(trainer.global_step - self._tqdm.n)
        elif now - self._last_shown >= self.interval and trainer.global_step < self._total:  # the last: on_train_end
            self._last_shown = now
            self._write(
                f"{self.label}: step {self._step_text(trainer.global_step)}", *self._stats(trainer.global_step, now)
            )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        now, step = time.monotonic(), trainer.global_step
        stats = [*self._stats(step, now, left=False), f"done in {format_duration(now - self._start)}"]
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(", ".join(stats), refresh=False)
            self._tqdm.update(step - self._tqdm.n)
            self._close()
        else:
            self._write(f"{self.label}: step {self._step_text(step)}", *stats)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def _step_text(self, step: int) -> str:
        return f"{step}/{int(self._total)}" if math.isfinite(self._total) else str(step)

    def _stats(self, step: int, now: float, left: bool = True) -> list[str]:
        """["loss 0.0412", "2.1 steps/s", "time left 14m20s"]: the loss averaged over the steps since the last call."""
        parts = []
        if self._loss_sum is not None and self._loss_count:
            self._loss = float(self._loss_sum) / self._loss_count
            self._loss_sum, self._loss_count = None, 0
        if self._loss is not None:
            parts.append(f"loss {self._loss:.4g}")
        elapsed = now - self._start
        rate = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{rate:.3g} steps/s")
        remaining = self._time_left(step, rate)
        if left and math.isfinite(remaining):
            parts.append(f"time left {format_duration(remaining)}")
        return parts

    def _time_left(self, step: int, rate: float) -> float:
        """Seconds until the first limit stops training (inf when none is known yet)."""
        # the step limit (max_steps, or max_epochs' batches) at the rate so far, or max_time when it comes sooner:
        # the demos cap training time, so on a slow machine the clock is what ends the run
        by_steps = (self._total - step) / rate if rate > 0 else math.inf
        by_time = self._timer.time_remaining() if self._timer is not None else None
        return min(by_steps, max(0.0, by_time)) if by_time is not None else by_steps

    @staticmethod
    def _write(*parts: str) -> None:
        print("  ".join(parts), file=sys.stderr, flush=True)
