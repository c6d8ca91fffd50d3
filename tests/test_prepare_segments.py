"""`diffheads prepare` on real footage: clips split at faceless stretches and hard scene cuts.

The raw clips are made of real GRID frames (speaker s1, and another speaker after a cut) with
stretches of random noise where no face is; their audio is the clips' own speech, cut at the
same frames, and quiet hiss under the noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from diffheads.cli import main
from diffheads.data.embeddings import load_embedding
from diffheads.data.layout import DataLayout
from diffheads.face.align import AlignConfig
from diffheads.face.landmarks import STABLE_POINTS
from diffheads.face.mean_face import load_mean_face
from diffheads.io.audio import load_audio
from diffheads.io.video import read_video, write_video
from diffheads.prepare.clip import PrepareConfig, prepare_clip
from diffheads.prepare.run import _side
from diffheads.prepare.segments import Span, find_cuts, plan_segments
from diffheads.prepare.sources import find_raw_clips
from diffheads.prepare.split import SplitRule
from runcli import run_cli

GRID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "grid"
SIZE = 64
SPF = 640  # audio samples per 25 fps frame at 16 kHz


@pytest.fixture(scope="module")
def grid() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Frames and 16 kHz audio of two real GRID clips: s1 and, for a cut to another shot, another speaker."""
    clips = {"a": GRID / "s1" / "bbbf6n.mp4", "b": GRID / "other" / "lbax4n.mpg"}
    out = {}
    for key, path in clips.items():
        assert path.is_file(), f"{path} missing: the tests need ../shared/data beside the repository"
        frames, fps = read_video(path)
        assert fps == 25
        out[key] = (frames, load_audio(path))
    return out


def _part(clip: tuple[np.ndarray, np.ndarray], start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames [start, end) of a GRID clip with their audio."""
    frames, audio = clip
    return frames[start:end], audio[start * SPF : end * SPF]


def _noise(frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random pixels (no face) at GRID's size, with quiet hiss."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, 288, 360, 3), dtype=np.uint8), (
        0.02 * rng.standard_normal(frames * SPF)
    ).astype(np.float32)


def _footage(raw: Path, *parts: tuple[np.ndarray, np.ndarray]) -> Path:
    """raw/spk/take.mp4: the parts one after another, with their audio inside."""
    path = raw / "spk" / "take.mp4"
    path.parent.mkdir(parents=True)
    write_video(path, np.concatenate([p[0] for p in parts]), fps=25, audio=np.concatenate([p[1] for p in parts]))
    return path


def _prepare(raw: Path, out: Path, *extra: str) -> dict:
    return run_cli(
        "prepare",
        str(raw),
        str(out),
        "--size",
        str(SIZE),
        "--workers",
        "1",
        "--test-speakers",
        "spk",
        "--quiet",
        *extra,
    )


def _check_segment(out: Path, cid: str, frames: int, source_audio: np.ndarray, start: int) -> np.ndarray:
    """The four files and the embeddings of one written clip id agree in length; its audio is the source's at its frames."""
    video, fps = read_video(out / "video" / f"{cid}.mp4")
    assert fps == 25 and video.shape == (frames, SIZE, SIZE, 3)
    audio = load_audio(out / "audio" / f"{cid}.wav")
    assert len(audio) == frames * SPF
    want = source_audio[start * SPF : (start + frames) * SPF]
    assert np.abs(audio - want).max() < 1e-4  # the same samples, up to 16-bit rounding
    assert np.load(out / "lmks" / f"{cid}.npy").shape == (frames, 68, 2)
    assert np.load(out / "align" / f"{cid}.npy").shape == (frames, 2, 3)
    assert load_embedding(out / "emb" / f"{cid}.pth").shape[0] == frames
    return video


def _detail(frames: np.ndarray) -> np.ndarray:
    """Mean absolute Laplacian of each frame: high for warped noise, low for a face."""
    return np.array([np.abs(cv2.Laplacian(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), cv2.CV_32F)).mean() for f in frames])


def test_faceless_stretch_and_cut_split_a_clip_into_segments(grid, tmp_path):
    """30 frames of s1, 20 of noise, 30 of another speaker: two segments, the noise dropped, resumable."""
    raw = tmp_path / "raw"
    path = _footage(raw, _part(grid["a"], 10, 40), _noise(20), _part(grid["b"], 10, 40))
    out = tmp_path / "data"
    report = _prepare(raw, out)
    assert report["prepared"] == 1 and report["clips_split"] == 1 and report["segments_of_split_clips"] == 2
    (record,) = report["segmented"]
    assert record["clip"] == "spk/take" and record["frames"] == 80
    first, second = record["segments"]
    assert [first["id"], second["id"]] == ["spk/take_s000", "spk/take_s001"]
    # Face Mesh may take a frame to find or let go of a face where the noise starts and ends,
    # so a boundary may move inwards by a frame or two; no noise frame may be kept
    assert first["start"] == 0 and 28 <= first["end"] <= 30
    assert 50 <= second["start"] <= 52 and second["end"] == 80
    assert first["start_s"] == 0 and second["end_s"] == 3.2 and second["start_s"] == pytest.approx(second["start"] / 25)
    (gap,) = [d for d in record["dropped"] if d["reason"] == "no face"]
    assert gap["start"] == first["end"] and gap["end"] == second["start"]
    assert sum(d["end"] - d["start"] for d in record["dropped"]) == 80 - (first["end"] - first["start"]) - (
        second["end"] - second["start"]
    )

    # all segments of the clip on the side of its speaker; the whole clip's id is not written
    assert (out / "file_list_test.txt").read_text() == "./spk/take_s000.mp4\n./spk/take_s001.mp4\n"
    assert (out / "file_list_train.txt").read_text() == ""
    assert not (out / "video" / "spk" / "take.mp4").exists()
    source_audio = load_audio(path)
    noise_crop_detail = []
    for seg in (first, second):
        n = seg["end"] - seg["start"]
        video = _check_segment(out, seg["id"], n, source_audio, seg["start"])
        # what a noise frame looks like through this segment's crop maps, to compare every kept frame with
        maps = np.load(out / "align" / f"{seg['id']}.npy")
        noise = _noise(1, seed=5)[0][0]
        noise_crop_detail.append(_detail([cv2.warpAffine(noise, maps[0], (SIZE, SIZE))])[0])
        assert _detail(video).max() < 0.5 * noise_crop_detail[-1]
    assert json.loads((out / "segments" / "spk" / "take.json").read_text()) == record

    # a rerun finds the clip done from its segments and writes nothing
    outputs = (
        "video/**/*.mp4",
        "audio/**/*.wav",
        "lmks/**/*.npy",
        "align/**/*.npy",
        "emb/**/*.pth",
        "segments/**/*.json",
    )
    before = {p: p.stat().st_mtime_ns for pattern in outputs for p in out.glob(pattern)}
    assert len(before) == 11
    again = _prepare(raw, out)
    assert again["prepared_now"] == 0 and again["already_done"] == 1 and again["segmented"] == [record]
    assert (out / "file_list_test.txt").read_text() == "./spk/take_s000.mp4\n./spk/take_s001.mp4\n"
    assert before == {p: p.stat().st_mtime_ns for pattern in outputs for p in out.glob(pattern)}

    # decoded a second time for the warp (over the frame cache), the segments come out the same
    layout = DataLayout.of(tmp_path / "twice")
    cfg = PrepareConfig(align=AlignConfig(size=SIZE), frame_cache_mb=0)
    result = prepare_clip(find_raw_clips(raw)[0], layout, load_mean_face(), cfg)
    assert result.record == record
    for seg in record["segments"]:
        assert np.array_equal(read_video(layout.video(seg["id"]))[0], read_video(out / "video" / f"{seg['id']}.mp4")[0])


def test_hard_cut_between_two_faces_splits_and_each_side_is_aligned_alone(grid, tmp_path):
    """40 frames of s1 then 40 of another speaker, face visible throughout: two segments at the cut."""
    raw = tmp_path / "raw"
    b_frames, b_audio = _part(grid["b"], 10, 50)
    # the second shot is a closer one, so smoothing across the cut would pull the first crops off the face
    zoom = np.stack([cv2.resize(f[36:252, 45:315], (360, 288), interpolation=cv2.INTER_AREA) for f in b_frames])
    path = _footage(raw, _part(grid["a"], 10, 50), (zoom, b_audio))
    out = tmp_path / "data"
    report = _prepare(raw, out)
    (record,) = report["segmented"]
    assert record["cuts"] == [40] and record["dropped"] == []
    assert [(s["id"], s["start"], s["end"]) for s in record["segments"]] == [
        ("spk/take_s000", 0, 40),
        ("spk/take_s001", 40, 80),
    ]
    source_audio = load_audio(path)
    for seg in record["segments"]:
        _check_segment(out, seg["id"], 40, source_audio, seg["start"])
        # the stable points stay put in every crop, the frames next to the cut included (measured: under 0.8 px;
        # smoothed across the cut they move by 10 px, and by 4 px when tracking carries the old face over it)
        points = np.load(out / "lmks" / f"{seg['id']}.npy")[:, STABLE_POINTS]
        assert np.abs(points - np.median(points, axis=0)).max() < 2.0


def test_short_dropout_inside_a_shot_is_interpolated_not_split(grid, tmp_path):
    """Two noise frames inside one shot: one clip under its own id, every frame kept."""
    raw = tmp_path / "raw"
    path = _footage(raw, _part(grid["a"], 10, 30), _noise(2), _part(grid["a"], 32, 52))
    out = tmp_path / "data"
    report = _prepare(raw, out, "--no-embed")
    assert report["prepared"] == 1 and report["clips_split"] == 0 and report["segmented"] == []
    assert (out / "file_list_test.txt").read_text() == "./spk/take.mp4\n"
    assert not (out / "segments").exists()
    video, _ = read_video(out / "video" / "spk" / "take.mp4")
    assert video.shape[0] == 42 and len(load_audio(out / "audio" / "spk" / "take.wav")) == 42 * SPF
    assert np.allclose(load_audio(out / "audio" / "spk" / "take.wav"), load_audio(path)[: 42 * SPF], atol=1e-4)


def test_clip_whose_stretches_are_all_too_short_is_skipped(grid, tmp_path, capsys):
    """12 face frames, 10 noise, 12 face frames, with the default 16 frames minimum: nothing to keep."""
    raw = tmp_path / "raw"
    _footage(raw, _part(grid["a"], 10, 22), _noise(10), _part(grid["b"], 10, 22))
    out = tmp_path / "data"
    assert main(["prepare", str(raw), str(out), "--size", str(SIZE), "--workers", "1", "--quiet"]) == 2
    assert "too short" in capsys.readouterr().err
    saved = json.loads((out / "prepare_report.json").read_text())
    (skip,) = saved["skipped"]
    assert skip["clip"] == "spk/take" and skip["reason"] == "too short" and "16" in skip["detail"]
    assert not (out / "video").exists() and not (out / "segments").exists()


def test_damaged_opening_of_a_real_clip_is_trimmed_and_keeps_the_clip_id(tmp_path):
    """GRID s1/bbizzn starts with 12 grey, broken frames (no face), then an intact shot: one segment, frames 12-75."""
    raw = tmp_path / "raw" / "s1"
    raw.mkdir(parents=True)
    (raw / "bbizzn.mp4").write_bytes((GRID / "s1" / "bbizzn.mp4").read_bytes())
    out = tmp_path / "data"
    report = _prepare(raw.parent, out, "--no-embed")
    assert report["clips_split"] == 0 and report["clips_trimmed"] == 1
    (record,) = report["segmented"]
    assert record["segments"] == [{"id": "s1/bbizzn", "start": 12, "end": 75, "start_s": 0.48, "end_s": 3.0}]
    assert record["dropped"] == [{"start": 0, "end": 12, "start_s": 0.0, "end_s": 0.48, "reason": "no face"}]
    assert (out / "file_list_train.txt").read_text() == "./s1/bbizzn.mp4\n"
    assert read_video(out / "video" / "s1" / "bbizzn.mp4")[0].shape[0] == 63
    audio = load_audio(out / "audio" / "s1" / "bbizzn.wav")
    source = load_audio(raw / "bbizzn.mp4")
    source = np.pad(source, (0, 75 * SPF - len(source)))  # GRID's audio ends 22 ms early: padded with silence
    assert len(audio) == 63 * SPF and np.abs(audio - source[12 * SPF :]).max() < 1e-4


def test_segments_of_a_clip_share_its_side_and_names_cannot_clash(tmp_path, capsys):
    """A test list naming one segment, or a speaker pattern anchored at the clip name's end, holds out every segment."""
    ids = ["x/1015_DFA_ANG_XX_s000", "x/1015_DFA_ANG_XX_s001"]
    assert _side(SplitRule.preset("crema"), "x/1015_DFA_ANG_XX", ids) == "test"
    assert _side(SplitRule(test_clips=frozenset({ids[1]})), "x/1015_DFA_ANG_XX", ids) == "test"
    assert _side(SplitRule(test_clips=frozenset({"x/other"})), "x/1015_DFA_ANG_XX", ids) == "train"
    raw = tmp_path / "raw" / "spk"
    raw.mkdir(parents=True)
    for name in ("a.mp4", "a_s000.mp4"):
        (raw / name).write_bytes(b"not decoded: the names are checked first")
    assert main(["prepare", str(raw.parent), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "spk/a_s000" in err and "rename" in err
    assert not (tmp_path / "out").exists()


def test_plan_segments_rules():
    """Short dropouts are filled, longer faceless runs and cuts split, short or faceless pieces are dropped."""
    face = np.ones(60, bool)
    assert plan_segments(face, [], 16, 3, 0.2) == ([Span(0, 60)], [])
    gap3, gap4 = face.copy(), face.copy()
    gap3[20:23] = False
    gap4[20:24] = False
    assert plan_segments(gap3, [], 16, 3, 0.2) == ([Span(0, 60)], [])
    assert plan_segments(gap4, [], 16, 3, 0.2) == ([Span(0, 20), Span(24, 60)], [Span(20, 24, "no face")])
    edge = face.copy()
    edge[:2] = False  # a face found two frames late is held, as before
    assert plan_segments(edge, [], 16, 3, 0.2) == ([Span(0, 60)], [])
    assert plan_segments(face, [50], 16, 3, 0.2) == ([Span(0, 50)], [Span(50, 60, "too short")])
    shot = face.copy()
    shot[30:32] = False  # two faceless frames that fill a shot between two cuts
    assert plan_segments(shot, [30, 32], 16, 3, 0.2) == ([Span(0, 30), Span(32, 60)], [Span(30, 32, "no face")])
    flicker = face.copy()
    flicker[::3] = False  # every third frame without a face: 33 % of the frames
    assert plan_segments(flicker, [], 16, 3, 0.2) == ([], [Span(0, 60, "face lost")])


def test_find_cuts_ignores_flashes_and_finds_lasting_changes():
    """A changed picture for two frames is a flash; one that lasts is a cut, at its first frame."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    jitter = rng.integers(-2, 3, (40, 32, 32, 3))
    thumbs = np.clip(np.concatenate([np.repeat(a[None], 20, 0), np.repeat(b[None], 20, 0)]) + jitter, 0, 255).astype(
        np.uint8
    )
    assert find_cuts(thumbs, 3, 12.0, 6.0) == [20]
    thumbs[8:10] = b  # two frames of the other picture inside the first shot
    assert find_cuts(thumbs, 3, 12.0, 6.0) == [20]
    assert find_cuts(thumbs, 1, 12.0, 6.0) == [8, 10, 20]  # a window of one frame sees them as two cuts
    assert find_cuts(thumbs, 3, 0.0, 6.0) == []
