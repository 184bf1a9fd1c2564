"""Compiled kernels of the sparse-data path.

The response is stored column by column over the Compton data space (CDS): for
CDS bin ``c`` the stored source entries ``k`` (a NuLambda pixel and an Ei bin)
are ``col_idx[col_ptr[c]:col_ptr[c+1]]`` with values ``col_val[...]``. The
non-empty data bins are grouped by the same CDS column: the bins of column ``c``
are ``data_ptr[c]:data_ptr[c+1]`` and ``data_row[q]`` is their ScAtt/Time row.

Both kernels walk the active columns once, so each response column is read
once per call and reused for every data bin in that column, while the rows of
the source-space model ``M[row, k]`` stay in cache.
"""
import numba
import numpy as np


@numba.njit(parallel=True, cache=True, nogil=True)
def forward_at_bins(col_ptr, col_idx, col_val, active_cols, data_ptr, data_row, model_rows, out):
    """Expected counts at the non-empty bins: ``out[q] = sum_k M[row_q, k] R[k, c_q]``.

    Parameters
    ----------
    col_ptr, col_idx, col_val : ndarray
        Column-compressed response (see module docstring).
    active_cols : ndarray of int64
        CDS columns holding at least one non-empty data bin.
    data_ptr : ndarray of int64, shape (n_columns + 1,)
        Data bins of column ``c`` are ``data_ptr[c]:data_ptr[c+1]``.
    data_row : ndarray of int32
        ScAtt/Time row of each data bin.
    model_rows : ndarray, shape (n_rows, n_source)
        Source-space model rows ``M[row, k]``.
    out : ndarray of float64, shape (n_data,)
        Filled in place.
    """
    for a in numba.prange(active_cols.shape[0]):
        c = active_cols[a]
        p0 = col_ptr[c]
        p1 = col_ptr[c + 1]
        for q in range(data_ptr[c], data_ptr[c + 1]):
            row = model_rows[data_row[q]]
            acc = 0.0
            for p in range(p0, p1):
                acc += row[col_idx[p]] * col_val[p]
            out[q] = acc


@numba.njit(parallel=True, cache=True, nogil=True)
def adjoint_at_bins(col_ptr, col_idx, col_val, active_cols, data_ptr, data_row, weights, n_rows, n_source,
                    n_parts):
    """Transpose product at the non-empty bins: ``G[row, k] = sum_q R[k, c_q] w_q [row_q == row]``.

    The active columns are split into ``n_parts`` contiguous parts, each
    accumulating into its own copy of ``G`` (no write conflicts between threads);
    the copies are summed at the end.

    Returns
    -------
    ndarray of float64, shape (n_rows, n_source)
    """
    n_active = active_cols.shape[0]
    part = (n_active + n_parts - 1) // n_parts
    partial = np.zeros((n_parts, n_rows, n_source))
    for t in numba.prange(n_parts):
        g = partial[t]
        for a in range(t * part, min(n_active, (t + 1) * part)):
            c = active_cols[a]
            p0 = col_ptr[c]
            p1 = col_ptr[c + 1]
            for q in range(data_ptr[c], data_ptr[c + 1]):
                w = weights[q]
                if w == 0.0:
                    continue
                grow = g[data_row[q]]
                for p in range(p0, p1):
                    grow[col_idx[p]] += col_val[p] * w
    total = partial[0]
    for t in range(1, n_parts):
        total += partial[t]
    return total


@numba.njit(cache=True)
def scatter_columns(col_of_entry, n_columns):
    """Stable counting sort of entries by column.

    Entries given in ascending source index stay ascending within each column.

    Returns
    -------
    col_ptr : ndarray of int64, shape (n_columns + 1,)
    position : ndarray of int64
        Destination of each input entry in column-compressed storage.
    """
    counts = np.zeros(n_columns + 1, dtype=np.int64)
    for i in range(col_of_entry.shape[0]):
        counts[col_of_entry[i] + 1] += 1
    col_ptr = np.cumsum(counts)
    fill = col_ptr[:-1].copy()
    position = np.empty(col_of_entry.shape[0], dtype=np.int64)
    for i in range(col_of_entry.shape[0]):
        c = col_of_entry[i]
        position[i] = fill[c]
        fill[c] += 1
    return col_ptr, position
