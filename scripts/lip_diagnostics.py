"""Why do the lips not follow? Two diagnostics for a GRID demo folder (issue 25, docs/demo.md).

    .venv/bin/python scripts/lip_diagnostics.py outputs/demo-grid [--alignments ../shared/data/grid/align/s1]

1. Lag scan: dlib's inner-lip opening on the generated frames against the real ones within the spoken spans,
   clip-centred and pooled, with the generated series shifted by -6..+6 frames (a model that follows the speech
   late peaks at a positive lag), and the spread of both series.
2. The audio head (models with model.mouth_shape_head, or model.mouth_bank's predictor): the opening of the mouth shape it predicts from each held-out
   clip's audio against the opening of the prepared landmarks (Face Mesh), clip-centred over whole clips. High here
   and low in 1 means the audio path knows the mouth and the network does not draw it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from diffheads.checkpoint import load_model
from diffheads.data.layout import DataLayout
from diffheads.io.video import read_video
from diffheads.metrics.dlib_face import DlibJudges
from diffheads.metrics.lip_open import alignment_span, find_alignment, lip_opening


def centred_r(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Pearson r of pooled series pairs, each series minus its own mean (non-finite values dropped)."""
    xs, ys = [], []
    for x, y in pairs:
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() > 1:
            xs.append(x[ok] - x[ok].mean())
            ys.append(y[ok] - y[ok].mean())
    return float(np.corrcoef(np.concatenate(xs), np.concatenate(ys))[0, 1])


def openings(out: Path, alignments: Path | None) -> list[tuple[np.ndarray, np.ndarray, slice]]:
    """Per held-out clip: (generated opening, real opening, spoken span) by dlib's 68 points."""
    judges, layout, clips = DlibJudges(), DataLayout.of(out / "data"), []
    for video in sorted((out / "videos").rglob("*.mp4")):
        cid = str(video.relative_to(out / "videos").with_suffix(""))
        fake, _ = read_video(video)
        real, _ = read_video(layout.video(cid))
        n = min(len(fake), len(real))
        align = find_alignment(alignments, Path(cid).name) if alignments else None
        span = alignment_span(align, n) if align else slice(0, n)
        pair = [lip_opening(judges.track(frames[:n]).points) for frames in (fake, real)]
        clips.append((pair[0], pair[1], span))
    return clips


def lag_scan(clips: list[tuple[np.ndarray, np.ndarray, slice]], max_lag: int = 6) -> dict[str, float]:
    """r at each lag (generated frame t + lag against real frame t) within the spoken spans."""
    scan = {}
    for lag in range(-max_lag, max_lag + 1):
        pairs = []
        for gen, real, span in clips:
            t = np.arange(span.start, span.stop)
            ok = (t + lag >= 0) & (t + lag < len(gen))
            pairs.append((gen[t[ok] + lag], real[t[ok]]))
        scan[str(lag)] = round(centred_r(pairs), 3)
    return scan


def head_r(out: Path) -> float | None:
    """r of the audio head's predicted opening against the prepared landmarks' on the held-out clips (None: no head)."""
    model = load_model(out / "model.ckpt")
    m = model.cfg.model
    if not (m.mouth_shape_head or m.mouth_bank):
        return None
    predict = model.unet.mouth_predictor if m.mouth_bank else model.unet.mouth_shape
    layout, k, pairs = DataLayout.of(out / "data"), model.cfg.model.n_audio_motion_embs, []
    for cid in layout.clips("test"):
        emb = torch.load(layout.embedding(cid), weights_only=True).float()
        mouth = np.load(layout.landmarks(cid))[:, 48:68]
        n = min(len(emb), len(mouth))
        rows = np.clip(np.arange(n)[:, None] + np.arange(-k, k + 1)[None], 0, n - 1)
        with torch.no_grad():
            shape = predict(emb[torch.from_numpy(rows)]).numpy()
        full = np.zeros((n, 68, 2))
        full[:, 48:68] = shape
        real = np.zeros((n, 68, 2))
        real[:, 48:68] = mouth[:n]
        pairs.append((lip_opening(full), lip_opening(real)))
    return round(centred_r(pairs), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a GRID demo folder (data/, videos/, model.ckpt)")
    parser.add_argument("--alignments", type=Path, default=Path("../shared/data/grid/align/s1"))
    args = parser.parse_args()
    clips = openings(args.out, args.alignments if args.alignments.is_dir() else None)
    spread = {
        name: round(float(np.nanstd(np.concatenate([s - np.nanmean(s) for s in series]))), 4)
        for name, series in (("generated", [c[0] for c in clips]), ("real", [c[1] for c in clips]))
    }
    report = {"lag_r": lag_scan(clips), "opening_std": spread, "audio_head_r": head_r(args.out)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
