"""Training under ``torchrun``: the process group, each rank's device, and its shard of every global batch.

``torchrun`` started with N processes per node on ``-m dynamics.collect`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` in each; each joins one process group (``nccl`` on CUDA, ``gloo`` on the CPU), draws the same
seeded batch order, and trains on its contiguous 1/N of each global batch with the model wrapped in
``DistributedDataParallel``, so the run follows the single-process run of the same ``batch_size``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from dynamics.errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch's sample indices (the batch size divides evenly)."""
        size = len(index) // self.world
        return index[self.rank * size : (self.rank + 1) * size]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in DistributedDataParallel when there are several processes, else itself."""
        if self.world == 1:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def join(device: torch.device, batch_size: int) -> tuple[Ranks, torch.device]:
    """Join the process group ``torchrun`` describes in the environment (one process: ``Ranks()``, ``device``)
    and this rank's device: ``cuda:LOCAL_RANK`` on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), device
    if batch_size % world:
        raise ConfigError(
            f"batch_size {batch_size} does not split evenly over {world} processes; choose a multiple of {world}",
            key="batch_size",
        )
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size()), device


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Whether this process reports and draws (rank 0 under ``torchrun``; a single process always)."""
    return int(os.environ.get("RANK", "0")) == 0
