"""What `evaluate` writes: metrics.json, per_video.csv, report.md and plots/."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from diffheads.io.atomic import atomic_path, atomic_write_text

# The paper's metric groups, in order: image and video quality, lip sync, expressiveness, smoothness.
COLUMNS = (
    ("PSNR", "psnr"),
    ("SSIM", "ssim"),
    ("FID", "fid"),
    ("FVD", "fvd"),
    ("AV Off", "av_offset"),
    ("AV Conf", "av_confidence"),
    ("LSE-D", "lse_d"),
    ("LSE-C", "lse_c"),
    ("mouth-open r", "mouth_open_r"),
    ("mouth-open r (control)", "control_mouth_open_r"),
    ("M-LMD", "m_lmd"),
    ("M-LMD (control)", "control_m_lmd"),
    ("F-LMD", "f_lmd"),
    ("F-LMD (control)", "control_f_lmd"),
    ("face found (LMD)", "lmd_detection_rate"),
    ("WER", "wer"),
    ("Blinks/s", "blinks_per_second"),
    ("Blink dur (s)", "blink_duration_s"),
    ("OFM", "ofm"),
    ("F-MSE", "fmse"),
    ("lip-sync r (synthetic)", "lip_sync_r"),
    ("lip-open r (dlib)", "lip_open_r"),
    ("lip-open r (control)", "control_lip_open_r"),
    ("M-LMD68", "m_lmd68"),
    ("F-LMD68", "f_lmd68"),
    ("id distance", "id_distance"),
    ("CSIM", "csim"),
    ("flicker", "flicker"),
)
PER_VIDEO_PLOTS = (
    "psnr",
    "ssim",
    "av_offset",
    "av_confidence",
    "blinks_per_second",
    "ofm",
    "fmse",
    "lip_sync_r",
    "mouth_open_r",
    "m_lmd",
    "f_lmd",
    "lmd_detection_rate",
)


def _fmt(value: Any) -> str:
    """A table cell: 4 significant digits, '-' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def per_video_csv(rows: list[dict[str, Any]]) -> str:
    """One row per video, every column any video has (empty where a video lacks it)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in keys})
    return buf.getvalue()


def report_markdown(summary: dict[str, Any], plots: list[Path]) -> str:
    """The human-readable report: the table, what each number is, what was skipped and why."""
    metrics = summary["metrics"]
    shown = [(label, key) for label, key in COLUMNS if key in metrics]
    lines = [
        "# Evaluation report",
        "",
        f"Generated: `{summary['generated_dir']}`; real: `{summary['real_dir']}`; "
        f"{summary['n_videos']} videos, {summary['n_frames']} frames at {summary['fps']} fps.",
        "",
        "| | " + " | ".join(label for label, _ in shown) + " |",
        "|---|" + "---|" * len(shown),
        "| generated | " + " | ".join(_fmt(metrics[key].get("value")) for _, key in shown) + " |",
        "| real | " + " | ".join(_fmt(metrics[key].get("real")) for _, key in shown) + " |",
        "",
        "The real row scores the ground-truth videos the same way (metrics comparing two sets have none).",
        "",
        "## What each number is",
        "",
    ]
    for label, key in shown:
        entry = metrics[key]
        details = ", ".join(
            f"{k} {v}" for k, v in entry.items() if k not in ("value", "real", "variant", "weights") and v is not None
        )
        weights = entry.get("weights")
        hashed = f"; weights `{Path(weights['file']).name}` sha256 {weights['sha256'][:12]}..." if weights else ""
        lines.append(f"- **{label}**: {entry.get('variant', '')} ({details}){hashed}")
    if "drift" in metrics:
        lines += drift_markdown(metrics["drift"])
    if summary["skipped"]:
        lines += ["", "## Not computed", ""]
        lines += [f"- **{k}**: {v}" for k, v in summary["skipped"].items()]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    return "\n".join(lines) + "\n"


DRIFT_LABELS = {
    "colour_de2000": "colour (Delta E 00)",
    "shape_rms_iod": "shape (RMS / IOD)",
    "sharpness_ratio": "sharpness (ratio)",
    "lip_sync_r": "lip sync r (windowed)",
}
COMPARISONS = {"against_identity": "identity frame", "against_real": "real frame"}


def drift_markdown(drift: dict[str, Any]) -> list[str]:
    """The drift table: each measure at 5/10/30/60 s (those some video reaches) and its slope per minute."""
    reached = [x for x, n in drift["videos_reaching"].items() if n]
    regions = ", ".join(f"{k} ({v} videos)" for k, v in drift["face_region"].items())
    intro = (
        f"Against the identity frame ({', '.join(drift['identity'])}) and the real frame at the same time; "
        f"face region: {regions}. `at X s`: the mean over the videos that reach X s of their value in the "
        "second ending at X s; slope: least-squares line through each video's per-second curve, per minute, "
        "averaged over videos. Definitions: docs/metrics.md, Drift."
    )
    lines = [
        "",
        "## Drift",
        "",
        intro,
        "",
        "| measure | against | " + " | ".join(f"at {x}" for x in reached) + " | slope / min |",
        "|---|---|" + "---|" * (len(reached) + 1),
    ]
    for comparison, against in COMPARISONS.items():
        for name, entry in drift.get(comparison, {}).items():
            cells = [_fmt(entry.get(f"at_{x}")) for x in reached] + [_fmt(entry.get("slope_per_min"))]
            lines.append(f"| {DRIFT_LABELS.get(name, name)} | {against} | " + " | ".join(cells) + " |")
    lines += ["", "![drift](plots/drift.png)"]
    return lines


def plot_drift(path: Path, drift: dict[str, Any]) -> Path | None:
    """The per-second mean drift curves: colour, shape, sharpness and windowed lip sync over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in DRIFT_LABELS if any(n in drift.get(c, {}) for c in COMPARISONS)]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        for (comparison, against), style in zip(COMPARISONS.items(), ("-", "--")):
            entry = drift.get(comparison, {}).get(name)
            if entry is not None:
                curve = np.array([np.nan if v is None else v for v in entry["curve"]], np.float64)
                ax.plot(np.arange(len(curve)) + 0.5, curve, style, marker=".", label=f"vs {against}")
        ax.set(xlabel="s", title=DRIFT_LABELS[name])
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    """Write a figure atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def plot_per_video(path: Path, rows: list[dict[str, Any]]) -> Path | None:
    """Distributions of the per-video metrics, generated next to real."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    boxes: dict[str, tuple[list[list[float]], list[str]]] = {}
    for key in PER_VIDEO_PLOTS:
        data, labels = [], []
        for prefix, label in (("", "generated"), ("real_", "real")):
            values = [float(r[prefix + key]) for r in rows if r.get(prefix + key) is not None]
            values = [v for v in values if math.isfinite(v)]  # PSNR of identical frames is infinite
            if values:
                data.append(values)
                labels.append(label)
        if data:
            boxes[key] = (data, labels)
    if not boxes:
        return None
    fig, axes = plt.subplots(1, len(boxes), figsize=(2.6 * len(boxes), 3.0), squeeze=False)
    for ax, (key, (data, labels)) in zip(axes[0], boxes.items()):
        ax.boxplot(data, tick_labels=labels, showmeans=True)
        for i, values in enumerate(data, start=1):
            ax.scatter(np.full(len(values), i) + np.linspace(-0.08, 0.08, len(values)), values, s=8, alpha=0.6)
        ax.set_title(key, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(plots_dir: Path, clip: str, curves: dict[str, Any]) -> list[Path]:
    """Eye aspect ratio, SyncNet distance by offset and mouth opening (vs truth, vs real) of the chosen clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = clip.replace("/", "_")
    paths = []
    if "ear" in curves or "real_ear" in curves:
        fig, ax = plt.subplots(figsize=(7, 2.6))
        for key, label in (("ear", "generated"), ("real_ear", "real")):
            if key in curves:
                ax.plot(np.arange(len(curves[key])) / 25, curves[key], label=label)
        ax.set(xlabel="s", ylabel="eye aspect ratio", title=f"blinks: {clip}")
        ax.legend()
        paths.append(_save(fig, plots_dir / f"blinks_{name}.png"))
    if "sync" in curves or "real_sync" in curves:
        fig, ax = plt.subplots(figsize=(5, 2.6))
        for key, label in (("sync", "generated"), ("real_sync", "real")):
            if key in curves:
                k = (len(curves[key]) - 1) // 2
                ax.plot(k - np.arange(len(curves[key])), curves[key], marker=".", label=label)
        ax.set(xlabel="AV offset (frames)", ylabel="mean SyncNet distance", title=f"sync: {clip}")
        ax.legend()
        paths.append(_save(fig, plots_dir / f"sync_{name}.png"))
    if "mouth_open" in curves:
        opening, truth = curves["mouth_open"]
        fig, ax = plt.subplots(figsize=(7, 2.6))
        scale = float(np.max(opening)) / max(float(np.max(truth)), 1e-9) if len(opening) else 1.0
        ax.plot(np.arange(len(truth)) / 25, np.asarray(truth) * scale, label="true opening (scaled)")
        ax.plot(np.arange(len(opening)) / 25, opening, label="measured on generated")
        ax.set(xlabel="s", ylabel="mouth opening (px)", title=f"lip sync: {clip}")
        ax.legend()
        paths.append(_save(fig, plots_dir / f"mouth_{name}.png"))
    if "mouth_open_real" in curves:
        opening, real = curves["mouth_open_real"]
        fig, ax = plt.subplots(figsize=(7, 2.6))
        ax.plot(np.arange(len(real)) / 25, real, label="real")
        ax.plot(np.arange(len(opening)) / 25, opening, label="generated")
        ax.set(xlabel="s", ylabel="mouth opening (px)", title=f"mouth opening in the real mouth box: {clip}")
        ax.legend()
        paths.append(_save(fig, plots_dir / f"mouth_real_{name}.png"))
    return paths


def write_outputs(
    out: Path, summary: dict[str, Any], rows: list[dict[str, Any]], clip: str, curves: dict[str, Any]
) -> None:
    """metrics.json, per_video.csv, plots/ and report.md (each written atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    plots = [p for p in [plot_per_video(out / "plots" / "per_video.png", rows)] if p is not None]
    plots += plot_curves(out / "plots", clip, curves)
    drift = summary["metrics"].get("drift")
    # shown in the report's drift section, not among the other plots
    drift_plot = plot_drift(out / "plots" / "drift.png", drift) if drift else None
    summary["outputs"] = {
        "metrics": str(out / "metrics.json"),
        "per_video": str(out / "per_video.csv"),
        "report": str(out / "report.md"),
        "plots": [str(p) for p in plots] + ([str(drift_plot)] if drift_plot is not None else []),
    }
    atomic_write_text(out / "metrics.json", json.dumps(_clean(summary), indent=2) + "\n")
    atomic_write_text(out / "per_video.csv", per_video_csv([_clean(r) for r in rows]))
    atomic_write_text(out / "report.md", report_markdown(summary, plots))
