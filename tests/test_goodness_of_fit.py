"""Goodness of fit on grouped counts: its parts, its reproducibility, and uniform p-values under the true model.

The datasets are those of the point-source tests (``point_setup.py``): a point source
over one day of rocking orbit and an instrumental background, fitted for K, the index
and the background norm.
"""
import healpy as hp
import numpy as np
import pytest
from astromodels import Model, PointSource, Powerlaw
from histpy import HealpixAxis
from scipy import stats
from threeML import DataList, JointLikelihood

from cosi_imaging_plugin.errors import CosiInputError
from cosi_imaging_plugin.threeml import COSIImagingLike, goodness_of_fit
from cosi_imaging_plugin.threeml.goodness_of_fit import (
    cds_groups,
    deviance_moments,
    grouped_deviance,
    scaled_chi2_sf,
)

from point_setup import crab, datasets, draw

#: Flux of the faint source: ~16,000 source counts over 3,600 of background in 1.2 million bins (DC2-like sparsity).
K_SPARSE = 2e-5
#: Flux of the bright source: ~160,000 counts.
K_BRIGHT = 2e-4


def fitted(data, K):
    """A JointLikelihood fitted to `data` (K, index and the background norm free)."""
    path, _ = datasets()
    source = crab(K=K)
    spectrum = source.spectrum.main.Powerlaw
    spectrum.K.bounds, spectrum.index.bounds = (1e-7, 1e-1), (-4.0, -0.5)
    plugin = COSIImagingLike("cosi", path.with_counts(data))
    plugin.background_parameters["instrumental"].bounds = (0.0, 1000.0)
    jl = JointLikelihood(Model(source), DataList(plugin), verbose=False)
    jl.fit(quiet=True, compute_covariance=False)
    return jl


def p_values(K, n_datasets, n_simulations, first_seed):
    """Goodness-of-fit results of `n_datasets` datasets drawn from the true model and fitted."""
    path, _ = datasets()
    results = []
    for k in range(n_datasets):
        jl = fitted(draw(path, crab(K=K), seed=first_seed + k), K)
        results.append(goodness_of_fit(jl, n_simulations=n_simulations, seed=k, progress=False))
    return results


# ---- the parts --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["nested", "ring"])
def test_groups_expect_enough_counts_and_follow_the_nested_order(rng, scheme):
    nside = 4
    expected = rng.exponential(0.3, size=(2, 3, hp.nside2npix(nside)))
    groups = cds_groups(expected, HealpixAxis(nside=nside, scheme=scheme), min_expected=5.0)
    sums = np.bincount(groups.ravel(), weights=expected.ravel())
    assert np.all(sums >= 5.0)
    assert np.all(sums[:-1] < 5.0 + expected.max())  # each closes as soon as it has enough
    nested = np.arange(hp.nside2npix(nside)) if scheme == "nested" else hp.nest2ring(nside, np.arange(
        hp.nside2npix(nside)))
    visit = groups[..., nested].ravel()
    assert visit[0] == 0 and np.all(np.diff(visit) >= 0) and np.all(np.diff(visit) <= 1)
    if scheme == "ring":  # the same groups as the nested layout of the same sky
        ring = np.arange(hp.nside2npix(nside))
        in_nested = cds_groups(expected[..., hp.nest2ring(nside, ring)], HealpixAxis(nside=nside, scheme="nested"),
                               min_expected=5.0)
        np.testing.assert_array_equal(in_nested, groups[..., hp.nest2ring(nside, ring)])


def test_groups_need_two_groups_of_counts():
    with pytest.raises(CosiInputError, match="fewer than two groups"):
        cds_groups(np.full((1, 1, 12), 0.1), HealpixAxis(nside=1), min_expected=1.0)
    with pytest.raises(CosiInputError, match="min_expected"):
        cds_groups(np.ones((1, 1, 12)), HealpixAxis(nside=1), min_expected=0.0)


def test_grouped_deviance_follows_its_definition(rng):
    model = rng.exponential(2.0, size=(3, 12))
    data = rng.poisson(model).astype(float)
    groups = np.repeat(np.arange(6), 6).reshape(3, 12)
    d = np.bincount(groups.ravel(), data.ravel())
    m = np.bincount(groups.ravel(), model.ravel())
    expected = 2 * np.sum(m - d + np.where(d > 0, d * np.log(np.where(d > 0, d, 1) / m), 0))
    assert grouped_deviance(data, model, groups) == pytest.approx(expected, rel=1e-12)
    assert grouped_deviance(model, model, groups) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("mean", [0.05, 0.5, 3.0, 25.0, 300.0])
def test_deviance_moments_are_those_of_poisson_draws(rng, mean):
    """Sample mean and variance of 200,000 draws within 4 standard errors of the computed moments (the variance's
    standard error from the fourth moment of the sample)."""
    n = 200_000
    d = rng.poisson(mean, n).astype(float)
    deviance = 2 * (mean - d + np.where(d > 0, d * np.log(np.where(d > 0, d, 1) / mean), 0))
    moment_mean, moment_var = (float(v[0]) for v in deviance_moments([mean]))
    assert abs(deviance.mean() - moment_mean) < 4 * np.sqrt(moment_var / n)
    fourth = np.mean((deviance - deviance.mean()) ** 4)
    assert abs(deviance.var() - moment_var) < 4 * np.sqrt((fourth - moment_var**2) / n)


def test_scaled_chi2_is_the_chi2_for_large_groups():
    """Groups of 1e5 counts: mean 1, variance 2 each, so the scaled chi-square is the chi-square of groups - free."""
    assert scaled_chi2_sf(520.0, np.full(500, 1e5), 3) == pytest.approx(stats.chi2.sf(520.0, 497), rel=1e-4)


# ---- simulations ------------------------------------------------------------------------------------------------
def test_simulated_datasets_are_reproducible():
    path, _ = datasets()
    plugin = COSIImagingLike("cosi", path)
    plugin.set_model(Model(crab()))

    def counts(simulated):
        contents = simulated.dataset.counts.contents
        return contents.todense() if hasattr(contents, "todense") else np.asarray(contents)

    np.testing.assert_array_equal(counts(plugin.get_simulated_dataset(seed=3)),
                                  counts(plugin.get_simulated_dataset(seed=3)))
    assert not np.array_equal(counts(plugin.get_simulated_dataset(seed=3)),
                              counts(plugin.get_simulated_dataset(seed=4)))
    plugin.seed_simulations(7)
    first = [counts(plugin.get_simulated_dataset()) for _ in range(2)]
    plugin.seed_simulations(7)
    again = [counts(plugin.get_simulated_dataset()) for _ in range(2)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(*first)


def test_goodness_of_fit_is_reproducible():
    path, _ = datasets()
    jl = fitted(draw(path, crab(K=K_SPARSE), seed=1), K_SPARSE)
    runs = [goodness_of_fit(jl, n_simulations=3, seed=11, progress=False) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].simulated, runs[1].simulated)
    assert runs[0].statistic == runs[1].statistic
    assert runs[0].dof == runs[0].n_groups - 3


def test_goodness_of_fit_needs_a_fit_and_a_cosi_plugin():
    path, _ = datasets()
    jl = JointLikelihood(Model(crab()), DataList(COSIImagingLike("cosi", path)), verbose=False)
    with pytest.raises(CosiInputError, match="fit the JointLikelihood"):
        goodness_of_fit(jl, n_simulations=0)


# ---- the p-values -----------------------------------------------------------------------------------------------
def test_scaled_chi2_p_values_are_uniform_at_sparse_counts():
    """60 datasets of the faint source (1.6% of the bins hold a count): the scaled chi-square p-values pass a KS test
    of uniformity (p > 0.05; a right statistic fails it for 5% of seeds, and these seeds are fixed)."""
    results = p_values(K_SPARSE, 60, 0, first_seed=5000)
    assert stats.kstest([r.p_value_chi2 for r in results], "uniform").pvalue > 0.05


def test_a_missing_source_is_detected():
    """Data holding a second source (K = 1e-4, ~75,000 counts, 77 deg away) fitted without it: both p-values are as
    small as they can be (the bootstrap's is 1 / (n + 1) when no simulation reaches the statistic)."""
    path, _ = datasets()
    second = PointSource("second", ra=150.0, dec=-20.0, spectral_shape=Powerlaw(K=1e-4, index=-2.0, piv=500.0))
    data = draw(path, [crab(K=K_SPARSE), second], seed=2)
    result = goodness_of_fit(fitted(data, K_SPARSE), n_simulations=9, seed=0, progress=False)
    assert result.p_value == pytest.approx(0.1)
    assert result.p_value_chi2 < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("K", [K_SPARSE, K_BRIGHT], ids=["sparse", "bright"])
def test_bootstrap_p_values_are_uniform(K):
    """50 datasets, each with 19 bootstrap fits (p-values in steps of 1/20): KS p > 0.05 at sparse and high counts.
    The discrete steps make the KS test conservative, never more likely to fail."""
    results = p_values(K, 50, 19, first_seed=1000)
    assert stats.kstest([r.p_value for r in results], "uniform").pvalue > 0.05
