"""The attitudes behind each row of a coordinate conversion matrix, and a direction's dwell in every row.

A CCM row (a ScAtt bin of an exposure table, or a time bin of an orientation) is a
set of attitude intervals, each with its time and, when known, its Earth zenith and
altitude. :class:`AttitudeBins` holds them with the two choices a CCM is built
with (one averaged attitude per bin or every interval; Earth occultation or not),
so that

- :func:`~cosi_imaging_plugin.exposure.coordsys_conversion_matrix` folds every
  model pixel centre through them, and
- :meth:`AttitudeBins.dwell` folds one exact direction (a point source) the same
  way: ``D[s, nu] = sum over attitudes t in row s of dt_t * w(nu | R_t^T n)``, the
  CCM of a sky holding only that direction. The model grid never enters, and the
  bilinear weights of the spacecraft-frame grid average out over the attitudes
  instead of leaving kinks along the grid's lines.
"""
import itertools
import logging

import astropy.units as u
import healpy as hp
import numpy as np
from astropy.time import Time
from histpy import Axis

from ..errors import CosiInputError
from ..geometry import galactic_vectors, lonlat_to_vec, rotation_from_axes, visible_mask
from .dwell import CHUNK
from .exposure_table import ExposureTable
from .orientation import Orientation
from .scatt import averaged_pointing

logger = logging.getLogger(__name__)


class _Bin:
    """Attitudes of one CCM row: axis vectors, times and optional Earth data."""

    __slots__ = ("altitude", "exposure", "times", "x", "x_avg", "z", "z_avg", "zenith")

    def __init__(self, x, z, times, zenith=None, altitude=None, x_avg=None, z_avg=None, exposure=None):
        self.x, self.z, self.times = x, z, times
        self.zenith, self.altitude = zenith, altitude
        self.x_avg, self.z_avg = x_avg, z_avg
        self.exposure = float(np.sum(times)) if exposure is None else float(exposure)

    def visible_exposure(self, directions):
        """Time each direction is above the Earth limb during this row, shape (J,)."""
        total = np.zeros(directions.shape[0])
        step = max(1, CHUNK // directions.shape[0])
        for s in range(0, len(self.times), step):
            sl = slice(s, s + step)
            total += self.times[sl] @ visible_mask(self.zenith[sl], self.altitude[sl], directions)
        return total


def time_edges_seconds(time_edges, orientation):
    """Time-bin edges as Unix seconds (default: one bin spanning the orientation)."""
    if time_edges is None:
        edges = orientation.unix_seconds[[0, -1]].astype(np.float64)
    elif isinstance(time_edges, Time):
        edges = np.asarray(time_edges.utc.unix, dtype=np.float64)
    elif isinstance(time_edges, u.Quantity):
        try:
            edges = np.asarray(time_edges.to_value(u.s), dtype=np.float64)
        except u.UnitConversionError as exc:
            raise CosiInputError(f"time_edges must be times, got unit {time_edges.unit}") from exc
    else:
        edges = np.asarray(time_edges, dtype=np.float64)
    edges = np.atleast_1d(edges).ravel()
    if edges.size < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise CosiInputError("time_edges must hold at least two finite, strictly increasing times")
    return edges


class AttitudeBins:
    """The attitude intervals of each CCM row, with the CCM's pointing and occultation choices.

    Build it with :meth:`from_exposure_table` (ScAtt rows) or :meth:`from_orientation`
    (time rows).

    Attributes
    ----------
    row_axis : histpy.Axis
        ``ScAtt`` (edges ``arange(n + 1)``) or ``Time`` (Unix seconds).
    use_averaged_pointing : bool
        One attitude per row, from its exposure-weighted mean z and x pointings.
    earth_occultation : bool
        Directions below the Earth limb get no time.
    """

    def __init__(self, bins, row_axis, use_averaged_pointing=False, earth_occultation=False):
        self.bins = list(bins)
        self.row_axis = row_axis
        self.use_averaged_pointing = bool(use_averaged_pointing)
        self.earth_occultation = bool(earth_occultation)
        self._flat = None

    @classmethod
    def from_exposure_table(cls, table, use_averaged_pointing=False, earth_occultation=False):
        """One row per ScAtt bin of an exposure table."""
        if not isinstance(table, ExposureTable):
            raise CosiInputError(f"ScAtt binning needs an ExposureTable, got {type(table).__name__}")
        if earth_occultation and not table.has_earth_info:
            raise CosiInputError("this exposure table has no Earth zenith / altitude columns; "
                                 "Earth occultation cannot be applied")
        bins = []
        for b in range(len(table)):
            zenith = altitude = None
            if earth_occultation:
                zenith = lonlat_to_vec(table.earth_zenith[b][:, 0], table.earth_zenith[b][:, 1])
                altitude = table.altitude[b]
            bins.append(_Bin(lonlat_to_vec(table.xpointing[b][:, 0], table.xpointing[b][:, 1]),
                             lonlat_to_vec(table.zpointing[b][:, 0], table.zpointing[b][:, 1]),
                             table.delta_time[b], zenith, altitude,
                             x_avg=lonlat_to_vec(*table.xpointing_averaged[b]),
                             z_avg=lonlat_to_vec(*table.zpointing_averaged[b]),
                             exposure=table.exposure[b]))
        return cls(bins, Axis(np.arange(len(bins) + 1), label="ScAtt"), use_averaged_pointing, earth_occultation)

    @classmethod
    def from_orientation(cls, orientation, time_edges=None, use_averaged_pointing=False, earth_occultation=False,
                         use_livetime=True):
        """One row per time bin; an interval straddling an edge is split in proportion to its overlap.

        Parameters
        ----------
        orientation : Orientation
        time_edges : astropy.time.Time, Quantity or array_like, optional
            Bin edges (numbers are Unix seconds); default one bin spanning the orientation.
        use_averaged_pointing, earth_occultation : bool
        use_livetime : bool
            Weight intervals by live time (True) or elapsed time.
        """
        if not isinstance(orientation, Orientation):
            raise CosiInputError(f"time binning needs an Orientation, got {type(orientation).__name__}")
        if earth_occultation and not orientation.has_earth_info:
            raise CosiInputError("this orientation has no Earth zenith / altitude; "
                                 "Earth occultation cannot be applied")
        edges = time_edges_seconds(time_edges, orientation)
        t = orientation.unix_seconds
        dt, livetime = orientation.intervals()
        times = (livetime if use_livetime else dt).to_value(u.s)
        x_vec, z_vec = orientation.pointing_vectors()
        zenith = orientation.zenith_vectors() if earth_occultation else None
        altitude = orientation.altitude.to_value(u.km) if earth_occultation else None
        start, stop = t[:-1], t[1:]
        if edges[0] < t[0] or edges[-1] > t[-1]:
            logger.warning("time edges [%r, %r] extend beyond the orientation [%r, %r]; "
                           "uncovered time gets no exposure", edges[0], edges[-1], t[0], t[-1])
        (x_l, x_b), (z_l, z_b) = orientation.pointing_lonlat()
        bins = []
        for lo, hi in itertools.pairwise(edges):
            first = np.searchsorted(stop, lo, side="right")  # first interval ending after lo
            last = np.searchsorted(start, hi, side="left")  # intervals starting before hi
            idx = np.arange(first, last)
            overlap = np.minimum(stop[idx], hi) - np.maximum(start[idx], lo)
            w = times[idx] * np.clip(overlap, 0.0, None) / (stop[idx] - start[idx])
            x_avg = z_avg = None
            if idx.size:
                x_avg = lonlat_to_vec(*averaged_pointing(x_l[idx], x_b[idx], w))
                z_avg = lonlat_to_vec(*averaged_pointing(z_l[idx], z_b[idx], w))
            bins.append(_Bin(x_vec[idx], z_vec[idx], w, None if zenith is None else zenith[idx],
                             None if altitude is None else altitude[idx], x_avg=x_avg, z_avg=z_avg))
        return cls(bins, Axis(edges * u.s, label="Time"), use_averaged_pointing, earth_occultation)

    def __len__(self):
        return len(self.bins)

    @property
    def work(self):
        """Attitudes folded per direction (for progress bars)."""
        return sum(1 if self.use_averaged_pointing else len(b.times) for b in self.bins)

    # ---- every row at once, for one direction ---------------------------------------------------
    def _attitudes(self):
        """(rotations, times, row of each, zenith, altitude) of every attitude used, cached."""
        if self._flat is None:
            if self.use_averaged_pointing:
                used = [b for b in self.bins if len(b.times)]
                rows = np.array([i for i, b in enumerate(self.bins) if len(b.times)], dtype=np.int64)
                rotations = rotation_from_axes(np.array([b.x_avg for b in used]).reshape(-1, 3),
                                               np.array([b.z_avg for b in used]).reshape(-1, 3))
                times = np.array([b.exposure for b in used])
                self._flat = (rotations, times, rows, None, None)
            else:
                rows = np.repeat(np.arange(len(self.bins)), [len(b.times) for b in self.bins])
                x = np.concatenate([b.x.reshape(-1, 3) for b in self.bins])
                z = np.concatenate([b.z.reshape(-1, 3) for b in self.bins])
                times = np.concatenate([b.times for b in self.bins])
                zenith = altitude = None
                if self.earth_occultation:
                    zenith = np.concatenate([b.zenith.reshape(-1, 3) for b in self.bins])
                    altitude = np.concatenate([b.altitude for b in self.bins])
                self._flat = (rotation_from_axes(x, z), times, rows, zenith, altitude)
        return self._flat

    def dwell(self, direction, nside, nest=False):
        """Time a direction spends at each spacecraft-frame pixel, per row: ``D[s, nu]`` in seconds.

        The CCM of a sky holding this one direction: its rows are built exactly as the
        CCM's rows of a model pixel centre at the same place.

        Parameters
        ----------
        direction : astropy.coordinates.SkyCoord or array_like
            One sky direction, or its Galactic unit vector.
        nside : int
            NSIDE of the spacecraft-frame (NuLambda) grid.
        nest : bool
            Scheme of that grid.

        Returns
        -------
        numpy.ndarray, shape (n_rows, 12 nside**2)
        """
        vec = galactic_vectors(direction).reshape(-1, 3)
        if vec.shape[0] != 1:
            raise CosiInputError(f"dwell takes one direction, got {vec.shape[0]}")
        rotations, times, rows, zenith, altitude = self._attitudes()
        npix = hp.nside2npix(nside)
        out = np.zeros(len(self.bins) * npix)
        if self.use_averaged_pointing and self.earth_occultation:
            times = np.array([self.bins[r].visible_exposure(vec)[0] for r in rows])
        elif self.earth_occultation:
            times = times * visible_mask(zenith, altitude, vec)[:, 0]
        sc = np.einsum("kba,b->ka", rotations, vec[0])  # R^T n at every attitude
        theta = np.arctan2(np.hypot(sc[:, 0], sc[:, 1]), sc[:, 2])
        phi = np.arctan2(sc[:, 1], sc[:, 0])
        pixels, weights = hp.get_interp_weights(nside, theta, phi, nest=nest)
        out += np.bincount((rows[None, :] * npix + pixels).ravel(), weights=(weights * times[None, :]).ravel(),
                           minlength=out.size)
        return out.reshape(len(self.bins), npix)
