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
block is one vector operation for a group of ``GROUP`` bins of its column
(:mod:`.block_ops`).
"""
import numba
import numpy as np

from .block_ops import (
    BLOCK,
    GROUP,
    axpy_blocks_1,
    axpy_blocks_4,
    dot_blocks_1,
    dot_blocks_4,
)


@numba.njit(parallel=True, cache=True, nogil=True)
def forward_at_bins(tile_ptr, local_block, values, active_cols, chunks, data_ptr, data_row, tiled_rows, out):
    """Expected counts at the non-empty bins: ``out[q] += sum_k M[row_q, k] R[k, c_q]``.

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
        The tiles' partial sums are added to it in place (zeros, or a background).
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
                # float64 accumulation: the likelihood is a smooth function of the model for minimizers
                q = data_ptr[c]
                end = data_ptr[c + 1]
                while q + GROUP <= end:
                    dot_blocks_4(rows, data_row, q, local_block, values, b0, b1, out)
                    q += GROUP
                while q < end:
                    dot_blocks_1(rows, data_row, q, local_block, values, b0, b1, out)
                    q += 1


@numba.njit(parallel=True, cache=True, nogil=True)
def adjoint_at_bins(tile_groups, tile_ptr, local_block, values, active_cols, data_ptr, data_row, weights,
                    tiled_out):
    """Transpose product at the non-empty bins: ``out[row, k] += sum_q R[k, c_q] w_q [row_q == row]``.

    ``tiled_out`` (n_tiles, n_rows, tile_width) is laid out like the forward
    kernel's rows and must be zeroed by the caller. ``tile_groups`` (n_tasks,
    n_max) lists the tiles of each task, -1 past the last
    (:func:`.kernel_layout.tile_groups`): each task owns whole tiles.
    """
    for h in numba.prange(tile_groups.shape[0]):
        for i in range(tile_groups.shape[1]):
            t = tile_groups[h, i]
            if t < 0:
                continue
            rows = tiled_out[t]
            blocks = tile_ptr[t]
            for a in range(active_cols.shape[0]):
                c = active_cols[a]
                b0 = blocks[c]
                b1 = blocks[c + 1]
                if b0 == b1:
                    continue
                q = data_ptr[c]
                end = data_ptr[c + 1]
                while q + GROUP <= end:
                    axpy_blocks_4(rows, data_row, q, local_block, values, b0, b1, weights)
                    q += GROUP
                while q < end:
                    axpy_blocks_1(rows, data_row, q, local_block, values, b0, b1, weights)
                    q += 1


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
def ccm_forward(indptr, indices, data, image, offsets, row_stride, out):
    """Sky image -> source rows through a CCM in CSR form: ``rows[s, k] = sum_j C[s, nu, j] x[j, e]``.

    CSR row ``s * n_source_pix + nu`` holds ``C[s, j, nu] dOmega_j`` over sky
    pixels ``j``. Row ``s``, source index ``k = nu * n_ei + e`` is written at
    ``out[offsets[k] + s * row_stride]`` (``out`` is flat), so one kernel fills the
    plain layout (``offsets[k] = k``, ``row_stride = n_source``) and the kernels'
    tile-major layout (:func:`.kernel_layout.tiled_offsets`). Sums in float64.
    """
    n_ei = image.shape[1]
    n_source_pix = offsets.shape[0] // n_ei
    for s in numba.prange((indptr.shape[0] - 1) // n_source_pix):
        first = s * n_source_pix
        base = s * row_stride
        # one Ei bin (a line) is the common case: a loop without the Ei dimension is 1.5 times faster
        if n_ei == 1:
            for nu in range(n_source_pix):
                acc = 0.0
                for q in range(indptr[first + nu], indptr[first + nu + 1]):
                    acc += data[q] * image[indices[q], 0]
                out[offsets[nu] + base] = acc
        else:
            for nu in range(n_source_pix):
                for e in range(n_ei):
                    acc = 0.0
                    for q in range(indptr[first + nu], indptr[first + nu + 1]):
                        acc += data[q] * image[indices[q], e]
                    out[offsets[nu * n_ei + e] + base] = acc


@numba.njit(parallel=True, cache=True, nogil=True)
def ccm_adjoint(indptr, indices, data, rows, offsets, row_stride, row_chunks, out):
    """Source rows -> sky through the transposed CCM: ``out[j, e] = sum_{s, nu} C[s, nu, j] rows[s, k]``.

    The arguments are those of :func:`ccm_forward`, with ``rows`` flat in either
    layout and ``out`` (n_model_pix, n_ei) float64. The rows are read in order and
    their products scattered into one partial sky per chunk of rows
    (``row_chunks``: boundaries), summed in chunk order at the end: the result does
    not depend on the number of threads.
    """
    n_ei = out.shape[1]
    n_source_pix = offsets.shape[0] // n_ei
    n_chunks = row_chunks.shape[0] - 1
    partial = np.zeros((n_chunks, out.shape[0], n_ei))
    for h in numba.prange(n_chunks):
        sky = partial[h]
        for s in range(row_chunks[h], row_chunks[h + 1]):
            first = s * n_source_pix
            base = s * row_stride
            if n_ei == 1:
                for nu in range(n_source_pix):
                    value = np.float64(rows[offsets[nu] + base])
                    for q in range(indptr[first + nu], indptr[first + nu + 1]):
                        sky[indices[q], 0] += data[q] * value
            else:
                for nu in range(n_source_pix):
                    for e in range(n_ei):
                        value = np.float64(rows[offsets[nu * n_ei + e] + base])
                        for q in range(indptr[first + nu], indptr[first + nu + 1]):
                            sky[indices[q], e] += data[q] * value
    out[:] = 0.0
    for h in range(n_chunks):
        out += partial[h]
