"""`diffheads pack DATA PACKED`: the prepared clips of DATA into litdata's streaming format (data/packed.py).

Why litdata: it is Lightning's own streaming library (training already runs on Lightning), it
reads the same chunks from a local folder or from S3 / GCS / Azure / Hugging Face URLs with a
local chunk cache, and its optimizer writes chunks in parallel worker processes. Each clip is
decoded once here, exactly as training decodes it (frame_cache.resize_frames to the model's size),
so packed and per-clip training see bit-identical frames.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from diffheads.checkpoint import describe_training_data
from diffheads.data.dataset import check_listed_clips, decode_clip
from diffheads.data.embeddings import read_encoder_spec
from diffheads.data.layout import SPLITS, DataLayout
from diffheads.data.packed import FORMAT, MANIFEST, VERSION
from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_write_text
from diffheads.io.outdir import output_dir

NO_LANDMARKS = np.zeros((0, 68, 2), np.float32)


def pack_item(job: tuple[str, str, str, int, bool]) -> dict[str, Any]:
    """One clip as a litdata item (a module-level function: litdata's worker processes import it)."""
    root, embeddings, cid, size, with_landmarks = job
    source = decode_clip(DataLayout.of(root, embeddings or None), cid, size, with_landmarks)
    return {
        "cid": cid,
        "frames": np.ascontiguousarray(source.frames),
        "audio_emb": source.audio_emb.numpy().astype(np.float32),
        "landmarks": source.landmarks.numpy().astype(np.float32) if source.landmarks is not None else NO_LANDMARKS,
    }


def _listed(layout: DataLayout) -> dict[str, list[str]]:
    """Clip ids of every split whose file list exists and is not empty."""
    return {
        split: layout.clips(split)
        for split in SPLITS
        if layout.file_list(split).is_file() and layout.file_list(split).read_text().strip()
    }


def pack_dataset(
    data_root: str | Path,
    out_dir: str | Path,
    size: int,
    embeddings: str | Path | None = None,
    chunk_bytes: str = "64MB",
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write every listed clip of DATA (train and test) into PACKED/<split>/ plus the manifest; returns a summary."""
    layout = DataLayout.of(data_root, embeddings or None)
    out = Path(out_dir)
    if (out / MANIFEST).is_file() and not overwrite:
        raise DiffheadsError(f"{out} already holds a packed dataset; pass --overwrite to pack it again")
    splits = _listed(layout)
    if not splits:
        raise DiffheadsError(
            f"{layout.root} lists no clips (file_list_train.txt / file_list_test.txt); run 'diffheads prepare' first"
        )
    for split, ids in splits.items():
        check_listed_clips(layout, ids, split)
    encoder = read_encoder_spec(layout)
    with_landmarks = all(layout.landmarks(cid).is_file() for ids in splits.values() for cid in ids)
    started = time.perf_counter()
    with output_dir(out, "PACKED folder"):
        (out / MANIFEST).unlink(missing_ok=True)  # the manifest marks a finished pack: it goes first, comes last
        try:
            for split, ids in splits.items():
                _optimize(layout, ids, out / split, size, with_landmarks, chunk_bytes, workers, progress)
        except BaseException:
            for split in splits:
                shutil.rmtree(out / split, ignore_errors=True)
            raise
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "image_size": int(size),
            "landmarks": with_landmarks,
            "encoder": encoder,
            "source": describe_training_data(layout.root, splits.get("train", []), size),
            "splits": splits,
        }
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    n_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "out": str(out),
        "image_size": int(size),
        "clips": {split: len(ids) for split, ids in splits.items()},
        "landmarks": with_landmarks,
        "bytes": n_bytes,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _optimize(
    layout: DataLayout,
    ids: list[str],
    out: Path,
    size: int,
    with_landmarks: bool,
    chunk_bytes: str,
    workers: int,
    progress: bool,
) -> None:
    """litdata's optimize over one split, items in file-list order (item i is clip i)."""
    from litdata import optimize

    jobs = [(str(layout.root), str(layout.embeddings), cid, int(size), with_landmarks) for cid in ids]
    optimize(
        fn=pack_item,
        inputs=jobs,
        output_dir=str(out),
        chunk_bytes=chunk_bytes,
        num_workers=max(1, min(workers, len(jobs))),
        keep_data_ordered=True,  # static slices in order: item i stays clip i
        reorder_files=False,
        mode="overwrite",
        verbose=progress,
    )
