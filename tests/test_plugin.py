"""The 3ML plugin: likelihood values, caching, simulated datasets, fits and bad input."""
import warnings

import numpy as np
import pytest
from astromodels import (
    Band,
    Disk_on_sphere,
    ExtendedSource,
    Gaussian,
    Gaussian_on_sphere,
    Line,
    Model,
    ParticleSource,
    PointSource,
    Powerlaw,
)
from histpy import Axis, Histogram
from scipy import stats
from threeML import DataList, GoodnessOfFit, JointLikelihood

from cosi_imaging_plugin.errors import AxisMismatchError, CosiInputError
from cosi_imaging_plugin.sky.rasterize import Rasterizer
from cosi_imaging_plugin.sky.spectra import integrate_spectrum
from cosi_imaging_plugin.threeml import COSIImagingLike

from small_setup import EI_EDGES, NSIDE_MODEL, dataset_for

warnings.filterwarnings("ignore")


def crab_like(index=-2.1, K=2e-4, ra=83.63, dec=22.01):
    spectrum = Powerlaw(K=K, index=index, piv=500.0)
    return PointSource("crab", ra=ra, dec=dec, spectral_shape=spectrum)


def gaussian_source(sigma=10.0, K=3e-4, index=-2.0, lon0=266.4, lat0=-28.9):
    return ExtendedSource("blob", spatial_shape=Gaussian_on_sphere(lon0=lon0, lat0=lat0, sigma=sigma),
                          spectral_shape=Powerlaw(K=K, index=index, piv=500.0))


def check_recovery(jl, truth):
    """Injected values recovered: each within 3 sigma, and jointly within the 99.9% chi2 quantile.

    With k free parameters the pull vector of a correct fit is ~N(0, C): a 3-sigma
    marginal bound fails with probability 0.27% per parameter, the joint bound with 0.1%.
    The covariance is the minimizer's, in the space it fits in (log10 K for a
    log-transformed K), so the offsets are taken in that space too.
    """
    free = jl.results.optimized_model.free_parameters
    assert set(truth) == set(free), list(free)
    cov = np.asarray(jl.results.covariance_matrix)
    delta = np.empty(len(free))
    for i, (name, par) in enumerate(free.items()):
        if par.has_transformation():
            delta[i] = par.transformation.forward(par.value) - par.transformation.forward(truth[name])
        else:
            delta[i] = par.value - truth[name]
        pull = delta[i] / np.sqrt(cov[i, i])
        assert abs(pull) < 3.0, (name, par.value, truth[name], pull)
    chi2 = delta @ np.linalg.solve(cov, delta)
    assert chi2 < stats.chi2.ppf(0.999, len(free)), (chi2, dict(zip(free, delta)))


def truth_image(*sources):
    """Sky image of astromodels sources on the model grid, as the simulator makes it."""
    rasterizer = Rasterizer(NSIDE_MODEL)
    image = np.zeros((rasterizer.npix, len(EI_EDGES) - 1))
    for source in sources:
        if hasattr(source, "position"):
            pixels, weights = rasterizer.point_weights(source.position.get_ra(), source.position.get_dec())
            spatial = np.zeros(rasterizer.npix)
            np.add.at(spatial, pixels, weights / rasterizer.pixel_area)
            image += spatial[:, None] * integrate_spectrum(source, EI_EDGES)[None, :]
        else:
            image += rasterizer(source.spatial_shape)[:, None] * integrate_spectrum(
                source.spectrum.main.shape, EI_EDGES)[None, :]
    return image


@pytest.fixture(scope="module")
def point_setup():
    source = crab_like()
    image = truth_image(source)
    dataset, expected = dataset_for(image, background_norm=1.0, seed=11)
    return dataset, expected, image


def test_log_like_equals_engine_and_direct_poisson_sum(point_setup):
    dataset, expected, image = point_setup
    plugin = COSIImagingLike("cosi", dataset, log_like_offset="factorial")
    plugin.set_model(Model(crab_like()))
    counts = dataset.engine.data.to_dense().reshape(expected.shape)
    direct = stats.poisson.logpmf(counts, expected).sum()
    assert plugin.get_log_like() == pytest.approx(direct, rel=1e-10)
    assert plugin.get_log_like() == pytest.approx(dataset.log_likelihood(image, {"instrumental": 1.0}), rel=1e-10)


def test_saturated_offset_is_the_saturated_log_likelihood(point_setup):
    dataset, _, _ = point_setup
    full = COSIImagingLike("a", dataset, log_like_offset="factorial")
    saturated = COSIImagingLike("b", dataset)
    for plugin in (full, saturated):
        plugin.set_model(Model(crab_like()))
    d = dataset.engine.data.counts
    log_like_saturated = stats.poisson.logpmf(d, d).sum()
    assert full.get_log_like() - saturated.get_log_like() == pytest.approx(log_like_saturated, rel=1e-10)


def test_cached_and_uncached_paths_agree(point_setup):
    dataset, _, _ = point_setup
    model = Model(crab_like(), gaussian_source())
    plugin = COSIImagingLike("cosi", dataset)
    plugin.set_model(model)
    folds = {name: folder.n_folds for name, folder in plugin.folders.items()}
    # spectral-only change: no re-fold
    model.crab.spectrum.main.Powerlaw.index = -1.8
    model.blob.spectrum.main.Powerlaw.K = 5e-4
    cached = plugin.get_log_like()
    assert {name: folder.n_folds for name, folder in plugin.folders.items()} == folds
    fresh = COSIImagingLike("cosi", dataset)
    fresh.set_model(model)
    assert cached == pytest.approx(fresh.get_log_like(), rel=1e-10)
    # spatial change of one source: only that source is re-folded
    model.blob.Gaussian_on_sphere.sigma = 6.0
    cached = plugin.get_log_like()
    assert plugin.folders["blob"].n_folds == folds["blob"] + 1
    assert plugin.folders["crab"].n_folds == folds["crab"]
    fresh = COSIImagingLike("cosi", dataset)
    fresh.set_model(model)
    assert cached == pytest.approx(fresh.get_log_like(), rel=1e-10)
    # back to an earlier morphology: served from the fold cache, bit for bit what a new fold gives
    model.blob.Gaussian_on_sphere.sigma = 10.0
    revisited = plugin.get_log_like()
    assert plugin.folders["blob"].n_folds == folds["blob"] + 1
    plugin.folders["blob"].forget()
    assert plugin.get_log_like() == revisited
    assert plugin.folders["blob"].n_folds == folds["blob"] + 2


def test_moved_point_source_is_interpolated_not_snapped(point_setup):
    dataset, _, _ = point_setup
    model = Model(crab_like())
    plugin = COSIImagingLike("cosi", dataset)
    plugin.set_model(model)
    values = []
    for ra in (83.0, 83.1, 83.2):
        model.crab.position.ra = ra
        values.append(plugin.get_log_like())
    # a smooth function of position: distinct values, no plateau
    assert len(set(np.round(values, 9))) == 3


def test_point_source_fit_recovers_injected_parameters(point_setup):
    dataset, _, _ = point_setup
    model = Model(crab_like(index=-1.7, K=1e-4, ra=80.0, dec=25.0))
    source = model.crab
    source.position.ra.free = True
    source.position.dec.free = True
    source.position.ra.bounds = (60, 110)
    source.position.dec.bounds = (0, 45)
    source.spectrum.main.Powerlaw.K.bounds = (1e-6, 1e-2)
    plugin = COSIImagingLike("cosi", dataset)
    jl = JointLikelihood(model, DataList(plugin), verbose=False)
    jl.fit(quiet=True)
    check_recovery(jl, {"crab.position.ra": 83.63, "crab.position.dec": 22.01,
                        "crab.spectrum.main.Powerlaw.K": 2e-4, "crab.spectrum.main.Powerlaw.index": -2.1,
                        "cosi_instrumental_norm": 1.0})


def free_gaussian_model():
    """A Gaussian blob model away from the truth of ``gaussian_source(sigma=12, K=1e-3)``, position and size free."""
    model = Model(gaussian_source(sigma=8.0, K=5e-4, index=-2.3, lon0=262.0, lat0=-25.0))
    shape = model.blob.spatial_shape
    for name in ("lon0", "lat0", "sigma"):
        shape.parameters[name].free = True
    shape.lon0.bounds, shape.lat0.bounds, shape.sigma.bounds = (240, 290), (-50, -5), (2, 30)
    model.blob.spectrum.main.Powerlaw.K.bounds = (1e-6, 1e-1)
    return model


def test_gaussian_source_fit_recovers_position_size_and_spectrum():
    source = gaussian_source(sigma=12.0, K=1e-3)
    dataset, _ = dataset_for(truth_image(source), background_norm=1.0, seed=5)
    model = free_gaussian_model()
    jl = JointLikelihood(model, DataList(COSIImagingLike("cosi", dataset)), verbose=False)
    jl.fit(quiet=True)
    check_recovery(jl, {"blob.Gaussian_on_sphere.lon0": 266.4, "blob.Gaussian_on_sphere.lat0": -28.9,
                        "blob.Gaussian_on_sphere.sigma": 12.0, "blob.spectrum.main.Powerlaw.K": 1e-3,
                        "blob.spectrum.main.Powerlaw.index": -2.0, "cosi_instrumental_norm": 1.0})


def test_simulated_dataset_is_a_poisson_draw_of_the_model(point_setup):
    dataset, _, _ = point_setup
    plugin = COSIImagingLike("cosi", dataset)
    plugin.set_model(Model(crab_like()))
    expected = plugin.get_model_counts().contents.sum()
    sim = plugin.get_simulated_dataset("sim", seed=3)
    assert sim.name == "sim"
    # total counts: Poisson with mean `expected`; 4 sigma bound
    assert abs(sim.dataset.engine.data.total_counts - expected) < 4 * np.sqrt(expected)
    sim.set_model(Model(crab_like()))
    assert np.isfinite(sim.get_log_like())



def test_goodness_of_fit_fits_only_the_simulated_datasets_parameters(point_setup):
    """GoodnessOfFit refits a clone of the best-fit model, which carries copies of the original
    plugin's background norms: they are fixed, the simulated dataset's own norms are fitted."""
    dataset, _, _ = point_setup
    model = Model(crab_like())
    model.crab.spectrum.main.Powerlaw.K.bounds = (1e-6, 1e-2)
    plugin = COSIImagingLike("cosi", dataset)
    jl = JointLikelihood(model, DataList(plugin), verbose=False)
    jl.fit(quiet=True)
    gof, parameters, likes = GoodnessOfFit(jl).by_mc(n_iterations=2)
    assert 0.0 <= gof["total"] <= 1.0 and 0.0 <= gof["cosi"] <= 1.0
    fitted = set(parameters.index.get_level_values(1))
    assert "cosi_sim_instrumental_norm" in fitted and "cosi_instrumental_norm" not in fitted
    # the original model keeps its own norm free
    assert model.parameters["cosi_instrumental_norm"].free
    # a model shared with the original plugin is not touched
    sim = plugin.get_simulated_dataset("cosi_sim", seed=1)
    sim.set_model(model)
    assert model.parameters["cosi_instrumental_norm"].free

# ---- bad input ------------------------------------------------------------------------------------
def test_negative_spectrum_is_an_error_before_the_fit(point_setup):
    dataset, _, _ = point_setup
    plugin = COSIImagingLike("cosi", dataset)
    falling = Line(a=1e-4, b=-1e-6)  # negative above 100 keV
    with pytest.raises(CosiInputError, match="negative"):
        plugin.set_model(Model(PointSource("bad", ra=10.0, dec=10.0, spectral_shape=falling)))


def test_nan_spectrum_is_an_error(point_setup):
    dataset, _, _ = point_setup
    plugin = COSIImagingLike("cosi", dataset)
    band = Band(K=1e-4, alpha=-1.0, beta=-2.0, xp=np.nan, piv=100.0)
    with pytest.raises(CosiInputError, match="NaN"):
        plugin.set_model(Model(PointSource("bad", ra=10.0, dec=10.0, spectral_shape=band)))


def test_unfoldable_source_type_is_named(point_setup):
    dataset, _, _ = point_setup
    plugin = COSIImagingLike("cosi", dataset)
    electrons = ParticleSource("electrons", distribution_shape=Powerlaw(K=1.0, index=-2.0))
    with pytest.raises(CosiInputError, match=r"cannot fold source\(s\) \['electrons'\]"):
        plugin.set_model(Model(crab_like(), electrons))


def test_shape_without_sky_integral_is_named_before_the_fit(point_setup):
    dataset, _, _ = point_setup
    plugin = COSIImagingLike("cosi", dataset)
    # a disk far smaller than the sub-pixels: nothing of it lands on the model grid
    shape = Disk_on_sphere(lon0=266.4, lat0=-28.9, radius=1e-3)
    shape.radius.bounds = (1e-4, 10.0)
    source = ExtendedSource("speck", spatial_shape=shape, spectral_shape=Powerlaw(K=1e-4, index=-2.0, piv=500.0))
    with pytest.raises(CosiInputError, match="source 'speck': spatial shape Disk_on_sphere integrates to 0"):
        plugin.set_model(Model(source))


def test_background_with_wrong_axes_is_named(point_setup):
    dataset, _, _ = point_setup
    template = dataset.backgrounds["instrumental"]
    axes = template.axes
    wrong = Histogram([axes[0], axes[1], Axis(np.linspace(0, 180, axes[2].nbins), label="Phi", unit="deg"),
                       axes[3]])
    with pytest.raises(AxisMismatchError, match="axis 'Phi' differs between background 'odd' and response"):
        dataset.engine.with_data(dataset.backgrounds["instrumental"], backgrounds={"odd": wrong})


def test_unknown_background_name_in_bounds(point_setup):
    dataset, _, _ = point_setup
    with pytest.raises(CosiInputError, match="albedo"):
        COSIImagingLike("cosi", dataset, background_bounds={"albedo": (0, 2)})


def test_zero_expectation_at_a_count_names_bin_and_state():
    dataset, _ = dataset_for(truth_image(crab_like()), background=False, seed=2)
    plugin = COSIImagingLike("cosi", dataset)
    model = Model(ExtendedSource("disk", spatial_shape=Disk_on_sphere(lon0=0.0, lat0=-80.0, radius=2.0),
                                 spectral_shape=Gaussian(F=1e-3, mu=700.0, sigma=10.0)))
    plugin.set_model(model)
    with pytest.raises(CosiInputError, match=r"ScAtt=.*disk\.spectrum\.main\.Gaussian\.F=0\.001"):
        plugin.get_log_like()
