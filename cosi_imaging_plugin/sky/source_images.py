"""Sky images of astromodels sources on a HEALPix model grid.

One implementation serves the 3ML plugin, which folds these images through the
response, and the simulator, which draws data from them, so that a simulated
dataset and the plugin's model of it agree exactly.

- a point source is spread over the four pixels around it with HEALPix bilinear
  interpolation weights (its position is never snapped to a pixel centre);
- a separable extended source is its spatial shape averaged over ``4**level``
  sub-pixels of every pixel, times its spectrum integrated over each Ei bin;
- an extended source with energy-dependent morphology (an astromodels
  ``Function3D``) is integrated over each Ei bin with a fixed Gauss-Legendre rule
  in log-energy at the centres of four sub-pixels per pixel.

Spatial maps are in sr^-1 (they integrate to one over the sky); images are in
ph cm-2 s-1 sr-1 integrated over each Ei bin, arrays ``[n_pix, n_ei]``.
"""
import healpy as hp
import numpy as np

from ..errors import CosiInputError
from .rasterize import frame_rotation
from .spectra import integrate_spectrum

# 8-point Gauss-Legendre rule of the Function3D energy integrals (fixed: a smooth likelihood)
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(8)


def is_point_source(source):
    """True for an astromodels point source."""
    return hasattr(source, "position")


def has_energy_dependent_morphology(source):
    """True for an extended source whose spatial shape is an astromodels Function3D."""
    shape = getattr(source, "spatial_shape", None)
    return shape is not None and getattr(shape, "n_dim", 2) == 3


def source_spectrum(source):
    """Differential photon flux of a point or separable extended source, a function of energy in keV."""
    if is_point_source(source):
        return source
    return source.spectrum.main.shape


def point_source_direction(ra, dec):
    """Galactic unit vector of an ICRS direction (degrees)."""
    return frame_rotation("icrs", "galactic") @ hp.ang2vec(ra, dec, lonlat=True)


def point_source_map(rasterizer, ra, dec):
    """Spatial map (sr^-1) of a point source at ICRS (ra, dec) degrees: bilinear weights over four pixels."""
    pixels, weights = rasterizer.point_weights(ra, dec, frame="icrs")
    image = np.zeros(rasterizer.npix)
    np.add.at(image, pixels, weights / rasterizer.pixel_area)
    return image


def extended_source_map(shape, rasterizer, level, name="source"):
    """Spatial map (sr^-1) of an astromodels Function2D, averaged over ``4**level`` sub-pixels per pixel.

    Raises
    ------
    CosiInputError
        If the shape has no integral on the grid (smaller than the sub-pixels).
    """
    image = rasterizer(shape, level=level)
    integral = float(np.sum(image)) * rasterizer.pixel_area
    if not integral > 0:
        state = ", ".join(f"{key}={par.value:.6g}" for key, par in shape.parameters.items())
        raise CosiInputError(f"source '{name}': spatial shape {shape.name} integrates to {integral:g} over "
                             f"the model grid (NSIDE {rasterizer.nside}, {4 ** level} sub-pixels per pixel) at "
                             f"[{state}]: it has no sky integral there; a shape smaller than the sub-pixels "
                             f"needs a point source or a finer grid")
    return image


def function3d_image(source, rasterizer, ei_edges):
    """Image [n_pix, n_ei] of an extended source with energy-dependent morphology.

    Raises
    ------
    CosiInputError
        If the brightness is NaN, infinite or negative anywhere.
    """
    lo, hi = np.log(ei_edges[:-1]), np.log(ei_edges[1:])
    energies = np.exp(lo[:, None] + 0.5 * (hi - lo)[:, None] * (_NODES + 1.0))
    pixels = np.arange(rasterizer.npix)
    lon, lat = rasterizer.subpixel_lonlat(pixels, 1)
    values = np.asarray(source(lon, lat, energies.ravel()), dtype=np.float64)
    values = values.reshape(pixels.size, 4, *energies.shape).mean(axis=1)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise CosiInputError(f"source '{source.name}' returned NaN, infinite or negative brightness")
    # dE = E d(ln E)
    return np.einsum("jen,en,n->je", values, energies, _WEIGHTS) * 0.5 * (hi - lo)[None, :]


def source_image(source, rasterizer, ei_edges):
    """Sky image [n_pix, n_ei] of one point or extended source on the rasterizer's grid.

    Extended sources are split at the level the plugin fits them with
    (:meth:`~cosi_imaging_plugin.sky.rasterize.Rasterizer.level_for`). NaN or
    negative spectra are errors here.

    Parameters
    ----------
    source : astromodels PointSource or ExtendedSource
    rasterizer : cosi_imaging_plugin.sky.rasterize.Rasterizer
    ei_edges : array_like
        Ei bin edges in keV.

    Returns
    -------
    numpy.ndarray, shape (n_pix, n_ei)
        ph cm-2 s-1 sr-1 integrated over each Ei bin.
    """
    ei_edges = np.asarray(ei_edges, dtype=np.float64)
    if has_energy_dependent_morphology(source):
        return function3d_image(source, rasterizer, ei_edges)
    if is_point_source(source):
        spatial = point_source_map(rasterizer, source.position.get_ra(), source.position.get_dec())
    else:
        shape = source.spatial_shape
        spatial = extended_source_map(shape, rasterizer, rasterizer.level_for(shape), source.name)
    fluxes = integrate_spectrum(source_spectrum(source), ei_edges, allow_negative=False)
    return spatial[:, None] * fluxes[None, :]


def sky_image(sources, rasterizer, ei_edges):
    """Summed sky image of sources and the image of each.

    Returns
    -------
    total : numpy.ndarray, shape (n_pix, n_ei)
    per_source : dict of str to numpy.ndarray
    """
    per_source = {s.name: source_image(s, rasterizer, ei_edges) for s in sources}
    total = np.zeros((rasterizer.npix, len(ei_edges) - 1))
    for image in per_source.values():
        total += image
    return total, per_source
