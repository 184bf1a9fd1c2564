"""The RL image as the starting point of a 3ML fit."""
import warnings

import numpy as np
import pytest
from astromodels import ExtendedSource, Gaussian_on_sphere, Model, Powerlaw
from test_plugin import truth_image
from threeML import DataList, JointLikelihood

from cosi_imaging_plugin.deconvolution import ImageDeconvolution
from cosi_imaging_plugin.threeml import COSIImagingLike
from cosi_imaging_plugin.threeml.rl_initializer import image_moments, initialize_from_image, template_source

from small_setup import EI_EDGES, NSIDE_MODEL, dataset_for

warnings.filterwarnings("ignore")

TRUTH = {"lon0": 266.4, "lat0": -28.9, "sigma": 12.0, "K": 1e-3, "index": -2.0}


def blob(lon0=TRUTH["lon0"], lat0=TRUTH["lat0"], sigma=TRUTH["sigma"], K=TRUTH["K"], index=TRUTH["index"]):
    return ExtendedSource("blob", spatial_shape=Gaussian_on_sphere(lon0=lon0, lat0=lat0, sigma=sigma),
                          spectral_shape=Powerlaw(K=K, index=index, piv=500.0))


@pytest.fixture(scope="module")
def rl_setup():
    dataset, _ = dataset_for(truth_image(blob()), background_norm=1.0, seed=21)
    deconvolution = ImageDeconvolution()
    deconvolution.set_dataset([dataset])
    deconvolution.set_parameter({
        "model_definition": {
            "class": "AllSkyImage",
            "property": {"coordinate": "galactic", "nside": NSIDE_MODEL, "scheme": "ring",
                         "energy_edges": {"value": EI_EDGES, "unit": "keV"}, "unit": "cm-2 s-1 sr-1"},
            "initialization": {"algorithm": "flat", "parameter": {"value": [1e-5] * 3, "unit": "cm-2 s-1 sr-1"}}},
        "deconvolution": {"algorithm": "RL", "parameter": {
            "iteration_max": 30, "acceleration": {"activate": True, "alpha_max": 10.0, "line_search": True},
            "smoothing": {"activate": True, "FWHM": {"value": 10.0, "unit": "deg"}},
            "background_normalization_optimization": {"activate": True, "range": {"instrumental": [0.5, 2.0]}}}}})
    deconvolution.initialize()
    deconvolution.run_deconvolution(progress=False)
    return dataset, deconvolution.results[-1]["model"]


def free_blob_model(**start):
    model = Model(blob(**start))
    shape = model.blob.spatial_shape
    for name in ("lon0", "lat0", "sigma"):
        shape.parameters[name].free = True
    shape.lon0.bounds, shape.lat0.bounds, shape.sigma.bounds = (200, 330), (-80, 20), (1, 40)
    model.blob.spectrum.main.Powerlaw.K.bounds = (1e-7, 1e-1)
    return model


class CountingPlugin(COSIImagingLike):
    """Counts likelihood evaluations."""

    calls = 0

    def get_log_like(self):
        CountingPlugin.calls += 1
        return super().get_log_like()


def assert_locates_the_source(image):
    """The image's moments put the blob at the Galactic centre with a width near the truth."""
    moments = image_moments(image, center=(0.0, 0.0), radius_deg=40.0)
    # the Galactic centre (TRUTH is in ICRS), within a model pixel (7.3 deg at NSIDE 8)
    assert np.hypot(((moments["l"] + 180) % 360) - 180, moments["b"]) < 7.3
    assert 0.3 * TRUTH["sigma"] < moments["sigma"] < 3 * TRUTH["sigma"]


def assert_image_start_converges_in_fewer_calls(dataset, image):
    """A fit started from `image` reaches the default start's optimum in fewer likelihood calls."""
    fits = {}
    for label in ("default", "image"):
        model = free_blob_model(lon0=230.0, lat0=-5.0, sigma=5.0, K=1e-4, index=-2.0)
        if label == "image":
            initialize_from_image(model, image)
        CountingPlugin.calls = 0
        jl = JointLikelihood(model, DataList(CountingPlugin("cosi", dataset)), verbose=False)
        results = jl.fit(quiet=True)[0]
        fits[label] = (CountingPlugin.calls, jl.results.get_statistic_frame()["-log(likelihood)"]["total"], results)
    (calls_default, like_default, res_default), (calls_image, like_image, res_image) = fits["default"], fits["image"]
    assert calls_image < calls_default
    # the same optimum: -log(likelihood) within 0.01, so each parameter within sqrt(2 x 0.01) = 0.14 of its
    # error (a parabolic likelihood); 0.2 sigma bounds that
    assert like_image == pytest.approx(like_default, abs=0.01)
    for name in res_image.index:
        assert abs(res_image.loc[name, "value"] - res_default.loc[name, "value"]) < 0.2 * res_image.loc[name, "error"]


def test_moments_of_the_rl_image_locate_the_source(rl_setup):
    assert_locates_the_source(rl_setup[1])


def test_rl_start_converges_in_fewer_calls_to_the_same_optimum(rl_setup):
    assert_image_start_converges_in_fewer_calls(*rl_setup)


def test_template_source_from_rl_image_fits_its_normalization(rl_setup, tmp_path):
    dataset, image = rl_setup
    source = template_source("rl", image, Powerlaw(K=1e-3, index=-2.0, piv=500.0), tmp_path / "rl.fits")
    model = Model(source)
    plugin = COSIImagingLike("cosi", dataset)
    jl = JointLikelihood(model, DataList(plugin), verbose=False)
    results = jl.fit(quiet=True)[0]
    # the template carries the source: its fitted spectrum matches the injected one within 3 sigma
    k = results.loc["rl.spectrum.main.Powerlaw.K"]
    assert abs(k["value"] - TRUTH["K"]) < 3 * k["error"] + 0.1 * TRUTH["K"]


def test_a_peak_in_one_pixel_has_the_pixel_width_and_respects_hard_limits(rl_setup):
    _, image = rl_setup
    one_pixel = image.copy()
    one_pixel[:] = 0 * image.contents
    peak = int(np.argmax(image.contents.sum(axis=1)))
    one_pixel[peak, :] = image.contents[peak, :]
    pixel_area = 4 * np.pi / image.axes[0].nbins
    moments = image_moments(one_pixel, center=(0.0, 0.0), radius_deg=40.0)
    # a square pixel of area A: <theta^2> = A / 6 = 2 sigma^2
    assert moments["sigma"] == pytest.approx(np.degrees(np.sqrt(pixel_area / 12.0)), rel=1e-9)
    # an estimate (x1/4..x4 of 2.1 deg) entirely below the parameter's hard minimum leaves it as it was
    model = free_blob_model(sigma=20.0)
    model.blob.spatial_shape.sigma.min_value = 10.0
    initialize_from_image(model, one_pixel)
    assert model.blob.spatial_shape.sigma.value == 20.0
    assert model.blob.spatial_shape.sigma.bounds == (10.0, 40.0)
