"""Compiled kernels of the sparse-data path.

The response is stored column by column over the Compton data space (CDS), in
aligned blocks of ``BLOCK`` consecutive source entries (internal numbering, see
:mod:`.column_response`): the blocks of CDS bin ``c`` are
``col_ptr[c]:col_ptr[c+1]``, block ``b`` covers internal entries
``block[b] * BLOCK + 0 .. BLOCK - 1`` with values ``values[b, :]``.

The non-empty data bins are grouped by CDS column, and within a column by
ScAtt/Time row: the bins of column ``c`` are ``data_ptr[c]:data_ptr[c+1]``,
``data_row[q]`` is the row of bin ``q``.

The rows are split into tiles, one task per tile. A task walks the active
columns and handles only the bins of its rows, so its part of the model rows
``M[row, :]`` stays in cache, and in the transpose product each task writes
only its own rows (no locks, no private copies). Each block is one vector
operation (:mod:`.block_ops`).
"""
import numba
import numpy as np

from .block_ops import BLOCK, axpy_blocks, dot_blocks


@numba.njit(parallel=True, cache=True, nogil=True)
def forward_at_bins(col_ptr, block, values, active_cols, data_ptr, data_row, model_rows, row_tiles, out):
    """Expected counts at the non-empty bins: ``out[q] = sum_k M[row_q, k] R[k, c_q]``.

    Parameters
    ----------
    col_ptr, block, values : ndarray
        Block-compressed response (module docstring).
    active_cols : ndarray of int64
        CDS columns holding at least one non-empty bin.
    data_ptr : ndarray of int64, shape (n_columns + 1,)
    data_row : ndarray of int32
    model_rows : ndarray, shape (n_rows, n_padded)
        Source rows in the internal numbering.
    row_tiles : ndarray of int64
        Tile boundaries over the rows (``row_tiles[0] = 0``, last = n_rows).
    out : ndarray of float64, shape (n_data,)
        Filled in place.
    """
    for t in numba.prange(row_tiles.shape[0] - 1):
        lo = row_tiles[t]
        hi = row_tiles[t + 1]
        for a in range(active_cols.shape[0]):
            c = active_cols[a]
            b0 = col_ptr[c]
            b1 = col_ptr[c + 1]
            for q in range(data_ptr[c], data_ptr[c + 1]):
                s = data_row[q]
                if s < lo or s >= hi:
                    continue
                # float64 accumulation: the likelihood is a smooth function of the model for minimizers
                out[q] = dot_blocks(model_rows[s], block, values, b0, b1)


@numba.njit(parallel=True, cache=True, nogil=True)
def adjoint_at_bins(col_ptr, block, values, active_cols, data_ptr, data_row, weights, row_tiles, out):
    """Transpose product at the non-empty bins: ``out[row, k] += sum_q R[k, c_q] w_q [row_q == row]``.

    ``out`` (n_rows, n_padded), internal numbering, must be zeroed by the caller.
    """
    for t in numba.prange(row_tiles.shape[0] - 1):
        lo = row_tiles[t]
        hi = row_tiles[t + 1]
        for a in range(active_cols.shape[0]):
            c = active_cols[a]
            b0 = col_ptr[c]
            b1 = col_ptr[c + 1]
            for q in range(data_ptr[c], data_ptr[c + 1]):
                s = data_row[q]
                if s < lo or s >= hi:
                    continue
                if weights[q] != 0.0:
                    axpy_blocks(out[s], block, values, b0, b1, weights[q])


@numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def fold_all_columns(col_ptr, block, values, rows_t, out):
    """Dense product ``out[c, r] = sum_k R[k, c] rows_t[k, r]`` for every CDS column c.

    ``rows_t`` is (n_padded, n_rows) in the internal numbering: the inner loop over
    rows is contiguous.
    """
    n_rows = rows_t.shape[1]
    for c in numba.prange(col_ptr.shape[0] - 1):
        acc = np.zeros(n_rows)
        for b in range(col_ptr[c], col_ptr[c + 1]):
            base = block[b] * BLOCK
            for u in range(BLOCK):
                v = np.float64(values[b, u])
                if v != 0.0:
                    source = rows_t[base + u]
                    for r in range(n_rows):
                        acc[r] += v * source[r]
        out[c, :] = acc
