"""A point source over one day of rocking orbit, folded along its path (shared by the point-source tests).

The setup of ``small_setup.py`` (NSIDE 4 response, NSIDE 8 model grid, one day of
rocking orbit) with a CCM built from every pointing of the exposure table, so that
the dataset knows the attitudes of its rows. Data are drawn from the path fold (as
the simulator draws them).
"""
import functools

import healpy as hp
import numpy as np
import sparse
from astromodels import Model, PointSource, Powerlaw
from histpy import Axes, HealpixAxis, Histogram

from cosi_imaging_plugin.datasets import COSIDataset
from cosi_imaging_plugin.exposure import ExposureTable, attitude_bins, coordsys_conversion_matrix
from cosi_imaging_plugin.instrument.orbit import OrbitConfig, simulate_orbit
from cosi_imaging_plugin.sky.rasterize import frame_rotation
from cosi_imaging_plugin.threeml import COSIImagingLike

from small_setup import NSIDE_MODEL, NSIDE_RESPONSE, instrument, instrumental_template

TRUTH = {"K": 2e-4, "index": -2.1}
#: Attitude sampling of the day of orbit: 2880 attitudes.
CADENCE_S = 30.0


def crab(ra=83.63, dec=22.01, K=TRUTH["K"], index=TRUTH["index"]):
    return PointSource("crab", ra=ra, dec=dec, spectral_shape=Powerlaw(K=K, index=index, piv=500.0))


def icrs_of_galactic(lon, lat):
    """(ra, dec) in degrees of a Galactic direction."""
    vec = frame_rotation("galactic", "icrs") @ hp.ang2vec(lon, lat, lonlat=True)
    ra, dec = hp.vec2ang(vec, lonlat=True)
    return float(ra[0]), float(dec[0])


@functools.cache
def exposure_table():
    """The ScAtt bins of the day of orbit at the response's NSIDE."""
    orientation = simulate_orbit(OrbitConfig(duration_s=86400.0, cadence_s=CADENCE_S))
    return ExposureTable.from_orientation(orientation, nside=NSIDE_RESPONSE)


@functools.cache
def datasets(nside_model=NSIDE_MODEL):
    """(dataset with attitudes, the same without) on the template's counts; their CCM uses every pointing.

    `nside_model` is the model grid's; the background template is the same for every grid.
    """
    response = instrument()[0]
    table = exposure_table()
    _, template = instrumental_template(coordsys_conversion_matrix(table, NSIDE_MODEL, NSIDE_RESPONSE))
    ccm = coordsys_conversion_matrix(table, nside_model, NSIDE_RESPONSE)
    grid = COSIDataset.from_histograms(template, {"instrumental": template}, response, ccm, dtype=np.float64)
    path = COSIDataset(grid.engine, counts=template, backgrounds={"instrumental": template},
                       attitudes=attitude_bins(table))
    return path, grid


def draw(dataset, sources, seed, background_norm=1.0, background_name="instrumental"):
    """Poisson counts of `sources` (one or a list) folded along their path, plus the background, on `dataset`'s
    binning."""
    plugin = COSIImagingLike("truth", dataset)
    plugin.set_model(Model(*np.atleast_1d(sources)))
    plugin.background_parameters[background_name].value = background_norm
    expected = np.asarray(plugin.get_model_counts().contents)
    counts = np.random.default_rng(seed).poisson(expected).astype(float)
    return Histogram(dataset.data_axes, contents=sparse.COO.from_numpy(counts))


@functools.cache
def galactic_datasets():
    """(Galactic-CDS dataset folding point sources along their path, the same folding them on its grid).

    The day of orbit in ScAtt bins rotates the NSIDE 4 response onto Galactic PsiChi (NSIDE 4), each bin by its
    mean attitude, with a CCM onto the NSIDE 8 model grid from every pointing; float64 values, no truncation. The
    counts are a flat background template.
    """
    response = instrument()[0]
    psichi = HealpixAxis(nside=NSIDE_RESPONSE, scheme="ring", coordsys="galactic", label="PsiChi")
    axes = Axes([response.axes["Em"], response.axes["Phi"], psichi])
    template = Histogram(axes, contents=np.full(tuple(axes.nbins), 0.05))
    table = exposure_table()
    ccm = coordsys_conversion_matrix(table, NSIDE_MODEL, NSIDE_RESPONSE)
    path = COSIDataset.from_files(response, template, {"flat": template}, ccm=ccm, exposure_table=table,
                                  rtol=0.0, dtype=np.float64, progress=False)
    grid = COSIDataset(path.engine, counts=path.counts, backgrounds=path.backgrounds)
    return path, grid
