"""Fill a model.mouth_bank network's bank and fit its mouth predictor before the diffusion training starts.

Both come from the training clips alone (data/mouth_bank.py): the bank from k-means over their mouth shapes, the
predictor (audio window -> mouth shape, models/mouth_bank.py) by a short regression over every frame. The fit
runs in a forked random state, so the diffusion training draws what it would draw without it; its result is the
same for the same data and seed, so a resumed run refits the same bank (the checkpoint restores it anyway).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffheads.config import RunConfig
from diffheads.data.layout import DataLayout
from diffheads.data.mouth_bank import collect_mouth_bank, mouth_frames
from diffheads.models.mouth_bank import MouthPredictor
from diffheads.models.mouth_sketch import mouth_shape
from diffheads.models.unet import UNet

PREDICTOR_STEPS = 2000  # held-out GRID s1: clip-centred r of the predicted inner-lip gap 0.87 (2-core CPU: ~15 s)
PREDICTOR_BATCH = 256
PREDICTOR_LR = 1e-3
PREDICTOR_WEIGHT_DECAY = 1e-2


def fit_mouth_predictor(predictor: MouthPredictor, windows: torch.Tensor, shapes: torch.Tensor, seed: int) -> float:
    """Fit `predictor` to map (N, 2k+1, D) windows to (N, 20, 2) shapes (AdamW, cosine decay); returns the last
    batch's mean squared error. The predictor is left frozen in eval mode."""
    flat = windows.flatten(1)
    predictor.input_mean.copy_(flat.mean(0))
    predictor.input_scale.copy_(flat.std(0) + 1e-5)
    predictor.shape_mean.copy_(shapes.mean(0))
    predictor.train().requires_grad_(True)
    opt = torch.optim.AdamW(predictor.parameters(), PREDICTOR_LR, weight_decay=PREDICTOR_WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, PREDICTOR_STEPS)
    generator = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    for _ in range(PREDICTOR_STEPS):
        pick = torch.randint(0, len(flat), (min(PREDICTOR_BATCH, len(flat)),), generator=generator)
        loss = F.mse_loss(predictor(windows[pick]), shapes[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    predictor.eval().requires_grad_(False)
    return float(loss.detach())


def prepare_mouth_bank(unet: UNet, cfg: RunConfig, layout: DataLayout, clip_ids: list[str]) -> dict[str, float]:
    """Fill `unet`'s mouth bank and fit its predictor from the training clips; returns what was done."""
    m = cfg.model
    frames = mouth_frames(layout, clip_ids, m.image_size, m.n_audio_motion_embs)
    sizes = [m.image_size] if m.frame_size == m.image_size else [m.image_size, m.frame_size]
    shapes, pixels = collect_mouth_bank(frames, layout, sizes, m.mouth_bank, m.mouth_bank_box, cfg.trainer.seed)
    unet.mouth_bank.fill(shapes, pixels[0])
    if len(pixels) > 1:
        unet.mouth_bank_out.fill(shapes, pixels[1])
    truth = mouth_shape(torch.from_numpy(frames.points), m.image_size)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.trainer.seed)
        loss = fit_mouth_predictor(unet.mouth_predictor, frames.windows, truth, cfg.trainer.seed)
    return {"mouth_bank_entries": m.mouth_bank, "mouth_frames": len(truth), "mouth_predictor_mse": loss}
