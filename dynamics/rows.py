"""Where the recorder keeps the rows of the steps since the last flush: one flat float32 vector per step.

On the CPU rows live in preallocated numpy blocks, and probes that can (``Probe.measure_into``) write their
values straight into the row at its address: no tensor is made or copied per value, which is what small
operations cost most on a CPU. On other devices each row is one device tensor, assembled from the probes'
values in one flattening copy, so nothing reaches the host before the flush.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK_ROWS = 256
"""Rows per preallocated host block (a block is allocated when the previous one is full)."""


def flat_row(values: list[torch.Tensor]) -> torch.Tensor:
    """All values of a step as one new float32 vector on their device: a single flattening copy.

    The row never aliases a probe's or the user's tensors, since it is kept until the next flush.
    """
    if len(values) == 1:
        return values[0].reshape(-1).float().clone()
    row = torch._utils._flatten_dense_tensors(values)
    return row if row.dtype == torch.float32 else row.float()


class DeviceRows:
    """Rows as device tensors, one per step."""

    def __init__(self) -> None:
        self._rows: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, values: list[torch.Tensor]) -> None:
        self._rows.append(flat_row(values))

    def tensor(self, start: int = 0) -> torch.Tensor:
        """Rows ``start:`` as one (steps, width) tensor on the device."""
        return torch.stack(self._rows[start:])

    def clear(self) -> None:
        self._rows = []


class HostRows:
    """Rows in float32 numpy blocks of ``BLOCK_ROWS`` x ``width``; ``next_address`` hands out the next one."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._blocks: list[np.ndarray] = []
        self._address = 0
        """Address of the last block's first element."""
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def next_address(self) -> int:
        """Address of the next row (contents undefined until written), for native writers."""
        index = self._count % BLOCK_ROWS
        if index == 0:
            self._blocks.append(np.empty((BLOCK_ROWS, self.width), dtype=np.float32))
            self._address = self._blocks[-1].ctypes.data
        self._count += 1
        return self._address + index * self.width * 4

    def last_row(self) -> np.ndarray:
        """The row handed out last, as a numpy view (for values written from Python)."""
        return self._blocks[-1][(self._count - 1) % BLOCK_ROWS]

    def drop_last(self) -> None:
        """Give back the row handed out last (its step was not recorded)."""
        self._count -= 1
        if self._count % BLOCK_ROWS == 0:
            self._blocks.pop()
            self._address = self._blocks[-1].ctypes.data if self._blocks else 0

    def tensor(self, start: int = 0) -> torch.Tensor:
        """Rows ``start:`` as one (steps, width) CPU tensor."""
        if start >= self._count:
            return torch.empty((0, self.width))
        first = start // BLOCK_ROWS  # only the blocks that hold the rows asked for are copied
        offset = first * BLOCK_ROWS
        return torch.from_numpy(np.concatenate(self._blocks[first:])[start - offset:self._count - offset])

    def clear(self) -> None:
        self._blocks, self._count = [], 0
