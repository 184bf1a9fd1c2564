"""LIRA's multiscale prior on the HEALPix NESTED quad-tree.

At NSIDE ``2**L`` in the NESTED scheme, pixel ``p`` lies in base pixel ``p >> 2L`` and its
ancestor at NSIDE ``2**l`` is ``p >> 2(L - l)``: the sky is a tree with twelve base pixels
and four children under every parent. The image of one Ei bin is

``x_p = Lambda * f0[base(p)] * prod_{l=1..L} f_l[ancestor_l(p), child_l(p)]``

with the all-sky total ``Lambda``, the split of the total into the twelve base pixels
``f0 ~ Dirichlet(a_0 * 1_12)`` and the split of every parent into its four children
``f_l ~ Dirichlet(a_l * 1_4)``. The smoothing ``a_l`` of each level has LIRA's hyperprior
``p(a) ~ exp(-delta a^3 / 3)``. Given complete counts ``N_p ~ Poisson(x_p Xmax)`` (uniform
exposure ``Xmax``) the total and the splits have conjugate updates: ``mu = Lambda Xmax ~
Gamma(alpha_0 + sum N, beta_0 + 1)`` and ``f_l ~ Dirichlet(a_l + N of the children)``.
Fractions are kept as logarithms: with small ``a`` most of them underflow a float64.
"""
import math

import numpy as np
from scipy.special import gammaln

from ..errors import CosiInputError

#: LIRA's hyperprior exp(-delta a^3 / 3) with its delta = 1000 (``ms_al_kap2``).
DEFAULT_DELTA = 1000.0
#: Flat prior on the expected total counts, Gamma(1, 0): the posterior total is then the data's.
#: (LIRA's Gamma(1, 0.05) adds 0.05 to the posterior rate 1 of the total: every image 5 % too faint.)
DEFAULT_TOTAL_PRIOR = (1.0, 0.0)


def n_levels(n_pix):
    """Number of quad-tree levels L of a full-sky grid of `n_pix` = 12 * 4**L pixels."""
    levels = math.log(n_pix / 12, 4) if n_pix >= 12 else -1
    if n_pix < 12 or abs(levels - round(levels)) > 1e-9:
        raise CosiInputError(f"model grid of {n_pix} pixels is not a full HEALPix sphere (12 * 4**L pixels)")
    return int(round(levels))


def aggregate(values, levels):
    """Sums of `values` (NESTED, shape (n_pix, ...)) over the pixels of every level: list of L + 1 arrays.

    Entry ``l`` has ``12 * 4**l`` rows (entry ``L`` is `values` itself).
    """
    out = [np.asarray(values, dtype=np.float64)]
    for _ in range(levels):
        out.append(out[-1].reshape(out[-1].shape[0] // 4, 4, *out[-1].shape[1:]).sum(axis=1))
    return out[::-1]


def log_gamma_draw(shape, rng):
    """``log(G)`` for ``G ~ Gamma(shape, 1)``, accurate where G underflows (shape far below 1)."""
    shape = np.asarray(shape, dtype=np.float64)
    # G = G' U^(1/shape) with G' ~ Gamma(shape + 1): the logarithm never underflows
    return np.log(rng.gamma(shape + 1.0)) + np.log1p(-rng.random(shape.shape)) / shape  # 1 - U is never 0


def log_normalized(log_weights):
    """``ln(w / sum w)`` along the last axis from ``ln w`` (weights far below the double range included)."""
    top = log_weights.max(axis=-1, keepdims=True)
    return log_weights - (top + np.log(np.exp(log_weights - top).sum(axis=-1, keepdims=True)))


def log_dirichlet_draw(alpha, rng):
    """Logarithms of Dirichlet draws along the last axis of `alpha`."""
    return log_normalized(log_gamma_draw(alpha, rng))


def split_coefficients(smoothing):
    """Coefficient of ``sum ln C_l`` in the image prior, per level: a child at level ``l``, a parent at ``l + 1``."""
    a = np.asarray(smoothing, dtype=np.float64)
    coefficients = a - 1.0
    coefficients[:-1] -= 4.0 * a[1:] - 1.0
    return coefficients


def image_from_tree(log_total, log_fractions):
    """Log-image (NESTED, one Ei bin) from the log-total and the log-fractions of every level."""
    log_x = log_total + log_fractions[0]
    for lf in log_fractions[1:]:
        log_x = (log_x[:, None] + lf).reshape(-1)
    return log_x


def fractions_of_image(image, levels):
    """(log-total, log-fractions per level) of a positive NESTED image of one Ei bin."""
    sums = aggregate(image, levels)
    total = float(sums[0].sum())
    log_fractions = [np.log(sums[0] / total)]
    for level in range(1, levels + 1):
        children = sums[level].reshape(-1, 4)
        log_fractions.append(np.log(children / children.sum(axis=1, keepdims=True)))
    return math.log(total), log_fractions


def smoothing_log_density(a, children, delta):
    """Log-density (up to a constant) of the smoothing ``a`` of one level given its counts, the splits
    integrated out (a Dirichlet-multinomial per parent).

    ``p(a | N) ~ exp(-delta a^3 / 3) prod_p Gamma(K a) / Gamma(K a + N_p) prod_c Gamma(a + N_c) / Gamma(a)``
    over the parents ``p`` and their ``K`` children ``c``. Collapsing the splits makes the update
    mix where the alternation of splits and smoothing sticks (a level whose splits sit near the
    simplex corners drags ``a`` towards 0 and back).

    Parameters
    ----------
    a : float
    children : ndarray, shape (n_parents, K)
        Complete counts of the children, only of parents with at least one count (the others
        do not depend on ``a``).
    delta : float
    """
    if not a > 0:
        return -math.inf
    n_par, k = children.shape
    totals = children.sum(axis=1)
    value = (n_par * math.lgamma(k * a) - float(np.sum(gammaln(k * a + totals)))
             + float(np.sum(gammaln(a + children))) - n_par * k * math.lgamma(a))
    return value - delta * a ** 3 / 3.0


def slice_sample_log(logp, a, rng, width=1.0, max_steps=50):
    """One slice-sampling update of a positive scalar, on ``u = log a`` (Neal 2003, stepping out).

    Parameters
    ----------
    logp : callable
        Log-density of ``a``.
    a : float
        Current value.
    rng : numpy.random.Generator
    """
    def target(u):
        return logp(math.exp(u)) + u  # the Jacobian of a = exp(u)

    u0 = math.log(a)
    level = target(u0) + math.log(rng.random())
    left = u0 - width * rng.random()
    right = left + width
    j = int(max_steps * rng.random())
    k = max_steps - 1 - j
    while j > 0 and target(left) > level:
        left -= width
        j -= 1
    while k > 0 and target(right) > level:
        right += width
        k -= 1
    for _ in range(200):
        u = left + (right - left) * rng.random()
        if target(u) > level:
            return math.exp(u)
        if u < u0:
            left = u
        else:
            right = u
    return a  # the interval shrank onto the current point: keeping it leaves the target invariant


class MultiscaleTree:
    """The multiscale prior of one Ei bin's image and its conjugate updates.

    Parameters
    ----------
    n_pix : int
        Pixels of the NESTED full-sky grid.
    delta : float
        Hyperprior ``p(a) ~ exp(-delta a^3 / 3)`` of the smoothing of every level (> 0).
    total_prior : (float, float)
        Shape and rate of the Gamma prior on the expected total complete counts.
    """

    def __init__(self, n_pix, delta=DEFAULT_DELTA, total_prior=DEFAULT_TOTAL_PRIOR):
        self.levels = n_levels(n_pix)
        self.n_pix = n_pix
        self.delta = float(delta)
        self.total_prior = tuple(float(v) for v in total_prior)
        self.n_parents = [1] + [12 * 4 ** (level - 1) for level in range(1, self.levels + 1)]
        self.n_children = [12] + [4] * self.levels

    def draw(self, complete_counts, exposure_max, smoothing, rng):
        """Draw the smoothing, then (log-image, log-total, log-fractions), given the complete counts of one Ei bin.

        The smoothing of every level is drawn with the splits integrated out
        (:func:`smoothing_log_density`), then the splits and the total given it: one blocked,
        exact Gibbs step.

        Parameters
        ----------
        complete_counts : ndarray, shape (n_pix,)
            Counts ``N_p ~ Poisson(x_p Xmax)`` (NESTED).
        exposure_max : float
            ``Xmax`` (cm2 s sr).
        smoothing : ndarray, shape (L + 1,)
            ``a_l`` of every level (the current values).
        rng : numpy.random.Generator

        Returns
        -------
        log_image, log_total, log_fractions, smoothing
        """
        sums = aggregate(complete_counts, self.levels)
        smoothing = self.draw_smoothing(sums, smoothing, rng)
        shape, rate = self.total_prior
        log_mu = float(log_gamma_draw(shape + sums[0].sum(), rng)) - math.log(rate + 1.0)
        log_total = log_mu - math.log(exposure_max)
        log_fractions = [log_dirichlet_draw(smoothing[0] + sums[0], rng)]
        for level in range(1, self.levels + 1):
            log_fractions.append(log_dirichlet_draw(smoothing[level] + sums[level].reshape(-1, 4), rng))
        return image_from_tree(log_total, log_fractions), log_total, log_fractions, smoothing

    def draw_smoothing(self, sums, smoothing, rng):
        """Slice-sampling update of the smoothing of every level given the counts summed per level."""
        out = np.array(smoothing, dtype=np.float64)
        for level in range(self.levels + 1):
            children = sums[level].reshape(-1, self.n_children[level])
            children = children[children.sum(axis=1) > 0]
            out[level] = slice_sample_log(lambda a, ch=children: smoothing_log_density(a, ch, self.delta),
                                          out[level], rng)
        return out

    def log_prior(self, log_total, log_fractions, smoothing, exposure_max):
        """Log prior density (tree parametrization, up to a constant) of a state of one Ei bin."""
        shape, rate = self.total_prior
        mu = math.exp(log_total) * exposure_max
        value = (shape - 1.0) * math.log(mu) - rate * mu
        for level, lf in enumerate(log_fractions):
            a = float(smoothing[level])
            n_par, n_ch = self.n_parents[level], self.n_children[level]
            value += n_par * (math.lgamma(n_ch * a) - n_ch * math.lgamma(a)) + (a - 1.0) * float(np.sum(lf))
            value -= self.delta * a ** 3 / 3.0
        return value

    def image_log_prior(self, image, smoothing, exposure_max, gradient=False):
        """Log prior density of one Ei bin's image in image coordinates, optionally with its gradient.

        The tree's density (:meth:`log_prior`, over the total ``Lambda`` and the free fractions of
        every split) times the inverse Jacobian of the map (total, fractions) -> image: splitting an
        intensity ``S`` into ``K`` children ``c = S f`` has Jacobian ``S^(K-1)``, so every parent
        contributes ``S^-(K-1)`` (``Lambda^-11`` at the root, ``S^-3`` below), and the total's density
        in ``Lambda`` is the Gamma density of ``mu = Lambda Xmax`` times ``Xmax``. Collected per level,

        ``log p(x) = (alpha_0 - 12 a_0) ln Lambda - beta_0 Xmax Lambda + sum_l (a_l - 1) sum ln C_l
        - sum_{l>=1} (4 a_l - 1) sum ln C_{l-1} + const(a)``

        with ``C_l`` the image summed to level ``l``: the form an image-space move samples.

        Parameters
        ----------
        image : ndarray, shape (n_pix,)
            Positive image (NESTED).
        smoothing : ndarray, shape (L + 1,)
        exposure_max : float
        gradient : bool
            Also return the gradient with respect to the image.

        Returns
        -------
        float, or (float, ndarray)
        """
        a = np.asarray(smoothing, dtype=np.float64)
        shape, rate = self.total_prior
        sums = aggregate(image, self.levels)
        total = float(sums[0].sum())
        value = shape * math.log(exposure_max) + (shape - 12.0 * a[0]) * math.log(total) - rate * exposure_max * total
        coefficients = split_coefficients(a)
        for level in range(self.levels + 1):
            n_par, n_ch = self.n_parents[level], self.n_children[level]
            value += n_par * (math.lgamma(n_ch * a[level]) - n_ch * math.lgamma(a[level]))
            value += coefficients[level] * float(np.sum(np.log(sums[level])))
        value -= self.delta * float(np.sum(a ** 3)) / 3.0
        if not gradient:
            return value
        grad = np.full(self.n_pix, (shape - 12.0 * a[0]) / total - rate * exposure_max)
        for level in range(self.levels + 1):
            # every pixel sees its ancestor's sum at this level: each of them repeated over 4^(L - l) pixels
            grad += np.repeat(coefficients[level] / sums[level], 4 ** (self.levels - level))
        return value, grad

    def region_scales_log_prior(self, theta, node_sums, smoothing):
        """Log prior density of the image ``x = sum_r exp(theta_r) u_r`` of one Ei bin as a function of the
        logarithms ``theta`` of its regions' expected complete counts, the regions' shapes ``u_r`` fixed,
        with its gradient and Hessian in ``theta``.

        The density is :meth:`image_log_prior` times the Jacobian ``prod_r mu_r^(n_r)`` of the map from
        ``theta`` (and the shapes) to the image, ``n_r`` the pixels of region ``r``: with one region it is
        the Gamma prior of the total in ``ln mu``, the splits being unchanged by a common scale.

        Parameters
        ----------
        theta : ndarray, shape (R,)
        node_sums : list of L + 1 ndarray, shapes (12 * 4**l, R)
            Every region's shape summed over the pixels of every level (:func:`aggregate` of ``u_r``);
            each shape sums to ``1 / Xmax`` over the sky, so ``Xmax`` enters through ``mu`` alone.
        smoothing : ndarray, shape (L + 1,)

        Returns
        -------
        float, ndarray (R,), ndarray (R, R)
            Up to a constant.
        """
        a = np.asarray(smoothing, dtype=np.float64)
        shape, rate = self.total_prior
        mu = np.exp(np.asarray(theta, dtype=np.float64))
        region_pixels = np.count_nonzero(node_sums[-1] > 0, axis=0).astype(np.float64)
        coefficients = split_coefficients(a)
        total = float(mu.sum())
        value = (shape - 12.0 * a[0]) * math.log(total) - rate * total + float(region_pixels @ theta)
        grad = (shape - 12.0 * a[0]) * mu / total - rate * mu + region_pixels
        hess = (shape - 12.0 * a[0]) * (np.diag(mu / total) - np.outer(mu, mu) / total ** 2) - rate * np.diag(mu)
        for level in range(self.levels + 1):
            weights = node_sums[level] * mu  # (nodes, R): every region's part of every node's sum
            sums = weights.sum(axis=1)
            weights = weights / sums[:, None]
            value += coefficients[level] * float(np.sum(np.log(sums)))
            grad += coefficients[level] * weights.sum(axis=0)
            hess += coefficients[level] * (np.diag(weights.sum(axis=0)) - weights.T @ weights)
        return value, grad, hess

    def mode_step(self, complete_counts, exposure_max, smoothing):
        """The maximum of the conditional posterior given expected complete counts (the EM M-step).

        Each split's mode ``(N_c + a - 1) / (N + n (a - 1))`` needs ``a >= 1`` (the fractions are
        then non-negative); the total's mode is ``(alpha_0 - 1 + sum N) / (beta_0 + 1)``.

        Returns
        -------
        ndarray
            The image (NESTED, one Ei bin), ph cm-2 s-1 sr-1.
        """
        smoothing = np.asarray(smoothing, dtype=np.float64)
        if np.any(smoothing < 1):
            raise CosiInputError(f"smoothing {smoothing.tolist()}: the mode of a Dirichlet split needs a >= 1 "
                                 "at every level")
        sums = aggregate(complete_counts, self.levels)
        shape, rate = self.total_prior
        mu = max(shape - 1.0 + float(sums[0].sum()), 0.0) / (rate + 1.0)
        x = mu / exposure_max * self._mode_split(sums[0], smoothing[0])
        for level in range(1, self.levels + 1):
            x = (x[:, None] * self._mode_split(sums[level].reshape(-1, 4), smoothing[level])).reshape(-1)
        return x

    @staticmethod
    def _mode_split(children, a):
        weights = children + (a - 1.0)
        total = weights.sum(axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, weights / np.where(total > 0, total, 1.0), 1.0 / children.shape[-1])
