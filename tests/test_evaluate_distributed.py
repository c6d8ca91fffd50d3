"""`diffheads evaluate --devices 2`: two gloo processes give the metrics and per-video rows of one process; the FID
and FVD accumulators merge across processes."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffheads.data.layout import DataLayout
from diffheads.io.audio import load_audio
from diffheads.io.video import read_video, write_video
from diffheads.metrics.fid import FIDScorer
from diffheads.metrics.fvd import FVDScorer
from diffheads.synth.dataset import make_synthetic_dataset
from fake_weights import write_i3d, write_inception, write_syncnet

HERE = Path(__file__).resolve().parent
TRANSCRIPTS = {
    "id001/clip00": "place blue at one now",
    "id002/clip00": "bin red by two soon",
    "id003/clip00": "lay green in three again",
}


def read_lips(video_path: Path) -> str:
    """A stand-in lip reader (tests/ is on the subprocesses' PYTHONPATH): a fixed sentence."""
    return "place red at two now"


class PixelFeatures(torch.nn.Module):
    """A quick stand-in for the Inception network inside the FID scorer: a fixed projection of the pixels to 2048-d."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.register_buffer("proj", torch.randn(3 * side * side, 2048, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float().flatten(1) / 255.0) @ self.proj


def test_fid_statistics_of_two_scorers_merge_into_those_of_one(tmp_path):
    """Frames split over two scorers, merged: the sums and counts of one scorer, and of the features summed directly."""
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8)
    generated = np.clip(real.astype(int) + rng.integers(-60, 60, real.shape), 0, 255).astype(np.uint8)
    one = FIDScorer(write_inception(tmp_path / "weights-inception-2015-12-05-6726825d.pth"))
    one.metric.inception = PixelFeatures(8)
    first, second = copy.deepcopy(one), copy.deepcopy(one)
    for scorer, part in ((one, slice(None)), (first, slice(0, 5)), (second, slice(5, None))):
        scorer.update(real[part], real=True)
        scorer.update(generated[part], real=False)
    first.merge(second.statistics())
    merged, single = first.statistics(), one.statistics()
    assert merged.keys() == single.keys()

    # the features are float32 network outputs: a batch of 5 + 4 frames and one of 9 may round their last bit apart
    # (BLAS blocking depends on the batch and the thread count), so the float64 sums agree to float32 precision
    def close(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> None:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))

    for name in merged:
        assert merged[name].dtype == single[name].dtype
        close(merged[name].numpy(), single[name].numpy())
    for side, frames in (("real", real), ("fake", generated)):
        x = one.metric.inception(torch.from_numpy(frames).permute(0, 3, 1, 2)).double().numpy()
        assert int(merged[f"{side}_features_num_samples"]) == 9
        close(merged[f"{side}_features_sum"].numpy(), x.sum(axis=0))
        close(merged[f"{side}_features_cov_sum"].numpy(), x.T @ x)


def test_fvd_features_taken_out_and_added_back_give_the_same_fvd(tmp_path):
    """Each video's I3D features taken out of the scorer (to send to process 0) and added back: the same FVD."""
    weights = write_i3d(tmp_path / "i3d_torchscript.pt", clip_len=8)
    rng = np.random.default_rng(1)
    videos = [rng.integers(0, 256, (16, 24, 24, 3), dtype=np.uint8) for _ in range(3)]
    whole, parts = FVDScorer(weights, clip_len=8), FVDScorer(weights, clip_len=8)
    taken = []
    for video in videos:
        for scorer in (whole, parts):
            scorer.update(video, real=True)
            scorer.update(255 - video, real=False)
        taken.append(parts.take_features())
    assert parts.features == {True: [], False: []}
    for features in taken:
        parts.add_features(features)
    assert parts.compute() == whole.compute()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Three synthetic clips of 15 frames at 32 px (an odd count: the two processes get 2 and 1), generated copies
    brightened by a different amount each, weights in the published formats (I3D on 8-frame clips), transcripts."""
    root = tmp_path_factory.mktemp("eval_ddp")
    data, gen, weights = root / "data", root / "gen", root / "weights"
    make_synthetic_dataset(
        data, n_train_identities=1, n_test_identities=3, clips_per_identity=1, seconds=0.6, size=32, progress=False
    )
    layout = DataLayout.of(data)
    assert sorted(layout.clips("test")) == sorted(TRANSCRIPTS)
    for shift, cid in enumerate(sorted(layout.clips("test")), start=1):
        frames, _ = read_video(layout.video(cid))
        brighter = np.clip(frames.astype(int) + 8 * shift, 0, 255).astype(np.uint8)
        write_video(gen / f"{cid}.mp4", brighter, fps=25, audio=load_audio(layout.audio(cid)))
    weights.mkdir()
    write_inception(weights / "weights-inception-2015-12-05-6726825d.pth")
    write_i3d(weights / "i3d_torchscript.pt", clip_len=8)
    write_syncnet(weights / "syncnet_v2.model")
    (root / "transcripts.txt").write_text("".join(f"{c} {t}\n" for c, t in TRANSCRIPTS.items()))
    return {"data": data, "gen": gen, "weights": weights, "root": root}


def _evaluate(clips: dict[str, Path], out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`python -m diffheads.cli evaluate` in a fresh interpreter, as Lightning's launcher re-runs it per process."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p),
    )
    args = [
        "evaluate",
        "--generated",
        str(clips["gen"]),
        "--real",
        str(clips["data"]),
        "--out",
        str(out),
        "--weights-dir",
        str(clips["weights"]),
        "--lip-reader",
        "test_evaluate_distributed:read_lips",
        "--transcripts",
        str(clips["root"] / "transcripts.txt"),
        "--fvd-clip-len",
        "8",
        "--quiet",
        *extra,
    ]
    return subprocess.run(
        [sys.executable, "-m", "diffheads.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=clips["root"],
    )


def _result(proc: subprocess.CompletedProcess) -> dict:
    """The JSON a successful run printed (only process 0 prints)."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        message = f"stdout is not one JSON object: {proc.stdout[-2000:]!r}; stderr: {proc.stderr[-2000:]}"
        raise AssertionError(message) from None


def _assert_close(a, b, where: str = "") -> None:
    """Equal structure; numbers equal to float tolerance, everything else exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            _assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.mark.slow
def test_two_processes_give_the_results_of_one(clips):
    one_out, two_out = clips["root"] / "one", clips["root"] / "two"
    one = _evaluate(clips, one_out)
    two = _evaluate(clips, two_out, "--devices", "2")
    # only rank 0 prints the result (other ranks print nothing to stdout), and --quiet keeps Lightning quiet
    res_one, res_two = _result(one), _result(two)
    assert (res_one["processes"], res_two["processes"]) == (1, 2)
    assert "Initializing distributed" not in two.stderr and "%|" not in two.stderr, two.stderr[-3000:]

    summary_one = json.loads((one_out / "metrics.json").read_text())
    summary_two = json.loads((two_out / "metrics.json").read_text())
    metrics = summary_one["metrics"]
    # the set metrics built from gathered features and series are all there, and not trivially zero
    for key in (
        "fid",
        "fvd",
        "lse_c",
        "av_offset",
        "wer",
        "mouth_open_r",
        "control_mouth_open_r",
        "m_lmd",
        "control_m_lmd",
        "lip_sync_r",
        "psnr",
        "blinks_per_second",
        "ofm",
    ):
        assert key in metrics, key
    assert metrics["fid"]["value"] > 0 and metrics["fvd"]["value"] > 0 and metrics["fvd"]["n_real_clips"] == 3
    assert metrics["fid"]["n_real_frames"] == 45 and metrics["lse_c"]["n_videos"] == 3
    assert metrics["wer"]["n_videos"] == 3 and 0 < metrics["wer"]["value"] < 1
    assert summary_one["skipped"] == {}
    for key in ("n_videos", "n_frames", "faces_found", "skipped", "config", "metrics"):
        _assert_close(summary_one[key], summary_two[key], key)
    assert all(math.isfinite(m["value"]) for m in metrics.values() if isinstance(m.get("value"), float))

    # per-video rows identical, in the order of the clips; only rank 0 wrote, and the same files
    rows = (one_out / "per_video.csv").read_text()
    assert rows == (two_out / "per_video.csv").read_text()
    assert [line.split(",")[0] for line in rows.splitlines()[1:]] == sorted(TRANSCRIPTS)
    assert _files(one_out) == _files(two_out)
    assert "plots/sync_id001_clip00.png" in _files(two_out)


@pytest.mark.slow
def test_a_failure_in_one_process_stops_both_with_one_line(clips, tmp_path):
    """A clip that cannot be decoded, scored by process 1: both processes stop, process 0 says which process failed
    on which clip and why (one line), and no output folder is left."""
    gen = tmp_path / "gen"
    for src in sorted(clips["gen"].rglob("*.mp4")):
        rel = src.relative_to(clips["gen"])
        (gen / rel).parent.mkdir(parents=True, exist_ok=True)
        (gen / rel).write_bytes(b"not a video" if rel.as_posix() == "id002/clip00.mp4" else src.read_bytes())
    out = tmp_path / "out"
    proc = _evaluate({**clips, "gen": gen}, out, "--devices", "2", "--metrics", "psnr")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "process 1 of 2 failed on id002/clip00: video" in errors[0], proc.stderr[-3000:]
    assert not out.exists()
