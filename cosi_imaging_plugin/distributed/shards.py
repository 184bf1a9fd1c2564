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
from dataclasses import dataclass

import numba
import numpy as np
import sparse
from histpy import Histogram

from ..engine import ColumnResponse, ResponseEngine
from ..engine.column_response import _row_keep_mask
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


def with_data(engine, flat_index, counts, data_axes):
    """A copy of a shard's engine holding the non-empty bins ``flat_index`` (row * n_columns + column)."""
    use_worker_threads()
    shape = tuple(int(n) for n in data_axes.nbins)
    coords = np.unravel_index(np.asarray(flat_index, dtype=np.int64), shape)
    hist = Histogram(data_axes, contents=sparse.COO(np.array(coords), np.asarray(counts, np.float64), shape=shape))
    new = copy.copy(engine)
    new._row_buffers = {}
    new.set_data(hist, {})
    return new


def sky_at_bins(engine, image, rows, dtype):
    """Expected sky counts at the shard's non-empty bins."""
    use_worker_threads()
    return engine.sky_expectation_at_bins(image, rows=rows, dtype=dtype)


def transpose(engine, weights):
    """The shard's partial transpose product ``sum_i R_ij w_i`` over its bins, [n_pix, n_ei]."""
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
    """Sizes of a shard: stored bytes (both copies of the blocks), blocks, non-empty bins."""
    response = engine.response
    return {"response_bytes": int(response.nbytes + response.tiled_blocks().nbytes),
            "blocks": int(response.n_blocks),
            "nnz": 0 if engine.data is None else int(engine.data.nnz)}


def entries_per_column(path, rtol, pixels):
    """Entries kept by the truncation in each CDS column, over the NuLambda pixels ``pixels`` (a slice).

    The counts of disjoint pixel ranges add up, so workers count a response
    together without any of them holding it.
    """
    with FullDetectorResponse.open(path) as response:
        n_columns = int(np.prod(response.shape[2:]))
        out = np.zeros(n_columns, dtype=np.int64)
        step = max(1, int(64e6 // (8 * int(np.prod(response.shape[1:])))))
        for start in range(pixels.start, pixels.stop, step):
            block = response.read_pixels(slice(start, min(start + step, pixels.stop)))
            rows = np.asarray(block).reshape(-1, n_columns)
            out += np.count_nonzero(_row_keep_mask(rows, rtol), axis=0)
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
