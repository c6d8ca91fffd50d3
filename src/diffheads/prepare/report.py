"""What a prepare run did: the file lists, prepare_report.json and the lines printed about it."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffheads.data.layout import DataLayout
from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_write_text
from diffheads.prepare.split import SplitRule

REPORT = "prepare_report.json"


@dataclass
class Outcome:
    """The clips of one run (a whole folder or one shard of it), before they are written up."""

    prepared: dict[str, list[str]]  # raw clip id -> the clip ids it was written as (its segments' when split)
    records: dict[str, dict[str, Any]]  # segment records of the split or trimmed prepared clips
    skipped: list[dict[str, Any]]  # {"clip", "reason", "detail"}, sorted by clip, earlier runs' included
    prepared_now: int
    already_done: int
    frames: int  # frames written by this run
    seconds: float
    workers: int


def previous_skips(*paths: Path) -> dict[str, dict[str, Any]]:
    """Clips an earlier run skipped, from its report (or shard record): the union over the files that exist."""
    skips: dict[str, dict[str, Any]] = {}
    for path in paths:
        if not path.is_file():
            continue
        try:
            skips |= {s["clip"]: s for s in json.loads(path.read_text()).get("skipped", [])}
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return skips


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


def write_up(
    raw_dir: str | Path,
    layout: DataLayout,
    clips_found: int,
    outcome: Outcome,
    split: SplitRule,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the file lists (when a clip was prepared) and prepare_report.json (`extra` its last fields); return it."""
    prepared = outcome.prepared
    counts = _write_file_lists(layout, prepared, split) if prepared else {"train": 0, "test": 0}
    skipped, frames, seconds = outcome.skipped, outcome.frames, outcome.seconds
    report = {
        "raw_dir": str(raw_dir),
        "out_dir": str(layout.root),
        "clips_found": clips_found,
        "prepared": len(prepared),
        "prepared_now": outcome.prepared_now,
        "already_done": outcome.already_done,
        "skipped": skipped,
        "skipped_by_reason": by_reason(skipped),
        "train_clips": counts["train"],
        "test_clips": counts["test"],
        "frames_prepared_now": frames,
        "prepare_seconds": round(seconds, 2),
        "frames_per_second": round(frames / seconds, 1) if frames and seconds else 0.0,
        "workers": outcome.workers,
        **_segment_summary(outcome.records),
        "embeddings": None,
        "config": config,
        **(extra or {}),
    }
    save_report(layout, report)  # kept even if embedding fails
    if not prepared:
        first = skipped[0] if skipped else {"clip": "?", "reason": "?", "detail": ""}
        reasons = ", ".join(f"{k}: {v}" for k, v in report["skipped_by_reason"].items())
        raise DiffheadsError(
            f"no clip under {raw_dir} could be prepared ({reasons}); {first['clip']}: {first['reason']}: "
            f"{first['detail']}; every clip's reason is in {layout.root / REPORT}"
        )
    return report


def save_report(layout: DataLayout, report: dict[str, Any]) -> None:
    """DATA/prepare_report.json, atomically."""
    atomic_write_text(layout.root / REPORT, json.dumps(report, indent=2) + "\n")


def by_reason(skipped: list[dict[str, Any]]) -> dict[str, int]:
    """How many clips were skipped for each reason."""
    return dict(sorted(Counter(s["reason"] for s in skipped).items()))


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
    if report.get("shards"):
        lines[1] += f"; merged from {report['shards']['count']} shards (the time of the slowest, the workers of all)"
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
