"""TS maps: agreement with a 3ML fit, the null distribution, recovery of injected sources, bad input.

The datasets are those of the point-source tests (``point_setup.py``): NSIDE 4 response, NSIDE 8
model grid, one day of rocking orbit, an instrumental background of ~3,600 counts.
"""
import healpy as hp
import numpy as np
import pytest
import sparse
from astromodels import ExtendedSource, Gaussian, Gaussian_on_sphere, Model, PointSource, Powerlaw
from histpy import Histogram
from scipy import stats
from threeML import DataList, JointLikelihood

from cosi_imaging_plugin.detection import TSMapEstimator
from cosi_imaging_plugin.errors import CosiInputError
from cosi_imaging_plugin.threeml import COSIImagingLike

from point_setup import datasets, draw, galactic_datasets, icrs_of_galactic
from small_setup import NSIDE_MODEL

INDEX = -2.1
PIVOT = 500.0


def probe_spectrum():
    return Powerlaw(K=1.0, index=INDEX, piv=PIVOT)


def at_pixel(pixel, K, name="src"):
    lon, lat = hp.pix2ang(NSIDE_MODEL, pixel, lonlat=True)
    return PointSource(name, l=lon, b=lat, spectral_shape=Powerlaw(K=K, index=INDEX, piv=PIVOT))


@pytest.fixture(scope="module")
def crab_data():
    """A dataset with a faint point source at model pixel 300, drawn along its path."""
    path, _ = datasets()
    return path.with_counts(draw(path, at_pixel(300, 3e-6), seed=21))


def test_norm_error_and_ts_equal_a_3ml_fit(crab_data):
    """At a pixel, the map's norm, its parabolic and profile errors and its TS equal a 3ML fit of the same point
    source with the plugin (K free, index and background fixed), to 1e-3: MIGRAD stops within EDM < 1e-4 of the
    maximum, so its K is within 1.4e-2 sigma, far below 1e-3 of K at this significance (K / sigma ~ 30)."""
    pixel = 300
    estimator = TSMapEstimator(probe_spectrum(), nside=NSIDE_MODEL, selection_optional="errn-errp", rtol=1e-6)
    result = estimator.run(crab_data, pixels=[pixel], progress=False)

    source = at_pixel(pixel, 3e-6)
    spectrum = source.spectrum.main.Powerlaw
    spectrum.K.bounds = (1e-14, 1e-3)
    spectrum.index.fix = True
    plugin = COSIImagingLike("cosi", crab_data)
    plugin.background_parameters["instrumental"].fix = True
    jl = JointLikelihood(Model(source), DataList(plugin), verbose=False)
    frame, likelihood = jl.fit(quiet=True)
    K = spectrum.K.value
    log10_sigma = np.sqrt(jl.results.covariance_matrix[0, 0])
    errors = jl.get_errors(quiet=True)
    spectrum.K.value = 1e-13  # the null model: 1e-4 expected counts, 1e-7 of the TS
    null = plugin.get_log_like()
    ts = 2.0 * (-likelihood.loc["total", "-log(likelihood)"] - null)

    assert result.values("norm")[pixel] == pytest.approx(K, rel=1e-3)
    assert result.values("norm_err")[pixel] == pytest.approx(K * np.log(10) * log10_sigma, rel=1e-3)
    assert result.values("ts")[pixel] == pytest.approx(ts, rel=1e-3)
    assert result.values("norm_errn")[pixel] == pytest.approx(-errors.loc[errors.index[0], "negative_error"], rel=1e-3)
    assert result.values("norm_errp")[pixel] == pytest.approx(errors.loc[errors.index[0], "positive_error"], rel=1e-3)
    assert result.values("sqrt_ts")[pixel] == pytest.approx(np.sqrt(ts), rel=1e-3)


def test_ts_follows_the_half_chi2_mixture_on_source_free_data():
    """400 background-only datasets, TS at the 12 NSIDE 1 pixel centres (60-90 deg apart): the fractions above 4, 9
    and 25 match ``1/2 chi2_0 + 1/2 chi2_1`` (2.28%, 0.135%, 3e-7) within 3 binomial sigma of the 4,800 values, and
    sqrt_ts has mean 0 and width 1 within 3 sigma (the 12 positions of one dataset share counts, so these errors
    are of the right size only if their correlation is weak; the test would fail if it were not)."""
    path, _ = datasets()
    directions = hp.pix2vec(1, np.arange(12))
    pixels = np.unique(hp.vec2pix(NSIDE_MODEL, *directions))
    estimator = TSMapEstimator(probe_spectrum(), nside=NSIDE_MODEL)
    template = path.backgrounds["instrumental"]
    expected = np.asarray(template.contents.todense() if hasattr(template.contents, "todense") else template.contents)
    ts, sqrt_ts = [], []
    rng = np.random.default_rng(7)
    for _ in range(400):
        counts = rng.poisson(expected).astype(float)
        data = Histogram(path.data_axes, contents=sparse.COO.from_numpy(counts))
        result = estimator.run(path.with_counts(data), pixels=pixels, progress=False)
        ts.append(result.values("ts")[pixels])
        sqrt_ts.append(result.values("sqrt_ts")[pixels])
    ts, sqrt_ts = np.concatenate(ts), np.concatenate(sqrt_ts)
    n = ts.size
    for threshold in (4.0, 9.0, 25.0):
        p = 0.5 * stats.chi2.sf(threshold, 1)
        observed = np.count_nonzero(ts > threshold)
        assert abs(observed - n * p) <= 3 * np.sqrt(n * p * (1 - p)) + 1, (threshold, observed, n * p)
    assert abs(sqrt_ts.mean()) < 3 / np.sqrt(n)
    assert abs(sqrt_ts.std() - 1) < 3 / np.sqrt(2 * (n - 1))


def test_a_point_source_is_found_where_it_was_injected(crab_data):
    result = TSMapEstimator(probe_spectrum(), nside=NSIDE_MODEL).run(crab_data, progress=False)
    pixel, ts = result.peak("ts")
    assert pixel == 300
    assert result.values("sqrt_ts")[pixel] == pytest.approx(np.sqrt(ts))
    assert np.all(result.values("success") == 1)


def test_a_gaussian_is_found_at_its_own_scale():
    """A Gaussian of sigma 8 deg: among Gaussian kernels of 2, 4, 8 and 16 deg the 8 deg one gives the highest TS."""
    path, _ = datasets()
    ra, dec = icrs_of_galactic(*hp.pix2ang(NSIDE_MODEL, 300, lonlat=True))  # Gaussian_on_sphere takes (ra, dec)
    blob = ExtendedSource("blob", spatial_shape=Gaussian_on_sphere(lon0=ra, lat0=dec, sigma=8.0),
                          spectral_shape=Powerlaw(K=2e-5, index=INDEX, piv=PIVOT))
    data = path.with_counts(draw(path, blob, seed=4))
    peaks = {width: TSMapEstimator(probe_spectrum(), kernel="gaussian", width=width, nside=NSIDE_MODEL).run(
        data, pixels=[300], progress=False).values("ts")[300] for width in (2.0, 4.0, 8.0, 16.0)}
    assert max(peaks, key=peaks.get) == 8.0, peaks


def test_two_copies_of_a_dataset_double_the_ts(crab_data):
    """Likelihoods add: the same data twice gives the same norm, twice the TS and the error over sqrt(2)."""
    estimator = TSMapEstimator(probe_spectrum(), nside=NSIDE_MODEL, rtol=1e-8)
    pixels = [300, 301, 500]
    one = estimator.run(crab_data, pixels=pixels, progress=False)
    two = estimator.run([crab_data, crab_data], pixels=pixels, progress=False)
    np.testing.assert_allclose(two.values("norm")[pixels], one.values("norm")[pixels], rtol=1e-6)
    np.testing.assert_allclose(two.values("ts")[pixels], 2 * one.values("ts")[pixels], rtol=1e-6)
    np.testing.assert_allclose(two.values("norm_err")[pixels], one.values("norm_err")[pixels] / np.sqrt(2),
                               rtol=1e-6)


def test_em_channels_use_only_their_bins(crab_data):
    """The map of all Em channels differs from that of the first one; a plugin-free check: the first channel's
    TS is below the full one at the source (fewer counts)."""
    estimator = TSMapEstimator(probe_spectrum(), nside=NSIDE_MODEL)
    full = estimator.run(crab_data, pixels=[300], progress=False).values("ts")[300]
    first = TSMapEstimator(probe_spectrum(), nside=NSIDE_MODEL, em_channels=[0]).run(
        crab_data, pixels=[300], progress=False).values("ts")[300]
    assert 0 < first < full


def test_refinement_gives_a_multi_order_map(crab_data):
    """The 3 pixels of highest TS of an NSIDE 4 map are refined to NSIDE 8 (a point source along its path may be
    tested between model pixels): 189 coarse pixels and 12 fine ones cover the sky once, and the refined values are
    those of a full NSIDE 8 map."""
    coarse = TSMapEstimator(probe_spectrum(), nside=4).run(crab_data, progress=False)
    estimator = TSMapEstimator(probe_spectrum(), nside=4)
    multi = estimator.refine(crab_data, coarse, top=3, progress=False)
    assert multi.uniq.size == 192 - 3 + 12
    sky = multi.to_mhealpy("ts")
    assert sky.is_moc
    order = np.floor(np.log2(multi.uniq / 4) / 2).astype(int)
    area = np.sum(4.0 ** -order) / 12  # each order-k pixel is 4^-k of an order-0 one
    assert area == pytest.approx(1.0)
    full = TSMapEstimator(probe_spectrum(), nside=8).run(crab_data, progress=False)
    fine = multi.refined.pixels
    np.testing.assert_allclose(multi.refined.values("ts")[fine], full.values("ts")[fine], rtol=1e-9)
    assert multi.peak("ts")[1] >= coarse.peak("ts")[1]
    with pytest.raises(CosiInputError, match="threshold"):
        estimator.refine(crab_data, coarse)


def test_galactic_data_give_a_map(tmp_path):
    path, _ = galactic_datasets()
    data = path.with_counts(draw(path, at_pixel(300, 3e-5), seed=2, background_name="flat"))
    result = TSMapEstimator(probe_spectrum(), nside=NSIDE_MODEL).run(data, progress=False)
    assert result.peak("ts")[0] in set(hp.get_all_neighbours(NSIDE_MODEL, 300)) | {300}
    written = result.write(tmp_path / "ts.h5")
    fits = result.write_fits(tmp_path / "ts.fits")
    assert written.exists() and fits.exists()
    back = hp.read_map(str(fits), field=result.keys().index("ts"))
    np.testing.assert_allclose(back, result.values("ts"))


# ---- bad input --------------------------------------------------------------------------------------------------
def test_bad_input_names_the_culprit(crab_data):
    with pytest.raises(CosiInputError, match="unknown kernel 'box'"):
        TSMapEstimator(probe_spectrum(), kernel="box")
    with pytest.raises(CosiInputError, match="finer than the model grid"):
        TSMapEstimator(probe_spectrum(), kernel="gaussian", width=4.0, nside=16).run(crab_data, progress=False)
    with pytest.raises(CosiInputError, match=r"em_channels \[7\] outside"):
        TSMapEstimator(probe_spectrum(), nside=NSIDE_MODEL, em_channels=[7]).run(crab_data, progress=False)
    with pytest.raises(CosiInputError, match="integrates to zero"):
        TSMapEstimator(Gaussian(F=1.0, mu=1e4, sigma=1.0), nside=NSIDE_MODEL).run(crab_data, progress=False)
    with pytest.raises(CosiInputError, match="null model .* expects 0 counts"):
        TSMapEstimator(probe_spectrum(), nside=NSIDE_MODEL).run(crab_data, background_norms={"instrumental": 0.0},
                                                                progress=False)
    with pytest.raises(CosiInputError, match="unknown selection_optional"):
        TSMapEstimator(probe_spectrum(), selection_optional=["errors"])
