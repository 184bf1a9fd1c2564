"""One exact Gibbs sweep of the Bayesian multiscale deconvolution.

The model: counts ~ Poisson(engine expectation of the sky image ``x`` plus the background
templates times their norms ``b``); ``x`` of every Ei bin under the multiscale prior of
:mod:`.tree`; ``b_k`` under Gamma priors (flat by default). A sweep draws, in turn,

1. the sky total of every Ei bin and the background norms together given the sky's shape, the
   allocation integrated out (:mod:`.scale`, an exact Metropolis-Hastings move): the ridge along
   which a sky total and a background trade counts is crossed in one step, where steps 2-4
   alone creep along it. Its forward product of the sky's shape also gives the expectation at
   the bins that the allocation needs, so the move costs no pass over the response of its own.
   With ``regions`` (a fixed partition of the pixels, e.g. by the brightness of a first image) the
   total of every region is drawn, each region's shape fixed, under the multiscale prior of the
   image they make (:meth:`.MultiscaleTree.region_scales_log_prior`): the faint sky between the
   sources, which the Gibbs steps trade against the backgrounds at the pace of an EM iteration,
   moves in one step. One forward product per region;
1a. (``sibling_swaps``) exchanges of two children's totals under the bright parents of a first
   image (:mod:`.swap`, Metropolis on the likelihood, the prior being exchangeable): a bright
   source's flux moves between neighbouring pixels in one step. The swaps update the expectation at
   the bins from the pixels' stored columns; where one is accepted, only the CCM's product of the
   image (the source rows the allocation reads) is made anew;
1b. (``smoothing_move``) the smoothing of one level, chosen at random, together with that level's
   splits at fixed Gamma quantiles (:mod:`.smoothing_move`, a Metropolis-Hastings move on the
   likelihood with the allocation integrated out): the smoothing and the image's roughness move
   together. One forward product, which the allocation reuses when the move is accepted;
2. the allocation of the counts to sky pixels and backgrounds given ``(x, b)``
   (:mod:`.allocation`), completed by the counts that a uniform exposure ``Xmax`` would
   have added, ``Poisson(x_p (Xmax - X_p))`` (LIRA's exposure augmentation);
3. the smoothing parameter of every level given the complete counts, the splits integrated
   out (slice sampling), then the total and the multiscale splits of every Ei bin given the
   complete counts and the smoothing (a blocked step);
4. the background norms given their counts: ``b_k ~ Gamma(alpha_k + n_k, beta_k + sum_i B_k,i)``;
5. (``hmc_steps > 0``) the log-image of every Ei bin given the smoothing and the norms, the
   allocation integrated out (:mod:`.hmc`, Hamiltonian Monte Carlo with a Metropolis-Hastings
   accept or reject): it moves the split of the flux between neighbouring regions, along which
   the data augmentation creeps at the pace of an EM iteration where the response is broad.

Every step leaves the posterior invariant (2-4 draw from exact conditionals, 1, 1a, 1b and 5 are
Metropolis-Hastings steps on the posterior with the allocation integrated out, each followed by
a fresh allocation), so the chain's stationary law is the posterior. The step size and mass
matrix of 5 are tuned during the burn-in only (``adapt``).
"""
import logging
import math
from dataclasses import dataclass

import healpy as hp
import numpy as np

from ..binning import is_nested
from ..errors import CosiInputError
from .allocation import Allocator
from .hmc import ImageHMC, new_tuning, tuned
from .scale import ScaleMove
from .smoothing_move import SmoothingMove, new_steps
from .swap import SiblingSwap, bright_parents
from .tree import MultiscaleTree, aggregate, fractions_of_image

logger = logging.getLogger(__name__)

#: Leapfrog steps of the image move in the default sweep (0: the move is left out). At the demo scale
#: (benchmarks/RESULTS.md) 10 steps with the tuned mass matrix cost 3-5 sweeps and, at equal wall time,
#: gave 1.2 times the pixels' ESS per minute and lower R-hat for the totals and background norms but not for
#: the smoothing or the log-posterior: too small a gain to make every sweep several times dearer by default.
DEFAULT_HMC_STEPS = 0


def brightness_regions(image, n_regions):
    """A partition of the sky pixels by the brightness of an image: ``n_regions`` groups of about equal numbers
    of pixels, from the faintest (label 0) to the brightest.

    Parameters
    ----------
    image : ndarray, shape (n_pix,) or (n_pix, n_ei)
        A first image (e.g. RL's); several Ei bins are summed.
    n_regions : int

    Returns
    -------
    ndarray of int, shape (n_pix,)
    """
    values = np.asarray(image, dtype=np.float64)
    values = values.reshape(values.shape[0], -1).sum(axis=1)
    ranks = np.empty(values.size, dtype=np.int64)
    ranks[np.argsort(values, kind="stable")] = np.arange(values.size)
    return ranks * int(n_regions) // values.size


@dataclass
class ChainState:
    """The state of one chain.

    Attributes
    ----------
    image : ndarray, shape (n_pix, n_ei)
        Sky image in the model grid's own pixel order (ph cm-2 s-1 sr-1).
    smoothing : ndarray, shape (L + 1, n_ei)
        Smoothing parameter of every tree level and Ei bin.
    norms : ndarray, shape (n_bkg,)
        Background normalizations.
    log_prior : float
        Log prior density of the state (tree parametrization).
    tuning : ndarray, shape (4,)
        The image move's step-size tuning (:func:`.hmc.new_tuning`).
    metric : ndarray, shape (3, n_pix, n_ei)
        The image move's inverse mass matrix and the sums it is estimated from (:func:`.hmc.new_tuning`).
    smoothing_steps : ndarray, shape (2, L + 1)
        The smoothing move's step per level and its proposals so far (:func:`.smoothing_move.new_steps`).
    """

    image: np.ndarray
    smoothing: np.ndarray
    norms: np.ndarray
    log_prior: float
    tuning: np.ndarray = None
    metric: np.ndarray = None
    smoothing_steps: np.ndarray = None

    def __post_init__(self):
        if self.tuning is None or self.metric is None:
            self.tuning, self.metric = new_tuning(np.shape(self.image))
        if self.smoothing_steps is None:
            self.smoothing_steps = new_steps(np.shape(self.smoothing)[0])


class GibbsSampler:
    """The conditional draws of one dataset's posterior.

    Parameters
    ----------
    engine : ResponseEngine
        Engine with data; its model grid a full HEALPix sphere.
    delta : float
        Hyperprior of the smoothing parameters, ``p(a) ~ exp(-delta a^3 / 3)``.
    total_prior : (float, float)
        Gamma prior (shape, rate) on the expected total complete counts of each Ei bin.
    background_priors : dict of str to (float, float), optional
        Gamma priors (shape, rate) of the background norms; flat (1, 0) where not given.
    fit_backgrounds : bool
        Draw the background norms; if False they stay at their initial values.
    scale_move : bool
        Add the joint move of the sky totals and the background norms (:mod:`.scale`) to every sweep.
    hmc_steps : int
        Leapfrog steps of the image move (:mod:`.hmc`) in every sweep; 0 leaves it out.
    smoothing_move : bool
        Add the joint move of one level's smoothing and splits (:mod:`.smoothing_move`) to every sweep.
    regions : array of int, shape (n_pix,), optional
        A fixed partition of the sky pixels (model order, labels 0 to R - 1) whose totals the scale move
        draws each on its own (e.g. :func:`brightness_regions` of a first image): the faint sky between the
        sources then trades counts with the backgrounds in one step. One region by default.
    swap_image : ndarray, shape (n_pix,) or (n_pix, n_ei), optional
        A first image (model order) above whose brightest pixels the sibling swaps (:mod:`.swap`) exchange
        children's totals.
    sibling_swaps : int
        Sibling swaps proposed in every sweep (with `swap_image`).
    """

    def __init__(self, engine, delta, total_prior, background_priors=None, fit_backgrounds=True, scale_move=True,
                 hmc_steps=DEFAULT_HMC_STEPS, smoothing_move=True, regions=None, swap_image=None, sibling_swaps=0):
        self.engine = engine
        axis = engine.model_axes[0]
        self.n_pix, self.n_ei = (int(n) for n in engine.model_axes.nbins)
        self.tree = MultiscaleTree(self.n_pix, delta, total_prior)
        nside = getattr(axis, "nside", None)
        if nside is None:
            raise CosiInputError(f"model axis '{axis.label}' is not a HEALPix axis: the multiscale prior needs "
                                 "a full-sky HEALPix grid")
        if getattr(axis, "scheme", None) is not None and not is_nested(axis):
            logger.warning("model axis '%s' is RING: the quad-tree prior works on the NESTED order of the same "
                           "pixels (converted internally; the outputs keep the RING order)", axis.label)
            self.to_nested = hp.nest2ring(nside, np.arange(self.n_pix))  # nested p -> model pixel
            self.to_model = hp.ring2nest(nside, np.arange(self.n_pix))  # model pixel -> nested p
        else:
            self.to_nested = self.to_model = None
        self.exposure = np.asarray(engine.exposure_map, dtype=np.float64)
        self.exposure_max = self.exposure.max(axis=0)
        if np.any(self.exposure_max <= 0):
            raise CosiInputError(f"Ei bins {np.flatnonzero(self.exposure_max <= 0).tolist()} have no exposure")
        self.unexposed = self.exposure <= 0
        if self.unexposed.any():
            logger.warning("%d sky pixels have no exposure: the prior alone describes them (flagged in the "
                           "outputs)", int(self.unexposed.any(axis=1).sum()))
        self.names = list(engine.background_names)
        priors = dict(background_priors or {})
        unknown = set(priors) - set(self.names)
        if unknown:
            raise CosiInputError(f"background_priors: unknown background(s) {sorted(unknown)}; known: {self.names}")
        self.bkg_prior = np.array([priors.get(n, (1.0, 0.0)) for n in self.names], dtype=np.float64).reshape(-1, 2)
        self.bkg_totals = np.array([engine.background_total(n) for n in self.names], dtype=np.float64)
        self.fit_backgrounds = bool(fit_backgrounds)
        self.allocator = Allocator(engine)
        self.solid_angle = 4 * np.pi / self.n_pix
        self.hmc = None
        if hmc_steps:
            self.hmc = ImageHMC(engine, self.tree, self.exposure_max, self.nested, self.model_order, hmc_steps)
        self.regions = np.zeros(self.n_pix, dtype=np.int64) if regions is None else np.asarray(regions)
        if self.regions.shape != (self.n_pix,) or not np.issubdtype(self.regions.dtype, np.integer) \
                or self.regions.min() < 0:
            raise CosiInputError(f"regions: expected one non-negative integer label per sky pixel ({self.n_pix})")
        self.n_regions = int(self.regions.max()) + 1
        if np.bincount(self.regions, minlength=self.n_regions).min() == 0:
            raise CosiInputError(f"regions: labels 0 to {self.n_regions - 1} must each name at least one pixel")
        self.smoothing_move = None
        if smoothing_move:
            self.smoothing_move = SmoothingMove(engine, self.tree, self.allocator, self.nested, self.model_order)
        self.swap = None
        if swap_image is not None and sibling_swaps > 0:
            self.swap = SiblingSwap(self.allocator, self.exposure, self.to_nested,
                                    bright_parents(self.nested(np.asarray(swap_image, dtype=np.float64))),
                                    sibling_swaps)
        self.scale_move = None
        if scale_move:
            fitted = self.names if self.fit_backgrounds else []
            templates = np.array([engine.background_template_at_bins(n) for n in fitted]).reshape(
                len(fitted), engine.data.nnz)
            self.scale_move = ScaleMove(engine.data.counts, templates, self.bkg_totals[:len(fitted)],
                                        self.tree.total_prior, self.bkg_prior[:len(fitted)])

    # ---- pixel order -------------------------------------------------------------------------
    def nested(self, values):
        """Array in the model grid's order -> NESTED order."""
        return values if self.to_nested is None else values[self.to_nested]

    def model_order(self, values):
        """Array in NESTED order -> the model grid's order."""
        return values if self.to_model is None else values[self.to_model]

    # ---- states ------------------------------------------------------------------------------
    def state(self, image, smoothing, norms, tuning=None, metric=None, smoothing_steps=None):
        """A chain state from an image, smoothing parameters and norms (its log prior computed)."""
        image = np.array(image, dtype=np.float64).reshape(self.n_pix, self.n_ei)
        if np.any(image <= 0) or not np.all(np.isfinite(image)):
            raise CosiInputError("initial image: every pixel must be positive and finite")
        smoothing = np.array(smoothing, dtype=np.float64).reshape(self.tree.levels + 1, self.n_ei)
        if np.any(smoothing <= 0):
            raise CosiInputError(f"initial smoothing {smoothing.ravel().tolist()}: must be positive")
        nested = self.nested(image)
        log_prior = 0.0
        for e in range(self.n_ei):
            log_total, lf = fractions_of_image(nested[:, e], self.tree.levels)
            log_prior += self.tree.log_prior(log_total, lf, smoothing[:, e], self.exposure_max[e])
        return ChainState(image, smoothing, np.array(norms, dtype=np.float64).reshape(len(self.names)),
                          log_prior + self._bkg_log_prior(norms), tuning, metric, smoothing_steps)

    def _bkg_log_prior(self, norms):
        shape, rate = self.bkg_prior.T
        norms = np.asarray(norms, dtype=np.float64)
        with np.errstate(divide="ignore"):
            log_norms = np.where(shape == 1.0, 0.0, np.log(norms))  # a flat prior is flat at zero too
        return float(np.sum((shape - 1.0) * log_norms - rate * norms))

    def log_likelihood(self, data_term, state):
        """Poisson log-likelihood from the data term ``sum d ln eps`` of the allocation."""
        total = self.engine.total_expected(state.image, dict(zip(self.names, state.norms)))
        return data_term - total - self.engine.data.log_factorial

    # ---- the sweep ---------------------------------------------------------------------------
    def sweep(self, state, rng, adapt=False):
        """One Gibbs sweep.

        Parameters
        ----------
        state : ChainState
        rng : numpy.random.Generator
        adapt : bool
            Tune the image move's step size (burn-in sweeps only: the kept draws need a fixed kernel).

        Returns
        -------
        ChainState
            The new state.
        float
            Log-likelihood of the state the sweep started from.
        """
        current, norms, sky_at_bins, rows = state.image, state.norms, None, None
        data_term = None
        if self.scale_move is not None:
            # first, so that its forward product of the sky's shape serves the allocation too
            current, norms, sky_at_bins, rows, data_term = self._scale_step(current, norms, rng,
                                                                            state.smoothing)
        if sky_at_bins is None and (self.swap is not None or self.smoothing_move is not None):
            rows = self.allocator.tiled_rows(current)
            sky_at_bins = self.allocator.sky_at_bins(rows)
            data_term = self._data_term(sky_at_bins, norms)
        if self.swap is not None:
            expected = sky_at_bins + self.engine.background_at_bins(dict(zip(self.names, norms)))
            # the swaps change sky_at_bins (the sweep's own array) in place, with `expected`
            current, accepted = self.swap.draw(current, expected, sky_at_bins, self.engine.data.counts, rng)
            if accepted:  # the allocation needs the source rows too (the CCM's product, not a forward product)
                rows = self.allocator.tiled_rows(current)
        smoothing, steps = state.smoothing, state.smoothing_steps
        if self.smoothing_move is not None:
            current, smoothing, sky_at_bins, rows, steps = self.smoothing_move.draw(
                current, smoothing, norms, sky_at_bins, rows, steps, rng, adapt)
        sky, bkg_counts, allocated_term = self.allocator.draw(current, norms, rng, sky_at_bins, rows)
        log_like = self.log_likelihood(allocated_term if data_term is None else data_term, state)
        sky = self.nested(sky)
        image = self.nested(current)
        exposure = self.nested(self.exposure)
        new_image = np.empty_like(image)
        smoothing = smoothing.copy()
        log_prior = 0.0
        for e in range(self.n_ei):
            # LIRA's exposure augmentation: the counts a uniform exposure Xmax would have added
            extra = rng.poisson(image[:, e] * np.maximum(self.exposure_max[e] - exposure[:, e], 0.0))
            complete = sky[:, e] + extra
            log_x, log_total, lf, smoothing[:, e] = self.tree.draw(complete, self.exposure_max[e], smoothing[:, e],
                                                                   rng)
            log_prior += self.tree.log_prior(log_total, lf, smoothing[:, e], self.exposure_max[e])
            # a floor far below any counted flux: an underflowed pixel would never be allocated a count again
            new_image[:, e] = np.exp(np.maximum(log_x, log_total - 600.0))
        if self.fit_backgrounds and self.names:
            shape, rate = self.bkg_prior.T
            norms = rng.gamma(shape + bkg_counts) / (rate + self.bkg_totals)
        new_image = self.model_order(new_image)
        tuning, metric = state.tuning, state.metric
        if self.hmc is not None:
            new_image, accept = self.hmc.draw(new_image, smoothing, norms, math.exp(tuning[0]), rng, metric[0])
            if adapt:
                tuning, metric = tuned(tuning, metric, accept, np.log(new_image))
            return self.state(new_image, smoothing, norms, tuning, metric, steps), log_like
        log_prior += self._bkg_log_prior(norms)
        return ChainState(new_image, smoothing, norms, log_prior, tuning, metric, steps), log_like

    def _data_term(self, sky_at_bins, norms):
        """``sum d ln eps`` at the non-empty bins from the sky's expected counts there and the norms."""
        eps = sky_at_bins + self.engine.background_at_bins(dict(zip(self.names, norms)))
        with np.errstate(divide="ignore"):
            return float(np.dot(self.engine.data.counts, np.log(eps)))

    def move_scales(self, image, norms, rng, smoothing=None):
        """The joint move of the sky's region totals and the (sampled) background norms, every region's shape fixed.

        Parameters
        ----------
        image : ndarray, shape (n_pix, n_ei)
            Sky image in the model grid's order.
        norms : ndarray, shape (n_bkg,)
        rng : numpy.random.Generator
        smoothing : ndarray, shape (L + 1, n_ei), optional
            Needed with several regions (their prior depends on it).

        Returns
        -------
        image, norms
            The image rescaled per region and Ei bin and the new norms.
        """
        return self._scale_step(image, norms, rng, smoothing)[:2]

    def _scale_step(self, image, norms, rng, smoothing=None):
        """:meth:`move_scales`, also returning the new image's expected counts at the non-empty bins, its
        tiled source rows and ``sum d ln eps`` of the state it started from: one forward product per region,
        split by Ei bin, gives them all."""
        engine = self.engine
        labels, n_regions = self.regions, self.n_regions
        # expected complete counts of every (Ei bin, region): mu[e, r]
        mu = np.stack([np.bincount(labels, weights=image[:, e], minlength=n_regions) for e in range(self.n_ei)])
        mu *= self.exposure_max[:, None]
        unit = image / mu[:, labels].T
        unit_totals = np.stack([np.bincount(labels, weights=unit[:, e] * self.exposure[:, e], minlength=n_regions)
                                for e in range(self.n_ei)]).ravel()
        region_rows, unit_sky = [], np.empty((self.n_ei, n_regions, engine.data.nnz))
        for r in range(n_regions):
            rows = self.allocator.tiled_rows(unit if n_regions == 1 else np.where((labels == r)[:, None], unit, 0.0))
            region_rows.append(rows)
            unit_sky[:, r] = self.allocator.sky_at_bins_per_ei(rows)
        unit_sky = unit_sky.reshape(self.n_ei * n_regions, -1)
        sky_log_prior = None
        if n_regions > 1:
            sky_log_prior = self._regions_log_prior(unit, smoothing)
        fitted = self.fit_backgrounds and bool(self.names)
        current = np.concatenate([mu.ravel(), norms]) if fitted else mu.ravel()
        offset = None if fitted else engine.background_at_bins(dict(zip(self.names, norms)))
        new, _, data_term = self.scale_move.draw(unit_sky, unit_totals, current, rng, offset, data_term=True,
                                                 sky_log_prior=sky_log_prior)
        mu_new = new[:mu.size].reshape(mu.shape)
        for r in range(n_regions):
            if self.n_ei == 1:
                region_rows[r] *= mu_new[0, r]
            else:  # every entry by its Ei bin's new total
                region_rows[r] *= mu_new[self.allocator.ei_of_entries(), r][:, None, :]
        rows = region_rows[0]
        for part in region_rows[1:]:
            rows += part
        return (image * (mu_new / mu)[:, labels].T, (new[mu.size:] if fitted else norms),
                mu_new.ravel() @ unit_sky, rows, data_term)

    def _regions_log_prior(self, unit, smoothing):
        """The prior of the regions' ``ln mu`` of every Ei bin given their shapes (``unit``, each region's shape
        summing to ``1 / Xmax``): a callable ``theta -> (value, gradient, Hessian)`` over the first ``n_ei * R``
        entries of ``theta``."""
        if smoothing is None:
            raise CosiInputError("the scale move over several regions needs the smoothing (their prior depends on it)")
        n_regions = self.n_regions
        nested_unit = self.nested(unit)
        nested_labels = self.nested(self.regions)
        node_sums = []
        for e in range(self.n_ei):
            parts = np.zeros((self.n_pix, n_regions))
            parts[np.arange(self.n_pix), nested_labels] = nested_unit[:, e]
            node_sums.append(aggregate(parts, self.tree.levels))

        def log_prior(theta):
            n = self.n_ei * n_regions
            value, grad, hess = 0.0, np.zeros(n), np.zeros((n, n))
            for e in range(self.n_ei):
                part = slice(e * n_regions, (e + 1) * n_regions)
                v, g, h = self.tree.region_scales_log_prior(theta[part], node_sums[e], smoothing[:, e])
                value += v
                grad[part] = g
                hess[part, part] = h
            return value, grad, hess

        return log_prior

    def total_flux(self, image):
        """Flux ``sum_j x_j dOmega`` of an image, per Ei bin (ph cm-2 s-1)."""
        return np.asarray(image).sum(axis=0) * self.solid_angle

    def dispersed_start(self, rng, image=None, smoothing=1.0, norms=None):
        """A dispersed initial state: the given (or flat) image and norms scattered at random.

        The flat image gives the sky the counts the backgrounds at their norms leave over
        (at least a tenth of the data). Every pixel is multiplied by a Gamma(2, 2) factor and
        the total by a log-normal one of width 0.5; the norms (when sampled) by log-normal factors
        of width 0.3; the smoothing by log-normal factors of width 1.
        """
        norms = np.ones(len(self.names)) if norms is None else np.asarray(norms, dtype=np.float64)
        if image is None:
            bkg = float(np.dot(norms, self.bkg_totals))
            sky_counts = max(self.engine.data.total_counts - bkg, 0.1 * self.engine.data.total_counts, 1.0)
            exposure = self.exposure.sum()
            image = np.full((self.n_pix, self.n_ei), sky_counts / exposure)
        image = np.maximum(np.asarray(image, dtype=np.float64).reshape(self.n_pix, self.n_ei), 0.0)
        floor = 1e-3 * image.mean(axis=0, keepdims=True)
        image = (image + floor) * rng.gamma(2.0, 0.5, image.shape) * math.exp(0.5 * rng.standard_normal())
        if self.fit_backgrounds:
            norms = norms * np.exp(0.3 * rng.standard_normal(norms.shape))
        smoothing = np.broadcast_to(np.asarray(smoothing, dtype=np.float64),
                                    (self.tree.levels + 1, self.n_ei))
        smoothing = smoothing * np.exp(rng.standard_normal(smoothing.shape))
        return self.state(image, smoothing, norms)
