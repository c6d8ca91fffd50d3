"""Throughput of `diffheads prepare` on this machine: frames per second, per core, and per stage.

Makes a raw folder of talking-head-like clips (scikit-image's astronaut photo moved by a known
head motion, 30 fps, with speech-like audio, like CREMA-D's 30 fps sources), then times:
  1. the whole `prepare` run (decode twice, landmarks, smoothing, warp, encode, wav, lmks; no
     embeddings) with 1 worker and with one worker per core, side by side;
  2. each stage alone on one clip, in this process, so the split of the time is visible.
"Per core" divides by the CPU seconds the run used (all processes), so it does not depend on
how many cores the machine has.

Usage: python benchmarks/prepare_throughput.py [--clips 16] [--seconds 8] [--size 480] [--json OUT]
(results go to benchmarks/results/prepare.json; `python benchmarks/write_results.py` rebuilds RESULTS.md)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from facevideo import moving_face_video  # noqa: E402

from diffheads.face.align import AlignConfig, frame_transforms, warp  # noqa: E402
from diffheads.face.mean_face import load_mean_face  # noqa: E402
from diffheads.face.track import track_landmarks  # noqa: E402
from diffheads.io.video import iter_frames_at, write_video  # noqa: E402
from diffheads.prepare.run import prepare_dataset  # noqa: E402
from diffheads.prepare.split import SplitRule  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed_prepare(raw: Path, out: Path, workers: int) -> dict:
    """One full prepare run; wall and CPU seconds."""
    shutil.rmtree(out, ignore_errors=True)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    report = prepare_dataset(raw, out, split=SplitRule(test_fraction=0.0), workers=workers, progress=False)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    frames = report["frames_prepared_now"]
    return {"workers": workers, "frames": frames, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "fps": round(frames / wall, 1), "fps_per_core": round(frames / cpu, 1)}


def stage_times(video: Path) -> dict:
    """Seconds per frame of each stage alone, on one clip, in this process."""
    t0 = time.perf_counter()
    frames = [f for _, f in iter_frames_at(video, 25)]
    decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    landmarks, times, _ = track_landmarks(iter_frames_at(video, 25))
    track = time.perf_counter() - t0 - decode  # track_landmarks decodes too
    cfg = AlignConfig()
    t0 = time.perf_counter()
    transforms = frame_transforms(landmarks, load_mean_face(), cfg, times)
    crops = np.stack([warp(f, m, cfg.size) for f, m in zip(frames, transforms)])
    align = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_video(video.parent / "bench_out.mp4", crops, fps=25)
    encode = time.perf_counter() - t0
    n = len(frames)
    return {name: round(1000 * sec / n, 2) for name, sec in
            (("decode_ms", decode), ("landmarks_ms", track), ("smooth_warp_ms", align), ("encode_ms", encode))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--size", type=int, default=480, help="raw frame side in pixels")
    parser.add_argument("--json", default="benchmarks/results/prepare.json", help="where to write the results")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        for i in range(args.clips):
            (raw / f"spk{i % 4}").mkdir(parents=True, exist_ok=True)
            moving_face_video(raw / f"spk{i % 4}" / f"clip{i}.mp4", seconds=args.seconds, fps=30.0, size=args.size)
        one = timed_prepare(raw, Path(tmp) / "out1", 1)
        many = timed_prepare(raw, Path(tmp) / "outn", cores)
        stages = stage_times(raw / "spk0" / "clip0.mp4")
    result = {
        "benchmark": "prepare_throughput",
        "machine": f"{platform.processor() or platform.machine()}, {cores} cores, {platform.system()}",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/prepare_throughput.py " + " ".join(sys.argv[1:]),
        "input": f"{args.clips} clips x {args.seconds} s, {args.size}x{args.size} at 30 fps -> 128 px at 25 fps",
        "one_worker": one,
        "all_cores": many,
        "speedup_all_cores_vs_one": round(many["fps"] / one["fps"], 2),
        "stage_ms_per_frame": stages,
        "goal_fps_per_core": 100,
    }
    print(json.dumps(result, indent=2))
    print(
        f"prepare: {one['fps']} frames/s with 1 worker, {many['fps']} with {cores} "
        f"(x{result['speedup_all_cores_vs_one']}); {many['fps_per_core']} frames/s per CPU core (goal 100)",
        file=sys.stderr,
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
