"""`diffheads animate`: make one face speak one recording, written as an mp4 with the audio."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from diffheads.audio.encoders import build_encoder
from diffheads.audio.frames import SAMPLE_RATE, frames_in_audio
from diffheads.checkpoint import LoadedModel
from diffheads.config import SampleConfig
from diffheads.errors import DiffheadsError
from diffheads.face.portrait import Portrait
from diffheads.io.outdir import output_dir
from diffheads.io.video import VideoWriter
from diffheads.sample.inputs import identity_of, load_identity_frame, load_portrait, load_speech, output_image
from diffheads.sample.person import refuse_strangers
from diffheads.sample.runtime import check_audio_width, model_on, sample_clips


class _FrameSink:
    """on_frame callback of one streamed clip: uint8, pasted back into its background if given, encoded.

    `on_written(done, total)` is called after each frame is encoded; an exception it raises (a
    cancellation, say) stops the sampling and the unfinished video is removed.
    """

    def __init__(
        self,
        writer: VideoWriter,
        portrait: Portrait | None,
        total: int,
        on_written: Callable[[int, int], None] | None = None,
    ) -> None:
        self.writer = writer
        self.portrait = portrait
        self.total = total
        self.on_written = on_written

    def __call__(self, t: int, frames: torch.Tensor) -> None:
        self.writer.write(output_image(frames, t, self.portrait))
        if self.on_written is not None:
            self.on_written(self.writer.frames_written, self.total)


def write_animation(
    model: LoadedModel,
    identity: torch.Tensor,
    emb: torch.Tensor,
    wav: np.ndarray,
    output: str | Path,
    sample: SampleConfig,
    seed: int = 0,
    portrait: Portrait | None = None,
    progress: bool = True,
    on_written: Callable[[int, int], None] | None = None,
) -> Path:
    """Sample one clip from `identity` and the audio embeddings `emb` and stream it into `output` with `wav`.

    With a `portrait` each frame is pasted back into its full-resolution picture, otherwise the
    crop is written. `on_written(done, total)` follows the frames as they are encoded (see
    _FrameSink). The output appears only once complete.
    """
    n_frames = len(emb) if sample.max_frames <= 0 else min(len(emb), sample.max_frames)
    size = model.cfg.model.frame_size
    height, width = portrait.frames.shape[1:3] if portrait is not None else (size, size)
    out = Path(output)
    sound = wav[: round(n_frames * SAMPLE_RATE / 25)]
    with (
        output_dir(out.parent, "folder of --output"),
        VideoWriter(out, 25, width, height, audio=sound, sample_rate=SAMPLE_RATE) as writer,
    ):
        on_frame = _FrameSink(writer, portrait, n_frames, on_written)
        sample_clips(
            model, identity[None], [emb], sample, seed=seed, progress=progress, on_frame=on_frame, keep_frames=False
        )
    return out


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
    any_face: bool = False,
) -> Path:
    """Make the face of `image` (or of the first frame of `video`) speak `audio`; writes an mp4 with the audio.

    By default the face is found and aligned like the training data, and the generated face
    is pasted back into the full-resolution picture (a video input plays forwards and
    backwards under it); `crop_only` keeps the aligned crop; `align=False` takes the input as
    an already aligned crop, as the reference code does. `mean_face` and `margins` should be
    those the training data was prepared with (the defaults of `prepare` otherwise). Each frame is
    pasted back and encoded as soon as it is sampled, so memory does not grow with the audio's
    length, and the output appears only once complete (nothing is left behind on an error).
    A model that records its person refuses anyone else's face (sample/person.py) unless `any_face`.
    """
    model = model_on(checkpoint, device)
    sample = sample or model.cfg.sample
    if not model.audio_encoder:
        raise DiffheadsError(f"{checkpoint} does not record its audio encoder; retrain or re-export it with diffheads")
    encoder = build_encoder(model.audio_encoder, device)
    size = model.cfg.model.frame_size
    portrait = load_portrait(image, video, size, mean_face, margins) if align else None
    identity = identity_of(portrait, size) if portrait is not None else load_identity_frame(image, video, size)
    refuse_strangers(model, identity, any_face, "animate")
    wav = load_speech(audio)
    emb = encoder.encode(wav, frames_in_audio(len(wav)))
    check_audio_width(model, emb.shape[1], str(audio))
    return write_animation(
        model, identity, emb, wav, output, sample, seed, portrait=None if crop_only else portrait, progress=progress
    )
