"""Disk frame cache: same examples as decoding, atomic and rebuilt when stale, reads by memory map."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from diffheads.config import DataConfig, FrameCache, IdentityFrameMode, ModelConfig
from diffheads.data import frame_cache
from diffheads.data.dataset import SplitClips, TalkingFaceDataset, to_model_frames
from diffheads.data.frame_cache import cache_path, ensure_cached, read_frames, resize_frames
from diffheads.data.layout import DataLayout
from diffheads.errors import DiffheadsError
from diffheads.io.video import read_video, write_video
from diffheads.prepare.cache import cache_dataset
from diffheads.synth.dataset import make_synthetic_dataset

N_FRAMES = 25  # 1 s at 25 fps
EMB_ROWS = {"id000/clip00": 27, "id001/clip00": 23, "id002/clip00": 25}  # id001: 2 rows fewer than frames (allowed)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """2 training identities and 1 test identity, one 1 s clip each at 32 px, with embeddings."""
    make_synthetic_dataset(
        tmp_path, n_train_identities=2, n_test_identities=1, clips_per_identity=1, seconds=1.0, size=32, progress=False
    )
    gen = torch.Generator().manual_seed(0)
    for cid, rows in EMB_ROWS.items():
        (tmp_path / "emb" / cid).parent.mkdir(parents=True, exist_ok=True)
        torch.save(torch.randn(rows, 8, generator=gen), tmp_path / "emb" / f"{cid}.pth")
    return tmp_path


def examples(root: Path, mode: FrameCache, size: int, **data_kw) -> list[dict]:
    model = ModelConfig(image_size=size, n_motion_frames=2, grayscale_motion=data_kw.pop("gray", True))
    data = DataConfig(root=str(root), frame_cache=mode, examples_per_clip=12, **data_kw)
    ds = TalkingFaceDataset(data, model, "train", lip_loss=True)
    torch.manual_seed(0)
    return [ds[i] for i in range(len(ds))]


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


@pytest.mark.parametrize(
    "size, kw",
    [
        (32, {}),  # native size: no resize
        (24, {"motion_blur": True, "gray": False}),  # resized frames, colour motion, blurred
        (16, {"identity_frame": IdentityFrameMode.FIRST}),
    ],
)
def test_all_modes_draw_identical_examples(root, size, kw):
    memory = examples(root, FrameCache.MEMORY, size, **dict(kw))
    disk = examples(root, FrameCache.DISK, size, **dict(kw))
    decode = examples(root, FrameCache.DECODE, size, **dict(kw))
    assert_same(memory, disk)
    assert_same(memory, decode)
    assert memory[0]["target"].shape == (3, size, size) and "mouth_landmarks" in memory[0]
    assert (root / "cache" / f"{size}px" / "id000" / "clip00.npy").is_file()


def test_disk_mode_with_a_tiny_row_budget_reloads_but_draws_the_same(root, monkeypatch):
    from diffheads.data import dataset as dataset_module

    memory = examples(root, FrameCache.MEMORY, 32)
    monkeypatch.setattr(dataset_module, "DISK_ROWS_BUDGET", 1)  # every clip evicts the one before
    data = DataConfig(root=str(root), frame_cache=FrameCache.DISK, examples_per_clip=12)
    ds = TalkingFaceDataset(data, ModelConfig(image_size=32, n_motion_frames=2), "train", lip_loss=True)
    torch.manual_seed(0)
    assert_same(memory, [ds[i] for i in range(len(ds))])
    assert len(ds._sources) == 1


def test_dataloader_workers_draw_identical_examples(root):
    def batches(mode: FrameCache) -> list[dict]:
        data = DataConfig(root=str(root), frame_cache=mode, examples_per_clip=4)
        ds = TalkingFaceDataset(data, ModelConfig(image_size=32), "train", lip_loss=True)
        loader = DataLoader(ds, batch_size=3, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(5))
        return list(loader)

    disk, memory = batches(FrameCache.DISK), batches(FrameCache.MEMORY)
    assert_same(disk, memory)


def test_cache_file_holds_the_resized_uint8_frames(root):
    layout = DataLayout.of(root)
    raw, _ = read_video(layout.video("id000/clip00"))
    for size in (32, 24):
        path = ensure_cached(layout, "id000/clip00", size)
        assert path == cache_path(layout, "id000/clip00", size) == root / "cache" / f"{size}px" / "id000/clip00.npy"
        cached = np.load(path)
        assert cached.dtype == np.uint8 and cached.shape == (N_FRAMES, size, size, 3)
        np.testing.assert_array_equal(cached, resize_frames(raw, size))
        # a cached clip gives exactly the tensors of a decoded one
        assert torch.equal(read_frames(path, range(N_FRAMES)), to_model_frames(raw, size))
    np.testing.assert_array_equal(np.load(cache_path(layout, "id000/clip00", 32)), raw)  # native size: as decoded


def test_resize_rounds_the_float_interpolation():
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    x = torch.nn.functional.interpolate(x, size=(24, 24), mode="bilinear", antialias=True, align_corners=False)
    got = to_model_frames(frames, 24)
    assert (got - x).abs().max() <= 1 / 127.5  # within half a level of the unrounded resize
    levels = (got + 1) * 127.5
    assert (levels - levels.round()).abs().max() < 1e-4  # on uint8 levels


def test_cache_is_rebuilt_when_the_video_changes_or_the_file_is_wrong(root):
    layout = DataLayout.of(root)
    cid = "id001/clip00"
    path = ensure_cached(layout, cid, 32)
    first = np.load(path)
    assert frame_cache._ensure(layout, cid, 32)[1] is False  # fresh: not rebuilt

    video = layout.video(cid)
    later = path.stat().st_mtime_ns + 5_000_000_000
    os.utime(video, ns=(later, later))  # touched: newer than the cache
    assert frame_cache._ensure(layout, cid, 32)[1] is True
    assert frame_cache._ensure(layout, cid, 32)[1] is False

    write_video(video, np.full((10, 32, 32, 3), 200, np.uint8), fps=25)  # rewritten: 10 grey frames
    later = path.stat().st_mtime_ns + 10_000_000_000
    os.utime(video, ns=(later, later))
    rebuilt = np.load(ensure_cached(layout, cid, 32))
    assert rebuilt.shape == (10, 32, 32, 3) and first.shape == (N_FRAMES, 32, 32, 3)
    assert abs(int(rebuilt.astype(int).mean()) - 200) <= 2

    for wrong in (np.zeros((10, 32, 32, 3), np.float32), np.zeros((10, 16, 16, 3), np.uint8)):
        np.save(path, wrong)  # newer than the video, but not a uint8 (T, 32, 32, 3) array
        assert np.load(ensure_cached(layout, cid, 32)).shape == (10, 32, 32, 3)
        assert np.load(path).dtype == np.uint8
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    np.testing.assert_array_equal(np.load(ensure_cached(layout, cid, 32)), rebuilt)


def test_a_crash_while_writing_leaves_no_file(root, monkeypatch):
    layout = DataLayout.of(root)
    real_save = np.save

    def crash(handle, array, *args, **kwargs):
        handle.write(b"\x93NUMPY half a file")
        raise RuntimeError("killed")

    monkeypatch.setattr(np, "save", crash)
    with pytest.raises(RuntimeError, match="killed"):
        ensure_cached(layout, "id000/clip00", 32)
    path = cache_path(layout, "id000/clip00", 32)
    assert not path.exists() and list(path.parent.iterdir()) == []  # neither the file nor a temporary
    monkeypatch.setattr(np, "save", real_save)
    assert np.load(ensure_cached(layout, "id000/clip00", 32)).shape == (N_FRAMES, 32, 32, 3)


def test_two_writers_racing_on_one_clip_both_end_up_fine(root, monkeypatch):
    layout = DataLayout.of(root)
    real_save, both_decoded = np.save, threading.Barrier(2, timeout=20)

    def save_together(handle, array, *args, **kwargs):
        both_decoded.wait()  # both writers have decoded and now write at the same time
        real_save(handle, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", save_together)
    results: list = []
    threads = [
        threading.Thread(target=lambda: results.append(frame_cache._ensure(layout, "id000/clip00", 32)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(built, n) for _, built, n in results] == [(True, N_FRAMES)] * 2
    path = cache_path(layout, "id000/clip00", 32)
    assert [p.name for p in path.parent.iterdir()] == ["clip00.npy"]
    np.testing.assert_array_equal(np.load(path), read_video(layout.video("id000/clip00"))[0])


def test_read_frames_reads_the_requested_frames_through_a_memory_map(root, monkeypatch):
    layout = DataLayout.of(root)
    path = ensure_cached(layout, "id002/clip00", 32)
    full = np.load(path)
    real_load, opened = np.load, []

    def spy(file, *args, **kwargs):
        array = real_load(file, *args, **kwargs)
        opened.append((kwargs.get("mmap_mode"), type(array)))
        return array

    monkeypatch.setattr(np, "load", spy)
    got = read_frames(path, [7, 3, 3, 20])
    assert opened == [("r", np.memmap)]  # one memory map, never a full np.load
    assert got.shape == (4, 3, 32, 32) and got.dtype == torch.float32
    assert torch.equal(got, torch.from_numpy(full[[7, 3, 3, 20]]).permute(0, 3, 1, 2).float() / 127.5 - 1)


def test_disk_mode_example_opens_only_memory_maps(root, monkeypatch):
    data = DataConfig(root=str(root), frame_cache=FrameCache.DISK)
    ds = TalkingFaceDataset(data, ModelConfig(image_size=32), "train", lip_loss=True)
    ds[0], ds[1]  # first use of both clips: cache built, embeddings and landmarks loaded
    real_load, opened = np.load, []
    monkeypatch.setattr(np, "load", lambda f, *a, **k: opened.append(k.get("mmap_mode")) or real_load(f, *a, **k))
    monkeypatch.setattr(frame_cache, "decode_resized", lambda *a: pytest.fail("decoded in disk mode"))
    for i in range(6):
        ds[i]
    assert opened == ["r"] * 6


def test_cache_dataset_fills_every_listed_clip_once(root):
    report = cache_dataset(root, 24, splits=("train", "test"), progress=False)
    assert (report["clips"], report["built"], report["up_to_date"]) == (3, 3, 0)
    assert report["frames"] == 3 * N_FRAMES and report["bytes"] > 3 * N_FRAMES * 24 * 24 * 3
    assert sorted(p.name for p in (root / "cache" / "24px").rglob("*.npy")) == ["clip00.npy"] * 3
    again = cache_dataset(root, 24, splits=("train",), progress=False)
    assert (again["clips"], again["built"], again["up_to_date"]) == (2, 0, 2)


def test_clip_split_clips_and_missing_video_in_disk_mode(root):
    model = ModelConfig(image_size=32)
    disk = TalkingFaceDataset(DataConfig(root=str(root), frame_cache=FrameCache.DISK), model, lip_loss=True)
    memory = TalkingFaceDataset(DataConfig(root=str(root)), model, lip_loss=True)
    a, b = disk.clip(1), memory.clip(1)
    assert a.n == b.n == 23 and torch.equal(a.frames, b.frames) and torch.equal(a.landmarks, b.landmarks)
    item = SplitClips(DataConfig(root=str(root), frame_cache=FrameCache.DISK), model)[0]
    assert item["cid"] == "id002/clip00" and item["identity_frame"].shape == (3, 32, 32) and item["n_frames"] == 25
    (root / "file_list_train.txt").write_text("./id000/clip00.mp4\n./id000/missing.mp4\n")
    with pytest.raises(DiffheadsError, match="listed in file_list_train.txt are missing"):
        TalkingFaceDataset(DataConfig(root=str(root), frame_cache=FrameCache.DISK), model, lip_loss=False)


def test_cache_command(root, capsys):
    from diffheads.cli import main

    assert main(["cache", str(root), "--size", "16", "--quiet"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["built"] == first["clips"] > 0 and (root / "cache" / "16px").is_dir()
    assert main(["cache", str(root), "--size", "16", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["up_to_date"] == first["clips"]
