"""diffheads pack and data.format=packed: the same examples, batches and losses as the per-clip files."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from diffheads.config import load_config
from diffheads.data.dataset import TalkingFaceDataset
from diffheads.data.packed import MANIFEST
from diffheads.data.sampler import ExampleSampler
from diffheads.errors import DiffheadsError
from diffheads.io.video import read_video
from runcli import run_cli
from test_training_reliability import TINY, _losses, _train_process
from tiny import tiny_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    data = root / "data"
    tiny_data(data)
    summary = run_cli("pack", str(data), str(root / "packed"), "--size", "16", "--quiet")
    assert summary["clips"] == {"train": 4, "test": 2} and summary["landmarks"] is True
    return {"data": data, "packed": root / "packed", "root": root}


def _datasets(data) -> tuple[TalkingFaceDataset, TalkingFaceDataset]:
    files = load_config("configs/demo.yaml", [f"data.root={data['data']}", *TINY])
    packed = load_config("configs/demo.yaml", [f"data.root={data['packed']}", "data.format=packed", *TINY])
    return (
        TalkingFaceDataset(files.data, files.model, "train", lip_loss=True),
        TalkingFaceDataset(packed.data, packed.model, "train", lip_loss=True),
    )


def test_packed_frames_are_the_decoded_video_frames(data):
    _, packed = _datasets(data)
    for i, cid in enumerate(packed.ids):
        frames, emb, landmarks = packed.packed.load(i)
        video = read_video(data["data"] / "video" / f"{cid}.mp4")[0]  # independent decode, already 16 px
        assert frames.dtype == np.uint8 and np.array_equal(frames, video)
        assert torch.equal(emb, torch.load(data["data"] / "emb" / f"{cid}.pth", weights_only=True).float())
        lm = np.load(data["data"] / "lmks" / f"{cid}.npy")[..., :2].astype(np.float32)
        assert torch.equal(landmarks, torch.from_numpy(lm))  # 16 px source: scale 1


def test_packed_examples_equal_per_clip_examples_for_the_same_seed(data):
    files, packed = _datasets(data)
    assert files.ids == packed.ids
    sampler = ExampleSampler(len(files), seed=3)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        for key in sampler:
            a, b = files[key], packed[key]
            assert a.keys() == b.keys() and "mouth_landmarks" in a
            assert all(torch.equal(a[k], b[k]) for k in a), key


def test_packed_data_through_litdatas_download_cache_gives_the_same_examples(data, tmp_path):
    """local:/folder goes through litdata's downloader and chunk cache, as s3:// or gs:// data does."""
    files, _ = _datasets(data)
    cfg = load_config(
        "configs/demo.yaml",
        [f"data.root=local:{data['packed']}", "data.format=packed", f"data.packed_cache={tmp_path / 'cache'}", *TINY],
    )
    remote = TalkingFaceDataset(cfg.data, cfg.model, "train", lip_loss=True)
    for key in list(ExampleSampler(len(files), seed=5))[:6]:
        a, b = files[key], remote[key]
        assert all(torch.equal(a[k], b[k]) for k in a), key
    assert list((tmp_path / "cache").rglob("chunk-*.bin")), "the chunks were fetched into data.packed_cache"


def test_packed_batches_do_not_depend_on_loader_workers(data):
    files, packed = _datasets(data)

    def batches(dataset, workers: int) -> list[dict]:
        sampler = ExampleSampler(len(dataset), seed=7)
        sampler.set_epoch(2)
        return list(DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers))

    a, b = batches(files, 0), batches(packed, 2)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.slow
def test_packed_training_gives_the_losses_of_per_clip_training_and_resumes_exactly(data):
    files_run, packed_run, killed = data["root"] / "files-run", data["root"] / "packed-run", data["root"] / "killed"
    packed = ["data.format=packed"]
    _train_process(data["data"], files_run)
    _train_process(data["packed"], packed_run, *packed)
    files_losses, packed_losses = _losses(files_run), _losses(packed_run)
    assert sorted(packed_losses) == list(range(8)) and packed_losses == files_losses  # bit-identical floats
    assert _train_process(data["packed"], killed, *packed, kill=("--kill-in-step", 7)) == -signal.SIGKILL
    _train_process(data["packed"], killed, *packed, "trainer.resume=last")
    resumed = _losses(killed)
    assert [resumed[s] for s in range(6, 8)] == [packed_losses[s] for s in range(6, 8)]


def test_packed_format_errors_are_one_line(data, tmp_path):
    cfg = load_config("configs/demo.yaml", [f"data.root={data['data']}", "data.format=packed", *TINY])
    with pytest.raises(DiffheadsError, match="diffheads pack"):  # a DATA folder is not a pack
        TalkingFaceDataset(cfg.data, cfg.model, "train")
    cfg = load_config(
        "configs/demo.yaml", [f"data.root={data['packed']}", "data.format=packed", *TINY, "model.image_size=32"]
    )
    with pytest.raises(DiffheadsError, match="--size 32"):
        TalkingFaceDataset(cfg.data, cfg.model, "train")
    with pytest.raises(AssertionError):  # packing over an existing pack needs --overwrite
        run_cli("pack", str(data["data"]), str(data["packed"]), "--size", "16", "--quiet")
    assert (data["packed"] / MANIFEST).is_file()  # the refused run left the pack alone
