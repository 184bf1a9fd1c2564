"""The data augmentation step: every count of every non-empty bin given to its origin.

Given a sky image ``x`` and background norms ``b``, the counts ``d_i`` of a bin are a
multinomial draw over the contributions to its expectation
``eps_i = sum_{s,k} M[s, k] R[k, c_i] + sum_k b_k B_k,i``. Where the response factorises
through a CCM (``M[s, nu*n_ei + e] = sum_j C[s, j, nu] dOmega x[j, e]``), the draw is made in
two exact stages: bin -> (response entry or background) with weights ``M[s, k] R[k, c]``,
then the counts of each (row, NuLambda, Ei) entry -> sky pixels with weights
``C[s, j, nu] x[j, e]``. A multinomial of a multinomial's cell is the multinomial of the
finer cells, so the two stages draw exactly the one-stage allocation.

The kernels walk the stored response blocks column by column, as the engine's forward
product does, and draw each multinomial by the inverse CDF at sorted uniforms made from
exponential spacings (``u_m = (E_1 + ... + E_m) / (E_1 + ... + E_{d+1})``), whose
exponentials are drawn in numpy from the caller's generator: a run is reproducible
whatever the number of threads. Both stages draw through the same two helpers
(:func:`_draw_start`, :func:`_draw_cell`).
"""
import numba
import numpy as np

from ..engine.block_ops import BLOCK
from ..engine.sky_mapping import CCMMapping
from ..errors import CosiInputError


@numba.njit(cache=True, inline="always")
def _draw_start(spacings, o, d, total):
    """Scale of the sorted targets of a multinomial of `d` counts over weights summing to `total`, and the
    first partial sum: target ``m`` is ``(E_1 + ... + E_m) * scale``."""
    norm = 0.0
    for m in range(d + 1):
        norm += spacings[o + m]
    return total / norm, spacings[o]


@numba.njit(cache=True, inline="always")
def _draw_cell(w, cum, m, d, partial, scale, spacings, o):
    """One cell of the inverse-CDF walk: the weight `w` added to the running sum `cum`; returns the counts
    of the cell (the sorted targets below the new sum) and the walk's new (cum, m, partial)."""
    cum += w
    n = 0
    while m < d and partial * scale < cum:
        n += 1
        m += 1
        partial += spacings[o + m]
    return n, cum, m, partial



@numba.njit(parallel=True, cache=True, nogil=True)
def allocate_bins(col_ptr, block, values, active_cols, chunks, data_ptr, data_row, counts, offsets, spacings,
                  rows, bkg_weights, out_source, out_bkg, loglike, failed):
    """Stage one: the counts of every non-empty bin split over response entries and backgrounds.

    Parameters
    ----------
    col_ptr, block, values : ndarray
        Column-major stored blocks of the response (internal numbering).
    active_cols, chunks : ndarray of int64
        Columns with non-empty bins; boundaries of the columns of each task.
    data_ptr, data_row, counts : ndarray
        The non-empty bins by column (see ``SparseData``).
    offsets : ndarray of int64
        First spacing of each bin: bin ``q`` uses ``spacings[offsets[q] : offsets[q] + d_q + 1]``.
    spacings : ndarray of float64
        Standard exponentials.
    rows : ndarray, shape (n_rows, n_padded)
        Source rows of the image in the internal numbering.
    bkg_weights : ndarray, shape (n_bkg, nnz)
        Normalized background templates at the bins.
    out_source : ndarray of float64, shape (n_tasks, n_rows, n_padded)
        Counts given to each (row, internal source entry), one partial array per task.
    out_bkg : ndarray of float64, shape (n_tasks, n_bkg)
    loglike : ndarray of float64, shape (n_tasks,)
        ``sum d_i ln eps_i`` of each task's bins.
    failed : ndarray of int64, shape (n_tasks,)
        A bin with counts and zero expectation, or -1.
    """
    n_bkg = bkg_weights.shape[0]
    for h in numba.prange(chunks.shape[0] - 1):
        acc = out_source[h]
        ll = 0.0
        for a in range(chunks[h], chunks[h + 1]):
            c = active_cols[a]
            for q in range(data_ptr[c], data_ptr[c + 1]):
                s = data_row[q]
                d = int(counts[q])
                r = rows[s]
                total = 0.0
                for k in range(n_bkg):
                    total += bkg_weights[k, q]
                for b in range(col_ptr[c], col_ptr[c + 1]):
                    base = block[b] * BLOCK
                    for u in range(BLOCK):
                        total += np.float64(values[b, u]) * r[base + u]
                if not total > 0.0:
                    failed[h] = q
                    continue
                ll += counts[q] * np.log(total)
                o = offsets[q]
                scale, partial = _draw_start(spacings, o, d, total)
                m = 0
                cum = 0.0
                last = -1
                for k in range(n_bkg):
                    w = bkg_weights[k, q]
                    if w > 0.0:
                        n, cum, m, partial = _draw_cell(w, cum, m, d, partial, scale, spacings, o)
                        out_bkg[h, k] += n
                        last = -2 - k
                if m < d:
                    for b in range(col_ptr[c], col_ptr[c + 1]):
                        base = block[b] * BLOCK
                        for u in range(BLOCK):
                            w = np.float64(values[b, u]) * r[base + u]
                            if w > 0.0:
                                n, cum, m, partial = _draw_cell(w, cum, m, d, partial, scale, spacings, o)
                                if n:
                                    acc[s, base + u] += n
                                last = base + u
                        if m >= d:
                            break
                # rounding may leave the largest targets past the summed weights: they belong to the last cell
                if m < d:
                    if last >= 0:
                        acc[s, last] += d - m
                    else:
                        out_bkg[h, -2 - last] += d - m
        loglike[h] = ll


@numba.njit(parallel=True, cache=True, nogil=True)
def allocate_to_sky(indptr, sky_pixel, weight, image, position, source_counts, offsets, spacings, row_chunks, out):
    """Stage two: the counts of each (row, NuLambda, Ei) entry split over the sky pixels through the CCM.

    Parameters
    ----------
    indptr, sky_pixel, weight : ndarray
        The CCM in CSR form, row ``s * n_source_pix + nu`` (:class:`~..engine.sky_mapping.CCMMapping`).
    image : ndarray, shape (n_pix, n_ei)
    position : ndarray of int64
        Internal position of each original source index ``nu * n_ei + e``.
    source_counts : ndarray, shape (n_rows, n_padded)
        Counts of stage one (internal numbering).
    offsets : ndarray of int64, shape (n_rows, n_source)
        First spacing of each entry (original numbering); entry with ``n`` counts uses ``n + 1``.
    spacings : ndarray of float64
    row_chunks : ndarray of int64
        Boundaries of the rows of each task.
    out : ndarray of float64, shape (n_tasks, n_pix, n_ei)
    """
    n_ei = image.shape[1]
    n_source_pix = position.shape[0] // n_ei
    for h in numba.prange(row_chunks.shape[0] - 1):
        sky = out[h]
        for s in range(row_chunks[h], row_chunks[h + 1]):
            for nu in range(n_source_pix):
                row = s * n_source_pix + nu
                for e in range(n_ei):
                    k = nu * n_ei + e
                    d = int(source_counts[s, position[k]])
                    if d == 0:
                        continue
                    total = 0.0
                    for q in range(indptr[row], indptr[row + 1]):
                        total += weight[q] * image[sky_pixel[q], e]
                    o = offsets[s, k]
                    scale, partial = _draw_start(spacings, o, d, total)
                    m = 0
                    cum = 0.0
                    last = -1
                    for q in range(indptr[row], indptr[row + 1]):
                        w = weight[q] * image[sky_pixel[q], e]
                        if w > 0.0:
                            n, cum, m, partial = _draw_cell(w, cum, m, d, partial, scale, spacings, o)
                            if n:
                                sky[sky_pixel[q], e] += n
                            last = sky_pixel[q]
                        if m >= d:
                            break
                    if m < d and last >= 0:
                        sky[last, e] += d - m


class Allocator:
    """Draws the allocation of a dataset's counts to sky pixels and backgrounds.

    Parameters
    ----------
    engine : ResponseEngine
        An engine with data (integer counts).
    n_tasks : int, optional
        Parallel tasks of the kernels (default: twice the thread count).

    Raises
    ------
    CosiInputError
        If the counts are not integers (the augmentation draws whole counts).
    """

    def __init__(self, engine, n_tasks=None):
        engine._require_data()
        self.engine = engine
        data = engine.data
        fractional = data.counts != np.round(data.counts)
        if np.any(fractional):
            raise CosiInputError("data: counts must be whole numbers for the Bayesian deconvolution (first "
                                 f"non-integer at {engine.describe_bin(int(np.argmax(fractional)))})")
        self.n_tasks = int(n_tasks or 2 * numba.get_num_threads())
        response = engine.response
        cols = data.active_cols
        work = np.diff(data.data_ptr)[cols] * np.maximum(np.diff(response.col_ptr)[cols], 1)
        before = np.concatenate([[0], np.cumsum(work)[:-1]])
        bounds = np.searchsorted(before, np.linspace(0, work.sum(), self.n_tasks + 1), side="left")
        bounds[0], bounds[-1] = 0, cols.size
        self._chunks = np.maximum.accumulate(bounds).astype(np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(data.counts + 1)[:-1]]).astype(np.int64)
        self._n_spacings = int(data.counts.sum() + data.nnz)
        self._templates = np.array([engine.background_template_at_bins(n) for n in engine.background_names],
                                   dtype=np.float64).reshape(len(engine.background_names), data.nnz)
        n_rows = engine.n_rows
        self._row_chunks = np.linspace(0, n_rows, min(self.n_tasks, n_rows) + 1).round().astype(np.int64)
        self._ccm = isinstance(engine.mapping, CCMMapping)
        if self._ccm:
            ccm = engine.mapping.matrix()
            self._csr = (ccm.indptr.astype(np.int64), ccm.indices.astype(np.int64), ccm.data.astype(np.float64))

    def draw(self, image, norms, rng):
        """One allocation of the counts.

        Parameters
        ----------
        image : ndarray, shape (n_pix, n_ei)
            Sky image (ph cm-2 s-1 sr-1).
        norms : ndarray, shape (n_bkg,)
            Background normalizations, in the order of ``engine.background_names``.
        rng : numpy.random.Generator

        Returns
        -------
        sky_counts : ndarray, shape (n_pix, n_ei)
            Counts given to each sky pixel and Ei bin.
        bkg_counts : ndarray, shape (n_bkg,)
            Counts given to each background.
        data_term : float
            ``sum_i d_i ln eps_i`` at the non-empty bins for the given image and norms.
        """
        engine = self.engine
        response = engine.response
        data = engine.data
        image = np.ascontiguousarray(image, dtype=np.float64)
        rows = response.internal_rows(engine.mapping.forward(image), dtype=np.float64)
        n_bkg = self._templates.shape[0]
        bkg_weights = np.ascontiguousarray(self._templates * np.asarray(norms, dtype=np.float64)[:, None])
        out_source = np.zeros((self.n_tasks,) + rows.shape)
        out_bkg = np.zeros((self.n_tasks, n_bkg))
        loglike = np.zeros(self.n_tasks)
        failed = np.full(self.n_tasks, -1, dtype=np.int64)
        spacings = rng.standard_exponential(self._n_spacings)
        allocate_bins(response.col_ptr, response.block, response.values, data.active_cols, self._chunks,
                      data.data_ptr, data.row, data.counts, self._offsets, spacings, rows, bkg_weights,
                      out_source, out_bkg, loglike, failed)
        if np.any(failed >= 0):
            q = int(failed[failed >= 0][0])
            raise CosiInputError(f"zero expected counts at a bin with {data.counts[q]:g} counts "
                                 f"({engine.describe_bin(q)}): the image and backgrounds cannot produce the data")
        source = out_source.sum(axis=0)
        n_ei = image.shape[1]
        if self._ccm:
            position = response.inverse_order
            per_entry = source[:, position]
            offsets = np.concatenate([[0], np.cumsum(per_entry + (per_entry > 0))[:-1]]).astype(np.int64)
            offsets = offsets.reshape(per_entry.shape)
            spacings = rng.standard_exponential(int(per_entry.sum() + np.count_nonzero(per_entry)))
            out = np.zeros((self._row_chunks.size - 1,) + image.shape)
            allocate_to_sky(*self._csr, image, position, source, offsets, spacings, self._row_chunks, out)
            sky = out.sum(axis=0)
        else:
            sky = source[0, response.inverse_order].reshape(-1, n_ei)
        return sky, out_bkg.sum(axis=0), float(loglike.sum())
