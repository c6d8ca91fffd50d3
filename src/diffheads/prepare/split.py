"""Train/test split rules for prepared clips: by speaker, by a list of clips, or a named preset."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from diffheads.data.layout import clip_id
from diffheads.errors import DiffheadsError

# CREMA-D test actors of the Diffused Heads protocol (SPEC, data).
CREMA_TEST_ACTORS = ("1015", "1020", "1021", "1030", "1033", "1052", "1062", "1081", "1082", "1089")
CREMA_SPEAKER_PATTERN = r"(?:^|/)(\d{4})_[A-Z]{3}_[A-Z]{3}_[A-Z]{2}$"
PRESETS = {"crema": (CREMA_SPEAKER_PATTERN, CREMA_TEST_ACTORS)}


@dataclass(frozen=True)
class SplitRule:
    """How clips are assigned to train and test.

    A clip goes to test when its id is in `test_clips`, or its speaker (group 1 of
    `speaker_pattern` searched in the clip id, else the whole match) is in `test_speakers`.
    With neither list, about `test_fraction` of the speakers go to test, chosen by a hash of
    the speaker name so that adding clips never moves a speaker between splits.
    """

    speaker_pattern: str = r"^([^/]+)/"  # default: the first folder of the clip path names the speaker
    test_speakers: tuple[str, ...] = ()
    test_clips: frozenset[str] = field(default_factory=frozenset)
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        try:
            re.compile(self.speaker_pattern)
        except re.error as err:
            raise DiffheadsError(
                f"speaker pattern '{self.speaker_pattern}' is not a regular expression ({err})"
            ) from None
        if not 0.0 <= self.test_fraction < 1.0:
            raise DiffheadsError(f"test fraction must be in [0, 1), got {self.test_fraction}")

    @classmethod
    def preset(cls, name: str) -> SplitRule:
        """A named rule; 'crema' holds out the ten CREMA-D test actors."""
        if name not in PRESETS:
            raise DiffheadsError(f"unknown split preset '{name}'; available: {', '.join(PRESETS)}")
        pattern, speakers = PRESETS[name]
        return cls(speaker_pattern=pattern, test_speakers=speakers)

    @classmethod
    def from_list(cls, path: str | Path) -> SplitRule:
        """Test clips read from a file, one clip path per line (as in file_list_test.txt)."""
        path = Path(path)
        if not path.is_file():
            raise DiffheadsError(f"test list {path} not found; give a file with one clip path per line")
        return cls(test_clips=frozenset(clip_id(line) for line in path.read_text().splitlines() if line.strip()))

    def speaker(self, rel: str) -> str:
        """The speaker of a clip id; the whole id when the pattern does not match."""
        match = re.search(self.speaker_pattern, rel)
        if match is None:
            return rel
        return match.group(1) if match.groups() else match.group(0)

    def split(self, rel: str) -> str:
        """'train' or 'test'."""
        if self.test_clips:
            return "test" if rel in self.test_clips else "train"
        speaker = self.speaker(rel)
        if self.test_speakers:
            return "test" if speaker in self.test_speakers else "train"
        bucket = int.from_bytes(hashlib.sha256(speaker.encode()).digest()[:8], "big") / 2**64
        return "test" if bucket < self.test_fraction else "train"
