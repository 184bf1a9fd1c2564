"""The response engine: sky image <-> expected counts in the Compton data space.

One object serves image deconvolution and the 3ML plugin. With a CCM ``C[s, j, nu]``
(local CDS, ScAtt or Time rows) or a Galactic-frame response (one row) it gives

- ``eps_i = sum_j R_ij x_j + sum_k b_k B_k,i`` at the non-empty data bins
  (the sparse-data path) or, when asked, everywhere (``expectation``);
- the total expected counts ``sum_i eps_i = sum_j X_j x_j + sum_k b_k sum_i B_k,i``
  from the exposure map ``X_j = sum_i R_ij`` (all bins, not only non-empty ones);
- the Poisson log-likelihood, the transpose product ``sum_i R_ij w_i`` and the
  background products ``sum_i B_k,i w_i`` for weights on the non-empty bins.

Here ``j`` runs over (sky pixel, Ei bin), ``R_ij`` includes the pixel solid angle
and the exposure time, so ``x`` is in ph cm-2 s-1 sr-1 and ``eps`` in counts.
"""
import copy
import logging
from dataclasses import dataclass

import numba
import numpy as np
from astropy import units as u
from histpy import Axes, Histogram

from ..binning import EXPOSURE_UNIT, IMAGE_UNIT, check_axes_match, dense_values
from ..errors import AxisMismatchError, CosiInputError
from .kernel_layout import column_chunks, tile_groups, tiled_rows
from .kernels import adjoint_at_bins, forward_at_bins
from .reductions import combine_rows, dot, poisson_log_likelihood
from .sky_mapping import CCMMapping, PixelMapping
from .sparse_data import SparseData, flat_nonzero, gather

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """One state (sky image and background norms) evaluated at the non-empty bins.

    Made by :meth:`ResponseEngine.evaluate`; :meth:`ResponseEngine.ratio_products`
    takes it back for the transpose products of ``d_i / eps_i``.

    Attributes
    ----------
    log_likelihood : float
        Poisson log-likelihood of the state.
    total_expected : float
        Expected counts summed over all bins.
    at_bins : object
        The expectations at the non-empty bins, where the engine keeps them (an array
        here; on a sharded engine, one reference per shard, left on the workers).
    """

    log_likelihood: float
    total_expected: float
    at_bins: object


class ResponseEngine:
    """Forward folding, transpose products and likelihood on one binned dataset.

    Parameters
    ----------
    response : ColumnResponse
        Column-compressed response [source pixel, Ei, Em, Phi, PsiChi].
    mapping : CCMMapping or PixelMapping
        Sky image -> source rows (a CCM for a local-CDS analysis, a PixelMapping
        for a Galactic-frame response).
    data : histpy.Histogram, optional
        Binned counts [row, Em, Phi, PsiChi] (row = ScAtt or Time) or
        [Em, Phi, PsiChi] for a single row. Needed for the sparse-data path.
    backgrounds : dict of str to histpy.Histogram, optional
        Background templates in counts, with the axes of `data`.
    model_axes : histpy.Axes, optional
        Axes [lb, Ei] of the sky image. By default the CCM's lb axis (or the
        response's source axis) and the response's Ei axis.
    dtype : numpy dtype
        Type of the source rows fed to the kernels (float32 halves cache traffic;
        sums are always accumulated in float64).
    """

    def __init__(self, response, mapping, data=None, backgrounds=None, model_axes=None, dtype=np.float32):
        self.response = response
        self.mapping = mapping
        self.dtype = np.dtype(dtype)
        self._row_buffers = {}
        self.cds_axes = Axes(list(response.axes[2:]))
        if isinstance(mapping, CCMMapping):
            mapping.check_source_axis(response.axes[0])
            default_sky_axis = mapping.model_axis
        else:
            if mapping.n_source_pix != response.axes[0].nbins:
                raise AxisMismatchError(f"sky mapping has {mapping.n_source_pix} pixels but the response source "
                                        f"axis {response.axes[0].label} has {response.axes[0].nbins}")
            default_sky_axis = response.axes[0]
        self.model_axes = model_axes if model_axes is not None else Axes([default_sky_axis, response.axes[1]])
        if self.model_axes[0].nbins != mapping.n_model_pix or self.model_axes[1].nbins != response.axes[1].nbins:
            raise AxisMismatchError(f"model axes {list(self.model_axes.labels)} of shape {self.model_axes.nbins} "
                                    f"do not match the mapping ({mapping.n_model_pix} pixels) and the response "
                                    f"Ei axis ({response.axes[1].nbins} bins)")
        self.n_rows = mapping.n_rows
        self.n_columns = response.n_columns
        self.exposure_map = mapping.exposure(response.effective_area)
        self.data = None
        self.data_axes = None
        self.background_names = []
        if data is not None:
            self.set_data(data, backgrounds or {})

    # ---- data ---------------------------------------------------------------------------------
    def _data_axes_of(self, hist, what):
        """Check a data-space histogram against the response and return its axes."""
        axes = hist.axes
        if axes.ndim == 3:
            rows = 1
        elif axes.ndim == 4:
            rows = axes[0].nbins
        else:
            raise AxisMismatchError(f"{what} must have axes [ScAtt|Time, Em, Phi, PsiChi] or [Em, Phi, PsiChi], "
                                    f"got {list(axes.labels)}")
        if rows != self.n_rows:
            raise AxisMismatchError(f"{what} axis {axes[0].label} has {rows} bins but the "
                                    f"{'CCM' if isinstance(self.mapping, CCMMapping) else 'response'} "
                                    f"has {self.n_rows} rows")
        check_axes_match(Axes(list(axes[-3:])), self.cds_axes, ["Em", "Phi", "PsiChi"], what, "response")
        return axes

    def set_data(self, data, backgrounds=None):
        """Register binned counts and background templates for the sparse-data path.

        Parameters
        ----------
        data : histpy.Histogram
            Counts with axes [row, Em, Phi, PsiChi] or [Em, Phi, PsiChi].
        backgrounds : dict of str to histpy.Histogram
            Templates (expected counts) with the same axes.
        """
        self.data_axes = self._data_axes_of(data, "data")
        self.data = SparseData(data, self.n_rows, self.n_columns, what="data")
        self._chunks = None  # the forward kernel's tasks, made at its first call
        self._tile_groups = None  # the transpose kernel's tasks, made at its first call
        self.background_names = list((backgrounds or {}).keys())
        self._bkg_at_bins = {}
        self._bkg_total = {}
        self._bkg_hist = {}
        self._bkg_row_totals = {}
        for name, hist in (backgrounds or {}).items():
            axes = self._data_axes_of(hist, f"background '{name}'")
            check_axes_match(axes, self.data_axes, list(axes.labels), f"background '{name}'", "data")
            at_bins, total = gather(hist, (self.n_rows, self.n_columns), self.data.flat_index,
                                    f"background '{name}'")
            self._bkg_at_bins[name] = at_bins
            self._bkg_total[name] = total
            self._bkg_hist[name] = hist
        logger.info("engine data: %d non-empty bins of %d (%.3f%%), %.0f counts, %d backgrounds",
                    self.data.nnz, self.n_rows * self.n_columns,
                    100 * self.data.nnz / (self.n_rows * self.n_columns), self.data.total_counts,
                    len(self.background_names))

    def with_data(self, data, backgrounds=None):
        """A new engine on other counts, sharing this one's response, mapping and exposure.

        Parameters
        ----------
        data : histpy.Histogram
            Counts with this engine's data axes.
        backgrounds : dict of str to histpy.Histogram, optional
            Templates; by default this engine's.
        """
        new = copy.copy(self)
        new._row_buffers = {}  # each engine its own kernel buffers
        new.set_data(data, self._bkg_hist if backgrounds is None else backgrounds)
        return new

    def _require_data(self):
        if self.data is None:
            raise CosiInputError("this engine has no data: call set_data(data, backgrounds) first")

    # ---- sky images ---------------------------------------------------------------------------
    def image_values(self, image):
        """Sky image as a float64 array [n_pix, n_ei] in ph cm-2 s-1 sr-1.

        Parameters
        ----------
        image : histpy.Histogram or ndarray
            A Histogram with axes matching ``model_axes`` (its unit converted),
            or an array of shape [n_pix, n_ei] (or [n_pix] with one Ei bin).
        """
        if isinstance(image, Histogram):
            check_axes_match(image.axes, self.model_axes, list(self.model_axes.labels), "image", "engine model")
            if image.unit is not None and not image.unit.is_equivalent(IMAGE_UNIT) \
                    and image.unit != u.dimensionless_unscaled:
                raise CosiInputError(f"image unit '{image.unit}' is not an intensity ({IMAGE_UNIT})")
            values = dense_values(image, IMAGE_UNIT)
        else:
            values = np.asarray(getattr(image, "value", image), dtype=np.float64)
            if values.ndim == 1:
                values = values[:, None]
        if values.shape != tuple(self.model_axes.nbins):
            raise AxisMismatchError(f"image of shape {values.shape} does not match the model axes "
                                    f"{list(self.model_axes.labels)} {tuple(self.model_axes.nbins)}")
        if not np.all(np.isfinite(values)):
            raise CosiInputError("image contains NaN or infinite values")
        return values

    def image_histogram(self, values, unit=IMAGE_UNIT):
        """Wrap an array [n_pix, n_ei] as a Histogram over ``model_axes``."""
        return Histogram(self.model_axes, contents=np.asarray(values), unit=unit)

    def source_rows(self, image, dtype=None):
        """Source rows ``M[row, k]`` (``k = nu * n_ei + e``) of a sky image, in `dtype` (default: the engine's)."""
        return self.mapping.forward(self.image_values(image), dtype=dtype or self.dtype)

    # ---- the sparse-data path -----------------------------------------------------------------
    def sky_expectation_at_bins(self, image=None, rows=None, dtype=None):
        """Expected sky counts at the non-empty data bins.

        Parameters
        ----------
        image : histpy.Histogram or ndarray, optional
            Sky image (see :meth:`image_values`).
        rows : ndarray, optional
            Precomputed source rows (e.g. of a point source); used instead of `image`.
        dtype : numpy dtype, optional
            Type of the source rows in the kernel (default: the engine's). float64
            makes the result a smooth function of the image to ~1e-15, which
            minimizers need; float32 rounds each row value to ~6e-8.
        """
        self._require_data()
        return self._add_sky_at_bins(np.zeros(self.data.nnz), image, rows, dtype)

    def _add_sky_at_bins(self, out, image=None, rows=None, dtype=None):
        """Add the expected sky counts at the non-empty bins to `out` (float64, shape (nnz,)) in place."""
        tiles = self.response.tiled_blocks()
        dtype = dtype or self.dtype
        if rows is None:
            # the rows in the requested type straight from the float64 sums: rounding them to the engine's
            # type first would undo the smoothness that float64 is asked for
            tiled = self.mapping.forward_tiled(self.image_values(image), self.response.inverse_order,
                                               self._row_buffer("rows", tiles, dtype))
        else:
            tiled = tiled_rows(self.response, tiles, rows, dtype)
        if self._chunks is None:
            # two chunks per thread: the columns' work is spread unevenly over the sky
            self._chunks = column_chunks(self.data, self.response.col_ptr, 2 * numba.get_num_threads())
        forward_at_bins(tiles.tile_ptr, tiles.local_block, tiles.values, self.data.active_cols, self._chunks,
                        self.data.data_ptr, self.data.row, tiled, out)
        return out

    def _row_buffer(self, use, tiles, dtype):
        """A tile-major row array kept between calls: a fresh one costs a page fault per 4 kB at every fold."""
        shape = (tiles.n_tiles, self.n_rows, tiles.tile_width)
        key = (use, np.dtype(dtype).str, shape)
        if key not in self._row_buffers:
            self._row_buffers[key] = np.zeros(shape, dtype=dtype)
        return self._row_buffers[key]

    def background_at_bins(self, bkg_norms=None):
        """Summed background at the non-empty bins for the given normalizations (default 1)."""
        self._require_data()
        return self._add_background_at_bins(np.zeros(self.data.nnz), bkg_norms)

    def _add_background_at_bins(self, out, bkg_norms=None):
        """Add the backgrounds at the non-empty bins to `out` (float64, shape (nnz,)) in place, in template order."""
        norms = self.background_norms(bkg_norms)
        for name in self.background_names:
            norm = norms[name]
            out += (norm[self.data.row] if np.ndim(norm) else norm) * self._bkg_at_bins[name]
        return out

    # ---- arrays kept at the bins: the 3ML plugin's cached folds -------------------------------------
    def sky_folds_at_bins(self, images=None, rows=None):
        """Expected sky counts at the non-empty bins of each of a stack of images (or of source rows).

        Folded with float64 rows (a smooth likelihood for the minimizer) and kept where the
        bins live: here an array of shape (k, nnz); on an engine whose bins live elsewhere
        (:class:`~cosi_imaging_plugin.distributed.ShardedEngine`) a handle to their parts
        there. :meth:`log_likelihood_of_terms` combines them; :meth:`kept_values` reads them.

        Parameters
        ----------
        images : sequence of ndarray, optional
            Sky images [n_pix, n_ei].
        rows : sequence of ndarray, optional
            Source rows [n_rows, n_source], instead of `images`.
        """
        self._require_data()
        stack = images if rows is None else rows
        out = np.empty((len(stack), self.data.nnz))
        for k, item in enumerate(stack):
            out[k] = (self.sky_expectation_at_bins(item, dtype=np.float64) if rows is None
                      else self.sky_expectation_at_bins(rows=item, dtype=np.float64))
        return out

    def keep_at_bins(self, values):
        """Arrays at the non-empty bins, shape (k, nnz), kept where the bins live (see :meth:`sky_folds_at_bins`)."""
        self._require_data()
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.data.nnz:
            raise CosiInputError(f"values at the bins of shape {values.shape}, expected (k, {self.data.nnz})")
        return values

    def kept_values(self, kept):
        """The values of arrays kept at the bins, shape (k, nnz)."""
        return kept

    def log_likelihood_of_terms(self, terms, bkg_norms=None, total_expected=0.0, constant=None):
        """Poisson log-likelihood of the expectations ``sum_t weights_t @ kept_t`` plus the backgrounds.

        Parameters
        ----------
        terms : sequence of (ndarray, kept)
            Weights (k,) and arrays kept at the bins (k, nnz) (:meth:`sky_folds_at_bins`,
            :meth:`keep_at_bins`), e.g. a source's folds per Ei bin and its bin fluxes.
        bkg_norms : dict, optional
            Background normalizations (default 1).
        total_expected, constant
            As for :meth:`log_likelihood_from`.
        """
        self._require_data()
        eps = np.zeros(self.data.nnz)
        for weights, kept in terms:
            eps += combine_rows(np.asarray(weights, dtype=np.float64), kept)
        return self.log_likelihood_from(self._add_background_at_bins(eps, bkg_norms), total_expected, constant)

    def background_norms(self, bkg_norms=None):
        """Normalizations for every background (1 where not given); unknown names are errors.

        A normalization is a number, or an array with one value per ScAtt/Time row
        (a template normalized separately in groups of rows).
        """
        bkg_norms = dict(bkg_norms or {})
        unknown = set(bkg_norms) - set(self.background_names)
        if unknown:
            raise CosiInputError(f"unknown background name(s) {sorted(unknown)}; known: {self.background_names}")
        out = {}
        for name in self.background_names:
            value = bkg_norms.get(name, 1.0)
            if np.ndim(value) == 0:
                out[name] = float(value)
                continue
            value = np.asarray(value, dtype=np.float64)
            if value.shape != (self.n_rows,):
                raise CosiInputError(f"normalization of background '{name}' has shape {value.shape}: expected a "
                                     f"number or one value per row, shape ({self.n_rows},)")
            out[name] = value
        return out

    def background_template_at_bins(self, name):
        """Template of background `name` at the non-empty bins."""
        return self._bkg_at_bins[name]

    def background_total(self, name):
        """Sum of background template `name` over all bins."""
        return self._bkg_total[name]

    def background_row_totals(self, name):
        """Sum of background template `name` over the CDS bins of each ScAtt/Time row, shape (n_rows,)."""
        if name not in self._bkg_row_totals:
            flat, values = self.background_nonzero(name)
            self._bkg_row_totals[name] = np.bincount(flat // self.n_columns, weights=values, minlength=self.n_rows)
        return self._bkg_row_totals[name]

    def background_nonzero(self, name):
        """Flat indices ``row * n_columns + column`` and values of the non-zero bins of background `name`."""
        self._require_data()
        if name not in self._bkg_hist:
            raise CosiInputError(f"unknown background name {name!r}; known: {self.background_names}")
        return flat_nonzero(self._bkg_hist[name], (self.n_rows, self.n_columns), f"background '{name}'")

    def _background_total(self, name, norm):
        """Expected counts of background `name` over all bins for a normalization (number or per row)."""
        if np.ndim(norm):
            return float(np.dot(norm, self.background_row_totals(name)))
        return norm * self._bkg_total[name]

    def expectation_at_bins(self, image, bkg_norms=None, rows=None):
        """Expected counts (sky + backgrounds) at the non-empty data bins (of `rows` instead of `image` if given)."""
        return self._add_sky_at_bins(self.background_at_bins(bkg_norms), image, rows)

    def total_expected(self, image, bkg_norms=None):
        """Expected counts summed over all data bins, from the exposure map."""
        sky = float(np.sum(self.exposure_map * self.image_values(image)))
        norms = self.background_norms(bkg_norms)
        return sky + sum(self._background_total(n, norms[n]) for n in self.background_names)

    def log_likelihood_from(self, expectation_at_bins, total_expected, constant=None):
        """Poisson log-likelihood ``sum d ln eps - sum eps - sum ln d!``.

        Parameters
        ----------
        expectation_at_bins : ndarray, shape (nnz,)
            Expected counts at the non-empty bins.
        total_expected : float
            Expected counts summed over all bins.
        constant : float, optional
            Subtracted instead of ``sum ln d!`` (e.g. the saturated log-likelihood's
            ``sum d ln d - d``, which keeps the result small). One constant, subtracted
            once: a minimizer's finite differences see the rounding of a number of the
            result's size, not of the factorials'.

        Raises
        ------
        CosiInputError
            If an expectation is zero or negative where the data are not.
        """
        self._require_data()
        eps = np.asarray(expectation_at_bins)
        constant = self.data.log_factorial if constant is None else constant
        value, q = poisson_log_likelihood(self.data.counts, eps, total_expected, constant)
        if q >= 0:
            raise CosiInputError(
                f"expected counts {eps[q]:g} at a bin with {self.data.counts[q]:g} counts "
                f"({self.describe_bin(q)}): the model cannot produce the observed data")
        return value

    def log_likelihood(self, image, bkg_norms=None):
        """Poisson log-likelihood of the data for a sky image and background normalizations."""
        return self.log_likelihood_from(self.expectation_at_bins(image, bkg_norms),
                                        self.total_expected(image, bkg_norms))

    def evaluate(self, image, bkg_norms=None, constant=None):
        """The expectations of a state at the non-empty bins and its log-likelihood, in one call.

        With :meth:`ratio_products`, the step of every EM iteration: an engine whose bins
        live elsewhere (:class:`~cosi_imaging_plugin.distributed.ShardedEngine`) keeps the
        expectations there and returns only numbers.

        Parameters
        ----------
        image : histpy.Histogram or ndarray
            Sky image (see :meth:`image_values`).
        bkg_norms : dict, optional
            Background normalizations (default 1).
        constant : float, optional
            As for :meth:`log_likelihood_from`.

        Returns
        -------
        Evaluation
        """
        self._require_data()
        at_bins = self.expectation_at_bins(image, bkg_norms)
        total = self.total_expected(image, bkg_norms)
        return Evaluation(self.log_likelihood_from(at_bins, total, constant), total, at_bins)

    def ratio_products(self, evaluation):
        """Transpose and background products of the ratios ``w_i = d_i / eps_i`` of an evaluated state.

        Parameters
        ----------
        evaluation : Evaluation
            From this engine's :meth:`evaluate`.

        Returns
        -------
        (ndarray, dict)
            ``sum_i R_ij w_i`` [n_pix, n_ei] and ``{background: sum_i B_k,i w_i}``.
        """
        weights = self.data.counts / evaluation.at_bins
        return self.transpose_product(weights), self.background_products(weights)

    def evaluation_at_bins(self, evaluation):
        """The expectations of an evaluated state at the non-empty bins, as one array (nnz,)."""
        return evaluation.at_bins

    def transpose_product(self, weights):
        """``sum_i R_ij w_i`` over the non-empty bins, as an array [n_pix, n_ei].

        Parameters
        ----------
        weights : ndarray, shape (nnz,)
            One weight per non-empty bin in kernel order (e.g. ``d_i / eps_i``).
        """
        return self.mapping.adjoint_tiled(self._transpose_rows(weights), self.response.inverse_order)

    def _transpose_rows(self, weights):
        """``sum_i R_ij w_i`` in the source-row space, tile-major (n_tiles, n_rows, tile_width), in a kept buffer."""
        self._require_data()
        # the kernel multiplies in the rows' type (the engine's): weights of that type are exact and lighter
        weights = np.ascontiguousarray(weights, dtype=self.dtype)
        if weights.shape != (self.data.nnz,):
            raise CosiInputError(f"weights of shape {weights.shape}, expected ({self.data.nnz},)")
        tiles = self.response.tiled_blocks()
        if self._tile_groups is None:
            self._tile_groups = tile_groups(tiles, self.data, numba.get_num_threads())
        tiled = self._row_buffer("transpose", tiles, self.dtype)
        tiled.fill(0)
        adjoint_at_bins(self._tile_groups, tiles.tile_ptr, tiles.local_block, tiles.values, self.data.active_cols,
                        self.data.data_ptr, self.data.row, weights, tiled)
        return tiled

    def background_products(self, weights):
        """``sum_i B_k,i w_i`` over the non-empty bins for every background k."""
        self._require_data()
        weights = np.ascontiguousarray(weights, dtype=np.float64)
        return {name: float(dot(self._bkg_at_bins[name], weights)) for name in self.background_names}

    def describe_bin(self, q):
        """Human-readable position of non-empty bin `q` (row and CDS indices)."""
        row = int(self.data.row[q])
        em, phi, psi = np.unravel_index(int(self.data.column[q]), self.response.cds_shape)
        label = self.data_axes[0].label if self.data_axes.ndim == 4 else "row"
        return f"{label}={row}, Em={em}, Phi={phi}, PsiChi={psi}"

    # ---- dense results (only when asked) --------------------------------------------------------
    def expectation(self, image=None, bkg_norms=None, dense=True, rows=None):
        """Expected counts in every data bin, as a Histogram over the data axes.

        Parameters
        ----------
        image : histpy.Histogram or ndarray, optional
            Sky image.
        bkg_norms : dict, optional
            Background normalizations (default 1 for each).
        dense : bool
            Must be True: this materializes all bins (use the ``*_at_bins``
            methods for the sparse path).
        rows : ndarray, optional
            Source rows [n_rows, n_source] used instead of `image` (e.g. of point sources
            folded along their path).
        """
        if not dense:
            raise CosiInputError("expectation() materializes every bin; use expectation_at_bins() for the "
                                 "sparse path")
        sky = self.response.fold(self._rows_of(image, rows))
        norms = self.background_norms(bkg_norms)
        for name in self.background_names:
            values = np.zeros(self.n_rows * self.n_columns)
            flat, vals = self.background_nonzero(name)
            values[flat] = vals
            norm = norms[name]
            sky += (norm[:, None] if np.ndim(norm) else norm) * values.reshape(self.n_rows, self.n_columns)
        axes = self.data_axes
        if axes is None:
            row_axis = getattr(self.mapping, "row_axis", None)
            axes = Axes(list(self.cds_axes) if row_axis is None else [row_axis, *self.cds_axes])
        return Histogram(axes, contents=sky.reshape(tuple(axes.nbins)))

    def expectation_cds(self, image=None, bkg_norms=None, rows=None):
        """Expected counts summed over the ScAtt/Time rows, per CDS bin [Em, Phi, PsiChi].

        Cheap at any scale: the rows are summed before folding (one sparse product).
        ``rows`` (source rows) may be given instead of `image`, as for :meth:`expectation`.
        """
        rows = self._rows_of(image, rows).sum(axis=0, keepdims=True)
        out = self.response.fold(rows).reshape(self.response.cds_shape)
        if self.data is not None:
            norms = self.background_norms(bkg_norms)
            for name in self.background_names:
                flat, values = self.background_nonzero(name)
                norm = norms[name]
                weights = values * (norm[flat // self.n_columns] if np.ndim(norm) else norm)
                out += np.bincount(flat % self.n_columns, weights=weights,
                                   minlength=self.n_columns).reshape(self.response.cds_shape)
        return out

    def _rows_of(self, image, rows):
        """Source rows in float64: the given ones, or those of `image`."""
        if rows is None:
            if image is None:
                raise CosiInputError("give a sky image or source rows")
            return self.mapping.forward(self.image_values(image))
        rows = np.asarray(rows, dtype=np.float64)
        if rows.shape != (self.n_rows, self.response.n_source):
            raise CosiInputError(f"source rows of shape {rows.shape}, expected ({self.n_rows}, "
                                 f"{self.response.n_source})")
        return rows

    def data_cds(self):
        """Observed counts summed over the ScAtt/Time rows, per CDS bin [Em, Phi, PsiChi]."""
        self._require_data()
        return np.bincount(self.data.column, weights=self.data.counts,
                           minlength=self.n_columns).reshape(self.response.cds_shape)

    def exposure_histogram(self):
        """Exposure map ``X_j = sum_i R_ij`` as a Histogram over the model axes (cm2 s sr)."""
        return Histogram(self.model_axes, contents=self.exposure_map, unit=EXPOSURE_UNIT)

    # ---- construction helpers -------------------------------------------------------------------
    @classmethod
    def from_ccm(cls, response, ccm, data=None, backgrounds=None, dtype=np.float32):
        """Engine for a local-CDS analysis: a compressed response and a CCM histogram."""
        return cls(response, CCMMapping(ccm), data=data, backgrounds=backgrounds, dtype=dtype)

    @classmethod
    def from_galactic_response(cls, response, data=None, backgrounds=None, dtype=np.float32):
        """Engine for a Galactic-CDS analysis with a precomputed Galactic-frame response (cm2 s)."""
        return cls(response, PixelMapping(response.axes[0].nbins), data=data, backgrounds=backgrounds,
                   dtype=dtype)
