"""Tests of the Galactic sky templates, the sky descriptions, the background templates and
the simulated datasets (a tiny configuration: NSIDE 4, 6 Phi bins, six hours of orbit).

Statistical checks use bounds derived from the Poisson distribution (see each test)."""
import copy
import math
from pathlib import Path

import h5py
import healpy as hp
import numpy as np
import pytest
import yaml
from astropy.io import fits

from cosi_imaging_plugin.errors import CosiInputError
from cosi_imaging_plugin.io.manifest import read_manifest
from cosi_imaging_plugin.simulate import (
    SimulationConfig,
    albedo_exposure,
    background_template,
    builtin_config,
    builtin_config_names,
    fold_rows,
    scale_rows,
    simulate_dataset,
    spectral_weights,
    template_rows,
)
from cosi_imaging_plugin.simulate import draws as draws_module
from cosi_imaging_plugin.sky import PRESETS, build_model, build_sources, source_image
from cosi_imaging_plugin.sky.functions import (
    Galactic_disk,
    Galactic_gaussian,
    exponential_latitude_integral,
    gaussian_latitude_integral,
    icrs_to_galactic,
    wrapped_gaussian_integral,
)

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**changes):
    """A dataset that builds in seconds: NSIDE 4, 6 Phi bins, 6 h of rocking orbit, three backgrounds."""
    config = {
        "name": "tiny",
        "seed": 7,
        "instrument": {"file": "default", "overrides": {"binning": {
            "nside": 4, "phi_edges_deg": {"start": 0.0, "stop": 180.0, "bins": 6},
            "ei_edges_kev": [509.0, 513.0], "em_edges_kev": [509.0, 513.0]}}},
        "orbit": {"duration_s": 21600.0, "cadence_s": 60.0, "rocking_deg": 22.0, "rocking_period_s": 21600.0},
        "scatt_nside": 4,
        "model_nside": 4,
        "response_rtol": 0.0,
        "sky": [{"preset": "bulge_511"},
                {"name": "point", "type": "point", "l": 30.0, "b": 10.0,
                 "spectrum": {"function": "Powerlaw", "K": 1.0e-3, "piv": 511.0, "index": -2.0}}],
        "backgrounds": {"albedo": {"kind": "albedo", "rate": 0.11},
                        "instrumental": {"kind": "instrumental", "rate": 0.05, "norm": 1.3},
                        "isotropic": {"kind": "isotropic", "rate": 0.02, "index": -2.5}},
        "galactic": True,
    }
    config.update(copy.deepcopy(changes))
    return config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny dataset, simulated once for the module."""
    out = tmp_path_factory.mktemp("sim") / "tiny"
    return simulate_dataset(tiny_config(), out, progress=False)


def _sky_image(manifest, model_axis, ei_edges):
    from cosi_imaging_plugin.sky.rasterize import Rasterizer

    rasterizer = Rasterizer(model_axis.nside, str(model_axis.scheme))
    image = np.zeros((model_axis.nbins, len(ei_edges) - 1))
    for source in build_sources(manifest.config["sky"]):
        image += source_image(source, rasterizer, ei_edges)
    return image


@pytest.fixture(scope="module")
def tiny_expectation(tiny):
    """Dense local-CDS expectation of the tiny dataset recomputed from its files by the 3ML plugin at the truth
    (the simulator folds every source as the plugin does), and its inputs."""
    from cosi_imaging_plugin.datasets import COSIDataset
    from cosi_imaging_plugin.exposure import ExposureTable
    from cosi_imaging_plugin.io import read_histogram
    from cosi_imaging_plugin.threeml import COSIImagingLike

    dataset = COSIDataset.from_manifest(tiny.path, rtol=tiny.truth["response_rtol"], dtype=np.float64,
                                        progress=False)
    assert dataset.attitudes is not None  # the point source is folded along its path
    plugin = COSIImagingLike("sim", dataset)
    plugin.set_model(build_model(tiny.config["sky"]))
    for name, background in tiny.truth["backgrounds"].items():
        plugin.background_parameters[name].value = background["norm"]
    expected = np.asarray(plugin.get_model_counts().contents)
    table = ExposureTable.read(tiny["exposure_table"])
    data = read_histogram(tiny["data_scatt"], counts=True)
    return {"expected": expected, "data": data, "table": table, "dataset": dataset}


def pearson_check(counts, expected, what):
    """Pearson X^2 over bins with expectation > 0.5 against its exact Poisson mean and variance.

    For a Poisson count d of mean m, E[(d - m)^2 / m] = 1 and Var = 2 + 1/m, so X^2 over N
    independent bins has mean N and variance sum(2 + 1/m). A 5-sigma bound fails a correct
    simulation with probability < 1e-6 (the sum of many bins is close to normal).
    """
    counts, expected = np.ravel(counts).astype(float), np.ravel(expected)
    assert np.all(counts[expected == 0] == 0), f"{what}: counts where nothing is expected"
    use = expected > 0.5
    x2 = float(np.sum((counts[use] - expected[use]) ** 2 / expected[use]))
    mean = use.sum()
    sigma = math.sqrt(np.sum(2.0 + 1.0 / expected[use]))
    assert abs(x2 - mean) < 5 * sigma, f"{what}: X^2 = {x2:.1f} for {mean} bins (sigma {sigma:.1f})"
    return x2, mean, sigma


# ---------------------------------------------------------------------------------------------
# sky/functions.py
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("function", [
    Galactic_disk(l0=0.0, b0=0.0, sigma_l=60.0, scale_height=3.0),
    Galactic_disk(l0=120.0, b0=25.0, sigma_l=200.0, scale_height=20.0),
    Galactic_gaussian(l0=0.0, b0=0.0, sigma_l=40.0, sigma_b=5.0),
    Galactic_gaussian(l0=300.0, b0=70.0, sigma_l=90.0, sigma_b=30.0),
])
def test_galactic_functions_integrate_to_one(function):
    # Sum over an NSIDE-256 grid (pixel size delta = 0.23 deg). The normalisation is exact,
    # so what is left is the midpoint-rule error of the grid: at most ~(delta/w)^2/12 for the
    # narrowest scale w = 3 deg (the cusp of the disk), 5e-4.
    nside = 256
    lon, lat = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)), lonlat=True)
    ra, dec = _galactic_to_icrs(lon, lat)
    total = np.sum(function(ra, dec)) * hp.nside2pixarea(nside)
    assert total == pytest.approx(1.0, abs=5e-4)


def _galactic_to_icrs(lon, lat):
    from cosi_imaging_plugin.sky.rasterize import frame_rotation

    vec = frame_rotation("galactic", "icrs") @ np.asarray(hp.ang2vec(lon, lat, lonlat=True)).T
    return np.degrees(np.arctan2(vec[1], vec[0])) % 360, np.degrees(np.arcsin(vec[2]))


@pytest.mark.parametrize("function", [
    Galactic_disk(l0=20.0, b0=-4.0, sigma_l=30.0, scale_height=3.0),
    Galactic_gaussian(l0=340.0, b0=10.0, sigma_l=15.0, sigma_b=5.0),
])
def test_galactic_functions_peak_at_center(function):
    nside = 128
    lon, lat = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)), lonlat=True)
    values = function(*_galactic_to_icrs(lon, lat))
    l0, b0 = function.l0.value, function.b0.value
    peak = np.argmax(values)
    separation = hp.rotator.angdist([lon[peak], lat[peak]], [l0, b0], lonlat=True)
    assert np.degrees(separation) < 1.5 * np.degrees(hp.nside2resol(nside))
    # the value at the centre is the inverse of the closed-form normalisation
    at_center = function(*_galactic_to_icrs(np.array([l0]), np.array([b0])))
    b0r = math.radians(b0)
    if isinstance(function, Galactic_disk):
        norm = wrapped_gaussian_integral(math.radians(function.sigma_l.value)) * exponential_latitude_integral(
            b0r, math.radians(function.scale_height.value))
    else:
        norm = wrapped_gaussian_integral(math.radians(function.sigma_l.value)) * gaussian_latitude_integral(
            b0r, math.radians(function.sigma_b.value))
    assert at_center == pytest.approx(1.0 / norm, rel=1e-9)
    assert at_center >= values.max()


def test_latitude_integrals_match_quadrature():
    from scipy.integrate import quad

    for b0, h in [(0.0, 0.05), (0.4, 0.3), (-1.2, 1.0)]:
        ref = quad(lambda b, b0=b0, h=h: np.exp(-abs(b - b0) / h) * np.cos(b), -np.pi / 2, np.pi / 2,
                   points=[b0])[0]
        assert exponential_latitude_integral(b0, h) == pytest.approx(ref, rel=1e-10)
        ref = quad(lambda b, b0=b0, h=h: np.exp(-0.5 * ((b - b0) / h) ** 2) * np.cos(b), -np.pi / 2, np.pi / 2)[0]
        assert gaussian_latitude_integral(b0, h) == pytest.approx(ref, rel=1e-10)


def test_icrs_to_galactic_matches_astropy():
    from astropy.coordinates import SkyCoord

    rng = np.random.default_rng(3)
    ra, dec = rng.uniform(0, 360, 50), np.degrees(np.arcsin(rng.uniform(-1, 1, 50)))
    lon, lat = icrs_to_galactic(ra, dec)
    gal = SkyCoord(ra=ra, dec=dec, unit="deg", frame="icrs").galactic
    sep = hp.rotator.angdist(np.array([lon, lat]), np.array([gal.l.deg, gal.b.deg]), lonlat=True)
    assert np.degrees(sep).max() < 1e-6


def test_galactic_functions_known_to_astromodels():
    import astropy.units as u
    from astromodels import ExtendedSource, Gaussian
    from astromodels.functions.function import get_function_class

    assert get_function_class("Galactic_disk") is Galactic_disk
    assert get_function_class("Galactic_gaussian") is Galactic_gaussian
    source = ExtendedSource("disk", spatial_shape=Galactic_disk(), spectral_shape=Gaussian(F=1e-3, mu=511.0))
    ra, dec = _galactic_to_icrs(np.array([0.0]), np.array([0.0]))
    plain = source.spatial_shape(ra, dec)
    with_units = source.spatial_shape(ra * u.deg, dec * u.deg)
    assert with_units.unit == u.sr**-1
    assert with_units.value == pytest.approx(plain)


# ---------------------------------------------------------------------------------------------
# sky/sources.py
# ---------------------------------------------------------------------------------------------
def test_presets_build():
    model = build_model([{"preset": "positron_511"}, {"preset": "crab"}, {"preset": "al26_plane"}])
    assert set(model.sources) == {"bulge_511", "disk_511", "crab", "al26_plane"}
    bulge = model.sources["bulge_511"]
    assert bulge.spatial_shape.sigma.value * 2 * math.sqrt(2 * math.log(2)) == pytest.approx(20.0, rel=1e-3)
    assert model.sources["crab"].spectrum.main.shape.index.value == pytest.approx(-2.1)
    assert model.sources["al26_plane"].spectrum.main.shape.mu.value == pytest.approx(1808.65)
    assert set(PRESETS) >= {"bulge_511", "disk_511", "crab", "al26_plane", "positron_511"}


def test_point_source_in_galactic_coordinates():
    (source,) = build_sources([{"name": "p", "type": "point", "l": 30.0, "b": 10.0,
                                "spectrum": {"function": "Band", "K": 1e-4}}])
    gal = source.position.sky_coord.galactic
    assert (gal.l.deg, gal.b.deg) == pytest.approx((30.0, 10.0), abs=1e-8)


@pytest.mark.parametrize("spec, named", [
    ({"name": "a", "type": "extended", "spatial": {"function": "Galactic_disc"},
      "spectrum": {"function": "Gaussian"}}, "Galactic_disc"),
    ({"name": "a", "type": "extended", "spatial": {"function": "Galactic_disk", "scaleheight": 3},
      "spectrum": {"function": "Gaussian"}}, "scaleheight"),
    ({"name": "a", "type": "point", "ra": 1.0, "dec": 2.0, "spectrum": {"function": "Powerlaw", "indx": -2}},
     "indx"),
    ({"name": "a", "type": "point", "ra": 1.0, "dec": 2.0, "spectrum": {"function": "Gaussian_on_sphere"}},
     "Gaussian_on_sphere"),
    ({"name": "a", "type": "point", "ra": 1.0, "dec": 2.0, "colour": 3, "spectrum": {"function": "Powerlaw"}},
     "colour"),
    ({"name": "a", "type": "point", "ra": 1.0, "spectrum": {"function": "Powerlaw"}}, "dec"),
    ({"name": "a", "type": "extended", "spatial": {"function": "Gaussian_on_sphere", "sigma": 30.0},
      "spectrum": {"function": "Gaussian"}}, "sigma"),
    ({"preset": "bulge_512"}, "bulge_512"),
])
def test_bad_source_descriptions_name_the_culprit(spec, named):
    with pytest.raises(CosiInputError, match=named):
        build_sources([spec])


def test_parameter_bounds_can_be_widened():
    (source,) = build_sources([{"name": "wide", "type": "extended",
                                "spatial": {"function": "Gaussian_on_sphere", "lon0": 10.0, "lat0": 0.0,
                                            "sigma": {"value": 30.0, "min_value": 0.1, "max_value": 60.0}},
                                "spectrum": {"function": "Gaussian", "F": 1e-3, "mu": 511.0}}])
    assert source.spatial_shape.sigma.value == 30.0
    assert source.spatial_shape.sigma.max_value == 60.0


# ---------------------------------------------------------------------------------------------
# simulate/backgrounds.py
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_setup():
    """Response, CCM and exposure table of a small configuration (no files)."""
    from cosi_imaging_plugin.engine import CCMMapping, ColumnResponse
    from cosi_imaging_plugin.exposure import ExposureTable, coordsys_conversion_matrix
    from cosi_imaging_plugin.instrument.orbit import simulate_orbit
    from cosi_imaging_plugin.instrument.response_generator import generate_response

    config = SimulationConfig.from_dict(tiny_config())
    generated = generate_response(config.instrument, None, progress=False)
    response = ColumnResponse.from_dense(generated.contents, generated.axes, "cm2")
    table = ExposureTable.from_orientation(simulate_orbit(config.orbit), config.scatt_nside)
    ccm = coordsys_conversion_matrix(table, config.model_nside, config.instrument.nside, earth_occultation=True)
    return {"config": config, "response": response, "table": table, "ccm": ccm, "mapping": CCMMapping(ccm)}


@pytest.mark.parametrize("kind", ["isotropic", "albedo", "instrumental"])
def test_template_total_is_rate_times_livetime(small_setup, kind):
    s = small_setup
    rate = 0.037
    template = background_template(kind, s["response"], s["ccm"], s["table"], rate)
    assert list(template.axes.labels) == ["ScAtt", "Em", "Phi", "PsiChi"]
    # float64 sums of positive numbers: only rounding remains
    assert np.sum(template.contents) == pytest.approx(rate * np.sum(s["table"].exposure), rel=1e-10)
    assert np.all(np.asarray(template.contents) >= 0)


def test_instrumental_template_rows_follow_livetime(small_setup):
    s = small_setup
    template = np.asarray(background_template("instrumental", s["response"], s["ccm"], s["table"], 0.1).contents)
    per_row = template.reshape(template.shape[0], -1)
    exposure = s["table"].exposure
    # isotropic in the instrument frame: every ScAtt row has the same shape, scaled by its live time
    np.testing.assert_allclose(per_row / exposure[:, None], np.broadcast_to(per_row[0] / exposure[0], per_row.shape),
                               rtol=1e-10)


def test_albedo_exposure_zero_where_earth_cannot_be_seen(small_setup):
    from cosi_imaging_plugin.geometry import earth_limb_radius, lonlat_to_vec

    table = small_setup["table"]
    nside = 8
    seen = albedo_exposure(table, nside)
    vectors = np.asarray(hp.pix2vec(nside, np.arange(hp.nside2npix(nside)))).T
    half_pixel = 0.5 * math.sqrt(hp.nside2pixarea(nside))
    for b in range(len(table)):
        rot = table.rotation_matrices(b)
        zenith = np.einsum("kba,kb->ka", rot, lonlat_to_vec(table.earth_zenith[b][:, 0], table.earth_zenith[b][:, 1]))
        theta = np.arccos(np.clip(zenith @ vectors.T, -1, 1))
        limb = earth_limb_radius(table.altitude[b])[:, None]
        sky_only = np.all(theta < limb - half_pixel, axis=0)
        earth_only = np.all(theta > limb + half_pixel, axis=0)
        assert sky_only.any() and earth_only.any()
        assert np.all(seen[b, sky_only] == 0)
        assert seen[b, earth_only] == pytest.approx(table.exposure[b], rel=1e-12)
        assert np.all((seen[b] >= 0) & (seen[b] <= table.exposure[b] * (1 + 1e-12)))
    # the Earth covers 1 - (1 - cos(theta_limb)) / 2 of the sphere: ~30% at 550 km
    fraction = seen.sum() / (table.exposure.sum() * seen.shape[1])
    cos_limb = math.cos(earth_limb_radius(550.0))
    assert fraction == pytest.approx((1 + cos_limb) / 2, rel=0.02)


def test_albedo_outside_the_field_of_view_is_zero(small_setup):
    from cosi_imaging_plugin.engine import CCMMapping, ColumnResponse
    from cosi_imaging_plugin.exposure import ExposureTable, coordsys_conversion_matrix
    from cosi_imaging_plugin.instrument.orbit import OrbitConfig, simulate_orbit
    from cosi_imaging_plugin.instrument.response_generator import generate_response

    # zenith pointing and no response beyond 90 deg off axis: the Earth (>113 deg) is never seen
    instrument = small_setup["config"].instrument.updated({"effective_area": {"max_off_axis_deg": 90.0}})
    generated = generate_response(instrument, None, progress=False)
    response = ColumnResponse.from_dense(generated.contents, generated.axes, "cm2")
    table = ExposureTable.from_orientation(simulate_orbit(OrbitConfig(duration_s=7200.0, rocking_deg=0.0)), 4)
    mapping = CCMMapping(coordsys_conversion_matrix(table, 4, 4))
    rows = template_rows("albedo", response, mapping, table)
    assert rows.sum() > 0  # the Earth is there, in the spacecraft frame
    assert np.all(fold_rows(response, rows) == 0)
    with pytest.raises(CosiInputError, match="zero counts"):
        scale_rows(rows, response, 0.1, 7200.0, "albedo")


def test_spectral_weights():
    w = spectral_weights([100.0, 200.0, 400.0], index=-2.0)
    # int E^-2 dE: 1/100 - 1/200 = 0.005 and 1/200 - 1/400 = 0.0025
    np.testing.assert_allclose(w, [2 / 3, 1 / 3])
    np.testing.assert_allclose(spectral_weights([100.0, 200.0, 400.0], index=-1.0), [0.5, 0.5])


def test_fold_rows_matches_dense_product(small_setup):
    response = small_setup["response"]
    rows = np.random.default_rng(1).uniform(size=(5, response.n_source))
    np.testing.assert_allclose(fold_rows(response, rows), rows @ response.to_dense(), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# simulate/dataset.py
# ---------------------------------------------------------------------------------------------
def test_manifest_roles_and_truth(tiny):
    text = yaml.safe_load((tiny.directory / "manifest.yaml").read_text())
    for role in ("response", "orientation", "exposure_table", "ccm", "data_scatt", "data_galactic",
                 "parameter_file"):
        assert isinstance(text[role], str) and not Path(text[role]).is_absolute()
        assert tiny[role].is_file() and tiny[role].is_absolute()
    assert set(text["backgrounds"]) == set(text["backgrounds_galactic"]) == {"albedo", "instrumental", "isotropic"}
    assert text["seed"] == 7 and tiny.seed == 7
    truth = tiny.truth
    assert [s["name"] for s in truth["sources"]] == ["bulge_511", "point"]
    bulge, point = truth["sources"]
    assert bulge["spatial"]["function"] == "Gaussian_on_sphere" and bulge["spectrum"]["F"] == 1e-3
    # the line's flux inside 509-513 keV: F erf(2 / sqrt 2) for sigma = 1 keV about 511 keV
    assert bulge["flux_per_ei_bin"][0] == pytest.approx(1e-3 * math.erf(2 / math.sqrt(2)), rel=1e-6)
    # a power law E^-2 with K at 511 keV: K 511^2 (1/509 - 1/513)
    assert point["flux_per_ei_bin"][0] == pytest.approx(1e-3 * 511**2 * (1 / 509 - 1 / 513), rel=1e-6)
    assert (point["l"], point["b"]) == pytest.approx((30.0, 10.0), abs=1e-8)
    # a point source keeps its flux on the model grid (bilinear weights sum to one)
    assert point["model_flux_per_ei_bin"][0] == pytest.approx(point["flux_per_ei_bin"][0], rel=1e-12)
    livetime = truth["livetime_s"]
    assert livetime == pytest.approx(21600.0)
    inst = truth["backgrounds"]["instrumental"]
    assert inst["template_counts"] == pytest.approx(0.05 * livetime)
    assert inst["expected_counts"] == pytest.approx(1.3 * 0.05 * livetime)
    assert truth["expected_sky_counts"] == pytest.approx(sum(s["expected_counts"] for s in truth["sources"]))
    assert truth["expected_total_counts"] == pytest.approx(
        truth["expected_sky_counts"] + sum(b["expected_counts"] for b in truth["backgrounds"].values()))
    assert truth["observed_counts"]["data_scatt"] == truth["observed_counts"]["data_galactic"]
    assert SimulationConfig.from_dict(tiny.config).to_dict() == tiny.config


def test_total_counts_within_poisson_error(tiny):
    # The total of independent Poisson bins is Poisson with the summed mean mu: a correct
    # simulation lands outside mu +- 5 sqrt(mu) with probability 6e-7.
    mu = tiny.truth["expected_total_counts"]
    n = tiny.truth["observed_counts"]["data_scatt"]
    assert abs(n - mu) < 5 * math.sqrt(mu)


def test_local_data_follow_the_expectation(tiny, tiny_expectation):
    # Most local-CDS bins expect far less than one count, so the check runs on marginals
    # (sums of independent Poisson bins are Poisson): per CDS bin summed over ScAtt, per
    # ScAtt bin, per PsiChi pixel and per Phi bin.
    x = tiny_expectation
    dense = np.asarray(x["data"].contents.todense())
    assert dense.sum() == tiny.truth["observed_counts"]["data_scatt"]
    assert x["expected"].sum() == pytest.approx(tiny.truth["expected_total_counts"], rel=1e-6)
    marginals = {"CDS": (0,), "ScAtt": (1, 2, 3), "PsiChi": (0, 1, 2), "Phi": (0, 1, 3)}
    for what, axes in marginals.items():
        pearson_check(dense.sum(axis=axes), x["expected"].sum(axis=axes), f"local data per {what} bin")
    # the check can fail: the same data do not follow the expectation without the sky
    norms = {name: b["norm"] for name, b in tiny.truth["backgrounds"].items()}
    no_sky = np.asarray(x["dataset"].npred(np.zeros(tuple(x["dataset"].model_axes.nbins)), norms).contents)
    with pytest.raises(AssertionError):
        pearson_check(dense.sum(axis=(1, 2, 3)), no_sky.sum(axis=(1, 2, 3)), "local data without the sky")


def test_galactic_data_conserve_and_follow_rotated_expectation(tiny, tiny_expectation):
    from cosi_imaging_plugin.engine.galactic import rotate_to_galactic
    from cosi_imaging_plugin.io import read_histogram

    gal = read_histogram(tiny["data_galactic"], counts=True)
    assert list(gal.axes.labels) == ["Time", "Em", "Phi", "PsiChi"]
    assert gal.axes["PsiChi"].coordsys.name == "galactic"
    counts = np.asarray(gal.contents.todense())
    assert np.all(counts == np.round(counts))
    assert counts.sum() == tiny_expectation["data"].contents.sum()  # every count moved, none lost
    table = tiny_expectation["table"]
    attitudes = table.mean_attitudes()
    expected = rotate_to_galactic(tiny_expectation["expected"], attitudes, 4, 4)
    pearson_check(counts[0], expected, "Galactic-CDS data")
    # the same data do not follow a rotation with the wrong attitudes (the check can fail)
    wrong = rotate_to_galactic(tiny_expectation["expected"], np.broadcast_to(np.eye(3), attitudes.shape), 4, 4)
    use = wrong > 0.1
    x2_wrong = np.sum((counts[0][use] - wrong[use]) ** 2 / wrong[use])
    assert x2_wrong > use.sum() + 10 * math.sqrt(2 * use.sum())
    # the rotated templates conserve each template's counts
    for name, path in tiny.backgrounds_galactic.items():
        rotated = read_histogram(path)
        assert np.sum(rotated.contents) == pytest.approx(tiny.truth["backgrounds"][name]["template_counts"],
                                                         rel=1e-6)


def test_files_round_trip_through_package_readers(tiny):
    from cosi_imaging_plugin.engine import CCMMapping
    from cosi_imaging_plugin.exposure import ExposureTable, Orientation
    from cosi_imaging_plugin.io import (
        DeconvolutionParameters,
        FullDetectorResponse,
        check_axes_match,
        read_ccm,
        read_histogram,
    )

    config = SimulationConfig.from_dict(tiny.config)
    with FullDetectorResponse.open(tiny["response"]) as response:
        assert response.shape == (192, 1, 1, 6, 192)
        assert response.nside == 4
    orientation = Orientation.read(tiny["orientation"])
    assert len(orientation) == 361 and orientation.has_earth_info
    table = ExposureTable.read(tiny["exposure_table"])
    assert table.nside == 4 and table.exposure.sum() == pytest.approx(tiny.truth["livetime_s"])
    assert len(table) == tiny.truth["n_scatt_bins"]
    ccm = read_ccm(tiny["ccm"])
    # each CCM row integrates a pixel's visible time over NuLambda: at most the bin's exposure
    assert ccm.axes[0].nbins == len(table)
    assert np.all(CCMMapping(ccm).row_exposure <= table.exposure * (1 + 1e-9))
    data = read_histogram(tiny["data_scatt"], counts=True)
    assert list(data.axes.labels) == ["ScAtt", "Em", "Phi", "PsiChi"]
    assert data.axes["PsiChi"].coordsys.name == "spacecraftframe"
    assert data.contents.sum() == tiny.truth["observed_counts"]["data_scatt"]
    for name, path in tiny.backgrounds.items():
        template = read_histogram(path)
        check_axes_match(template.axes, data.axes, list(data.axes.labels), name, "data")
        assert np.sum(template.contents, dtype=np.float64) == pytest.approx(
            tiny.truth["backgrounds"][name]["template_counts"], rel=1e-6)
    params = DeconvolutionParameters.read(tiny["parameter_file"])
    assert params.get("model_definition:property:nside") == config.model_nside
    assert params.get("model_definition:property:energy_edges:value") == [509.0, 513.0]
    assert set(params.get("deconvolution:parameter:background_normalization_optimization:range")) == set(
        tiny.backgrounds)
    assert read_manifest(tiny.path).files == tiny.files


def test_files_round_trip_through_histpy(tiny):
    from histpy import Histogram

    data = Histogram.open(tiny["data_scatt"])
    assert data.is_sparse and list(data.axes.labels) == ["ScAtt", "Em", "Phi", "PsiChi"]
    np.testing.assert_array_equal(data.axes["ScAtt"].edges, np.arange(tiny.truth["n_scatt_bins"] + 1))
    assert data.axes["Em"].unit == "keV" and data.axes["Phi"].unit == "deg"
    assert data.axes["PsiChi"].nside == 4
    assert int(data.contents.sum()) == tiny.truth["observed_counts"]["data_scatt"]
    gal = Histogram.open(tiny["data_galactic"])
    assert gal.is_sparse and gal.axes["Time"].nbins == 1 and gal.axes["Time"].unit == "s"
    assert int(gal.contents.sum()) == tiny.truth["observed_counts"]["data_galactic"]
    ccm = Histogram.open(tiny["ccm"])
    assert list(ccm.axes.labels) == ["ScAtt", "lb", "NuLambda"] and ccm.unit == "s"
    for path in list(tiny.backgrounds.values()) + list(tiny.backgrounds_galactic.values()):
        template = Histogram.open(path)
        assert not template.is_sparse and np.all(np.asarray(template.contents) >= 0)
    with h5py.File(tiny["data_scatt"]) as f:
        assert f["hist"].attrs["format"] == "coo"


def _same_files(a, b):
    """Compare every written file of two dataset directories by content."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    # the run's log and report record when and how it ran: provenance, not data
    for name in sorted(set(names) - {"run.log", "report.html"}):
        pa, pb = a / name, b / name
        if name.endswith((".h5", ".hdf5")):
            with h5py.File(pa) as fa, h5py.File(pb) as fb:
                keys = []
                fa.visit(keys.append)
                other = []
                fb.visit(other.append)
                assert keys == other, name
                for key in keys:
                    if isinstance(fa[key], h5py.Dataset):
                        np.testing.assert_array_equal(fa[key][()], fb[key][()], err_msg=f"{name}:{key}")
                    attrs_a, attrs_b = dict(fa[key].attrs), dict(fb[key].attrs)
                    assert attrs_a.keys() == attrs_b.keys(), f"{name}:{key}"
                    for attr, value in attrs_a.items():
                        assert np.array_equal(np.asarray(value), np.asarray(attrs_b[attr])), f"{name}:{key}@{attr}"
        elif name.endswith(".fits"):
            with fits.open(pa) as fa, fits.open(pb) as fb:
                for ha, hb in zip(fa, fb):
                    if ha.data is None:
                        continue
                    for column in ha.columns.names:
                        for ra, rb in zip(ha.data[column], hb.data[column]):
                            np.testing.assert_array_equal(ra, rb, err_msg=f"{name}:{column}")
        else:
            assert pa.read_text() == pb.read_text(), name


def test_same_seed_same_files_other_seed_other_counts(tiny, tmp_path):
    again = simulate_dataset(tiny_config(), tmp_path / "again", progress=False)
    _same_files(tiny.directory, again.directory)
    other = simulate_dataset(tiny_config(seed=8, galactic=False), tmp_path / "other", progress=False)
    with h5py.File(tiny["data_scatt"]) as fa, h5py.File(other["data_scatt"]) as fb:
        assert not np.array_equal(fa["hist/contents/data"][()], fb["hist/contents/data"][()]) or not \
            np.array_equal(fa["hist/contents/coords"][()], fb["hist/contents/coords"][()])
    assert "data_galactic" not in other and not other.backgrounds_galactic


def test_sky_counts_match_the_orbit_integral(tmp_path):
    # A bright point source alone, seen without Earth occultation by an instrument whose
    # effective area A_on f(theta), f = ((1 + cos theta)/2)^1.5, is smooth on the whole sphere.
    # Independent prediction: mu = F_bin A_on sum_t dt f(theta_t) over the orbit samples.
    # The dataset folds through two bilinear HEALPix interpolations (source -> model pixels,
    # model pixels -> NuLambda), each off by at most (h^2/8)(|f_xx| + |f_yy|) <= 0.003 at NSIDE 8
    # (h = 0.128 rad, |f''| <= 0.75), i.e. <= 0.6% of the mean f ~ 0.5: 2% covers both with margin
    # for HEALPix's non-rectangular cells. The Poisson scatter of N adds 5 sqrt(mu).
    config = tiny_config(
        sky=[{"name": "bright", "type": "point", "l": 200.0, "b": -35.0,
              "spectrum": {"function": "Powerlaw", "K": 0.25, "piv": 511.0, "index": -2.0}}],
        backgrounds={}, galactic=False, earth_occultation=False, scatt_nside=8, model_nside=8,
        instrument={"file": "default", "overrides": {
            "effective_area": {"max_off_axis_deg": 180.0},
            "binning": {"nside": 8, "phi_edges_deg": {"start": 0.0, "stop": 180.0, "bins": 6},
                        "ei_edges_kev": [509.0, 513.0], "em_edges_kev": [509.0, 513.0]}}})
    manifest = simulate_dataset(config, tmp_path / "bright", progress=False)
    cfg = SimulationConfig.from_dict(config)
    from cosi_imaging_plugin.exposure import ExposureTable
    from cosi_imaging_plugin.geometry import lonlat_to_vec

    table = ExposureTable.read(manifest["exposure_table"])
    source = lonlat_to_vec(200.0, -35.0)
    total = 0.0
    for b in range(len(table)):
        z = lonlat_to_vec(table.zpointing[b][:, 0], table.zpointing[b][:, 1])
        theta = np.arccos(np.clip(z @ source, -1, 1))
        total += np.sum(table.delta_time[b] * cfg.instrument.off_axis_factor(theta))
    flux = manifest.truth["sources"][0]["flux_per_ei_bin"][0]
    mu = flux * cfg.instrument.mean_on_axis_area(509.0, 513.0) * total
    predicted = manifest.truth["expected_sky_counts"]
    assert predicted == pytest.approx(mu, rel=0.02)
    n = manifest.truth["observed_counts"]["data_scatt"]
    assert abs(n - predicted) < 5 * math.sqrt(predicted)
    assert abs(n - mu) < 0.02 * mu + 5 * math.sqrt(mu)


@pytest.mark.parametrize("change, named", [
    ({"colour": "blue"}, "colour"),
    ({"backgrounds": {"albedo": {"kind": "albedo", "rate": -0.1}}}, "backgrounds.albedo.rate"),
    ({"backgrounds": {"albedo": {"kind": "earth", "rate": 0.1}}}, "backgrounds.albedo.kind"),
    ({"backgrounds": {"albedo": {"kind": "albedo", "rate": 0.1, "nrom": 2}}}, "backgrounds.albedo.nrom"),
    ({"scatt_nside": 12}, "scatt_nside"),
    ({"model_nside": 6}, "model_nside"),
    ({"response_rtol": 1.5}, "response_rtol"),
    ({"seed": -1}, "seed"),
    ({"orbit": {"duration_s": -5.0}}, "duration_s"),
    ({"orbit": {"duration": 5.0}}, "duration"),
    ({"instrument": {"file": "default", "overrides": {"binning": {"nside": 12}}}}, "binning.nside"),
    ({"sky": [{"name": "x", "type": "point", "ra": 1.0, "dec": 1.0, "spectrum": {"function": "Nope"}}]}, "Nope"),
])
def test_bad_config_fails_before_any_file(tmp_path, change, named):
    config = tiny_config(**change)
    with pytest.raises(CosiInputError, match=named.replace(".", r"\.")):
        simulate_dataset(config, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_key_is_named():
    config = tiny_config()
    del config["model_nside"]
    with pytest.raises(CosiInputError, match="model_nside"):
        SimulationConfig.from_dict(config)


def test_interrupted_run_leaves_no_directory(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(draws_module, "fold_rows", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        simulate_dataset(tiny_config(), tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_is_kept_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        simulate_dataset(tiny_config(), out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_builtin_configs_load():
    names = builtin_config_names()
    assert set(names) >= {"mini_511keV", "dc2_511keV", "crab_continuum"}
    for name in ("mini_511keV", "dc2_511keV", "crab_continuum"):
        config = builtin_config(name)
        assert config.name == name
    mini = builtin_config("mini_511keV")
    assert mini.instrument.nside == 8 and len(mini.instrument.phi_edges) == 31
    assert [s["name"] for s in mini.sky] == ["bulge_511", "disk_511"]
    dc2 = builtin_config("dc2_511keV.yaml")
    assert dc2.instrument.nside == 16 and dc2.orbit.precession_period_days == 60.0
    crab = builtin_config("crab_continuum")
    assert crab.instrument.ei_edges[0] == 200.0 and crab.instrument.ei_edges[-1] == 5000.0
    with pytest.raises(CosiInputError, match="no_such"):
        builtin_config("no_such")


def test_config_reads_relative_instrument_path(tmp_path):
    instrument = tmp_path / "inst.yaml"
    instrument.write_text((REPO / "cosi_imaging_plugin" / "data" / "instrument" / "cosi_like.yaml").read_text())
    config = tiny_config(instrument={"file": "inst.yaml", "overrides": {"binning": {"nside": 4}}})
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump(config))
    loaded = SimulationConfig.read(tmp_path / "sim.yaml")
    assert loaded.instrument.nside == 4 and loaded.instrument_file == str(instrument.resolve())
