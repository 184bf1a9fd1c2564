"""An exact joint move of one level's smoothing and its splits, the allocation integrated out.

The Gibbs sweep draws the smoothing ``a_l`` of a level given the complete counts, and the counts given
the image that the previous smoothing shaped: where the data say little (the faint sky between the
sources) the image's roughness, the smoothing and the counts the allocation gives the faint pixels
hold each other in place, and the chain drifts along that direction at the pace of an EM iteration,
trading faint diffuse sky against the backgrounds. This move changes the smoothing and the image
together (a non-centred step):

1. every parent's split ``f`` (``K`` children) is written as ``f = G / sum G`` with ``G_c = S f_c`` and
   ``S ~ Gamma(K a)`` drawn afresh: the ``G_c`` are then independent ``Gamma(a)`` variates under the prior;
2. the smoothing is proposed as ``a' = a exp(s z)``, ``z ~ N(0, 1)``, and every ``G_c`` is carried to the
   ``Gamma(a')`` variate of the same quantile, ``G'_c = F_a'^-1(F_a(G_c))``: the splits keep their ranks
   and become as rough as ``a'`` makes them;
3. the new image (same total, the other levels' splits unchanged) is accepted with probability
   ``min(1, L(x') p(a') a' / (L(x) p(a) a))``: the quantile map's Jacobian cancels the ratio of the
   ``G``'s prior densities, so only the Poisson likelihood (the allocation integrated out), the
   hyperprior and the log-scale proposal's ``a'/a`` remain.

The level is chosen at random in every sweep (a random-scan mixture of kernels that each leave the
posterior invariant). The step ``s`` of every level is tuned during the burn-in only, towards an
acceptance rate of :data:`TARGET_ACCEPT`. A proposal costs one forward product of the image (about an
RL iteration's); when it is accepted the allocation reuses that product.
"""
import math

import numpy as np
from scipy.special import gammainc, gammaincc, gammainccinv, gammaincinv, gammaln

from ..errors import CosiInputError
from .tree import fractions_of_image, image_from_tree, log_gamma_draw, log_normalized

#: Acceptance rate the steps are tuned to during the burn-in (a one-dimensional random walk's optimum).
TARGET_ACCEPT = 0.44
#: Initial step of ``ln a`` at every level.
INITIAL_STEP = 0.1
#: Below ``ln x`` of this, or where the lower tail underflows, the lower tail is written by its series
#: ``x^a e^-x / Gamma(a+1) (1 + x / (a+1))``, exact in double precision there (the next term is ``x^2`` smaller).
_SERIES_LOG_X = -40.0
_SMALLEST_TAIL = 1e-280


def _log_series(a, log_x):
    x = np.exp(log_x)
    return a * log_x - x + np.log1p(x / (a + 1.0)) - gammaln(a + 1.0)


def gamma_log_cdf(a, log_x):
    """``(ln P(a, x), ln Q(a, x))``: the logarithms of the Gamma(a) distribution's lower and upper tails at ``x``.

    Accurate where ``x`` is far below the double range (``log_x`` of -1000 and less), where the splits of
    a rough level put their smallest children.
    """
    a, log_x = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(log_x, dtype=np.float64))
    x = np.exp(log_x)
    p = gammainc(a, x)
    series = (log_x < _SERIES_LOG_X) | (p < _SMALLEST_TAIL)
    with np.errstate(divide="ignore"):
        log_p = np.where(series, _log_series(a, log_x), np.log(np.where(series, 1.0, p)))
        log_q = np.log(gammaincc(a, x))
    return log_p, log_q


def gamma_log_quantile(a, log_p, log_q):
    """``ln x`` of the Gamma(a) variate whose tails are ``exp(log_p)`` and ``exp(log_q)`` (the inverse of
    :func:`gamma_log_cdf`; the upper tail is inverted where it is the smaller, for precision)."""
    a, log_p, log_q = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(log_p, dtype=np.float64),
                                          np.asarray(log_q, dtype=np.float64))
    p = np.exp(log_p)
    leading = (log_p + gammaln(a + 1.0)) / a  # ln x of the series' first term
    series = (leading < _SERIES_LOG_X) | (p < _SMALLEST_TAIL)
    upper = ~series & (p > 0.5)
    middle = ~series & ~upper
    out = np.empty(np.shape(log_p))
    # Newton's method on the series from its first term: two steps reach double precision
    log_x, aa, target = leading[series], a[series], log_p[series]
    for _ in range(3):
        x = np.exp(log_x)
        slope = aa - x + x / (aa + 1.0 + x)  # d/d(ln x) of the series' logarithm
        log_x = log_x - (_log_series(aa, log_x) - target) / slope
    out[series] = log_x
    with np.errstate(divide="ignore"):
        out[middle] = np.log(gammaincinv(a[middle], p[middle]))
        out[upper] = np.log(gammainccinv(a[upper], np.exp(log_q[upper])))
    return out


def requantiled_splits(log_fractions, n_children, a, a_new, rng):
    """The splits of one level carried from smoothing `a` to `a_new` at fixed quantiles (steps 1-2 above).

    Parameters
    ----------
    log_fractions : ndarray
        Log-fractions of the level, ``n_parents * n_children`` values (any shape).
    n_children : int
    a, a_new : float
    rng : numpy.random.Generator

    Returns
    -------
    ndarray
        The new log-fractions, in the shape of `log_fractions`.
    """
    splits = np.asarray(log_fractions, dtype=np.float64).reshape(-1, n_children)
    log_sum = log_gamma_draw(np.full(splits.shape[0], n_children * a), rng)
    log_p, log_q = gamma_log_cdf(a, log_sum[:, None] + splits)
    return log_normalized(gamma_log_quantile(a_new, log_p, log_q)).reshape(np.shape(log_fractions))


def new_steps(n_levels):
    """The tuning of a chain before its burn-in: ``[ln step, proposals so far]`` per level, shape (2, n_levels)."""
    steps = np.zeros((2, n_levels))
    steps[0] = math.log(INITIAL_STEP)
    return steps


class SmoothingMove:
    """The joint move of one level's smoothing and splits (every Ei bin's), given the total and the norms.

    Parameters
    ----------
    engine : ResponseEngine
        Engine with data.
    tree : MultiscaleTree
    allocator : Allocator
        Gives the forward product of the proposed image in the layout the allocation reuses.
    nested, model_order : callable
        Reorder an array [n_pix, ...] from the model grid's order to NESTED and back.
    """

    def __init__(self, engine, tree, allocator, nested, model_order):
        self.engine = engine
        self.tree = tree
        self.allocator = allocator
        self.nested = nested
        self.model_order = model_order
        self.names = list(engine.background_names)

    def log_likelihood(self, image, norms, sky_at_bins):
        """Poisson log-likelihood of (image, norms) from the image's expected counts at the non-empty bins
        (-inf where an expectation vanishes at a counted bin)."""
        norms = dict(zip(self.names, norms))
        eps = sky_at_bins + self.engine.background_at_bins(norms)
        try:
            return self.engine.log_likelihood_from(eps, self.engine.total_expected(image, norms))
        except CosiInputError:
            return -math.inf

    def evaluate(self, image, norms):
        """The tiled source rows of an image, its expected counts at the non-empty bins and the log-likelihood."""
        rows = self.allocator.tiled_rows(image)
        sky_at_bins = self.allocator.sky_at_bins(rows)
        return rows, sky_at_bins, self.log_likelihood(image, norms, sky_at_bins)

    def draw(self, image, smoothing, norms, sky_at_bins, rows, steps, rng, adapt=False):
        """One proposal at a level chosen at random, and its accept or reject.

        Parameters
        ----------
        image : ndarray, shape (n_pix, n_ei)
            Current image (model order).
        smoothing : ndarray, shape (L + 1, n_ei)
        norms : ndarray, shape (n_bkg,)
        sky_at_bins : ndarray, shape (nnz,)
            The image's expected counts at the non-empty bins.
        rows : ndarray
            The image's tiled source rows (:meth:`.Allocator.tiled_rows`).
        steps : ndarray, shape (2, L + 1)
            The tuning (:func:`new_steps`).
        rng : numpy.random.Generator
        adapt : bool
            Tune the chosen level's step (burn-in sweeps only).

        Returns
        -------
        image, smoothing, sky_at_bins, rows, steps
            The new state's (the current ones where the proposal is rejected) and the tuning.
        """
        tree = self.tree
        level = int(rng.integers(tree.levels + 1))
        n_ei = image.shape[1]
        nested = self.nested(image)
        a = smoothing[level]
        a_new = a * np.exp(math.exp(steps[0, level]) * rng.standard_normal(n_ei))
        proposal = np.empty_like(nested)
        for e in range(n_ei):
            log_total, log_fractions = fractions_of_image(nested[:, e], tree.levels)
            log_fractions[level] = requantiled_splits(log_fractions[level], tree.n_children[level], a[e], a_new[e],
                                                      rng)
            proposal[:, e] = np.exp(image_from_tree(log_total, log_fractions))
        proposal = self.model_order(proposal)
        new_rows, new_sky, new_log_likelihood = self.evaluate(proposal, norms)
        log_ratio = (new_log_likelihood - self.log_likelihood(image, norms, sky_at_bins)
                     - tree.delta * float(np.sum(a_new ** 3 - a ** 3)) / 3.0 + float(np.sum(np.log(a_new / a))))
        accept = math.exp(min(log_ratio, 0.0)) if math.isfinite(log_ratio) else 0.0
        if adapt:
            steps = steps.copy()
            steps[0, level] += (accept - TARGET_ACCEPT) / math.sqrt(steps[1, level] + 1.0)
            steps[1, level] += 1.0
        if rng.random() < accept:
            smoothing = smoothing.copy()
            smoothing[level] = a_new
            return proposal, smoothing, new_sky, new_rows, steps
        return image, smoothing, sky_at_bins, rows, steps
