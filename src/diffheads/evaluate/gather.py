"""`evaluate` in several processes: each scores its share of the videos, rank 0 merges what they send.

What travels is what the set metrics need, never the frames. Per-video results (CSV row, the
SET_CURVES series, the lip reader's text, the I3D features of FVD) go back into the order of the
pairs, so per_video.csv, the set-level lip-sync measures, WER and FVD see exactly the arrays of one
process. FID keeps torchmetrics' float64 sums of Inception features and of their outer products;
rank 0 adds the other ranks' sums to its own, which changes only the order of float64 additions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from diffheads.distributed import Ranks
from diffheads.errors import DiffheadsError

T = TypeVar("T")
R = TypeVar("R")


class JobFailed(DiffheadsError):
    """A process of the job failed, so every process stops; rank 0's message says which one, where and why."""


@dataclass
class VideoResult:
    """What one video contributes to the outputs."""

    index: int  # position in the list of pairs
    row: dict[str, Any]  # its per_video.csv row
    set_curves: dict[str, Any]  # its SET_CURVES series
    plot_curves: dict[str, Any] | None = None  # every curve, for the plotted clip only
    fvd_features: dict[bool, list[np.ndarray]] | None = None  # I3D features of its clips (real: True)
    lip_text: str | None = None  # the lip reader's text, when the clip has a transcript (WER)


@dataclass
class Share:
    """One process's results: its videos, and its FID statistics (ranks other than 0, which keeps its own)."""

    videos: list[VideoResult]
    fid_statistics: dict[str, Any] | None = None


def _message(error: BaseException) -> str:
    """One line for another process to report."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def stop_if_failed(ranks: Ranks, error: BaseException | None, doing: str = "") -> None:
    """Raise on every rank when any rank failed, so that none is left waiting in a collective for it.

    Every rank calls this at the same point. Rank 0 raises its own error, or JobFailed naming the
    failed process, what it was `doing` (" on clip X") and its error; the other ranks raise JobFailed,
    except that a rank whose failure was not a DiffheadsError or OSError (a bug) re-raises it.
    """
    reports = ranks.gather(None if error is None else f"failed{doing}: {_message(error)}")
    failed = [(rank, text) for rank, text in enumerate(reports) if text is not None]
    if not failed:
        return
    rank, text = failed[0]
    if error is not None and (ranks.is_zero or not isinstance(error, (DiffheadsError, OSError))):
        raise error
    raise JobFailed(f"process {rank} of {ranks.world_size} {text}") from error


def on_zero(ranks: Ranks, work: Callable[[], R], doing: str = "") -> R | None:
    """work() on rank 0 (None on the others); when it fails, every rank stops (stop_if_failed)."""
    result, error = None, None
    if ranks.is_zero:
        try:
            result = work()
        except Exception as exc:  # reported to the other ranks, then raised here too
            if not ranks.distributed:
                raise
            error = exc
    stop_if_failed(ranks, error, doing)
    return result


def score_in_rounds(
    items: Sequence[T],
    score: Callable[[T], R],
    ranks: Ranks,
    advance: Callable[[int], Any],  # called with the items finished in each round, by all ranks together
    label: Callable[[T], str] = str,  # names an item in the message of a failure
) -> list[R]:
    """`score` of this rank's share of `items`, one item per rank and round.

    After each round `advance` gets the number of items every rank together finished (for a progress
    bar); an exception on any rank stops all of them at the end of that round (stop_if_failed).
    """
    mine = ranks.shard(items)
    out: list[R] = []
    for round_ in range(math.ceil(len(items) / ranks.world_size)):  # every rank joins every round
        error, doing = None, ""
        if round_ < len(mine):
            try:
                out.append(score(mine[round_]))
            except Exception as exc:  # reported to the other ranks, then raised here too
                if not ranks.distributed:
                    raise
                error, doing = exc, f" on {label(mine[round_])}"
        stop_if_failed(ranks, error, doing)
        advance(min(ranks.world_size, len(items) - round_ * ranks.world_size))
    return out


def merge_shares(shares: list[Share], n_videos: int, scorers: Any) -> list[VideoResult]:
    """Every video's result in the order of the pairs; the FVD features and FID statistics added to `scorers`.

    Rank 0 calls this with every rank's share; its scorers already hold its own FID statistics.
    """
    videos = sorted((video for share in shares for video in share.videos), key=lambda v: v.index)
    if [v.index for v in videos] != list(range(n_videos)):
        raise DiffheadsError(f"the processes returned {len(videos)} results for {n_videos} videos")
    if scorers.fvd is not None:  # every video's features were taken out of the scorer (VideoResult)
        for video in videos:
            if video.fvd_features:
                scorers.fvd.add_features(video.fvd_features)
    if scorers.fid is not None:
        for share in shares:  # in rank order: the same sums for the same number of processes
            if share.fid_statistics is not None:
                scorers.fid.merge(share.fid_statistics)
    return videos
