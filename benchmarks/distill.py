"""Distilled students against their teacher on the demo's held-out clips, and the speed-up they buy.

Needs the demo model (`make demo`) and its students (`diffheads distill --teacher outputs/demo/model.ckpt
--data outputs/demo/data --out outputs/distill --teacher-steps 8 --target-steps 1`).
  1. quality, on every held-out clip at full length: lip_sync_r (pooled Pearson r of the mouth opening measured
     on generated frames against the true opening) and pixel MAE (mean absolute error to the ground-truth
     frames, 0..255) of the 10-call teacher (dpm++2m 10, the fast path of benchmarks/sampling.py), of each
     student (DDIM N on the trailing grid) and, as the control that shows what distillation adds, of the
     teacher itself sampled with the same N-step DDIM undistilled. The 2-call student passes when its
     lip_sync_r is within 0.03 of the teacher's and its pixel MAE at most 10% above.
  2. speed at equal sync, side by side in this run on --speed-clips x --speed-frames: the reference path
     (ancestral DDPM 100 steps, fp32, einsum attention, one clip at a time) against the 2-call student
     (SDPA attention, all clips in one batch): time per generated second and the ratio
     `sampling_speedup_at_equal_sync`, with both paths' lip_sync_r.

Usage: python benchmarks/distill.py [--teacher outputs/demo/model.ckpt] [--students outputs/distill]
       [--data outputs/demo/data] [--speed-clips 3] [--speed-frames 32] [--out benchmarks/results/distill.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sampling import held_out, run  # noqa: E402

from diffheads.checkpoint import LoadedModel, load_model  # noqa: E402
from diffheads.config import Solver, TimestepSpacing  # noqa: E402
from diffheads.models.blocks import set_attention  # noqa: E402

EQUAL_SYNC = 0.03  # the "within 0.03" of lip_sync_r
PIXEL_MARGIN = 1.10  # and pixel error at most 10% above the teacher's
TEACHER = (Solver.DPMPP_2M, 10)


def undistilled(teacher: LoadedModel, steps: int) -> tuple[LoadedModel, object]:
    """The teacher sampled as an N-step student would be (DDIM, trailing grid, no x0 clipping): the control."""
    cfg = teacher.cfg
    trailing = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, timestep_spacing=TimestepSpacing.TRAILING))
    sample = dataclasses.replace(cfg.sample, solver=Solver.DDIM, steps=steps, eta=0.0, clip_denoised=False)
    return dataclasses.replace(teacher, cfg=trailing), sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="outputs/demo/model.ckpt")
    parser.add_argument("--students", default="outputs/distill", help="folder holding student_N.ckpt")
    parser.add_argument("--data", default="outputs/demo/data")
    parser.add_argument("--speed-clips", type=int, default=3)
    parser.add_argument("--speed-frames", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/distill.json")
    args = parser.parse_args()
    students = sorted(Path(args.students).glob("student_*.ckpt"), key=lambda p: -int(p.stem.split("_")[1]))
    if not Path(args.teacher).is_file() or not students:
        sys.exit(f"need {args.teacher} and {args.students}/student_N.ckpt: run `make demo`, then `diffheads distill` "
                 "(see this script's docstring)")
    torch.manual_seed(0)
    teacher = load_model(args.teacher, "cpu")
    clips = held_out(teacher, args.data, 10**6, one_per_identity=False)
    frames = max(len(c["audio_emb"]) for c in clips)
    result: dict = {"benchmark": "distill", "date": time.strftime("%Y-%m-%d"),
                    "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.system()}",
                    "command": "python benchmarks/distill.py " + " ".join(sys.argv[1:]),
                    "clips": len(clips), "frames": int(sum(min(frames, len(c["audio_emb"])) for c in clips))}

    def row(name: str, model: LoadedModel, sample, calls: int) -> dict:
        r = {"model": name, "calls_per_frame": calls, **run(model, clips, sample, frames, batch=len(clips))}
        print(json.dumps(r), file=sys.stderr, flush=True)
        return r

    quality = [row("teacher", teacher, dataclasses.replace(teacher.cfg.sample, solver=TEACHER[0], steps=TEACHER[1]),
                   TEACHER[1])]
    by_steps: dict[int, LoadedModel] = {}
    for path in students:
        student = load_model(path, "cpu")
        n = student.cfg.sample.steps
        by_steps[n] = student
        quality.append(row(f"student_{n}", student, student.cfg.sample, n))
        quality.append(row(f"teacher ddim {n} (undistilled)", *undistilled(teacher, n), n))
    result["quality"] = quality
    ref_q = quality[0]
    for n in sorted(by_steps):
        s = next(r for r in quality if r["model"] == f"student_{n}")
        result[f"student_{n}_sync_difference"] = round(s["lip_sync_r"] - ref_q["lip_sync_r"], 4)
        result[f"student_{n}_pixel_ratio"] = round(s["pixel_mae"] / ref_q["pixel_mae"], 4)
    if 2 in by_steps:
        result["student_2_passes"] = bool(abs(result["student_2_sync_difference"]) <= EQUAL_SYNC
                                          and result["student_2_pixel_ratio"] <= PIXEL_MARGIN)
        # side by side, same clips: the reference path, then the 2-call student on the fast path
        speed = held_out(teacher, args.data, args.speed_clips)
        set_attention(teacher.unet, "einsum")
        ref = run(teacher, speed, dataclasses.replace(teacher.cfg.sample, solver=Solver.ANCESTRAL, steps=100),
                  args.speed_frames, batch=1)
        student = by_steps[2]
        set_attention(student.unet, "sdpa")
        fast = run(student, speed, student.cfg.sample, args.speed_frames, batch=len(speed))
        result["reference_path"] = {**ref, "attention": "einsum", "precision": "fp32"}
        result["student_path"] = {**fast, "attention": "sdpa", "precision": "fp32", "calls_per_frame": 2}
        result["sampling_speedup_at_equal_sync"] = round(
            ref["seconds_per_video_second"] / fast["seconds_per_video_second"], 1)
        result["speed_sync_difference"] = round(fast["lip_sync_r"] - ref["lip_sync_r"], 4)
        result["equal_sync"] = abs(result["speed_sync_difference"]) <= EQUAL_SYNC
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "quality"}, indent=2))


if __name__ == "__main__":
    main()
