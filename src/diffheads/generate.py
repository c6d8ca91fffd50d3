"""`diffheads generate` and `diffheads animate`: sample videos from a trained model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffheads.audio.encoders import SAMPLE_RATE, build_encoder, frames_in_audio
from diffheads.checkpoint import LoadedModel, load_model
from diffheads.config import SampleConfig
from diffheads.data.dataset import SplitClips, to_model_frames
from diffheads.diffusion.gaussian import GaussianDiffusion
from diffheads.diffusion.video import sample_video
from diffheads.errors import DiffheadsError
from diffheads.face.align import AlignConfig
from diffheads.face.mean_face import load_mean_face
from diffheads.face.paste import paste_back
from diffheads.face.portrait import Portrait, align_photo, align_video
from diffheads.io.audio import load_audio
from diffheads.io.image import read_image
from diffheads.io.video import read_video, write_video


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) in [-1, 1] -> uint8 (T, H, W, 3), rounded."""
    x = ((frames.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def sampling_process(model: LoadedModel, sample: SampleConfig) -> GaussianDiffusion:
    """The model's diffusion process respaced to `sample.steps`."""
    return GaussianDiffusion.from_config(model.cfg.diffusion).with_steps(sample.steps)


def sample_clips(
    model: LoadedModel,
    identity_frames: torch.Tensor,
    audio_embs: list[torch.Tensor],
    sample: SampleConfig,
    seed: int = 0,
    progress: bool = True,
) -> list[torch.Tensor]:
    """Sample one clip per (identity frame, embeddings) pair on the model's device."""
    device = next(model.unet.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    return sample_video(
        model.unet,
        sampling_process(model, sample),
        identity_frames.to(device),
        [a.to(device) for a in audio_embs],
        model.cfg.model,
        sample,
        generator,
        motion_blur=model.cfg.data.motion_blur,
        progress=progress,
    )


@dataclass
class GenerateResult:
    """Outputs of a test-set generation."""

    written: list[Path]
    skipped: list[Path]


def _model(checkpoint: str | Path | LoadedModel, device: str) -> LoadedModel:
    """A loaded model, moved to `device`."""
    if isinstance(checkpoint, LoadedModel):
        checkpoint.unet.to(device)
        return checkpoint
    return load_model(checkpoint, device)


def generate_test_set(
    checkpoint: str | Path | LoadedModel,
    data_root: str | Path,
    out_dir: str | Path,
    sample: SampleConfig | None = None,
    embeddings: str | Path | None = None,
    split: str = "test",
    skip_existing: bool = True,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> GenerateResult:
    """One mp4 (with its audio) per clip of the split, batched, trimmed back to each clip's length."""
    model = _model(checkpoint, device)
    sample = sample or model.cfg.sample
    data_cfg = dataclasses.replace(model.cfg.data, root=str(data_root), embeddings=str(embeddings or ""))
    clips = SplitClips(data_cfg, model.cfg.model, split)
    out_dir = Path(out_dir)
    targets = [out_dir / f"{cid}.mp4" for cid in clips.ids]
    todo = [i for i, p in enumerate(targets) if not (skip_existing and p.is_file())]
    skipped = [p for p in targets if skip_existing and p.is_file()]
    written: list[Path] = []
    for start in range(0, len(todo), sample.batch_size):
        batch = [clips[i] for i in todo[start : start + sample.batch_size]]
        _check_width(model, batch[0]["audio_emb"].shape[1], str(embeddings or data_root))
        videos = sample_clips(
            model,
            torch.stack([b["identity_frame"] for b in batch]),
            [b["audio_emb"] for b in batch],
            sample,
            seed=seed + start,
            progress=progress,
        )
        for item, video in zip(batch, videos):
            target = out_dir / f"{item['cid']}.mp4"
            audio = load_audio(item["audio_path"])[: round(len(video) * SAMPLE_RATE / 25)]
            write_video(target, to_uint8(video), fps=25, audio=audio, sample_rate=SAMPLE_RATE)
            written.append(target)
    return GenerateResult(written, skipped)


def _check_width(model: LoadedModel, width: int, where: str) -> None:
    expected = model.cfg.model.audio_dim
    if expected is not None and width != expected:
        raise DiffheadsError(
            f"embeddings in {where} have width {width} but the checkpoint expects audio_dim {expected}; "
            "embed the audio with the encoder the model was trained with"
        )


def load_identity_frame(image: str | Path | None, video: str | Path | None, size: int) -> torch.Tensor:
    """(3, size, size) identity frame from an already aligned photo or the first frame of such a video."""
    if (image is None) == (video is None):
        raise DiffheadsError("give exactly one of --image or --video")
    if image is not None:
        rgb = read_image(image)
    else:
        rgb = read_video(video)[0][0]
    return to_model_frames(rgb[None], size)[0]


def load_portrait(
    image: str | Path | None,
    video: str | Path | None,
    size: int,
    mean_face: str | Path | None = None,
    margins: tuple[float, float, float] | None = None,
) -> Portrait:
    """Find and align the face of a photo or a video at the model's resolution, as `prepare` does."""
    if (image is None) == (video is None):
        raise DiffheadsError("give exactly one of --image or --video")
    cfg = AlignConfig(size=size)
    if margins is not None:
        cfg = dataclasses.replace(cfg, margin_x=margins[0], margin_top=margins[1], margin_bottom=margins[2])
    face = load_mean_face(mean_face)
    return align_photo(image, cfg, face) if image is not None else align_video(video, cfg, face)


def animate(
    checkpoint: str | Path | LoadedModel,
    audio: str | Path,
    output: str | Path,
    image: str | Path | None = None,
    video: str | Path | None = None,
    sample: SampleConfig | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    align: bool = True,
    crop_only: bool = False,
    mean_face: str | Path | None = None,
    margins: tuple[float, float, float] | None = None,
) -> Path:
    """Make the face of `image` (or of the first frame of `video`) speak `audio`; writes an mp4 with the audio.

    By default the face is found and aligned like the training data, and the generated face
    is pasted back into the full-resolution picture (a video input plays forwards and
    backwards under it); `crop_only` keeps the aligned crop; `align=False` takes the input as
    an already aligned crop, as the reference code does. `mean_face` and `margins` should be
    those the training data was prepared with (the defaults of `prepare` otherwise).
    """
    model = _model(checkpoint, device)
    sample = sample or model.cfg.sample
    if not model.audio_encoder:
        raise DiffheadsError(f"{checkpoint} does not record its audio encoder; retrain or re-export it with diffheads")
    encoder = build_encoder(model.audio_encoder, device)
    size = model.cfg.model.image_size
    portrait = load_portrait(image, video, size, mean_face, margins) if align else None
    if portrait is not None:
        identity = to_model_frames(portrait.identity_crop[None], size)[0]
    else:
        identity = load_identity_frame(image, video, size)
    wav = load_audio(audio)
    if np.max(np.abs(wav), initial=0.0) < 1e-4:
        raise DiffheadsError(f"audio {audio} is silent; give a recording with speech")
    n_frames = frames_in_audio(len(wav))
    emb = encoder.encode(wav, n_frames)
    _check_width(model, emb.shape[1], str(audio))
    frames = to_uint8(sample_clips(model, identity[None], [emb], sample, seed=seed, progress=progress)[0])
    if portrait is not None and not crop_only:
        pasted = []
        for k, crop in enumerate(frames):
            background, to_crop = portrait.background(k)
            pasted.append(paste_back(background, crop, to_crop))
        frames = np.stack(pasted)
    out = Path(output)
    write_video(out, frames, fps=25, audio=wav[: round(len(frames) * SAMPLE_RATE / 25)], sample_rate=SAMPLE_RATE)
    return out
