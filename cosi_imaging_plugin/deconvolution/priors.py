"""Priors of MAP Richardson-Lucy on HEALPix images: total squared variation and entropy.

Each prior gives ``log P(x)`` and its gradient for images ``[n_pix, n_ei]`` in
ph cm-2 s-1 sr-1, over the free (unmasked) pixels; MAP-RL uses the gradient in its
one-step-late update.
"""
import healpy as hp
import numpy as np
from histpy import HealpixAxis

from ..binning import is_nested
from ..errors import CosiInputError


def _healpix_neighbours(axis):
    """Neighbour table [8, n_pix] of a HEALPix axis with -1 entries kept."""
    return hp.get_all_neighbours(axis.nside, np.arange(axis.nbins), nest=is_nested(axis))


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
