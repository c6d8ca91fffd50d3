"""One person's face as dlib's 128-d descriptors: the record a person model keeps, and a face's distance to it.

A model trained on one person records the mean descriptor of a few of its training frames; a portrait
further than dlib's 0.6 from it is someone else (dlib's rule for its face-recognition ResNet).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffheads.errors import DiffheadsError
from diffheads.metrics.dlib_face import SAME_PERSON_DISTANCE, DlibJudges
from diffheads.metrics.identity import euclidean

RECORD_FRAMES = 8  # frames a record is made from (frame 0 of as many training clips): ~1 s of dlib on a CPU
MIN_FACE_SHARE = 0.5  # fewer detected faces than this share of the frames: not a recognisable person


def face_descriptors(frames: np.ndarray, judges: DlibJudges) -> np.ndarray:
    """(K, 128) descriptors of the K frames of uint8 (T, H, W, 3) where dlib's detector finds a face."""
    track = judges.track(frames)
    found = np.flatnonzero(track.detected)
    return judges.descriptors(frames, track, found) if len(found) else np.zeros((0, 128))


def person_record(frames: np.ndarray, judges: DlibJudges | None = None) -> dict[str, Any]:
    """The face record of training frames uint8 (T, H, W, 3) that should all show one person.

    With a face in at least half the frames and every pair of faces within dlib's 0.6 (one person):
    `descriptor` (their mean), `n_faces`, `n_frames`, `spread` (largest distance of a face to the mean)
    and `widest_pair`. Otherwise `descriptor` is None and `reason` says why.
    """
    n_frames = len(frames)
    if judges is None:
        try:
            judges = DlibJudges()
        except DiffheadsError as e:
            return {"descriptor": None, "n_frames": n_frames, "reason": f"dlib is unavailable ({e})"}
    found = face_descriptors(frames, judges) if n_frames else np.zeros((0, 128))
    counts = {"n_faces": len(found), "n_frames": n_frames}
    if n_frames == 0 or len(found) < MIN_FACE_SHARE * n_frames:
        reason = f"dlib found a face in {len(found)} of {n_frames} training frames: no person to recognise"
        return {"descriptor": None, **counts, "reason": reason}
    mean = found.mean(axis=0)
    spread = float(euclidean(found, mean).max())
    widest = float(max(euclidean(found, row).max() for row in found))
    shape = {**counts, "spread": round(spread, 4), "widest_pair": round(widest, 4)}
    if widest > SAME_PERSON_DISTANCE:
        # the pairs, not the distance to the mean: 8 different people lie only ~0.55-0.65 from their mean
        reason = (
            f"the training faces are more than one person (two lie {widest:.2f} apart > {SAME_PERSON_DISTANCE}, "
            "dlib's same-person rule)"
        )
        return {"descriptor": None, **shape, "reason": reason}
    return {"descriptor": [round(float(x), 6) for x in mean], **shape}


def distance_to_person(record: dict[str, Any] | None, frame: np.ndarray, judges: DlibJudges) -> float | None:
    """Distance of the face in uint8 (H, W, 3) `frame` to a record's descriptor; None without either."""
    if not record or record.get("descriptor") is None:
        return None
    found = face_descriptors(np.asarray(frame)[None], judges)
    if not len(found):
        return None
    return float(euclidean(found[0], np.asarray(record["descriptor"], np.float64)))
