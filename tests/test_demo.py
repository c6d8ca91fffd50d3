"""The demo pipeline: a quick run writes every artefact; the learning check and the lip-sync summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffheads.cli import main
from diffheads.demo.check import check_report
from diffheads.demo.check import main as check_main
from diffheads.demo.synthetic import lip_sync_summary


def test_quick_demo_writes_every_artefact(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out)
    assert f"try the model in your browser: diffheads app --checkpoint {out}/model.ckpt" in printed.err
    for key in ("lip_sync_r", "control_lip_sync_r", "n_clips", "train_seconds", "sample_seconds"):
        assert key in report
    assert report["n_clips"] == 1 and report["train_steps"] == 3
    assert json.loads((out / "report.json").read_text())["n_clips"] == 1
    for name in ("contact_sheet.png", "mouth_opening.png", "loss.png", "model.ckpt"):
        assert (out / name).is_file(), name
    assert len(list((out / "videos").rglob("*.mp4"))) == 1
    # the evaluation report of the metrics that need no downloaded weights
    assert {"psnr", "ssim", "ofm", "fmse", "lip_sync_r"} <= set(report["evaluation"]["metrics"])
    for name in ("metrics.json", "per_video.csv", "report.md", "plots/per_video.png"):
        assert (out / "eval" / name).is_file(), name
    # the measurement itself works: on real frames it tracks the true opening closely
    assert report["lip_sync_r_real_frames"] > 0.95
    # pixel error against an independent computation on the written videos
    from diffheads.io.video import read_video

    video = next((out / "videos").rglob("*.mp4"))
    gen = read_video(video)[0].astype(np.float64)
    real = read_video(out / "data" / "video" / video.relative_to(out / "videos"))[0].astype(np.float64)
    assert report["pixel_mae"] == pytest.approx(np.abs(gen - real[: len(gen)]).mean(), rel=1e-9)
    # the distilled student (quick: 2 -> 1 call), generated and measured like the teacher
    student = report["student"]
    assert student["network_calls_per_frame"] == 1 and student["rounds"] == 1
    assert (out / "distill" / "student_1.ckpt").is_file() and len(list((out / "student").rglob("*.mp4"))) == 1
    assert {"lip_sync_r", "control_lip_sync_r", "pixel_mae", "distill_seconds"} <= set(student)
    assert f"diffheads stream --checkpoint {out}/distill/student_1.ckpt" in printed.err
    # the drift summary of the held-out clips (1 s here: one value per measure and comparison)
    assert report["drift"]["n_videos"] == 1
    assert report["drift"]["against_identity"]["colour_de2000"]["seconds"] == 1
    # a second run into the same folder starts clean (no stale checkpoints or embeddings)
    (out / "train" / "checkpoints" / "stale.ckpt").write_bytes(b"x")
    assert main(["demo", "--quick", "--no-distill", "--out", str(out)]) == 0
    assert not (out / "train" / "checkpoints" / "stale.ckpt").exists()
    assert json.loads((out / "report.json").read_text())["student"] is None and not (out / "distill").exists()


def test_summary_pools_clips_and_control_is_a_mismatch():
    rng = np.random.default_rng(0)
    truth = {f"c{i}": rng.random(80) for i in range(4)}
    measures = {c: {"truth": t, "generated": 2 * t + 0.05 * rng.random(80), "real": t} for c, t in truth.items()}
    s = lip_sync_summary(measures)
    assert s["lip_sync_r"] > 0.99 and abs(s["control_lip_sync_r"]) < 0.2
    pooled = np.corrcoef(
        np.concatenate([m["generated"] for m in measures.values()]), np.concatenate(list(truth.values()))
    )
    assert s["lip_sync_r"] == pytest.approx(pooled[0, 1])


def test_learning_check(tmp_path, capsys):
    good = {"lip_sync_r": 0.7, "control_lip_sync_r": 0.02, "n_clips": 6}
    assert check_report(good) == []
    assert check_report(dict(good, lip_sync_r=0.3))
    assert check_report(dict(good, control_lip_sync_r=0.5))
    assert check_report(dict(good, lip_sync_r=float("nan")))
    assert check_report(dict(good, student={"lip_sync_r": 0.8})) == []
    assert check_report(dict(good, student={"lip_sync_r": 0.2}))
    assert check_report(dict(good, student=None)) == []
    path = tmp_path / "report.json"
    path.write_text(json.dumps(dict(good, lip_sync_r=0.1)))
    assert check_main([str(path)]) == 1
    path.write_text(json.dumps(good))
    assert check_main([str(path)]) == 0
