"""The sampling runtime: the denoiser wrapper (precision, memory format, compilation), the setup of a
sampling run, model loading and the batched clip sampler every command uses."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from diffheads.checkpoint import LoadedModel, load_model
from diffheads.conditioning import Conditioning
from diffheads.config import SampleConfig
from diffheads.diffusion.gaussian import GaussianDiffusion
from diffheads.diffusion.video import sample_video
from diffheads.errors import DiffheadsError


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) in [-1, 1] -> uint8 (T, H, W, 3), rounded."""
    x = ((frames.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def sampling_process(model: LoadedModel, sample: SampleConfig) -> GaussianDiffusion:
    """The model's diffusion process respaced to `sample.steps`."""
    return GaussianDiffusion.from_config(model.cfg.diffusion).with_steps(sample.steps)


PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""sample_clips precisions: the autocast dtype around the denoiser calls (fp32: no autocast)."""

_COMPILED_ATTR = "_diffheads_compiled"  # LoadedModel attribute caching torch.compile'd UNets, per mode


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or a DiffheadsError saying why it cannot run there."""
    if precision not in PRECISIONS:
        raise DiffheadsError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is torch.float16 and device.type == "cpu":
        raise DiffheadsError("precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DiffheadsError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16 support; use fp16 or fp32")
    return dtype


def _use_channels_last(unet: torch.nn.Module, channels_last: bool) -> None:
    """Put the UNet's 4-d weights in channels_last (or back in the default) memory format, in place, if needed."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    first_conv = next(p for p in unet.parameters() if p.ndim == 4)
    if not first_conv.is_contiguous(memory_format=fmt):
        unet.to(memory_format=fmt)


def _compiled_unet(model: LoadedModel, device: torch.device) -> torch.nn.Module:
    """torch.compile(model.unet), compiled once per LoadedModel and mode and cached on the LoadedModel.

    mode "reduce-overhead" (CUDA graphs) on CUDA, the default mode elsewhere. Compilation itself
    happens lazily on the first call; guards recompile when the batch shape, dtype, autocast state or
    memory format changes (up to torch._dynamo's recompile limit, then it runs eagerly).
    """
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    compiler = ("CXX", ("c++", "g++", "clang++")) if device.type == "cpu" else ("CC", ("cc", "gcc", "clang"))
    env, names = compiler
    if not (os.environ.get(env) or any(shutil.which(n) for n in names)):
        raise DiffheadsError(
            f"compile=True needs a {'C++' if env == 'CXX' else 'C'} compiler for torch.compile on {device.type} "
            f"(none of {', '.join(names)} found, ${env} unset); install one (e.g. apt-get install g++) "
            "or sample without compile"
        )
    cache: dict[str, torch.nn.Module] = model.__dict__.setdefault(_COMPILED_ATTR, {})
    compiled = cache.get(mode)
    if compiled is None or getattr(compiled, "_orig_mod", None) is not model.unet:
        compiled = torch.compile(model.unet, mode=None if mode == "default" else mode)
        cache[mode] = compiled
    return compiled


class _Denoiser(torch.nn.Module):
    """The UNet call the video loop makes, wrapped in autocast / channels_last input conversion.

    The output is returned in float32 (autocast gives bf16/fp16) so that the solvers' arithmetic stays
    float32, and copied out of the CUDA-graph memory pool when the UNet runs under CUDA graphs.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        device: torch.device,
        dtype: torch.dtype | None,
        channels_last: bool,
        cudagraphs: bool,
    ) -> None:
        super().__init__()
        self.net = net
        self.device_type = device.type
        self.dtype = dtype
        self.channels_last = channels_last
        self.cudagraphs = cudagraphs

    def base_frame(
        self, identity_frames: torch.Tensor, audio_window: torch.Tensor, output: bool = False
    ) -> torch.Tensor:
        """The network's base frame (UNet.base_frame), computed eagerly in float32 outside the compiled call."""
        net = getattr(self.net, "_orig_mod", self.net)
        return net.base_frame(identity_frames, audio_window, output=output)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            cond = dataclasses.replace(
                cond,
                identity_frame=cond.identity_frame.contiguous(memory_format=torch.channels_last),
                motion_frames=cond.motion_frames.contiguous(memory_format=torch.channels_last),
            )
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.net(x, t, cond)
        if self.dtype is not None:
            out = out.float()
        elif self.cudagraphs:
            out = out.clone()
        return out.contiguous()


def sample_clips(
    model: LoadedModel,
    identity_frames: torch.Tensor,
    audio_embs: list[torch.Tensor],
    sample: SampleConfig,
    seed: int | Sequence[int] = 0,
    progress: bool = True,
    *,
    precision: str | None = None,
    channels_last: bool | None = None,
    compile: bool | None = None,
    on_frame: Callable[[int, torch.Tensor], None] | None = None,
    keep_frames: bool = True,
) -> list[torch.Tensor]:
    """Sample one clip per (identity frame, embeddings) pair on the model's device.

    An integer `seed` seeds one generator for the batch; a sequence gives each clip its own generator
    (its frames are then the same whichever clips share its batch).

    `on_frame` and `keep_frames` are those of `sample_video`: receive each step's frames as soon as
    they are sampled and, with keep_frames=False, keep none (an empty list is returned).

    Throughput options (None: the SampleConfig's precision / channels_last / compile, whose defaults
    are plain float32 eager sampling):
      precision: "fp32", "bf16" or "fp16": torch.autocast on the model's device type around each
        denoiser call (the solver arithmetic stays float32); fp16 only on CUDA.
      channels_last: run the UNet in channels_last memory format. This converts `model.unet`'s
        weights in place and leaves them so (a later call with channels_last=False converts them back).
      compile: torch.compile the UNet (mode "reduce-overhead", i.e. CUDA graphs, on CUDA; default mode on
        CPU), once per LoadedModel: the compiled module is cached on `model`. The first call pays the
        compilation; the batch shrinking as shorter clips finish triggers a few recompilations.
    """
    setup = sampling_setup(model, sample, seed, precision=precision, channels_last=channels_last, compile=compile)
    return sample_video(
        setup.denoiser,
        setup.process,
        identity_frames.to(setup.device),
        [a.to(setup.device) for a in audio_embs],
        model.cfg.model,
        sample,
        setup.generator,
        motion_blur=model.cfg.data.motion_blur,
        progress=progress,
        on_frame=on_frame,
        keep_frames=keep_frames,
    )


class SamplingSetup(NamedTuple):
    """What the video loop samples with: the wrapped network, the respaced process, the noise source, the device."""

    denoiser: torch.nn.Module
    process: GaussianDiffusion
    generator: torch.Generator | list[torch.Generator]
    device: torch.device


def sampling_setup(
    model: LoadedModel,
    sample: SampleConfig,
    seed: int | Sequence[int] = 0,
    *,
    precision: str | None = None,
    channels_last: bool | None = None,
    compile: bool | None = None,
) -> SamplingSetup:
    """The denoiser, process and generator(s) `sample_clips` uses (seed, throughput options), on the model's device."""
    precision = sample.precision if precision is None else precision
    channels_last = sample.channels_last if channels_last is None else channels_last
    compile = sample.compile if compile is None else compile
    device = next(model.unet.parameters()).device
    dtype = _autocast_dtype(precision, device)
    _use_channels_last(model.unet, channels_last)
    net = _compiled_unet(model, device) if compile else model.unet
    denoiser = _Denoiser(net, device, dtype, channels_last, cudagraphs=compile and device.type == "cuda")
    if isinstance(seed, int):
        generator: torch.Generator | list[torch.Generator] = torch.Generator(device=device).manual_seed(seed)
    else:
        generator = [torch.Generator(device=device).manual_seed(s) for s in seed]
    return SamplingSetup(denoiser, sampling_process(model, sample).to(device), generator, device)


def model_on(checkpoint: str | Path | LoadedModel, device: str) -> LoadedModel:
    """A loaded model, moved to `device`."""
    if isinstance(checkpoint, LoadedModel):
        checkpoint.unet.to(device)
        return checkpoint
    return load_model(checkpoint, device)


def check_audio_width(model: LoadedModel, width: int, where: str) -> None:
    """A one-line error unless embeddings of `width` columns (from `where`) fit the model's audio_dim."""
    expected = model.cfg.model.audio_dim
    if expected is not None and width != expected:
        raise DiffheadsError(
            f"embeddings in {where} have width {width} but the checkpoint expects audio_dim {expected}; "
            "embed the audio with the encoder the model was trained with"
        )
