"""Test-statistic maps: the maximum-likelihood norm of a test source at every position of a HEALPix grid.

:class:`TSMapEstimator` follows gammapy's estimator of the same name: configure it, then
``run(dataset)``; the :class:`TSMapResult` gives each map by name (``result["ts"]``).

At each position ``p`` the expected counts are the null model's ``b_q`` plus ``a`` times the
test source's ``s_qp`` (:mod:`.norm_kernels`), and the Poisson log-likelihood ratio

``L_p(a) = sum_q n_q log(1 + a s_qp / b_q) - a S_p``

(``S_p`` the test source's expected counts over all bins, empty ones included) is maximized
in ``a`` by Newton's method for all positions at once: each iteration is one compiled pass
over the non-empty bins. Newton steps on the concave ``L_p`` approach the maximum from
below without overshooting; a step past the smallest norm keeping every bin's expectation
positive is halved back.

The norm is free to go negative. ``ts`` is ``2 L_p(a)`` at the best norm constrained to
``a >= 0`` (zero where the best norm is negative), so on source-free data it follows
``1/2 chi2_0 + 1/2 chi2_1``; ``sqrt_ts`` is the square root of ``2 L_p`` at the free best
norm, signed by the norm, so it follows a standard normal.
"""
import dataclasses
import logging

import healpy as hp
import numba
import numpy as np
from astropy import units as u
from histpy import HealpixAxis, Histogram
from mhealpy import HealpixMap
from scipy import sparse, stats
from tqdm.auto import tqdm

from .._atomic import atomic_path
from ..binning import check_nside, normalize_scheme
from ..datasets import COSIDataset
from ..distributed import ShardedEngine
from ..errors import CosiInputError
from ..sky.spectra import integrate_spectrum
from ..threeml import COSIImagingLike
from .exclusion import ExcludedBins
from .kernel_mapping import check_kernel, kernel_mapping
from .norm_kernels import INFORMATION, LOG_RATIO, SCORE, chunk_bounds, norm_sums
from .sharded_terms import ShardedTerms

logger = logging.getLogger(__name__)

#: Maps every run gives.
MAPS = ("ts", "sqrt_ts", "norm", "norm_err", "flux", "flux_err", "npred_excess", "niter", "success")
#: Optional maps and the ``selection_optional`` key that asks for them.
OPTIONAL_MAPS = {"errn-errp": ("norm_errn", "norm_errp"), "ul": ("norm_ul", "flux_ul")}


@dataclasses.dataclass
class _Terms:
    """What one dataset contributes to every position's likelihood (see :func:`_dataset_terms`)."""

    arrays: tuple
    n_nu: int
    #: Test source's expected counts over all (selected) bins per unit norm, per position.
    exposure: np.ndarray
    n_chunks: int
    along_path: bool

    def sums(self, norms, with_log):
        """(score, information, log ratio) summed over the bins for trial norms [n_trials, n_pos], and min b/s."""
        sums = np.empty((self.n_chunks, norms.shape[0], 3, norms.shape[1]))
        ratio_min = np.empty((self.n_chunks, norms.shape[1]))
        norm_sums(*self.arrays, self.n_nu, norms, with_log, sums, ratio_min)
        return sums.sum(axis=0), ratio_min.min(axis=0)


class TSMapEstimator:
    """TS map of a test source over a HEALPix grid (module docstring).

    Parameters
    ----------
    spectrum : astromodels spectral function
        The test source's spectrum; its norm scales it (``flux`` is the norm times the
        spectrum's integral over the response's Ei range, ph cm-2 s-1).
    kernel : {'point', 'gaussian', 'disk'}
        Shape of the test source.
    width : float, optional
        Gaussian sigma or disk radius in deg (extended kernels).
    nside : int
        NSIDE of the test grid.
    scheme : {'ring', 'nested'}
        Scheme of the test grid.
    em_channels : slice or list of int, optional
        Measured-energy (Em) bins used (default all).
    selection_optional : list of str, optional
        Further maps: ``"errn-errp"`` (norm_errn, norm_errp from the likelihood profile)
        and ``"ul"`` (norm_ul, flux_ul); ``"all"`` for both.
    n_sigma : float
        Profile errors at ``2 delta L = n_sigma**2``.
    ul_confidence : float
        One-sided confidence of the upper limit (0.95: ``2 delta L = 2.71`` above the best norm).
    rtol : float
        Convergence: a position is done when Newton's step is below ``rtol`` times its norm error.
    max_niter : int
        Newton iterations at most.
    path : bool
        Fold point test sources along their path when the dataset knows its attitudes (as the
        3ML plugin does); False folds them on the model grid.

    Examples
    --------
    >>> from astromodels import Powerlaw
    >>> estimator = TSMapEstimator(Powerlaw(K=1e-3, index=-2, piv=500), kernel="point", nside=16)  # doctest: +SKIP
    >>> result = estimator.run(dataset)                                                             # doctest: +SKIP
    >>> result["sqrt_ts"]                                                                           # doctest: +SKIP
    """

    def __init__(self, spectrum, kernel="point", width=None, nside=16, scheme="ring", em_channels=None,
                 selection_optional=None, n_sigma=1.0, ul_confidence=0.95, rtol=1e-3, max_niter=30, path=True):
        self._keywords = dict(spectrum=spectrum, kernel=kernel, width=width, nside=nside, scheme=scheme,
                              em_channels=em_channels, selection_optional=selection_optional, n_sigma=n_sigma,
                              ul_confidence=ul_confidence, rtol=rtol, max_niter=max_niter, path=path)
        if not callable(spectrum):
            raise CosiInputError(f"spectrum must be an astromodels spectral function, got {type(spectrum).__name__}")
        self.spectrum = spectrum
        self.kernel, self.width = check_kernel(kernel, width)
        self.scheme = normalize_scheme(scheme)
        self.nside = check_nside(nside, self.scheme, "nside")
        self.em_channels = em_channels
        self.selection_optional = _selection(selection_optional)
        if not n_sigma > 0:
            raise CosiInputError(f"n_sigma must be positive, got {n_sigma}")
        if not 0.5 < ul_confidence < 1:
            raise CosiInputError(f"ul_confidence must be in (0.5, 1), got {ul_confidence}")
        self.n_sigma, self.ul_confidence = float(n_sigma), float(ul_confidence)
        self.rtol, self.max_niter, self.path = float(rtol), int(max_niter), bool(path)

    @property
    def axis(self):
        """The HEALPix axis of the maps (Galactic, label ``lb``)."""
        return HealpixAxis(nside=self.nside, scheme=self.scheme, coordsys="galactic", label="lb")

    def run(self, datasets, pixels=None, null_model=None, background_norms=None, excluded=None, progress=True):
        """Compute the maps.

        Parameters
        ----------
        datasets : COSIDataset, COSIImagingLike or a list of them
            Fitted jointly (their likelihoods add). A plugin brings its current model and
            background norms as the null model; a dataset its backgrounds at
            `background_norms` plus the sources of `null_model`.
        pixels : array_like of int, optional
            Test positions: pixels of the test grid (default all); the maps are NaN elsewhere.
        null_model : astromodels.Model, optional
            Fixed sources of the null model (datasets only).
        background_norms : dict, optional
            Background normalizations of the null model (datasets only; default 1).
        excluded : ExcludedBins or list of them, optional
            Data-space bins left out of every dataset's likelihood (one per dataset, None for none):
            the map of the data clear of an excluded sky region.
        progress : bool
            Show a progress bar over the Newton iterations.

        Returns
        -------
        TSMapResult
        """
        pixels = np.arange(self.axis.npix) if pixels is None else np.unique(np.asarray(pixels, dtype=np.int64))
        if pixels.size == 0 or pixels.min() < 0 or pixels.max() >= self.axis.npix:
            raise CosiInputError(f"test pixels must be in [0, {self.axis.npix}) for NSIDE {self.nside}")
        directions = np.array(hp.pix2vec(self.nside, pixels, nest=self.axis.is_nested)).T
        datasets = datasets if isinstance(datasets, (list, tuple)) else [datasets]
        excluded = excluded if isinstance(excluded, (list, tuple)) else [excluded] * len(datasets)
        if len(excluded) != len(datasets):
            raise CosiInputError(f"{len(excluded)} sets of excluded bins for {len(datasets)} datasets")
        terms = [self._dataset_terms(d, directions, null_model, background_norms, e)
                 for d, e in zip(datasets, excluded)]
        maps = self._fit(terms, progress)
        full = {name: np.full(self.axis.npix, np.nan) for name in maps}
        for name, values in maps.items():
            full[name][pixels] = values
        flux_unit = float(np.sum(self._fluxes(terms_ei_edges(datasets[0]))))
        full["flux"] = full["norm"] * flux_unit
        full["flux_err"] = full["norm_err"] * flux_unit
        if "norm_ul" in full:
            full["flux_ul"] = full["norm_ul"] * flux_unit
        meta = {"kernel": self.kernel, "width_deg": self.width, "spectrum": self.spectrum.name,
                "em_channels": _channels_text(self.em_channels), "along_path": all(t.along_path for t in terms),
                "flux_per_norm": flux_unit, "n_datasets": len(datasets)}
        return TSMapResult(self.axis, full, pixels, meta)

    def refine(self, datasets, coarse, threshold=None, top=None, nside=None, **run_keywords):
        """Refine a map where it matters: the children of its pixels above a TS threshold (or its top ones).

        Parameters
        ----------
        datasets : as for :meth:`run`
        coarse : TSMapResult
            A map of this estimator (at a coarser NSIDE).
        threshold : float, optional
            Refine every pixel with ``ts >= threshold``.
        top : int, optional
            Refine the `top` pixels of highest TS (with `threshold`, those of them above it).
        nside : int, optional
            NSIDE of the refined pixels (default twice the coarse one).
        **run_keywords
            Passed to :meth:`run` (``null_model``, ``background_norms``, ``progress``).

        Returns
        -------
        MultiOrderTSMap
        """
        if threshold is None and top is None:
            raise CosiInputError("refine needs a TS threshold, a number of top pixels, or both")
        ts = coarse.values("ts")[coarse.pixels]
        chosen = coarse.pixels[np.isfinite(ts) & (ts >= (-np.inf if threshold is None else threshold))]
        if top is not None:
            chosen = chosen[np.argsort(-coarse.values("ts")[chosen], kind="stable")[:int(top)]]
        nside = nside or 2 * coarse.axis.nside
        if nside <= coarse.axis.nside or nside % coarse.axis.nside:
            raise CosiInputError(f"refined NSIDE {nside} must be a multiple of the coarse {coarse.axis.nside}")
        estimator = TSMapEstimator(**{**self._keywords, "nside": nside})
        factor = (nside // coarse.axis.nside) ** 2
        nested = chosen if coarse.axis.is_nested else hp.ring2nest(coarse.axis.nside, chosen)
        children = (nested[:, None] * factor + np.arange(factor)).ravel()
        children = children if estimator.axis.is_nested else hp.nest2ring(nside, children)
        refined = estimator.run(datasets, pixels=children, **run_keywords) if chosen.size else None
        return MultiOrderTSMap(coarse, refined, chosen)

    # ---- one dataset ------------------------------------------------------------------------------
    def _fluxes(self, ei_edges):
        fluxes = integrate_spectrum(self.spectrum, ei_edges)
        if not np.any(fluxes > 0):
            raise CosiInputError(f"the test spectrum {self.spectrum.name} integrates to zero over the Ei bins "
                                 f"{ei_edges[0]:g}-{ei_edges[-1]:g} keV")
        return fluxes

    def _dataset_terms(self, dataset, directions, null_model, background_norms, excluded=None):
        plugin = None
        if isinstance(dataset, COSIImagingLike):
            if null_model is not None or background_norms is not None:
                raise CosiInputError("a plugin brings its own null model: give null_model and background_norms "
                                     "only with datasets")
            plugin, dataset = dataset, dataset.dataset
        elif not isinstance(dataset, COSIDataset):
            raise CosiInputError(f"TSMapEstimator runs on COSIDataset or COSIImagingLike, got "
                                 f"{type(dataset).__name__}")
        engine = dataset.engine
        if self.kernel != "point" or not self.path or dataset.attitudes is None:
            model_nside = engine.model_axes[0].nside
            if self.nside > model_nside:
                raise CosiInputError(f"test grid NSIDE {self.nside} is finer than the model grid's ({model_nside}) "
                                     f"of dataset '{dataset.name}': a {self.kernel} kernel on the grid cannot be "
                                     "placed between its pixels")
        null = _null_expectation(dataset, plugin, null_model, background_norms)
        data = engine.data
        excluded = excluded or ExcludedBins.nothing(engine)
        bins = self._selected_bins(engine, excluded)
        mapping, along_path = kernel_mapping(dataset, self.kernel, self.width, directions, self.path)
        fluxes = self._fluxes(terms_ei_edges(dataset))
        response = engine.response
        # expected counts per unit T in each (row, nu), over the bins used (empty ones included)
        per_row = excluded.kept_area(response, fluxes, self._column_mask(engine)).ravel()
        exposure = np.asarray(mapping.T @ per_row).ravel()
        nu_of, e_of = np.divmod(response.order, response.axes[1].nbins)
        n_chunks = 8 * numba.get_num_threads()
        if isinstance(engine, ShardedEngine):  # the stored blocks are on the workers: so are the sums
            return ShardedTerms(engine, bins, null, nu_of, e_of, fluxes.astype(np.float64), mapping, exposure,
                                along_path)
        arrays = (bins, chunk_bounds(bins.size, n_chunks), data.row.astype(np.int64),
                  data.column.astype(np.int64), data.counts.astype(np.float64), null, response.col_ptr,
                  response.block.astype(np.int64), response.values, response.block_size, nu_of, e_of,
                  fluxes.astype(np.float64), mapping.indptr.astype(np.int64), mapping.indices.astype(np.int64),
                  mapping.data.astype(np.float64))
        logger.info("TS map on '%s': %d test positions, %d of %d non-empty bins, %s kernel%s, %s", dataset.name,
                    directions.shape[0], bins.size, data.nnz, self.kernel,
                    f" of {self.width:g} deg" if self.width else "", "along the path" if along_path else "on the grid")
        return _Terms(arrays, response.axes[0].nbins, exposure, arrays[1].size - 1, along_path)

    def _column_mask(self, engine):
        n_em = engine.cds_axes[0].nbins
        per_em = int(np.prod(engine.response.cds_shape[1:]))
        em = np.zeros(n_em, dtype=bool)
        em[_channels(self.em_channels, n_em)] = True
        return np.repeat(em, per_em)

    def _selected_bins(self, engine, excluded):
        mask = self._column_mask(engine)
        bins = np.flatnonzero(mask[engine.data.column] & excluded.kept_at_bins(engine))
        # by row, then column: a row's part of the test mapping (every (row, nu) it reads) stays in cache while
        # its bins are summed, and each bin reads its response column as one contiguous run
        order = np.lexsort((engine.data.column[bins], engine.data.row[bins]))
        return bins[order].astype(np.int64)

    # ---- all positions ----------------------------------------------------------------------------
    def _sums(self, terms, norms, with_log=True):
        """(score, information, log ratio) summed over datasets for trial norms [n_trials, n_pos], and min b/s."""
        n_trials, n_pos = norms.shape
        total = np.zeros((n_trials, 3, n_pos))
        low = np.full(n_pos, np.inf)
        for t in terms:
            sums, ratio_min = t.sums(np.ascontiguousarray(norms), with_log)
            total += sums
            low = np.minimum(low, ratio_min)
        exposure = sum(t.exposure for t in terms)
        total[:, SCORE] -= exposure
        total[:, LOG_RATIO] -= norms * exposure
        return total, low

    def _fit(self, terms, progress):
        n_pos = terms[0].exposure.size
        exposure = sum(t.exposure for t in terms)
        norm = np.zeros(n_pos)
        niter = np.zeros(n_pos, dtype=np.int64)
        done = np.zeros(n_pos, dtype=bool)
        log_ratio, information = np.full(n_pos, np.nan), np.full(n_pos, np.nan)
        # the bracket of the best norm: the score is positive at `low`, negative at `high`
        low, high = None, np.full(n_pos, np.inf)
        active, active_terms = np.arange(n_pos), terms
        bar = tqdm(total=self.max_niter, desc="TS map", unit="iteration", disable=not progress)
        for _ in range(self.max_niter):
            sums, ratio_min = self._sums(active_terms, norm[None, active])
            score, info, ratio = sums[0, SCORE], sums[0, INFORMATION], sums[0, LOG_RATIO]
            if low is None:  # the smallest norm keeping every bin with counts expected above zero
                floor = -ratio_min
                low = floor.copy()
            low[active] = np.where(score > 0, norm[active], low[active])
            high[active] = np.where(score <= 0, norm[active], high[active])
            trial = _next_norm(norm[active], score, info, exposure[active], low[active], high[active])
            step = trial - norm[active]
            with np.errstate(divide="ignore", invalid="ignore"):
                converged = np.abs(step) <= self.rtol / np.sqrt(info)
            finished = converged | ~np.isfinite(trial)
            norm[active] = trial
            niter[active] += 1
            # a converged position keeps the sums of this pass, carried over its last (tiny) step to second
            # order: no pass is spent on it again
            log_ratio[active] = ratio + score * step - 0.5 * info * step ** 2
            information[active] = info
            done[active] = finished
            bar.update(1)
            if finished.all():
                break
            if finished.any():  # a pass costs what its positions' mapping entries do: drop the finished ones
                active = active[~finished]
                active_terms = [_restricted(t, active) for t in terms]
        bar.close()
        with np.errstate(divide="ignore", invalid="ignore"):
            norm_err = 1.0 / np.sqrt(information)
            success = done & np.isfinite(norm) & (information > 0)
            two_delta = np.maximum(2.0 * log_ratio, 0.0)
        norm = np.where(success, norm, np.nan)
        maps = {
            "ts": np.where(success, np.where(norm > 0, two_delta, 0.0), np.nan),
            "sqrt_ts": np.where(success, np.sign(norm) * np.sqrt(two_delta), np.nan),
            "norm": norm,
            "norm_err": np.where(success, norm_err, np.nan),
            "npred_excess": norm * sum(t.exposure for t in terms),
            "niter": niter.astype(np.float64),
            "success": success.astype(np.float64),
        }
        n_failed = int(np.count_nonzero(~success))
        if n_failed:
            logger.warning("TS map: %d of %d positions did not converge in %d iterations (or see no counts)",
                           n_failed, n_pos, self.max_niter)
        if self.selection_optional:
            maps.update(self._profile(terms, norm, norm_err, log_ratio, floor, success))
        return maps

    def _profile(self, terms, norm, norm_err, best, floor, success):
        """Norms where ``2 (L(best) - L(a))`` reaches its targets: errn, errp and the upper limit (Newton)."""
        targets, names = [], []
        if "errn-errp" in self.selection_optional:
            targets += [(-1.0, self.n_sigma**2), (1.0, self.n_sigma**2)]
            names += ["norm_errn", "norm_errp"]
        if "ul" in self.selection_optional:
            targets.append((1.0, stats.norm.ppf(self.ul_confidence) ** 2))
            names.append("norm_ul")
        sides = np.array([side for side, _ in targets])[:, None]
        levels = np.array([level for _, level in targets])[:, None]
        start = np.where(success, norm, 0.0)
        err = np.where(success, norm_err, 1.0)
        trial = start + sides * np.sqrt(levels) * err  # the quadratic guess
        trial = np.where(trial > floor, trial, 0.5 * (start + floor))
        done = ~np.broadcast_to(success, trial.shape).copy()
        for _ in range(self.max_niter):
            sums, _ = self._sums(terms, trial)
            excess = 2.0 * (best - sums[:, LOG_RATIO]) - levels  # zero at the target
            with np.errstate(divide="ignore", invalid="ignore"):
                new = trial + excess / (2.0 * sums[:, SCORE])
                new = np.where(sides * (new - start) > 0, new, 0.5 * (trial + start))
                new = np.where(new > floor, new, 0.5 * (trial + floor))
                converged = np.abs(new - trial) <= self.rtol * err
            trial = np.where(done, trial, new)
            done |= converged | ~np.isfinite(new)
            if done.all():
                break
        out = {}
        for name, values, side in zip(names, trial, sides[:, 0]):
            distance = values - start if name == "norm_ul" else side * (values - start)
            out[name] = np.where(success, values if name == "norm_ul" else distance, np.nan)
        return out


class MultiOrderTSMap:
    """A coarse TS map with some pixels replaced by their children at a finer NSIDE (multi-order, NESTED UNIQ).

    Attributes
    ----------
    uniq : numpy.ndarray
        UNIQ index of every pixel (``4 nside**2 + nested pixel``), coarse ones first.
    """

    def __init__(self, coarse, refined, refined_parents):
        self.coarse, self.refined = coarse, refined
        coarse_nside = coarse.axis.nside
        kept = np.setdiff1d(coarse.pixels, refined_parents)
        kept_nested = kept if coarse.axis.is_nested else hp.ring2nest(coarse_nside, kept)
        self._parts = [(kept, coarse)]
        uniq = [4 * coarse_nside**2 + kept_nested]
        if refined is not None:
            fine_nested = refined.pixels if refined.axis.is_nested else hp.ring2nest(refined.axis.nside,
                                                                                     refined.pixels)
            uniq.append(4 * refined.axis.nside**2 + fine_nested)
            self._parts.append((refined.pixels, refined))
        self.uniq = np.concatenate(uniq)

    def values(self, name):
        """The map `name` at every pixel of :attr:`uniq`."""
        return np.concatenate([result.values(name)[pixels] for pixels, result in self._parts])

    def to_mhealpy(self, name):
        """The map `name` as a multi-resolution ``mhealpy.HealpixMap``."""
        return HealpixMap(data=self.values(name), uniq=self.uniq)

    def peak(self, name="ts"):
        """(UNIQ index, value) of the largest finite value of a map."""
        values = self.values(name)
        i = int(np.argmax(np.where(np.isfinite(values), values, -np.inf)))
        return int(self.uniq[i]), float(values[i])


class TSMapResult:
    """The maps of a :class:`TSMapEstimator` run, by name (``result["ts"]``), as histpy Histograms.

    Attributes
    ----------
    axis : histpy.HealpixAxis
        The test grid (Galactic).
    pixels : numpy.ndarray
        The test positions computed; the maps are NaN elsewhere.
    meta : dict
        The estimator's settings.
    """

    def __init__(self, axis, maps, pixels, meta):
        self.axis = axis
        self._maps = dict(maps)
        self.pixels = np.asarray(pixels)
        self.meta = dict(meta)

    def __getitem__(self, name):
        if name not in self._maps:
            raise KeyError(f"no map {name!r}: the maps are {sorted(self._maps)}")
        return Histogram([self.axis], contents=self._maps[name], unit=u.Unit(_UNITS.get(name, "")))

    def __contains__(self, name):
        return name in self._maps

    def keys(self):
        """Names of the maps."""
        return list(self._maps)

    def values(self, name):
        """The map `name` as a numpy array (NaN where not computed)."""
        return self._maps[name]

    def peak(self, name="ts"):
        """(pixel, value) of the largest finite value of a map."""
        values = np.where(np.isfinite(self._maps[name]), self._maps[name], -np.inf)
        pixel = int(np.argmax(values))
        return pixel, float(values[pixel])

    def write(self, path, overwrite=True):
        """Write every map to one HDF5 file (a histpy histogram per map, under its name), atomically."""
        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.unlink()
            for name in self._maps:
                self[name].write(tmp, name=name, overwrite=True)
        logger.info("wrote TS maps %s to %s", self.keys(), path)
        return path

    def write_fits(self, path, overwrite=True):
        """Write every map as a column of one HEALPix FITS file (healpy), atomically."""
        names = self.keys()
        with atomic_path(path, overwrite=overwrite) as tmp:
            hp.write_map(str(tmp), [self._maps[n] for n in names], nest=self.axis.is_nested, coord="G",
                         column_names=[n.upper() for n in names], column_units=[_UNITS.get(n, "") for n in names],
                         extra_header=[(k.upper()[:8], str(v)) for k, v in self.meta.items()], overwrite=True,
                         dtype=np.float64)
        logger.info("wrote TS maps %s to %s", names, path)
        return path


#: Where the test mapping (``t_indptr, t_position, t_weight`` of :func:`.norm_kernels.norm_sums`) sits in
#: ``_Terms.arrays``: the arguments of that kernel, in its order.
_TEST_MAPPING = slice(13, 16)


def _restricted(terms, positions):
    """A dataset's terms for some test positions only: columns of its test mapping, renumbered (a sharded
    dataset's terms, whose mapping is on the workers, sum every position and keep these)."""
    if not isinstance(terms, _Terms):
        return _PositionSubset(terms, positions)
    arrays = list(terms.arrays)
    indptr, indices, data = arrays[_TEST_MAPPING]
    mapping = sparse.csr_matrix((data, indices, indptr), shape=(indptr.size - 1, terms.exposure.size))
    chosen = mapping[:, positions].tocsr()
    arrays[_TEST_MAPPING] = (chosen.indptr.astype(np.int64), chosen.indices.astype(np.int64), chosen.data)
    return dataclasses.replace(terms, arrays=tuple(arrays), exposure=terms.exposure[positions])


class _PositionSubset:
    """Some positions of terms that always sum all of theirs: the others at norm 0, then these picked."""

    def __init__(self, terms, positions):
        self.terms, self.positions = terms, positions
        self.exposure = terms.exposure[positions]

    def sums(self, norms, with_log):
        full = np.zeros((norms.shape[0], self.terms.exposure.size))
        full[:, self.positions] = norms
        sums, ratio_min = self.terms.sums(full, with_log)
        return sums[:, :, self.positions], ratio_min[self.positions]


_UNITS = {"flux": "cm-2 s-1", "flux_err": "cm-2 s-1", "flux_ul": "cm-2 s-1"}


def _next_norm(norm, score, information, exposure, low, high):
    """One step towards the best norm, inside its bracket (low, high).

    The score's data term ``D(a) = sum n s / (b + a s)`` is a sum of hyperbolas in ``a``: the
    step solves ``D = S`` for the one hyperbola ``A / (a + B)`` with D's value and slope at
    ``a`` (exact when one kind of bin dominates). It is Newton's step times ``D / S``: longer
    where the norm must grow by orders of magnitude (bright sources, from zero), shorter
    towards the floor. A step leaving the bracket is replaced by its midpoint (or by Newton's
    step, which stays below the root, while no upper end is known).
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        data_term = score + exposure
        newton = norm + score / information
        trial = newton + (score / information) * (data_term / exposure - 1.0)
        inside = (trial > low) & (trial < high)
        fallback = np.where(np.isfinite(high), 0.5 * (low + high), np.maximum(newton, 0.5 * (norm + low)))
        return np.where(information > 0, np.where(inside, trial, fallback), np.nan)


def write_maps(result, path):
    """Write a :class:`TSMapResult` as HDF5 (``.h5``/``.hdf5``) or HEALPix FITS (``.fits``) by suffix."""
    suffix = str(path).lower().rsplit(".", 1)[-1]
    if suffix in ("fits", "fit"):
        return result.write_fits(path)
    if suffix in ("h5", "hdf5"):
        return result.write(path)
    raise CosiInputError(f"TS maps are written as .h5/.hdf5 or .fits, got {path}")


def terms_ei_edges(dataset):
    """Ei edges (keV) of a dataset's (or plugin's) response."""
    dataset = dataset.dataset if isinstance(dataset, COSIImagingLike) else dataset
    return np.asarray(dataset.engine.model_axes[1].edges.to_value("keV"), dtype=np.float64)


def _null_expectation(dataset, plugin, null_model, background_norms):
    """The null model's expected counts at the non-empty bins (positive wherever there are counts)."""
    if plugin is not None:
        null, _ = plugin.expectation_at_bins()
    elif null_model is not None:
        helper = COSIImagingLike(f"{dataset.name}_null", dataset)
        helper.set_model(null_model)
        for name, value in (background_norms or {}).items():
            if name not in helper.background_parameters:
                raise CosiInputError(f"unknown background {name!r}: the backgrounds are "
                                     f"{sorted(helper.background_parameters)}")
            helper.background_parameters[name].value = value
        null, _ = helper.expectation_at_bins()
    else:
        null = dataset.engine.background_at_bins(background_norms)
    null = np.asarray(null, dtype=np.float64)
    bad = np.flatnonzero(~(null > 0))
    if bad.size:
        q = int(bad[0])
        raise CosiInputError(f"the null model of dataset '{dataset.name}' expects {null[q]:.3g} counts in a bin with "
                             f"{dataset.engine.data.counts[q]:g} ({dataset.engine.describe_bin(q)}) and in "
                             f"{bad.size - 1} more: add a background or source there")
    return null


def _selection(selection_optional):
    if selection_optional is None:
        return set()
    if selection_optional == "all":
        return set(OPTIONAL_MAPS)
    chosen = {selection_optional} if isinstance(selection_optional, str) else set(selection_optional)
    unknown = chosen - set(OPTIONAL_MAPS)
    if unknown:
        raise CosiInputError(f"unknown selection_optional {sorted(unknown)}: expected some of "
                             f"{sorted(OPTIONAL_MAPS)} or 'all'")
    return chosen


def _channels(em_channels, n_em):
    """Indices of the Em channels selected (slice, list or None for all)."""
    if em_channels is None:
        return np.arange(n_em)
    if isinstance(em_channels, slice):
        chosen = np.arange(n_em)[em_channels]
    else:
        chosen = np.atleast_1d(np.asarray(em_channels))
        if chosen.dtype.kind not in "iu":
            raise CosiInputError(f"em_channels must be Em bin indices, got {em_channels!r}")
        outside = chosen[(chosen < 0) | (chosen >= n_em)]
        if outside.size:
            raise CosiInputError(f"em_channels {outside.tolist()} outside the data's {n_em} Em bins "
                                 f"(0..{n_em - 1})")
    if chosen.size == 0:
        raise CosiInputError(f"em_channels {em_channels!r} selects no Em bin of {n_em}")
    return chosen


def _channels_text(em_channels):
    if em_channels is None:
        return "all"
    if isinstance(em_channels, slice):
        return f"{em_channels.start}:{em_channels.stop}:{em_channels.step}"
    return ",".join(str(int(c)) for c in np.atleast_1d(em_channels))
