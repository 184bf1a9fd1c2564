"""Excluded data: the Compton data space bins whose cones reach an excluded sky region.

An exclusion mask is drawn on the sky, but COSI's statistics live in the Compton data
space, where a source's counts lie along the cones through its position, broadened by
the angular resolution (ARM) and the response's tails. :class:`ExcludedBins` turns a
sky mask into the data-space bins to leave out: a uniform image over the masked pixels
is folded through the response (and, in the spacecraft frame, each row's attitude),
and the bins it reaches most are excluded until what the kept bins receive is at most
a fraction ``leakage`` of its folded counts. The cut follows the response's ARM
rather than a fixed cone width, and it holds in every row of the data.

The kept bins give what an estimator needs on the excluded data: the non-empty bins to
sum over (:meth:`ExcludedBins.kept_at_bins`), the background templates' totals over
the kept bins, empty ones included (:meth:`ExcludedBins.kept_template_row_totals`), and
a test source's expected counts over the kept bins, per row and response pixel
(:meth:`ExcludedBins.kept_area`).
"""
import dataclasses
import logging

import numba
import numpy as np

from ..errors import CosiInputError

logger = logging.getLogger(__name__)

#: Dense fold values held at once while a mask is drawn (float64 numbers): bounded temporaries at any scale.
_FOLD_CHUNK_VALUES = 2 ** 23
#: Resolution of the contamination histogram that places the cut (decades per bin).
_LOG_STEP = 0.01


@dataclasses.dataclass(frozen=True)
class ExcludedBins:
    """Data-space bins left out because they see an excluded sky region (module docstring).

    Attributes
    ----------
    keys : ndarray of int64
        Sorted flat indices ``row * n_columns + column`` of the excluded bins.
    n_rows, n_columns : int
        Shape of the data space (ScAtt/Time rows by CDS columns).
    sky_mask : ndarray of bool
        The excluded model-grid pixels.
    leakage : float
        Largest fraction of a uniform source over the excluded region that the kept bins receive.
    """

    keys: np.ndarray
    n_rows: int
    n_columns: int
    sky_mask: np.ndarray
    leakage: float

    @classmethod
    def nothing(cls, engine):
        """No bin excluded."""
        return cls(np.zeros(0, dtype=np.int64), engine.n_rows, engine.n_columns,
                   np.zeros(engine.model_axes[0].npix, dtype=bool), 0.0)

    @classmethod
    def of_sky_region(cls, engine, sky_mask, leakage=1e-3):
        """The bins that see the masked sky, for an engine (module docstring).

        Parameters
        ----------
        engine : ResponseEngine
        sky_mask : array_like of bool, shape (n_model_pix,)
            Excluded pixels of the model grid.
        leakage : float
            Fraction of a uniform source over the region left in the kept bins, in (0, 1).
        """
        sky_mask = np.asarray(sky_mask, dtype=bool)
        npix = engine.model_axes[0].npix
        if sky_mask.shape != (npix,):
            raise CosiInputError(f"sky mask of shape {sky_mask.shape}: expected one value per model-grid pixel "
                                 f"({npix},)")
        if not 0.0 < leakage < 1.0:
            raise CosiInputError(f"leakage must be in (0, 1), got {leakage}")
        if not sky_mask.any():
            return cls.nothing(engine)
        image = np.repeat(sky_mask[:, None].astype(np.float64), engine.model_axes[1].nbins, axis=1)
        rows = engine.mapping.forward(image)
        step = max(1, _FOLD_CHUNK_VALUES // engine.n_columns)
        chunks = [slice(start, min(start + step, engine.n_rows)) for start in range(0, engine.n_rows, step)]
        # pass 1: the folded counts by size; pass 2: the bins above the cut
        edges = np.arange(-320.0, 310.0 + _LOG_STEP, _LOG_STEP)
        weight = np.zeros(edges.size - 1)
        for rows_chunk in chunks:
            folded = engine.response.fold(rows[rows_chunk]).ravel()
            folded = folded[folded > 0]
            weight += np.histogram(np.log10(folded), bins=edges, weights=folded)[0]
        if weight.sum() <= 0:
            raise CosiInputError("the excluded sky region is outside the response's field of view: no data bin "
                                 "sees it")
        kept_weight = np.cumsum(weight) <= leakage * weight.sum()
        cut = 10.0 ** edges[np.count_nonzero(kept_weight)]  # kept bins: below the cut, at most `leakage` in all
        keys = []
        for rows_chunk in chunks:
            folded = engine.response.fold(rows[rows_chunk])
            r, c = np.nonzero(folded >= cut)
            keys.append((r + rows_chunk.start).astype(np.int64) * engine.n_columns + c)
        keys = np.sort(np.concatenate(keys))
        logger.info("exclusion of %d sky pixels: %d of %d data-space bins excluded (leakage %g)",
                    int(sky_mask.sum()), keys.size, engine.n_rows * engine.n_columns, leakage)
        return cls(keys, engine.n_rows, engine.n_columns, sky_mask.copy(), float(leakage))

    @property
    def n_excluded(self):
        """Number of excluded bins."""
        return int(self.keys.size)

    def _check(self, engine):
        if (engine.n_rows, engine.n_columns) != (self.n_rows, self.n_columns):
            raise CosiInputError(f"excluded bins drawn for {self.n_rows} rows x {self.n_columns} CDS columns, "
                                 f"used on data of {engine.n_rows} x {engine.n_columns}")

    def excluded(self, flat):
        """Whether each flat bin index ``row * n_columns + column`` is excluded."""
        flat = np.asarray(flat, dtype=np.int64)
        if self.keys.size == 0:
            return np.zeros(flat.shape, dtype=bool)
        where = np.minimum(np.searchsorted(self.keys, flat), self.keys.size - 1)
        return self.keys[where] == flat

    def kept_at_bins(self, engine):
        """Whether each non-empty data bin of `engine` is kept, shape (nnz,)."""
        self._check(engine)
        data = engine.data
        return ~self.excluded(data.row.astype(np.int64) * self.n_columns + data.column)

    def kept_template_row_totals(self, engine, name):
        """Background template `name` summed over the kept bins of each row (empty bins included), (n_rows,)."""
        self._check(engine)
        flat, values = engine.background_nonzero(name)
        keep = ~self.excluded(flat)
        return np.bincount(flat[keep] // self.n_columns, weights=values[keep], minlength=self.n_rows)

    def kept_area(self, response, spectrum, columns=None):
        """Expected counts per unit test norm over the kept bins, per row and response pixel [n_rows, n_nu].

        Parameters
        ----------
        response : ColumnResponse
        spectrum : ndarray, shape (n_ei,)
            Test flux in each Ei bin.
        columns : ndarray of bool, shape (n_columns,), optional
            The CDS columns used (default all).
        """
        full = response.area_over(columns) @ np.asarray(spectrum, dtype=np.float64)
        out = np.tile(full, (self.n_rows, 1))
        keys = self.keys
        if columns is not None:
            keys = keys[np.asarray(columns, dtype=bool)[keys % self.n_columns]]
        if keys.size:
            nu_of, e_of = np.divmod(response.order, response.axes[1].nbins)
            row_ptr = np.searchsorted(keys // self.n_columns, np.arange(self.n_rows + 1))
            _subtract_excluded(keys % self.n_columns, row_ptr, response.col_ptr, response.block.astype(np.int64),
                               response.values, response.block_size, nu_of, e_of,
                               np.asarray(spectrum, dtype=np.float64), out)
        return np.maximum(out, 0.0)  # rounding of the difference, never a negative exposure


@numba.njit(parallel=True, cache=True, nogil=True)
def _subtract_excluded(columns, row_ptr, col_ptr, block, values, block_size, nu_of, e_of, spectrum, out):
    """``out[s, nu] -= sum_(excluded c of row s) sum_e R[(nu, e), c] F_e``, rows in parallel."""
    n_internal = nu_of.size
    for s in numba.prange(row_ptr.size - 1):
        for i in range(row_ptr[s], row_ptr[s + 1]):
            c = columns[i]
            for b in range(col_ptr[c], col_ptr[c + 1]):
                first = block[b] * block_size
                for lane in range(block_size):
                    entry = first + lane
                    if entry >= n_internal:
                        break
                    out[s, nu_of[entry]] -= values[b, lane] * spectrum[e_of[entry]]
