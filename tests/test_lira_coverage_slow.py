"""Coverage of LIRA's credible intervals over simulated datasets (slow).

Simulation-based calibration: for each of 20 datasets the smoothing parameters, the sky and the
background norm are drawn from the model's own priors and the counts from its likelihood; the
posterior's central 68 % and 95 % intervals of region fluxes (three regions and the whole sky, three
Ei bins) must then contain the truth at their nominal rates. An exact sampler run to convergence
passes; an allocation or conditional that is off shifts the intervals. Over 20 x 4 x 3 = 240
intervals per level, the tolerance is three binomial standard deviations of 240 draws (the
intervals of one dataset are correlated, so the rate's spread is somewhat larger than binomial:
the 95 % check keeps its bound one-sided below).
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
from cosi_imaging_plugin.uncertainty import LIRA, ess, region_mask
from cosi_imaging_plugin.uncertainty.gibbs import GibbsSampler
from cosi_imaging_plugin.uncertainty.tree import MultiscaleTree, image_from_tree, log_dirichlet_draw

sys.path.insert(0, str(Path(__file__).parent))
from small_setup import instrument  # noqa: E402

N_DATASETS = 20
DELTA = 1.0
TOTAL_PRIOR = (30.0, 0.01)
BACKGROUND_PRIOR = (50.0, 50.0)
REGIONS = ({"disc": (0.0, 0.0, 20.0)}, {"disc": (60.0, 0.0, 15.0)}, {"disc": (200.0, -40.0, 25.0)})


def prior_draw(tree, exposure_max, rng, n_ei):
    """(image in NESTED order [n_pix, n_ei], background norm) drawn from the priors."""
    image = np.empty((tree.n_pix, n_ei))
    for e in range(n_ei):
        # p(a) ~ exp(-delta a^3 / 3): a^3 delta / 3 is a Gamma(1/3) variable
        smoothing = (3 * rng.gamma(1 / 3, size=tree.levels + 1) / DELTA) ** (1 / 3)
        log_mu = math.log(rng.gamma(TOTAL_PRIOR[0]) / TOTAL_PRIOR[1])
        fractions = [log_dirichlet_draw(np.full(12, smoothing[0]), rng)]
        fractions += [log_dirichlet_draw(np.full((12 * 4 ** (level - 1), 4), smoothing[level]), rng)
                      for level in range(1, tree.levels + 1)]
        image[:, e] = np.exp(image_from_tree(log_mu - math.log(exposure_max[e]), fractions))
    return image, rng.gamma(BACKGROUND_PRIOR[0]) / BACKGROUND_PRIOR[1]


@pytest.mark.slow
def test_credible_intervals_cover_the_truth_at_their_nominal_rates():
    response, ccm, data_axes, template = instrument()
    engine = ResponseEngine.from_ccm(response, ccm, dtype=np.float64)
    nside = engine.model_axes[0].nside
    n_pix, n_ei = engine.model_axes.nbins
    ring_of_nested = hp.nest2ring(nside, np.arange(n_pix))
    tree = MultiscaleTree(n_pix)
    exposure_max = engine.exposure_map.max(axis=0)
    rng = np.random.default_rng(2024)
    masks = [region_mask(engine.model_axes[0], **r) for r in REGIONS] + [np.ones(n_pix, bool)]
    inside = {0.68: [], 0.95: []}
    for k in range(N_DATASETS):
        nested, norm = prior_draw(tree, exposure_max, rng, n_ei)
        image = np.empty_like(nested)
        image[ring_of_nested] = nested
        expected = engine.expectation(image).contents + norm * template.contents
        counts = rng.poisson(expected).astype(float)
        data = Histogram(data_axes, contents=sparse.COO.from_numpy(counts))
        dataset = COSIDataset.from_histograms(data, {"instrumental": template}, response, ccm, dtype=np.float64)
        result = LIRA(dataset, n_chains=3, n_samples=200, burn_in=200, delta=DELTA, total_prior=TOTAL_PRIOR,
                      background_priors={"instrumental": BACKGROUND_PRIOR}, seed=k, progress=False).run()
        for mask in masks:
            for e in range(n_ei):
                summary = result.region_flux(mask=mask, energy_index=e)
                truth = image[mask, e].sum() * 4 * np.pi / n_pix
                for level in inside:
                    inside[level].append(summary.contains(truth, level))
    n = len(inside[0.68])
    rate68, rate95 = np.mean(inside[0.68]), np.mean(inside[0.95])
    assert abs(rate68 - 0.68) < 3 * math.sqrt(0.68 * 0.32 / n), rate68
    assert rate95 > 0.95 - 3 * math.sqrt(0.95 * 0.05 / n), rate95


@pytest.mark.slow
def test_successive_conditional_simulation_keeps_the_prior():
    """Geweke's test (2004, JASA 99, 799): alternating fresh data from the current state and one Gibbs sweep
    leaves the prior invariant. The chain's means of the total counts and of the background norm stay at the
    prior's within 4 standard errors (from the chain's effective sample size)."""
    response, ccm, data_axes, template = instrument()
    empty = Histogram(data_axes, contents=sparse.COO.from_numpy(np.ones(template.contents.shape)))
    engine = COSIDataset.from_histograms(empty, {"instrumental": template}, response, ccm, dtype=np.float64).engine
    n_pix, n_ei = engine.model_axes.nbins
    tree = MultiscaleTree(n_pix)
    exposure_max = engine.exposure_map.max(axis=0)
    rng = np.random.default_rng(11)
    sampler = GibbsSampler(engine, DELTA, TOTAL_PRIOR, {"instrumental": BACKGROUND_PRIOR})
    nested, norm = prior_draw(tree, exposure_max, rng, n_ei)
    state = sampler.state(sampler.model_order(nested), np.full((tree.levels + 1, n_ei), 0.7), [norm])
    totals, norms = [], []
    for _ in range(300):
        expected = engine.expectation(state.image, {"instrumental": state.norms[0]}).contents
        counts = Histogram(data_axes, contents=sparse.COO.from_numpy(rng.poisson(expected).astype(float)))
        sampler = GibbsSampler(engine.with_data(counts), DELTA, TOTAL_PRIOR, {"instrumental": BACKGROUND_PRIOR})
        state, _ = sampler.sweep(state, rng)
        totals.append(state.image.sum(axis=0) * exposure_max)
        norms.append(state.norms[0])
    totals, norms = np.array(totals), np.array(norms)
    prior_mean, prior_sd = TOTAL_PRIOR[0] / TOTAL_PRIOR[1], math.sqrt(TOTAL_PRIOR[0]) / TOTAL_PRIOR[1]
    for e in range(n_ei):
        n_eff = float(ess(totals[None, :, e]))
        assert abs(totals[:, e].mean() - prior_mean) < 4 * prior_sd / math.sqrt(n_eff)
    n_eff = float(ess(norms[None]))
    assert abs(norms.mean() - 1.0) < 4 * math.sqrt(BACKGROUND_PRIOR[0]) / BACKGROUND_PRIOR[1] / math.sqrt(n_eff)
