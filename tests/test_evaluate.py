"""`diffheads evaluate`: every metric end to end on synthetic clips, with weights saved in the published formats."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from diffheads.cli import main
from diffheads.data.layout import DataLayout
from diffheads.io.audio import load_audio
from diffheads.io.video import read_video, write_video
from diffheads.synth.dataset import make_synthetic_dataset
from fake_weights import write_i3d, write_inception, write_syncnet
from runcli import run_cli

PAPER_METRICS = (
    "psnr",
    "ssim",
    "fid",
    "fvd",
    "av_offset",
    "av_confidence",
    "lse_d",
    "lse_c",
    "blinks_per_second",
    "blink_duration_frames",
    "blink_duration_s",
    "ofm",
    "fmse",
    "lip_sync_r",
)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Two held-out synthetic clips of 25 frames, 'generated' copies of them brightened by 12 levels, and weights."""
    root = tmp_path_factory.mktemp("eval")
    data, gen, weights = root / "data", root / "gen", root / "weights"
    make_synthetic_dataset(
        data, n_train_identities=1, n_test_identities=2, clips_per_identity=1, seconds=1.0, size=32, progress=False
    )
    layout = DataLayout.of(data)
    for cid in layout.clips("test"):
        frames, _ = read_video(layout.video(cid))
        brighter = np.clip(frames.astype(int) + 12, 0, 255).astype(np.uint8)
        write_video(gen / f"{cid}.mp4", brighter, fps=25, audio=load_audio(layout.audio(cid)))
    weights.mkdir()
    write_inception(weights / "weights-inception-2015-12-05-6726825d.pth")
    write_i3d(weights / "i3d_torchscript.pt")
    write_syncnet(weights / "syncnet_v2.model")
    return {"data": data, "gen": gen, "weights": weights, "root": root}


def test_every_metric_with_weights(clips):
    out = clips["root"] / "out"
    res = run_cli(
        "evaluate",
        "--generated",
        str(clips["gen"]),
        "--real",
        str(clips["data"]),
        "--out",
        str(out),
        "--weights-dir",
        str(clips["weights"]),
        "--quiet",
    )
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert res["n_videos"] == 2 and set(PAPER_METRICS) <= set(metrics)
    assert res["skipped"] == {"wer": res["skipped"]["wer"]} and "lip reader" in res["skipped"]["wer"]
    # weights are recorded by hash
    for key, name in (
        ("fid", "weights-inception-2015-12-05-6726825d.pth"),
        ("fvd", "i3d_torchscript.pt"),
        ("lse_c", "syncnet_v2.model"),
    ):
        digest = hashlib.sha256((clips["weights"] / name).read_bytes()).hexdigest()
        assert metrics[key]["weights"]["sha256"] == digest
    assert metrics["fvd"]["variant"].startswith("stylegan-v (biased") and metrics["fvd"]["clip_len"] == 16
    assert metrics["fvd"]["n_real_clips"] == 2 and metrics["fid"]["n_real_frames"] == 50
    assert metrics["lse_d"]["value"] >= 0 and metrics["lse_c"]["value"] == pytest.approx(
        metrics["av_confidence"]["value"]
    )
    assert metrics["ofm"]["variant"] == "corrected"

    # PSNR against an independent computation on the decoded videos
    rows = list(csv.DictReader((out / "per_video.csv").open()))
    assert [r["clip"] for r in rows] == ["id001/clip00", "id002/clip00"]
    layout = DataLayout.of(clips["data"])
    for row in rows:
        gen = read_video(clips["gen"] / f"{row['clip']}.mp4")[0].astype(np.float64)
        real = read_video(layout.video(row["clip"]))[0].astype(np.float64)
        mse = ((gen - real) ** 2).mean(axis=(1, 2, 3))
        assert float(row["psnr"]) == pytest.approx(np.mean(10 * np.log10(255.0**2 / mse)), rel=1e-6)
    # a brightened copy keeps the mouth moving with the speech
    assert metrics["lip_sync_r"]["value"] > 0.8

    report = (out / "report.md").read_text()
    assert "| | PSNR | SSIM | FID | FVD | AV Off | AV Conf | LSE-D | LSE-C |" in report
    assert (out / "plots" / "per_video.png").is_file() and (out / "plots" / "sync_id001_clip00.png").is_file()


def test_missing_weights_skip_only_their_metrics(clips, capsys):
    out = clips["root"] / "partial"
    res = run_cli(
        "evaluate",
        "--generated",
        str(clips["gen"]),
        "--real",
        str(clips["data"]),
        "--out",
        str(out),
        "--metrics",
        "psnr,fid,smoothness",
        "--legacy-smoothness",
        "--quiet",
    )
    assert set(res["metrics"]) == {"psnr", "ofm", "fmse"}
    assert "weights-inception-2015-12-05-6726825d.pth" in res["skipped"]["fid"]
    assert (
        "--inception-weights" in res["skipped"]["fid"] and "github.com/toshas/torch-fidelity" in res["skipped"]["fid"]
    )
    assert res["metrics"]["ofm"]["variant"].startswith("legacy")
    assert "fid skipped" in capsys.readouterr().err

    assert (
        main(
            [
                "evaluate",
                "--generated",
                str(clips["gen"]),
                "--real",
                str(clips["data"]),
                "--out",
                str(out),
                "--metrics",
                "fvd",
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert "no metric could be computed" in err[-1] and "i3d_torchscript.pt" in err[-1]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--metrics", "fidd"], "unknown metric"),
        (["--real", "/nonexistent"], "real folder"),
    ],
)
def test_bad_evaluate_input(clips, capsys, args, message):
    base = {"--generated": str(clips["gen"]), "--real": str(clips["data"]), "--out": str(clips["root"] / "bad")}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    argv = ["evaluate", "--quiet"] + [x for kv in base.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_generated_names_must_match_real_clips(clips, tmp_path, capsys):
    write_video(tmp_path / "other.mp4", np.zeros((5, 16, 16, 3), np.uint8))
    assert (
        main(
            [
                "evaluate",
                "--generated",
                str(tmp_path),
                "--real",
                str(clips["data"]),
                "--out",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "same name" in capsys.readouterr().err
