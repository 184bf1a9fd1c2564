"""Background normalizations fitted clear of the sources: the exclusion-mask iteration in the Compton data space.

The iteration of kernel background estimation on flat images, on COSI's likelihood. Start
from the background templates and an empty mask, then repeat until the mask stops changing:

1. a significance map (:class:`~.ts_map.TSMapEstimator`) of the data clear of the mask,
   with the backgrounds at their current norms;
2. the strongest peak above the threshold outside the mask, dilated by a radius, joins the
   sky mask;
3. the data-space bins whose cones reach the masked sky are left out
   (:class:`~.exclusion.ExcludedBins`), and the background norms (per template, and per
   group of rows where asked) are refitted on the rest.

Two departures from the flat-image recipe, both forced by the Compton data space. The map is
computed on the data clear of the mask, its test sources' expected counts summed over the
kept bins only: a bright source's counts spread along cones over the whole data space, so on
all the data every test position away from it picks up some of its counts (with a source of a
few per cent of the counts, every pixel of the sky passes 5 sigma and the literal mask covers
the sky). And the mask grows by one peak an iteration, the strongest, for the same reason:
weaker peaks are judged only once the bins of the stronger ones are out.

The result keeps the mask and the history of every iteration; its ``norms`` are background
normalizations as the engine, RL and the TS maps take them (a number per template, or one
value per row for a template fitted in groups of rows).
"""
import dataclasses
import logging

import healpy as hp
import numpy as np
from astropy.table import Table
from histpy import Histogram

from .._atomic import atomic_path
from ..engine.reductions import poisson_log_likelihood
from ..errors import CosiInputError
from .exclusion import ExcludedBins
from .multiscale import local_maxima
from .ts_map import TSMapEstimator

logger = logging.getLogger(__name__)

#: Newton iterations of a background fit at most, and the log-likelihood change that ends it.
_MAX_NEWTON, _LOGL_TOLERANCE = 100, 1e-9


@dataclasses.dataclass
class BackgroundFit:
    """Background normalizations fitted by maximum likelihood on the kept bins.

    Attributes
    ----------
    norms : dict
        Template name to its normalization: a number, or one value per row for a template fitted in groups.
    errors : dict
        Template name to the error of its normalization (per group for grouped templates), from the
        observed information.
    values : dict
        The fitted value of every normalization, keyed as the plugin's background parameters: the template
        name, or ``{template}_g{label}`` for each group of a grouped template.
    value_errors : dict
        Their errors, keyed as ``values``.
    log_likelihood : float
        Poisson log-likelihood of the kept bins at the best fit (without the ``ln d!`` terms).
    """

    norms: dict
    errors: dict
    values: dict
    value_errors: dict
    log_likelihood: float


def fit_background_norms(dataset, excluded=None, background_groups=None, start=None):
    """Fit the background normalizations of a dataset on the bins clear of an exclusion (no sky model).

    Parameters
    ----------
    dataset : COSIDataset
    excluded : ExcludedBins, optional
        Bins left out (default none).
    background_groups : dict of str to array_like of int, optional
        Templates fitted with one normalization per group of rows: ``groups[row]`` is the group of each
        row (as for the plugin's ``background_groups``).
    start : dict, optional
        Starting normalizations (numbers, default 1).

    Returns
    -------
    BackgroundFit
    """
    engine = dataset.engine
    if not engine.background_names:
        raise CosiInputError(f"dataset '{dataset.name}' has no background template to fit")
    excluded = excluded or ExcludedBins.nothing(engine)
    groups = _groups(engine, background_groups)
    keep = excluded.kept_at_bins(engine)
    counts = engine.data.counts[keep]
    rows = engine.data.row[keep]
    components, at_bins, totals = [], [], []
    for name in engine.background_names:
        template = engine.background_template_at_bins(name)[keep]
        row_totals = excluded.kept_template_row_totals(engine, name)
        labels, row_group = groups.get(name, ([None], np.zeros(engine.n_rows, dtype=np.int64)))
        for g, label in enumerate(labels):
            in_group = row_group == g
            components.append((name, label))
            at_bins.append(np.where(in_group[rows], template, 0.0))
            totals.append(float(row_totals[in_group].sum()))
    at_bins, totals = np.array(at_bins), np.array(totals)
    empty = [name if label is None else f"{name} (group {label})"
             for (name, label), total in zip(components, totals) if total <= 0]
    if empty:
        raise CosiInputError(f"no kept data bin left for background {', '.join(empty)} of dataset "
                             f"'{dataset.name}': shrink the exclusion or merge the groups")
    theta = np.array([float((start or {}).get(name, 1.0)) for name, _ in components])
    theta *= counts.sum() / float(theta @ totals)  # the totals matched: Newton starts near the optimum
    theta, information, log_likelihood = _newton(at_bins, totals, counts, theta)
    errors_flat = np.sqrt(np.diag(np.linalg.pinv(information)))
    norms, errors = {}, {}
    for name in engine.background_names:
        chosen = [i for i, (n, _) in enumerate(components) if n == name]
        if name in groups:
            norms[name], errors[name] = theta[chosen][groups[name][1]], errors_flat[chosen]
        else:
            norms[name], errors[name] = float(theta[chosen[0]]), float(errors_flat[chosen[0]])
    keys = [name if label is None else f"{name}_g{label}" for name, label in components]
    values = {key: float(value) for key, value in zip(keys, theta)}
    value_errors = {key: float(error) for key, error in zip(keys, errors_flat)}
    return BackgroundFit(norms, errors, values, value_errors, log_likelihood)


def _groups(engine, background_groups):
    """{template: (group labels, group index of each row)}, labelled as the plugin's groups are."""
    groups = {}
    for name, group_of_row in (background_groups or {}).items():
        if name not in engine.background_names:
            raise CosiInputError(f"background_groups names unknown background {name!r}; known: "
                                 f"{engine.background_names}")
        group_of_row = np.asarray(group_of_row)
        if group_of_row.shape != (engine.n_rows,) or group_of_row.dtype.kind not in "iu" or group_of_row.min() < 0:
            raise CosiInputError(f"background_groups['{name}'] must give a group index >= 0 to each of the "
                                 f"{engine.n_rows} rows, got shape {group_of_row.shape} ({group_of_row.dtype})")
        labels, row_group = np.unique(group_of_row, return_inverse=True)
        groups[name] = (labels.tolist(), row_group)
    return groups


def _newton(at_bins, totals, counts, theta):
    """Maximize ``sum d ln(theta . A) - theta . t`` over theta >= 0: (theta, information, log-likelihood)."""
    def log_likelihood(values):
        eps = values @ at_bins
        return poisson_log_likelihood(counts, eps, float(values @ totals), 0.0)[0]

    current = log_likelihood(theta)
    for _ in range(_MAX_NEWTON):
        eps = theta @ at_bins
        weight = counts / eps
        gradient = at_bins @ weight - totals
        information = (at_bins * (weight / eps)) @ at_bins.T
        step = np.linalg.lstsq(information, gradient, rcond=None)[0]
        scale = 1.0
        while True:  # halve into the positive orthant and uphill
            trial = np.maximum(theta + scale * step, theta / 10)
            value = log_likelihood(trial)
            if value >= current - 1e-12 * abs(current) or scale < 1e-6:
                break
            scale /= 2
        theta, change, current = trial, value - current, value
        if abs(change) < _LOGL_TOLERANCE:
            break
    eps = theta @ at_bins
    information = (at_bins * (counts / eps ** 2)) @ at_bins.T
    return theta, information, current


@dataclasses.dataclass
class BackgroundResult:
    """The exclusion-mask iteration's result.

    Attributes
    ----------
    norms, errors : dict
        The final background normalizations (as the engine takes them) and their errors.
    values, value_errors : dict
        The final normalizations keyed as the plugin's background parameters, and their errors
        (:class:`BackgroundFit`).
    sky_mask : histpy.Histogram
        The excluded model-grid pixels (1 excluded, 0 kept).
    excluded : ExcludedBins
        The data-space bins left out of the final fit.
    history : list of dict
        One entry per iteration: the peak added (``l``, ``b``, ``sqrt_ts``; NaN for the first fit, on all
        the data), the masked pixels, the excluded fraction of the data bins and of the counts, the fitted
        ``values`` and ``value_errors`` (keyed as :attr:`values`) and the log-likelihood of the kept bins.
    converged : bool
        Whether the mask stopped changing within the iterations allowed.
    """

    norms: dict
    errors: dict
    values: dict
    value_errors: dict
    sky_mask: Histogram
    excluded: ExcludedBins
    history: list
    converged: bool

    def apply_to(self, plugin):
        """Set a plugin's background parameters to the fitted values (its groups must match the fit's)."""
        parameters = plugin.background_parameters
        if set(parameters) != set(self.values):
            raise CosiInputError(f"plugin {plugin.name} has background parameters {sorted(parameters)}, the fit "
                                 f"{sorted(self.values)}: fit with the plugin's background_groups")
        for key, value in self.values.items():
            parameter = parameters[key]
            if parameter.max_value is not None and value > parameter.max_value:
                raise CosiInputError(f"fitted {parameter.name} = {value:g} is above its maximum "
                                     f"{parameter.max_value:g}: widen the plugin's background bounds")
            parameter.value = max(value, parameter.min_value if parameter.min_value is not None else value)

    def write(self, path, overwrite=True):
        """Write the mask and the history to HDF5 (atomically): the mask as a histpy Histogram under
        ``sky_mask``, the history as a table under ``history`` (astropy)."""
        with atomic_path(path, overwrite=overwrite) as tmp:
            self.sky_mask.write(tmp, name="sky_mask")
            table = Table(rows=[{k: v for k, v in entry.items() if not isinstance(v, dict)} for entry in self.history])
            for key in self.values:
                table[f"{key}_norm"] = [entry["values"][key] for entry in self.history]
                table[f"{key}_norm_err"] = [entry["value_errors"][key] for entry in self.history]
            table.write(tmp, path="history", format="hdf5", append=True, serialize_meta=True)


def _summary(value):
    """A norm as one number (the mean over rows for a grouped template)."""
    return float(np.mean(value))


class BackgroundEstimator:
    """Background norms by the exclusion-mask iteration (module docstring).

    Parameters
    ----------
    spectrum : astromodels spectral function
        Spectrum of the significance map's test source.
    kernel : {'point', 'gaussian', 'disk'}
        The significance map's test source.
    width : float, optional
        Its width in deg (extended kernels).
    nside : int, optional
        NSIDE of the significance map (default the model grid's).
    threshold : float
        ``sqrt_ts`` above which a peak is masked.
    radius : float
        Radius in deg of the disc masked around a peak (the dilation).
    leakage : float
        Fraction of a uniform source over the masked sky the kept bins may receive
        (:meth:`ExcludedBins.of_sky_region`).
    max_iterations : int
        Peaks masked at most.
    em_channels : slice or list of int, optional
        Measured-energy bins of the significance map.
    """

    def __init__(self, spectrum, kernel="point", width=None, nside=None, threshold=5.0, radius=10.0, leakage=1e-3,
                 max_iterations=10, em_channels=None):
        if radius <= 0:
            raise CosiInputError(f"mask radius must be > 0 deg, got {radius}")
        if not 0.0 < leakage < 1.0:
            raise CosiInputError(f"leakage must be in (0, 1), got {leakage}")
        self.spectrum, self.kernel, self.width, self.nside = spectrum, kernel, width, nside
        self.threshold, self.radius, self.leakage = float(threshold), float(radius), float(leakage)
        self.max_iterations, self.em_channels = int(max_iterations), em_channels

    def run(self, dataset, background_groups=None, progress=True):
        """Run the iteration on a dataset.

        Parameters
        ----------
        dataset : COSIDataset
        background_groups : dict of str to array_like of int, optional
            Templates fitted with one normalization per group of rows (see :func:`fit_background_norms`).
        progress : bool

        Returns
        -------
        BackgroundResult
        """
        engine = dataset.engine
        model_axis = engine.model_axes[0]
        estimator = TSMapEstimator(self.spectrum, kernel=self.kernel, width=self.width,
                                   nside=self.nside or model_axis.nside, scheme=model_axis.scheme,
                                   em_channels=self.em_channels)
        test_in_model = _test_to_model_pixels(estimator.axis, model_axis)
        excluded = ExcludedBins.nothing(engine)
        fit = fit_background_norms(dataset, excluded, background_groups)
        history = [self._entry(dataset, 0, fit, excluded, np.nan, np.nan, np.nan)]
        converged = False
        for iteration in range(1, self.max_iterations + 1):
            outside = np.flatnonzero(~excluded.sky_mask[test_in_model])
            if outside.size == 0:
                raise CosiInputError(f"the exclusion mask covers the whole sky after {iteration - 1} iterations: "
                                     "raise the threshold or shrink the radius")
            result = estimator.run(dataset, pixels=outside, background_norms=fit.norms, excluded=excluded,
                                   progress=progress)
            peaks = local_maxima(result.values("sqrt_ts"), estimator.nside, estimator.axis.is_nested,
                                 self.threshold)
            if peaks.size == 0:
                converged = True
                break
            peak = int(peaks[0])
            lon, lat = hp.pix2ang(estimator.nside, peak, nest=estimator.axis.is_nested, lonlat=True)
            disc = hp.query_disc(model_axis.nside, hp.ang2vec(lon, lat, lonlat=True), np.radians(self.radius),
                                 inclusive=True, nest=model_axis.is_nested)
            sky_mask = excluded.sky_mask.copy()
            sky_mask[disc] = True
            excluded = ExcludedBins.of_sky_region(engine, sky_mask, self.leakage)
            fit = fit_background_norms(dataset, excluded, background_groups, start=_means(fit.norms))
            sqrt_ts = float(result.values("sqrt_ts")[peak])
            history.append(self._entry(dataset, iteration, fit, excluded, lon, lat, sqrt_ts))
            logger.info("exclusion iteration %d: peak at (l, b) = (%.1f, %.1f), sqrt_ts %.1f; %.1f%% of the data "
                        "bins excluded; norms %s", iteration, lon, lat, sqrt_ts,
                        100 * history[-1]["excluded_bin_fraction"],
                        {k: round(_summary(v), 4) for k, v in fit.norms.items()})
        if not converged:
            logger.warning("the exclusion mask still grew after %d iterations: raise max_iterations or the "
                           "threshold", self.max_iterations)
        mask = Histogram([model_axis], contents=excluded.sky_mask.astype(np.float64))
        return BackgroundResult(fit.norms, fit.errors, fit.values, fit.value_errors, mask, excluded, history, converged)

    @staticmethod
    def _entry(dataset, iteration, fit, excluded, lon, lat, sqrt_ts):
        engine = dataset.engine
        kept = excluded.kept_at_bins(engine)
        return {"iteration": iteration, "l": float(lon), "b": float(lat), "sqrt_ts": sqrt_ts,
                "masked_pixels": int(excluded.sky_mask.sum()),
                "excluded_bin_fraction": excluded.n_excluded / (engine.n_rows * engine.n_columns),
                "excluded_count_fraction": float(1 - engine.data.counts[kept].sum() / engine.data.counts.sum()),
                "values": dict(fit.values), "value_errors": dict(fit.value_errors),
                "log_likelihood": fit.log_likelihood}


def _means(norms):
    return {name: _summary(value) for name, value in norms.items()}


def _test_to_model_pixels(test_axis, model_axis):
    """The model-grid pixel holding the centre of every test-grid pixel."""
    lon, lat = hp.pix2ang(test_axis.nside, np.arange(test_axis.npix), nest=test_axis.is_nested, lonlat=True)
    return hp.ang2pix(model_axis.nside, lon, lat, nest=model_axis.is_nested, lonlat=True)
