"""LIRA's mode-finding variant: EM towards the posterior mode at fixed smoothing (a regularised point estimate).

The E-step is Richardson-Lucy's (the expected allocation ``x_j sum_i R_ij d_i / eps_i`` and
``b_k sum_i B_k,i d_i / eps_i``, through the engine's transpose products), completed by the
expected counts of the exposure augmentation ``x_j (Xmax - X_j)``; the M-step is the mode of the
multiscale prior's conditional (:meth:`.tree.MultiscaleTree.mode_step`) and of the backgrounds'
Gamma conditionals. Each iteration never decreases the log-posterior; with every smoothing
parameter 1 (flat splits) and a flat prior on the total it is ML-EM on the augmented data,
with the fixed points of Richardson-Lucy.
"""
import logging

import numpy as np
from tqdm.auto import tqdm

from .. import validation
from .gibbs import GibbsSampler
from .tree import DEFAULT_TOTAL_PRIOR, fractions_of_image

logger = logging.getLogger(__name__)

_WHERE = "LIRAMode"


class LIRAMode:
    """Posterior mode of the multiscale model at fixed smoothing parameters, by EM.

    Parameters
    ----------
    dataset : COSIDataset
    smoothing : float or array_like
        Smoothing ``a`` of every tree level (>= 1), one value or one per level (base split first).
    iterations : int
    total_prior : (float, float)
        Gamma (shape, rate) prior on the expected total counts of the sky.
    background_priors : dict of str to (float, float), optional
        Gamma (shape >= 1, rate) priors of the background norms; flat where not given.
    fit_backgrounds : bool
    initial_image : histpy.Histogram or ndarray, optional
        Start (default flat, at the counts the backgrounds leave over).
    progress : bool

    Examples
    --------
    >>> result = LIRAMode(dataset, smoothing=2.0, iterations=100).run()   # doctest: +SKIP
    >>> result["image"], result["log_posterior"]                          # doctest: +SKIP
    """

    def __init__(self, dataset, *, smoothing=2.0, iterations=100, total_prior=DEFAULT_TOTAL_PRIOR,
                 background_priors=None, fit_backgrounds=True, initial_image=None, progress=True):
        self.dataset = dataset
        self.iterations = validation.number(iterations, "iterations", _WHERE, low=1, integer=True)
        self.fit_backgrounds = validation.flag(fit_backgrounds, "fit_backgrounds", _WHERE)
        self.progress = validation.flag(progress, "progress", _WHERE)
        # the hyperprior does not enter the mode at fixed smoothing: any positive delta
        self.sampler = GibbsSampler(dataset.engine, 1.0, total_prior, background_priors, fit_backgrounds)
        levels = self.sampler.tree.levels + 1
        values = np.broadcast_to(np.asarray(smoothing, dtype=np.float64).reshape(-1, 1)
                                 if np.ndim(smoothing) else np.float64(smoothing), (levels, self.sampler.n_ei))
        for value in np.unique(values):
            validation.number(float(value), "smoothing", _WHERE, low=1.0)
        self.smoothing = np.array(values)
        self.initial_image = None if initial_image is None else dataset.engine.image_values(initial_image)

    def run(self):
        """Iterate EM.

        Returns
        -------
        dict
            ``image`` (Histogram), ``background_norms`` (dict), ``log_posterior`` and
            ``log_likelihood`` (arrays, one value per iteration, of the image it starts from).
        """
        s = self.sampler
        engine = self.dataset.engine
        norms = np.ones(len(s.names))
        if self.initial_image is None:
            bkg = float(np.dot(norms, s.bkg_totals))
            sky = max(engine.data.total_counts - bkg, 0.1 * engine.data.total_counts, 1.0)
            image = np.full((s.n_pix, s.n_ei), sky / s.exposure.sum())
        else:
            image = np.maximum(self.initial_image, 0.0) + 1e-12
        log_posterior, log_likelihood = [], []
        shape, rate = s.bkg_prior.T
        for _ in tqdm(range(self.iterations), desc="LIRA mode", unit="it", disable=not self.progress):
            bkg_norms = dict(zip(s.names, norms))
            eps = engine.expectation_at_bins(image, bkg_norms)
            log_like = engine.log_likelihood_from(eps, engine.total_expected(image, bkg_norms))
            log_likelihood.append(log_like)
            log_posterior.append(log_like + self._log_prior(image, norms))
            weights = engine.data.counts / eps
            allocated = image * engine.transpose_product(weights)
            bkg_counts = norms * np.array([engine.background_products(weights)[n] for n in s.names])
            nested, nested_alloc = s.nested(image), s.nested(allocated)
            new = np.empty_like(nested)
            for e in range(s.n_ei):
                complete = nested_alloc[:, e] + nested[:, e] * (s.exposure_max[e] - s.nested(s.exposure)[:, e])
                new[:, e] = s.tree.mode_step(complete, s.exposure_max[e], self.smoothing[:, e])
            image = s.model_order(new)
            if self.fit_backgrounds and s.names:
                norms = np.maximum(shape - 1.0 + bkg_counts, 0.0) / (rate + s.bkg_totals)
        return {"image": engine.image_histogram(image), "background_norms": dict(zip(s.names, norms)),
                "log_posterior": np.array(log_posterior), "log_likelihood": np.array(log_likelihood)}

    def _log_prior(self, image, norms):
        s = self.sampler
        nested = s.nested(image)
        value = s._bkg_log_prior(norms) if s.names else 0.0
        for e in range(s.n_ei):
            if np.all(nested[:, e] > 0):
                log_total, lf = fractions_of_image(nested[:, e], s.tree.levels)
                value += s.tree.log_prior(log_total, lf, self.smoothing[:, e], s.exposure_max[e])
            else:
                value -= np.inf if np.any(self.smoothing[:, e] > 1) else 0.0
        return value
