"""Every conditioning variant of the reference UNet: its parameter layout, its arithmetic, import and golden check.

Independent of diffheads.models: `reference_layout` lists the blocks the reference constructor builds
(MStypulkowski/diffused-heads, training branch, models/unet.py and models/blocks.py, read by hand:
UNet.__init__, IdentityEncoder, CondResBlock, ResBlock, AttentionBlock, CondAttentionBlock), and from
that layout `reference_keys` writes the (name, shape) rows its state_dict would have and
`reference_forward` computes the reference forward pass with torch.nn.functional on a plain state
dict. The layout is anchored by the measured key list of the default variant
(`unet_keys_training_config.tsv`, 324 rows at the paper's size).
"""

from __future__ import annotations

import copy
import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

from diffheads.checkpoint import load_model
from diffheads.cli import main
from diffheads.conditioning import Conditioning
from diffheads.config import AudioCondition, IdCondition
from diffheads.errors import DiffheadsError
from diffheads.models.blocks import set_attention
from diffheads.models.unet import UNet, count_parameters
from diffheads.reference.convert import ReferenceOptions, import_reference, infer_model_config
from diffheads.reference.golden import check_golden, reference_model_config

REFERENCE_IDS = ("frame", "pre_gn", "post_gn")
REFERENCE_AUDIO = ("pre_gn", "post_gn", "double_pre_gn", "attention")
COMBOS = list(itertools.product(REFERENCE_IDS, REFERENCE_AUDIO))
GROUPS = 32  # every GroupNorm of the reference has 32 groups

# the reference constructor's keyword arguments (their names), tiny: 16 px, C = 32, levels 16 px (32 ch) and 8 px (64 ch),
# attention at 8 px with 2 heads of 32
TINY = dict(
    image_size=16,
    in_channels=3,
    model_channels=32,
    out_channels=6,
    num_res_blocks=1,
    attention_resolutions=[8],
    dropout=0.0,
    channel_mult=[1, 2],
    num_heads=4,
    num_head_channels=32,
    resblock_updown=True,
    precision=32,
    n_motion_frames=2,
    grayscale_motion=True,
    n_audio_motion_embs=2,
)
# three levels, two res blocks, 4 heads of 16 (num_head_channels -1), attention at two levels, colour motion
WIDE = dict(
    TINY,
    image_size=16,
    channel_mult=[1, 1, 2],
    num_res_blocks=2,
    attention_resolutions=[8, 4],
    num_head_channels=-1,
    num_heads=4,
    grayscale_motion=False,
)
ONE_HEAD = dict(TINY, num_head_channels=-1, num_heads=1)  # with one head the audio attention is plain cross-attention
PAPER = dict(
    image_size=128,
    in_channels=3,
    model_channels=256,
    out_channels=6,
    num_res_blocks=2,
    attention_resolutions=[32],
    dropout=0.1,
    channel_mult=[1, 2, 3],
    num_heads=4,
    num_head_channels=64,
    resblock_updown=True,
    precision=32,
    n_motion_frames=2,
    grayscale_motion=True,
    n_audio_motion_embs=2,
)
PAPER_COUNTS = {  # parameters at the paper's size (grayscale motion), as docs/model.md lists them
    ("frame", "pre_gn"): 192_648_198,
    ("frame", "post_gn"): 204_193_798,
    ("frame", "double_pre_gn"): 215_739_398,
    ("frame", "attention"): 198_955_014,
    ("pre_gn", "pre_gn"): 258_298_886,
    ("pre_gn", "post_gn"): 269_844_486,
    ("pre_gn", "double_pre_gn"): 281_390_086,
    ("pre_gn", "attention"): 264_605_702,
    ("post_gn", "pre_gn"): 269_844_486,
    ("post_gn", "post_gn"): 281_390_086,
    ("post_gn", "double_pre_gn"): 292_935_686,
    ("post_gn", "attention"): 276_151_302,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def variant(cfg: dict, identity: str, audio: str) -> dict:
    return {**cfg, "id_condition_type": identity, "audio_condition_type": audio}


# the reference's module tree, written out by hand ------------------------------------------------------
# A layer is ("conv", c_in, c_out) | ("res", c_in, c_out, resample) | ("attn", c, side) | ("audio_attn", c, side);
# a block is a list of layers; resample is None, "down" or "up".


def reference_layout(cfg: dict, conditioned: bool) -> dict:
    """Blocks of the reference UNet (conditioned) or of its IdentityEncoder (not), resblock_updown=True."""
    c, mults = cfg["model_channels"], cfg["channel_mult"]
    size = cfg["image_size"]
    factors = [size // r for r in cfg["attention_resolutions"]]  # the reference stores image_size // r
    attn = "audio_attn" if conditioned and cfg["audio_condition_type"] == "attention" else "attn"
    if conditioned:
        motion = (1 if cfg["grayscale_motion"] else 3) * cfg["n_motion_frames"]
        first_in = cfg["in_channels"] + motion + (cfg["in_channels"] if cfg["id_condition_type"] == "frame" else 0)
    else:
        first_in = cfg["in_channels"]
    ch = c * mults[0]
    inputs, skips, ds = [[("conv", first_in, ch)]], [ch], 1
    for level, mult in enumerate(mults):
        for _ in range(cfg["num_res_blocks"]):
            block = [("res", ch, c * mult, None)]
            ch = c * mult
            if ds in factors:
                block.append((attn, ch, size // ds))
            inputs.append(block)
            skips.append(ch)
        if level != len(mults) - 1:
            inputs.append([("res", ch, ch, "down")])
            skips.append(ch)
            ds *= 2
    middle = [("res", ch, ch, None), (attn, ch, size // ds), ("res", ch, ch, None)]
    layout = {"input_blocks": inputs, "middle_block": middle, "width": ch}
    if not conditioned:
        return layout
    outputs = []
    for level, mult in reversed(list(enumerate(mults))):
        for i in range(cfg["num_res_blocks"] + 1):
            block = [("res", ch + skips.pop(), c * mult, None)]
            ch = c * mult
            if ds in factors:
                block.append((attn, ch, size // ds))
            if level and i == cfg["num_res_blocks"]:
                block.append(("res", ch, ch, "up"))
                ds //= 2
            outputs.append(block)
    layout["output_blocks"] = outputs
    layout["width"] = ch
    return layout


def _layer_keys(prefix: str, layer: tuple, cfg: dict | None) -> list[tuple[str, list[int]]]:
    """Rows of one layer, in registration order; cfg None: the unconditioned ResBlock."""
    e = 4 * (cfg or {}).get("model_channels", 0)
    kind = layer[0]
    if kind == "conv":
        _, a, b = layer
        return [(prefix + "weight", [b, a, 3, 3]), (prefix + "bias", [b])]
    if kind == "attn":
        _, ch, _ = layer
        return [
            (prefix + "norm.weight", [ch]),
            (prefix + "norm.bias", [ch]),
            (prefix + "qkv.weight", [3 * ch, ch, 1]),
            (prefix + "qkv.bias", [3 * ch]),
            (prefix + "proj_out.weight", [ch, ch, 1]),
            (prefix + "proj_out.bias", [ch]),
        ]
    if kind == "audio_attn":  # CondAttentionBlock: audio_emb_proj, norm_x, norm_emb, q, kv, proj_out
        _, ch, side = layer
        return [
            (prefix + "audio_emb_proj.weight", [side * side, e]),
            (prefix + "audio_emb_proj.bias", [side * side]),
            (prefix + "norm_x.weight", [ch]),
            (prefix + "norm_x.bias", [ch]),
            (prefix + "norm_emb.weight", [ch]),
            (prefix + "norm_emb.bias", [ch]),
            (prefix + "q.weight", [ch, ch, 1]),
            (prefix + "q.bias", [ch]),
            (prefix + "kv.weight", [2 * ch, ch, 1]),
            (prefix + "kv.bias", [2 * ch]),
            (prefix + "proj_out.weight", [ch, ch, 1]),
            (prefix + "proj_out.bias", [ch]),
        ]
    _, a, b, _ = layer  # res: in_layers, t_emb_layers, x_emb_layers, audio_emb_layers, out_layers, skip_connection
    rows = [
        (prefix + "in_layers.0.weight", [a]),
        (prefix + "in_layers.0.bias", [a]),
        (prefix + "in_layers.2.weight", [b, a, 3, 3]),
        (prefix + "in_layers.2.bias", [b]),
    ]
    if cfg is not None:
        rows += [(prefix + "t_emb_layers.1.weight", [2 * b, e]), (prefix + "t_emb_layers.1.bias", [2 * b])]
        if cfg["id_condition_type"] == "post_gn":
            rows += [(prefix + "x_emb_layers.1.weight", [b, e]), (prefix + "x_emb_layers.1.bias", [b])]
        width = {"post_gn": b, "double_pre_gn": 2 * b}.get(cfg["audio_condition_type"])
        if width:
            rows += [(prefix + "audio_emb_layers.1.weight", [width, e]), (prefix + "audio_emb_layers.1.bias", [width])]
    rows += [
        (prefix + "out_layers.0.weight", [b]),
        (prefix + "out_layers.0.bias", [b]),
        (prefix + "out_layers.3.weight", [b, b, 3, 3]),
        (prefix + "out_layers.3.bias", [b]),
    ]
    if a != b:
        rows += [(prefix + "skip_connection.weight", [b, a, 1, 1]), (prefix + "skip_connection.bias", [b])]
    return rows


def _blocks_keys(prefix: str, blocks: list[list[tuple]], cfg: dict | None) -> list[tuple[str, list[int]]]:
    return [
        row
        for i, block in enumerate(blocks)
        for j, layer in enumerate(block)
        for row in _layer_keys(f"{prefix}{i}.{j}.", layer, cfg)
    ]


def reference_keys(cfg: dict) -> list[tuple[str, list[int]]]:
    """(name, shape) of the reference UNet's state_dict for the constructor arguments `cfg`, in order."""
    c, e = cfg["model_channels"], 4 * cfg["model_channels"]
    rows = []
    if cfg["id_condition_type"] != "frame":  # registered first in UNet.__init__
        enc = reference_layout(cfg, conditioned=False)
        rows += _blocks_keys("identity_encoder.input_blocks.", enc["input_blocks"], None)
        rows += [
            row
            for j, layer in enumerate(enc["middle_block"])
            for row in _layer_keys(f"identity_encoder.middle_block.{j}.", layer, None)
        ]
        w = enc["width"]
        rows += [
            ("identity_encoder.out.0.weight", [w]),
            ("identity_encoder.out.0.bias", [w]),
            ("identity_encoder.out.3.weight", [e, w, 1, 1]),
            ("identity_encoder.out.3.bias", [e]),
        ]
    window = 2 * cfg["n_audio_motion_embs"] + 1
    rows += [
        ("time_embed.fc.0.weight", [e, c]),
        ("time_embed.fc.0.bias", [e]),
        ("time_embed.fc.2.weight", [e, e]),
        ("time_embed.fc.2.bias", [e]),
        ("audio_embed.0.weight", [e, c * window]),
        ("audio_embed.0.bias", [e]),
        ("audio_embed.2.weight", [e, e]),
        ("audio_embed.2.bias", [e]),
    ]
    net = reference_layout(cfg, conditioned=True)
    rows += _blocks_keys("input_blocks.", net["input_blocks"], cfg)
    rows += [
        row for j, layer in enumerate(net["middle_block"]) for row in _layer_keys(f"middle_block.{j}.", layer, cfg)
    ]
    rows += _blocks_keys("output_blocks.", net["output_blocks"], cfg)
    w = net["width"]
    rows += [
        ("out.0.weight", [w]),
        ("out.0.bias", [w]),
        ("out.2.weight", [cfg["out_channels"], w, 3, 3]),
        ("out.2.bias", [cfg["out_channels"]]),
    ]
    return rows


def random_state(rows: list[tuple[str, list[int]]], seed: int, std: float = 0.05) -> dict[str, torch.Tensor]:
    """Seeded random tensors for the rows (GroupNorm weights around 1), so no branch is zero."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in rows:
        t = torch.randn(shape, generator=g) * std
        is_norm = "norm" in name or "layers.0." in name or name.endswith("out.0.weight")
        state[name] = t + 1 if is_norm and name.endswith("weight") else t
    return state


# the reference forward, functional ---------------------------------------------------------------------


def _heads(cfg: dict, ch: int) -> int:
    return cfg["num_heads"] if cfg["num_head_channels"] == -1 else ch // cfg["num_head_channels"]


def _legacy_qkv(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """QKVAttentionLegacy: per head 3d contiguous rows [q | k | v], q and k scaled by d^-1/4, float32 softmax."""
    b, width, length = qkv.shape
    d = width // (3 * heads)
    q, k, v = qkv.reshape(b * heads, 3 * d, length).split(d, dim=1)
    scale = 1 / math.sqrt(math.sqrt(d))
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    w = torch.softmax(w.float(), dim=-1).type(w.dtype)
    return torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, length)


def _gn(x: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    return F.group_norm(x, GROUPS, sd[p + "weight"], sd[p + "bias"], 1e-5)


def _col(v: torch.Tensor) -> torch.Tensor:
    return v[:, :, None, None]


def _layer(sd: dict, p: str, layer: tuple, h: torch.Tensor, emb: dict, cfg: dict, conditioned: bool) -> torch.Tensor:
    kind = layer[0]
    if kind == "conv":
        return F.conv2d(h, sd[p + "weight"], sd[p + "bias"], padding=1)
    if kind in ("attn", "audio_attn"):
        b, ch, hh, ww = h.shape
        x = h.reshape(b, ch, -1)
        if kind == "attn":
            qkv = F.conv1d(_gn(x, sd, p + "norm."), sd[p + "qkv.weight"], sd[p + "qkv.bias"])
        else:  # q from the features, kv from the audio vector projected to one value per position
            a = F.linear(emb["a"], sd[p + "audio_emb_proj.weight"], sd[p + "audio_emb_proj.bias"])
            a = a.unsqueeze(1).expand(-1, ch, -1)
            q = F.conv1d(_gn(x, sd, p + "norm_x."), sd[p + "q.weight"], sd[p + "q.bias"])
            kv = F.conv1d(_gn(a, sd, p + "norm_emb."), sd[p + "kv.weight"], sd[p + "kv.bias"])
            qkv = torch.cat([q, kv], dim=1)
        out = F.conv1d(_legacy_qkv(qkv, _heads(cfg, ch)), sd[p + "proj_out.weight"], sd[p + "proj_out.bias"])
        return (x + out).reshape(b, ch, hh, ww)
    _, a_ch, b_ch, resample = layer
    x = h
    h = F.silu(_gn(h, sd, p + "in_layers.0."))
    if resample == "down":
        h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
    elif resample == "up":
        h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(x, scale_factor=2, mode="nearest")
    h = F.conv2d(h, sd[p + "in_layers.2.weight"], sd[p + "in_layers.2.bias"], padding=1)
    h = _gn(h, sd, p + "out_layers.0.")
    if conditioned:
        lin = lambda name, v: F.linear(F.silu(v), sd[p + name + ".1.weight"], sd[p + name + ".1.bias"])  # noqa: E731
        scale, shift = _col(lin("t_emb_layers", emb["t"])).chunk(2, dim=1)
        h = h * (1 + scale) + shift
        if cfg["audio_condition_type"] == "post_gn":
            h = h * _col(lin("audio_emb_layers", emb["a"]))
        elif cfg["audio_condition_type"] == "double_pre_gn":
            scale, shift = _col(lin("audio_emb_layers", emb["a"])).chunk(2, dim=1)
            h = h * (1 + scale) + shift
        if cfg["id_condition_type"] == "post_gn":
            h = h * _col(lin("x_emb_layers", emb["x"]))
    h = F.conv2d(F.silu(h), sd[p + "out_layers.3.weight"], sd[p + "out_layers.3.bias"], padding=1)
    if a_ch != b_ch:
        x = F.conv2d(x, sd[p + "skip_connection.weight"], sd[p + "skip_connection.bias"])
    return x + h


def _run_block(sd, prefix, block, h, emb, cfg, conditioned):
    for j, layer in enumerate(block):
        h = _layer(sd, f"{prefix}{j}.", layer, h, emb, cfg, conditioned)
    return h


def reference_identity_encoder(sd: dict, cfg: dict, frame: torch.Tensor) -> torch.Tensor:
    """IdentityEncoder: unconditioned encoder half, then GroupNorm, SiLU, average pool, 1x1 conv, flatten."""
    enc = reference_layout(cfg, conditioned=False)
    h = frame
    for i, block in enumerate(enc["input_blocks"]):
        h = _run_block(sd, f"identity_encoder.input_blocks.{i}.", block, h, {}, cfg, False)
    h = _run_block(sd, "identity_encoder.middle_block.", enc["middle_block"], h, {}, cfg, False)
    h = F.silu(_gn(h, sd, "identity_encoder.out.0.")).mean(dim=(2, 3), keepdim=True)
    return F.conv2d(h, sd["identity_encoder.out.3.weight"], sd["identity_encoder.out.3.bias"]).flatten(1)


def reference_forward(sd: dict, cfg: dict, inputs: dict, capture: dict | None = None) -> torch.Tensor:
    """The reference UNet.forward(x, timesteps, x_cond, motion_frames, audio_emb) on state dict `sd`."""
    c = cfg["model_channels"]
    x, t = inputs["x"], inputs["timesteps"]
    freqs = torch.exp(-math.log(1e4) * torch.arange(c // 2) / (2 * c))  # divisor 2C, cosines first
    args = t.float()[:, None] * freqs[None]
    feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def mlp(p, v):
        return F.linear(F.silu(F.linear(v, sd[p + "0.weight"], sd[p + "0.bias"])), sd[p + "2.weight"], sd[p + "2.bias"])

    t_emb = mlp("time_embed.fc.", feats)
    audio = inputs["audio_emb"]
    a_emb = mlp("audio_embed.", audio.reshape(audio.shape[0], -1))
    h = torch.cat([x, inputs["motion_frames"]], dim=1)
    identity, audio_type = cfg["id_condition_type"], cfg["audio_condition_type"]
    if identity == "frame":
        h = torch.cat([h, inputs["x_cond"]], dim=1)
        emb = {"t": t_emb + a_emb} if audio_type == "pre_gn" else {"t": t_emb, "a": a_emb}
    else:
        x_emb = reference_identity_encoder(sd, cfg, inputs["x_cond"])
        if capture is not None:
            capture["identity_encoder"] = x_emb
        if identity == "post_gn":
            emb = {"t": t_emb + a_emb, "x": x_emb} if audio_type == "pre_gn" else {"t": t_emb, "a": a_emb, "x": x_emb}
        else:  # pre_gn: the identity vector joins the time embedding, in this order
            emb = {"t": x_emb + t_emb + a_emb} if audio_type == "pre_gn" else {"t": x_emb + t_emb, "a": a_emb}
    net = reference_layout(cfg, conditioned=True)
    skips = []
    for i, block in enumerate(net["input_blocks"]):
        h = _run_block(sd, f"input_blocks.{i}.", block, h, emb, cfg, True)
        skips.append(h)
    h = _run_block(sd, "middle_block.", net["middle_block"], h, emb, cfg, True)
    if capture is not None:
        capture["middle_block"] = h
    for i, block in enumerate(net["output_blocks"]):
        h = _run_block(sd, f"output_blocks.{i}.", block, torch.cat([h, skips.pop()], dim=1), emb, cfg, True)
    h = F.silu(_gn(h, sd, "out.0."))
    return F.conv2d(h, sd["out.2.weight"], sd["out.2.bias"], padding=1)


def reference_inputs(cfg: dict, seed: int = 99, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    side, motion = cfg["image_size"], (1 if cfg["grayscale_motion"] else 3) * cfg["n_motion_frames"]
    return {
        "x": torch.randn(batch, 3, side, side, generator=g),
        "timesteps": torch.tensor([3, 917]),
        "x_cond": torch.rand(batch, 3, side, side, generator=g) * 2 - 1,
        "motion_frames": torch.rand(batch, motion, side, side, generator=g) * 2 - 1,
        "audio_emb": torch.randn(batch, 2 * cfg["n_audio_motion_embs"] + 1, cfg["model_channels"], generator=g),
    }


def ours(cfg: dict, inputs: dict) -> Conditioning:
    return Conditioning(
        identity_frame=inputs["x_cond"], motion_frames=inputs["motion_frames"], audio_window=inputs["audio_emb"]
    )


def key_rows(model: torch.nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


# 1. the layout -----------------------------------------------------------------------------------------


def test_hand_written_layout_is_the_measured_one(reference_dir):
    """The default variant at the paper's size: the hand-derived rows equal the measured key list (324 rows)."""
    measured = [
        (k, json.loads(s))
        for k, s in (
            line.split("\t") for line in (reference_dir / "unet_keys_training_config.tsv").read_text().splitlines()
        )
    ]
    assert reference_keys(variant(PAPER, "frame", "double_pre_gn")) == measured


@pytest.mark.parametrize("identity, audio", COMBOS)
@pytest.mark.parametrize("cfg", [TINY, WIDE, PAPER], ids=["tiny", "wide", "paper"])
def test_reference_names_and_shapes(cfg, identity, audio):
    """Built from the reference configuration, our network has exactly the reference's rows, in its order."""
    model_cfg = reference_model_config(variant(cfg, identity, audio))
    with torch.device("meta"):
        model = UNet(model_cfg)
    expected = reference_keys(variant(cfg, identity, audio))
    assert key_rows(model) == expected
    assert count_parameters(model) == sum(math.prod(s) for _, s in expected)
    assert len(list(model.buffers())) == 0
    if cfg is PAPER:
        assert count_parameters(model) == PAPER_COUNTS[identity, audio]


# 2. the arithmetic -------------------------------------------------------------------------------------


@pytest.mark.parametrize("identity, audio", COMBOS)
@pytest.mark.parametrize("cfg", [TINY, WIDE, ONE_HEAD], ids=["tiny", "wide", "one-head"])
def test_reference_arithmetic(cfg, identity, audio):
    """Strict load of reference-named random weights; output equals the functional reference forward to 1e-5."""
    rcfg = variant(cfg, identity, audio)
    state = random_state(reference_keys(rcfg), seed=7)
    model = UNet(reference_model_config(rcfg))
    model.load_state_dict(state, strict=True)
    model.eval()
    inputs = reference_inputs(rcfg)
    with torch.no_grad():
        expected = reference_forward(state, rcfg, inputs)
        assert expected.abs().max() > 0.1  # no branch collapsed to zero: the comparison can fail
        for impl in ("sdpa", "einsum"):
            set_attention(model, impl)
            got = model(inputs["x"], inputs["timesteps"], ours(rcfg, inputs))
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=lambda m, i=impl: f"{i}: {m}")


@pytest.mark.parametrize("identity, audio", [("post_gn", "post_gn"), ("pre_gn", "attention"), ("post_gn", "attention")])
def test_the_comparison_can_fail(identity, audio):
    """A perturbed variant-specific weight moves the output beyond the tolerance."""
    rcfg = variant(TINY, identity, audio)
    state = random_state(reference_keys(rcfg), seed=7)
    inputs = reference_inputs(rcfg)
    name = next(k for k in state if "x_emb_layers" in k or "audio_emb_proj" in k)
    model = UNet(reference_model_config(rcfg))
    # a random change: a constant one of audio_emb_proj would vanish in norm_emb, which normalises over positions
    noise = torch.randn(state[name].shape, generator=torch.Generator().manual_seed(0)) * 0.05
    model.load_state_dict({**state, name: state[name] + noise}, strict=True)
    with torch.no_grad():
        got = model.eval()(inputs["x"], inputs["timesteps"], ours(rcfg, inputs))
        assert (got - reference_forward(state, rcfg, inputs)).abs().max() > 1e-3, name


def test_post_gn_ours_has_the_same_keys_but_not_the_arithmetic():
    """Why `post_gn` had to be the reference's: our (1 + s_a) design loads the same weights and computes otherwise."""
    rcfg = variant(TINY, "frame", "post_gn")
    state = random_state(reference_keys(rcfg), seed=7)
    inputs = reference_inputs(rcfg)
    cfg = reference_model_config(rcfg)
    cfg.audio_condition_type = AudioCondition.POST_GN_OURS
    model = UNet(cfg)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        got = model.eval()(inputs["x"], inputs["timesteps"], ours(rcfg, inputs))
        assert (got - reference_forward(state, rcfg, inputs)).abs().max() > 1e-2


@pytest.mark.parametrize("identity, audio", COMBOS)
def test_forward_backward_all_finite(identity, audio):
    rcfg = variant(dict(TINY, dropout=0.1), identity, audio)
    model = UNet(reference_model_config(rcfg))
    model.load_state_dict(random_state(reference_keys(rcfg), seed=3), strict=True)
    inputs = reference_inputs(rcfg)
    out = model.train()(inputs["x"], inputs["timesteps"], ours(rcfg, inputs))
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if any(
            s in name for s in ("identity_encoder", "x_emb_layers", "audio_emb_layers", "audio_emb_proj", "audio_embed")
        ):
            assert p.grad.abs().sum() > 0, name


def test_reference_identity_encoder_starts_at_zero():
    """Zero-initialised like the reference: identity vector 0 at init, so post_gn starts at h * bias of x_emb_layers."""
    model = UNet(reference_model_config(variant(TINY, "post_gn", "double_pre_gn")))
    with torch.no_grad():
        assert model.identity_encoder(torch.randn(2, 3, 16, 16)).abs().max() == 0
    assert model.identity_encoder(torch.randn(1, 3, 16, 16)).shape == (1, 128)


def test_audio_attention_needs_the_trained_frame_size():
    rcfg = variant(TINY, "frame", "attention")
    model = UNet(reference_model_config(rcfg))
    inputs = reference_inputs(rcfg)
    small = {k: (v[..., :8, :8] if v.ndim == 4 else v) for k, v in inputs.items()}
    with pytest.raises(DiffheadsError, match="16x16 frames"):
        model(small["x"], small["timesteps"], ours(rcfg, small))


# 3. import and golden check ----------------------------------------------------------------------------


@pytest.mark.parametrize("identity, audio", COMBOS)
def test_import_infers_the_variant(identity, audio):
    rcfg = variant(WIDE, identity, audio)
    shapes = {k: tuple(s) for k, s in reference_keys(rcfg)}
    options = ReferenceOptions(image_size=128 if audio == "attention" else 16, num_head_channels=16)
    cfg = infer_model_config(shapes, options)
    assert (cfg.id_condition_type.value, cfg.audio_condition_type.value) == (identity, audio)
    assert (cfg.image_size, cfg.channel_mult, cfg.num_res_blocks, cfg.attention_resolutions) == (
        16,
        [1, 1, 2],
        2,
        [8, 4],
    )
    assert cfg.grayscale_motion is False
    with torch.device("meta"):
        assert {k: tuple(v.shape) for k, v in UNet(cfg).state_dict().items()} == shapes


def test_import_lightning_checkpoint_of_a_variant(tmp_path):
    """A training-branch checkpoint (network twice) of identity post_gn + audio attention becomes a working model file."""
    rcfg = variant(TINY, "post_gn", "attention")
    state = random_state(reference_keys(rcfg), seed=11)
    ckpt = {
        "state_dict": {
            **{f"unet.{k}": v for k, v in state.items()},
            **{f"diffusion.nn_backbone.{k}": v for k, v in state.items()},
        }
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    report = import_reference(
        tmp_path / "last.ckpt", tmp_path / "m.safetensors", ReferenceOptions(num_head_channels=32)
    )
    assert (report["model"]["id_condition_type"], report["model"]["audio_condition_type"]) == ("post_gn", "attention")
    assert report["model"]["image_size"] == 16  # told by the audio projection, not the option's 128
    model = load_model(tmp_path / "m.safetensors").unet.eval()
    inputs = reference_inputs(rcfg)
    with torch.no_grad():
        got = model(inputs["x"], inputs["timesteps"], ours(rcfg, inputs))
        torch.testing.assert_close(got, reference_forward(state, rcfg, inputs), atol=1e-5, rtol=0)


def test_import_refuses_our_own_designs(tmp_path):
    cfg = reference_model_config(variant(TINY, "frame", "double_pre_gn"))
    cfg.id_condition_type = IdCondition.POST_GN_OURS
    torch.save({"state_dict": UNet(cfg).state_dict()}, tmp_path / "ours.ckpt")
    with pytest.raises(DiffheadsError, match="diffheads' own conditioning designs"):
        import_reference(tmp_path / "ours.ckpt", tmp_path / "m.safetensors", ReferenceOptions(image_size=16))


def tiny_golden(identity: str, audio: str) -> dict:
    """A golden file of a non-default variant: reference config names, random weights, functional reference outputs."""
    rcfg = variant(TINY, identity, audio)
    rows = reference_keys(rcfg)
    state = random_state(rows, seed=1234)
    inputs = reference_inputs(rcfg)
    captured: dict = {}
    with torch.no_grad():
        output = reference_forward(state, rcfg, inputs, captured)
    return {
        "config": rcfg,
        "state_dict": state,
        "inputs": inputs,
        "output": output,
        "intermediates": captured,
        "param_count": sum(math.prod(s) for _, s in rows),
    }


def test_golden_round_trip_of_a_variant(tmp_path, capsys):
    golden = tiny_golden("post_gn", "attention")
    torch.save(golden, tmp_path / "golden.pt")
    assert main(["check-reference", str(tmp_path / "golden.pt")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["variant"] == "identity post_gn, audio attention"
    names = {c.name for c in check_golden(golden)}
    assert {"network output", "param_count", "intermediate identity_encoder", "intermediate middle_block"} <= names

    bad = copy.deepcopy(golden)
    bad["state_dict"]["output_blocks.0.1.kv.weight"].add_(1e-2)
    torch.save(bad, tmp_path / "bad.pt")
    assert main(["check-reference", str(tmp_path / "bad.pt")]) == 1
    err = capsys.readouterr().err
    assert "FAIL network output" in err and "FAIL intermediate middle_block" not in err


@pytest.mark.parametrize("identity, audio", [("pre_gn", "pre_gn"), ("frame", "post_gn")])
def test_golden_check_of_more_variants(identity, audio):
    golden = tiny_golden(identity, audio)
    assert [c.name for c in check_golden(golden) if not c.ok] == []
    bad = copy.deepcopy(golden)
    name = "input_blocks.1.0.audio_emb_layers.1.bias" if audio == "post_gn" else "identity_encoder.out.3.weight"
    bad["state_dict"][name].add_(1e-2)
    assert "network output" in {c.name for c in check_golden(bad) if not c.ok}


def test_golden_config_in_reference_terms():
    base = {k: v for k, v in TINY.items() if k not in ("audio_condition_type",)}
    assert reference_model_config(base).audio_condition_type is AudioCondition.PRE_GN  # the constructor's default
    partial = {
        k: TINY[k] for k in ("model_channels", "out_channels", "num_res_blocks", "attention_resolutions", "in_channels")
    }
    assert reference_model_config({**partial, "img_resize": 16}).image_size == 16
    with pytest.raises(DiffheadsError, match="lacks image_size"):
        reference_model_config(partial)
    with pytest.raises(DiffheadsError, match="'attention_ours' is a diffheads design"):
        reference_model_config(variant(TINY, "frame", "attention_ours"))
    with pytest.raises(DiffheadsError, match="is not one of"):
        reference_model_config(variant(TINY, "frame", "cross"))


def test_resampling_without_residual_blocks_keeps_the_layout():
    """resblock_updown=false: parameter-free resampling (the reference's UNet forward fails there; ours runs)."""
    rcfg = variant(dict(TINY, resblock_updown=False), "post_gn", "attention")
    with_updown = {k for k, _ in reference_keys(variant(TINY, "post_gn", "attention"))}
    model = UNet(reference_model_config(rcfg)).eval()
    assert set(model.state_dict()) == {
        k
        for k in with_updown
        if not any(
            k.startswith(p) for p in ("input_blocks.2.", "identity_encoder.input_blocks.2.", "output_blocks.1.2.")
        )
    }
    inputs = reference_inputs(rcfg)
    with torch.no_grad():
        assert torch.isfinite(model(inputs["x"], inputs["timesteps"], ours(rcfg, inputs))).all()
