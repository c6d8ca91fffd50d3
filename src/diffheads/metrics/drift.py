"""Drift of a generated video over time: face colour, face shape, sharpness and lip sync as per-second curves.

Every measure compares each frame with a reference: the identity frame (frame 0 of the real clip, which
`diffheads generate` conditions on; frame 0 of the generated clip when there is no real clip), or the real
frame at the same time. Per-frame values become one value per second of video (`per_second`), summarised by
the value at 5, 10, 30 and 60 s and the slope of a least-squares line, per minute (`summarise_curve`).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab

from diffheads.metrics.mouth import pearson_r

FPS = 25.0
SUMMARY_SECONDS = (5, 10, 30, 60)
LIP_SYNC_WINDOW_S = 10.0  # seconds of mouth opening per windowed Pearson r
FACE_REGION_SCALE = 0.9  # the landmark hull shrunk about its centre: keeps the region off the face outline,
# where background pixels mix in
LIPS, LEFT_EYE, RIGHT_EYE = tuple(range(48, 60)), tuple(range(36, 42)), tuple(range(42, 48))  # 68-point layout
SKIN_EXCLUDES = (LIPS, LEFT_EYE, RIGHT_EYE)  # colour: the skin only (the mouth interior and eyes are not skin)
SHARPNESS_EXCLUDES = (LIPS,)  # sharpness keeps the eyes and brows (the face's edges; blinks are brief)
EXCLUDE_PAD = 0.1  # margin around the excluded parts, in inter-ocular distances (lips and lids move)
CENTRE_BOX = (0.25, 0.75)  # fallback face region without landmarks: the middle half of each side (aligned crops)
OUTER_EYE_CORNERS = (36, 45)  # 68-point layout, as metrics.lmd
LUMA = np.array([0.299, 0.587, 0.114])
MEASURES = ("colour_de2000", "shape_rms_iod", "sharpness_ratio", "lip_sync_r")
UNITS = {
    "colour_de2000": "CIEDE2000 (Delta E 00)",
    "shape_rms_iod": "fraction of the reference's outer-eye-corner distance",
    "sharpness_ratio": "ratio (1 = as sharp as the reference)",
    "lip_sync_r": "Pearson r",
}
VARIANTS = {
    "colour_de2000": "CIEDE2000 (skimage deltaE_ciede2000, kL=kC=kH=1) between the per-channel median CIELAB colour "
    "(skimage rgb2lab, D65) of the skin (Face Mesh hull shrunk to 0.9, without lips and eyes) "
    "of each frame and of the reference",
    "shape_rms_iod": "68 Face Mesh points fitted to the reference's by a similarity (Umeyama: scale, rotation, "
    "translation); RMS residual over the points / the reference's outer-eye-corner distance; "
    "frames without a face left out",
    "sharpness_ratio": "variance of the 4-neighbour Laplacian of the luma (BT.601) over the face (Face Mesh hull "
    "shrunk to 0.9, without the lips), divided by the reference's",
    "lip_sync_r": f"Pearson r of the generated and real mouth opening (metrics.mouth, the real clip's mouth box) "
    f"in a {LIP_SYNC_WINDOW_S:g} s window (the whole clip when shorter) centred on each second",
}


def _hull(points: np.ndarray) -> np.ndarray:
    """OpenCV convex hull of pixel (x, y) landmarks, in fixed point with 4 fractional bits."""
    # pixel centres sit at integer + 0.5 in landmark coordinates, at integers in OpenCV's
    return cv2.convexHull(np.round((np.asarray(points, np.float64) - 0.5) * 16).astype(np.int32))


def face_mask(
    points: np.ndarray,
    height: int,
    width: int,
    exclude: tuple[tuple[int, ...], ...] = SKIN_EXCLUDES,
    scale: float = FACE_REGION_SCALE,
) -> np.ndarray:
    """(H, W) bool face region of 68 pixel (x, y) landmarks, without the parts that move in every real video.

    The convex hull of all points shrunk by `scale` about their mean, less the hull of each part in `exclude`
    (point indices; by default the outer lips 48-59 and the eyes 36-41, 42-47) widened by EXCLUDE_PAD
    inter-ocular distances: speech and blinks would otherwise pass for drift.
    """
    points = np.asarray(points, np.float64)
    centre = points.mean(axis=0)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillConvexPoly(mask, _hull(centre + scale * (points - centre)), 1, lineType=cv2.LINE_8, shift=4)
    pad = max(round(EXCLUDE_PAD * float(inter_ocular(points))), 1)
    for part in exclude:
        hull = _hull(points[list(part)])
        cv2.fillConvexPoly(mask, hull, 0, lineType=cv2.LINE_8, shift=4)
        cv2.polylines(mask, [hull], True, 0, thickness=2 * pad + 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def centre_box(height: int, width: int) -> np.ndarray:
    """(H, W) bool fallback face region: the middle half of the frame in each direction."""
    mask = np.zeros((height, width), bool)
    lo, hi = CENTRE_BOX
    mask[round(lo * height) : round(hi * height), round(lo * width) : round(hi * width)] = True
    return mask


def face_colour(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(3,) per-channel median CIELAB (D65) of the masked pixels of a uint8 RGB frame; NaN for an empty mask.

    The median is the skin's colour: brows, nostrils and highlights left in the region move it little.
    """
    pixels = frame[mask]
    if len(pixels) == 0:
        return np.full(3, np.nan)
    lab = rgb2lab(pixels[None].astype(np.float64) / 255.0)[0]
    return np.median(lab, axis=0)


def colour_difference(lab: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(T,) CIEDE2000 between (T, 3) Lab colours and a reference (3,) or (T, 3) (Sharma, Wu & Dalal 2005)."""
    lab = np.asarray(lab, np.float64)
    reference = np.broadcast_to(np.asarray(reference, np.float64), lab.shape)
    return np.asarray(deltaE_ciede2000(lab, reference), np.float64)


def laplacian_variance(frame: np.ndarray, mask: np.ndarray) -> float:
    """Variance over the masked pixels of the 4-neighbour Laplacian of a frame's luma (0..255); nan when empty."""
    luma = np.asarray(frame, np.float64) @ LUMA
    laplacian = cv2.Laplacian(luma, cv2.CV_64F, ksize=1)
    values = laplacian[mask]
    return float(values.var()) if len(values) else float("nan")


def frame_measures(frames: np.ndarray, landmarks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3) skin Lab colour and (T,) Laplacian variance of the face of uint8 (T, H, W, 3) frames.

    landmarks: (T, 68, 2) pixel (x, y) with no NaN, or None for the centre box.
    """
    h, w = frames.shape[1:3]
    lab, sharp = np.full((len(frames), 3), np.nan), np.full(len(frames), np.nan)
    for t, frame in enumerate(frames):
        if landmarks is None:
            skin = face = centre_box(h, w)
        else:
            skin = face_mask(landmarks[t], h, w, SKIN_EXCLUDES)
            face = face_mask(landmarks[t], h, w, SHARPNESS_EXCLUDES)
        lab[t] = face_colour(frame, skin)
        sharp[t] = laplacian_variance(frame, face)
    return lab, sharp


def inter_ocular(points: np.ndarray) -> np.ndarray:
    """(...) distance between the outer eye corners of (..., 68, 2) points."""
    points = np.asarray(points, np.float64)
    return np.linalg.norm(points[..., OUTER_EYE_CORNERS[1], :] - points[..., OUTER_EYE_CORNERS[0], :], axis=-1)


def similarity_residual(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(T,) RMS residual of (T, P, 2) points fitted to a reference (P, 2) or (T, P, 2) by a similarity, per IOD.

    The least-squares scale, rotation and translation of Umeyama (1991, eqs. 40-42) take each frame's points
    onto the reference; the RMS over the points of what is left, divided by the reference's outer-eye-corner
    distance. NaN where either side has no face (non-finite points).
    """
    points = np.asarray(points, np.float64)
    reference = np.broadcast_to(np.asarray(reference, np.float64), points.shape)
    out = np.full(len(points), np.nan)
    ok = np.isfinite(points).all(axis=(1, 2)) & np.isfinite(reference).all(axis=(1, 2))
    if not ok.any():
        return out
    x = points[ok] - points[ok].mean(axis=1, keepdims=True)
    y = reference[ok] - reference[ok].mean(axis=1, keepdims=True)
    covariance = np.einsum("tpi,tpj->tij", y, x) / x.shape[1]
    u, d, vt = np.linalg.svd(covariance)
    sign = np.ones_like(d)
    sign[:, -1] = np.sign(np.linalg.det(u) * np.linalg.det(vt))  # a rotation, never a reflection
    rotation = u @ (sign[:, :, None] * vt)
    variance_x = (x**2).sum(axis=(1, 2)) / x.shape[1]
    scale = (d * sign).sum(axis=1) / np.maximum(variance_x, 1e-300)
    fitted = scale[:, None, None] * np.einsum("tij,tpj->tpi", rotation, x)
    rms = np.sqrt(((y - fitted) ** 2).sum(axis=2).mean(axis=1))
    out[ok] = rms / inter_ocular(reference[ok])
    return out


def windowed_r(
    generated: np.ndarray, real: np.ndarray, fps: float = FPS, window_s: float = LIP_SYNC_WINDOW_S
) -> np.ndarray:
    """(S,) Pearson r of two per-frame series in a window of `window_s` (the whole clip when shorter) per second.

    The window is centred on the middle frame of each second and shifted to lie inside the clip; frames where
    either series is not finite are left out.
    """
    generated, real = np.asarray(generated, np.float64), np.asarray(real, np.float64)
    n = min(len(generated), len(real))
    length = min(max(round(window_s * fps), 2), n)
    second = np.floor(np.arange(n) / fps).astype(int)
    out = []
    for k in range(second[-1] + 1 if n else 0):
        centre = float(np.flatnonzero(second == k).mean())
        start = int(min(max(round(centre + 0.5 - length / 2), 0), n - length))
        g, r = generated[start : start + length], real[start : start + length]
        keep = np.isfinite(g) & np.isfinite(r)
        out.append(pearson_r(g[keep], r[keep]))
    return np.array(out, np.float64)


def per_second(values: np.ndarray, fps: float = FPS) -> tuple[np.ndarray, np.ndarray]:
    """(S,) mean of the finite per-frame values in each second of video, and (S,) the mean time (s) of its frames.

    Second k holds frames i with k <= i / fps < k + 1 (the last second may be partial); NaN where none is finite.
    """
    values = np.asarray(values, np.float64)
    second = np.floor(np.arange(len(values)) / fps).astype(int)
    n_seconds = int(second[-1]) + 1 if len(values) else 0
    curve, times = np.full(n_seconds, np.nan), np.zeros(n_seconds)
    for k in range(n_seconds):
        frames = np.flatnonzero(second == k)
        finite = values[frames][np.isfinite(values[frames])]
        if len(finite):
            curve[k] = finite.mean()
        times[k] = frames.mean() / fps
    return curve, times


def slope_per_minute(curve: np.ndarray, times: np.ndarray) -> float:
    """Slope of the least-squares line through the finite points of a curve, per minute; nan with fewer than 2."""
    curve, times = np.asarray(curve, np.float64), np.asarray(times, np.float64)
    keep = np.isfinite(curve)
    if keep.sum() < 2:
        return float("nan")
    minutes = times[keep] / 60.0
    dm = minutes - minutes.mean()
    return float((dm * (curve[keep] - curve[keep].mean())).sum() / (dm**2).sum())


def summarise_curve(curve: np.ndarray, times: np.ndarray, n_frames: int, fps: float = FPS) -> dict[str, float]:
    """at_Xs (the value of the second ending at X s, for each X of SUMMARY_SECONDS reached) and slope_per_min."""
    out = {f"at_{x}s": float(curve[x - 1]) for x in SUMMARY_SECONDS if n_frames >= x * fps and len(curve) >= x}
    out["slope_per_min"] = slope_per_minute(curve, times)
    return out


def _any_face(landmarks: np.ndarray | None) -> bool:
    return landmarks is not None and len(landmarks) > 0 and bool(np.isfinite(landmarks).all(axis=(1, 2)).any())


def _filled(landmarks: np.ndarray) -> np.ndarray:
    from diffheads.face.align import fill_missing

    return fill_missing(landmarks)


def _detection_rate(landmarks: np.ndarray | None) -> float | None:
    if landmarks is None:
        return None
    return float(np.isfinite(landmarks).all(axis=(1, 2)).mean()) if len(landmarks) else None


def _against_real(
    gen_lab: np.ndarray,
    gen_sharp: np.ndarray,
    gen_points: np.ndarray,
    real_lab: np.ndarray,
    real_sharp: np.ndarray,
    real_landmarks: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Per-frame colour difference, shape residual and sharpness ratio of the generated frames to the real ones."""
    real_points = real_landmarks if real_landmarks is not None else np.full((len(gen_lab), 68, 2), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(real_sharp > 0, gen_sharp / real_sharp, np.nan)
    return {
        "colour_de2000": colour_difference(gen_lab, real_lab),
        "shape_rms_iod": similarity_residual(gen_points, real_points),
        "sharpness_ratio": ratio,
    }


def video_drift(
    generated: np.ndarray,
    generated_landmarks: np.ndarray | None,
    real: np.ndarray | None = None,
    real_landmarks: np.ndarray | None = None,
    mouth_opening: tuple[np.ndarray, np.ndarray] | None = None,  # per-frame (generated, real) mouth opening
    fps: float = FPS,
    window_s: float = LIP_SYNC_WINDOW_S,
) -> dict[str, Any]:
    """Per-second drift curves of one generated video, against the identity frame and (given) the real clip.

    Frames are uint8 (T, H, W, 3), the real ones resized to the generated size; landmarks (T, 68, 2) pixel
    (x, y) in generated-frame pixels, NaN where no face was found. The face region is the landmark hull when
    a face was found in some frame of every video given, else the centre box for both.
    """
    n = len(generated)
    if n == 0:
        raise ValueError("the generated video has no frames")
    if real is not None and len(real) != n:
        raise ValueError(f"generated and real clips differ in length: {n} vs {len(real)}")
    with_real = real is not None
    use_mesh = _any_face(generated_landmarks) and (not with_real or _any_face(real_landmarks))
    # missing frames take the landmarks interpolated from their neighbours (the region only, never the shape)
    gen_lab, gen_sharp = frame_measures(generated, _filled(generated_landmarks) if use_mesh else None)
    if with_real:
        real_lab, real_sharp = frame_measures(real, _filled(real_landmarks) if use_mesh else None)
        identity = (real_lab[0], real_sharp[0], real_landmarks)
    else:
        identity = (gen_lab[0], gen_sharp[0], generated_landmarks)
    identity_lab, identity_sharp, identity_lm = identity
    # the identity frame's landmarks: those of the first frame with a face if Face Mesh missed frame 0
    identity_points = _filled(identity_lm)[0] if _any_face(identity_lm) else np.full((68, 2), np.nan)
    gen_points = generated_landmarks if generated_landmarks is not None else np.full((n, 68, 2), np.nan)

    per_frame: dict[str, dict[str, np.ndarray]] = {
        "against_identity": {
            "colour_de2000": colour_difference(gen_lab, identity_lab),
            "shape_rms_iod": similarity_residual(gen_points, identity_points),
            "sharpness_ratio": gen_sharp / identity_sharp if identity_sharp > 0 else np.full(n, np.nan),
        },
        "against_real": {},
    }
    if with_real:
        per_frame["against_real"] = _against_real(gen_lab, gen_sharp, gen_points, real_lab, real_sharp, real_landmarks)
    out: dict[str, Any] = {
        "frames": n,
        "fps": fps,
        "identity": "real frame 0" if with_real else "generated frame 0",
        "face_region": "face mesh" if use_mesh else "centre box",
        "detection_rate": _detection_rate(generated_landmarks),
        "real_detection_rate": _detection_rate(real_landmarks) if with_real else None,
        "times_s": per_second(np.zeros(n), fps)[1],
    }
    for comparison, measures in per_frame.items():
        out[comparison] = {name: per_second(values, fps)[0] for name, values in measures.items()}
    if with_real and mouth_opening is not None:
        out["against_real"]["lip_sync_r"] = windowed_r(mouth_opening[0][:n], mouth_opening[1][:n], fps, window_s)
    return out


def video_columns(result: dict[str, Any]) -> dict[str, Any]:
    """A few per_video.csv columns: against the identity frame, the last second's value and the slope per minute."""
    times = result["times_s"]
    row: dict[str, Any] = {
        "drift_seconds": len(times),
        "drift_identity": result["identity"],
        "drift_face_region": result["face_region"],
        "drift_detection_rate": result["detection_rate"],
    }
    curves = dict(result["against_identity"])
    if "lip_sync_r" in result["against_real"]:
        curves["lip_sync_r"] = result["against_real"]["lip_sync_r"]
    for name in MEASURES:
        if name in curves:
            curve = curves[name]
            row[f"drift_{name}_end"] = float(curve[-1]) if len(curve) else float("nan")
            row[f"drift_{name}_slope_per_min"] = slope_per_minute(curve, times)
    return row


def mean_curve(curves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(S,) mean over videos of per-second curves of different lengths (finite values only) and (S,) the counts."""
    n_seconds = max((len(c) for c in curves), default=0)
    total, count = np.zeros(n_seconds), np.zeros(n_seconds, int)
    for curve in curves:
        curve = np.asarray(curve, np.float64)
        finite = np.isfinite(curve)
        total[: len(curve)][finite] += curve[finite]
        count[: len(curve)] += finite
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan), count


def _finite_mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def drift_metrics(
    videos: list[dict[str, Any]], fps: float = FPS, window_s: float = LIP_SYNC_WINDOW_S
) -> dict[str, Any]:
    """metrics.json's drift section: per-second mean curves over videos and their summaries, per comparison.

    at_Xs is the mean over the videos that reach X s of their value for the second ending at X s; slope_per_min
    the mean over videos of each video's least-squares slope.
    """
    regions = [v["face_region"] for v in videos]
    out: dict[str, Any] = {
        "n_videos": len(videos),
        "fps": fps,
        "seconds": "curve[k] is the mean over frames k <= t < k + 1 s (the last second of a clip may be partial)",
        "identity": sorted({v["identity"] for v in videos}),
        "face_region": {name: regions.count(name) for name in sorted(set(regions))},
        "detection_rate": _finite_mean([v["detection_rate"] for v in videos]),
        "real_detection_rate": _finite_mean([v["real_detection_rate"] for v in videos]),
        "videos_reaching": {f"{x}s": sum(1 for v in videos if v["frames"] >= x * fps) for x in SUMMARY_SECONDS},
        "lip_sync_window_s": window_s,
    }
    for comparison in ("against_identity", "against_real"):
        section: dict[str, Any] = {}
        for name in MEASURES:
            have = [v for v in videos if name in v[comparison]]
            if not have:
                continue
            curve, count = mean_curve([v[comparison][name] for v in have])
            entry: dict[str, Any] = {
                "units": UNITS[name],
                "variant": VARIANTS[name],
                "n_videos": len(have),
                "curve": curve.tolist(),
                "curve_n_videos": count.tolist(),
            }
            summaries = [summarise_curve(v[comparison][name], v["times_s"], v["frames"], fps) for v in have]
            for key in [f"at_{x}s" for x in SUMMARY_SECONDS] + ["slope_per_min"]:
                values = [summary[key] for summary in summaries if key in summary]
                if values:  # at_Xs only where some video reaches X s
                    entry[key] = _finite_mean(values)
            entry["n_videos_slope"] = sum(1 for summary in summaries if math.isfinite(summary["slope_per_min"]))
            section[name] = entry
        out[comparison] = section
    if not out["against_real"]:
        out["against_real_reason"] = "needs real clips of the same names (--real)"
    elif "lip_sync_r" not in out["against_real"]:
        out["lip_sync_reason"] = (
            "needs the real clip's mouth landmarks (DATA/lmks, or Face Mesh finding the real face in 80% of the frames)"
        )
    return out
