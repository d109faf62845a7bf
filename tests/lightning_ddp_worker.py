"""A Lightning fit recorded by DynamicsCallback on ``devices`` CPU processes (DDP, gloo) with a global batch of 8.

Usage: ``python tests/lightning_ddp_worker.py RUN_DIR DEVICES``. Lightning starts the other processes by running
this script again; each sees 8 / DEVICES samples of each batch (a DistributedSampler without shuffling, in place
of Lightning's, which shuffles), so every device count trains on the same global batches.
"""

from __future__ import annotations

import sys

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from dynamics.integrations.lightning import DynamicsCallback


class MLP(pl.LightningModule):
    def __init__(self, data: TensorDataset, devices: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        self.data, self.devices = data, devices

    def train_dataloader(self) -> DataLoader:  # called once the process group exists
        sampler = DistributedSampler(self.data, shuffle=False) if self.devices > 1 else None
        return DataLoader(self.data, batch_size=8 // self.devices, sampler=sampler)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.net(x)
        return {"loss": F.cross_entropy(out, y), "output": out, "target": y}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def main(run_dir: str, devices: int) -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 8, generator=generator), torch.randint(0, 3, (64,), generator=generator))
    torch.manual_seed(0)
    module = MLP(data, devices)
    trainer = pl.Trainer(
        max_epochs=1,
        accumulate_grad_batches=2,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        callbacks=[DynamicsCallback(run_dir)],
    )
    trainer.fit(module)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
