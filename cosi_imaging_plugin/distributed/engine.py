"""The response engine sharded over the workers of a Dask cluster.

The cut: contiguous ranges of CDS columns (Em, Phi, PsiChi raveled), balanced by
the response entries they store. A column's expected counts need only that
column's stored blocks, so each worker holds about 1/N of the response and the
non-empty bins of its columns. (Blocks of ScAtt/Time rows would give every
worker the whole response, since all rows share it; measured-energy bins leave
nothing to cut in a one-bin line analysis.)

Per EM iteration (:meth:`ShardedEngine.evaluate`, :meth:`ShardedEngine.ratio_products`,
the calls RL makes on every engine):

- out to every worker: the sky image [n_pix, n_ei] (each applies the CCM itself)
  or, with ``mapping_on="client"``, its source rows, and the background norms;
- kept there: the expectations at its non-empty bins;
- back: its partial sum ``sum_i d_i ln eps_i``, then its partial sky and
  background products of ``d_i / eps_i``, added on the workers pairwise in a fixed
  tree beyond two shards (so results do not depend on which worker ran which shard).

The client adds the totals over all bins (exposure map, templates' totals) to the
likelihood. The engine's other calls (expectations at the bins, transpose products
of given weights) keep the interface of
:class:`~cosi_imaging_plugin.engine.ResponseEngine`, so datasets, RL, the 3ML plugin
and TS maps use it unchanged.

Shards are Dask futures computed from a :class:`~.shards.ShardSpec`. If a worker
is lost, the scheduler rebuilds its shards on another worker from their specs
(the files) and reruns the lost work; the result is the same.
"""
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from histpy import Axes

from ..engine import ColumnResponse, Evaluation, ResponseEngine
from ..engine.block_ops import BLOCK
from ..engine.sparse_data import flat_nonzero
from ..errors import CosiInputError
from ..io.response import FullDetectorResponse
from . import shards as ops
from .cluster import check_mapping_on, check_memory, check_versions, connect, memory_room, workers_of

logger = logging.getLogger(__name__)

class ShardedResponse:
    """What the client knows of a response held in shards: axes, numbering, effective area.

    The stored blocks stay on the workers; :meth:`fold` and :meth:`area_over` are
    computed there and assembled here.
    """

    def __init__(self, engine_shards, axes, unit, rtol, order, effective_area, nbytes):
        self._shards = engine_shards
        self.axes = axes
        self.unit = unit
        self.rtol = float(rtol)
        self.order = np.asarray(order, dtype=np.int64)
        self.inverse_order = np.argsort(self.order)
        self.n_source = axes[0].nbins * axes[1].nbins
        self.block_size = BLOCK
        self.n_padded = -(-self.n_source // BLOCK) * BLOCK
        self.cds_shape = tuple(int(a.nbins) for a in axes[2:])
        self.n_columns = int(np.prod(self.cds_shape))
        self.effective_area = effective_area
        self.nbytes = int(nbytes)

    def fold(self, rows):
        """Expected counts ``rows @ R`` in every CDS bin, [n_rows, n_columns] (columns gathered from the shards)."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.n_source:
            raise CosiInputError(f"source rows of shape {rows.shape}, expected (n, {self.n_source})")
        parts = self._shards.map(ops.fold_columns, [(rows,)] * len(self._shards))
        return np.concatenate(parts, axis=1)

    def area_over(self, columns=None):
        """The response summed over some CDS columns, [n_pix, n_ei] (the shards' sums reduced on the workers)."""
        return np.array(self._shards.reduce(ops.area_over, [(columns,)] * len(self._shards)), dtype=np.float64)

    def _on_the_workers(self, name):
        raise CosiInputError(f"the stored blocks of a sharded response are on the workers ({name} is not here): "
                             "this analysis reads them directly and needs the single-process engine (or, on a "
                             "cluster, ShardedEngine.derive_shards)")

    col_ptr = property(lambda self: self._on_the_workers("col_ptr"))
    block = property(lambda self: self._on_the_workers("block"))
    values = property(lambda self: self._on_the_workers("values"))

    def tiled_blocks(self):
        """Not here: the tile-major blocks live with the shards."""
        self._on_the_workers("tiled_blocks")

    def internal_rows(self, rows, dtype=None):
        """Source rows in the internal numbering (as :meth:`ColumnResponse.internal_rows`)."""
        rows = np.asarray(rows)
        out = np.zeros((rows.shape[0], self.n_padded), dtype=dtype or rows.dtype)
        out[:, :self.n_source] = rows[:, self.order]
        return out

    def __repr__(self):
        return (f"ShardedResponse(source={self.axes[0].label}[{self.axes[0].nbins}] x Ei[{self.axes[1].nbins}], "
                f"cds={self.cds_shape}, {len(self._shards)} shards, {self.nbytes / 1e6:.1f} MB)")


@dataclass
class ShardedEvaluation(Evaluation):
    """An :class:`~cosi_imaging_plugin.engine.Evaluation` whose ratio products may be under way on the workers."""

    #: Futures of the partial ratio products started with the evaluation (None: not started).
    products: object = None


class KeptAtBins:
    """Arrays at the non-empty bins kept on the workers: one future per shard, its bins' part (k, nnz_shard).

    Released on the workers with this object; rebuilt from the shards if a worker is lost.
    """

    def __init__(self, parts, n):
        self.parts = parts
        #: Number of arrays (k).
        self.n = int(n)

    def __repr__(self):
        return f"KeptAtBins({self.n} arrays, {len(self.parts)} shards)"


def _ordered_sum(parts):
    out = np.array(parts[0], dtype=np.float64)
    for part in parts[1:]:
        out += part
    return out


class _Shards:
    """Futures of shard engines on the cluster, one per column range, in column order."""

    def __init__(self, client, futures, columns):
        self.client = client
        self.futures = futures
        self.columns = columns

    def __len__(self):
        return len(self.futures)

    def _submit(self, func, args):
        # Each task asks for the worker holding its shard. Without that, once a kind of task has more
        # results alive than twice the cluster's threads, Dask takes it for a root task and places it
        # anywhere, moving its shard (seconds for hundreds of MB). The restriction is loose, so that
        # after a worker's loss the task runs where its shard is rebuilt.
        holders = self.where()
        with warnings.catch_warnings():
            # the bins' slices travel inside their tasks, so the scheduler can rerun them after a loss
            warnings.filterwarnings("ignore", message="Sending large graph")
            return [self.client.submit(func, shard, *a, pure=False,
                                       **({} if holder is None else {"workers": [holder], "allow_other_workers": True}))
                    for shard, a, holder in zip(self.futures, args, holders)]

    def map(self, func, args):
        """``func(shard, *args[i])`` on every shard, where it lives; the results in shard order."""
        return self.client.gather(self._submit(func, args))

    def submit(self, func, args):
        """Futures of ``func(shard, *args[i])``, left where each shard lives."""
        return self._submit(func, args)

    def share(self, value):
        """A future of `value` held by every worker: sent once by this process, then copied from worker to
        worker (Dask's broadcast, whose copies double at each round), not once per task through the scheduler."""
        return self.client.scatter(value, broadcast=True, hash=False)

    def gather(self, parts):
        """The values of results left on the workers."""
        return self.client.gather(parts)

    def numbers(self, func, parts):
        """``func(shard, parts[i])`` of results left with the shards, computed there: only what it returns
        travels."""
        return self.map(func, [(part,) for part in parts])

    def reduce(self, func, args):
        """The sum over the shards of ``func(shard, *args[i])`` (arrays, or (array, dict) pairs).

        Beyond two shards the partial results are added on the workers, pairwise in a
        fixed tree (shards 0+1, 2+3, ..., then those sums pairwise), so this process
        receives two results whatever the number of workers, and the order of the
        additions, hence the result to the bit, does not depend on where they ran.
        """
        return self.sum_of(self.reduce_submit(func, args))

    def reduce_submit(self, func, args):
        """The futures of :meth:`reduce`'s two last partial sums (or one), left computing on the workers."""
        level = self._submit(func, args)
        while len(level) > 2:
            level = [self.client.submit(ops.add, *level[i:i + 2], pure=False) if i + 1 < len(level) else level[i]
                     for i in range(0, len(level), 2)]
        return level

    def sum_of(self, level):
        """The sum of :meth:`reduce_submit`'s futures, added here in their order."""
        parts = self.client.gather(level)
        return parts[0] if len(parts) == 1 else ops.add(parts[0], parts[1])

    def derive(self, func, args):
        """New shards ``func(shard, *args[i])``, left on the workers."""
        return _Shards(self.client, self._submit(func, args), self.columns)

    def where(self):
        """The worker holding each shard now (None where it is not held yet, or being rebuilt)."""
        held = self.client.who_has(self.futures)
        return [(held.get(future.key) or [None])[0] for future in self.futures]


class ShardedEngine(ResponseEngine):
    """A :class:`~cosi_imaging_plugin.engine.ResponseEngine` whose response and non-empty bins live in shards.

    Build it with :func:`sharded_engine`. It answers every call of the
    single-process engine: the folds, transpose products and the EM step
    (:meth:`evaluate`, :meth:`ratio_products`) run on the workers; totals over all
    bins are computed here.
    """

    def __init__(self, shards, response, mapping, data=None, backgrounds=None, model_axes=None, dtype=np.float32,
                 mapping_on="workers"):
        self._shards = shards  # without data; replaced by the shards holding the data in set_data
        self.mapping_on = mapping_on
        #: Start the ratio products of every evaluated state with its evaluation (what RL asks next), on a
        #: cluster (shards on disk would be read once more for nothing).
        self.prefetch_products = shards.client is not None
        #: How the sky mapping's place was chosen (set by :func:`sharded_engine`).
        self.placement = {"mapping_on": mapping_on, "reason": "as asked"}
        super().__init__(response, mapping, data=data, backgrounds=backgrounds, model_axes=model_axes, dtype=dtype)

    @property
    def client(self):
        """The ``distributed.Client`` the shards are held through (None for shards on disk)."""
        return self._shards.client

    @property
    def n_shards(self):
        """Number of shards (column ranges)."""
        return len(self._shards)

    @property
    def shard_columns(self):
        """The CDS column range ``(lo, hi)`` of each shard."""
        return list(self._shards.columns)

    def set_data(self, data, backgrounds=None):
        """Register counts and templates (as :meth:`ResponseEngine.set_data`) and send each shard its bins."""
        super().set_data(data, backgrounds)
        ptr = self.data.data_ptr
        args = [(self.data.flat_index[ptr[lo]:ptr[hi]], self.data.counts[ptr[lo]:ptr[hi]], self.data_axes,
                 {name: self._bkg_at_bins[name][ptr[lo]:ptr[hi]] for name in self.background_names})
                for lo, hi in self._shards.columns]
        # one shard per column range is held: the data shards replace those they come from (which the
        # scheduler can still rebuild them from), so a worker holds its response columns once
        self._shards = self._shards.derive(ops.with_data, args)
        self.response._shards = self._shards
        self._bounds = [(int(ptr[lo]), int(ptr[hi])) for lo, hi in self._shards.columns]

    def _add_sky_at_bins(self, out, image=None, rows=None, dtype=None):
        dtype = np.dtype(dtype or self.dtype).str
        values = None if rows is not None else self.image_values(image)
        if rows is not None:
            rows = np.asarray(rows)
            if rows.shape != (self.n_rows, self.response.n_source):
                raise CosiInputError(f"source rows of shape {rows.shape}, expected ({self.n_rows}, "
                                     f"{self.response.n_source})")
        if self.mapping_on == "client" and rows is None:
            values, rows = None, self.mapping.forward(values, dtype=dtype)
        if rows is not None:  # n_rows x n_source values: one copy per worker, not one per task
            rows = self._shards.share(rows)
        parts = self._shards.map(ops.sky_at_bins, [(values, rows, dtype)] * len(self._shards))
        out += np.concatenate(parts)
        return out

    def _to_sky(self, summed):
        """The summed partial transpose products as a sky: with the CCM kept here, its transpose applied once."""
        if self.mapping_on == "client":
            return self.mapping.adjoint_tiled(summed, self.response.inverse_order)
        return np.asarray(summed, dtype=np.float64)

    def transpose_product(self, weights):
        """``sum_i R_ij w_i`` over the non-empty bins, [n_pix, n_ei]: partial skies summed in shard order."""
        self._require_data()
        weights = np.ascontiguousarray(weights, dtype=self.dtype)
        if weights.shape != (self.data.nnz,):
            raise CosiInputError(f"weights of shape {weights.shape}, expected ({self.data.nnz},)")
        return self._to_sky(self._shards.reduce(ops.transpose, [(weights[a:b],) for a, b in self._bounds]))

    def evaluate(self, image, bkg_norms=None, constant=None):
        """As :meth:`ResponseEngine.evaluate`, on the workers: the expectations stay with their shards.

        Out: the image and the normalizations; back: one partial sum ``sum_i d_i ln eps_i``
        per shard. The returned :class:`~cosi_imaging_plugin.engine.Evaluation` holds
        references to the expectations on the workers (released with it; rebuilt from the
        shards if a worker is lost).
        """
        self._require_data()
        values = self.image_values(image)
        norms = self.background_norms(bkg_norms)
        sent = (None, norms, self._shards.share(self.mapping.forward(values, dtype=self.dtype))) \
            if self.mapping_on == "client" else (values, norms)
        # RL asks for the ratio products of every state it evaluates: computed in the same task, each worker
        # goes on to them without a round trip to this process, and with nothing queued for another to steal
        at_bins = self._shards.submit(ops.evaluate_with_products if self.prefetch_products else ops.evaluate,
                                      [sent] * len(self._shards))
        products = self._shards.reduce_submit(ops.products_of, [(part,) for part in at_bins]) \
            if self.prefetch_products else None
        sums = self._shards.numbers(ops.log_sum, at_bins)
        total = self.total_expected(values, norms)
        constant = self.data.log_factorial if constant is None else constant
        return ShardedEvaluation(float(sum(sums) - total - constant), total, at_bins, products)

    def ratio_products(self, evaluation):
        """As :meth:`ResponseEngine.ratio_products`, on the workers: only the summed sky and numbers come back."""
        started = getattr(evaluation, "products", None)
        sky, products = self._shards.sum_of(started) if started is not None else \
            self._shards.reduce(ops.ratio_products, [(part,) for part in evaluation.at_bins])
        return self._to_sky(sky), products

    def evaluation_at_bins(self, evaluation):
        """The expectations of an evaluated state, gathered from the workers into one array (nnz,)."""
        return np.concatenate([part[0] for part in self._shards.gather(evaluation.at_bins)])

    # ---- arrays kept at the bins (the 3ML plugin's folds): parts on the workers, numbers back --------
    def sky_folds_at_bins(self, images=None, rows=None):
        """As :meth:`ResponseEngine.sky_folds_at_bins`: each shard folds the stack and keeps its part.

        The images (with the CCM on the client: their float64 source rows) go out once
        per worker; a :class:`KeptAtBins` of the parts comes back.
        """
        self._require_data()
        if rows is None and self.mapping_on == "client":
            rows = [self.mapping.forward(self.image_values(image), dtype=np.float64) for image in images]
        # one at a time: a stack of source rows can be large (n_ei x n_rows x n_source)
        if rows is None:
            sent = ([self._shards.share(self.image_values(image)) for image in images], None)
        else:
            sent = (None, [self._shards.share(np.asarray(r, dtype=np.float64)) for r in rows])
        parts = self._shards.submit(ops.sky_folds, [sent] * len(self._shards))
        return KeptAtBins(parts, len(images if rows is None else rows))

    def keep_at_bins(self, values):
        """As :meth:`ResponseEngine.keep_at_bins`: each shard's slice sent to it and kept there."""
        values = super().keep_at_bins(values)
        slices = [(values[:, a:b],) for a, b in self._bounds]
        if self.client is None:  # shards on disk: the slices stay here, no shard is read for them
            return KeptAtBins([part for part, in slices], values.shape[0])
        return KeptAtBins(self._shards.submit(ops.keep, slices), values.shape[0])

    def kept_values(self, kept):
        """The kept parts gathered from the workers into one array (k, nnz)."""
        return np.concatenate(self._shards.gather(kept.parts), axis=1)

    def log_likelihood_of_terms(self, terms, bkg_norms=None, total_expected=0.0, constant=None):
        """As :meth:`ResponseEngine.log_likelihood_of_terms`, on the workers: the weights and normalizations go
        out, one partial sum ``sum_i d_i ln eps_i`` per shard comes back."""
        self._require_data()
        if self.client is None:  # shards on disk: the bins are here, the response need not be read for this
            return super().log_likelihood_of_terms([(w, self.kept_values(kept)) for w, kept in terms], bkg_norms,
                                                   total_expected, constant)
        norms = self.background_norms(bkg_norms)
        terms = [(np.asarray(weights, dtype=np.float64), kept) for weights, kept in terms]
        sums = self._shards.map(ops.log_sum_of_terms,
                                [([(w, kept.parts[i]) for w, kept in terms], norms) for i in range(len(self._shards))])
        constant = self.data.log_factorial if constant is None else constant
        return float(sum(sums) - total_expected - constant)

    @property
    def shard_bins(self):
        """The non-empty bins ``(start, stop)`` of each shard, in the engine's order."""
        self._require_data()
        return list(self._bounds)

    def derive_shards(self, func, args):
        """Objects ``func(shard, *args[i])`` made and kept where each shard (with its data) lives.

        For work that needs the stored blocks themselves (the TS map's sums): the result's
        ``map(func, args)`` runs ``func(object, *args[i])`` there and returns the results in
        shard order. Shards on disk (:func:`~.out_of_core.out_of_core_engine`) remake each
        object from its shard at every ``map``, one shard in memory at a time.
        """
        self._require_data()
        return self._shards.derive(func, args)

    def shard_facts(self):
        """Per shard: its worker (or file), columns, stored bytes (both copies of the blocks), blocks and
        non-empty bins."""
        shards = self._shards
        facts = shards.map(ops.shard_facts, [()] * len(shards))
        for fact, where, columns in zip(facts, shards.where(), shards.columns):
            fact["worker"] = where
            fact["columns"] = columns
        return facts


def _response_source(response, rtol, dtype):
    """(path or ColumnResponse, axes, unit, order) of a response given as a path, an open file or compressed."""
    from ..engine.column_response import source_order

    if isinstance(response, ColumnResponse):
        return response, response.axes, response.unit, response.order
    if isinstance(response, FullDetectorResponse):
        response = response.filename
    if not isinstance(response, (str, Path)):
        raise CosiInputError(f"response must be a ColumnResponse, a FullDetectorResponse or a file path, "
                             f"got {type(response).__name__}")
    path = str(Path(response).resolve())
    with FullDetectorResponse.open(path) as opened:
        axes, unit = opened.axes, opened.unit
    return path, axes, unit, source_order(axes[0], axes[1].nbins)


def place_mapping(mapping_on, room, needs, mapping_bytes):
    """(where the sky mapping lives, why): 'workers' or 'client'.

    'auto' keeps the mapping on the workers (no row-space traffic: faster) when every
    worker's room holds its shards plus a copy of the mapping, and on the client
    otherwise, where the workers hold their shards alone. An explicit place is kept.

    Parameters
    ----------
    mapping_on : {'auto', 'workers', 'client'}
    room : dict of str to float or None
        Bytes each worker may still fill (:func:`~.cluster.memory_room`; None: no limit).
    needs : dict of str to int
        Bytes of the shards each worker will hold.
    mapping_bytes : int
        Bytes of one copy of the mapping.
    """
    check_mapping_on(mapping_on)
    if mapping_on != "auto":
        return mapping_on, "as asked"
    if not mapping_bytes:
        return "workers", "the sky mapping holds nothing to copy"
    short = {worker: need + mapping_bytes - room[worker] for worker, need in needs.items()
             if room.get(worker) is not None and need + mapping_bytes > room[worker]}
    if not short:
        return "workers", (f"every worker's memory holds its shard plus the {mapping_bytes / 1e6:.1f} MB sky "
                           f"mapping")
    worker = max(short, key=short.get)
    return "client", (f"Dask worker {worker} lacks {short[worker] / 1e6:.1f} MB to hold its shard "
                      f"({needs[worker] / 1e6:.1f} MB) plus the {mapping_bytes / 1e6:.1f} MB sky mapping")


#: How the columns are cut: by the work of the EM step (stored blocks x non-empty bins per column, the
#: kernels' inner loop) or by the stored blocks alone (the shards' memory).
BALANCES = ("work", "blocks")


def column_work(blocks, data, n_rows):
    """The EM step's work in each CDS column: its stored blocks times its non-empty bins.

    Parameters
    ----------
    blocks : ndarray, shape (n_columns,)
        Stored blocks per column.
    data : histpy.Histogram
        Counts [row, Em, Phi, PsiChi] or [Em, Phi, PsiChi].
    n_rows : int
    """
    blocks = np.asarray(blocks, dtype=np.float64)
    flat, _ = flat_nonzero(data, (n_rows, blocks.size), "data")
    return blocks * np.bincount(flat % blocks.size, minlength=blocks.size)


def sharded_engine(client, response, mapping, data=None, backgrounds=None, *, n_shards=None, rtol=0.0,
                   dtype=np.float32, model_axes=None, mapping_on="auto", balance="blocks", check=True):
    """A :class:`ShardedEngine`: the response cut into column shards built on the workers.

    Parameters
    ----------
    client : distributed.Client, str or cluster
        Where the shards live (see :func:`~.cluster.connect`).
    response : str, pathlib.Path, FullDetectorResponse or ColumnResponse
        A response file is read by the workers, each its own columns, chunk by chunk
        (it never passes through this process). A ColumnResponse in memory is cut here
        and each slice sent to its worker.
    mapping : CCMMapping or PixelMapping
        Sky image -> source rows.
    data, backgrounds, model_axes, dtype
        As for :class:`~cosi_imaging_plugin.engine.ResponseEngine`.
    n_shards : int, optional
        Number of column ranges (default: one per worker).
    rtol : float
        Truncation tolerance when compressing a file (as :meth:`ColumnResponse.from_file`).
    mapping_on : {'auto', 'workers', 'client'}
        Where the sky mapping (the CCM) lives. ``'workers'``: every worker holds a copy
        and receives the image (``8 n_pix n_ei`` bytes) at each fold. ``'client'``: only
        this process holds it; each worker receives the source rows (``n_rows n_source``
        values in `dtype`) and returns its transpose products in that space, so a worker
        holds its shard alone. ``'auto'``: on the workers when each worker's memory limit
        holds its shard plus the mapping, else on the client (:func:`place_mapping`);
        the choice and its reason are logged and kept in ``engine.placement``.
    balance : {'blocks', 'work'}
        Cut the columns into ranges of equal stored blocks (equal memory: each worker
        holds about 1/N of the response) or of equal EM-step work (stored blocks x
        non-empty bins per column, :func:`column_work`; needs `data`, else by blocks),
        which does not even their memory (in the tests' small setup, 0.73 and 1.27 times
        half the response; at DC2 scale shards of 265 and 583 MB, and a two-worker
        iteration 10 % faster: benchmarks/RESULTS.md). The memory check applies to either.
    check : bool
        Check the workers' package versions and memory before building.

    Raises
    ------
    CosiInputError
        Unreachable scheduler, no workers, different package versions, or a worker with
        too little memory for its shard (before anything is built).
    """
    check_mapping_on(mapping_on)
    if balance not in BALANCES:
        raise CosiInputError(f"balance must be one of {list(BALANCES)}, got {balance!r}")
    client = connect(client)
    workers = list(workers_of(client))
    if not workers:
        raise CosiInputError(f"the Dask scheduler at {client.scheduler.address} has no workers")
    if check:
        check_versions(client)
    source, axes, unit, order = _response_source(response, rtol, dtype)
    itemsize = np.dtype(dtype).itemsize
    if isinstance(source, ColumnResponse):
        weights = np.diff(source.col_ptr)
    else:
        weights = _blocks_per_column(client, source, rtol, axes[0].nbins, axes[1].nbins, len(workers))
    per_block, fixed = ops.shard_bytes(weights.size, -(-axes[0].nbins * axes[1].nbins // BLOCK) * BLOCK, itemsize,
                                       mapping.n_rows)
    n_shards = len(workers) if n_shards is None else int(n_shards)
    by_work = balance == "work" and data is not None
    columns = ops.plan_columns(column_work(weights, data, mapping.n_rows) if by_work else weights, n_shards)
    owners = [workers[i % len(workers)] for i in range(n_shards)]
    needs = {}
    for (lo, hi), worker in zip(columns, owners):
        needs[worker] = needs.get(worker, 0) + int(weights[lo:hi].sum()) * per_block + fixed
    mapping_bytes = int(getattr(mapping, "nbytes", 0))
    mapping_on, reason = place_mapping(mapping_on, memory_room(client), needs, mapping_bytes)
    logger.info("sky mapping on the %s: %s", mapping_on, reason)
    if mapping_on == "workers":
        needs = {worker: need + mapping_bytes for worker, need in needs.items()}
    if check:
        check_memory(client, needs)
    shard_mapping, shard_axes = mapping, model_axes
    if mapping_on == "client":
        shard_mapping = ops.SourceRowsMapping(mapping)
        shard_axes = model_axes if model_axes is not None else Axes([getattr(mapping, "model_axis", axes[0]), axes[1]])
    specs = [ops.ShardSpec(i, (lo, hi), source.column_slice(lo, hi) if isinstance(source, ColumnResponse) else source,
                           shard_mapping, shard_axes, float(rtol), np.dtype(dtype).str)
             for i, (lo, hi) in enumerate(columns)]
    logger.info("response cut into %d column ranges balanced by %s, %.1f MB at most each", n_shards,
                "the EM step's work" if by_work else "stored blocks",
                (max(int(weights[lo:hi].sum()) for lo, hi in columns) * per_block + fixed) / 1e6)
    with warnings.catch_warnings():
        # a slice in memory travels inside its task, so the scheduler can rebuild the shard from it
        warnings.filterwarnings("ignore", message="Sending large graph")
        futures = [client.submit(ops.build_shard, spec, workers=[worker], allow_other_workers=True, pure=False)
                   for spec, worker in zip(specs, owners)]
    shards = _Shards(client, futures, columns)
    areas = shards.map(ops.area_over, [(None,)] * n_shards)
    facts = shards.map(ops.shard_facts, [()] * n_shards)
    nbytes = sum(f["response_bytes"] for f in facts)
    logger.info("engine sharded over %d workers: %d column ranges, %.1f MB of response in all", len(workers),
                n_shards, nbytes / 1e6)
    summary = ShardedResponse(shards, axes, unit, rtol, order, _ordered_sum(areas), nbytes)
    engine = ShardedEngine(shards, summary, mapping, data=data, backgrounds=backgrounds, model_axes=model_axes,
                           dtype=dtype, mapping_on=mapping_on)
    engine.placement = {"mapping_on": mapping_on, "reason": reason, "needs": needs, "mapping_bytes": mapping_bytes}
    return engine


def _blocks_per_column(client, path, rtol, n_pix, n_ei, n_workers):
    """Blocks stored in each CDS column, counted by the workers over disjoint pixel ranges of the file."""
    tasks = [client.submit(ops.blocks_per_column, path, rtol, a, b, pure=False)
             for a, b in ops.aligned_ranges(n_pix, n_ei, 2 * n_workers)]
    return np.sum(client.gather(tasks), axis=0)
