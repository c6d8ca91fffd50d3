"""Attention implementation switch (sdpa / reference einsum) and the sampling throughput options.

Tolerances: sdpa against einsum differ only by floating-point operation order; asserted 1e-5 in float32
(observed: bitwise equal on the CPU this was written on; other kernels may differ by ~1e-6) and 1e-10 in
float64 (observed <= 1e-15). The einsum path against the reference formula written out below uses the same
operations in the same order (asserted 1e-6 in float32).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffheads.checkpoint import LoadedModel
from diffheads.conditioning import Conditioning
from diffheads.config import AudioCondition, DiffusionConfig, ModelConfig, RunConfig, SampleConfig
from diffheads.diffusion.video import sample_video
from diffheads.errors import DiffheadsError
from diffheads.models.blocks import AttentionBlock, AudioAttentionBlock, AudioCrossAttention, set_attention
from diffheads.models.unet import UNet
from diffheads.sample.runtime import sample_clips, sampling_process


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine they lose a lot (idle-waiting threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}
DTYPES = [torch.float32, torch.float64]


def randomise(module: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Random weights everywhere (the zero-initialised output projections included)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


# the reference formula, written out independently of diffheads.models.blocks -----------------------


def reference_qkv_attention(qkv: torch.Tensor, n_heads: int) -> torch.Tensor:
    """guided-diffusion QKVAttentionLegacy: (B, 3*H*d, T), heads contiguous groups of 3d rows [q|k|v] -> (B, H*d, T)."""
    bs, width, length = qkv.shape
    ch = width // (3 * n_heads)
    q, k, v = qkv.reshape(bs * n_heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / (ch**0.5) ** 0.5
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    a = torch.einsum("bts,bcs->bct", weight, v)
    return a.reshape(bs, -1, length)


def reference_self_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    b, c, *spatial = x.shape
    flat = x.reshape(b, c, -1)
    normed = F.group_norm(flat, block.norm.num_groups, block.norm.weight, block.norm.bias, block.norm.eps)
    h = reference_qkv_attention(F.conv1d(normed, block.qkv.weight, block.qkv.bias), block.num_heads)
    return (flat + F.conv1d(h, block.proj_out.weight, block.proj_out.bias)).reshape(b, c, *spatial)


def reference_cross_attention(block: AudioCrossAttention, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Queries from the features, keys/values from the tokens ([k | v] halves, head-major), legacy arithmetic."""
    b, c, *spatial = x.shape
    heads, d = block.num_heads, c // block.num_heads
    flat = x.reshape(b, c, -1)
    normed = F.group_norm(flat, block.norm.num_groups, block.norm.weight, block.norm.bias, block.norm.eps)
    q = F.conv1d(normed, block.q.weight, block.q.bias).reshape(b * heads, d, -1)
    kv = F.linear(tokens, block.kv.weight, block.kv.bias)  # (B, S, 2C)
    k = kv[..., :c].reshape(b, -1, heads, d).permute(0, 2, 3, 1).reshape(b * heads, d, -1)
    v = kv[..., c:].reshape(b, -1, heads, d).permute(0, 2, 3, 1).reshape(b * heads, d, -1)
    scale = 1 / (d**0.5) ** 0.5
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    h = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
    return (flat + F.conv1d(h, block.proj_out.weight, block.proj_out.bias)).reshape(b, c, *spatial)


def both(module: torch.nn.Module, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        set_attention(module, "sdpa")
        a = module(*args)
        set_attention(module, "einsum")
        b = module(*args)
        set_attention(module, "sdpa")
    return a, b


# 1. blocks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels, heads", [(64, 1), (64, 2), (96, 3), (128, 4)])
def test_self_attention_sdpa_equals_einsum(channels, heads, dtype):
    torch.manual_seed(heads)
    block = randomise(AttentionBlock(channels, heads)).to(dtype)
    with torch.no_grad():
        block.qkv.weight.mul_(3.0)  # sharper attention maps
    assert block.impl == "sdpa"
    x = torch.randn(2, channels, 8, 6, dtype=dtype)
    sdpa, einsum = both(block, x)
    assert (sdpa - x).abs().max() > 0.1  # the attention branch is not negligible
    torch.testing.assert_close(sdpa, einsum, **TOL[dtype])
    if dtype is torch.float32:
        set_attention(block, "einsum")
        with torch.no_grad():
            torch.testing.assert_close(block(x), reference_self_attention(block, x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels, heads", [(64, 1), (64, 2), (96, 3)])
def test_cross_attention_sdpa_equals_einsum(channels, heads, dtype):
    torch.manual_seed(10 + heads)
    block = randomise(AudioCrossAttention(channels, 40, heads)).to(dtype)
    with torch.no_grad():
        block.kv.weight.mul_(3.0)
    x = torch.randn(2, channels, 8, 8, dtype=dtype)
    tokens = torch.randn(2, 5, 40, dtype=dtype)
    sdpa, einsum = both(block, x, tokens)
    assert (sdpa - x).abs().max() > 0.1
    torch.testing.assert_close(sdpa, einsum, **TOL[dtype])
    if dtype is torch.float32:
        set_attention(block, "einsum")
        with torch.no_grad():
            torch.testing.assert_close(block(x, tokens), reference_cross_attention(block, x, tokens), atol=1e-6, rtol=0)


def test_reference_formula_detects_a_wrong_qkv_layout():
    """The einsum path reads per-head [q|k|v] groups: a [all q | all k | all v] split gives another answer."""
    torch.manual_seed(3)
    block = randomise(AttentionBlock(64, 2))
    set_attention(block, "einsum")
    x = torch.randn(1, 64, 4, 4)
    order = torch.arange(3 * 64).reshape(2, 3, 32).transpose(0, 1).reshape(-1)
    permuted = AttentionBlock(64, 2, impl="einsum")
    permuted.load_state_dict(block.state_dict())
    with torch.no_grad():
        permuted.qkv.weight.copy_(block.qkv.weight[order])
        permuted.qkv.bias.copy_(block.qkv.bias[order])
        assert (permuted(x) - reference_self_attention(block, x)).abs().max() > 1e-3


def test_set_attention_rejects_unknown_names():
    block = AttentionBlock(32, 1)
    with pytest.raises(ValueError, match="einsum"):
        set_attention(block, "flash")
    with pytest.raises(ValueError):
        AttentionBlock(32, 1, impl="naive")
    block.impl = "naive"  # set behind set_attention's back
    with pytest.raises(ValueError, match="naive"):
        block(torch.randn(1, 32, 2, 2))


# 2. a whole UNet ---------------------------------------------------------------------------------------

TINY = dict(
    image_size=16,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_resolutions=[8],
    num_head_channels=32,
    audio_dim=12,
    dropout=0.0,
)


def tiny_inputs(cfg: ModelConfig, batch: int = 2, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(0)
    side = cfg.image_size
    rand = lambda *shape: torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1  # noqa: E731
    cond = Conditioning(
        identity_frame=rand(batch, 3, side, side),
        motion_frames=rand(batch, cfg.n_motion_frames * cfg.motion_channels, side, side),
        audio_window=torch.randn(batch, cfg.audio_window_len, cfg.audio_dim, generator=g, dtype=dtype),
    )
    return torch.randn(batch, 3, side, side, generator=g, dtype=dtype), torch.tensor([5, 930]), cond


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "audio", [AudioCondition.DOUBLE_PRE_GN, AudioCondition.ATTENTION, AudioCondition.ATTENTION_OURS]
)
def test_unet_sdpa_equals_einsum_and_keeps_its_state_dict(audio, dtype):
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY, audio_condition_type=audio)
    model = randomise(UNet(cfg), 0.05).to(dtype).eval()
    attention = [
        m for m in model.modules() if isinstance(m, (AttentionBlock, AudioAttentionBlock, AudioCrossAttention))
    ]
    assert any(isinstance(m, AudioCrossAttention) for m in attention) == (audio is AudioCondition.ATTENTION_OURS)
    assert any(isinstance(m, AudioAttentionBlock) for m in attention) == (audio is AudioCondition.ATTENTION)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, t, cond = tiny_inputs(cfg, dtype=dtype)
    sdpa, einsum = both(model, x, t, cond)
    assert sdpa.abs().max() > 0.1
    torch.testing.assert_close(sdpa, einsum, **TOL[dtype])
    set_attention(model, "einsum")
    assert all(m.impl == "einsum" for m in attention)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(list(model.buffers())) == 0


# 3. sampling throughput options ------------------------------------------------------------------------


def tiny_loaded(std: float = 0.05) -> LoadedModel:
    """A random tiny UNet with v prediction (well conditioned at every step, unlike eps with random weights)."""
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY)
    unet = randomise(UNet(cfg), std).eval()
    return LoadedModel(unet, RunConfig(model=cfg, diffusion=DiffusionConfig(prediction="v")), {})


SAMPLE = SampleConfig(solver="ddim", steps=10)


def clip_inputs(lengths: tuple[int, ...] = (3, 2)):
    g = torch.Generator().manual_seed(1)
    identity = torch.rand(len(lengths), 3, 16, 16, generator=g) * 2 - 1
    return identity, [torch.randn(n, 12, generator=g) for n in lengths]


def run(
    model: LoadedModel, sample: SampleConfig = SAMPLE, lengths: tuple[int, ...] = (3, 2), **options
) -> torch.Tensor:
    identity, embs = clip_inputs(lengths)
    return torch.cat(sample_clips(model, identity, embs, sample, seed=0, progress=False, **options))


def test_defaults_are_the_plain_video_loop():
    model = tiny_loaded()
    identity, embs = clip_inputs()
    direct = sample_video(
        model.unet,
        sampling_process(model, SAMPLE),
        identity,
        embs,
        model.cfg.model,
        SAMPLE,
        torch.Generator().manual_seed(0),
        motion_blur=model.cfg.data.motion_blur,
        progress=False,
    )
    assert torch.equal(run(model), torch.cat(direct))


def test_bf16_autocast_on_cpu_close_to_fp32():
    model = tiny_loaded()
    dtypes = []
    model.unet.out.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    fp32 = run(model)
    assert set(dtypes) == {torch.float32}
    dtypes.clear()
    bf16 = run(model, precision="bf16")
    assert set(dtypes) == {torch.bfloat16}  # autocast really ran
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    diff = (bf16 - fp32).abs()
    assert diff.max() > 0  # and changed something
    # frames in [-1, 1] (mean |x| about 0.6 here); observed max 0.05, mean 0.005
    assert diff.max() < 0.2 and diff.mean() < 0.02


def test_precision_errors():
    model = tiny_loaded()
    with pytest.raises(DiffheadsError, match="fp16 needs a CUDA device"):
        run(model, precision="fp16")
    with pytest.raises(DiffheadsError, match="unknown precision"):
        run(model, precision="int8")


def test_channels_last_same_frames():
    model = tiny_loaded()
    default = run(model)
    conv = model.unet.input_blocks[0][0].weight
    fast = run(model, channels_last=True)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.testing.assert_close(fast, default, atol=1e-4, rtol=0)
    again = run(model)  # a default call puts the weights back
    assert conv.is_contiguous()
    torch.testing.assert_close(again, default, atol=1e-6, rtol=0)
    torch.testing.assert_close(run(model, channels_last=True, precision="bf16"), default, atol=0.2, rtol=0)


def test_compile_traces_once_and_is_cached(monkeypatch):
    """compile=True through torch.compile's graph capture (dynamo) with the eager backend: inductor's C++ code
    generation takes minutes on a cold cache, so the real backend is the slow test below."""
    import torch._dynamo

    import diffheads.sample.runtime as generate

    calls = []
    real_compile = torch.compile

    def eager_compile(module, mode=None, **kw):
        calls.append(mode)
        return real_compile(module, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", eager_compile)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = tiny_loaded()
    quick = dict(sample=SampleConfig(solver="ddim", steps=2), lengths=(2, 2))  # one batch shape: one trace
    default = run(model, **quick)
    compiled = run(model, compile=True, **quick)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert calls == [None] and graphs >= 1  # default mode on CPU; the UNet really went through dynamo
    torch.testing.assert_close(compiled, default, atol=1e-5, rtol=0)
    torch.testing.assert_close(run(model, compile=True, **quick), compiled, atol=0, rtol=0)
    assert calls == [None]  # cached on the LoadedModel, not compiled again
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # and nothing retraced
    cached = generate._compiled_unet(model, torch.device("cpu"))
    model.unet = UNet(model.cfg.model).eval()  # a replaced network gets its own compiled module
    assert generate._compiled_unet(model, torch.device("cpu")) is not cached and calls == [None, None]
    torch._dynamo.reset()


def test_compile_without_a_compiler_says_so(monkeypatch):
    import diffheads.sample.runtime as generate

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(generate.shutil, "which", lambda name: None)
    with pytest.raises(DiffheadsError, match="C\\+\\+ compiler"):
        run(tiny_loaded(), compile=True)


@pytest.mark.slow
def test_compile_with_inductor_on_cpu():
    """The real torch.compile (inductor, C++ code generation): 1-2 minutes on 2 cores with a cold inductor cache."""
    import torch._dynamo

    torch._dynamo.reset()
    model = tiny_loaded()
    quick = dict(sample=SampleConfig(solver="ddim", steps=2), lengths=(2, 2))  # one batch shape: one compilation
    default = run(model, **quick)
    compiled = run(model, compile=True, **quick)
    torch.testing.assert_close(compiled, default, atol=1e-4, rtol=0)
    torch.testing.assert_close(run(model, compile=True, **quick), compiled, atol=0, rtol=0)
    torch._dynamo.reset()
