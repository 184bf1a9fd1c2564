"""LIRA's sampler against its own prior (slow): coverage of credible intervals and Geweke's test.

Coverage (simulation-based calibration): for each of 20 datasets the smoothing parameters, the sky
and the background norm are drawn from the model's own priors and the counts from its likelihood;
the posterior's central 68 % and 95 % intervals of region fluxes (three regions and the whole sky,
three Ei bins) must then contain the truth at their nominal rates. An exact sampler run to
convergence passes; an allocation or conditional that is off shifts the intervals, and chains too
short for their R-hat make them too narrow. Over 20 x 4 x 3 = 240 intervals per level, the
tolerance is three binomial standard deviations of 240 draws (the intervals of one dataset are
correlated, so the rate's spread is somewhat larger than binomial: the 95 % check keeps its bound
one-sided below).

Geweke's successive-conditional test checks every conditional of the sweep, the spatial ones
included: the splits of the tree, the smoothing of every level, the totals and the norm, and the
image-space move (Hamiltonian Monte Carlo on the log-image).
"""
import math
import sys
from pathlib import Path

import healpy as hp
import numpy as np
import pytest
import sparse
from histpy import Histogram

from cosi_imaging_plugin.datasets import COSIDataset
from cosi_imaging_plugin.engine import ResponseEngine
from cosi_imaging_plugin.uncertainty import LIRA, ess, region_mask, rhat
from cosi_imaging_plugin.uncertainty.gibbs import GibbsSampler, brightness_regions
from cosi_imaging_plugin.uncertainty.lira import DEFAULT_SCALE_REGIONS
from cosi_imaging_plugin.uncertainty.tree import (
    MultiscaleTree,
    fractions_of_image,
    image_from_tree,
    log_dirichlet_draw,
)

sys.path.insert(0, str(Path(__file__).parent))
from small_setup import instrument  # noqa: E402

N_DATASETS = 20
DELTA = 1.0
# small datasets: about 300 sky counts per Ei bin (at the maximum exposure) and 360 background counts
TOTAL_PRIOR = (30.0, 0.1)
BACKGROUND_SCALE = 0.1
BACKGROUND_PRIOR = (50.0, 50.0)
REGIONS = ({"disc": (0.0, 0.0, 20.0)}, {"disc": (60.0, 0.0, 15.0)}, {"disc": (200.0, -40.0, 25.0)})
CHAINS, BURN_IN, SAMPLES = 3, 500, 500
#: Leapfrog steps of the image move in Geweke's test of the sweep with the move.
GEWEKE_HMC_STEPS = 3
#: Sweeps of Geweke's test, the first 200 discarded. The mean squared base-level split follows the base
#: level's smoothing and mixes slowly: over 2000 sweeps its error from the effective sample size came out
#: too small (with the move and seed 11 its z went -4.6, -5.3, -4.2 and -1.6 after 2000, 4000, 6000 and
#: 8000 sweeps, as that statistic's ESS estimate fell from 811 to 686 between the last two).
GEWEKE_SWEEPS = 8000


def prior_trees(tree, exposure_max, rng, n_ei, total_prior):
    """(log-total, log-fractions, smoothing) of every Ei bin drawn from the prior."""
    out = []
    for e in range(n_ei):
        # p(a) ~ exp(-delta a^3 / 3): a^3 delta / 3 is a Gamma(1/3) variable
        smoothing = (3 * rng.gamma(1 / 3, size=tree.levels + 1) / DELTA) ** (1 / 3)
        log_mu = math.log(rng.gamma(total_prior[0]) / total_prior[1])
        fractions = [log_dirichlet_draw(np.full(12, smoothing[0]), rng)]
        fractions += [log_dirichlet_draw(np.full((12 * 4 ** (level - 1), 4), smoothing[level]), rng)
                      for level in range(1, tree.levels + 1)]
        out.append((log_mu - math.log(exposure_max[e]), fractions, smoothing))
    return out


def image_of(trees):
    """The NESTED image [n_pix, n_ei] of the trees of every Ei bin."""
    return np.stack([np.exp(image_from_tree(log_total, fractions)) for log_total, fractions, _ in trees], axis=1)


def prior_draw(tree, exposure_max, rng, n_ei, total_prior=TOTAL_PRIOR, background_prior=BACKGROUND_PRIOR):
    """(image in NESTED order [n_pix, n_ei], background norm) drawn from the priors."""
    image = image_of(prior_trees(tree, exposure_max, rng, n_ei, total_prior))
    return image, rng.gamma(background_prior[0]) / background_prior[1]


def scaled_instrument(scale):
    """The small setup with its background template times `scale`."""
    response, ccm, data_axes, template = instrument()
    return response, ccm, data_axes, Histogram(data_axes, contents=template.contents * scale)


class ChainsTooShort(AssertionError):
    """The chains' R-hat of the tested fluxes is above the bound."""


@pytest.mark.slow
@pytest.mark.xfail(raises=ChainsTooShort, strict=True,
                   reason="3 chains of 500 + 500 sweeps (the most that fits ~15 min of one core) leave region-flux "
                          "R-hat at a 95th percentile of 1.10 (median 1.03): the data augmentation mixes slowly "
                          "between neighbouring regions; the coverage itself is asserted and nominal")
def test_credible_intervals_cover_the_truth_at_their_nominal_rates():
    response, ccm, data_axes, template = scaled_instrument(BACKGROUND_SCALE)
    engine = ResponseEngine.from_ccm(response, ccm, dtype=np.float64)
    nside = engine.model_axes[0].nside
    n_pix, n_ei = engine.model_axes.nbins
    ring_of_nested = hp.nest2ring(nside, np.arange(n_pix))
    tree = MultiscaleTree(n_pix)
    exposure_max = engine.exposure_map.max(axis=0)
    rng = np.random.default_rng(2024)
    masks = [region_mask(engine.model_axes[0], **r) for r in REGIONS] + [np.ones(n_pix, bool)]
    inside = {0.68: [], 0.95: []}
    r_hats = []
    for k in range(N_DATASETS):
        nested, norm = prior_draw(tree, exposure_max, rng, n_ei)
        image = np.empty_like(nested)
        image[ring_of_nested] = nested
        expected = engine.expectation(image).contents + norm * template.contents
        counts = rng.poisson(expected).astype(float)
        data = Histogram(data_axes, contents=sparse.COO.from_numpy(counts))
        dataset = COSIDataset.from_histograms(data, {"instrumental": template}, response, ccm, dtype=np.float64)
        result = LIRA(dataset, n_chains=CHAINS, n_samples=SAMPLES, burn_in=BURN_IN, delta=DELTA,
                      total_prior=TOTAL_PRIOR, background_priors={"instrumental": BACKGROUND_PRIOR}, seed=k,
                      progress=False).run()
        for mask in masks:
            for e in range(n_ei):
                summary = result.region_flux(mask=mask, energy_index=e)
                r_hats.append(float(rhat(result.region_flux_samples(mask=mask, energy_index=e)[1])))
                truth = image[mask, e].sum() * 4 * np.pi / n_pix
                for level in inside:
                    inside[level].append(summary.contains(truth, level))
    r_hats = np.array(r_hats)
    n = len(inside[0.68])
    rate68, rate95 = np.mean(inside[0.68]), np.mean(inside[0.95])
    found = (f"68 % intervals cover {rate68:.3f}, 95 % intervals {rate95:.3f} of {n}; region-flux R-hat median "
             f"{np.median(r_hats):.3f}, 95th percentile {np.quantile(r_hats, 0.95):.3f}, max {r_hats.max():.3f}")
    print(found)
    assert abs(rate68 - 0.68) < 3 * math.sqrt(0.68 * 0.32 / n), found
    assert rate95 > 0.95 - 3 * math.sqrt(0.95 * 0.05 / n), found
    # intervals from chains that agree: R-hat of the tested fluxes below ~1.05
    if not (np.quantile(r_hats, 0.95) < 1.05 and r_hats.max() < 1.1):
        raise ChainsTooShort(found)


def geweke_statistics(trees, norm, exposure_max):
    """Functions of a state whose prior means the test compares: per Ei bin the log total counts, the
    shares of two base pixels, the mean squared split of every level (it follows the smoothing) and the
    smoothing of every level; then the background norm."""
    out = []
    for e, (log_total, fractions, smoothing) in enumerate(trees):
        out += [log_total + math.log(exposure_max[e]), math.exp(fractions[0][0]), math.exp(fractions[0][5])]
        out += [float(np.exp(2 * f).sum(axis=-1).mean()) for f in fractions]
        out += list(smoothing)
    return np.array(out + [norm])


@pytest.mark.slow
@pytest.mark.parametrize("hmc_steps, n_regions", [(0, DEFAULT_SCALE_REGIONS), (GEWEKE_HMC_STEPS, 1)])
def test_successive_conditional_simulation_keeps_the_prior(hmc_steps, n_regions):
    """Geweke's test (2004, JASA 99, 799): alternating fresh data from the current state and one sweep
    leaves the prior invariant. The chain's mean of every statistic of :func:`geweke_statistics` (34 of
    them) stays at the prior's (from 20000 independent prior draws) within 4 standard errors, the
    chain's from its effective sample size: a family-wise false alarm rate of 0.2 %.

    Small data (about 20 sky counts per Ei bin and 36 background counts) keep the posterior close
    to the prior, so that the chain mixes over the prior in :data:`GEWEKE_SWEEPS` sweeps. Run with the
    default sweep (scale move over LIRA's default number of brightness regions of the first image,
    smoothing move), and with one region and the image move added (:data:`GEWEKE_HMC_STEPS` leapfrog
    steps); the moves' steps are tuned during the 200 discarded sweeps only. The sibling swaps are left
    out here: their stored columns belong to one set of non-empty bins, which every fresh data set
    changes; ``test_sibling_swaps_visit_the_orders_of_four_children_at_their_likelihoods`` tests them.
    """
    total_prior, background_prior = (2.0, 0.1), (5.0, 5.0)
    response, ccm, data_axes, template = scaled_instrument(0.01)
    empty = Histogram(data_axes, contents=sparse.COO.from_numpy(np.ones(template.contents.shape)))
    engine = COSIDataset.from_histograms(empty, {"instrumental": template}, response, ccm, dtype=np.float64).engine
    n_pix, n_ei = engine.model_axes.nbins
    tree = MultiscaleTree(n_pix)
    exposure_max = engine.exposure_map.max(axis=0)
    rng = np.random.default_rng(11)
    reference = np.array([
        geweke_statistics(prior_trees(tree, exposure_max, rng, n_ei, total_prior),
                          rng.gamma(background_prior[0]) / background_prior[1], exposure_max)
        for _ in range(20000)])
    trees = prior_trees(tree, exposure_max, rng, n_ei, total_prior)
    sampler = GibbsSampler(engine, DELTA, total_prior, {"instrumental": background_prior})
    # any fixed partition keeps the move exact: here the brightness regions of the chain's first image
    regions = brightness_regions(sampler.model_order(image_of(trees)), n_regions)
    state = sampler.state(sampler.model_order(image_of(trees)), np.stack([t[2] for t in trees], axis=1),
                          [rng.gamma(background_prior[0]) / background_prior[1]])
    chain = []
    for _ in range(GEWEKE_SWEEPS):
        expected = engine.expectation(state.image, {"instrumental": state.norms[0]}).contents
        counts = Histogram(data_axes, contents=sparse.COO.from_numpy(rng.poisson(expected).astype(float)))
        sampler = GibbsSampler(engine.with_data(counts), DELTA, total_prior, {"instrumental": background_prior},
                               hmc_steps=hmc_steps, regions=regions)
        state, _ = sampler.sweep(state, rng, adapt=len(chain) < 200)
        nested = sampler.nested(state.image)
        trees = [fractions_of_image(nested[:, e], tree.levels) + (state.smoothing[:, e],) for e in range(n_ei)]
        chain.append(geweke_statistics(trees, state.norms[0], exposure_max))
    chain = np.array(chain[200:])
    n_eff = np.array([float(ess(chain[None, :, j])) for j in range(chain.shape[1])])
    error = np.sqrt(chain.var(axis=0) / n_eff + reference.var(axis=0) / len(reference))
    z = (chain.mean(axis=0) - reference.mean(axis=0)) / error
    assert np.all(np.abs(z) < 4), np.round(z, 2)
