"""Point sources folded along their path in the spacecraft frame (setup in ``point_setup.py``)."""
import healpy as hp
import numpy as np
import pytest
from astromodels import Model
from threeML import DataList, JointLikelihood

from cosi_imaging_plugin.threeml import COSIImagingLike

from point_setup import TRUTH, crab, datasets, draw, galactic_datasets, icrs_of_galactic
from small_setup import NSIDE_MODEL


@pytest.fixture(scope="module")
def setup():
    """(dataset with attitudes, the same without) on the template's counts; their CCM uses every pointing."""
    return datasets()


def test_path_and_grid_folds_agree_at_a_pixel_centre(setup):
    """At a model pixel centre the bilinear weights on the grid are (1, 0, 0, 0) and the CCM column of that pixel
    is the dwell of its centre (test_ccm): both folds give the same expected counts, to float64 rounding of sums
    taken in another order (1e-12 relative; 1e-9 of the largest value absolute for bins near zero)."""
    path, grid = setup
    ra, dec = icrs_of_galactic(*hp.pix2ang(NSIDE_MODEL, 300, lonlat=True))
    folds = {}
    for label, dataset in (("path", path), ("grid", grid)):
        plugin = COSIImagingLike("cosi", dataset)
        plugin.set_model(Model(crab(ra=ra, dec=dec)))
        at_bins, total = plugin.expectation_at_bins()
        folds[label] = at_bins, total, np.asarray(plugin.get_model_counts().contents)
    for mine, reference in zip(folds["path"], folds["grid"]):
        np.testing.assert_allclose(mine, reference, rtol=1e-12, atol=1e-9 * np.max(reference))


def test_the_path_fold_does_not_depend_on_the_model_grid(setup):
    """A point source folded along its path never touches the model grid: on an NSIDE 16 grid it gives the NSIDE 8
    grid's expected counts (to float64 rounding), anywhere, so the grid's coarseness cannot bias its position."""
    coarse, _ = setup
    fine, _ = datasets(2 * NSIDE_MODEL)
    assert fine.model_axes[0].nside == 2 * NSIDE_MODEL
    folds = []
    for dataset in (coarse, fine):
        plugin = COSIImagingLike("cosi", dataset)
        plugin.set_model(Model(crab(ra=80.1, dec=17.3)))
        plugin.background_parameters["instrumental"].value = 0.0
        folds.append(plugin.expectation_at_bins())
    np.testing.assert_allclose(folds[0][0], folds[1][0], rtol=1e-12, atol=1e-12 * folds[1][0].max())
    assert folds[0][1] == pytest.approx(folds[1][1], rel=1e-12)


def largest_slope_jump(plugin, source, ras, step):
    """Largest jump of the slope of -log L along a line of R.A., in units of sqrt(curvature) (per sigma).

    The local curvature (second difference over the step squared) departs from a smooth quadratic trend by
    ``jump / step`` at a kink where the slope jumps by ``jump``. Divided by ``sqrt(curvature) = curvature *
    sigma``, it is the jump in units of the slope one standard deviation of displacement makes.
    """
    ra = np.arange(ras[0], ras[1] + 1e-9, step)
    values = []
    for value in ra:
        source.position.ra.value = value
        values.append(-plugin.get_log_like())
    values = np.array(values)
    curvature = (values[2:] - 2 * values[1:-1] + values[:-2]) / step**2
    trend = np.polyval(np.polyfit(ra[1:-1], curvature, 2), ra[1:-1])
    return np.max(np.abs(curvature - trend)) * step / np.sqrt(np.median(curvature))


@pytest.mark.parametrize("fold", ["path", "grid"])
def test_likelihood_has_no_kinks_along_the_path(setup, fold):
    """Profile -log L over 6 deg of R.A. in steps of 0.1 deg (a bright source: sigma = 0.03 deg), across grid lines
    of the NSIDE 8 model grid and of the NSIDE 4 response grid. On the model grid the slope jumps by 15-27 sigma
    units at its lines; along the path the bilinear weights of the response grid average over 2880 attitudes. The
    bound: no jump exceeds half the slope change of a half-sigma displacement (0.5), so the curvature at the
    minimum, and the errors from it, hold."""
    path, grid = setup
    dataset = (path if fold == "path" else grid).with_counts(draw(path, crab(), seed=3))
    source = crab()
    plugin = COSIImagingLike("cosi", dataset)
    plugin.set_model(Model(source))
    jump = largest_slope_jump(plugin, source, (80.63, 86.63), 0.1)
    if fold == "path":
        assert jump < 0.5
    else:
        assert jump > 5.0  # the measure sees the grid's kinks


def fitted_pulls(dataset, truth, seed, drawn_on=None):
    """Pulls (fitted - injected) / sigma of ra, dec, log10 K and index of one fit to one Poisson draw.

    The data are drawn on `drawn_on` (default: `dataset`, folding the source as the fit does). The fit starts
    at the truth; sigma is the square root of the HESSE covariance diagonal (in log10 K for K, the space in
    which 3ML fits it).
    """
    data = draw(drawn_on or dataset, crab(**truth), seed=seed)
    source = crab(**truth)
    source.position.ra.free = source.position.dec.free = True
    source.position.ra.bounds = (truth["ra"] - 5.0, truth["ra"] + 5.0)
    source.position.dec.bounds = (truth["dec"] - 5.0, truth["dec"] + 5.0)
    spectrum = source.spectrum.main.Powerlaw
    spectrum.K.bounds, spectrum.index.bounds = (1e-7, 1e-2), (-4.0, -0.5)
    plugin = COSIImagingLike("cosi", dataset.with_counts(data))
    jl = JointLikelihood(Model(source), DataList(plugin), verbose=False)
    jl.fit(quiet=True)
    covariance = np.asarray(jl.results.covariance_matrix)
    pulls = {}
    for i, (path, parameter) in enumerate(jl.results.optimized_model.free_parameters.items()):
        short = path.split(".")[-1]
        if short not in truth:
            continue
        value, true = parameter.value, truth[short]
        if parameter.has_transformation():
            value, true = parameter.transformation.forward(value), parameter.transformation.forward(true)
        pulls[short] = (value - true) / np.sqrt(covariance[i, i])
    return pulls


def position(where, pixel=300):
    """(ra, dec) of a model pixel centre, or of the point halfway to the next centre of its ring (a grid line)."""
    lon, lat = hp.pix2ang(NSIDE_MODEL, pixel, lonlat=True)
    if where == "grid line":
        neighbour_lon, _ = hp.pix2ang(NSIDE_MODEL, pixel + 1, lonlat=True)
        lon = lon + 0.5 * ((neighbour_lon - lon + 180) % 360 - 180)
    return icrs_of_galactic(lon, lat)


@pytest.mark.parametrize("where", ["pixel centre", "grid line"])
def test_pulls_of_a_faint_point_source(where):
    """40 fits of a faint source (16,000 counts over a background of 3,600) at a model pixel centre and on a line
    of the model grid, halfway between two pixel centres of a ring, where the grid fold had a kink. The mean pull
    must be within 3 sigma (3 / sqrt(40)) of 0 and the width within 3 sigma (3 / sqrt(78)) of 1, for ra, dec,
    K and index. The data have no model grid (drawn along the path), so the grid's coarseness (NSIDE 8, 7.3 deg)
    must not bias the positions either: that is the mean pull of ra and dec."""
    path, _ = datasets()
    ra, dec = position(where)
    truth = {"ra": ra, "dec": dec, "K": 2e-5, "index": TRUTH["index"]}
    n = 40
    pulls = [fitted_pulls(path, truth, seed) for seed in range(100, 100 + n)]
    for name in ("ra", "dec", "K", "index"):
        values = np.array([p[name] for p in pulls])
        assert abs(values.mean()) < 3 / np.sqrt(n), (name, values.mean())
        assert abs(values.std(ddof=1) - 1) < 3 / np.sqrt(2 * (n - 1)), (name, values.std(ddof=1))


def test_both_folds_give_the_same_spectral_fit_at_a_pixel_centre():
    """With the position fixed at a model pixel centre both folds give the same likelihood to 1e-12 (above), so the
    spectral fits end at the same minimum: each within sqrt(2 EDM) < 0.02 sigma of it (MIGRAD stops at an
    estimated distance EDM < 2e-4), hence within 0.05 sigma of each other."""
    path, grid = datasets()
    ra, dec = position("pixel centre")
    data = draw(path, crab(ra=ra, dec=dec), seed=11)
    fits = []
    for dataset in (path, grid):
        source = crab(ra=ra, dec=dec)
        spectrum = source.spectrum.main.Powerlaw
        spectrum.K.bounds, spectrum.index.bounds = (1e-7, 1e-2), (-4.0, -0.5)
        jl = JointLikelihood(Model(source), DataList(COSIImagingLike("cosi", dataset.with_counts(data))),
                             verbose=False)
        results = jl.fit(quiet=True)[0]
        fits.append(results)
    for name in ("crab.spectrum.main.Powerlaw.K", "crab.spectrum.main.Powerlaw.index"):
        difference = fits[0].loc[name, "value"] - fits[1].loc[name, "value"]
        assert abs(difference) < 0.05 * fits[0].loc[name, "error"], name


# ---- Galactic-CDS data ------------------------------------------------------------------------------------------
def test_galactic_path_fold_is_the_galactic_response_at_a_pixel_centre():
    """At a model pixel centre the dwell of the direction is the CCM column of its pixel (test_ccm), so its
    rotated fold is that pixel's column of the precomputed Galactic-frame response: the same sums in another
    order (1e-12 relative; 1e-12 of the largest value absolute)."""
    path, _ = galactic_datasets()
    pixel = 300
    response = path.engine.response.to_dense()  # rows lb * n_ei + e
    n_ei = path.engine.response.axes[1].nbins
    column = response[pixel * n_ei:(pixel + 1) * n_ei]
    direction = hp.pix2vec(NSIDE_MODEL, pixel)
    fold = path.point_source_cds(direction)
    np.testing.assert_allclose(fold, column, rtol=1e-12, atol=1e-12 * column.max())


def test_galactic_path_and_grid_folds_agree_at_a_pixel_centre():
    """The plugin's expected counts of a point source at a model pixel centre, on Galactic-CDS data: along the
    path and on the grid, at the non-empty bins, summed, and in the model counts (to 1e-12)."""
    ra, dec = icrs_of_galactic(*hp.pix2ang(NSIDE_MODEL, 300, lonlat=True))
    folds = []
    for dataset in galactic_datasets():
        plugin = COSIImagingLike("cosi", dataset)
        plugin.set_model(Model(crab(ra=ra, dec=dec)))
        at_bins, total = plugin.expectation_at_bins()
        folds.append((at_bins, total, np.asarray(plugin.get_model_counts().contents),
                      np.asarray(plugin.model_cds().contents)))
    assert np.any(galactic_datasets()[0].point_source_cds(hp.pix2vec(NSIDE_MODEL, 300)))
    for mine, reference in zip(*folds):
        np.testing.assert_allclose(mine, reference, rtol=1e-12, atol=1e-12 * np.max(reference))


@pytest.mark.parametrize("fold", ["path", "grid"])
def test_galactic_likelihood_has_no_kinks_along_the_path(fold):
    """As for local data (above): the slope of -log L over 6 deg of R.A. jumps by less than 0.5 sigma units along
    the path (0.06 through the 2,880 pointings of the CCM; 0.53 with one averaged attitude for each of the 113 ScAtt
    bins, too few to wash the kinks out), and by more than 2 on the grid (5.3: the Galactic response blurs them)."""
    path, grid = galactic_datasets()
    data = draw(path, crab(), seed=3, background_name="flat")
    source = crab()
    plugin = COSIImagingLike("cosi", (path if fold == "path" else grid).with_counts(data))
    plugin.set_model(Model(source))
    jump = largest_slope_jump(plugin, source, (80.63, 86.63), 0.1)
    if fold == "path":
        assert jump < 0.5
    else:
        assert jump > 2.0
