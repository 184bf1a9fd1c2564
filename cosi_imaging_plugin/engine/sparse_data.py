"""The non-empty bins of a binned COSI dataset, grouped by CDS column.

Every likelihood term that touches single bins is weighted by the counts, so the
engine only needs expectations where the data are non-zero. This module keeps
those bins, sorted by CDS column (Em, Phi, PsiChi) and then by ScAtt/Time row,
in the layout the compiled kernels walk.
"""
import numpy as np
from scipy.special import gammaln

from ..errors import CosiInputError


def histogram_values(hist):
    """Contents of a histpy Histogram as (coords, values) of its non-zero bins, or a dense array.

    Returns
    -------
    ndarray or tuple
        Dense ndarray for dense contents; ``(coords, values)`` for COO contents.
    """
    contents = hist.contents
    if hasattr(contents, "coords"):  # sparse.COO
        return np.asarray(contents.coords), np.asarray(contents.data)
    return np.asarray(getattr(contents, "value", contents))


def flat_nonzero(hist, shape, what):
    """Flat C-order indices and values of the non-zero bins of a histogram of `shape`.

    Parameters
    ----------
    hist : histpy.Histogram or ndarray
    shape : tuple of int
        Shape the contents are viewed as (e.g. rows x CDS bins).
    what : str
        Name used in error messages (a file name or a role such as 'data').
    """
    values = histogram_values(hist) if hasattr(hist, "contents") else np.asarray(hist)
    if isinstance(values, tuple):
        coords, data = values
        full_shape = hist.contents.shape
        flat = np.ravel_multi_index(tuple(coords), full_shape) if coords.size else np.zeros(0, np.int64)
        if int(np.prod(full_shape)) != int(np.prod(shape)):
            raise CosiInputError(f"{what}: {int(np.prod(full_shape))} bins, expected {int(np.prod(shape))}")
        data = np.asarray(data, dtype=np.float64)
        keep = data != 0
        flat, data = flat[keep], data[keep]
    else:
        if values.size != int(np.prod(shape)):
            raise CosiInputError(f"{what}: {values.size} bins, expected {int(np.prod(shape))}")
        values = values.reshape(-1).astype(np.float64, copy=False)
        flat = np.flatnonzero(values)
        data = values[flat]
    if not np.all(np.isfinite(data)):
        raise CosiInputError(f"{what} contains NaN or infinite values")
    return flat.astype(np.int64), data


def gather(hist, shape, flat_index, what):
    """Values of a non-negative `hist` (viewed with `shape`) at the given flat bin indices, and its total."""
    values = histogram_values(hist) if hasattr(hist, "contents") else np.asarray(hist)
    if not isinstance(values, tuple):
        # dense: index directly instead of listing every non-zero bin
        if values.size != int(np.prod(shape)):
            raise CosiInputError(f"{what}: {values.size} bins, expected {int(np.prod(shape))}")
        values = values.reshape(-1)
        if not np.all(np.isfinite(values)):
            raise CosiInputError(f"{what} contains NaN or infinite values")
        if values.min(initial=0) < 0:
            raise CosiInputError(f"{what} has negative entries (first at flat bin {np.argmax(values < 0)})")
        return values[flat_index].astype(np.float64), float(values.sum(dtype=np.float64))
    flat, values = flat_nonzero(hist, shape, what)
    if np.any(values < 0):
        raise CosiInputError(f"{what} has negative entries (first at flat bin {flat[np.argmax(values < 0)]})")
    order = np.argsort(flat)
    flat, values = flat[order], values[order]
    pos = np.searchsorted(flat, flat_index)
    pos_c = np.minimum(pos, max(flat.size - 1, 0))
    found = (pos < flat.size) & (flat[pos_c] == flat_index) if flat.size else np.zeros(flat_index.shape, bool)
    out = np.zeros(flat_index.shape, dtype=np.float64)
    out[found] = values[pos_c[found]]
    return out, float(values.sum())


class SparseData:
    """Non-empty bins of a dataset with shape (n_rows, n_columns).

    Attributes
    ----------
    counts : ndarray of float64
        Counts of the non-empty bins, in kernel order (by column, then row).
    row : ndarray of int32
        ScAtt/Time row of each bin.
    column : ndarray of int64
        CDS column (raveled Em, Phi, PsiChi) of each bin.
    flat_index : ndarray of int64
        ``row * n_columns + column``: position in the full dataset.
    data_ptr : ndarray of int64, shape (n_columns + 1,)
        Bins of column c are ``data_ptr[c]:data_ptr[c+1]``.
    active_cols : ndarray of int64
        Columns with at least one non-empty bin.
    log_factorial : float
        ``sum ln(d_i!)`` over all bins (the constant of the Poisson likelihood).
    """

    def __init__(self, hist, n_rows, n_columns, what="data"):
        self.n_rows = int(n_rows)
        self.n_columns = int(n_columns)
        flat, counts = flat_nonzero(hist, (self.n_rows, self.n_columns), what)
        if np.any(counts < 0):
            first = flat[np.argmax(counts < 0)]
            raise CosiInputError(f"{what} has negative counts (first at flat bin {first})")
        row, column = np.divmod(flat, self.n_columns)
        order = np.lexsort((row, column))
        self.flat_index = flat[order]
        self.counts = counts[order]
        self.row = row[order].astype(np.int32)
        self.column = column[order]
        self.data_ptr = np.zeros(self.n_columns + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.column, minlength=self.n_columns), out=self.data_ptr[1:])
        self.active_cols = np.flatnonzero(np.diff(self.data_ptr)).astype(np.int64)
        self.log_factorial = float(gammaln(self.counts + 1).sum())
        self.total_counts = float(self.counts.sum())

    @property
    def nnz(self):
        """Number of non-empty bins."""
        return int(self.counts.shape[0])

    def to_dense(self, values=None):
        """Dense array (n_rows, n_columns) holding `values` (default: the counts) at the non-empty bins."""
        out = np.zeros(self.n_rows * self.n_columns)
        out[self.flat_index] = self.counts if values is None else values
        return out.reshape(self.n_rows, self.n_columns)
