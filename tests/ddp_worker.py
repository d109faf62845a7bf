"""A user's own training loop with the Recorder, in one process or under torchrun (DDP over gloo on the CPU).

    python tests/ddp_worker.py RUN_DIR [STEPS] [GLOBAL_BATCH]
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py RUN_DIR ...

Every process draws the same data; under DDP each rank trains on its shard of the global batch, so a run of
N processes sees what one process sees with the whole batch.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dynamics import Recorder


def main(run_dir: str, steps: int = 12, global_batch: int = 32) -> None:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    with torch.no_grad():  # units that never fire, and units that fire on a few samples (in one shard or another)
        model[0].bias[:16] = -100.0
        model[0].bias[16:24] = -2.5
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(steps, global_batch, 20, generator=generator) * 2
    labels = torch.randint(0, 10, (steps, global_batch), generator=generator)
    trained = nn.parallel.DistributedDataParallel(model) if distributed else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    shard = global_batch // world
    with Recorder(trained, optimizer, run_dir, flush_steps=5) as recorder:
        for step in range(steps):
            x = inputs[step, rank * shard : (rank + 1) * shard]
            y = labels[step, rank * shard : (rank + 1) * shard]
            optimizer.zero_grad()
            out = trained(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            optimizer.step()
            recorder.step(loss=loss, output=out, target=y)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], *(int(arg) for arg in sys.argv[2:]))
