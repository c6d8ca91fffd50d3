"""Long-video drift: the reference's sampling loop (its stabilisation) against ours, on minute-long held-out clips.

The synthesiser makes ground truth of any length: the demo's held-out identities (default id030..id032,
the demo's seed 0) speak new speech (clip index 10, which no dataset of the demo has) for `--seconds`
(default 60) into a work folder (default outputs/long_video/data, re-used while its settings match).
For each loop the demo model generates every clip (`generate_test_set`, the same noise seed for every
loop; finished videos are kept, so a rerun resumes) and `evaluate --metrics drift` scores them against
the real clips: per-second curves of face colour (CIEDE2000) and face shape (RMS per inter-ocular distance)
against the identity frame and against the real frame, and of windowed lip sync (Pearson r of the
generated and the real mouth opening in 10 s windows), each the mean over the clips, with the values
at 5, 10, 30 and 60 s. The real clips scored the same way (`truth`) give each curve's floor: the
synthetic face moves its mouth and head, so real video is not 0 against its identity frame.

Loops (LOOPS: name -> changes to the sampling settings, so a new loop is one line):
  reference  the reference's loop: every 15 frames the identity frame goes into the oldest motion slot
             (stabilize_every=15), with the same solver and steps as ours. The reference's own per-frame
             sampler (ancestral DDPM, 100 steps) costs ~49 s per generated second on this machine
             (benchmarks/sampling.py), hours for 3 clips of a minute; the stabilisation rule is about
             the loop, not the per-frame solver, so both loops share one solver unless
             `--reference-solver ancestral --reference-steps 100` asks for the faithful one.
  ours       the model's own sampling settings (the demo's: no stabilisation, colour re-anchoring on) with
             --solver/--steps.
  ours_no_anchor  ours without colour re-anchoring (sample.colour_anchor=false): the control that separates
             what the training recipe does from what the re-anchoring does (not in the default --loops).

Writes benchmarks/results/long_video.json (curves, summaries, the keys drift_colour_60s_ref/_ours,
drift_shape_60s_ref/_ours, lipsync_r_first10s_ours, lipsync_r_last10s_ours and the 5 s values; with
--seconds under 60 the "60s" keys hold the values at the longest summary time reached, named in
`drift_long_seconds`) and benchmarks/results/long_video.png (the curves).

Usage: python benchmarks/long_video.py [--checkpoint outputs/demo/model.ckpt] [--seconds 60]
       [--identities 30,31,32] [--clip-index 10] [--solver dpm++2m] [--steps 10] [--loops reference,ours]
       [--reference-solver ancestral --reference-steps 100] [--work outputs/long_video] [--device cpu]
       [--out benchmarks/results/long_video.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from diffheads.prepare.embed import embed_dataset
from diffheads.audio.encoders import AudioEncoder, LogMelEncoder, build_encoder
from diffheads.checkpoint import LoadedModel, load_model
from diffheads.config import SampleConfig, Solver, to_dict
from diffheads.evaluate.run import EvaluateConfig, evaluate, sha256
from diffheads.sample.test_set import generate_test_set
from diffheads.metrics.drift import SUMMARY_SECONDS
from diffheads.synth.dataset import make_held_out_clips

REFERENCE_STABILIZE_EVERY = 15  # the reference's rule: the identity frame into the oldest motion slot every 15 frames
LOOPS: dict[str, dict[str, Any]] = {  # loop name -> changes to the model's sampling settings
    "reference": {"stabilize_every": REFERENCE_STABILIZE_EVERY, "colour_anchor": False},
    "ours": {},
    "ours_no_anchor": {"colour_anchor": False},
}
DEFAULT_LOOPS = ("reference", "ours")
SHORT = {"reference": "ref", "ours": "ours", "ours_no_anchor": "ours_no_anchor"}  # the suffix of a loop's headline keys
DRIFT_MEASURES = {"colour": "colour_de2000", "shape": "shape_rms_iod"}  # headline name -> drift measure
CURVES = ("colour_de2000", "shape_rms_iod", "sharpness_ratio", "lip_sync_r")
HEADLINE_AGAINST = "against_identity"
GOALS = {"ours_long_over_5s_at_most": 1.2, "reference_over_ours_long_at_least": 2.0,
         "lipsync_last_over_first_at_least": 0.9}


def parse_identities(text: str) -> list[int]:
    """'30,31,32' or 'id030,id031' -> [30, 31, 32]."""
    try:
        return [int(part.strip().removeprefix("id")) for part in text.split(",") if part.strip()]
    except ValueError:
        sys.exit(f"--identities must be identity indices like 30,31,32 (or id030,id031), got {text!r}")


def prepare_data(root: Path, clips: list[tuple[int, int]], seconds: float, size: int, seed: int,
                 encoder: AudioEncoder) -> dict[str, Any]:
    """The held-out clips with their embeddings in `root`, rendered again unless synth.json says they match."""
    wanted = {"seed": seed, "clips": [list(c) for c in clips], "seconds": float(seconds), "size": size}
    info_path, list_path = root / "synth.json", root / "file_list_test.txt"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if root.is_dir() and any(root.iterdir()) and "clips" not in info:
        sys.exit(f"{root} holds other data than this benchmark's clips (its synth.json lists no clips); "
                 "pass another --work")
    lines = list_path.read_text().split() if list_path.is_file() else []
    complete = bool(lines) and all((root / "video" / line).is_file() for line in lines)
    if not complete or any(info.get(k) != v for k, v in wanted.items()):
        shutil.rmtree(root, ignore_errors=True)  # this benchmark's own clips, of other settings: they must not leak in
        info = make_held_out_clips(root, clips, seconds=seconds, size=size, seed=seed)
    embed_dataset(root, None, encoder, splits=("test",), overwrite=True, progress=False)  # cheap; always the model's
    return info


def loop_sample(model: LoadedModel, name: str, args: argparse.Namespace) -> SampleConfig:
    """The sampling settings of loop `name`: the model's, with --solver/--steps and the loop's changes."""
    base = dataclasses.replace(model.cfg.sample, solver=Solver(args.solver), steps=args.steps, max_frames=0,
                               devices=1, num_nodes=1)
    sample = dataclasses.replace(base, **LOOPS[name])
    if name == "reference":
        sample = dataclasses.replace(sample, solver=Solver(args.reference_solver or args.solver),
                                     steps=args.reference_steps or args.steps)
    return sample


def generate_loop(model: LoadedModel, data: Path, out: Path, sample: SampleConfig, settings: dict[str, Any],
                  seed: int, device: str) -> dict[str, Any]:
    """Generate the clips of one loop into out/videos, keeping the finished ones made with the same settings.

    The cost (seconds per generated second) adds up the runs that generated videos, so a resumed run reports it too.
    """
    settings_path, timing_path = out / "settings.json", out / "timing.json"
    if (out / "videos").exists() and not settings_path.is_file():
        sys.exit(f"{out / 'videos'} was not made by this benchmark (no settings.json beside it); pass another --work")
    if not settings_path.is_file() or json.loads(settings_path.read_text()) != settings:
        shutil.rmtree(out / "videos", ignore_errors=True)  # made by other settings (or of unknown ones)
        timing_path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    result = generate_test_set(model, data, out / "videos", sample, skip_existing=True, seed=seed, device=device)
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"generate_seconds": 0.0, "frames": 0}
    timing = {"generate_seconds": round(timing["generate_seconds"] + result.seconds, 2),
              "frames": timing["frames"] + len(result.written) * settings["data"]["n_frames"]}
    timing_path.write_text(json.dumps(timing) + "\n")
    video_seconds = timing["frames"] / settings["data"]["fps"]
    return {"written": len(result.written), "kept": len(result.skipped), **timing,
            "seconds_per_video_second": round(timing["generate_seconds"] / video_seconds, 3) if video_seconds else None}


def _finite(values: list[float | None]) -> list[float | None]:
    """NaN and inf as null, so the JSON stays standard."""
    return [v if v is not None and math.isfinite(v) else None for v in values]


def drift_section(videos: Path, data: Path, eval_dir: Path) -> dict[str, Any]:
    """`evaluate --metrics drift` of a folder of videos against the real clips: curves and summaries per measure."""
    summary = evaluate(videos, data, eval_dir, EvaluateConfig(metrics=("drift",)), progress=False)
    drift = summary["metrics"]["drift"]
    curves: dict[str, dict[str, list[float | None]]] = {}
    summaries: dict[str, dict[str, dict[str, float | None]]] = {}
    for measure in CURVES:
        for against in ("against_identity", "against_real"):
            entry = drift[against].get(measure)
            if entry is None:
                continue
            curves.setdefault(measure, {})[against] = _finite(entry["curve"])
            keys = [f"at_{x}s" for x in SUMMARY_SECONDS] + ["slope_per_min"]
            summaries.setdefault(measure, {})[against] = {k: _finite([entry[k]])[0] for k in keys if k in entry}
    return {"n_videos": drift["n_videos"], "face_region": drift["face_region"], "detection_rate": drift["detection_rate"],
            "real_detection_rate": drift["real_detection_rate"], "curves": curves, "summaries": summaries,
            "metrics_json": str(eval_dir / "metrics.json")}


def longest_summary(seconds: float) -> int:
    """The longest summary time (5, 10, 30, 60 s) a clip of `seconds` reaches."""
    reached = [x for x in SUMMARY_SECONDS if round(seconds * 25) >= x * 25]
    if not reached:
        sys.exit(f"--seconds {seconds:g} reaches no summary time; pass --seconds {SUMMARY_SECONDS[0]} or more")
    return reached[-1]


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def headline(loops: dict[str, dict[str, Any]], long_s: int) -> dict[str, Any]:
    """The acceptance keys: drift at the longest time and at 5 s per loop, lip sync in the first and last 10 s."""
    keys: dict[str, Any] = {}
    for name, loop in loops.items():
        suffix = SHORT.get(name, name)
        for short, measure in DRIFT_MEASURES.items():
            at = loop["drift"]["summaries"][measure][HEADLINE_AGAINST]
            keys[f"drift_{short}_60s_{suffix}"] = at.get(f"at_{long_s}s")
            keys[f"drift_{short}_5s_{suffix}"] = at.get("at_5s")
        lip = loop["drift"]["curves"].get("lip_sync_r", {}).get("against_real", [])
        # the window of the first second is the first 10 s, that of the last second the last 10 s
        keys[f"lipsync_r_first10s_{suffix}"] = lip[0] if lip else None
        keys[f"lipsync_r_last10s_{suffix}"] = lip[-1] if lip else None
    return keys


def goals(keys: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals as ratios: ours late against ours at 5 s, the reference against ours, lip sync late/early."""
    out: dict[str, Any] = {}
    for short in DRIFT_MEASURES:
        ours_long, ours_5 = keys.get(f"drift_{short}_60s_ours"), keys.get(f"drift_{short}_5s_ours")
        out[f"{short}_ours_long_over_5s"] = _ratio(ours_long, ours_5)
        out[f"{short}_reference_over_ours_long"] = _ratio(keys.get(f"drift_{short}_60s_ref"), ours_long)
    out["lipsync_last_over_first_ours"] = _ratio(keys.get("lipsync_r_last10s_ours"), keys.get("lipsync_r_first10s_ours"))
    out["targets"] = GOALS
    return out


def plot(path: Path, loops: dict[str, dict[str, Any]], truth: dict[str, Any]) -> Path:
    """Colour, shape and lip sync against time; one colour per loop, solid: against the identity frame, dashed: real."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("colour_de2000", "colour drift (Delta E 00)"), ("shape_rms_iod", "shape drift (RMS / IOD)"),
              ("lip_sync_r", "lip sync r (10 s window, vs real)"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    rows = [(name, loop["drift"], f"C{i}") for i, (name, loop) in enumerate(loops.items())]
    rows.append(("truth (real clips)", truth, "grey"))
    for ax, (measure, title) in zip(axes, panels):
        for name, section, colour in rows:
            for against, style in (("against_identity", "-"), ("against_real", "--")):
                curve = section["curves"].get(measure, {}).get(against)
                if curve is None or (name.startswith("truth") and against == "against_real"):
                    continue  # the real clips against themselves are 0 (and r = 1): nothing to see
                label = f"{name}, vs {'identity frame' if against == 'against_identity' else 'real frame'}"
                ax.plot([k + 0.5 for k in range(len(curve))], [math.nan if v is None else v for v in curve],
                        style, color=colour, label=label)
        ax.set_title(title)
        ax.set_xlabel("seconds")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def print_table(loops: dict[str, dict[str, Any]], truth: dict[str, Any], long_s: int) -> None:
    """One row per loop: colour and shape against the identity frame at 5 s and the longest time, lip sync early/late."""
    print(f"{'loop':<10} {'solver':<14} {'colour 5s':>10} {f'colour {long_s}s':>10} {'shape 5s':>9} "
          f"{f'shape {long_s}s':>9} {'sync first':>10} {'sync last':>10} {'s/s':>7}", file=sys.stderr)
    rows = [(name, loop["drift"], f"{loop['sample']['solver']} {loop['sample']['steps']}",
             loop["generation"]["seconds_per_video_second"]) for name, loop in loops.items()]
    for name, section, solver, cost in rows + [("truth", truth, "-", None)]:
        colour, shape = (section["summaries"][m][HEADLINE_AGAINST] for m in DRIFT_MEASURES.values())
        lip = section["curves"].get("lip_sync_r", {}).get("against_real") or [None]
        print(f"{name:<10} {solver:<14} {_cell(colour.get('at_5s')):>10} {_cell(colour.get(f'at_{long_s}s')):>10} "
              f"{_cell(shape.get('at_5s')):>9} {_cell(shape.get(f'at_{long_s}s')):>9} {_cell(lip[0]):>10} "
              f"{_cell(lip[-1]):>10} {_cell(cost):>7}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="outputs/demo/model.ckpt")
    parser.add_argument("--reference-checkpoint",
                        help="the model the reference loop samples (default: --checkpoint); e.g. one trained without "
                             "our drift fixes, to compare the reference's recipe with ours")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of every clip")
    parser.add_argument("--identities", default="30,31,32", help="held-out identity indices (the demo's: 30,31,32)")
    parser.add_argument("--clip-index", type=int, default=10, help="clip index of the new speech (the demo uses 0, 1)")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic dataset's seed (the demo's: 0), also the noise seed")
    parser.add_argument("--solver", default="dpm++2m", choices=[s.value for s in Solver], help="per-frame solver")
    parser.add_argument("--steps", type=int, default=10, help="solver steps per frame")
    parser.add_argument("--reference-solver", choices=[s.value for s in Solver], help="the reference loop's solver")
    parser.add_argument("--reference-steps", type=int, help="the reference loop's steps (100: the reference's)")
    parser.add_argument("--loops", default=",".join(DEFAULT_LOOPS),
                        help=f"comma list of {', '.join(LOOPS)} (default: {','.join(DEFAULT_LOOPS)})")
    parser.add_argument("--work", default="outputs/long_video", help="data, videos and evaluations (re-used)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (generation; the scoring runs on the CPU)")
    parser.add_argument("--out", default="benchmarks/results/long_video.json")
    args = parser.parse_args()
    names = [n.strip() for n in args.loops.split(",") if n.strip()]
    unknown = [n for n in names if n not in LOOPS]
    if unknown or not names:
        sys.exit(f"unknown loop(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(LOOPS)}")
    for path in (args.checkpoint, args.reference_checkpoint):
        if path is not None and not Path(path).is_file():
            sys.exit(f"{path} not found; run `make demo` first (it trains the model this benchmark samples)")
    long_s = longest_summary(args.seconds)
    started = time.perf_counter()
    work = Path(args.work)
    model = load_model(args.checkpoint, args.device)
    models = {name: load_model(args.reference_checkpoint, args.device)
              if name == "reference" and args.reference_checkpoint else model for name in names}
    clips = [(i, args.clip_index) for i in parse_identities(args.identities)]
    encoder = build_encoder(model.audio_encoder) if model.audio_encoder else LogMelEncoder()
    info = prepare_data(work / "data", clips, args.seconds, model.cfg.model.image_size, args.seed, encoder)
    loops: dict[str, dict[str, Any]] = {}
    for name in names:
        path = Path(args.reference_checkpoint if name == "reference" and args.reference_checkpoint else args.checkpoint)
        checkpoint = {"path": str(path.resolve()), "sha256": sha256(path)}
        sample = loop_sample(models[name], name, args)
        settings = {"checkpoint": checkpoint, "data": info, "sample": to_dict(sample), "seed": args.seed}
        generation = generate_loop(models[name], work / "data", work / name, sample, settings, args.seed, args.device)
        loops[name] = {"checkpoint": str(path), "sample": to_dict(sample), "generation": generation,
                       "drift": drift_section(work / name / "videos", work / "data", work / name / "eval")}
        print(f"{name}: generated {generation['written']} clips, kept {generation['kept']}", file=sys.stderr)
    truth = drift_section(work / "data" / "video", work / "data", work / "truth" / "eval")
    keys = headline(loops, long_s)
    result: dict[str, Any] = {
        "benchmark": "long_video",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.system()}"
                   + (f", {torch.cuda.get_device_name(0)}" if args.device.startswith("cuda") else ""),
        "command": ("python benchmarks/long_video.py " + " ".join(sys.argv[1:])).strip(),
        "input": (f"{len(clips)} held-out synthetic clips x {args.seconds:g} s at {info['size']} px "
                  f"({', '.join(f'id{i:03d}/clip{c:02d}' for i, c in clips)}, seed {args.seed}), {args.checkpoint}"),
        "drift_against": f"{HEADLINE_AGAINST}: frame 0 of the real clip, the frame generation conditions on",
        "drift_long_seconds": long_s,
        "lipsync": "windowed Pearson r of the generated against the real mouth opening: first = the window of the "
                   "first 10 s, last = that of the last 10 s (the whole clip when shorter), mean over the clips",
        **keys,
        "goals": goals(keys),
        "loops": loops,
        "truth": truth,
        "figure": str(plot(Path(args.out).with_suffix(".png"), loops, truth)),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print_table(loops, truth, long_s)
    print(json.dumps({k: v for k, v in result.items() if k not in ("loops", "truth")}, indent=2))


if __name__ == "__main__":
    main()
