"""Spacecraft attitude timelines: the MEGAlib/COSI orientation (``.ori``) format.

An orientation file samples the spacecraft attitude at times ``t_i``. Row ``i``
describes the interval ``[t_i, t_{i+1})``: the attitude at ``t_i`` is used for
the whole interval and the row's livetime is the live time accumulated in it.
The last row only closes the previous interval.

File layout (degrees, Galactic)::

    Type OrientationsGalactic
    OG t x_b x_l z_b z_l altitude_km zenith_b zenith_l livetime
    ...
    EN

Files with only the first six fields (``OG t x_b x_l z_b z_l``) are accepted:
their livetime is the elapsed time and they carry no Earth information.
"""
import logging
import warnings
from pathlib import Path

import astropy.units as u
import healpy as hp
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.time import Time
from erfa import ErfaWarning
from scipy.spatial.transform import Rotation

from .._atomic import atomic_path
from ..errors import CosiFileError, CosiInputError

logger = logging.getLogger(__name__)

#: Earth radius used for the occultation limb, km (the COSI team's value).
EARTH_RADIUS_KM = 6378.0

_HEADER = "Type OrientationsGalactic"
_N_FULL = 10  # OG + 9 numbers
_N_ATTITUDE = 6  # OG t x_b x_l z_b z_l
# Largest |x . z| accepted when reading: a bigger value means swapped or corrupt columns.
_MAX_AXIS_DOT = 1e-3


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
        if np.any(~(np.abs(dots) <= _MAX_AXIS_DOT)):
            bad = int(np.flatnonzero(~(np.abs(dots) <= _MAX_AXIS_DOT))[0])
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

    # ------------------------------------------------------------------ reading
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
            ``EN``, or a missing ``EN``. The message names the file and line.
        """
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CosiFileError(f"{path}: cannot read orientation file ({exc})") from exc
        lines = text.splitlines()

        # Header: first non-blank line.
        first = 0
        while first < len(lines) and not lines[first].strip():
            first += 1
        if first == len(lines):
            raise CosiFileError(f"{path}: empty orientation file")
        header = lines[first].split()
        if len(header) < 2 or header[0] != "Type":
            raise CosiFileError(f"{path}:{first + 1}: expected '{_HEADER}', found {lines[first].strip()!r}")
        if header[1] != "OrientationsGalactic":
            raise CosiFileError(f"{path}:{first + 1}: unsupported orientation type {header[1]!r} "
                                f"(only 'OrientationsGalactic' is supported)")

        body, line_numbers, end_seen = [], [], False
        for number, line in enumerate(lines[first + 1:], start=first + 2):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if end_seen:
                raise CosiFileError(f"{path}:{number}: text after the closing 'EN' line: {stripped[:60]!r}")
            if stripped == "EN":
                end_seen = True
                continue
            body.append(stripped)
            line_numbers.append(number)
        if not end_seen:
            message = f"{path}: no closing 'EN' line; the file may be truncated"
            if not allow_missing_end:
                raise CosiFileError(message + " (pass allow_missing_end=True to use the rows read)")
            warnings.warn(message, stacklevel=2)
            logger.warning(message)
        if not body:
            raise CosiFileError(f"{path}: no 'OG' rows")

        values = cls._parse_rows(path, body, line_numbers)
        t = values[:, 0]
        bad = np.flatnonzero(np.diff(t) <= 0)
        if bad.size:
            i = int(bad[0]) + 1
            raise CosiFileError(f"{path}:{line_numbers[i]}: time {t[i]!r} does not increase "
                                f"(previous row has {t[i - 1]!r})")
        for column, name in ((1, "x latitude"), (3, "z latitude"), (6, "zenith latitude")):
            if column < values.shape[1]:
                bad = np.flatnonzero(np.abs(values[:, column]) > 90.0)
                if bad.size:
                    i = int(bad[0])
                    raise CosiFileError(f"{path}:{line_numbers[i]}: {name} {values[i, column]!r} "
                                        f"outside [-90, 90] deg")
        dots = np.einsum("ij,ij->i", lonlat_to_vec(values[:, 2], values[:, 1]),
                         lonlat_to_vec(values[:, 4], values[:, 3]))
        bad = np.flatnonzero(np.abs(dots) > _MAX_AXIS_DOT)
        if bad.size:
            i = int(bad[0])
            raise CosiFileError(f"{path}:{line_numbers[i]}: x and z axes are not perpendicular "
                                f"(angle {np.degrees(np.arccos(np.clip(dots[i], -1, 1))):.4f} deg)")
        if values.shape[1] == _N_FULL - 1:
            bad = np.flatnonzero(values[:-1, 8] < 0)
            if bad.size:
                i = int(bad[0])
                raise CosiFileError(f"{path}:{line_numbers[i]}: negative livetime {values[i, 8]!r}")
            bad = np.flatnonzero(values[:, 5] < -EARTH_RADIUS_KM)
            if bad.size:
                i = int(bad[0])
                raise CosiFileError(f"{path}:{line_numbers[i]}: altitude {values[i, 5]!r} km is below "
                                    f"the Earth centre")
            new = cls._from_arrays(t, values[:, 2], values[:, 1], values[:, 4], values[:, 3],
                                   altitude=values[:, 5], earth_zenith=(values[:, 7], values[:, 6]),
                                   livetime=values[:, 8])
        else:
            new = cls._from_arrays(t, values[:, 2], values[:, 1], values[:, 4], values[:, 3])
        logger.info("read %d attitude samples (%.1f s) from %s", len(new), t[-1] - t[0], path)
        return new

    @staticmethod
    def _parse_rows(path, body, line_numbers):
        """Parse 'OG ...' rows into an (n, 5 or 9) float array, naming the first bad line."""
        n_fields = len(body[0].split())
        if n_fields not in (_N_FULL, _N_ATTITUDE):
            raise CosiFileError(f"{path}:{line_numbers[0]}: expected {_N_FULL} fields "
                                f"'OG t x_b x_l z_b z_l altitude zenith_b zenith_l livetime' "
                                f"(or the first {_N_ATTITUDE}), found {n_fields}")
        try:
            # Fast path (C parser); any problem is located by the slow path below.
            tags = np.loadtxt(body, usecols=0, dtype=str, ndmin=1)
            values = np.loadtxt(body, usecols=range(1, n_fields), dtype=np.float64, ndmin=2)
            if not np.all(tags == "OG") or values.shape != (len(body), n_fields - 1):
                raise ValueError("slow path")
        except ValueError:
            values = np.empty((len(body), n_fields - 1))
            for row, (line, number) in enumerate(zip(body, line_numbers)):
                fields = line.split()
                if fields[0] != "OG":
                    raise CosiFileError(f"{path}:{number}: expected a row starting with 'OG', "
                                        f"found {line[:60]!r}")
                if len(fields) != n_fields:
                    raise CosiFileError(f"{path}:{number}: expected {n_fields} fields like the first row, "
                                        f"found {len(fields)}")
                try:
                    values[row] = [float(f) for f in fields[1:]]
                except ValueError as exc:
                    raise CosiFileError(f"{path}:{number}: cannot parse number ({exc})") from exc
        finite = np.isfinite(values)
        if not np.all(finite):
            row = int(np.flatnonzero(~finite.all(axis=1))[0])
            raise CosiFileError(f"{path}:{line_numbers[row]}: NaN or infinite value in {body[row][:80]!r}")
        return values

    # ------------------------------------------------------------------ writing
    def write(self, path, overwrite=True):
        """Write the timeline as an orientation file, atomically.

        Numbers are written with 17 significant digits, so reading the file back
        gives identical values.

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
        if self._livetime is not None and not self.has_earth_info:
            raise CosiInputError("the .ori format stores livetime after altitude and Earth zenith; "
                                 "give the orientation altitude and earth_zenith to write its livetime")
        columns = [self._t, self._x_b, self._x_l, self._z_b, self._z_l]
        if self.has_earth_info:
            livetime = self._livetime if self._livetime is not None else np.append(np.diff(self._t), 0.0)
            columns += [self._alt, self._zen_b, self._zen_l, livetime]
        table = np.column_stack(columns)
        with atomic_path(path, overwrite=overwrite) as tmp:
            with open(tmp, "w") as handle:
                handle.write(_HEADER + "\n")
                np.savetxt(handle, table, fmt="OG " + " ".join(["%.17g"] * table.shape[1]))
                handle.write("EN\n")
        logger.info("wrote %d attitude samples to %s", len(self), path)

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
        from scoords import SpacecraftFrame

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
        pick = lambda a: None if a is None else np.atleast_1d(a[key])  # noqa: E731
        zen = None if self._zen_l is None else (pick(self._zen_l), pick(self._zen_b))
        return self._from_arrays(pick(self._t), pick(self._x_l), pick(self._x_b), pick(self._z_l),
                                 pick(self._z_b), altitude=pick(self._alt), earth_zenith=zen,
                                 livetime=pick(self._livetime))

    def _require_earth_info(self):
        if not self.has_earth_info:
            raise CosiInputError("this orientation has no altitude / Earth zenith columns; "
                                 "Earth occultation cannot be computed")
