"""One process or many under torchrun: device choice, the process group, sharding and gathering.

A single `python -m training.train` is a world of one and needs no process group. Under
`torchrun --nproc_per_node=N` each process joins a group (nccl on CUDA, gloo on CPU), trains on its
shard of every epoch, and evaluation results are gathered back in dataset order, so metrics are the
same whatever the number of processes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from wmoe.errors import WMoEError
from wmoe.precision import resolve_dtype

# Training's precisions: wmoe's dtype names, less fp16 (it would need loss scaling, which training does
# not do), plus "auto": bf16 on a CUDA GPU that supports it, else fp32.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")  # see `choose_device`


class DeviceError(WMoEError, RuntimeError):
    """The device or precision asked for is not available on this machine."""


@dataclass
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    opened: bool = False  # this World joined the process group (and close_world leaves it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def choose_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """auto: the process's CUDA GPU when there is one, else the CPU; 'cuda' without a GPU is an error."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "device 'cuda' was asked for, but PyTorch sees no CUDA GPU; use device: auto or cpu"
        )
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_world(preference: str = "auto") -> World:
    """Join the torchrun process group when WORLD_SIZE > 1 (env:// rendezvous), else a world of one.

    A group already joined (by a caller running several trainings, training.ablate) is reused as is.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(preference, local_rank)
    opened = size > 1 and not dist.is_initialized()
    if opened:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank=rank, size=size, device=device, opened=opened)


def close_world(world: World):
    """Leave the process group if this World joined it."""
    if world.opened and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World):
    if world.distributed:
        dist.barrier()


def _comm_device(world: World) -> torch.device:
    return world.device if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce(t: torch.Tensor, world: World, op: str = "sum") -> torch.Tensor:
    """The reduction of `t` over processes (sum, min or max), returned on t's device."""
    if not world.distributed:
        return t
    x = t.detach().to(_comm_device(world)).clone()
    dist.all_reduce(x, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return x.to(t.device)


def all_gather_rows(t: torch.Tensor, world: World) -> torch.Tensor:
    """Every process's `t` concatenated along dim 0 in rank order; the first dims may differ."""
    if not world.distributed:
        return t
    dev = _comm_device(world)
    n = torch.tensor([t.shape[0]], device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world.size)]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)]).to(t.device)


class EpochSampler(Sampler[int]):
    """Training order: a permutation drawn from (seed, epoch) alone, identical on every process; process r
    takes every world-th index (padded by wrapping so all processes take the same number of steps).
    `set_epoch(epoch, start_batch)` makes a resumed run continue mid-epoch exactly where it stopped."""

    def __init__(self, n: int, batch_size: int, world: World, seed: int = 0):
        if n < 1:
            raise WMoEError("the training set is empty: check the recipe's train root and classes")
        self.n, self.batch_size, self.world, self.seed = n, batch_size, world, seed
        self.per_rank = math.ceil(n / world.size)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0):
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        total = self.per_rank * self.world.size
        while len(order) < total:
            order += order[: total - len(order)]
        mine = order[self.world.rank :: self.world.size]
        return iter(mine[self.start_batch * self.batch_size :])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start_batch * self.batch_size)


def shard(indices: list[int], world: World) -> list[int]:
    """Evaluation: process r takes every world-th item, no padding (duplicates would bias the metrics)."""
    return indices[world.rank :: world.size]


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The autocast dtype of a name of `PRECISIONS` on `device`; bf16 on a CPU is refused."""
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return resolve_dtype("bf16" if bf16_ok else "fp32")
    dtype = resolve_dtype(precision)
    if dtype == torch.bfloat16 and not bf16_ok:
        raise DeviceError(f"precision bf16 needs a CUDA GPU with bf16 support; this run is on {device}")
    return dtype
