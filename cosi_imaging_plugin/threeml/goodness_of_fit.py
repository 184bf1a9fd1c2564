"""Goodness of fit of a 3ML fit to COSI data, with a statistic whose distribution does not depend on the fit.

3ML's ``GoodnessOfFit.by_mc`` compares the fit's -log L with that of fits to datasets
simulated from the best-fit model. At COSI's sparse counts (most of the millions of
data bins hold 0 or 1 count), -log L is not pivotal: its mean moves with the fitted
parameters by far more than its spread (it rises by about 1.25 per count of the data),
and each bootstrap is centred on the observed dataset's own fit. The observed value
then sits near the middle of its simulations whatever the data, and the p-values
crowd around 0.5 instead of being uniform (``benchmarks/RESULTS.md``).

:func:`goodness_of_fit` tests instead the counts summed over the attitude rows, in
groups of Compton-data-space bins that each expect at least ``min_expected`` counts.
There the Poisson deviance

    ``D = 2 sum_g [m_g - d_g + d_g ln(d_g / m_g)]``

is close to a chi-square with (groups - free parameters) degrees of freedom whatever
the parameters: a nearly pivotal statistic. Its p-value comes from a parametric
bootstrap (datasets drawn from the best-fit model and refitted, as 3ML does), or,
without simulations, from a scaled chi-square whose mean and variance are the
exact ones of the Poisson deviance of groups with these expected counts (each
group adds ``1 + 1/(6 m) + ...`` to the mean rather than 1; at 25 counts a group
the plain chi-square would put the statistic a tenth of a standard deviation too
high, which shows in the p-values of a few hundred datasets).

The bootstrap p-value is the reference. The scaled chi-square is a quick check: at
sparse counts its p-values were uniform (KS p 0.16-0.85 over sets of 50-100 datasets),
but with ~160,000 counts in 3,200 groups the statistic's spread over datasets was
0.85-0.93 of the chi-square's, and one set of 100 gave KS p = 0.001 (results in
``benchmarks/RESULTS.md``).

Caveats: the statistic sees the model in the Compton data space summed over time
(ScAtt or Time rows). A model wrong only in how counts spread over the rows (a
background varying in time that the templates do not follow) goes unnoticed. The
groups follow the best-fit model's expected counts in a fixed order (measured energy,
Compton angle, then PsiChi in the NESTED order, so neighbouring directions share
groups); they are made once and kept for every simulation.
"""
import dataclasses
import logging

import healpy as hp
import numpy as np
from astromodels import clone_model
from scipy import stats
from threeML import DataList, JointLikelihood
from tqdm.auto import tqdm

from ..binning import is_nested
from ..errors import CosiInputError
from .plugin import COSIImagingLike

logger = logging.getLogger(__name__)

#: Smallest expected count of a group: the deviance of a group of 25 expected counts is within a few percent of
#: its chi-square limit (mean 1 + 1/(6 m) per group).
DEFAULT_MIN_EXPECTED = 25.0


@dataclasses.dataclass
class GoodnessOfFitResult:
    """The outcome of :func:`goodness_of_fit`.

    Attributes
    ----------
    statistic : float
        The grouped Poisson deviance of the data and the best-fit model.
    p_value : float or None
        ``(1 + #{simulated >= statistic}) / (n + 1)`` over the bootstrap (None without simulations).
    p_value_chi2 : float
        The tail probability of `statistic` under the scaled chi-square matched to its mean and variance
        (:func:`deviance_moments`, less one and two per free parameter).
    dof : int
        Groups minus free parameters of the fit.
    n_groups : int
    simulated : numpy.ndarray
        The statistic of each bootstrap dataset, refitted.
    """

    statistic: float
    p_value: float
    p_value_chi2: float
    dof: int
    n_groups: int
    simulated: np.ndarray


def cds_groups(expected, psichi_axis, min_expected=DEFAULT_MIN_EXPECTED):
    """Group label of each Compton-data-space bin: runs of consecutive bins expecting at least `min_expected`.

    Bins are visited by measured energy, Compton angle, then PsiChi in the NESTED order (neighbouring
    directions share groups). A group closes as soon as it expects `min_expected` counts; the remainder at
    the end joins the last group.

    Parameters
    ----------
    expected : ndarray, shape (n_em, n_phi, n_psichi)
        Expected counts summed over the rows.
    psichi_axis : histpy.HealpixAxis
        The PsiChi axis.
    min_expected : float

    Returns
    -------
    numpy.ndarray of int, the shape of `expected`
    """
    expected = np.asarray(expected, dtype=np.float64)
    if not min_expected > 0:
        raise CosiInputError(f"min_expected must be positive, got {min_expected}")
    visit = np.arange(psichi_axis.nbins)
    if not is_nested(psichi_axis):
        visit = hp.nest2ring(psichi_axis.nside, visit)
    running = np.cumsum(expected[..., visit].reshape(-1))
    if running[-1] < 2 * min_expected:
        raise CosiInputError(f"the model expects {running[-1]:.3g} counts in all: fewer than two groups of "
                             f"{min_expected:g}")
    ends = []  # index one past the last bin of each group
    start_total = 0.0
    while True:
        end = int(np.searchsorted(running, start_total + min_expected, side="left")) + 1
        if end >= running.size or running[-1] - running[end - 1] < min_expected:
            ends.append(running.size)  # the remainder joins this group
            break
        ends.append(end)
        start_total = running[end - 1]
    labels = np.repeat(np.arange(len(ends)), np.diff(np.concatenate([[0], ends])))
    out = np.empty(expected.shape, dtype=np.int64)
    out[..., visit] = labels.reshape(expected.shape)
    return out


def grouped_deviance(data, model, groups):
    """Poisson deviance ``2 sum_g [m_g - d_g + d_g ln(d_g / m_g)]`` of counts summed within groups.

    Parameters
    ----------
    data, model : ndarray
        Observed and expected counts, the shape of `groups`.
    groups : ndarray of int
        Group label of each bin (:func:`cds_groups`).
    """
    n_groups = int(groups.max()) + 1
    d = np.bincount(groups.ravel(), weights=np.asarray(data, dtype=np.float64).ravel(), minlength=n_groups)
    m = np.bincount(groups.ravel(), weights=np.asarray(model, dtype=np.float64).ravel(), minlength=n_groups)
    if np.any(m <= 0):
        raise CosiInputError("a group expects no counts: the grouping does not belong to this model")
    with np.errstate(divide="ignore", invalid="ignore"):
        log_term = np.where(d > 0, d * np.log(d / m), 0.0)
    return float(2.0 * np.sum(m - d + log_term))


def deviance_moments(expected):
    """Exact mean and variance of the Poisson deviance ``2 [m - d + d ln(d / m)]`` of one count of mean `m`.

    Sums over the Poisson distribution (counts within 12 standard deviations of the mean); above 10,000
    expected counts the expansion ``1 + 1/(6 m)`` of the mean and the limit 2 of the variance are exact
    to 1e-8.

    Parameters
    ----------
    expected : array_like
        Mean counts `m` (positive).

    Returns
    -------
    mean, variance : numpy.ndarray
    """
    m = np.asarray(expected, dtype=np.float64).ravel()
    if np.any(~(m > 0)):
        raise CosiInputError("deviance moments need positive expected counts")
    mean, variance = 1.0 + 1.0 / (6.0 * m), np.full(m.shape, 2.0)
    exact = np.flatnonzero(m < 1e4)
    exact = exact[np.argsort(m[exact])]  # parts of similar widths
    for part in np.array_split(exact, max(1, exact.size // 2000)):  # bounded working arrays
        if part.size == 0:
            continue
        mu = m[part, None]
        width = 12.0 * np.sqrt(mu.max()) + 30.0
        k = np.floor(np.maximum(mu - width, 0.0)) + np.arange(int(2 * width) + 2)
        pmf = stats.poisson.pmf(k, mu)
        with np.errstate(divide="ignore", invalid="ignore"):
            deviance = 2.0 * (mu - k + np.where(k > 0, k * np.log(k / mu), 0.0))
        mean[part] = np.sum(pmf * deviance, axis=1)
        variance[part] = np.sum(pmf * deviance**2, axis=1) - mean[part] ** 2
    return mean, variance


def scaled_chi2_sf(statistic, expected, n_free):
    """Tail probability of a grouped deviance under the scaled chi-square matched to its first two moments.

    ``D ~ a chi2(nu)`` with ``a nu = sum(mean) - n_free`` and ``2 a^2 nu = sum(variance) - 2 n_free``
    (a fit of `n_free` parameters lowers the mean by one and the variance by two for each).

    Parameters
    ----------
    statistic : float
    expected : array_like
        Expected counts of the groups.
    n_free : int
        Free parameters of the fit.
    """
    mean, variance = deviance_moments(expected)
    mu, var = mean.sum() - n_free, variance.sum() - 2 * n_free
    scale = var / (2.0 * mu)
    return float(stats.chi2.sf(statistic / scale, 2.0 * mu**2 / var))


def _group_expected(plugins, groups):
    return np.concatenate([np.bincount(groups[p.name].ravel(), weights=np.asarray(p.model_cds().contents,
                                                                                   dtype=np.float64).ravel())
                           for p in plugins])


def _statistic(plugins, groups):
    return sum(grouped_deviance(p.data_cds().contents, p.model_cds().contents, groups[p.name]) for p in plugins)


def goodness_of_fit(jl, n_simulations=100, seed=None, min_expected=DEFAULT_MIN_EXPECTED, progress=True):
    """Goodness of fit of a 3ML fit with COSI data, on grouped counts (see the module docstring).

    Parameters
    ----------
    jl : threeML.JointLikelihood
        After its fit. Every plugin of its data list is simulated and refitted; the
        statistic sums over its :class:`~cosi_imaging_plugin.threeml.COSIImagingLike` plugins.
    n_simulations : int
        Bootstrap datasets drawn from the best-fit model, each refitted (0: the
        chi-square p-value only).
    seed : int, optional
        Seed of the bootstrap: the same seed gives the same simulations.
    min_expected : float
        Smallest expected count of a group.
    progress : bool
        Show a progress bar over the simulations.

    Returns
    -------
    GoodnessOfFitResult
    """
    plugins = list(jl.data_list.values())
    cosi = [p for p in plugins if isinstance(p, COSIImagingLike)]
    if not cosi:
        raise CosiInputError("goodness_of_fit needs at least one COSIImagingLike plugin in the fit")
    if jl.results is None:
        raise CosiInputError("fit the JointLikelihood before testing its goodness of fit")
    jl.restore_best_fit()
    groups = {p.name: cds_groups(p.model_cds().contents, p.dataset.cds_axes["PsiChi"], min_expected) for p in cosi}
    n_groups = sum(int(g.max()) + 1 for g in groups.values())
    n_free = len(jl.likelihood_model.free_parameters)
    dof = n_groups - n_free
    observed = _statistic(cosi, groups)
    p_value_chi2 = scaled_chi2_sf(observed, _group_expected(cosi, groups), n_free)
    best = jl.results.optimized_model
    rng = np.random.default_rng(seed)
    simulated = []
    for _ in tqdm(range(n_simulations), desc="goodness of fit", unit="fit", disable=not progress):
        seeds = rng.integers(2**63, size=len(plugins))
        datasets = []
        for plugin, plugin_seed in zip(plugins, seeds):
            if isinstance(plugin, COSIImagingLike):
                datasets.append(plugin.get_simulated_dataset(f"{plugin.name}_sim", seed=int(plugin_seed)))
            else:  # 3ML's own plugins draw from numpy's global generator
                np.random.seed(int(plugin_seed) % 2**32)  # noqa: NPY002 (they use nothing else)
                datasets.append(plugin.get_simulated_dataset(f"{plugin.name}_sim"))
        refit = JointLikelihood(clone_model(best), DataList(*datasets), verbose=False)
        refit.fit(quiet=True, compute_covariance=False)
        refit.restore_best_fit()
        simulated.append(_statistic([d for d in datasets if isinstance(d, COSIImagingLike)],
                                    {f"{name}_sim": g for name, g in groups.items()}))
    simulated = np.array(simulated)
    p_value = (1 + np.sum(simulated >= observed)) / (simulated.size + 1) if simulated.size else None
    result = GoodnessOfFitResult(statistic=observed, p_value=p_value,
                                 p_value_chi2=p_value_chi2, dof=dof, n_groups=n_groups,
                                 simulated=simulated)
    logger.info("goodness of fit: grouped deviance %.1f for %d degrees of freedom (%d groups); p = %s "
                "(bootstrap of %d), %.3g (scaled chi-square)", observed, dof, n_groups,
                "n/a" if p_value is None else f"{p_value:.3g}", simulated.size, result.p_value_chi2)
    return result
