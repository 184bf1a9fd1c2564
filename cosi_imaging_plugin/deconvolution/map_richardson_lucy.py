"""MAP Richardson-Lucy (``MAP_RL``): ML-EM with gamma, smoothness and entropy priors.

One-step-late MAP-EM, as cosipy's ``MAP_RichardsonLucy`` (optional response
weighting; no acceleration or smoothing, which the priors replace): with a gamma
prior (shape ``k``, scale ``theta``) on each pixel,
``x_EM = (x T + k - 1) / (X + 1/theta)``; the TSV and entropy priors then multiply
it by ``exp(grad log P(x_EM) / (X + 1/theta))``; the backgrounds follow
``b <- (b sum B w + k_b - 1) / (sum B + 1/theta_b)``. It stops on the log-posterior.
"""
import logging
import math

import numpy as np
from astropy import units as u

from .. import validation
from ..binning import IMAGE_UNIT
from .base import DeconvolutionAlgorithm
from .priors import PriorEntropy, PriorTSV

logger = logging.getLogger(__name__)

# exp() argument cap of the prior filter: far below overflow (~709), far above any useful filter.
_MAX_FILTER_EXPONENT = 300.0


class MAPRichardsonLucy(DeconvolutionAlgorithm):
    """Richardson-Lucy with priors (``MAP_RL``): gamma, TSV and entropy.

    Parameters
    ----------
    datasets : COSIDataset or list of COSIDataset
    gamma_k : float
        Shape of the gamma prior on every pixel (1: flat).
    gamma_theta : float or Quantity
        Scale of the gamma prior (ph cm-2 s-1 sr-1; inf: flat).
    background_gamma_k, background_gamma_theta : float
        Shape and scale of the gamma prior on the background normalizations.
    tsv_coefficient : float, optional
        Coefficient of the total-squared-variation prior (:class:`PriorTSV`); None: no TSV prior.
    entropy_coefficient : float, optional
        Coefficient of the entropy prior (:class:`PriorEntropy`); None: no entropy prior.
    entropy_prior_map : float, ndarray or Quantity, optional
        Default image of the entropy prior (ph cm-2 s-1 sr-1; scalar, per Ei bin or
        per pixel); needed with `entropy_coefficient`.
    **kwargs
        The keywords of :class:`~cosi_imaging_plugin.deconvolution.base.DeconvolutionAlgorithm`.
        The stopping statistic defaults to the log-posterior, with threshold 0.01.

    Examples
    --------
    >>> map_rl = MAPRichardsonLucy(dataset, iterations=50, gamma_k=0.9, tsv_coefficient=1e6)  # doctest: +SKIP
    """

    name = "MAP_RL"
    stopping_statistics = ("log-posterior", "log-likelihood")
    default_stopping_threshold = 1e-2

    def __init__(self, datasets, *, gamma_k=1.0, gamma_theta=np.inf, background_gamma_k=1.0,
                 background_gamma_theta=np.inf, tsv_coefficient=None, entropy_coefficient=None,
                 entropy_prior_map=None, **kwargs):
        super().__init__(datasets, **kwargs)
        where = type(self).__name__
        self.gamma_k = validation.number(gamma_k, "gamma_k", where, low=0.0)
        self.gamma_theta = validation.quantity(gamma_theta, "gamma_theta", IMAGE_UNIT, where, low=0.0,
                                               allow_inf=True)
        self.gamma_bkg_k = validation.number(background_gamma_k, "background_gamma_k", where, low=0.0)
        self.gamma_bkg_theta = validation.number(background_gamma_theta, "background_gamma_theta", where,
                                                 low=0.0, allow_inf=True)
        for key, value in (("gamma_theta", self.gamma_theta), ("background_gamma_theta", self.gamma_bkg_theta)):
            if value <= 0:
                validation.fail(key, f"must be positive, got {value}", where)
        self.priors = {}
        if tsv_coefficient is not None:
            coefficient = validation.number(tsv_coefficient, "tsv_coefficient", where, low=0.0)
            self.priors["TSV"] = PriorTSV(coefficient, self.model_axes, self.free)
        if entropy_coefficient is not None:
            coefficient = validation.number(entropy_coefficient, "entropy_coefficient", where, low=0.0)
            if entropy_prior_map is None:
                validation.fail("entropy_prior_map", "is needed by the entropy prior", where)
            prior_map = validation.quantity(entropy_prior_map, "entropy_prior_map", IMAGE_UNIT, where)
            if np.any(np.asarray(prior_map) <= 0):
                validation.fail("entropy_prior_map", "must be positive", where)
            self.priors["entropy"] = PriorEntropy(coefficient, prior_map, self.free)
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
        """Initialize as the base class does, then evaluate the log-posterior."""
        super().initialization()
        self._posterior()

    def Mstep(self):  # noqa: N802 (the COSI team's step names)
        """One-step-late MAP-EM update of the model and the background norms."""
        t, products = self._ratio_products()
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
            for ds in self.datasets:
                for c in ds.background_names:
                    total = self.bkg_totals[ds.name][c]
                    if total <= 0:
                        continue
                    b = self.bkg_norms[ds.name][c]
                    value = (b * products[ds.name][c] + self.gamma_bkg_k - 1.0) / (total + 1.0 / self.gamma_bkg_theta)
                    self._new_bkg_norms[ds.name][c] = self._clip_bkg(ds.name, c, value)

    def post_processing(self):
        """The base update, then the log-posterior."""
        super().post_processing()
        self._posterior()

    def _extra_result(self):
        prior_filter = self.datasets[0].image_histogram(self.prior_filter, unit=u.dimensionless_unscaled)
        return {"prior_filter": prior_filter,
                "log_prior": dict(self.log_priors), "log_posterior": self.log_posterior}

    def register_result(self):
        """Append this iteration's result and log the log-posterior."""
        super().register_result()
        logger.info("iteration %d: log-posterior %.8g, log-priors %s", self.iteration_count, self.log_posterior,
                    self.log_priors)
