"""Sky functions onto a HEALPix grid: pixel-averaged surface brightness.

astromodels spatial functions (``Function2D``) return a surface brightness in
sr^-1 at (lon, lat) in the frame of their parameters, which for astromodels is
ICRS (R.A., Dec.) unless stated otherwise. The model grid of the engine is
Galactic. Each pixel value is the mean of the function over the pixel, taken on
its NESTED sub-pixels; pixels whose mean still changes when the sub-pixels are
split again are refined, so a source much smaller than a pixel keeps its flux.
"""
import functools

import healpy as hp
import numpy as np
from astropy.coordinates import FK5, ICRS, CartesianRepresentation, Galactic, SkyCoord

from ..binning import normalize_scheme
from ..errors import CosiInputError

# Parameters that set the angular scale of astromodels' shapes (degrees).
_SIZE_PARAMETERS = ("sigma", "radius", "a", "b", "sigma_l", "sigma_b", "scale_height")


@functools.cache
def frame_rotation(source="galactic", target="icrs"):
    """3x3 matrix taking unit vectors from one celestial frame to another (both fixed frames)."""
    frames = {"galactic": Galactic(), "icrs": ICRS(), "fk5": FK5()}
    if source not in frames or target not in frames:
        raise CosiInputError(f"unsupported frame pair {source!r} -> {target!r}; use one of {sorted(frames)}")
    basis = SkyCoord(CartesianRepresentation(np.eye(3)), frame=frames[source]).transform_to(frames[target])
    return basis.cartesian.xyz.value  # column i = image of basis vector i


def function_frame(function, default="icrs"):
    """Frame in which an astromodels function takes (lon, lat).

    Most shapes take ICRS; templates carry their own frame (``SpatialTemplate_2D``
    as a property string, ``SpatialTemplate_2D_Healpix`` as an astropy frame).
    """
    frame = getattr(function, "frame", None)
    frame = getattr(frame, "value", frame)
    name = frame if isinstance(frame, str) else getattr(frame, "name", None)
    return name.lower() if name else default


def _lonlat(vectors):
    lon = np.degrees(np.arctan2(vectors[1], vectors[0])) % 360.0
    lat = np.degrees(np.arcsin(np.clip(vectors[2], -1.0, 1.0)))
    return lon, lat


def _nest_index(nside, scheme):
    npix = hp.nside2npix(nside)
    return hp.ring2nest(nside, np.arange(npix)) if scheme.lower() == "ring" else np.arange(npix)


class Rasterizer:
    """Pixel-averaged values of sky functions on one HEALPix grid.

    Parameters
    ----------
    nside : int
        NSIDE of the model grid.
    scheme : {'ring', 'nested'}
        Pixel ordering of the model grid.
    grid_frame : {'galactic', 'icrs'}
        Frame of the model grid.
    function_frame : {'icrs', 'galactic'}
        Frame in which the functions take (lon, lat); astromodels' convention is ICRS.
    rtol : float
        Refinement stops when the summed change of the flux of the refined
        pixels is below ``rtol`` times the total flux.
    max_level : int
        Deepest split: a pixel is cut into at most ``4**max_level`` sub-pixels.
    """

    def __init__(self, nside, scheme="ring", grid_frame="galactic", function_frame="icrs", rtol=1e-3,
                 max_level=8):
        self.nside = int(nside)
        self.scheme = normalize_scheme(scheme)
        self.nested = self.scheme == "nested"
        self.npix = hp.nside2npix(self.nside)
        self.pixel_area = 4 * np.pi / self.npix
        self.rtol = rtol
        self.max_level = max_level
        self.grid_frame = grid_frame
        self.function_frame = function_frame
        self._nest = _nest_index(self.nside, self.scheme)
        self._neighbours = hp.get_all_neighbours(self.nside, np.arange(self.npix), nest=self.nested).T
        # sub-pixel centres of the whole grid by (level, frame): a fit rasterizes the same grid at every fold
        self._all_subpixels = {}

    def rotation(self, frame):
        """Matrix taking grid-frame unit vectors to `frame`."""
        return np.eye(3) if frame == self.grid_frame else frame_rotation(self.grid_frame, frame)

    def subpixel_lonlat(self, pixels, level, frame=None):
        """(lon, lat) in `frame` (default: the function frame) of the 4**level sub-pixel centres of each pixel."""
        frame = frame or self.function_frame
        if len(pixels) == self.npix and np.array_equal(pixels, np.arange(self.npix)):
            key = (int(level), frame)
            if key not in self._all_subpixels:
                lon, lat = self._subpixel_lonlat(pixels, level, frame)
                lon.flags.writeable = lat.flags.writeable = False  # shared by every later call
                self._all_subpixels[key] = (lon, lat)
            return self._all_subpixels[key]
        return self._subpixel_lonlat(pixels, level, frame)

    def _subpixel_lonlat(self, pixels, level, frame):
        children = (self._nest[pixels][:, None] * 4**level + np.arange(4**level)[None, :]).ravel()
        vec = np.array(hp.pix2vec(self.nside * 2**level, children, nest=True))
        return _lonlat(self.rotation(frame) @ vec)

    def _mean(self, function, pixels, level):
        """Mean and spread (max - min) of the function over the sub-pixels of each pixel."""
        lon, lat = self.subpixel_lonlat(pixels, level, function_frame(function, self.function_frame))
        values = np.asarray(function(lon, lat), dtype=np.float64).reshape(len(pixels), 4**level)
        if not np.all(np.isfinite(values)):
            raise CosiInputError(f"spatial function {_name(function)} returned NaN or infinite values")
        if np.any(values < 0):
            raise CosiInputError(f"spatial function {_name(function)} returned negative values")
        return values.mean(axis=1), np.ptp(values, axis=1)

    def _start_levels(self, function):
        """Level 1 everywhere; deeper around the centre of a small moveable shape."""
        levels = np.ones(self.npix, dtype=int)
        center, size = _center_and_size(function)
        if center is not None and size is not None:
            pixel_size = np.degrees(np.sqrt(self.pixel_area))
            deep = int(np.clip(np.ceil(np.log2(2 * pixel_size / size)), 1, self.max_level))
            frame = function_frame(function, self.function_frame)
            vec = self.rotation(frame).T @ hp.ang2vec(center[0], center[1], lonlat=True)
            near = hp.query_disc(self.nside, vec, np.radians(6 * size) + 2 * np.sqrt(self.pixel_area),
                                 inclusive=True, nest=self.nested)
            levels[near] = deep
        return levels

    def _mean_at(self, function, pixels, levels):
        """Means and spreads of `pixels`, each split at its own level."""
        mean, spread = np.empty(pixels.size), np.empty(pixels.size)
        for level in np.unique(levels):
            sel = levels == level
            mean[sel], spread[sel] = self._mean(function, pixels[sel], level)
        return mean, spread

    def level_for(self, function, default=3, max_level=4):
        """Uniform split level for fitting `function`, fixed by its definition, not its current values.

        Sub-pixels are at most half the smallest size the shape may take (the lower
        bound of its size parameters); without such bounds, ``default``. A level
        that depended on the current values would make cached and fresh
        evaluations of the same model differ.
        """
        params = getattr(function, "parameters", {})
        floors = [float(params[name].min_value) for name in _SIZE_PARAMETERS
                  if name in params and params[name].min_value is not None and params[name].min_value > 0]
        if not floors:
            return default
        pixel_size = np.degrees(np.sqrt(self.pixel_area))
        return int(np.clip(np.ceil(np.log2(2 * pixel_size / min(floors))), 1, max_level))

    def __call__(self, function, level=None):
        """Pixel means [npix] of ``function(lon, lat)`` (same unit as the function, e.g. sr^-1).

        Parameters
        ----------
        function : callable
            An astromodels Function2D or any ``f(lon, lat)``.
        level : int, optional
            Split every pixel into ``4**level`` sub-pixels, the same everywhere: the
            result is then a smooth function of the shape's parameters, which a
            minimizer needs. By default the split is adaptive: pixels whose
            sub-pixel values differ (edges, steep gradients) are split further until
            the summed change of their flux between two levels is below ``rtol``
            times the total flux, or ``max_level`` is reached.
        """
        if level is not None:
            return self._mean(function, np.arange(self.npix), int(level))[0]
        levels = self._start_levels(function)
        everything = np.arange(self.npix)
        image, spread = self._mean_at(function, everything, levels)
        # an edge may fall between sub-pixel centres: a jump to a neighbour flags it too
        jump = np.nanmax(np.abs(image[:, None] - np.where(self._neighbours >= 0, image[self._neighbours], np.nan)),
                         axis=1)
        threshold = 1e-3 * self.rtol * max(np.sum(image) * self.pixel_area, np.finfo(float).tiny)
        # once flagged, a pixel is refined until the flux of all flagged pixels converges
        flagged = np.maximum(spread, jump) * self.pixel_area > threshold
        while True:
            active = np.flatnonzero(flagged & (levels < self.max_level))
            if active.size == 0:
                return image
            refined, spread[active] = self._mean_at(function, active, levels[active] + 1)
            change = np.abs(refined - image[active]).sum() * self.pixel_area
            image[active] = refined
            levels[active] += 1
            flagged[active] |= spread[active] * self.pixel_area > threshold
            if change <= self.rtol * max(np.sum(image) * self.pixel_area, np.finfo(float).tiny):
                return image

    def point_weights(self, lon, lat, frame=None):
        """Bilinear interpolation pixels and weights of a direction given in `frame` (default: the function frame)."""
        vec = self.rotation(frame or self.function_frame).T @ hp.ang2vec(lon, lat, lonlat=True)
        theta, phi = hp.vec2ang(vec)
        return hp.get_interp_weights(self.nside, theta, phi, nest=self.nested)


def _center_and_size(function):
    params = getattr(function, "parameters", {})
    center = None
    if "lon0" in params and "lat0" in params:
        center = (float(params["lon0"].value), float(params["lat0"].value))
    sizes = [float(params[name].value) for name in _SIZE_PARAMETERS if name in params]
    sizes = [s for s in sizes if s > 0]
    return center, (min(sizes) if sizes else None)


def _name(function):
    return getattr(function, "name", None) or type(function).__name__
