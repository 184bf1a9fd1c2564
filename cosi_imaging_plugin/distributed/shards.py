"""Shards of the response engine: what a worker holds and the work it does on it.

The engine's data space is cut into contiguous ranges of CDS columns (raveled
Em, Phi, PsiChi). A shard is a :class:`~cosi_imaging_plugin.engine.ResponseEngine`
whose response keeps only its columns (:meth:`ColumnResponse.column_slice`, or
:meth:`ColumnResponse.from_file` with ``columns``) and whose data are the
non-empty bins of those columns. The non-empty bins are sorted by column, so the
bins of consecutive shards, one after the other, are the bins of the whole
dataset in the engine's own order.

Every function here runs on a worker. A shard is built from its :class:`ShardSpec`
alone (a file path, or a slice already in memory), so a lost shard is rebuilt
from its spec wherever the scheduler puts it.
"""
import copy
import math
from dataclasses import dataclass

import numba
import numpy as np
import sparse
from histpy import Histogram

from ..engine import ColumnResponse, Evaluation, ResponseEngine
from ..engine.block_ops import BLOCK
from ..engine.column_response import _row_keep_mask, source_order
from ..engine.kernel_layout import TILE_BLOCKS
from ..errors import CosiInputError
from ..io.response import FullDetectorResponse


@dataclass(frozen=True)
class ShardSpec:
    """Everything a worker needs to build one shard.

    Attributes
    ----------
    index : int
        Position of the shard (its columns come after those of shard ``index - 1``).
    columns : (int, int)
        CDS columns ``lo <= c < hi``.
    response : str or ColumnResponse
        Path of a FullDetectorResponse, read lazily by the worker, or the shard's
        columns already compressed (:meth:`ColumnResponse.column_slice`).
    mapping : CCMMapping or PixelMapping
        Sky image -> source rows.
    model_axes : histpy.Axes
    rtol : float
        Truncation tolerance when compressing a file.
    dtype : str
        Storage type of the response values and of the kernels' rows.
    """

    index: int
    columns: tuple
    response: object
    mapping: object
    model_axes: object
    rtol: float
    dtype: str


class SourceRowsMapping:
    """A shard's sky mapping when the CCM stays with the client: source rows in, source rows out.

    The client folds the image into source rows [n_rows, n_source] once and sends them;
    the shard's transpose products stay in the row space (:meth:`adjoint_tiled` returns
    the kernel's tile-major rows themselves), the client adds them over the shards and
    applies the CCM's transpose once. A shard then holds its response columns and bins,
    not the CCM.

    Parameters
    ----------
    mapping : CCMMapping or PixelMapping
        The client's mapping (only its shape is kept).
    """

    def __init__(self, mapping):
        self.n_rows = int(mapping.n_rows)
        self.n_model_pix = int(mapping.n_model_pix)
        self.n_source_pix = int(mapping.n_source_pix)

    def _not_here(self, *args, **kwargs):
        raise CosiInputError("this shard's sky mapping stays with the client: it takes source rows, not images")

    forward = forward_tiled = _not_here

    def adjoint_tiled(self, tiled, position):
        """The tile-major rows, copied out of the kernel's buffer (which the next product overwrites)."""
        return tiled.copy()

    def exposure(self, effective_area):
        """Unknown here (NaN): exposures and totals are computed by the client, which holds the CCM."""
        return np.full((self.n_model_pix, np.shape(effective_area)[1]), np.nan)


def engine_nbytes(engine):
    """Bytes a shard holds: the response's blocks (both copies once built) and the non-empty bins."""
    response = engine.response
    out = response.nbytes + (response._tiled.nbytes if getattr(response, "_tiled", None) is not None else 0)
    if engine.data is not None:
        data = engine.data
        out += sum(a.nbytes for a in (data.counts, data.row, data.column, data.flat_index, data.data_ptr))
    return int(out)


try:  # Dask weighs shards by their size: its scheduler then never moves a task, and so a shard, to save time
    from dask.sizeof import sizeof as _sizeof

    _sizeof.register(ResponseEngine)(engine_nbytes)
except ImportError:  # the optional extra is not installed: shards are only kept on disk
    pass


def use_worker_threads():
    """Run the kernels on as many threads as this worker has (numba's count is per calling thread)."""
    try:
        from distributed import get_worker
        n_threads = get_worker().state.nthreads
    except (ImportError, ValueError):  # not on a worker: keep the process' setting
        return
    numba.set_num_threads(max(1, min(n_threads, numba.config.NUMBA_NUM_THREADS)))


def build_shard(spec):
    """The shard's engine, without data: its response columns, the sky mapping and the tile-major blocks."""
    use_worker_threads()
    lo, hi = spec.columns
    if isinstance(spec.response, ColumnResponse):
        response = spec.response
    else:
        response = ColumnResponse.from_file(spec.response, rtol=spec.rtol, dtype=spec.dtype, progress=False,
                                            columns=(lo, hi))
    engine = ResponseEngine(response, spec.mapping, model_axes=spec.model_axes, dtype=spec.dtype)
    engine.shard_columns = (int(lo), int(hi))  # the dense fold returns only these
    response.tiled_blocks()  # built with the shard, so its memory is there from the start
    return engine


def with_data(engine, flat_index, counts, data_axes, backgrounds=None):
    """A copy of a shard's engine holding the non-empty bins ``flat_index`` (row * n_columns + column).

    `backgrounds` maps each template's name to its values at these bins (the client's
    :meth:`ResponseEngine.background_template_at_bins` slice): the shard evaluates whole
    expectations, and totals over all bins stay with the client.
    """
    use_worker_threads()
    shape = tuple(int(n) for n in data_axes.nbins)
    coords = np.unravel_index(np.asarray(flat_index, dtype=np.int64), shape)
    hist = Histogram(data_axes, contents=sparse.COO(np.array(coords), np.asarray(counts, np.float64), shape=shape))
    new = copy.copy(engine)
    new._row_buffers = {}
    new.set_data(hist, {})
    new.background_names = list(backgrounds or {})
    new._bkg_at_bins = {name: np.asarray(values, dtype=np.float64) for name, values in (backgrounds or {}).items()}
    return new


def evaluate(engine, image, norms, rows=None):
    """(expected counts at the shard's non-empty bins, the shard's share ``sum_i d_i ln eps_i`` of the log-likelihood).

    The totals over all bins and the constant are the client's. Raises the engine's error naming the bin
    where an expectation is not positive.
    """
    use_worker_threads()
    at_bins = engine.expectation_at_bins(image, norms, rows)
    return at_bins, engine.log_likelihood_from(at_bins, 0.0, 0.0)


def evaluate_with_products(engine, image, norms, rows=None):
    """:func:`evaluate` followed at once by :func:`ratio_products`, in one task:
    (expectations, partial sum, products).

    One task per shard and iteration: the worker goes on to the products without a round
    trip to the client, and nothing waits behind its running task for an idle worker to
    take (Dask's work stealing may move a queued task, and the shard it needs, hundreds
    of MB, to the worker that finished first).
    """
    evaluated = evaluate(engine, image, norms, rows)
    return evaluated + (ratio_products(engine, evaluated),)


def products_of(engine, evaluated):
    """The ratio products of an :func:`evaluate_with_products` result (what travels back; the rest stays)."""
    return evaluated[2]


def log_sum(engine, evaluated):
    """The number of an :func:`evaluate` result (what travels back; its array stays).

    Taking the shard as well keeps the task where the shard lives: the scheduler never
    moves a shard, so it never moves the expectations to another worker for this.
    """
    return evaluated[1]


def ratio_products(engine, evaluated):
    """The shard's partial transpose and background products of ``d_i / eps_i`` (`evaluated` from :func:`evaluate`)."""
    use_worker_threads()
    return engine.ratio_products(Evaluation(np.nan, np.nan, evaluated[0]))


def sky_folds(engine, images, rows):
    """The shard's float64 folds of a stack of images (or source rows) at its non-empty bins, (k, nnz_shard)."""
    use_worker_threads()
    return engine.sky_folds_at_bins(images, rows)


def keep(engine, values):
    """The shard's part of arrays at the bins, kept where the shard lives (taking the shard places it there)."""
    return np.asarray(values, dtype=np.float64)


def log_sum_of_terms(engine, terms, norms):
    """The shard's share ``sum_i d_i ln eps_i`` of the log-likelihood of kept terms plus the backgrounds."""
    use_worker_threads()
    return engine.log_likelihood_of_terms(terms, norms, 0.0, 0.0)


def add(a, b):
    """The sum of two partial results: arrays, or (array, {name: number}) pairs, added in the order given."""
    if isinstance(a, tuple):
        return a[0] + b[0], {name: a[1][name] + b[1][name] for name in a[1]}
    return a + b


def sky_at_bins(engine, image, rows, dtype):
    """Expected sky counts at the shard's non-empty bins."""
    use_worker_threads()
    return engine.sky_expectation_at_bins(image, rows=rows, dtype=dtype)


def transpose(engine, weights):
    """The shard's partial transpose product ``sum_i R_ij w_i`` over its bins, [n_pix, n_ei] (tile-major source
    rows with a :class:`SourceRowsMapping`)."""
    use_worker_threads()
    return engine.transpose_product(weights)


def fold_columns(engine, rows):
    """Dense ``rows @ R`` over the shard's own columns, [n_rows, hi - lo]."""
    use_worker_threads()
    lo, hi = engine.shard_columns
    return engine.response.fold(rows)[:, lo:hi]


def area_over(engine, columns):
    """The shard's response summed over the masked columns, [n_pix, n_ei]."""
    return engine.response.area_over(columns)


def shard_facts(engine):
    """Sizes of a shard: stored bytes (both copies of the blocks), its sky mapping's bytes, blocks, non-empty
    bins and the EM step's work (stored blocks summed over the non-empty bins)."""
    response = engine.response
    return {"response_bytes": int(response.nbytes + response.tiled_blocks().nbytes),
            "mapping_bytes": int(getattr(engine.mapping, "nbytes", 0)),
            "blocks": int(response.n_blocks),
            "nnz": 0 if engine.data is None else int(engine.data.nnz),
            # the EM step's inner loop: every stored block of each non-empty bin's column
            "work": 0 if engine.data is None else int(np.diff(response.col_ptr)[engine.data.column].sum())}


#: Copies of every stored block in a shard: column-major (dense folds) and tile-major (sparse-data kernels).
COPIES = 2


def shard_bytes(n_columns, n_padded, itemsize, n_rows=0):
    """(bytes per stored block, fixed bytes) of a shard at work.

    Per block: its values and block number, twice. Fixed: the column pointers of both
    layouts and the kernels' task tables, which span every column whatever the
    shard's width, and the kernels' model-row buffers (forward and transpose, float64
    at most) for `n_rows` ScAtt/Time rows.
    """
    n_tiles = -(-(n_padded // BLOCK) // TILE_BLOCKS)
    pointers = 8 * (n_columns + 1) * (1 + 2 * n_tiles)
    return COPIES * (BLOCK * itemsize + 4), pointers + 2 * 8 * n_rows * n_padded


def aligned_ranges(n_pix, n_ei, n_ranges):
    """Cut the source pixels (internal order) into about `n_ranges` ranges whose entries fill whole blocks."""
    align = BLOCK // math.gcd(BLOCK, n_ei)  # pixels per whole number of blocks
    n_units = -(-n_pix // align)
    edges = np.unique(np.linspace(0, n_units, max(1, min(n_ranges, n_units)) + 1).astype(int) * align)
    edges[-1] = n_pix
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def blocks_per_column(path, rtol, start, stop):
    """Blocks the compressed response stores in each CDS column, for the source pixels ``start:stop``.

    The pixels are counted in the internal (NESTED) order and the range fills whole
    blocks (:func:`aligned_ranges`), so the counts of disjoint ranges add up: workers
    size a response together without any of them holding it.
    """
    with FullDetectorResponse.open(path) as response:
        axes = response.axes
        n_ei = axes[1].nbins
        n_columns = int(np.prod(response.shape[2:]))
        n_blocks = -(-axes[0].nbins * n_ei // BLOCK)
        pixels = source_order(axes[0], n_ei).reshape(-1, n_ei)[:, 0] // n_ei
        out = np.zeros(n_columns, dtype=np.int64)
        step = BLOCK * max(1, int(16e6 // (8 * BLOCK * int(np.prod(response.shape[1:])))))
        for lo in range(start, stop, step):
            hi = min(lo + step, stop)
            rows = np.asarray(response.read_pixels(pixels[lo:hi])).reshape(-1, n_columns)
            r, c = np.nonzero(_row_keep_mask(rows, rtol))
            keys = np.unique(c.astype(np.int64) * n_blocks + (lo * n_ei + r) // BLOCK)
            out += np.bincount(keys // n_blocks, minlength=n_columns)
    return out


def plan_columns(weights, n_shards):
    """Cut the columns into `n_shards` contiguous ranges of about equal summed weight.

    Parameters
    ----------
    weights : ndarray, shape (n_columns,)
        Cost of each column (stored entries or blocks: the shard's memory and work).
    n_shards : int

    Returns
    -------
    list of (int, int)
        The ranges ``(lo, hi)``, in order, covering every column.
    """
    weights = np.asarray(weights, dtype=np.float64)
    n_columns = weights.size
    if not 1 <= n_shards <= n_columns:
        raise CosiInputError(f"cannot cut {n_columns} CDS columns into {n_shards} shards")
    cumulative = np.cumsum(weights)
    targets = cumulative[-1] * np.arange(1, n_shards) / n_shards
    cuts = np.searchsorted(cumulative, targets, side="left") + 1
    # every shard at least one column, cuts strictly increasing
    cuts = np.maximum(cuts, np.arange(1, n_shards))
    cuts = np.minimum(cuts, n_columns - np.arange(n_shards - 1, 0, -1))
    cuts = np.maximum.accumulate(cuts)
    for i in range(1, cuts.size):
        cuts[i] = max(cuts[i], cuts[i - 1] + 1)
    edges = [0, *(int(c) for c in cuts), n_columns]
    return list(zip(edges[:-1], edges[1:]))
