"""A person model knows its person: the portrait's face against the one the model was trained on (dlib's 0.6 rule).

Trained on one person, a model turns anyone else's portrait into a noisy, smeared face; a model file
that records its person's face (`person` in `trained_on`, checkpoint.training_person) lets sampling
say so before it starts. Without that record, or without a face dlib finds in the crop, nothing is said.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np
import torch

from diffheads.checkpoint import LoadedModel
from diffheads.errors import DiffheadsError
from diffheads.metrics.dlib_face import SAME_PERSON_DISTANCE, DlibJudges
from diffheads.metrics.person import distance_to_person
from diffheads.sample.runtime import to_uint8

PERSON_GUIDE = "docs/person.md"
ANY_FACE_HINT = "--any-face animates it anyway"


def stranger_message(distance: float) -> str:
    """The one line for a portrait `distance` away from the model's person."""
    return (
        f"this model knows only the person it was trained on (face distance {distance:.2f} > "
        f"{SAME_PERSON_DISTANCE}, dlib's same-person rule); to animate this face, train a model on footage of it: "
        f"{PERSON_GUIDE}"
    )


class PersonCheck:
    """Compares identity crops with the person a model records; dlib's judges load on first need (1-2 s), once."""

    def __init__(self) -> None:
        self._judges: DlibJudges | None = None
        self._unavailable = False  # dlib failed to load: nothing can be checked
        self._lock = threading.Lock()  # the app checks faces from several visitors' threads

    def distance(self, provenance: dict[str, Any], crop: np.ndarray) -> float | None:
        """Face distance of uint8 (S, S, 3) `crop` to the model's person; None when either has no face to compare."""
        record = provenance.get("person")
        if not isinstance(record, dict) or record.get("descriptor") is None:
            return None
        with self._lock:
            if self._judges is None and not self._unavailable:
                try:
                    self._judges = DlibJudges()
                except DiffheadsError:
                    self._unavailable = True
            if self._judges is None:
                return None
            return distance_to_person(record, crop, self._judges)

    def mismatch(self, provenance: dict[str, Any], crop: np.ndarray) -> str | None:
        """The one line when `crop` shows someone other than the model's person, else None."""
        distance = self.distance(provenance, crop)
        return stranger_message(distance) if distance is not None and distance > SAME_PERSON_DISTANCE else None


def refuse_strangers(model: LoadedModel, identity: torch.Tensor, any_face: bool, command: str) -> None:
    """A one-line DiffheadsError when the identity frame (3, S, S) is not the model's person; with `any_face`, one
    warning on stderr instead (kept by --quiet, like the synthetic-faces warning)."""
    message = PersonCheck().mismatch(model.provenance, to_uint8(identity[None])[0])
    if message is None:
        return
    if not any_face:
        raise DiffheadsError(f"{message} ({ANY_FACE_HINT})")
    print(f"diffheads {command}: warning: {message}", file=sys.stderr)
