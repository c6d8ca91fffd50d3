"""What a person sees on stderr: training progress (bar or plain lines) and no library tips, banners or warnings."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diffheads.config import RunConfig, load_config
from diffheads.errors import DiffheadsError
from diffheads.training import progress as progress_module
from diffheads.training.progress import INTERVAL_ENV, TrainingProgress, format_duration, progress_interval
from diffheads.training.train import train
from runcli import run_cli
from tiny import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
TINY = [
    *TINY_MODEL,
    "trainer.max_steps=2",
    "trainer.max_epochs=10",
    "trainer.log_every_n_steps=1",
    "trainer.checkpoint_every_n_steps=100",
    "trainer.sample_every_n_steps=0",
    "optim.batch_size=4",
    "optim.ema_decay=0.9",  # the EMA copy is in eval mode: Lightning's "module(s) in eval mode" warning fires
    "data.examples_per_clip=4",
]
PROGRESS = re.compile(r"^train: step (\d+)/2  loss [0-9.e+-]+  [0-9.e+-]+ steps/s  time left \d+s$")
DONE = re.compile(r"^train: step 2/2  loss [0-9.e+-]+  [0-9.e+-]+ steps/s  done in \d+s$")
CHATTER = ("Tip", "GPU available", "TPU available", "eval mode", "deprecated", "Trainer.fit", "LOCAL_RANK", "Epoch")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("terminal") / "data"
    run_cli(
        "synth",
        str(root),
        "--train-identities",
        "2",
        "--test-identities",
        "1",
        "--clips-per-identity",
        "1",
        "--seconds",
        "1.2",
        "--size",
        "16",
        "--quiet",
    )
    run_cli("embed", str(root), "--quiet")
    return root


def _config(data: Path, out: Path) -> RunConfig:
    return load_config(REPO / "configs" / "demo.yaml", [f"data.root={data}", f"trainer.out_dir={out}", *TINY])


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def lightning_chatter() -> Iterator[list[str]]:
    """Lightning's log messages below WARNING and its (or any deprecation) warnings raised inside, as text."""
    # in-process, pytest keeps log records and warnings off stderr: they are collected here directly
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    chatter: list[str] = []
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # raised again even when an earlier test raised them already
            yield chatter
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    chatter += [r.getMessage() for r in handler.records if r.levelno < logging.WARNING]
    chatter += [
        f"{w.filename}: {w.message}"
        for w in caught
        if f"{os.sep}lightning" in w.filename
        or "eval mode" in str(w.message)
        or issubclass(w.category, (DeprecationWarning, FutureWarning))
    ]


def test_training_shows_progress_lines_and_no_library_chatter(data, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")  # a line after every step
    with lightning_chatter() as chatter:
        result = train(_config(data, tmp_path / "run"))
    err = capfd.readouterr().err
    assert result.steps == 2
    lines = err.splitlines()
    assert [m.group(1) for m in map(PROGRESS.match, lines) if m] == ["1"], err  # step 2 is the final line
    assert DONE.match(lines[-1]), err
    assert len(lines) == 2, err  # nothing else: no tips, banners, Lightning bar or warnings
    assert chatter == []


def test_quiet_training_prints_nothing(data, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    with lightning_chatter() as chatter:
        assert train(_config(data, tmp_path / "run"), progress=False).steps == 2
    assert capfd.readouterr().err == ""
    assert chatter == []


def test_train_command_off_a_terminal(data, tmp_path):
    """`diffheads train` with stderr to a pipe (a log file, CI): our progress lines and nothing else."""
    proc = subprocess.run(
        [sys.executable, "-m", "diffheads.cli", "train", "configs/demo.yaml", f"data.root={data}"]
        + [f"trainer.out_dir={tmp_path / 'run'}", *TINY],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), INTERVAL_ENV: "0"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert not [line for line in lines if any(word in line for word in CHATTER)], proc.stderr
    assert len(lines) == 2 and PROGRESS.match(lines[0]) and DONE.match(lines[1]), proc.stderr


class _Timer:
    def __init__(self, left: float) -> None:
        self.left = left

    def time_remaining(self) -> float:
        return self.left


def _fake_trainer(total: float) -> SimpleNamespace:
    return SimpleNamespace(is_global_zero=True, global_step=0, estimated_stepping_batches=total, callbacks=[])


def test_time_left_is_the_sooner_of_the_step_and_time_limits(capsys, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    progress = TrainingProgress(interval=30, bar=False)
    trainer = _fake_trainer(3000)
    progress.on_train_start(trainer, None)
    progress._timer = _Timer(600.0)  # trainer.max_time: 10 minutes left
    for step in range(1, 61):  # 2 steps/s
        clock[0] += 0.5
        trainer.global_step = step
        progress.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.25)}, None, step)
    # 2,940 steps at 2 steps/s would take 24m30s, the time limit stops training in 10 minutes
    assert capsys.readouterr().err == "train: step 60/3000  loss 0.25  2 steps/s  time left 10m00s\n"
    progress._timer = _Timer(3600.0)
    clock[0] += 30
    trainer.global_step = 120
    progress.on_train_batch_end(trainer, None, torch.tensor(0.5), None, 120)
    assert "time left 24m00s" in capsys.readouterr().err  # 2,880 steps at 2 steps/s, before the hour is out


def test_bar_on_a_terminal(capsys):
    progress = TrainingProgress(bar=True)
    trainer = _fake_trainer(4)
    progress.on_train_start(trainer, None)
    for step in range(1, 5):
        trainer.global_step = step
        progress.on_train_batch_end(trainer, None, torch.tensor(0.125), None, step)
    progress.on_train_end(trainer, None)
    final = capsys.readouterr().err.split("\r")[-1]
    assert final.startswith("train: 100%|") and "4/4" in final
    assert "loss 0.125" in final and "steps/s" in final and "done in" in final


def test_interval_and_durations(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert progress_interval() == 30
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert progress_interval() == 2.5
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(DiffheadsError, match=INTERVAL_ENV):
        progress_interval()
    assert [format_duration(s) for s in (0.4, 59, 860, 7500)] == ["0s", "59s", "14m20s", "2h05m"]
