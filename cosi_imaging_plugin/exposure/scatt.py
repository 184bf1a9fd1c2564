"""Spacecraft-attitude (ScAtt) binning: group attitude intervals by their HEALPix (z, x) pixels.

These are the array-level building blocks of
:class:`cosi_imaging_plugin.exposure.ExposureTable`; they only need numpy and healpy.
"""
import logging

import healpy as hp
import numpy as np

from ..binning import check_nside, normalize_scheme
from ..errors import CosiInputError

logger = logging.getLogger(__name__)

def interval_midpoints(lon, lat):
    """Mid-interval (lon, lat) as the arithmetic mean of consecutive samples, degrees.

    This is the DC2-era COSI convention. Longitudes are unwrapped so that a
    crossing of 0/360 deg is handled; away from such a crossing the result is
    exactly ``0.5 * (lon_i + lon_{i+1})``. Meaningful only for small steps away
    from the poles.

    Parameters
    ----------
    lon, lat : numpy.ndarray, shape (N,)

    Returns
    -------
    lon_mid, lat_mid : numpy.ndarray, shape (N-1,)
    """
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    nxt = lon[1:] - 360.0 * np.round((lon[1:] - lon[:-1]) / 360.0)
    return (0.5 * (lon[:-1] + nxt)) % 360.0, 0.5 * (lat[:-1] + lat[1:])


def group_first_seen(idx_z, idx_x):
    """Group intervals by their (z, x) pixel pair, bins numbered in first-seen order.

    Parameters
    ----------
    idx_z, idx_x : numpy.ndarray of int, shape (n,)

    Returns
    -------
    bin_of_interval : numpy.ndarray of int, shape (n,)
        Bin number of each interval.
    members : list of numpy.ndarray
        For each bin, the interval indices in time order.
    """
    idx_z = np.asarray(idx_z, dtype=np.int64)
    idx_x = np.asarray(idx_x, dtype=np.int64)
    if idx_z.size == 0:
        return np.zeros(0, dtype=np.int64), []
    key = idx_z * (int(max(idx_x.max(), 0)) + 1) + idx_x
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    # np.unique sorts by key; renumber its groups by first appearance.
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    bin_of_interval = rank[inverse.ravel()]
    order = np.argsort(bin_of_interval, kind="stable")
    bounds = np.cumsum(np.bincount(bin_of_interval, minlength=first.size))[:-1]
    return bin_of_interval, np.split(order, bounds)


def averaged_pointing(lon, lat, weights):
    """Weighted mean direction of pointings, degrees.

    The unit vectors are summed with the given weights (unweighted when all
    weights are zero) and normalised, as the COSI team does.

    Parameters
    ----------
    lon, lat : numpy.ndarray, shape (k,)
        Pointings in degrees.
    weights : numpy.ndarray, shape (k,)
        Typically the live time of each pointing.

    Returns
    -------
    numpy.ndarray, shape (2,)
        ``[lon, lat]`` of the mean direction in degrees.
    """
    vec = np.asarray(hp.ang2vec(np.asarray(lon, float), np.asarray(lat, float), lonlat=True)).reshape(-1, 3)
    weights = np.asarray(weights, dtype=np.float64)
    if np.all(weights == 0):
        logger.warning("all pointings of an attitude bin have zero weight; averaging them unweighted")
        weights = np.ones_like(weights)
    total = (vec * weights[:, None]).sum(axis=0)
    norm = np.linalg.norm(total)
    if norm == 0:
        raise CosiInputError("pointings of an attitude bin cancel out; their mean direction is undefined")
    mean_lon, mean_lat = hp.vec2ang(total / norm, lonlat=True)
    return np.array([mean_lon[0], mean_lat[0]])


def scatt_bins(z_lon, z_lat, x_lon, x_lat, nside, scheme="ring"):
    """Assign attitude intervals to ScAtt bins.

    Parameters
    ----------
    z_lon, z_lat, x_lon, x_lat : numpy.ndarray, shape (n,)
        Galactic z and x pointings of each interval, degrees.
    nside : int
        HEALPix NSIDE of the attitude binning.
    scheme : {'ring', 'nested'}

    Returns
    -------
    idx_z, idx_x : numpy.ndarray of int, shape (n_bins,)
        The (z, x) pixel pair of each bin.
    members : list of numpy.ndarray
        Interval indices of each bin, bins in first-seen order.
    """
    scheme = normalize_scheme(scheme)
    nside = check_nside(nside, scheme)
    nest = scheme == "nested"
    pix_z = hp.ang2pix(nside, np.asarray(z_lon, float), np.asarray(z_lat, float), nest=nest, lonlat=True)
    pix_x = hp.ang2pix(nside, np.asarray(x_lon, float), np.asarray(x_lat, float), nest=nest, lonlat=True)
    pix_z = np.atleast_1d(pix_z).astype(np.int64)
    pix_x = np.atleast_1d(pix_x).astype(np.int64)
    _, members = group_first_seen(pix_z, pix_x)
    first = np.array([m[0] for m in members], dtype=np.int64)
    logger.info("%d attitude intervals -> %d ScAtt bins at NSIDE %d (%.2f deg)",
                len(pix_z), len(members), nside, np.degrees(hp.nside2resol(nside)))
    return (pix_z[first] if first.size else pix_z[:0]), (pix_x[first] if first.size else pix_x[:0]), members
