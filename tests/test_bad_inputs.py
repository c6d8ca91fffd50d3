"""The bad-input catalogue: every bad input gives exit 2, one line that says what is wrong and what to do,
and no partial output (STYLE rule 10).

Each `Case` builds its inputs under the test's tmp_path, runs `diffheads ARGV` in-process through
`diffheads.cli.main` and checks:

(a) the exit code is non-zero (and nothing was printed on stdout);
(b) stderr is exactly one line, `diffheads <command>: error: <message>`, and `Case.expect` (a regex)
    is found in <message>: write it to name what is wrong and the hint of what to do;
(c) no file appeared or changed anywhere under tmp_path (the inputs were snapshotted after the
    setup), except those matching `Run.allow`; no temporary file of an atomic write (`.name.xxxx.tmp.ext`)
    is left anywhere under tmp_path, even among the allowed ones; none of `Run.absent` exists.

To add a case: write `def setup(tmp: Path, shared: Shared) -> Run` that builds the inputs under `tmp`
(expensive inputs come from `shared`, built once per session; add a cached builder there for yours,
e.g. a trained checkpoint), and append `Case(id, setup, expect, patch=...)` to `CASES`. A simulated
failure (disk full, permission denied) goes in `patch(monkeypatch, tmp)`, applied after the setup and
the snapshot, just before the command runs; `eacces_on_mkstemp` and `disk_full_on_write` are ready-made.

`MUST_WORK` lists inputs that look odd but must succeed; each `Works.check(tmp, result)` receives the
JSON the command printed.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import io
import json
import re
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch

from diffheads.cli import main
from diffheads.io.video import write_video
from tiny import TINY_MODEL, tiny_checkpoint

TMP_NAME = re.compile(r"^\..+\.tmp(\.[^.]+)?$")  # what diffheads.io.atomic.atomic_path names its temporary files


# ---------------------------------------------------------------- inputs shared by the cases (built once)


def speech(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """A voiced 180 Hz tone with a 3 Hz syllable envelope, float32 mono."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


class Shared:
    """Inputs that take a while to build, made once per session in their own folder; cases copy them."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @functools.cache
    def face_video(self, frames: int = 25, audio: bool = True, pair: bool = False) -> Path:
        """A still astronaut face (192 px; two side by side with `pair`) at 25 fps, with 1 s-per-25-frames of speech."""
        from facevideo import astronaut

        face = cv2.resize(astronaut(), (192, 192), interpolation=cv2.INTER_AREA)
        if pair:
            face = np.concatenate([face, face], axis=1)
        path = self.root / f"face_{frames}_{audio}_{pair}.mp4"
        write_video(path, np.repeat(face[None], frames, axis=0), fps=25, audio=speech(frames / 25) if audio else None)
        return path

    @functools.cache
    def noise_video(self) -> Path:
        """25 frames of random pixels (no face) with speech."""
        path = self.root / "noise.mp4"
        noise = np.random.default_rng(0).integers(0, 255, (25, 128, 128, 3), dtype=np.uint8)
        write_video(path, noise, fps=25, audio=speech(1.0))
        return path

    @functools.cache
    def synth_data(self) -> Path:
        """A tiny synthetic DATA folder: id000/clip00 (train) and id001/clip00 (test), 1 s at 16 px, no emb/."""
        path = self.root / "synth"
        code = main(
            [
                "synth",
                str(path),
                "--train-identities",
                "1",
                "--test-identities",
                "1",
                "--clips-per-identity",
                "1",
                "--seconds",
                "1",
                "--size",
                "16",
                "--quiet",
            ]
        )
        assert code == 0
        return path

    def data(self, tmp: Path) -> Path:
        """A fresh copy of the synthetic DATA folder in tmp/data."""
        return Path(shutil.copytree(self.synth_data(), tmp / "data"))

    def generated(self, tmp: Path) -> Path:
        """tmp/gen: the synthetic test clip as a 'generated' video (same name as its real clip)."""
        gen = tmp / "gen" / "id001"
        gen.mkdir(parents=True)
        shutil.copy(self.synth_data() / "video" / "id001" / "clip00.mp4", gen / "clip00.mp4")
        return tmp / "gen"


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Shared:
    return Shared(tmp_path_factory.mktemp("shared_inputs"))


# ---------------------------------------------------------------- the harness


@dataclass(frozen=True)
class Run:
    """What a case's setup built: the command line and what must not be written."""

    argv: list[str]  # the arguments after `diffheads`
    absent: tuple[Path, ...] = ()  # the target files (or folders) that must not exist afterwards
    allow: tuple[str, ...] = ()  # globs, relative to tmp_path, of files the failing run may write (e.g. a report)


@dataclass(frozen=True)
class Case:
    """One bad input: how to build it, what the one-line error must say, and an optional simulated failure."""

    id: str
    setup: Callable[[Path, Shared], Run]
    expect: str  # regex searched in the message after "diffheads <command>: error: "
    patch: Callable[[pytest.MonkeyPatch, Path], None] | None = None  # applied after setup, before the command
    marks: tuple[Any, ...] = ()  # pytest marks, e.g. (pytest.mark.slow,)


@dataclass(frozen=True)
class Works:
    """An odd input that must succeed; `check` gets tmp_path and the JSON the command printed."""

    id: str
    setup: Callable[[Path, Shared], list[str]]
    check: Callable[[Path, dict], None]
    marks: tuple[Any, ...] = ()


def call_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `diffheads ARGV` run in this process; an escaping exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - a traceback is exactly the failure this catalogue looks for
        pytest.fail(
            f"diffheads {' '.join(argv)} raised instead of a one-line error:\n"
            f"{''.join(traceback.format_exception(exc))}\nstderr so far:\n{err.getvalue()}"
        )
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file under root."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() or p.is_symlink()
    }


def leftover_temporaries(root: Path) -> list[str]:
    """Files under root named like an atomic write's temporary file."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(".*") if TMP_NAME.match(p.name))


def eacces_on_mkstemp(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    """Every new temporary file fails with 'Permission denied' (the tests run as root, so chmod would not stop them)."""
    import tempfile

    def denied(*args: Any, dir: Any = None, **kwargs: Any) -> Any:  # noqa: A002 - tempfile's own name
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", denied)


def disk_full_on_write(pattern: str) -> Callable[[pytest.MonkeyPatch, Path], None]:
    """A patch under which Path.write_bytes to a file named like `pattern` writes half its bytes, then fails with ENOSPC.

    write_wav, save_embedding and atomic_write_bytes write through Path.write_bytes; a writer that opens the file
    itself (np.save, PyAV, torch.save to a path) needs its own patch, in the same spirit.
    """

    def patch(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
        original = Path.write_bytes

        def write_bytes(self: Path, data: bytes) -> int:
            if not fnmatch.fnmatch(self.name, pattern):
                return original(self, data)
            original(self, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(self))

        monkeypatch.setattr(Path, "write_bytes", write_bytes)

    return patch


# ---------------------------------------------------------------- prepare


def _raw_with(tmp: Path, files: dict[str, Path | bytes | None]) -> Path:
    """tmp/raw holding each name as a copy of a Path, those bytes, or an empty folder (None)."""
    raw = tmp / "raw"
    raw.mkdir()
    for name, content in files.items():
        target = raw / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            target.mkdir()
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copy(content, target)
    return raw


def _prepare(raw: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", str(raw), str(out), "--workers", "1", "--quiet", *extra]


def _prepare_run(tmp: Path, files: dict[str, Path | bytes | None]) -> Run:
    """prepare of a folder whose every clip is bad: only the report of why may be written."""
    raw, out = _raw_with(tmp, files), tmp / "out"
    return Run(
        _prepare(raw, out),
        absent=(out / "video", out / "file_list_train.txt", out / "emb"),
        allow=("out/prepare_report.json",),
    )


def _setup_prepare_raw_missing(tmp: Path, shared: Shared) -> Run:
    return Run(_prepare(tmp / "nope", tmp / "out"), absent=(tmp / "out",))


def _setup_prepare_no_videos(tmp: Path, shared: Shared) -> Run:
    raw = _raw_with(tmp, {"readme.txt": b"notes", "face.png": b"\x89PNG", "sub": None})
    return Run(_prepare(raw, tmp / "out"), absent=(tmp / "out",))


def _setup_prepare_zero_byte(tmp: Path, shared: Shared) -> Run:
    return _prepare_run(tmp, {"spk/a.mp4": b""})


def _setup_prepare_truncated(tmp: Path, shared: Shared) -> Run:
    data = shared.face_video().read_bytes()
    return _prepare_run(tmp, {"spk/a.mp4": data[: len(data) // 2]})


def _setup_prepare_no_audio(tmp: Path, shared: Shared) -> Run:
    return _prepare_run(tmp, {"spk/a.mp4": shared.face_video(audio=False)})


def _setup_prepare_empty_audio_beside(tmp: Path, shared: Shared) -> Run:
    run = _prepare_run(tmp, {"spk/a.mp4": shared.face_video(audio=False)})
    sf.write(str(tmp / "raw" / "spk" / "a.wav"), np.zeros(0, np.float32), 16000)  # a valid wav of 0 s
    return run


def _setup_prepare_no_face(tmp: Path, shared: Shared) -> Run:
    return _prepare_run(tmp, {"spk/a.mp4": shared.noise_video()})


def _setup_prepare_two_faces(tmp: Path, shared: Shared) -> Run:
    return _prepare_run(tmp, {"spk/a.mp4": shared.face_video(pair=True)})


def _setup_prepare_out_under_file(tmp: Path, shared: Shared) -> Run:
    raw = _raw_with(tmp, {"spk/a.mp4": shared.face_video()})
    (tmp / "taken").write_text("a file where the output folder should go")
    return Run(_prepare(raw, tmp / "taken" / "out"))


def _setup_prepare_out_denied(tmp: Path, shared: Shared) -> Run:
    raw = _raw_with(tmp, {"spk/a.mp4": shared.face_video()})
    return Run(_prepare(raw, tmp / "out"), absent=(tmp / "out",))


def _setup_prepare_disk_full(tmp: Path, shared: Shared) -> Run:
    raw, out = _raw_with(tmp, {"spk/a.mp4": shared.face_video()}), tmp / "out"
    return Run(_prepare(raw, out), absent=(out / "lmks" / "spk" / "a.npy", out / "align" / "spk" / "a.npy", out))


# ---------------------------------------------------------------- embed


def _only_listed(data: Path, train: list[str], test: list[str] = ()) -> None:
    """Rewrite DATA's file lists to name just these clip ids."""
    (data / "file_list_train.txt").write_text("".join(f"./{c}.mp4\n" for c in train))
    (data / "file_list_test.txt").write_text("".join(f"./{c}.mp4\n" for c in test))


def _embed_run(data: Path, *extra: str) -> Run:
    return Run(["embed", str(data), "--quiet", *extra], absent=(data / "emb",))


def _setup_embed_data_missing(tmp: Path, shared: Shared) -> Run:
    return _embed_run(tmp / "nope")


def _setup_embed_audio_missing(tmp: Path, shared: Shared) -> Run:
    data = shared.data(tmp)
    (data / "audio" / "id001" / "clip00.wav").unlink()  # the test clip; the train clip is fine
    return _embed_run(data)


def _setup_embed_zero_byte_wav(tmp: Path, shared: Shared) -> Run:
    data = shared.data(tmp)
    (data / "audio" / "id000" / "clip00.wav").write_bytes(b"")
    _only_listed(data, ["id000/clip00"])
    return _embed_run(data)


def _setup_embed_corrupt_wav(tmp: Path, shared: Shared) -> Run:
    data = shared.data(tmp)
    (data / "audio" / "id000" / "clip00.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    _only_listed(data, ["id000/clip00"])
    return _embed_run(data)


def _setup_embed_empty_wav(tmp: Path, shared: Shared) -> Run:
    data = shared.data(tmp)
    sf.write(str(data / "audio" / "id000" / "clip00.wav"), np.zeros(0, np.float32), 16000)
    _only_listed(data, ["id000/clip00"])
    return _embed_run(data)


def _setup_embed_disk_full(tmp: Path, shared: Shared) -> Run:
    data = shared.data(tmp)
    _only_listed(data, ["id000/clip00"])
    return _embed_run(data)


def _setup_embed_corrupt_encoder_json(tmp: Path, shared: Shared) -> Run:
    data = shared.data(tmp)
    (data / "emb").mkdir()
    (data / "emb" / "encoder.json").write_text('{"name": "logmel", ')  # cut short by a crash
    return Run(["embed", str(data), "--quiet"], absent=(data / "emb" / "id000",))


def _setup_embed_whisper_missing(tmp: Path, shared: Shared) -> Run:
    data = shared.data(tmp)
    return _embed_run(data, "--encoder", "whisper", "--encoder-path", str(tmp / "weights" / "whisper-tiny"))


def _setup_embed_whisper_not_pretrained(tmp: Path, shared: Shared) -> Run:
    data = shared.data(tmp)
    (tmp / "weights" / "whisper-tiny").mkdir(parents=True)
    (tmp / "weights" / "whisper-tiny" / "model.safetensors").write_bytes(b"")
    return _embed_run(data, "--encoder", "whisper", "--encoder-path", str(tmp / "weights" / "whisper-tiny"))


# ---------------------------------------------------------------- synth


def _synth(out: Path, *extra: str) -> list[str]:
    return [
        "synth",
        str(out),
        "--train-identities",
        "1",
        "--test-identities",
        "1",
        "--clips-per-identity",
        "1",
        "--seconds",
        "0.4",
        "--size",
        "16",
        "--quiet",
        *extra,
    ]


def _setup_synth_out_under_file(tmp: Path, shared: Shared) -> Run:
    (tmp / "taken").write_text("a file where the output folder should go")
    return Run(_synth(tmp / "taken" / "data"))


def _setup_synth_out_is_file(tmp: Path, shared: Shared) -> Run:
    (tmp / "data").write_text("a file where the output folder should go")
    return Run(_synth(tmp / "data"))


def _setup_synth_out_denied(tmp: Path, shared: Shared) -> Run:
    return Run(_synth(tmp / "data"), absent=(tmp / "data",))


def _synth_arg(*extra: str) -> Callable[[Path, Shared], Run]:
    def setup(tmp: Path, shared: Shared) -> Run:
        return Run(_synth(tmp / "data", *extra), absent=(tmp / "data",))

    return setup


# ---------------------------------------------------------------- evaluate


def _evaluate(gen: Path, real: Path, out: Path, metrics: str = "psnr") -> list[str]:
    return [
        "evaluate",
        "--generated",
        str(gen),
        "--real",
        str(real),
        "--out",
        str(out),
        "--metrics",
        metrics,
        "--quiet",
    ]


def _setup_evaluate_generated_missing(tmp: Path, shared: Shared) -> Run:
    return Run(_evaluate(tmp / "nope", shared.data(tmp), tmp / "eval"), absent=(tmp / "eval",))


def _setup_evaluate_corrupt_mp4(tmp: Path, shared: Shared) -> Run:
    data, gen = shared.data(tmp), shared.generated(tmp)
    clip = gen / "id001" / "clip00.mp4"
    clip.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    return Run(_evaluate(gen, data, tmp / "eval"), absent=(tmp / "eval",))


def _setup_evaluate_no_match(tmp: Path, shared: Shared) -> Run:
    data, gen = shared.data(tmp), shared.generated(tmp)
    (gen / "id001" / "clip00.mp4").rename(gen / "id001" / "take7.mp4")
    return Run(_evaluate(gen, data, tmp / "eval"), absent=(tmp / "eval",))


def _setup_evaluate_real_is_file(tmp: Path, shared: Shared) -> Run:
    gen = shared.generated(tmp)
    return Run(_evaluate(gen, gen / "id001" / "clip00.mp4", tmp / "eval"), absent=(tmp / "eval",))


def _setup_evaluate_out_under_file(tmp: Path, shared: Shared) -> Run:
    data, gen = shared.data(tmp), shared.generated(tmp)
    (tmp / "taken").write_text("a file where the output folder should go")
    return Run(_evaluate(gen, data, tmp / "taken" / "eval"))


def _setup_evaluate_out_denied(tmp: Path, shared: Shared) -> Run:
    data, gen = shared.data(tmp), shared.generated(tmp)
    return Run(_evaluate(gen, data, tmp / "eval"), absent=(tmp / "eval",))


# ---------------------------------------------------------------- the catalogue

WHAT_TO_DO_OS = r"choose an output location you can write to"
NOT_A_FOLDER = r"(not a folder|a file stands where a folder is needed).*(choose|another)"

CASES: list[Case] = [
    # prepare: a folder whose every clip is bad ends with one line naming the reason and the clip
    Case(
        "prepare-raw-folder-missing", _setup_prepare_raw_missing, r"raw video folder .*nope not found; pass the folder"
    ),
    Case("prepare-no-videos", _setup_prepare_no_videos, r"no videos under .*raw.*\.mp4.*; "),
    Case(
        "prepare-zero-byte-video",
        _setup_prepare_zero_byte,
        r"no clip .*could be prepared \(unreadable: 1\); spk/a: unreadable: video .*spk/a\.mp4 is empty \(0 bytes\); "
        r"replace it .*prepare_report\.json",
    ),
    Case(
        "prepare-truncated-video",
        _setup_prepare_truncated,
        r"no clip .*could be prepared \(unreadable: 1\); spk/a: unreadable: video .*spk/a\.mp4 cannot be read .*"
        r"truncated or damaged: re-encode it .*prepare_report\.json",
    ),
    Case(
        "prepare-video-without-audio",
        _setup_prepare_no_audio,
        r"no clip .*could be prepared \(no audio: 1\); spk/a: no audio: .*a\.mp4 has no sound and no audio file "
        r"of its name lies beside it; put one there \(a\.wav",
    ),
    Case(
        "prepare-audio-of-0-s-beside",
        _setup_prepare_empty_audio_beside,
        r"no clip .*could be prepared \(no audio: 1\); spk/a: no audio: audio .*spk/a\.wav holds no samples \(0 s\); replace it",
    ),
    Case(
        "prepare-video-without-face",
        _setup_prepare_no_face,
        r"no clip .*could be prepared \(no face: 1\); spk/a: no face: no face found in any of its 25 frames; "
        r"use videos that show the speaker's face",
    ),
    Case(
        "prepare-several-faces",
        _setup_prepare_two_faces,
        r"no clip .*could be prepared \(several faces: 1\); spk/a: several faces: 2 faces in one frame; "
        r"crop the video to one speaker",
    ),
    Case("prepare-out-under-a-file", _setup_prepare_out_under_file, r"taken.*" + NOT_A_FOLDER),
    Case(
        "prepare-out-not-writable",
        _setup_prepare_out_denied,
        r"cannot write .*out.*Permission denied.*" + WHAT_TO_DO_OS,
        patch=eacces_on_mkstemp,
    ),
    Case(
        "prepare-disk-full",
        _setup_prepare_disk_full,
        r"no space left on the device while writing .*out/audio/spk/a\.wav; free some space",
        patch=disk_full_on_write("*.wav"),
    ),
    # embed
    Case(
        "embed-data-folder-missing",
        _setup_embed_data_missing,
        r"DATA folder .*nope not found, so there is no file list to read; pass the folder made by 'diffheads synth'",
    ),
    Case(
        "embed-listed-clip-without-audio",
        _setup_embed_audio_missing,
        r"the audio of 1 listed clip is missing: .*id001/clip00\.wav; run 'diffheads prepare' again or remove",
    ),
    Case(
        "embed-zero-byte-wav",
        _setup_embed_zero_byte_wav,
        r"audio .*id000/clip00\.wav is empty \(0 bytes\); replace it with a recording",
    ),
    Case(
        "embed-corrupt-wav",
        _setup_embed_corrupt_wav,
        r"audio .*id000/clip00\.wav cannot be read \(Invalid data found when processing input\); re-export it as wav",
    ),
    Case(
        "embed-audio-of-0-s",
        _setup_embed_empty_wav,
        r"audio .*id000/clip00\.wav holds no samples \(0 s\); replace it with a recording",
    ),
    Case(
        "embed-disk-full",
        _setup_embed_disk_full,
        r"no space left on the device while writing .*clip00.*; free some space .*no partial file",
        patch=disk_full_on_write("*.pth"),
    ),
    Case(
        "embed-corrupt-encoder-json",
        _setup_embed_corrupt_encoder_json,
        r"emb/encoder\.json is not valid JSON .*; delete it and run 'diffheads embed --overwrite'",
    ),
    Case(
        "embed-whisper-weights-missing",
        _setup_embed_whisper_missing,
        r"Whisper weights not found at .*whisper-tiny; .*huggingface\.co/openai/whisper-tiny.*save_pretrained",
    ),
    Case(
        "embed-whisper-folder-without-config",
        _setup_embed_whisper_not_pretrained,
        r"whisper-tiny is not a save_pretrained directory \(no config\.json\); .*huggingface\.co/openai/whisper",
    ),
    # synth
    Case("synth-out-under-a-file", _setup_synth_out_under_file, r"taken.*" + NOT_A_FOLDER),
    Case("synth-out-is-a-file", _setup_synth_out_is_file, r"data.*" + NOT_A_FOLDER),
    Case(
        "synth-out-not-writable",
        _setup_synth_out_denied,
        r"cannot write .*data.*Permission denied.*" + WHAT_TO_DO_OS,
        patch=eacces_on_mkstemp,
    ),
    Case(
        "synth-seconds-0",
        _synth_arg("--seconds", "0"),
        r"seconds must give at least 2 frames at 25 fps \(0\.08 s or more\), got 0\.0; pass a longer --seconds",
    ),
    Case(
        "synth-seconds-nan",
        _synth_arg("--seconds", "nan"),
        r"seconds must give at least 2 frames .*got nan; pass a longer --seconds",
    ),
    Case(
        "synth-negative-size",
        _synth_arg("--size", "-64"),
        r"size must be an even number of pixels >= 16, got -64; pass e\.g\. --size 64",
    ),
    Case(
        "synth-zero-identities",
        _synth_arg("--train-identities", "0"),
        r"n_train_identities must be a positive whole number, got 0; pass --train-identities 1 or more",
    ),
    # evaluate
    Case(
        "evaluate-generated-missing",
        _setup_evaluate_generated_missing,
        r"generated folder .*nope not found; pass the --out folder of 'diffheads generate'",
    ),
    Case(
        "evaluate-corrupt-generated-mp4",
        _setup_evaluate_corrupt_mp4,
        r"video .*gen/id001/clip00\.mp4 cannot be read \(.+\); it may be truncated or damaged: re-encode it .* or remove it",
    ),
    Case(
        "evaluate-no-matching-real-clip",
        _setup_evaluate_no_match,
        r"none of the 1 generated videos has a real clip of the same name .*; pass the DATA folder",
    ),
    Case(
        "evaluate-real-is-a-file",
        _setup_evaluate_real_is_file,
        r"real folder .*clip00\.mp4 is not a folder; pass the DATA folder or a folder of real videos",
    ),
    Case("evaluate-out-under-a-file", _setup_evaluate_out_under_file, r"taken.*" + NOT_A_FOLDER),
    Case(
        "evaluate-out-not-writable",
        _setup_evaluate_out_denied,
        r"cannot write .*eval.*Permission denied.*" + WHAT_TO_DO_OS,
        patch=eacces_on_mkstemp,
    ),
]


# ---------------------------------------------------------------- train, generate, animate, export

TRAIN_FAST = [
    *TINY_MODEL,
    "trainer.max_steps=2",
    "trainer.checkpoint_every_n_steps=1",
    "trainer.log_every_n_steps=1",
    "optim.batch_size=2",
    "data.examples_per_clip=2",
]


RUN_BOOKKEEPING = ("run/config.yaml", "run/csv/*", "run/tensorboard/*")  # written when training starts


def _embedded(tmp: Path, shared: Shared) -> Path:
    """tmp/data with its log-mel embeddings."""
    data = shared.data(tmp)
    code, _, err = call_cli(["embed", str(data), "--quiet"])
    assert code == 0, err
    return data


def _checkpoint(tmp: Path, *overrides: str) -> Path:
    """An untrained tiny model file (16 px, log-mel audio of width 200) with config `overrides`."""
    return tiny_checkpoint(tmp / "model.ckpt", "sample.steps=2", *overrides)


def _train(data: Path, out: Path, *extra: str, config: str = "configs/demo.yaml") -> list[str]:
    return ["train", config, f"data.root={data}", f"trainer.out_dir={out}", *TRAIN_FAST, *extra, "--quiet"]


def _train_run(data: Path, out: Path, *extra: str, config: str = "configs/demo.yaml") -> Run:
    return Run(_train(data, out, *extra, config=config), absent=(out,))


def _setup_train_config_missing(tmp: Path, shared: Shared) -> Run:
    return _train_run(tmp / "data", tmp / "run", config=str(tmp / "nope.yaml"))


def _setup_train_unknown_key(tmp: Path, shared: Shared) -> Run:
    return _train_run(tmp / "data", tmp / "run", "optim.lrr=1e-4")


def _setup_train_unknown_key_in_file(tmp: Path, shared: Shared) -> Run:
    (tmp / "mine.yaml").write_text("model:\n  image_size: 16\n  colour: red\n")
    return _train_run(tmp / "data", tmp / "run", config=str(tmp / "mine.yaml"))


def _setup_train_wrong_type(tmp: Path, shared: Shared) -> Run:
    return _train_run(tmp / "data", tmp / "run", "optim.lr=fast")


def _setup_train_list_names_missing_clip(tmp: Path, shared: Shared) -> Run:
    data = _embedded(tmp, shared)
    (data / "file_list_train.txt").write_text("./id000/clip00.mp4\n./id009/clip00.mp4\n")
    return _train_run(data, tmp / "run")


def _setup_train_short_embeddings(tmp: Path, shared: Shared) -> Run:
    data = _embedded(tmp, shared)
    path = data / "emb" / "id000" / "clip00.pth"
    torch.save(torch.load(path, weights_only=True)[:10], path)  # 10 rows for a 25-frame video
    # found when the clip is first read (checking every clip up front would decode a whole dataset),
    # so the run's config and empty logs exist by then; no checkpoint or model does
    out = tmp / "run"
    return Run(_train(data, out), absent=(out / "checkpoints", out / "model.ckpt"), allow=RUN_BOOKKEEPING)


def _setup_train_wrong_audio_dim(tmp: Path, shared: Shared) -> Run:
    return _train_run(_embedded(tmp, shared), tmp / "run", "model.audio_dim=64")


def _setup_train_motion_jitter_too_large(tmp: Path, shared: Shared) -> Run:
    return _train_run(_embedded(tmp, shared), tmp / "run", "data.motion_colour_jitter=1.5")


def _setup_train_resume_missing(tmp: Path, shared: Shared) -> Run:
    return _train_run(_embedded(tmp, shared), tmp / "run", f"trainer.resume={tmp / 'gone.ckpt'}")


def _setup_train_resume_truncated(tmp: Path, shared: Shared) -> Run:
    data = _embedded(tmp, shared)
    bad = tmp / "half.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, bad)
    bad.write_bytes(bad.read_bytes()[:700])
    return _train_run(data, tmp / "run", f"trainer.resume={bad}")


def _setup_train_disk_full(tmp: Path, shared: Shared) -> Run:
    out = tmp / "run"
    # the run writes its config and logs before the first checkpoint; no checkpoint or model may exist
    return Run(
        _train(_embedded(tmp, shared), out),
        absent=(out / "checkpoints" / "last.ckpt", out / "model.ckpt"),
        allow=RUN_BOOKKEEPING,
    )


def _disk_full_in_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    from diffheads.training import checkpoint_io

    def half_then_full(checkpoint: dict, path: Path) -> None:
        path.write_bytes(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io, "write_checkpoint", half_then_full)


def _setup_train_out_denied(tmp: Path, shared: Shared) -> Run:
    return _train_run(_embedded(tmp, shared), tmp / "run")


def _generate(ckpt: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), "--quiet", *extra]


def _generate_run(tmp: Path, shared: Shared, ckpt: Path, data: Path | None = None) -> Run:
    data = data or _embedded(tmp, shared)
    return Run(_generate(ckpt, data, tmp / "gen"), absent=(tmp / "gen",))


def _setup_generate_checkpoint_missing(tmp: Path, shared: Shared) -> Run:
    return _generate_run(tmp, shared, tmp / "nope.ckpt", data=tmp / "data")


def _setup_generate_checkpoint_empty(tmp: Path, shared: Shared) -> Run:
    (tmp / "empty.ckpt").write_bytes(b"")
    return _generate_run(tmp, shared, tmp / "empty.ckpt", data=tmp / "data")


def _setup_generate_checkpoint_truncated(tmp: Path, shared: Shared) -> Run:
    ckpt = _checkpoint(tmp)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    return _generate_run(tmp, shared, ckpt, data=tmp / "data")


def _other_architecture(tmp: Path) -> Path:
    """Weights of the tiny network under a stored config that says model_channels=64."""
    import json

    import safetensors.torch
    from safetensors import safe_open

    path = _checkpoint(tmp)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    config = json.loads(meta["config"])
    config["model"]["model_channels"] = 64
    safetensors.torch.save_file(
        safetensors.torch.load_file(str(path)), str(path), metadata={**meta, "config": json.dumps(config)}
    )
    return path


def _setup_generate_other_architecture(tmp: Path, shared: Shared) -> Run:
    return _generate_run(tmp, shared, _other_architecture(tmp), data=tmp / "data")


def _setup_generate_foreign_checkpoint(tmp: Path, shared: Shared) -> Run:
    path = tmp / "foreign.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(4, 4)}, "epoch": 3}, path)
    return _generate_run(tmp, shared, path, data=tmp / "data")


def _setup_generate_wrong_audio_dim(tmp: Path, shared: Shared) -> Run:
    data = shared.data(tmp)
    code, _, err = call_cli(["embed", str(data), "--n-mels", "16", "--quiet"])  # width 80, the model wants 200
    assert code == 0, err
    return _generate_run(tmp, shared, _checkpoint(tmp), data=data)


def _setup_generate_out_is_file(tmp: Path, shared: Shared) -> Run:
    data = _embedded(tmp, shared)
    (tmp / "gen").write_text("a file, not a folder")
    return Run(_generate(_checkpoint(tmp), data, tmp / "gen"))


def _face_image(tmp: Path, pair: bool = False) -> Path:
    from diffheads.io.image import write_png
    from facevideo import astronaut

    face = cv2.resize(astronaut(), (192, 192), interpolation=cv2.INTER_AREA)
    path = tmp / ("two_faces.png" if pair else "face.png")
    write_png(path, np.concatenate([face, face], axis=1) if pair else face)
    return path


def _animate(ckpt: Path, image: Path, audio: Path, out: Path, *extra: str) -> list[str]:
    return [
        "animate",
        "--checkpoint",
        str(ckpt),
        "--image",
        str(image),
        "--audio",
        str(audio),
        "--output",
        str(out),
        "--quiet",
        *extra,
    ]


def _animate_run(tmp: Path, image: Path | None = None, audio: np.ndarray | None = None, *extra: str) -> Run:
    wav = tmp / "talk.wav"
    sf.write(str(wav), speech(0.4) if audio is None else audio, 16000)
    out = tmp / "out.mp4"
    return Run(_animate(_checkpoint(tmp), image or _face_image(tmp), wav, out, *extra), absent=(out,))


def _setup_animate_no_face(tmp: Path, shared: Shared) -> Run:
    from diffheads.io.image import write_png

    gradient = np.tile(np.linspace(0, 255, 192, dtype=np.uint8)[None, :, None], (192, 1, 3))
    write_png(tmp / "wall.png", gradient)
    return _animate_run(tmp, tmp / "wall.png")


def _setup_animate_two_faces(tmp: Path, shared: Shared) -> Run:
    return _animate_run(tmp, _face_image(tmp, pair=True))


def _setup_animate_unreadable_image(tmp: Path, shared: Shared) -> Run:
    (tmp / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return _animate_run(tmp, tmp / "photo.jpg")


def _setup_animate_audio_0s(tmp: Path, shared: Shared) -> Run:
    return _animate_run(tmp, None, np.zeros(0, np.float32))


def _setup_animate_silent_audio(tmp: Path, shared: Shared) -> Run:
    return _animate_run(tmp, None, np.zeros(16000, np.float32))


def _setup_animate_video_without_audio(tmp: Path, shared: Shared) -> Run:
    run = _animate_run(tmp)
    argv = list(run.argv)
    argv[argv.index("--audio") + 1] = str(shared.face_video(audio=False))
    return Run(argv, absent=run.absent)


def _setup_animate_output_dir_is_file(tmp: Path, shared: Shared) -> Run:
    (tmp / "results").write_text("a file")
    run = _animate_run(tmp)
    argv = list(run.argv)
    argv[argv.index("--output") + 1] = str(tmp / "results" / "out.mp4")
    return Run(argv)


def _disk_full_in_video(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    """The encoder gets 3 frames out, then the disk is full."""
    from diffheads.io import video

    real = video.VideoWriter.write
    count = {"frames": 0}

    def write(self: Any, frame: np.ndarray) -> None:
        count["frames"] += 1
        if count["frames"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, frame)

    monkeypatch.setattr(video.VideoWriter, "write", write)


def _setup_animate_disk_full(tmp: Path, shared: Shared) -> Run:
    return _animate_run(tmp)


def _setup_export_malicious(tmp: Path, shared: Shared) -> Run:
    class CreatesFile:
        def __reduce__(self):
            return (open, (str(tmp / "pwned"), "w"))

    torch.save({"state_dict": CreatesFile()}, tmp / "shared.ckpt")
    return Run(
        ["export", str(tmp / "shared.ckpt"), str(tmp / "model.safetensors")],
        absent=(tmp / "model.safetensors", tmp / "pwned"),
    )


CASES += [
    Case(
        "train-config-file-missing",
        _setup_train_config_missing,
        r"config file .*nope\.yaml does not exist; pass a YAML file",
    ),
    Case(
        "train-unknown-config-key",
        _setup_train_unknown_key,
        r"unknown config key 'optim\.lrr' \(known here: .*batch_size",
    ),
    Case(
        "train-unknown-key-in-config-file",
        _setup_train_unknown_key_in_file,
        r"mine\.yaml: unknown config key 'model\.colour'",
    ),
    Case("train-wrong-type-for-config-value", _setup_train_wrong_type, r"'optim\.lr': expected a number, got 'fast'"),
    Case(
        "train-file-list-names-missing-clips",
        _setup_train_list_names_missing_clip,
        r"2 file\(s\) of clips listed in file_list_train\.txt are missing \(first: .*id009/clip00\.mp4\); remove those clips",
    ),
    Case(
        "train-embeddings-shorter-than-video",
        _setup_train_short_embeddings,
        r"clip id000/clip00: embeddings .* have 10 rows but the video has 25 frames; .*re-embed it",
    ),
    Case(
        "train-wrong-audio-dim",
        _setup_train_wrong_audio_dim,
        r"model\.audio_dim=64 but the embeddings in .*emb have width 200; remove model\.audio_dim or re-embed",
    ),
    Case(
        "train-motion-jitter-too-large",
        _setup_train_motion_jitter_too_large,
        r"data\.motion_colour_jitter must be in \[0, 1\), got 1\.5; pass e\.g\. 0\.1 \(0 turns it off\)",
    ),
    Case("train-resume-checkpoint-missing", _setup_train_resume_missing, r"cannot resume: .*gone\.ckpt not found"),
    Case(
        "train-resume-truncated-checkpoint",
        _setup_train_resume_truncated,
        r"checkpoint .*half\.ckpt is unreadable or truncated .*copy or export it again",
    ),
    Case(
        "train-disk-full-during-checkpoint",
        _setup_train_disk_full,
        r"no space left on the device while writing .*step0000001\.ckpt; free some space",
        patch=_disk_full_in_checkpoint,
    ),
    Case(
        "train-out-not-writable",
        _setup_train_out_denied,
        r"cannot write .*run.*Permission denied.*" + WHAT_TO_DO_OS,
        patch=eacces_on_mkstemp,
    ),
    Case(
        "generate-checkpoint-missing",
        _setup_generate_checkpoint_missing,
        r"checkpoint .*nope\.ckpt not found; train one",
    ),
    Case(
        "generate-checkpoint-zero-bytes",
        _setup_generate_checkpoint_empty,
        r"checkpoint .*empty\.ckpt is empty \(0 bytes\)",
    ),
    Case(
        "generate-checkpoint-truncated",
        _setup_generate_checkpoint_truncated,
        r"checkpoint .*model\.ckpt is unreadable or truncated .*export it again",
    ),
    Case(
        "generate-checkpoint-of-another-architecture",
        _setup_generate_other_architecture,
        r"weights in .*model\.ckpt do not fit the stored config: size mismatch",
    ),
    Case(
        "generate-checkpoint-from-another-program",
        _setup_generate_foreign_checkpoint,
        r"foreign\.ckpt is not a diffheads checkpoint \(no config inside\); .*import-reference",
    ),
    Case(
        "generate-embeddings-of-the-wrong-width",
        _setup_generate_wrong_audio_dim,
        r"embeddings in .*data have width 80 but the checkpoint expects audio_dim 200; embed the audio with the encoder",
    ),
    Case(
        "generate-out-is-a-file",
        _setup_generate_out_is_file,
        r"--out folder .*gen is not a folder; choose another path",
    ),
    Case(
        "animate-image-without-a-face",
        _setup_animate_no_face,
        r"no face found in .*wall\.png; use a picture where one face",
    ),
    Case("animate-several-faces", _setup_animate_two_faces, r"2 faces found in .*two_faces\.png; crop the picture"),
    Case("animate-unreadable-image", _setup_animate_unreadable_image, r"photo\.jpg is not a readable image"),
    Case("animate-audio-of-0-s", _setup_animate_audio_0s, r"audio .*talk\.wav holds no samples"),
    Case(
        "animate-silent-audio",
        _setup_animate_silent_audio,
        r"audio .*talk\.wav is silent; give a recording with speech",
    ),
    Case(
        "animate-audio-from-a-video-without-sound",
        _setup_animate_video_without_audio,
        r"has no audio stream; pass a file with speech",
    ),
    Case(
        "animate-output-folder-is-a-file",
        _setup_animate_output_dir_is_file,
        r"folder of --output .*results is not a folder; choose another path",
    ),
    Case(
        "animate-disk-full-while-writing-the-video",
        _setup_animate_disk_full,
        r"no space left on the device while writing .*out\.mp4; free some space",
        patch=_disk_full_in_video,
    ),
    Case(
        "export-malicious-pickle",
        _setup_export_malicious,
        r"needs arbitrary unpickling, which can run any code.*--trust-checkpoint",
    ),
]


def _params(items: list) -> list:
    return [pytest.param(c, id=c.id, marks=c.marks) for c in items]


@pytest.mark.parametrize("case", _params(CASES))
def test_bad_input(case: Case, shared: Shared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = case.setup(tmp_path, shared)
    before = snapshot(tmp_path)
    if case.patch is not None:
        case.patch(monkeypatch, tmp_path)
    code, stdout, stderr = call_cli(run.argv)
    monkeypatch.undo()

    # (a) failed, and printed no result
    assert code != 0, f"diffheads {' '.join(run.argv)} succeeded; stdout: {stdout[:500]}"
    assert stdout == "", f"a failed run printed a result: {stdout[:500]}"
    # (b) one line that says what is wrong and what to do
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, "stderr is not one line:\n" + stderr
    prefix = f"diffheads {run.argv[0]}: error: "
    assert lines[0].startswith(prefix), lines[0]
    message = lines[0][len(prefix) :]
    assert re.search(case.expect, message), f"{message!r} does not match {case.expect!r}"
    assert "Traceback" not in message and len(message) < 600, message
    # (c) no partial output
    after = snapshot(tmp_path)
    written = sorted(p for p in after if before.get(p) != after[p])
    unexpected = [p for p in written if not any(fnmatch.fnmatch(p, g) for g in run.allow)]
    assert not unexpected, f"the failed run wrote {unexpected}"
    assert not leftover_temporaries(tmp_path), f"temporary files left: {leftover_temporaries(tmp_path)}"
    assert not [p for p in run.absent if p.exists()], (
        f"outputs exist after the failure: {[p for p in run.absent if p.exists()]}"
    )


def test_the_catalogue_is_wide_enough() -> None:
    commands = {c.id.split("-")[0] for c in CASES}
    assert len(CASES) >= 20
    assert {"prepare", "embed", "synth", "evaluate", "train", "generate", "animate", "export"} <= commands
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


def test_prepare_skips_a_bad_clip_beside_a_good_one(shared: Shared, tmp_path: Path) -> None:
    """In a batch, a bad clip is skipped and reported; the good one is prepared."""
    raw = _raw_with(tmp_path, {"spk1/good.mp4": shared.face_video(), "spk2/bad.mp4": b""})
    code, stdout, stderr = call_cli(_prepare(raw, tmp_path / "out", "--no-embed"))
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["prepared"] == 1
    assert [(s["clip"], s["reason"]) for s in report["skipped"]] == [("spk2/bad", "unreadable")]
    assert "spk2/bad: unreadable" in stderr


# ---------------------------------------------------------------- must work: odd inputs that are fine


def _encode_audio(path: Path, samples: np.ndarray, rate: int, codec: str, container_format: str | None = None) -> None:
    """Write (channels, n) float32 samples with a PyAV encoder (mp3, opus, ...), in the container the suffix names."""
    import av

    layout = "stereo" if samples.shape[0] == 2 else "mono"
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        fmt = stream.codec_context.codec.audio_formats[0].name  # the encoder's own sample format
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32), format="fltp", layout=layout)
        frame.sample_rate = rate
        resampler = av.AudioResampler(
            format=fmt, layout=layout, rate=rate, frame_size=stream.codec_context.frame_size or None
        )
        for piece in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(piece):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def mp3_codec() -> str:
    """An mp3 encoder of PyAV's FFmpeg (libmp3lame in the wheels we use)."""
    import av

    for name in ("libmp3lame", "mp3"):
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")
                return name
            except Exception:  # noqa: BLE001 - a decoder-only name
                continue
    pytest.fail("PyAV has no mp3 encoder (libmp3lame); use another lossy format such as libopus here")


def _stereo(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)]).astype(np.float32) * 0.3


def _rows(root: Path) -> dict[str, int]:
    """Clip id -> embedding rows of every .pth under root."""
    return {
        p.relative_to(root).with_suffix("").as_posix(): len(torch.load(p, weights_only=True))
        for p in sorted(root.rglob("*.pth"))
    }


def _setup_embed_48k_float_wav(tmp: Path, shared: Shared) -> list[str]:
    data = tmp / "data"
    (data / "audio" / "spk").mkdir(parents=True)
    # 1.28 s: 32 frames at 25 fps; no video beside, so the audio's length decides the rows
    sf.write(str(data / "audio" / "spk" / "a.wav"), speech(1.28, 48000), 48000, subtype="FLOAT")
    _only_listed(data, ["spk/a"])
    return ["embed", str(data), "--quiet"]


def _check_embed_48k(tmp: Path, result: dict) -> None:
    assert sf.info(str(tmp / "data" / "audio" / "spk" / "a.wav")).subtype == "FLOAT"
    assert result["written"] == 1
    assert _rows(tmp / "data" / "emb") == {"spk/a": round(1.28 * 25)}


def _setup_embed_8k_stereo_mp3_as_wav(tmp: Path, shared: Shared) -> list[str]:
    """DATA/audio holds wav by contract; an mp3 file that someone saved under the .wav name still decodes (by content)."""
    data = tmp / "data"
    (data / "audio" / "spk").mkdir(parents=True)
    _encode_audio(data / "audio" / "spk" / "a.wav", _stereo(1.6, 8000), 8000, mp3_codec(), container_format="mp3")
    _only_listed(data, ["spk/a"])
    return ["embed", str(data), "--quiet"]


def _check_embed_mp3(tmp: Path, result: dict) -> None:
    assert _rows(tmp / "data" / "emb") == {"spk/a": round(1.6 * 25)}


def _setup_prepare_with_audio_beside(name: str, write: Callable[[Path], None]) -> Callable[[Path, Shared], list[str]]:
    def setup(tmp: Path, shared: Shared) -> list[str]:
        raw = _raw_with(tmp, {"spk/take.mp4": shared.face_video(audio=False)})  # 25 frames: 1.0 s
        write(raw / "spk" / name)
        return _prepare(raw, tmp / "out")

    return setup


def _check_prepare_one_second(tmp: Path, result: dict) -> None:
    assert result["prepared"] == 1 and not result["skipped"], result["skipped"]
    assert _rows(tmp / "out" / "emb") == {"spk/take": round(1.0 * 25)}
    assert sf.info(str(tmp / "out" / "audio" / "spk" / "take.wav")).frames == 25 * 640


def _setup_evaluate_identical(tmp: Path, shared: Shared) -> list[str]:
    return _evaluate(shared.generated(tmp), shared.data(tmp), tmp / "eval", metrics="psnr,ssim,smoothness")


def _check_evaluate_identical(tmp: Path, result: dict) -> None:
    """A generated clip equal to its real clip: PSNR is infinite (reported as null), SSIM 1, and every output is written."""
    assert result["n_videos"] == 1 and result["metrics"]["ssim"]["value"] == pytest.approx(1.0)
    assert json.loads((tmp / "eval" / "metrics.json").read_text())["metrics"]["psnr"]["value"] is None
    assert (tmp / "eval" / "report.md").is_file() and (tmp / "eval" / "plots" / "per_video.png").is_file()


def _setup_animate_with(name: str, write: Callable[[Path], None]) -> Callable[[Path, Shared], list[str]]:
    def setup(tmp: Path, shared: Shared) -> list[str]:
        write(tmp / name)
        return _animate(_checkpoint(tmp), _face_image(tmp), tmp / name, tmp / "out.mp4")

    return setup


def _check_animate_seconds(seconds: float) -> Callable[[Path, dict], None]:
    def check(tmp: Path, result: dict) -> None:
        from diffheads.io.audio import load_audio
        from diffheads.io.video import count_frames

        out = tmp / "out.mp4"
        assert result["output"] == str(out)
        assert count_frames(out) == round(seconds * 25)
        assert abs(len(load_audio(out)) / 16000 - seconds) < 0.05

    return check


MUST_WORK: list[Works] = [
    Works(
        "animate-8k-stereo-mp3",
        _setup_animate_with("talk.mp3", lambda p: _encode_audio(p, _stereo(0.48, 8000), 8000, mp3_codec())),
        _check_animate_seconds(0.48),
    ),
    Works(
        "animate-48k-float32-wav",
        _setup_animate_with("talk.wav", lambda p: sf.write(str(p), speech(0.48, 48000), 48000, subtype="FLOAT")),
        _check_animate_seconds(0.48),
    ),
    Works("evaluate-generated-identical-to-real", _setup_evaluate_identical, _check_evaluate_identical),
    Works("embed-48k-float32-wav", _setup_embed_48k_float_wav, _check_embed_48k),
    Works("embed-8k-stereo-mp3-content", _setup_embed_8k_stereo_mp3_as_wav, _check_embed_mp3),
    Works(
        "prepare-8k-stereo-mp3-beside-video",
        _setup_prepare_with_audio_beside("take.mp3", lambda p: _encode_audio(p, _stereo(1.0, 8000), 8000, mp3_codec())),
        _check_prepare_one_second,
    ),
    Works(
        "prepare-48k-float32-wav-beside-video",
        _setup_prepare_with_audio_beside(
            "take.wav", lambda p: sf.write(str(p), speech(1.0, 48000), 48000, subtype="FLOAT")
        ),
        _check_prepare_one_second,
    ),
]


@pytest.mark.parametrize("works", _params(MUST_WORK))
def test_odd_input_works(works: Works, shared: Shared, tmp_path: Path) -> None:
    argv = works.setup(tmp_path, shared)
    code, stdout, stderr = call_cli(argv)
    assert code == 0, stderr
    works.check(tmp_path, json.loads(stdout))
    assert not leftover_temporaries(tmp_path)


def test_mp3_through_the_embedding_api(tmp_path: Path) -> None:
    """An 8 kHz stereo mp3 anywhere (not only in DATA): one row per 40 ms, as `animate` embeds it."""
    from diffheads.audio.encoders import LogMelEncoder
    from diffheads.prepare.embed import embed_clip

    path = tmp_path / "talk.mp3"
    _encode_audio(path, _stereo(2.2, 8000), 8000, mp3_codec())
    emb = embed_clip(LogMelEncoder(), path, None)
    assert emb.shape == (round(2.2 * 25), 200)
