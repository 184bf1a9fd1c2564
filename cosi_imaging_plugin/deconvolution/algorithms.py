"""The Richardson-Lucy family on the response engine: RLsimple, RL and MAP_RL.

Notation (per dataset ``d``; ``i`` runs over its non-empty data bins, ``j`` over
(sky pixel, Ei bin)):

- ``eps_i = sum_j R_ij x_j + sum_k b_k B_k,i`` expected counts (engine, sparse path),
- ``w_i = d_i / eps_i``, ``T_j = sum_d sum_i R_ij w_i`` (engine transpose products),
- ``X_j = sum_d sum_i R_ij`` the summed exposure map (over all bins).

Every iteration costs one transpose product and one forward folding per dataset
(plus one forward folding of the delta image when the likelihood line search is
on); nothing in the data space is ever made dense.

Several datasets may share one sky: likelihoods and transpose products are
summed over datasets, while background normalizations are kept per dataset and
per component (``{dataset: {component: norm}}``).

The algorithms follow the COSI team's formulation (Knoedlseder et al. 1999, 2005;
Siegert et al. 2020; cosipy's ``RichardsonLucy`` and ``MAP_RichardsonLucy``):

``RLsimple``
    ML-EM: ``x_j <- x_j T_j / X_j``, optionally with the response-weighted delta
    ``(X_j / max X)^index (x_j T_j / X_j - x_j)``; backgrounds
    ``b_k <- b_k sum_i B_k,i w_i / sum_i B_k,i`` clipped to their ranges.
``RL``
    The same delta image, response-weighted, Gaussian-smoothed on the sphere and
    accelerated: ``x <- x + alpha delta'`` with ``alpha = min(-x_j / delta'_j)``
    over pixels with ``delta'_j < 0``, capped at ``alpha_max`` and floored at 1;
    optionally ``alpha`` maximizes the log-likelihood on ``[1, alpha]`` by golden
    section (the likelihood is concave in ``alpha`` and costs O(nnz) per point).
``MAP_RL``
    ML-EM with priors (one-step-late MAP-EM; as cosipy's ``MAP_RichardsonLucy``,
    optional response weighting but no acceleration or smoothing, which the priors
    replace): with a gamma prior (shape ``k``, scale
    ``theta``) on each pixel, ``x_EM = (x T + k - 1) / (X + 1/theta)``, then the
    smoothness / entropy priors multiply it by ``exp(grad log P(x_EM) / (X + 1/theta))``;
    backgrounds ``b <- (b sum B w + k_b - 1) / (sum B + 1/theta_b)``. It stops on
    the log-posterior.
"""
import logging
import math

import healpy as hp
import numpy as np
from astropy import units as u
from histpy import HealpixAxis

from ..engine.engine import IMAGE_UNIT
from ..engine.reductions import counts_log_sum
from ..errors import CosiInputError

logger = logging.getLogger(__name__)

#: Marker for a parameter leaf (any value) in the parameter schemas below.
LEAF = None
#: Marker for a mapping whose keys are free (e.g. background names).
FREE_MAPPING = "free mapping"

DEFAULT_ITERATION_MAX = 1
DEFAULT_BKG_NORM_RANGE = (0.0, 100.0)
DEFAULT_STOPPING_THRESHOLD = 1e-2
DEFAULT_RESPONSE_WEIGHTING_INDEX = 0.5
DEFAULT_ALPHA_MAX = 1.0
DEFAULT_LINE_SEARCH_STEPS = 10
#: Background-range key applying to every component (the old flat parameter form).
ALL_BACKGROUNDS = "*"

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
# exp() argument cap of the MAP prior filter: far below overflow (~709), far above any useful filter.
_MAX_FILTER_EXPONENT = 300.0

_COMMON_KEYS = {
    "iteration_max": LEAF,
    "minimum_flux": {"value": LEAF, "unit": LEAF},
    "background_normalization_optimization": {"activate": LEAF, "range": FREE_MAPPING},
    "stopping_criteria": {"statistics": LEAF, "threshold": LEAF},
    "save_results": {"activate": LEAF, "directory": LEAF, "only_final_result": LEAF},
    "response_weighting": {"activate": LEAF, "index": LEAF},
}

# Keys of the intermediate cosipy form (seed 000: "deconvolution:parameter:alpha_max = 10")
# and where they live in the nested form.
_LEGACY_KEYS = {
    "alpha_max": ("acceleration", "alpha_max"),
    "response_weighting_index": ("response_weighting", "index"),
    "smoothing_FWHM": ("smoothing", "FWHM"),
    "background_normalization_range": ("background_normalization_optimization", "range"),
    "save_results_directory": ("save_results", "directory"),
}
_SWITCHES = ("acceleration", "response_weighting", "smoothing", "background_normalization_optimization",
             "save_results")


def _get(tree, key, default=None):
    """Value at ``"a:b:c"`` in a nested dict, or `default`."""
    node = tree
    for part in key.split(":"):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def normalize_parameter(tree, where="deconvolution:parameter"):
    """Bring the intermediate cosipy parameter form into the nested form.

    ``acceleration: true`` becomes ``acceleration: {activate: true}``, ``alpha_max``
    becomes ``acceleration:alpha_max`` and likewise for ``response_weighting_index``,
    ``smoothing_FWHM``, ``background_normalization_range`` and
    ``save_results_directory`` (the form printed in the COSI 511 keV tutorial and
    used by its ``override_parameter`` examples). A value given in the flat form
    replaces the nested one, since it can only come from a later override.

    Parameters
    ----------
    tree : dict
        The ``deconvolution:parameter`` mapping (not modified).
    where : str
        Key prefix for messages.

    Returns
    -------
    dict
    """
    import copy

    tree = copy.deepcopy(tree or {})
    if not isinstance(tree, dict):
        raise CosiInputError(f"'{where}' must be a mapping, got {tree!r}")
    for switch in _SWITCHES + ("acceleration:line_search",):
        parent, _, leaf = switch.rpartition(":")
        node = _get(tree, parent) if parent else tree
        if isinstance(node, dict) and isinstance(node.get(leaf), bool):
            node[leaf] = {"activate": node[leaf]}
    for old, (section, key) in _LEGACY_KEYS.items():
        if old in tree:
            value = tree.pop(old)
            target = tree.setdefault(section, {})
            if not isinstance(target, dict):
                raise CosiInputError(f"'{where}:{section}' must be a mapping, got {target!r}")
            logger.info("parameter '%s:%s' read as '%s:%s:%s'", where, old, where, section, key)
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                target[key].update(value)  # e.g. smoothing_FWHM:value keeps smoothing:FWHM:unit
            else:
                target[key] = value
    return tree


def validate_tree(tree, schema, prefix):
    """Raise CosiInputError naming the first key of `tree` that `schema` does not know.

    Parameters
    ----------
    tree : dict
        Parameters.
    schema : dict
        Known keys; a value is ``LEAF`` (any value), ``FREE_MAPPING`` (a mapping
        with free keys) or a nested schema.
    prefix : str
        Key path of `tree`, for messages.
    """
    if not isinstance(tree, dict):
        raise CosiInputError(f"'{prefix}' must be a mapping, got {tree!r}")
    for key, value in tree.items():
        path = f"{prefix}:{key}"
        if key not in schema:
            raise CosiInputError(f"unknown parameter '{path}'; known keys under '{prefix}': {sorted(schema)}")
        sub = schema[key]
        if sub is FREE_MAPPING:
            if not isinstance(value, dict):
                raise CosiInputError(f"'{path}' must be a mapping, got {value!r}")
        elif isinstance(sub, dict):
            validate_tree(value, sub, path)


def _number(value, key, low=None, high=None, integer=False, allow_inf=False):
    """A validated number (bool rejected); errors name the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CosiInputError(f"'{key}' must be a number, got {value!r}")
    if integer and float(value) != int(value):
        raise CosiInputError(f"'{key}' must be an integer, got {value!r}")
    value = int(value) if integer else float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise CosiInputError(f"'{key}' must be finite, got {value!r}")
    if low is not None and value < low:
        raise CosiInputError(f"'{key}' must be >= {low}, got {value!r}")
    if high is not None and value > high:
        raise CosiInputError(f"'{key}' must be <= {high}, got {value!r}")
    return value


def _flag(value, key):
    if not isinstance(value, (bool, np.bool_)):
        raise CosiInputError(f"'{key}' must be true or false, got {value!r}")
    return bool(value)


def _quantity(node, key, unit, default_unit=None, allow_inf=False, low=None):
    """Value of a ``{value, unit}`` node converted to `unit` (scalar or array)."""
    if not isinstance(node, dict) or "value" not in node:
        raise CosiInputError(f"'{key}' must be a mapping with 'value' (and 'unit'), got {node!r}")
    unit_text = node.get("unit", default_unit)
    try:
        given = u.Unit(unit_text) if unit_text is not None else u.dimensionless_unscaled
    except (ValueError, TypeError) as exc:
        raise CosiInputError(f"'{key}:unit' is not a unit: {unit_text!r}") from exc
    if not given.is_equivalent(unit):
        raise CosiInputError(f"'{key}:unit' must be convertible to {unit}, got '{given}'")
    raw = node["value"]
    values = np.atleast_1d(np.asarray(raw, dtype=object))
    out = np.array([_number(v, f"{key}:value", low=low, allow_inf=allow_inf) for v in values.ravel()])
    out = out.reshape(values.shape) * given.to(unit)
    return float(out[0]) if np.ndim(raw) == 0 else out


class DeconvolutionAlgorithm:
    """Base class: one iteration = pre_processing, Estep, Mstep, post_processing,
    register_result, check_stopping_criteria; then finalization.

    Internally the model is an array ``[n_pix, n_ei]`` in ph cm-2 s-1 sr-1;
    Histograms are made only for the results.

    Parameters
    ----------
    initial_model : ndarray, shape (n_pix, n_ei)
        Starting image in ph cm-2 s-1 sr-1.
    datasets : list of DeconvolutionDataset
        Datasets sharing the sky (same model axes).
    mask : ndarray of bool, shape (n_pix, n_ei), optional
        True where a pixel is fitted. Zero-exposure pixels are always masked.
    parameter : dict
        The ``deconvolution:parameter`` mapping (nested form).
    model_unit : astropy.units.Unit
        Unit of the result histograms.
    start_iteration : int
        Iterations already done (when resuming).
    initial_bkg_norms : dict, optional
        ``{dataset: {component: norm}}`` to start from (default 1).
    previous_results : list of dict, optional
        Results of the iterations already done (when resuming).
    metadata : dict, optional
        Extra information stored with saved results (parameters, algorithm name).
    """

    #: Name used in parameter files.
    name = None
    #: Keys known under ``deconvolution:parameter``.
    parameter_keys = dict(_COMMON_KEYS)
    #: Statistics allowed for the stopping criterion.
    stopping_statistics = ("log-likelihood",)
    #: Whether a stopping threshold applies when the parameters give none (cosipy's RL does).
    default_stopping = False

    def __init__(self, initial_model, datasets, mask=None, parameter=None, model_unit=IMAGE_UNIT,
                 start_iteration=0, initial_bkg_norms=None, previous_results=None, metadata=None):
        if not datasets:
            raise CosiInputError("no dataset given to the deconvolution")
        self.datasets = list(datasets)
        self.names = [ds.name for ds in self.datasets]
        if len(set(self.names)) != len(self.names):
            raise CosiInputError(f"dataset names must be unique, got {self.names}")
        self.model_axes = self.datasets[0].engine.model_axes
        shape = tuple(self.model_axes.nbins)
        self.parameter = normalize_parameter(parameter or {})
        validate_tree(self.parameter, self.parameter_keys, "deconvolution:parameter")
        self.model_unit = u.Unit(model_unit)
        self._to_model_unit = IMAGE_UNIT.to(self.model_unit)
        self.metadata = dict(metadata or {})

        self.initial_model = np.array(initial_model, dtype=np.float64)
        if self.initial_model.shape != shape:
            raise CosiInputError(f"initial model of shape {self.initial_model.shape}, expected {shape}")
        if not np.all(np.isfinite(self.initial_model)) or np.any(self.initial_model < 0):
            raise CosiInputError("initial model must be finite and non-negative")

        self.exposure = sum(ds.engine.exposure_map for ds in self.datasets)
        user_mask = np.ones(shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if user_mask.shape != shape:
            raise CosiInputError(f"mask of shape {user_mask.shape}, expected {shape}")
        self.free = user_mask & (self.exposure > 0)
        n_zero = int(np.count_nonzero(user_mask & ~(self.exposure > 0)))
        if n_zero:
            logger.info("%d zero-exposure (pixel, energy) bins are masked", n_zero)
        if not self.free.any():
            raise CosiInputError("every model pixel is masked or has zero exposure")

        self.iteration_max = _number(self.parameter.get("iteration_max", DEFAULT_ITERATION_MAX),
                                     "deconvolution:parameter:iteration_max", low=1, integer=True)
        mf = self.parameter.get("minimum_flux")
        self.minimum_flux = 0.0 if mf is None else _quantity(
            mf, "deconvolution:parameter:minimum_flux", IMAGE_UNIT, default_unit=str(IMAGE_UNIT), low=0.0)

        rw = self.parameter.get("response_weighting", {})
        self.response_weighting = _flag(rw.get("activate", False),
                                        "deconvolution:parameter:response_weighting:activate")
        index = _number(rw.get("index", DEFAULT_RESPONSE_WEIGHTING_INDEX),
                        "deconvolution:parameter:response_weighting:index")
        # cosipy's filter: (X_j / max X)^index with the maximum over all pixels and energies.
        self.response_filter = np.where(self.exposure > 0, self.exposure / self.exposure.max(), 0.0) ** index \
            if self.response_weighting else None

        self._configure_backgrounds(initial_bkg_norms)
        self._configure_stopping()

        self.iteration_count = int(start_iteration)
        self.results = list(previous_results or [])
        self.model = None
        self.delta_model = None
        self.processed_delta_model = None
        self.alpha = 1.0
        self.loglikelihood_list = None
        self._eps_current = False

    # ---- configuration ------------------------------------------------------------------------
    def _configure_backgrounds(self, initial_bkg_norms):
        key = "deconvolution:parameter:background_normalization_optimization"
        node = self.parameter.get("background_normalization_optimization", {})
        self.bkg_optimization = _flag(node.get("activate", False), f"{key}:activate")
        ranges = node.get("range", {}) or {}
        known = sorted({name for ds in self.datasets for name in ds.background_names})
        for name, value in ranges.items():
            if name != ALL_BACKGROUNDS and name not in known:
                raise CosiInputError(f"'{key}:range:{name}' names no background; known: {known}")
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise CosiInputError(f"'{key}:range:{name}' must be [low, high], got {value!r}")
            lo = _number(value[0], f"{key}:range:{name}", low=0.0)
            hi = _number(value[1], f"{key}:range:{name}", low=lo, allow_inf=True)
            ranges[name] = (lo, hi)
        self.bkg_norms, self.bkg_range, self.bkg_totals = {}, {}, {}
        initial_bkg_norms = initial_bkg_norms or {}
        for ds in self.datasets:
            given = initial_bkg_norms.get(ds.name, {})
            self.bkg_norms[ds.name] = {c: float(given.get(c, 1.0)) for c in ds.background_names}
            self.bkg_range[ds.name] = {c: ranges.get(c, ranges.get(ALL_BACKGROUNDS, DEFAULT_BKG_NORM_RANGE))
                                       for c in ds.background_names}
            self.bkg_totals[ds.name] = {c: ds.engine.background_total(c) for c in ds.background_names}
            for c, total in self.bkg_totals[ds.name].items():
                if total <= 0 and self.bkg_optimization:
                    logger.warning("background '%s' of dataset '%s' is empty: its normalization stays fixed",
                                   c, ds.name)

    def _configure_stopping(self):
        key = "deconvolution:parameter:stopping_criteria"
        node = self.parameter.get("stopping_criteria")
        if node is None and not self.default_stopping:
            self.stopping_statistics = None
            self.stopping_threshold = None
            return
        node = node or {}
        self.stopping_statistics = node.get("statistics", self.stopping_statistics[0])
        if self.stopping_statistics not in type(self).stopping_statistics:
            raise CosiInputError(f"'{key}:statistics' must be one of {list(type(self).stopping_statistics)} "
                                 f"for {self.name}, got {self.stopping_statistics!r}")
        self.stopping_threshold = _number(node.get("threshold", DEFAULT_STOPPING_THRESHOLD), f"{key}:threshold",
                                          low=0.0)

    # ---- engine helpers (arrays) -------------------------------------------------------------
    def _sky_at_bins(self, image):
        return [ds.engine.sky_expectation_at_bins(image) for ds in self.datasets]

    def _bkg_at_bins(self, norms):
        return [ds.engine.background_at_bins(norms[ds.name]) for ds in self.datasets]

    def _bkg_total(self, norms, ds):
        return sum(norms[ds.name][c] * self.bkg_totals[ds.name][c] for c in ds.background_names)

    def _loglikelihoods(self, sky, bkg, image, norms):
        """Log-likelihood per dataset from expectations at the non-empty bins."""
        out = []
        for ds, s, b in zip(self.datasets, sky, bkg):
            total = float(np.sum(ds.engine.exposure_map * image)) + self._bkg_total(norms, ds)
            out.append(ds.engine.log_likelihood_from(s + b, total))
        return out

    def _expectation(self, image, norms):
        """Expectations at the bins (sky, background) and the log-likelihoods for a state."""
        sky = self._sky_at_bins(image)
        bkg = self._bkg_at_bins(norms)
        return sky, bkg, self._loglikelihoods(sky, bkg, image, norms)

    def _ratios(self):
        """``d_i / eps_i`` per dataset at the current state."""
        return [ds.engine.data.counts / (s + b) for ds, s, b in zip(self.datasets, self._sky, self._bkg)]

    def _transpose(self, weights):
        return sum(ds.engine.transpose_product(w) for ds, w in zip(self.datasets, weights))

    def _bkg_products(self, weights):
        return {ds.name: ds.engine.background_products(w) for ds, w in zip(self.datasets, weights)}

    def _clip_bkg(self, name, component, value):
        lo, hi = self.bkg_range[name][component]
        return float(min(max(value, lo), hi))

    def _em_bkg_norms(self, weights):
        """EM update of every background norm, clipped to its range."""
        if not self.bkg_optimization:
            return {k: dict(v) for k, v in self.bkg_norms.items()}
        products = self._bkg_products(weights)
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
        return self.datasets[0].engine.image_histogram(np.asarray(values) * self._to_model_unit,
                                                        unit=self.model_unit)

    # ---- the steps ----------------------------------------------------------------------------
    def initialization(self):
        """Set the model to the (constrained) initial model and evaluate its expectations."""
        self.model = self._constrain(self.initial_model)
        self._sky, self._bkg, self.loglikelihood_list = self._expectation(self.model, self.bkg_norms)
        self._eps_current = True
        logger.info("%s initialized: log-likelihood %s, background norms %s", self.name,
                    self.loglikelihood_list, self.bkg_norms)

    def pre_processing(self):
        """Nothing by default."""

    def Estep(self):
        """Expected counts at the non-empty bins for the current model (reused when current)."""
        if not self._eps_current:
            self._sky, self._bkg, self.loglikelihood_list = self._expectation(self.model, self.bkg_norms)
            self._eps_current = True

    def Mstep(self):
        """EM delta image ``x (T/X - 1)`` on the free pixels and the new background norms."""
        weights = self._ratios()
        t = self._transpose(weights)
        ratio = np.divide(t, self.exposure, out=np.zeros_like(t), where=self.free)
        self.delta_model = np.where(self.free, self.model * (ratio - 1.0), 0.0)
        self._new_bkg_norms = self._em_bkg_norms(weights)

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
        self._sky, self._bkg, self.loglikelihood_list = self._expectation(self.model, norms)
        self._eps_current = True

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
        if self.stopping_statistics == "log-posterior":
            return result["log_posterior"]
        return float(np.sum(result["loglikelihood"]))

    def check_stopping_criteria(self):
        """Stop at ``iteration_max`` or when the statistic increases by less than the threshold.

        A decrease (possible with acceleration or priors) is logged and does not stop.
        """
        if self.iteration_count >= self.iteration_max:
            return True
        if self.stopping_threshold is None or len(self.results) < 2:
            return False
        delta = self._statistic(self.results[-1]) - self._statistic(self.results[-2])
        if delta < 0:
            logger.warning("%s decreased by %.4g in iteration %d: the reconstruction may be unstable",
                           self.stopping_statistics, -delta, self.iteration_count)
            return False
        if delta < self.stopping_threshold:
            logger.info("%s increased by %.4g < %.4g: stopping", self.stopping_statistics, delta,
                        self.stopping_threshold)
            return True
        return False

    def finalization(self):
        """Save the results when ``save_results:activate`` is set."""
        node = self.parameter.get("save_results", {}) or {}
        if not _flag(node.get("activate", False), "deconvolution:parameter:save_results:activate"):
            return None
        from .results import save_results

        only_final = _flag(node.get("only_final_result", False),
                           "deconvolution:parameter:save_results:only_final_result")
        return save_results(self.results, node.get("directory", "./results"), only_final_result=only_final,
                            algorithm=self.name, dataset_names=self.names, **self.metadata)

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


class RichardsonLucySimple(DeconvolutionAlgorithm):
    """Classic ML-EM (``RLsimple``), optionally with response weighting.

    Parameters are those of :class:`DeconvolutionAlgorithm`. Known keys:
    ``iteration_max``, ``minimum_flux``, ``response_weighting {activate, index}``,
    ``background_normalization_optimization {activate, range}``,
    ``stopping_criteria {statistics: log-likelihood, threshold}``, ``save_results``.
    Without response weighting and clipping, each iteration never decreases the
    likelihood and conserves the counts: ``sum_j X_j x_j + sum_k b_k sum_i B_k,i = sum_i d_i``.
    """

    name = "RLsimple"


class RichardsonLucy(DeconvolutionAlgorithm):
    """Accelerated, smoothed, response-weighted Richardson-Lucy (``RL``).

    Additional keys: ``acceleration {activate, alpha_max, line_search {activate, steps}}``,
    ``smoothing {activate, FWHM {value, unit}}``. The default stopping threshold is
    0.01 in log-likelihood (as in cosipy).

    Notes
    -----
    The step ``alpha = min(-x_j / delta_j)`` (cosipy's) is not chosen by the likelihood:
    it sets the limiting pixel to zero, where a multiplicative update keeps it unless
    smoothing feeds it again, and the likelihood can drop for an iteration (as in the
    COSI 511 keV tutorial). With ``line_search`` the step maximizes the likelihood on
    ``[1, alpha]`` (``steps`` golden-section evaluations, each O(nnz) after one extra
    forward folding of the delta image), so the likelihood never decreases when no
    pixel is clipped.
    """

    name = "RL"
    parameter_keys = dict(_COMMON_KEYS, acceleration={"activate": LEAF, "alpha_max": LEAF,
                                                      "line_search": {"activate": LEAF, "steps": LEAF}},
                          smoothing={"activate": LEAF, "FWHM": {"value": LEAF, "unit": LEAF}})
    default_stopping = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        key = "deconvolution:parameter"
        acc = self.parameter.get("acceleration", {}) or {}
        self.acceleration = _flag(acc.get("activate", False), f"{key}:acceleration:activate")
        self.alpha_max = _number(acc.get("alpha_max", DEFAULT_ALPHA_MAX), f"{key}:acceleration:alpha_max", low=1.0)
        ls = acc.get("line_search", {}) or {}
        self.line_search = _flag(ls.get("activate", False), f"{key}:acceleration:line_search:activate")
        self.line_search_steps = _number(ls.get("steps", DEFAULT_LINE_SEARCH_STEPS),
                                         f"{key}:acceleration:line_search:steps", low=2, integer=True)
        sm = self.parameter.get("smoothing", {}) or {}
        self.smoothing = _flag(sm.get("activate", False), f"{key}:smoothing:activate")
        self.smoothing_fwhm = 0.0
        if self.smoothing:
            if "FWHM" not in sm:
                raise CosiInputError(f"'{key}:smoothing:FWHM' is needed when smoothing is active")
            self.smoothing_fwhm = _quantity(sm["FWHM"], f"{key}:smoothing:FWHM", u.rad, default_unit="deg",
                                            low=0.0)
            if not isinstance(self.model_axes[0], HealpixAxis):
                raise CosiInputError(f"'{key}:smoothing' needs a HEALPix model axis, got '{self.model_axes[0].label}'")
            logger.info("delta images are smoothed with a Gaussian of FWHM %.4g deg",
                        np.degrees(self.smoothing_fwhm))

    def smooth(self, image):
        """Gaussian smoothing of each energy plane on the sphere (healpy)."""
        axis = self.model_axes[0]
        nest = str(axis.scheme).upper() == "NESTED"
        out = np.empty_like(image)
        for e in range(image.shape[1]):
            out[:, e] = hp.smoothing(image[:, e], fwhm=self.smoothing_fwhm, nest=nest)
        return out

    def calc_alpha(self, delta, model):
        """Largest step keeping the model non-negative, capped at alpha_max and floored at 1."""
        shrinking = self.free & (delta < 0)
        if not np.any(shrinking):
            return self.alpha_max
        alpha = float(np.min(-model[shrinking] / delta[shrinking]))
        return max(1.0, min(alpha, self.alpha_max))

    def _line_search(self, delta, alpha_high, norms):
        """Golden-section maximization of the log-likelihood over alpha in [1, alpha_high].

        The expected counts are affine in alpha, so after one forward folding of the
        delta image each trial costs O(nnz). Returns alpha.
        """
        d_sky = self._sky_at_bins(delta)
        bkg = self._bkg_at_bins(norms)
        base_total = [float(np.sum(ds.engine.exposure_map * self.model)) + self._bkg_total(norms, ds)
                      for ds in self.datasets]
        d_total = [float(np.sum(ds.engine.exposure_map * delta)) for ds in self.datasets]

        def loglike(alpha):
            value = 0.0
            for ds, s, ds_, b, t0, dt in zip(self.datasets, self._sky, d_sky, bkg, base_total, d_total):
                log_sum, bad = counts_log_sum(ds.engine.data.counts, s + alpha * ds_ + b)
                if bad >= 0:
                    return -np.inf
                value += log_sum - (t0 + alpha * dt)
            return value

        lo, hi = 1.0, float(alpha_high)
        a = hi - _GOLDEN * (hi - lo)
        b = lo + _GOLDEN * (hi - lo)
        fa, fb = loglike(a), loglike(b)
        for _ in range(self.line_search_steps - 2):
            if fa >= fb:
                hi, b, fb = b, a, fa
                a = hi - _GOLDEN * (hi - lo)
                fa = loglike(a)
            else:
                lo, a, fa = a, b, fb
                b = lo + _GOLDEN * (hi - lo)
                fb = loglike(b)
        best, f_best = (a, fa) if fa >= fb else (b, fb)
        # never worse than the plain step (cosipy's fallback)
        if f_best < loglike(1.0):
            best = 1.0
        return best

    def post_processing(self):
        """Response weighting, smoothing, acceleration, then the update and its expectations."""
        delta = self.delta_model * self.response_filter if self.response_weighting else self.delta_model.copy()
        if self.smoothing:
            delta = np.where(self.free, self.smooth(delta), 0.0)
        self.processed_delta_model = delta
        alpha = self.calc_alpha(delta, self.model) if self.acceleration else 1.0
        if self.acceleration and self.line_search and alpha > 1.0:
            alpha = self._line_search(delta, alpha, self._new_bkg_norms)
        self.alpha = alpha
        # a fresh folding of the new model (not the affine update used by the line search) keeps
        # the stored likelihood free of rounding accumulated over iterations
        self._update(self.model + alpha * delta, self._new_bkg_norms)


def _healpix_neighbours(axis):
    """Neighbour table [8, n_pix] of a HEALPix axis with -1 entries kept."""
    nest = str(axis.scheme).upper() == "NESTED"
    return hp.get_all_neighbours(axis.nside, np.arange(axis.nbins), nest=nest)


class PriorTSV:
    """Total squared variation over HEALPix neighbours.

    ``log P = -c sum_j sum_{k in N(j)} (x_j - x_k)^2`` per energy plane, with ``N(j)``
    the (up to 8) neighbours of pixel j (cosipy's ``PriorTSV``). Pairs involving a
    masked pixel are left out (a masked pixel is unknown, not zero). The gradient
    is exact; for symmetric neighbourhoods it is cosipy's ``-4 c sum_k (x_j - x_k)``.

    Parameters
    ----------
    coefficient : float
        ``c``, for images in ph cm-2 s-1 sr-1.
    model_axes : histpy.Axes
        [HEALPix lb, Ei].
    free : ndarray of bool, shape (n_pix, n_ei)
    """

    def __init__(self, coefficient, model_axes, free):
        if not isinstance(model_axes[0], HealpixAxis):
            raise CosiInputError("the TSV prior needs a HEALPix model axis")
        self.coefficient = float(coefficient)
        nb = _healpix_neighbours(model_axes[0])
        self.pixel = np.broadcast_to(np.arange(nb.shape[1]), nb.shape)
        self.neighbour = np.where(nb >= 0, nb, self.pixel)
        # valid[k, j, e]: the pair (j, k-th neighbour) counts in energy plane e
        self.valid = (nb >= 0)[:, :, None] & free[None, :, :] & free[self.neighbour]

    def _diff(self, image):
        return np.where(self.valid, image[None, :, :] - image[self.neighbour], 0.0)

    def log_prior(self, image):
        """Log prior of an image [n_pix, n_ei]."""
        return -self.coefficient * float(np.sum(self._diff(image) ** 2))

    def grad_log_prior(self, image):
        """Gradient of the log prior with respect to every pixel."""
        diff = self._diff(image)
        grad = -2.0 * self.coefficient * diff.sum(axis=0)
        # the same pair seen from the neighbour's side
        np.add.at(grad, self.neighbour.ravel(), 2.0 * self.coefficient * diff.reshape(-1, image.shape[1]))
        return grad


class PriorEntropy:
    """Entropy prior ``log P = c sum_j x_j (1 - ln(x_j / m_j))`` (cosipy's ``PriorEntropy``).

    Parameters
    ----------
    coefficient : float
        ``c``.
    prior_map : float or ndarray
        Default image ``m`` in ph cm-2 s-1 sr-1 (scalar, per energy [n_ei], or [n_pix, n_ei]).
    free : ndarray of bool, shape (n_pix, n_ei)
    """

    def __init__(self, coefficient, prior_map, free):
        self.coefficient = float(coefficient)
        self.prior_map = np.broadcast_to(np.asarray(prior_map, dtype=np.float64), free.shape)
        self.free = free

    def _log_ratio(self, image):
        tiny = np.finfo(np.float64).tiny
        return np.log(np.maximum(image, tiny) / self.prior_map)

    def log_prior(self, image):
        """Log prior of an image over the free pixels."""
        terms = image * (1.0 - self._log_ratio(image))
        return self.coefficient * float(np.sum(terms[self.free]))

    def grad_log_prior(self, image):
        """``-c ln(x / m)`` on the free pixels."""
        return np.where(self.free, -self.coefficient * self._log_ratio(image), 0.0)


class MAPRichardsonLucy(DeconvolutionAlgorithm):
    """Richardson-Lucy with priors (``MAP_RL``): gamma, TSV and entropy.

    Parameter block (cosipy's form)::

        prior:
          TSV: {coefficient: 1.0e+6}
          entropy: {coefficient: 1.0, prior_map: {value: 1e-4, unit: cm-2 s-1 sr-1}}
          gamma:
            model: {theta: {value: .inf, unit: cm-2 s-1 sr-1}, k: {value: 0.9}}
            background: {theta: {value: .inf}, k: {value: 1.0}}

    Without a gamma block the gamma prior is flat (k = 1, theta = inf). The
    stopping statistic defaults to the log-posterior.
    """

    name = "MAP_RL"
    parameter_keys = dict(_COMMON_KEYS, prior={
        "TSV": {"coefficient": LEAF},
        "entropy": {"coefficient": LEAF, "prior_map": {"value": LEAF, "unit": LEAF}},
        "gamma": {"model": {"theta": {"value": LEAF, "unit": LEAF}, "k": {"value": LEAF}},
                  "background": {"theta": {"value": LEAF}, "k": {"value": LEAF}}},
    })
    stopping_statistics = ("log-posterior", "log-likelihood")
    default_stopping = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        key = "deconvolution:parameter:prior"
        prior = self.parameter.get("prior", {}) or {}
        gamma = prior.get("gamma", {}) or {}
        model = gamma.get("model", {}) or {}
        bkg = gamma.get("background", {}) or {}
        self.gamma_k = _number(_get(model, "k:value", 1.0), f"{key}:gamma:model:k:value", low=0.0)
        self.gamma_theta = _quantity(model["theta"], f"{key}:gamma:model:theta", IMAGE_UNIT,
                                     default_unit=str(IMAGE_UNIT), allow_inf=True) if "theta" in model else np.inf
        self.gamma_bkg_k = _number(_get(bkg, "k:value", 1.0), f"{key}:gamma:background:k:value", low=0.0)
        self.gamma_bkg_theta = _number(_get(bkg, "theta:value", np.inf), f"{key}:gamma:background:theta:value",
                                       allow_inf=True)
        for name, value in (("model", self.gamma_theta), ("background", self.gamma_bkg_theta)):
            if value <= 0:
                raise CosiInputError(f"'{key}:gamma:{name}:theta:value' must be positive, got {value}")
        self.priors = {}
        if "TSV" in prior:
            coef = _number(_get(prior, "TSV:coefficient"), f"{key}:TSV:coefficient", low=0.0)
            self.priors["TSV"] = PriorTSV(coef, self.model_axes, self.free)
        if "entropy" in prior:
            node = prior["entropy"]
            coef = _number(node.get("coefficient"), f"{key}:entropy:coefficient", low=0.0)
            if "prior_map" not in node:
                raise CosiInputError(f"'{key}:entropy:prior_map' is needed by the entropy prior")
            prior_map = _quantity(node["prior_map"], f"{key}:entropy:prior_map", IMAGE_UNIT,
                                  default_unit=str(IMAGE_UNIT))
            if np.any(np.asarray(prior_map) <= 0):
                raise CosiInputError(f"'{key}:entropy:prior_map:value' must be positive")
            self.priors["entropy"] = PriorEntropy(coef, prior_map, self.free)
        self.prior_filter = np.ones(self.free.shape)
        self.log_priors = {}
        self.log_posterior = None

    def log_gamma_prior(self, image, norms):
        """Gamma log priors (up to constants) of the model and of the background norms."""
        eps = np.finfo(np.float64).eps
        values = image[self.free]
        model = (self.gamma_k - 1.0) * float(np.sum(np.log(values + eps))) - float(np.sum(values)) / self.gamma_theta
        bkg = 0.0
        if self.bkg_optimization:
            for comps in norms.values():
                for b in comps.values():
                    bkg += (self.gamma_bkg_k - 1.0) * math.log(max(b, eps)) - b / self.gamma_bkg_theta
        return model, bkg

    def _posterior(self):
        self.log_priors = {}
        self.log_priors["gamma_model"], self.log_priors["gamma_bkg"] = self.log_gamma_prior(self.model, self.bkg_norms)
        for name, prior in self.priors.items():
            self.log_priors[name] = prior.log_prior(self.model)
        self.log_posterior = float(np.sum(self.loglikelihood_list) + sum(self.log_priors.values()))

    def initialization(self):
        super().initialization()
        self._posterior()

    def Mstep(self):
        """One-step-late MAP-EM update of the model and the background norms."""
        weights = self._ratios()
        t = self._transpose(weights)
        denom = self.exposure + 1.0 / self.gamma_theta
        model_em = np.divide(self.model * t + self.gamma_k - 1.0, denom, out=np.zeros_like(t), where=self.free)
        model_em = np.where(self.free, np.maximum(model_em, self.minimum_flux), 0.0)
        grad = np.zeros_like(t)
        for prior in self.priors.values():
            grad += prior.grad_log_prior(model_em)
        exponent = np.divide(grad, denom, out=np.zeros_like(t), where=self.free)
        self.prior_filter = np.exp(np.clip(exponent, -_MAX_FILTER_EXPONENT, _MAX_FILTER_EXPONENT))
        self.delta_model = np.where(self.free, self.prior_filter * model_em - self.model, 0.0)
        self._new_bkg_norms = {k: dict(v) for k, v in self.bkg_norms.items()}
        if self.bkg_optimization:
            products = self._bkg_products(weights)
            for ds in self.datasets:
                for c in ds.background_names:
                    total = self.bkg_totals[ds.name][c]
                    if total <= 0:
                        continue
                    b = self.bkg_norms[ds.name][c]
                    value = (b * products[ds.name][c] + self.gamma_bkg_k - 1.0) / (total + 1.0 / self.gamma_bkg_theta)
                    self._new_bkg_norms[ds.name][c] = self._clip_bkg(ds.name, c, value)

    def post_processing(self):
        super().post_processing()
        self._posterior()

    def _extra_result(self):
        prior_filter = self.datasets[0].engine.image_histogram(self.prior_filter, unit=u.dimensionless_unscaled)
        return {"prior_filter": prior_filter,
                "log_prior": dict(self.log_priors), "log_posterior": self.log_posterior}

    def register_result(self):
        super().register_result()
        logger.info("iteration %d: log-posterior %.8g, log-priors %s", self.iteration_count, self.log_posterior,
                    self.log_priors)


#: Algorithms by the name used in parameter files.
ALGORITHMS = {cls.name: cls for cls in (RichardsonLucySimple, RichardsonLucy, MAPRichardsonLucy)}
