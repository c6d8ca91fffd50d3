"""Prepare a folder, or one shard of it: parallel workers, progress, resume, a report of what was skipped and why."""

from __future__ import annotations

import multiprocessing
import os
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from diffheads.audio.encoders import AudioEncoder
from diffheads.data.layout import DataLayout
from diffheads.errors import DiffheadsError
from diffheads.face.mean_face import MeanFace, load_mean_face
from diffheads.io.outdir import output_dir
from diffheads.prepare.clip import ClipResult, PrepareConfig, is_prepared, prepare_or_skip
from diffheads.prepare.embed import embed_dataset
from diffheads.prepare.report import REPORT, Outcome, _jsonable, _side, previous_skips, save_report, summary, write_up  # noqa: F401 - imported from here by the CLI and tests
from diffheads.prepare.segments import read_segments
from diffheads.prepare.shards import check_shard, finish_shard, record_path, shard_clips, start_shard
from diffheads.prepare.sources import RawClip, find_raw_clips
from diffheads.prepare.split import SplitRule


def _check_segment_names(clips: list[RawClip]) -> None:
    """No raw clip may be named like a segment of another (<rel>_s000), or one would overwrite the other."""
    rels = {c.rel for c in clips}
    for rel in sorted(rels):
        match = re.fullmatch(r"(.+)_s\d{3,}", rel)
        if match and match.group(1) in rels:
            raise DiffheadsError(
                f"clip '{rel}' has the name a segment of clip '{match.group(1)}' would get when it is split; rename one"
            )


def _run_jobs(jobs: list, workers: int, progress: bool) -> list[ClipResult]:
    """Prepare clips in this process (1 worker) or in a pool, with a progress bar over clips."""
    results: list[ClipResult] = []
    with tqdm(total=len(jobs), desc="prepare", unit="clip", disable=not progress, file=sys.stderr) as bar:
        if workers == 1:
            for job in jobs:
                results.append(prepare_or_skip(job))
                bar.update()
            return results
        # spawn: MediaPipe and torch threads do not survive a fork
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for result in pool.imap_unordered(prepare_or_skip, jobs):
                results.append(result)
                bar.update()
    return results


def _prepare_clips(
    clips: list[RawClip],
    layout: DataLayout,
    face: MeanFace,
    cfg: PrepareConfig,
    old_skips: dict[str, dict[str, Any]],
    workers: int | None,
    progress: bool,
) -> Outcome:
    """Prepare the clips not written yet (nor skipped before); what every one of them came to."""
    started = time.perf_counter()
    done = [c.rel for c in clips if is_prepared(layout, c.rel)]
    carried = [old_skips[c.rel] for c in clips if c.rel in old_skips and c.rel not in set(done)]
    skip = set(done) | {s["clip"] for s in carried}
    todo = [c for c in clips if c.rel not in skip]

    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    results = _run_jobs([(c, layout, face, cfg) for c in todo], workers, progress)
    seconds = time.perf_counter() - started

    new_prepared = [r for r in results if r.status == "prepared"]
    records = {rel: info for rel in done if (info := read_segments(layout, rel))}
    records |= {r.rel: r.record for r in new_prepared if r.record}
    prepared = {
        rel: [s["id"] for s in records[rel]["segments"]] if rel in records else [rel]
        for rel in [*done, *(r.rel for r in new_prepared)]
    }
    skipped = sorted(
        carried + [{"clip": r.rel, "reason": r.reason, "detail": r.detail} for r in results if r.status == "skipped"],
        key=lambda s: s["clip"],
    )
    frames = sum(r.frames for r in new_prepared)
    return Outcome(prepared, records, skipped, len(new_prepared), len(done), frames, seconds, workers)


def prepare_dataset(
    raw_dir: str | Path,
    out_dir: str | Path,
    cfg: PrepareConfig | None = None,
    split: SplitRule | None = None,
    encoder: AudioEncoder | None = None,
    mean_face: str | Path | None = None,
    workers: int | None = None,
    retry_skipped: bool = False,
    progress: bool = True,
    shard: tuple[int, int] | None = None,  # (I, N): only shard I of N (shards.py); merge_shards then writes the lists
) -> dict[str, Any]:
    """Turn every video under raw_dir (or those of one shard) into an aligned training clip under out_dir;
    return the report (a shard's record for a shard)."""
    cfg, split = cfg or PrepareConfig(), split or SplitRule()
    shard = check_shard(shard) if shard is not None else None
    out = Path(out_dir)
    face = load_mean_face(mean_face)
    clips = find_raw_clips(raw_dir)
    _check_segment_names(clips)
    config = {
        "prepare": _jsonable(asdict(cfg)),
        "split": _jsonable(asdict(split)),
        "mean_face": str(mean_face or "packaged"),
    }
    # a path that cannot be written fails before any clip is decoded; a failed run leaves no empty folders
    with output_dir(out, "output folder"):
        layout = DataLayout.of(out)
        if shard is not None:
            mine = shard_clips(clips, shard)
            old_skips = {} if retry_skipped else previous_skips(out / REPORT, record_path(layout, shard))
            start_shard(layout, shard, config, encoder, [old_skips[c.rel] for c in mine if c.rel in old_skips])
            outcome = _prepare_clips(mine, layout, face, cfg, old_skips, workers, progress)
            return finish_shard(raw_dir, layout, shard, clips, outcome, config, encoder, progress)

        old_skips = {} if retry_skipped else previous_skips(out / REPORT)
        outcome = _prepare_clips(clips, layout, face, cfg, old_skips, workers, progress)
        report = write_up(raw_dir, layout, len(clips), outcome, split, config)
        if encoder is not None:
            splits = tuple(name for name in ("train", "test") if report[f"{name}_clips"])
            report["embeddings"] = embed_dataset(out, encoder=encoder, splits=splits, progress=progress)
            save_report(layout, report)
        return report
