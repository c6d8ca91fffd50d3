"""Sharded prepare: the raw clips split among independent runs (a SLURM array, several machines), then merged.

Raw clip `rel` belongs to shard sha256(rel) mod N (the digest's first 8 bytes as a number). The rule
depends on nothing but the clip's id and N: machines that list the folder at different moments never
prepare a clip twice, and clips added later never move an old clip to another shard. A shard writes
its clips' files into the common OUT (each clip's files by one shard only), embeds their audio, and
records what it did in OUT/shards/shard-I-of-N.json. The file lists, prepare_report.json and
EMB/encoder.json are written once, by `merge_shards`, so no two shards ever write the same file.
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from diffheads.audio.encoders import AudioEncoder
from diffheads.data.embeddings import read_encoder_spec
from diffheads.data.layout import DataLayout
from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_write_text
from diffheads.prepare.embed import check_encoder_file, embed_clips, write_encoder_spec
from diffheads.prepare.report import REPORT, Outcome, _jsonable, by_reason, save_report, write_up
from diffheads.prepare.sources import RawClip, find_raw_clips
from diffheads.prepare.split import SplitRule

SHARDS = "shards"  # OUT/shards holds one record per shard
RULE = "sha256(rel) mod N"
FORM = "expected I/N with 0 <= I < N, e.g. --shard 0/4 for the first of 4 shards"


def shard_of(rel: str, count: int) -> int:
    """The shard of a raw clip id: the first 8 bytes of its SHA-256, as a number, modulo the number of shards."""
    return int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big") % count


def check_shard(shard: Any, name: str | None = None) -> tuple[int, int]:
    """(I, N) as two ints with 0 <= I < N, else a one-line error."""
    try:
        index, count = (operator.index(v) for v in shard)
    except (TypeError, ValueError):
        raise DiffheadsError(f"shard {shard!r} is not a pair of whole numbers (I, N); {FORM}") from None
    name = name or f"shard {index}/{count}"
    if count < 1:
        raise DiffheadsError(f"{name}: the number of shards N must be at least 1; {FORM}")
    if not 0 <= index < count:
        raise DiffheadsError(f"{name}: the shard index must be one of 0..{count - 1}; {FORM}")
    return index, count


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' (the value of --shard) as (I, N)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise DiffheadsError(f"--shard {text}: not of the form I/N; {FORM}")
    return check_shard((int(match[1]), int(match[2])), f"--shard {text}")


def shard_clips(clips: list[RawClip], shard: tuple[int, int]) -> list[RawClip]:
    """The raw clips of shard I of N, in the folder's order."""
    index, count = shard
    return [c for c in clips if shard_of(c.rel, count) == index]


def record_path(layout: DataLayout, shard: tuple[int, int]) -> Path:
    """OUT/shards/shard-I-of-N.json."""
    return layout.root / SHARDS / f"shard-{shard[0]}-of-{shard[1]}.json"


def _raw_digest(clips: list[RawClip]) -> str:
    """A fingerprint of the raw folder's clip ids, so the merge can tell whether every shard saw the same folder."""
    return hashlib.sha256("\n".join(sorted(c.rel for c in clips)).encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """A value as it reads back from JSON (tuples as lists), so stored and new settings compare equal."""
    return json.loads(json.dumps(value))


def _write_record(layout: DataLayout, shard: tuple[int, int], record: dict[str, Any]) -> None:
    """OUT/shards/shard-I-of-N.json, atomically (a merge never reads half a record)."""
    atomic_write_text(record_path(layout, shard), json.dumps(record, indent=2) + "\n")


def _records(layout: DataLayout, strict: bool) -> list[dict[str, Any]]:
    """The shard records under OUT/shards; an unreadable one is an error naming it when `strict`, else ignored."""
    records = []
    for path in sorted((layout.root / SHARDS).glob("shard-*-of-*.json")):
        try:
            record = json.loads(path.read_text())
            record["shard"] = "/".join(map(str, check_shard((record["index"], record["count"]))))
        except (ValueError, KeyError, TypeError, DiffheadsError):
            if strict:
                raise DiffheadsError(
                    f"shard record {path} cannot be read; delete it and run that shard again"
                ) from None
            continue
        records.append(record)
    return records


def _settings(record: dict[str, Any]) -> dict[str, Any]:
    """What must be the same in every shard: the shard rule, the crop and checks, the split, the encoder."""
    return {"rule": record.get("rule"), "config": record.get("config"), "encoder": record.get("encoder")}


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    """The first key (dotted) where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return path


def _check_same_settings(records: list[dict[str, Any]], what_to_do: str) -> None:
    """All records ran with the same settings, else a one-line error naming the first setting that differs."""
    first = records[0]
    for other in records[1:]:
        if _settings(other) != _settings(first):
            key = _first_difference(_settings(first), _settings(other))
            a, b = (_short(_lookup(_settings(r), key)) for r in (first, other))
            raise DiffheadsError(
                f"shards {first['shard']} and {other['shard']} differ in {key} ({a} vs {b}); {what_to_do}"
            )


def _lookup(value: Any, key: str) -> Any:
    """The value at a dotted key of nested dicts (None where a part is missing)."""
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _short(value: Any) -> str:
    """A value as JSON, cut to 60 characters for a one-line message."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def start_shard(
    layout: DataLayout,
    shard: tuple[int, int],
    config: dict[str, Any],
    encoder: AudioEncoder | None,
    carried: list[dict[str, Any]],
) -> None:
    """Before any clip: check the settings against the other shards' records and earlier embeddings, then
    mark this shard as running (so a merge started too early refuses it); `carried` keeps earlier skips."""
    index, count = shard
    spec = _plain(encoder.describe()) if encoder is not None else None
    record = {
        "shard": f"{index}/{count}",
        "index": index,
        "count": count,
        "rule": RULE,
        "state": "preparing",
        "config": _plain(config),
        "encoder": spec,
        "skipped": carried,
    }
    others = [r for r in _records(layout, strict=False) if r["count"] == count and "config" in r]
    for other in others:  # this run first: the error names it as the one that differs
        earlier = " (an earlier run)" if other["index"] == index else ""
        _check_same_settings(
            [record | {"shard": f"{index}/{count} (this run)"}, other | {"shard": f"{other['shard']}{earlier}"}],
            "run every shard with the same options (a new OUT for new settings)",
        )
    if encoder is not None:
        check_encoder_file(layout, encoder)
    _write_record(layout, shard, record)


def finish_shard(
    raw_dir: str | Path,
    layout: DataLayout,
    shard: tuple[int, int],
    clips: list[RawClip],
    outcome: Outcome,
    config: dict[str, Any],
    encoder: AudioEncoder | None,
    progress: bool,
) -> dict[str, Any]:
    """Write the shard's record, embed its clips' audio (EMB/encoder.json is left to the merge); return the record."""
    index, count = shard
    frames, seconds = outcome.frames, outcome.seconds
    record = {
        "shard": f"{index}/{count}",
        "index": index,
        "count": count,
        "rule": RULE,
        "state": "embedding" if encoder is not None else "done",
        "raw_dir": str(raw_dir),
        "out_dir": str(layout.root),
        "clips_found": len(clips),
        "raw_digest": _raw_digest(clips),
        "clips_in_shard": len(outcome.prepared) + len(outcome.skipped),
        "prepared": {rel: outcome.prepared[rel] for rel in sorted(outcome.prepared)},
        "prepared_now": outcome.prepared_now,
        "already_done": outcome.already_done,
        "skipped": outcome.skipped,
        "skipped_by_reason": by_reason(outcome.skipped),
        "segmented": [outcome.records[rel] for rel in sorted(outcome.records)],
        "frames_prepared_now": frames,
        "prepare_seconds": round(seconds, 2),
        "frames_per_second": round(frames / seconds, 1) if frames and seconds else 0.0,
        "workers": outcome.workers,
        "encoder": _plain(encoder.describe()) if encoder is not None else None,
        "embeddings": None,
        "config": _plain(config),
    }
    _write_record(layout, shard, record)  # kept even if embedding fails: the next run resumes from it
    if encoder is not None:
        ids = [cid for rel in record["prepared"] for cid in record["prepared"][rel]]
        record["embeddings"] = embed_clips(
            layout.root, ids, encoder=encoder, progress=progress, write_encoder_file=False
        )
        record["state"] = "done"
        _write_record(layout, shard, record)
    return record


def _complete_set(layout: DataLayout, command: str) -> list[dict[str, Any]]:
    """The records of all N shards of one sharded run, each finished, sorted by index; else a one-line error."""
    folder = layout.root / SHARDS
    records = _records(layout, strict=True)
    if not records:
        raise DiffheadsError(
            f"no shard records in {folder}; run '{command} --shard I/N' for every I from 0 to N-1 first, then --merge"
        )
    counts = sorted({r["count"] for r in records})
    if len(counts) > 1:
        raise DiffheadsError(
            f"{folder} holds records of runs with {' and '.join(map(str, counts))} shards; delete the "
            "shard-*-of-N.json records of the run you gave up, then --merge again"
        )
    count = counts[0]
    have = {r["index"] for r in records}
    missing = [f"{i}/{count}" for i in range(count) if i not in have]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        also = " (and likewise the others)" if len(missing) > 1 else ""
        raise DiffheadsError(
            f"shard{'s' if len(missing) > 1 else ''} {shown} missing in {folder} ({len(have)} of {count} there); "
            f"run '{command} --shard {missing[0]}'{also} first, then --merge again"
        )
    for record in sorted(records, key=lambda r: r["index"]):
        if record.get("state") != "done":
            raise DiffheadsError(
                f"shard {record['shard']} has not finished (its record says '{record.get('state')}'): it is still "
                f"running or was stopped; wait for it or run '{command} --shard {record['shard']}' again, then --merge"
            )
    return sorted(records, key=lambda r: r["index"])


def _check_coverage(records: list[dict[str, Any]], clips: list[RawClip], raw_dir: str | Path, command: str) -> None:
    """Every shard saw the raw folder as it is now, and accounted for exactly the clips the rule gives it."""
    digest = _raw_digest(clips)
    stale = [r["shard"] for r in records if r["raw_digest"] != digest]
    if stale:
        shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        raise DiffheadsError(
            f"{raw_dir} holds other clips than shard{'s' if len(stale) > 1 else ''} {shown} saw ({len(clips)} now); "
            f"run '{command} --shard {stale[0]}' again (finished clips are kept), likewise the others, then --merge"
        )
    count = records[0]["count"]
    want: dict[int, set[str]] = {i: set() for i in range(count)}
    for clip in clips:
        want[shard_of(clip.rel, count)].add(clip.rel)
    for record in records:
        got = set(record["prepared"]) | {s["clip"] for s in record["skipped"]}
        if got != want[record["index"]] or len(record["prepared"]) + len(record["skipped"]) != len(got):
            raise DiffheadsError(
                f"the record of shard {record['shard']} does not account for exactly its clips; "
                f"run '{command} --shard {record['shard']}' again, then --merge"
            )


def _split_rule(fields: dict[str, Any]) -> SplitRule:
    """The split rule stored in a report's config."""
    return SplitRule(
        speaker_pattern=fields["speaker_pattern"],
        test_speakers=tuple(fields["test_speakers"]),
        test_clips=frozenset(fields["test_clips"]),
        test_fraction=fields["test_fraction"],
    )


def merge_shards(raw_dir: str | Path, out_dir: str | Path, split: SplitRule | None = None) -> dict[str, Any]:
    """After all N shards finished alike, write what one unsharded run would (file lists, EMB/encoder.json,
    prepare_report.json) and return the report. `split` replaces the shards' split rule when given."""
    layout = DataLayout.of(out_dir)
    command = f"diffheads prepare {raw_dir} {out_dir}"
    clips = find_raw_clips(raw_dir)
    records = _complete_set(layout, command)
    _check_same_settings(records, "run the shards that differ again with the same options as the others")
    _check_coverage(records, clips, raw_dir, command)
    first = records[0]
    if first["encoder"] is not None and layout.encoder_file.is_file() and read_encoder_spec(layout) != first["encoder"]:
        raise DiffheadsError(
            f"{layout.embeddings} holds embeddings of another encoder than the shards used "
            f"({read_encoder_spec(layout).get('name')} vs {first['encoder'].get('name')}); use a new OUT"
        )
    config = first["config"]
    if split is not None:
        config = config | {"split": _jsonable(asdict(split))}
    outcome = Outcome(
        prepared={rel: ids for r in records for rel, ids in r["prepared"].items()},
        records={s["clip"]: s for r in records for s in r["segmented"]},
        skipped=sorted((s for r in records for s in r["skipped"]), key=lambda s: s["clip"]),
        prepared_now=sum(r["prepared_now"] for r in records),
        already_done=sum(r["already_done"] for r in records),
        frames=sum(r["frames_prepared_now"] for r in records),
        seconds=max(r["prepare_seconds"] for r in records),  # the shards run side by side: the slowest one's time
        workers=sum(r["workers"] for r in records),
    )
    each = ("shard", "clips_in_shard", "prepared_now", "frames_prepared_now", "prepare_seconds", "workers")
    shards = {"count": first["count"], "rule": RULE, "each": [{k: r[k] for k in each} for r in records]}
    rule = split or _split_rule(config["split"])
    report = write_up(raw_dir, layout, len(clips), outcome, rule, config, {"shards": shards})
    if first["encoder"] is not None:
        written = [r["embeddings"] for r in records]
        write_encoder_spec(layout, first["encoder"])
        report["embeddings"] = {
            "clips": sum(e["clips"] for e in written),
            "written": sum(e["written"] for e in written),
            "skipped": sum(e["skipped"] for e in written),
            "dim": written[0]["dim"],
            "out": str(layout.embeddings),
        }
        save_report(layout, report)
    return report


def shard_summary(record: dict[str, Any]) -> str:
    """A few human lines about one shard's run."""
    out = Path(record["out_dir"])
    path = record_path(DataLayout.of(out), (record["index"], record["count"]))
    lines = [
        f"shard {record['shard']}: prepared {len(record['prepared'])} of its {record['clips_in_shard']} clips "
        f"({record['prepared_now']} now, {record['already_done']} already done; {record['clips_found']} in all shards)",
        f"{record['frames_prepared_now']} frames in {record['prepare_seconds']} s "
        f"({record['frames_per_second']} frames/s with {record['workers']} workers)",
    ]
    if record["skipped"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in record["skipped_by_reason"].items())
        lines.append(f"skipped {len(record['skipped'])} clips ({reasons}); details in {path}")
        lines += [f"  {s['clip']}: {s['reason']} ({s['detail']})" for s in record["skipped"][:10]]
    lines.append(
        f"when all {record['count']} shards are done: diffheads prepare {record['raw_dir']} {out} --merge "
        f"(writes the file lists and {REPORT})"
    )
    return "\n".join(lines)
