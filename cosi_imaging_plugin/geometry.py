"""Base geometry: unit vectors, attitude rotations and the Earth limb.

Sky directions are Galactic unit vectors of shape (..., 3) or (lon, lat) pairs in
degrees. An attitude is the rotation whose columns are the spacecraft x,
y = z cross x and z axes in Galactic coordinates (:func:`rotation_from_axes`).
A direction is visible when it lies within :func:`earth_limb_radius` of the
local zenith (:func:`visible_mask`).
"""
import healpy as hp
import numpy as np
from astropy.coordinates import SkyCoord
from scipy.spatial.transform import Rotation

from .errors import CosiInputError

__all__ = [
    "EARTH_RADIUS_KM",
    "earth_limb_radius",
    "galactic_vectors",
    "lonlat_to_vec",
    "rotation_from_axes",
    "vec_to_lonlat",
    "visible_mask",
]

#: Earth radius used for the occultation limb, km (the COSI team's value).
EARTH_RADIUS_KM = 6378.0


def rotation_from_axes(x, z):
    """Rotation matrices whose columns are the spacecraft x, y = z cross x and z axes.

    The quaternion is extracted with Markley's method (the largest of the trace
    and the diagonal picks the numerically safe branch) and normalised, as older
    scipy ``Rotation.from_matrix`` did. For orthonormal inputs this is the exact
    rotation; for slightly non-orthogonal inputs (e.g. separately averaged x and
    z pointings) it reproduces the COSI team's reference numbers, whereas the
    SVD-nearest rotation of current scipy differs at the level of the
    non-orthogonality.

    Parameters
    ----------
    x, z : array_like, shape (..., 3)
        Inertial (Galactic) unit vectors of the spacecraft x and z axes.

    Returns
    -------
    numpy.ndarray, shape (..., 3, 3)
        Proper rotation matrices; ``R @ v_sc`` maps spacecraft to Galactic
        coordinates and ``R.T @ n`` maps a Galactic direction to the spacecraft.
    """
    x = np.asarray(x, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    shape = np.broadcast_shapes(x.shape, z.shape)
    x = np.broadcast_to(x, shape).reshape(-1, 3)
    z = np.broadcast_to(z, shape).reshape(-1, 3)
    y = np.cross(z, x)
    m = np.stack([x, y, z], axis=-1)
    n = m.shape[0]

    decision = np.empty((n, 4))
    decision[:, :3] = np.diagonal(m, axis1=1, axis2=2)
    decision[:, 3] = decision[:, :3].sum(axis=1)
    choice = decision.argmax(axis=1)

    quat = np.empty((n, 4))  # scalar-last, as scipy expects
    rows = np.flatnonzero(choice != 3)
    i = choice[rows]
    j = (i + 1) % 3
    k = (j + 1) % 3
    quat[rows, i] = 1.0 - decision[rows, 3] + 2.0 * m[rows, i, i]
    quat[rows, j] = m[rows, j, i] + m[rows, i, j]
    quat[rows, k] = m[rows, k, i] + m[rows, i, k]
    quat[rows, 3] = m[rows, k, j] - m[rows, j, k]
    rows = np.flatnonzero(choice == 3)
    quat[rows, 0] = m[rows, 2, 1] - m[rows, 1, 2]
    quat[rows, 1] = m[rows, 0, 2] - m[rows, 2, 0]
    quat[rows, 2] = m[rows, 1, 0] - m[rows, 0, 1]
    quat[rows, 3] = 1.0 + decision[rows, 3]
    quat /= np.linalg.norm(quat, axis=1)[:, None]

    return Rotation.from_quat(quat).as_matrix().reshape(shape[:-1] + (3, 3))


def lonlat_to_vec(lon, lat):
    """Unit vectors of (lon, lat) in degrees; shape ``lon.shape + (3,)``."""
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    return np.asarray(hp.ang2vec(lon.ravel(), lat.ravel(), lonlat=True)).reshape(lon.shape + (3,))


def vec_to_lonlat(vec):
    """(lon, lat) in degrees of (not necessarily normalised) vectors of shape (..., 3)."""
    vec = np.asarray(vec, dtype=np.float64)
    lon = np.degrees(np.arctan2(vec[..., 1], vec[..., 0])) % 360.0
    lat = np.degrees(np.arctan2(vec[..., 2], np.hypot(vec[..., 0], vec[..., 1])))
    return lon, lat


def galactic_vectors(direction):
    """Galactic unit vectors of ``direction``.

    Parameters
    ----------
    direction : astropy.coordinates.SkyCoord or array_like
        Sky directions in any celestial frame, or Galactic unit vectors of
        shape (..., 3).

    Returns
    -------
    numpy.ndarray, shape (..., 3)
    """
    if isinstance(direction, SkyCoord):
        gal = direction.transform_to("galactic")
        return lonlat_to_vec(gal.l.deg, gal.b.deg)
    vec = np.asarray(direction, dtype=np.float64)
    if vec.ndim == 0 or vec.shape[-1] != 3:
        raise CosiInputError(
            f"direction must be a SkyCoord or unit vectors of shape (..., 3), got shape {vec.shape}")
    norm = np.linalg.norm(vec, axis=-1, keepdims=True)
    if not np.all(np.isfinite(norm)) or np.any(norm == 0):
        raise CosiInputError("direction vectors must be finite and non-zero")
    return vec / norm


def earth_limb_radius(altitude_km):
    """Angular radius (rad) around the zenith that is not blocked by the Earth.

    ``pi - arcsin(R_E / (R_E + h))``: about 113 deg at 550 km.
    """
    altitude_km = np.asarray(altitude_km, dtype=np.float64)
    return np.pi - np.arcsin(EARTH_RADIUS_KM / (EARTH_RADIUS_KM + altitude_km))


def visible_mask(zenith_vec, altitude_km, directions):
    """True where a direction is above the Earth limb.

    Parameters
    ----------
    zenith_vec : numpy.ndarray, shape (k, 3)
        Galactic unit vectors of the Earth zenith, one per attitude.
    altitude_km : numpy.ndarray, shape (k,)
        Spacecraft altitude in km.
    directions : numpy.ndarray, shape (J, 3)
        Galactic unit vectors.

    Returns
    -------
    numpy.ndarray of bool, shape (k, J)
    """
    cos_limb = np.cos(earth_limb_radius(altitude_km))
    return zenith_vec @ directions.T >= cos_limb[:, None]
