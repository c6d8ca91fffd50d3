"""`diffheads cache`: fill the disk frame cache of every listed clip once (e.g. before a multi-GPU job)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from diffheads.data.frame_cache import CACHE_DIR, _ensure
from diffheads.data.layout import DataLayout


def cache_dataset(
    root: str | Path,
    size: int,
    splits: Iterable[str] = ("train", "test"),
    progress: bool = True,
) -> dict[str, Any]:
    """Fill the frame cache for every clip listed in `splits` (e.g. once before a multi-GPU job); a report."""
    layout = DataLayout.of(root)
    ids = list(dict.fromkeys(cid for split in splits for cid in layout.clips(split)))
    built = frames = size_bytes = 0
    t0 = time.perf_counter()
    for cid in tqdm(ids, desc=f"cache {size}px", unit="clip", disable=not progress):
        path, new, n = _ensure(layout, cid, size)
        built += new
        frames += n
        size_bytes += path.stat().st_size
    return {
        "cache_dir": str(layout.root / CACHE_DIR / f"{int(size)}px"),
        "size": int(size),
        "clips": len(ids),
        "built": built,
        "up_to_date": len(ids) - built,
        "frames": frames,
        "bytes": size_bytes,
        "seconds": round(time.perf_counter() - t0, 3),
    }
