"""The conditional UNet against the reference facts: key layout, timestep features, golden outputs, variants."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffheads.conditioning import Conditioning
from diffheads.config import AudioCondition, IdCondition, ModelConfig, from_dict
from diffheads.errors import DiffheadsError
from diffheads.models.blocks import AttentionBlock
from diffheads.models.embeddings import timestep_features
from diffheads.models.unet import UNet, count_parameters

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"


def reference_file(name: str) -> Path:
    """A file of the shared reference folder; a missing folder is a failure, not a skip."""
    path = REFERENCE / name
    if not path.is_file():
        pytest.fail(f"reference file {path.resolve()} is missing: the shared/ folder must sit beside the repository")
    return path


def key_rows(model: torch.nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


def tsv_rows(name: str) -> list[tuple[str, list[int]]]:
    rows = []
    for line in reference_file(name).read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, json.loads(shape)))
    return rows


def meta_unet(**kwargs) -> UNet:
    with torch.device("meta"):
        return UNet(ModelConfig(**kwargs))


# 1. keys, shapes and sizes of the reference configurations -------------------------------------------

REFERENCE_A = dict(
    image_size=128,
    model_channels=256,
    num_res_blocks=2,
    attention_resolutions=[32],
    dropout=0.1,
    channel_mult=[1, 2, 3],
    num_heads=4,
    num_head_channels=64,
    grayscale_motion=True,
    n_motion_frames=2,
    n_audio_motion_embs=2,
)


@pytest.mark.parametrize(
    "grayscale, tsv, n_params",
    [
        (True, "unet_keys_training_config.tsv", 215_739_398),
        (False, "unet_keys_crema_release.tsv", 215_748_614),
    ],
)
def test_reference_keys_and_shapes(grayscale, tsv, n_params):
    model = meta_unet(**{**REFERENCE_A, "grayscale_motion": grayscale})
    assert key_rows(model) == tsv_rows(tsv)
    assert count_parameters(model) == n_params
    assert len(list(model.buffers())) == 0
    per_module = {n: count_parameters(getattr(model, n)) for n in ("time_embed", "audio_embed", "middle_block")}
    assert per_module == {"time_embed": 1_312_768, "audio_embed": 2_361_344, "middle_block": 29_904_384}


def test_attention_resolution_convention():
    # passing the downsample factor (4) instead of the side (32) leaves attention only in the middle block
    wrong = meta_unet(**{**REFERENCE_A, "attention_resolutions": [4]})
    assert count_parameters(wrong) == 203_919_878
    assert len(wrong.state_dict()) == 294


def test_small_reference_config():
    model = meta_unet(
        model_channels=64,
        channel_mult=[1, 2, 2],
        num_res_blocks=1,
        image_size=64,
        attention_resolutions=[16],
        num_head_channels=32,
    )
    assert count_parameters(model) == 6_469_830
    assert len(model.state_dict()) == 232
    text = "".join(f"{k}\t{json.dumps(s)}\n" for k, s in key_rows(model))
    assert (
        hashlib.sha256(text.encode()).hexdigest() == "6076daad70c68b884253c90a897f8eb1f597a6cde50963cadf6a56e6d0eaebb0"
    )


# 2. timestep features ----------------------------------------------------------------------------------

FEATURES_C256 = {  # facts section 4: indices 0-7, 128-135, 252-255 (float32 values of the reference)
    1: (
        [0.540302336, 0.555217505, 0.569695055, 0.583744407, 0.597375333, 0.610597372, 0.62342006, 0.635853052],
        [0.841470957, 0.831705213, 0.821856201, 0.811937451, 0.80196178, 0.791941226, 0.781887114, 0.771810114],
        [0.107254066, 0.105349101, 0.103477716, 0.101639345],
    ),
    999: (
        [0.999649823, 0.529496551, -0.716527998, -0.624220073, 0.963785291, -0.421430469, -0.134861708, 0.403508127],
        [-0.0264607519, 0.84831208, 0.697558343, -0.781248569, -0.266679376, 0.906860709, -0.990864456, 0.91497606],
        [0.51341486, -0.980844498, 0.11270152, 0.925511301],
    ),
}


@pytest.mark.parametrize("t", [1, 999])
def test_timestep_features_match_reference_float32(t):
    e = timestep_features(torch.tensor([t]), 256)[0]
    cos8, sin8, last4 = (torch.tensor(v, dtype=torch.float32) for v in FEATURES_C256[t])
    torch.testing.assert_close(e[:8], cos8, atol=1e-6, rtol=0)
    torch.testing.assert_close(e[128:136], sin8, atol=1e-6, rtol=0)
    torch.testing.assert_close(e[252:], last4, atol=1e-6, rtol=0)


@pytest.mark.parametrize("channels", [32, 256])
def test_timestep_features_match_float64_formula(channels):
    t = np.array([0, 1, 3, 250.5, 917, 999], dtype=np.float64)
    w = 10000.0 ** (-np.arange(channels // 2) / (2 * channels))
    expected = np.concatenate([np.cos(t[:, None] * w), np.sin(t[:, None] * w)], axis=1)
    got = timestep_features(torch.tensor(t, dtype=torch.float32), channels).double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert timestep_features(torch.tensor([0]), channels)[0, : channels // 2].eq(1).all()


# 3. golden vectors of the reference code ---------------------------------------------------------------


def golden_model(golden) -> UNet:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    cfg = from_dict({"model": {k: v for k, v in golden["config"].items() if k in names}}).model
    model = UNet(cfg)
    model.load_state_dict(golden["state_dict"], strict=True)
    return model.eval()


def test_golden_timestep_features(golden):
    t = torch.tensor(golden["timestep_features_t"])
    torch.testing.assert_close(timestep_features(t, 32), golden["timestep_features"], atol=1e-6, rtol=0)


def test_golden_forward(golden):
    model = golden_model(golden)
    assert count_parameters(model) == golden["param_count"]
    captured = {}
    for name in golden["intermediates"]:
        model.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: captured.__setitem__(name, out))
    model.time_embed.fc.register_forward_pre_hook(lambda m, a: captured.__setitem__("features", a[0]))
    x = golden["inputs"]
    cond = Conditioning(identity_frame=x["x_cond"], motion_frames=x["motion_frames"], audio_window=x["audio_emb"])
    with torch.no_grad():
        out = model(x["x"], x["timesteps"], cond)
    # timesteps [3, 917] are rows 2 and 3 of the stored feature table
    torch.testing.assert_close(captured["features"], golden["timestep_features"][2:4], atol=1e-6, rtol=0)
    for name, expected in golden["intermediates"].items():  # in order, so a failure points at the first bad stage
        torch.testing.assert_close(captured[name], expected, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    torch.testing.assert_close(out, golden["output"], atol=1e-4, rtol=1e-4)


# 4. every conditioning variant, forward and backward ---------------------------------------------------

TINY = dict(
    image_size=16,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_resolutions=[8],
    num_head_channels=32,
    audio_dim=12,
    dropout=0.1,
)


def tiny_inputs(cfg: ModelConfig, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    side = cfg.image_size
    x = torch.randn(batch, cfg.in_channels, side, side, generator=g)
    cond = Conditioning(
        identity_frame=torch.rand(batch, 3, side, side, generator=g) * 2 - 1,
        motion_frames=torch.rand(batch, cfg.n_motion_frames * cfg.motion_channels, side, side, generator=g) * 2 - 1,
        audio_window=torch.randn(batch, cfg.audio_window_len, cfg.audio_dim, generator=g),
    )
    return x, torch.tensor([5, 930]), cond


# key fragments that each variant must have (True) or lack (False); exact lists: test_reference_variants.py.
# Two dicts: the enums are str subclasses, so AudioCondition.POST_GN and IdCondition.POST_GN are one dict key.
AUDIO_KEYS = {
    AudioCondition.DOUBLE_PRE_GN: {"audio_emb_layers": True, "audio_attn": False, "audio_emb_proj": False},
    AudioCondition.POST_GN: {"audio_emb_layers": True, "audio_attn": False, "audio_emb_proj": False},
    AudioCondition.PRE_GN: {"audio_emb_layers": False, "audio_attn": False, "audio_emb_proj": False},
    AudioCondition.ATTENTION: {"audio_emb_layers": False, "audio_attn": False, "audio_emb_proj": True},
    AudioCondition.POST_GN_OURS: {"audio_emb_layers": True, "audio_attn": False, "audio_emb_proj": False},
    AudioCondition.ATTENTION_OURS: {"audio_emb_layers": False, "audio_attn": True, "audio_embed.pos": True},
}
ID_KEYS = {
    IdCondition.FRAME: {"id_encoder": False, "identity_encoder": False, "id_emb_layers": False, "x_emb_layers": False},
    IdCondition.PRE_GN: {"id_encoder": False, "identity_encoder": True, "id_emb_layers": False, "x_emb_layers": False},
    IdCondition.POST_GN: {"id_encoder": False, "identity_encoder": True, "id_emb_layers": False, "x_emb_layers": True},
    IdCondition.PRE_GN_OURS: {"id_encoder": True, "identity_encoder": False, "id_emb_layers": False},
    IdCondition.POST_GN_OURS: {"id_encoder": True, "identity_encoder": False, "id_emb_layers": True},
}


@pytest.mark.parametrize("grayscale", [True, False])
@pytest.mark.parametrize("id_condition", list(IdCondition))
@pytest.mark.parametrize("audio_condition", list(AudioCondition))
def test_variant_forward_backward(audio_condition, id_condition, grayscale):
    torch.manual_seed(0)
    cfg = ModelConfig(
        **TINY, grayscale_motion=grayscale, id_condition_type=id_condition, audio_condition_type=audio_condition
    )
    model = UNet(cfg)
    keys = list(model.state_dict())
    for fragment, present in {**AUDIO_KEYS[audio_condition], **ID_KEYS[id_condition]}.items():
        assert any(fragment in k for k in keys) == present, fragment
    first_conv = model.input_blocks[0][0].weight
    motion = cfg.n_motion_frames * cfg.motion_channels
    assert first_conv.shape[1] == 3 + motion + (3 if id_condition is IdCondition.FRAME else 0)

    with torch.no_grad():  # undo the zero initialisation so gradients reach every parameter
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    x, t, cond = tiny_inputs(cfg)
    out = model(x, t, cond)
    assert out.shape == (2, cfg.out_channels, 16, 16)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    for name, p in model.named_parameters():
        if any(
            s in name
            for s in (
                "audio_embed",
                "audio_emb_layers",
                "audio_attn.kv",
                "id_encoder",
                "id_emb_layers",
                "identity_encoder",
                "x_emb_layers",
                "audio_emb_proj",
            )
        ):
            assert p.grad.abs().sum() > 0, name

    model.eval()
    with torch.no_grad():
        base = model(x, t, cond)
        other_audio = model(x, t, dataclasses.replace(cond, audio_window=cond.audio_window.flip(0)))
        other_identity = model(x, t, dataclasses.replace(cond, identity_frame=cond.identity_frame.flip(0)))
    assert (base - other_audio).abs().max() > 1e-4
    assert (base - other_identity).abs().max() > 1e-4


def test_zero_output_at_initialisation():
    cfg = ModelConfig(**TINY)
    x, t, cond = tiny_inputs(cfg)
    with torch.no_grad():
        assert UNet(cfg).eval()(x, t, cond).abs().max() == 0


def test_resblock_updown_off_and_float_timesteps():
    cfg = ModelConfig(**{**TINY, "resblock_updown": False})
    model = UNet(cfg).eval()
    x, _, cond = tiny_inputs(cfg)
    with torch.no_grad():
        out = model(x, torch.tensor([2.5, 700.25]), cond)
    assert out.shape == (2, 6, 16, 16)


# 5. audio width independent of the model width ---------------------------------------------------------


def test_audio_dim_independent_of_model_channels():
    cfg = ModelConfig(**{**TINY, "audio_dim": 80})
    model = UNet(cfg).eval()
    assert model.audio_embed[0].in_features == 5 * 80
    x, t, cond = tiny_inputs(cfg)
    with torch.no_grad():
        assert model(x, t, cond).shape == (2, 6, 16, 16)
    with pytest.raises(DiffheadsError, match="audio_dim"):
        model(x, t, dataclasses.replace(cond, audio_window=cond.audio_window[..., :32]))
    assert UNet(ModelConfig(**{**TINY, "audio_dim": None})).audio_embed[0].in_features == 5 * 32


# 6. attention equals the legacy formula ----------------------------------------------------------------


def legacy_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """Reference formula: per-head [q|k|v] rows, q and k scaled by d^-1/4, float32 softmax, head-major concat."""
    b, c, hh, ww = x.shape
    heads = block.num_heads
    d = c // heads
    flat = x.reshape(b, c, -1)
    normed = F.group_norm(flat, 32, block.norm.weight, block.norm.bias, block.norm.eps)
    qkv = F.conv1d(normed, block.qkv.weight, block.qkv.bias)
    q, k, v = qkv.reshape(b * heads, 3 * d, -1).split(d, dim=1)
    s = d**-0.25
    w = torch.softmax(torch.einsum("nct,ncs->nts", q * s, k * s).float(), dim=-1).to(q.dtype)
    a = torch.einsum("nts,ncs->nct", w, v).reshape(b, c, -1)
    return (flat + F.conv1d(a, block.proj_out.weight, block.proj_out.bias)).reshape(b, c, hh, ww)


@pytest.mark.parametrize("channels, heads", [(64, 2), (96, 3), (64, 1)])
def test_attention_matches_legacy_formula(channels, heads):
    torch.manual_seed(1)
    block = AttentionBlock(channels, heads)
    with torch.no_grad():
        block.proj_out.weight.normal_(0, 0.1)
        block.proj_out.bias.normal_(0, 0.1)
        block.qkv.weight.mul_(3.0)  # sharper attention maps
    x = torch.randn(2, channels, 8, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), legacy_attention(block, x), atol=1e-5, rtol=0)
    # a [all q | all k | all v] split of the same weights gives a different answer, so the test can fail
    if heads > 1:
        permuted = AttentionBlock(channels, heads)
        permuted.load_state_dict(block.state_dict())
        order = torch.arange(3 * channels).reshape(heads, 3, channels // heads).transpose(0, 1).reshape(-1)
        with torch.no_grad():
            permuted.qkv.weight.copy_(block.qkv.weight[order])
            permuted.qkv.bias.copy_(block.qkv.bias[order])
            assert (permuted(x) - legacy_attention(block, x)).abs().max() > 1e-3


def test_standard_time_frequencies_span_all_steps():
    """time_frequencies=standard: w_i = 10000^(-i/(C/2)) (DDPM), checked against numpy in float64."""
    from diffheads.models.embeddings import timestep_features

    c = 32
    t = torch.tensor([0, 7, 999])
    got = timestep_features(t, c, standard=True).double().numpy()
    w = 10000.0 ** (-np.arange(c // 2) / (c // 2))
    args = t.numpy()[:, None].astype(np.float64) * w[None]
    np.testing.assert_allclose(got, np.concatenate([np.cos(args), np.sin(args)], axis=1), atol=2e-4)
    assert w[-1] < 2e-4  # the slowest feature changes little over 1000 steps


def test_norm_groups_option():
    """model.norm_groups sets every GroupNorm; widths must divide by it (reference: 32)."""
    from diffheads.errors import DiffheadsError
    from diffheads.models.unet import UNet

    cfg = ModelConfig(
        image_size=16,
        model_channels=32,
        channel_mult=[1, 2],
        num_res_blocks=1,
        attention_resolutions=[8],
        num_head_channels=32,
        norm_groups=8,
    )
    norms = [m for m in UNet(cfg).modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 8 for m in norms)
    with pytest.raises(DiffheadsError, match="multiple of model.norm_groups"):
        UNet(dataclasses.replace(cfg, norm_groups=24))
