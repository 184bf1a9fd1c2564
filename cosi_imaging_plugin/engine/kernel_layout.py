"""How the sparse-data kernels walk the response: source tiles x CDS columns.

The source entries (internal numbering) are cut into *tiles* of ``TILE_BLOCKS``
blocks. The kernels keep a tile-major copy of the stored blocks: all blocks of
tile 0 column by column, then tile 1, ... (:class:`TiledBlocks`), and lay the
model rows out tile by tile, ``[tile, row, entry]``. Walking one tile over all
columns then reads its stored blocks as one stream and touches only the part of
the model rows that tile covers (every ScAtt/Time row, ``TILE_BLOCKS * BLOCK``
entries), which stays in the core's caches.

The forward kernel splits the active columns into chunks with equal numbers of
non-empty bins, one task per chunk, so each task writes only its own bins; the
transpose kernel gives each task whole tiles, so each writes only its own part
of the model rows.
"""
from dataclasses import dataclass

import numpy as np

from .block_ops import BLOCK
from .kernels import gather_tiled, scatter_tiled

#: Blocks per source tile: 256 entries, so a tile of model rows for ~1000 ScAtt bins
#: is 1 MB in float32 (one core's L2 cache) or 2 MB in float64. Measured at DC2 scale,
#: 16 blocks beat 8 by 10-20% with float64 rows: half as many passes over the columns.
TILE_BLOCKS = 16


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
        return TILE_BLOCKS * BLOCK

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


def column_chunks(data, n_chunks):
    """Boundaries (indices into ``data.active_cols``) of column chunks with equal numbers of non-empty bins."""
    bins_before = data.data_ptr[data.active_cols]
    targets = np.linspace(0, data.data_ptr[-1], n_chunks + 1)
    bounds = np.searchsorted(bins_before, targets, side="left")
    bounds[0], bounds[-1] = 0, data.active_cols.size
    return np.maximum.accumulate(bounds).astype(np.int64)


def tiled_rows(response, tiles, rows, dtype):
    """Source rows [n_rows, n_source] (original numbering) -> [n_tiles, n_rows, tile_width], zero padded."""
    rows = np.ascontiguousarray(rows)
    out = np.empty((tiles.n_tiles, rows.shape[0], tiles.tile_width), dtype=dtype)
    scatter_tiled(rows, response.order, out)
    return out


def untiled_rows(response, tiled):
    """Inverse of :func:`tiled_rows`: [n_tiles, n_rows, tile_width] -> [n_rows, n_source] original numbering."""
    out = np.empty((tiled.shape[1], response.n_source), dtype=tiled.dtype)
    gather_tiled(tiled, response.inverse_order, out)
    return out
