"""Peak memory of `diffheads animate` for 1 and 10 minutes of speech: it must not grow with the length.

Each run is a separate process running the command line's `main(["animate", ...])`. Its peak
resident set size is the kernel's high-water mark (VmHWM) of that process when `main` returns;
ru_maxrss from wait4, which adds the interpreter's teardown, is reported beside it: tearing down
the imported stack (torch, MediaPipe, ...) alone raises the mark by a varying 60-130 MB, even in a
process that only imports diffheads and exits, which has nothing to do with the audio's length
(measured here too, as `teardown_mb`). RSS is also sampled once a second to show the curve is flat. The inputs are the default animate
mode on a real face: scikit-image's astronaut photo (512 x 512), aligned and pasted back into
the full frame, stabilisation on, and speech-like audio from diffheads.synth.speech (distinct
one-minute segments, 16 kHz wav). The model is a randomly initialised UNet at image_size 128 but
of tiny width (what is measured is the pipeline around the network, not the network), exported
with diffheads.checkpoint.save_model, with the log-mel audio encoder; one DDIM step per frame
keeps 16,500 frames within minutes on 2 CPU cores.

Usage: python benchmarks/long_audio_memory.py [--minutes 1,10] [--steps 1] [--stabilize-every 25]
       [--threads 1] [--work /tmp/long_audio_memory] [--out benchmarks/results/long_audio_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from diffheads.audio.encoders import LogMelEncoder
from diffheads.audio.frames import SAMPLE_RATE
from diffheads.checkpoint import save_model
from diffheads.config import load_config
from diffheads.io.audio import write_wav
from diffheads.io.image import write_png
from diffheads.io.video import count_frames
from diffheads.models.unet import UNet
from diffheads.synth.speech import sample_voice, synth_speech

MODEL = [  # image_size 128 as the paper, tiny width: the pipeline around the network is what is measured
    "model.image_size=128",
    "model.model_channels=4",
    "model.channel_mult=[1,2,4,4]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[]",  # the middle block's attention (16 x 16) remains
    "model.num_head_channels=16",
    "model.norm_groups=4",
    "model.dropout=0.0",
]


def build_checkpoint(path: Path) -> str:
    """A randomly initialised (seed 0) tiny UNet at 128 px with the log-mel encoder, via save_model."""
    encoder = LogMelEncoder()
    cfg = load_config(None, [*MODEL, f"model.audio_dim={encoder.dim}"])
    torch.manual_seed(0)
    unet = UNet(cfg.model)
    save_model(path, unet, cfg, encoder.describe())
    n_params = sum(p.numel() for p in unet.parameters())
    return (f"random-weights UNet, 128 px, C=4, mult [1,2,4,4], 1 res block, attention only in the middle block, "
            f"{n_params / 1e6:.2f}M parameters, log-mel audio encoder")


def speech_wav(path: Path, minutes: int) -> float:
    """`minutes` of speech-like audio, one distinct synthetic minute after another; returns its RMS."""
    rng = np.random.default_rng(0)
    voice = sample_voice(rng)
    audio = np.concatenate([synth_speech(rng, voice, 60.0, SAMPLE_RATE).audio for _ in range(minutes)])
    write_wav(path, audio, SAMPLE_RATE)
    return float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))


def _vm_rss_kb(pid: int) -> int | None:
    """Current resident set size of a process (kB), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# `diffheads ARGS`, then the process's high-water mark before the interpreter tears down its modules
CHILD = """
import sys
from diffheads.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    hwm = next(line for line in status if line.startswith("VmHWM:"))
print("VmHWM before teardown:", hwm.split()[1], file=sys.stderr, flush=True)
sys.exit(code)
"""

IMPORT_ONLY = """
import sys
import diffheads.cli, diffheads.sample.animate
with open("/proc/self/status") as status:
    hwm = next(line for line in status if line.startswith("VmHWM:"))
print("VmHWM before teardown:", hwm.split()[1], file=sys.stderr, flush=True)
"""


# the log-mel encoder alone on the recording: how far it lifts the high-water mark above what was resident
ENCODE_ONLY = """
import sys
from diffheads.audio.encoders import LogMelEncoder
from diffheads.audio.frames import frames_in_audio
from diffheads.io.audio import load_audio

def status(key):
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key)).split()[1])

wav = load_audio(sys.argv[1])
resident = status("VmRSS:")
LogMelEncoder().encode(wav, frames_in_audio(len(wav)))
print("encoder peak above resident kB:", status("VmHWM:") - resident, file=sys.stderr, flush=True)
"""


def encoder_peak_mb(wav: Path, env: dict[str, str]) -> float:
    """MB the log-mel encoder's transient adds on top of the resident set, for this recording (separate process)."""
    proc = subprocess.run([sys.executable, "-c", ENCODE_ONLY, str(wav)], env=env, capture_output=True, text=True,
                          check=True)
    return round(int(proc.stderr.strip().splitlines()[-1].split()[-1]) / 1024, 1)


def _hwm_before_teardown_kb(stderr: str) -> int:
    return int(next(line for line in stderr.splitlines() if line.startswith("VmHWM before teardown:")).split()[-1])


def teardown_mb(env: dict[str, str]) -> float:
    """How much the interpreter's teardown alone raises the high-water mark of a process that only imports."""
    proc = subprocess.Popen([sys.executable, "-c", IMPORT_ONLY], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, _, usage = os.wait4(proc.pid, 0)
    return round((usage.ru_maxrss - _hwm_before_teardown_kb(err)) / 1024, 1)


def run_animate(args: list[str], env: dict[str, str]) -> dict:
    """Run `diffheads animate ARGS` in a child process: peak RSS (before and with teardown), wall time, RSS curve."""
    cmd = [sys.executable, "-c", CHILD, "animate", *args]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(1.0):
            rss = _vm_rss_kb(proc.pid)
            if rss is not None:
                samples.append((time.perf_counter() - start, rss))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    # read the pipes in threads so a chatty child never blocks on a full pipe before wait4 reaps it
    outputs: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda n=n, s=s: outputs.__setitem__(n, s.read()))
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    for r in readers:
        r.join()
    watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"animate failed ({proc.returncode}): {outputs['err'].decode()[-2000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(_hwm_before_teardown_kb(outputs["err"].decode()) / 1024, 1),
            "peak_rss_with_teardown_mb": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "rss_samples": samples}


def rss_curve(samples: list[tuple[float, int]]) -> dict[str, float]:
    """RSS (MB) at 10, 25, 50, 75 and 95 % of the run (flat when nothing grows with the frames), and the
    highest sample with when it came (fraction of the run): once-a-second samples can miss a short peak."""
    if not samples:
        return {}
    times = np.array([t for t, _ in samples])
    rss = np.array([r for _, r in samples]) / 1024
    curve = {f"{q}%": round(float(rss[np.searchsorted(times, q / 100 * times[-1])]), 1) for q in (10, 25, 50, 75, 95)}
    top = int(np.argmax(rss))
    return curve | {"max": round(float(rss[top]), 1), "max_at": round(float(times[top] / times[-1]), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default="1,10", help="audio lengths in minutes; the ratio is last / first")
    parser.add_argument("--steps", type=int, default=1, help="DDIM steps per frame")
    parser.add_argument("--stabilize-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the animate process (OMP_NUM_THREADS); 0: torch's default")
    parser.add_argument("--work", default="/tmp/long_audio_memory", help="folder for the inputs and outputs")
    parser.add_argument("--out", default="benchmarks/results/long_audio_memory.json")
    args = parser.parse_args()
    from skimage import data

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / "model.ckpt"
    model = build_checkpoint(checkpoint)
    write_png(work / "astronaut.png", data.astronaut())
    env = dict(os.environ)
    if args.threads > 0:
        # with any other job on the machine, two OpenMP threads on two cores slowed the network tenfold
        env["OMP_NUM_THREADS"] = str(args.threads)
    result: dict = {
        "benchmark": "long_audio_memory",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "torch_threads": args.threads or torch.get_num_threads(),
        "command": "python " + " ".join(sys.argv),
        "input": "astronaut photo 512x512, face aligned and pasted back into the full frame; speech-like synthetic "
                 "audio (diffheads.synth.speech, 16 kHz wav)",
        "model": model,
        "sampling": f"ddim, {args.steps} step(s) per frame, stabilize_every {args.stabilize_every}",
        "teardown_mb": teardown_mb(env),
        "runs": {},
    }
    for minutes in [int(m) for m in args.minutes.split(",")]:
        wav = work / f"speech_{minutes}min.wav"
        rms = speech_wav(wav, minutes)
        output = work / f"talk_{minutes}min.mp4"
        run = run_animate(["--checkpoint", str(checkpoint), "--image", str(work / "astronaut.png"),
                           "--audio", str(wav), "--output", str(output), "--solver", "ddim",
                           "--steps", str(args.steps), "--stabilize-every", str(args.stabilize_every),
                           "--quiet"], env)
        frames = count_frames(output)
        expected = minutes * 60 * 25
        if frames != expected:
            sys.exit(f"{output} holds {frames} frames, expected {expected}")
        samples = run.pop("rss_samples")
        run |= {"frames": frames, "audio_rms": round(rms, 3), "frames_per_s": round(frames / run["wall_s"], 1),
                "rss_mb_during_run": rss_curve(samples), "output_mb": round(output.stat().st_size / 2**20, 1),
                "log_mel_encoder_peak_mb": encoder_peak_mb(wav, env)}
        result["runs"][f"{minutes}min"] = run
        print(f"{minutes:>3} min: {frames} frames, peak RSS {run['peak_rss_mb']} MB "
              f"({run['peak_rss_with_teardown_mb']} MB with the interpreter's teardown), wall {run['wall_s']} s, "
              f"{run['frames_per_s']} frames/s, RSS during the run {run['rss_mb_during_run']}", flush=True)
        output.unlink()
    runs = list(result["runs"].values())
    if len(runs) >= 2:
        ratio = runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]
        keys = list(result["runs"])
        result[f"peak_rss_ratio_{keys[-1]}_vs_{keys[0]}"] = round(ratio, 3)
        result["peak_rss_ratio"] = round(ratio, 3)
        middle = [r["rss_mb_during_run"].get("50%") for r in (runs[0], runs[-1])]
        if all(middle):
            result["rss_ratio_while_sampling"] = round(middle[1] / middle[0], 3)  # half way through each run
        with_teardown = runs[-1]["peak_rss_with_teardown_mb"] / runs[0]["peak_rss_with_teardown_mb"]
        result["peak_rss_ratio_with_teardown"] = round(with_teardown, 3)
        print(f"RSS half way through, {keys[-1]} / {keys[0]}: {result.get('rss_ratio_while_sampling')}; "
              f"the log-mel encoder alone lifts the mark by {runs[0]['log_mel_encoder_peak_mb']} / "
              f"{runs[-1]['log_mel_encoder_peak_mb']} MB")
        print(f"peak RSS ratio {keys[-1]} / {keys[0]}: {ratio:.3f} (acceptance: below 1.2); with the teardown "
              f"{with_teardown:.3f}; the teardown alone adds {result['teardown_mb']} MB to a process that only imports")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
