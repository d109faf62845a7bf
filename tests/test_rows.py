"""The recorder's device rows: one flat copy per step in the row dtype, never aliasing the values given."""

from __future__ import annotations

import torch

from dynamics.rows import Rows


def test_rows_concatenate_values_in_order_cast_and_copy() -> None:
    rows = Rows(torch.float64)
    values = [torch.tensor(1.5, dtype=torch.float32), torch.arange(6.0).reshape(2, 3), torch.tensor([7.0, 8.0])]
    rows.append(values)
    values[1].add_(100.0)  # the caller's tensors change after the step: the row keeps what was measured
    rows.append(values)
    matrix = rows.tensor()
    assert matrix.dtype == torch.float64 and matrix.shape == (2, 9)
    torch.testing.assert_close(matrix[0], torch.tensor([1.5, 0, 1, 2, 3, 4, 5, 7, 8], dtype=torch.float64))
    torch.testing.assert_close(matrix[1, 1:7], torch.arange(100.0, 106.0, dtype=torch.float64))
    torch.testing.assert_close(rows.tensor(1), matrix[1:])
    rows.clear()
    assert len(rows) == 0
