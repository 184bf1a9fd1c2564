"""Compiled sums of the test-source likelihood at many positions at once, over the non-empty bins.

A test source of norm ``a`` at position ``p`` adds ``a s_qp`` expected counts to the null
model's ``b_q`` in data bin ``q`` (row ``s``, CDS column ``c``):

``s_qp = sum_(nu, e) F_e T[(s, nu), p] R[(nu, e), c]``

with ``F_e`` the test spectrum's flux in Ei bin ``e``, ``T`` the test mapping (the
dwell of the test position in each response pixel of each row, or a kernel image
through the CCM) and ``R`` the stored response column of ``c``. For every bin,
:func:`norm_sums` builds ``s_qp`` for all positions its column reaches (the response
column's source entries times the mapping's row ``(s, nu)``), then adds, for each
trial norm ``a[k, p]``, with ``mu = b_q + a s_qp`` and ``n_q`` counts:

- ``sum n s / mu`` (the score's data term),
- ``sum n s^2 / mu^2`` (the observed information),
- ``sum n log(mu / b)`` (the log-likelihood ratio's data term),

and ``min b / s`` (the smallest norm keeping every ``mu`` of a bin with counts
positive). Empty bins enter through the total expected counts only, which are
linear in ``a`` (computed outside). Bins run in parallel in chunks, each chunk with
its own sums over the positions, added up at the end.
"""
import numba
import numpy as np

#: Partial sums :func:`norm_sums` returns per trial norm.
SCORE, INFORMATION, LOG_RATIO = 0, 1, 2


@numba.njit(parallel=True, cache=True, nogil=True)
def norm_sums(bins, bin_chunks, row, column, counts, null, col_ptr, block, values, block_size, nu_of, e_of,
              spectrum, t_indptr, t_position, t_weight, n_nu, norms, with_log, sums, ratio_min):
    """Partial sums of the test-source likelihood (module docstring) for every chunk of bins.

    Parameters
    ----------
    bins : ndarray of int64
        The data bins to use (indices into `row`, `column`, `counts`, `null`), by column.
    bin_chunks : ndarray of int64, shape (n_chunks + 1,)
        Chunk ``i`` is ``bins[bin_chunks[i]:bin_chunks[i + 1]]``.
    row, column, counts, null : ndarray
        Row, CDS column, counts and null-model expectation of every non-empty bin.
    col_ptr, block, values, block_size : ndarray, ndarray, ndarray, int
        The stored response blocks (:class:`~cosi_imaging_plugin.engine.ColumnResponse`).
    nu_of, e_of : ndarray of int64
        Source pixel and Ei bin of each internal source entry.
    spectrum : ndarray, shape (n_ei,)
        Flux of the test spectrum in each Ei bin.
    t_indptr, t_position, t_weight : ndarray
        The test mapping as CSR rows ``s * n_nu + nu`` over positions.
    n_nu : int
    norms : ndarray, shape (n_trials, n_positions)
        Trial norms.
    with_log : bool
        Add the log-likelihood ratio too (its logarithms are most of a pass's arithmetic).
    sums : ndarray, shape (n_chunks, n_trials, 3, n_positions)
        Output, zeroed here: the sums of each chunk.
    ratio_min : ndarray, shape (n_chunks, n_positions)
        Output: the smallest ``b / s`` of each chunk (inf where a position sees no counts).
    """
    n_chunks = bin_chunks.size - 1
    n_trials, n_positions = norms.shape
    n_internal = nu_of.size
    for chunk in numba.prange(n_chunks):
        template = np.zeros(n_positions)
        touched = np.empty(n_positions, dtype=np.int64)
        out = sums[chunk]
        out[:] = 0.0
        low = ratio_min[chunk]
        low[:] = np.inf
        for i in range(bin_chunks[chunk], bin_chunks[chunk + 1]):
            q = bins[i]
            c = column[q]
            row_base = row[q] * n_nu
            n_touched = 0
            for b in range(col_ptr[c], col_ptr[c + 1]):
                first = block[b] * block_size
                for lane in range(block_size):
                    entry = first + lane
                    if entry >= n_internal:
                        break
                    value = values[b, lane] * spectrum[e_of[entry]]
                    if value == 0.0:
                        continue
                    t_row = row_base + nu_of[entry]
                    for ptr in range(t_indptr[t_row], t_indptr[t_row + 1]):
                        p = t_position[ptr]
                        if template[p] == 0.0:
                            touched[n_touched] = p
                            n_touched += 1
                        template[p] += value * t_weight[ptr]
            n_q, b_q = counts[q], null[q]
            for i_t in range(n_touched):
                p = touched[i_t]
                s_qp = template[p]
                template[p] = 0.0
                ratio = b_q / s_qp
                if ratio < low[p]:
                    low[p] = ratio
                for k in range(n_trials):
                    mu = b_q + norms[k, p] * s_qp
                    weight = n_q / mu
                    out[k, SCORE, p] += weight * s_qp
                    out[k, INFORMATION, p] += weight * s_qp * s_qp / mu
                    if with_log:
                        out[k, LOG_RATIO, p] += n_q * np.log1p(norms[k, p] * s_qp / b_q)


def chunk_bounds(n_bins, n_chunks):
    """Bounds of `n_chunks` near-equal chunks of `n_bins` bins."""
    n_chunks = max(1, min(int(n_chunks), max(int(n_bins), 1)))
    return np.linspace(0, n_bins, n_chunks + 1).round().astype(np.int64)
