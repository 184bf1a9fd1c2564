"""The Richardson-Lucy image as the starting point of a parametric 3ML fit.

Two uses:

- :func:`template_source`: the RL image itself as a HEALPix template source
  (astromodels ``SpatialTemplate_2D_Healpix``) whose spectrum and normalization
  3ML fits;
- :func:`initialize_from_image`: starting values and bounds for parametric shapes
  (centroid, width and flux of a Gaussian, a disk or a Galactic disk/Gaussian)
  from the image moments in a region around each source, applied to an
  astromodels ``Model`` before ``JointLikelihood.fit()``.
"""
import logging
from pathlib import Path

import healpy as hp
import numpy as np
from astromodels import ExtendedSource, SpatialTemplate_2D_Healpix
from astropy import units as u
from mhealpy import HealpixMap

from .._atomic import atomic_path
from ..binning import IMAGE_UNIT, dense_values, is_nested
from ..errors import CosiInputError
from ..sky.rasterize import frame_rotation, function_frame
from ..sky.sources import set_value_and_bounds
from ..sky.spectra import integrate_spectrum

logger = logging.getLogger(__name__)

# Spectral parameters that scale a spectrum linearly, in order of preference.
NORMALIZATION_PARAMETERS = ("K", "F", "norm", "A")


def _image_array(image):
    """(values [npix, n_ei] in ph cm-2 s-1 sr-1, HEALPix axis) of an image Histogram."""
    if not hasattr(image, "axes"):
        raise CosiInputError("the RL image must be a histpy Histogram over [lb, Ei]")
    values = dense_values(image, IMAGE_UNIT)
    if values.ndim == 1:
        values = values[:, None]
    return values, image.axes[0]


def _unit_vectors(axis):
    return np.array(hp.pix2vec(axis.nside, np.arange(axis.nbins), nest=is_nested(axis)))


def image_moments(image, center, radius_deg):
    """Flux, centroid and width of an image inside a disc around `center`.

    Parameters
    ----------
    image : histpy.Histogram
        Sky image over [lb (Galactic HEALPix), Ei] in ph cm-2 s-1 sr-1.
    center : tuple of float
        Galactic (l, b) in degrees of the region centre.
    radius_deg : float
        Region radius.

    Returns
    -------
    dict
        ``l``, ``b`` (centroid, deg), ``sigma`` (deg; the 2-D Gaussian width with
        the same mean squared distance, ``<theta^2> = 2 sigma^2``), ``flux`` per Ei
        bin (ph cm-2 s-1) and ``total_flux``.
    """
    values, axis = _image_array(image)
    vec = _unit_vectors(axis)
    c = hp.ang2vec(center[0], center[1], lonlat=True)
    inside = np.degrees(np.arccos(np.clip(c @ vec, -1, 1))) <= radius_deg
    if not np.any(inside):
        raise CosiInputError(f"no image pixel within {radius_deg} deg of (l, b) = {center}")
    pixel_area = 4 * np.pi / axis.nbins
    weights = np.clip(values[inside].sum(axis=1), 0, None)
    if weights.sum() <= 0:
        raise CosiInputError(f"the image has no positive flux within {radius_deg} deg of (l, b) = {center}")
    mean = (vec[:, inside] * weights).sum(axis=1)
    mean /= np.linalg.norm(mean)
    theta2 = np.arccos(np.clip(mean @ vec[:, inside], -1, 1)) ** 2
    # each pixel spreads its flux over its own area: a square of area A adds A / 6 to <theta^2>
    # (so a peak confined to one pixel still has the width the grid can resolve, not zero)
    sigma = np.degrees(np.sqrt(0.5 * (np.sum(weights * theta2) / weights.sum() + pixel_area / 6.0)))
    lon, lat = hp.vec2ang(mean, lonlat=True)
    flux = np.clip(values[inside], 0, None).sum(axis=0) * pixel_area
    return {"l": float(lon[0]), "b": float(lat[0]), "sigma": float(sigma), "flux": flux,
            "total_flux": float(flux.sum())}


def image_peaks(image, fraction=0.2):
    """Galactic (l, b) of the local maxima of an image brighter than `fraction` of its maximum.

    Parameters
    ----------
    image : histpy.Histogram
        Sky image over [lb, Ei] (summed over Ei).
    fraction : float
        Peaks fainter than this fraction of the brightest pixel are ignored.

    Returns
    -------
    list of (float, float)
        Brightest first.
    """
    values, axis = _image_array(image)
    brightness = values.sum(axis=1)
    nest = is_nested(axis)
    neighbours = hp.get_all_neighbours(axis.nside, np.arange(axis.nbins), nest=nest)
    padded = np.where(neighbours >= 0, brightness[neighbours], -np.inf)
    peaks = np.flatnonzero((brightness >= padded.max(axis=0)) & (brightness >= fraction * brightness.max())
                           & (brightness > 0))
    peaks = peaks[np.argsort(brightness[peaks])[::-1]]
    lon, lat = hp.pix2ang(axis.nside, peaks, nest=nest, lonlat=True)
    return list(zip(lon.tolist(), lat.tolist()))


def enclosing_radius(image, center, step_deg=5.0, max_deg=90.0, tolerance=0.05):
    """Smallest radius around `center` beyond which the enclosed flux grows by less than `tolerance`."""
    radius = step_deg
    flux = image_moments(image, center, radius)["total_flux"]
    while radius < max_deg:
        wider = image_moments(image, center, radius + step_deg)["total_flux"]
        if wider - flux <= tolerance * wider:
            break
        radius, flux = radius + step_deg, wider
    return radius


def _angle(a, b):
    return float(np.degrees(hp.rotator.angdist(a, b, lonlat=True))[0])


def _center_of(shape):
    """Galactic (l, b) of a moveable shape's current centre, or None."""
    params = shape.parameters
    if "l0" in params and "b0" in params:
        return float(params["l0"].value), float(params["b0"].value)
    if "lon0" in params and "lat0" in params:
        vec = hp.ang2vec(params["lon0"].value, params["lat0"].value, lonlat=True)
        frame = function_frame(shape)
        if frame != "galactic":
            vec = frame_rotation(frame, "galactic") @ vec
        lon, lat = hp.vec2ang(vec, lonlat=True)
        return float(lon[0]), float(lat[0])
    return None


def _set(parameter, value, lo, hi):
    """Set value and bounds, within the parameter's own hard limits where it has them."""
    if parameter.min_value is not None and parameter.min_value > lo:
        lo = parameter.min_value
    if parameter.max_value is not None and parameter.max_value < hi:
        hi = parameter.max_value
    if lo >= hi:
        logger.warning("%s: the RL image suggests %.4g, outside its allowed range [%s, %s]; kept at %.4g",
                       parameter.path, value, parameter.min_value, parameter.max_value, parameter.value)
        return
    set_value_and_bounds(parameter, float(np.clip(value, lo, hi)), min_value=lo, max_value=hi)


def _set_if_free(parameter, value, lo, hi):
    if parameter.free:
        _set(parameter, value, lo, hi)


def _set_position(shape, gal_lon, gal_lat, sigma):
    params = shape.parameters
    span = max(3 * sigma, 2.0)
    if "l0" in params:
        _set_if_free(params["l0"], gal_lon, gal_lon - span, gal_lon + span)
        _set_if_free(params["b0"], gal_lat, max(-90.0, gal_lat - span), min(90.0, gal_lat + span))
        return
    frame = function_frame(shape)
    vec = hp.ang2vec(gal_lon, gal_lat, lonlat=True)
    if frame != "galactic":
        vec = frame_rotation("galactic", frame) @ vec
    lon, lat = (float(a[0]) for a in hp.vec2ang(vec, lonlat=True))
    span_lon = span / max(np.cos(np.radians(lat)), 0.1)
    _set_if_free(params["lon0"], lon, lon - span_lon, lon + span_lon)
    _set_if_free(params["lat0"], lat, max(-90.0, lat - span), min(90.0, lat + span))


def _set_size(shape, sigma):
    """Size parameters from the 2-D Gaussian width of the same second moment."""
    params = shape.parameters
    sizes = {
        "sigma": sigma,                         # Gaussian_on_sphere
        "radius": 2.0 * sigma,                  # uniform disk: <theta^2> = r^2 / 2
        "sigma_l": sigma, "sigma_b": sigma,     # Galactic_gaussian
        "scale_height": sigma / np.sqrt(2.0),   # exponential in b: <b^2> = 2 h^2
    }
    for name, value in sizes.items():
        if name in params:
            _set_if_free(params[name], value, value / 4.0, value * 4.0)


def _set_normalization(spectrum, ei_edges, target_flux):
    """Scale the free normalization so the flux over the Ei bins equals `target_flux`."""
    for name in NORMALIZATION_PARAMETERS:
        if name in spectrum.parameters and spectrum.parameters[name].free:
            parameter = spectrum.parameters[name]
            current = float(np.sum(integrate_spectrum(spectrum, ei_edges, allow_negative=True)))
            if current <= 0:
                return None
            value = parameter.value * target_flux / current
            _set(parameter, value, value / 10.0, value * 10.0)
            return name
    return None


def initialize_from_image(model, image, radius_deg=None, sources=None):
    """Starting values and bounds of parametric extended sources from an RL image.

    For each extended source (or those named in `sources`), the image moments in
    a disc around the image peak nearest to the source's current centre give the
    centroid, the width and the flux; they set the free position, size and
    spectral normalization parameters with bounds (position +- 3 widths, size
    /4..x4, normalization /10..x10). The disc radius is where the enclosed flux
    stops growing; sources sharing a peak share its flux equally.

    Parameters
    ----------
    model : astromodels.Model
        Modified in place.
    image : histpy.Histogram
        RL image over [lb, Ei] (ph cm-2 s-1 sr-1).
    radius_deg : float, optional
        Region radius; by default the radius beyond which the enclosed flux grows by less than 5%.
    sources : iterable of str, optional
        Names of the sources to initialize (default: every extended source).

    Returns
    -------
    dict
        The moments used for each source.
    """
    ei_edges = image.axes[1].edges.to_value(u.keV)
    names = list(sources) if sources is not None else list(model.extended_sources)
    unknown = [name for name in names if name not in model.extended_sources]
    if unknown:
        raise CosiInputError(f"{unknown} are not extended sources of the model "
                             f"(extended sources: {list(model.extended_sources)})")
    peaks = image_peaks(image)
    if not peaks:
        raise CosiInputError("the RL image has no positive peak to initialize from")
    # the significant image peak nearest to where the model puts each source
    chosen = {}
    for name in names:
        center = _center_of(model.extended_sources[name].spatial_shape)
        chosen[name] = None if center is None else min(peaks, key=lambda p: _angle(p, center))
    used = {}
    for name in names:
        source = model.extended_sources[name]
        shape = source.spatial_shape
        peak = chosen[name]
        if peak is None:
            logger.info("source %s: shape %s has no centre; only its normalization is set", name, shape.name)
            moments = {"total_flux": float(_image_array(image)[0].clip(0).sum() * 4 * np.pi / image.axes[0].nbins)}
            sharing = sum(1 for p in chosen.values() if p is None)
        else:
            radius = radius_deg or enclosing_radius(image, peak)
            moments = image_moments(image, peak, radius)
            _set_position(shape, moments["l"], moments["b"], moments["sigma"])
            _set_size(shape, moments["sigma"])
            sharing = sum(1 for p in chosen.values() if p == peak)
        # overlapping components (e.g. a bulge and a disk) share the flux of their peak
        normalization = _set_normalization(source.spectrum.main.shape, ei_edges, moments["total_flux"] / sharing)
        logger.info("source %s initialized from the RL image: %s (normalization %s)", name,
                    {k: v for k, v in moments.items() if k != "flux"}, normalization)
        used[name] = moments
    return used


def template_source(name, image, spectrum, path, overwrite=True):
    """An extended source whose morphology is the RL image (a HEALPix template).

    Parameters
    ----------
    name : str
        Source name.
    image : histpy.Histogram
        RL image over [lb, Ei]; summed over Ei and normalized to one over the sky.
    spectrum : astromodels Function1D
        Spectral shape; its normalization is set to the image's total flux over the Ei bins.
    path : str or pathlib.Path
        FITS file written for the template (astromodels reads templates from files).

    Returns
    -------
    astromodels.ExtendedSource
    """
    values, axis = _image_array(image)
    brightness = np.clip(values.sum(axis=1), 0, None)
    total = brightness.sum() * 4 * np.pi / axis.nbins
    if total <= 0:
        raise CosiInputError("the RL image has no positive flux")
    shape = healpix_template(brightness, path, str(axis.scheme), "G", overwrite=overwrite)
    _set_normalization(spectrum, image.axes[1].edges.to_value(u.keV), total)
    return ExtendedSource(name, spatial_shape=shape, spectral_shape=spectrum)


def healpix_template(brightness, path, scheme, coordsys, overwrite=True, header=()):
    """astromodels' ``SpatialTemplate_2D_Healpix`` of a map, normalised to one over the sphere.

    Parameters
    ----------
    brightness : numpy.ndarray
        Non-negative HEALPix map (any normalisation).
    path : str or pathlib.Path
        FITS file written (atomically) for the template: astromodels reads templates from files.
    scheme : {'ring', 'nested'}
    coordsys : {'G', 'C'}
        Frame of the map (Galactic, equatorial), in which the template takes its coordinates.
    overwrite : bool
    header : iterable of (keyword, value, comment)
        Extra header cards.

    Returns
    -------
    astromodels.SpatialTemplate_2D_Healpix
    """
    total = brightness.sum() * 4 * np.pi / brightness.size
    if not np.isfinite(total) or total <= 0 or np.any(brightness < 0):
        raise CosiInputError(f"template {path}: the map must be non-negative with a positive total, not {total}")
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        HealpixMap(brightness / total, scheme=scheme.upper(), coordsys=coordsys).write_map(
            str(tmp), overwrite=True, extra_header=[("BUNIT", "sr-1", "surface density"), *header])
    return SpatialTemplate_2D_Healpix(fits_file=str(path))
