"""A response larger than memory on one machine: the sharded engine with its shards on disk.

The response file is compressed shard by shard (each pass streams the file in
chunks and keeps one range of CDS columns), and each shard, with its tile-major
copy, is written to a directory. Every fold or transpose product then loads the
shards one at a time, works on it and lets it go: the engine holds at most one
shard, whose size is the stated memory bound, besides the model and the
non-empty bins. The results are those of the single-process engine (the same
code, :mod:`.shards`, on the same column ranges).
"""
import logging
import pickle
import tempfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .._atomic import atomic_directory
from ..engine.block_ops import BLOCK
from ..errors import CosiInputError
from . import shards as ops
from .engine import ShardedEngine, ShardedResponse, _ordered_sum, _response_source

logger = logging.getLogger(__name__)


class _DiskShards:
    """Shards pickled in a directory, loaded one at a time; the interface of the cluster's shards."""

    client = None

    def __init__(self, paths, columns, mapping, data=None, directory=None):
        self.paths = paths
        self.columns = columns
        self._mapping = mapping  # one copy, lent to each shard as it is loaded
        self._data = data  # per shard: arguments of shards.with_data, applied at each load
        self._directory = directory  # a TemporaryDirectory removed with the last engine using it

    def __len__(self):
        return len(self.paths)

    def _load(self, i):
        engine = load_shard(self.paths[i])
        engine.mapping = self._mapping
        return engine if self._data is None else ops.with_data(engine, *self._data[i])

    def map(self, func, args):
        """``func(shard, *args[i])`` for every shard, loading one shard at a time."""
        out = []
        for i, a in enumerate(args):
            shard = self._load(i)
            out.append(func(shard, *a))
            del shard  # before the next one is read: one shard in memory
        return out

    def submit(self, func, args):
        """As :meth:`map`: the results are here at once."""
        return self.map(func, args)

    @staticmethod
    def share(value):
        return value

    @staticmethod
    def gather(parts):
        return list(parts)

    @staticmethod
    def numbers(func, parts):
        # the results are here already: the shards are not read again for them
        return [func(None, part) for part in parts]

    def reduce(self, func, args):
        """The sum of ``func(shard, *args[i])`` over the shards, in shard order."""
        parts = self.map(func, args)
        out = parts[0]
        for part in parts[1:]:
            out = ops.add(out, part)
        return out

    def derive(self, func, args):
        """Shards holding their data (:func:`.shards.with_data`), or objects ``func(shard, *args[i])`` remade
        from each shard as it is loaded (:class:`_DiskDerived`)."""
        if func is ops.with_data:
            return _DiskShards(self.paths, self.columns, self._mapping, list(args), self._directory)
        if self._data is None:
            raise CosiInputError(f"shards on disk without data cannot make {func.__name__}")
        return _DiskDerived(self, func, list(args))

    def where(self):
        return [str(p) for p in self.paths]


class _DiskDerived:
    """Objects made from shards on disk (the TS map's arrays), remade at each use so that one shard is in memory.

    ``map(f, args)`` loads shard ``i``, makes ``func(shard, *derive_args[i])``, returns
    ``f(object, *args[i])`` and lets both go before the next shard is read.
    """

    def __init__(self, shards, func, args):
        self._shards = shards
        self._func = func
        self._args = args

    def __len__(self):
        return len(self._shards)

    def map(self, func, args):
        out = []
        for i, a in enumerate(args):
            derived = self._func(self._shards._load(i), *self._args[i])
            out.append(func(derived, *a))
            del derived
        return out


def save_shard(shard, path):
    """Write a shard as a directory: its pickle, and each of its arrays as a raw file beside it."""
    buffers = []
    meta = pickle.dumps(shard, protocol=5, buffer_callback=buffers.append)
    with atomic_directory(path, overwrite=True) as tmp:
        (Path(tmp) / "shard.pkl").write_bytes(meta)
        for k, buffer in enumerate(buffers):
            with open(Path(tmp) / f"buffer_{k:03d}.bin", "wb") as f:
                f.write(buffer.raw())


def load_shard(path):
    """Read a shard written by :func:`save_shard`: each array is read once, straight into its own memory."""
    path = Path(path)
    buffers = [np.fromfile(p, dtype=np.uint8) for p in sorted(path.glob("buffer_*.bin"))]
    return pickle.loads((path / "shard.pkl").read_bytes(), buffers=buffers)


def out_of_core_engine(response, mapping, memory_bound, data=None, backgrounds=None, *, directory=None, rtol=0.0,
                       dtype=np.float32, model_axes=None, progress=True):
    """An engine whose response is streamed from disk in shards of at most `memory_bound` bytes.

    Parameters
    ----------
    response : str or pathlib.Path or FullDetectorResponse
        The response file (compressed here, one shard per pass over it).
    mapping : CCMMapping or PixelMapping
    memory_bound : int
        Bytes one shard may hold at work: both copies of its stored blocks, its column
        pointers, and the kernels' buffers of model rows (:func:`.shards.shard_bytes`).
        The response is cut into as many column ranges as needed. The sky mapping, the
        non-empty bins and the images are held besides.
    data, backgrounds, model_axes, dtype
        As for :class:`~cosi_imaging_plugin.engine.ResponseEngine`.
    directory : str or pathlib.Path, optional
        Where the shards are written (default: a temporary directory removed with the engine).
    rtol : float
        Truncation tolerance.
    progress : bool
        Show a progress bar while the shards are built.

    Returns
    -------
    ShardedEngine
        With ``engine.n_shards`` shards read from disk at every fold.
    """
    source, axes, unit, order = _response_source(response, rtol, dtype)
    if not isinstance(source, str):
        raise CosiInputError("the out-of-core engine streams a response file: give its path")
    memory_bound = int(memory_bound)
    itemsize = np.dtype(dtype).itemsize
    blocks = ops.blocks_per_column(source, rtol, 0, axes[0].nbins)
    per_block, fixed = ops.shard_bytes(blocks.size, -(-axes[0].nbins * axes[1].nbins // BLOCK) * BLOCK, itemsize,
                                       mapping.n_rows)
    per_column = blocks * per_block
    room = memory_bound - fixed
    if per_column.max() > room:
        raise CosiInputError(f"{source}: the smallest shard (one CDS column) needs "
                             f"{(per_column.max() + fixed) / 1e6:.1f} MB, more than the memory bound of "
                             f"{memory_bound / 1e6:.1f} MB")
    n_shards = max(1, int(np.ceil(per_column.sum() / room)))
    while True:
        columns = ops.plan_columns(per_column, n_shards)
        if max(per_column[lo:hi].sum() for lo, hi in columns) <= room:
            break
        n_shards += 1
    temporary = None
    if directory is None:
        temporary = tempfile.TemporaryDirectory(prefix="cosi_shards_")
        directory = temporary.name
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths, areas, nbytes = [], [], 0
    for i, (lo, hi) in enumerate(tqdm(columns, desc="response shards", unit="shard", disable=not progress)):
        spec = ops.ShardSpec(i, (lo, hi), source, mapping, model_axes, float(rtol), np.dtype(dtype).str)
        shard = ops.build_shard(spec)
        areas.append(shard.response.effective_area)
        nbytes += ops.shard_facts(shard)["response_bytes"]
        path = directory / f"shard_{i:04d}"
        shard.mapping = None  # kept once, in memory
        save_shard(shard, path)
        paths.append(path)
        del shard
    logger.info("out-of-core engine: %d shards of at most %.1f MB in %s (%.1f MB in all)", len(columns),
                memory_bound / 1e6, directory, nbytes / 1e6)
    shards = _DiskShards(paths, columns, mapping, directory=temporary)
    summary = ShardedResponse(shards, axes, unit, rtol, order, _ordered_sum(areas), nbytes)
    return ShardedEngine(shards, summary, mapping, data=data, backgrounds=backgrounds, model_axes=model_axes,
                         dtype=dtype)
