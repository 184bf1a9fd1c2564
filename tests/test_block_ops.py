"""The vector block operations of the kernels against plain numpy, for every type combination."""
import numba
import numpy as np
import pytest

from cosi_imaging_plugin.engine.block_ops import (
    BLOCK,
    GROUP,
    axpy_blocks_1,
    axpy_blocks_4,
    dot_blocks_1,
    dot_blocks_4,
)

N_ROWS, N_BLOCKS = 9, 12


@numba.njit
def call_dot(rows, row_index, block, values, b0, b1, out):
    # the kernels' pattern: groups of GROUP bins, then the rest one by one
    q = 0
    while q + GROUP <= row_index.size:
        dot_blocks_4(rows, row_index, q, block, values, b0, b1, out)
        q += GROUP
    while q < row_index.size:
        dot_blocks_1(rows, row_index, q, block, values, b0, b1, out)
        q += 1


@numba.njit
def call_axpy(rows, row_index, block, values, b0, b1, weights):
    q = 0
    while q + GROUP <= row_index.size:
        axpy_blocks_4(rows, row_index, q, block, values, b0, b1, weights)
        q += GROUP
    while q < row_index.size:
        axpy_blocks_1(rows, row_index, q, block, values, b0, b1, weights)
        q += 1


def inputs(row_type, value_type, index_type, seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(N_ROWS, N_BLOCKS * BLOCK)).astype(row_type)
    # 7 bins: one group of 4 and three single ones, on distinct rows in random order
    row_index = rng.permutation(N_ROWS)[:7].astype(np.int32)
    block = rng.permutation(N_BLOCKS).astype(index_type)
    values = rng.normal(size=(N_BLOCKS, BLOCK)).astype(value_type)
    return rows, row_index, block, values


def dense_column(block, values, b0, b1):
    """The stored blocks b0..b1-1 as one dense vector over the row entries."""
    out = np.zeros(N_BLOCKS * BLOCK)
    for b in range(b0, b1):
        out[block[b] * BLOCK:(block[b] + 1) * BLOCK] += values[b]
    return out


@pytest.mark.parametrize("row_type", [np.float32, np.float64])
@pytest.mark.parametrize("value_type", [np.float32, np.float64])
@pytest.mark.parametrize("index_type", [np.int32, np.int64])
def test_dot_blocks_equals_numpy(row_type, value_type, index_type):
    rows, row_index, block, values = inputs(row_type, value_type, index_type)
    for b0, b1 in [(0, 12), (3, 7), (5, 5)]:
        start = np.linspace(-1.0, 1.0, row_index.size)
        expected = start + rows[row_index].astype(np.float64) @ dense_column(block, values, b0, b1)
        out = start.copy()
        call_dot(rows, row_index, block, values, b0, b1, out)
        # float64 accumulation of exact products: only the summation order differs
        np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("row_type", [np.float32, np.float64])
@pytest.mark.parametrize("value_type", [np.float32, np.float64])
def test_axpy_blocks_equals_numpy(row_type, value_type):
    rows, row_index, block, values = inputs(row_type, value_type, np.int32)
    weights = np.linspace(0.5, 2.0, row_index.size)
    expected = rows.astype(np.float64)
    expected[row_index] += weights[:, None] * dense_column(block, values, 2, 9)[None, :]
    call_axpy(rows, row_index, block, values, 2, 9, weights)
    tolerance = 1e-6 if np.float32 in (row_type, value_type) else 1e-14
    np.testing.assert_allclose(rows, expected, rtol=tolerance, atol=tolerance)
    assert rows.dtype == row_type


def test_non_contiguous_rows_are_refused():
    rows, row_index, block, values = inputs(np.float64, np.float32, np.int32)
    with pytest.raises(numba.core.errors.TypingError):
        call_dot(rows[:, ::2], row_index, block, values, 0, 1, np.zeros(row_index.size))


def test_unsigned_indices_are_refused():
    # they would be sign-extended: a uint16 row index above 32767 would point before the rows
    rows, row_index, block, values = inputs(np.float64, np.float32, np.int32)
    with pytest.raises(numba.core.errors.TypingError):
        call_dot(rows, row_index.astype(np.uint16), block, values, 0, 1, np.zeros(row_index.size))
