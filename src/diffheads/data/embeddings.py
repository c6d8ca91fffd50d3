"""Reading the audio embeddings of the data contract: EMB/<id>.pth and EMB/encoder.json (written by
prepare/embed.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from diffheads.data.layout import DataLayout
from diffheads.errors import DiffheadsError


def load_embedding(path: Path) -> torch.Tensor:
    """Read a (n_frames, dim) embedding tensor without unpickling code."""
    if not path.is_file():
        raise DiffheadsError(f"audio embeddings {path} not found; run 'diffheads embed DATA' first")
    try:
        emb = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch reports a damaged file as RuntimeError, UnpicklingError, EOFError...
        raise DiffheadsError(
            f"audio embeddings {path} cannot be read ({type(err).__name__}); delete it and run 'diffheads embed' again"
        ) from None
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2:
        raise DiffheadsError(f"{path} does not hold a (n_frames, audio_dim) tensor; re-run 'diffheads embed'")
    return emb.float()


def read_encoder_spec(layout: DataLayout) -> dict[str, Any]:
    """The encoder description stored with the embeddings."""
    if not layout.encoder_file.is_file():
        raise DiffheadsError(f"{layout.encoder_file} not found; run 'diffheads embed {layout.root}' first")
    return read_spec(layout.encoder_file)


def read_spec(path: Path) -> dict[str, Any]:
    """The JSON object of an encoder.json."""
    try:
        spec = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DiffheadsError(
            f"{path} is not valid JSON ({err}); delete it and run 'diffheads embed --overwrite'"
        ) from None
    if not isinstance(spec, dict):
        raise DiffheadsError(f"{path} does not describe an encoder; delete it and run 'diffheads embed --overwrite'")
    return spec
