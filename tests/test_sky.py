"""Rasterization of astromodels shapes and integration of spectra over energy bins."""
import warnings

import healpy as hp
import numpy as np
import pytest
from astromodels import Band, Disk_on_sphere, Gaussian, Gaussian_on_sphere, Powerlaw
from mhealpy import HealpixMap
from scipy import integrate, special

from cosi_imaging_plugin.errors import CosiInputError
from cosi_imaging_plugin.sky.rasterize import Rasterizer, frame_rotation
from cosi_imaging_plugin.sky.spectra import integrate_spectrum

warnings.filterwarnings("ignore")


def fine_integral(function, center, radius_deg, nside=2048):
    """Reference sky integral on a fine grid (pixel size 0.03 deg) over a disc holding the source."""
    pixels = hp.query_disc(nside, hp.ang2vec(*center, lonlat=True), np.radians(radius_deg))
    lon, lat = hp.pix2ang(nside, pixels, lonlat=True)
    return function(lon, lat).sum() * hp.nside2pixarea(nside)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 5.0])
def test_small_gaussian_keeps_its_flux_at_nside_16(sigma):
    shape = Gaussian_on_sphere(lon0=83.6, lat0=22.0, sigma=sigma)
    raster = Rasterizer(16)
    flux = raster(shape).sum() * raster.pixel_area
    # refinement contract: rtol=1e-3 of the total flux (the issue asks for 1% at sigma = 1 deg)
    assert flux == pytest.approx(fine_integral(shape, (83.6, 22.0), 10 * sigma), rel=1e-3)


@pytest.mark.parametrize("radius", [0.5, 3.0, 15.0])
def test_disk_edges_are_resolved(radius):
    shape = Disk_on_sphere(lon0=266.4, lat0=-28.9, radius=radius)
    raster = Rasterizer(16)
    reference = fine_integral(shape, (266.4, -28.9), radius + 1.0)
    assert raster(shape).sum() * raster.pixel_area == pytest.approx(reference, rel=1e-3)


def test_rasterized_source_sits_at_its_galactic_position():
    # the Galactic centre given in ICRS, as astromodels shapes take it
    shape = Gaussian_on_sphere(lon0=266.405, lat0=-28.936, sigma=2.0)
    raster = Rasterizer(16)
    image = raster(shape)
    lon, lat = hp.pix2ang(16, int(np.argmax(image)), lonlat=True)
    assert hp.rotator.angdist([lon, lat], [0.0, 0.0], lonlat=True)[0] < np.radians(hp.nside2resol(16, arcmin=True)
                                                                                   / 60.0)


def test_healpix_template_is_evaluated_in_its_own_frame(tmp_path):
    nside = 16
    values = np.zeros(hp.nside2npix(nside))
    pixel = hp.ang2pix(nside, 30.0, 10.0, lonlat=True)  # Galactic (30, 10)
    values[pixel] = 1.0 / hp.nside2pixarea(nside)
    path = tmp_path / "template.fits"
    HealpixMap(values, coordsys="G").write_map(str(path))
    from astromodels import SpatialTemplate_2D_Healpix

    template = SpatialTemplate_2D_Healpix(fits_file=str(path))
    image = Rasterizer(nside)(template)
    assert int(np.argmax(image)) == pixel
    assert image.sum() * hp.nside2pixarea(nside) == pytest.approx(1.0, rel=1e-3)


def test_point_weights_follow_the_direction():
    raster = Rasterizer(8)
    ra, dec = 10.0, -20.0
    pixels, weights = (np.ravel(a) for a in raster.point_weights(ra, dec))
    assert weights.sum() == pytest.approx(1.0)
    vec = frame_rotation("icrs", "galactic") @ hp.ang2vec(ra, dec, lonlat=True)
    centre = np.sum(weights * np.array(hp.pix2vec(8, pixels)), axis=1)
    assert np.degrees(np.arccos(np.dot(centre, vec) / np.linalg.norm(centre))) < hp.nside2resol(8, arcmin=True) / 60


def test_negative_or_nan_shape_is_an_error():
    with pytest.raises(CosiInputError, match="NaN"):
        Rasterizer(4)(lambda lon, lat: np.full_like(lon, np.nan))


# ---- spectra -------------------------------------------------------------------------------------
def test_power_law_integral_is_analytic():
    edges = np.geomspace(200, 5000, 9)
    K, index, piv = 1e-3, -2.3, 300.0
    flux = integrate_spectrum(Powerlaw(K=K, index=index, piv=piv), edges)
    exact = K * piv / (index + 1) * ((edges[1:] / piv) ** (index + 1) - (edges[:-1] / piv) ** (index + 1))
    np.testing.assert_allclose(flux, exact, rtol=1e-6)


@pytest.mark.parametrize("sigma", [2.0, 0.2, 0.02])
def test_narrow_line_integral(sigma):
    edges = np.array([505.0, 509.0, 513.0, 517.0])
    line = Gaussian(F=1e-3, mu=511.3, sigma=sigma)
    flux = integrate_spectrum(line, edges)
    cdf = 0.5 * (1 + special.erf((edges - 511.3) / (np.sqrt(2) * sigma)))
    np.testing.assert_allclose(flux, 1e-3 * np.diff(cdf), rtol=1e-4, atol=1e-4 * 1e-3)


def test_band_matches_adaptive_quadrature():
    band = Band(K=1e-4, alpha=-1.1, beta=-2.4, xp=400.0, piv=100.0)
    edges = np.geomspace(200, 5000, 6)
    reference = [integrate.quad(lambda e: float(band(np.array([e]))[0]), a, b, epsrel=1e-10)[0]
                 for a, b in zip(edges[:-1], edges[1:])]
    np.testing.assert_allclose(integrate_spectrum(band, edges), reference, rtol=1e-4)


def test_bad_edges_and_negative_spectrum():
    with pytest.raises(CosiInputError, match="increasing"):
        integrate_spectrum(Powerlaw(), [500.0, 200.0])
    with pytest.raises(CosiInputError, match="negative"):
        integrate_spectrum(lambda e: -np.ones_like(e), [100.0, 200.0])


def test_negative_values_allowed_when_asked():
    # a minimizer may try a negative normalization: allowed, and integrated linearly
    line = Gaussian(F=-1e-3, mu=511.0, sigma=1.0)
    flux = integrate_spectrum(line, [505.0, 517.0], allow_negative=True)
    assert flux[0] == pytest.approx(-1e-3 * special.erf(6 / np.sqrt(2)), rel=1e-6)
    with pytest.raises(CosiInputError, match="negative"):
        integrate_spectrum(line, [505.0, 517.0])
