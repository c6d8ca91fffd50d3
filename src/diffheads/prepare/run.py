"""Prepare a whole folder: parallel workers, progress, resume, a report of what was skipped and why."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from diffheads.audio.embed import embed_dataset
from diffheads.audio.encoders import AudioEncoder
from diffheads.data.layout import DataLayout
from diffheads.errors import DiffheadsError
from diffheads.face.mean_face import load_mean_face
from diffheads.io.atomic import atomic_write_text
from diffheads.io.outdir import output_dir
from diffheads.prepare.clip import ClipResult, PrepareConfig, is_prepared, prepare_or_skip
from diffheads.prepare.segments import read_segments
from diffheads.prepare.sources import RawClip, find_raw_clips
from diffheads.prepare.split import SplitRule

REPORT = "prepare_report.json"


def _previous_skips(out: Path) -> dict[str, dict[str, Any]]:
    """Clips an earlier run skipped, from its report."""
    path = out / REPORT
    if not path.is_file():
        return {}
    try:
        return {s["clip"]: s for s in json.loads(path.read_text()).get("skipped", [])}
    except (ValueError, KeyError, TypeError):
        return {}


def _check_segment_names(clips: list[RawClip]) -> None:
    """No raw clip may be named like a segment of another (<rel>_s000), or one would overwrite the other."""
    rels = {c.rel for c in clips}
    for rel in sorted(rels):
        match = re.fullmatch(r"(.+)_s\d{3,}", rel)
        if match and match.group(1) in rels:
            raise DiffheadsError(
                f"clip '{rel}' has the name a segment of clip '{match.group(1)}' would get when it is split; rename one"
            )


def _side(rule: SplitRule, rel: str, ids: list[str]) -> str:
    """'train' or 'test' for all segments of a clip alike: by the clip's id, or by any segment's id in a test list."""
    if rule.test_clips and any(cid in rule.test_clips for cid in ids):
        return "test"
    return rule.split(rel)


def _write_file_lists(layout: DataLayout, prepared: dict[str, list[str]], rule: SplitRule) -> dict[str, int]:
    """file_list_train.txt and file_list_test.txt over every prepared clip (each segment of a split one)."""
    lists: dict[str, list[str]] = {"train": [], "test": []}
    for rel in sorted(prepared):
        lists[_side(rule, rel, prepared[rel])].extend(f"./{cid}.mp4" for cid in prepared[rel])
    for split, lines in lists.items():
        atomic_write_text(layout.file_list(split), "".join(f"{line}\n" for line in lines))
    return {split: len(lines) for split, lines in lists.items()}


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
) -> dict[str, Any]:
    """Turn every video under raw_dir into an aligned training clip under out_dir; return the report."""
    cfg, split = cfg or PrepareConfig(), split or SplitRule()
    out = Path(out_dir)
    face = load_mean_face(mean_face)
    clips = find_raw_clips(raw_dir)
    _check_segment_names(clips)
    # a path that cannot be written fails before any clip is decoded; a failed run leaves no empty folders
    with output_dir(out, "output folder"):
        layout = DataLayout.of(out)
        started = time.perf_counter()

        old_skips = {} if retry_skipped else _previous_skips(out)
        done = [c.rel for c in clips if is_prepared(layout, c.rel)]
        carried = [old_skips[c.rel] for c in clips if c.rel in old_skips and c.rel not in set(done)]
        skip = set(done) | {s["clip"] for s in carried}
        todo = [c for c in clips if c.rel not in skip]

        workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
        results = _run_jobs([(c, layout, face, cfg) for c in todo], workers, progress)
        prep_seconds = time.perf_counter() - started

        new_prepared = [r for r in results if r.status == "prepared"]
        records = {rel: info for rel in done if (info := read_segments(layout, rel))}
        records |= {r.rel: r.record for r in new_prepared if r.record}
        prepared = {
            rel: [s["id"] for s in records[rel]["segments"]] if rel in records else [rel]
            for rel in [*done, *(r.rel for r in new_prepared)]
        }
        skipped = sorted(
            carried
            + [{"clip": r.rel, "reason": r.reason, "detail": r.detail} for r in results if r.status == "skipped"],
            key=lambda s: s["clip"],
        )
        counts = _write_file_lists(layout, prepared, split) if prepared else {"train": 0, "test": 0}
        frames = sum(r.frames for r in new_prepared)
        report = {
            "raw_dir": str(raw_dir),
            "out_dir": str(out),
            "clips_found": len(clips),
            "prepared": len(prepared),
            "prepared_now": len(new_prepared),
            "already_done": len(done),
            "skipped": skipped,
            "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
            "train_clips": counts["train"],
            "test_clips": counts["test"],
            "frames_prepared_now": frames,
            "prepare_seconds": round(prep_seconds, 2),
            "frames_per_second": round(frames / prep_seconds, 1) if frames else 0.0,
            "workers": workers,
            **_segment_summary(records),
            "embeddings": None,
            "config": {
                "prepare": _jsonable(asdict(cfg)),
                "split": _jsonable(asdict(split)),
                "mean_face": str(mean_face or "packaged"),
            },
        }
        atomic_write_text(out / REPORT, json.dumps(report, indent=2) + "\n")  # kept even if embedding fails
        if not prepared:
            by_reason = ", ".join(f"{k}: {v}" for k, v in report["skipped_by_reason"].items())
            first = skipped[0] if skipped else {"clip": "?", "reason": "?", "detail": ""}
            raise DiffheadsError(
                f"no clip under {raw_dir} could be prepared ({by_reason}); {first['clip']}: {first['reason']}: "
                f"{first['detail']}; every clip's reason is in {out / REPORT}"
            )
        if encoder is not None:
            splits = tuple(name for name in ("train", "test") if counts[name])
            report["embeddings"] = embed_dataset(out, encoder=encoder, splits=splits, progress=progress)
            atomic_write_text(out / REPORT, json.dumps(report, indent=2) + "\n")
        return report


def _segment_summary(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Report fields about clips written as parts of their timeline (split at faceless stretches or cuts, or trimmed)."""
    split = [r for r in records.values() if len(r["segments"]) > 1]
    dropped: Counter[str] = Counter()
    for record in records.values():
        for span in record["dropped"]:
            dropped[span["reason"]] += span["end"] - span["start"]
    return {
        "clips_split": len(split),
        "segments_of_split_clips": sum(len(r["segments"]) for r in split),
        "clips_trimmed": len(records) - len(split),
        "frames_dropped_by_reason": dict(sorted(dropped.items())),
        "segmented": [records[rel] for rel in sorted(records)],
    }


def _jsonable(value: Any) -> Any:
    """Sets and tuples as sorted lists so the report is plain JSON."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def summary(report: dict[str, Any]) -> str:
    """A few human lines about a prepare run."""
    lines = [
        f"prepared {report['prepared']} of {report['clips_found']} clips "
        f"({report['prepared_now']} now, {report['already_done']} already done); "
        f"train {report['train_clips']}, test {report['test_clips']}",
        f"{report['frames_prepared_now']} frames in {report['prepare_seconds']} s "
        f"({report['frames_per_second']} frames/s with {report['workers']} workers)",
    ]
    if report["segmented"]:
        done = []
        if report["clips_split"]:
            done.append(f"split {report['clips_split']} clips into {report['segments_of_split_clips']} segments")
        if report["clips_trimmed"]:
            done.append(f"trimmed {report['clips_trimmed']} clips")
        dropped = ", ".join(f"{k}: {v}" for k, v in report["frames_dropped_by_reason"].items())
        lines.append(
            f"{' and '.join(done)} at faceless stretches and scene cuts (frames dropped: {dropped or 'none'}); "
            f"the segments of each are in {report['out_dir']}/{REPORT}"
        )
    if report["skipped"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in report["skipped_by_reason"].items())
        lines.append(f"skipped {len(report['skipped'])} clips ({reasons}); details in {report['out_dir']}/{REPORT}")
        for s in report["skipped"][:10]:
            lines.append(f"  {s['clip']}: {s['reason']} ({s['detail']})")
    return "\n".join(lines)
