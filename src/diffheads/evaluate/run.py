"""Score a folder of generated videos against ground truth: per-video metrics, set metrics, one report."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from diffheads.distributed import Ranks
from diffheads.errors import DiffheadsError
from diffheads.evaluate.clips import ClipPair, LoadedPair, find_pairs, load_pair
from diffheads.evaluate.gather import Share, VideoResult, merge_shares, on_zero, score_in_rounds
from diffheads.face.track import track_landmarks
from diffheads.io.outdir import output_dir
from diffheads.metrics.judges import JUDGE_METRICS

FPS = 25
# what runs when no metrics are named: the trained judges (dlib) are opt-in, so default runs and their timings stay
DEFAULT_METRICS = (
    "psnr",
    "ssim",
    "fid",
    "fvd",
    "sync",
    "wer",
    "blinks",
    "smoothness",
    "lipsync",
    "mouth_open",
    "lmd",
    "drift",
)
ALL_METRICS = DEFAULT_METRICS + JUDGE_METRICS
WEIGHT_METRICS = {"fid": "inception", "fvd": "i3d", "sync": "syncnet"}
# per-clip series kept for the set-level measures: lip sync against the real clips, and drift's per-second curves
SET_CURVES = ("mouth_open_real", "mouth_open_real_whole", "lmd_landmarks", "drift", "judges")


@dataclass
class EvaluateConfig:
    """What `evaluate` computes and with which weights and variants."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
    weights_dir: str | None = None  # folder holding the published weights files under their own names
    inception_weights: str | None = None  # weights-inception-2015-12-05-6726825d.pth (FID)
    i3d_weights: str | None = None  # i3d_torchscript.pt (FVD)
    syncnet_weights: str | None = None  # syncnet_v2.model (AV offset/confidence, LSE-D/C)
    fvd_variant: str = "stylegan-v"  # or "laughing-matters" (unbiased covariance)
    fvd_clip_len: int = 16
    legacy_smoothness: bool = False  # reproduce the reference OFM / F-MSE (defects included)
    legacy_blinks: bool = False  # reproduce the reference's halved mean blink duration
    blink_height: float = 0.0425  # EAR drop threshold of the reference blink detector
    lip_reader: str | None = None  # "module:function" or "cmd:COMMAND {video}" (WER)
    transcripts: str | None = None  # "<clip id> <text>" lines or a JSON object (WER)
    device: str = "cpu"
    plot_clip: str | None = None  # clip whose blink and sync curves are plotted (default: the first)
    alignments: str | None = None  # folder of GRID <clip id or basename>.align files: lip_open's spoken spans

    def __post_init__(self) -> None:
        unknown = sorted(set(self.metrics) - set(ALL_METRICS))
        if unknown:
            raise DiffheadsError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(ALL_METRICS)}")
        if self.alignments is not None and not Path(self.alignments).is_dir():
            raise DiffheadsError(f"alignments folder {self.alignments} not found; pass a folder of GRID .align files")


@dataclass
class Scorers:
    """The networks and accumulators of the metrics that need them, and why any could not be built."""

    fid: Any = None
    fvd: Any = None
    syncnet: Any = None
    lip_reader: Any = None
    judges: Any = None  # dlib's detector, shape predictor and face-recognition network (metrics/dlib_face.py)
    transcripts: dict[str, str] = field(default_factory=dict)
    weights: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def sha256(path: Path) -> str:
    """Hex digest of a file (weights are recorded by hash, so a report says exactly what scored it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_scorers(cfg: EvaluateConfig) -> Scorers:
    """Load what each requested metric needs; a missing weights file skips that metric with its reason."""
    from diffheads.metrics.weights import find_weights

    out = Scorers()
    wanted = set(cfg.metrics)
    explicit = {"fid": cfg.inception_weights, "fvd": cfg.i3d_weights, "sync": cfg.syncnet_weights}
    for metric, key in WEIGHT_METRICS.items():
        if metric not in wanted:
            continue
        try:
            path = find_weights(key, cfg.weights_dir, explicit[metric])
            if metric == "fid":
                from diffheads.metrics.fid import FIDScorer

                out.fid = FIDScorer(path, device=cfg.device)
            elif metric == "fvd":
                from diffheads.metrics.fvd import FVDScorer

                out.fvd = FVDScorer(path, variant=cfg.fvd_variant, clip_len=cfg.fvd_clip_len, device=cfg.device)
            else:
                from diffheads.metrics.syncnet import load_syncnet

                out.syncnet = load_syncnet(path, cfg.device)
            out.weights[key] = {"file": str(path), "sha256": sha256(path)}
        except DiffheadsError as err:
            out.skipped[metric] = str(err)
    if "wer" in wanted:
        if not (cfg.lip_reader and cfg.transcripts):
            out.skipped["wer"] = (
                "WER needs a lip reader (--lip-reader) and transcripts (--transcripts); see docs/metrics.md"
            )
        else:
            from diffheads.metrics.wer import load_lip_reader, read_transcripts

            out.lip_reader = load_lip_reader(cfg.lip_reader)
            out.transcripts = read_transcripts(cfg.transcripts)
    if wanted & set(JUDGE_METRICS):
        from diffheads.metrics.dlib_face import DlibJudges

        try:
            out.judges = DlibJudges()
        except DiffheadsError as err:
            out.skipped.update({m: str(err) for m in JUDGE_METRICS if m in wanted})
    return out


def face_landmarks(frames: np.ndarray) -> np.ndarray:
    """(T, 68, 2) Face Mesh landmarks of a video (NaN where no face); small crops are enlarged to find the face."""
    landmarks, _, _ = track_landmarks(((t / FPS, f) for t, f in enumerate(frames)), min_side=256)
    return landmarks


def _usable(landmarks: np.ndarray | None, n: int) -> bool:
    """Landmarks for most of the frames (the rest are interpolated)."""
    return landmarks is not None and len(landmarks) == n and np.isfinite(landmarks).all(axis=(1, 2)).mean() >= 0.8


def _filled(landmarks: np.ndarray) -> np.ndarray:
    from diffheads.face.align import fill_missing

    return fill_missing(landmarks)


def _mouth_box(pair: LoadedPair, real_lm: np.ndarray | None) -> np.ndarray | None:
    """(T, 20, 2) mouth points of the real clip in generated-frame pixels: DATA/lmks, else Face Mesh on its frames."""
    if pair.real_landmarks is not None:
        return pair.real_landmarks[:, 48:68]
    if pair.real is not None and _usable(real_lm, len(pair.real)):
        return _filled(real_lm)[:, 48:68]
    return None


def _to_real_pixels(pair: LoadedPair) -> np.ndarray:
    """(2,) factors taking generated-frame (x, y) pixels to pixels of the real video as stored."""
    h, w = pair.generated.shape[1:3]
    real_h, real_w = pair.real_size or (h, w)
    return np.array([real_w / w, real_h / h])


def lmd_row(gen_lm: np.ndarray, real_lm: np.ndarray) -> dict[str, float | int]:
    """Per-video M-LMD and F-LMD (pixels, and per real inter-ocular distance) and the detection rates."""
    from diffheads.metrics import lmd

    iod = lmd.inter_ocular(real_lm)
    return {
        "m_lmd": lmd.m_lmd(gen_lm, real_lm),
        "f_lmd": lmd.f_lmd(gen_lm, real_lm),
        "m_lmd_iod": lmd.m_lmd(gen_lm, real_lm, iod),
        "f_lmd_iod": lmd.f_lmd(gen_lm, real_lm, iod),
        "lmd_frames": lmd.frames_compared(gen_lm, real_lm),
        "lmd_detection_rate": lmd.detection_rate(gen_lm),
        "real_lmd_detection_rate": lmd.detection_rate(real_lm),
    }


def _pixel_columns(row: dict[str, Any], pair: LoadedPair, cfg: EvaluateConfig, wanted: set[str]) -> None:
    """PSNR and SSIM against the real frames, and the smoothness (OFM, F-MSE) of the generated and real ones."""
    from diffheads.metrics import fidelity, smoothness

    gen, real = pair.generated, pair.real
    if real is not None and "psnr" in wanted:
        row["psnr"] = fidelity.psnr(gen, real)
    if real is not None and "ssim" in wanted:
        row["ssim"] = fidelity.ssim(gen, real)
    if "smoothness" in wanted and len(gen) >= 2:
        for name, frames in (("", gen), ("real_", real)):
            if frames is not None:
                row[f"{name}ofm"] = smoothness.ofm(frames, legacy=cfg.legacy_smoothness)
                row[f"{name}fmse"] = smoothness.fmse(frames, legacy=cfg.legacy_smoothness)


def _video_landmarks(
    pair: LoadedPair, wanted: set[str], scorers: Scorers
) -> tuple[np.ndarray | None, np.ndarray | None, bool]:
    """Face Mesh landmarks of the generated and real frames where a measure needs them, and whether any does."""
    gen, real = pair.generated, pair.real
    # Face Mesh on the frames of both videos, so generated and real are measured the same way (one pass each)
    needs_landmarks = (
        "blinks" in wanted or scorers.syncnet is not None or ("lmd" in wanted and real is not None) or "drift" in wanted
    )
    needs_mouth = "mouth_open" in wanted or "drift" in wanted
    needs_mouth_box = needs_mouth and pair.real_landmarks is None
    gen_lm = face_landmarks(gen) if needs_landmarks else None
    real_lm = face_landmarks(real) if (needs_landmarks or needs_mouth_box) and real is not None else None
    return gen_lm, real_lm, needs_landmarks


def _blink_columns(
    row: dict[str, Any],
    curves: dict[str, Any],
    pair: LoadedPair,
    landmarks: tuple[np.ndarray | None, np.ndarray | None],
    cfg: EvaluateConfig,
) -> None:
    """Blink rate and duration, and the eye aspect ratio curve, of each video with usable landmarks."""
    from diffheads.metrics import blinks

    for name, frames, lm in (("", pair.generated, landmarks[0]), ("real_", pair.real, landmarks[1])):
        if frames is not None and _usable(lm, len(frames)):
            stats = blinks.blink_stats(_filled(lm), FPS, legacy=cfg.legacy_blinks, height=cfg.blink_height)
            row[f"{name}blinks"] = stats["blinks"]
            row[f"{name}blinks_per_second"] = stats["blinks_per_second"]
            row[f"{name}blink_duration_frames"] = stats["mean_duration_frames"]
            curves[f"{name}ear"] = blinks.eye_aspect_ratio(_filled(lm))


def _sync_columns(
    row: dict[str, Any],
    curves: dict[str, Any],
    pair: LoadedPair,
    landmarks: tuple[np.ndarray | None, np.ndarray | None],
    syncnet: Any,
) -> None:
    """SyncNet AV offset and confidence, LSE-D and LSE-C, and the distance curve, of each video with landmarks."""
    from diffheads.metrics.syncnet import evaluate_sync

    for name, frames, lm in (("", pair.generated, landmarks[0]), ("real_", pair.real, landmarks[1])):
        if frames is None or not _usable(lm, len(frames)):
            continue
        result = evaluate_sync(syncnet, frames, _filled(lm), pair.audio)
        row[f"{name}av_offset"] = result.av_offset
        row[f"{name}av_confidence"] = result.av_confidence
        row[f"{name}lse_d"] = result.lse_d
        row[f"{name}lse_c"] = result.lse_c
        curves[f"{name}sync"] = result.mean_dists


def _mouth_columns(
    row: dict[str, Any], curves: dict[str, Any], pair: LoadedPair, real_lm: np.ndarray | None, wanted: set[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """mouth_open_r over speech; returns the (generated, real) mouth opening in the real clip's mouth box, if any."""
    gen, real = pair.generated, pair.real
    needs_mouth = "mouth_open" in wanted or "drift" in wanted
    box = _mouth_box(pair, real_lm) if real is not None and needs_mouth else None
    series = None
    if box is not None:
        from diffheads.metrics.mouth import mouth_opening

        series = (mouth_opening(gen, box), mouth_opening(real, box))
    if real is not None and "mouth_open" in wanted:
        row["mouth_box"] = None if box is None else ("DATA/lmks" if pair.real_landmarks is not None else "face mesh")
        if series is not None:
            from diffheads.metrics.mouth import pearson_r, speech_span

            # speech only: the silence every clip starts and ends with would correlate with any other clip's
            span = speech_span(pair.audio, len(gen)) if pair.audio is not None else slice(0, len(gen))
            spoken = (series[0][span], series[1][span])
            row["mouth_open_r"] = pearson_r(*spoken)
            row["speech_frames"] = len(spoken[0])
            curves["mouth_open_real"] = spoken
            curves["mouth_open_real_whole"] = series
    return series


def _lipsync_columns(row: dict[str, Any], curves: dict[str, Any], pair: LoadedPair, wanted: set[str]) -> None:
    """Synthetic data only: Pearson r of the measured against the true mouth opening, generated and real."""
    known = pair.real_landmarks  # the synthetic data's exact landmarks give the mouth boxes
    if "lipsync" in wanted and pair.truth is not None and "mouth_open" in pair.truth and known is not None:
        from diffheads.metrics.mouth import mouth_opening, pearson_r

        gen, real = pair.generated, pair.real
        truth = pair.truth["mouth_open"][: len(gen)]
        opening = mouth_opening(gen[: len(truth)], known[: len(truth), 48:68])
        row["lip_sync_r"] = pearson_r(opening, truth)
        if real is not None:
            row["real_lip_sync_r"] = pearson_r(mouth_opening(real[: len(truth)], known[: len(truth), 48:68]), truth)
        curves["mouth_open"] = (opening, truth)


def _judge_columns(
    row: dict[str, Any], curves: dict[str, Any], pair: LoadedPair, cfg: EvaluateConfig, scorers: Scorers
) -> None:
    """dlib's judges (lip_open, lmd68, identity, flicker) on the generated and real frames, when asked for."""
    wanted = set(cfg.metrics) & set(JUDGE_METRICS)
    if scorers.judges is None or pair.real is None or not wanted:
        return
    from diffheads.metrics.judges import video_judges
    from diffheads.metrics.lip_open import find_alignment

    alignment = find_alignment(cfg.alignments, pair.rel)
    frames = (pair.generated, pair.real)
    judged, curves["judges"] = video_judges(
        scorers.judges, frames, wanted, pair.audio, alignment, _to_real_pixels(pair), FPS
    )
    row.update(judged)


def _update_set_scorers(scorers: Scorers, gen: np.ndarray, real: np.ndarray | None) -> None:
    """Feed the generated and real frames to the set-level accumulators (FID, FVD)."""
    if scorers.fid is not None and real is not None:
        scorers.fid.update(gen, real=False)
        scorers.fid.update(real, real=True)
    if scorers.fvd is not None and real is not None:
        scorers.fvd.update(gen, real=False)
        scorers.fvd.update(real, real=True)


def video_metrics(pair: LoadedPair, cfg: EvaluateConfig, scorers: Scorers) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-video numbers (a CSV row) and the curves worth plotting for this clip."""
    wanted = set(cfg.metrics)
    gen, real = pair.generated, pair.real
    row: dict[str, Any] = {"clip": pair.rel, "frames": len(gen)}
    curves: dict[str, Any] = {}
    _pixel_columns(row, pair, cfg, wanted)
    gen_lm, real_lm, needs_landmarks = _video_landmarks(pair, wanted, scorers)
    row["face_found"] = bool(_usable(gen_lm, len(gen))) if needs_landmarks else None
    if "blinks" in wanted:
        _blink_columns(row, curves, pair, (gen_lm, real_lm), cfg)
    if scorers.syncnet is not None and pair.audio is not None:
        _sync_columns(row, curves, pair, (gen_lm, real_lm), scorers.syncnet)
    series = _mouth_columns(row, curves, pair, real_lm, wanted)
    if real is not None and gen_lm is not None and real_lm is not None and "lmd" in wanted:
        to_real = _to_real_pixels(pair)
        gen_px, real_px = gen_lm * to_real, real_lm * to_real
        row.update(lmd_row(gen_px, real_px))
        curves["lmd_landmarks"] = (gen_px.astype(np.float32), real_px.astype(np.float32))
    if "drift" in wanted:
        from diffheads.metrics import drift

        curves["drift"] = drift.video_drift(gen, gen_lm, real, real_lm, series, fps=FPS)
        row.update(drift.video_columns(curves["drift"]))
    _lipsync_columns(row, curves, pair, wanted)
    _judge_columns(row, curves, pair, cfg, scorers)
    _update_set_scorers(scorers, gen, real)
    return row, curves


def score_video(index: int, pair: ClipPair, cfg: EvaluateConfig, scorers: Scorers, plot_clip: str) -> VideoResult:
    """Everything one pair contributes: its row and series, its FVD features (taken out of the scorer), its lip reading."""
    row, curves = video_metrics(load_pair(pair), cfg, scorers)
    reads = scorers.lip_reader is not None and pair.rel in scorers.transcripts
    return VideoResult(
        index,
        row,
        {k: curves[k] for k in SET_CURVES if k in curves},
        plot_curves=curves if pair.rel == plot_clip else None,
        fvd_features=scorers.fvd.take_features() if scorers.fvd is not None else None,
        lip_text=scorers.lip_reader(pair.generated) if reads else None,
    )


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    """Mean of a column over the videos that have it (None when none do)."""
    values = [r[key] for r in rows if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
    values = [v for v in values if not (isinstance(v, float) and math.isinf(v))]
    return float(np.mean(values)) if values else None


def other_clip(clips: list[str]) -> dict[str, str]:
    """A fixed derangement for the controls: each clip -> the next in sorted order, the last -> the first."""
    order = sorted(clips)
    return {c: order[(i + 1) % len(order)] for i, c in enumerate(order)}


MOUTH_OPEN_VARIANT = (
    "Pearson r of the mouth opening (mouth_opening: soft dark-pixel count / mouth width, in the real clip's "
    "landmark mouth box) on generated vs real frames of the speech span (first to last voiced frame of the real "
    "audio); each series minus its clip's mean, pooled over clips"
)
LMD_VARIANT = (
    "Chen et al. 2018/2019 {name}: mean Euclidean distance of {points}, Face Mesh read as 68 points on generated "
    "and on real frames, no alignment; mean over points, then frames with a face on both sides, then videos"
)


def mouth_open_metrics(
    series: dict[str, tuple[np.ndarray, np.ndarray]], whole: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
) -> dict[str, Any]:
    """mouth_open_r (within clips, pooled) and its control (each generated clip against another clip's real series).

    `series` holds the speech spans; `whole` (optional) every frame, reported as the *_whole_clip keys.
    """
    out = _mouth_open_pair(series, "", MOUTH_OPEN_VARIANT)
    if whole:
        variant = MOUTH_OPEN_VARIANT.replace(" of the speech span (first to last voiced frame of the real audio)", "")
        out.update(_mouth_open_pair(whole, "_whole_clip", variant + "; every frame, silences included"))
    return out


def _mouth_open_pair(series: dict[str, tuple[np.ndarray, np.ndarray]], suffix: str, variant: str) -> dict[str, Any]:
    """mouth_open_r{suffix} and control_mouth_open_r{suffix} of one set of per-clip series."""
    from diffheads.metrics.mouth import within_clip_r

    clips = sorted(series)
    gen, real = [series[c][0] for c in clips], [series[c][1] for c in clips]
    n_frames = sum(min(len(g), len(r)) for g, r in zip(gen, real))
    out: dict[str, Any] = {
        f"mouth_open_r{suffix}": {
            "value": within_clip_r(gen, real),
            "n_videos": len(clips),
            "n_frames": n_frames,
            "variant": variant,
        },
    }
    control: dict[str, Any] = {
        "value": None,
        "n_videos": len(clips),
        "variant": f"mouth_open_r{suffix} with each generated clip against the next clip's real series "
        "(sorted clip order, rotated by one; trimmed to the common length)",
    }
    if len(clips) >= 2:
        other = other_clip(clips)
        control["value"] = within_clip_r(gen, [series[other[c]][1] for c in clips])
    else:
        control["reason"] = "needs at least 2 clips"
    out[f"control_mouth_open_r{suffix}"] = control
    return out


def lmd_metrics(rows: list[dict[str, Any]], landmarks: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """M-LMD, F-LMD (per-video means from the rows), their controls and the Face Mesh detection rates."""
    from diffheads.metrics.lmd import detected

    clips = sorted(landmarks)
    gen_found = np.concatenate([detected(landmarks[c][0]) for c in clips])
    real_found = np.concatenate([detected(landmarks[c][1]) for c in clips])
    rates = {
        "lmd_detection_rate": float(gen_found.mean()) if len(gen_found) else None,
        "real_lmd_detection_rate": float(real_found.mean()) if len(real_found) else None,
    }
    other = other_clip(clips)
    controls = [lmd_row(landmarks[c][0], landmarks[other[c]][1]) for c in clips] if len(clips) >= 2 else []
    units = {
        "units": "pixels of the real clip (its stored resolution)",
        "normalised_units": "fraction of the real face's outer-eye-corner distance (points 36-45)",
    }
    out: dict[str, Any] = {}
    for key, name, points in (("m_lmd", "M-LMD", "mouth points 48-67"), ("f_lmd", "F-LMD", "all 68 points")):
        frames = [r for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        out[key] = {
            "value": _mean(rows, key),
            "normalised": _mean(rows, f"{key}_iod"),
            **units,
            "n_videos": len(frames),
            "n_frames": int(sum(r["lmd_frames"] for r in frames)),
            **rates,
            "variant": LMD_VARIANT.format(name=name, points=points),
        }
        control: dict[str, Any] = {
            "value": _mean(controls, key),
            "normalised": _mean(controls, f"{key}_iod"),
            **units,
            "n_videos": len(controls),
            "variant": f"{name} of each generated clip against the next clip's real landmarks "
            "(sorted clip order, rotated by one; trimmed to the common length)",
        }
        if len(clips) < 2:
            control["reason"] = "needs at least 2 clips"
        out[f"control_{key}"] = control
    out["lmd_detection_rate"] = {
        "value": rates["lmd_detection_rate"],
        "real": rates["real_lmd_detection_rate"],
        "n_frames": len(gen_found),
        "variant": "fraction of frames where Face Mesh found a face (frames for LMD)",
    }
    return out


def real_lipsync_metrics(
    rows: list[dict[str, Any]], cfg: EvaluateConfig, scorers: Scorers, clip_curves: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The set-level measures against real clips (mouth_open_r, LMD and their controls); skips say why not."""
    out: dict[str, Any] = {}
    mouth = {c: v["mouth_open_real"] for c, v in clip_curves.items() if "mouth_open_real" in v}
    if "mouth_open" in cfg.metrics:
        if mouth:
            whole = {c: v["mouth_open_real_whole"] for c, v in clip_curves.items() if "mouth_open_real_whole" in v}
            out.update(mouth_open_metrics(mouth, whole))
        else:
            scorers.skipped["mouth_open"] = (
                "mouth_open_r needs real clips of the same names (--real) and their mouth landmarks "
                "(DATA/lmks, or Face Mesh finding the face in 80% of the real frames)"
            )
    landmarks = {c: v["lmd_landmarks"] for c, v in clip_curves.items() if "lmd_landmarks" in v}
    if "lmd" in cfg.metrics:
        if landmarks:
            out.update(lmd_metrics(rows, landmarks))
        else:
            scorers.skipped["lmd"] = "M-LMD / F-LMD need real clips of the same names (--real)"
    return out


def _per_video_metrics(rows: list[dict[str, Any]], cfg: EvaluateConfig) -> dict[str, Any]:
    """The metrics that are means of per_video.csv columns (generated and real), in report order."""
    metrics: dict[str, Any] = {}

    def per_video(name: str, key: str, variant: str, **extra: Any) -> None:
        # a metric that was computed but is undefined everywhere (no blink to time) is kept, as null
        if any(key in r for r in rows):
            n = sum(1 for r in rows if r.get(key) is not None)
            metrics[name] = {
                "value": _mean(rows, key),
                "real": _mean(rows, f"real_{key}"),
                "n_videos": n,
                "variant": variant,
                **extra,
            }

    per_video("psnr", "psnr", "torchmetrics PSNR, data range 255, mean over frames then videos")
    per_video("ssim", "ssim", "torchmetrics SSIM, Gaussian 11 / 1.5, mean over frames then videos")
    smooth = "legacy (reference script, defects included)" if cfg.legacy_smoothness else "corrected"
    per_video("ofm", "ofm", smooth, units="" if cfg.legacy_smoothness else "pixels per frame at 128 px")
    per_video("fmse", "fmse", smooth)
    per_video("av_offset", "av_offset", "SyncNet (syncnet_v2), K=15, reference window count", units="frames")
    per_video("av_confidence", "av_confidence", "SyncNet median - min distance")
    per_video("lse_d", "lse_d", "Wav2Lip LSE-D = min mean distance")
    per_video("lse_c", "lse_c", "Wav2Lip LSE-C = AV confidence")
    blink_variant = "legacy (mean duration halved)" if cfg.legacy_blinks else "corrected"
    per_video("blinks_per_second", "blinks_per_second", f"EAR peaks, height {cfg.blink_height}, distance 4")
    per_video("blink_duration_frames", "blink_duration_frames", blink_variant, units="frames")
    if "blink_duration_frames" in metrics:
        entry = metrics["blink_duration_frames"]
        metrics["blink_duration_s"] = {
            **entry,
            "value": None if entry["value"] is None else entry["value"] / FPS,
            "real": None if entry["real"] is None else entry["real"] / FPS,
            "units": "seconds",
        }
    per_video(
        "lip_sync_r", "lip_sync_r", "synthetic data: Pearson r of measured vs true mouth opening (per-video mean)"
    )
    return metrics


def _distribution_metrics(scorers: Scorers) -> dict[str, Any]:
    """FID and FVD from the accumulated features; a scorer that cannot compute is recorded as skipped."""
    metrics: dict[str, Any] = {}
    if scorers.fid is not None:
        try:
            result = scorers.fid.compute()
            metrics["fid"] = {
                "value": result["fid"],
                "n_real_frames": result["n_real"],
                "n_generated_frames": result["n_generated"],
                "variant": "torchmetrics FID, torch-fidelity InceptionV3, 2048-d, unbiased covariance",
                "weights": scorers.weights.get("inception"),
            }
        except DiffheadsError as err:
            scorers.skipped["fid"] = str(err)
    if scorers.fvd is not None:
        try:
            result = scorers.fvd.compute()
            covariance = "biased" if result["variant"] == "stylegan-v" else "unbiased"
            metrics["fvd"] = {
                "value": result["fvd"],
                "variant": f"{result['variant']} ({covariance} covariance, I3D logits)",
                "clip_len": result["clip_len"],
                "n_real_clips": result["n_real_clips"],
                "n_generated_clips": result["n_generated_clips"],
                "weights": scorers.weights.get("i3d"),
            }
        except DiffheadsError as err:
            scorers.skipped["fvd"] = str(err)
    return metrics


def aggregate(
    rows: list[dict[str, Any]],
    cfg: EvaluateConfig,
    scorers: Scorers,
    clip_curves: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """metrics.json's `metrics` section: each value with its variant and what it was computed over."""
    metrics = _per_video_metrics(rows, cfg)
    metrics.update(real_lipsync_metrics(rows, cfg, scorers, clip_curves or {}))
    drifts = [c["drift"] for c in (clip_curves or {}).values() if "drift" in c]
    if "drift" in cfg.metrics and drifts:
        from diffheads.metrics.drift import drift_metrics

        metrics["drift"] = drift_metrics(drifts, FPS)
    if scorers.judges is not None:
        from diffheads.metrics.judges import judge_metrics

        judged = {c: v["judges"] for c, v in (clip_curves or {}).items() if "judges" in v}
        found, skipped = judge_metrics(rows, judged, set(cfg.metrics), other_clip, scorers.judges.describe())
        metrics.update(found)
        scorers.skipped.update(skipped)
    metrics.update(_distribution_metrics(scorers))
    if "sync" in cfg.metrics and scorers.syncnet is not None:
        for key in ("av_offset", "av_confidence", "lse_d", "lse_c"):
            if key in metrics:
                metrics[key]["weights"] = scorers.weights.get("syncnet")
    return metrics


def score_wer(readings: dict[str, str], scorers: Scorers) -> dict[str, Any] | None:
    """WER of the lip reader's text for each generated video (clip id -> text) against its transcript."""
    from diffheads.metrics.wer import word_error_rate

    refs = [scorers.transcripts[clip] for clip in readings]
    hyps = list(readings.values())
    if not refs:
        scorers.skipped["wer"] = "no transcript matches a generated clip id; check the ids in --transcripts"
        return None
    result = word_error_rate(refs, hyps)
    return {
        "value": result["wer"],
        "n_videos": len(refs),
        "variant": "jiwer WER, lower-case, punctuation removed",
        **{k: v for k, v in result.items() if k != "wer"},
    }


def evaluate(
    generated_dir: str | Path,
    real_dir: str | Path | None,
    out_dir: str | Path,
    cfg: EvaluateConfig | None = None,
    progress: bool = True,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Score every generated video; write metrics.json, per_video.csv, report.md and plots/ into out_dir.

    With `ranks` (diffheads.distributed.launch) this process scores only its share of the videos;
    rank 0 merges every share (evaluate/gather.py), computes the set metrics and alone writes out_dir.
    Every rank returns the same summary, equal to that of one process.
    """
    cfg = cfg or EvaluateConfig()
    ranks = ranks or Ranks(device=cfg.device)
    pairs = find_pairs(generated_dir, real_dir)
    plot_clip = cfg.plot_clip or pairs[0].rel
    with contextlib.ExitStack() as stack:
        # an output that cannot be written fails before the scoring; a failed run leaves no empty folders
        on_zero(ranks, lambda: stack.enter_context(output_dir(out_dir, "output folder")), " creating the output folder")
        scorers = build_scorers(dataclasses.replace(cfg, device=ranks.device) if ranks.distributed else cfg)
        if ranks.is_zero:
            for metric, reason in scorers.skipped.items():
                print(f"diffheads evaluate: {metric} skipped: {reason}", file=sys.stderr)
        # rank 0's bar counts every rank's videos: each round waits for all ranks
        bar = tqdm(
            total=len(pairs), desc="evaluate", unit="video", disable=not (progress and ranks.is_zero), file=sys.stderr
        )
        mine = score_in_rounds(
            list(enumerate(pairs)),
            lambda item: score_video(*item, cfg, scorers, plot_clip),
            ranks,
            bar.update,
            label=lambda item: item[1].rel,
        )
        bar.close()
        # rank 0 keeps its own FID statistics in its scorer; the others send theirs
        fid = scorers.fid.statistics() if scorers.fid is not None and not ranks.is_zero else None
        shares = ranks.gather(Share(mine, fid))

        def finish() -> dict[str, Any]:
            videos = merge_shares(shares, len(pairs), scorers)
            return summarise(generated_dir, real_dir, out_dir, cfg, scorers, videos, plot_clip, ranks.world_size)

        summary = on_zero(ranks, finish, " computing the set metrics")
    return ranks.broadcast(summary)


def summarise(
    generated_dir: str | Path,
    real_dir: str | Path | None,
    out_dir: str | Path,
    cfg: EvaluateConfig,
    scorers: Scorers,
    videos: list[VideoResult],
    plot_clip: str,
    processes: int = 1,
) -> dict[str, Any]:
    """Set metrics from every video's results (in the order of the pairs); writes the outputs, returns the summary."""
    from diffheads.evaluate.report import write_outputs

    rows = [v.row for v in videos]
    clip_curves = {v.row["clip"]: v.set_curves for v in videos}
    plot_curves = next((v.plot_curves for v in videos if v.plot_curves is not None), {})
    metrics = aggregate(rows, cfg, scorers, clip_curves)
    # the judges' reasons from the set stage (one from loading dlib was printed at the start)
    for metric in ("mouth_open", "lmd", *(JUDGE_METRICS if scorers.judges is not None else ())):
        if metric in scorers.skipped:
            print(f"diffheads evaluate: {metric} skipped: {scorers.skipped[metric]}", file=sys.stderr)
    if scorers.lip_reader is not None:
        wer = score_wer({v.row["clip"]: v.lip_text for v in videos if v.lip_text is not None}, scorers)
        if wer is not None:
            metrics["wer"] = wer
    if not metrics:
        raise DiffheadsError(
            "no metric could be computed: " + "; ".join(f"{k}: {v}" for k, v in scorers.skipped.items())
        )
    summary = {
        "generated_dir": str(generated_dir),
        "real_dir": None if real_dir is None else str(real_dir),
        "n_videos": len(rows),
        "n_frames": int(sum(r["frames"] for r in rows)),
        "fps": FPS,
        "metrics": metrics,
        "skipped": dict(scorers.skipped),
        "faces_found": sum(1 for r in rows if r.get("face_found")),
        "processes": processes,
        "config": dict(vars(cfg).items()),
    }
    write_outputs(Path(out_dir), summary, rows, plot_clip, plot_curves)
    return summary
