"""Typed run configuration: dataclasses loaded from YAML with `key.sub=value` overrides.

Unknown keys and values of the wrong type are rejected with a message naming the key and
its source, so a typo never silently falls back to a default (STYLE rule 4).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diffheads.errors import DiffheadsError


class IdCondition(str, enum.Enum):
    """How the identity frame enters the network (paper, ablation of identity conditioning; docs/model.md).

    The plain names are the reference's variants (same parameters and arithmetic); `_ours` are our earlier designs.
    """

    FRAME = "frame"  # concatenated with the noisy frame along channels (default)
    PRE_GN = (
        "pre_gn"  # reference: `identity_encoder` (the UNet's encoder half, pooled) vector added to the time embedding
    )
    POST_GN = "post_gn"  # reference: `identity_encoder` vector; per block h = h * Linear(SiLU(v)) after the norm
    PRE_GN_OURS = "pre_gn_ours"  # ours: small conv `id_encoder` vector added to the time embedding
    POST_GN_OURS = "post_gn_ours"  # ours: small conv `id_encoder` vector; per block h = h * (1 + s_id)


class AudioCondition(str, enum.Enum):
    """How the audio window enters the network; plain names are the reference's, `_ours` our designs (docs/model.md)."""

    PRE_GN = "pre_gn"  # audio embedding added to the time embedding (reference)
    POST_GN = "post_gn"  # reference: h = h * s_a after the time modulation
    DOUBLE_PRE_GN = "double_pre_gn"  # separate scale/shift from time then audio (default, reference)
    ATTENTION = "attention"  # reference: the self-attention layers attend to a projection of the audio vector
    POST_GN_OURS = "post_gn_ours"  # ours: h = h * (1 + s_a) after the time modulation
    ATTENTION_OURS = "attention_ours"  # ours: cross-attention in every block to the 2k+1 audio rows


class TimeFrequencies(str, enum.Enum):
    """Frequencies of the sinusoidal timestep features."""

    REFERENCE = "reference"  # 10000^(-i / 2C): the reference's (needed for its weights)
    STANDARD = "standard"  # 10000^(-i / (C/2)): DDPM / guided-diffusion, spans all 1000 steps


class Prediction(str, enum.Enum):
    """What the mean half of the network output predicts."""

    EPS = "eps"  # noise, the reference default
    V = "v"  # velocity v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022)
    X0 = "x0"  # the clean frame


class DiffusedTarget(str, enum.Enum):
    """What the process diffuses (diffusion/target.py)."""

    FRAME = "frame"  # the frame itself (the paper, SPEC)
    RESIDUAL = "residual"  # (frame - identity frame) * residual_scale: a person model starts from its identity frame


class TimestepSpacing(str, enum.Enum):
    """Which of the n_timesteps a respaced (sampling) process keeps (diffusion/schedule.py)."""

    REFERENCE = (
        "reference"  # n evenly spaced from 0 to T-1, both included (the reference's rounding; every model so far)
    )
    TRAILING = (
        "trailing"  # round(T k / n) - 1, k = 1..n: top T-1, the last step lands on the clean frame; n nests in 2n
    )


class IdentityFrameMode(str, enum.Enum):
    """How a training example picks its identity frame (SPEC, one training example)."""

    RANDOM = "random"
    FIRST = "first"


class FrameCache(str, enum.Enum):
    """Where the training loader gets frames from."""

    MEMORY = "memory"  # decode every clip once, keep all frames in RAM (small datasets, the demo)
    DISK = "disk"  # decode once into DATA/cache/<size>px/<id>.npy (uint8), then memory-map: any dataset size
    DECODE = "decode"  # decode the clip for every sample (the reference's behaviour; slow)


class DataFormat(str, enum.Enum):
    """How the training clips are stored."""

    FILES = "files"  # DATA/video, audio, lmks and emb, one file per clip (what prepare writes)
    PACKED = "packed"  # litdata chunks written by `diffheads pack` (a folder or any URL litdata reads)


class NonFinite(str, enum.Enum):
    """What training does when the loss or a gradient is NaN or Inf."""

    STOP = "stop"  # end the run with a message; the weights of that step are not updated, nothing is saved
    SKIP = "skip"  # drop that step's update and go on (up to trainer.max_nonfinite_skips in a row)


class Solver(str, enum.Enum):
    """Per-frame solvers available to the video sampler."""

    ANCESTRAL = "ancestral"  # respaced DDPM with the learned variance (reference)
    DDIM = "ddim"  # Song et al. 2021; eta sets the noise (0 = deterministic)
    DPMPP_2M = "dpm++2m"  # DPM-Solver++(2M), Lu et al. 2022: second-order multistep on the x0 prediction
    UNIPC = "unipc"  # UniPC (bh2 predictor-corrector), Zhao et al. 2023; matches diffusers' scheduler on our grid


@dataclass
class ModelConfig:
    """The conditional UNet (SPEC, network); names follow the reference constructor."""

    image_size: int = 128  # frame side in pixels; frames are resized to it
    # N > image_size: the videos are N px; the network still runs at image_size and each frame is its base frame at
    # N px (identity frame, with model.mouth_bank the bank's N px mouth) plus the upsampled residual of the network's
    # frame to its base (docs/model.md, "Sharper than the network"). 0: image_size
    output_size: int = 0
    in_channels: int = 3  # channels of the noisy frame
    model_channels: int = 256  # C, width of the first level
    out_channels: int = 6  # 3 mean channels + 3 variance-interpolation channels
    num_res_blocks: int = 2  # residual blocks per level
    attention_resolutions: list[int] = field(default_factory=lambda: [32])  # feature-map sides with self-attention
    dropout: float = 0.1
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 3])
    num_heads: int = 4  # used only when num_head_channels is -1
    num_head_channels: int = 64  # channels per attention head
    resblock_updown: bool = True  # resample inside residual blocks
    n_motion_frames: int = 2  # previous frames fed as motion context
    grayscale_motion: bool = True  # 1 channel per motion frame instead of 3
    # [top, bottom, left, right] as fractions of the frame: in motion frames this box shows the identity frame, so
    # the mouth cannot be copied from the previous frame and must come from the audio; [] (default) shows it all
    motion_mouth_box: list[float] = field(default_factory=list)
    # a linear head on the audio embedding that predicts the target frame's mouth shape (the 20 mouth landmarks,
    # centred), trained with diffusion.mouth_shape_weight: the audio path learns the mouth from a direct signal
    mouth_shape_head: bool = False
    # [x, y] fractions of the frame: the predicted mouth shape is drawn there as an extra input channel
    # (models/mouth_sketch.py; needs mouth_shape_head); [] (default): no sketch
    mouth_sketch_centre: list[float] = field(default_factory=list)
    # N > 0: the person's own mouths (models/mouth_bank.py): N mouths of the training frames and an audio ->
    # mouth-shape predictor, both fitted before training; the network's identity frame (and, with the residual
    # target, what the residual is taken from) gets the bank's mouth for the shape the audio asks for. 0: off
    mouth_bank: int = 0
    # [top, bottom, left, right] fractions of the aligned frame: where the bank's mouths are cut and pasted
    # (the mean-face template puts every person's mouth there)
    mouth_bank_box: list[float] = field(default_factory=lambda: [0.62, 0.9, 0.28, 0.72])
    n_audio_motion_embs: int = 2  # k: audio rows on each side of the target frame
    audio_dim: int | None = None  # width of one audio embedding row; null: taken from the embeddings
    id_condition_type: IdCondition = IdCondition.FRAME
    audio_condition_type: AudioCondition = AudioCondition.DOUBLE_PRE_GN
    time_frequencies: TimeFrequencies = TimeFrequencies.REFERENCE
    norm_groups: int = (
        32  # GroupNorm groups; with 32 channels, 32 groups is a per-channel norm that drops colour offsets
    )

    def __post_init__(self) -> None:
        centre = self.mouth_sketch_centre
        if centre and not (len(centre) == 2 and all(0 <= v <= 1 for v in centre) and self.mouth_shape_head):
            raise DiffheadsError(
                f"model.mouth_sketch_centre must be [] or [x, y] in [0, 1] with model.mouth_shape_head: true, got "
                f"{centre} (mouth_shape_head {self.mouth_shape_head})"
            )
        for name, box in (("motion_mouth_box", self.motion_mouth_box), ("mouth_bank_box", self.mouth_bank_box)):
            if box and not (len(box) == 4 and 0 <= box[0] < box[1] <= 1 and 0 <= box[2] < box[3] <= 1):
                raise DiffheadsError(
                    f"model.{name} must be [] or [top, bottom, left, right] with 0 <= top < bottom <= 1 and "
                    f"0 <= left < right <= 1 (fractions of the frame), got {box}"
                )
        if self.output_size and self.output_size < self.image_size:
            raise DiffheadsError(
                f"model.output_size must be 0 or at least model.image_size ({self.image_size}), got {self.output_size}"
            )
        if self.mouth_bank < 0 or (self.mouth_bank and not self.mouth_bank_box):
            raise DiffheadsError(
                f"model.mouth_bank must be 0 (off) or a number of mouths with a model.mouth_bank_box, got "
                f"{self.mouth_bank} and {self.mouth_bank_box}"
            )

    @property
    def frame_size(self) -> int:
        """Side of the frames a user gets (and of the identity frame they start from): output_size or image_size."""
        return self.output_size or self.image_size

    @property
    def motion_channels(self) -> int:
        """Channels per motion frame."""
        return 1 if self.grayscale_motion else 3

    @property
    def audio_window_len(self) -> int:
        """Rows in the audio window: 2k + 1."""
        return 2 * self.n_audio_motion_embs + 1


@dataclass
class DiffusionConfig:
    """Noise schedule and training loss (SPEC, diffusion and loss)."""

    n_timesteps: int = 1000
    cosine_s: float = 0.008  # offset of the cosine schedule (Nichol & Dhariwal 2021, eq. 17)
    max_beta: float = 0.999
    prediction: Prediction = Prediction.EPS
    learn_sigma: bool = True  # learned-range variance from the extra 3 output channels
    vlb_weight: float = 1e-4
    lip_loss_weight: float = 0.2  # 0 disables the lip loss
    lip_padding: int = 5  # pixels added around the mouth box (at 128 px; scaled with image_size)
    legacy_float32_schedule: bool = False  # derive the schedule in float32 exactly as the reference (less precise)
    timestep_spacing: TimestepSpacing = TimestepSpacing.REFERENCE  # sampling grid; distilled students use trailing
    target: DiffusedTarget = DiffusedTarget.FRAME  # frame (the paper) or residual to the identity frame (person models)
    mouth_shape_weight: float = 1.0  # weight of the mouth-shape loss of model.mouth_shape_head (when it is on)
    sketch_teacher_forcing: float = 0.5  # share of training examples whose mouth sketch is drawn from the truth
    residual_scale: float = 4.0  # target residual: the residual is multiplied by this (about 1 / its std x 0.3)

    def __post_init__(self) -> None:
        if not self.residual_scale > 0:
            raise DiffheadsError(f"diffusion.residual_scale must be > 0, got {self.residual_scale}")


@dataclass
class DataConfig:
    """Where training data lives and how examples are drawn (SPEC, data contract)."""

    root: str = "data"  # DATA: video/, audio/, file lists, optional lmks/; with format packed: the PACKED folder or URL
    format: DataFormat = DataFormat.FILES  # files (per-clip files under root) or packed (`diffheads pack` output)
    embeddings: str = ""  # EMB: per-clip embedding files; empty means ROOT/emb
    identity_frame: IdentityFrameMode = IdentityFrameMode.RANDOM
    motion_blur: bool = False  # Gaussian blur (kernel 5, sigma 2) on motion frames
    motion_dropout: float = 0.0  # probability that an example's motion frames are all the identity frame (as at t = 0)
    # training only, against exposure bias (docs/model.md): sampling always feeds clean motion frames
    motion_colour_jitter: float = 0.0  # j in [0, 1): per example and channel a gain in [1-j, 1+j], offset in [-j, j]
    motion_noise: float = 0.0  # >= 0: per example Gaussian noise of std s ~ uniform(0, motion_noise) on motion frames
    use_landmarks: bool = True  # read lmks/ for the lip loss when the loss is on
    examples_per_clip: int = 1  # training examples drawn per clip and epoch
    num_workers: int = 0
    frame_cache: FrameCache = (
        FrameCache.MEMORY
    )  # memory, disk (memory-mapped files under DATA/cache) or decode; files only
    packed_cache: str = ""  # format packed at a URL: local folder for downloaded chunks (empty: litdata's default)


@dataclass
class OptimConfig:
    """Adam with step decay (SPEC: lr 5e-5, x0.8 every epochs/18 epochs)."""

    lr: float = 5e-5
    batch_size: int = 10  # per device
    lr_decay: float = 0.8
    lr_decay_every: int = 0  # in epochs; 0 means max_epochs // 18 (at least 1)
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0 disables clipping
    ema_decay: float = 0.0  # 0 disables the exponential moving average of weights
    swa: bool = False  # stochastic weight averaging (Lightning callback)
    swa_lr: float = 1e-5


@dataclass
class TrainerConfig:
    """Lightning trainer settings and run bookkeeping."""

    out_dir: str = "runs/default"
    seed: int = 0
    max_epochs: int = 100
    max_steps: int = -1  # -1: limited by epochs only
    max_time: str = ""  # "DD:HH:MM:SS" wall limit; empty for none
    accelerator: str = "auto"  # cpu, gpu, auto
    devices: Any = 1  # int, list or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto, ddp, ddp_spawn, ...
    precision: str = "32-true"  # 32-true, 16-mixed, bf16-mixed
    channels_last: bool = False  # train the network in channels_last memory format
    log_every_n_steps: int = 50
    checkpoint_every_n_steps: int = 1000
    sample_every_n_steps: int = 0  # 0 disables periodic sample videos
    sample_frames: int = 25  # frames per periodic sample video
    wandb_project: str = ""  # empty disables Weights & Biases logging
    resume: str = ""  # checkpoint path; "last": OUT_DIR/checkpoints/last.ckpt; "auto": last if it exists, else start
    on_nonfinite: NonFinite = NonFinite.STOP  # NaN/Inf loss or gradients: stop the run, or skip the step
    max_nonfinite_skips: int = 20  # with on_nonfinite=skip: stop after this many skipped steps in a row


@dataclass
class SampleConfig:
    """How frames are sampled (SPEC, sampling a video)."""

    solver: Solver = Solver.ANCESTRAL
    steps: int = 100  # respaced steps per frame
    eta: float = 0.0  # DDIM noise scale
    stabilize_every: int = 0  # every N frames put the identity frame in the oldest motion slot; 0: never
    colour_anchor: bool = (
        False  # shift each frame's colour so its face box's median is the identity frame's (docs/long_video.md)
    )
    clip_denoised: bool = True  # clamp the x0 prediction to [-1, 1]
    # c in [0, 1]: frame t starts from c * (the clip's first-frame noise) + sqrt(1 - c^2) * fresh noise. With a
    # deterministic solver (ddim, dpm++2m, unipc) c = 1 draws what does not change between frames alike (no
    # shimmer, but also fewer blinks and head motion); 0 (the paper): independent noise per frame
    noise_correlation: float = 0.0
    batch_size: int = 8  # clips sampled together
    max_frames: int = 0  # cap on generated frames per clip; 0: no cap
    precision: str = "fp32"  # fp32, bf16 (CPU or GPU) or fp16 (GPU): autocast around the network
    channels_last: bool = False  # channels_last memory format for the network
    compile: bool = False  # torch.compile the network (CUDA graphs on GPU)

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise_correlation <= 1.0:
            raise DiffheadsError(
                f"sample.noise_correlation must be between 0 (fresh noise per frame) and 1 (the same noise), "
                f"got {self.noise_correlation}"
            )


@dataclass
class RunConfig:
    """One complete run: everything a checkpoint needs to rebuild and sample its model."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently convert) one value against a dataclass field type."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except DiffheadsError as exc:
                errors.append(str(exc))
        raise DiffheadsError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise DiffheadsError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(m.value for m in tp)
            raise DiffheadsError(f"{where}: {value!r} is not one of: {choices}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise DiffheadsError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise DiffheadsError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise DiffheadsError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise DiffheadsError(f"{where}: expected a string, got {value!r}")
    raise DiffheadsError(f"{where}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: dict[str, Any], source: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise DiffheadsError(f"{source}: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise DiffheadsError(f"{source}: unknown config key '{name}' (known here: {known})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, source, f"{name}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{source}: '{name}'")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (enums as strings): what YAML files and checkpoints store."""

    def plain(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


# 0.1: sample.devices / sample.num_nodes were the process layout of `diffheads generate`; being saved in every
# model file, they made a later run launch as the training config said. The layout is now generate's own
# --devices / --num-nodes (or the scheduler's), so these keys are accepted and dropped.
DROPPED_SAMPLE_KEYS = ("devices", "num_nodes")


def _drop_launch_keys(data: dict[str, Any]) -> dict[str, Any]:
    """`data` without the launch settings that older configs and model files kept in `sample`."""
    section = data.get("sample")
    if isinstance(section, dict) and any(key in section for key in DROPPED_SAMPLE_KEYS):
        data = {**data, "sample": {k: v for k, v in section.items() if k not in DROPPED_SAMPLE_KEYS}}
    return data


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Keys renamed since earlier releases, rewritten so older checkpoints and configs still load."""
    section = data.get("data")
    if isinstance(section, dict) and "cache_frames" in section:
        # 0.1: data.cache_frames (bool) became data.frame_cache (memory / disk / decode)
        section = dict(section)
        old = section.pop("cache_frames")
        section.setdefault("frame_cache", FrameCache.MEMORY.value if old else FrameCache.DECODE.value)
        data = {**data, "data": section}
    return _drop_launch_keys(data)


def from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    """RunConfig from a nested dict, e.g. one stored in a checkpoint (renamed keys of older versions accepted)."""
    return _build(RunConfig, _migrate(data), source)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML)."""
    if "=" not in text:
        raise DiffheadsError(f"override '{text}' must look like section.key=value, e.g. optim.lr=1e-4")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _merge(base: dict[str, Any], path: list[str], value: Any) -> None:
    node = base
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise DiffheadsError(f"override '{'.'.join(path)}': '{part}' is not a section")
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a YAML config, apply `key=value` overrides, and validate everything."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DiffheadsError(f"config file {path} does not exist; pass a YAML file such as configs/demo.yaml")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" at line {line + 1}" if line is not None else ""
            raise DiffheadsError(f"config file {path} is not valid YAML{where}; fix its syntax") from None
        source = str(path)
    cfg = _build(RunConfig, _migrate(data), source)
    merged = to_dict(cfg)
    for text in overrides:
        keys, value = parse_override(text)
        _merge(merged, keys, value)
    # an override may still name sample.devices / sample.num_nodes, as older scripts do
    return _build(RunConfig, _drop_launch_keys(merged), f"{source} + overrides" if overrides else source)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from diffheads.io.atomic import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
