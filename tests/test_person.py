"""A person model knows its person: it records the face it was trained on, and refuses another one (dlib's 0.6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffheads.app.engine import Studio
from diffheads.app.page import Page
from diffheads.checkpoint import describe_training_data, export_model, load_model, model_provenance, save_model
from diffheads.cli import main
from diffheads.errors import DiffheadsError
from diffheads.face.align import AlignConfig
from diffheads.face.portrait import align_photo
from diffheads.io.audio import write_wav
from diffheads.io.image import write_png
from diffheads.io.video import iter_video_frames, write_video
from diffheads.metrics import person
from diffheads.sample.person import PersonCheck
from tiny import tiny_checkpoint

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "grid"
S1_TRAIN = ("bbbf6n", "bgwu9a", "bwwh5a", "lgbm2n", "lwae9s", "pbbv9a", "praxzp", "pwwr1a")  # 8 s1 sentences
S1_PORTRAITS = ("sgav6p", "srih1s")  # two more s1 sentences, never in the record
OTHERS = ("lbax4n", "sbwe5n", "swiz3n")  # other GRID speakers; sbwe5n is the nearest to s1
EIGHT_SPEAKERS = ("bbbf6n", "brbk7n", "lbax4n", "lbbc2a", "lrwp9a", "lwbsza", "sbia1a", "sbwe5n")  # s1 and 7 others
SIZE = 64  # the test model's side (person.yaml's): the record and the portraits are compared at what the model sees


def _grid_file(name: str) -> Path:
    other = SHARED / "other" / f"{name}.mpg"
    return other if other.is_file() else SHARED / "s1" / f"{name}.mp4"


def _first_frame(name: str) -> np.ndarray:
    return next(iter(iter_video_frames(_grid_file(name))))


def _data(root: Path, names: tuple[str, ...]) -> tuple[Path, list[str]]:
    """A DATA folder whose clips are the 64 px aligned first frames of GRID `names` (2 frames each, as prepare crops)."""
    ids = []
    for name in names:
        png = root / "photos" / f"{name}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        write_png(png, _first_frame(name))
        crop = align_photo(png, AlignConfig(size=64)).identity_crop
        cid = f"{_grid_file(name).parent.name}/{name}"
        (root / "data" / "video" / cid).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / "data" / "video" / f"{cid}.mp4", np.stack([crop, crop]))
        ids.append(cid)
    (root / "data" / "file_list_train.txt").write_text("".join(f"./{cid}.mp4\n" for cid in ids))
    return root / "data", ids


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> dict[str, Path]:
    """Portraits (full GRID frames), a speech clip, and two 32 px models: one recording s1's face, one without."""
    assert SHARED.is_dir(), f"{SHARED} missing: the tests need ../shared/data beside the repository"
    root = tmp_path_factory.mktemp("person")
    data, ids = _data(root, S1_TRAIN)
    record = describe_training_data(data, ids, SIZE)
    plain = tiny_checkpoint(root / "plain.ckpt", f"model.image_size={SIZE}")
    model = load_model(plain)
    save_model(root / "s1.ckpt", model.unet, model.cfg, model.audio_encoder, {**record, "steps": 0})
    files = {"data": data, "s1": root / "s1.ckpt", "plain": plain, "root": root}
    for name in (*S1_PORTRAITS, *OTHERS):
        write_png(root / f"{name}.png", _first_frame(name))
        files[name] = root / f"{name}.png"
    t = np.arange(int(0.08 * 16000)) / 16000  # two video frames: sampling is not what is tested
    write_wav(root / "speech.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))
    files["speech"] = root / "speech.wav"
    return files


# ---------------------------------------------------------------- the record


def test_a_model_of_s1_records_s1s_face(grid):
    record = model_provenance(grid["s1"])["person"]
    assert len(record["descriptor"]) == 128 and (record["n_faces"], record["n_frames"]) == (8, 8)
    assert record["spread"] < 0.3 and record["widest_pair"] < 0.4  # 0.20 and 0.30 measured
    assert "reason" not in record
    assert model_provenance(export_model(grid["s1"], grid["root"] / "exported.ckpt"))["person"] == record


def test_many_people_are_not_one_person(tmp_path):
    data, ids = _data(tmp_path, EIGHT_SPEAKERS)  # as a corpus of many actors (CREMA-D) would be sampled
    record = describe_training_data(data, ids, SIZE)["person"]
    assert record["descriptor"] is None and record["n_faces"] == 8
    # eight people lie within 0.6 of their mean (0.56 measured): only the pairs tell them apart (0.94)
    assert record["spread"] < person.SAME_PERSON_DISTANCE < record["widest_pair"]
    assert record["reason"].startswith("the training faces are more than one person (two lie ")


def test_too_few_faces_or_no_dlib_record_nothing(monkeypatch):
    crops = np.stack([_first_frame(n) for n in S1_TRAIN[:2]])
    blank = np.full((3, *crops.shape[1:]), 128, np.uint8)
    record = person.person_record(np.concatenate([crops, blank]))  # 2 faces in 5 frames
    assert record == {
        "descriptor": None,
        "n_faces": 2,
        "n_frames": 5,
        "reason": "dlib found a face in 2 of 5 training frames: no person to recognise",
    }
    assert person.person_record(np.concatenate([crops, blank[:1]]))["descriptor"] is not None  # 2 of 3

    def missing() -> None:
        raise DiffheadsError("the dlib judges need dlib; install it")

    monkeypatch.setattr(person, "DlibJudges", missing)
    record = person.person_record(crops)
    assert record["descriptor"] is None and record["reason"].startswith("dlib is unavailable (the dlib judges need")


def test_synthetic_faces_are_not_sent_to_dlib(grid, monkeypatch):
    (grid["data"] / "synth.json").write_text("{}")
    monkeypatch.setattr(person, "DlibJudges", None)  # would fail if called
    try:
        ids = [f"s1/{n}" for n in S1_TRAIN]
        record = describe_training_data(grid["data"], ids, SIZE)["person"]
    finally:
        (grid["data"] / "synth.json").unlink()
    assert record == {"descriptor": None, "reason": "synthetic cartoon faces: no person to recognise"}


# ---------------------------------------------------------------- the comparison


def test_s1_is_near_the_record_and_other_speakers_are_far(grid):
    check, provenance = PersonCheck(), model_provenance(grid["s1"])
    crops = {n: align_photo(grid[n], AlignConfig(size=SIZE)).identity_crop for n in (*S1_PORTRAITS, *OTHERS)}
    distance = {n: check.distance(provenance, crop) for n, crop in crops.items()}
    assert all(distance[n] < 0.3 for n in S1_PORTRAITS), distance  # measured 0.16 and 0.18
    assert all(distance[n] > 0.6 for n in OTHERS), distance  # measured 0.70 (sbwe5n) to 0.95
    assert check.distance(model_provenance(grid["plain"]), np.zeros((SIZE, SIZE, 3), np.uint8)) is None  # no record
    assert check.distance(provenance, np.full((SIZE, SIZE, 3), 128, np.uint8)) is None  # no face in the crop


@pytest.mark.parametrize("command", ["animate", "stream"])
def test_another_speaker_is_refused_in_one_line_unless_any_face(grid, tmp_path, capsys, command):
    def run(model: Path, face: str, *flags: str) -> tuple[int, list[str]]:
        out = tmp_path / f"{model.stem}_{face}_{len(flags)}.mp4"
        args = [command, "--checkpoint", str(model), "--image", str(grid[face]), "--audio", str(grid["speech"])]
        code = main([*args, "--output", str(out), "--solver", "ddim", "--steps", "1", "--quiet", *flags])
        assert out.is_file() == (code == 0)
        return code, [line for line in capsys.readouterr().err.splitlines() if "diffheads" in line]

    if command == "animate":  # what the two commands share (sample/person.py) is checked once
        assert run(grid["s1"], S1_PORTRAITS[0]) == (0, [])
        assert run(grid["plain"], "lbax4n") == (0, [])  # no record: nothing to say
    code, [line] = run(grid["s1"], "lbax4n")
    assert code == 2 and line.startswith(
        f"diffheads {command}: error: this model knows only the person it was trained on (face distance 0."
    )
    assert "> 0.6, dlib's same-person rule); to animate this face, train a model on footage of it: docs/person.md" in (
        line
    )
    assert line.endswith("(--any-face animates it anyway)")
    code, [warning] = run(grid["s1"], "lbax4n", "--any-face")
    assert code == 0 and warning.startswith(f"diffheads {command}: warning: this model knows only the person")


def test_the_app_refuses_another_speaker_as_it_refuses_no_face(grid, tmp_path):
    studio = Studio(load_model(grid["s1"]), str(grid["s1"]), "cpu")
    assert studio.align(grid[S1_PORTRAITS[1]], is_video=False).identity_crop.shape == (SIZE, SIZE, 3)
    with pytest.raises(DiffheadsError, match=r"^this model knows only the person it was trained on \(face distance"):
        studio.align(grid["sbwe5n"], is_video=False)
    page = Page(studio, "help", tmp_path)
    crop, message, portrait, source = page.on_photo(str(grid["sbwe5n"]))
    assert crop is None and portrait is None and source == (str(grid["sbwe5n"]), False)
    assert message.startswith("**This model knows only the person it was trained on") and "docs/person.md" in message
    assert page.on_photo(str(grid[S1_PORTRAITS[1]]))[2] is not None
