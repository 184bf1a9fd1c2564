"""The response stored column by column over the Compton data space.

A line response is mostly (near) zero: a source at direction s only fills the
band of width ~ARM around the cones {angle(PsiChi, s) = Phi}. Storing, for every
CDS bin (Em, Phi, PsiChi), only the source entries that matter makes the
sparse-data path read a fraction of the response.

Truncation contract
-------------------
For every source entry k (a NuLambda or lb pixel and an Ei bin) the smallest
entries of its row are dropped while their sum stays within ``rtol`` times the
row sum (the effective area of that direction and energy). Hence, for any
non-negative sky, the summed absolute change of the expected counts over all
CDS bins is at most ``rtol`` times the summed expected counts. ``rtol=0`` keeps
every non-zero entry (exact).
"""
import logging

import numpy as np
from tqdm.auto import tqdm

from ..errors import CosiInputError
from .kernels import scatter_columns

logger = logging.getLogger(__name__)

CDS_LABELS = ("Em", "Phi", "PsiChi")


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


class ColumnResponse:
    """Column-compressed response matrix ``R[k, c]``.

    ``k = pixel * n_ei + ei`` runs over source directions (NuLambda in the
    spacecraft frame, or lb for a Galactic-frame response) and initial-energy
    bins; ``c`` runs over the CDS bins (Em, Phi, PsiChi) in C order.

    Build it with :meth:`from_dense` or :meth:`from_chunks` (or
    :meth:`from_file` for a FullDetectorResponse); the constructor takes the
    compressed arrays as they are.

    Parameters
    ----------
    col_ptr : ndarray of int64, shape (n_columns + 1,)
    col_idx : ndarray of int16 or int32
        Source index of each stored entry.
    col_val : ndarray of float32 or float64
        Stored values (cm2, or cm2 s for a Galactic-frame response).
    axes : histpy.Axes
        Axes [source pixel, Ei, Em, Phi, PsiChi] of the full response.
    unit : astropy.units.Unit
        Unit of the values.
    rtol : float
        Truncation tolerance used (see module docstring).
    """

    def __init__(self, col_ptr, col_idx, col_val, axes, unit, rtol=0.0):
        self.col_ptr = col_ptr
        self.col_idx = col_idx
        self.col_val = col_val
        self.axes = axes
        self.unit = unit
        self.rtol = float(rtol)
        n_pix, n_ei = axes[0].nbins, axes[1].nbins
        self.n_source = n_pix * n_ei
        self.cds_shape = tuple(int(a.nbins) for a in axes[2:])
        if col_ptr.shape[0] != int(np.prod(self.cds_shape)) + 1:
            raise CosiInputError(
                f"column pointer of length {col_ptr.shape[0]} does not match the CDS shape {self.cds_shape}")
        self.effective_area = np.bincount(col_idx, weights=col_val, minlength=self.n_source).reshape(n_pix, n_ei)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, contents, axes, unit, rtol=0.0, dtype=np.float32):
        """Compress a dense response array [pixel, Ei, Em, Phi, PsiChi]."""
        contents = np.asarray(contents)
        return cls.from_chunks([(slice(0, contents.shape[0]), contents)], axes, unit, rtol=rtol, dtype=dtype)

    @classmethod
    def from_file(cls, response, rtol=0.0, dtype=np.float32, pixels_per_chunk=None, progress=True):
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
        """
        from ..io.response import FullDetectorResponse

        if not isinstance(response, FullDetectorResponse):
            with FullDetectorResponse.open(response) as opened:
                return cls.from_file(opened, rtol, dtype, pixels_per_chunk, progress)
        row_bytes = 8 * int(np.prod(response.shape[1:]))
        if pixels_per_chunk is None:
            pixels_per_chunk = max(1, int(64e6 // row_bytes))
        chunks = response.iter_chunks(pixels_per_chunk)
        n_chunks = -(-response.shape[0] // pixels_per_chunk)
        if progress:
            chunks = tqdm(chunks, total=n_chunks, desc="compressing response", unit="chunk")
        return cls.from_chunks(chunks, response.axes, response.unit, rtol=rtol, dtype=dtype)

    @classmethod
    def from_chunks(cls, chunks, axes, unit, rtol=0.0, dtype=np.float32):
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
        """
        if not 0 <= rtol < 1:
            raise CosiInputError(f"truncation tolerance rtol must be in [0, 1), got {rtol}")
        n_pix, n_ei = axes[0].nbins, axes[1].nbins
        n_source = n_pix * n_ei
        n_columns = int(np.prod([a.nbins for a in axes[2:]]))
        idx_type = np.int16 if n_source <= np.iinfo(np.int16).max else np.int32
        cols, idxs, vals = [], [], []
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
            keep = _row_keep_mask(rows, rtol)
            r, c = np.nonzero(keep)
            cols.append(c.astype(np.int32))
            idxs.append((r + start * n_ei).astype(idx_type))
            vals.append(rows[r, c].astype(dtype))
            expected_start = start + block.shape[0]
        if expected_start != n_pix:
            raise CosiInputError(f"response chunks cover {expected_start} of {n_pix} pixels")
        col_of_entry = np.concatenate(cols)
        col_ptr, position = scatter_columns(col_of_entry, n_columns)
        del col_of_entry
        col_idx = np.empty(position.shape[0], dtype=idx_type)
        col_idx[position] = np.concatenate(idxs)
        col_val = np.empty(position.shape[0], dtype=dtype)
        col_val[position] = np.concatenate(vals)
        out = cls(col_ptr, col_idx, col_val, axes, unit, rtol=rtol)
        logger.info("response compressed: %d of %d entries kept (%.2f%%), %.1f MB, rtol=%g",
                    out.nnz, n_source * n_columns, 100 * out.nnz / (n_source * n_columns), out.nbytes / 1e6, rtol)
        return out

    # ---- properties ---------------------------------------------------------------------------
    @property
    def n_columns(self):
        """Number of CDS bins (Em x Phi x PsiChi)."""
        return self.col_ptr.shape[0] - 1

    @property
    def nnz(self):
        """Number of stored entries."""
        return int(self.col_val.shape[0])

    @property
    def nbytes(self):
        """Bytes held by the compressed arrays."""
        return self.col_ptr.nbytes + self.col_idx.nbytes + self.col_val.nbytes

    @property
    def dtype(self):
        """Storage type of the values."""
        return self.col_val.dtype

    @property
    def mean_entries_per_column(self):
        """Mean number of stored source entries per CDS bin."""
        return self.nnz / max(1, self.n_columns)

    def to_dense(self):
        """Dense matrix [k, c] (small problems and tests only)."""
        out = np.zeros((self.n_source, self.n_columns), dtype=np.float64)
        cols = np.repeat(np.arange(self.n_columns), np.diff(self.col_ptr))
        out[self.col_idx, cols] = self.col_val
        return out

    def to_scipy(self):
        """The matrix as a ``scipy.sparse.csc_matrix`` of shape (n_source, n_columns)."""
        from scipy import sparse

        return sparse.csc_matrix((self.col_val, self.col_idx.astype(np.int32), self.col_ptr),
                                 shape=(self.n_source, self.n_columns))

    def __repr__(self):
        return (f"ColumnResponse(source={self.axes[0].label}[{self.axes[0].nbins}] x Ei[{self.axes[1].nbins}], "
                f"cds={self.cds_shape}, nnz={self.nnz}, {self.nbytes / 1e6:.1f} MB, rtol={self.rtol:g})")
