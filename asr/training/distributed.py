"""Data-parallel training through PyTorch's own engine: `torchrun --nproc_per_node N -m asr train ...`.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and the rendezvous address for several machines); without
them everything here is a no-op for one process. Ranks split every global batch between them, so a run on
N processes takes the same optimizer steps as one process would with the same batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    device: torch.device
    local_rank: int = 0          # this process among the ranks of its machine
    local_world: int = 1         # ranks on this machine

    @property
    def main(self) -> bool:
        """Only the main rank logs to MLflow, prints and writes checkpoints."""
        return self.rank == 0


def init() -> Context:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Context(int(os.environ.get("RANK", "0")), world, device, local_rank,
                   int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


def barrier(ctx: Context) -> None:
    """Waits until every rank gets here (no-op for one process)."""
    if ctx.world > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(items: list[int], ctx: Context) -> list[int]:
    """This rank's share of a global batch (strided, so shares of a length-sorted batch are alike)."""
    return items[ctx.rank::ctx.world]


def all_sum(values: list[float], ctx: Context) -> list[float]:
    if ctx.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def gather(obj: Any, ctx: Context) -> list[Any]:
    """Every rank's `obj`, on every rank (rank order)."""
    if ctx.world == 1:
        return [obj]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, ctx: Context) -> bool:
    """True on every rank when it is true on one (e.g. a signal that reached only some processes)."""
    return all_sum([float(flag)], ctx)[0] > 0
