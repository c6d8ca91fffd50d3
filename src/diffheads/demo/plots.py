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
            step = real.shape[1] / size
            grid = (np.arange(size) * step + step / 2).astype(int)
            real = real[:, grid][:, :, grid]
        rows.append(np.concatenate(list(real[picks]), axis=1))
        rows.append(np.concatenate(list(fake[picks]), axis=1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
    sheet = np.concatenate(rows[:-1], axis=0)
    scale = max(1, 96 // rows[0].shape[0])
    sheet = sheet.repeat(scale, axis=0).repeat(scale, axis=1)
    return write_png(path, sheet)


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
