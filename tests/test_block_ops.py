"""The vector block operations of the kernels against plain numpy, for every type combination."""
import numba
import numpy as np
import pytest

from cosi_imaging_plugin.engine.block_ops import BLOCK, axpy_blocks, dot_blocks


@numba.njit
def call_dot(row, block, values, b0, b1):
    return dot_blocks(row, block, values, b0, b1)


@numba.njit
def call_axpy(row, block, values, b0, b1, w):
    axpy_blocks(row, block, values, b0, b1, w)


def inputs(row_type, value_type, index_type, seed=0):
    rng = np.random.default_rng(seed)
    n_blocks = 12
    row = rng.normal(size=n_blocks * BLOCK).astype(row_type)
    block = rng.permutation(n_blocks).astype(index_type)
    values = rng.normal(size=(n_blocks, BLOCK)).astype(value_type)
    return row, block, values


def dense_row(block, values, b0, b1, size):
    """The stored blocks b0..b1-1 as one dense vector over the row's entries."""
    out = np.zeros(size)
    for b in range(b0, b1):
        out[block[b] * BLOCK:(block[b] + 1) * BLOCK] += values[b]
    return out


@pytest.mark.parametrize("row_type", [np.float32, np.float64])
@pytest.mark.parametrize("value_type", [np.float32, np.float64])
@pytest.mark.parametrize("index_type", [np.int32, np.int64])
def test_dot_blocks_equals_numpy(row_type, value_type, index_type):
    row, block, values = inputs(row_type, value_type, index_type)
    for b0, b1 in [(0, 12), (3, 7), (5, 5)]:
        expected = float(np.dot(row.astype(np.float64), dense_row(block, values, b0, b1, row.size)))
        # float64 accumulation of exact products: only the summation order differs
        assert call_dot(row, block, values, b0, b1) == pytest.approx(expected, rel=1e-13, abs=1e-13)


@pytest.mark.parametrize("row_type", [np.float32, np.float64])
@pytest.mark.parametrize("value_type", [np.float32, np.float64])
def test_axpy_blocks_equals_numpy(row_type, value_type):
    row, block, values = inputs(row_type, value_type, np.int32)
    expected = row.astype(np.float64) + 0.75 * dense_row(block, values, 2, 9, row.size)
    call_axpy(row, block, values, 2, 9, 0.75)
    tolerance = 1e-6 if np.float32 in (row_type, value_type) else 1e-14
    np.testing.assert_allclose(row, expected, rtol=tolerance, atol=tolerance)
    assert row.dtype == row_type


def test_non_contiguous_rows_are_refused():
    row, block, values = inputs(np.float64, np.float32, np.int32)
    with pytest.raises(numba.core.errors.TypingError):
        call_dot(row[::2], block, values, 0, 1)
