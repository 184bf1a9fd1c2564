"""The data augmentation step: every count of every non-empty bin given to its origin.

Given a sky image ``x`` and background norms ``b``, the counts ``d_i`` of a bin are a
multinomial draw over the contributions to its expectation
``eps_i = sum_{s,k} M[s, k] R[k, c_i] + sum_k b_k B_k,i``. Where the response factorises
through a CCM (``M[s, nu*n_ei + e] = sum_j C[s, j, nu] dOmega x[j, e]``), the draw is made in
two exact stages: bin -> (response entry or background) with weights ``M[s, k] R[k, c]``,
then the counts of each (row, NuLambda, Ei) entry -> sky pixels with weights
``C[s, j, nu] x[j, e]``. A multinomial of a multinomial's cell is the multinomial of the
finer cells, so the two stages draw exactly the one-stage allocation.

Each multinomial is drawn by the inverse CDF at sorted uniforms made from exponential
spacings (``u_m = (E_1 + ... + E_m) / (E_1 + ... + E_{d+1})``), whose exponentials are drawn
in numpy from the caller's generator: a run is reproducible whatever the number of threads.
The walk needs the sum of the weights first: that is the expectation ``eps_i`` itself, which
the caller may already hold (the sweep's joint move of the totals computes it), else one
forward product of the engine's kernels gives it. The first stage then walks the response
as that forward product does, tile by tile over the source entries (:mod:`..engine.kernel_layout`):
the cells of a bin are visited tile after tile, each tile summed as one vector operation
and walked entry by entry only where one of the bin's sorted targets falls in it. The inverse-CDF
walk is exact in any fixed order of the cells, so the tile-major order changes nothing in law.
"""
import numba
import numpy as np

from ..distributed import ShardedEngine
from ..engine.block_ops import BLOCK, GROUP, dot_blocks_1, dot_blocks_4
from ..engine.kernel_layout import TILE_WIDTH, column_chunks, tiled_offsets
from ..engine.kernels import forward_at_bins
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
def allocate_bins(tile_ptr, local_block, values, active_cols, chunks, data_ptr, data_row, counts, offsets,
                  spacings, expectation, tiled_rows, bkg_weights, out_source, out_bkg, loglike, failed):
    """Stage one: the counts of every non-empty bin split over response entries and backgrounds.

    Parameters
    ----------
    tile_ptr, local_block, values : ndarray
        Tile-major stored blocks of the response (:class:`~..engine.kernel_layout.TiledBlocks`).
    active_cols, chunks : ndarray of int64
        Columns with non-empty bins; boundaries of the columns of each task.
    data_ptr, data_row, counts : ndarray
        The non-empty bins by column (see ``SparseData``).
    offsets : ndarray of int64
        First spacing of each bin: bin ``q`` uses ``spacings[offsets[q] : offsets[q] + d_q + 1]``.
    spacings : ndarray of float64
        Standard exponentials.
    expectation : ndarray of float64, shape (nnz,)
        ``eps_i``: the sum of the bin's weights (sky and backgrounds).
    tiled_rows : ndarray of float64, shape (n_tiles, n_rows, TILE_WIDTH)
        Source rows of the image laid out tile by tile.
    bkg_weights : ndarray, shape (n_bkg, nnz)
        Normalized background templates at the bins.
    out_source : ndarray of int32, shape (n_tasks, n_tiles, n_rows, TILE_WIDTH)
        Counts given to each (row, internal source entry), tile by tile, one partial array per task.
    out_bkg : ndarray of float64, shape (n_tasks, n_bkg)
    loglike : ndarray of float64, shape (n_tasks,)
        ``sum d_i ln eps_i`` of each task's bins.
    failed : ndarray of int64, shape (n_tasks,)
        A bin with counts and zero expectation, or -1.
    """
    n_bkg = bkg_weights.shape[0]
    n_tiles = tile_ptr.shape[0]
    for h in numba.prange(chunks.shape[0] - 1):
        acc = out_source[h]
        first = data_ptr[active_cols[chunks[h]]] if chunks[h] < chunks[h + 1] else 0
        last_bin = data_ptr[active_cols[chunks[h + 1] - 1] + 1] if chunks[h] < chunks[h + 1] else 0
        n = last_bin - first
        # the state of every bin's walk, carried from tile to tile
        cum = np.zeros(n)
        partial = np.empty(n)
        scale = np.empty(n)
        drawn = np.zeros(n, dtype=np.int64)
        last = np.full(n, -1, dtype=np.int64)  # the last background with weight, as -2 - k
        last_tile = np.full(n, -1, dtype=np.int64)  # the last tile with weight: its cells come after the backgrounds
        tile_sum = np.zeros(n)
        active = np.empty(n, dtype=np.int64)
        active_rows = np.empty(n, dtype=np.int32)
        ll = 0.0
        for i in range(n):
            q = first + i
            d = int(counts[q])
            total = expectation[q]
            if not total > 0.0:
                failed[h] = q
                drawn[i] = d
                continue
            ll += counts[q] * np.log(total)
            o = offsets[q]
            scale[i], partial[i] = _draw_start(spacings, o, d, total)
            m = 0
            c_ = 0.0
            p = partial[i]
            for k in range(n_bkg):
                w = bkg_weights[k, q]
                if w > 0.0:
                    nk, c_, m, p = _draw_cell(w, c_, m, d, p, scale[i], spacings, o)
                    out_bkg[h, k] += nk
                    last[i] = -2 - k
            cum[i], drawn[i], partial[i] = c_, m, p
        loglike[h] = ll
        for t in range(n_tiles):
            rows = tiled_rows[t]
            blocks = tile_ptr[t]
            tile_acc = acc[t]
            for a in range(chunks[h], chunks[h + 1]):
                c = active_cols[a]
                b0 = blocks[c]
                b1 = blocks[c + 1]
                if b0 == b1:
                    continue
                # the tile's sum for every bin of the column still drawing, four bins per vector operation
                n_active = 0
                for q in range(data_ptr[c], data_ptr[c + 1]):
                    i = q - first
                    if drawn[i] < counts[q]:
                        active[n_active] = i
                        active_rows[n_active] = data_row[q]
                        n_active += 1
                j = 0
                while j < n_active:
                    tile_sum[j] = 0.0
                    j += 1
                j = 0
                while j + GROUP <= n_active:
                    dot_blocks_4(rows, active_rows, j, local_block, values, b0, b1, tile_sum)
                    j += GROUP
                while j < n_active:
                    dot_blocks_1(rows, active_rows, j, local_block, values, b0, b1, tile_sum)
                    j += 1
                for j in range(n_active):
                    i = active[j]
                    q = first + i
                    d = int(counts[q])
                    s_ = tile_sum[j]
                    if not s_ > 0.0:
                        continue
                    if cum[i] + s_ <= partial[i] * scale[i]:
                        # no target falls in this tile: none of its cells gets a count
                        cum[i] += s_
                        last_tile[i] = t
                        continue
                    o = offsets[q]
                    s = data_row[q]
                    r = rows[s]
                    out_row = tile_acc[s]
                    c_, m, p, sc = cum[i], drawn[i], partial[i], scale[i]
                    for b in range(b0, b1):
                        base = local_block[b] * BLOCK
                        block_sum = 0.0
                        for u in range(BLOCK):
                            block_sum += np.float64(values[b, u]) * r[base + u]
                        if c_ + block_sum <= p * sc:
                            c_ += block_sum  # no target in this block either
                            continue
                        for u in range(BLOCK):
                            w = np.float64(values[b, u]) * r[base + u]
                            if w > 0.0:
                                nk, c_, m, p = _draw_cell(w, c_, m, d, p, sc, spacings, o)
                                if nk:
                                    out_row[base + u] += nk
                        if m >= d:
                            break
                    cum[i], drawn[i], partial[i] = c_, m, p
                    last_tile[i] = t
        # rounding may leave the largest targets past the summed weights: they belong to the last cell
        for a in range(chunks[h], chunks[h + 1]):
            c = active_cols[a]
            for q in range(data_ptr[c], data_ptr[c + 1]):
                i = q - first
                left = int(counts[q]) - drawn[i]
                if left <= 0:
                    continue
                s = data_row[q]
                t = last_tile[i]
                if t >= 0:  # the last cell with weight: the last entry with weight of that tile
                    r = tiled_rows[t, s]
                    entry = -1
                    for b in range(tile_ptr[t, c], tile_ptr[t, c + 1]):
                        base = local_block[b] * BLOCK
                        for u in range(BLOCK):
                            if np.float64(values[b, u]) * r[base + u] > 0.0:
                                entry = base + u
                    acc[t, s, entry] += left
                elif last[i] < -1:
                    out_bkg[h, -2 - last[i]] += left


@numba.njit(parallel=True, cache=True, nogil=True)
def forward_per_ei(tile_ptr, local_block, values, active_cols, chunks, data_ptr, data_row, tiled_rows, ei_of, out):
    """Expected counts at the non-empty bins of every Ei bin's part of the rows, in one pass over the response:
    ``out[e, q] = sum_{k of Ei bin e} M[row_q, k] R[k, c_q]``; ``ei_of[t, u]``: the Ei bin of entry ``u`` of
    tile ``t``. The arguments are otherwise those of the engine's ``forward_at_bins``."""
    n_tiles = tile_ptr.shape[0]
    for h in numba.prange(chunks.shape[0] - 1):
        for t in range(n_tiles):
            rows = tiled_rows[t]
            blocks = tile_ptr[t]
            ei = ei_of[t]
            for a in range(chunks[h], chunks[h + 1]):
                c = active_cols[a]
                for q in range(data_ptr[c], data_ptr[c + 1]):
                    r = rows[data_row[q]]
                    for b in range(blocks[c], blocks[c + 1]):
                        base = local_block[b] * BLOCK
                        for u in range(BLOCK):
                            out[ei[base + u], q] += np.float64(values[b, u]) * r[base + u]


@numba.njit(parallel=True, cache=True, nogil=True)
def gather_source_counts(parts, entry_offsets, row_width, out, needs):
    """The tasks' partial counts summed, per (row, source index) in the original numbering.

    ``parts`` (n_tasks, flat tile-major arrays), entry ``k`` of row ``s`` at
    ``entry_offsets[k] + s * row_width``; ``out`` (n_rows, n_source); ``needs[s]``: the
    spacings stage two draws for row ``s`` (``n + 1`` for every entry with ``n > 0`` counts).
    """
    n_tasks = parts.shape[0]
    for s in numba.prange(out.shape[0]):
        need = 0
        base = s * row_width
        for k in range(out.shape[1]):
            n = 0
            for h in range(n_tasks):
                n += parts[h, entry_offsets[k] + base]
            out[s, k] = n
            if n > 0:
                need += n + 1
        needs[s] = need


@numba.njit(parallel=True, cache=True, nogil=True)
def allocate_to_sky(indptr, sky_pixel, weight, image, source_counts, row_start, spacings, row_chunks, out):
    """Stage two: the counts of each (row, NuLambda, Ei) entry split over the sky pixels through the CCM.

    Parameters
    ----------
    indptr, sky_pixel, weight : ndarray
        The CCM in CSR form, row ``s * n_source_pix + nu`` (:class:`~..engine.sky_mapping.CCMMapping`).
    image : ndarray, shape (n_pix, n_ei)
    source_counts : ndarray, shape (n_rows, n_source)
        Counts of stage one (original numbering, ``k = nu * n_ei + e``).
    row_start : ndarray of int64, shape (n_rows,)
        First spacing of each row; its entries with counts take ``n + 1`` each, in order.
    spacings : ndarray of float64
    row_chunks : ndarray of int64
        Boundaries of the rows of each task.
    out : ndarray of float64, shape (n_tasks, n_pix, n_ei)
    """
    n_ei = image.shape[1]
    n_source_pix = source_counts.shape[1] // n_ei
    for h in numba.prange(row_chunks.shape[0] - 1):
        sky = out[h]
        for s in range(row_chunks[h], row_chunks[h + 1]):
            o = row_start[s]
            for nu in range(n_source_pix):
                row = s * n_source_pix + nu
                for e in range(n_ei):
                    d = int(source_counts[s, nu * n_ei + e])
                    if d == 0:
                        continue
                    total = 0.0
                    for q in range(indptr[row], indptr[row + 1]):
                        total += weight[q] * image[sky_pixel[q], e]
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
                    o += d + 1


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
        If the counts are not integers (the augmentation draws whole counts), or the engine is
        sharded over a Dask cluster (the allocation walks the response where it is held).
    """

    def __init__(self, engine, n_tasks=None):
        if isinstance(engine, ShardedEngine):
            raise CosiInputError("the Bayesian deconvolution (LIRA) runs on the single-process engine: its "
                                 "allocation walks every response entry in this process; build the dataset "
                                 "without a Dask client or scheduler")
        engine._require_data()
        self.engine = engine
        data = engine.data
        fractional = data.counts != np.round(data.counts)
        if np.any(fractional):
            raise CosiInputError("data: counts must be whole numbers for the Bayesian deconvolution (first "
                                 f"non-integer at {engine.describe_bin(int(np.argmax(fractional)))})")
        self.n_tasks = int(n_tasks or 2 * numba.get_num_threads())
        self._chunks = column_chunks(data, engine.response.col_ptr, self.n_tasks)
        self._offsets = np.concatenate([[0], np.cumsum(data.counts + 1)[:-1]]).astype(np.int64)
        self._n_spacings = int(data.counts.sum() + data.nnz)
        self._templates = np.array([engine.background_template_at_bins(n) for n in engine.background_names],
                                   dtype=np.float64).reshape(len(engine.background_names), data.nnz)
        n_rows = engine.n_rows
        self._row_chunks = np.linspace(0, n_rows, min(self.n_tasks, n_rows) + 1).round().astype(np.int64)
        self._entry_offsets = tiled_offsets(engine.response.inverse_order, n_rows)
        self._ei_of = None
        self._ccm = isinstance(engine.mapping, CCMMapping)
        if self._ccm:
            ccm = engine.mapping.matrix()
            self._csr = (ccm.indptr.astype(np.int64), ccm.indices.astype(np.int64), ccm.data.astype(np.float64))

    def tiled_rows(self, image):
        """Source rows of an image (float64), tile by tile as the engine's kernels read them."""
        engine = self.engine
        tiles = engine.response.tiled_blocks()
        out = np.zeros((tiles.n_tiles, engine.n_rows, TILE_WIDTH))
        return engine.mapping.forward_tiled(np.ascontiguousarray(image, dtype=np.float64),
                                            engine.response.inverse_order, out)

    def sky_at_bins(self, tiled_rows):
        """Expected sky counts at the non-empty bins from tiled source rows (the engine's forward kernel)."""
        engine = self.engine
        tiles = engine.response.tiled_blocks()
        data = engine.data
        out = np.zeros(data.nnz)
        forward_at_bins(tiles.tile_ptr, tiles.local_block, tiles.values, data.active_cols, self._chunks,
                        data.data_ptr, data.row, tiled_rows, out)
        return out

    def ei_of_entries(self):
        """The Ei bin of every tiled source entry, (n_tiles, TILE_WIDTH) (0 on the padding)."""
        if self._ei_of is None:
            response = self.engine.response
            n_ei = int(self.engine.model_axes.nbins[1])
            n_tiles = response.tiled_blocks().n_tiles
            ei_of = np.zeros(n_tiles * TILE_WIDTH, dtype=np.int64)
            ei_of[:response.n_source] = response.order % n_ei
            self._ei_of = ei_of.reshape(n_tiles, TILE_WIDTH)
        return self._ei_of

    def sky_at_bins_per_ei(self, tiled_rows):
        """Expected sky counts at the non-empty bins of every Ei bin, (n_ei, nnz), in one pass."""
        engine = self.engine
        n_ei = int(engine.model_axes.nbins[1])
        if n_ei == 1:
            return self.sky_at_bins(tiled_rows)[None]
        tiles = engine.response.tiled_blocks()
        data = engine.data
        out = np.zeros((n_ei, data.nnz))
        forward_per_ei(tiles.tile_ptr, tiles.local_block, tiles.values, data.active_cols, self._chunks,
                       data.data_ptr, data.row, tiled_rows, self.ei_of_entries(), out)
        return out

    def draw(self, image, norms, rng, sky_at_bins=None, tiled_rows=None):
        """One allocation of the counts.

        Parameters
        ----------
        image : ndarray, shape (n_pix, n_ei)
            Sky image (ph cm-2 s-1 sr-1).
        norms : ndarray, shape (n_bkg,)
            Background normalizations, in the order of ``engine.background_names``.
        rng : numpy.random.Generator
        sky_at_bins : ndarray, shape (nnz,), optional
            The image's expected counts at the non-empty bins, if the caller has them (float64, as the
            engine's forward product with float64 rows gives them); else computed here.
        tiled_rows : ndarray, shape (n_tiles, n_rows, TILE_WIDTH), optional
            The image's source rows as :meth:`tiled_rows` gives them, if the caller has them.

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
        data = engine.data
        image = np.ascontiguousarray(image, dtype=np.float64)
        rows = self.tiled_rows(image) if tiled_rows is None else tiled_rows
        if sky_at_bins is None:
            sky_at_bins = self.sky_at_bins(rows)
        bkg_weights = np.ascontiguousarray(self._templates * np.asarray(norms, dtype=np.float64)[:, None])
        expectation = sky_at_bins + bkg_weights.sum(axis=0)
        tiles = engine.response.tiled_blocks()
        n_tasks = self._chunks.size - 1
        out_source = np.zeros((n_tasks,) + rows.shape, dtype=np.int32)
        out_bkg = np.zeros((n_tasks, bkg_weights.shape[0]))
        loglike = np.zeros(n_tasks)
        failed = np.full(n_tasks, -1, dtype=np.int64)
        spacings = rng.standard_exponential(self._n_spacings)
        allocate_bins(tiles.tile_ptr, tiles.local_block, tiles.values, data.active_cols, self._chunks,
                      data.data_ptr, data.row, data.counts, self._offsets, spacings, expectation, rows,
                      bkg_weights, out_source, out_bkg, loglike, failed)
        if np.any(failed >= 0):
            q = int(failed[failed >= 0][0])
            raise CosiInputError(f"zero expected counts at a bin with {data.counts[q]:g} counts "
                                 f"({engine.describe_bin(q)}): the image and backgrounds cannot produce the data")
        data_term = float(loglike.sum())  # the tasks are fixed at construction: the same sum in every process
        n_source = engine.response.n_source
        source = np.empty((engine.n_rows, n_source), dtype=np.int64)
        needs = np.empty(engine.n_rows, dtype=np.int64)
        gather_source_counts(out_source.reshape(n_tasks, -1), self._entry_offsets, TILE_WIDTH, source, needs)
        del out_source
        if self._ccm:
            row_start = np.concatenate([[0], np.cumsum(needs)[:-1]]).astype(np.int64)
            spacings = rng.standard_exponential(int(needs.sum()))
            out = np.zeros((self._row_chunks.size - 1,) + image.shape)
            allocate_to_sky(*self._csr, image, source, row_start, spacings, self._row_chunks, out)
            sky = out.sum(axis=0)
        else:
            sky = source[0].reshape(-1, image.shape[1]).astype(np.float64)
        return sky, out_bkg.sum(axis=0), data_term
