"""`diffheads embed`: write one embedding file per clip in the layout the dataset reads."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from diffheads.audio.encoders import AudioEncoder, LogMelEncoder
from diffheads.audio.frames import frames_in_audio
from diffheads.data.embeddings import read_spec
from diffheads.data.layout import DataLayout
from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_write_bytes, atomic_write_text
from diffheads.io.audio import load_audio
from diffheads.io.outdir import output_dir
from diffheads.io.video import count_frames


def save_embedding(path: Path, emb: torch.Tensor) -> None:
    """Write a (n_frames, dim) float32 tensor atomically."""
    # serialised in memory first: torch.save reports a full disk as a RuntimeError, a plain write as OSError
    buffer = io.BytesIO()
    torch.save(emb.float().contiguous(), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def embed_clip(encoder: AudioEncoder, audio_path: Path, video_path: Path | None) -> torch.Tensor:
    """Embeddings of one clip: one row per video frame (or per 40 ms of audio when there is no video)."""
    audio = load_audio(audio_path)
    n_frames = (
        count_frames(video_path) if video_path is not None and video_path.is_file() else frames_in_audio(len(audio))
    )
    return encoder.encode(audio, n_frames)


def listed_clips(layout: DataLayout, splits: tuple[str, ...]) -> list[str]:
    """Sorted clip ids of the splits' file lists; a missing or empty list is fine while another one names clips."""
    if not layout.root.is_dir():
        raise DiffheadsError(
            f"DATA folder {layout.root} not found, so there is no file list to read; "
            "pass the folder made by 'diffheads synth' or 'diffheads prepare'"
        )
    ids: set[str] = set()
    problems: list[DiffheadsError] = []
    for split in splits:
        try:
            ids.update(layout.clips(split))
        except DiffheadsError as err:  # prepare writes an empty test list when every speaker is in train
            problems.append(err)
    if not ids:
        raise problems[0] if problems else DiffheadsError("no split to embed; pass splits such as ('train', 'test')")
    return sorted(ids)


def check_encoder_file(layout: DataLayout, encoder: AudioEncoder) -> None:
    """Refuse to add embeddings of `encoder` beside those of another one (EMB/encoder.json says which)."""
    if layout.encoder_file.is_file():
        old = read_spec(layout.encoder_file)
        if old != encoder.describe():
            raise DiffheadsError(
                f"{layout.embeddings} holds embeddings of another encoder ({old.get('name')}, dim {old.get('dim')}); "
                "pass --overwrite or choose another --out"
            )


def embed_dataset(
    root: str | Path,
    embeddings: str | Path | None = None,
    encoder: AudioEncoder | None = None,
    splits: tuple[str, ...] = ("train", "test"),
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed the audio of every listed clip; existing files are kept unless `overwrite`."""
    layout = DataLayout.of(root, embeddings)
    encoder = encoder or LogMelEncoder()
    if not overwrite:
        check_encoder_file(layout, encoder)
    return _embed(layout, listed_clips(layout, splits), encoder, overwrite, progress, write_encoder_file=True)


def embed_clips(
    root: str | Path,
    ids: list[str],
    embeddings: str | Path | None = None,
    encoder: AudioEncoder | None = None,
    overwrite: bool = False,
    progress: bool = True,
    write_encoder_file: bool = True,  # False: concurrent writers (prepare --shard) leave encoder.json to one merge
) -> dict[str, Any]:
    """Embed the audio of the given clip ids (not read from file lists); existing files are kept unless `overwrite`."""
    layout = DataLayout.of(root, embeddings)
    encoder = encoder or LogMelEncoder()
    if not overwrite:
        check_encoder_file(layout, encoder)
    return _embed(layout, sorted(ids), encoder, overwrite, progress, write_encoder_file)


def _embed(
    layout: DataLayout, ids: list[str], encoder: AudioEncoder, overwrite: bool, progress: bool, write_encoder_file: bool
) -> dict[str, Any]:
    """Write EMB/<id>.pth for each id that lacks one (or all with `overwrite`), then EMB/encoder.json."""
    todo = [cid for cid in ids if overwrite or not layout.embedding(cid).is_file()]
    missing = [layout.audio(cid) for cid in todo if not layout.audio(cid).is_file()]
    if missing:  # checked before any work, so a long run does not stop half way for a missing file
        shown = ", ".join(str(p) for p in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DiffheadsError(
            f"the audio of {len(missing)} listed clip{'s' if len(missing) > 1 else ''} is missing: {shown}; "
            "run 'diffheads prepare' again or remove those clips from the file lists"
        )
    with output_dir(layout.embeddings, "embeddings folder"):
        for cid in tqdm(todo, desc="embed", unit="clip", disable=not progress):
            save_embedding(layout.embedding(cid), embed_clip(encoder, layout.audio(cid), layout.video(cid)))
        if write_encoder_file:
            write_encoder_spec(layout, encoder.describe())
    written, skipped = len(todo), len(ids) - len(todo)
    return {
        "clips": len(ids),
        "written": written,
        "skipped": skipped,
        "dim": encoder.dim,
        "out": str(layout.embeddings),
    }


def write_encoder_spec(layout: DataLayout, spec: dict[str, Any]) -> None:
    """EMB/encoder.json, atomically."""
    atomic_write_text(layout.encoder_file, json.dumps(spec, indent=2))
