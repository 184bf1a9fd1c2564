"""A small COSI-like analysis setup shared by the plugin tests.

NSIDE 4 response with three Ei/Em bins (a continuum instrument), one day of
rocking orbit, a CCM onto an NSIDE 8 model grid (model and response NSIDE
differ on purpose), and an instrument-frame background template. Data are
drawn by folding a sky image through the same engine.
"""
import functools
import warnings

import numpy as np
import sparse
from astropy import units as u
from histpy import Axes, Axis, Histogram

from cosi_imaging_plugin.datasets import COSIDataset
from cosi_imaging_plugin.engine import ColumnResponse, ResponseEngine
from cosi_imaging_plugin.exposure import ExposureTable, coordsys_conversion_matrix
from cosi_imaging_plugin.instrument.config import InstrumentConfig
from cosi_imaging_plugin.instrument.orbit import OrbitConfig, simulate_orbit
from cosi_imaging_plugin.instrument.response_generator import generate_response

warnings.filterwarnings("ignore", module="astromodels")

EI_EDGES = [200.0, 500.0, 1000.0, 2000.0]
NSIDE_RESPONSE, NSIDE_MODEL = 4, 8


@functools.cache
def generated_response():
    """The synthetic NSIDE 4 response with three Ei/Em bins (a GeneratedResponse)."""
    config = InstrumentConfig.default().updated({"binning": {
        "nside": NSIDE_RESPONSE, "phi_edges_deg": {"start": 0.0, "stop": 180.0, "bins": 18},
        "ei_edges_kev": EI_EDGES, "em_edges_kev": EI_EDGES}})
    return generate_response(config, progress=False)


def instrumental_template(ccm):
    """(data axes, background template) for the rows of `ccm`: isotropic in the spacecraft frame,
    proportional to each row's livetime."""
    generated = generated_response()
    data_axes = Axes([Axis(np.arange(ccm.axes[0].nbins + 1), label="ScAtt"), *generated.axes[2:]])
    row_exposure = ccm.contents.sum(axis=(1, 2)).todense() / ccm.axes[1].nbins
    per_bin = generated.contents.sum(axis=(0, 1))
    template = row_exposure[:, None, None, None] * per_bin[None] * 1e-5
    return data_axes, Histogram(data_axes, contents=template)


@functools.cache
def instrument():
    """(ColumnResponse, CCM histogram, data axes, background template) built once per session."""
    generated = generated_response()
    response = ColumnResponse.from_dense(generated.contents, generated.axes, u.cm**2, dtype=np.float64)
    orientation = simulate_orbit(OrbitConfig(duration_s=86400.0, cadence_s=120.0))
    table = ExposureTable.from_orientation(orientation, nside=NSIDE_RESPONSE)
    ccm = coordsys_conversion_matrix(table, NSIDE_MODEL, NSIDE_RESPONSE, use_averaged_pointing=True)
    data_axes, template = instrumental_template(ccm)
    return response, ccm, data_axes, template


def dataset_for(image, background_norm=1.0, seed=0, background=True):
    """(dataset of Poisson data drawn from `image` plus the background template if asked, expected counts)."""
    response, ccm, data_axes, template = instrument()
    expected = ResponseEngine.from_ccm(response, ccm, dtype=np.float64).expectation(image).contents
    if background:
        expected = expected + background_norm * template.contents
    counts = np.random.default_rng(seed).poisson(expected).astype(float)
    data = Histogram(data_axes, contents=sparse.COO.from_numpy(counts))
    backgrounds = {"instrumental": template} if background else None
    return COSIDataset.from_histograms(data, backgrounds, response, ccm, dtype=np.float64), expected
