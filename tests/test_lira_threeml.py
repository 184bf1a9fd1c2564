"""The LIRA posterior mean as the starting point of a 3ML fit, as the RL image is."""
import warnings

import pytest
from test_plugin import truth_image
from test_rl_initializer import assert_image_start_converges_in_fewer_calls, assert_locates_the_source, blob

from cosi_imaging_plugin.uncertainty import LIRA

from small_setup import dataset_for

warnings.filterwarnings("ignore")


@pytest.fixture(scope="module")
def lira_setup():
    dataset, _ = dataset_for(truth_image(blob()), background_norm=1.0, seed=21)
    result = LIRA(dataset, n_chains=2, n_samples=100, burn_in=100, seed=4, progress=False).run()
    return dataset, result.mean()


def test_posterior_mean_locates_the_source(lira_setup):
    assert_locates_the_source(lira_setup[1])


def test_posterior_mean_start_converges_in_fewer_calls_to_the_same_optimum(lira_setup):
    assert_image_start_converges_in_fewer_calls(*lira_setup)
