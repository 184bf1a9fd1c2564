"""Richardson-Lucy: classic ML-EM (``RLsimple``) and the accelerated, smoothed variant (``RL``).

They follow the COSI team's formulation (Knoedlseder et al. 1999, 2005; Siegert et
al. 2020; cosipy's ``RichardsonLucy``):

``RLsimple``
    ML-EM: ``x_j <- x_j T_j / X_j``, optionally with the response-weighted delta
    ``(X_j / max X)^index (x_j T_j / X_j - x_j)``; backgrounds
    ``b_k <- b_k sum_i B_k,i w_i / sum_i B_k,i`` clipped to their ranges.
``RL``
    The same delta image, response-weighted, Gaussian-smoothed on the sphere and
    accelerated: ``x <- x + alpha delta'`` with ``alpha = min(-x_j / delta'_j)``
    over pixels with ``x_j > 0`` and ``delta'_j < 0``, capped at ``alpha_max`` and floored at 1;
    optionally ``alpha`` maximizes the log-likelihood on ``[1, alpha]`` by golden
    section (the likelihood is concave in ``alpha`` and costs O(nnz) per point).
"""
import logging
import math

import healpy as hp
import numpy as np
from astropy import units as u
from histpy import HealpixAxis

from .. import validation
from ..binning import is_nested
from ..errors import CosiInputError
from .base import DeconvolutionAlgorithm

logger = logging.getLogger(__name__)

DEFAULT_ALPHA_MAX = 1.0
DEFAULT_LINE_SEARCH_STEPS = 10
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class RichardsonLucySimple(DeconvolutionAlgorithm):
    """Classic ML-EM (``RLsimple``), optionally with response weighting.

    Keywords are those of :class:`~cosi_imaging_plugin.deconvolution.base.DeconvolutionAlgorithm`.
    Without response weighting and clipping, each iteration never decreases the
    likelihood and conserves the counts: ``sum_j X_j x_j + sum_k b_k sum_i B_k,i = sum_i d_i``.

    Examples
    --------
    >>> rl = RichardsonLucySimple(dataset, iterations=50, fit_backgrounds=True)  # doctest: +SKIP
    >>> results = rl.run()                                                      # doctest: +SKIP
    """

    name = "RLsimple"


class RichardsonLucy(DeconvolutionAlgorithm):
    """Accelerated, smoothed, response-weighted Richardson-Lucy (``RL``).

    Parameters
    ----------
    datasets : COSIDataset or list of COSIDataset
    acceleration : bool
        Step ``alpha`` times the delta image, ``alpha`` the largest step keeping
        the model non-negative, within ``[1, alpha_max]``.
    alpha_max : float
        Largest acceleration factor (>= 1).
    line_search : bool
        Choose ``alpha`` in ``[1, alpha]`` by maximizing the log-likelihood.
    line_search_steps : int
        Golden-section evaluations of the line search.
    smoothing_fwhm : float or astropy.units.Quantity, optional
        FWHM of the Gaussian smoothing of the delta image on the sphere (a number
        is in degrees); None or 0: no smoothing.
    **kwargs
        The keywords of :class:`~cosi_imaging_plugin.deconvolution.base.DeconvolutionAlgorithm`
        (``iterations``, ``response_weighting``, ``fit_backgrounds``, ...). The
        default stopping threshold is 0.01 in log-likelihood (as in cosipy).

    Notes
    -----
    The step ``alpha = min(-x_j / delta_j)`` (cosipy's) is not chosen by the likelihood:
    it sets the limiting pixel to zero, where a multiplicative update keeps it unless
    smoothing feeds it again, and the likelihood can drop for an iteration (as in the
    COSI 511 keV tutorial). With ``line_search`` the step maximizes the likelihood on
    ``[1, alpha]`` (``line_search_steps`` golden-section evaluations, each O(nnz) after
    one extra forward folding of the delta image), so the likelihood never decreases
    when no pixel is clipped.

    Examples
    --------
    >>> rl = RichardsonLucy(dataset, iterations=30, acceleration=True, alpha_max=10.0,
    ...                     response_weighting=True, smoothing_fwhm=2.0, fit_backgrounds=True)  # doctest: +SKIP
    >>> results = rl.run()                                                                      # doctest: +SKIP
    """

    name = "RL"
    default_stopping_threshold = 1e-2

    def __init__(self, datasets, *, acceleration=False, alpha_max=DEFAULT_ALPHA_MAX, line_search=False,
                 line_search_steps=DEFAULT_LINE_SEARCH_STEPS, smoothing_fwhm=None, **kwargs):
        super().__init__(datasets, **kwargs)
        where = type(self).__name__
        self.acceleration = validation.flag(acceleration, "acceleration", where)
        self.alpha_max = validation.number(alpha_max, "alpha_max", where, low=1.0)
        self.line_search = validation.flag(line_search, "line_search", where)
        self.line_search_steps = validation.number(line_search_steps, "line_search_steps", where, low=2,
                                                   integer=True)
        if isinstance(smoothing_fwhm, u.Quantity):
            smoothing_fwhm = validation.quantity(smoothing_fwhm, "smoothing_fwhm", u.deg, where, low=0.0)
        fwhm_deg = 0.0 if smoothing_fwhm is None else validation.number(smoothing_fwhm, "smoothing_fwhm", where,
                                                                        low=0.0)
        self.smoothing = fwhm_deg > 0
        self.smoothing_fwhm = math.radians(fwhm_deg)
        if self.smoothing:
            if not isinstance(self.model_axes[0], HealpixAxis):
                raise CosiInputError(f"{where}: smoothing needs a HEALPix model axis, got "
                                     f"'{self.model_axes[0].label}'")
            logger.info("delta images are smoothed with a Gaussian of FWHM %.4g deg", fwhm_deg)

    def smooth(self, image):
        """Gaussian smoothing of each energy plane on the sphere (healpy)."""
        nest = is_nested(self.model_axes[0])
        out = np.empty_like(image)
        for e in range(image.shape[1]):
            out[:, e] = hp.smoothing(image[:, e], fwhm=self.smoothing_fwhm, nest=nest)
        return out

    def calc_alpha(self, delta, model):
        """Largest step keeping the model non-negative, capped at alpha_max and floored at 1.

        Only pixels that are positive and shrinking limit the step (the COSI team's definition): a pixel
        already at zero stays there whatever the step (the update is clipped at zero), so counting it would
        make the limit 0 and switch the acceleration off for the rest of the run.
        """
        shrinking = self.free & (delta < 0) & (model > 0)
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
        # the current expectations with the new background norms (the same when they are not fitted)
        base = [ds.engine.evaluation_at_bins(ev) + (b_new - b_old) for ds, ev, b_new, b_old
                in zip(self.datasets, self._evaluations, self._bkg_at_bins(norms), self._bkg_at_bins(self.bkg_norms))]
        base_total = [self._total_expected(self.model, norms, ds) for ds in self.datasets]
        d_total = [float(np.sum(ds.exposure * delta)) for ds in self.datasets]

        def loglike(alpha):
            value = 0.0
            for ds, b, ds_, t0, dt in zip(self.datasets, base, d_sky, base_total, d_total):
                try:  # without the factorials, constant in alpha: finer rounding for the comparisons
                    value += ds.log_likelihood_from(b + alpha * ds_, t0 + alpha * dt, constant=0.0)
                except CosiInputError:  # a step that empties a bin with counts
                    return -np.inf
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
