"""The trained-judge metrics of `evaluate` (dlib): inner-lip opening r, LMD on dlib points, identity and flicker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from diffheads.metrics import flicker, identity, lip_open, lmd
from diffheads.metrics.dlib_face import SAME_PERSON_DISTANCE, DlibJudges, FaceTrack
from diffheads.metrics.mouth import pearson_r, within_clip_r

JUDGE_METRICS = ("lip_open", "lmd68", "identity", "flicker")
LIP_OPEN_VARIANT = (
    "Pearson r of dlib's inner-lip opening (mean of the 61-67, 62-66, 63-65 gaps over the 48-54 mouth width) on "
    "generated vs real frames of the spoken span ({spans}); each series minus its clip's mean, pooled over clips"
)
LMD68_VARIANT = (
    "Chen et al. 2018/2019 {name}: mean Euclidean distance of {points}, dlib's 68-point shape predictor on generated "
    "and on real frames (enlarged to 256 px), no alignment; mean over points, then frames, then videos"
)
CONTROL = "(sorted clip order, rotated by one; trimmed to the common length)"


def _spoken_span(alignment: Path | None, audio: np.ndarray | None, n: int, fps: float) -> tuple[slice, str]:
    """Frames of the spoken span and where it came from: the GRID alignment, the voice-activity detector, or all."""
    if alignment is not None:
        return lip_open.alignment_span(alignment, n, fps), "alignment"
    if audio is not None:
        return lip_open.voice_span(audio, n, fps=fps), "voice activity"
    return slice(0, n), "whole clip (no audio)"


def _lip_columns(row: dict[str, Any], out: dict[str, Any], tracks: tuple[FaceTrack, FaceTrack], span: slice) -> None:
    """Per-video lip_open_r within the spoken span, and the two series for the set measure."""
    gen_open, real_open = (lip_open.lip_opening(t.points)[span] for t in tracks)
    row["lip_open_r"] = pearson_r(gen_open, real_open)
    row["lip_open_std"] = lip_open.pooled_std([gen_open])
    row["real_lip_open_std"] = lip_open.pooled_std([real_open])
    out["lip_open"] = (gen_open.astype(np.float32), real_open.astype(np.float32))


def lmd68_row(gen_px: np.ndarray, real_px: np.ndarray) -> dict[str, float]:
    """M-LMD and F-LMD of two (T, 68, 2) point series in pixels, and the same per real inter-ocular distance."""
    n = min(len(gen_px), len(real_px))
    gen_px, real_px = gen_px[:n], real_px[:n]
    iod = lmd.inter_ocular(real_px)
    return {
        "m_lmd68": lmd.m_lmd(gen_px, real_px),
        "f_lmd68": lmd.f_lmd(gen_px, real_px),
        "m_lmd68_iod": lmd.m_lmd(gen_px, real_px, iod),
        "f_lmd68_iod": lmd.f_lmd(gen_px, real_px, iod),
    }


def _identity_columns(
    row: dict[str, Any], judges: DlibJudges, frames: tuple[np.ndarray, np.ndarray], tracks: tuple[FaceTrack, FaceTrack]
) -> None:
    """Descriptor distance and cosine similarity of sampled generated frames to the real ones and to the identity frame."""
    picked = identity.sampled_frames(min(len(frames[0]), len(frames[1])))
    gen = judges.descriptors(frames[0], tracks[0], picked)
    real = judges.descriptors(frames[1], tracks[1], picked)
    identity_frame = judges.descriptors(frames[1], tracks[1], np.array([0]))[0]
    row["id_frames"] = len(picked)
    row["id_distance"] = float(identity.euclidean(gen, real).mean())
    row["csim"] = float(identity.cosine(gen, real).mean())
    to_identity = identity.euclidean(gen, identity_frame)
    row["id_distance_to_identity"] = float(to_identity.mean())
    row["real_id_distance_to_identity"] = float(identity.euclidean(real, identity_frame).mean())
    row["csim_to_identity"] = float(identity.cosine(gen, identity_frame).mean())
    row["real_csim_to_identity"] = float(identity.cosine(real, identity_frame).mean())
    row["same_person_rate"] = float((to_identity < SAME_PERSON_DISTANCE).mean())


def _flicker_columns(
    row: dict[str, Any], out: dict[str, Any], frames: tuple[np.ndarray, np.ndarray], real_points: np.ndarray
) -> None:
    """Mean frame-to-frame change outside the real clip's mouth box, generated and real, and their ratio."""
    gen, real = (flicker.outside_mouth_change(f, real_points) for f in frames)
    row["flicker_generated"] = float(np.nanmean(gen)) if np.isfinite(gen).any() else float("nan")
    row["flicker_real"] = float(np.nanmean(real)) if np.isfinite(real).any() else float("nan")
    row["flicker"] = row["flicker_generated"] / row["flicker_real"] if row["flicker_real"] > 0 else float("nan")
    out["flicker"] = (float(np.nansum(gen)), float(np.nansum(real)), int(np.isfinite(gen).sum()))


def video_judges(
    judges: DlibJudges,
    frames: tuple[np.ndarray, np.ndarray],
    wanted: set[str],
    audio: np.ndarray | None = None,
    alignment: Path | None = None,
    to_real: np.ndarray | None = None,
    fps: float = 25.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-video judge columns and the series the set measures need, for (generated, real) frames of one size.

    to_real: (2,) factors from frame pixels to pixels of the real clip as stored (LMD units). A side where the
    detector finds no face in any frame gives only its detection rate.
    """
    n = min(len(frames[0]), len(frames[1]))
    frames = (frames[0][:n], frames[1][:n])
    tracks = (judges.track(frames[0]), judges.track(frames[1]))
    row: dict[str, Any] = {
        "judge_detection_rate": tracks[0].detection_rate,
        "real_judge_detection_rate": tracks[1].detection_rate,
    }
    out: dict[str, Any] = {"detected": (tracks[0].detected, tracks[1].detected)}
    if not (tracks[0].detected.any() and tracks[1].detected.any()):
        return row, out
    if "lip_open" in wanted:
        span, source = _spoken_span(alignment, audio, n, fps)
        row["lip_open_span"] = source
        row["lip_open_frames"] = span.stop - span.start
        _lip_columns(row, out, tracks, span)
        out["span_source"] = source
    if "lmd68" in wanted:
        scale = np.ones(2) if to_real is None else np.asarray(to_real, np.float64)
        gen_px, real_px = tracks[0].points * scale, tracks[1].points * scale
        row.update(lmd68_row(gen_px, real_px))
        out["lmd68"] = (gen_px.astype(np.float32), real_px.astype(np.float32))
    if "identity" in wanted:
        _identity_columns(row, judges, frames, tracks)
    if "flicker" in wanted:
        _flicker_columns(row, out, frames, tracks[1].points)
    return row, out


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    """Mean of a column over the videos where it is finite (None when none are)."""
    values = [float(r[key]) for r in rows if r.get(key) is not None and np.isfinite(r[key])]
    return float(np.mean(values)) if values else None


def lip_open_metrics(series: dict[str, Any], pairing: Callable[[list[str]], dict[str, str]]) -> dict[str, Any]:
    """lip_open_r pooled within clips, its control (the next clip's real series) and the spread of both series."""
    clips = sorted(series)
    gen = [series[c]["lip_open"][0] for c in clips]
    real = [series[c]["lip_open"][1] for c in clips]
    sources = [series[c]["span_source"] for c in clips]
    spans = ", ".join(f"{s}: {sources.count(s)} clips" for s in sorted(set(sources)))
    out: dict[str, Any] = {
        "lip_open_r": {
            "value": within_clip_r(gen, real),
            "n_videos": len(clips),
            "n_frames": sum(min(len(g), len(r)) for g, r in zip(gen, real)),
            "variant": LIP_OPEN_VARIANT.format(spans=spans),
        }
    }
    control: dict[str, Any] = {"value": None, "n_videos": len(clips)}
    control["variant"] = f"lip_open_r with each generated clip against the next clip's real series {CONTROL}"
    if len(clips) >= 2:
        other = pairing(clips)
        control["value"] = within_clip_r(gen, [series[other[c]]["lip_open"][1] for c in clips])
    else:
        control["reason"] = "needs at least 2 clips"
    out["control_lip_open_r"] = control
    gen_std, real_std = lip_open.pooled_std(gen), lip_open.pooled_std(real)
    out["lip_open_std"] = {
        "value": gen_std,
        "real": real_std,
        "ratio": gen_std / real_std if real_std > 0 else None,
        "units": "fraction of the mouth width, about each clip's mean, spoken spans pooled",
        "n_videos": len(clips),
        "variant": "spread of the inner-lip opening series of lip_open_r (generated; real)",
    }
    return out


def lmd68_metrics(
    rows: list[dict[str, Any]], series: dict[str, Any], pairing: Callable[[list[str]], dict[str, str]]
) -> dict[str, Any]:
    """M-LMD and F-LMD on dlib's points (per-video means) and their controls (the next clip's real points)."""
    clips = sorted(series)
    other = pairing(clips) if len(clips) >= 2 else {}
    controls = [lmd68_row(series[c]["lmd68"][0], series[other[c]]["lmd68"][1]) for c in other]
    units = {
        "units": "pixels of the real clip (its stored resolution)",
        "normalised_units": "fraction of the real face's outer-eye-corner distance (points 36-45)",
    }
    out: dict[str, Any] = {}
    for key, name, points in (("m_lmd68", "M-LMD", "mouth points 48-67"), ("f_lmd68", "F-LMD", "all 68 points")):
        out[key] = {
            "value": _mean(rows, key),
            "normalised": _mean(rows, f"{key}_iod"),
            **units,
            "n_videos": len(clips),
            "variant": LMD68_VARIANT.format(name=name, points=points),
        }
        out[f"control_{key}"] = {
            "value": _mean(controls, key),
            "normalised": _mean(controls, f"{key}_iod"),
            **units,
            "n_videos": len(controls),
            "variant": f"{name} on dlib points against the next clip's real landmarks {CONTROL}",
            **({} if controls else {"reason": "needs at least 2 clips"}),
        }
    return out


def identity_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Descriptor distance and cosine similarity, to the real frame and to the identity frame, with the real floor."""
    used = [r for r in rows if r.get("id_distance") is not None]
    common = {"n_videos": len(used), "n_frames": int(sum(r["id_frames"] for r in used))}
    every = f"every {identity.SAMPLE_EVERY}th frame from frame {identity.SAMPLE_EVERY}"
    return {
        "id_distance": {
            "value": _mean(used, "id_distance"),
            "same_person_below": SAME_PERSON_DISTANCE,
            **common,
            "variant": f"Euclidean distance of dlib's 128-d face descriptors, generated vs real frame at the same "
            f"time ({every}); mean over frames, then videos; below 0.6 dlib calls it the same person",
        },
        "id_distance_to_identity": {
            "value": _mean(used, "id_distance_to_identity"),
            "real": _mean(used, "real_id_distance_to_identity"),
            "same_person_rate": _mean(used, "same_person_rate"),
            **common,
            "variant": f"the same against the identity frame (real frame 0); real: each real frame against it ({every})",
        },
        "csim": {
            "value": _mean(used, "csim"),
            **common,
            "variant": f"cosine similarity of the descriptors, generated vs real frame at the same time ({every})",
        },
        "csim_to_identity": {
            "value": _mean(used, "csim_to_identity"),
            "real": _mean(used, "real_csim_to_identity"),
            **common,
            "variant": "cosine similarity to the identity frame (real frame 0); real: each real frame against it",
        },
    }


def flicker_metrics(series: dict[str, Any]) -> dict[str, Any]:
    """Frame-to-frame change outside the mouth, pooled over frame pairs: generated over real, and both levels."""
    parts = [series[c]["flicker"] for c in sorted(series)]
    pairs = sum(p[2] for p in parts)
    gen = sum(p[0] for p in parts) / pairs if pairs else None
    real = sum(p[1] for p in parts) / pairs if pairs else None
    return {
        "flicker": {
            "value": gen / real if gen is not None and real else None,
            "generated_level": gen,
            "real_level": real,
            "units": "ratio; levels in uint8 grey levels per pixel and channel",
            "n_videos": len(parts),
            "n_frame_pairs": pairs,
            "variant": "mean |frame t+1 - frame t| outside the real clip's dlib mouth box (points 48-67, dilated "
            f"{flicker.PAD_WIDTHS} mouth widths), generated over real, pooled over frame pairs",
        }
    }


def judge_metrics(
    rows: list[dict[str, Any]],
    series: dict[str, dict[str, Any]],
    wanted: set[str],
    pairing: Callable[[list[str]], dict[str, str]],
    models: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The set entries of the requested judges, and a reason for each that has no clip to score.

    pairing: clip ids -> the clip each one's control is paired with; models: what scored (DlibJudges.describe()).
    """
    detected = [s["detected"] for s in series.values()]
    out: dict[str, Any] = {}
    if detected:
        gen_found, real_found = (np.concatenate([d[i] for d in detected]) for i in (0, 1))
        out["judge_detection_rate"] = {
            "value": float(gen_found.mean()) if len(gen_found) else None,
            "real": float(real_found.mean()) if len(real_found) else None,
            "n_frames": len(gen_found),
            "variant": "fraction of frames where dlib's HOG detector found a face (enlarged to 256 px); missed frames "
            "use the previous frame's box, or the whole frame",
            "models": models,
        }
    scored = {c: s for c, s in series.items() if "lip_open" in s or "lmd68" in s or "flicker" in s}
    used_rows = [r for r in rows if r["clip"] in series]
    if "lip_open" in wanted and scored:
        out.update(lip_open_metrics({c: s for c, s in scored.items() if "lip_open" in s}, pairing))
    if "lmd68" in wanted and scored:
        out.update(lmd68_metrics(used_rows, {c: s for c, s in scored.items() if "lmd68" in s}, pairing))
    if "identity" in wanted and any(r.get("id_distance") is not None for r in used_rows):
        out.update(identity_metrics(used_rows))
    if "flicker" in wanted and scored:
        out.update(flicker_metrics({c: s for c, s in scored.items() if "flicker" in s}))
    reason = "needs real clips of the same names (--real) with a face dlib's detector finds in both videos"
    keys = {"lip_open": "lip_open_r", "lmd68": "m_lmd68", "identity": "id_distance", "flicker": "flicker"}
    skipped = {m: reason for m in JUDGE_METRICS if m in wanted and keys[m] not in out}
    return out, skipped
