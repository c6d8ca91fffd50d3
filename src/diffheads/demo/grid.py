"""`make demo-real`: a person-specific model of GRID speaker s1, trained on CPU, speaking held-out sentences."""

from __future__ import annotations

import json
import platform
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diffheads.config import RunConfig, load_config
from diffheads.data.layout import DataLayout
from diffheads.demo.synthetic import PRESETS, clip_openings
from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_write_text

if TYPE_CHECKING:  # Lightning loads with these; the demo imports them when it runs
    from diffheads.demo.steps import DemoSteps
    from diffheads.training.train import TrainResult

# the trained judges (dlib) score lip motion, identity and flicker; the pixel measure mouth_open is left out: it
# followed something other than the lips (docs/demo.md)
REAL_METRICS = ("psnr", "ssim", "smoothness", "lmd", "lip_open", "lmd68", "identity", "flicker")
REPORT_KEYS = (  # metrics.json entries repeated at the top of report.json
    "lip_open_r",
    "control_lip_open_r",
    "judge_detection_rate",
    "id_distance",
    "csim",
    "flicker",
    "m_lmd68",
    "f_lmd68",
    "m_lmd",
    "f_lmd",
    "control_m_lmd",
    "control_f_lmd",
    "lmd_detection_rate",
)


@dataclass
class GridDemoData:
    """Which GRID s1 sentences the demo trains on and which it holds out."""

    raw: str = "../shared/data/grid/s1"  # folder of GRID s1 videos (any container PyAV reads)
    test_every: int = 30  # every 30th sentence in name order is held out (20 of the 600)
    test_offset: int = 14  # ... starting with the 15th
    max_train_clips: int = 0  # 0: every other sentence; N: the first N in name order
    max_test_clips: int = 0  # 0: every held-out sentence
    workers: int = 2  # prepare processes


QUICK_GRID = GridDemoData(test_every=3, test_offset=0, max_train_clips=4, max_test_clips=2)
# CI's learning check: the same recipe, shortened to fit beside the test suite and the synthetic demo
SHORT_GRID = GridDemoData(max_train_clips=300, max_test_clips=10)
SHORT_OVERRIDES = ["trainer.max_steps=300", "trainer.max_time=00:00:09:00", "sample.batch_size=10"]
QUICK_OVERRIDES = [
    "trainer.max_steps=3",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "sample.steps=2",
    "sample.max_frames=10",
    "optim.batch_size=4",
]


def grid_clips(raw: Path) -> list[Path]:
    """The GRID videos under `raw` in name order; one line of help when there are none."""
    from diffheads.prepare.sources import VIDEO_SUFFIXES

    if not raw.is_dir():
        raise DiffheadsError(
            f"GRID speaker s1 not found at {raw}; pass --data with a folder of GRID s1 videos "
            "(the GRID audio-visual corpus, Cooke et al. 2006, CC BY 4.0; the project's shared/data/grid/s1)"
        )
    clips = sorted(p for p in raw.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if len(clips) < 2:
        raise DiffheadsError(f"{raw} holds {len(clips)} video(s); the GRID demo needs a folder of GRID s1 sentences")
    return clips


def split_sentences(clips: list[Path], data: GridDemoData) -> tuple[list[Path], list[Path]]:
    """(train, held-out) videos: a fixed split by position in name order."""
    test = [p for i, p in enumerate(clips) if i % data.test_every == data.test_offset % data.test_every]
    train = [p for p in clips if p not in set(test)]
    if data.max_test_clips:
        test = test[: data.max_test_clips]
    if data.max_train_clips:
        train = train[: data.max_train_clips]
    return train, test


def _raw_folder(out: Path, train: list[Path], test: list[Path]) -> Path:
    """A folder of links to the chosen sentences, so that prepare sees exactly them."""
    folder = out / "raw"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in train + test:
        (folder / path.name).symlink_to(path.resolve())
    return folder


def prepare_grid(out: Path, data: GridDemoData, size: int, progress: bool) -> dict[str, Any]:
    """Align the chosen sentences at the model's size into out/data (resumed when already there)."""
    from diffheads.audio.encoders import LogMelEncoder
    from diffheads.face.align import AlignConfig
    from diffheads.prepare.clip import PrepareConfig
    from diffheads.prepare.run import prepare_dataset
    from diffheads.prepare.split import SplitRule

    train, test = split_sentences(grid_clips(Path(data.raw)), data)
    stamp = out / "data" / "grid_demo.json"
    wanted = {"size": size, "train": [p.stem for p in train], "test": [p.stem for p in test]}
    if stamp.is_file() and json.loads(stamp.read_text()) != wanted:
        shutil.rmtree(out / "data")  # another size or split: start again rather than mix
    raw = _raw_folder(out, train, test)
    report = prepare_dataset(
        raw,
        out / "data",
        PrepareConfig(align=AlignConfig(size=size)),
        split=SplitRule(test_clips=frozenset(p.stem for p in test)),
        encoder=LogMelEncoder(),
        workers=data.workers,
        progress=progress,
    )
    atomic_write_text(stamp, json.dumps(wanted))
    return report


def measure_openings(layout: DataLayout, videos: dict[str, Path]) -> dict[str, dict[str, np.ndarray]]:
    """Per clip: mouth opening on the real ("truth") and on the generated frames, in the real clip's mouth boxes."""
    measures = {}
    for cid, path in videos.items():
        generated, real = clip_openings(layout, cid, path)
        measures[cid] = {"truth": real, "generated": generated}
    return measures


def run_grid_demo(
    out: str | Path = "outputs/demo-grid",
    config: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    quick: bool = False,
    data: GridDemoData | None = None,
    progress: bool = True,
    short: bool = False,
) -> dict[str, Any]:
    """Prepare GRID s1, train a person-specific model, speak every held-out sentence, measure; returns the report.

    quick: a smoke run of seconds (no learning expected); short: CI's shortened learning check.
    """
    from diffheads.demo.steps import DemoSteps
    from diffheads.training.train import train

    out = Path(out)
    data = data or (QUICK_GRID if quick else SHORT_GRID if short else GridDemoData())
    grid_clips(Path(data.raw))  # a missing corpus fails before anything is written
    for stale in ("train", "videos", "eval"):
        shutil.rmtree(out / stale, ignore_errors=True)
    cfg = grid_config(out, config, overrides, quick, short)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    steps = DemoSteps(progress)
    prep, prepare_s = steps.run(
        "preparing the GRID s1 sentences", prepare_grid, out, data, cfg.model.frame_size, steps.bars
    )
    result, train_s = steps.run("training", train, cfg, progress=progress, own_progress=True)
    model_path = out / "model.ckpt"
    model_path.write_bytes(result.model_path.read_bytes())
    videos, summary, seconds = generate_and_evaluate(out, cfg, model_path, steps, grid_alignments(Path(data.raw)))
    run = GridRun(cfg, data, quick, short, prep, result, model_path, videos, summary, prepare_s, train_s, **seconds)
    report = grid_report(run)
    report["figures"] = [str(p) for p in grid_figures(out, videos)]
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=float))
    return report


def grid_config(out: Path, config: str | Path | None, overrides: Sequence[str], quick: bool, short: bool) -> RunConfig:
    """The GRID run config: the preset (or `config`) on out/data, training into out/train, then `overrides`."""
    base = [f"data.root={out / 'data'}", f"trainer.out_dir={out / 'train'}"]
    preset = QUICK_OVERRIDES if quick else SHORT_OVERRIDES if short else []
    return load_config(config or PRESETS / "grid.yaml", base + preset + list(overrides))


def grid_alignments(raw: Path) -> Path | None:
    """GRID's word alignments beside the videos (grid/align/s1 for grid/s1), or None (a voice detector is used)."""
    folder = raw.parent / "align" / raw.name
    return folder if folder.is_dir() else None


def generate_and_evaluate(
    out: Path, cfg: RunConfig, model_path: Path, steps: DemoSteps, alignments: Path | None = None
) -> tuple[dict[str, Path], dict[str, Any], dict[str, float]]:
    """Speak the held-out sentences (out/videos), evaluate them (out/eval): (clip id -> video, summary, seconds)."""
    from diffheads.evaluate.run import EvaluateConfig, evaluate
    from diffheads.sample.test_set import generate_test_set

    gen, sample_s = steps.run(
        "generating the held-out sentences",
        generate_test_set,
        model_path,
        out / "data",
        out / "videos",
        cfg.sample,
        skip_existing=False,
        seed=cfg.trainer.seed,
        progress=steps.bars,
    )
    videos = {str(p.relative_to(out / "videos").with_suffix("")): p for p in gen.written}
    metrics = EvaluateConfig(metrics=REAL_METRICS, alignments=str(alignments) if alignments else None)
    summary, evaluate_s = steps.run(
        "evaluating them", evaluate, out / "videos", out / "data", out / "eval", metrics, progress=steps.bars
    )
    return videos, summary, {"sample_s": sample_s, "evaluate_s": evaluate_s}


@dataclass
class GridRun:
    """What a GRID demo run made, for its report."""

    cfg: RunConfig
    data: GridDemoData
    quick: bool
    short: bool
    prep: dict[str, Any]  # prepare's report
    result: TrainResult
    model_path: Path
    videos: dict[str, Path]  # clip id -> generated video
    summary: dict[str, Any]  # evaluate's summary
    prepare_s: float
    train_s: float
    sample_s: float
    evaluate_s: float


def grid_report(run: GridRun) -> dict[str, Any]:
    """report.json without its figures: the lip-sync keys first, then sizes, timings and settings."""
    metrics, cfg = run.summary["metrics"], run.cfg
    n_frames = int(run.summary["n_frames"])
    return {
        **{key: metrics.get(key, {}).get("value") for key in REPORT_KEYS},
        "real_lmd_detection_rate": metrics.get("lmd_detection_rate", {}).get("real"),
        "real_judge_detection_rate": metrics.get("judge_detection_rate", {}).get("real"),
        "lip_open_measure": metrics.get("lip_open_r", {}).get("variant"),
        "control": "each generated clip against the real frames of another held-out sentence (chance level; GRID's "
        "fixed grammar makes it a little above 0)",
        "n_clips": len(run.videos),
        "n_frames": n_frames,
        "n_train_clips": run.prep["train_clips"],
        "n_test_clips": run.prep["test_clips"],
        "prepare_seconds": round(run.prepare_s, 1),
        "train_seconds": round(run.train_s, 1),
        "sample_seconds": round(run.sample_s, 1),
        "sample_seconds_per_frame": round(run.sample_s / max(1, n_frames), 4),
        "evaluate_seconds": round(run.evaluate_s, 1),
        "train_steps": run.result.steps,
        "final_loss": run.result.final_loss,
        "solver": cfg.sample.solver.value,
        "sample_steps": cfg.sample.steps,
        "image_size": cfg.model.frame_size,  # of the videos; the network runs at network_size
        "network_size": cfg.model.image_size,
        "prediction": cfg.diffusion.prediction.value,
        "quick": run.quick,
        "short": run.short,
        "dataset": {"corpus": "GRID speaker s1 (Cooke et al. 2006, CC BY 4.0)", **asdict(run.data)},
        "evaluation": {name: {"generated": m.get("value"), "real": m.get("real")} for name, m in metrics.items()},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "model": str(run.model_path),
    }


def grid_figures(out: Path, videos: dict[str, Path]) -> list[Path]:
    """contact_sheet.png (real rows over generated rows), mouth_strip.png (the mouth enlarged, real over generated),
    mouth_opening.png and, when logged, loss.png."""
    from diffheads.demo.plots import contact_sheet, loss_plot, mouth_strip, opening_plot

    layout = DataLayout.of(out / "data")
    measures = measure_openings(layout, videos)
    figures = [
        contact_sheet(out / "contact_sheet.png", layout, videos, max_clips=8),
        mouth_strip(out / "mouth_strip.png", layout, videos),
        opening_plot(out / "mouth_opening.png", measures, truth_label="real frames (measured)"),
    ]
    loss = loss_plot(out / "loss.png", out / "train")
    return figures + ([loss] if loss else [])
