"""The base of the Richardson-Lucy family: state, iteration steps, backgrounds, stopping, the run loop.

Notation (per dataset ``d``; ``i`` runs over its non-empty data bins, ``j`` over
(sky pixel, Ei bin)):

- ``eps_i = sum_j R_ij x_j + sum_k b_k B_k,i`` expected counts (engine, sparse path),
- ``w_i = d_i / eps_i``, ``T_j = sum_d sum_i R_ij w_i`` (engine transpose products),
- ``X_j = sum_d sum_i R_ij`` the summed exposure map (over all bins).

Every iteration costs one transpose product and one forward folding per dataset;
nothing in the data space is ever made dense. Several datasets may share one sky:
likelihoods and transpose products are summed over datasets, while background
normalizations are kept per dataset and per component (``{dataset: {component: norm}}``).

Algorithms take plain keywords (``RichardsonLucy(dataset, iterations=30,
acceleration=True, ...)``); the COSI team's parameter files are translated into
these keywords by :mod:`.parameters`.
"""
import logging

import numpy as np
from astropy import units as u
from tqdm.auto import tqdm

from .. import validation
from ..binning import IMAGE_UNIT
from ..datasets import COSIDataset
from ..errors import CosiInputError
from ..io.parameters import ALL_BACKGROUNDS

logger = logging.getLogger(__name__)
DEFAULT_BKG_NORM_RANGE = (0.0, 100.0)
DEFAULT_RESPONSE_WEIGHTING_INDEX = 0.5
STOPPING_STATISTICS = ("log-likelihood", "log-posterior")


def as_dataset_list(datasets):
    """A non-empty list of COSIDataset with unique names (one dataset may be given alone)."""
    if isinstance(datasets, COSIDataset):
        datasets = [datasets]
    datasets = list(datasets or [])
    if not datasets:
        raise CosiInputError("no dataset given to the deconvolution")
    for dataset in datasets:
        if not isinstance(dataset, COSIDataset):
            raise CosiInputError(f"the deconvolution runs on COSIDataset objects, got {type(dataset).__name__}")
    names = [ds.name for ds in datasets]
    if len(set(names)) != len(names):
        raise CosiInputError(f"dataset names must be unique, got {names}")
    return datasets


class DeconvolutionAlgorithm:
    """Base class: one iteration = pre_processing, Estep, Mstep, post_processing,
    register_result, check_stopping_criteria; :meth:`run` iterates until a stopping criterion.

    Internally the model is an array ``[n_pix, n_ei]`` in ph cm-2 s-1 sr-1;
    Histograms are made only for the results.

    Parameters
    ----------
    datasets : COSIDataset or list of COSIDataset
        Datasets sharing the sky (same model axes).
    initial_model : ndarray [n_pix, n_ei] or histpy.Histogram, optional
        Starting image (ph cm-2 s-1 sr-1). By default the simple back-projection
        scaled to the counts minus the backgrounds (:func:`backprojection`).
    mask : ndarray of bool, shape (n_pix, n_ei), optional
        True where a pixel is fitted. Zero-exposure pixels are always masked.
    iterations : int
        Largest number of iterations (counting those already done when resuming).
    minimum_flux : float or Quantity
        Floor of the free pixels (ph cm-2 s-1 sr-1).
    response_weighting : bool
        Multiply the delta image by ``(X_j / max X)^response_weighting_index``.
    response_weighting_index : float
    fit_backgrounds : bool
        Update the background normalizations by EM at each iteration.
    background_ranges : dict of str to (float, float), optional
        Range of each background normalization (key ``'*'``: every component);
        default (0, 100).
    background_norms : dict, optional
        ``{dataset: {component: norm}}`` to start from (default 1).
    stopping_threshold : float or None
        Stop when the statistic increases by less than this; None: run all iterations.
        The default is the algorithm's (:attr:`default_stopping_threshold`).
    stopping_statistic : {'log-likelihood', 'log-posterior'}
        The statistic of the criterion (the log-posterior needs priors: MAP_RL).
    model_unit : astropy.units.Unit
        Unit of the result histograms.
    start_iteration : int
        Iterations already done (when resuming).
    previous_results : list of dict, optional
        Results of the iterations already done (when resuming).
    metadata : dict, optional
        Extra information stored with saved results (parameters, algorithm name).
    """

    #: Name used in parameter files.
    name = None
    #: Statistics allowed for the stopping criterion.
    stopping_statistics = ("log-likelihood",)
    #: Stopping threshold when none is given (cosipy's RL stops at 0.01 in log-likelihood).
    default_stopping_threshold = None

    def __init__(self, datasets, *, initial_model=None, mask=None, iterations=1, minimum_flux=0.0,
                 response_weighting=False, response_weighting_index=DEFAULT_RESPONSE_WEIGHTING_INDEX,
                 fit_backgrounds=False, background_ranges=None, background_norms=None, stopping_threshold="default",
                 stopping_statistic=None, model_unit=IMAGE_UNIT, start_iteration=0, previous_results=None,
                 metadata=None):
        self.datasets = as_dataset_list(datasets)
        self.names = [ds.name for ds in self.datasets]
        self.model_axes = self.datasets[0].model_axes
        shape = tuple(self.model_axes.nbins)
        where = type(self).__name__
        self.model_unit = u.Unit(model_unit)
        self._to_model_unit = IMAGE_UNIT.to(self.model_unit)
        self.metadata = dict(metadata or {})

        self.exposure = sum(ds.exposure for ds in self.datasets)
        user_mask = np.ones(shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if user_mask.shape != shape:
            validation.fail("mask", f"has shape {user_mask.shape}, expected {shape}", where)
        self.free = user_mask & (self.exposure > 0)
        n_zero = int(np.count_nonzero(user_mask & ~(self.exposure > 0)))
        if n_zero:
            logger.info("%d zero-exposure (pixel, energy) bins are masked", n_zero)
        if not self.free.any():
            raise CosiInputError("every model pixel is masked or has zero exposure")

        if initial_model is None:
            initial_model = backprojection(self.datasets)
        elif hasattr(initial_model, "axes"):
            initial_model = self.datasets[0].engine.image_values(initial_model)
        self.initial_model = np.array(initial_model, dtype=np.float64)
        if self.initial_model.shape != shape:
            validation.fail("initial_model", f"has shape {self.initial_model.shape}, expected {shape}", where)
        if not np.all(np.isfinite(self.initial_model)) or np.any(self.initial_model < 0):
            validation.fail("initial_model", "must be finite and non-negative", where)

        self.iteration_max = validation.number(iterations, "iterations", where, low=1, integer=True)
        self.minimum_flux = validation.quantity(minimum_flux, "minimum_flux", IMAGE_UNIT, where, low=0.0)
        self.response_weighting = validation.flag(response_weighting, "response_weighting", where)
        index = validation.number(response_weighting_index, "response_weighting_index", where)
        # cosipy's filter: (X_j / max X)^index with the maximum over all pixels and energies
        self.response_filter = np.where(self.exposure > 0, self.exposure / self.exposure.max(), 0.0) ** index \
            if self.response_weighting else None

        self._configure_backgrounds(fit_backgrounds, background_ranges, background_norms, where)
        if stopping_threshold == "default":
            stopping_threshold = self.default_stopping_threshold
        self.stopping_threshold = None if stopping_threshold is None else validation.number(
            stopping_threshold, "stopping_threshold", where, low=0.0)
        self.stopping_statistic = validation.choice(stopping_statistic or self.stopping_statistics[0],
                                                    "stopping_statistic", self.stopping_statistics, where)

        self.iteration_count = int(start_iteration)
        self.results = list(previous_results or [])
        self.model = None
        self.delta_model = None
        self.processed_delta_model = None
        self.alpha = 1.0
        self.loglikelihood_list = None
        self._eps_current = False

    # ---- configuration ------------------------------------------------------------------------
    def _configure_backgrounds(self, fit_backgrounds, ranges, initial, where):
        self.bkg_optimization = validation.flag(fit_backgrounds, "fit_backgrounds", where)
        ranges = dict(ranges or {})
        known = sorted({name for ds in self.datasets for name in ds.background_names})
        for name, value in ranges.items():
            key = f"background_ranges:{name}"
            if name != ALL_BACKGROUNDS and name not in known:
                validation.fail(key, f"names no background; known: {known}", where)
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                validation.fail(key, f"must be [low, high], got {value!r}", where)
            lo = validation.number(value[0], key, where, low=0.0)
            ranges[name] = (lo, validation.number(value[1], key, where, low=lo, allow_inf=True))
        self.bkg_norms, self.bkg_range, self.bkg_totals = {}, {}, {}
        initial = initial or {}
        for ds in self.datasets:
            given = initial.get(ds.name, {})
            self.bkg_norms[ds.name] = {c: float(given.get(c, 1.0)) for c in ds.background_names}
            self.bkg_range[ds.name] = {c: ranges.get(c, ranges.get(ALL_BACKGROUNDS, DEFAULT_BKG_NORM_RANGE))
                                       for c in ds.background_names}
            self.bkg_totals[ds.name] = {c: ds.background_total(c) for c in ds.background_names}
            for c, total in self.bkg_totals[ds.name].items():
                if total <= 0 and self.bkg_optimization:
                    logger.warning("background '%s' of dataset '%s' is empty: its normalization stays fixed",
                                   c, ds.name)

    # ---- engine helpers (arrays) -------------------------------------------------------------
    def _sky_at_bins(self, image):
        return [ds.engine.sky_expectation_at_bins(image) for ds in self.datasets]

    def _bkg_at_bins(self, norms):
        return [ds.engine.background_at_bins(norms[ds.name]) for ds in self.datasets]

    def _bkg_total(self, norms, ds):
        return sum(norms[ds.name][c] * self.bkg_totals[ds.name][c] for c in ds.background_names)

    def _total_expected(self, image, norms, ds):
        return float(np.sum(ds.exposure * image)) + self._bkg_total(norms, ds)

    def _expectation(self, image, norms):
        """Each dataset's state evaluated by its engine (expectations left where its bins live)."""
        return [ds.engine.evaluate(image, norms[ds.name]) for ds in self.datasets]

    def _set_state(self, evaluations):
        self._evaluations = evaluations
        self.loglikelihood_list = [ev.log_likelihood for ev in evaluations]
        self._eps_current = True

    def _ratio_products(self):
        """``T_j = sum_d sum_i R_ij d_i / eps_i`` and each dataset's background products at the current state.

        One engine call per dataset (:meth:`ResponseEngine.ratio_products`): a sharded engine
        computes the ratios where the bins live and returns only these sums.
        """
        t, products = 0, {}
        for ds, evaluation in zip(self.datasets, self._evaluations):
            t_ds, products[ds.name] = ds.engine.ratio_products(evaluation)
            t = t + t_ds
        return t, products

    def _clip_bkg(self, name, component, value):
        lo, hi = self.bkg_range[name][component]
        return float(min(max(value, lo), hi))

    def _em_bkg_norms(self, products):
        """EM update of every background norm from its products ``sum_i B_k,i w_i``, clipped to its range."""
        if not self.bkg_optimization:
            return {k: dict(v) for k, v in self.bkg_norms.items()}
        new = {}
        for ds in self.datasets:
            new[ds.name] = {}
            for c in ds.background_names:
                b, total = self.bkg_norms[ds.name][c], self.bkg_totals[ds.name][c]
                value = b * products[ds.name][c] / total if total > 0 else b
                new[ds.name][c] = self._clip_bkg(ds.name, c, value)
        return new

    def _constrain(self, image):
        """Apply the minimum flux to free pixels and zero the masked ones."""
        return np.where(self.free, np.maximum(image, self.minimum_flux), 0.0)

    def _histogram(self, values):
        return self.datasets[0].image_histogram(np.asarray(values) * self._to_model_unit, unit=self.model_unit)

    # ---- the steps ----------------------------------------------------------------------------
    def initialization(self):
        """Set the model to the (constrained) initial model and evaluate its expectations."""
        self.model = self._constrain(self.initial_model)
        self._set_state(self._expectation(self.model, self.bkg_norms))
        logger.info("%s initialized: log-likelihood %s, background norms %s", self.name,
                    self.loglikelihood_list, self.bkg_norms)

    def pre_processing(self):
        """Nothing by default."""

    def Estep(self):  # noqa: N802 (the COSI team's step names)
        """Expected counts at the non-empty bins for the current model (reused when current)."""
        if not self._eps_current:
            self._set_state(self._expectation(self.model, self.bkg_norms))

    def Mstep(self):  # noqa: N802
        """EM delta image ``x (T/X - 1)`` on the free pixels and the new background norms."""
        t, products = self._ratio_products()
        ratio = np.divide(t, self.exposure, out=np.zeros_like(t), where=self.free)
        self.delta_model = np.where(self.free, self.model * (ratio - 1.0), 0.0)
        self._new_bkg_norms = self._em_bkg_norms(products)

    def post_processing(self):
        """Apply the (response-weighted) delta, the new background norms, and re-evaluate."""
        self.processed_delta_model = self.delta_model * self.response_filter if self.response_weighting \
            else self.delta_model.copy()
        self.alpha = 1.0
        self._update(self.model + self.processed_delta_model, self._new_bkg_norms)

    def _update(self, image, norms):
        """Set the new (constrained) state and evaluate its expectations and log-likelihoods."""
        self.model = self._constrain(image)
        self.bkg_norms = norms
        self._set_state(self._expectation(self.model, norms))

    def background_normalization_for_results(self, norms=None):
        """Norms as stored in the results: flat ``{component: norm}`` for one dataset."""
        norms = self.bkg_norms if norms is None else norms
        if len(self.datasets) == 1:
            return dict(norms[self.names[0]])
        return {k: dict(v) for k, v in norms.items()}

    def register_result(self):
        """Append this iteration's result (Histograms over the model axes)."""
        result = {
            "iteration": self.iteration_count,
            "model": self._histogram(self.model),
            "delta_model": self._histogram(self.delta_model),
            "processed_delta_model": self._histogram(self.processed_delta_model),
            "background_normalization": self.background_normalization_for_results(),
            "alpha": float(self.alpha),
            "loglikelihood": list(self.loglikelihood_list),
        }
        result.update(self._extra_result())
        self.results.append(result)
        logger.info("iteration %d: log-likelihood %s, alpha %.4g, background norms %s", self.iteration_count,
                    [f"{v:.8g}" for v in self.loglikelihood_list], self.alpha,
                    result["background_normalization"])

    def _extra_result(self):
        return {}

    def _statistic(self, result):
        if self.stopping_statistic == "log-posterior":
            return result["log_posterior"]
        return float(np.sum(result["loglikelihood"]))

    def check_stopping_criteria(self):
        """Stop at the last iteration or when the statistic increases by less than the threshold.

        A decrease (possible with acceleration or priors) is logged and does not stop.
        """
        if self.iteration_count >= self.iteration_max:
            return True
        if self.stopping_threshold is None or len(self.results) < 2:
            return False
        delta = self._statistic(self.results[-1]) - self._statistic(self.results[-2])
        if delta < 0:
            logger.warning("%s decreased by %.4g in iteration %d: the reconstruction may be unstable",
                           self.stopping_statistic, -delta, self.iteration_count)
            return False
        if delta < self.stopping_threshold:
            logger.info("%s increased by %.4g < %.4g: stopping", self.stopping_statistic, delta,
                        self.stopping_threshold)
            return True
        return False

    def iteration(self):
        """Perform one iteration; return True when the iterations should stop."""
        self.iteration_count += 1
        logger.debug("%s iteration %d/%d", self.name, self.iteration_count, self.iteration_max)
        self.pre_processing()
        self.Estep()
        self.Mstep()
        self.post_processing()
        self.register_result()
        return self.check_stopping_criteria()

    def run(self, progress=True):
        """Initialize, then iterate until a stopping criterion is met.

        Parameters
        ----------
        progress : bool
            Show a tqdm progress bar (iteration, log-likelihood, alpha).

        Returns
        -------
        list of dict
            :attr:`results`. An interruption (KeyboardInterrupt) propagates with the
            iterations done so far kept in :attr:`results`.
        """
        logger.info("image deconvolution starts (%s)", self.name)
        self.initialization()
        done = self.iteration_count
        if done >= self.iteration_max:
            logger.warning("already %d iterations done (iteration_max %d): nothing to run", done,
                           self.iteration_max)
            return self.results
        with tqdm(total=self.iteration_max, initial=done, desc=self.name, unit="it", disable=not progress) as bar:
            while True:
                stop = self.iteration()
                last = self.results[-1]
                bar.update(1)
                postfix = {"logL": f"{np.sum(last['loglikelihood']):.8g}", "alpha": f"{last['alpha']:.3g}"}
                if last.get("log_posterior") is not None:
                    postfix["logP"] = f"{last['log_posterior']:.8g}"
                bar.set_postfix(postfix)
                if stop:
                    break
        logger.info("image deconvolution finished after %d iterations", self.iteration_count)
        return self.results


def backprojection(datasets):
    """Simple back-projection ``sum_i R_ij d_i / sum_i R_ij``, scaled to the counts minus background.

    The scale makes the expected sky counts ``sum_j X_j x_j`` equal the total counts
    minus the backgrounds at unit normalization (at least 1% of the counts, so the
    start stays positive when the backgrounds explain everything).

    Parameters
    ----------
    datasets : list of COSIDataset

    Returns
    -------
    ndarray, shape (n_pix, n_ei)
    """
    numerator = sum(ds.engine.transpose_product(ds.engine.data.counts) for ds in datasets)
    exposure = sum(ds.exposure for ds in datasets)
    image = np.divide(numerator, exposure, out=np.zeros_like(numerator), where=exposure > 0)
    counts = sum(ds.total_counts for ds in datasets)
    background = sum(ds.background_total(n) for ds in datasets for n in ds.background_names)
    target = counts - background
    if target < 0.01 * counts:
        logger.warning("backgrounds (%.4g counts) explain the data (%.4g counts): the back-projection is "
                       "scaled to 1%% of the counts", background, counts)
        target = 0.01 * counts
    sky = float(np.sum(exposure * image))
    if sky <= 0:
        raise CosiInputError("back-projection is zero everywhere: no response overlaps the data")
    logger.info("back-projection scaled to %.4g expected sky counts", target)
    return image * (target / sky)
