"""The TS map's sums on an engine sharded over a Dask cluster.

Each worker sums the test-source likelihood over the selected non-empty bins of
its own CDS columns, with its own stored blocks (:func:`.norm_kernels.norm_sums`);
the client adds the shards' sums in shard order. The arrays of a shard (its bins,
the null model there, the test mapping) are sent once and kept with the shard;
each Newton iteration sends only the trial norms and gets back the sums.
"""
import numba
import numpy as np

from ..distributed.shards import use_worker_threads
from .norm_kernels import chunk_bounds, norm_sums


def _shard_arrays(shard, bins, null, nu_of, e_of, fluxes, t_indptr, t_position, t_weight):
    """The arguments of :func:`norm_sums` for one shard (its bins indexed within the shard)."""
    use_worker_threads()
    data, response = shard.data, shard.response
    n_chunks = 8 * numba.get_num_threads()
    return (bins, chunk_bounds(bins.size, n_chunks), data.row.astype(np.int64), data.column.astype(np.int64),
            data.counts.astype(np.float64), null, response.col_ptr, response.block.astype(np.int64),
            response.values, response.block_size, nu_of, e_of, fluxes, t_indptr, t_position, t_weight)


def _shard_sums(arrays, n_nu, norms, with_log):
    use_worker_threads()
    n_chunks = arrays[1].size - 1
    sums = np.empty((n_chunks, norms.shape[0], 3, norms.shape[1]))
    ratio_min = np.empty((n_chunks, norms.shape[1]))
    norm_sums(*arrays, n_nu, norms, with_log, sums, ratio_min)
    return sums.sum(axis=0), ratio_min.min(axis=0)


class ShardedTerms:
    """What one sharded dataset contributes to every position's likelihood; ``sums`` as ``_Terms.sums``.

    Parameters
    ----------
    engine : ShardedEngine
    bins : ndarray of int64
        The selected non-empty bins (engine order indices), in the order they are summed.
    null : ndarray
        Null-model expectation at every non-empty bin.
    nu_of, e_of, fluxes
        Source pixel and Ei bin of each internal source entry; the test spectrum per Ei bin.
    mapping : scipy.sparse.csr_matrix
        The test mapping, rows ``s * n_nu + nu`` over positions.
    exposure : ndarray
        Expected counts of the test source per unit norm, per position.
    along_path : bool
    """

    def __init__(self, engine, bins, null, nu_of, e_of, fluxes, mapping, exposure, along_path):
        self.n_nu = engine.response.axes[0].nbins
        self.exposure = exposure
        self.along_path = along_path
        t = (mapping.indptr.astype(np.int64), mapping.indices.astype(np.int64), mapping.data.astype(np.float64))
        args = []
        for start, stop in engine.shard_bins:
            inside = bins[(bins >= start) & (bins < stop)] - start  # the summing order kept
            args.append((inside, np.ascontiguousarray(null[start:stop], dtype=np.float64), nu_of, e_of, fluxes, *t))
        self._arrays = engine.derive_shards(_shard_arrays, args)

    def sums(self, norms, with_log):
        """(score, information, log ratio) summed over the shards for trial norms [n_trials, n_pos], and min b/s."""
        parts = self._arrays.map(_shard_sums, [(self.n_nu, norms, with_log)] * len(self._arrays))
        total = parts[0][0].copy()
        low = parts[0][1].copy()
        for sums, ratio_min in parts[1:]:
            total += sums
            low = np.minimum(low, ratio_min)
        return total, low
