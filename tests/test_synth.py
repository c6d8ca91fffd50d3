"""Synthetic dataset: layout, determinism, blinks, lip-audio coupling and landmark placement."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from diffheads.errors import DiffheadsError
from diffheads.io.audio import load_audio
from diffheads.io.video import read_video
from diffheads.metrics import drift
from diffheads.synth.dataset import make_held_out_clips, make_synthetic_dataset
from diffheads.synth.face import MAX_OPENING, luminance, render_face, sample_identity
from diffheads.synth.speech import Voice, synth_speech

LINE = re.compile(r"^\./id\d{3}/clip\d{2}\.mp4$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(
        root, n_train_identities=3, n_test_identities=2, clips_per_identity=2, seconds=4.0, progress=False
    )
    return root


def _clips(root: Path) -> list[str]:
    lines = (root / "file_list_train.txt").read_text().split() + (root / "file_list_test.txt").read_text().split()
    return [line[2:-4] for line in lines]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def test_layout_lists_and_held_out_identities(dataset):
    train = (dataset / "file_list_train.txt").read_text().splitlines()
    test = (dataset / "file_list_test.txt").read_text().splitlines()
    assert len(train) == 6 and len(test) == 4
    assert all(LINE.match(line) for line in train + test)
    train_ids, test_ids = {line.split("/")[1] for line in train}, {line.split("/")[1] for line in test}
    assert not train_ids & test_ids
    info = json.loads((dataset / "synth.json").read_text())
    assert set(info["test_identities"]) == test_ids and set(info["train_identities"]) == train_ids
    assert (info["seed"], info["size"], info["fps"], info["clips_per_identity"]) == (0, 32, 25, 2)
    for rel in _clips(dataset):
        frames, fps = read_video(dataset / "video" / f"{rel}.mp4")
        audio, sr = sf.read(str(dataset / "audio" / f"{rel}.wav"), dtype="float32")
        lmks = np.load(dataset / "lmks" / f"{rel}.npy")
        truth = np.load(dataset / "truth" / f"{rel}.npz")
        assert frames.shape == (100, 32, 32, 3) and fps == 25.0
        assert sr == 16000 and audio.ndim == 1 and len(audio) == 100 * 640
        assert lmks.shape == (100, 68, 2) and lmks.dtype == np.float32
        for key in ("mouth_open", "mouth_width", "eye_open", "blink", "loudness"):
            assert truth[key].shape == (100,)
        assert truth["blink"].dtype == bool
        # the mp4 carries the same sound as the wav
        muxed = load_audio(dataset / "video" / f"{rel}.mp4")
        assert len(muxed) == len(audio)
        assert np.corrcoef(muxed, audio)[0, 1] > 0.95


def test_same_seed_same_data_and_clips_differ(tmp_path):
    kwargs = dict(n_train_identities=1, n_test_identities=1, clips_per_identity=2, seconds=1.0, progress=False)
    make_synthetic_dataset(tmp_path / "a", seed=3, **kwargs)
    make_synthetic_dataset(tmp_path / "b", seed=3, **kwargs)
    make_synthetic_dataset(tmp_path / "c", seed=4, **kwargs)
    for rel in _clips(tmp_path / "a"):
        for kind, ext in (("lmks", "npy"), ("audio", "wav")):
            name = f"{kind}/{rel}.{ext}"
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        ta, tb = np.load(tmp_path / "a" / "truth" / f"{rel}.npz"), np.load(tmp_path / "b" / "truth" / f"{rel}.npz")
        assert all(np.array_equal(ta[k], tb[k]) for k in ta.files)
        video_a, video_b = (read_video(tmp_path / run / "video" / f"{rel}.mp4")[0] for run in ("a", "b"))
        assert np.array_equal(video_a, video_b)
    audio = {p.name + p.parent.name: sf.read(str(p))[0] for p in (tmp_path / "a" / "audio").rglob("*.wav")}
    values = list(audio.values())
    assert all(not np.array_equal(values[i], values[j]) for i in range(len(values)) for j in range(i))
    other = sf.read(str(tmp_path / "c" / "audio" / "id000" / "clip00.wav"))[0]
    assert not np.array_equal(other, sf.read(str(tmp_path / "a" / "audio" / "id000" / "clip00.wav"))[0])


def test_blinks_rate_duration_and_eye_aspect_ratio(dataset):
    n_blinks, seconds, ear_open, ear_shut = 0, 0.0, [], []
    for rel in _clips(dataset):
        truth = np.load(dataset / "truth" / f"{rel}.npz")
        lmks = np.load(dataset / "lmks" / f"{rel}.npy")
        eye_open, blink = truth["eye_open"], truth["blink"]
        runs = _runs(blink)
        n_blinks += len(runs)
        seconds += len(blink) / 25
        for start, stop in runs:
            assert 3 <= stop - start <= 6
            assert eye_open[start:stop].min() == 0.0
        assert np.all(eye_open[~blink] == 1.0)
        for first in (36, 42):
            p = lmks[:, first : first + 6]
            ear = (np.linalg.norm(p[:, 1] - p[:, 5], axis=1) + np.linalg.norm(p[:, 2] - p[:, 4], axis=1)) / (
                2 * np.linalg.norm(p[:, 0] - p[:, 3], axis=1)
            )
            ear_open.extend(ear[~blink])
            ear_shut.extend(ear[eye_open == 0])
    assert 0.1 <= n_blinks / seconds <= 0.6
    assert ear_shut and np.mean(ear_shut) < 0.1 * np.mean(ear_open)


def test_mouth_follows_audio_loudness(dataset):
    for rel in _clips(dataset):
        audio, _ = sf.read(str(dataset / "audio" / f"{rel}.wav"), dtype="float64")
        rms = np.sqrt(np.mean(audio.reshape(-1, 640) ** 2, axis=1))
        mouth = np.load(dataset / "truth" / f"{rel}.npz")["mouth_open"]
        assert np.corrcoef(rms, mouth)[0, 1] > 0.8
        assert mouth.min() < 0.05 and mouth.max() > 0.6


def test_mouth_landmarks_sit_on_the_drawn_mouth_in_the_video(dataset):
    for rel in _clips(dataset)[:4]:
        frames, _ = read_video(dataset / "video" / f"{rel}.mp4")
        lmks = np.load(dataset / "lmks" / f"{rel}.npy")
        mouth = np.load(dataset / "truth" / f"{rel}.npz")["mouth_open"]
        luma = luminance(frames / 255.0)
        wide = np.flatnonzero(mouth > 0.6)
        centre = lmks[wide, 60:68].mean(axis=1)
        inside = luma[wide, centre[:, 1].astype(int), centre[:, 0].astype(int)]
        assert np.median(inside) < 0.2
        chin = lmks[:, 8]
        rows, cols = ((lmks[:, 57, 1] + chin[:, 1]) / 2).astype(int), lmks[:, 57, 0].astype(int)
        below_lip = luma[np.arange(len(frames)), rows, cols]
        assert np.all(below_lip > 0.3)


def test_lip_points_lie_on_lips_at_high_resolution():
    for seed in range(4):
        ident = sample_identity(np.random.default_rng(seed))
        image, points = render_face(ident, 128, mouth_open=0.7, mouth_width=0.5, eye_open=1.0, head=(0.01, -0.01, 0.04))
        rgb = image / 255.0
        at = lambda p: rgb[int(p[1]), int(p[0])]  # noqa: E731
        for outer, inner in ((51, 62), (57, 66), (50, 61), (56, 65)):
            assert np.abs(at((points[outer] + points[inner]) / 2) - ident.lips).max() < 0.06
        assert luminance(at(points[60:68].mean(axis=0))) < 0.12
        assert np.abs(at(points[57] + (points[57] - points[66])) - ident.skin).max() < 0.1
        drawn = 0.7 * MAX_OPENING * 2 * ident.face_axes[1] * 128
        assert np.linalg.norm(points[66] - points[62]) == pytest.approx(drawn, rel=1e-4)


def test_speech_pitch_follows_voice_and_is_fast():
    for pitch in (100.0, 200.0):
        speech = synth_speech(np.random.default_rng(0), Voice(pitch, 1.0), 4.0)
        frames = speech.audio.reshape(-1, 640).astype(np.float64)
        estimates = []
        for frame, vowel in zip(frames, speech.vowel):
            if vowel < 0:
                continue
            ac = np.correlate(frame, frame, "full")[639:]
            lo, hi = 16000 // 300, 16000 // 70
            estimates.append(16000 / (lo + np.argmax(ac[lo:hi])))
        assert abs(np.median(estimates) / pitch - 1) < 0.2
    start = time.perf_counter()
    synth_speech(np.random.default_rng(1), Voice(150.0, 1.0), 4.0)
    assert time.perf_counter() - start < 0.25


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(DiffheadsError, match="size"):
        make_synthetic_dataset(tmp_path, size=31, progress=False)
    with pytest.raises(DiffheadsError, match="size"):
        make_synthetic_dataset(tmp_path, size=8, progress=False)
    with pytest.raises(DiffheadsError, match="n_test_identities"):
        make_synthetic_dataset(tmp_path, n_test_identities=0, progress=False)
    assert not any(tmp_path.iterdir())


def test_identity_colours_keep_the_mouth_measurable():
    for seed in range(200):
        ident = sample_identity(np.random.default_rng(seed))
        skin, hair, lips, background = (np.array(c) for c in (ident.skin, ident.hair, ident.lips, ident.background))
        assert luminance(np.array(ident.mouth_interior)) < 0.12
        assert luminance(lips) > 0.35 and luminance(0.8 * lips) > 0.35 and luminance(0.78 * skin) > 0.35
        assert np.linalg.norm(background - skin) > 0.3 and np.linalg.norm(background - hair) > 0.3
        assert np.linalg.norm(hair - skin) > 0.25


def _skin_lab(root: Path, rel: str) -> np.ndarray:
    """Median CIELAB of the skin in frame 0 of a clip (the drift metric's face colour, with the stored landmarks)."""
    frame = read_video(root / "video" / f"{rel}.mp4")[0][0]
    points = np.load(root / "lmks" / f"{rel}.npy")[0]
    return drift.face_colour(frame, drift.face_mask(points, *frame.shape[:2]))


def test_held_out_clips_are_the_dataset_faces_saying_new_speech_of_any_length(tmp_path):
    dataset, same, long = tmp_path / "set", tmp_path / "same", tmp_path / "long"
    make_synthetic_dataset(
        dataset, n_train_identities=1, n_test_identities=1, clips_per_identity=1, seconds=1.0, progress=False
    )
    # a clip the dataset has, asked for with its length, is the dataset's clip
    make_held_out_clips(same, [(1, 0)], seconds=1.0, progress=False)
    for name in ("lmks/id001/clip00.npy", "audio/id001/clip00.wav", "truth/id001/clip00.npz"):
        assert (same / name).read_bytes() == (dataset / name).read_bytes()
    info = make_held_out_clips(long, [(1, 7), (0, 7)], seconds=6.5, progress=False)
    assert (long / "file_list_test.txt").read_text().split() == ["./id001/clip07.mp4", "./id000/clip07.mp4"]
    assert (long / "file_list_train.txt").read_text() == ""
    assert json.loads((long / "synth.json").read_text()) == info
    assert info["clips"] == [[1, 7], [0, 7]] and info["test_identities"] == ["id000", "id001"]
    n = round(6.5 * 25)
    assert info["n_frames"] == n
    for rel in ("id001/clip07", "id000/clip07"):
        frames, fps = read_video(long / "video" / f"{rel}.mp4")
        assert frames.shape == (n, 32, 32, 3) and fps == 25.0
        assert len(sf.read(str(long / "audio" / f"{rel}.wav"))[0]) == n * 640
        assert np.load(long / "lmks" / f"{rel}.npy").shape == (n, 68, 2)
        assert np.load(long / "truth" / f"{rel}.npz")["mouth_open"].shape == (n,)
    # a new clip index is the same face (skin colour, eye-corner distance) saying other speech
    same_face = drift.colour_difference(_skin_lab(long, "id001/clip07")[None], _skin_lab(dataset, "id001/clip00"))[0]
    other_face = drift.colour_difference(_skin_lab(long, "id000/clip07")[None], _skin_lab(dataset, "id001/clip00"))[0]
    assert same_face < 1.5 and other_face > 5
    eyes = [
        drift.inter_ocular(np.load(root / "lmks" / "id001" / f"{c}.npy")[0])
        for root, c in ((long, "clip07"), (dataset, "clip00"))
    ]
    assert eyes[0] == pytest.approx(eyes[1], rel=1e-4)
    new_audio = sf.read(str(long / "audio/id001/clip07.wav"))[0][:16000]
    assert not np.allclose(new_audio, sf.read(str(dataset / "audio/id001/clip00.wav"))[0][:16000])


@pytest.mark.parametrize(
    ("clips", "kwargs", "match"),
    [
        ([], {}, "no clips"),
        ([(30, -1)], {}, "two whole numbers"),
        ([(30,)], {}, "two whole numbers"),
        ([(30, 1.5)], {}, "two whole numbers"),
        ([(30, 10), (30, 10)], {}, "more than once"),
        ([(30, 10)], {"seconds": 0.01}, "seconds"),
        ([(30, 10)], {"size": 31}, "size"),
        ([(30, 10)], {"seed": -1}, "seed"),
    ],
)
def test_held_out_clips_reject_bad_arguments_in_one_line(tmp_path, clips, kwargs, match):
    with pytest.raises(DiffheadsError, match=match) as err:
        make_held_out_clips(tmp_path / "out", clips, progress=False, **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
