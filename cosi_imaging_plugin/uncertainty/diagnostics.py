"""Convergence diagnostics of several chains: split-R-hat and effective sample size.

Both follow Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021, Bayesian Analysis 16, 667):
R-hat is the larger of the split-R-hat of the rank-normalized draws and of their folded
ranks (``|x - median|``); the bulk effective sample size is computed on the rank-normalized
split chains with Geyer's initial monotone sequence. Draws are arrays
``(n_chains, n_draws, ...)``; every trailing index is a separate parameter.
"""
import warnings

import numpy as np
from scipy.special import ndtri
from scipy.stats import rankdata

from ..errors import CosiInputError

#: Chains must hold at least this many draws each for the diagnostics.
MIN_DRAWS = 8


def _split(draws):
    """Each chain cut in two halves: (2 n_chains, n_draws // 2, ...)."""
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim < 2:
        raise CosiInputError(f"draws of shape {draws.shape}: expected (n_chains, n_draws, ...)")
    if draws.shape[1] < MIN_DRAWS:
        raise CosiInputError(f"n_samples: chains of {draws.shape[1]} draws are too short for R-hat "
                             f"(at least {MIN_DRAWS})")
    half = draws.shape[1] // 2
    return np.concatenate([draws[:, :half], draws[:, -half:]], axis=0)


def _rank_normalize(draws):
    """Normal scores of the ranks over all chains and draws, per parameter."""
    n_chains, n_draws = draws.shape[:2]
    flat = draws.reshape(n_chains * n_draws, -1)
    ranks = rankdata(flat, axis=0)
    scores = ndtri((ranks - 0.375) / (flat.shape[0] + 0.25))
    return scores.reshape(draws.shape)


def _rhat(split):
    n = split.shape[1]
    within = split.var(axis=1, ddof=1).mean(axis=0)
    between = n * split.mean(axis=1).var(axis=0, ddof=1)
    var_plus = (n - 1) / n * within + between / n
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.sqrt(var_plus / within)
    # constant draws (a parameter that never moved in any chain) have R-hat 1 by convention
    return np.where(within > 0, out, np.where(between > 0, np.inf, 1.0))


def rhat(draws):
    """Rank-normalized split-R-hat (maximum of the bulk and the folded value) per parameter.

    Parameters
    ----------
    draws : array_like, shape (n_chains, n_draws, ...)

    Returns
    -------
    ndarray of the trailing shape
    """
    split = _split(draws)
    bulk = _rhat(_rank_normalize(split))
    folded = _rhat(_rank_normalize(np.abs(split - np.median(split, axis=(0, 1)))))
    return np.maximum(bulk, folded)


def _autocovariance(x):
    """Autocovariance of each chain along axis 1, by FFT."""
    n = x.shape[1]
    centred = x - x.mean(axis=1, keepdims=True)
    size = 2 ** int(np.ceil(np.log2(2 * n)))
    spectrum = np.fft.rfft(centred, n=size, axis=1)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=1)[:, :n]
    return acov / n


def ess(draws):
    """Bulk effective sample size (rank-normalized split chains) per parameter.

    Parameters
    ----------
    draws : array_like, shape (n_chains, n_draws, ...)

    Returns
    -------
    ndarray of the trailing shape
    """
    split = _rank_normalize(_split(draws))
    m, n = split.shape[:2]
    trailing = split.shape[2:]
    flat = split.reshape(m, n, -1)
    acov = _autocovariance(flat)
    within = acov[:, 0].mean(axis=0) * n / (n - 1)
    var_plus = within * (n - 1) / n + flat.mean(axis=1).var(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = 1.0 - (within[None] - acov.mean(axis=0)) / var_plus[None]
    rho[0] = 1.0
    out = np.empty(flat.shape[2])
    n_pairs = n // 2
    for p in range(flat.shape[2]):
        if not var_plus[p] > 0:
            out[p] = m * n
            continue
        # Geyer: sums of consecutive pairs, truncated at the first negative one, made monotone
        pairs = rho[0:2 * n_pairs:2, p] + rho[1:2 * n_pairs:2, p]
        negative = np.flatnonzero(pairs < 0)
        pairs = pairs[:negative[0]] if negative.size else pairs
        pairs = np.minimum.accumulate(pairs)
        tau = -1.0 + 2.0 * pairs.sum()
        out[p] = m * n / max(tau, 1.0 / np.log10(m * n))
    return out.reshape(trailing)


def warn_unconverged(values, what, threshold=1.01):
    """Warn where an R-hat exceeds `threshold`; return the fraction that does."""
    values = np.asarray(values)
    bad = values > threshold
    if bad.any():
        warnings.warn(f"{what}: R-hat > {threshold} for {int(bad.sum())} of {values.size} "
                      f"(worst {float(np.max(values)):.3f}); run longer chains (n_samples, burn_in)",
                      RuntimeWarning, stacklevel=3)
    return float(bad.mean()) if values.size else 0.0
