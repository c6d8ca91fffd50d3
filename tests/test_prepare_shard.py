"""`diffheads prepare --shard I/N` and `--merge`: the shards of a folder, merged, give what one run gives."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diffheads.cli import main
from diffheads.errors import DiffheadsError
from diffheads.face.align import AlignConfig
from diffheads.io.audio import load_audio
from diffheads.io.video import read_video, write_video
from diffheads.prepare.clip import PrepareConfig
from diffheads.prepare.run import prepare_dataset
from diffheads.prepare.shards import merge_shards, parse_shard, shard_clips, shard_of
from diffheads.prepare.sources import RawClip
from facevideo import moving_face_video
from runcli import run_cli

# the clips' shards of 2 (sha256 of the path): shard 0 gets the split clip and the broken one, shard 1 the other two
CLIPS = {"spk1/a": 1, "spk2/b": 1, "spk1/gap": 0, "bad/junk": 0}
OPTIONS = ("--size", "64", "--min-frames", "8", "--test-speakers", "spk2", "--workers", "1", "--quiet")
TIMING = {"out_dir", "prepare_seconds", "frames_per_second", "workers"}  # may differ between a sharded and a whole run


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Two moving faces (one at 30 fps), one with a faceless stretch (split into two segments), one broken file."""
    raw = tmp_path_factory.mktemp("raw")
    for d in ("spk1", "spk2", "bad"):
        (raw / d).mkdir()
    moving_face_video(raw / "spk1" / "a.mp4", seconds=0.8, fps=25.0, size=256)
    moving_face_video(raw / "spk2" / "b.mp4", seconds=0.8, fps=30.0, size=256)
    whole = tmp_path_factory.mktemp("src") / "face.mp4"
    moving_face_video(whole, seconds=1.6, fps=25.0, size=256)
    frames, audio = read_video(whole)[0], load_audio(whole)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (10, 256, 256, 3), dtype=np.uint8)
    hiss = (0.02 * rng.standard_normal(10 * 640)).astype(np.float32)
    write_video(
        raw / "spk1" / "gap.mp4",
        np.concatenate([frames[:20], noise, frames[20:40]]),
        audio=np.concatenate([audio[: 20 * 640], hiss, audio[20 * 640 : 40 * 640]]),
    )
    (raw / "bad" / "junk.mp4").write_bytes(b"not a video" * 100)
    return raw


@pytest.fixture(scope="module")
def runs(raw, tmp_path_factory) -> dict:
    """One whole run and a run in two shards (shard 1 first) merged; the merge tried once with shard 0 missing."""
    top = tmp_path_factory.mktemp("runs")
    whole, sharded = top / "whole", top / "sharded"
    out = {"whole": run_cli("prepare", str(raw), str(whole), *OPTIONS)}
    out["shard 1"] = run_cli("prepare", str(raw), str(sharded), "--shard", "1/2", *OPTIONS)
    out["after shard 1"] = sorted(p.name for p in [*sharded.iterdir(), *(sharded / "emb").iterdir()])
    with pytest.raises(DiffheadsError) as missing:
        merge_shards(raw, sharded)
    out["missing"] = str(missing.value)
    out["shard 0"] = run_cli("prepare", str(raw), str(sharded), "--shard", "0/2", *OPTIONS)
    out["merged"] = run_cli("prepare", str(raw), str(sharded), "--merge", "--quiet")
    return out | {"whole dir": whole, "sharded dir": sharded}


def _files(root: Path) -> dict[str, bytes]:
    """Every file a run wrote, by path, except the report and the shard records (whose timings differ)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "prepare_report.json" and "shards" not in p.relative_to(root).parts
    }


def test_shards_merged_equal_one_run(runs):
    whole, sharded = runs["whole dir"], runs["sharded dir"]
    assert (sharded / "file_list_train.txt").read_text() == "./spk1/a.mp4\n./spk1/gap_s000.mp4\n./spk1/gap_s001.mp4\n"
    assert (sharded / "file_list_test.txt").read_text() == "./spk2/b.mp4\n"
    mine, theirs = _files(sharded), _files(whole)
    assert sorted(mine) == sorted(theirs)
    kinds = {name.rsplit(".", 1)[-1] for name in mine}
    assert kinds == {
        "txt",
        "mp4",
        "wav",
        "npy",
        "json",
        "pth",
    }  # lists, clips, segment record, embeddings, encoder.json
    assert [name for name in mine if mine[name] != theirs[name]] == []  # byte for byte

    merged, one = runs["merged"], runs["whole"]
    assert set(merged) == set(one) | {"shards"}
    assert {k: v for k, v in merged.items() if k not in TIMING | {"shards", "embeddings"}} == {
        k: v for k, v in one.items() if k not in TIMING | {"embeddings"}
    }
    assert merged["prepared"] == 3 and merged["clips_split"] == 1 and merged["prepared_now"] == 3
    assert [s["clip"] for s in merged["skipped"]] == ["bad/junk"]
    assert merged["embeddings"] | {"out": "-"} == one["embeddings"] | {"out": "-"}  # each names its own folder
    assert merged["embeddings"]["clips"] == 4 and merged["embeddings"]["written"] == 4
    assert merged["shards"]["count"] == 2 and [s["shard"] for s in merged["shards"]["each"]] == ["0/2", "1/2"]
    assert merged["workers"] == 2 and merged["prepare_seconds"] == max(
        runs[f"shard {i}"]["prepare_seconds"] for i in (0, 1)
    )
    assert json.loads((sharded / "prepare_report.json").read_text()) == merged


def test_shards_cover_every_raw_clip_once(raw, runs):
    seen = []
    for i in (0, 1):
        record = runs[f"shard {i}"]
        assert json.loads((runs["sharded dir"] / "shards" / f"shard-{i}-of-2.json").read_text()) == record
        mine = [*record["prepared"], *(s["clip"] for s in record["skipped"])]
        assert sorted(mine) == sorted(rel for rel, shard in CLIPS.items() if shard == i)
        assert record["clips_in_shard"] == 2 and record["clips_found"] == 4
        assert record["embeddings"]["clips"] == sum(map(len, record["prepared"].values()))  # its own clips' audio
        seen += mine
    assert sorted(seen) == sorted(CLIPS)
    # a shard writes its clips' files and its record, never the lists, the report or encoder.json
    assert runs["after shard 1"] == ["align", "audio", "emb", "lmks", "shards", "spk1", "spk2", "video"]
    assert sorted(p.name for p in runs["sharded dir"].iterdir()) == [
        "align",
        "audio",
        "emb",
        "file_list_test.txt",
        "file_list_train.txt",
        "lmks",
        "prepare_report.json",
        "segments",
        "shards",
        "video",
    ]


def test_shard_rule_is_a_partition_that_does_not_depend_on_other_clips():
    rels = [f"spk{i % 37}/clip{i}" for i in range(2000)]
    clips = [RawClip(rel, Path(f"{rel}.mp4"), Path(f"{rel}.mp4")) for rel in rels]
    for count in (1, 2, 3, 8):
        parts = [[c.rel for c in shard_clips(clips, (i, count))] for i in range(count)]
        assert sorted(rel for part in parts for rel in part) == sorted(rels)  # every clip in exactly one shard
        assert max(map(len, parts)) < 1.15 * len(rels) / count  # balanced within 15 % at 2000 clips
        # a clip's shard is a function of its own path: adding or removing other clips moves nothing
        assert [c.rel for c in shard_clips(clips[::3], (0, count))] == [r for r in parts[0] if rels.index(r) % 3 == 0]
    # sha256 of the path as a 64-bit number: the same on every machine and Python (no hash randomisation)
    assert shard_of("spk1/gap", 7) == int(hashlib.sha256(b"spk1/gap").hexdigest()[:16], 16) % 7
    assert all(shard_of(rel, 2) == shard for rel, shard in CLIPS.items())


@pytest.mark.parametrize("value", ["3/2", "2/2", "1/0", "a/b", "1", "0/2/4", "-1/2", " "])
def test_bad_shard_value_fails_in_one_line(value, tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "raw"), str(tmp_path / "out"), f"--shard={value}", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"diffheads prepare: error: --shard {value}:")
    assert "expected I/N" in err and not (tmp_path / "out").exists()
    with pytest.raises(DiffheadsError, match="shard 2/2"):
        prepare_dataset(tmp_path / "raw", tmp_path / "out", shard=(2, 2))
    assert parse_shard("3/4") == (3, 4)


def test_merge_with_a_missing_shard_names_it(raw, runs, tmp_path, capsys):
    message = runs["missing"]
    assert "0/2 missing" in message and "--shard 0/2" in message and "\n" not in message
    # from the command line: one line, exit 2, nothing written
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    shutil.copy(runs["sharded dir"] / "shards" / "shard-0-of-2.json", out / "shards")
    assert main(["prepare", str(raw), str(out), "--merge", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1/2 missing" in err and f"prepare {raw} {out} --shard 1/2" in err
    assert sorted(p.name for p in out.iterdir()) == ["shards"]
    assert main(["prepare", str(raw), str(tmp_path / "none"), "--merge", "--quiet"]) == 2
    assert "no shard records" in capsys.readouterr().err


def _merge_error(raw: Path, runs: dict, tmp_path: Path, change) -> str:
    """The merge's error after `change(records)` edits copies of the two shard records."""
    out = tmp_path / "edited"
    shutil.copytree(runs["sharded dir"] / "shards", out / "shards")
    records = {p: json.loads(p.read_text()) for p in sorted((out / "shards").glob("*.json"))}
    change(list(records.values()))
    for path, record in records.items():
        path.write_text(json.dumps(record))
    with pytest.raises(DiffheadsError) as err:
        merge_shards(raw, out)
    shutil.rmtree(out)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_merge_refuses_shards_that_do_not_fit_together(raw, runs, tmp_path):
    def other_size(records):
        records[1]["config"]["prepare"]["align"]["size"] = 96

    assert "differ in config.prepare.align.size (64 vs 96)" in _merge_error(raw, runs, tmp_path, other_size)

    def other_encoder(records):
        records[0]["encoder"] = None

    assert "differ in encoder" in _merge_error(raw, runs, tmp_path, other_encoder)

    def still_running(records):
        records[1]["state"] = "embedding"

    assert "shard 1/2 has not finished" in _merge_error(raw, runs, tmp_path, still_running)

    def other_folder(records):
        records[0]["raw_digest"] = "0" * 16

    assert "other clips than shard 0/2 saw" in _merge_error(raw, runs, tmp_path, other_folder)

    def another_count(records):
        records[0]["count"] = 3

    assert "runs with 2 and 3 shards" in _merge_error(raw, runs, tmp_path, another_count)


def test_split_flags_given_to_merge_replace_the_shards_split(raw, runs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(runs["sharded dir"] / "shards", out / "shards")
    report = run_cli("prepare", str(raw), str(out), "--merge", "--test-speakers", "spk1", "--quiet")
    assert (out / "file_list_train.txt").read_text() == "./spk2/b.mp4\n"
    assert report["test_clips"] == 3 and report["config"]["split"]["test_speakers"] == ["spk1"]


def test_a_shard_refuses_settings_other_shards_used(raw, runs):
    """Checked before any clip is decoded: hours of a wrong crop size would be lost at the merge."""
    record = runs["sharded dir"] / "shards" / "shard-0-of-2.json"
    before = record.read_text()
    with pytest.raises(DiffheadsError, match=r"differ in config.prepare.align.size \(96 vs 64\)"):
        prepare_dataset(
            raw, runs["sharded dir"], PrepareConfig(align=AlignConfig(size=96)), shard=(0, 2), progress=False
        )
    assert record.read_text() == before


def test_rerun_shard_resumes_and_merge_again(raw, runs):
    """Last in the file: it rewrites the shard records (with the same result)."""
    sharded = runs["sharded dir"]
    before = {p: p.stat().st_mtime_ns for p in sharded.rglob("*") if p.suffix in (".mp4", ".pth", ".npy", ".wav")}
    again = run_cli("prepare", str(raw), str(sharded), "--shard", "0/2", *OPTIONS)
    assert again["prepared_now"] == 0 and again["already_done"] == 1 and again["embeddings"]["written"] == 0
    assert again["skipped"] == runs["shard 0"]["skipped"]  # carried from the record, not tried again
    assert before == {
        p: p.stat().st_mtime_ns for p in sharded.rglob("*") if p.suffix in (".mp4", ".pth", ".npy", ".wav")
    }
    merged = run_cli("prepare", str(raw), str(sharded), "--merge", "--quiet")
    assert merged["prepared_now"] == 2 and merged["already_done"] == 1 and merged["train_clips"] == 3
