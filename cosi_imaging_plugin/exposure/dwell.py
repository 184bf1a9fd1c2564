"""Dwell-time maps: how long a sky direction spends at each spacecraft-frame (NuLambda) pixel.

For attitude t with rotation ``R_t`` (columns: spacecraft x, y, z in Galactic
coordinates) a Galactic direction n is seen at ``R_t^T n``. Its time ``dt_t`` is
spread over the four nearest NuLambda pixels with the bilinear HEALPix
interpolation weights (``healpy.get_interp_weights``), which sum to one. The
same kernel, applied to every model pixel, gives the coordinate conversion
matrix (:mod:`cosi_imaging_plugin.exposure.ccm`).
"""
import logging

import astropy.units as u
import healpy as hp
import numpy as np
import scoords  # noqa: F401  (registers the 'spacecraftframe' astropy frame)
from histpy import HealpixAxis, Histogram
from tqdm.auto import tqdm

from ..binning import check_nside, normalize_scheme
from ..errors import CosiInputError
from ..geometry import galactic_vectors, rotation_from_axes, visible_mask
from .exposure_table import ExposureTable
from .orientation import Orientation

logger = logging.getLogger(__name__)

# Attitude x direction pairs evaluated at once: bounds the temporary arrays to ~100 MB.
CHUNK = 1 << 20
# Show a progress bar by default when a build evaluates more pairs than this.
_PROGRESS_THRESHOLD = 1 << 24


def spacecraft_axis(nside, scheme="ring", label="NuLambda"):
    """HEALPix axis in the spacecraft frame (as the response's NuLambda axis)."""
    scheme = normalize_scheme(scheme)
    return HealpixAxis(nside=check_nside(nside, scheme), scheme=scheme, coordsys="spacecraftframe", label=label)


def show_progress(progress, work):
    """Resolve a ``progress`` argument (None = automatic for long builds)."""
    return bool(progress) if progress is not None else work > _PROGRESS_THRESHOLD


def sum_by_key(keys, values, size):
    """Sum values with equal keys; return sorted unique keys with non-zero sums.

    Dense ``bincount`` when the keys are dense enough, ``unique`` otherwise.
    """
    if keys.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    if keys.size * 4 >= size:
        dense = np.bincount(keys, weights=values, minlength=size)
        nz = np.flatnonzero(dense)
        return nz, dense[nz]
    uniq, inverse = np.unique(keys, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=values)
    nz = sums != 0
    return uniq[nz], sums[nz]


class _Accumulator:
    """Sparse sum of (key, value) pairs arriving in chunks."""

    def __init__(self, size):
        self.size = size
        self._keys, self._values = [], []

    def add(self, keys, values):
        keys, values = sum_by_key(keys, values, self.size)
        self._keys.append(keys)
        self._values.append(values)

    def result(self):
        if not self._keys:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        if len(self._keys) == 1:
            return self._keys[0], self._values[0]
        return sum_by_key(np.concatenate(self._keys), np.concatenate(self._values), self.size)


def fold_directions(rotations, weights, directions, nside, nest, accumulator):
    """Add ``weights[t, j]`` of direction j seen in attitude t to the NuLambda pixels.

    Parameters
    ----------
    rotations : numpy.ndarray, shape (k, 3, 3)
        Attitude rotation matrices (columns x, y, z in Galactic coordinates).
    weights : numpy.ndarray, shape (k, J)
        Time of each (attitude, direction) pair, seconds.
    directions : numpy.ndarray, shape (J, 3)
        Galactic unit vectors.
    nside : int
        NSIDE of the spacecraft-frame grid.
    nest : bool
        Nested scheme of the spacecraft-frame grid.
    accumulator : _Accumulator
        Receives keys ``j * npix + pixel``.
    """
    npix = hp.nside2npix(nside)
    sc = np.einsum("kba,jb->kja", rotations, directions)  # R^T n for every pair
    theta = np.arctan2(np.hypot(sc[..., 0], sc[..., 1]), sc[..., 2])
    phi = np.arctan2(sc[..., 1], sc[..., 0])
    pixels, interp = hp.get_interp_weights(nside, theta.ravel(), phi.ravel(), nest=nest)
    values = interp * weights.ravel()[None, :]
    rows = np.broadcast_to(np.arange(directions.shape[0], dtype=np.int64)[None, :], theta.shape).ravel()
    keys = rows[None, :] * npix + pixels
    keep = values != 0
    accumulator.add(keys[keep], values[keep])


def fold_attitudes(x_vec, z_vec, times, directions, nside, nest, accumulator,
                   zenith=None, altitude=None, progress=None, description="dwell time"):
    """Fold directions through many attitudes, in chunks (no loop over pixels).

    Parameters
    ----------
    x_vec, z_vec : numpy.ndarray, shape (k, 3)
        Galactic unit vectors of the spacecraft x and z axes.
    times : numpy.ndarray, shape (k,)
        Time of each attitude, seconds.
    directions : numpy.ndarray, shape (J, 3)
        Galactic unit vectors.
    nside, nest : int, bool
        Spacecraft-frame grid.
    accumulator : _Accumulator
    zenith, altitude : numpy.ndarray, optional
        Earth zenith vectors (k, 3) and altitudes in km (k,); when given,
        directions below the Earth limb get no time.
    progress : bool or None
        Progress bar over chunks (None: only for long builds).
    description : str
        Progress-bar label.
    """
    k, n_dir = len(times), directions.shape[0]
    step = max(1, CHUNK // n_dir)
    starts = range(0, k, step)
    for s in tqdm(starts, desc=description, unit="chunk", disable=not show_progress(progress, k * n_dir),
                  leave=False):
        sl = slice(s, s + step)
        weights = np.broadcast_to(times[sl, None], (len(times[sl]), n_dir))
        if zenith is not None:
            weights = weights * visible_mask(zenith[sl], altitude[sl], directions)
        fold_directions(rotation_from_axes(x_vec[sl], z_vec[sl]), weights, directions, nside, nest, accumulator)


def dwell_time_map(orientation, direction, nside, scheme="ring", earth_occultation=False,
                   use_livetime=True, progress=None):
    """Time a fixed sky direction spends at each spacecraft-frame pixel.

    Parameters
    ----------
    orientation : Orientation
        Attitude timeline; interval ``[t_i, t_{i+1})`` uses the attitude at ``t_i``.
    direction : astropy.coordinates.SkyCoord or array_like
        One sky direction (or a Galactic unit vector).
    nside : int
        NSIDE of the spacecraft-frame (NuLambda) grid.
    scheme : {'ring', 'nested'}
        Scheme of the spacecraft-frame grid.
    earth_occultation : bool
        Give no time to intervals where the direction is below the Earth limb.
    use_livetime : bool
        Weight intervals by live time (True) or elapsed time (False).
    progress : bool or None
        Progress bar (None: only for long timelines).

    Returns
    -------
    histpy.Histogram
        One axis ``NuLambda`` (spacecraft frame), unit s. It sums to the total
        live time, less the occulted time when ``earth_occultation`` is set.
    """
    if not isinstance(orientation, Orientation):
        raise CosiInputError(f"orientation must be an Orientation, got {type(orientation).__name__}")
    axis = spacecraft_axis(nside, scheme)
    vec = galactic_vectors(direction).reshape(-1, 3)
    if vec.shape[0] != 1:
        raise CosiInputError(f"dwell_time_map takes one direction, got {vec.shape[0]}")
    if len(orientation) < 2:
        raise CosiInputError("the orientation needs at least two samples (one interval)")
    dt, livetime = orientation.intervals()
    times = (livetime if use_livetime else dt).to_value(u.s)
    x_vec, z_vec = orientation.pointing_vectors()
    zenith = altitude = None
    if earth_occultation:
        zenith = orientation.zenith_vectors()[:-1]
        altitude = orientation.altitude.to_value(u.km)[:-1]
    acc = _Accumulator(axis.npix)
    fold_attitudes(x_vec[:-1], z_vec[:-1], times, vec, axis.nside, axis.is_nested, acc,
                   zenith=zenith, altitude=altitude, progress=progress)
    keys, values = acc.result()
    contents = np.zeros(axis.npix)
    contents[keys] = values
    logger.info("dwell-time map: %.6g s over %d intervals on NSIDE %d", contents.sum(), times.size, nside)
    return Histogram([axis], contents=contents, unit=u.s)


def attitude_map(orientation, nside, scheme="ring", start=None, stop=None, use_livetime=True):
    """Exposure per spacecraft attitude, binned by the HEALPix pixels of the z and x axes.

    This is the ScAtt grouping of :class:`~cosi_imaging_plugin.exposure.ExposureTable`
    as a 2-D histogram; folding a Galactic point source only needs one
    spacecraft-frame direction per non-empty (z, x) cell.

    Parameters
    ----------
    orientation : Orientation
    nside : int
        NSIDE of the attitude grid.
    scheme : {'ring', 'nested'}
    start, stop : astropy.time.Time or float, optional
        Time range (see :meth:`Orientation.select`).
    use_livetime : bool
        Weight intervals by live time (True) or elapsed time (False).

    Returns
    -------
    histpy.Histogram
        Axes ``z`` and ``x`` (Galactic HEALPix), unit s.
    """
    table = ExposureTable.from_orientation(orientation, nside, scheme=scheme, start=start, stop=stop,
                                           use_livetime=use_livetime)
    return table.attitude_map()
