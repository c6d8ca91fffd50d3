"""Figures of the demo report: contact sheet, mouth-opening curves, training loss."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from diffheads.data.layout import DataLayout
from diffheads.io.atomic import atomic_path
from diffheads.io.image import write_png


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def contact_sheet(
    path: Path, layout: DataLayout, videos: dict[str, Path], n_cols: int = 10, max_clips: int = 6
) -> Path:
    """PNG grid: for each clip a row of true frames above a row of generated frames, upscaled to >= 96 px."""
    from diffheads.io.video import read_video

    rows = []
    for cid in sorted(videos)[:max_clips]:
        fake, _ = read_video(videos[cid])
        real, _ = read_video(layout.video(cid))
        n = min(len(fake), len(real))
        picks = np.linspace(0, n - 1, n_cols).round().astype(int)
        size = fake.shape[1]
        if real.shape[1] != size:
            real = _nearest(real, size)
        rows.append(np.concatenate(list(real[picks]), axis=1))
        rows.append(np.concatenate(list(fake[picks]), axis=1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
    sheet = np.concatenate(rows[:-1], axis=0)
    scale = max(1, 96 // rows[0].shape[0])
    sheet = sheet.repeat(scale, axis=0).repeat(scale, axis=1)
    return write_png(path, sheet)


def _mouth_box(points: np.ndarray, size: int, pad: float = 0.35) -> tuple[slice, slice]:
    """(rows, cols) of one box holding the mouth (68-point indices 48-67) in every frame, padded by `pad` x width."""
    mouth = points[:, 48:68]
    lo, hi = mouth.min(axis=(0, 1)), mouth.max(axis=(0, 1))
    margin = pad * (hi[0] - lo[0])
    x0, y0 = (np.floor(lo - margin).astype(int)).clip(0, size - 1)
    x1, y1 = (np.ceil(hi + margin).astype(int) + 1).clip(1, size)
    return slice(y0, y1), slice(x0, x1)


def mouth_strip(
    path: Path, layout: DataLayout, videos: dict[str, Path], n_cols: int = 16, max_clips: int = 3, height: int = 64
) -> Path:
    """PNG: per clip, the mouth on consecutive frames from the middle of the sentence (every other frame), real row
    above generated row, enlarged by a whole factor to about `height` px; the box holds the mouth of the real clip
    in all its frames."""
    from diffheads.io.video import read_video

    rows = []
    for cid in sorted(videos)[:max_clips]:
        fake, _ = read_video(videos[cid])
        real, _ = read_video(layout.video(cid))
        n, size = min(len(fake), len(real)), fake.shape[1]
        points = np.load(layout.landmarks(cid)) * (size / real.shape[1])
        box = _mouth_box(points[:n], size)
        picks = np.clip(n // 2 - n_cols + 2 * np.arange(n_cols), 0, n - 1)
        for frames in (real[:n] if real.shape[1] == size else _nearest(real[:n], size), fake[:n]):
            crops = frames[picks][:, box[0], box[1]]
            zoom = max(1, height // crops.shape[1])
            crops = crops.repeat(zoom, axis=1).repeat(zoom, axis=2)
            gap = np.full((crops.shape[1], 2, 3), 255, np.uint8)
            rows.append(np.concatenate([c for crop in crops for c in (crop, gap)][:-1], axis=1))
        rows.append(np.full((6, rows[-1].shape[1], 3), 255, np.uint8))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows[:-1]]
    return write_png(path, np.concatenate(rows, axis=0))


def _nearest(frames: np.ndarray, size: int) -> np.ndarray:
    """Frames (T, S, S, 3) resampled to (T, size, size, 3) by nearest pixel centres."""
    step = frames.shape[1] / size
    grid = (np.arange(size) * step + step / 2).astype(int)
    return frames[:, grid][:, :, grid]


def _zscore(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 0 else x - x.mean()


def opening_plot(
    path: Path, measures: dict[str, dict[str, Any]], max_clips: int = 6, truth_label: str = "true opening"
) -> Path:
    """Mouth opening over time, true (or real) vs measured on generated frames (z-scored), one panel per clip."""
    plt = _pyplot()
    ids = sorted(measures)[:max_clips]
    fig, axes = plt.subplots(len(ids), 1, figsize=(9, 2.2 * len(ids)), squeeze=False)
    for ax, cid in zip(axes[:, 0], ids):
        m = measures[cid]
        t = np.arange(len(m["truth"])) / 25.0
        ax.plot(t, _zscore(m["truth"]), label=truth_label, color="black")
        ax.plot(t, _zscore(m["generated"]), label="generated (measured)", color="tab:red")
        r = np.corrcoef(m["truth"], m["generated"])[0, 1] if m["generated"].std() > 0 else float("nan")
        ax.set_title(f"{cid}   r = {r:.2f}", fontsize=9)
        ax.set_ylabel("z-score")
    axes[-1, 0].set_xlabel("seconds")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def loss_plot(path: Path, run_dir: Path) -> Path | None:
    """Training loss over steps from the CSV logger (None when no log exists)."""
    logs = sorted(run_dir.glob("csv/version_*/metrics.csv"))
    if not logs:
        return None
    steps, losses = [], []
    with open(logs[-1], newline="") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                steps.append(int(row["step"]))
                losses.append(float(row["train/loss"]))
    if not steps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(steps, losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
