"""The recorder's host row blocks: rows across block boundaries, slices from any start, a dropped row."""

from __future__ import annotations

import numpy as np

from dynamics.rows import BLOCK_ROWS, HostRows


def test_host_rows_keep_every_row_across_blocks_and_slice_from_any_start() -> None:
    rows = HostRows(3)
    total = 2 * BLOCK_ROWS + 88
    for i in range(total + 1):
        address = rows.next_address()
        row = rows.last_row()
        row[:] = i
        assert address == row.ctypes.data  # the address native writers get is the row's own
    rows.drop_last()  # the last step was not recorded
    assert len(rows) == total
    for start in (0, 1, BLOCK_ROWS - 1, BLOCK_ROWS, BLOCK_ROWS + 1, 2 * BLOCK_ROWS, total - 1, total):
        matrix = rows.tensor(start).numpy()
        assert matrix.shape == (total - start, 3)
        np.testing.assert_array_equal(matrix[:, 0], np.arange(start, total))
    rows.drop_last()
    rows.next_address()
    rows.last_row()[:] = -1  # a dropped row is handed out again
    assert rows.tensor(total - 1).numpy()[0, 0] == -1
    rows.clear()
    assert len(rows) == 0 and rows.tensor().shape == (0, 3)
