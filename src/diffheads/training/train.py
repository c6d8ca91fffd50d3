"""`diffheads train`: build data, network and Lightning trainer from a RunConfig and fit."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, StochasticWeightAveraging
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader

from diffheads.checkpoint import TRAINED_ON, describe_training_data, read_checkpoint, save_model
from diffheads.config import DataFormat, RunConfig, save_config
from diffheads.data.dataset import TalkingFaceDataset
from diffheads.data.embeddings import read_encoder_spec
from diffheads.data.layout import DataLayout
from diffheads.data.packed import read_manifest
from diffheads.data.sampler import ExampleSampler
from diffheads.errors import DiffheadsError
from diffheads.io.outdir import output_dir
from diffheads.models.unet import UNet
from diffheads.training.checkpoint_io import AtomicCheckpointIO, remove_stale_temporaries
from diffheads.training.module import DiffusionModule
from diffheads.training.mouth_bank import prepare_mouth_bank
from diffheads.training.progress import TrainingProgress, quiet_lightning
from diffheads.training.resume import ResumeState
from diffheads.training.samples import SampleVideos


@dataclass
class TrainResult:
    """Where a finished run left its outputs."""

    out_dir: Path
    model_path: Path  # exported model (EMA weights when enabled)
    last_checkpoint: Path | None
    steps: int
    final_loss: float | None
    global_rank: int = 0  # DDP: only rank 0 reports


def resolve_config(cfg: RunConfig) -> tuple[RunConfig, dict[str, Any]]:
    """Fill what the data decides (audio_dim) and return the encoder description."""
    if DataFormat(cfg.data.format) == DataFormat.PACKED:
        encoder, where = read_manifest(cfg.data.root)["encoder"], cfg.data.root
    else:
        layout = DataLayout.of(cfg.data.root, cfg.data.embeddings or None)
        encoder, where = read_encoder_spec(layout), str(layout.embeddings)
    dim = int(encoder["dim"])
    if cfg.model.audio_dim is not None and cfg.model.audio_dim != dim:
        raise DiffheadsError(
            f"model.audio_dim={cfg.model.audio_dim} but the embeddings in {where} have width {dim}; "
            "remove model.audio_dim or re-embed"
        )
    model = dataclasses.replace(cfg.model, audio_dim=dim)
    return dataclasses.replace(cfg, model=model), encoder


class RecordTrainingData(L.Callback):
    """Puts the run's `trained_on` record, with the step count, into every training checkpoint."""

    def __init__(self, trained_on: dict[str, Any]) -> None:
        self.trained_on = trained_on

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[TRAINED_ON] = {**self.trained_on, "steps": int(trainer.global_step)}


def _resume_path(cfg: RunConfig, ckpt_dir: Path, trust: bool) -> str | None:
    """The checkpoint to resume from (checked to load without running code unless trusted), or None."""
    resume = cfg.trainer.resume
    if not resume:
        return None
    path = ckpt_dir / "last.ckpt" if resume in ("last", "auto") else Path(resume)
    if not path.is_file():
        if resume == "auto":
            return None
        raise DiffheadsError(
            f"cannot resume: {path} not found; train without trainer.resume (or use trainer.resume=auto)"
        )
    read_checkpoint(path, trust=trust)  # refuses pickled code and truncated files with a clear message
    return str(path)


def build_trainer(
    cfg: RunConfig,
    out_dir: Path,
    val_data: TalkingFaceDataset | None,
    extra_callbacks: Sequence[L.Callback] = (),
    progress: bool = True,
    label: str = "train",
) -> L.Trainer:
    """Lightning Trainer with loggers, atomic checkpointing, optional SWA / sample videos and progress headed `label`."""
    t = cfg.trainer
    loggers: list[Any] = [TensorBoardLogger(str(out_dir), name="tensorboard"), CSVLogger(str(out_dir), name="csv")]
    if t.wandb_project:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=t.wandb_project, save_dir=str(out_dir)))
    callbacks: list[Any] = [
        ModelCheckpoint(
            dirpath=str(out_dir / "checkpoints"),
            every_n_train_steps=t.checkpoint_every_n_steps,
            save_last=True,
            save_top_k=-1,
            filename="step{step:07d}",
            auto_insert_metric_name=False,
        ),
        LearningRateMonitor(logging_interval="epoch"),
        *extra_callbacks,
    ]
    if cfg.optim.swa:
        callbacks.append(StochasticWeightAveraging(swa_lrs=cfg.optim.swa_lr))
    if t.sample_every_n_steps > 0 and val_data is not None:
        callbacks.append(SampleVideos(val_data, out_dir / "samples", t.sample_every_n_steps, t.sample_frames, cfg))
    if progress:
        callbacks.append(TrainingProgress(label))
    return L.Trainer(
        default_root_dir=str(out_dir),
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        max_time=t.max_time or None,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=cfg.optim.grad_clip or None,
        logger=loggers,
        callbacks=callbacks,
        enable_progress_bar=False,  # Lightning's bar counts batches per epoch; TrainingProgress counts the run's steps
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,  # data.sampler.ExampleSampler splits the examples between ranks itself
        plugins=[AtomicCheckpointIO()],
    )


def training_data(
    cfg: RunConfig, lip_loss: bool | None = None
) -> tuple[TalkingFaceDataset, TalkingFaceDataset | None, dict[str, Any]]:
    """(training examples, held-out clips for sample videos or None, the `trained_on` record) of a run.

    `lip_loss` None: landmarks are read when the config's lip loss or mouth-shape head is on.
    """
    wanted = cfg.diffusion.lip_loss_weight > 0 or cfg.model.mouth_shape_head or cfg.model.mouth_bank > 0
    lip = wanted if lip_loss is None else lip_loss
    data = TalkingFaceDataset(cfg.data, cfg.model, "train", lip_loss=lip)  # checks every listed clip first
    val = TalkingFaceDataset(cfg.data, cfg.model, "test", lip_loss=False) if cfg.trainer.sample_every_n_steps else None
    if data.packed is not None:  # what the clips were packed from
        trained_on = {**data.packed.manifest["source"], "packed": cfg.data.root}
    else:
        trained_on = describe_training_data(cfg.data.root, data.ids, cfg.model.frame_size)
    return data, val, trained_on


def train(cfg: RunConfig, trust_checkpoint: bool = False, progress: bool = True) -> TrainResult:
    """Train a model as configured; returns the exported model path.

    `trust_checkpoint` allows resuming from a checkpoint that needs arbitrary unpickling (runs code);
    `progress=False` shows no progress (Lightning's banners and advice are hidden either way).
    """
    cfg, encoder = resolve_config(cfg)
    out_dir = Path(cfg.trainer.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    resume = _resume_path(cfg, ckpt_dir, trust_checkpoint)
    data, val, trained_on = training_data(cfg)
    with output_dir(out_dir, "trainer.out_dir"):
        return _fit(cfg, encoder, data, val, out_dir, resume, trust_checkpoint, progress, trained_on)


def fit_module(
    cfg: RunConfig,
    module: DiffusionModule,
    data: TalkingFaceDataset,
    val: TalkingFaceDataset | None,
    out_dir: Path,
    resume: str | None,
    trust_checkpoint: bool,
    progress: bool,
    callbacks: Sequence[L.Callback] = (),
    label: str = "train",
) -> L.Trainer:
    """Fit `module` on `data`: resumable loader, atomic checkpoints, loggers, config saved in `out_dir`; returns the trainer."""
    sampler = ExampleSampler(len(data), cfg.trainer.seed)
    loader = DataLoader(
        data,
        batch_size=cfg.optim.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
        drop_last=len(data) > cfg.optim.batch_size,
    )
    with quiet_lightning():  # Lightning's banners, tips and advice: nothing a diffheads user can act on
        extra = [ResumeState(sampler, cfg.optim.batch_size), *callbacks]
        trainer = build_trainer(cfg, out_dir, val, extra, progress, label)
        if trainer.is_global_zero:
            save_config(cfg, out_dir / "config.yaml")
            remove_stale_temporaries(out_dir / "checkpoints")
        trainer.fit(module, loader, ckpt_path=resume, weights_only=not trust_checkpoint)
    return trainer


def _fit(
    cfg: RunConfig,
    encoder: dict[str, Any],
    data: TalkingFaceDataset,
    val: TalkingFaceDataset | None,
    out_dir: Path,
    resume: str | None,
    trust_checkpoint: bool,
    progress: bool,
    trained_on: dict[str, Any],
) -> TrainResult:
    """Build the network, fit it, and export the sampling weights with what they learnt from."""
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    unet = UNet(cfg.model)
    if cfg.model.mouth_bank:
        if data.packed is not None:
            raise DiffheadsError(
                "model.mouth_bank picks its mouths from a DATA folder, not a packed one; train on the folder"
            )
        prepare_mouth_bank(unet, cfg, data.layout, list(data.ids))
    if cfg.trainer.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    module = DiffusionModule(unet, cfg, encoder)
    trainer = fit_module(
        cfg, module, data, val, out_dir, resume, trust_checkpoint, progress, [RecordTrainingData(trained_on)]
    )
    model_path = out_dir / "model.ckpt"
    if trainer.is_global_zero:
        record = {**trained_on, "steps": int(trainer.global_step)}
        save_model(model_path, module.sampling_network(), cfg, encoder, record)
    loss = trainer.callback_metrics.get("train/loss")
    last = out_dir / "checkpoints" / "last.ckpt"
    return TrainResult(
        out_dir=out_dir,
        model_path=model_path,
        last_checkpoint=last if last.is_file() else None,
        steps=int(trainer.global_step),
        final_loss=float(loss) if loss is not None else None,
        global_rank=trainer.global_rank,
    )
