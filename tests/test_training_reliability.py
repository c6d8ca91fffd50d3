"""Crash-safe training: SIGKILL during a checkpoint write or a step, resume, same losses; NaN handling."""

from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from diffheads.config import load_config
from diffheads.data.sampler import ExampleSampler
from diffheads.errors import DiffheadsError
from diffheads.training import module as module_mod
from diffheads.training.checkpoint_io import AtomicCheckpointIO
from diffheads.training.resume import rng_states, set_rng_states
from diffheads.training.train import train
from runcli import run_cli
from tiny import TINY_MODEL

HERE = Path(__file__).parent
# 4 training clips x 4 examples / batch 4 = 4 batches per epoch; checkpoints at steps 3 and 6 fall mid-epoch.
# Each checkpoint is two writes (stepNNNNNNN.ckpt, then last.ckpt): write 4 is last.ckpt at step 6.
TINY = [
    *TINY_MODEL,
    "model.dropout=0.1",
    "trainer.max_steps=8",
    "trainer.max_epochs=10",
    "trainer.log_every_n_steps=1",
    "trainer.checkpoint_every_n_steps=3",
    "trainer.sample_every_n_steps=0",
    "optim.batch_size=4",
    "optim.lr=1e-3",
    "optim.ema_decay=0.9",
    "data.examples_per_clip=4",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rel") / "data"
    run_cli(
        "synth",
        str(root),
        "--train-identities",
        "2",
        "--test-identities",
        "1",
        "--clips-per-identity",
        "2",
        "--seconds",
        "1.2",
        "--size",
        "16",
        "--quiet",
    )
    run_cli("embed", str(root), "--quiet")
    return root


def _train_process(data: Path, out: Path, *extra: str, kill: tuple[str, int] | None = None) -> int:
    """Run tests/killable_train.py in a fresh process; returns its exit code (-9 when killed)."""
    args = [sys.executable, str(HERE / "killable_train.py")]
    if kill:
        args += [kill[0], str(kill[1])]
    args += ["configs/demo.yaml", f"data.root={data}", f"trainer.out_dir={out}", *TINY, *extra]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=HERE.parent)
    if kill is None or proc.returncode != -signal.SIGKILL:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.returncode


def _losses(run: Path) -> dict[int, float]:
    """step -> logged training loss, over every CSV log of the run (later versions win)."""
    out: dict[int, float] = {}
    for path in sorted(run.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    out[int(row["step"])] = float(row["train/loss"])
    return out


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("rel") / "straight"
    _train_process(data, run)
    return run


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill, resumes_from",
    [(("--kill-in-save", 4), 3), (("--kill-in-step", 7), 6)],
    ids=["during-checkpoint-write", "during-step"],
)
def test_sigkill_then_resume_continues_the_same_loss_curve(data, uninterrupted, tmp_path, kill, resumes_from):
    run = tmp_path / "run"
    assert _train_process(data, run, kill=kill) == -signal.SIGKILL
    ckpts = run / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", weights_only=True)  # complete, and loads without unpickling code
    assert last["global_step"] == resumes_from
    if kill[0] == "--kill-in-save":
        assert list(ckpts.glob(".*.tmp.ckpt")), "the killed write should have left its temporary file"
    _train_process(data, run, "trainer.resume=last")
    assert not list(ckpts.glob(".*.tmp.ckpt")), "the resumed run removes what the crash left"
    straight, resumed = _losses(uninterrupted), _losses(run)
    assert sorted(straight) == list(range(8))
    after = [s for s in range(8) if s >= resumes_from]
    assert [resumed[s] for s in after] == [straight[s] for s in after]  # bit-identical floats
    a = safetensors.torch.load_file(str(uninterrupted / "model.ckpt"))
    b = safetensors.torch.load_file(str(run / "model.ckpt"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # EMA weights too


def test_resume_auto_starts_fresh_without_a_checkpoint(data, tmp_path):
    cfg = load_config(
        "configs/demo.yaml",
        [f"data.root={data}", f"trainer.out_dir={tmp_path / 'r'}", *TINY, "trainer.max_steps=2", "trainer.resume=auto"],
    )
    assert train(cfg).steps == 2


def _nan_at_step(monkeypatch, step: int) -> None:
    real = module_mod.DiffusionModule.compute_losses

    def poisoned(self, batch):
        out = real(self, batch)
        if self.global_step == step:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(module_mod.DiffusionModule, "compute_losses", poisoned)


def test_nan_loss_stops_before_the_update_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch):
    _nan_at_step(monkeypatch, 4)
    run = tmp_path / "nan"
    cfg = load_config("configs/demo.yaml", [f"data.root={data}", f"trainer.out_dir={run}", *TINY])
    with pytest.raises(DiffheadsError, match=r"loss is nan at step 4 .*trainer\.on_nonfinite=skip"):
        train(cfg)
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step0000003.ckpt"] and not (run / "model.ckpt").exists()
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_loss_can_skip_the_step(data, tmp_path, monkeypatch):
    _nan_at_step(monkeypatch, 2)
    seen = {}
    real_step = module_mod.DiffusionModule.optimizer_step

    def record(self, *args, **kwargs):
        before = {k: v.clone() for k, v in self.unet.state_dict().items()}
        real_step(self, *args, **kwargs)
        seen[self.global_step] = all(torch.equal(before[k], v) for k, v in self.unet.state_dict().items())

    monkeypatch.setattr(module_mod.DiffusionModule, "optimizer_step", record)
    run = tmp_path / "skip"
    cfg = load_config(
        "configs/demo.yaml",
        [f"data.root={data}", f"trainer.out_dir={run}", *TINY, "trainer.on_nonfinite=skip", "trainer.max_steps=4"],
    )
    result = train(cfg)
    assert result.steps == 4
    assert seen == {0: False, 1: False, 2: True, 3: False}  # only the poisoned step left the weights alone
    exported = safetensors.torch.load_file(str(run / "model.ckpt"))
    assert all(torch.isfinite(v).all() for v in exported.values())


def test_skip_gives_up_after_too_many_in_a_row(data, tmp_path, monkeypatch):
    monkeypatch.setattr(
        module_mod.DiffusionModule,
        "compute_losses",
        lambda self, batch: {"loss": torch.tensor(float("inf"), requires_grad=True)},
    )
    cfg = load_config(
        "configs/demo.yaml",
        [
            f"data.root={data}",
            f"trainer.out_dir={tmp_path / 'x'}",
            *TINY,
            "trainer.on_nonfinite=skip",
            "trainer.max_nonfinite_skips=3",
        ],
    )
    with pytest.raises(DiffheadsError, match="3 steps in a row were skipped"):
        train(cfg)


def test_checkpoint_io_refuses_nonfinite_weights_and_writes_atomically(tmp_path):
    io = AtomicCheckpointIO()
    good = {"state_dict": {"w": torch.ones(3)}}
    io.save_checkpoint(good, tmp_path / "last.ckpt")
    bad = {"state_dict": {"w": torch.tensor([1.0, float("nan")])}}
    with pytest.raises(DiffheadsError, match="weight w is not finite"):
        io.save_checkpoint(bad, tmp_path / "last.ckpt")
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    saved = rng_states()
    torch.save(saved, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_sampler_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    s = ExampleSampler(10, seed=5)
    s.set_epoch(3)
    epoch3 = list(s)
    assert sorted(i for i, _ in epoch3) == list(range(10)) and len({seed for _, seed in epoch3}) == 10
    s.set_epoch(4)
    assert [i for i, _ in s] != [i for i, _ in epoch3]
    other = ExampleSampler(10, seed=5)
    other.skip_to(3, 4)
    assert list(other) == epoch3[4:]
    assert len(list(other)) == 10  # the skip applies to one iteration only
    # the order does not depend on the global generator
    torch.manual_seed(123)
    s.set_epoch(3)
    assert list(s) == epoch3


def test_sampler_splits_examples_between_ranks(monkeypatch):
    from diffheads.data import sampler as sampler_mod

    parts = []
    for rank in range(3):
        monkeypatch.setattr(sampler_mod, "_rank_and_world", lambda r=rank: (r, 3))
        s = ExampleSampler(10, seed=1)
        assert len(s) == 4
        parts.append([i for i, _ in s])
    every = sum(parts, [])
    assert set(every) == set(range(10)) and len(every) == 12  # all examples; 2 repeated to even out the ranks


def test_examples_do_not_depend_on_loader_workers(data):
    """Worker processes draw nothing of their own: 0 or 2 workers give the same batches."""
    from torch.utils.data import DataLoader

    from diffheads.data.dataset import TalkingFaceDataset

    cfg = load_config("configs/demo.yaml", [f"data.root={data}", *TINY])
    dataset = TalkingFaceDataset(cfg.data, cfg.model, "train", lip_loss=True)

    def batches(workers: int) -> list[dict]:
        sampler = ExampleSampler(len(dataset), seed=7)
        sampler.set_epoch(2)
        return list(DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers))

    a, b = batches(0), batches(2)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    torch.manual_seed(99)  # the global generator plays no part
    assert all(torch.equal(x["target"], y["target"]) for x, y in zip(a, batches(0)))
