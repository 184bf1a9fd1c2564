"""Compiled kernels of the sparse-data path.

The response is stored column by column over the Compton data space (CDS), in
aligned blocks of ``BLOCK`` consecutive source entries (internal numbering, see
:mod:`.column_response`): the blocks of CDS bin ``c`` are
``col_ptr[c]:col_ptr[c+1]``, block ``b`` covers internal entries
``block[b] * BLOCK + 0 .. BLOCK - 1`` with values ``values[b, :]``.

The non-empty data bins are grouped by CDS column, and within a column by
ScAtt/Time row: the bins of column ``c`` are ``data_ptr[c]:data_ptr[c+1]``,
``data_row[q]`` is the row of bin ``q``.

The forward and transpose kernels walk the response tile by tile over the
source entries (:mod:`.kernel_layout`): the part of the model rows a tile needs
stays in cache, every stored block is read once per pass as part of one stream,
and each task writes only its own output (no locks, no private copies). Each
block is one vector operation (:mod:`.block_ops`).
"""
import numba
import numpy as np

from .block_ops import BLOCK, axpy_blocks, dot_blocks


@numba.njit(parallel=True, cache=True, nogil=True)
def forward_at_bins(tile_ptr, local_block, values, active_cols, chunks, data_ptr, data_row, tiled_rows, out):
    """Expected counts at the non-empty bins: ``out[q] = sum_k M[row_q, k] R[k, c_q]``.

    Parameters
    ----------
    tile_ptr, local_block, values : ndarray
        Tile-major stored blocks (:class:`.kernel_layout.TiledBlocks`).
    active_cols : ndarray of int64
        CDS columns holding at least one non-empty bin.
    chunks : ndarray of int64
        Boundaries of the column chunks in ``active_cols``, one task each.
    data_ptr : ndarray of int64, shape (n_columns + 1,)
    data_row : ndarray of int32
    tiled_rows : ndarray, shape (n_tiles, n_rows, tile_width)
        Source rows laid out tile by tile (:func:`.kernel_layout.tiled_rows`).
    out : ndarray of float64, shape (n_data,)
        Zeroed by the caller; the tiles' partial sums are added in place.
    """
    n_tiles = tile_ptr.shape[0]
    # one task per column chunk: it alone writes the bins of its columns
    for h in numba.prange(chunks.shape[0] - 1):
        for t in range(n_tiles):
            rows = tiled_rows[t]
            blocks = tile_ptr[t]
            for a in range(chunks[h], chunks[h + 1]):
                c = active_cols[a]
                b0 = blocks[c]
                b1 = blocks[c + 1]
                if b0 == b1:
                    continue
                for q in range(data_ptr[c], data_ptr[c + 1]):
                    # float64 accumulation: the likelihood is a smooth function of the model for minimizers
                    out[q] += dot_blocks(rows[data_row[q]], local_block, values, b0, b1)


@numba.njit(parallel=True, cache=True, nogil=True)
def adjoint_at_bins(tile_ptr, local_block, values, active_cols, data_ptr, data_row, weights, tiled_out):
    """Transpose product at the non-empty bins: ``out[row, k] += sum_q R[k, c_q] w_q [row_q == row]``.

    ``tiled_out`` (n_tiles, n_rows, tile_width) is laid out like the forward
    kernel's rows and must be zeroed by the caller; each task owns whole tiles.
    """
    for t in numba.prange(tile_ptr.shape[0]):
        rows = tiled_out[t]
        blocks = tile_ptr[t]
        for a in range(active_cols.shape[0]):
            c = active_cols[a]
            b0 = blocks[c]
            b1 = blocks[c + 1]
            if b0 == b1:
                continue
            for q in range(data_ptr[c], data_ptr[c + 1]):
                if weights[q] != 0.0:
                    axpy_blocks(rows[data_row[q]], local_block, values, b0, b1, weights[q])


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


@numba.njit(parallel=True, cache=True, nogil=True)
def scatter_tiled(rows, order, out):
    """``out[t, r, u] = rows[r, order[t * width + u]]``, zero past the last source entry.

    ``rows`` is (n_rows, n_source) in the original numbering, ``order`` maps
    internal to original indices, ``out`` is (n_tiles, n_rows, width).
    """
    n_tiles, n_rows, width = out.shape
    n_source = order.shape[0]
    for t in numba.prange(n_tiles):
        for r in range(n_rows):
            for u in range(width):
                i = t * width + u
                out[t, r, u] = rows[r, order[i]] if i < n_source else 0.0


@numba.njit(parallel=True, cache=True, nogil=True)
def gather_tiled(tiled, inverse_order, out):
    """Inverse of :func:`scatter_tiled`: ``out[r, k] = tiled[i // width, r, i % width]`` with ``i = inverse_order[k]``."""
    n_tiles, n_rows, width = tiled.shape
    for r in numba.prange(n_rows):
        for k in range(inverse_order.shape[0]):
            i = inverse_order[k]
            out[r, k] = tiled[i // width, r, i % width]


@numba.njit(parallel=True, cache=True, nogil=True)
def csr_forward_tiled(indptr, indices, data, image, n_source_pix, position, out):
    """Sky image -> tile-major source rows through a CCM in CSR form, in one pass.

    CSR row ``s * n_source_pix + nu`` holds ``C[s, j, nu] dOmega_j`` over sky pixels
    ``j``; the row value for Ei bin ``e`` goes to source index ``k = nu * n_ei + e``,
    stored at internal position ``p = position[k]`` as ``out[p // width, s, p % width]``.
    Entries of ``out`` past the last source index are left as they are (zero).
    """
    n_rows = out.shape[1]
    width = out.shape[2]
    n_ei = image.shape[1]
    for s in numba.prange(n_rows):
        for nu in range(n_source_pix):
            row = s * n_source_pix + nu
            for e in range(n_ei):
                acc = 0.0
                for q in range(indptr[row], indptr[row + 1]):
                    acc += data[q] * image[indices[q], e]
                p = position[nu * n_ei + e]
                out[p // width, s, p % width] = acc
