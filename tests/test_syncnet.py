"""SyncNet metrics: state-dict compatibility, MFCC against independent maths, windows, crops, offset sign, errors."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from diffheads.errors import DiffheadsError
from diffheads.metrics.mfcc import mfcc
from diffheads.metrics.syncnet import (
    SyncNet,
    audio_features,
    evaluate_sync,
    load_syncnet,
    n_sync_windows,
    sync_distances,
    sync_scores,
    syncnet_crops,
)
from fake_weights import random_syncnet

# Parameter and buffer shapes of joonson/syncnet_python SyncNetModel.py class S, written out from its source:
# index = position in the nn.Sequential (ReLUs and pools take indices; the audio stream's no-op
# MaxPool2d(1, 1) sits at 3).
_CONV_AUD = {
    0: (64, 1, 3, 3),
    4: (192, 64, 3, 3),
    8: (384, 192, 3, 3),
    11: (256, 384, 3, 3),
    14: (256, 256, 3, 3),
    18: (512, 256, 5, 4),
}
_CONV_LIP = {
    0: (96, 3, 5, 7, 7),
    4: (256, 96, 1, 5, 5),
    8: (256, 256, 1, 3, 3),
    11: (256, 256, 1, 3, 3),
    14: (256, 256, 1, 3, 3),
    18: (512, 256, 1, 6, 6),
}


def _bn(prefix: str, n: int) -> list[tuple[str, tuple[int, ...]]]:
    """BatchNorm entries of a state dict."""
    return [
        (f"{prefix}.weight", (n,)),
        (f"{prefix}.bias", (n,)),
        (f"{prefix}.running_mean", (n,)),
        (f"{prefix}.running_var", (n,)),
        (f"{prefix}.num_batches_tracked", ()),
    ]


def _cnn(name: str, convs: dict[int, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]]:
    """Conv + BN entries of one conv stream (each BN right after its conv)."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for i, shape in convs.items():
        out += [(f"{name}.{i}.weight", shape), (f"{name}.{i}.bias", (shape[0],))]
        out += _bn(f"{name}.{i + 1}", shape[0])
    return out


def _fc(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """Linear 512->512, BN1d, ReLU, Linear 512->1024."""
    return (
        [(f"{name}.0.weight", (512, 512)), (f"{name}.0.bias", (512,))]
        + _bn(f"{name}.1", 512)
        + [(f"{name}.3.weight", (1024, 512)), (f"{name}.3.bias", (1024,))]
    )


# Registration order in S.__init__: netcnnaud, netfcaud, netfclip, netcnnlip.
REFERENCE_KEYS = _cnn("netcnnaud", _CONV_AUD) + _fc("netfcaud") + _fc("netfclip") + _cnn("netcnnlip", _CONV_LIP)


@pytest.fixture(scope="module")
def random_model() -> SyncNet:
    """A SyncNet with random parameters and random BatchNorm statistics."""
    return random_syncnet()


def test_state_dict_keys_match_reference() -> None:
    state = SyncNet().state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == REFERENCE_KEYS


def test_state_dict_round_trip(random_model: SyncNet, tmp_path: Path) -> None:
    path = tmp_path / "syncnet_v2.model"
    torch.save(random_model.state_dict(), path)
    loaded = load_syncnet(path)
    assert not loaded.training
    for key, value in random_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    gen = torch.Generator().manual_seed(1)
    lip = torch.rand(2, 3, 5, 224, 224, generator=gen) * 255
    aud = torch.randn(3, 1, 13, 20, generator=gen) * 10
    with torch.no_grad():
        lip_out, aud_out = loaded.forward_lip(lip), loaded.forward_aud(aud)
        assert lip_out.shape == (2, 1024) and aud_out.shape == (3, 1024)
        torch.testing.assert_close(lip_out, random_model.forward_lip(lip), rtol=0, atol=0)
        torch.testing.assert_close(aud_out, random_model.forward_aud(aud), rtol=0, atol=0)
        # Fresh BatchNorm statistics would give different outputs, so the stats really were loaded.
        assert not torch.allclose(SyncNet().forward_aud(aud), loaded.forward_aud(aud))


def test_loads_state_dict_without_batch_counters(random_model: SyncNet, tmp_path: Path) -> None:
    # The published file predates num_batches_tracked (PyTorch 0.3); it must still load.
    state = {k: v for k, v in random_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "syncnet_v2.model"
    torch.save(state, path)
    loaded = load_syncnet(path)
    aud = torch.randn(2, 1, 13, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_aud(aud), random_model.forward_aud(aud), rtol=0, atol=0)


def test_streams_reduce_to_one_position_only_at_their_input_size() -> None:
    model = SyncNet()
    with torch.no_grad():
        assert model.netcnnlip(torch.zeros(1, 3, 5, 224, 224)).shape == (1, 512, 1, 1, 1)
        assert model.netcnnlip(torch.zeros(1, 3, 5, 256, 256)).shape == (1, 512, 1, 2, 2)
        assert model.netcnnaud(torch.zeros(1, 1, 13, 20)).shape == (1, 512, 1, 1)
        with pytest.raises(ValueError, match="224"):
            model.forward_lip(torch.zeros(1, 3, 5, 256, 256))
        with pytest.raises(ValueError, match="224"):
            model.forward_lip(torch.zeros(1, 3, 4, 224, 224))


# ---------- offset search ----------


def _reference_pdist(feat1: torch.Tensor, feat2: torch.Tensor, vshift: int) -> torch.Tensor:
    """The reference's per-window loop (SyncNetInstance.calc_pdist), written out plainly."""
    win = 2 * vshift + 1
    feat2p = F.pad(feat2, (0, 0, vshift, vshift))
    rows = [F.pairwise_distance(feat1[[i], :].repeat(win, 1), feat2p[i : i + win, :]) for i in range(len(feat1))]
    return torch.stack(rows)


@pytest.mark.parametrize("shift", [3, -2, 0])
def test_offset_recovers_planted_shift(shift: int) -> None:
    gen = torch.Generator().manual_seed(5)
    n, dim = 40, 32
    v = torch.randn(n, dim, generator=gen)
    a = torch.randn(n, dim, generator=gen)
    for j in range(n):
        if 0 <= j - shift < n:
            a[j] = v[j - shift]  # audio window j carries the sound of video window j - shift
    dists = sync_distances(v, a)
    assert dists.shape == (n, 31)
    torch.testing.assert_close(dists, _reference_pdist(v, a, 15), rtol=0, atol=1e-6)
    scores = sync_scores(dists)
    # shift > 0: the sound comes `shift` frames after the mouth moves (audio lags) -> negative offset.
    assert scores["av_offset"] == -shift
    assert scores["av_confidence"] > 0
    assert scores["lse_d"] == scores["min_dist"] == min(scores["mean_dists"])
    assert scores["lse_c"] == scores["av_confidence"]
    assert len(scores["mean_dists"]) == 31
    assert scores["mean_dists"][15 - scores["av_offset"]] == scores["min_dist"]


def test_distances_match_reference_loop_on_long_clip() -> None:
    gen = torch.Generator().manual_seed(6)
    v, a = torch.randn(600, 8, generator=gen), torch.randn(600, 8, generator=gen)
    torch.testing.assert_close(sync_distances(v, a), _reference_pdist(v, a, 15), rtol=0, atol=1e-6)


def test_distance_has_eps_inside_norm() -> None:
    v = torch.zeros(1, 4)
    d = sync_distances(v, v.clone(), K=1)
    # Middle column compares v with itself: ||0 + 1e-6|| = 2e-6; side columns compare with zero padding too.
    torch.testing.assert_close(d, torch.full((1, 3), 2e-6), rtol=1e-4, atol=0)


# ---------- MFCC ----------


def _slow_mfcc(signal: np.ndarray, sr: int) -> np.ndarray:
    """MFCC from the textbook formulas with python_speech_features' choices, written with loops."""
    frame_len, step, nfft, nfilt = int(0.025 * sr + 0.5), int(0.01 * sr + 0.5), 512, 26
    x = [float(signal[0])] + [float(signal[i]) - 0.97 * float(signal[i - 1]) for i in range(1, len(signal))]
    n_frames = 1 if len(x) <= frame_len else 1 + math.ceil((len(x) - frame_len) / step)
    mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    inv = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    lo, hi = mel(0.0), mel(sr / 2)
    edges = [math.floor((nfft + 1) * inv(lo + (hi - lo) * i / (nfilt + 1)) / sr) for i in range(nfilt + 2)]
    out = np.zeros((n_frames, 13))
    for f in range(n_frames):
        frame = [x[f * step + k] if f * step + k < len(x) else 0.0 for k in range(frame_len)]
        spec = np.fft.fft(np.array(frame + [0.0] * (nfft - frame_len)))
        power = [abs(spec[k]) ** 2 / nfft for k in range(nfft // 2 + 1)]
        energies = []
        for j in range(nfilt):
            total = 0.0
            for k in range(nfft // 2 + 1):
                if edges[j] <= k < edges[j + 1]:
                    total += power[k] * (k - edges[j]) / (edges[j + 1] - edges[j])
                elif edges[j + 1] <= k < edges[j + 2]:
                    total += power[k] * (edges[j + 2] - k) / (edges[j + 2] - edges[j + 1])
            energies.append(total if total != 0 else np.finfo(float).eps)
        cep = scipy.fft.dct(np.log(energies), type=2, norm="ortho")[:13]
        for k in range(13):
            cep[k] *= 1.0 + 11.0 * math.sin(math.pi * k / 22.0)
        total_energy = sum(power)
        cep[0] = math.log(total_energy if total_energy != 0 else np.finfo(float).eps)
        out[f] = cep
    return out


def _chirp(n: int, sr: int = 16000) -> np.ndarray:
    """A 100 Hz -> 6 kHz chirp at int16 scale, with silence at the start (tests the eps floor)."""
    t = np.arange(n) / sr
    y = 12000.0 * np.sin(2 * np.pi * (100 * t + (6000 - 100) / (2 * t[-1]) * t**2))
    y[:500] = 0.0
    return np.round(y)


def test_mfcc_matches_independent_computation() -> None:
    x = _chirp(4321)
    fast, slow = mfcc(x), _slow_mfcc(x, 16000)
    assert fast.shape == slow.shape == (1 + math.ceil((4321 - 400) / 160), 13)
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n", [1, 399, 400, 401, 560, 561, 16000])
def test_mfcc_frame_count(n: int) -> None:
    expected = 1 if n <= 400 else 1 + math.ceil((n - 400) / 160)
    assert mfcc(np.ones(n)).shape == (expected, 13)


def test_mfcc_matches_python_speech_features() -> None:
    import python_speech_features as psf  # the reference implementation, a test dependency

    rng = np.random.default_rng(3)
    for x in (_chirp(16000), np.round(rng.standard_normal(5003) * 3000).astype(np.int16), np.zeros(900)):
        np.testing.assert_allclose(mfcc(x), psf.mfcc(x, 16000), rtol=1e-6, atol=1e-9)


def test_audio_features_are_int16_scale_and_transposed() -> None:
    x = _chirp(8000) / 32768.0
    np.testing.assert_allclose(audio_features(x), mfcc(x * 32768.0).T)
    assert audio_features(x).shape == (13, 1 + math.ceil((8000 - 400) / 160))


# ---------- windows ----------


class _RecordingModel:
    """Stands in for SyncNet: records its inputs and returns a cheap embedding of them."""

    def __init__(self) -> None:
        self.lip: list[torch.Tensor] = []
        self.aud: list[torch.Tensor] = []

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        self.lip.append(x.clone())
        return x.mean(dim=(1, 3, 4))[:, :, None].expand(-1, -1, 2).reshape(len(x), 10)

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        self.aud.append(x.clone())
        return x.mean(dim=(1, 2))[:, :10]


def _clip(n_frames: int, size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 RGB frames and a jittering 68-point face box around the centre."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n_frames, size, size, 3), dtype=np.uint8)
    base = rng.uniform(size * 0.3, size * 0.7, (68, 2))
    landmarks = base[None] + rng.normal(0, 0.5, (n_frames, 68, 2))
    return frames, landmarks


def test_window_count_and_inputs() -> None:
    frames, landmarks = _clip(25)
    audio = np.sin(np.arange(16000) * 0.05) * 0.3
    model = _RecordingModel()
    result = evaluate_sync(model, frames, landmarks, audio, batch_size=8)
    assert result.n_windows == 20
    assert [len(x) for x in model.lip] == [8, 8, 4] and [len(x) for x in model.aud] == [8, 8, 4]
    assert all(x.shape[1:] == (3, 5, 224, 224) and x.dtype == torch.float32 for x in model.lip)
    assert all(x.shape[1:] == (1, 13, 20) for x in model.aud)
    lip, aud = torch.cat(model.lip), torch.cat(model.aud)
    crops = torch.from_numpy(syncnet_crops(frames, landmarks))
    cc = torch.from_numpy(audio_features(audio)).float()
    for i in (0, 7, 19):
        assert torch.equal(lip[i], crops[i : i + 5].permute(3, 0, 1, 2))  # BGR channels, then time
        assert torch.equal(aud[i, 0], cc[:, 4 * i : 4 * i + 20])
    assert len(result.mean_dists) == 31 and -15 <= result.av_offset <= 15


def test_window_count_rules() -> None:
    # Audio as long as the video: the MFCCs miss the last window by one column, so both modes give 20.
    assert n_sync_windows(25, 16000, True) == 20
    assert n_sync_windows(25, 16000, False) == 20
    # Longer audio: the video limits, and the reference drops a window it could have scored.
    assert n_sync_windows(25, 17600, True) == 20
    assert n_sync_windows(25, 17600, False) == 21
    assert n_sync_windows(100, 16000, True) == 20


def test_real_model_on_short_clip(random_model: SyncNet) -> None:
    frames, landmarks = _clip(7, size=64)
    result = evaluate_sync(random_model, frames, landmarks, np.zeros(7 * 640), batch_size=4)
    assert result.n_windows == 2
    assert np.isfinite(result.lse_d) and result.lse_c >= 0


def test_too_short_clip() -> None:
    frames, landmarks = _clip(5)
    with pytest.raises(DiffheadsError, match="clip too short for SyncNet: need at least 6 frames"):
        evaluate_sync(_RecordingModel(), frames, landmarks, np.zeros(5 * 640))
    with pytest.raises(DiffheadsError, match="clip too short for SyncNet: need at least 5 frames"):
        evaluate_sync(_RecordingModel(), frames, landmarks, np.zeros(5 * 640), drop_last_window=False)
    # Five frames do make one window once the audio covers 20 MFCC columns.
    result = evaluate_sync(_RecordingModel(), frames, landmarks, np.zeros(3281), drop_last_window=False)
    assert result.n_windows == 1


# ---------- crops ----------


def _box_landmarks(x0: float, y0: float, x1: float, y1: float, n: int, seed: int = 0) -> np.ndarray:
    """(n, 68, 2) points inside the box with its corners among them, so the box of the points is exactly it."""
    rng = np.random.default_rng(seed)
    pts = np.stack([rng.uniform(x0, x1, 68), rng.uniform(y0, y1, 68)], axis=1)
    pts[:2] = [[x0, y0], [x1, y1]]
    return np.repeat(pts[None], n, axis=0)


def _formula_crop(frame_bgr: np.ndarray, x: float, y: float, s: float) -> np.ndarray:
    """run_pipeline.py crop_video's steps on one frame, literally: pad by bsi with 110, slice, resize."""
    cs = 0.4
    bsi = int(s * (1 + 2 * cs))
    padded = np.pad(frame_bgr, ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=(110, 110))
    my, mx = y + bsi, x + bsi
    face = padded[int(my - s) : int(my + s * (1 + 2 * cs)), int(mx - s * (1 + cs)) : int(mx + s * (1 + cs))]
    return cv2.resize(face, (224, 224))


@pytest.mark.parametrize(
    "box", [(150, 130, 250, 230), (0, 0, 100, 80), (300, 310, 399, 399), (37.3, 21.9, 181.6, 205.2)]
)
def test_crop_matches_reference_formula(box: tuple[float, float, float, float]) -> None:
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 400, 400, 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    crops = syncnet_crops(frames, _box_landmarks(x0, y0, x1, y1, 3))
    assert crops.shape == (3, 224, 224, 3) and crops.dtype == np.float32
    s = max(x1 - x0, y1 - y0) / 2
    for t in range(3):
        expected = _formula_crop(frames[t][..., ::-1], (x0 + x1) / 2, (y0 + y1) / 2, s)
        np.testing.assert_array_equal(crops[t], expected.astype(np.float32))


def test_crop_marker_lands_where_geometry_says() -> None:
    frames = np.zeros((3, 400, 400, 3), dtype=np.uint8)
    frames[:, 178:183, 198:203] = (255, 0, 0)  # red marker on the box centre (200, 180)
    crops = syncnet_crops(frames, _box_landmarks(150, 130, 250, 230, 3))
    red, blue = crops[1, ..., 2], crops[1, ..., 0]  # BGR
    assert blue.max() == 0 and red.max() > 200
    rows, cols = np.nonzero(red > 0)
    weights = red[rows, cols]
    # s = 50: the crop spans rows cy-s .. cy+1.8s and cols cx-1.4s .. cx+1.4s (140 px -> 224 px), so the centre
    # pixel (offset 50 down, 70 across) maps to ((50.5, 70.5) * 1.6 - 0.5) in the resized crop.
    assert abs(np.average(rows, weights=weights) - 80.3) < 0.5
    assert abs(np.average(cols, weights=weights) - 112.3) < 0.5


def test_crop_pads_with_110_at_the_border() -> None:
    frames = np.full((2, 200, 200, 3), 30, dtype=np.uint8)
    crops = syncnet_crops(frames, _box_landmarks(0, 0, 100, 100, 2))
    # cols start at cx - 1.4 s = -20: the left strip is padding; rows start at cy - s = 0: the top is image.
    assert np.all(crops[:, :, :20] == 110)
    assert np.all(crops[:, 0, 40:] == 30)


def test_crop_track_smoothing() -> None:
    n = 20
    landmarks = _box_landmarks(150, 130, 250, 230, n)
    landmarks[9] += 40.0  # one frame's landmarks jump
    frames = np.zeros((n, 400, 400, 3), dtype=np.uint8)
    frames[:, 178:183, 198:203] = 255
    crops = syncnet_crops(frames, landmarks)
    np.testing.assert_array_equal(crops[9], crops[8])  # the 13-frame median ignores the outlier
    # Five frames: the window is truncated to the clip, not zero padded into a zero-size box.
    short = syncnet_crops(frames[:5], _box_landmarks(150, 130, 250, 230, 5))
    np.testing.assert_array_equal(short[0], crops[0])


def test_crop_missing_landmarks_are_interpolated() -> None:
    landmarks = _box_landmarks(150, 130, 250, 230, 4)
    landmarks[1] = np.nan
    frames = np.zeros((4, 400, 400, 3), dtype=np.uint8)
    crops = syncnet_crops(frames, landmarks)
    assert crops.shape == (4, 224, 224, 3)
    with pytest.raises(DiffheadsError, match="no frame"):
        syncnet_crops(frames, np.full((4, 68, 2), np.nan))


# ---------- errors ----------


def test_missing_weights_error(tmp_path: Path) -> None:
    with pytest.raises(DiffheadsError) as info:
        load_syncnet(tmp_path / "syncnet_v2.model")
    message = str(info.value)
    assert "syncnet_v2.model" in message and "robots.ox.ac.uk" in message and "\n" not in message
    with pytest.raises(DiffheadsError, match="syncnet_v2.model"):
        load_syncnet(None)


def test_wrong_file_errors(tmp_path: Path, random_model: SyncNet) -> None:
    wrong_keys = tmp_path / "wrong_keys.model"
    torch.save({"conv.weight": torch.zeros(3)}, wrong_keys)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"this is not a torch file\nat all\n")
    wrong_shape = tmp_path / "wrong_shape.model"
    state = dict(random_model.state_dict())
    state["netfcaud.3.weight"] = torch.zeros(512, 512)
    torch.save(state, wrong_shape)
    not_a_dict = tmp_path / "list.model"
    torch.save([torch.zeros(2)], not_a_dict)
    for path, detail in (
        (wrong_keys, "missing"),
        (garbage, "cannot read"),
        (wrong_shape, "wrong shape"),
        (not_a_dict, "dict"),
    ):
        with pytest.raises(DiffheadsError) as info:
            load_syncnet(path)
        message = str(info.value)
        assert str(path) in message and detail in message and "\n" not in message, message
