"""Training-loader throughput: samples/s of TalkingFaceDataset with data.frame_cache = decode, disk, memory, and packed.

Makes a synthetic dataset sized like a real one per clip (default 20 clips of 4 s at 128 px,
25 fps, H.264, with landmarks and 256-d embeddings) in a temporary folder, then, side by side:
  decode  the whole clip is decoded for every sample (the reference);
  disk    the cache is filled first (`cache_dataset`, its one-time time reported apart), then
          each sample reads its 4 frames through a memory map; measured with the cache files in
          the page cache (warm) and after asking the kernel to drop them (cold, best effort);
  memory  every clip decoded once (the first pass, reported apart), then served from RAM.
  packed  data.format=packed: the clips packed once by `diffheads pack` (its time reported apart)
          into litdata chunks; each sample reads its whole clip item from the chunk file, with no
          clip kept between samples (the case of a dataset far larger than the per-process
          budget, PACKED_BUDGET); `packed_lru` keeps clips as training does (here all fit).
Single process with 1 torch thread (like a DataLoader worker), model image size = clip size (no
resize), lip loss on, the same seeded draws in every mode (the first examples are checked to be
identical); the three modes are timed in turns (3 rounds) so load changes on a shared machine hit
all of them. Then decode and disk once more through a shuffling DataLoader with worker processes
(batch 10, worker start-up included; --workers 0 skips it).

Usage: python benchmarks/loader_throughput.py [--clips 20] [--seconds 4] [--size 128] [--workers 2] [--json OUT]
(results go to benchmarks/results/loader.json)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from diffheads.config import DataConfig, DataFormat, FrameCache, ModelConfig
from diffheads.data import dataset as dataset_module
from diffheads.data.dataset import TalkingFaceDataset
from diffheads.prepare.pack import pack_dataset
from diffheads.prepare.cache import cache_dataset
from diffheads.synth.dataset import make_synthetic_dataset

ROUNDS = 3  # decode, disk and memory are timed in turns, this many times


def make_dataset(root: Path, clips: int, seconds: float, size: int, audio_dim: int) -> None:
    """Synthetic clips (4 per identity) plus random per-frame embeddings."""
    per_identity = 4
    make_synthetic_dataset(
        root,
        n_train_identities=max(1, -(-clips // per_identity)),
        n_test_identities=1,
        clips_per_identity=per_identity,
        test_clips_per_identity=1,
        seconds=seconds,
        size=size,
        progress=False,
    )
    train = (root / "file_list_train.txt").read_text().split()[:clips]
    (root / "file_list_train.txt").write_text("\n".join(train) + "\n")
    gen = torch.Generator().manual_seed(0)
    n_frames = round(seconds * 25)
    for line in train + (root / "file_list_test.txt").read_text().split():
        rel = line.removeprefix("./").removesuffix(".mp4")
        (root / "emb" / rel).parent.mkdir(parents=True, exist_ok=True)
        torch.save(torch.randn(n_frames, audio_dim, generator=gen), root / "emb" / f"{rel}.pth")
    (root / "emb" / "encoder.json").write_text(json.dumps({"name": "random", "dim": audio_dim}))  # `pack` reads it


def dataset(root: Path, mode: FrameCache, size: int) -> TalkingFaceDataset:
    data = DataConfig(root=str(root), frame_cache=mode, examples_per_clip=1000)
    return TalkingFaceDataset(data, ModelConfig(image_size=size), "train", lip_loss=True)


def packed_dataset(root: Path, size: int) -> TalkingFaceDataset:
    data = DataConfig(root=str(root), format=DataFormat.PACKED, examples_per_clip=1000)
    return TalkingFaceDataset(data, ModelConfig(image_size=size), "train", lip_loss=True)


class NoReuse:
    """Sets dataset.PACKED_BUDGET to 0 while active: every packed sample reads its clip from the chunk file."""

    def __enter__(self) -> None:
        self.saved, dataset_module.PACKED_BUDGET = dataset_module.PACKED_BUDGET, 0

    def __exit__(self, *exc: object) -> None:
        dataset_module.PACKED_BUDGET = self.saved


def timed(ds: TalkingFaceDataset, order: np.ndarray) -> tuple[float, float, list[dict]]:
    """(wall s, CPU s of this process, the first 8 examples) over `order`, seeded the same in every mode."""
    torch.manual_seed(0)
    t0, c0 = time.perf_counter(), time.process_time()
    first = []
    for k, i in enumerate(order):
        ex = ds[int(i)]
        if k < 8:
            first.append(ex)
    return time.perf_counter() - t0, time.process_time() - c0, first


def drop_page_cache(folder: Path) -> bool:
    """Ask the kernel to evict the cache files from the page cache (no root needed; best effort)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in folder.rglob("*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def loader_rate(ds: TalkingFaceDataset, samples: int, workers: int, batch: int = 10) -> float:
    """Samples/s through a shuffling DataLoader with `workers` processes (worker start-up included)."""
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    t0, seen = time.perf_counter(), 0
    for b in loader:
        seen += len(b["target"])
        if seen >= samples:
            break
    return seen / (time.perf_counter() - t0)


def same(a: list[dict], b: list[dict]) -> bool:
    return all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--size", type=int, default=128, help="clip and model frame side in pixels")
    parser.add_argument("--decode-samples", type=int, default=120)
    parser.add_argument("--fast-samples", type=int, default=3000, help="samples timed for disk and memory")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loader runs; 0 skips them")
    parser.add_argument("--json", default="benchmarks/results/loader.json", help="where to write the results")
    args = parser.parse_args()
    torch.set_num_threads(1)  # like a DataLoader worker
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        t0 = time.perf_counter()
        make_dataset(root, args.clips, args.seconds, args.size, audio_dim=256)
        synth_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        n_ids = args.clips
        fast_order = rng.permutation(n_ids * 1000)[: args.fast_samples]
        decode_order = fast_order[: args.decode_samples]
        first_pass = np.arange(n_ids)  # one example of every clip: what the first use of each clip costs

        fill = cache_dataset(root, args.size, splits=("train",), progress=False)
        decode = dataset(root, FrameCache.DECODE, args.size)
        disk = dataset(root, FrameCache.DISK, args.size)
        disk_first_s, _, _ = timed(disk, first_pass)  # embeddings, landmarks, cache check per clip
        memory = dataset(root, FrameCache.MEMORY, args.size)
        memory_fill_s, _, _ = timed(memory, first_pass)  # decodes every clip once
        packed_info = pack_dataset(root, Path(tmp) / "packed", args.size, progress=False)
        packed = packed_dataset(Path(tmp) / "packed", args.size)
        packed_lru = packed_dataset(Path(tmp) / "packed", args.size)
        packed_lru_fill_s, _, _ = timed(packed_lru, first_pass)

        # the modes take turns, so a change in machine load during the run hits all of them
        seconds = {"decode": 0.0, "disk": 0.0, "memory": 0.0, "packed": 0.0, "packed_lru": 0.0}
        cpu = dict(seconds)
        firsts: dict[str, list[dict]] = {}
        for r in range(ROUNDS):
            for name, ds, order in (("decode", decode, decode_order), ("disk", disk, fast_order),
                                    ("memory", memory, fast_order), ("packed", packed, fast_order),
                                    ("packed_lru", packed_lru, fast_order)):
                chunk = np.array_split(order, ROUNDS)[r]
                if name == "packed":
                    with NoReuse():
                        wall, cpu_s, first = timed(ds, chunk)
                else:
                    wall, cpu_s, first = timed(ds, chunk)
                seconds[name] += wall
                cpu[name] += cpu_s
                firsts.setdefault(name, first)
        decode_rate = len(decode_order) / seconds["decode"]
        disk_rate = len(fast_order) / seconds["disk"]
        memory_rate = len(fast_order) / seconds["memory"]
        packed_rate = len(fast_order) / seconds["packed"]
        packed_lru_rate = len(fast_order) / seconds["packed_lru"]
        decode_first = firsts["decode"]

        dropped = drop_page_cache(root / "cache")
        disk_cold_s, _, _ = timed(dataset(root, FrameCache.DISK, args.size), decode_order)

        identical = all(same(decode_first, firsts[name]) for name in ("disk", "memory", "packed", "packed_lru"))
        loaders = {}
        if args.workers > 0:
            loaders = {
                "workers": args.workers,
                "batch_size": 10,
                "decode_samples_per_s": round(loader_rate(dataset(root, FrameCache.DECODE, args.size),
                                                          args.decode_samples, args.workers), 1),
                "disk_samples_per_s": round(loader_rate(dataset(root, FrameCache.DISK, args.size),
                                                        args.fast_samples, args.workers), 1),
            }
            with NoReuse():  # worker processes are forked: they inherit the budget of 0
                loaders["packed_samples_per_s"] = round(loader_rate(packed_dataset(Path(tmp) / "packed", args.size),
                                                                    args.fast_samples, args.workers), 1)
            loaders["loader_speedup"] = round(loaders["disk_samples_per_s"] / loaders["decode_samples_per_s"], 1)
            loaders["packed_loader_speedup"] = round(loaders["packed_samples_per_s"] / loaders["decode_samples_per_s"], 1)
    frames_per_clip = round(args.seconds * 25)
    result = {
        "benchmark": "loader",
        "machine": f"{platform.processor() or platform.machine()}, {cores} cores, {platform.system()}",
        "date": time.strftime("%Y-%m-%d"),
        "command": ("python benchmarks/loader_throughput.py " + " ".join(sys.argv[1:])).strip(),
        "input": (f"{args.clips} clips x {args.seconds} s ({frames_per_clip} frames), {args.size}x{args.size} "
                  f"H.264 at 25 fps, model image_size {args.size}, lip loss on; single process, 1 torch thread"),
        "synth_s": round(synth_s, 1),
        "decode": {
            "samples": len(decode_order),
            "samples_per_s": round(decode_rate, 1),
            "samples_per_cpu_s": round(len(decode_order) / cpu["decode"], 1),
        },
        "disk": {
            "cache_fill_s": fill["seconds"],
            "cache_mb": round(fill["bytes"] / 2**20, 1),
            "first_use_samples_per_s": round(len(first_pass) / disk_first_s, 1),
            "samples": len(fast_order),
            "samples_per_s": round(disk_rate, 1),
            "samples_per_cpu_s": round(len(fast_order) / cpu["disk"], 1),
            "cold_page_cache_samples_per_s": round(len(decode_order) / disk_cold_s, 1) if dropped else None,
        },
        "memory": {
            "fill_s": round(memory_fill_s, 2),
            "samples": len(fast_order),
            "samples_per_s": round(memory_rate, 1),
            "samples_per_cpu_s": round(len(fast_order) / cpu["memory"], 1),
        },
        "packed": {
            "pack_s": packed_info["seconds"],
            "pack_mb": round(packed_info["bytes"] / 2**20, 1),
            "samples": len(fast_order),
            "samples_per_s": round(packed_rate, 1),
            "samples_per_cpu_s": round(len(fast_order) / cpu["packed"], 1),
            "lru_fill_s": round(packed_lru_fill_s, 2),
            "lru_samples_per_s": round(packed_lru_rate, 1),
        },
        "loader_speedup": round(disk_rate / decode_rate, 1),
        "packed_loader_speedup": round(packed_rate / decode_rate, 1),
        "packed_over_disk": round(packed_rate / disk_rate, 2),
        "loader_speedup_cpu": round(cpu["decode"] / len(decode_order) / (cpu["disk"] / len(fast_order)), 1),
        "memory_over_disk": round(memory_rate / disk_rate, 2),
        "identical_examples": identical,
        "dataloader": loaders,
    }
    print(json.dumps(result, indent=2))
    print(
        f"loader: decode {result['decode']['samples_per_s']} samples/s, disk {result['disk']['samples_per_s']} "
        f"(x{result['loader_speedup']}; cache filled once in {fill['seconds']} s), "
        f"memory {result['memory']['samples_per_s']}, packed {result['packed']['samples_per_s']} "
        f"(x{result['packed_loader_speedup']} decode; packed once in {packed_info['seconds']} s)",
        file=sys.stderr,
    )
    if not identical:
        raise SystemExit("the loader modes drew different examples")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
