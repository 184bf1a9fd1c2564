"""Bayesian multiscale deconvolution (LIRA on the sphere): allocation, prior, diagnostics, chains, outputs.

The sky of ``small_setup`` (NSIDE 8 model grid in RING order, three Ei bins, one day of
rocking orbit, an instrumental background). Statistical thresholds are derived from the
Monte Carlo errors of the quantities tested; every generator is seeded.
"""
import itertools
import logging
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import types
import warnings
from pathlib import Path

import healpy as hp
import matplotlib.pyplot as plt
import numba
import numpy as np
import pytest
from scipy import integrate, stats

from cosi_imaging_plugin.errors import CosiInputError, InvalidValueError
from cosi_imaging_plugin.uncertainty import LIRA, LIRAMode, ess, region_mask, region_significance, rhat, scale, sharing
from cosi_imaging_plugin.uncertainty.allocation import Allocator
from cosi_imaging_plugin.uncertainty.gibbs import GibbsSampler, brightness_regions
from cosi_imaging_plugin.uncertainty.plots import plot_summary
from cosi_imaging_plugin.uncertainty.results import LIRAResult
from cosi_imaging_plugin.uncertainty.scale import ScaleMove, poisson_terms
from cosi_imaging_plugin.uncertainty.smoothing_move import SmoothingMove, gamma_log_cdf, gamma_log_quantile
from cosi_imaging_plugin.uncertainty.swap import SiblingSwap
from cosi_imaging_plugin.uncertainty.tree import (
    MultiscaleTree,
    aggregate,
    fractions_of_image,
    image_from_tree,
    log_dirichlet_draw,
    slice_sample_log,
    smoothing_log_density,
)

sys.path.insert(0, str(Path(__file__).parent))
from small_setup import NSIDE_MODEL, dataset_for  # noqa: E402

N_PIX = 12 * NSIDE_MODEL ** 2
SOLID_ANGLE = 4 * np.pi / N_PIX


def blob_sky():
    """Two bright discs on a faint sky (RING order), three Ei bins."""
    image = np.full((N_PIX, 3), 1e-6)
    for lon, lat, radius, value in ((0.0, 0.0, 20.0, 4e-3), (120.0, 40.0, 12.0, 8e-3)):
        pixels = hp.query_disc(NSIDE_MODEL, hp.ang2vec(lon, lat, lonlat=True), np.radians(radius))
        image[pixels] = value
    return image


@pytest.fixture(scope="module")
def blob_dataset():
    return dataset_for(blob_sky(), seed=5)[0]


# ---- the allocation ------------------------------------------------------------------------------
def test_allocation_mean_is_the_em_expectation():
    """Mean sampled allocation = RL E-step (x_j sum_i R_ij d_i / eps_i; b sum_i B_i d_i / eps_i).

    Each pixel's allocated count is a sum of independent binomials, so its variance is at most its
    mean: chi2 per pixel below ``1 + 5 sqrt(2 / K)`` over K pixels, and every sum over a base pixel
    within 4.5 sigma (of 36), the background within 4 sigma.
    """
    rng = np.random.default_rng(1)
    image = rng.gamma(1.0, 1e-3, (N_PIX, 3))
    dataset = dataset_for(image, seed=2)[0]
    engine = dataset.engine
    allocator = Allocator(engine)
    n_draws, norm = 300, 1.3
    sky_sum, bkg_sum = np.zeros_like(image), 0.0
    for _ in range(n_draws):
        sky, bkg, data_term = allocator.draw(image, [norm], rng)
        assert sky.sum() + bkg.sum() == engine.data.total_counts  # every count allocated once
        sky_sum += sky
        bkg_sum += bkg[0]
    eps = engine.expectation_at_bins(image, {"instrumental": norm})
    weights = engine.data.counts / eps
    expected_sky = image * engine.transpose_product(weights)
    expected_bkg = norm * engine.background_products(weights)["instrumental"]
    assert data_term == pytest.approx(float(np.sum(engine.data.counts * np.log(eps))), rel=1e-12)
    assert abs(bkg_sum / n_draws - expected_bkg) < 4 * math.sqrt(expected_bkg / n_draws)
    mean = sky_sum / n_draws
    bright = expected_sky > 1
    chi2 = ((mean - expected_sky) ** 2 / (expected_sky / n_draws))[bright]
    assert chi2.mean() < 1 + 5 * math.sqrt(2 / chi2.size)
    nested = hp.nest2ring(NSIDE_MODEL, np.arange(N_PIX))  # the RING pixel of every NESTED one
    base, base_expected = aggregate(mean[nested], 3)[0], aggregate(expected_sky[nested], 3)[0]
    assert np.all(np.abs(base - base_expected) < 4.5 * np.sqrt(base_expected / n_draws))


def test_allocation_gives_targets_past_the_weights_to_the_last_cell():
    """An expectation above the weights' sum (what rounding can do, here 30 % so that it happens at most
    bins) leaves sorted targets past the last cell: every count is still allocated, to cells with weight."""
    image = blob_sky()
    engine = dataset_for(image, seed=3)[0].engine
    allocator = Allocator(engine)
    exact = allocator.sky_at_bins(allocator.tiled_rows(image))
    rng = np.random.default_rng(4)
    sky, bkg, _ = allocator.draw(image, [0.0], rng, sky_at_bins=1.3 * exact)
    assert sky.sum() == engine.data.total_counts and bkg[0] == 0.0  # a zero norm: no count to the background
    assert np.all(sky[engine.exposure_map <= 0] == 0)
    sky, bkg, _ = allocator.draw(image, [1.0], rng)
    assert sky.sum() + bkg.sum() == engine.data.total_counts


def test_expectation_split_by_ei_bin_in_one_pass():
    """The one-pass split of the expected counts by Ei bin equals the engine's product of each Ei bin's image."""
    image = np.random.default_rng(6).gamma(1.0, 1e-3, (N_PIX, 3))
    engine = dataset_for(image, seed=2)[0].engine
    allocator = Allocator(engine)
    split = allocator.sky_at_bins_per_ei(allocator.tiled_rows(image))
    for e in range(3):
        single = np.where(np.arange(3) == e, image, 0.0)
        np.testing.assert_allclose(split[e], engine.sky_expectation_at_bins(single, dtype=np.float64), rtol=1e-12)


def test_allocation_rejects_fractional_counts():
    dataset = dataset_for(blob_sky(), seed=1)[0]
    engine = dataset.engine
    engine.data.counts = engine.data.counts + 0.5
    with pytest.raises(CosiInputError, match="whole numbers"):
        Allocator(engine)


# ---- the joint move of the sky total and the background norm --------------------------------------
def test_scale_move_draws_the_conditional_posterior():
    """Chained moves of (sky total, background norm) given the shape: their means equal those of the
    conditional posterior (quadrature on a grid of the logarithms) within 4 standard errors from the
    chain's effective sample size; the acceptance of the independence proposal is high."""
    rng = np.random.default_rng(12)
    unit_sky, template = rng.gamma(1.0, 1.0, (2, 200))
    unit_sky /= 1.25 * unit_sky.sum()  # the non-empty bins hold 80 % of the sky's expected counts
    template_total = 1.1 * template.sum()
    counts = rng.poisson(300.0 * unit_sky + 0.5 * template).astype(float)
    move = ScaleMove(counts, template[None], [template_total], (2.0, 0.01), [[3.0, 1.0]])
    state, chain, accepted = np.array([100.0, 2.0]), [], 0
    for _ in range(3000):
        state, n = move.draw(unit_sky[None], np.array([1.0]), state, rng)
        chain.append(state)
        accepted += n
    chain = np.array(chain[100:])
    assert accepted > 0.5 * 3 * 3000
    columns, totals, shape, rate = move._design(unit_sky[None], np.array([1.0]))
    centre = np.log(chain.mean(axis=0))
    grid = [c + np.linspace(-8, 8, 401) * np.log(chain).std(axis=0)[i] for i, c in enumerate(centre)]
    u, v = np.meshgrid(*grid, indexing="ij")
    log_p = np.array([[move.log_target(np.array([a, b]), columns, totals, counts, shape, rate, np.zeros(200))
                       for a, b in zip(row_u, row_v)] for row_u, row_v in zip(u, v)])
    weights = np.exp(log_p - log_p.max())
    weights /= weights.sum()
    for i, values in enumerate((np.exp(u), np.exp(v))):
        expected = float(np.sum(weights * values))
        error = chain[:, i].std() / math.sqrt(float(ess(chain[None, :, i])))
        assert abs(chain[:, i].mean() - expected) < 4 * error, (i, chain[:, i].mean(), expected, error)


def test_scale_move_mode_stops_early_next_to_the_exact_mode(monkeypatch):
    """The mode search stops at a Newton decrement of ``MODE_DECREMENT`` after one last step: its centre is
    within 0.05 posterior standard deviations of the mode solved to 1e-12 (a step from a decrement below 0.1
    converges quadratically) and its curvature within 2 % in every direction, from fewer passes over the bins."""
    passes = []

    def counting(columns, offset, counts, value, derivatives=True):
        passes[-1] += bool(derivatives)
        return poisson_terms(columns, offset, counts, value, derivatives)

    monkeypatch.setattr(scale, "poisson_terms", counting)
    # twelve problems with a faint background, whose log-curvature changes over the last step; the early stop
    # comes at decrements of 3e-4 to 0.04
    for seed in range(12):
        rng = np.random.default_rng(seed)
        unit_sky, template = rng.gamma(1.0, 1.0, (2, 500))
        unit_sky /= unit_sky.sum()
        counts = rng.poisson(200.0 * unit_sky + 0.05 * template).astype(float)
        move = ScaleMove(counts, template[None], [template.sum()], (2.0, 0.01), [[3.0, 1.0]])
        columns, totals, shape, rate = move._design(unit_sky[None], np.array([1.0]))
        solved = {}
        for tolerance in (scale.MODE_DECREMENT, 1e-12):
            passes.append(0)
            solved[tolerance] = ScaleMove.mode(columns, totals, counts, shape, rate, np.zeros(counts.size),
                                               tolerance=tolerance)
        (value, curvature), (exact, exact_curvature) = solved[scale.MODE_DECREMENT], solved[1e-12]
        chol = np.linalg.cholesky(np.linalg.inv(-exact_curvature))
        offset = np.linalg.solve(chol, np.log(value) - np.log(exact))
        assert np.sqrt(offset @ offset) < 0.05, seed
        ratios = np.linalg.eigvals(np.linalg.solve(exact_curvature, curvature)).real
        assert np.all(np.abs(ratios - 1.0) < 0.02), (seed, ratios)
        assert passes[-2] < passes[-1], (seed, passes)


# ---- the sibling swaps --------------------------------------------------------------------------
@pytest.mark.parametrize("levels_up", [1, 2])
def test_sibling_swaps_visit_the_orders_of_four_children_at_their_likelihoods(blob_dataset, levels_up):
    """Swaps under one parent whose four children (pixels, or blocks of four pixels each with its own
    sub-shape) have four distinct totals: short chains, each started from one of the 24 orders of the totals
    at random, end in every order at the rate of its likelihood (the prior is exchangeable and the sub-shapes
    stay); Pearson's chi-square over the orders (those expected fewer than 5 times pooled) at the 0.1 %
    level. The likelihoods come from the engine's own evaluation, not from the move's stored columns; the
    model grid is RING (the NESTED reordering included). Swaps in the other two Ei bins, whose children are
    equal, change nothing. 30 proposals in the first Ei bin are too few to forget the start (p ~ 1e-4 for
    pixels); 90 in all (about 30 there) are used."""
    engine = blob_dataset.engine
    sampler = GibbsSampler(engine, 1000.0, (1.0, 0.0), scale_move=False, smoothing_move=False)
    image = blob_sky()
    node = int(np.argmax(sampler.nested(image).sum(axis=1))) >> (2 * levels_up)
    size = 4 ** (levels_up - 1)
    leaves = sampler.to_nested[4 * size * node:4 * size * (node + 1)].reshape(4, size)
    shapes = np.random.default_rng(3).gamma(2.0, 1.0, (4, size))
    shapes /= shapes.sum(axis=1, keepdims=True)
    # totals the data tell apart without one order taking most of the weight
    totals = 4e-3 * (np.arange(1.0, 5.0) if levels_up == 1 else np.arange(4.0, 8.0))
    norms = dict.fromkeys(engine.background_names, 1.0)
    orders = list(itertools.permutations(range(4)))
    log_like, skies = [], []
    for order in orders:
        image[leaves, 0] = shapes * totals[list(order)][:, None]
        log_like.append(engine.evaluate(image, norms).log_likelihood)
        skies.append(sampler.allocator.sky_at_bins(sampler.allocator.tiled_rows(image)))
    weights = np.exp(np.array(log_like) - max(log_like))
    weights /= weights.sum()
    assert weights.max() < 0.5 and np.sum(weights * 1000 >= 5) >= 8  # the test has orders to tell apart
    move = SiblingSwap(sampler.allocator, sampler.exposure, sampler.to_nested, [(levels_up, node)], n_swaps=90)
    rng = np.random.default_rng(7)
    visits = np.zeros(len(orders))
    for _ in range(1000):
        start = rng.integers(len(orders))
        image[leaves, 0] = shapes * totals[list(orders[start])][:, None]
        sky = skies[start].copy()
        moved = sky + engine.background_at_bins(norms)
        new_image, _ = move.draw(image, moved, sky, engine.data.counts, rng)
        np.testing.assert_allclose(new_image[leaves, 0] / new_image[leaves, 0].sum(axis=1, keepdims=True), shapes)
        end = tuple(int(np.argmin(np.abs(totals - t))) for t in new_image[leaves, 0].sum(axis=1))
        visits[orders.index(end)] += 1
    fresh = sampler.allocator.sky_at_bins(sampler.allocator.tiled_rows(new_image))
    # the move kept the expectation and the sky's part of it that it was handed
    np.testing.assert_allclose(moved, fresh + engine.background_at_bins(norms), rtol=1e-10)
    np.testing.assert_allclose(sky, fresh, rtol=1e-10, atol=1e-12 * fresh.max())
    expect = 1000 * weights
    rare = expect < 5
    observed = np.append(visits[~rare], visits[rare].sum())
    expect = np.append(expect[~rare], expect[rare].sum())
    chi2 = float(np.sum((observed - expect) ** 2 / expect))
    assert stats.chi2.sf(chi2, observed.size - 1) > 1e-3, (chi2, observed, expect)


# ---- the multiscale prior ----------------------------------------------------------------------
def test_tree_round_trip():
    """Image -> (total, fractions) -> image, and sums over the NESTED levels."""
    rng = np.random.default_rng(3)
    image = rng.gamma(0.5, 1.0, 12 * 4 ** 3)
    log_total, log_fractions = fractions_of_image(image, 3)
    assert np.allclose(np.exp(image_from_tree(log_total, log_fractions)), image, rtol=1e-12)
    sums = aggregate(image, 3)
    assert [s.shape[0] for s in sums] == [12, 48, 192, 768]
    assert np.allclose(sums[0], image.reshape(12, -1).sum(axis=1))


def test_dirichlet_draws_have_the_dirichlet_moments():
    """Mean of the drawn fractions within 5 standard errors; tiny parameters give finite logarithms."""
    rng = np.random.default_rng(4)
    alpha = np.array([0.3, 1.0, 2.0, 5.0])
    draws = np.exp(log_dirichlet_draw(np.broadcast_to(alpha, (20000, 4)), rng))
    mean = alpha / alpha.sum()
    sd = np.sqrt(mean * (1 - mean) / (alpha.sum() + 1))
    assert np.all(np.abs(draws.mean(axis=0) - mean) < 5 * sd / math.sqrt(20000))
    assert np.all(np.isfinite(log_dirichlet_draw(np.full((100, 4), 1e-4), rng)))


def test_slice_sampler_draws_the_smoothing_conditional():
    """The slice sampler's mean of a level's smoothing matches quadrature of its density."""
    children = np.random.default_rng(8).poisson(np.repeat([[0.2, 1.0, 5.0, 20.0]], 48, axis=0))
    delta = 10.0

    def logp(a):
        return smoothing_log_density(a, children, delta)

    top = max(logp(a) for a in np.linspace(0.01, 3, 300))
    norm = integrate.quad(lambda a: math.exp(logp(a) - top), 0, 5, limit=200)[0]
    mean = integrate.quad(lambda a: a * math.exp(logp(a) - top), 0, 5, limit=200)[0] / norm
    var = integrate.quad(lambda a: a * a * math.exp(logp(a) - top), 0, 5, limit=200)[0] / norm - mean ** 2
    rng = np.random.default_rng(5)
    a, draws = 1.0, []
    for _ in range(4000):
        a = slice_sample_log(logp, a, rng)
        draws.append(a)
    draws = np.array(draws[200:])
    n_eff = float(ess(draws[None, :]))
    assert abs(draws.mean() - mean) < 5 * math.sqrt(var / n_eff)


def test_mode_step_needs_smoothing_of_at_least_one():
    tree = MultiscaleTree(768)
    with pytest.raises(CosiInputError, match="a >= 1"):
        tree.mode_step(np.ones(768), 1.0, np.full(4, 0.5))


# ---- diagnostics -------------------------------------------------------------------------------
def test_rhat_and_ess_on_known_chains():
    """IID chains: R-hat near 1 and ESS near the draws; AR(1) with rho = 0.8: ESS near N (1 - rho) / (1 + rho);
    a shifted chain: R-hat far above 1."""
    rng = np.random.default_rng(6)
    iid = rng.standard_normal((4, 1000, 50))
    assert np.all(rhat(iid) < 1.01)
    assert np.median(ess(iid)) == pytest.approx(4000, rel=0.1)
    rho, ar = 0.8, np.zeros((4, 4000, 20))
    for t in range(1, 4000):
        ar[:, t] = rho * ar[:, t - 1] + math.sqrt(1 - rho ** 2) * rng.standard_normal((4, 20))
    assert np.median(ess(ar)) == pytest.approx(16000 * (1 - rho) / (1 + rho), rel=0.15)
    shifted = iid.copy()
    shifted[0] += 1.0
    assert np.all(rhat(shifted) > 1.05)
    with pytest.raises(CosiInputError, match="too short"):
        rhat(iid[:, :5])


def _traces_with_a_slow_trade(rng, offset, rho):
    """Traces of 4 chains x 400 sweeps in which a factor (AR(1) with `rho`) trades the all-sky flux against the
    second of two background norms (correlation about -0.95), the first chain shifted by `offset` along it."""
    slow = rng.standard_normal((4, 400))
    for t in range(1, 400):
        slow[:, t] = rho * slow[:, t - 1] + math.sqrt(1 - rho ** 2) * slow[:, t]
    slow[0] += offset
    flux = 1.0 + 0.1 * slow + 0.03 * rng.standard_normal((4, 400))
    norms = np.stack([1.0 + 0.01 * rng.standard_normal((4, 400)),
                      1.0 - 0.05 * slow + 0.015 * rng.standard_normal((4, 400))], axis=-1)
    return {"log_posterior": rng.standard_normal((4, 400)), "smoothing": rng.gamma(5.0, 0.1, (4, 400, 2, 1)),
            "background_norms": norms, "total_flux": flux[..., None]}


def test_diagnostics_name_a_background_that_trades_with_the_sky_flux(blob_dataset):
    """A background norm strongly correlated with the all-sky flux is reported with its correlation, and named in
    a warning where that direction has not converged; an unconverged but uncorrelated norm is not named, and
    converged chains give no such warning."""
    rng = np.random.default_rng(17)
    draws = rng.gamma(2.0, 1.0, (4, 400, N_PIX, 1))
    names = ["albedo", "instrumental"]
    result = LIRAResult(draws, _traces_with_a_slow_trade(rng, offset=3.0, rho=0.9), blob_dataset.engine,
                        background_names=names)
    with pytest.warns(RuntimeWarning) as caught:
        diagnostics = result.diagnostics()
    correlation = diagnostics["flux_background_correlation"]
    assert correlation["instrumental"] < -0.9 and abs(correlation["albedo"]) < 0.1
    named = [str(w.message) for w in caught if "hardly tell" in str(w.message)]
    assert len(named) == 1 and "'instrumental'" in named[0] and "albedo" not in named[0]

    converged = LIRAResult(draws, _traces_with_a_slow_trade(rng, offset=0.0, rho=0.0), blob_dataset.engine,
                           background_names=names)
    diagnostics = converged.diagnostics(warn=False)
    assert diagnostics["flux_background_correlation"]["instrumental"] < -0.9
    assert np.max(diagnostics["rhat"]["total_flux"]) <= 1.01
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converged.diagnostics()
    assert not [w for w in caught if "hardly tell" in str(w.message)]

    # a dataset without backgrounds: no correlation, and the unconverged flux's warning alone
    traces = _traces_with_a_slow_trade(rng, offset=3.0, rho=0.9)
    traces["background_norms"] = traces["background_norms"][..., :0]
    alone = LIRAResult(draws, traces, blob_dataset.engine, background_names=[])
    with pytest.warns(RuntimeWarning, match="LIRA total_flux: R-hat"):
        assert alone.diagnostics()["flux_background_correlation"] == {}


def test_gamma_quantile_map_inverts_the_tails_far_below_the_double_range():
    """``gamma_log_quantile`` inverts ``gamma_log_cdf`` in the body, in both tails and for variates far below
    the smallest double, and carrying a variate to another shape and back returns it."""
    # 400: the lower tail underflows where x is not small, and the series needs its Newton steps to invert
    a = np.array([0.05, 0.3, 1.0, 4.0, 30.0, 400.0])[:, None]
    log_x = np.array([-3000.0, -700.0, -50.0, -2.0, 0.0, 1.0, 3.0, 4.5])[None, :]
    log_p, log_q = gamma_log_cdf(a, log_x)
    assert np.allclose(gamma_log_quantile(a, log_p, log_q), log_x, rtol=1e-9, atol=1e-9)
    body = np.exp(log_x) > 1e-300
    assert np.allclose(np.exp(log_p)[body & (np.exp(log_p) > 1e-300)],
                       stats.gamma.cdf(np.exp(log_x), a)[body & (np.exp(log_p) > 1e-300)], rtol=1e-10)
    there = gamma_log_quantile(2.5 * a, log_p, log_q)
    assert np.allclose(gamma_log_quantile(a, *gamma_log_cdf(2.5 * a, there)), log_x, rtol=1e-9, atol=1e-9)


def test_smoothing_move_keeps_the_prior_when_the_data_say_nothing(blob_dataset, monkeypatch):
    """With a flat likelihood the move's target is the prior (restricted to images of doubles): independent
    prior draws of (smoothing, splits), each moved ten times with a large step, keep the prior's law (two-sample
    Kolmogorov-Smirnov tests of every level's smoothing, roughness and roughness less its mean given the
    smoothing, 0.1 % level after Bonferroni). Without the quantile map, with the wrong law of the splits' sum,
    or without the log-scale proposal's ``a'/a``, the test fails."""
    engine = blob_dataset.engine
    tree = MultiscaleTree(N_PIX, delta=1.0)
    allocator = Allocator(engine)
    nested = hp.nest2ring(NSIDE_MODEL, np.arange(N_PIX))
    move = SmoothingMove(engine, tree, allocator, lambda v: v[nested], lambda v: v[hp.ring2nest(NSIDE_MODEL,
                                                                                           np.arange(N_PIX))])
    # the target: the prior restricted to images whose every pixel holds a double (the move computes images)

    def flat(image):
        return 0.0 if image.min() > 1e-200 else -math.inf

    monkeypatch.setattr(move, "log_likelihood", lambda image, norms, sky_at_bins: flat(image))
    monkeypatch.setattr(move, "evaluate", lambda image, norms: (None, None, flat(image)))
    rng = np.random.default_rng(31)
    steps = np.full((2, tree.levels + 1), [[math.log(0.8)], [0.0]])

    def prior_draw():
        # a^3 ~ Gamma(1/3, rate delta / 3) is the hyperprior exp(-delta a^3 / 3) of a
        smoothing = (rng.gamma(1.0 / 3.0, 3.0 / tree.delta, (tree.levels + 1, 1))) ** (1.0 / 3.0)
        log_fractions = [log_dirichlet_draw(np.full((n_par, n_ch), smoothing[level, 0]), rng).reshape(-1, n_ch)
                         for level, (n_par, n_ch) in enumerate(zip(tree.n_parents, tree.n_children))]
        log_fractions[0] = log_fractions[0][0]
        image = np.exp(image_from_tree(0.0, log_fractions))[:, None]
        assert image.shape == (N_PIX, 1)
        return (move.model_order(image), smoothing) if image.min() > 1e-200 else prior_draw()

    def statistics(image, smoothing):
        _, log_fractions = fractions_of_image(move.nested(image)[:, 0], tree.levels)
        roughness = np.array([np.mean(np.exp(2 * lf)) for lf in log_fractions])
        # the roughness less its prior mean given the smoothing, (a + 1) / (K (K a + 1)), ties each level's
        # smoothing to its splits: a move that kept both marginals but broke their dependence changes its law
        a, k = smoothing[:, 0], np.array(tree.n_children)
        return np.concatenate([np.log(a), roughness, roughness - (a + 1.0) / (k * (k * a + 1.0))])

    before, after = [], []
    for _ in range(2000):
        image, smoothing = prior_draw()
        before.append(statistics(image, smoothing))
        for _ in range(10):  # a wrong ratio's bias grows over the moves
            image, smoothing, *_ = move.draw(image, smoothing, [], None, None, steps, rng)
        after.append(statistics(image, smoothing))
    before, after = np.array(before), np.array(after)
    assert np.mean(np.any(before != after, axis=1)) > 0.3  # the move does move
    p_values = [stats.ks_2samp(before[:, j], after[:, j]).pvalue for j in range(before.shape[1])]
    assert min(p_values) > 1e-3 / len(p_values), p_values


def test_scale_move_over_regions_hands_the_allocation_the_new_image_products(blob_dataset):
    """With three regions and three Ei bins, the scale step rescales every (region, Ei bin) part of the image on
    its own, and the expected counts and tiled rows it hands to the allocation are those of the new image; the
    data term it returns is that of the image it started from."""
    engine = blob_dataset.engine
    rng = np.random.default_rng(21)
    image = blob_sky() * rng.gamma(4.0, 0.25, (N_PIX, 3))
    regions = brightness_regions(image, 3)
    sampler = GibbsSampler(engine, 1.0, (1.0, 0.0), regions=regions)
    norms = np.ones(len(sampler.names))
    smoothing = np.ones((sampler.tree.levels + 1, 3))
    new, new_norms, sky_at_bins, rows, data_term = sampler._scale_step(image, norms, rng, smoothing)
    ratio = new / image
    for e in range(3):
        for r in range(3):
            assert np.ptp(ratio[regions == r, e]) < 1e-12 * ratio[regions == r, e].max()
    assert np.ptp(ratio) > 1e-3  # the parts moved by different factors
    allocator = sampler.allocator
    np.testing.assert_allclose(rows, allocator.tiled_rows(new), rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(sky_at_bins, allocator.sky_at_bins(allocator.tiled_rows(new)), rtol=1e-10)
    eps = engine.expectation_at_bins(image, dict(zip(sampler.names, norms)))
    assert data_term == pytest.approx(float(np.dot(engine.data.counts, np.log(eps))), rel=1e-9)


def test_lira_moves_regions_and_smoothing_by_default_only_from_an_image(blob_dataset):
    """Started from an image, the scale move has its three brightness regions, the smoothing move is on and
    the sibling swaps visit the parents of its brightest pixels; from a flat start the sky is one region, the
    smoothing move is off unless asked for and there are no swaps."""
    from_image = LIRA(blob_dataset, initial_image=blob_sky(), progress=False)
    assert from_image.sampler.n_regions == 3 and from_image.smoothing_move
    assert np.array_equal(from_image.sampler.regions, brightness_regions(blob_sky(), 3))
    swap = from_image.sampler.swap
    assert swap.n_swaps == from_image.sibling_swaps > 0 and swap.n_parents > 0
    brightness = blob_sky().sum(axis=1)
    bright = np.sort(brightness)[::-1][N_PIX // 10 - 1]
    for start, stop in zip(swap.node_ptr[:-1], swap.node_ptr[1:]):  # each parent above a pixel of the top tenth
        assert brightness[swap.node_pixels[start:stop]].max() >= bright
    # and the brightest pixels (fewer than a tenth, so chosen whatever the order of ties) all under a parent
    assert set(np.flatnonzero(brightness == brightness.max())) <= set(swap.node_pixels)
    flat = LIRA(blob_dataset, progress=False)
    assert flat.sampler.n_regions == 1 and not flat.smoothing_move and flat.sampler.smoothing_move is None
    assert flat.sampler.swap is None
    assert LIRA(blob_dataset, smoothing_move=True, progress=False).sampler.smoothing_move is not None


def test_the_allocation_after_accepted_swaps_gets_the_products_of_the_swapped_image(blob_dataset):
    """The swaps update the expectation at the bins in place and the sweep makes the source rows anew: the
    allocation must receive the products of the image it allocates, as fresh forward products give them."""
    sampler = LIRA(blob_dataset, initial_image=blob_sky(), sibling_swaps=64, smoothing_move=False,
                   progress=False).sampler
    allocator, calls = sampler.allocator, []
    draw = allocator.draw

    def checked_draw(image, norms, rng, sky_at_bins=None, tiled_rows=None):
        calls.append((image.copy(), sky_at_bins.copy(), tiled_rows.copy()))
        return draw(image, norms, rng, sky_at_bins, tiled_rows)

    swap, accepted = sampler.swap, []
    swap_draw = swap.draw

    def counted_swaps(*args, **kwargs):
        image, n = swap_draw(*args, **kwargs)
        accepted.append(n)
        return image, n

    allocator.draw, swap.draw = checked_draw, counted_swaps
    rng = np.random.default_rng(5)
    state = sampler.dispersed_start(rng, blob_sky())
    for _ in range(6):
        state, _ = sampler.sweep(state, rng)
        image, sky, rows = calls[-1]
        fresh_rows = allocator.tiled_rows(image)
        np.testing.assert_allclose(rows, fresh_rows, rtol=1e-10, atol=1e-12 * np.abs(fresh_rows).max())
        fresh = allocator.sky_at_bins(fresh_rows)
        np.testing.assert_allclose(sky, fresh, rtol=1e-10, atol=1e-12 * fresh.max())
    assert min(accepted) > 0  # every sweep changed the image between the scale move and the allocation


def test_region_scales_prior_is_the_image_prior_with_its_jacobian():
    """The prior of the regions' ``ln mu`` equals the image prior of ``sum_r mu_r u_r`` times ``prod mu_r^(n_r)``
    (differences between two points), its gradient and Hessian match finite differences, and with one region
    it is the Gamma prior of the total in ``ln mu``."""
    rng = np.random.default_rng(14)
    tree = MultiscaleTree(192, delta=1.0, total_prior=(2.0, 0.1))
    smoothing, exposure_max = np.array([0.7, 1.3, 0.9]), 3.0
    image = rng.gamma(1.0, 1.0, 192)
    for n_regions in (1, 3):
        labels = brightness_regions(rng.gamma(1.0, 1.0, 192), n_regions)
        mu = np.bincount(labels, weights=image) * exposure_max
        unit = np.zeros((192, n_regions))
        unit[np.arange(192), labels] = image / mu[labels]
        node_sums = aggregate(unit, tree.levels)
        theta = np.log(mu)

        def reference(t, unit=unit, labels=labels):
            return tree.image_log_prior(unit @ np.exp(t), smoothing, exposure_max) + np.bincount(labels) @ t

        value, grad, hess = tree.region_scales_log_prior(theta, node_sums, smoothing)
        step = 0.3 * rng.standard_normal(n_regions)
        moved = tree.region_scales_log_prior(theta + step, node_sums, smoothing)[0]
        assert moved - value == pytest.approx(reference(theta + step) - reference(theta), abs=1e-9)
        h = 1e-5
        basis = np.eye(n_regions)
        assert np.allclose(grad, [(reference(theta + h * e) - reference(theta - h * e)) / (2 * h) for e in basis],
                           rtol=1e-6, atol=1e-6)
        numeric = [[(reference(theta + h * e + h * f) - reference(theta + h * e - h * f)
                     - reference(theta - h * e + h * f) + reference(theta - h * e - h * f)) / (4 * h * h)
                    for f in basis] for e in basis]
        assert np.allclose(hess, numeric, rtol=1e-3, atol=1e-3 * np.abs(hess).max())
        if n_regions == 1:  # Gamma(2, 0.1) in ln mu: 2 ln mu - 0.1 mu
            gamma = 2.0 * step[0] - 0.1 * mu[0] * (math.exp(step[0]) - 1.0)
            assert moved - value == pytest.approx(gamma, abs=1e-9)


def test_brightness_regions_rank_the_pixels():
    labels = brightness_regions(np.array([5.0, 1.0, 3.0, 2.0, 4.0, 0.5]), 3)
    assert labels.tolist() == [2, 0, 1, 1, 2, 0]


# ---- chains, outputs, checkpoints ----------------------------------------------------------------
@pytest.fixture(scope="module")
def blob_result(blob_dataset):
    # the background norm known: on one day of data a flat part of the sky and the instrumental background
    # are nearly degenerate, and a fixed truth is then recovered only as well as the prior separates them
    return LIRA(blob_dataset, n_chains=3, n_samples=150, burn_in=150, seed=2, progress=False,
                fit_backgrounds=False).run()


def test_posterior_conserves_the_flux(blob_result, blob_dataset):
    """The total flux's posterior covers the injected total (3 posterior sigma), and the posterior's expected
    counts equal the observed total within its Poisson error."""
    truth = blob_sky().sum(axis=0) * SOLID_ANGLE
    for e in range(3):
        summary = blob_result.total_flux(energy_index=e)
        assert abs(summary.mean - truth[e]) < 3 * summary.std
    engine = blob_dataset.engine
    mean = np.asarray(blob_result.mean().contents)
    norms = {"instrumental": blob_result.background_norms()["instrumental"][0]}
    total = engine.data.total_counts
    assert abs(engine.total_expected(mean, norms) - total) < 3 * math.sqrt(total)


def test_region_fluxes_add_up(blob_result):
    """Region and complement add up to the total in every draw; an empty region holds little flux."""
    axis = blob_result.model_axes[0]
    region = region_mask(axis, disc=(120.0, 40.0, 30.0))
    _, inside = blob_result.region_flux_samples(mask=region)
    _, outside = blob_result.region_flux_samples(mask=~region)
    total = blob_result.total_flux()
    assert np.allclose(inside + outside, total.samples.reshape(inside.shape), rtol=1e-5)
    summary = blob_result.region_flux(disc=(120.0, 40.0, 30.0))
    low, high = summary.intervals[0.95]
    assert low < summary.intervals[0.68][0] < summary.median < summary.intervals[0.68][1] < high
    empty = blob_result.region_flux(disc=(240.0, -50.0, 15.0))
    assert empty.mean < 0.05 * summary.mean


def test_region_significance_of_a_bright_disc(blob_result, blob_dataset):
    """The disc removed from the sky (the null model), no simulated dataset reaches its flux: p = 1 / (n + 1)."""
    found = region_significance(blob_result, blob_dataset, disc=(120.0, 40.0, 15.0), n_simulations=4, seed=3,
                                progress=False, n_samples=20, burn_in=20, fit_backgrounds=False)
    assert found.null.shape == (4,) and np.all(found.null < found.observed)
    assert found.p_value == pytest.approx(1 / 5)
    assert found.significance == pytest.approx(0.8416, abs=1e-3)


def test_mode_finding_never_decreases_the_log_posterior(blob_dataset):
    result = LIRAMode(blob_dataset, smoothing=2.0, iterations=30, progress=False).run()
    log_posterior = result["log_posterior"]
    assert np.all(np.diff(log_posterior) >= -1e-9 * np.abs(log_posterior[1:]))
    assert log_posterior[-1] > log_posterior[0]
    with pytest.raises(InvalidValueError, match="smoothing"):
        LIRAMode(blob_dataset, smoothing=0.5)


def test_maps_diagnostics_and_fits(blob_result, tmp_path):
    maps = blob_result.maps()
    assert {"mean", "std", "q2.5", "q16", "q50", "q84", "q97.5", "significance", "unexposed"} <= set(maps)
    assert np.all(np.asarray(maps["q2.5"].contents) <= np.asarray(maps["q97.5"].contents))
    diagnostics = blob_result.diagnostics(warn=False)
    assert diagnostics["rhat"]["pixels"].shape == (N_PIX, 3)
    assert set(diagnostics["rhat"]) >= {"pixels", "log_posterior", "smoothing", "background_norms", "total_flux"}
    path = blob_result.write_fits(tmp_path / "lira.fits", energy_index=1)
    mean, std = hp.read_map(str(path), field=(0, 1), nest=False)
    assert np.allclose(mean, np.asarray(maps["mean"].contents)[:, 1])
    assert np.allclose(std, np.asarray(maps["std"].contents)[:, 1])


def test_summary_figure_shows_the_maps_and_every_trace_with_its_rhat(blob_result):
    fig = plot_summary(blob_result, energy_index=1)
    titles = [ax.get_title() for ax in fig.axes]
    rhats = blob_result.diagnostics(warn=False)["rhat"]
    for name in ("log_posterior", "smoothing", "background_norms", "total_flux"):
        assert f"{name}: R-hat {float(np.max(rhats[name])):.3f}" in titles
    for title in ("posterior mean", "posterior std", "posterior mean / std"):
        assert any(t.startswith(title + ",") for t in titles), titles
    plt.close(fig)


def test_checkpoint_resume_equals_an_uninterrupted_run(blob_dataset, tmp_path):
    settings = {"n_chains": 2, "n_samples": 10, "burn_in": 5, "seed": 7, "progress": False}
    whole = LIRA(blob_dataset, **settings).run()
    path = tmp_path / "run.npz"
    assert LIRA(blob_dataset, checkpoint=path, checkpoint_every=3, **settings).run(max_sweeps=8) is None
    assert path.exists() and not list(tmp_path.glob(".*tmp"))
    resumed = LIRA(blob_dataset, checkpoint=path, **settings).run()
    assert np.array_equal(resumed.draws, whole.draws)
    assert np.array_equal(resumed.trace("log_posterior"), whole.trace("log_posterior"))
    with pytest.raises(CosiInputError, match="another run"):
        LIRA(blob_dataset, checkpoint=path, **{**settings, "seed": 8}).run()


def test_chains_in_worker_processes_equal_the_serial_run(blob_dataset):
    settings = {"n_chains": 2, "n_samples": 10, "burn_in": 5, "seed": 7, "progress": False, "checkpoint_every": 6}
    serial = LIRA(blob_dataset, **settings).run()
    parallel = LIRA(blob_dataset, n_jobs=2, **settings).run()
    assert np.array_equal(parallel.draws, serial.draws)
    for name in serial.traces:
        assert np.array_equal(parallel.traces[name], serial.traces[name]), name


UNGUARDED_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from small_setup import NSIDE_MODEL, dataset_for
from cosi_imaging_plugin.uncertainty import LIRA
dataset = dataset_for(np.full((12 * NSIDE_MODEL ** 2, 3), 1e-3), seed=5)[0]
LIRA(dataset, n_chains=2, n_samples=5, burn_in=5, n_jobs=2, progress=False).run()
"""


def test_a_script_without_the_main_guard_fails_with_a_message(tmp_path):
    """Spawned workers import the main module again: a script that runs LIRA with ``n_jobs=2`` at import
    makes each worker die while it starts. The run must stop with an error naming the guard, not hang
    (as it did while the start-up pipe carried the whole pickle, which the dead worker never read)."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT.format(tests=str(Path(__file__).parent)))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("LIRA with n_jobs=2 in a script without the main guard hung")
    assert process.returncode != 0
    assert "a worker process stopped (n_jobs=2)" in stderr and "if __name__" in stderr


def test_chains_run_in_workers_by_default_only_where_no_script_would_run_again(blob_dataset, monkeypatch):
    """Without ``n_jobs``: in a script (here pytest's main module) the chains run in this process; in a
    session whose main module is no file (a notebook) one worker per chain, up to the cores."""
    assert LIRA(blob_dataset, n_chains=4, progress=False).n_jobs == 1
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    monkeypatch.setattr(numba, "get_num_threads", lambda: 3)
    assert LIRA(blob_dataset, n_chains=4, progress=False).n_jobs == 3
    assert LIRA(blob_dataset, n_chains=2, progress=False).n_jobs == 2
    assert LIRA(blob_dataset, n_chains=4, n_jobs=1, progress=False).n_jobs == 1


def test_workers_receive_the_engine_through_shared_memory(blob_dataset):
    """The workers' pickle refers to shared blocks instead of carrying the engine's arrays, and the
    sampler it loads sweeps to the same bits as the original."""
    sampler = LIRA(blob_dataset, progress=False).sampler
    state = sampler.dispersed_start(np.random.default_rng(3))
    expected, _ = sampler.sweep(state, np.random.default_rng(4))
    whole = len(pickle.dumps(sampler, protocol=pickle.HIGHEST_PROTOCOL))
    with sharing.SharedPickle(sampler, min_bytes=1 << 16) as shared:
        assert len(shared.payload) < 0.05 * whole
        assert shared.shared_bytes > 0.9 * whole
        loaded = sharing.load(shared.payload)
        assert loaded.engine._row_buffers == {}
        # the pickle's own block: a handle of a few hundred bytes loads the same sampler
        assert len(pickle.dumps(shared.handle)) < 1000
        from_handle = sharing.load(shared.handle)
        np.testing.assert_array_equal(from_handle.engine.data.counts, sampler.engine.data.counts)
        np.testing.assert_array_equal(loaded.engine.response.values, sampler.engine.response.values)
        swept, _ = loaded.sweep(state, np.random.default_rng(4))
    assert np.array_equal(swept.image, expected.image) and np.array_equal(swept.norms, expected.norms)


def test_too_little_shared_memory_falls_back_to_a_pickle(blob_dataset, monkeypatch, caplog):
    """Where the shared-memory tmpfs cannot hold an array (a container's small /dev/shm), the copy into a
    sparse block would die with SIGBUS: the workers get an ordinary pickle instead, and the log says so."""
    sampler = LIRA(blob_dataset, progress=False).sampler
    monkeypatch.setattr(sharing.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1024))
    with caplog.at_level(logging.WARNING), sharing.SharedPickle(sampler, min_bytes=1 << 16) as shared:
        assert shared.shared_bytes == 0
        loaded = pickle.loads(shared.payload)
    assert "shared memory unavailable" in caplog.text and "MB free" in caplog.text
    np.testing.assert_array_equal(loaded.engine.response.values, sampler.engine.response.values)


def test_bad_settings_name_the_key(blob_dataset, caplog):
    with pytest.raises(InvalidValueError, match="delta"):
        LIRA(blob_dataset, delta=0.0)
    with pytest.raises(InvalidValueError, match="total_prior"):
        LIRA(blob_dataset, total_prior=(1.0,))
    with pytest.raises(InvalidValueError, match="initial_smoothing"):
        LIRA(blob_dataset, initial_smoothing=-1.0)
    with pytest.raises(CosiInputError, match="background_priors"):
        LIRA(blob_dataset, background_priors={"albedo": (1.0, 1.0)})
    with caplog.at_level(logging.WARNING):
        LIRA(blob_dataset, n_chains=1, n_samples=4)
    assert "RING" in caplog.text and "R-hat needs" in caplog.text


def test_region_errors(blob_result):
    axis = blob_result.model_axes[0]
    with pytest.raises(CosiInputError, match="exactly one"):
        region_mask(axis)
    with pytest.raises(CosiInputError, match="disc"):
        region_mask(axis, disc=(0, 0, -1))
    with pytest.raises(CosiInputError, match="mask"):
        region_mask(axis, mask=np.ones(10, bool))
    polygon = region_mask(axis, polygon=[(-10, -10), (10, -10), (10, 10), (-10, 10)])
    # a 20 x 20 degree square: about 400 / 41253 of the sky, 7.4 pixels of 54 square degrees
    assert 3 <= polygon.sum() <= 12
