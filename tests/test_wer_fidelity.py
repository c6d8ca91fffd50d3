"""Lip-reading WER with pluggable readers, and PSNR / SSIM fidelity."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from diffheads.errors import DiffheadsError
from diffheads.metrics.fidelity import psnr, ssim
from diffheads.metrics.wer import load_lip_reader, read_transcripts, word_error_rate


def fake_reader(video_path: Path) -> str:
    """A stand-in lip reader: 'reads' the file name."""
    return f"  said {video_path.stem}  "


def test_python_reader_from_this_module() -> None:
    """'module:function' imports the callable (tests/ is on sys.path under pytest) and strips its text."""
    reader = load_lip_reader("test_wer_fidelity:fake_reader")
    assert reader(Path("/x/clip07.mp4")) == "said clip07"


def test_command_reader(tmp_path: Path) -> None:
    """'cmd:' runs the command with {video} replaced; stripped stdout is the text."""
    video = tmp_path / "my clip.mp4"  # a space: the path must arrive as one argument
    script = "import sys; print('  hello ' + sys.argv[1] + '  ')"
    reader = load_lip_reader(f"cmd:{shlex.quote(sys.executable)} -c {shlex.quote(script)} {{video}}")
    assert reader(video) == f"hello {video}"


def test_failing_command_names_command_and_first_stderr_line(tmp_path: Path) -> None:
    """A non-zero exit is a DiffheadsError with the command and the first line of its stderr."""
    script = "import sys; sys.stderr.write('model weights missing\\n' + 'second line'.upper()); sys.exit(3)"
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(script)} {{video}}"
    reader = load_lip_reader(f"cmd:{command}")
    with pytest.raises(DiffheadsError) as err:
        reader(tmp_path / "a.mp4")
    message = str(err.value)
    assert message.endswith(": model weights missing") and "SECOND LINE" not in message
    assert sys.executable in message and "exit status 3" in message


@pytest.mark.parametrize(
    "spec, match",
    [
        ("just some words", "package.module:function"),
        ("", "cmd:some command"),
        ("cmd:", "no command"),
        ("cmd:reader --in clip.mp4", r"\{video\}"),
        ("no_such_module_xyz:read", "cannot import"),
        ("json:no_such_function", "no attribute"),
        ("json:__doc__", "not callable"),
    ],
)
def test_bad_specs(spec: str, match: str) -> None:
    """Anything but the two forms, or a target that does not resolve, is a one-line error."""
    with pytest.raises(DiffheadsError, match=match):
        load_lip_reader(spec)


def test_wer_by_hand() -> None:
    """'the cat sat' vs 'the bat sat down': 1 substitution + 1 insertion over 3 words = 2/3."""
    out = word_error_rate(["The cat, sat."], ["the  BAT sat down!"])
    assert out == {
        "wer": pytest.approx(2 / 3),
        "substitutions": 1,
        "deletions": 0,
        "insertions": 1,
        "hits": 2,
        "n_words": 3,
    }


def test_wer_is_pooled_over_the_corpus() -> None:
    """Errors and words add up over pairs: (0 + 2) deletions over (2 + 3) words = 0.4; empty hypothesis allowed."""
    out = word_error_rate(["a b", "one two three"], ["A B", "one"])
    assert out["wer"] == pytest.approx(2 / 5) and out["deletions"] == 2 and out["n_words"] == 5
    assert word_error_rate(["hello world"], [""])["wer"] == pytest.approx(1.0)


def test_wer_errors() -> None:
    """Unpaired lists and references without words are errors."""
    with pytest.raises(DiffheadsError, match="pair"):
        word_error_rate(["a"], ["a", "b"])
    with pytest.raises(DiffheadsError, match="no words"):
        word_error_rate(["?!"], ["a"])


def test_read_transcripts(tmp_path: Path) -> None:
    """Both files: '<id> <text>' lines and a JSON object."""
    lines = tmp_path / "t.txt"
    lines.write_text("id000/clip00 the cat sat\n\nid001/clip03   hello   there \n", encoding="utf-8")
    assert read_transcripts(lines) == {"id000/clip00": "the cat sat", "id001/clip03": "hello   there"}
    obj = tmp_path / "t.json"
    obj.write_text(json.dumps({"a": "one two", "b": ""}), encoding="utf-8")
    assert read_transcripts(obj) == {"a": "one two", "b": ""}
    lines.write_text("x a\nx b\n", encoding="utf-8")
    with pytest.raises(DiffheadsError, match="twice"):
        read_transcripts(lines)
    with pytest.raises(DiffheadsError, match="cannot read"):
        read_transcripts(tmp_path / "missing.txt")


def _videos(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two random uint8 videos (4, 24, 32, 3)."""
    rng = np.random.default_rng(seed)
    return tuple(rng.integers(0, 256, (4, 24, 32, 3), dtype=np.uint8) for _ in range(2))


def test_psnr_identical_is_infinite() -> None:
    """MSE 0 gives inf (torchmetrics divides by the zero MSE); we do not clip it."""
    a, _ = _videos()
    assert psnr(a, a.copy()) == float("inf")


def test_psnr_against_numpy() -> None:
    """Mean over frames of 10 log10(255^2 / MSE_frame); torchmetrics takes log(10) in float32, hence rel 1e-6."""
    a, b = _videos()
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = np.mean(diff**2, axis=(1, 2, 3))
    assert psnr(a, b) == pytest.approx(np.mean(10 * np.log10(255.0**2 / mse)), rel=1e-6)


def test_ssim() -> None:
    """SSIM of a video with itself is 1; with noise added it drops."""
    a, b = _videos()
    assert ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-9)
    noisy = np.clip(a.astype(np.int16) + (b.astype(np.int16) - 128) // 2, 0, 255).astype(np.uint8)
    assert 0.0 < ssim(noisy, a) < 0.99


def test_shape_mismatch_names_both_shapes() -> None:
    """Different lengths are the caller's job: an error with the two shapes."""
    a, b = _videos()
    for metric in (psnr, ssim):
        with pytest.raises(DiffheadsError, match=r"\(4, 24, 32, 3\).*\(3, 24, 32, 3\)"):
            metric(a, b[:3])
