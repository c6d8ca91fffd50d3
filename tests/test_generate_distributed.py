"""diffheads generate over several processes (Lightning's launcher, gloo on CPU): each clip once, frames as in one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffheads.diffusion.samplers import randn
from diffheads.distributed import scheduler_layout
from diffheads.io.video import read_video
from diffheads.sample.test_set import clip_seed, plan_batches
from runcli import run_cli
from tiny import tiny_checkpoint

N_CLIPS = 6


def diffheads(*args: str, timeout: float = 300) -> dict:
    """Run the `diffheads` command line in a fresh process (Lightning's launcher re-runs that command line)."""
    proc = subprocess.run(
        [sys.executable, "-m", "diffheads.cli", *args], capture_output=True, text=True, timeout=timeout, env=_env()
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> dict[str, Path]:
    """Six 1-second test clips of two held-out identities, their embeddings, and an untrained tiny model."""
    root = tmp_path_factory.mktemp("gen")
    data = root / "data"
    run_cli(
        "synth",
        str(data),
        "--train-identities",
        "1",
        "--test-identities",
        "2",
        "--clips-per-identity",
        "3",
        "--seconds",
        "1.0",
        "--size",
        "16",
        "--quiet",
    )
    run_cli("embed", str(data), "--quiet")
    model = tiny_checkpoint(root / "model.ckpt", "sample.steps=3")
    common = ["--checkpoint", str(model), "--data", str(data), "--batch-size", "2", "--quiet"]
    one = diffheads("generate", *common, "--out", str(root / "one"))
    assert one.pop("seconds") > 0
    assert one == {"written": N_CLIPS, "skipped": 0, "out": str(root / "one"), "processes": 1}
    return {"root": root, "data": data, "model": model, "one": root / "one", "common": common}


def videos(folder: Path) -> list[Path]:
    """Finished videos (not the hidden temporaries a killed writer leaves)."""
    return sorted(p for p in folder.rglob("*.mp4") if not p.name.startswith("."))


def frames_of(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): read_video(p)[0] for p in videos(folder)}


def assert_same_videos(a: Path, b: Path) -> None:
    fa, fb = frames_of(a), frames_of(b)
    assert sorted(fa) == sorted(fb) and len(fa) == N_CLIPS
    for name in fa:
        assert np.array_equal(fa[name], fb[name]), name


def test_two_processes_write_each_clip_once_with_the_frames_of_one(test_set) -> None:
    out = test_set["root"] / "two"
    res = diffheads("generate", *test_set["common"], "--out", str(out), "--devices", "2")
    # 3 batches over 2 ranks: rank 0 samples two, rank 1 one; a clip written twice would be counted twice
    assert res.pop("seconds") > 0
    assert res == {"written": N_CLIPS, "skipped": 0, "out": str(out), "processes": 2}
    assert_same_videos(test_set["one"], out)
    assert not list(out.rglob(".*tmp*"))


@pytest.mark.slow
def test_torchrun_launch_matches_one_process(test_set) -> None:
    out = test_set["root"] / "torchrun"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517"]
    proc = subprocess.run(
        [*torchrun, "-m", "diffheads.cli", "generate", *test_set["common"], "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["processes"] == 2  # the layout came from torchrun's environment; one JSON line set
    assert_same_videos(test_set["one"], out)


@pytest.mark.slow
def test_srun_launch_matches_one_process(test_set) -> None:
    """Two processes started as srun starts them (SLURM's variables, no --devices): the layout comes from SLURM."""
    out = test_set["root"] / "srun"
    slurm = {
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NAME": "generate",
        "SLURM_JOB_ID": "4242",
        "SLURM_NODELIST": "localhost",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "diffheads.cli", "generate", *test_set["common"], "--out", str(out)],
            env={**_env(), **slurm, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert json.loads(results[0][0])["processes"] == 2 and results[1][0] == ""  # only task 0 prints the result
    assert_same_videos(test_set["one"], out)


@pytest.mark.slow
def test_killed_generation_resumes_with_only_the_missing_clips(test_set) -> None:
    out = test_set["root"] / "killed"
    slow = [*test_set["common"], "--out", str(out), "--devices", "2", "--batch-size", "1", "--steps", "12"]
    cmd = [sys.executable, "-m", "diffheads.cli", "generate", *slow]
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while len(videos(out)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-way
    proc.wait()
    finished = videos(out)
    assert 2 <= len(finished) < N_CLIPS, "the job should have been killed mid-way"
    res = diffheads("generate", *slow)
    assert res["skipped"] == len(finished) and res["written"] == N_CLIPS - len(finished)
    assert not list(out.rglob(".*tmp*"))  # what the killed ranks were writing is gone
    reference = test_set["root"] / "one-12"
    diffheads("generate", *test_set["common"], "--out", str(reference), "--batch-size", "1", "--steps", "12")
    assert_same_videos(reference, out)


def test_batches_are_planned_in_order_whatever_the_ranks() -> None:
    assert plan_batches(5, 2) == [[0, 1], [2, 3], [4]]
    assert plan_batches(0, 3) == []


def test_clip_seed_depends_on_seed_and_clip_only() -> None:
    assert clip_seed(0, "s1/a") == clip_seed(0, "s1/a")
    assert len({clip_seed(0, "s1/a"), clip_seed(1, "s1/a"), clip_seed(0, "s1/b")}) == 3


def test_one_generator_per_row_draws_each_row_alone() -> None:
    gens = [torch.Generator().manual_seed(s) for s in (3, 5)]
    noise = randn((2, 3, 4, 4), gens, torch.device("cpu"))
    alone = [torch.randn((1, 3, 4, 4), generator=torch.Generator().manual_seed(s)) for s in (3, 5)]
    assert torch.equal(noise, torch.cat(alone))


def test_scheduler_layout_from_torchrun_and_slurm_environments() -> None:
    assert scheduler_layout({}) is None
    assert scheduler_layout({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}) == (4, 2)
    assert scheduler_layout({"SLURM_NTASKS": "8", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "gen"}) == (4, 2)
    assert scheduler_layout({"SLURM_NTASKS": "8", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "bash"}) is None
    assert scheduler_layout({"SLURM_NTASKS": "6", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "3(x2)"}) == (3, 2)
