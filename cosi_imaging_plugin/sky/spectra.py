"""Spectra integrated over energy bins, vectorised.

Expected counts use the photon flux integrated over each Ei bin. One ``quad``
call per bin and per likelihood evaluation is slow; instead every bin is cut
into sub-intervals in log-energy, each integrated by Gauss-Legendre, and the
number of sub-intervals is doubled until the result of every bin changes by
less than the tolerance. The function is called once per level on all nodes
of all bins at once.
"""
import numpy as np

from ..errors import CosiInputError

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(8)


def _integrate_level(function, log_lo, log_hi, n_sub):
    """Composite 8-point Gauss-Legendre in log-energy with `n_sub` sub-intervals per bin."""
    width = (log_hi - log_lo) / n_sub
    starts = log_lo[:, None] + width[:, None] * np.arange(n_sub)[None, :]
    u = starts[:, :, None] + 0.5 * width[:, None, None] * (_NODES + 1.0)
    energy = np.exp(u)
    values = np.asarray(function(energy.ravel()), dtype=np.float64).reshape(energy.shape)
    # dE = E du
    return np.einsum("bsn,n->b", values * energy, _WEIGHTS) * 0.5 * width, values


def integrate_spectrum(function, edges, rtol=1e-6, min_subintervals=4, max_subintervals=4096, allow_negative=False):
    """Integral of a differential spectrum over each energy bin.

    Parameters
    ----------
    function : callable
        Differential photon flux, called with an array of energies in keV
        (e.g. an astromodels spectral function or a source's spectrum), returning
        ph cm-2 s-1 keV-1 (or ph cm-2 s-1 sr-1 keV-1 for a surface brightness).
    edges : array_like
        Bin edges in keV, increasing and positive.
    rtol : float
        Relative tolerance of each bin's integral (1e-6 by default, well inside the
        1e-4 required of expected counts).
    min_subintervals, max_subintervals : int
        Sub-intervals per bin at the first and the last refinement level.
    allow_negative : bool
        Accept negative values (a minimizer exploring a negative normalization);
        NaN and infinities are always errors.

    Returns
    -------
    ndarray
        Integrated flux per bin (ph cm-2 s-1, or per sr).

    Raises
    ------
    CosiInputError
        If the spectrum returns NaN, infinite or (unless allowed) negative values, or does not
        converge (e.g. a line narrower than the finest sub-interval).
    """
    edges = np.asarray(getattr(edges, "value", edges), dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(edges <= 0) or np.any(np.diff(edges) <= 0):
        raise CosiInputError(f"energy edges must be positive and increasing, got {edges}")
    log_lo, log_hi = np.log(edges[:-1]), np.log(edges[1:])
    n_sub = min_subintervals
    previous, values = _integrate_level(function, log_lo, log_hi, n_sub)
    _check_values(values, function, allow_negative)
    while True:
        n_sub *= 2
        current, values = _integrate_level(function, log_lo, log_hi, n_sub)
        _check_values(values, function, allow_negative)
        scale = np.maximum(np.abs(current), np.finfo(float).tiny)
        if np.all(np.abs(current - previous) <= rtol * scale):
            return current
        if n_sub >= max_subintervals:
            worst = int(np.argmax(np.abs(current - previous) / scale))
            raise CosiInputError(
                f"the integral of {_name(function)} over [{edges[worst]:g}, {edges[worst + 1]:g}] keV did not "
                f"converge to rtol={rtol:g} with {n_sub} sub-intervals (a line narrower than "
                f"{(edges[worst + 1] - edges[worst]) / n_sub:.3g} keV?)")
        previous = current


def _name(function):
    return getattr(function, "name", None) or getattr(function, "__name__", None) or type(function).__name__


def _check_values(values, function, allow_negative):
    if not np.all(np.isfinite(values)):
        raise CosiInputError(f"spectrum {_name(function)} returned NaN or infinite values")
    if not allow_negative and np.any(values < 0):
        raise CosiInputError(f"spectrum {_name(function)} returned negative flux")
