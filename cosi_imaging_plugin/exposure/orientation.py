"""Spacecraft attitude timeline: the :class:`Orientation` model.

An orientation samples the spacecraft attitude at times ``t_i``. Row ``i``
describes the interval ``[t_i, t_{i+1})``: the attitude at ``t_i`` is used for
the whole interval and the row's livetime is the live time accumulated in it.
The last row only closes the previous interval. The ``.ori`` text format is
read and written by :mod:`cosi_imaging_plugin.io.ori_file`.
"""
import warnings

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.time import Time
from erfa import ErfaWarning
from scoords import SpacecraftFrame

from ..errors import CosiInputError
from ..geometry import galactic_vectors, lonlat_to_vec, rotation_from_axes, vec_to_lonlat, visible_mask
from ..io.ori_file import MAX_AXIS_DOT, OriRecords, read_ori, write_ori

__all__ = ["Orientation"]


def _as_unix_seconds(value, name):
    """Float Unix seconds from an astropy Time, a time Quantity or a number."""
    if isinstance(value, Time):
        return np.asarray(value.utc.unix, dtype=np.float64)
    if isinstance(value, u.Quantity):
        try:
            return np.asarray(value.to_value(u.s), dtype=np.float64)
        except u.UnitConversionError as exc:
            raise CosiInputError(f"{name} must be a time, got unit {value.unit}") from exc
    return np.asarray(value, dtype=np.float64)


class Orientation:
    """Attitude timeline of the spacecraft.

    Parameters
    ----------
    time : astropy.time.Time or array_like
        Sample times; numbers are Unix seconds (the ``.ori`` convention).
        Must be strictly increasing.
    x_pointing, z_pointing : astropy.coordinates.SkyCoord
        Sky directions of the spacecraft x and z axes (any celestial frame;
        stored in Galactic coordinates).
    altitude : astropy.units.Quantity, optional
        Spacecraft altitude (length). Needed for Earth occultation.
    earth_zenith : astropy.coordinates.SkyCoord, optional
        Sky direction of the local zenith (away from the Earth centre).
    livetime : astropy.units.Quantity, optional
        Live time of row ``i``'s interval ``[t_i, t_{i+1})``; the last value has
        no interval. Defaults to the elapsed time.

    Notes
    -----
    Row ``i``'s attitude (at ``t_i``) is used for its whole interval.
    """

    def __init__(self, time, x_pointing, z_pointing, altitude=None, earth_zenith=None, livetime=None):
        t = _as_unix_seconds(time, "time").ravel()
        x = self._galactic_lonlat(x_pointing, "x_pointing")
        z = self._galactic_lonlat(z_pointing, "z_pointing")
        alt = None if altitude is None else u.Quantity(altitude).to_value(u.km)
        zen = None if earth_zenith is None else self._galactic_lonlat(earth_zenith, "earth_zenith")
        lt = None if livetime is None else u.Quantity(livetime).to_value(u.s)
        self._init_arrays(t, x[0], x[1], z[0], z[1], alt, zen, lt)

    @staticmethod
    def _galactic_lonlat(coord, name):
        if not isinstance(coord, SkyCoord):
            raise CosiInputError(f"{name} must be an astropy SkyCoord, got {type(coord).__name__}")
        gal = coord.transform_to("galactic")
        return np.atleast_1d(gal.l.deg).astype(np.float64), np.atleast_1d(gal.b.deg).astype(np.float64)

    @classmethod
    def _from_arrays(cls, t, x_l, x_b, z_l, z_b, altitude=None, earth_zenith=None, livetime=None):
        new = cls.__new__(cls)
        new._init_arrays(t, x_l, x_b, z_l, z_b, altitude, earth_zenith, livetime)
        return new

    def _init_arrays(self, t, x_l, x_b, z_l, z_b, altitude, earth_zenith, livetime):
        n = len(t)
        if n == 0:
            raise CosiInputError("an orientation needs at least one sample")
        arrays = {"x_pointing longitude": x_l, "x_pointing latitude": x_b,
                  "z_pointing longitude": z_l, "z_pointing latitude": z_b}
        if altitude is not None:
            arrays["altitude"] = altitude
        if earth_zenith is not None:
            arrays["earth_zenith longitude"], arrays["earth_zenith latitude"] = earth_zenith
        if livetime is not None:
            arrays["livetime"] = livetime
        for name, values in arrays.items():
            if np.shape(values) != (n,):
                raise CosiInputError(f"{name} has shape {np.shape(values)}, expected ({n},) like time")
            if not np.all(np.isfinite(values)):
                raise CosiInputError(f"{name} contains NaN or infinite values")
        if not np.all(np.isfinite(t)):
            raise CosiInputError("time contains NaN or infinite values")
        if n > 1 and np.any(np.diff(t) <= 0):
            bad = int(np.flatnonzero(np.diff(t) <= 0)[0])
            raise CosiInputError(f"time must be strictly increasing (sample {bad + 1} at {t[bad + 1]!r} "
                                 f"follows {t[bad]!r})")
        dots = np.einsum("ij,ij->i", lonlat_to_vec(x_l, x_b), lonlat_to_vec(z_l, z_b))
        if np.any(~(np.abs(dots) <= MAX_AXIS_DOT)):
            bad = int(np.flatnonzero(~(np.abs(dots) <= MAX_AXIS_DOT))[0])
            raise CosiInputError(f"x and z pointings of sample {bad} are not perpendicular or not finite "
                                 f"(x.z = {dots[bad]:.3g})")
        self._t = np.asarray(t, dtype=np.float64)
        self._x_l = np.asarray(x_l, dtype=np.float64)
        self._x_b = np.asarray(x_b, dtype=np.float64)
        self._z_l = np.asarray(z_l, dtype=np.float64)
        self._z_b = np.asarray(z_b, dtype=np.float64)
        self._alt = None if altitude is None else np.asarray(altitude, dtype=np.float64)
        self._zen_l = None if earth_zenith is None else np.asarray(earth_zenith[0], dtype=np.float64)
        self._zen_b = None if earth_zenith is None else np.asarray(earth_zenith[1], dtype=np.float64)
        self._livetime = None if livetime is None else np.asarray(livetime, dtype=np.float64)
        if self._livetime is not None and np.any(self._livetime[:-1] < 0):
            raise CosiInputError("livetime must not be negative")
        self._time_cache = None

    # ---------------------------------------------------------------- file I/O
    @classmethod
    def read(cls, path, allow_missing_end=False):
        """Read an orientation (``.ori``) file.

        Parameters
        ----------
        path : str or pathlib.Path
            File to read.
        allow_missing_end : bool
            A file without the closing ``EN`` line is usually truncated (an
            interrupted write), so it is an error by default. With True the rows
            read are used and a warning is issued.

        Returns
        -------
        Orientation

        Raises
        ------
        CosiFileError
            Missing file, unknown ``Type``, a malformed row (wrong field count,
            not ``OG``, unparsable or non-finite number, latitude out of range),
            non-increasing time, x and z axes not perpendicular, text after
            ``EN``, or a missing ``EN``. The message names the file and line
            (see :func:`cosi_imaging_plugin.io.ori_file.read_ori`).
        """
        rec = read_ori(path, allow_missing_end=allow_missing_end)
        zenith = (rec.zenith_lon, rec.zenith_lat) if rec.has_earth_info else None
        return cls._from_arrays(rec.time, rec.x_lon, rec.x_lat, rec.z_lon, rec.z_lat, altitude=rec.altitude,
                                earth_zenith=zenith, livetime=rec.livetime)

    def write(self, path, overwrite=True):
        """Write the timeline as an orientation file, atomically.

        Numbers are written with 17 significant digits, so reading the file back
        gives identical values (see :func:`cosi_imaging_plugin.io.ori_file.write_ori`).

        Parameters
        ----------
        path : str or pathlib.Path
            Destination.
        overwrite : bool
            Replace an existing file.

        Raises
        ------
        CosiInputError
            A livetime without altitude and Earth zenith (the format has no
            place for it).
        """
        write_ori(path, OriRecords(self._t, self._x_l, self._x_b, self._z_l, self._z_b, altitude=self._alt,
                                   zenith_lon=self._zen_l, zenith_lat=self._zen_b, livetime=self._livetime),
                  overwrite=overwrite)

    # --------------------------------------------------------------- properties
    def __len__(self):
        return len(self._t)

    def __repr__(self):
        return (f"<Orientation: {len(self)} samples, {float(self._t[0])!r} to {float(self._t[-1])!r} s, "
                f"livetime {self.total_livetime:.6g}>")

    @property
    def unix_seconds(self):
        """Sample times as float Unix seconds (exactly as in the file), numpy.ndarray."""
        return self._t

    @property
    def time(self):
        """Sample times, astropy.time.Time (UTC, Unix format)."""
        if self._time_cache is None:
            self._time_cache = Time(self._t, format="unix", scale="utc")
        return self._time_cache

    @property
    def x_pointing(self):
        """Galactic direction of the spacecraft x axis, SkyCoord (N,)."""
        return SkyCoord(l=self._x_l * u.deg, b=self._x_b * u.deg, frame="galactic")

    @property
    def z_pointing(self):
        """Galactic direction of the spacecraft z axis, SkyCoord (N,)."""
        return SkyCoord(l=self._z_l * u.deg, b=self._z_b * u.deg, frame="galactic")

    @property
    def has_earth_info(self):
        """True when altitude and Earth zenith are known (needed for occultation)."""
        return self._alt is not None and self._zen_l is not None

    @property
    def altitude(self):
        """Spacecraft altitude, Quantity km (N,), or None."""
        return None if self._alt is None else self._alt * u.km

    @property
    def earth_zenith(self):
        """Galactic direction of the local zenith, SkyCoord (N,), or None."""
        if self._zen_l is None:
            return None
        return SkyCoord(l=self._zen_l * u.deg, b=self._zen_b * u.deg, frame="galactic")

    @property
    def livetime(self):
        """Live time of each row's interval, Quantity s (N,); the last row has no interval.

        Without a livetime column this is the elapsed time (last value 0).
        """
        if self._livetime is None:
            return np.append(self.intervals()[0].to_value(u.s), 0.0) * u.s
        return self._livetime * u.s

    @property
    def total_livetime(self):
        """Sum of the interval live times, Quantity s."""
        return self.intervals()[1].sum()

    # ------------------------------------------------------------------ methods
    def intervals(self):
        """Elapsed and live time of each interval ``[t_i, t_{i+1})``.

        Returns
        -------
        dt : astropy.units.Quantity, shape (N-1,)
            Elapsed time, from astropy Time differences (leap-second aware).
        livetime : astropy.units.Quantity, shape (N-1,)
            Live time (equal to ``dt`` when the file has no livetime column).
        """
        if len(self) < 2:
            return np.zeros(0) * u.s, np.zeros(0) * u.s
        time = self.time
        with warnings.catch_warnings():
            # ERFA flags UTC dates beyond its leap-second table as "dubious"; the
            # differences are still right unless a leap second is announced later.
            warnings.simplefilter("ignore", ErfaWarning)
            dt = (time[1:] - time[:-1]).to_value(u.s)
        livetime = dt if self._livetime is None else self._livetime[:-1]
        return dt * u.s, np.array(livetime, dtype=np.float64) * u.s

    def pointing_vectors(self):
        """Galactic unit vectors of the x and z axes, two arrays of shape (N, 3)."""
        return lonlat_to_vec(self._x_l, self._x_b), lonlat_to_vec(self._z_l, self._z_b)

    def pointing_lonlat(self):
        """Galactic (l, b) in degrees of the x and z axes: ``((x_l, x_b), (z_l, z_b))``, arrays of shape (N,)."""
        return (self._x_l, self._x_b), (self._z_l, self._z_b)

    def zenith_vectors(self):
        """Galactic unit vectors of the Earth zenith, shape (N, 3); CosiInputError without Earth info."""
        self._require_earth_info()
        return lonlat_to_vec(self._zen_l, self._zen_b)

    def rotation_matrices(self):
        """Attitude rotation matrices.

        Returns
        -------
        numpy.ndarray, shape (N, 3, 3)
            Columns are the Galactic unit vectors of the spacecraft x,
            y = z cross x and z axes (see :func:`rotation_from_axes`).
        """
        return rotation_from_axes(*self.pointing_vectors())

    def to_spacecraft_vectors(self, direction):
        """Spacecraft-frame unit vectors of sky directions for every attitude.

        Parameters
        ----------
        direction : astropy.coordinates.SkyCoord or array_like
            Sky directions (shape S) or Galactic unit vectors (S + (3,)).

        Returns
        -------
        numpy.ndarray, shape (N,) + S + (3,)
            ``(x.n, y.n, z.n)`` for each attitude.
        """
        vec = galactic_vectors(direction)
        shape = vec.shape[:-1]
        rot = self.rotation_matrices()
        out = np.einsum("kba,jb->kja", rot, vec.reshape(-1, 3))
        return out.reshape((len(self),) + shape + (3,))

    def to_spacecraft(self, direction):
        """Spacecraft-frame coordinates of sky directions for every attitude.

        Parameters
        ----------
        direction : astropy.coordinates.SkyCoord or array_like
            Sky directions (shape S) or Galactic unit vectors (S + (3,)).

        Returns
        -------
        astropy.coordinates.SkyCoord
            In the ``SpacecraftFrame`` (scoords), shape (N,) + S; ``lon`` is the
            azimuth from +x towards +y, ``lat = 90 deg - polar angle from +z``.
        """
        lon, lat = vec_to_lonlat(self.to_spacecraft_vectors(direction))
        return SkyCoord(lon=lon * u.deg, lat=lat * u.deg, frame=SpacecraftFrame())

    def earth_occulted(self, directions):
        """Whether sky directions are blocked by the Earth, for every attitude.

        A direction more than ``pi - arcsin(R_E / (R_E + h))`` from the zenith is
        below the limb.

        Parameters
        ----------
        directions : astropy.coordinates.SkyCoord or array_like
            Sky directions (shape S) or Galactic unit vectors (S + (3,)).

        Returns
        -------
        numpy.ndarray of bool, shape (N,) + S
        """
        vec = galactic_vectors(directions)
        shape = vec.shape[:-1]
        visible = visible_mask(self.zenith_vectors(), self._alt, vec.reshape(-1, 3))
        return ~visible.reshape((len(self),) + shape)

    def select(self, tmin=None, tmax=None):
        """Samples with ``tmin <= t <= tmax``.

        No interpolation: the intervals kept are those whose start and end
        samples both lie in the range.

        Parameters
        ----------
        tmin, tmax : astropy.time.Time, Quantity or float, optional
            Bounds (numbers are Unix seconds); None leaves that side open.

        Returns
        -------
        Orientation
        """
        keep = np.ones(len(self), dtype=bool)
        if tmin is not None:
            keep &= self._t >= _as_unix_seconds(tmin, "tmin")
        if tmax is not None:
            keep &= self._t <= _as_unix_seconds(tmax, "tmax")
        if tmin is not None and tmax is not None and _as_unix_seconds(tmin, "tmin") > _as_unix_seconds(tmax, "tmax"):
            raise CosiInputError(f"tmin {tmin} is after tmax {tmax}")
        if not keep.any():
            raise CosiInputError(f"no attitude sample between {tmin} and {tmax} "
                                 f"(timeline covers {self._t[0]!r} to {self._t[-1]!r} s)")
        return self[keep]

    def __getitem__(self, key):
        """Subset of samples (slice, index array or boolean mask)."""
        if isinstance(key, (int, np.integer)):
            key = slice(key, key + 1 if key != -1 else None)

        def pick(a):
            return None if a is None else np.atleast_1d(a[key])

        zen = None if self._zen_l is None else (pick(self._zen_l), pick(self._zen_b))
        return self._from_arrays(pick(self._t), pick(self._x_l), pick(self._x_b), pick(self._z_l),
                                 pick(self._z_b), altitude=pick(self._alt), earth_zenith=zen,
                                 livetime=pick(self._livetime))

    def _require_earth_info(self):
        if not self.has_earth_info:
            raise CosiInputError("this orientation has no altitude / Earth zenith columns; "
                                 "Earth occultation cannot be computed")
