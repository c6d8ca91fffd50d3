"""SyncNet lip-sync metrics (AV offset, AV confidence, LSE-D, LSE-C) as joonson/syncnet_python computes them.

The network, MFCC features, windowing and offset search follow the reference (SyncNetModel.py,
SyncNetInstance.py). The face crop uses the reference geometry (run_pipeline.py crop_video) but takes
the face box from our 68-point landmarks instead of its S3FD detector and tracker, so it works on clips of
any length and not only on face tracks over 100 frames.

Sign of the AV offset (the reference's): positive means the audio leads the video (a sound is heard
before the mouth makes it); negative means the audio lags. Each unit is one video frame (40 ms at 25 fps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from diffheads.errors import DiffheadsError
from diffheads.metrics.mfcc import mfcc
from diffheads.metrics.weights import find_weights

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MFCC_PER_FRAME = 4  # 100 MFCC frames/s against 25 video frames/s
WINDOW_FRAMES = 5
WINDOW_MFCC = 20
CROP_SIZE = 224
VSHIFT = 15  # the reference's --vshift default (run_syncnet.py)
CROP_SCALE = 0.40  # run_pipeline.py --crop_scale
PAD_VALUE = 110  # run_pipeline.py crop_video: grey padding around the frame
SMOOTH_KERNEL = 13  # run_pipeline.py crop_video: median filter over the track
EMBED_DIM = 1024
# MFCC framing of python_speech_features at 16 kHz: 400-sample frames every 160 samples.
_MFCC_FRAME_LEN = 400
_MFCC_FRAME_STEP = 160


def _audio_cnn() -> nn.Sequential:
    """The reference `netcnnaud`: MFCC window -> (B, 512, 1, 1)."""
    return nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        # A no-op pool, kept because it occupies index 3 and so fixes the state-dict key numbering.
        nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
        nn.Conv2d(64, 192, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
        nn.BatchNorm2d(192),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
        nn.Conv2d(192, 384, kernel_size=(3, 3), padding=(1, 1)),
        nn.BatchNorm2d(384),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=(3, 3), padding=(1, 1)),
        nn.BatchNorm2d(256),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=(3, 3), padding=(1, 1)),
        nn.BatchNorm2d(256),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
        nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)),
        nn.BatchNorm2d(512),
        nn.ReLU(),
    )


def _embedding_head(embed_dim: int) -> nn.Sequential:
    """The reference `netfcaud` / `netfclip`: 512 features -> embed_dim."""
    return nn.Sequential(
        nn.Linear(512, 512),
        nn.BatchNorm1d(512),
        nn.ReLU(),
        nn.Linear(512, embed_dim),
    )


def _lip_cnn() -> nn.Sequential:
    """The reference `netcnnlip`: 5-frame mouth crops -> (B, 512, 1, 1, 1)."""
    return nn.Sequential(
        nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),
        nn.BatchNorm3d(96),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
        nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
        nn.BatchNorm3d(256),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        nn.BatchNorm3d(256),
        nn.ReLU(inplace=True),
        nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        nn.BatchNorm3d(256),
        nn.ReLU(inplace=True),
        nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        nn.BatchNorm3d(256),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
        nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0),
        nn.BatchNorm3d(512),
        nn.ReLU(inplace=True),
    )


class SyncNet(nn.Module):
    """The SyncNet of joonson/syncnet_python; attribute names and layer order match its state dict."""

    def __init__(self, embed_dim: int = EMBED_DIM) -> None:
        """Build both streams; registration order (aud cnn, aud fc, lip fc, lip cnn) follows the reference."""
        super().__init__()
        self.netcnnaud = _audio_cnn()
        self.netfcaud = _embedding_head(embed_dim)
        self.netfclip = _embedding_head(embed_dim)
        self.netcnnlip = _lip_cnn()
        self.eval()

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 13, 20) MFCC windows -> (B, 1024) audio embeddings (not normalised)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 13, WINDOW_MFCC):
            raise ValueError(f"forward_aud needs (B, 1, 13, {WINDOW_MFCC}), got {tuple(x.shape)}")
        mid = self.netcnnaud(x)
        return self.netfcaud(mid.reshape(mid.shape[0], -1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 5, 224, 224) BGR 0..255 crops -> (B, 1024) video embeddings (not normalised)."""
        if x.ndim != 5 or tuple(x.shape[1:]) != (3, WINDOW_FRAMES, CROP_SIZE, CROP_SIZE):
            # The last conv reduces only a 224x224, 5-frame input to 1x1x1, which the 512-wide fc expects.
            raise ValueError(f"forward_lip needs (B, 3, 5, 224, 224), got {tuple(x.shape)}")
        mid = self.netcnnlip(x)
        return self.netfclip(mid.reshape(mid.shape[0], -1))


def _first_line(text: str) -> str:
    """The first non-empty line of an exception message, so errors stay one line."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def load_syncnet(path: str | Path | None, device: str | torch.device = "cpu") -> SyncNet:
    """SyncNet in eval mode with weights from `path` (the published syncnet_v2.model state dict)."""
    file = find_weights("syncnet", path=path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is a user error, reported on one line
        raise DiffheadsError(
            f"{file}: cannot read a SyncNet state dict (syncnet_v2.model): {type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DiffheadsError(f"{file} is not a SyncNet state dict (syncnet_v2.model): expected a dict of tensors")
    model = SyncNet()
    expected = model.state_dict()
    state = dict(state)
    # Files saved before BatchNorm counted batches (the reference targeted PyTorch 0.3) lack
    # num_batches_tracked; the counter is unused in eval mode, so take the fresh model's value.
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                parts.append(f"{label} {', '.join(keys[:3])}{more}")
        raise DiffheadsError(f"{file} is not a SyncNet state dict (syncnet_v2.model): {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def _median_smooth(values: np.ndarray, kernel: int = SMOOTH_KERNEL) -> np.ndarray:
    """Running median over a centred window of `kernel` samples, truncated at the ends of the series."""
    half = kernel // 2
    n = len(values)
    # Truncated rather than zero padded (scipy medfilt, the reference): zero padding pulls the first and
    # last 6 frames to their neighbourhood minimum, and on clips under 7 frames to 0.
    return np.array([np.median(values[max(0, t - half) : t + half + 1]) for t in range(n)], dtype=np.float64)


def _fill_missing(values: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN entries, holding the nearest valid value at the ends."""
    ok = np.isfinite(values)
    if ok.all():
        return values
    idx = np.arange(len(values))
    return np.interp(idx, idx[ok], values[ok])


def _face_tracks(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smoothed box centre x, y and half size s per frame from (T, 68, 2+) landmarks (NaN where no face)."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[1] != 68 or pts.shape[2] < 2:
        raise ValueError(f"landmarks must be (T, 68, 2), got {pts.shape}")
    pts = pts[..., :2]
    valid = np.isfinite(pts).all(axis=(1, 2))
    if not valid.any():
        raise DiffheadsError("SyncNet crop: no frame of the clip has face landmarks")
    lo = np.full((len(pts), 2), np.nan)
    hi = np.full((len(pts), 2), np.nan)
    lo[valid] = pts[valid].min(axis=1)
    hi[valid] = pts[valid].max(axis=1)
    # The reference's box is S3FD's (x1, y1, x2, y2); ours is the box of the 68 points, about as wide but
    # lower at the top (the landmarks stop at the brows, S3FD's box reaches the forehead), so our crop sits
    # slightly lower and tighter on the face. Missing frames are interpolated, as the reference interpolates
    # missed detections within a track.
    s = _fill_missing(np.maximum(hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1]) / 2)
    x = _fill_missing((lo[:, 0] + hi[:, 0]) / 2)
    y = _fill_missing((lo[:, 1] + hi[:, 1]) / 2)
    return _median_smooth(x), _median_smooth(y), _median_smooth(s)


def _crop_one(frame: np.ndarray, x: float, y: float, s: float) -> np.ndarray:
    """One 224x224 crop of the frame padded with PAD_VALUE, with run_pipeline.py crop_video's geometry."""
    height, width = frame.shape[:2]
    bsi = int(s * (1 + 2 * CROP_SCALE))
    my, mx = y + bsi, x + bsi  # centre in the coordinates of the frame padded by bsi on every side
    r0, r1 = int(my - s), int(my + s * (1 + 2 * CROP_SCALE))
    c0, c1 = int(mx - s * (1 + CROP_SCALE)), int(mx + s * (1 + CROP_SCALE))
    # Slicing a padded array clips the range to it; clip the same way (a start below 0, which numpy would
    # wrap, only happens for a face mostly outside the frame) and fill the canvas instead of padding the frame.
    ph, pw = height + 2 * bsi, width + 2 * bsi
    r0, r1 = min(max(r0, 0), ph), min(max(r1, 0), ph)
    c0, c1 = min(max(c0, 0), pw), min(max(c1, 0), pw)
    if r1 <= r0 or c1 <= c0:
        raise DiffheadsError("SyncNet crop: the face box lies outside the frame")
    canvas = np.full((r1 - r0, c1 - c0, 3), PAD_VALUE, dtype=np.uint8)
    sr0, sr1 = max(r0, bsi), min(r1, bsi + height)
    sc0, sc1 = max(c0, bsi), min(c1, bsi + width)
    if sr1 > sr0 and sc1 > sc0:
        canvas[sr0 - r0 : sr1 - r0, sc0 - c0 : sc1 - c0] = frame[sr0 - bsi : sr1 - bsi, sc0 - bsi : sc1 - bsi]
    return cv2.resize(canvas, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LINEAR)


def _crops_uint8(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(T, 224, 224, 3) uint8 BGR face crops."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if len(landmarks) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(landmarks)} landmark sets")
    xs, ys, ss = _face_tracks(landmarks)
    if not (ss > 0).all():
        raise DiffheadsError("SyncNet crop: degenerate face landmarks (zero-size box)")
    out = np.empty((len(frames), CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    for t in range(len(frames)):
        bgr = np.ascontiguousarray(frames[t][..., ::-1])  # the reference reads frames with cv2 (BGR)
        out[t] = _crop_one(bgr, xs[t], ys[t], ss[t])
    return out


def syncnet_crops(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(T, 224, 224, 3) float32 BGR 0..255 SyncNet face crops of uint8 RGB frames, from (T, 68, 2) landmarks."""
    return _crops_uint8(frames, landmarks).astype(np.float32)


def audio_features(audio_16k_float: np.ndarray) -> np.ndarray:
    """(13, n_mfcc_frames) MFCCs of 16 kHz float audio in [-1, 1], on int16-scale samples as the reference."""
    audio = np.asarray(audio_16k_float, dtype=np.float64)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (N,), got {audio.shape}")
    return np.ascontiguousarray(mfcc(audio * 32768.0, SAMPLE_RATE).T)


def sync_distances(lip_emb: torch.Tensor, aud_emb: torch.Tensor, K: int = VSHIFT) -> torch.Tensor:
    """(N, 2K+1) distances d_i[j] = ||v_i - a_(i+j-K) + 1e-6||, audio padded with K zero vectors each side."""
    if lip_emb.ndim != 2 or lip_emb.shape != aud_emb.shape:
        raise ValueError(f"embeddings must both be (N, D), got {tuple(lip_emb.shape)} and {tuple(aud_emb.shape)}")
    n = lip_emb.shape[0]
    padded = F.pad(aud_emb, (0, 0, K, K))
    # windows[i, j] = padded[i + j] = a_(i+j-K)
    windows = padded.unfold(0, 2 * K + 1, 1).transpose(1, 2)
    rows = [lip_emb.new_zeros((0, 2 * K + 1))]
    for i in range(0, n, 256):  # chunks bound the (chunk, 2K+1, D) temporaries on long clips
        win = windows[i : i + 256]
        rows.append(F.pairwise_distance(lip_emb[i : i + 256, None, :].expand_as(win), win))
    return torch.cat(rows)


def sync_scores(dists: torch.Tensor) -> dict[str, Any]:
    """AV offset, confidence, LSE-D, LSE-C and the mean distance curve from (N, 2K+1) distances."""
    if dists.ndim != 2 or dists.shape[1] % 2 != 1 or dists.shape[0] == 0:
        raise ValueError(f"dists must be (N, 2K+1) with N >= 1, got {tuple(dists.shape)}")
    K = (dists.shape[1] - 1) // 2
    mdist = dists.mean(dim=0)
    minval, minidx = torch.min(mdist, 0)
    conf = torch.median(mdist) - minval
    return {
        "av_offset": int(K - int(minidx)),
        "min_dist": float(minval),
        "av_confidence": float(conf),
        "lse_d": float(minval),
        "lse_c": float(conf),
        "mean_dists": [float(v) for v in mdist],
    }


@dataclass
class SyncResult:
    """SyncNet scores of one clip; offsets in video frames, positive when the audio leads."""

    av_offset: int
    av_confidence: float
    min_dist: float
    lse_d: float
    lse_c: float
    n_windows: int
    mean_dists: list[float] = field(default_factory=list)  # mean distance per shift -K..K (index j: offset K - j)


def _n_mfcc_frames(n_samples: int) -> int:
    """Frames python_speech_features produces for n 16 kHz samples."""
    if n_samples <= _MFCC_FRAME_LEN:
        return 1
    return 1 + math.ceil((n_samples - _MFCC_FRAME_LEN) / _MFCC_FRAME_STEP)


def n_sync_windows(n_frames: int, n_samples: int, drop_last_window: bool = True) -> int:
    """Number of 5-frame windows scored for a clip (may be <= 0)."""
    min_length = min(n_frames, n_samples // SAMPLES_PER_FRAME)
    if drop_last_window:
        # The reference scores range(min_length - 5); its last window's MFCCs always exist.
        return min_length - WINDOW_FRAMES
    # Every window whose 5 frames and 20 MFCC columns exist. With audio exactly as long as the video the
    # MFCCs run one column short of the last window, so this then equals the reference count.
    by_mfcc = (_n_mfcc_frames(n_samples) - WINDOW_MFCC) // MFCC_PER_FRAME + 1
    return min(min_length - WINDOW_FRAMES + 1, by_mfcc)


def _device_of(model: Any) -> torch.device:
    """The device of the model's parameters (CPU for a model without any)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def evaluate_sync(
    model: Any,
    frames: np.ndarray,
    landmarks: np.ndarray,
    audio_16k: np.ndarray,
    batch_size: int = 20,
    drop_last_window: bool = True,
    *,
    vshift: int = VSHIFT,
) -> SyncResult:
    """SyncNet scores of a 25 fps clip: uint8 RGB frames (T, H, W, 3), landmarks (T, 68, 2), 16 kHz float audio."""
    audio = np.asarray(audio_16k, dtype=np.float64)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (N,), got {audio.shape}")
    n_frames = len(frames)
    n_windows = n_sync_windows(n_frames, len(audio), drop_last_window)
    if n_windows < 1:
        need_frames = WINDOW_FRAMES + (1 if drop_last_window else 0)
        need_samples = need_frames * SAMPLES_PER_FRAME
        if not drop_last_window:
            # 20 MFCC columns need more than 400 + 18 * 160 samples.
            need_samples = max(need_samples, _MFCC_FRAME_LEN + (WINDOW_MFCC - 2) * _MFCC_FRAME_STEP + 1)
        raise DiffheadsError(
            f"clip too short for SyncNet: need at least {need_frames} frames and {need_samples} audio samples "
            f"at 16 kHz (got {n_frames} frames, {len(audio)} samples)"
        )
    crops = torch.from_numpy(_crops_uint8(frames, landmarks))  # (T, 224, 224, 3) BGR, uint8 to save memory
    cc = torch.from_numpy(audio_features(audio)).float()  # (13, n_mfcc)
    device = _device_of(model)
    if isinstance(model, nn.Module):
        model.eval()
    lip_out, aud_out = [], []
    with torch.no_grad():
        for start in range(0, n_windows, batch_size):
            idx = range(start, min(n_windows, start + batch_size))
            lip = torch.stack([crops[v : v + WINDOW_FRAMES] for v in idx])  # (B, 5, 224, 224, 3)
            lip = lip.permute(0, 4, 1, 2, 3).float()
            aud = torch.stack([cc[:, MFCC_PER_FRAME * v : MFCC_PER_FRAME * v + WINDOW_MFCC] for v in idx])
            lip_out.append(model.forward_lip(lip.to(device)).float().cpu())
            aud_out.append(model.forward_aud(aud[:, None].to(device)).float().cpu())
    dists = sync_distances(torch.cat(lip_out), torch.cat(aud_out), vshift)
    scores = sync_scores(dists)
    return SyncResult(
        av_offset=scores["av_offset"],
        av_confidence=scores["av_confidence"],
        min_dist=scores["min_dist"],
        lse_d=scores["lse_d"],
        lse_c=scores["lse_c"],
        n_windows=n_windows,
        mean_dists=scores["mean_dists"],
    )
