"""Compare our network and diffusion maths with golden values produced by the authors' code.

A golden file (`golden_small.pt` format, read with weights_only=True) holds a reference network
configuration, a random state dict of the reference network, inputs and the reference outputs
(required), and optionally reference values of the diffusion maths: the cosine schedule and its
100-step respacing, p_mean / p_logvar, VLB terms and the lip loss. `check_golden` rebuilds the
network from the configuration with our code, loads the state dict strictly, runs every
comparison it has values for and returns one `Comparison` per quantity.

The configuration is the reference UNet constructor's keyword dict, in its own names; its
`id_condition_type` (frame, pre_gn, post_gn) and `audio_condition_type` (pre_gn, post_gn,
double_pre_gn, attention) choose the conditioning variant, and keys it omits take the
constructor's defaults, not ours.

The reference computes its schedule in float32; our default is float64, a deliberate fix
(docs/model.md). The float32 values are compared with `diffusion.legacy_float32_schedule=true`,
the compatibility option that reproduces them; float64 references, when present, are compared
with the default path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffheads.conditioning import Conditioning
from diffheads.config import AudioCondition, DiffusionConfig, IdCondition, ModelConfig, from_dict
from diffheads.diffusion.gaussian import GaussianDiffusion, lip_loss
from diffheads.diffusion.schedule import cosine_schedule
from diffheads.errors import DiffheadsError
from diffheads.models.embeddings import timestep_features
from diffheads.models.unet import UNet, count_parameters

NETWORK_TOL = (1e-4, 1e-4)  # (atol, rtol): the reference itself moves by ~2.4e-6 between 1 and 2 threads
NETWORK_KEYS = ("config", "state_dict", "inputs", "output")
LIP_PADDING = 5  # the reference's lip-loss padding at 128 px, used for the golden values
REFERENCE_REQUIRED = (
    "image_size",
    "in_channels",
    "model_channels",
    "out_channels",
    "num_res_blocks",
    "attention_resolutions",
)  # the reference UNet's positional arguments
REFERENCE_DEFAULTS: dict[str, Any] = {  # the reference UNet constructor's keyword defaults (training branch)
    "dropout": 0.0,
    "channel_mult": [1, 2, 4, 8],
    "num_heads": 1,
    "num_head_channels": -1,
    "resblock_updown": False,
    "id_condition_type": "frame",
    "audio_condition_type": "pre_gn",
    "n_motion_frames": 0,
    "grayscale_motion": False,
    "n_audio_motion_embs": 0,
}
REFERENCE_ALIASES = {"img_resize": "image_size"}  # the training config's name for the frame side


@dataclass(frozen=True)
class Comparison:
    """One quantity: the largest absolute error against the reference and whether it is within tolerance."""

    name: str
    max_abs_error: float
    atol: float
    rtol: float
    ok: bool


def compare(name: str, got: Any, ref: Any, atol: float, rtol: float) -> Comparison:
    """Elementwise |got - ref| <= atol + rtol |ref| (in float64), reported with the largest |got - ref|."""
    got_t = torch.as_tensor(got).double()
    ref_t = torch.as_tensor(ref).double()
    if got_t.shape != ref_t.shape:
        return Comparison(name, float("inf"), atol, rtol, False)
    err = (got_t - ref_t).abs()
    ok = bool((err <= atol + rtol * ref_t.abs()).all())
    return Comparison(name, float(err.max()) if err.numel() else 0.0, atol, rtol, ok)


def load_golden(path: str | Path) -> dict[str, Any]:
    """A golden file's contents (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise DiffheadsError(f"golden file {path} not found; pass e.g. tests/data/golden_small.pt")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch reports bad files as several exception types
        raise DiffheadsError(
            f"golden file {path} cannot be read weights-only ({type(exc).__name__}); is it a golden file?"
        ) from None
    missing = [k for k in NETWORK_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise DiffheadsError(
            f"golden file {path} lacks the network part ({', '.join(missing)}); it is not in the golden format"
        )
    return data


def reference_model_config(config: dict[str, Any]) -> ModelConfig:
    """Our ModelConfig for the reference constructor arguments of a golden file (extra reference keys ignored).

    Omitted keyword arguments take the reference constructor's defaults; the variant names must be the
    reference's (our `_ours` designs do not exist there).
    """
    config = {REFERENCE_ALIASES.get(k, k): v for k, v in config.items()}
    missing = [k for k in REFERENCE_REQUIRED if k not in config]
    if missing:
        raise DiffheadsError(
            f"golden config lacks {', '.join(missing)}, required by the reference UNet; "
            "store the constructor's keyword arguments under 'config'"
        )
    for key, kind in (("id_condition_type", IdCondition), ("audio_condition_type", AudioCondition)):
        value = config.get(key)
        if isinstance(value, str) and value.endswith("_ours"):
            names = ", ".join(m.value for m in kind if not m.value.endswith("_ours"))
            raise DiffheadsError(
                f"golden config: {key} {value!r} is a diffheads design the reference code does not "
                f"have; a golden file names one of: {names}"
            )
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    model = {k: v for k, v in {**REFERENCE_DEFAULTS, **config}.items() if k in names}
    return from_dict({"model": model}, source="golden config").model


def _network(g: dict[str, Any]) -> list[Comparison]:
    cfg = reference_model_config(g["config"])
    model = UNet(cfg)
    try:
        model.load_state_dict(g["state_dict"], strict=True)
    except RuntimeError as exc:
        raise DiffheadsError(f"the golden state dict does not fit our network: {str(exc).splitlines()[1:2]}") from None
    model.eval()
    out: list[Comparison] = []
    if "param_count" in g:
        n = count_parameters(model)
        out.append(Comparison("param_count", float(abs(n - g["param_count"])), 0.0, 0.0, n == g["param_count"]))
    if "timestep_features" in g:
        t = torch.as_tensor(g["timestep_features_t"])
        out.append(
            compare("timestep_features", timestep_features(t, cfg.model_channels), g["timestep_features"], 1e-6, 0)
        )
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(lambda m, a, o, name=name: captured.__setitem__(name, o))
        for name in g.get("intermediates", {})
    ]
    x = g["inputs"]
    cond = Conditioning(identity_frame=x["x_cond"], motion_frames=x["motion_frames"], audio_window=x["audio_emb"])
    with torch.no_grad():
        result = model(x["x"], x["timesteps"], cond)
    for h in hooks:
        h.remove()
    for name, expected in g.get("intermediates", {}).items():
        out.append(compare(f"intermediate {name}", captured[name], expected, *NETWORK_TOL))
    out.append(compare("network output", result, g["output"], *NETWORK_TOL))
    return out


def _schedule(g: dict[str, Any]) -> list[Comparison]:
    out = []
    s = cosine_schedule()  # float32, the reference's arithmetic
    for name, ref in g.get("schedule_1000", {}).items():
        out.append(compare(f"schedule {name}", getattr(s, name), ref, 0, 1e-6))
    if "betas_1000" in g:
        out.append(compare("betas", s.beta, g["betas_1000"], 0, 1e-6))
    if "alpha_bar_1000" in g:
        out.append(compare("alpha_bar", s.alpha_bar, g["alpha_bar_1000"], 0, 1e-6))
    if "spaced100_timesteps" in g:
        sp = s.respace(100)
        same = sp.timesteps.tolist() == list(g["spaced100_timesteps"])
        out.append(Comparison("respaced timesteps (100)", 0.0 if same else float("inf"), 0, 0, same))
        if "spaced100_betas" in g:
            out.append(compare("respaced betas (100)", sp.beta, g["spaced100_betas"], 0, 1e-6))
        for name, ref in g.get("schedule_spaced100", {}).items():
            out.append(compare(f"respaced schedule {name}", getattr(sp, name), ref, 0, 1e-6))
    f64 = g.get("diffusion_float64_reference", {})
    s64 = cosine_schedule(float32=False)
    if "alpha_bar_1000" in f64:
        out.append(compare("alpha_bar (float64)", s64.alpha_bar, f64["alpha_bar_1000"], 0, 1e-12))
    if "spaced100_betas" in f64:
        out.append(compare("respaced betas (float64)", s64.respace(100).beta, f64["spaced100_betas"], 0, 1e-12))
    return out


def _posterior_and_vlb(g: dict[str, Any]) -> list[Comparison]:
    out = []
    f64 = g.get("diffusion_float64_reference", {})
    for legacy in (True, False):
        cast: Callable[[torch.Tensor], torch.Tensor] = (lambda t: t) if legacy else (lambda t: t.double())
        suffix = "" if legacy else " (float64)"
        d = GaussianDiffusion.from_config(DiffusionConfig(legacy_float32_schedule=legacy))
        pp = g.get("p_params")
        if pp is not None and (legacy or "p_mean" in f64):
            sp = d.respace(100)
            res = [
                sp.p_mean_variance(cast(pp["nn_out"]), cast(pp["xt"]), torch.tensor([i, i]))
                for i in pp["position_indices"]
            ]
            mean_ref = pp["p_mean"] if legacy else f64["p_mean"]
            logvar_ref = pp["p_logvar"] if legacy else f64["p_logvar"]
            out.append(compare(f"p_mean{suffix}", torch.stack([r["mean"] for r in res]), mean_ref, 1e-6, 1e-5))
            out.append(
                compare(f"p_logvar{suffix}", torch.stack([r["log_variance"] for r in res]), logvar_ref, 1e-6, 1e-5)
            )
        v = g.get("vlb")
        if v is not None:
            cases = [
                ("x0", "timesteps", "loss"),
                ("x0", "timesteps_swapped", "loss_swapped"),
                ("x0_quantized", "timesteps", "loss_quantized"),
                ("x0_quantized", "timesteps_swapped", "loss_quantized_swapped"),
            ]
            for x0_key, t_key, ref_key in cases:
                ref = v[ref_key] if legacy else f64.get(f"vlb_{ref_key}")
                if ref is None:
                    continue
                got = d.vlb_terms(cast(v["nn_out"]), cast(v[x0_key]), cast(v["xt"]), v[t_key])
                out.append(compare(f"vlb {ref_key}{suffix}", got, ref, 0, 1e-5))
        c = g.get("vlb_consistent")
        if c is not None and (legacy or "vlb_consistent_loss" in f64):
            got = d.vlb_terms(cast(c["nn_out"]), cast(c["x0"]), cast(c["xt"]), c["timesteps"])
            out.append(
                compare(f"vlb consistent{suffix}", got, c["loss"] if legacy else f64["vlb_consistent_loss"], 0, 1e-5)
            )
    return out


def _lip(g: dict[str, Any]) -> list[Comparison]:
    lp = g.get("lip_loss")
    if lp is None:
        return []
    return [
        compare("lip loss", lip_loss(lp["eps"], lp["eps_pred"], lp["landmarks"], LIP_PADDING), lp["loss"], 0, 1e-6),
        compare(
            "lip loss (mouth at the border)",
            lip_loss(lp["eps"], lp["eps_pred"], lp["landmarks_border"], LIP_PADDING),
            lp["loss_border"],
            0,
            1e-6,
        ),
    ]


def check_golden(golden: dict[str, Any]) -> list[Comparison]:
    """Every comparison the golden values allow: the network always, the diffusion maths when present."""
    return _network(golden) + _schedule(golden) + _posterior_and_vlb(golden) + _lip(golden)


def check_reference(path: str | Path) -> dict[str, Any]:
    """`diffheads check-reference`: the comparisons of a golden file as a JSON-able report."""
    golden = load_golden(path)
    checks = check_golden(golden)
    cfg = reference_model_config(golden["config"])
    return {
        "golden": str(path),
        "variant": f"identity {cfg.id_condition_type.value}, audio {cfg.audio_condition_type.value}",
        "ok": all(c.ok for c in checks),
        "n_checks": len(checks),
        "failed": [c.name for c in checks if not c.ok],
        "checks": [dataclasses.asdict(c) for c in checks],
    }
