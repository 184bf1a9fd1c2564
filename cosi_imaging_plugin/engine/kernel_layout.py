"""How the sparse-data kernels walk the response: source tiles x CDS columns.

The source entries (internal numbering) are cut into *tiles* of ``TILE_BLOCKS``
blocks. The kernels keep a tile-major copy of the stored blocks: all blocks of
tile 0 column by column, then tile 1, ... (:class:`TiledBlocks`), and lay the
model rows out tile by tile, ``[tile, row, entry]``. Walking one tile over all
columns then reads its stored blocks as one stream and touches only the part of
the model rows that tile covers (every ScAtt/Time row, ``TILE_BLOCKS * BLOCK``
entries), which stays in the core's caches.

The forward kernel splits the active columns into chunks with equal work
(non-empty bins x stored blocks), one task per chunk, so each task writes only its own bins; the
transpose kernel gives each task whole tiles (groups of tiles with equal work),
so each writes only its own part of the model rows.
"""
from dataclasses import dataclass

import numba
import numpy as np

from .block_ops import BLOCK

#: Blocks per source tile: 256 entries, so a tile of model rows for ~1000 ScAtt bins
#: is 1 MB in float32 (one core's L2 cache) or 2 MB in float64. Measured at DC2 scale,
#: 16 blocks beat 8 by 10-20% with float64 rows: half as many passes over the columns.
TILE_BLOCKS = 16
#: Source entries per tile; a compile-time power of two, so finding an entry's tile is a shift.
TILE_WIDTH = TILE_BLOCKS * BLOCK


@dataclass
class TiledBlocks:
    """The stored blocks of a ColumnResponse in tile-major order.

    Attributes
    ----------
    n_tiles : int
    tile_ptr : ndarray of int64, shape (n_tiles, n_columns + 1)
        Blocks of tile ``t`` and column ``c``: ``tile_ptr[t, c]:tile_ptr[t, c + 1]``.
    local_block : ndarray of int32
        Index of each block within its tile.
    values : ndarray, shape (n_blocks, BLOCK)
    """

    n_tiles: int
    tile_ptr: np.ndarray
    local_block: np.ndarray
    values: np.ndarray

    @property
    def tile_width(self):
        """Source entries per tile."""
        return TILE_WIDTH

    @property
    def nbytes(self):
        return self.tile_ptr.nbytes + self.local_block.nbytes + self.values.nbytes


def tiled_blocks(response):
    """Tile-major copy of the stored blocks of a :class:`ColumnResponse`."""
    n_tiles = -(-(response.n_padded // BLOCK) // TILE_BLOCKS)
    n_columns = response.col_ptr.size - 1
    tile = response.block // TILE_BLOCKS
    column = np.repeat(np.arange(n_columns, dtype=np.int64), np.diff(response.col_ptr))
    # blocks are sorted by block index within each column: a stable sort by tile keeps columns in order
    order = np.argsort(tile, kind="stable")
    counts = np.bincount(tile.astype(np.int64) * n_columns + column, minlength=n_tiles * n_columns)
    del column
    tile_ptr = np.zeros((n_tiles, n_columns + 1), dtype=np.int64)
    tile_ptr[:, 1:] = np.cumsum(counts.reshape(n_tiles, n_columns), axis=1)
    tile_ptr += np.concatenate([[0], np.cumsum(tile_ptr[:-1, -1])])[:, None]
    local_block = (response.block[order] - tile[order] * TILE_BLOCKS).astype(np.int32)
    return TiledBlocks(n_tiles, tile_ptr, local_block, np.ascontiguousarray(response.values[order]))


def column_chunks(data, col_ptr, n_chunks):
    """Boundaries (indices into ``data.active_cols``) of column chunks with equal work.

    A column's work is its number of non-empty bins times its number of stored
    blocks (``col_ptr``: the column pointers of the stored response).
    """
    cols = data.active_cols
    work = np.diff(data.data_ptr)[cols] * np.diff(col_ptr)[cols]
    work_before = np.concatenate([[0], np.cumsum(work)[:-1]])
    targets = np.linspace(0, work.sum(), n_chunks + 1)
    bounds = np.searchsorted(work_before, targets, side="left")
    bounds[0], bounds[-1] = 0, cols.size
    return np.maximum.accumulate(bounds).astype(np.int64)


def tile_groups(tiles, data, n_groups):
    """Tiles of each task of the transpose kernel, balanced by work: (n_groups, n_max), -1 past the last.

    A tile's work is the number of (non-empty bin, stored block) pairs it holds;
    tiles go, heaviest first, to the group with the least work so far.
    """
    bins = np.diff(data.data_ptr)[data.active_cols]
    cols = data.active_cols
    work = np.array([np.dot(bins, tiles.tile_ptr[t, cols + 1] - tiles.tile_ptr[t, cols])
                     for t in range(tiles.n_tiles)], dtype=np.float64)
    n_groups = max(1, min(int(n_groups), tiles.n_tiles))
    groups, totals = [[] for _ in range(n_groups)], np.zeros(n_groups)
    for t in np.argsort(-work, kind="stable"):
        g = int(np.argmin(totals))
        groups[g].append(t)
        totals[g] += work[t]
    out = np.full((n_groups, max(len(g) for g in groups)), -1, dtype=np.int64)
    for g, members in enumerate(groups):
        out[g, :len(members)] = sorted(members)
    return out


def tiled_rows(response, tiles, rows, dtype):
    """Source rows [n_rows, n_source] (original numbering) -> [n_tiles, n_rows, tile_width], zero padded."""
    rows = np.ascontiguousarray(rows)
    out = np.empty((tiles.n_tiles, rows.shape[0], tiles.tile_width), dtype=dtype)
    scatter_tiled(rows, response.order, out)
    return out


def tiled_offsets(position, n_rows):
    """Where the source entries of row 0 lie in a flat [n_tiles, n_rows, TILE_WIDTH] array.

    Entry ``k`` of row ``s`` is at ``offsets[k] + s * TILE_WIDTH``; ``position[k]``
    is the internal position of source index ``k``.
    """
    position = np.asarray(position, dtype=np.int64)
    return (position // TILE_WIDTH) * (n_rows * TILE_WIDTH) + position % TILE_WIDTH


@numba.njit(parallel=True, cache=True, nogil=True)
def scatter_tiled(rows, order, out):
    """``out[t, r, u] = rows[r, order[t * TILE_WIDTH + u]]``, zero past the last source entry.

    ``rows`` is (n_rows, n_source) in the original numbering, ``order`` maps
    internal to original indices, ``out`` is (n_tiles, n_rows, TILE_WIDTH).
    """
    n_tiles, n_rows, _ = out.shape
    n_source = order.shape[0]
    for t in numba.prange(n_tiles):
        for r in range(n_rows):
            for u in range(TILE_WIDTH):
                i = t * TILE_WIDTH + u
                out[t, r, u] = rows[r, order[i]] if i < n_source else 0.0
