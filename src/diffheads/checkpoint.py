"""Checkpoints that rebuild their model: the resolved config travels with the weights (nanoGPT style).

Two kinds are accepted wherever `--checkpoint` is, told apart by their content, not their name:
  * an exported model (`save_model`, e.g. RUN/model.ckpt): a safetensors file whose metadata holds
    the config and the audio encoder as JSON. Reading it runs no code by construction.
  * a Lightning training checkpoint (`RUN/checkpoints/*.ckpt`, resumable): a torch file read with
    `torch.load(weights_only=True)`, which refuses anything but tensors and plain containers.
Older exported models (torch files with format "diffheads-model") load the same way.

What a model was trained on travels with it too: `train` records a `trained_on` entry (JSON in the
safetensors metadata of RUN/model.ckpt, a top-level key of each training checkpoint) and
`model_provenance` reads it back, or infers what it can from the stored config for older files.
A model of one person records that person's face (`person`: dlib's descriptor), so sampling can
tell a portrait of someone else (sample/person.py).

A file that would need arbitrary unpickling (it can run any code while loading) is refused unless
the caller passes trust=True (`--trust-checkpoint` on the command line).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import struct
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from diffheads.config import RunConfig, from_dict, to_dict
from diffheads.data.frame_cache import resize_frames
from diffheads.data.layout import DataLayout
from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_path
from diffheads.io.video import iter_video_frames
from diffheads.metrics.person import RECORD_FRAMES, person_record
from diffheads.models.unet import UNet

FORMAT = "diffheads-model"
VERSION = 2  # 1: torch file with a "state_dict" entry; 2: safetensors with JSON metadata
TRAINED_ON = "trained_on"  # metadata entry (and training-checkpoint key) recording the training data
TRAINED_ON_FIELDS = ("data_root", "synthetic", "train_clips", "train_seconds", "image_size", "steps", "person")
DISTILLED = "distilled"  # metadata entry (and training-checkpoint key) of a distilled student (training/distill.py)
IMPORTED = "imported reference weights"


@dataclass
class LoadedModel:
    """A network ready to sample, with the run config and audio encoder it was trained with."""

    unet: UNet
    cfg: RunConfig
    audio_encoder: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)  # model_provenance of the file it came from
    distilled: dict[str, Any] | None = None  # a distilled student's record (steps, solver, grid, teacher); else None


def save_model(
    path: str | Path,
    unet: torch.nn.Module,
    cfg: RunConfig,
    audio_encoder: dict[str, Any],
    trained_on: dict[str, Any] | None = None,
    distilled: dict[str, Any] | None = None,
) -> Path:
    """Write weights (safetensors) with the resolved config, encoder and training data in its metadata, atomically.

    `distilled` marks a distilled student (the record of training/distill.py).
    """
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in unet.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "config": json.dumps(to_dict(cfg)),
        "audio_encoder": json.dumps(dict(audio_encoder)),
    }
    if trained_on is not None:
        metadata[TRAINED_ON] = json.dumps(dict(trained_on))
    if distilled is not None:
        metadata[DISTILLED] = json.dumps(dict(distilled))
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def is_safetensors(path: Path) -> bool:
    """True when the file starts like a safetensors file (8-byte header length, then a JSON object)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n < path.stat().st_size


def _read_safetensors(path: Path, with_tensors: bool = True) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path)) if with_tensors else {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DiffheadsError(
            f"checkpoint {path} is unreadable or truncated ({str(exc)[:120]}); export it again"
        ) from None
    if meta.get("format") != FORMAT:
        raise DiffheadsError(
            f"{path} is a safetensors file without a diffheads config; reference weights need 'diffheads import-reference'"
        )
    try:
        return {
            "format": FORMAT,
            "config": json.loads(meta["config"]),
            "audio_encoder": json.loads(meta.get("audio_encoder", "{}")),
            "state_dict": tensors,
            TRAINED_ON: json.loads(meta[TRAINED_ON]) if TRAINED_ON in meta else None,
            DISTILLED: json.loads(meta[DISTILLED]) if DISTILLED in meta else None,
        }
    except (KeyError, json.JSONDecodeError) as exc:
        raise DiffheadsError(f"{path} has damaged metadata ({exc}); export it again") from None


def _refusal(path: Path, exc: Exception) -> DiffheadsError:
    """Why a weights-only load failed, and how to proceed."""
    detail = str(exc).splitlines()
    culprit = next((line.strip() for line in detail if "GLOBAL" in line or "Unsupported" in line), detail[0][:120])
    return DiffheadsError(
        f"checkpoint {path} needs arbitrary unpickling, which can run any code on this machine ({culprit[:120]}); "
        "refusing to load it. Load it only if you trust its source: pass --trust-checkpoint"
    )


def read_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """The contents of a checkpoint file as a dict; never runs code unless `trust`."""
    path = Path(path)
    if not path.is_file():
        raise DiffheadsError(f"checkpoint {path} not found; train one with 'diffheads train' or run 'make demo'")
    if path.stat().st_size == 0:
        raise DiffheadsError(f"checkpoint {path} is empty (0 bytes); export or copy it again")
    if is_safetensors(path):
        return _read_safetensors(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise DiffheadsError(
            f"checkpoint {path} is unreadable or truncated ({type(exc).__name__}); copy or export it again"
        ) from None
    if not isinstance(data, dict):
        raise DiffheadsError(f"{path} is not a diffheads checkpoint (top level is {type(data).__name__})")
    return data


def _unpack(data: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, encoder dict, UNet state dict) of either checkpoint kind."""
    cfg, encoder = _config_and_encoder(data, path)
    if data.get("format") == FORMAT:
        return cfg, encoder, data["state_dict"]
    sd = data["state_dict"]
    prefix = "ema_unet." if any(k.startswith("ema_unet.") for k in sd) else "unet."
    return cfg, encoder, {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _config_and_encoder(data: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config dict, encoder dict) of either checkpoint kind, without touching the weights."""
    if data.get("format") == FORMAT:
        return data["config"], data.get("audio_encoder", {})
    hp = data.get("hyper_parameters", {})
    if "config" in hp and "state_dict" in data:
        return hp["config"], hp.get("audio_encoder", {})
    raise DiffheadsError(
        f"{path} is not a diffheads checkpoint (no config inside); reference checkpoints need 'diffheads import-reference'"
    )


def load_model(path: str | Path, device: str | torch.device = "cpu", trust: bool = False) -> LoadedModel:
    """Rebuild the UNet from the config stored in `path` and load its weights strictly."""
    path = Path(path)
    data = read_checkpoint(path, trust)
    cfg_dict, encoder, state_dict = _unpack(data, path)
    cfg = from_dict(cfg_dict, source=f"{path} (stored config)")
    unet = UNet(cfg.model)
    try:
        unet.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(exc)
        raise DiffheadsError(f"weights in {path} do not fit the stored config: {first[:200]}") from None
    distilled = data.get(DISTILLED)
    return LoadedModel(
        unet.to(device).eval(),
        cfg,
        encoder,
        _provenance(data, path),
        dict(distilled) if isinstance(distilled, dict) else None,
    )


def export_model(checkpoint: str | Path, out: str | Path, trust: bool = False) -> Path:
    """Write the sampling weights (EMA when present) of any checkpoint as an exported model file, with its record."""
    model = load_model(checkpoint, "cpu", trust)
    p = model.provenance
    trained_on = {k: p[k] for k in TRAINED_ON_FIELDS if k in p} if p.get("recorded") else None
    return save_model(out, model.unet, model.cfg, model.audio_encoder, trained_on, model.distilled)


# ---- provenance: what a model was trained on -------------------------------------------------------
def _wav_seconds(path: Path) -> float | None:
    """Duration of a PCM wav from its header alone, None if it cannot be read that way."""
    try:
        with wave.open(str(path), "rb") as w:
            return w.getnframes() / w.getframerate()
    except (OSError, EOFError, wave.Error, ZeroDivisionError):
        return None


def _first_frames(layout: DataLayout, clip_ids: Sequence[str], size: int) -> np.ndarray:
    """uint8 (N, size, size, 3): frame 0 of up to RECORD_FRAMES clips spread over `clip_ids`, as the model sees it."""
    picked = sorted({int(i) for i in np.linspace(0, len(clip_ids) - 1, min(RECORD_FRAMES, len(clip_ids))).round()})
    frames = []
    for i in picked:
        with contextlib.closing(iter_video_frames(layout.video(clip_ids[i]))) as decoded:
            first = next(decoded, None)
        if first is not None:
            frames.append(resize_frames(first[None], size)[0])
    return np.stack(frames) if frames else np.zeros((0, size, size, 3), np.uint8)


def training_person(layout: DataLayout, clip_ids: Sequence[str], image_size: int, synthetic: bool) -> dict[str, Any]:
    """The `person` entry of `trained_on`: the face the clips show (metrics/person.py), or why there is none."""
    if synthetic:  # cartoon faces: nothing for dlib to recognise, and no need to load it
        return {"descriptor": None, "reason": "synthetic cartoon faces: no person to recognise"}
    return person_record(_first_frames(layout, clip_ids, image_size))


def describe_training_data(root: str | Path, clip_ids: Sequence[str], image_size: int) -> dict[str, Any]:
    """The `trained_on` record of a run on the clips `clip_ids` of DATA `root` (steps are added at export)."""
    layout = DataLayout.of(root)
    seconds = [_wav_seconds(layout.audio(cid)) for cid in clip_ids]
    synthetic = (Path(root) / "synth.json").is_file()  # written by diffheads synth only
    return {
        "data_root": str(Path(root).resolve()),
        "synthetic": synthetic,
        "train_clips": len(clip_ids),
        "train_seconds": round(sum(seconds), 1) if seconds and None not in seconds else None,
        "image_size": int(image_size),
        "person": training_person(layout, clip_ids, image_size, synthetic),
    }


def _synthetic_data(root: str | None) -> bool | None:
    """True/False for a DATA folder that still exists (synth.json or not), None when it cannot be told."""
    if not root:
        return None
    layout = DataLayout.of(root)
    if (layout.root / "synth.json").is_file():
        return True
    return False if layout.file_list("train").is_file() else None


def _looks_imported(cfg: dict[str, Any], encoder: dict[str, Any]) -> bool:
    """import-reference writes the SDA encoder and the default data and run sections (there was no run)."""
    defaults = RunConfig()
    return (
        encoder.get("name") == "sda"
        and cfg.get("data", {}).get("root") == defaults.data.root
        and cfg.get("trainer", {}).get("out_dir") == defaults.trainer.out_dir
    )


def _provenance(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """model_provenance of a checkpoint's contents (weights are not needed)."""
    cfg, encoder = _config_and_encoder(data, path)
    model_cfg = cfg.get("model", {})
    size = model_cfg.get("output_size") or model_cfg.get("image_size", RunConfig().model.image_size)  # frame side
    steps = data.get("global_step")  # training checkpoints only
    record = data.get(TRAINED_ON)
    if isinstance(record, dict):
        return {"kind": "trained", "recorded": True, **dict.fromkeys(TRAINED_ON_FIELDS), "steps": steps, **record}
    base = {"recorded": False, **dict.fromkeys(TRAINED_ON_FIELDS), "image_size": size, "steps": steps}
    if _looks_imported(cfg, encoder):
        return {**base, "kind": "imported", "synthetic": False}  # the authors trained on real footage (CREMA-D, LRW)
    root = cfg.get("data", {}).get("root")
    return {**base, "kind": "trained", "data_root": root, "synthetic": _synthetic_data(root)}


def model_provenance(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """What the model in `path` was trained on; reads only the metadata of an exported model.

    Keys: kind ("trained" or "imported"), recorded (False: inferred from the stored config of a
    file without a `trained_on` entry), data_root, synthetic (None: unknown), train_clips,
    train_seconds, image_size, steps, person (the face the clips show: `training_person`); None where not known.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size > 0 and is_safetensors(path):
        data = _read_safetensors(path, with_tensors=False)
    else:
        data = read_checkpoint(path, trust)
    return _provenance(data, path)


def _shown_path(path: str) -> str:
    """`path` relative to the working directory when it lies below it."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else path
    except ValueError:
        return path


def describe_provenance(p: dict[str, Any]) -> str:
    """One phrase for a label: 'real footage, 540 clips (27 min) of data/grid/s1, 64 px, 3000 steps'."""
    size = f"{p.get('image_size')} px" if p.get("image_size") else None
    steps = f"{p['steps']} steps" if p.get("steps") is not None else None
    if p.get("kind") == "imported":
        return ", ".join(x for x in (IMPORTED, size) if x)
    clips = f"{p['train_clips']} clips" if p.get("train_clips") is not None else None
    if clips and p.get("train_seconds"):
        seconds = p["train_seconds"]
        clips += f" ({seconds / 60:.0f} min)" if seconds >= 120 else f" ({seconds:.3g} s)"
    root = _shown_path(p["data_root"]) if p.get("data_root") else None
    if p.get("synthetic") is True:
        what = "synthetic cartoon faces" + (f", {clips}" if clips else "")
    elif p.get("synthetic") is False:
        what = "real footage" + (f", {clips or 'clips'} of {root}" if root else f", {clips}" if clips else "")
    else:
        what = f"unknown data ({root} is gone or not a dataset)" if root else "unknown data"
    return ", ".join(x for x in (what, size, steps) if x)
