"""`diffheads generate`: one video per clip of a split, in one process or spread over many.

The clips are cut into batches in file-list order, the same batches whatever the number of
processes, and the batches are dealt to the ranks in turn; each clip's noise comes from its own
seed (seed, clip id). So every clip is generated exactly once, by the same computation, and the
videos equal those of a single process. Finished videos are skipped on a rerun, so a killed job
resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffheads.audio.frames import SAMPLE_RATE
from diffheads.checkpoint import LoadedModel
from diffheads.config import SampleConfig
from diffheads.data.dataset import SplitClips
from diffheads.data.sampler import derive_seed
from diffheads.distributed import Ranks
from diffheads.io.atomic import stale_temporaries
from diffheads.io.audio import load_audio
from diffheads.io.outdir import output_dir
from diffheads.io.video import write_video
from diffheads.sample.runtime import check_audio_width, model_on, sample_clips, to_uint8


@dataclass
class GenerateResult:
    """Outputs of a test-set generation (all ranks together)."""

    written: list[Path]
    skipped: list[Path]
    seconds: float = 0.0  # sampling and writing, from the first rank's start to the last rank's end


def clip_seed(seed: int, cid: str) -> int:
    """The seed of clip `cid`'s noise: a function of (seed, clip id) only."""
    digest = hashlib.sha256(cid.encode()).digest()
    return derive_seed(seed, int.from_bytes(digest[:8], "little"))


def plan_batches(n_clips: int, batch_size: int) -> list[list[int]]:
    """Clip indices in batches of `batch_size`, in order: the same for any number of processes."""
    return [list(range(start, min(start + batch_size, n_clips))) for start in range(0, n_clips, batch_size)]


def generate_test_set(
    checkpoint: str | Path | LoadedModel,
    data_root: str | Path,
    out_dir: str | Path,
    sample: SampleConfig | None = None,
    embeddings: str | Path | None = None,
    split: str = "test",
    skip_existing: bool = True,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    ranks: Ranks | None = None,
) -> GenerateResult:
    """One mp4 (with its audio) per clip of the split, trimmed back to each clip's length.

    With `ranks` (diffheads.distributed.launch) this process generates only its share of the
    batches; the result lists every rank's videos, on every rank.
    """
    ranks = ranks or Ranks(device=device)
    model = model_on(checkpoint, ranks.device if ranks.distributed else device)
    sample = sample or model.cfg.sample
    data_cfg = dataclasses.replace(model.cfg.data, root=str(data_root), embeddings=str(embeddings or ""))
    clips = SplitClips(data_cfg, model.cfg.model, split)
    out_dir = Path(out_dir)
    targets = [out_dir / f"{cid}.mp4" for cid in clips.ids]
    with output_dir(out_dir, "--out folder"):
        if ranks.is_zero:  # what a killed run was writing when it died
            _remove_stale(targets)
        done = ranks.broadcast([skip_existing and p.is_file() for p in targets])
        todo = [b for b in plan_batches(len(targets), sample.batch_size) if not all(done[i] for i in b)]
        mine = ranks.shard(todo)
        bar = _clips_bar(len(targets), sum(done), progress and ranks.is_zero)
        written: list[int] = []
        ranks.barrier()  # every rank has its model and clip list: the sampling starts together
        started = time.perf_counter()
        for round_ in range(math.ceil(len(todo) / ranks.world_size)):  # every rank joins every round's count
            now = []
            if round_ < len(mine):
                now = _generate_batch(
                    model,
                    clips,
                    mine[round_],
                    done,
                    out_dir,
                    sample,
                    embeddings or data_root,
                    seed,
                    progress and not ranks.distributed,
                )  # frames, under the clips bar
                written.extend(now)
            bar.update(ranks.sum(len(now)))
        bar.close()
        gathered = ranks.gather((written, time.perf_counter() - started))
        every = sorted(i for rank_written, _ in gathered for i in rank_written)
    return GenerateResult(
        [targets[i] for i in every],
        [p for p, d in zip(targets, done) if d],
        round(max(seconds for _, seconds in gathered), 2),
    )


def _remove_stale(targets: list[Path]) -> None:
    """Delete the temporary files left next to `targets` by a killed run."""
    for target in targets:
        for tmp in stale_temporaries(target):
            tmp.unlink(missing_ok=True)


def _clips_bar(total: int, initial: int, show: bool) -> tqdm:
    """The clips progress bar on standard error, starting at the clips already done."""
    return tqdm(total=total, initial=initial, desc="clips", unit="clip", disable=not show, file=sys.stderr)


def _generate_batch(
    model: LoadedModel,
    clips: SplitClips,
    batch: list[int],
    done: list[bool],
    out_dir: Path,
    sample: SampleConfig,
    embeddings: str | Path,
    seed: int,
    progress: bool,
) -> list[int]:
    """Sample one planned batch and write the clips not yet done; returns their indices."""
    items = [clips[i] for i in batch]
    check_audio_width(model, items[0]["audio_emb"].shape[1], str(embeddings))
    videos = sample_clips(
        model,
        torch.stack([item["identity_frame"] for item in items]),
        [item["audio_emb"] for item in items],
        sample,
        seed=[clip_seed(seed, item["cid"]) for item in items],
        progress=progress,
    )
    written = []
    for i, item, video in zip(batch, items, videos):
        if done[i]:  # a batch is always sampled whole, so that its other clips come out as in one run
            continue
        audio = load_audio(item["audio_path"])[: round(len(video) * SAMPLE_RATE / 25)]
        write_video(out_dir / f"{item['cid']}.mp4", to_uint8(video), fps=25, audio=audio, sample_rate=SAMPLE_RATE)
        written.append(i)
    return written
