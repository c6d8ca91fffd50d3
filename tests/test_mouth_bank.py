"""model.mouth_bank: the person's own mouths pasted by predicted shape into the frame the network starts from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffheads.config import DiffusedTarget, DiffusionConfig, ModelConfig, Prediction, SampleConfig, Solver
from diffheads.data.frame_cache import decode_resized
from diffheads.data.layout import DataLayout
from diffheads.data.mouth_bank import collect_mouth_bank, kmeans_representatives, mouth_frames
from diffheads.diffusion.gaussian import GaussianDiffusion
from diffheads.diffusion.video import FrameStepper, sample_video
from diffheads.errors import DiffheadsError
from diffheads.models.mouth_bank import MouthBank, MouthPredictor, box_pixels, feather_mask
from diffheads.models.mouth_sketch import mouth_shape
from diffheads.training.mouth_bank import fit_mouth_predictor
from runcli import run_cli
from tiny import TINY_TRAINING, tiny_data


def test_feather_mask_ramps_to_zero_at_the_edges():
    mask = feather_mask(8, 10, ramp=2.0)[0]
    # pixel centres 0.5 px from the edge: 0.25 of the ramp; 1.5 px: 0.75; from 2 px on: 1
    assert float(mask[0, 5]) == pytest.approx(0.25)
    assert float(mask[1, 5]) == pytest.approx(0.75)
    assert float(mask[4, 5]) == 1.0 and float(mask[0, 0]) == pytest.approx(0.25)
    assert float(mask[1, 0]) == pytest.approx(0.25)  # the nearer edge (the left one) decides


def _bank(k: int = 3) -> MouthBank:
    bank = MouthBank(k, [0.5, 1.0, 0.25, 0.75], image_size=8, neighbours=2)
    shapes = torch.zeros(k, 20, 2)
    shapes[:, 0, 1] = torch.arange(k, dtype=torch.float32) * 10  # entries 10 units apart along one coordinate
    pixels = torch.arange(k, dtype=torch.float32).view(k, 1, 1, 1).expand(k, 3, 4, 4) / 10  # entry j is j / 10
    bank.fill(shapes, pixels)
    return bank


def test_bank_blends_its_nearest_mouths_by_inverse_squared_distance():
    bank = _bank()
    query = torch.zeros(3, 20, 2)
    query[:, 0, 1] = torch.tensor([20.0, 5.0, 2.0])  # on entry 2; halfway 0-1; a fifth of the way 0-1
    mouths = bank.mouths(query)
    assert float(mouths[0].mean()) == pytest.approx(0.2, abs=1e-6)
    assert float(mouths[1].mean()) == pytest.approx(0.05, abs=1e-6)
    w0, w1 = 1 / (4 + 1e-4), 1 / (64 + 1e-4)  # squared distances 2^2 and 8^2
    assert float(mouths[2].mean()) == pytest.approx((0.0 * w0 + 0.1 * w1) / (w0 + w1), abs=1e-6)


def test_base_frame_pastes_the_mouth_into_the_box_only():
    bank = _bank()
    identity = torch.full((1, 3, 8, 8), -0.5)
    query = torch.zeros(1, 20, 2)
    query[:, 0, 1] = 20.0
    base = bank.base(identity, query)
    top, bottom, left, right = box_pixels([0.5, 1.0, 0.25, 0.75], 8)
    assert (top, bottom, left, right) == (4, 8, 2, 6)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[4:8, 2:6] = False
    assert torch.equal(base[0][:, outside], identity[0][:, outside])
    mask = feather_mask(4, 4, 3.0 / 64.0 * 8)[0]  # 0.375 px ramp: 0.5 px centres are already past it
    want = -0.5 + mask * (0.2 + 0.5)
    torch.testing.assert_close(base[0, 0, 4:8, 2:6], want)
    assert float(base[0, 0, 5, 3]) == pytest.approx(0.2)


def test_kmeans_picks_one_frame_of_each_cluster():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(0, 0.1, (50, 2)) for c in centres])
    chosen = kmeans_representatives(x, 3, seed=0)
    assert sorted(chosen // 50) == [0, 1, 2]


def test_predictor_fit_recovers_a_linear_mouth_from_the_audio():
    g = torch.Generator().manual_seed(0)
    windows = torch.randn(2000, 3, 4, generator=g)
    mix = torch.randn(12, 40, generator=g) * 0.3
    shapes = (windows.flatten(1) @ mix).view(-1, 20, 2) + 2.0
    predictor = MouthPredictor(12, hidden=64, dropout=0.0)
    fit_mouth_predictor(predictor, windows[:1500], shapes[:1500], seed=0)
    assert not predictor.training and not any(p.requires_grad for p in predictor.parameters())
    with torch.no_grad():
        pred = predictor(windows[1500:])
    r = np.corrcoef(pred.flatten().numpy(), shapes[1500:].flatten().numpy())[0, 1]
    assert r > 0.95  # held out; a predictor that ignored the audio would give the mean shape (r ~ 0)


def test_bank_entries_are_cut_from_their_frames_around_their_mouths(tmp_path: Path):
    data = tmp_path / "data"
    tiny_data(data)
    layout = DataLayout.of(data)
    ids = layout.clips("train")
    frames = mouth_frames(layout, ids, 16, k=1)
    assert frames.windows.shape[1:] == (3, 200) and len(frames.windows) == len(frames.points)
    box = [0.5, 1.0, 0.25, 0.75]
    shapes, (pixels,) = collect_mouth_bank(frames, layout, [16], 4, box, seed=0)
    all_shapes = mouth_shape(torch.from_numpy(frames.points), 16)
    mean_centre = frames.points.mean(axis=(0, 1))
    decoded = {cid: decode_resized(layout.video(cid), 16)[0] for cid in ids}
    for shape, cut in zip(shapes, pixels, strict=True):
        row = int(torch.cdist(shape.flatten()[None], all_shapes.flatten(1)).argmin())  # the frame it came from
        cid, t = ids[frames.where[row, 0]], frames.where[row, 1]
        dx, dy = np.round(frames.points[row].mean(0) - mean_centre).astype(int)
        image = np.pad(decoded[cid][t], ((16, 16), (16, 16), (0, 0)), mode="edge")
        want = image[16 + 8 + dy : 16 + 16 + dy, 16 + 4 + dx : 16 + 12 + dx].astype(np.float32) / 127.5 - 1.0
        np.testing.assert_allclose(cut.permute(1, 2, 0).numpy(), want, atol=1e-6)


class ConstantResidual(torch.nn.Module):
    """A mouth-bank network stub that predicts x0 = `value` (the scaled residual) and records what it is given."""

    def __init__(self, bank: MouthBank, predictor: MouthPredictor, value: float = 0.0, bank_out: MouthBank = None):
        super().__init__()
        self.bank, self.bank_out, self.predictor, self.value, self.seen = bank, bank_out, predictor, value, []

    def base_frame(self, identity, window, output=False):  # noqa: ANN001, ANN201
        return (self.bank_out if output else self.bank).base(identity, self.predictor(window))

    def forward(self, x, t, cond):  # noqa: ANN001, ANN201
        self.seen.append(cond.identity_frame)
        return torch.cat([torch.full_like(x, self.value), torch.zeros_like(x)], dim=1)


def _fixed_predictor() -> MouthPredictor:
    """A predictor that asks for entry 2 of `_bank()` whatever it hears."""
    predictor = MouthPredictor(3 * 1, hidden=4, dropout=0.0)
    torch.nn.init.zeros_(predictor.mlp[-1].weight)
    torch.nn.init.zeros_(predictor.mlp[-1].bias)
    predictor.shape_mean[0, 1] = 20.0
    return predictor.eval()


def test_video_loop_starts_each_frame_from_the_mouth_its_audio_asks_for():
    k, steps = 1, 2
    mcfg = ModelConfig(image_size=8, n_motion_frames=1, n_audio_motion_embs=k, grayscale_motion=False, mouth_bank=3)
    dcfg = DiffusionConfig(prediction=Prediction.X0, target=DiffusedTarget.RESIDUAL)
    process = GaussianDiffusion.from_config(dcfg).respace(steps)
    predictor = _fixed_predictor()
    model = ConstantResidual(_bank(), predictor)
    identity = torch.full((1, 3, 8, 8), -0.5)
    sample = SampleConfig(solver=Solver.DDIM, steps=steps, clip_denoised=True)
    (clip,) = sample_video(
        model, process, identity, [torch.zeros(3, 1)], mcfg, sample, torch.Generator().manual_seed(0), progress=False
    )
    want = _bank().base(identity, predictor.shape_mean[None])[0]
    for frame in clip:
        torch.testing.assert_close(frame, want)  # zero residual: the base frame itself
    assert float(clip[0][0, 5, 3]) == pytest.approx(0.2)  # the bank's mouth, not the identity frame's -0.5
    torch.testing.assert_close(model.seen[0][0], want)  # the network saw the base as its identity frame
    with pytest.raises(TypeError, match="base_frame"):
        FrameStepper(torch.nn.Identity(), process, identity, mcfg, sample)


def test_output_size_adds_the_upsampled_residual_to_the_base_at_that_size():
    k, steps, scale = 1, 2, 4.0
    mcfg = ModelConfig(
        image_size=8, output_size=16, n_motion_frames=1, n_audio_motion_embs=k, grayscale_motion=False, mouth_bank=3
    )
    dcfg = DiffusionConfig(prediction=Prediction.X0, target=DiffusedTarget.RESIDUAL, residual_scale=scale)
    process = GaussianDiffusion.from_config(dcfg).respace(steps)
    bank_out = MouthBank(3, [0.5, 1.0, 0.25, 0.75], image_size=16, neighbours=2)
    bank_out.fill(_bank().shapes, torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 8, 8) / -10)  # entry j: -j / 10
    predictor = _fixed_predictor()
    model = ConstantResidual(_bank(), predictor, value=0.4, bank_out=bank_out)
    identity = torch.linspace(-0.8, 0.8, 16).view(1, 1, 1, 16).expand(1, 3, 16, 16).contiguous()
    sample = SampleConfig(solver=Solver.DDIM, steps=steps, clip_denoised=True)
    (clip,) = sample_video(
        model, process, identity, [torch.zeros(2, 1)], mcfg, sample, torch.Generator().manual_seed(0), progress=False
    )
    assert clip.shape == (2, 3, 16, 16)
    # the network saw the identity frame at 8 px: away from the borders, halving a linear ramp with a symmetric
    # filter gives the mean of each 2 x 2 block
    small = identity.view(1, 3, 8, 2, 8, 2).mean(dim=(3, 5))
    seen = model.seen[0]
    torch.testing.assert_close(seen[..., :4, 1:7], small[..., :4, 1:7], atol=1e-5, rtol=0)  # above the mouth box
    # a constant residual of 0.4 / scale upsamples to itself: out = 16 px base + 0.1
    want = (bank_out.base(identity, predictor.shape_mean[None]) + 0.4 / scale).clamp(-1, 1)[0]
    torch.testing.assert_close(clip[1], want, atol=1e-5, rtol=0)
    assert float(clip[1][0, 12, 8]) == pytest.approx(-0.2 + 0.1, abs=1e-5)  # the 16 px bank's mouth (entry 2)


def test_mouth_bank_config_is_checked():
    with pytest.raises(DiffheadsError, match="mouth_bank_box"):
        ModelConfig(mouth_bank=4, mouth_bank_box=[0.9, 0.6, 0.2, 0.8])
    with pytest.raises(DiffheadsError, match="mouth_bank must be 0"):
        ModelConfig(mouth_bank=-1)


@pytest.mark.slow
def test_a_trained_mouth_bank_model_carries_its_bank_and_makes_videos_at_its_output_size(tmp_path: Path):
    from diffheads.checkpoint import load_model
    from diffheads.io.video import read_video

    data, run = tmp_path / "data", tmp_path / "run"
    tiny_data(data)  # 16 px clips
    overrides = ["model.image_size=8", "model.output_size=16", "model.mouth_bank=4", "diffusion.target=residual"]
    res = run_cli(
        "train", "configs/demo.yaml", f"data.root={data}", f"trainer.out_dir={run}", *TINY_TRAINING, *overrides
    )
    model = load_model(res["model"])
    for bank, side in ((model.unet.mouth_bank, 8), (model.unet.mouth_bank_out, 16)):
        assert bool(bank.filled) and float(bank.pixels.abs().sum()) > 0
        assert (
            bank.pixels.shape[-1]
            == box_pixels([0.62, 0.9, 0.28, 0.72], side)[3] - box_pixels([0.62, 0.9, 0.28, 0.72], side)[2]
        )
    torch.testing.assert_close(model.unet.mouth_bank.shapes, model.unet.mouth_bank_out.shapes)
    assert float(model.unet.mouth_predictor.input_scale.min()) > 0
    gen = tmp_path / "gen"
    run_cli(
        "generate",
        "--checkpoint",
        res["model"],
        "--data",
        str(data),
        "--out",
        str(gen),
        "--quiet",
        "--steps",
        "2",
        "--max-frames",
        "4",
    )
    videos = sorted(gen.rglob("*.mp4"))
    assert videos
    frames, _ = read_video(videos[0])
    assert frames.shape[1:] == (16, 16, 3) and len(frames) == 4
