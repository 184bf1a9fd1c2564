"""The LIRA posterior mean as the starting point of a 3ML fit, as the RL image is."""
import warnings

import numpy as np
import pytest
from test_plugin import truth_image
from test_rl_initializer import TRUTH, CountingPlugin, blob, free_blob_model
from threeML import DataList, JointLikelihood

from cosi_imaging_plugin.threeml.rl_initializer import image_moments, initialize_from_image
from cosi_imaging_plugin.uncertainty import LIRA

from small_setup import dataset_for

warnings.filterwarnings("ignore")


@pytest.fixture(scope="module")
def lira_setup():
    dataset, _ = dataset_for(truth_image(blob()), background_norm=1.0, seed=21)
    result = LIRA(dataset, n_chains=2, n_samples=100, burn_in=100, seed=4, progress=False).run()
    return dataset, result.mean()


def test_posterior_mean_locates_the_source(lira_setup):
    _, mean = lira_setup
    moments = image_moments(mean, center=(0.0, 0.0), radius_deg=40.0)
    # the source sits at the Galactic centre (TRUTH is in ICRS): found within a model pixel (7.3 deg at NSIDE 8)
    assert np.hypot(((moments["l"] + 180) % 360) - 180, moments["b"]) < 7.3
    assert 0.3 * TRUTH["sigma"] < moments["sigma"] < 3 * TRUTH["sigma"]


def test_posterior_mean_start_converges_in_fewer_calls_to_the_same_optimum(lira_setup):
    dataset, mean = lira_setup
    fits = {}
    for label in ("default", "lira"):
        model = free_blob_model(lon0=230.0, lat0=-5.0, sigma=5.0, K=1e-4, index=-2.0)
        if label == "lira":
            initialize_from_image(model, mean)
        CountingPlugin.calls = 0
        jl = JointLikelihood(model, DataList(CountingPlugin("cosi", dataset)), verbose=False)
        results = jl.fit(quiet=True)[0]
        fits[label] = (CountingPlugin.calls, jl.results.get_statistic_frame()["-log(likelihood)"]["total"], results)
    (calls_default, like_default, res_default), (calls_lira, like_lira, res_lira) = fits["default"], fits["lira"]
    assert calls_lira < calls_default
    # the same optimum: -log(likelihood) within 0.01 (each parameter then within 0.14 of its error)
    assert like_lira == pytest.approx(like_default, abs=0.01)
    for name in res_lira.index:
        assert abs(res_lira.loc[name, "value"] - res_default.loc[name, "value"]) < 0.2 * res_lira.loc[name, "error"]
