"""Progressive distillation: the target against our DDIM sampler, nested grids, `diffheads distill` end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from diffheads.checkpoint import load_model
from diffheads.cli import main
from diffheads.conditioning import Conditioning
from diffheads.config import Prediction, Solver, TimestepSpacing, load_config
from diffheads.diffusion.gaussian import GaussianDiffusion
from diffheads.diffusion.samplers import sample_ddim
from diffheads.diffusion.schedule import respaced_timesteps, trailing_timesteps
from diffheads.io.audio import write_wav
from diffheads.io.image import write_png
from diffheads.io.video import read_video
from diffheads.models.unet import UNet
from diffheads.sample.runtime import sampling_process
from diffheads.training.distill import CLEAN, DistillationModule, distillation_target, round_grid
from runcli import run_cli
from tiny import TINY_MODEL, tiny_checkpoint, tiny_data


# ---- (b) grids --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_timesteps", [1000, 4000, 37])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 16])
def test_student_grid_is_every_other_point_of_the_teacher_grid(n_timesteps, n):
    if 2 * n > n_timesteps:
        pytest.skip("more steps than timesteps")
    student, teacher = trailing_timesteps(n_timesteps, n), trailing_timesteps(n_timesteps, 2 * n)
    assert student == teacher[1::2] and len(teacher) == 2 * n
    assert student[-1] == teacher[-1] == n_timesteps - 1  # both start from pure noise
    assert all(b > a for a, b in zip(teacher, teacher[1:])) and teacher[0] >= 0
    # the independent definition: round(T k / n) - 1 in exact rational arithmetic, halves rounded up
    from fractions import Fraction

    assert student == [int(Fraction(n_timesteps * k, n) + Fraction(1, 2)) - 1 for k in range(1, n + 1)]
    grid = round_grid(n_timesteps, n)
    assert (grid.student, grid.teacher) == (student, teacher)
    t, mid, end = grid.steps()
    assert t == student and mid == teacher[0::2] and end == [CLEAN, *student[:-1]]


def test_default_spacing_is_unchanged_and_why_distillation_needs_another():
    process = GaussianDiffusion.from_config(load_config(None).diffusion)
    assert process.with_steps(4).schedule.timesteps.tolist() == [0, 333, 666, 999] == respaced_timesteps(1000, 4)
    assert process.with_steps(100).schedule.timesteps.tolist() == respaced_timesteps(1000, 100)
    assert not set(respaced_timesteps(1000, 4)) <= set(respaced_timesteps(1000, 8))  # the reference grids do not nest


@pytest.mark.parametrize("n", [1, 2, 4])
def test_a_student_config_samples_on_exactly_its_grid(n):
    cfg = load_config(None, ["diffusion.timestep_spacing=trailing", "diffusion.prediction=v"])
    full = GaussianDiffusion.from_config(cfg.diffusion)
    process = full.with_steps(n)
    assert process.schedule.timesteps.tolist() == round_grid(1000, n).student
    kept = process.schedule.timesteps
    assert torch.equal(process.schedule.alpha_bar, full.schedule.alpha_bar[kept])  # no drift through a cumprod
    assert process.schedule.alpha_bar_prev[0] == 1.0  # the last step lands on the clean frame


# ---- (a) the target -----------------------------------------------------------------------------------
def _random_teacher(prediction: str) -> tuple[UNet, GaussianDiffusion, Conditioning]:
    """A tiny UNet with random weights (its zero-initialised output layer too), its full process, a conditioning."""
    cfg = load_config(None, [*TINY_MODEL, "model.audio_dim=8", f"diffusion.prediction={prediction}"])
    torch.manual_seed(0)
    unet = UNet(cfg.model).eval()
    with torch.no_grad():
        for p in unet.out.parameters():
            p.normal_(0.0, 0.5)
    cond = Conditioning(
        identity_frame=torch.rand(3, 3, 16, 16) * 2 - 1,
        motion_frames=torch.rand(3, 2, 16, 16) * 2 - 1,
        audio_window=torch.randn(3, 5, 8),
    )
    return unet, GaussianDiffusion.from_config(cfg.diffusion), cond


def _as_output(x0: torch.Tensor, z: torch.Tensor, t: int, full: GaussianDiffusion) -> torch.Tensor:
    """The 6-channel network output whose mean half predicts `x0` at (z, t): x0 itself, or v = (alpha z - x0) / sigma."""
    abar = full.schedule.alpha_bar[t].item()
    if full.cfg.prediction == Prediction.X0:
        mean = x0
    else:
        mean = (abar**0.5 * z.double() - x0.double()) / (1.0 - abar) ** 0.5
    return torch.cat([mean.float(), torch.zeros_like(x0)], dim=1)


def _ddim_run(denoiser, z: torch.Tensor, process: GaussianDiffusion, clip: bool) -> list[torch.Tensor]:
    """sample_ddim from z over `process`: the input of every network call, then the result."""
    seen = []

    def recording(x, t):
        seen.append(x.clone())
        return denoiser(x, t)

    seen.append(sample_ddim(recording, z, process, clip_denoised=clip))
    return seen


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("clip", [True, False], ids=["teacher-clips", "no-clip"])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_one_student_step_to_the_target_equals_two_teacher_ddim_steps(prediction, clip, n):
    unet, full, cond = _random_teacher(prediction)
    teacher = lambda x, t: unet(x, t, cond)  # noqa: E731
    grid = round_grid(1000, n)
    g = torch.Generator().manual_seed(1)
    for i in range(1, n + 1):  # student position i (1-based) at t = student[i-1] = teacher[2i-1]
        t, t_mid = grid.student[i - 1], grid.teacher[2 * i - 2]
        t_end = grid.teacher[2 * i - 3] if i > 1 else CLEAN
        x0 = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
        z = full.q_sample(x0, torch.full((3,), t), torch.randn(3, 3, 16, 16, generator=g))
        target = distillation_target(teacher, full, z, *(torch.full((3,), v) for v in (t, t_mid, t_end)), clip)
        # our DDIM sampler on the teacher's grid from z_t: its third call sees z_t'' (or its result is the frame)
        with torch.no_grad():
            teacher_run = _ddim_run(teacher, z, full.keep(grid.teacher[: 2 * i]), clip)
        teacher_end = teacher_run[2]
        # the same sampler on the student's grid, one step whose prediction is the target
        student = lambda x, tt: _as_output(target, z, t, full) if torch.equal(x, z) else torch.zeros(3, 6, 16, 16)  # noqa: E731
        student_run = _ddim_run(student, z, full.keep(grid.student[:i]), clip=False)
        student_end = student_run[1]
        assert len(teacher_run) == 2 * i + 1 and len(student_run) == i + 1
        torch.testing.assert_close(student_end, teacher_end, atol=2e-5, rtol=1e-5)
        # and the test can fail: the teacher's own x0 at t, taken in one step, lands elsewhere
        with torch.no_grad():
            own = full.p_mean_variance(teacher(z, torch.full((3,), t)), z, torch.full((3,), t), clip)["x0"]
        one_step = _ddim_run(lambda x, tt: _as_output(own, z, t, full), z, full.keep(grid.student[:i]), False)[1]
        assert (one_step - teacher_end).abs().max() > 1e-2


# ---- (d) a toy the student can learn exactly ------------------------------------------------------------
MU, S = 0.3, 0.5  # data: every pixel N(MU, S^2)


class AffineV(torch.nn.Module):
    """v = a_t x + b_t per timestep, blind to the conditioning: holds the Gaussian data's exact denoiser."""

    def __init__(self, full: GaussianDiffusion):
        super().__init__()
        abar = full.schedule.alpha_bar.double()
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        gain = alpha * S**2 / (abar * S**2 + sigma**2)  # E[x0 | z_t] = MU + gain (z_t - alpha MU)
        self.a = torch.nn.Parameter(((alpha - gain) / sigma).float())  # v = (alpha z - E[x0 | z]) / sigma
        self.b = torch.nn.Parameter((-(MU - gain * alpha * MU) / sigma).float())

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.a[t].view(-1, 1, 1, 1) * x + self.b[t].view(-1, 1, 1, 1)


@pytest.mark.parametrize("n", [1, 2])
def test_distilling_a_toy_brings_the_student_to_the_teacher_with_half_the_steps(n):
    cfg = load_config(
        None,
        [
            "diffusion.prediction=v",
            "diffusion.learn_sigma=false",
            "trainer.max_steps=300",
            "diffusion.timestep_spacing=trailing",
        ],
    )
    full = GaussianDiffusion.from_config(cfg.diffusion)
    teacher = AffineV(full)
    module = DistillationModule(copy.deepcopy(teacher), teacher, cfg, student_steps=n, teacher_clip=False)
    none = Conditioning(torch.zeros(64, 3, 8, 8), torch.zeros(64, 2, 8, 8), torch.zeros(64, 5, 1))
    z = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the teacher's 2n DDIM steps, on its own grid
        teacher_frames = sample_ddim(
            lambda x, t: teacher(x, t, none), z, full.keep(round_grid(1000, n).teacher), clip_denoised=False
        )

    def student_error() -> float:  # the student's n DDIM steps, sampled as generate samples a student
        with torch.no_grad():
            frames = sample_ddim(lambda x, t: module.unet(x, t, none), z, full.with_steps(n), clip_denoised=False)
        return float((frames - teacher_frames).abs().mean())

    before = student_error()
    opt = torch.optim.Adam(module.unet.parameters(), lr=2e-2)
    torch.manual_seed(0)
    for _ in range(300):
        x0 = MU + S * torch.randn(16, 3, 8, 8)
        batch = {
            "target": x0,
            "identity_frame": x0 * 0,
            "motion_frames": torch.zeros(16, 2, 8, 8),
            "audio_window": torch.zeros(16, 5, 1),
        }
        opt.zero_grad()
        module.compute_losses(batch)["loss"].backward()
        opt.step()
    after = student_error()
    assert before > 0.05 and after < 0.02 * before, (before, after)
    assert float(teacher_frames.std()) > 0.15  # the teacher's frames vary with the noise: a target worth matching


# ---- (c) the command end to end ---------------------------------------------------------------------------
SMALL = [
    "optim.batch_size=4",
    "data.examples_per_clip=4",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
    "trainer.checkpoint_every_n_steps=1",
    "optim.ema_decay=0.5",
]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory) -> dict[str, Path]:
    """A 16 px synthetic dataset, a random v-prediction teacher and `diffheads distill` 4 -> 2 -> 1, 2 steps a round."""
    root = tmp_path_factory.mktemp("distill")
    data = root / "data"
    tiny_data(data)
    teacher = tiny_checkpoint(
        root / "teacher.ckpt", "diffusion.prediction=v", "sample.solver=dpm++2m", "sample.steps=6"
    )
    out = root / "out"
    args = [
        "distill",
        "--teacher",
        str(teacher),
        "--data",
        str(data),
        "--out",
        str(out),
        "--target-steps",
        "1",
        "--teacher-steps",
        "4",
        "--steps-per-round",
        "2",
        "--quiet",
        *SMALL,
    ]
    result = run_cli(*args)
    return {"data": data, "teacher": teacher, "out": out, "args": args, "result": result}


def test_distill_writes_one_ordinary_model_file_per_round(distilled):
    out, result = distilled["out"], distilled["result"]
    assert result["students"] == {"2": str(out / "student_2.ckpt"), "1": str(out / "student_1.ckpt")}
    assert [(r["teacher_steps"], r["student_steps"], r["steps"], r["status"]) for r in result["rounds"]] == [
        (4, 2, 2, "trained"),
        (2, 1, 2, "trained"),
    ]
    teacher = load_model(distilled["teacher"])
    for n in (2, 1):
        student = load_model(out / f"student_{n}.ckpt")
        s = student.cfg.sample
        assert (s.solver, s.steps, s.eta, s.clip_denoised) == (Solver.DDIM, n, 0.0, False)
        assert student.cfg.diffusion.timestep_spacing == TimestepSpacing.TRAILING
        assert student.cfg.model == teacher.cfg.model and student.audio_encoder == teacher.audio_encoder
        record = student.distilled
        assert record["steps"] == n and record["solver"] == "ddim" and record["teacher_steps"] == 2 * n
        assert record["timesteps"] == round_grid(1000, n).student and record["round_steps"] == 2
        assert record["teacher"] == str(distilled["teacher"] if n == 2 else out / "student_2.ckpt")
        # the default sampling of the file is exactly the student's grid
        assert sampling_process(student, s).schedule.timesteps.tolist() == round_grid(1000, n).student
        # trained: the weights moved away from the teacher's
        a = safetensors.torch.load_file(str(out / f"student_{n}.ckpt"))
        assert any(not torch.equal(a[k], v) for k, v in teacher.unet.state_dict().items())
        # each round is a resumable Lightning run whose checkpoints rebuild the student
        last = load_model(out / f"round_{n}" / "checkpoints" / "last.ckpt")
        assert last.cfg.sample.steps == n and last.distilled["steps"] == n
    assert load_model(distilled["teacher"]).distilled is None
    assert json.loads((out / "distill.json").read_text())["steps_per_round"] == 2


def _count_calls(monkeypatch) -> list[int]:
    calls = [0]
    real = UNet.forward

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(UNet, "forward", counting)
    return calls


@pytest.mark.parametrize("n", [1, 2])
def test_students_load_in_generate_and_animate_with_their_own_steps(distilled, tmp_path, monkeypatch, n):
    model = distilled["out"] / f"student_{n}.ckpt"
    calls = _count_calls(monkeypatch)
    res = run_cli(
        "generate",
        "--checkpoint",
        str(model),
        "--data",
        str(distilled["data"]),
        "--out",
        str(tmp_path / "g"),
        "--max-frames",
        "3",
        "--quiet",
    )
    assert res["written"] == 2 and calls[0] == 3 * n  # 2 clips of 3 frames sampled together: n calls a frame
    for mp4 in (tmp_path / "g").rglob("*.mp4"):
        assert read_video(mp4)[0].shape == (3, 16, 16, 3)
    write_png(tmp_path / "face.png", (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    write_wav(tmp_path / "v.wav", (0.3 * np.sin(np.arange(4000) / 5)).astype(np.float32), 16000)
    calls[0] = 0
    run_cli(
        "animate",
        "--checkpoint",
        str(model),
        "--image",
        str(tmp_path / "face.png"),
        "--audio",
        str(tmp_path / "v.wav"),
        "--output",
        str(tmp_path / "a.mp4"),
        "--quiet",
        "--no-align",
    )
    frames = read_video(tmp_path / "a.mp4")[0]
    assert frames.shape == (6, 16, 16, 3) and calls[0] == 6 * n  # 0.25 s -> 6 frames
    run_cli(
        "generate",
        "--checkpoint",
        str(model),
        "--data",
        str(distilled["data"]),
        "--out",
        str(tmp_path / "g4"),
        "--max-frames",
        "2",
        "--steps",
        "4",
        "--quiet",
    )  # other step counts still work (off the trained grid)
    calls[0] = 0
    streamed = run_cli(
        "stream",
        "--checkpoint",
        str(model),
        "--image",
        str(tmp_path / "face.png"),
        "--audio",
        str(tmp_path / "v.wav"),
        "--output",
        str(tmp_path / "s.mp4"),
        "--quiet",
        "--no-align",
    )
    assert streamed["frames"] == 6 and calls[0] == 6 * n
    # the app starts a student on its own sampler and steps (a trained model on the page's fast default)
    from diffheads.app.engine import Settings, Studio

    assert Studio(load_model(model), "student", "cpu").default_settings() == Settings(solver="ddim", steps=n)
    assert Studio(load_model(distilled["teacher"]), "teacher", "cpu").default_settings() == Settings()


def test_rerun_resumes_and_skips_finished_rounds(distilled, tmp_path, capsys, monkeypatch):
    import shutil

    from diffheads.training import distill as distill_mod

    out = tmp_path / "out"
    shutil.copytree(distilled["out"], out)
    args = [a if a != str(distilled["out"]) else str(out) for a in distilled["args"]]
    steps = [0]
    real = distill_mod.DistillationModule.compute_losses

    def counted(self, batch):
        steps[0] += 1
        return real(self, batch)

    monkeypatch.setattr(distill_mod.DistillationModule, "compute_losses", counted)
    again = run_cli(*args)
    assert [r["status"] for r in again["rounds"]] == ["done", "done"] and steps[0] == 0
    first, last = out / "student_2.ckpt", out / "student_1.ckpt"
    before = first.read_bytes(), safetensors.torch.load_file(str(last))
    # killed after step 1 of the last round, before its model was written: its last checkpoint is step 1's
    last.unlink()
    ckpts = out / "round_1" / "checkpoints"
    shutil.copy(ckpts / "step0000001.ckpt", ckpts / "last.ckpt")
    resumed = run_cli(*args)
    assert [(r["status"], r["steps"]) for r in resumed["rounds"]] == [("done", 2), ("resumed", 2)]
    assert steps[0] == 1  # only the missing step ran
    assert first.read_bytes() == before[0]
    after = safetensors.torch.load_file(str(last))  # the student is bit for bit the uninterrupted run's
    assert after.keys() == before[1].keys() and all(torch.equal(after[k], v) for k, v in before[1].items())
    changed = [a if a != "2" or args[i - 1] != "--steps-per-round" else "3" for i, a in enumerate(args)]
    assert main(changed) == 2
    err = capsys.readouterr().err.strip()
    assert "other settings" in err and "steps_per_round 2 (now 3)" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--teacher-steps", "6"], "must be --target-steps 1 times a power of two"),
        (["--target-steps", "0"], "--target-steps must be at least 1"),
        (["model.model_channels=64"], "keeps the teacher's network"),
        (["sample.steps=3"], "distill sets sample.steps itself"),
        (["trainer.out_dir=x"], "distill sets trainer.out_dir itself"),
    ],
)
def test_bad_distill_input_gives_one_line_error(distilled, tmp_path, capsys, extra, message):
    args = [
        "distill",
        "--teacher",
        str(distilled["teacher"]),
        "--data",
        str(distilled["data"]),
        "--out",
        str(tmp_path / "o"),
        "--target-steps",
        "1",
        "--quiet",
        *extra,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_an_eps_teacher_is_refused(distilled, tmp_path, capsys):
    eps = tiny_checkpoint(tmp_path / "eps.ckpt")
    assert main(["distill", "--teacher", str(eps), "--data", str(distilled["data"]), "--out", str(tmp_path / "o")]) == 2
    assert "predicts eps" in capsys.readouterr().err
