"""Sky regions of a HEALPix model grid (disc, polygon or mask) and the posterior of their flux."""
from dataclasses import dataclass

import healpy as hp
import numpy as np

from ..binning import is_nested
from ..errors import CosiInputError

#: Central credible intervals reported by :func:`flux_summary`.
CREDIBLE_LEVELS = (0.68, 0.95)


def region_mask(axis, *, disc=None, polygon=None, mask=None):
    """Boolean mask of the pixels of a HEALPix axis inside one region.

    Parameters
    ----------
    axis : histpy.HealpixAxis
        The model grid.
    disc : (float, float, float), optional
        (lon, lat, radius) in degrees, in the grid's frame; pixels whose centre lies inside.
    polygon : array_like, shape (n, 2), optional
        Vertices (lon, lat) in degrees of a convex polygon.
    mask : array_like of bool, shape (n_pix,), optional
        The pixels themselves.

    Raises
    ------
    CosiInputError
        If not exactly one region is given, or it holds no pixel.
    """
    given = [name for name, value in (("disc", disc), ("polygon", polygon), ("mask", mask)) if value is not None]
    if len(given) != 1:
        raise CosiInputError(f"region: give exactly one of disc, polygon, mask (got {given or 'none'})")
    n_pix = axis.nbins
    nest = is_nested(axis)
    out = np.zeros(n_pix, dtype=bool)
    if disc is not None:
        if np.ndim(disc) != 1 or len(disc) != 3 or not disc[2] > 0:
            raise CosiInputError(f"region disc: expected (lon, lat, radius > 0) in degrees, got {disc!r}")
        vec = hp.ang2vec(float(disc[0]), float(disc[1]), lonlat=True)
        out[hp.query_disc(axis.nside, vec, np.radians(float(disc[2])), nest=nest)] = True
    elif polygon is not None:
        vertices = np.asarray(polygon, dtype=np.float64)
        if vertices.ndim != 2 or vertices.shape[1] != 2 or vertices.shape[0] < 3:
            raise CosiInputError(f"region polygon: expected (n >= 3, 2) vertices (lon, lat), got shape "
                                 f"{vertices.shape}")
        vecs = hp.ang2vec(vertices[:, 0], vertices[:, 1], lonlat=True)
        try:
            out[hp.query_polygon(axis.nside, vecs, nest=nest)] = True
        except (RuntimeError, ValueError) as err:
            raise CosiInputError(f"region polygon: {err} (the polygon must be convex)") from err
    else:
        mask = np.asarray(mask)
        if mask.shape != (n_pix,) or mask.dtype != bool:
            raise CosiInputError(f"region mask: expected booleans of shape ({n_pix},), got {mask.dtype} "
                                 f"{mask.shape}")
        out = mask.copy()
    if not out.any():
        raise CosiInputError(f"region {given[0]} holds no pixel of the NSIDE {axis.nside} grid")
    return out


@dataclass
class FluxSummary:
    """The posterior of a region's flux (ph cm-2 s-1) in one Ei bin, or summed over them.

    Attributes
    ----------
    samples : ndarray
        Flux of every draw (all chains).
    mean, std, median : float
    intervals : dict of float to (float, float)
        Central credible intervals by probability (0.68, 0.95).
    n_pixels : int
    """

    samples: np.ndarray
    mean: float
    std: float
    median: float
    intervals: dict
    n_pixels: int

    def contains(self, value, level=0.68):
        """Whether `value` lies in the central credible interval of probability `level`."""
        low, high = self.intervals[level]
        return low <= value <= high

    def as_dict(self):
        """The summary without the samples (JSON-friendly)."""
        return {"mean": self.mean, "std": self.std, "median": self.median, "n_pixels": self.n_pixels,
                **{f"interval_{int(round(100 * p))}": list(v) for p, v in self.intervals.items()}}


def flux_summary(samples, n_pixels, levels=CREDIBLE_LEVELS):
    """Summary of flux samples: mean, std, median and central credible intervals."""
    samples = np.asarray(samples, dtype=np.float64).ravel()
    intervals = {p: tuple(float(v) for v in np.quantile(samples, [(1 - p) / 2, (1 + p) / 2])) for p in levels}
    return FluxSummary(samples, float(samples.mean()), float(samples.std(ddof=1)), float(np.median(samples)),
                       intervals, int(n_pixels))
