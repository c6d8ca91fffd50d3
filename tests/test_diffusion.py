"""Diffusion maths against independent float64 computations and the reference golden vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffheads.config import DiffusionConfig, Prediction
from diffheads.diffusion.gaussian import GaussianDiffusion, lip_loss
from diffheads.diffusion.schedule import cosine_schedule, respaced_timesteps


def numpy_cosine_alpha_bar(n: int, s: float = 0.008) -> np.ndarray:
    """alpha_bar(t) from the closed form, with the beta cap applied the way the schedule defines it."""
    f = lambda t: np.cos((t / n + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    t = np.arange(n + 1, dtype=np.float64)
    betas = np.minimum(1 - f(t[1:]) / f(t[:-1]), 0.999)
    return np.cumprod(1 - betas)


def test_cosine_schedule_matches_closed_form_float64():
    s = cosine_schedule(1000, float32=False)
    ab = numpy_cosine_alpha_bar(1000)
    np.testing.assert_allclose(s.alpha_bar.numpy(), ab, rtol=1e-12)
    # Without the cap, alpha_bar(t) = f(t+1)/f(0) exactly; the cap only touches the last step.
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert s.alpha_bar[500].item() == pytest.approx(f(501) / f(0), rel=1e-12)
    assert s.beta[-1].item() == pytest.approx(0.999)
    assert (s.beta[:-1] < 0.999).all()


def test_float32_schedule_is_close_to_float64():
    s32, s64 = cosine_schedule(float32=True), cosine_schedule(float32=False)
    rel = ((s32.alpha_bar.double() - s64.alpha_bar).abs() / s64.alpha_bar).max().item()
    assert rel < 2e-5


def test_posterior_matches_gaussian_conditioning():
    """q(x_{t-1} | x_t, x0) by completing the square, computed independently in float64."""
    s = cosine_schedule(float32=False)
    d = GaussianDiffusion(s, DiffusionConfig())
    rng = np.random.default_rng(0)
    x0 = torch.from_numpy(rng.standard_normal((3, 3, 2, 2)))
    xt = torch.from_numpy(rng.standard_normal((3, 3, 2, 2)))
    idx = torch.tensor([1, 400, 999])
    mean, logvar = d.q_posterior(x0, xt, idx)
    ab = numpy_cosine_alpha_bar(1000)
    for b, t in enumerate(idx.tolist()):
        beta_t = 1 - ab[t] / ab[t - 1]
        # prior x_{t-1} ~ N(sqrt(ab_{t-1}) x0, 1 - ab_{t-1}); likelihood x_t ~ N(sqrt(1-beta_t) x_{t-1}, beta_t)
        prec = 1 / (1 - ab[t - 1]) + (1 - beta_t) / beta_t
        var = 1 / prec
        mu = var * (np.sqrt(ab[t - 1]) * x0[b].numpy() / (1 - ab[t - 1]) + np.sqrt(1 - beta_t) * xt[b].numpy() / beta_t)
        np.testing.assert_allclose(mean[b].numpy(), mu, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.exp(logvar[b].numpy()), var, rtol=1e-9)


def test_respacing_keeps_alpha_bar_at_kept_steps():
    full = cosine_schedule(float32=False)
    for k in (5, 10, 100, 200, 1000):
        sp = full.respace(k)
        kept = sp.timesteps.tolist()
        assert kept == sorted(set(kept)) and kept[0] == 0 and kept[-1] == 999 and len(kept) == k
        np.testing.assert_allclose(sp.alpha_bar.numpy(), full.alpha_bar[kept].numpy(), rtol=1e-9)


def test_respaced_timesteps_reference_list():
    kept = respaced_timesteps(1000, 100)
    assert kept[:6] == [0, 10, 20, 30, 40, 50] and kept[6] == 61 and kept[-3:] == [979, 989, 999]
    assert respaced_timesteps(1000, 200)[:5] == [0, 5, 10, 15, 20]
    # reference facts: round-half-up of k * 999 / 99 gives the same list
    assert kept == [int(math.floor(i * 999 / 99 + 0.5)) for i in range(100)]


def numpy_kl(m1, lv1, m2, lv2):  # noqa: ANN001, ANN201
    return 0.5 * (lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 / np.exp(lv2) - 1)


def numpy_decoder_nll(x, mean, logvar):  # noqa: ANN001, ANN201
    """-log of the probability mass of x's 8-bit bin under N(mean, e^logvar), tanh-approximated CDF."""

    def cdf(z):  # noqa: ANN001, ANN202
        return 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))

    std = np.exp(0.5 * logvar)
    upper = cdf((x - mean + 1 / 255) / std)
    lower = cdf((x - mean - 1 / 255) / std)
    mass = np.where(x < -0.999, upper, np.where(x > 0.999, 1 - lower, upper - lower))
    return -np.log(np.maximum(mass, 1e-12))


def test_vlb_terms_match_independent_numpy():
    d = GaussianDiffusion(cosine_schedule(float32=False), DiffusionConfig())
    rng = np.random.default_rng(1)
    x0 = np.round((rng.uniform(-1, 1, (2, 3, 4, 4)) + 1) * 127.5) / 127.5 - 1
    x0[0, 0, 0, 0], x0[0, 0, 0, 1] = -1.0, 1.0
    eps = rng.standard_normal((2, 3, 4, 4))
    idx = torch.tensor([0, 300])
    xt = d.q_sample(torch.from_numpy(x0), idx, torch.from_numpy(eps)).numpy()
    out = np.concatenate([eps + 0.1 * rng.standard_normal(eps.shape), rng.uniform(-1, 1, eps.shape)], axis=1)
    got = d.vlb_terms(torch.from_numpy(out), torch.from_numpy(x0), torch.from_numpy(xt), idx).numpy()
    ab = numpy_cosine_alpha_bar(1000)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    beta = 1 - ab / ab_prev
    beta_tilde = beta * (1 - ab_prev) / (1 - ab)
    for b, t in enumerate(idx.tolist()):
        x0_hat = np.clip((xt[b] - np.sqrt(1 - ab[t]) * out[b, :3]) / np.sqrt(ab[t]), -1, 1)
        c1 = beta[t] * np.sqrt(ab_prev[t]) / (1 - ab[t])
        c2 = (1 - ab_prev[t]) * np.sqrt(1 - beta[t]) / (1 - ab[t])
        frac = (out[b, 3:] + 1) / 2
        log_bt = np.log(beta_tilde[max(t, 1)])  # clipped: position 0 uses position 1
        p_logvar = frac * np.log(beta[t]) + (1 - frac) * log_bt
        p_mean = c1 * x0_hat + c2 * xt[b]
        if t == 0:
            want = numpy_decoder_nll(x0[b], p_mean, p_logvar).mean() / np.log(2)
        else:
            q_mean = c1 * x0[b] + c2 * xt[b]
            want = numpy_kl(q_mean, np.log(beta_tilde[t]), p_mean, p_logvar).mean() / np.log(2)
        assert got[b] == pytest.approx(want, rel=1e-9)


def test_prediction_types_are_consistent():
    """With the true target, every prediction type recovers the true eps and x0."""
    torch.manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, dtype=torch.float64) * 2 - 1
    eps = torch.randn_like(x0)
    idx = torch.tensor([0, 10, 500, 990])
    for pred in Prediction:
        d = GaussianDiffusion(cosine_schedule(float32=False), DiffusionConfig(prediction=pred))
        xt = d.q_sample(x0, idx, eps)
        target = d.training_target(x0, eps, idx)
        e, x = d.predict_eps_x0(target, xt, idx)
        torch.testing.assert_close(e, eps, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(x, x0, rtol=1e-6, atol=1e-6)


def test_lip_loss_equals_explicit_crop():
    torch.manual_seed(3)
    a, b = torch.randn(2, 3, 20, 20), torch.randn(2, 3, 20, 20)
    lm = torch.rand(2, 20, 2) * 6 + torch.tensor([5.0, 9.0])
    got = lip_loss(a, b, lm, padding=2).item()
    per = []
    for i in range(2):
        x0, y0 = math.floor(lm[i, :, 0].min()) - 2, math.floor(lm[i, :, 1].min()) - 2
        x1, y1 = math.ceil(lm[i, :, 0].max()) + 2, math.ceil(lm[i, :, 1].max()) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, 20), min(y1, 20)
        per.append(((a[i, :, y0:y1, x0:x1] - b[i, :, y0:y1, x0:x1]) ** 2).mean().item())
    assert got == pytest.approx(float(np.mean(per)), rel=1e-6)


def test_training_losses_detach_mean_in_vlb():
    """The VLB term must not send gradient into the mean half (SPEC: eps_pred detached)."""
    d = GaussianDiffusion.from_config(DiffusionConfig(lip_loss_weight=0.0, vlb_weight=1.0))
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    idx = torch.tensor([5, 700])
    xt = d.q_sample(x0, idx, noise)
    out = torch.cat([noise.clone(), torch.zeros_like(noise)], dim=1).requires_grad_(True)
    d.training_losses(out, x0, xt, noise, idx)["loss"].backward()
    # mean half equals the target exactly, so only the VLB could move it: its gradient must be zero
    assert out.grad[:, :3].abs().max().item() == 0.0
    assert out.grad[:, 3:].abs().max().item() > 0.0


# ---- the reference golden vectors (float32 order reproduced, so agreement is exact or near) ----


def test_golden_schedule_and_respacing(golden):
    g = golden
    s = cosine_schedule()
    for name, ref in g["schedule_1000"].items():
        torch.testing.assert_close(getattr(s, name), ref, rtol=1e-6, atol=0)
    sp = s.respace(100)
    assert sp.timesteps.tolist() == list(g["spaced100_timesteps"])
    torch.testing.assert_close(sp.beta, g["spaced100_betas"], rtol=1e-6, atol=0)
    for name, ref in g["schedule_spaced100"].items():
        torch.testing.assert_close(getattr(sp, name), ref, rtol=1e-6, atol=0)
    f64 = g["diffusion_float64_reference"]
    s64 = cosine_schedule(float32=False)
    torch.testing.assert_close(s64.alpha_bar, f64["alpha_bar_1000"], rtol=1e-12, atol=0)
    torch.testing.assert_close(s64.respace(100).beta, f64["spaced100_betas"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("float32", [True, False])
def test_golden_p_params_and_vlb(float32, golden):
    g = golden
    f64 = g["diffusion_float64_reference"]
    cast = (lambda x: x) if float32 else (lambda x: x.double())  # noqa: E731
    d = GaussianDiffusion.from_config(DiffusionConfig(legacy_float32_schedule=float32))
    pp = g["p_params"]
    sp = d.respace(100)
    means, logvars = [], []
    for i in pp["position_indices"]:
        r = sp.p_mean_variance(cast(pp["nn_out"]), cast(pp["xt"]), torch.tensor([i, i]))
        means.append(r["mean"])
        logvars.append(r["log_variance"])
        assert sp.model_timesteps(torch.tensor([i])).item() == pp["original_timesteps"][pp["position_indices"].index(i)]
    ref_mean = pp["p_mean"] if float32 else f64["p_mean"]
    ref_logvar = pp["p_logvar"] if float32 else f64["p_logvar"]
    torch.testing.assert_close(torch.stack(means), ref_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.stack(logvars), ref_logvar, rtol=1e-5, atol=1e-6)
    v = g["vlb"]
    cases = [
        ("x0", "timesteps", "loss", "vlb_loss"),
        ("x0", "timesteps_swapped", "loss_swapped", "vlb_loss_swapped"),
        ("x0_quantized", "timesteps", "loss_quantized", "vlb_loss_quantized"),
        ("x0_quantized", "timesteps_swapped", "loss_quantized_swapped", "vlb_loss_quantized_swapped"),
    ]
    for x0_key, t_key, ref32, ref64 in cases:
        got = d.vlb_terms(cast(v["nn_out"]), cast(v[x0_key]), cast(v["xt"]), v[t_key])
        torch.testing.assert_close(got, v[ref32] if float32 else f64[ref64], rtol=1e-5, atol=0)
    c = g["vlb_consistent"]
    got = d.vlb_terms(cast(c["nn_out"]), cast(c["x0"]), cast(c["xt"]), c["timesteps"])
    torch.testing.assert_close(got, c["loss"] if float32 else f64["vlb_consistent_loss"], rtol=1e-5, atol=0)


def test_golden_lip_loss(golden):
    g = golden["lip_loss"]
    assert lip_loss(g["eps"], g["eps_pred"], g["landmarks"], 5).item() == pytest.approx(g["loss"].item(), rel=1e-6)
    assert lip_loss(g["eps"], g["eps_pred"], g["landmarks_border"], 5).item() == pytest.approx(
        g["loss_border"].item(), rel=1e-6
    )


@pytest.mark.parametrize("steps", [2, 3, 5, 10])
def test_few_step_float32_respacing_stays_finite(steps):
    """The reference's float32 cumprod underflows for few kept steps; ours keeps every array finite."""
    sp = cosine_schedule(float32=True).respace(steps)
    for name in ("alpha_bar", "coef1_x0", "coef2_x0", "coef1_q", "coef2_q", "log_beta_tilde_clipped"):
        assert torch.isfinite(getattr(sp, name)).all(), name
    full64 = cosine_schedule(float32=False)
    sp64 = full64.respace(steps)
    torch.testing.assert_close(sp64.alpha_bar, full64.alpha_bar[sp64.timesteps], rtol=1e-7, atol=0)
