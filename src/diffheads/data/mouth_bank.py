"""Choose the mouths of a person's mouth bank (models/mouth_bank.py) from the training clips.

Every training frame's mouth shape comes from its landmarks (lmks/); k-means over the shapes picks `entries`
centres that cover the person's range (shut, open, wide, rounded), and the frame nearest each centre gives its
entry. An entry's pixels are the mouth box cut around that frame's own mouth centre, moved to the mean centre of
all frames, so that blended neighbours line up instead of smearing the lips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from diffheads.data.dataset import MOUTH, audio_rows, check_video, load_landmarks
from diffheads.data.embeddings import load_embedding
from diffheads.data.frame_cache import decode_resized, frames_to_model, source_width
from diffheads.data.layout import DataLayout
from diffheads.errors import DiffheadsError
from diffheads.models.mouth_bank import box_pixels
from diffheads.models.mouth_sketch import mouth_shape

KMEANS_ITERATIONS = 12


@dataclass
class MouthFrames:
    """Every training frame's mouth: landmarks (N, 20, 2) in pixels at the model size, audio windows
    (N, 2k+1, D), and where each came from (N, 2) as (clip index, frame)."""

    points: np.ndarray
    windows: torch.Tensor
    where: np.ndarray
    clip_ids: list[str]


def mouth_frames(layout: DataLayout, clip_ids: Sequence[str], size: int, k: int) -> MouthFrames:
    """The mouths of every frame of `clip_ids` with their audio windows of k rows each side (as training draws)."""
    points, windows, where = [], [], []
    for i, cid in enumerate(clip_ids):
        video = check_video(layout, cid)
        lm = load_landmarks(layout, cid, size, source_width(video))[:, MOUTH]
        emb = load_embedding(layout.embedding(cid))
        n = min(len(lm), len(emb))
        rows = np.stack([audio_rows(t, k, n) for t in range(n)])
        points.append(lm[:n].numpy())
        windows.append(emb[torch.from_numpy(rows)])
        where.append(np.stack([np.full(n, i), np.arange(n)], axis=1))
    if not points:
        raise DiffheadsError("model.mouth_bank needs training clips with landmarks (lmks/), and there are none")
    return MouthFrames(np.concatenate(points), torch.cat(windows), np.concatenate(where), list(clip_ids))


def kmeans_representatives(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of the rows of `x` (N, D) nearest to k-means centres (k-means++ start); at most k, all distinct."""
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, min(k, len(x))):
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    c = np.stack(centres)
    for _ in range(KMEANS_ITERATIONS):
        label = _nearest(x, c)
        for j in range(len(c)):
            members = x[label == j]
            if len(members):
                c[j] = members.mean(0)
    return np.unique(_nearest(c, x))


def _nearest(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """For each row of x, the index of its nearest row of c (squared Euclidean distance)."""
    d2 = (x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None, :]
    return d2.argmin(1)


def collect_mouth_bank(
    frames: MouthFrames, layout: DataLayout, sizes: Sequence[int], entries: int, box: Sequence[float], seed: int = 0
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(K, 20, 2) shapes of `entries` training frames and, for each frame side in `sizes` (the first the one
    `frames` was read at), their (K, 3, h, w) mouth-box pixels in [-1, 1] (fewer distinct frames are repeated)."""
    points, where = frames.points, frames.where
    shapes = mouth_shape(torch.from_numpy(points), sizes[0]).numpy()
    chosen = kmeans_representatives(shapes.reshape(len(shapes), -1), entries, seed)
    chosen = np.resize(chosen, entries)  # repeat when the data has fewer distinct shapes than entries
    offsets = points[chosen].mean(axis=1) - points.mean(axis=(0, 1))  # each mouth's centre off the mean one
    pixels = []
    for size in sizes:
        top, bottom, left, right = box_pixels(box, size)
        cuts = torch.empty(entries, 3, bottom - top, right - left)
        shift = np.round(offsets * (size / sizes[0])).astype(int)
        for clip in np.unique(where[chosen, 0]):
            video, _ = decode_resized(check_video(layout, frames.clip_ids[clip]), size)
            for slot in np.flatnonzero(where[chosen, 0] == clip):
                dx, dy = shift[slot]
                image = video[min(where[chosen[slot], 1], len(video) - 1)]
                image = np.pad(image, ((size, size), (size, size), (0, 0)), mode="edge")
                cut = image[size + top + dy : size + bottom + dy, size + left + dx : size + right + dx]
                cuts[slot] = frames_to_model(cut[None])[0]
        pixels.append(cuts)
    return torch.from_numpy(shapes[chosen]).float(), pixels
