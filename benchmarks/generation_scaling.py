"""Generation throughput of `diffheads generate` with 1 process against N processes (Lightning's launcher).

Makes a synthetic test set (default 16 clips of 2 s at 32 px) and a randomly initialised network
of the demo's size (configs/demo.yaml, or --config; speed does not depend on the weights), then runs the real
command line side by side: once with 1 process, once with `--devices N`, every process with 1 torch
thread (OMP_NUM_THREADS=1), the two runs alternated `--rounds` times so a change of machine load
hits both. Reported: clips/s of the sampling itself (the `seconds` generate prints: from the moment
every rank is ready to the last video written) and of the whole command (start-up, process launch
and model loading included), and whether the N-process videos equal the 1-process ones frame for frame.

Usage: python benchmarks/generation_scaling.py [--clips 16] [--seconds 2] [--steps 10] [--devices 2] [--rounds 2]
(results go to benchmarks/results/generation_scaling.json; on a GPU machine pass --device cuda)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffheads.prepare.embed import embed_dataset
from diffheads.audio.encoders import LogMelEncoder
from diffheads.checkpoint import save_model
from diffheads.config import load_config
from diffheads.io.video import read_video
from diffheads.models.unet import UNet
from diffheads.synth.dataset import make_synthetic_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "diffheads" / "configs"


def make_inputs(root: Path, clips: int, seconds: float, size: int, config: str) -> tuple[Path, Path]:
    """A synthetic test split of `clips` clips with log-mel embeddings, and a random model of `config`'s size."""
    data = root / "data"
    make_synthetic_dataset(data, n_train_identities=1, n_test_identities=clips, clips_per_identity=1,
                           seconds=seconds, size=size, progress=False)
    encoder = LogMelEncoder()
    embed_dataset(data, None, encoder, splits=("test",), progress=False)
    cfg = load_config(CONFIGS / f"{config}.yaml", [f"model.image_size={size}", f"model.audio_dim={encoder.dim}"])
    torch.manual_seed(0)
    return data, save_model(root / "model.ckpt", UNet(cfg.model), cfg, encoder.describe())


def generate(model: Path, data: Path, out: Path, devices: int, steps: int, batch: int, device: str) -> dict:
    """Run `diffheads generate` in a fresh process; its JSON result plus the command's wall time."""
    cmd = [sys.executable, "-m", "diffheads.cli", "generate", "--checkpoint", str(model), "--data", str(data),
           "--out", str(out), "--devices", str(devices), "--steps", str(steps), "--batch-size", str(batch),
           "--solver", "ddim", "--device", device, "--quiet", "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return {**json.loads(proc.stdout), "wall_s": wall}


def same_videos(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a) for p in a.rglob("*.mp4"))
    return names == sorted(p.relative_to(b) for p in b.rglob("*.mp4")) and all(
        np.array_equal(read_video(a / n)[0], read_video(b / n)[0]) for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each clip")
    parser.add_argument("--size", type=int, default=32, help="frame side (the demo model's)")
    parser.add_argument("--config", default="demo", help="packaged config giving the network's size (demo, crema, ...)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps per frame")
    parser.add_argument("--batch-size", type=int, default=2, help="clips sampled together")
    parser.add_argument("--devices", type=int, default=2, help="processes of the parallel run")
    parser.add_argument("--rounds", type=int, default=2, help="times each run is repeated, alternating")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    parser.add_argument("--json", default="benchmarks/results/generation_scaling.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, model = make_inputs(root, args.clips, args.seconds, args.size, args.config)
        runs: dict[int, list[dict]] = {1: [], args.devices: []}
        for _ in range(args.rounds):
            for n in runs:
                runs[n].append(generate(model, data, root / f"out{n}", n, args.steps, args.batch_size, args.device))
        identical = same_videos(root / "out1", root / f"out{args.devices}")
    best = {n: {"seconds": min(r["seconds"] for r in rs), "wall_s": min(r["wall_s"] for r in rs)}
            for n, rs in runs.items()}
    one, many = best[1], best[args.devices]
    result = {
        "benchmark": "generation_scaling",
        "machine": (f"{torch.cuda.get_device_name(0)}" if args.device.startswith("cuda") else
                    f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"),
        "date": time.strftime("%Y-%m-%d"),
        "command": ("python benchmarks/generation_scaling.py " + " ".join(sys.argv[1:])).strip(),
        "input": (f"{args.clips} clips x {args.seconds} s ({round(args.seconds * 25)} frames) at {args.size} px, "
                  f"configs/{args.config}.yaml network (random weights), DDIM {args.steps} steps, batch {args.batch_size}, "
                  f"1 torch thread per process, best of {args.rounds}"),
        "processes": args.devices,
        "one_process": {**{k: round(v, 2) for k, v in one.items()}, "clips_per_s": round(args.clips / one["seconds"], 3)},
        "n_processes": {**{k: round(v, 2) for k, v in many.items()},
                        "clips_per_s": round(args.clips / many["seconds"], 3)},
        "scaling": round(one["seconds"] / many["seconds"], 2),
        "scaling_whole_command": round(one["wall_s"] / many["wall_s"], 2),
        "identical_videos": identical,
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    print(f"generation: {args.devices} processes x{result['scaling']} the clips/s of 1 "
          f"(whole command x{result['scaling_whole_command']}); identical videos: {identical}", file=sys.stderr)
    if not identical:
        raise SystemExit("the parallel run wrote other videos than the single process")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
