"""Word error rate of lip reading: a pluggable visual speech recogniser scored with jiwer.

The paper used a private lip-reading model, so the recogniser is a plug-in mapping a mouth-crop video to text:
either a Python callable ("package.module:function") or a shell command ("cmd:reader --in {video}").
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jiwer

from diffheads.errors import DiffheadsError

COMMAND_PREFIX = "cmd:"
VIDEO_FIELD = "{video}"
_CALLABLE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
SPEC_FORMS = (
    "'package.module:function' (a Python callable taking the video path and returning text) or "
    "'cmd:some command {video}' (a shell command that prints the text; {video} becomes the video path)"
)


class LipReader(Protocol):
    """Maps a mouth-crop video file to the words spoken in it."""

    def __call__(self, video_path: Path) -> str: ...


@dataclass(frozen=True)
class _PythonReader:
    """A lip reader that is a Python callable; checks that it returns text."""

    spec: str
    function: Callable[[Path], Any]

    def __call__(self, video_path: Path) -> str:
        text = self.function(Path(video_path))
        if not isinstance(text, str):
            raise DiffheadsError(f"lip reader {self.spec} returned {type(text).__name__}, not text, for {video_path}")
        return text.strip()


@dataclass(frozen=True)
class _CommandReader:
    """A lip reader that is a command line; its standard output, stripped, is the text."""

    command: str
    argv: tuple[str, ...]

    def __call__(self, video_path: Path) -> str:
        argv = [arg.replace(VIDEO_FIELD, str(video_path)) for arg in self.argv]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
        except OSError as err:
            raise DiffheadsError(f"lip reader command '{self.command}' could not start: {err}") from None
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            first = lines[0] if lines else "(no error output)"
            raise DiffheadsError(
                f"lip reader command '{self.command}' failed (exit status {done.returncode}) on {video_path}: {first}"
            )
        return done.stdout.strip()


def _import_callable(spec: str) -> Callable[[Path], Any]:
    """The object named by 'package.module:attribute.path', which must be callable."""
    module_name, attribute = spec.split(":", 1)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise DiffheadsError(f"lip reader {spec}: cannot import module '{module_name}' ({err})") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise DiffheadsError(f"lip reader {spec}: '{module_name}' has no attribute '{attribute}'")
        target = getattr(target, part)
    if not callable(target):
        raise DiffheadsError(f"lip reader {spec}: '{attribute}' is not callable")
    return target


def load_lip_reader(spec: str) -> LipReader:
    """A lip reader from 'package.module:function' or 'cmd:some command {video}'; anything else is an error."""
    spec = spec.strip()
    if spec.startswith(COMMAND_PREFIX):  # checked first: the prefix wins over a module named 'cmd'
        command = spec[len(COMMAND_PREFIX) :].strip()
        try:
            argv = tuple(shlex.split(command))
        except ValueError as err:
            raise DiffheadsError(f"lip reader command '{command}' cannot be parsed: {err}") from None
        if not argv:
            raise DiffheadsError(f"lip reader spec '{spec}' has no command; expected {SPEC_FORMS}")
        if not any(VIDEO_FIELD in arg for arg in argv):
            raise DiffheadsError(f"lip reader command '{command}' must contain {VIDEO_FIELD} where the video path goes")
        return _CommandReader(command, argv)
    if _CALLABLE_SPEC.match(spec):
        return _PythonReader(spec, _import_callable(spec))
    raise DiffheadsError(f"lip reader spec '{spec}' is not understood; expected {SPEC_FORMS}")


def _normaliser() -> jiwer.Compose:
    """Lower case, no punctuation (Unicode category P, removed without a space), single spaces, then words."""
    return jiwer.Compose(
        [
            jiwer.ToLowerCase(),
            jiwer.RemovePunctuation(),
            jiwer.RemoveWhiteSpace(replace_by_space=True),
            jiwer.RemoveMultipleSpaces(),
            jiwer.Strip(),
            jiwer.ReduceToListOfListOfWords(),
        ]
    )


def word_error_rate(references: list[str], hypotheses: list[str]) -> dict:
    """Corpus WER (S + D + I) / N over all pairs after normalisation, with the edit counts; N = reference words.

    Both sides are lower-cased, stripped of punctuation (jiwer.RemovePunctuation: "don't" -> "dont") and split on
    whitespace. An empty hypothesis counts as all deletions; an empty reference is an error (N would be 0).
    """
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise DiffheadsError(f"{len(references)} references but {len(hypotheses)} hypotheses: they must pair up")
    if not references:
        raise DiffheadsError("no transcripts to score")
    transform = _normaliser()
    for index, ref in enumerate(references):
        if not transform(ref)[0]:
            raise DiffheadsError(f"reference {index} has no words after normalisation: {ref!r}")
    out = jiwer.process_words(references, hypotheses, reference_transform=transform, hypothesis_transform=transform)
    n_words = out.hits + out.substitutions + out.deletions
    return {
        "wer": float(out.wer),
        "substitutions": int(out.substitutions),
        "deletions": int(out.deletions),
        "insertions": int(out.insertions),
        "hits": int(out.hits),
        "n_words": int(n_words),
    }


def read_transcripts(path: str | Path) -> dict[str, str]:
    """Transcripts by clip id from a JSON object {id: text} or from lines '<clip id> <transcript>'."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DiffheadsError(f"cannot read transcripts {path}: {err.strerror or err}") from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DiffheadsError(f"transcripts {path} look like JSON but do not parse: {err}") from None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise DiffheadsError(f"transcripts {path} must map clip ids to strings")
        return dict(data)
    transcripts: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        clip = parts[0]
        if clip in transcripts:
            raise DiffheadsError(f"transcripts {path} line {number}: clip id '{clip}' appears twice")
        transcripts[clip] = parts[1] if len(parts) > 1 else ""
    return transcripts
