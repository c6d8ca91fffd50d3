"""Several processes for one job (generate, evaluate) on Lightning's launcher, as training runs.

`launch` starts the processes the way `diffheads train` does (Lightning Fabric): plain `--devices N`
re-runs the command once per extra device, and under `torchrun` or SLURM's `srun` the processes the
scheduler started join one process group. `Ranks` is this process's place in that group, with the
few collectives generation and evaluation need; for a single process they cost nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from diffheads.errors import DiffheadsError

T = TypeVar("T")


@dataclass(frozen=True)
class LaunchConfig:
    """How many processes a job runs in, and on what."""

    devices: int = 1  # processes per machine (one per GPU on GPU machines)
    num_nodes: int = 1  # machines
    accelerator: str = "cpu"  # cpu or cuda

    @property
    def world_size(self) -> int:
        """Processes in the whole job."""
        return self.devices * self.num_nodes


def accelerator_of(device: str) -> str:
    """'cpu' or 'cuda' from a device string such as 'cpu', 'cuda' or 'cuda:1'."""
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise DiffheadsError(f"device {device!r}: several processes run on cpu or cuda only")
    return kind


def scheduler_layout(env: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """(processes per machine, machines) of a job that torchrun or SLURM's srun started, or None outside one."""
    world = int(env.get("WORLD_SIZE", "1"))
    if world > 1:  # torchrun (and other launchers following its environment variables)
        local = int(env.get("LOCAL_WORLD_SIZE", str(world)))
        return local, max(1, world // local)
    tasks = int(env.get("SLURM_NTASKS", "1"))
    if tasks > 1 and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):  # srun, not an interactive shell
        nodes = int(env.get("SLURM_NNODES", "1"))
        per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]  # "8" or "8(x2)"
        return (int(per_node) if per_node.isdigit() else max(1, tasks // nodes)), nodes
    return None


class Ranks:
    """This process's rank in a job of `world_size` processes, and the collectives the job uses."""

    def __init__(self, fabric: Any = None, device: str = "cpu") -> None:
        self._fabric = fabric
        self.rank = fabric.global_rank if fabric is not None else 0
        self.world_size = fabric.world_size if fabric is not None else 1
        self.device = str(fabric.device) if fabric is not None else device

    @property
    def is_zero(self) -> bool:
        """The process that reports (progress bars, the printed result)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of `items`: every world_size-th, starting at its rank (the same split on every run)."""
        return list(items[self.rank :: self.world_size])

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank (any picklable object)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, value: int) -> int:
        """The sum of an integer over ranks."""
        if not self.distributed:
            return value
        total = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(total)
        return int(total.item())

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.distributed:
            dist.barrier()


def launch(cfg: LaunchConfig, device: str = "cpu", quiet: bool = False) -> Ranks:
    """Join (or start) the job's processes; one process and no scheduler: a plain Ranks on `device`.

    With cfg.devices > 1 the command is run again once per extra device, as `diffheads train` does.
    Under torchrun or srun the processes are already there: a 1 x 1 cfg takes their layout from the
    scheduler's environment, any other must match it.
    """
    if cfg.devices < 1 or cfg.num_nodes < 1:
        raise DiffheadsError(f"--devices {cfg.devices} --num-nodes {cfg.num_nodes}: both must be at least 1")
    started = scheduler_layout()
    if cfg.world_size == 1:
        if started is None:
            return Ranks(device=device)
        cfg = replace(cfg, devices=started[0], num_nodes=started[1])  # the processes torchrun / srun started
    from lightning.fabric import Fabric

    if (
        quiet
    ):  # Lightning's "Initializing distributed ..." banners (rank-zero messages go to whichever was imported last)
        for name in ("lightning.fabric", "lightning.pytorch"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        fabric = Fabric(
            accelerator="cuda" if cfg.accelerator == "cuda" else "cpu",
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            strategy="ddp",
        )
        fabric.launch()
    except (ValueError, RuntimeError) as exc:  # e.g. --devices not matching the processes torchrun / srun started
        raise DiffheadsError(f"cannot start {cfg.world_size} processes: {exc}".replace("\n", " ")) from None
    return Ranks(fabric)
