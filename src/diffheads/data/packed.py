"""Reading a packed dataset: prepared clips in litdata's chunked format, local or at any URL litdata reads.

`diffheads pack` (data/pack.py) writes one litdata dataset per split, PACKED/<split>/ (index.json and
chunk-*.bin files), with one item per clip in file-list order: its uint8 frames at the model's size,
its audio embeddings and, when the data has them, its landmarks in crop pixels at that size. The
manifest PACKED/diffheads_pack.json, written last, lists the clip ids of each split and how the
clips were made (size, audio encoder). Training reads item i for clip i, so the examples (which
frames, which seeds) are those of the per-clip files, and the data.sampler order, DDP split and
exact resume carry over unchanged; litdata fetches (and, for remote data, caches) the chunks.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffheads.errors import DiffheadsError

MANIFEST = "diffheads_pack.json"
FORMAT = "diffheads-packed"
VERSION = 1


def is_remote(root: str) -> bool:
    """True for what litdata downloads into its cache: a URL (s3://, gs://, hf://, ...) or local:/folder."""
    return "://" in str(root) or str(root).startswith("local:")


def join(root: str, *parts: str) -> str:
    """`root`/`parts`, for folders and URLs alike."""
    if is_remote(root):
        return "/".join([str(root).rstrip("/"), *parts])
    return str(Path(root, *parts))


def read_manifest(root: str) -> dict[str, Any]:
    """The manifest of the packed dataset at `root` (a folder or a URL)."""
    hint = "make one with 'diffheads pack DATA PACKED --size S' and set data.root to PACKED"
    try:
        if is_remote(root):
            from litdata.streaming.downloader import get_downloader

            with tempfile.TemporaryDirectory() as cache:
                local = str(Path(cache, MANIFEST))
                get_downloader(str(root), cache, []).download_file(join(root, MANIFEST), local)
                text = Path(local).read_text()
        else:
            text = Path(root, MANIFEST).read_text()
    except (OSError, ValueError) as exc:
        raise DiffheadsError(f"{join(root, MANIFEST)} cannot be read ({exc}); {hint}") from None
    except Exception as exc:  # noqa: BLE001 - cloud clients raise their own types for a missing object
        raise DiffheadsError(f"{join(root, MANIFEST)} cannot be read ({type(exc).__name__}: {exc}); {hint}") from None
    try:
        manifest = json.loads(text)
    except ValueError:
        raise DiffheadsError(f"{join(root, MANIFEST)} is not valid JSON; pack the data again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DiffheadsError(f"{join(root, MANIFEST)} is not a diffheads pack manifest; {hint}")
    if manifest.get("version") != VERSION:
        raise DiffheadsError(
            f"{root} was packed in format version {manifest.get('version')}, this diffheads reads version {VERSION}; "
            "pack the data again"
        )
    return manifest


class PackedClips:
    """The clips of one split of a packed dataset; item i is clip i of the split's list."""

    def __init__(self, root: str, split: str, image_size: int, cache_dir: str | None = None) -> None:
        self.root = str(root)
        self.manifest = read_manifest(self.root)
        splits = self.manifest["splits"]
        name = "train" if split == "val" else split
        if not splits.get(name):
            raise DiffheadsError(
                f"{self.root} holds no {name} clips (it has: {', '.join(sorted(splits)) or 'none'}); "
                "pack a DATA folder whose file list for that split is not empty"
            )
        if int(self.manifest["image_size"]) != int(image_size):
            raise DiffheadsError(
                f"{self.root} was packed at {self.manifest['image_size']} px but model.image_size is {image_size}; "
                f"pack again with --size {image_size}"
            )
        self.ids: list[str] = list(splits[name])
        self.split = name
        self.cache_dir = cache_dir
        self._items: Any = None  # litdata StreamingDataset, opened in the process (DataLoader worker) that reads

    @property
    def has_landmarks(self) -> bool:
        """Whether the clips were packed with their landmarks."""
        return bool(self.manifest["landmarks"])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_items": None}  # each worker opens its own reader

    def _dataset(self) -> Any:
        if self._items is None:
            from litdata import StreamingDataset

            self._items = StreamingDataset(join(self.root, self.split), cache_dir=self.cache_dir)
        return self._items

    def load(self, i: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
        """Clip i: uint8 frames (T, S, S, 3), embeddings (n, D) and landmarks (T, 68, 2) or None."""
        item = self._dataset()[i]
        if item["cid"] != self.ids[i]:
            raise DiffheadsError(
                f"{self.root}: item {i} is clip {item['cid']}, the manifest says {self.ids[i]}; pack the data again"
            )
        landmarks = torch.from_numpy(np.array(item["landmarks"])) if self.has_landmarks else None
        return item["frames"], torch.from_numpy(np.array(item["audio_emb"])), landmarks
