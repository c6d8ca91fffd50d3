"""`make demo`: synthesise faces, train, generate held-out clips, measure lip sync, write a report."""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diffheads.config import RunConfig, SampleConfig, load_config
from diffheads.data.layout import DataLayout
from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_write_text
from diffheads.metrics.mouth import lip_sync_r, mouth_opening, pearson_r

if TYPE_CHECKING:  # Lightning loads with these; the demo imports them when it runs
    from diffheads.demo.steps import DemoSteps
    from diffheads.training.train import TrainResult

PRESETS = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class DemoData:
    """Size of the synthetic dataset the demo makes."""

    n_train_identities: int = 30  # many identities: the network must copy the face, not memorise it
    n_test_identities: int = 3
    clips_per_identity: int = 2
    test_clips_per_identity: int = 2
    seconds: float = 4.0
    seed: int = 0


@dataclass
class DemoDistill:
    """The demo's distillation: its model becomes a student sampling a frame in `target_steps` network calls."""

    teacher_steps: int = 4  # DDIM steps of the teacher on the trailing grid; each round halves them
    target_steps: int = 2
    steps_per_round: int = 240  # about 5 minutes on 2 cores (docs/demo.md)


QUICK_DISTILL = DemoDistill(teacher_steps=2, target_steps=1, steps_per_round=2)
QUICK_DATA = DemoData(
    n_train_identities=2, n_test_identities=1, clips_per_identity=1, test_clips_per_identity=1, seconds=1.0
)
QUICK_OVERRIDES = [
    "trainer.max_steps=3",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "sample.steps=2",
    "optim.batch_size=4",
]


def measure_clips(layout: DataLayout, videos: dict[str, Path], size: int) -> dict[str, dict[str, np.ndarray]]:
    """Per clip: true opening, opening measured on generated and on real frames (same mouth boxes), pixel error."""
    out = {}
    for cid, path in videos.items():
        generated, real = clip_openings(layout, cid, path)
        truth = np.load(layout.truth(cid))["mouth_open"].astype(np.float64)
        n = min(len(generated), len(truth))
        out[cid] = {
            "truth": truth[:n],
            "generated": generated[:n],
            "real": real[:n],
            "pixel_mae": np.array([pixel_mae(path, layout.video(cid))]),
        }
    return out


def pixel_mae(generated: Path, real: Path) -> float:
    """Mean absolute difference (0..255) between a generated clip and its real clip, over their common frames."""
    from diffheads.io.video import read_video

    a, b = read_video(generated)[0], read_video(real)[0]
    if a.shape[1:] != b.shape[1:]:
        raise DiffheadsError(f"{generated} is {a.shape[2]}x{a.shape[1]} but {real} is {b.shape[2]}x{b.shape[1]}")
    n = min(len(a), len(b))
    return float(np.abs(a[:n].astype(np.float64) - b[:n].astype(np.float64)).mean())


def clip_openings(layout: DataLayout, cid: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Mouth opening on the generated frames (video `path`) and on the real clip's frames, in the real mouth boxes."""
    from diffheads.io.video import read_video

    generated, _ = read_video(path)
    real, _ = read_video(layout.video(cid))
    lm = np.load(layout.landmarks(cid))[:, 48:68, :2].astype(np.float64)
    n = min(len(generated), len(real), len(lm))
    scale = generated.shape[2] / real.shape[2]
    return mouth_opening(generated[:n], lm[:n] * scale), mouth_opening(real[:n], lm[:n])


def lip_sync_summary(measures: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Pooled Pearson r (generated vs truth), its shuffled-pairing control and the real-frame ceiling."""
    ids = sorted(measures)
    gen = [measures[c]["generated"] for c in ids]
    truth = [measures[c]["truth"] for c in ids]
    shifted = truth[1:] + truth[:1]
    return {
        "lip_sync_r": lip_sync_r(gen, truth),
        "control_lip_sync_r": lip_sync_r(gen, shifted) if len(ids) > 1 else float("nan"),
        "lip_sync_r_real_frames": lip_sync_r([measures[c]["real"] for c in ids], truth),
        "per_clip_r": {c: pearson_r(measures[c]["generated"], measures[c]["truth"]) for c in ids},
    }


def write_figures(out: Path, layout: DataLayout, videos: dict[str, Path], measures: dict[str, Any]) -> list[Path]:
    """contact_sheet.png (true/generated rows), mouth_opening.png and loss.png."""
    from diffheads.demo.plots import contact_sheet, loss_plot, opening_plot

    paths = [
        contact_sheet(out / "contact_sheet.png", layout, videos),
        opening_plot(out / "mouth_opening.png", measures),
    ]
    loss = loss_plot(out / "loss.png", out / "train")
    if loss is not None:
        paths.append(loss)
    return paths


def run_demo(
    out: str | Path = "outputs/demo",
    config: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    quick: bool = False,
    data: DemoData | None = None,
    distillation: DemoDistill | None = None,
    distil: bool = True,
) -> dict[str, Any]:
    """The whole demo; returns (and writes) the report (its "student" is None with `distil` off)."""
    from diffheads.demo.steps import DemoSteps

    out = Path(out)
    for stale in ("data", "train", "videos", "eval", "distill", "student"):  # the demo owns these; old clips,
        shutil.rmtree(out / stale, ignore_errors=True)  # embeddings or students would leak in
    data = data or (QUICK_DATA if quick else DemoData())
    distillation = distillation or (QUICK_DISTILL if quick else DemoDistill())
    cfg = demo_config(out, config, overrides, quick)
    size = cfg.model.image_size
    torch.set_num_threads(max(1, torch.get_num_threads()))
    steps = DemoSteps()
    seconds = make_demo_data(out, data, size, steps)
    result, model_path, videos, more = train_and_generate(out, cfg, steps)
    layout = DataLayout.of(out / "data")
    measures = measure_clips(layout, videos, size)
    report = demo_report(cfg, result, measures, {**seconds, **more}, quick, data, model_path)
    report["figures"] = [str(p) for p in write_figures(out, layout, videos, measures)]
    report["evaluation"], report["evaluate_seconds"] = _evaluation(out, steps)
    report["drift"] = drift_summary(report["evaluation"].pop("drift", None))
    report["student"] = (
        distil_and_measure(out, model_path, distillation, cfg.trainer.seed, layout, size, steps) if distil else None
    )
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=float))
    return report


def demo_config(out: Path, config: str | Path | None, overrides: Sequence[str], quick: bool) -> RunConfig:
    """The demo's run config: the preset (or `config`) reading out/data and training into out/train, then `overrides`."""
    base = [f"data.root={out / 'data'}", f"trainer.out_dir={out / 'train'}"]
    return load_config(config or PRESETS / "demo.yaml", base + (QUICK_OVERRIDES if quick else []) + list(overrides))


def make_demo_data(out: Path, data: DemoData, size: int, steps: DemoSteps) -> dict[str, float]:
    """Synthesise the faces into out/data and embed their audio; the seconds of each ("synth", "embed")."""
    from diffheads.audio.encoders import LogMelEncoder
    from diffheads.prepare.embed import embed_dataset
    from diffheads.synth.dataset import make_synthetic_dataset

    n_clips = data.n_train_identities * data.clips_per_identity + data.n_test_identities * data.test_clips_per_identity
    _, synth_s = steps.run(
        f"synthesising {n_clips} clips",
        make_synthetic_dataset,
        out / "data",
        n_train_identities=data.n_train_identities,
        n_test_identities=data.n_test_identities,
        clips_per_identity=data.clips_per_identity,
        test_clips_per_identity=data.test_clips_per_identity,
        seconds=data.seconds,
        size=size,
        seed=data.seed,
        progress=steps.bars,
    )
    _, embed_s = steps.run(
        "embedding their audio", embed_dataset, out / "data", None, LogMelEncoder(), progress=steps.bars
    )
    return {"synth": synth_s, "embed": embed_s}


def train_and_generate(
    out: Path, cfg: RunConfig, steps: DemoSteps
) -> tuple[TrainResult, Path, dict[str, Path], dict[str, float]]:
    """Train, copy the model to out/model.ckpt, generate out/videos: (result, model, clip id -> video, seconds)."""
    from diffheads.training.train import train

    result, train_s = steps.run("training", train, cfg, own_progress=True)
    model_path = out / "model.ckpt"
    model_path.write_bytes(result.model_path.read_bytes())
    videos, sample_s = generate_clips(
        steps, "generating the held-out clips", model_path, out, "videos", cfg.sample, cfg.trainer.seed
    )
    return result, model_path, videos, {"train": train_s, "sample": sample_s}


def generate_clips(
    steps: DemoSteps, what: str, model: Path, out: Path, folder: str, sample: SampleConfig, seed: int
) -> tuple[dict[str, Path], float]:
    """Generate every held-out clip of out/data with `model` into out/`folder`: (clip id -> video, seconds)."""
    from diffheads.sample.test_set import generate_test_set

    gen, seconds = steps.run(
        what,
        generate_test_set,
        model,
        out / "data",
        out / folder,
        sample,
        skip_existing=False,
        seed=seed,
        progress=steps.bars,
    )
    return {str(p.relative_to(out / folder).with_suffix("")): p for p in gen.written}, seconds


def demo_report(
    cfg: RunConfig,
    result: TrainResult,
    measures: dict[str, dict[str, np.ndarray]],
    seconds: dict[str, float],
    quick: bool,
    data: DemoData,
    model_path: Path,
) -> dict[str, Any]:
    """The report's lip-sync measures, timings and settings (figures, evaluation, drift and student come after)."""
    n_frames = int(sum(len(m["truth"]) for m in measures.values()))
    return {
        **lip_sync_summary(measures),
        "pixel_mae": mean_pixel_mae(measures),
        "n_clips": len(measures),
        "n_frames": n_frames,
        "train_seconds": round(seconds["train"], 1),
        "sample_seconds": round(seconds["sample"], 1),
        "sample_seconds_per_frame": round(seconds["sample"] / max(1, n_frames), 4),
        "synth_seconds": round(seconds["synth"], 1),
        "embed_seconds": round(seconds["embed"], 1),
        "train_steps": result.steps,
        "final_loss": result.final_loss,
        "solver": cfg.sample.solver.value,
        "sample_steps": cfg.sample.steps,
        "image_size": cfg.model.image_size,
        "prediction": cfg.diffusion.prediction.value,
        "quick": quick,
        "dataset": dataclasses.asdict(data),
        "control": "lip_sync_r of generated clips against the true opening of another held-out clip (chance level)",
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "model": str(model_path),
    }


def mean_pixel_mae(measures: dict[str, dict[str, np.ndarray]]) -> float:
    """The clips' mean pixel error to their real frames (0..255)."""
    return float(np.mean([m["pixel_mae"][0] for m in measures.values()]))


def distil_and_measure(
    out: Path,
    teacher: Path,
    settings: DemoDistill,
    seed: int,
    layout: DataLayout,
    size: int,
    steps: DemoSteps | None = None,
) -> dict[str, Any]:
    """Distil the demo model (out/distill/student_N.ckpt), generate the held-out clips with the last student
    (out/student/) and measure them as the teacher's: lip sync, its control and pixel error."""
    from diffheads.checkpoint import load_model
    from diffheads.demo.steps import DemoSteps
    from diffheads.training.distill import distill

    steps = steps or DemoSteps()
    done, distill_s = steps.run(
        "distilling the model",
        distill,
        teacher,
        out / "data",
        out / "distill",
        target_steps=settings.target_steps,
        teacher_steps=settings.teacher_steps,
        steps_per_round=settings.steps_per_round,
        overrides=["trainer.accelerator=cpu"],  # the demo runs on CPU, as its training did (configs/demo.yaml)
        log=lambda line: print(f"diffheads demo: distill {line}", file=sys.stderr, flush=True),
        own_progress=True,
    )
    student = done.rounds[-1].model_path
    sample = load_model(student, "cpu").cfg.sample
    videos, sample_s = generate_clips(
        steps, "generating the held-out clips with the student", student, out, "student", sample, seed
    )
    measures = measure_clips(layout, videos, size)
    n_frames = int(sum(len(m["truth"]) for m in measures.values()))
    summary = lip_sync_summary(measures)
    first = min(videos)
    return {
        "model": str(student),
        "network_calls_per_frame": sample.steps,
        "solver": sample.solver.value,
        "teacher_steps": settings.teacher_steps,
        "rounds": len(done.rounds),
        "steps_per_round": settings.steps_per_round,
        "lip_sync_r": summary["lip_sync_r"],
        "control_lip_sync_r": summary["control_lip_sync_r"],
        "per_clip_r": summary["per_clip_r"],
        "pixel_mae": mean_pixel_mae(measures),
        "distill_seconds": round(distill_s, 1),
        "sample_seconds": round(sample_s, 1),
        "sample_seconds_per_frame": round(sample_s / max(1, n_frames), 4),
        "videos": str(out / "student"),
        "try": f"--video {layout.video(first)} --no-align --audio {layout.audio(first)}",
    }


def drift_summary(drift: dict[str, Any] | None) -> dict[str, Any] | None:
    """The demo report's drift lines: per measure and comparison, the first and last second and the slope."""
    if not drift:
        return None
    out: dict[str, Any] = {"n_videos": drift["n_videos"], "report": "eval/report.md (drift section, plots/drift.png)"}
    for comparison in ("against_identity", "against_real"):
        for name, entry in drift.get(comparison, {}).items():
            curve = [v for v in entry["curve"] if v is not None and np.isfinite(v)]
            if curve:
                out.setdefault(comparison, {})[name] = {
                    "first_second": curve[0],
                    "last_second": curve[-1],
                    "seconds": len(entry["curve"]),
                    "slope_per_min": entry.get("slope_per_min"),
                    "units": entry["units"],
                }
    return out


def _evaluation(out: Path, steps: DemoSteps) -> tuple[dict[str, Any], float]:
    """`diffheads evaluate` on the demo's clips with the metrics that need no downloaded weights (out/eval/);
    the drift section is returned whole under "drift"."""
    from diffheads.evaluate.run import EvaluateConfig, evaluate

    cfg = EvaluateConfig(metrics=("psnr", "ssim", "blinks", "smoothness", "lipsync", "drift"))
    summary, seconds = steps.run(
        "evaluating the clips", evaluate, out / "videos", out / "data", out / "eval", cfg, progress=steps.bars
    )
    values = {
        name: {"generated": m.get("value"), "real": m.get("real")}
        for name, m in summary["metrics"].items()
        if name != "drift"
    }
    return {
        "metrics": values,
        "report": str(out / "eval" / "report.md"),
        "drift": summary["metrics"].get("drift"),
    }, round(seconds, 1)
