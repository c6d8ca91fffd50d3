"""The speed comparisons at the paper's configuration on a GPU, in one call, printed as one table.

Network: configs/crema.yaml (128 px, C=256, attention at 32x32: 215.7M parameters) with random
weights (speed does not depend on them). Compares, side by side in this run:
  - sampling, time per generated second of video: reference path (ancestral DDPM, 100 steps, fp32,
    einsum attention, one clip at a time) against the fast path (--fast-solver at --fast-steps, the
    fewest steps at equal lip sync found by benchmarks/sampling.py on CPU; SDPA, bf16 autocast,
    channels_last, all clips in one batch; --compile adds torch.compile with CUDA graphs);
  - training step throughput: the reference block implementation (einsum attention, fp32) against
    ours (SDPA, bf16 autocast, channels_last);
  - streaming: a 2-call distilled student of the same size (random weights: timing only, DDIM 2 on the
    trailing grid) fed 20 ms chunks by SpeechStream at batch 1: frames/s of work and first-frame latency.
Writes benchmarks/results/gpu.json. Takes about 2-4 minutes on an H100. `--tiny` runs a small
network (and works on CPU) to check the script itself.

Usage: sh benchmarks/gpu.sh [--fast-solver dpm++2m] [--fast-steps 20] [--clips 8] [--frames 8] [--compile] [--tiny]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from training_throughput import batch_of, train_steps  # noqa: E402

from diffheads.checkpoint import LoadedModel  # noqa: E402
from diffheads.config import DiffusionConfig, ModelConfig, RunConfig, SampleConfig, Solver, load_config  # noqa: E402
from diffheads.diffusion.gaussian import GaussianDiffusion  # noqa: E402
from diffheads.sample.runtime import sample_clips  # noqa: E402
from diffheads.models.blocks import set_attention  # noqa: E402
from diffheads.models.unet import UNet  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sampling(model: LoadedModel, sample: SampleConfig, n_clips: int, n_frames: int, batch: int, device: torch.device,
                  **options) -> float:
    """Seconds of compute per generated second of video (after one warm-up call)."""
    cfg = model.cfg.model
    g = torch.Generator().manual_seed(0)
    identity = torch.rand(n_clips, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    audio = [torch.randn(n_frames, cfg.audio_dim, generator=g) for _ in range(n_clips)]
    sample = dataclasses.replace(sample, batch_size=batch)
    sample_clips(model, identity[:batch], audio[:batch], dataclasses.replace(sample, max_frames=2), progress=False, **options)
    synchronize(device)
    start = time.perf_counter()
    for lo in range(0, n_clips, batch):
        sample_clips(model, identity[lo : lo + batch], audio[lo : lo + batch], sample, progress=False, **options)
    synchronize(device)
    return (time.perf_counter() - start) / (n_clips * n_frames / 25)


def time_streaming(cfg: ModelConfig, device: torch.device, seconds: float, precision: str, steps: int = 2) -> dict:
    """A 2-call student of `cfg`'s size (random weights, trailing grid, DDIM) streaming 20 ms chunks, batch 1.

    Returns frames/s of work (frames over the time spent in push/finish) and the first frame's compute
    latency (the push call that completes frame 0's audio window, plus the look-ahead it waited for).
    """
    from diffheads.audio.encoders import LogMelEncoder
    from diffheads.config import TimestepSpacing
    from diffheads.sample.stream import SpeechStream

    encoder = LogMelEncoder()
    cfg = dataclasses.replace(cfg, audio_dim=encoder.dim)
    torch.manual_seed(0)
    unet = UNet(cfg).to(device).eval()
    run = RunConfig(model=cfg, diffusion=DiffusionConfig(prediction="v", timestep_spacing=TimestepSpacing.TRAILING))
    student = LoadedModel(unet, run, encoder.describe())
    sample = SampleConfig(solver=Solver.DDIM, steps=steps, clip_denoised=False, precision=precision, channels_last=True)
    identity = torch.rand(3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    wav = (np.random.default_rng(0).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
    chunk = 320  # 20 ms
    warm = SpeechStream(student, identity, sample)
    warm.push(wav[:8000])
    warm.finish()  # kernels, autotuning and allocations out of the timing
    stream = SpeechStream(student, identity, sample)
    frames, busy, first_ms = 0, 0.0, None
    for lo in range(0, len(wav), chunk):
        synchronize(device)
        t0 = time.perf_counter()
        out = stream.push(wav[lo : lo + chunk])
        synchronize(device)
        spent = time.perf_counter() - t0
        busy += spent
        if out and first_ms is None:
            first_ms = spent * 1000 + stream.samples_for_frame(0) / 16.0  # compute + audio it had to wait for
        frames += len(out)
    t0 = time.perf_counter()
    frames += len(stream.finish())
    synchronize(device)
    busy += time.perf_counter() - t0
    return {"frames": frames, "frames_per_s": round(frames / busy, 1), "realtime_factor": round(frames / busy / 25, 2),
            "first_frame_ms": round(first_ms or float("nan"), 1), "steps": steps, "precision": precision,
            "image_size": cfg.image_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast-solver", default="dpm++2m")
    parser.add_argument("--fast-steps", type=int, default=20)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8, help="frames generated per clip")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--stream-seconds", type=float, default=4.0, help="speech streamed by the 2-call student")
    parser.add_argument("--tiny", action="store_true", help="a small network, to check the script (CPU works)")
    parser.add_argument("--out", default="benchmarks/results/gpu.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.tiny:
        sys.exit("no CUDA device: run on a GPU machine, or pass --tiny to check the script on CPU")
    preset = Path(__file__).resolve().parents[1] / "src" / "diffheads" / "configs" / "crema.yaml"
    cfg: ModelConfig = load_config(preset).model
    cfg = dataclasses.replace(cfg, audio_dim=256, dropout=0.0)
    if args.tiny:
        cfg = dataclasses.replace(cfg, image_size=32, model_channels=32, channel_mult=[1, 2], num_res_blocks=1,
                                  attention_resolutions=[2], num_head_channels=32)
    torch.manual_seed(0)
    unet = UNet(cfg).to(device).eval()
    model = LoadedModel(unet, RunConfig(model=cfg), {})
    bf16 = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() or device.type == "cpu" else "fp32"

    set_attention(unet, "einsum")
    ref_sample = SampleConfig(solver=Solver.ANCESTRAL, steps=100)
    ref = time_sampling(model, ref_sample, 1, args.frames, 1, device, precision="fp32", channels_last=False)
    set_attention(unet, "sdpa")
    fast_sample = SampleConfig(solver=Solver(args.fast_solver), steps=args.fast_steps)
    fast = time_sampling(model, fast_sample, args.clips, args.frames, args.clips, device, precision=bf16,
                         channels_last=True, compile=args.compile)
    unet.to(memory_format=torch.contiguous_format)

    process = GaussianDiffusion.from_config(DiffusionConfig(lip_loss_weight=0.2)).to(device)
    g = torch.Generator().manual_seed(0)
    batches = [{k: v.to(device) for k, v in batch_of(cfg, args.train_batch, g).items()} for _ in range(args.train_steps)]
    reference_net = copy.deepcopy(unet).train()
    set_attention(reference_net, "einsum")
    ref_train = train_steps(reference_net, process, batches, set(), device.type)
    del reference_net
    ours_net = copy.deepcopy(unet).train()
    ours_train = train_steps(ours_net, process, batches, {"bf16", "channels_last"}, device.type)
    stream = time_streaming(cfg, device, args.stream_seconds, bf16)
    n = args.train_steps * args.train_batch
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result = {
        "benchmark": "gpu", "date": time.strftime("%Y-%m-%d"), "machine": name,
        "command": "sh benchmarks/gpu.sh " + " ".join(sys.argv[1:]),
        "network": f"{'tiny' if args.tiny else 'crema.yaml'}: {sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M parameters",
        "sampling_reference_s_per_video_s": round(ref, 3),
        "sampling_fast_s_per_video_s": round(fast, 3),
        "sampling_speedup": round(ref / fast, 1),
        "fast_path": f"{args.fast_solver} {args.fast_steps} steps, sdpa, {bf16}, channels_last, batch {args.clips}"
                     + (", compiled" if args.compile else ""),
        "training_reference_samples_per_s": round(n / ref_train, 2),
        "training_ours_samples_per_s": round(n / ours_train, 2),
        "training_speedup": round(ref_train / ours_train, 2),
        "stream_2call_student": stream,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"| {name} | s per generated s | speed-up |\n|---|---|---|")
    print(f"| sampling, reference (ancestral 100, fp32, einsum, batch 1) | {result['sampling_reference_s_per_video_s']} | |")
    print(f"| sampling, fast ({result['fast_path']}) | {result['sampling_fast_s_per_video_s']} | x{result['sampling_speedup']} |")
    print(f"| training, reference (einsum, fp32), samples/s | {result['training_reference_samples_per_s']} | |")
    print(f"| training, ours (sdpa, bf16, channels_last), samples/s | {result['training_ours_samples_per_s']} | x{result['training_speedup']} |")
    print(f"| streaming, 2-call student at {stream['image_size']} px, batch 1: frames/s of work (25 = real time), "
          f"first frame ms | {stream['frames_per_s']} (x{stream['realtime_factor']} real time), "
          f"{stream['first_frame_ms']} ms | |")


if __name__ == "__main__":
    main()
