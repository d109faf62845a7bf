"""Where the recorder keeps the rows of the steps since the last flush: one flat vector per step, on the device.

Each row is one new tensor assembled from the probes' values in one concatenating copy (it never aliases a
probe's or the user's tensors, since it is kept until the next flush); a flush stacks them and moves them to
the host in one transfer, on the CPU and on accelerators alike.
"""

from __future__ import annotations

import torch


class Rows:
    """The recorded rows since the last flush, as device tensors of one dtype, one per step."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self._rows: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, values: list[torch.Tensor]) -> None:
        """Add the row of one step: ``values`` flattened and concatenated in order, cast to ``dtype``."""
        row = torch.cat([value.reshape(-1) for value in values]) if values else torch.zeros(0, dtype=self.dtype)
        self._rows.append(row.to(self.dtype))

    def tensor(self, start: int = 0) -> torch.Tensor:
        """Rows ``start:`` as one (steps, width) tensor on the device."""
        return torch.stack(self._rows[start:])

    def clear(self) -> None:
        self._rows = []
