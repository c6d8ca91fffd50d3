"""Live streaming on the demo model, batch 1: can a distilled student keep up with speech on this CPU?

Runs `diffheads stream` (diffheads.sample.stream_file, the command's code) on a held-out clip of the demo: its first
real frame is the face, its speech the audio, fed in 20 ms chunks and written to an MP4 as frames come.
  - live: audio paced at its real speed (as from a microphone). stream_first_frame_ms is the time from the
    arrival of the first chunk to the first frame written: the look-ahead the first frame's audio window needs
    (the encoder's and the network's) plus the compute. Latency of every frame from the arrival of its last
    needed sample (median, p95).
  - flat out: the whole file available at once; stream_realtime_factor = seconds of video per second spent
    (sampling, encoding and writing; >= 1 sustains 25 fps).
For the 2-call student (outputs/distill/student_2.ckpt, see benchmarks/distill.py) on the fast path
(`--compile --channels-last`: torch.compile's C++ kernels, which need a C compiler, and channels_last
convolutions) and plain (eager, as `diffheads stream` runs without flags), and, for comparison, the teacher
with its own sampler settings (eager). The keys come from the student's fast path.

Usage: python benchmarks/streaming.py [--student outputs/distill/student_2.ckpt] [--teacher outputs/demo/model.ckpt]
       [--data outputs/demo/data] [--out benchmarks/results/streaming.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffheads.checkpoint import load_model
from diffheads.data.layout import DataLayout
from diffheads.sample.stream_file import stream_video


def stream_runs(model_path: str, video: Path, audio: Path, work: Path, fast: bool) -> dict:
    """A warm-up (compilation included), then the live (paced) run and the flat-out run of one model."""
    model = load_model(model_path, "cpu")
    sample = dataclasses.replace(model.cfg.sample, compile=fast, channels_last=fast)
    common = {"video": video, "align": False, "progress": False, "chunk_ms": 20.0, "sample": sample}
    stream_video(model, audio, work / "warm.mp4", **common)
    live = stream_video(model, audio, work / "live.mp4", realtime=True, **common)
    flat = stream_video(model, audio, work / "flat.mp4", **common)
    return {"solver": sample.solver.value, "steps": sample.steps, "compile": fast, "channels_last": fast,
            "live": live, "flat_out": flat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="outputs/distill/student_2.ckpt")
    parser.add_argument("--teacher", default="outputs/demo/model.ckpt")
    parser.add_argument("--data", default="outputs/demo/data")
    parser.add_argument("--out", default="benchmarks/results/streaming.json")
    args = parser.parse_args()
    for path in (args.student, args.teacher):
        if not Path(path).is_file():
            sys.exit(f"{path} not found: run `make demo` and `diffheads distill` first (benchmarks/distill.py)")
    layout = DataLayout.of(args.data)
    cid = layout.clips("test")[0]
    result: dict = {"benchmark": "streaming", "date": time.strftime("%Y-%m-%d"),
                    "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.system()}",
                    "command": "python benchmarks/streaming.py " + " ".join(sys.argv[1:]), "clip": cid,
                    "chunk_ms": 20.0}
    with tempfile.TemporaryDirectory() as tmp:
        runs = (("student_2", args.student, True), ("student_2_plain", args.student, False),
                ("teacher", args.teacher, False))
        for name, path, fast in runs:
            result[name] = stream_runs(path, layout.video(cid), layout.audio(cid), Path(tmp), fast)
            print(json.dumps({name: result[name]}), file=sys.stderr, flush=True)
    student = result["student_2"]
    result["stream_realtime_factor"] = student["flat_out"]["realtime_factor"]
    result["stream_first_frame_ms"] = student["live"]["first_frame_latency_ms"]
    result["lookahead_ms"] = student["live"]["lookahead_ms"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
