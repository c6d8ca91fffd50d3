"""The demos' steps on stderr: progress bars on a terminal; elsewhere (a log, CI) a few plain lines per step."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from diffheads.training.progress import format_duration, progress_interval, stderr_is_terminal

T = TypeVar("T")


class DemoSteps:
    """Runs and times a demo's steps; off a terminal, says as each starts and ends and that it is still running."""

    def __init__(self, progress: bool = True, prefix: str = "diffheads demo") -> None:
        terminal = stderr_is_terminal()
        # the steps draw their bars only on a terminal: off one every redraw of a bar becomes a line of the log
        self.bars = progress and terminal
        self.lines = progress and not terminal
        self.interval = progress_interval()
        self.prefix = prefix

    def run(
        self, what: str, fn: Callable[..., T], *args: Any, own_progress: bool = False, **kwargs: Any
    ) -> tuple[T, float]:
        """(fn(*args, **kwargs), its seconds); `own_progress`: fn reports progress itself (training), no still-running lines."""
        self.say(f"{what} ...")
        stop = threading.Event()
        beat = None
        if self.lines and not own_progress and self.interval > 0:
            beat = threading.Thread(target=self._still_running, args=(what, stop), daemon=True)
            beat.start()
        start = time.perf_counter()
        try:
            out = fn(*args, **kwargs)
        finally:
            seconds = time.perf_counter() - start
            stop.set()
            if beat is not None:
                beat.join()
        self.say(f"{what}: done in {format_duration(seconds)}")
        return out, seconds

    def say(self, line: str) -> None:
        """One line on stderr, off a terminal only (a terminal has the bars)."""
        if self.lines:
            print(f"{self.prefix}: {line}", file=sys.stderr, flush=True)

    def _still_running(self, what: str, stop: threading.Event) -> None:
        start = time.monotonic()
        while not stop.wait(self.interval):
            self.say(f"{what}: still running, {format_duration(time.monotonic() - start)} so far")
