"""Sampling: quality against cost for every solver, and the reference path against the fast path.

On the demo's held-out synthetic clips (train the demo first: `make demo`), with its model:
  1. sweep: for each solver and step count, lip_sync_r (pooled Pearson r of the mouth opening
     measured on generated frames against the true opening) and the mean absolute pixel error
     to the ground-truth frames; the fewest steps whose lip_sync_r is within 0.02 of 200-step
     ancestral DDPM and whose pixel error is at most 5% above its (lip sync alone is reached
     with very few, blurry steps on this data);
  2. speed: time per generated second of video, reference path (ancestral DDPM, 100 steps,
     fp32, einsum attention, one clip at a time) against the fast path (the cheapest solver
     setting of the sweep at equal sync, SDPA attention, all clips in one batch), measured
     side by side in this run, as a ratio, with both paths' lip_sync_r.

Usage: python benchmarks/sampling.py [--checkpoint outputs/demo/model.ckpt] [--data outputs/demo/data]
       [--clips 3] [--frames 40] [--steps 5,10,20,50,100,200] [--solvers ancestral,ddim,dpm++2m,unipc]
       [--skip-sweep --fast SOLVER:STEPS] [--out benchmarks/results/sampling.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffheads.checkpoint import load_model
from diffheads.config import SampleConfig, Solver
from diffheads.data.dataset import SplitClips
from diffheads.data.layout import DataLayout
from diffheads.sample.runtime import sample_clips, to_uint8
from diffheads.metrics.mouth import lip_sync_r, mouth_opening
from diffheads.models.blocks import set_attention

EQUAL_SYNC = 0.02  # "equal lip sync": within this of the 200-step ancestral DDPM
EQUAL_PIXELS = 1.05  # and no more than 5% more pixel error than it, so few steps cannot win on blur


def held_out(model, data_root: str, n_clips: int, one_per_identity: bool = True) -> list[dict]:
    """The first n held-out clips (identity frame, embeddings, truth): one per identity unless `one_per_identity` is off."""
    data_cfg = dataclasses.replace(model.cfg.data, root=data_root, embeddings="")
    clips = SplitClips(data_cfg, model.cfg.model, "test")
    layout = DataLayout.of(data_root)
    chosen, seen = [], set()
    for i in range(len(clips)):
        item = clips[i]
        identity = item["cid"].split("/")[0]
        if one_per_identity and identity in seen:
            continue
        seen.add(identity)
        with np.load(layout.truth(item["cid"])) as truth:
            item["truth"] = truth["mouth_open"].astype(np.float64)
        item["mouth"] = np.load(layout.landmarks(item["cid"]))[:, 48:68, :2].astype(np.float64)
        from diffheads.io.video import read_video

        item["real"] = read_video(layout.video(item["cid"]))[0]
        chosen.append(item)
        if len(chosen) == n_clips:
            break
    return chosen


def run(model, clips: list[dict], sample: SampleConfig, frames: int, batch: int, seed: int = 0) -> dict:
    """Generate the clips (first `frames` frames) in batches; time, lip_sync_r and pixel error."""
    sample = dataclasses.replace(sample, max_frames=frames, batch_size=batch)
    out: list[np.ndarray] = []
    start = time.perf_counter()
    for lo in range(0, len(clips), batch):
        part = clips[lo : lo + batch]
        videos = sample_clips(model, torch.stack([c["identity_frame"] for c in part]),
                              [c["audio_emb"][:frames] for c in part], sample, seed=seed + lo, progress=False)
        out += [to_uint8(v) for v in videos]
    seconds = time.perf_counter() - start
    n_frames = sum(len(v) for v in out)
    measured, truth, errors = [], [], []
    for clip, video in zip(clips, out):
        n = len(video)
        scale = video.shape[2] / clip["real"].shape[2]
        measured.append(mouth_opening(video, clip["mouth"][:n] * scale))
        truth.append(clip["truth"][:n])
        real = clip["real"][:n]
        if real.shape[1:3] == video.shape[1:3]:
            errors.append(np.abs(video.astype(np.float64) - real.astype(np.float64)).mean())
    return {
        "solver": sample.solver.value,
        "steps": sample.steps,
        "batch": batch,
        "lip_sync_r": round(lip_sync_r(measured, truth), 4),
        "pixel_mae": round(float(np.mean(errors)), 3) if errors else None,
        "seconds": round(seconds, 2),
        "seconds_per_video_second": round(seconds / (n_frames / 25), 3),
        "frames": n_frames,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="outputs/demo/model.ckpt")
    parser.add_argument("--data", default="outputs/demo/data")
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--frames", type=int, default=40, help="frames generated per clip")
    parser.add_argument("--steps", default="5,10,20,50,100,200")
    parser.add_argument("--solvers", default="ancestral,ddim,dpm++2m,unipc")
    parser.add_argument("--skip-sweep", action="store_true", help="only the speed comparison (needs --fast)")
    parser.add_argument("--fast", help="SOLVER:STEPS for the fast path (default: the sweep's cheapest at equal sync)")
    parser.add_argument("--out", default="benchmarks/results/sampling.json")
    args = parser.parse_args()
    if not Path(args.checkpoint).is_file():
        sys.exit(f"{args.checkpoint} not found; run `make demo` first (it trains the model this benchmark samples)")
    torch.manual_seed(0)
    model = load_model(args.checkpoint, "cpu")
    clips = held_out(model, args.data, args.clips)
    base = model.cfg.sample
    result: dict = {"benchmark": "sampling", "date": time.strftime("%Y-%m-%d"),
                    "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.system()}",
                    "command": "python benchmarks/sampling.py " + " ".join(sys.argv[1:]),
                    "clips": len(clips), "frames_per_clip": args.frames}
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    sweep = previous.get("sweep", [])
    if not args.skip_sweep:
        sweep = []
        for solver in args.solvers.split(","):
            for steps in (int(s) for s in args.steps.split(",")):
                row = run(model, clips, dataclasses.replace(base, solver=Solver(solver), steps=steps), args.frames, len(clips))
                sweep.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    result["sweep"] = sweep
    best = next((r for r in sweep if r["solver"] == "ancestral" and r["steps"] == 200), None)
    target = best["lip_sync_r"] if best else None
    equal = [r for r in sweep if best is not None and r["lip_sync_r"] >= target - EQUAL_SYNC
             and r["pixel_mae"] <= best["pixel_mae"] * EQUAL_PIXELS]
    cheapest = min(equal, key=lambda r: (r["steps"], r["seconds"])) if equal else None
    result["reference_sync_200_steps"] = target
    result["fewest_steps_equal_sync"] = f"{cheapest['solver']} {cheapest['steps']}" if cheapest else None
    fast_solver, fast_steps = (args.fast.split(":") if args.fast else (cheapest["solver"], cheapest["steps"]))
    # side by side, same run: reference path, then fast path
    set_attention(model.unet, "einsum")
    ref = run(model, clips, dataclasses.replace(base, solver=Solver.ANCESTRAL, steps=100), args.frames, batch=1)
    set_attention(model.unet, "sdpa")
    fast = run(model, clips, dataclasses.replace(base, solver=Solver(fast_solver), steps=int(fast_steps)),
               args.frames, batch=len(clips))
    result["reference_path"] = {**ref, "attention": "einsum", "precision": "fp32"}
    result["fast_path"] = {**fast, "attention": "sdpa", "precision": "fp32"}
    result["sampling_speedup_at_equal_sync"] = round(ref["seconds_per_video_second"] / fast["seconds_per_video_second"], 1)
    result["sync_difference"] = round(fast["lip_sync_r"] - ref["lip_sync_r"], 4)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "sweep"}, indent=2))


if __name__ == "__main__":
    main()
