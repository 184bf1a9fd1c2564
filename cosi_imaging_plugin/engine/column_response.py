"""The response stored column by column over the Compton data space, in blocks.

A line response is mostly (near) zero: a source at direction s only fills the
band of width ~ARM around the cones {angle(PsiChi, s) = Phi}. For every CDS bin
(Em, Phi, PsiChi) only the source entries that matter are stored.

Layout
------
Source entries ``k`` (a NuLambda or lb pixel and an Ei bin) are renumbered in
HEALPix NESTED order, where a band on the sky falls into few runs of consecutive
indices, and stored in aligned blocks of ``B = 16`` consecutive entries (one
64-byte cache line of float32). A kernel then reads the model row with one
contiguous, vectorised load per block instead of one scattered load per entry.
Blocks are stored whole: entries of a stored block are kept even when the
truncation would drop them (more accurate, at no extra cost). The sparse-data
kernels use a second, tile-major copy of the blocks (:meth:`ColumnResponse.tiled_blocks`,
built on first use), so an engine holds the stored response twice.

Truncation contract
-------------------
For every source entry k the smallest entries of its row are dropped while
their sum stays within ``rtol`` times the row sum (the effective area of that
direction and energy). Hence, for any non-negative sky, the summed absolute
change of the expected counts over all CDS bins is at most ``rtol`` times the
summed expected counts. ``rtol=0`` keeps every non-zero entry (exact). The
exposure uses the stored entries, so expected counts stay self-consistent.
"""
import logging

import healpy as hp
import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from ..errors import CosiInputError
from ..io.response import FullDetectorResponse
from .kernel_layout import tiled_blocks
from .kernels import BLOCK, fold_all_columns

logger = logging.getLogger(__name__)

def _row_keep_mask(rows, rtol):
    """Mask of the entries kept in each row under the truncation contract."""
    keep = rows > 0
    if rtol <= 0:
        return keep
    order = np.argsort(rows, axis=1, kind="stable")
    ordered = np.take_along_axis(rows, order, axis=1).astype(np.float64)
    budget = rtol * ordered.sum(axis=1, keepdims=True)
    # Drop the longest prefix of smallest entries whose sum fits in the budget.
    dropped_sorted = np.cumsum(ordered, axis=1) <= budget
    dropped = np.empty_like(dropped_sorted)
    np.put_along_axis(dropped, order, dropped_sorted, axis=1)
    return keep & ~dropped


#: Largest key range over which :func:`_unique_keys` marks keys in a table (a byte and an int32 per key: 640 MB)
#: rather than sorting them.
_KEY_TABLE_MAX = 1 << 27


#: Blocks summed at a time by :meth:`ColumnResponse.area_over`.
_AREA_CHUNK = 1 << 18


def _unique_keys(keys, n_keys):
    """``numpy.unique(keys, return_inverse=True)`` for integer keys in ``[0, n_keys)``.

    For key ranges up to ``_KEY_TABLE_MAX`` the keys are marked in a table, in linear time
    instead of a sort's ``n log n`` (a response has hundreds of millions of entries).
    """
    if n_keys > _KEY_TABLE_MAX:
        return np.unique(keys, return_inverse=True)
    present = np.zeros(n_keys, dtype=bool)
    present[keys] = True
    unique = np.flatnonzero(present)
    del present
    index = np.zeros(n_keys, dtype=np.int64 if unique.size > np.iinfo(np.int32).max else np.int32)
    index[unique] = np.arange(unique.size, dtype=index.dtype)
    return unique, index[keys]


def source_order(axis, n_ei):
    """Internal numbering of the source entries: ``order[i]`` is the original index of internal entry i.

    HEALPix source axes are renumbered in NESTED order (pixel-major, then Ei).
    """
    n_pix = axis.nbins
    if hasattr(axis, "nside") and str(getattr(axis, "scheme", "ring")).lower() == "ring":
        pixels = hp.nest2ring(axis.nside, np.arange(n_pix))
    else:
        pixels = np.arange(n_pix)
    return (pixels[:, None] * n_ei + np.arange(n_ei)[None, :]).ravel()


class ColumnResponse:
    """Block-compressed response matrix ``R[k, c]``.

    ``k = pixel * n_ei + ei`` (original numbering) runs over source directions
    (NuLambda in the spacecraft frame, or lb for a Galactic-frame response) and
    initial-energy bins; ``c`` runs over the CDS bins (Em, Phi, PsiChi) in C
    order. Build it with :meth:`from_dense`, :meth:`from_chunks` or :meth:`from_file`.

    Parameters
    ----------
    col_ptr : ndarray of int64, shape (n_columns + 1,)
        Blocks of column c are ``col_ptr[c]:col_ptr[c+1]``.
    block : ndarray of int32
        Block number of each stored block (internal entries ``block * B ... block * B + B - 1``).
    values : ndarray, shape (n_blocks, B)
        Stored values (cm2, or cm2 s for a Galactic-frame response).
    order : ndarray of int64
        Internal -> original source index (see :func:`source_order`).
    axes : histpy.Axes
        Axes [source pixel, Ei, Em, Phi, PsiChi] of the full response.
    unit : astropy.units.Unit
    rtol : float
        Truncation tolerance used (see module docstring).
    """

    def __init__(self, col_ptr, block, values, order, axes, unit, rtol=0.0):
        self.col_ptr = col_ptr
        self.block = block
        self.values = values
        self.order = np.asarray(order, dtype=np.int64)
        self.inverse_order = np.argsort(self.order)
        self.axes = axes
        self.unit = unit
        self.rtol = float(rtol)
        self.n_source = axes[0].nbins * axes[1].nbins
        self.block_size = values.shape[1]
        self.n_padded = -(-self.n_source // self.block_size) * self.block_size
        self.cds_shape = tuple(int(a.nbins) for a in axes[2:])
        if col_ptr.shape[0] != int(np.prod(self.cds_shape)) + 1:
            raise CosiInputError(
                f"column pointer of length {col_ptr.shape[0]} does not match the CDS shape {self.cds_shape}")
        self.effective_area = self.area_over()
        self._tiled = None

    def area_over(self, columns=None):
        """The response summed over some CDS columns, per source pixel and Ei bin ``[n_pix, n_ei]``.

        Parameters
        ----------
        columns : ndarray of bool, shape (n_columns,), optional
            The columns summed (default all: the effective area, or the exposure of a
            Galactic-frame response).
        """
        keep = None
        if columns is not None:
            columns = np.asarray(columns, dtype=bool)
            if columns.shape != (self.n_columns,):
                raise CosiInputError(f"column mask of shape {columns.shape}, expected ({self.n_columns},)")
            keep = np.repeat(columns, np.diff(self.col_ptr))
        internal = np.zeros(self.n_padded)
        lane = np.arange(self.block_size)
        for start in range(0, self.n_blocks, _AREA_CHUNK):  # bounded temporaries: a response has ~1e8 values
            block, values = self.block[start:start + _AREA_CHUNK], self.values[start:start + _AREA_CHUNK]
            if keep is not None:
                chosen = keep[start:start + _AREA_CHUNK]
                block, values = block[chosen], values[chosen]
            lanes = (block.astype(np.int64)[:, None] * self.block_size + lane).ravel()
            internal += np.bincount(lanes, weights=values.ravel().astype(np.float64), minlength=self.n_padded)
        return internal[self.inverse_order].reshape(self.axes[0].nbins, self.axes[1].nbins)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, contents, axes, unit, rtol=0.0, dtype=np.float32):
        """Compress a dense response array [pixel, Ei, Em, Phi, PsiChi]."""
        contents = np.asarray(contents)
        step = max(1, int(64e6 // max(1, contents[0].nbytes)))
        chunks = ((slice(i, min(contents.shape[0], i + step)), contents[i:i + step])
                  for i in range(0, contents.shape[0], step))
        return cls.from_chunks(chunks, axes, unit, rtol=rtol, dtype=dtype)

    @classmethod
    def from_file(cls, response, rtol=0.0, dtype=np.float32, pixels_per_chunk=None, progress=True, columns=None):
        """Compress a :class:`~cosi_imaging_plugin.io.response.FullDetectorResponse`, chunk by chunk.

        Parameters
        ----------
        response : FullDetectorResponse or str or pathlib.Path
            An open response or the path of one.
        rtol : float
            Truncation tolerance (module docstring).
        dtype : numpy dtype
            Storage type of the values (float32 halves memory and traffic).
        pixels_per_chunk : int, optional
            NuLambda pixels read at once; by default about 64 MB per chunk.
        progress : bool
            Show a progress bar.
        columns : (int, int), optional
            Keep only the CDS columns ``lo <= c < hi`` (a shard, see :meth:`from_chunks`).
        """
        if not isinstance(response, FullDetectorResponse):
            with FullDetectorResponse.open(response) as opened:
                return cls.from_file(opened, rtol, dtype, pixels_per_chunk, progress, columns)
        row_bytes = 8 * int(np.prod(response.shape[1:]))
        if pixels_per_chunk is None:
            pixels_per_chunk = max(1, int(64e6 // row_bytes))
        chunks = response.iter_chunks(pixels_per_chunk)
        n_chunks = -(-response.shape[0] // pixels_per_chunk)
        chunks = tqdm(chunks, total=n_chunks, desc="compressing response", unit="chunk", disable=not progress)
        return cls.from_chunks(chunks, response.axes, response.unit, rtol=rtol, dtype=dtype, columns=columns)

    @classmethod
    def from_chunks(cls, chunks, axes, unit, rtol=0.0, dtype=np.float32, columns=None):
        """Compress a response given as consecutive (pixel_slice, block) pairs.

        Parameters
        ----------
        chunks : iterable of (slice, ndarray)
            Blocks [n_pix, Ei, Em, Phi, PsiChi] covering the pixels in order.
        axes : histpy.Axes
            Axes of the full response.
        unit : astropy.units.Unit
            Unit of the values.
        rtol : float
            Truncation tolerance (module docstring).
        dtype : numpy dtype
            Storage type of the values.
        columns : (int, int), optional
            Keep only the CDS columns ``lo <= c < hi``: a shard of the response. The
            truncation still sees whole rows, so a shard holds exactly the blocks that
            the full response holds in those columns; the other columns are empty.
        """
        if not 0 <= rtol < 1:
            raise CosiInputError(f"truncation tolerance rtol must be in [0, 1), got {rtol}")
        dtype = np.dtype(dtype)
        n_pix, n_ei = axes[0].nbins, axes[1].nbins
        n_source = n_pix * n_ei
        n_columns = int(np.prod([a.nbins for a in axes[2:]]))
        block_size = BLOCK
        order = source_order(axes[0], n_ei)
        internal_of = np.argsort(order)
        n_blocks_per_column = -(-n_source // block_size)
        keys, lanes, vals = [], [], []
        expected_start = 0
        for pixels, block in chunks:
            start = pixels.start if isinstance(pixels, slice) else int(np.min(pixels))
            if start != expected_start:
                raise CosiInputError(f"response chunks must be consecutive: expected pixel {expected_start}, "
                                     f"got {start}")
            block = np.asarray(block)
            if block.shape[1:] != (n_ei, *[a.nbins for a in axes[2:]]):
                raise CosiInputError(f"response block of shape {block.shape[1:]} does not match the axes "
                                     f"{[a.label for a in axes]}")
            if not np.all(np.isfinite(block)):
                raise CosiInputError(f"response contains NaN or infinite entries in pixels "
                                     f"{start}..{start + block.shape[0] - 1}")
            if np.any(block < 0):
                raise CosiInputError(f"response contains negative entries in pixels "
                                     f"{start}..{start + block.shape[0] - 1}")
            rows = block.reshape(-1, n_columns)
            r, c = np.nonzero(_row_keep_mask(rows, rtol))
            if columns is not None:
                inside = (c >= columns[0]) & (c < columns[1])
                r, c = r[inside], c[inside]
            internal = internal_of[r + start * n_ei]
            keys.append(c.astype(np.int64) * n_blocks_per_column + internal // block_size)
            lanes.append((internal % block_size).astype(np.int8))
            vals.append(rows[r, c].astype(dtype))
            expected_start = start + block.shape[0]
        if expected_start != n_pix:
            raise CosiInputError(f"response chunks cover {expected_start} of {n_pix} pixels")
        unique, position = _unique_keys(np.concatenate(keys), n_columns * n_blocks_per_column)
        values = np.zeros((unique.size, block_size), dtype=dtype)
        values[position, np.concatenate(lanes)] = np.concatenate(vals)
        columns = unique // n_blocks_per_column
        col_ptr = np.zeros(n_columns + 1, dtype=np.int64)
        np.cumsum(np.bincount(columns, minlength=n_columns), out=col_ptr[1:])
        out = cls(col_ptr, (unique % n_blocks_per_column).astype(np.int32), values, order, axes, unit, rtol=rtol)
        logger.info("response compressed: %d blocks of %d (%.2f%% of %d entries stored), %.1f MB, rtol=%g",
                    out.n_blocks, block_size, 100 * out.nnz / (n_source * n_columns), n_source * n_columns,
                    out.nbytes / 1e6, rtol)
        return out

    def column_slice(self, lo, hi):
        """The response restricted to the CDS columns ``lo <= c < hi`` (the others empty): a shard.

        The arrays are copies, so the shard does not keep the full response alive.
        """
        if not 0 <= lo <= hi <= self.n_columns:
            raise CosiInputError(f"column range {lo}..{hi} outside the response's {self.n_columns} CDS columns")
        b0, b1 = int(self.col_ptr[lo]), int(self.col_ptr[hi])
        col_ptr = np.clip(self.col_ptr, b0, b1) - b0
        return type(self)(col_ptr, self.block[b0:b1].copy(), self.values[b0:b1].copy(), self.order, self.axes,
                          self.unit, rtol=self.rtol)

    # ---- properties ---------------------------------------------------------------------------
    @property
    def n_columns(self):
        """Number of CDS bins (Em x Phi x PsiChi)."""
        return self.col_ptr.shape[0] - 1

    @property
    def n_blocks(self):
        """Number of stored blocks."""
        return int(self.block.shape[0])

    @property
    def nnz(self):
        """Number of stored entries (whole blocks)."""
        return int(self.values.size)

    @property
    def nbytes(self):
        """Bytes held by the compressed arrays."""
        return self.col_ptr.nbytes + self.block.nbytes + self.values.nbytes

    @property
    def dtype(self):
        """Storage type of the values."""
        return self.values.dtype

    @property
    def mean_entries_per_column(self):
        """Mean number of stored source entries per CDS bin."""
        return self.nnz / max(1, self.n_columns)

    def tiled_blocks(self):
        """The stored blocks in the tile-major order of the sparse-data kernels (built once, then kept).

        A second copy of the values: the kernels stream it tile by tile, while the
        column-major copy serves the dense products.

        Returns
        -------
        TiledBlocks
        """
        if self._tiled is None:
            self._tiled = tiled_blocks(self)
            logger.debug("tile-major copy of the response: %d tiles, %.1f MB", self._tiled.n_tiles,
                         self._tiled.nbytes / 1e6)
        return self._tiled

    # ---- model rows in the internal numbering ----------------------------------------------------
    def internal_rows(self, rows, dtype=None):
        """Source rows [n_rows, n_source] (original numbering) -> [n_rows, n_padded] internal, contiguous."""
        rows = np.asarray(rows)
        out = np.zeros((rows.shape[0], self.n_padded), dtype=dtype or rows.dtype)
        out[:, :self.n_source] = rows[:, self.order]
        return out

    # ---- dense products (model maps, simulations, tests) ---------------------------------------
    def fold(self, rows):
        """Expected counts ``rows @ R`` in every CDS bin: [n_rows, n_columns] float64.

        Parameters
        ----------
        rows : ndarray, shape (n_rows, n_source)
            Source rows in the original numbering.
        """
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.n_source:
            raise CosiInputError(f"source rows of shape {rows.shape}, expected (n, {self.n_source})")
        rows_t = np.ascontiguousarray(self.internal_rows(rows).T)
        out = np.empty((self.n_columns, rows.shape[0]))
        fold_all_columns(self.col_ptr, self.block, self.values, rows_t, out)
        return np.ascontiguousarray(out.T)

    def _entries(self):
        """(original source index, column, value) of every stored non-zero entry."""
        lanes = (self.block.astype(np.int64)[:, None] * self.block_size + np.arange(self.block_size)).ravel()
        columns = np.repeat(np.arange(self.n_columns), np.diff(self.col_ptr) * self.block_size)
        values = self.values.ravel()
        keep = (values != 0) & (lanes < self.n_source)
        return self.order[lanes[keep]], columns[keep], values[keep]

    def to_dense(self):
        """Dense matrix [k, c] (small problems and tests only)."""
        out = np.zeros((self.n_source, self.n_columns), dtype=np.float64)
        k, c, v = self._entries()
        out[k, c] = v
        return out

    def to_scipy(self):
        """The matrix as a ``scipy.sparse.csc_matrix`` of shape (n_source, n_columns)."""
        k, c, v = self._entries()
        return sparse.csc_matrix((v, (k, c)), shape=(self.n_source, self.n_columns))

    def __repr__(self):
        return (f"ColumnResponse(source={self.axes[0].label}[{self.axes[0].nbins}] x Ei[{self.axes[1].nbins}], "
                f"cds={self.cds_shape}, {self.n_blocks} blocks of {self.block_size}, {self.nbytes / 1e6:.1f} MB, "
                f"rtol={self.rtol:g})")
