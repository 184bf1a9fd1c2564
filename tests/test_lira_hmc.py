"""LIRA's image-space move: the multiscale prior in image coordinates, the gradient, the HMC transition.

The move is exact when (1) its target is the posterior (the prior's density in image coordinates
equals the tree's density over the Jacobian of the map (total, fractions) -> image; the gradient
is the target's), and (2) the transition leaves its target invariant (tested on a Gaussian whose
moments are known). Geweke's test of the whole sweep with the move is in test_lira_coverage_slow.py.
"""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from cosi_imaging_plugin.uncertainty import LIRA, ess, hmc
from cosi_imaging_plugin.uncertainty.gibbs import GibbsSampler
from cosi_imaging_plugin.uncertainty.hmc import hmc_draw
from cosi_imaging_plugin.uncertainty.lira import run_segment
from cosi_imaging_plugin.uncertainty.tree import MultiscaleTree, image_from_tree, log_dirichlet_draw

sys.path.insert(0, str(Path(__file__).parent))
from test_lira import blob_sky  # noqa: E402

from small_setup import dataset_for  # noqa: E402


def tree_parameters_to_image(params, levels):
    """Image from (total, the first 11 base fractions, the first 3 fractions of every parent)."""
    f0 = np.append(params[1:12], 1.0 - params[1:12].sum())
    log_fractions, k = [np.log(f0)], 12
    for level in range(1, levels + 1):
        n = 12 * 4 ** (level - 1)
        free = params[k:k + 3 * n].reshape(n, 3)
        k += 3 * n
        log_fractions.append(np.log(np.column_stack([free, 1.0 - free.sum(axis=1)])))
    return np.exp(image_from_tree(math.log(params[0]), log_fractions))


@pytest.mark.parametrize("n_pix", [48, 192])
def test_image_prior_is_the_tree_density_over_the_jacobian(n_pix):
    """``log p(x) = log p_tree(mu, f) + ln Xmax - ln |det dx / d(Lambda, f)|``, the Jacobian by central differences
    (relative step 1e-6: errors ~1e-10 per entry, far below the 1e-6 tolerance on the log-densities of ~100-700)."""
    rng = np.random.default_rng(3)
    tree = MultiscaleTree(n_pix, delta=2.0, total_prior=(3.0, 0.2))
    smoothing, exposure_max, total = rng.uniform(0.3, 2.0, tree.levels + 1), 7.0, 2.5
    log_fractions = [log_dirichlet_draw(np.full(12, 3.0), rng)]
    log_fractions += [log_dirichlet_draw(np.full((12 * 4 ** (level - 1), 4), 3.0), rng)
                      for level in range(1, tree.levels + 1)]
    params = np.concatenate([[total], np.exp(log_fractions[0][:11])] + [np.exp(f[:, :3]).ravel()
                                                                         for f in log_fractions[1:]])
    image = tree_parameters_to_image(params, tree.levels)
    jacobian = np.empty((n_pix, n_pix))
    for j in range(n_pix):
        h = np.zeros(n_pix)
        h[j] = 1e-6 * params[j]
        jacobian[:, j] = (tree_parameters_to_image(params + h, tree.levels)
                          - tree_parameters_to_image(params - h, tree.levels)) / (2 * h[j])
    sign, log_det = np.linalg.slogdet(jacobian)
    assert sign != 0
    expected = tree.log_prior(math.log(total), log_fractions, smoothing, exposure_max) + math.log(exposure_max)
    assert tree.image_log_prior(image, smoothing, exposure_max) == pytest.approx(expected - log_det, abs=1e-6)


def test_image_prior_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    tree = MultiscaleTree(192, delta=1.0, total_prior=(2.0, 0.5))
    smoothing = rng.uniform(0.1, 3.0, tree.levels + 1)
    image = rng.gamma(0.5, 1.0, 192) + 1e-3
    _, grad = tree.image_log_prior(image, smoothing, 3.0, gradient=True)
    numeric = np.empty(192)
    for j in range(192):
        up, down = image.copy(), image.copy()
        up[j] *= 1 + 1e-6
        down[j] *= 1 - 1e-6
        numeric[j] = (tree.image_log_prior(up, smoothing, 3.0)
                      - tree.image_log_prior(down, smoothing, 3.0)) / (2e-6 * image[j])
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6 * np.abs(grad).max())


@pytest.fixture(scope="module")
def blob_sampler():
    dataset = dataset_for(blob_sky(), background_norm=1.0, seed=5)[0]
    return GibbsSampler(dataset.engine, 10.0, (1.0, 0.0), hmc_steps=5)


def test_image_move_gradient_matches_finite_differences(blob_sampler):
    """The engine's transpose product minus the exposure, plus the prior's gradient, is the target's gradient
    (RING model grid: the reordering to NESTED and back included)."""
    move = blob_sampler.hmc
    rng = np.random.default_rng(6)
    state = blob_sampler.dispersed_start(rng, blob_sky())
    theta = np.log(state.image)
    _, grad = move.log_density(theta, state.smoothing, np.array([0.8]))
    for p, e in ((0, 0), (5, 1), (300, 2), (700, 0), (412, 1)):
        up, down = theta.copy(), theta.copy()
        up[p, e] += 1e-5
        down[p, e] -= 1e-5
        numeric = (move.log_density(up, state.smoothing, np.array([0.8]), gradient=False)[0]
                   - move.log_density(down, state.smoothing, np.array([0.8]), gradient=False)[0]) / 2e-5
        assert grad[p, e] == pytest.approx(numeric, rel=1e-4, abs=1e-4 * np.abs(grad).max())


def test_an_overflowing_trajectory_is_outside_the_support(blob_sampler):
    """Pixels far above any counted flux overflow the expectations (inf * 0 = nan): the target is -inf there, so
    the trajectory is rejected instead of failing."""
    state = blob_sampler.dispersed_start(np.random.default_rng(7), blob_sky())
    theta = np.log(state.image)
    current, _ = blob_sampler.hmc.log_density(theta, state.smoothing, np.array([1.0]))
    theta[10, 0] = 300.0  # finite, far down the likelihood
    far, grad = blob_sampler.hmc.log_density(theta, state.smoothing, np.array([1.0]))
    assert current - 1e100 > far > -math.inf and np.all(np.isfinite(grad))
    for value in (705.0, 800.0):  # the expectations overflow; the image itself
        theta[10, 0] = value
        assert blob_sampler.hmc.log_density(theta, state.smoothing, np.array([1.0])) == (-math.inf, None)


def test_hmc_transition_keeps_a_correlated_gaussian():
    """On a 4-D Gaussian with correlations up to 0.9 and scales 0.5-2, 8000 transitions (5 leapfrog steps of
    0.25, jittered up to 0.3, where the leapfrog turns unstable on the smallest scale, 0.14: without the
    Metropolis-Hastings correction the chain diverges) reproduce the mean and the variances within 4 standard
    errors (from the chain's effective sample size)."""
    scales = np.array([0.5, 1.0, 2.0, 1.0])
    corr = np.array([[1.0, 0.9, 0.0, 0.3], [0.9, 1.0, 0.2, 0.0], [0.0, 0.2, 1.0, -0.5], [0.3, 0.0, -0.5, 1.0]])
    cov = corr * np.outer(scales, scales)
    precision, mean = np.linalg.inv(cov), np.array([1.0, -2.0, 0.5, 3.0])

    def log_density(theta):
        r = theta - mean
        return -0.5 * float(r @ precision @ r), -precision @ r

    rng = np.random.default_rng(8)
    theta, chain, accepts = mean.copy(), [], []
    for _ in range(8000):
        theta, accept, _ = hmc_draw(log_density, theta, 0.25, 5, rng)
        chain.append(theta)
        accepts.append(accept)
    chain = np.array(chain)
    assert 0.3 < np.mean(accepts) < 0.95
    for j in range(4):
        n_eff = float(ess(chain[None, :, j]))
        assert abs(chain[:, j].mean() - mean[j]) < 4 * scales[j] / math.sqrt(n_eff)
        # var of a sample variance of a Gaussian: 2 sigma^4 / n
        assert abs(chain[:, j].var() - cov[j, j]) < 4 * cov[j, j] * math.sqrt(2.0 / n_eff)


def test_step_size_and_mass_are_tuned_during_the_burn_in_only(blob_sampler, monkeypatch):
    monkeypatch.setattr(hmc, "FIRST_WINDOW", 3)  # windows of 3, then 6 sweeps
    state = blob_sampler.dispersed_start(np.random.default_rng(9), blob_sky())
    rng = np.random.default_rng(10)
    state, rng, traces, _ = run_segment(blob_sampler, state, rng, 0, 8, burn_in=6, thin=1)
    assert state.tuning[3] == 1 and state.tuning[2] == 3  # one window closed, the second half-way
    inverse_mass = state.metric[0]
    assert np.all(inverse_mass > 0) and inverse_mass.std() > 0
    assert math.exp(state.tuning[0]) != pytest.approx(hmc.INITIAL_STEP)  # moved from its initial value
    tuned, metric = state.tuning.copy(), state.metric.copy()
    state, rng, _, draws = run_segment(blob_sampler, state, rng, 8, 12, burn_in=6, thin=1)
    np.testing.assert_array_equal(state.tuning, tuned)
    np.testing.assert_array_equal(state.metric, metric)


def test_image_move_setting_is_checked_and_checkpointed(tmp_path):
    dataset = dataset_for(blob_sky(), seed=5)[0]
    with pytest.raises(Exception, match="hmc_steps"):
        LIRA(dataset, hmc_steps=-1, progress=False)
    kwargs = dict(n_chains=2, n_samples=4, burn_in=3, hmc_steps=2, seed=1, progress=False, checkpoint_every=2)
    whole = LIRA(dataset, **kwargs).run()
    checkpoint = tmp_path / "run.npz"
    assert LIRA(dataset, checkpoint=checkpoint, **kwargs).run(max_sweeps=2) is None
    resumed = LIRA(dataset, checkpoint=checkpoint, **kwargs).run()
    np.testing.assert_array_equal(resumed.draws, whole.draws)
