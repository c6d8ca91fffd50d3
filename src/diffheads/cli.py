"""Command line: parse, build config, call a library function (STYLE rule 5)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from diffheads.config import SampleConfig, Solver
from diffheads.errors import DiffheadsError

if TYPE_CHECKING:  # imported where used: `diffheads --help` stays quick
    from diffheads.distributed import LaunchConfig

DEFAULT_GRID_HINT = "../shared/data/grid/s1"  # the GRID demo's corpus, as the project checkout lays it out


def _sample_overrides(args: argparse.Namespace, base: SampleConfig) -> SampleConfig:
    """SampleConfig from a base one and the sampling flags."""
    changes: dict[str, object] = {}
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.solver is not None:
        changes["solver"] = Solver(args.solver)
    if args.stabilize_every is not None:
        changes["stabilize_every"] = args.stabilize_every
    if args.colour_anchor is not None:
        changes["colour_anchor"] = args.colour_anchor
    if args.noise_correlation is not None:
        changes["noise_correlation"] = args.noise_correlation
    if getattr(args, "max_frames", None) is not None:
        changes["max_frames"] = args.max_frames
    if getattr(args, "batch_size", None) is not None:
        changes["batch_size"] = args.batch_size
    if args.precision is not None:
        changes["precision"] = args.precision
    if args.channels_last:
        changes["channels_last"] = True
    if args.compile:
        changes["compile"] = True
    return dataclasses.replace(base, **changes)


def _add_trust_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow a checkpoint that needs arbitrary unpickling (it can run code): only for files you trust",
    )


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--steps", type=int, help="respaced diffusion steps per frame (default: the checkpoint's sample.steps)"
    )
    p.add_argument(
        "--solver",
        choices=["ancestral", "ddim", "dpm++2m", "unipc"],
        help="per-frame solver (default: the checkpoint's)",
    )
    p.add_argument("--stabilize-every", type=int, help="reset the oldest motion frame to the identity every N frames")
    p.add_argument(
        "--colour-anchor",
        action=argparse.BooleanOptionalAction,
        help="shift each frame's colour back onto the identity frame's (default: the checkpoint's)",
    )
    p.add_argument(
        "--noise-correlation",
        type=float,
        help="0..1: how much of each frame's starting noise is its clip's first frame's (1: the same noise, no "
        "shimmer; 0: fresh noise per frame; default: the checkpoint's)",
    )
    p.add_argument(
        "--precision", choices=["fp32", "bf16", "fp16"], help="autocast precision of the network (fp16: GPU only)"
    )
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for the network")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (needs a C/C++ compiler)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same frames)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bar (warnings about the result still appear)")


def _add_face_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="face photo (any size; the face is found and aligned)")
    src.add_argument("--video", help="face video: its first frame is the identity, its frames the background")


def _add_face_output_flags(p: argparse.ArgumentParser) -> None:
    how = p.add_mutually_exclusive_group()
    how.add_argument("--crop-only", action="store_true", help="write the aligned face crop, not the full picture")
    how.add_argument(
        "--no-align", action="store_true", help="the input is already an aligned face crop (as in the reference)"
    )
    p.add_argument("--mean-face", help="mean-face JSON the training data was prepared with (default: the packaged one)")
    p.add_argument(
        "--margins",
        type=float,
        nargs=3,
        metavar=("X", "TOP", "BOTTOM"),
        help="crop margins the training data was prepared with (default 0.11 0.336 0.155)",
    )
    p.add_argument(
        "--any-face",
        action="store_true",
        help="animate a face that is not the person a one-person model was trained on (warns instead of refusing)",
    )


def _face_options(args: argparse.Namespace, sample: SampleConfig) -> dict:
    """The keyword arguments animate and stream share: face source, alignment, sampling."""
    return dict(
        image=args.image,
        video=args.video,
        sample=sample,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        align=not args.no_align,
        crop_only=args.crop_only,
        mean_face=args.mean_face,
        margins=tuple(args.margins) if args.margins else None,
        any_face=args.any_face,
    )


def _warn_synthetic(command: str, provenance: dict) -> None:
    """The synthetic-faces note about the result (not progress: --quiet keeps it)."""
    from diffheads.sample.inputs import synthetic_faces_note

    note = synthetic_faces_note(provenance)
    if note:
        print(f"diffheads {command}: warning: {note}", file=sys.stderr)


def cmd_synth(args: argparse.Namespace) -> dict:
    from diffheads.synth.dataset import make_synthetic_dataset

    return make_synthetic_dataset(
        args.out,
        n_train_identities=args.train_identities,
        n_test_identities=args.test_identities,
        clips_per_identity=args.clips_per_identity,
        test_clips_per_identity=args.test_clips_per_identity,
        seconds=args.seconds,
        size=args.size,
        seed=args.seed,
        progress=not args.quiet,
    )


def _encoder(args: argparse.Namespace):
    """The audio encoder named by --encoder / --encoder-path (log-mel options apply to logmel only)."""
    from diffheads.audio.encoders import make_encoder

    if args.encoder == "logmel":
        return make_encoder("logmel", args.encoder_path, n_mels=args.n_mels, n_slots=args.slots)
    return make_encoder(args.encoder, args.encoder_path, device=args.encoder_device)


def _add_encoder_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--encoder",
        default="logmel",
        choices=["logmel", "whisper", "wav2vec2", "hubert", "sda"],
        help="audio encoder (default logmel; the others need --encoder-path)",
    )
    p.add_argument(
        "--encoder-path",
        help="local weights: a save_pretrained folder (whisper, wav2vec2, hubert) or a TorchScript file (sda)",
    )
    p.add_argument("--encoder-device", default="cpu", help="device for the encoder network")
    p.add_argument("--n-mels", type=int, default=40, help="mel bands of the log-mel encoder")
    p.add_argument("--slots", type=int, default=5, help="time slots per 0.2 s window of the log-mel encoder")


def cmd_embed(args: argparse.Namespace) -> dict:
    from diffheads.prepare.embed import embed_dataset

    return embed_dataset(args.data, args.out, _encoder(args), overwrite=args.overwrite, progress=not args.quiet)


def _split_rule(args: argparse.Namespace):
    """The train/test rule from the split flags (at most one kind)."""
    from diffheads.prepare.split import SplitRule

    if args.split_preset:
        return SplitRule.preset(args.split_preset)
    if args.test_list:
        return SplitRule.from_list(args.test_list)
    speakers = tuple(s.strip() for s in (args.test_speakers or "").split(",") if s.strip())
    return SplitRule(
        speaker_pattern=args.speaker_pattern or SplitRule.speaker_pattern,
        test_speakers=speakers,
        test_fraction=args.test_fraction,
    )


def cmd_prepare(args: argparse.Namespace) -> dict:
    from diffheads.face.align import AlignConfig
    from diffheads.prepare.clip import PrepareConfig
    from diffheads.prepare.run import prepare_dataset, summary
    from diffheads.prepare.shards import merge_shards, parse_shard, shard_summary
    from diffheads.prepare.split import SplitRule

    if args.merge:
        if args.shard is not None:
            raise DiffheadsError(
                f"--shard {args.shard} and --merge go in separate runs: first one run with --shard I/N for every I, "
                "then one with --merge"
            )
        rule = _split_rule(args)
        report = merge_shards(args.raw_dir, args.out_dir, split=None if rule == SplitRule() else rule)
        print(summary(report), file=sys.stderr)
        return report
    shard = parse_shard(args.shard) if args.shard is not None else None
    margins = dict(zip(("margin_x", "margin_top", "margin_bottom"), args.margins)) if args.margins else {}
    align = AlignConfig(size=args.size, smoothing_window=args.smoothing_window, **margins)
    cfg = PrepareConfig(
        align=align,
        min_frames=args.min_frames,
        max_missing=args.max_missing,
        max_gap_frames=args.max_gap_frames,
        cut_threshold=args.cut_threshold,
    )
    report = prepare_dataset(
        args.raw_dir,
        args.out_dir,
        cfg,
        split=_split_rule(args),
        encoder=None if args.no_embed else _encoder(args),
        mean_face=args.mean_face,
        workers=args.workers,
        retry_skipped=args.retry_skipped,
        progress=not args.quiet,
        shard=shard,
    )
    print((shard_summary if shard else summary)(report), file=sys.stderr)
    return report


def cmd_cache(args: argparse.Namespace) -> dict:
    from diffheads.prepare.cache import cache_dataset

    return cache_dataset(args.data, args.size, progress=not args.quiet)


def cmd_pack(args: argparse.Namespace) -> dict:
    from diffheads.prepare.pack import pack_dataset

    return pack_dataset(
        args.data,
        args.out,
        args.size,
        embeddings=args.embeddings,
        chunk_bytes=args.chunk_bytes,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )


def cmd_train(args: argparse.Namespace) -> dict | None:
    from diffheads.config import load_config
    from diffheads.training.train import train

    result = train(
        load_config(args.config, args.overrides), trust_checkpoint=args.trust_checkpoint, progress=not args.quiet
    )
    if result.global_rank != 0:
        return None
    return {
        "out_dir": str(result.out_dir),
        "model": str(result.model_path),
        "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "steps": result.steps,
        "final_loss": result.final_loss,
    }


def cmd_distill(args: argparse.Namespace) -> dict | None:
    from diffheads.training.distill import distill

    result = distill(
        args.teacher,
        args.data,
        args.out,
        target_steps=args.target_steps,
        teacher_steps=args.teacher_steps,
        steps_per_round=args.steps_per_round,
        overrides=args.overrides,
        trust_checkpoint=args.trust_checkpoint,
        progress=not args.quiet,
        log=None if args.quiet else lambda line: print(f"diffheads distill: {line}", file=sys.stderr),
    )
    if result.global_rank != 0:
        return None
    return {
        "out_dir": str(result.out_dir),
        "students": {str(r.student_steps): str(r.model_path) for r in result.rounds},
        "rounds": [
            {
                "teacher_steps": r.teacher_steps,
                "student_steps": r.student_steps,
                "model": str(r.model_path),
                "run_dir": str(r.run_dir),
                "steps": r.steps,
                "final_loss": r.final_loss,
                "status": r.status,
            }
            for r in result.rounds
        ],
    }


def generate_launch(args: argparse.Namespace) -> LaunchConfig:
    """The processes of `diffheads generate`: its own --devices / --num-nodes, never the model file's settings."""
    from diffheads.distributed import LaunchConfig, accelerator_of

    # under torchrun or srun, launch() replaces the layout by the processes the scheduler started
    return LaunchConfig(args.devices, args.num_nodes, accelerator_of(args.device))


def cmd_generate(args: argparse.Namespace) -> dict | None:
    from diffheads.checkpoint import load_model
    from diffheads.distributed import launch
    from diffheads.sample.test_set import generate_test_set

    model = load_model(args.checkpoint, "cpu", trust=args.trust_checkpoint)
    sample = _sample_overrides(args, model.cfg.sample)
    ranks = launch(generate_launch(args), args.device, quiet=args.quiet)
    result = generate_test_set(
        model,
        args.data,
        args.out,
        sample=sample,
        embeddings=args.embeddings,
        split=args.split,
        skip_existing=not args.overwrite,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        ranks=ranks,
    )
    if not ranks.is_zero:
        return None
    return {
        "written": len(result.written),
        "skipped": len(result.skipped),
        "out": args.out,
        "processes": ranks.world_size,
        "seconds": result.seconds,
    }


def cmd_animate(args: argparse.Namespace) -> dict:
    from diffheads.checkpoint import load_model
    from diffheads.sample.animate import animate

    model = load_model(args.checkpoint, args.device, trust=args.trust_checkpoint)
    out = animate(model, args.audio, args.output, **_face_options(args, _sample_overrides(args, model.cfg.sample)))
    _warn_synthetic("animate", model.provenance)
    return {"output": str(out)}


def cmd_stream(args: argparse.Namespace) -> dict:
    from diffheads.checkpoint import load_model
    from diffheads.sample.stream_file import stream_video

    model = load_model(args.checkpoint, args.device, trust=args.trust_checkpoint)
    report = stream_video(
        model,
        sys.stdin.buffer if args.audio == "-" else args.audio,
        args.output,
        realtime=args.realtime,
        chunk_ms=args.chunk_ms,
        **_face_options(args, _sample_overrides(args, model.cfg.sample)),
    )
    _warn_synthetic("stream", model.provenance)
    return report


def cmd_app(args: argparse.Namespace) -> None:
    from diffheads.app.serve import AppOptions, serve

    serve(
        AppOptions(
            checkpoint=args.checkpoint,
            host=args.host,
            port=args.port,
            device=args.device,
            trust_checkpoint=args.trust_checkpoint,
        )
    )


def cmd_export(args: argparse.Namespace) -> dict:
    from diffheads.checkpoint import export_model

    return {"output": str(export_model(args.checkpoint, args.output, trust=args.trust_checkpoint))}


def cmd_import_reference(args: argparse.Namespace) -> dict:
    from diffheads.reference.convert import ReferenceOptions, import_reference

    options = ReferenceOptions(
        image_size=args.image_size,
        n_motion_frames=args.n_motion_frames,
        n_audio_motion_embs=args.n_audio_motion_embs,
        num_head_channels=args.num_head_channels,
    )
    return import_reference(args.reference, args.output, options, trust=args.trust_checkpoint, sda_path=args.sda)


def cmd_check_reference(args: argparse.Namespace) -> dict:
    from diffheads.reference.golden import check_reference

    report = check_reference(args.golden)
    for c in report["checks"]:
        print(
            f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']:<42} max |error| {c['max_abs_error']:.3g}"
            f"  (atol {c['atol']:g}, rtol {c['rtol']:g})",
            file=sys.stderr,
        )
    args.exit_code = 0 if report["ok"] else 1
    return {k: report[k] for k in ("golden", "variant", "ok", "n_checks", "failed")}


def cmd_evaluate(args: argparse.Namespace) -> dict | None:
    from diffheads.distributed import LaunchConfig, accelerator_of, launch, scheduler_layout
    from diffheads.evaluate.gather import JobFailed
    from diffheads.evaluate.run import DEFAULT_METRICS, EvaluateConfig, evaluate

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics else DEFAULT_METRICS
    cfg = EvaluateConfig(
        metrics=metrics,
        weights_dir=args.weights_dir,
        inception_weights=args.inception_weights,
        i3d_weights=args.i3d_weights,
        syncnet_weights=args.syncnet_weights,
        fvd_variant=args.fvd_variant,
        fvd_clip_len=args.fvd_clip_len,
        legacy_smoothness=args.legacy_smoothness,
        legacy_blinks=args.legacy_blinks,
        blink_height=args.blink_height,
        lip_reader=args.lip_reader,
        transcripts=args.transcripts,
        device=args.device,
        plot_clip=args.plot_clip,
        alignments=args.alignments,
    )
    several = args.devices * args.num_nodes > 1 or scheduler_layout() is not None
    # one process keeps any device torch knows (mps, ...); several run on cpu or cuda
    launch_cfg = LaunchConfig(args.devices, args.num_nodes, accelerator_of(args.device) if several else "cpu")
    ranks = launch(launch_cfg, args.device, quiet=args.quiet)
    try:
        summary = evaluate(args.generated, args.real, args.out, cfg, progress=not args.quiet, ranks=ranks)
    except JobFailed:
        if ranks.is_zero:  # names the process that failed, where and why: one line for the whole job
            raise
        args.exit_code = 2
        return None
    if not ranks.is_zero:
        return None
    return {k: summary[k] for k in ("n_videos", "processes", "metrics", "skipped", "outputs")}


def cmd_demo(args: argparse.Namespace) -> dict:
    if args.preset == "grid":
        from diffheads.demo.grid import QUICK_GRID, SHORT_GRID, GridDemoData, run_grid_demo

        base = QUICK_GRID if args.quick else SHORT_GRID if args.short else GridDemoData()
        data = dataclasses.replace(base, raw=args.data or GridDemoData.raw)
        out = args.out or "outputs/demo-grid"
        report = run_grid_demo(
            out, config=args.config, overrides=args.overrides, quick=args.quick, data=data, short=args.short
        )
        print(
            f"diffheads demo: GRID s1 speaks held-out sentences: {out}/videos, {out}/contact_sheet.png; "
            f"make it say anything: diffheads animate --checkpoint {out}/model.ckpt --image FRAME --audio SPEECH "
            f"--no-align (or the app: diffheads app --checkpoint {out}/model.ckpt)",
            file=sys.stderr,
        )
        return report
    if args.data or args.short:
        raise DiffheadsError("--data and --short belong to --preset grid (the synthetic demo makes its own data)")
    from diffheads.demo.synthetic import run_demo

    args.out = args.out or "outputs/demo"
    report = run_demo(
        args.out, config=args.config, overrides=args.overrides, quick=args.quick, distil=not args.no_distill
    )
    student = report.get("student")
    print(
        f"diffheads demo: try the model in your browser: diffheads app --checkpoint {args.out}/model.ckpt",
        file=sys.stderr,
    )
    if student:
        print(
            f"diffheads demo: the {student['network_calls_per_frame']}-call student streams live: diffheads stream "
            f"--checkpoint {student['model']} {student['try']} --realtime --output live.mp4",
            file=sys.stderr,
        )
    return report


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors in one line like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def _synth_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads synth` subcommand."""
    p = sub.add_parser("synth", help="write a synthetic talking-face dataset in the data contract")
    p.add_argument("out", help="output DATA folder")
    p.add_argument("--train-identities", type=int, default=8)
    p.add_argument("--test-identities", type=int, default=2)
    p.add_argument("--clips-per-identity", type=int, default=4)
    p.add_argument("--test-clips-per-identity", type=int, help="clips per held-out identity (default: as train)")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_synth)


def _embed_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads embed` subcommand."""
    p = sub.add_parser("embed", help="compute per-frame audio embeddings for every listed clip")
    p.add_argument("data", help="DATA folder with audio/ and file lists")
    p.add_argument("--out", help="EMB folder (default DATA/emb)")
    _add_encoder_flags(p)
    p.add_argument("--overwrite", action="store_true", help="recompute existing files")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_embed)


def _add_split_flags(p: argparse.ArgumentParser) -> None:
    """The train/test split flags of prepare (see _split_rule)."""
    split = p.add_mutually_exclusive_group()
    split.add_argument(
        "--split-preset", choices=["crema"], help="named split: crema holds out the 10 CREMA-D test actors"
    )
    split.add_argument("--test-list", help="file of clip paths that form the test split")
    split.add_argument("--test-speakers", help="comma-separated speakers held out for test")
    p.add_argument(
        "--speaker-pattern", help="regex whose group 1 is the speaker in a clip path (default: first folder)"
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="share of speakers held out when no list or speakers are given (by hash of the name)",
    )


def _add_clip_checks(p: argparse.ArgumentParser) -> None:
    """The flags of prepare that decide which clips and segments are kept."""
    p.add_argument(
        "--min-frames",
        type=int,
        default=16,
        help="skip clips, and drop segments of split clips, shorter than this many 25 fps frames",
    )
    p.add_argument(
        "--max-missing", type=float, default=0.2, help="drop segments with no face in more than this share of frames"
    )
    p.add_argument(
        "--max-gap-frames",
        type=int,
        default=3,
        help="faceless runs up to this many frames are interpolated; longer ones split the clip into segments",
    )
    p.add_argument(
        "--cut-threshold",
        type=float,
        default=12.0,
        help="mean pixel change (0-255, 32 px thumbnails) across a hard scene cut, which splits the clip; 0 turns it off",
    )


def _prepare_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads prepare` subcommand."""
    p = sub.add_parser(
        "prepare", help="raw talking-head videos -> aligned training set (video, audio, lmks, lists, emb)"
    )
    p.add_argument("raw_dir", help="folder of raw videos (searched recursively; audio inside or beside each video)")
    p.add_argument("out_dir", help="output DATA folder")
    p.add_argument("--size", type=int, default=128, help="side of the aligned face crops in pixels")
    p.add_argument(
        "--margins",
        type=float,
        nargs=3,
        metavar=("X", "TOP", "BOTTOM"),
        help="crop margins as fractions of the mean face's landmark box (default 0.11 0.336 0.155)",
    )
    p.add_argument("--smoothing-window", type=int, default=7, help="frames the stable points are smoothed over")
    p.add_argument("--mean-face", help="mean-face JSON (default: the packaged one; see scripts/make_mean_face.py)")
    _add_split_flags(p)
    _add_encoder_flags(p)
    p.add_argument("--no-embed", action="store_true", help="skip the audio embeddings (run 'diffheads embed' later)")
    p.add_argument("--workers", type=int, help="parallel processes (default: all cores)")
    _add_clip_checks(p)
    p.add_argument("--retry-skipped", action="store_true", help="try again the clips an earlier run skipped")
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="prepare only shard I of N (0 <= I < N; a clip's shard is a hash of its path), e.g. one "
        "SLURM array task each; writes OUT_DIR/shards/shard-I-of-N.json instead of the lists and report",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="after all N shards finished: check them and write the file lists, report and encoder.json "
        "(settings come from the shards; split flags given here replace their split)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_prepare)


def _cache_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads cache` subcommand."""
    p = sub.add_parser("cache", help="decode every listed clip once into DATA/cache/<size>px (data.frame_cache=disk)")
    p.add_argument("data", help="DATA folder with video/ and the file lists")
    p.add_argument("--size", type=int, required=True, help="the model's image_size")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_cache)


def _pack_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads pack` subcommand."""
    p = sub.add_parser("pack", help="write the prepared clips of DATA into litdata chunks for data.format=packed")
    p.add_argument("data", help="DATA folder with video/, the file lists, emb/ and (for the lip loss) lmks/")
    p.add_argument("out", help="PACKED folder to write (copy it anywhere litdata reads: a disk, s3://, gs://, ...)")
    p.add_argument("--size", type=int, required=True, help="the model's image_size (frames are stored at this size)")
    p.add_argument("--embeddings", help="EMB folder (default DATA/emb)")
    p.add_argument("--chunk-bytes", default="64MB", help="size of each chunk file (litdata's chunk_bytes)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (litdata's optimize workers)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing pack in OUT")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_pack)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads train` subcommand."""
    p = sub.add_parser("train", help="train a model: diffheads train CONFIG.yaml [section.key=value ...]")
    p.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    p.add_argument("overrides", nargs="*", help="overrides such as optim.lr=1e-4 trainer.max_steps=100")
    _add_trust_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or Lightning messages")
    p.set_defaults(func=cmd_train)


def _distill_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads distill` subcommand."""
    p = sub.add_parser(
        "distill",
        help="progressive distillation: students that sample in 4, 2 or 1 DDIM steps per frame (OUT/student_N.ckpt)",
    )
    p.add_argument("--teacher", required=True, help="model file to distil (trained with diffusion.prediction v or x0)")
    p.add_argument(
        "--data",
        required=True,
        help="DATA folder embedded with the teacher's audio encoder (usually the teacher's training data)",
    )
    p.add_argument("--out", required=True, help="folder for student_N.ckpt (one per round) and each round's run")
    p.add_argument("--target-steps", type=int, default=2, help="DDIM steps of the last student (default 2)")
    p.add_argument(
        "--teacher-steps",
        type=int,
        default=8,
        help="DDIM steps of the teacher: --target-steps times a power of two; each round halves them "
        "(default 8: 8 -> 4 -> 2)",
    )
    p.add_argument("--steps-per-round", type=int, default=2000, help="optimizer steps of each round (default 2000)")
    p.add_argument(
        "overrides",
        nargs="*",
        help="training overrides: optim.*, trainer.*, data.*, sample.* (not solver, steps, eta), model.dropout",
    )
    _add_trust_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or Lightning messages")
    p.set_defaults(func=cmd_distill)


def _generate_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads generate` subcommand."""
    p = sub.add_parser("generate", help="generate one video per clip of a split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="DATA folder with the file lists")
    p.add_argument("--out", required=True, help="folder for the mp4 files")
    p.add_argument("--embeddings", help="EMB folder (default DATA/emb)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--batch-size", type=int, help="clips sampled together")
    p.add_argument("--max-frames", type=int, help="cap on frames per clip")
    p.add_argument("--overwrite", action="store_true", help="regenerate clips whose output exists")
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        help="processes on this machine, one per GPU (default 1); under torchrun or srun: "
        "the processes per machine it started (docs/cluster.md)",
    )
    p.add_argument("--num-nodes", type=int, default=1, help="machines taking part (default 1)")
    _add_sampling_flags(p)
    _add_trust_flag(p)
    p.set_defaults(func=cmd_generate)


def _animate_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads animate` subcommand."""
    p = sub.add_parser("animate", help="make one face speak one audio file")
    p.add_argument("--checkpoint", required=True)
    _add_face_source(p)
    p.add_argument("--audio", required=True, help="any audio file PyAV reads (resampled to 16 kHz mono)")
    p.add_argument("--output", required=True, help="output mp4")
    _add_face_output_flags(p)
    _add_sampling_flags(p)
    _add_trust_flag(p)
    p.set_defaults(func=cmd_animate)


def _stream_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads stream` subcommand."""
    p = sub.add_parser("stream", help="make one face speak audio as it arrives (a file at its pace, or PCM on stdin)")
    p.add_argument("--checkpoint", required=True, help="a model trained on log-mel embeddings")
    _add_face_source(p)
    p.add_argument(
        "--audio",
        required=True,
        help="any audio file PyAV reads, or - for 16 kHz mono s16le PCM on standard input "
        "(ffmpeg -i SPEECH -f s16le -ar 16000 -ac 1 -)",
    )
    p.add_argument("--output", required=True, help="output mp4 (appears once the input has ended)")
    p.add_argument(
        "--realtime", action="store_true", help="feed the audio no faster than it plays (a file arrives as if spoken)"
    )
    p.add_argument("--chunk-ms", type=float, default=20.0, help="audio read at a time, in ms (default 20)")
    _add_face_output_flags(p)
    _add_sampling_flags(p)
    _add_trust_flag(p)
    p.set_defaults(func=cmd_stream)


def _app_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads app` subcommand."""
    p = sub.add_parser("app", help="a local web page to animate faces (needs the extra diffheads[app])")
    p.add_argument("--checkpoint", help="model file (default: the demo model outputs/demo/model.ckpt if present)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback: only this machine)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    _add_trust_flag(p)
    p.set_defaults(func=cmd_app)


def _export_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads export` subcommand."""
    p = sub.add_parser(
        "export", help="write the sampling weights of a checkpoint (e.g. checkpoints/last.ckpt) as a model file"
    )
    p.add_argument("checkpoint", help="a training checkpoint or exported model")
    p.add_argument("output", help="model file to write (safetensors + config), e.g. runs/x/model.safetensors")
    _add_trust_flag(p)
    p.set_defaults(func=cmd_export)


def _import_reference_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads import-reference` subcommand."""
    p = sub.add_parser(
        "import-reference",
        help="the authors' UNet (TorchScript release or training checkpoint) as a diffheads model file",
    )
    p.add_argument(
        "reference", help="crema_script.pt (TorchScript: needs --trust-checkpoint) or a Lightning checkpoint"
    )
    p.add_argument("output", help="model file to write (safetensors + inferred config)")
    p.add_argument("--sda", help="the SDA audio encoder (audio_encoder.pt) that animate should use with this model")
    p.add_argument(
        "--image-size",
        type=int,
        default=128,
        help="frame side the model was trained at (weights cannot tell, except for audio attention)",
    )
    p.add_argument("--n-motion-frames", type=int, default=2, help="motion frames the model was trained with")
    p.add_argument("--n-audio-motion-embs", type=int, default=2, help="k: audio rows on each side of the frame")
    p.add_argument("--num-head-channels", type=int, default=64, help="channels per attention head")
    _add_trust_flag(p)
    p.set_defaults(func=cmd_import_reference)


def _check_reference_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads check-reference` subcommand."""
    p = sub.add_parser(
        "check-reference",
        help="compare our network and diffusion maths with a golden file of the "
        "authors' code (exit 0 only when all agree)",
    )
    p.add_argument("golden", help="golden file, e.g. tests/data/golden_small.pt")
    p.set_defaults(func=cmd_check_reference)


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads evaluate` subcommand."""
    p = sub.add_parser("evaluate", help="score generated videos against ground truth (FID, FVD, SyncNet, blinks, ...)")
    p.add_argument("--generated", required=True, help="folder of generated mp4s (the --out of 'diffheads generate')")
    p.add_argument(
        "--real", help="the DATA folder they were generated from, or a folder of real videos with the same names"
    )
    p.add_argument("--out", required=True, help="folder for metrics.json, per_video.csv, report.md and plots/")
    p.add_argument(
        "--metrics",
        help="comma-separated subset of: psnr,ssim,fid,fvd,sync,wer,blinks,smoothness,lipsync,mouth_open,lmd,drift "
        "(the default), and dlib's trained judges lip_open,lmd68,identity,flicker (only when named)",
    )
    p.add_argument("--weights-dir", help="folder holding the published weights files under their own names")
    p.add_argument("--inception-weights", help="weights-inception-2015-12-05-6726825d.pth (FID)")
    p.add_argument("--i3d-weights", help="i3d_torchscript.pt (FVD)")
    p.add_argument("--syncnet-weights", help="syncnet_v2.model (AV offset/confidence, LSE-D/C)")
    p.add_argument(
        "--fvd-variant",
        default="stylegan-v",
        choices=["stylegan-v", "laughing-matters"],
        help="covariance of the FVD statistics: biased (StyleGAN-V) or unbiased (Laughing Matters)",
    )
    p.add_argument("--fvd-clip-len", type=int, default=16, help="frames per FVD clip")
    p.add_argument("--legacy-smoothness", action="store_true", help="OFM / F-MSE as the reference script computes them")
    p.add_argument("--legacy-blinks", action="store_true", help="blink duration halved, as the reference does")
    p.add_argument("--blink-height", type=float, default=0.0425, help="EAR drop that counts as a blink")
    p.add_argument("--lip-reader", help="WER plug-in: 'package.module:function' or 'cmd:COMMAND {video}'")
    p.add_argument("--transcripts", help="'<clip id> <text>' lines or a JSON object, for WER")
    p.add_argument(
        "--alignments", help="lip_open: folder of GRID <clip id or basename>.align files giving the spoken spans"
    )
    p.add_argument("--plot-clip", help="clip id whose blink / sync / mouth curves are plotted (default: the first)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...; with --devices N, each process its own GPU")
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        help="processes on this machine, one per GPU, each scoring a share of the videos; process 0 "
        "merges them and writes --out; its bar counts the videos of all processes (default 1); "
        "under torchrun or srun: the processes per machine it started",
    )
    p.add_argument("--num-nodes", type=int, default=1, help="machines taking part (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or Lightning messages")
    p.set_defaults(func=cmd_evaluate)


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    """The `diffheads demo` subcommand."""
    p = sub.add_parser("demo", help="train, generate and report end to end on CPU: synthetic faces, or GRID s1")
    p.add_argument(
        "--preset",
        choices=["synthetic", "grid"],
        default="synthetic",
        help="synthetic: cartoon faces made on the fly; grid: a person-specific model of GRID speaker s1",
    )
    p.add_argument("--out", default=None, help="output folder (default: outputs/demo, or outputs/demo-grid for grid)")
    p.add_argument(
        "--data", default=None, help=f"--preset grid: the folder of GRID s1 videos (default: {DEFAULT_GRID_HINT})"
    )
    p.add_argument("--config", default=None, help="config (default: the packaged demo.yaml or grid.yaml)")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds, no learning expected)")
    p.add_argument(
        "--short",
        action="store_true",
        help="--preset grid: CI's shortened learning check (300 training sentences, 300 steps, 10 held out)",
    )
    p.add_argument(
        "--no-distill",
        action="store_true",
        help="synthetic demo: skip distilling the model into a 2-call student (saves about 5 minutes)",
    )
    p.add_argument("overrides", nargs="*", help="config overrides")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The `diffheads` argument parser."""
    parser = _Parser(prog="diffheads", description="Diffused Heads talking-face diffusion toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    # the order here is the order of `diffheads --help`
    for add in (
        _synth_parser,
        _embed_parser,
        _prepare_parser,
        _cache_parser,
        _pack_parser,
        _train_parser,
        _distill_parser,
        _generate_parser,
        _animate_parser,
        _stream_parser,
        _app_parser,
        _export_parser,
        _import_reference_parser,
        _check_reference_parser,
        _evaluate_parser,
        _demo_parser,
    ):
        add(sub)
    return parser


def one_line(exc: DiffheadsError) -> str:
    """The message of a DiffheadsError, also when a DataLoader worker re-raised it with its traceback."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    last = lines[-1]
    return last.split("DiffheadsError: ", 1)[1] if "DiffheadsError: " in last else " ".join(lines)


def describe_os_error(exc: OSError) -> str:
    """One line for a failure of the file system: what happened, to which file, and what to do."""
    where = f" {exc.filename}" if exc.filename else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device while writing{where}; free some space and run again (no partial file was kept)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write{where} ({reason}); choose an output location you can write to"
    if exc.errno in (errno.ENOTDIR, errno.EISDIR):
        return f"{reason}:{where}; a file stands where a folder is needed (or the reverse), choose another path"
    return f"{reason}:{where}; check the path and the disk, then run again"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `diffheads` console script."""
    args = build_parser().parse_args(argv)
    try:
        # progress bars and library chatter go to stderr; stdout carries only the JSON result
        with contextlib.redirect_stdout(sys.stderr):
            result = args.func(args)
    except DiffheadsError as exc:
        print(f"diffheads {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffheads {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"diffheads {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return getattr(args, "exit_code", 0)


if __name__ == "__main__":
    sys.exit(main())
