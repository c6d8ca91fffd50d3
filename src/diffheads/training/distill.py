"""`diffheads distill`: progressive distillation into students that sample in N = 4, 2 or 1 DDIM steps per frame.

Salimans & Ho 2022 ("Progressive distillation for fast sampling of diffusion models", alg. 2): a round starts
the student from the teacher's weights and trains it to take, in one deterministic DDIM step of its N-step
grid, the two DDIM steps the teacher takes on its 2N-step grid; the student then teaches the next round.
Both grids use trailing spacing (diffusion/schedule.py), so the student's grid is every other point of the
teacher's exactly. A student is an ordinary model file: its config says how to sample it (`ddim`, N steps,
`diffusion.timestep_spacing: trailing`, no x0 clipping) and its metadata holds a `distilled` record.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from diffheads.checkpoint import DISTILLED, TRAINED_ON, TRAINED_ON_FIELDS, LoadedModel, load_model, save_model
from diffheads.config import (
    Prediction,
    RunConfig,
    Solver,
    TimestepSpacing,
    TrainerConfig,
    from_dict,
    parse_override,
    to_dict,
)
from diffheads.diffusion import target as diffused
from diffheads.diffusion.gaussian import GaussianDiffusion
from diffheads.diffusion.samplers import Denoiser
from diffheads.diffusion.schedule import trailing_timesteps
from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_write_text
from diffheads.io.outdir import output_dir
from diffheads.training.module import DiffusionModule, conditioning_of, with_base_frame
from diffheads.training.train import _resume_path, fit_module, resolve_config, training_data

CLEAN = -1
"""The 'timestep' of the clean frame, where the last DDIM step of a grid lands (alpha_bar = 1)."""

METHOD = "progressive distillation (Salimans & Ho 2022)"
SETTINGS_FILE = "distill.json"  # OUT/distill.json: what a rerun must match to resume


# ---- grids and the distillation target -------------------------------------------------------------------
@dataclass(frozen=True)
class RoundGrid:
    """One round's timesteps, ascending: the student's N-step grid is teacher[1::2] of the teacher's 2N-step grid."""

    student: list[int]
    teacher: list[int]

    def steps(self) -> tuple[list[int], list[int], list[int]]:
        """(t, t', t'') per student position: its time, the teacher's midpoint, the next student time (CLEAN last)."""
        t = self.teacher[1::2]
        mid = self.teacher[0::2]
        end = [CLEAN, *self.teacher[1:-1:2]]
        return t, mid, end


def round_grid(n_timesteps: int, student_steps: int) -> RoundGrid:
    """The trailing grids of a round that distils 2N teacher steps into N student steps."""
    teacher = trailing_timesteps(n_timesteps, 2 * student_steps)
    student = trailing_timesteps(n_timesteps, student_steps)
    if student != teacher[1::2]:  # the integer formula guarantees it; a grid change must keep it
        raise AssertionError(f"student grid {student} is not every other point of {teacher}")
    return RoundGrid(student, teacher)


def _alpha_sigma(process: GaussianDiffusion, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) of the full process, broadcast like `like`; CLEAN: (1, 0)."""
    abar = process.schedule.alpha_bar.to(like.device)[t.to(like.device).clamp(min=0)].to(like.dtype)
    abar = torch.where(t.to(like.device) >= 0, abar, torch.ones_like(abar)).view(-1, *([1] * (like.dim() - 1)))
    return abar.sqrt(), (1.0 - abar).sqrt()


def teacher_x0(
    teacher: Denoiser, process: GaussianDiffusion, z: torch.Tensor, t: torch.Tensor, clip: bool
) -> torch.Tensor:
    """The teacher's x0 prediction at z_t (any parameterisation), clipped to [-1, 1] when its sampler clips."""
    _, x0 = process.predict_eps_x0(process.split_output(teacher(z, process.model_timesteps(t)))[0].to(z.dtype), z, t)
    return x0.clamp(-process.x0_bound, process.x0_bound) if clip else x0


def ddim_step(
    process: GaussianDiffusion, x0: torch.Tensor, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor
) -> torch.Tensor:
    """Deterministic DDIM from t to s: z_s = alpha_s x0 + sigma_s (z_t - alpha_t x0) / sigma_t (Song et al. 2021, eq. 12)."""
    a_t, s_t = _alpha_sigma(process, t, z)
    a_s, s_s = _alpha_sigma(process, s, z)
    return a_s * x0 + s_s * (z - a_t * x0) / s_t


def distillation_target(
    teacher: Denoiser,
    process: GaussianDiffusion,
    z_t: torch.Tensor,
    t: torch.Tensor,
    t_mid: torch.Tensor,
    t_end: torch.Tensor,
    clip: bool,
) -> torch.Tensor:
    """x~ such that one DDIM step t -> t'' with x0 = x~ lands where the teacher's two steps t -> t' -> t'' land.

    Salimans & Ho 2022, alg. 2: x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t).
    `process` is the full (unspaced) process, so positions are timesteps; CLEAN in `t_end` is the clean frame.
    """
    if process.n_steps != process.cfg.n_timesteps:
        raise ValueError("distillation_target needs the full (unspaced) process")
    z_mid = ddim_step(process, teacher_x0(teacher, process, z_t, t, clip), z_t, t, t_mid)
    z_end = ddim_step(process, teacher_x0(teacher, process, z_mid, t_mid, clip), z_mid, t_mid, t_end)
    a_t, s_t = _alpha_sigma(process, t, z_t)
    a_end, s_end = _alpha_sigma(process, t_end, z_t)
    ratio = s_end / s_t
    return (z_end - ratio * z_t) / (a_end - ratio * a_t)


def student_loss(
    process: GaussianDiffusion, student_out: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """(1 + SNR_t) |x^_student - x~|^2, averaged: Salimans & Ho's "SNR+1" weighting, the MSE of v for a v model."""
    pred, _ = process.split_output(student_out)
    _, x0 = process.predict_eps_x0(pred, z_t, t)
    _, sigma = _alpha_sigma(process, t, z_t)
    return ((x0 - target) ** 2 / sigma**2).mean()


# ---- the Lightning module -------------------------------------------------------------------------------
class DistillationModule(DiffusionModule):
    """A distillation round: `unet` is the student (started from the teacher's weights), `teacher` stays frozen.

    Everything else is DiffusionModule's: per-step randomness, NaN/Inf handling, EMA of the student.
    The teacher is not a submodule, so checkpoints hold only the student (and its EMA) and DDP does not wrap it.
    """

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module,
        cfg: RunConfig,
        student_steps: int,
        teacher_clip: bool,
        audio_encoder: dict[str, Any] | None = None,
    ):
        super().__init__(student, cfg, audio_encoder)
        check_teacher_prediction(cfg.diffusion.prediction)
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))
        self.student_steps = student_steps
        self.teacher_clip = teacher_clip
        t, mid, end = round_grid(cfg.diffusion.n_timesteps, student_steps).steps()
        self._steps = tuple(torch.tensor(v, dtype=torch.int64) for v in (t, mid, end))

    def on_fit_start(self) -> None:
        self.teacher.to(self.device)

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The student's loss at a uniformly drawn position of its grid, against the teacher's two-step target."""
        cond = with_base_frame(self.unet, conditioning_of(batch))
        x0 = diffused.encode(batch["target"], cond.identity_frame, self.cfg.diffusion)
        if self.diffusion.schedule.beta.device != x0.device:
            self.diffusion = self.diffusion.to(x0.device)
        position = torch.randint(0, self.student_steps, (x0.shape[0],), device=x0.device)
        t, t_mid, t_end = (table.to(x0.device)[position] for table in self._steps)
        z_t = self.diffusion.q_sample(x0, t, torch.randn_like(x0))
        with torch.no_grad():
            target = distillation_target(
                lambda x, tt: self.teacher(x, tt, cond).float(), self.diffusion, z_t, t, t_mid, t_end, self.teacher_clip
            )
        out = self.unet(z_t, self.diffusion.model_timesteps(t), cond)
        loss = student_loss(self.diffusion, out.float(), z_t, t, target)
        return {"mse": loss, "loss": loss}

    def configure_optimizers(self) -> Any:
        # Adam, learning rate decayed linearly to 0 over the round: each student settles before it teaches
        o = self.cfg.optim
        opt = torch.optim.Adam(self.unet.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        total = max(1, self.cfg.trainer.max_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def check_teacher_prediction(prediction: Prediction) -> None:
    """Refuse eps prediction: its x0 = (z - sigma eps) / alpha is unusable where alpha ~ 0 (the first student step)."""
    if Prediction(prediction) == Prediction.EPS:
        raise DiffheadsError(
            "the teacher predicts eps (diffusion.prediction=eps): its x0 = (x_t - sigma eps) / alpha is unusable at "
            "t = 999 (alpha ~ 5e-5), which a few-step student starts from (Salimans & Ho 2022, sec. 4); distil a "
            "model trained with diffusion.prediction=v (or x0)"
        )


class RecordDistillation(L.Callback):
    """Puts the teacher's `trained_on` record and the round's `distilled` record into every checkpoint."""

    def __init__(self, trained_on: dict[str, Any] | None, distilled: dict[str, Any]) -> None:
        self.trained_on, self.distilled = trained_on, distilled

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.trained_on is not None:
            checkpoint[TRAINED_ON] = dict(self.trained_on)
        checkpoint[DISTILLED] = {**self.distilled, "round_steps": int(trainer.global_step)}


# ---- configuration ---------------------------------------------------------------------------------------
SET_BY_DISTILL = {
    "trainer.out_dir": "--out",
    "trainer.max_steps": "--steps-per-round",
    "trainer.max_epochs": "--steps-per-round",
    "trainer.resume": "a rerun resumes by itself",
    "data.root": "--data",
    "sample.solver": "a student samples with ddim",
    "sample.steps": "--target-steps",
    "sample.eta": "a student samples deterministically",
    "optim.swa": "no weight averaging in distillation",
}
CHANGEABLE = ("optim", "trainer", "data", "sample")  # sections a distillation may set, besides model.dropout
# how the teacher's own training was launched says nothing about this run: these come from the distill
# overrides or the defaults (one process), never from the teacher's model file
LAUNCH_SETTINGS = ("accelerator", "devices", "num_nodes", "strategy")


def student_config(teacher: RunConfig, data: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """The teacher's config with the distillation data, `overrides` (training settings only) and the student's sampling.

    The network and the diffusion stay the teacher's (only model.dropout may change); `diffusion.timestep_spacing`
    becomes trailing and `sample` becomes ddim without x0 clipping (unless sample.clip_denoised is overridden).
    The trainer's launch settings (LAUNCH_SETTINGS) are the defaults unless overridden, whatever the teacher's were.
    """
    merged = to_dict(teacher)
    merged["data"].update(root=str(data), embeddings="")
    defaults = to_dict(TrainerConfig())
    merged["trainer"].update({key: defaults[key] for key in LAUNCH_SETTINGS})
    merged["optim"]["swa"] = False
    merged["sample"]["clip_denoised"] = False
    for text in overrides:
        keys, value = parse_override(text)
        name = ".".join(keys)
        if name in SET_BY_DISTILL:
            raise DiffheadsError(f"override '{text}': distill sets {name} itself ({SET_BY_DISTILL[name]}); remove it")
        if keys[0] not in CHANGEABLE and name != "model.dropout":
            raise DiffheadsError(
                f"override '{text}': a student keeps the teacher's network and diffusion; only optim.*, trainer.*, "
                "data.*, sample.* (not solver, steps, eta) and model.dropout can be set"
            )
        node = merged
        for part in keys[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DiffheadsError(f"override '{text}': '{part}' is not a section")
        node[keys[-1]] = value
    cfg = from_dict(merged, source="teacher config + distill overrides")
    return dataclasses.replace(
        cfg,
        diffusion=dataclasses.replace(cfg.diffusion, timestep_spacing=TimestepSpacing.TRAILING),
        sample=dataclasses.replace(cfg.sample, solver=Solver.DDIM, eta=0.0),
    )


def round_config(base: RunConfig, student_steps: int, out_dir: Path, steps_per_round: int) -> RunConfig:
    """`base` for the round that makes the `student_steps` student: its run folder, its length, its sampling steps."""
    trainer = dataclasses.replace(
        base.trainer, out_dir=str(out_dir), max_steps=steps_per_round, max_epochs=-1, resume="auto"
    )
    return dataclasses.replace(base, trainer=trainer, sample=dataclasses.replace(base.sample, steps=student_steps))


def check_steps(target_steps: int, teacher_steps: int, steps_per_round: int, n_timesteps: int) -> list[int]:
    """The student steps of each round (e.g. [4, 2, 1]), or a one-line error about the flags."""
    if target_steps < 1:
        raise DiffheadsError(f"--target-steps must be at least 1, got {target_steps}")
    if steps_per_round < 1:
        raise DiffheadsError(f"--steps-per-round must be at least 1, got {steps_per_round}")
    ratio = teacher_steps // target_steps
    if teacher_steps % target_steps or ratio < 2 or ratio & (ratio - 1):
        raise DiffheadsError(
            f"--teacher-steps {teacher_steps} must be --target-steps {target_steps} times a power of two "
            f"({', '.join(str(target_steps * 2**k) for k in (1, 2, 3))}, ...): each round halves the steps"
        )
    if teacher_steps > n_timesteps:
        raise DiffheadsError(f"--teacher-steps {teacher_steps} exceeds the model's {n_timesteps} diffusion steps")
    rounds, n = [], teacher_steps
    while n > target_steps:
        n //= 2
        rounds.append(n)
    return rounds


def _check_encoder(teacher: LoadedModel, cfg: RunConfig) -> dict[str, Any]:
    """The data's encoder description, or a one-line error when its embeddings do not fit the teacher."""
    unsized = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, audio_dim=None))
    _, encoder = resolve_config(unsized)
    want = teacher.audio_encoder
    dim = int(encoder["dim"])
    if dim != teacher.cfg.model.audio_dim or (want.get("name") and encoder.get("name") != want.get("name")):
        raise DiffheadsError(
            f"the embeddings of {cfg.data.root} come from encoder {encoder.get('name')} (width {dim}) but the teacher "
            f"was trained on {want.get('name', 'an encoder')} (width {teacher.cfg.model.audio_dim}); embed the data "
            "with the teacher's encoder (diffheads embed DATA --overwrite ...)"
        )
    return encoder


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    """Write OUT/distill.json, or check that an earlier run there had the same settings (so it can be resumed)."""
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = None
        if before != settings:
            diff = (
                ""
                if not isinstance(before, dict)
                else ", ".join(f"{k} {before.get(k)!r} (now {v!r})" for k, v in settings.items() if before.get(k) != v)
            )
            raise DiffheadsError(
                f"{path.parent} holds a distillation with other settings ({diff or 'unreadable ' + path.name}); "
                "rerun with the same ones to resume it, or choose another --out"
            )
        return
    if rank_zero_only.rank == 0:
        atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


# ---- the command -----------------------------------------------------------------------------------------
@dataclass
class RoundResult:
    """One round: the student it wrote and how it got there."""

    student_steps: int
    teacher_steps: int
    model_path: Path
    run_dir: Path
    steps: int  # optimizer steps the student has had
    final_loss: float | None
    status: str  # "trained", "resumed" (continued from the round's last checkpoint) or "done" (found finished)


@dataclass
class DistillResult:
    """Where a distillation left its students."""

    out_dir: Path
    rounds: list[RoundResult]
    global_rank: int = 0  # DDP: only rank 0 reports


@dataclass
class _Round:
    """What one round needs besides the config: the network that teaches it and where it came from."""

    teacher: torch.nn.Module
    teacher_clip: bool  # whether the teacher's own sampler clips x0 (its sample.clip_denoised)
    teacher_path: Path
    encoder: dict[str, Any]
    trained_on: dict[str, Any] | None
    record: dict[str, Any]  # the student's `distilled` record, less round_steps


def _train_round(
    cfg: RunConfig,
    r: _Round,
    dataset: Any,
    val: Any,
    model_path: Path,
    trust_checkpoint: bool,
    progress: bool,
    say: Callable[[str], None],
) -> tuple[RoundResult, torch.nn.Module, int]:
    """Train (or resume) one round in cfg.trainer.out_dir and write its student: (result, student, global rank)."""
    run_dir = Path(cfg.trainer.out_dir)
    n = cfg.sample.steps
    resume = _resume_path(cfg, run_dir / "checkpoints", trust_checkpoint)
    say(
        f"teacher DDIM {2 * n} steps -> student {n} steps, {cfg.trainer.max_steps} optimizer steps in {run_dir}"
        + (f" (resuming {resume})" if resume else "")
    )
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    student, teacher = copy.deepcopy(r.teacher).train().requires_grad_(True), copy.deepcopy(r.teacher)
    if cfg.trainer.channels_last:
        student, teacher = (m.to(memory_format=torch.channels_last) for m in (student, teacher))
    module = DistillationModule(student, teacher, cfg, n, r.teacher_clip, r.encoder)
    with output_dir(run_dir, "round folder"):
        trainer = fit_module(
            cfg,
            module,
            dataset,
            val,
            run_dir,
            resume,
            trust_checkpoint,
            progress,
            [RecordDistillation(r.trained_on, r.record)],
            label="distill",
        )
    sampling = module.sampling_network()
    if trainer.is_global_zero:
        save_model(
            model_path, sampling, cfg, r.encoder, r.trained_on, {**r.record, "round_steps": int(trainer.global_step)}
        )
    trainer.strategy.barrier("distill round written")  # DDP: the next round may read the file
    loss = trainer.callback_metrics.get("train/loss")
    result = RoundResult(
        n,
        2 * n,
        model_path,
        run_dir,
        int(trainer.global_step),
        float(loss) if loss is not None else None,
        "resumed" if resume else "trained",
    )
    return result, copy.deepcopy(sampling).cpu().eval().requires_grad_(False), trainer.global_rank


def _student_record(base: RunConfig, n: int, teacher_path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The `distilled` record of the `n`-step student taught by the model at `teacher_path` (less round_steps)."""
    return {
        "method": METHOD,
        "steps": n,
        "solver": Solver.DDIM.value,
        "timestep_spacing": TimestepSpacing.TRAILING.value,
        "timesteps": round_grid(base.diffusion.n_timesteps, n).student,
        "teacher_steps": 2 * n,
        "teacher": str(teacher_path),
        "first_teacher": settings["teacher"],
        "first_teacher_steps": settings["teacher_steps"],
        "data_root": settings["data"],
    }


def _finished_round(
    cfg: RunConfig, model_path: Path, trust_checkpoint: bool, say: Callable[[str], None]
) -> tuple[RoundResult, torch.nn.Module, bool]:
    """A round whose student was written before: its result, the student and whether it clips x0 (the next teacher)."""
    n = cfg.sample.steps
    done = load_model(model_path, "cpu", trust=trust_checkpoint)
    say(f"{model_path} is done ({2 * n} -> {n} steps)")
    steps = int((done.distilled or {}).get("round_steps", 0))
    result = RoundResult(n, 2 * n, model_path, Path(cfg.trainer.out_dir), steps, None, "done")
    return result, done.unet, done.cfg.sample.clip_denoised


def distill(
    teacher: str | Path,
    data: str | Path,
    out: str | Path,
    target_steps: int = 2,
    teacher_steps: int = 8,
    steps_per_round: int = 2000,
    overrides: Sequence[str] = (),
    trust_checkpoint: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> DistillResult:
    """Distil `teacher` (DDIM, `teacher_steps`) round by round into OUT/student_N.ckpt down to `target_steps`.

    Each round trains `steps_per_round` optimizer steps in OUT/round_N (Lightning checkpoints, logs, config;
    trainer.devices / strategy from the overrides as for `train`, not the teacher's). A rerun with the same settings
    skips finished rounds and resumes the current one from its last checkpoint. `log` receives one line per round
    (rank 0 only).
    """
    say = log if log is not None and rank_zero_only.rank == 0 else (lambda _: None)
    first = load_model(teacher, "cpu", trust=trust_checkpoint)
    check_teacher_prediction(first.cfg.diffusion.prediction)
    rounds = check_steps(target_steps, teacher_steps, steps_per_round, first.cfg.diffusion.n_timesteps)
    base = student_config(first.cfg, data, overrides)
    encoder = _check_encoder(first, base)
    base, _ = resolve_config(base)
    dataset, val, _ = training_data(base, lip_loss=bool(base.model.mouth_bank))  # a bank builds on true mouths
    p = first.provenance
    trained_on = {k: p[k] for k in TRAINED_ON_FIELDS if k in p} if p.get("recorded") else None
    settings = {
        "teacher": str(Path(teacher).resolve()),
        "data": str(Path(data).resolve()),
        "target_steps": target_steps,
        "teacher_steps": teacher_steps,
        "steps_per_round": steps_per_round,
        "overrides": list(overrides),
    }
    out_dir = Path(out)
    results: list[RoundResult] = []
    global_rank = 0
    with output_dir(out_dir, "--out"):
        _check_settings(out_dir / SETTINGS_FILE, settings)
        net, clip, net_path = first.unet, first.cfg.sample.clip_denoised, Path(teacher)
        for k, n in enumerate(rounds, 1):
            model_path = out_dir / f"student_{n}.ckpt"
            cfg = round_config(base, n, out_dir / f"round_{n}", steps_per_round)
            round_say = lambda line, k=k: say(f"round {k} of {len(rounds)}: {line}")  # noqa: E731
            if model_path.is_file():
                result, net, clip = _finished_round(cfg, model_path, trust_checkpoint, round_say)
            else:
                r = _Round(net, clip, net_path, encoder, trained_on, _student_record(base, n, net_path, settings))
                result, net, global_rank = _train_round(
                    cfg, r, dataset, val, model_path, trust_checkpoint, progress, round_say
                )
                clip = cfg.sample.clip_denoised
            results.append(result)
            net_path = model_path
    return DistillResult(out_dir, results, global_rank)
