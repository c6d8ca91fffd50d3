"""Frechet distance, FID and FVD: closed forms, the real weight-loading paths with random weights, no network."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from diffheads.errors import DiffheadsError
from diffheads.metrics import frechet
from diffheads.metrics.fid import FIDScorer, inception_features, to_uint8
from diffheads.metrics.frechet import frechet_distance, gaussian_stats
from diffheads.metrics.fvd import FVDScorer, i3d_features, load_i3d, video_clips
from diffheads.metrics.weights import WEIGHTS, MissingWeightsError
from fake_weights import PooledI3D, write_i3d, write_inception

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
I3D_FILE = "i3d_torchscript.pt"
CLIP_LEN = 16


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download attempt fails the test instead of silently using a cache or the network."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(tfi, "load_state_dict_from_url", refuse)


# ---------------------------------------------------------------- Frechet distance


def _random_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    """A random orthogonal matrix (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_commuting_closed_form():
    rng = np.random.default_rng(1)
    d = 20
    q = _random_rotation(rng, d)
    a, b = rng.uniform(0.05, 4.0, d), rng.uniform(0.05, 4.0, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_general_vs_symmetric_form():
    # Tr sqrt(s1 s2) = Tr sqrt(s1^1/2 s2 s1^1/2), the latter from symmetric eigendecompositions only.
    rng = np.random.default_rng(2)
    d = 15
    x, y = rng.normal(size=(d, 3 * d)), rng.normal(size=(d, 3 * d)) * 0.5
    s1, s2 = x @ x.T / (3 * d), y @ y.T / (3 * d) + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), np.zeros(d)
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    expected = np.sum(mu1**2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(inner, 0, None)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_retries_with_offset(monkeypatch: pytest.MonkeyPatch):
    rng = np.random.default_rng(3)
    d = 6
    a, b = rng.uniform(0.1, 2.0, d), rng.uniform(0.1, 2.0, d)
    real_sqrtm = frechet.sqrtm
    calls = []

    def flaky_sqrtm(m):
        calls.append(m.copy())
        return np.full_like(m, np.nan) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(frechet, "sqrtm", flaky_sqrtm)
    with pytest.warns(UserWarning, match="1e-06"):
        got = frechet_distance(np.zeros(d), np.diag(a), np.zeros(d), np.diag(b))
    eps = frechet.SINGULAR_OFFSET
    expected = np.sum(a) + np.sum(b) - 2 * np.sum(np.sqrt((a + eps) * (b + eps)))
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], np.diag((a + eps) * (b + eps)), rtol=1e-12)
    assert got == pytest.approx(expected, rel=1e-9)


def test_gaussian_stats_vs_numpy_cov():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5000, 7)) @ rng.normal(size=(7, 7)) + rng.normal(size=7)
    mu, s_unbiased = gaussian_stats(x, unbiased=True)
    _, s_biased = gaussian_stats(x.astype(np.float32), unbiased=False)
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(s_unbiased, np.cov(x, rowvar=False, ddof=1), rtol=1e-10)
    x32 = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(s_biased, np.cov(x32, rowvar=False, ddof=0), rtol=1e-10)
    assert s_unbiased.dtype == np.float64 and s_biased.dtype == np.float64
    # Sample statistics of two Gaussians converge to the closed form.
    y = rng.normal(size=(200000, 2)) * np.array([1.0, 2.0]) + np.array([1.0, 0.0])
    z = rng.normal(size=(200000, 2)) * np.array([3.0, 0.5])
    fd = frechet_distance(*gaussian_stats(y, True), *gaussian_stats(z, True))
    assert fd == pytest.approx(1.0 + (1 - 3) ** 2 + (2 - 0.5) ** 2, rel=2e-2)


def test_gaussian_stats_needs_two_samples():
    with pytest.raises(DiffheadsError, match="at least 2 samples, got 1"):
        gaussian_stats(np.ones((1, 3)), unbiased=True)


# ---------------------------------------------------------------- FID


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weights file under the published name, in torch-fidelity's format (torch.save of a state dict)."""
    path = tmp_path_factory.mktemp("weights") / INCEPTION_FILE
    write_inception(path)
    return path


def _images(seed: int, n: int, offset: int) -> np.ndarray:
    """n random uint8 RGB images (N, 48, 64, 3), non-square so an H/W mix-up changes the result."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, size=(n, 48, 64, 3)) + offset, 0, 255).astype(np.uint8)


def test_fid_matches_torchmetrics_and_frechet_distance(inception_file: Path):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, generated = _images(0, 8, 0), _images(1, 8, 40)
    scorer = FIDScorer(inception_file)
    scorer.update(real, real=True)
    scorer.update(torch.from_numpy(generated), real=False)
    result = scorer.compute()
    assert result["n_real"] == 8 and result["n_generated"] == 8

    # (a) torchmetrics itself on the same weights and the same uint8 (N, 3, H, W) inputs.
    direct = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(inception_file), antialias=False)
    direct.update(torch.from_numpy(real).permute(0, 3, 1, 2), real=True)
    direct.update(torch.from_numpy(generated).permute(0, 3, 1, 2), real=False)
    for state in ("real_features_sum", "real_features_cov_sum", "fake_features_sum", "fake_features_cov_sum"):
        assert torch.equal(getattr(scorer.metric, state), getattr(direct, state)), state
    assert result["fid"] == float(direct.compute())

    # (b) our Frechet distance on the same features with the unbiased covariance.
    feats_real, feats_gen = inception_features(scorer, real), inception_features(scorer, generated)
    assert feats_real.shape == (8, 2048) and feats_real.dtype == np.float64
    assert np.abs(feats_real).mean() > 1e-2  # random weights that still give informative features
    mu_r, s_r = gaussian_stats(feats_real, unbiased=True)
    mu_g, s_g = gaussian_stats(feats_gen, unbiased=True)
    # With 8 samples both covariances live in a <= 15-d subspace; the Frechet distance is invariant under an
    # isometry onto it, and sqrtm on 17x17 takes milliseconds instead of ~20 s for 2048x2048 on 2 cores.
    span = np.concatenate([feats_real - mu_r, feats_gen - mu_g, (mu_r - mu_g)[None]])
    q, _ = np.linalg.qr(span.T)
    ours = frechet_distance(q.T @ mu_r, q.T @ s_r @ q, q.T @ mu_g, q.T @ s_g @ q)
    # 1e-5: torchmetrics returns float32 (~6e-8), computes Tr sqrt with eigvals on the rank-deficient 2048x2048
    # product, and its covariance is E[xx^T] - mu mu^T; observed agreement is ~1e-7.
    assert result["fid"] == pytest.approx(ours, rel=1e-5)
    _, s_r_biased = gaussian_stats(feats_real, unbiased=False)
    _, s_g_biased = gaussian_stats(feats_gen, unbiased=False)
    biased = frechet_distance(q.T @ mu_r, q.T @ s_r_biased @ q, q.T @ mu_g, q.T @ s_g_biased @ q)
    assert abs(biased - ours) > 1e-3 * abs(ours)  # the check above can tell N-1 from N


def test_to_uint8_rounds_instead_of_truncating():
    unit = to_uint8(np.array([0.0, 0.998, 0.999, 0.5, 1.0, 1.2, -0.1], dtype=np.float32), value_range=(0, 1))
    assert unit.dtype == torch.uint8
    # 0.999*255 = 254.745: rounding gives 255 where (x*255).byte() (torchmetrics normalize=True) gives 254.
    assert unit.tolist() == [0, 254, 255, 128, 255, 255, 0]
    assert int(torch.tensor(0.999) * 255) == 254
    signed = to_uint8(torch.tensor([-1.0, 0.0, 1.0, 0.999, -0.999, 0.5]), value_range=(-1, 1))
    assert signed.tolist() == [0, 128, 255, 255, 0, 191]  # 0.5 -> 191.25
    halves = to_uint8(np.array([2.5, 3.5, 254.5, 0.49]), value_range=(0, 255))
    assert halves.tolist() == [3, 4, 255, 0]  # half up, like StyleGAN's x*127.5 + 128 then truncation
    same = np.arange(256, dtype=np.uint8)
    assert torch.equal(to_uint8(same), torch.from_numpy(same))
    with pytest.raises(DiffheadsError, match="value_range"):
        to_uint8(np.zeros(3, dtype=np.float32))


def test_fid_float_input_is_rounded_before_inception(inception_file: Path):
    scorer = FIDScorer(inception_file)
    target = _images(2, 2, 0)
    rng = np.random.default_rng(5)
    # Within +-0.45 of each level, so only rounding (not truncation) recovers `target` from the floats.
    as_float = (target.astype(np.float64) + rng.uniform(-0.45, 0.45, target.shape)) / 255.0
    as_float = np.clip(as_float, 0.0, 1.0).astype(np.float32)
    assert torch.equal(to_uint8(as_float, (0, 1)), torch.from_numpy(target))
    np.testing.assert_array_equal(inception_features(scorer, as_float, (0, 1)), inception_features(scorer, target))
    signed = as_float * 2.0 - 1.0
    assert torch.equal(to_uint8(signed, (-1, 1)), torch.from_numpy(target))
    with pytest.raises(DiffheadsError, match="at least 2 real and 2 generated"):
        scorer.compute()


def test_fid_weights_errors(tmp_path: Path):
    with pytest.raises(MissingWeightsError) as missing:
        FIDScorer(tmp_path / INCEPTION_FILE)
    assert INCEPTION_FILE in str(missing.value) and WEIGHTS["inception"].url in str(missing.value)
    bad = tmp_path / "bad" / INCEPTION_FILE
    bad.parent.mkdir()
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(DiffheadsError, match="not a torch-fidelity InceptionV3 state dict") as err:
        FIDScorer(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    # a pickle that would run code is refused before torch-fidelity's unrestricted load sees it
    import collections

    torch.save({"w": torch.zeros(1), "odd": collections.OrderedDict(a=print)}, bad)
    with pytest.raises(DiffheadsError, match="plain tensors"):
        FIDScorer(bad)


# ---------------------------------------------------------------- FVD


def _expected_features(clips: np.ndarray, detector: PooledI3D) -> np.ndarray:
    """PooledI3D's features computed in numpy from (B, T, H, W, 3) uint8 clips."""
    v = clips.astype(np.float64) / 255.0 * 2.0 - 1.0
    rows = np.arange(clips.shape[2]) / clips.shape[2]
    mean = v.mean(axis=(2, 3)).transpose(0, 2, 1).reshape(len(clips), -1)
    row_weighted = (v * rows[None, None, :, None, None]).mean(axis=(2, 3)).transpose(0, 2, 1).reshape(len(clips), -1)
    pooled = np.concatenate([mean, row_weighted], axis=1)
    return np.tanh(pooled @ detector.proj.double().numpy() + detector.shift.double().numpy())


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in detector scripted and saved under the published name."""
    path = tmp_path_factory.mktemp("i3d") / I3D_FILE
    return write_i3d(path, CLIP_LEN)


def _video(seed: int, n_frames: int, low: int = 0, high: int = 160) -> np.ndarray:
    """A random uint8 video (T, 8, 12, 3) with pixel values in [low, high)."""
    rng = np.random.default_rng(seed)
    return rng.integers(low, high, size=(n_frames, 8, 12, 3)).astype(np.uint8)


def test_video_clips():
    frames = np.arange(40)
    clips = video_clips(frames)
    assert [c.tolist() for c in clips] == [list(range(0, 16)), list(range(16, 32))]  # 32..39 dropped
    assert video_clips(np.arange(15)) == []
    assert len(video_clips(np.arange(16))) == 1
    overlapping = video_clips(frames, clip_len=16, stride=8)
    assert [c[0] for c in overlapping] == [0, 8, 16, 24]
    assert video_clips(_video(0, 20))[0].shape == (16, 8, 12, 3)


def test_i3d_features_layout_dtype_range(i3d_file: Path):
    detector = load_i3d(i3d_file)
    assert isinstance(detector, torch.jit.ScriptModule)
    clips = np.stack([_video(s, CLIP_LEN, 20 * s, 100 + 30 * s) for s in range(5)])
    feats = i3d_features(detector, clips, batch_size=2)
    assert feats.shape == (5, 400) and feats.dtype == np.float64
    reference = PooledI3D(CLIP_LEN)
    np.testing.assert_allclose(feats, _expected_features(clips, reference), atol=2e-5)
    # float32 reductions round differently with another batch size.
    np.testing.assert_allclose(feats, i3d_features(detector, clips, batch_size=8), rtol=0, atol=2e-6)
    with pytest.raises(torch.jit.Error, match="uint8"):  # the stand-in really checks what it is given
        detector(torch.zeros(1, 3, CLIP_LEN, 8, 12), rescale=True, resize=True, return_features=True)


def test_fvd_variants_match_independent_stats(i3d_file: Path):
    reference = PooledI3D(CLIP_LEN)
    # Enough clips (> 400) for full-rank covariances, so sqrtm is well conditioned; similar means and different
    # contrast make the covariance terms, where N and N-1 differ, most of the distance.
    real_videos = [_video(10 + i, 100 * CLIP_LEN + 7, 0, 160) for i in range(5)]
    gen_videos = [_video(20 + i, 110 * CLIP_LEN, 40, 120) for i in range(4)] + [_video(30, CLIP_LEN - 1)]
    real_feats = _expected_features(np.stack([c for v in real_videos for c in video_clips(v)]), reference)
    gen_feats = _expected_features(np.stack([c for v in gen_videos for c in video_clips(v)]), reference)
    assert len(real_feats) == 500 and len(gen_feats) == 440

    results = {}
    for variant, ddof in (("stylegan-v", 0), ("laughing-matters", 1)):
        scorer = FVDScorer(i3d_file, variant=variant)
        counts = [scorer.update(v, real=True) for v in real_videos] + [scorer.update(v, real=False) for v in gen_videos]
        assert counts[-1] == 0  # the 15-frame video gives no clip
        result = scorer.compute()
        expected = frechet_distance(
            gen_feats.mean(axis=0),
            np.cov(gen_feats, rowvar=False, ddof=ddof),
            real_feats.mean(axis=0),
            np.cov(real_feats, rowvar=False, ddof=ddof),
        )
        assert result["fvd"] == pytest.approx(expected, rel=1e-5)
        assert result["variant"] == variant and result["clip_len"] == CLIP_LEN
        assert result["n_real_clips"] == 500 and result["n_generated_clips"] == 440
        results[variant] = result["fvd"]
    # N vs N-1 moves the distance by ~0.2%, 100x the tolerance above, so the checks can tell the variants apart.
    assert abs(results["stylegan-v"] - results["laughing-matters"]) > 1e-3 * results["stylegan-v"]


def test_fvd_needs_two_clips_per_side(i3d_file: Path):
    scorer = FVDScorer(i3d_file, variant="laughing-matters")
    scorer.update(_video(0, 40), real=True)
    scorer.update(_video(1, 20), real=False)
    with pytest.raises(DiffheadsError, match="at least 2 clips of 16 frames on each side, got 2 real and 1 generated"):
        scorer.compute()
    with pytest.raises(DiffheadsError, match="unknown FVD variant 'tf'"):
        FVDScorer(i3d_file, variant="tf")
    with pytest.raises(DiffheadsError, match="uint8"):
        scorer.update(_video(0, 20).astype(np.float32), real=True)


def test_i3d_weights_errors(tmp_path: Path):
    with pytest.raises(MissingWeightsError) as missing:
        FVDScorer(tmp_path / I3D_FILE)
    message = str(missing.value)
    assert I3D_FILE in message and "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt" in message
    for name, write in (
        ("state_dict", lambda p: torch.save({"proj": torch.zeros(3)}, p)),
        ("garbage", lambda p: p.write_bytes(b"\x00not torchscript" * 8)),
    ):
        bad = tmp_path / name / I3D_FILE
        bad.parent.mkdir()
        write(bad)
        with pytest.raises(DiffheadsError, match="is not a TorchScript archive") as err:
            load_i3d(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
