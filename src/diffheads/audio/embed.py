"""`diffheads embed`: write one embedding file per clip in the layout the dataset reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from diffheads.audio.encoders import AudioEncoder, LogMelEncoder, build_encoder, frames_in_audio
from diffheads.data.layout import DataLayout
from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_path, atomic_write_text
from diffheads.io.audio import load_audio
from diffheads.io.video import count_frames


def save_embedding(path: Path, emb: torch.Tensor) -> None:
    """Write a (n_frames, dim) float32 tensor atomically."""
    with atomic_path(path) as tmp:
        torch.save(emb.float().contiguous(), tmp)


def load_embedding(path: Path) -> torch.Tensor:
    """Read a (n_frames, dim) embedding tensor without unpickling code."""
    if not path.is_file():
        raise DiffheadsError(f"audio embeddings {path} not found; run 'diffheads embed DATA' first")
    emb = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2:
        raise DiffheadsError(f"{path} does not hold a (n_frames, audio_dim) tensor; re-run 'diffheads embed'")
    return emb.float()


def read_encoder_spec(layout: DataLayout) -> dict[str, Any]:
    """The encoder description stored with the embeddings."""
    if not layout.encoder_file.is_file():
        raise DiffheadsError(f"{layout.encoder_file} not found; run 'diffheads embed {layout.root}' first")
    return json.loads(layout.encoder_file.read_text())


def embed_clip(encoder: AudioEncoder, audio_path: Path, video_path: Path | None) -> torch.Tensor:
    """Embeddings of one clip: one row per video frame (or per 40 ms of audio when there is no video)."""
    audio = load_audio(audio_path)
    n_frames = count_frames(video_path) if video_path is not None and video_path.is_file() else frames_in_audio(len(audio))
    return encoder.encode(audio, n_frames)


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
    if layout.encoder_file.is_file() and not overwrite:
        old = json.loads(layout.encoder_file.read_text())
        if old != encoder.describe():
            raise DiffheadsError(
                f"{layout.embeddings} holds embeddings of another encoder ({old.get('name')}, dim {old.get('dim')}); "
                "pass --overwrite or choose another --out"
            )
    ids = sorted({cid for split in splits for cid in layout.clips(split)})
    written = skipped = 0
    for cid in tqdm(ids, desc="embed", unit="clip", disable=not progress):
        target = layout.embedding(cid)
        if target.is_file() and not overwrite:
            skipped += 1
            continue
        save_embedding(target, embed_clip(encoder, layout.audio(cid), layout.video(cid)))
        written += 1
    atomic_write_text(layout.encoder_file, json.dumps(encoder.describe(), indent=2))
    return {"clips": len(ids), "written": written, "skipped": skipped, "dim": encoder.dim, "out": str(layout.embeddings)}


def encoder_from_embeddings(layout: DataLayout) -> AudioEncoder:
    """Rebuild the encoder that made a dataset's embeddings."""
    return build_encoder(read_encoder_spec(layout))
