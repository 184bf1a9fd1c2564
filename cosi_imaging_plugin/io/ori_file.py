"""The MEGAlib/COSI orientation (``.ori``) text format: reader and writer.

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

This module only handles the text; the attitude model built on it is
:class:`cosi_imaging_plugin.exposure.Orientation`.
"""
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from ..errors import CosiFileError, CosiInputError
from ..geometry import EARTH_RADIUS_KM, lonlat_to_vec

logger = logging.getLogger(__name__)

_HEADER = "Type OrientationsGalactic"
_N_FULL = 10  # OG + 9 numbers
_N_ATTITUDE = 6  # OG t x_b x_l z_b z_l
#: Largest |x . z| accepted for the x and z axes: a bigger value means swapped or corrupt columns.
MAX_AXIS_DOT = 1e-3


@dataclass(frozen=True)
class OriRecords:
    """The columns of an orientation file, one entry per row (degrees, Galactic).

    Attributes
    ----------
    time : numpy.ndarray, shape (N,)
        Sample times, Unix seconds.
    x_lon, x_lat, z_lon, z_lat : numpy.ndarray, shape (N,)
        Directions of the spacecraft x and z axes.
    altitude : numpy.ndarray, shape (N,), or None
        Spacecraft altitude in km; None for 6-field files.
    zenith_lon, zenith_lat : numpy.ndarray, shape (N,), or None
        Direction of the local zenith; None for 6-field files.
    livetime : numpy.ndarray, shape (N,), or None
        Live time of row ``i``'s interval (the last value has no interval);
        None for 6-field files.
    """

    time: np.ndarray
    x_lon: np.ndarray
    x_lat: np.ndarray
    z_lon: np.ndarray
    z_lat: np.ndarray
    altitude: np.ndarray | None = None
    zenith_lon: np.ndarray | None = None
    zenith_lat: np.ndarray | None = None
    livetime: np.ndarray | None = None

    def __len__(self):
        return len(self.time)

    @property
    def has_earth_info(self):
        """True when altitude and Earth zenith are known (the 10-field layout)."""
        return self.altitude is not None and self.zenith_lon is not None


def read_ori(path, allow_missing_end=False):
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
    OriRecords
        Float64 columns; the Earth columns and livetime are None for 6-field files.

    Raises
    ------
    CosiFileError
        Missing file, unknown ``Type``, a malformed row (wrong field count,
        not ``OG``, unparsable or non-finite number, latitude out of range),
        non-increasing time, x and z axes not perpendicular, negative livetime,
        altitude below the Earth centre, text after ``EN``, or a missing ``EN``.
        The message names the file and line.
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

    values = _parse_rows(path, body, line_numbers)
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
    bad = np.flatnonzero(np.abs(dots) > MAX_AXIS_DOT)
    if bad.size:
        i = int(bad[0])
        raise CosiFileError(f"{path}:{line_numbers[i]}: x and z axes are not perpendicular "
                            f"(angle {np.degrees(np.arccos(np.clip(dots[i], -1, 1))):.4f} deg)")
    earth = {}
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
        earth = {"altitude": values[:, 5], "zenith_lon": values[:, 7], "zenith_lat": values[:, 6],
                 "livetime": values[:, 8]}
    records = OriRecords(t, x_lon=values[:, 2], x_lat=values[:, 1], z_lon=values[:, 4], z_lat=values[:, 3],
                         **earth)
    logger.info("read %d attitude samples (%.1f s) from %s", len(records), t[-1] - t[0], path)
    return records


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
                                    f"found {line[:60]!r}") from None
            if len(fields) != n_fields:
                raise CosiFileError(f"{path}:{number}: expected {n_fields} fields like the first row, "
                                    f"found {len(fields)}") from None
            try:
                values[row] = [float(f) for f in fields[1:]]
            except ValueError as exc:
                raise CosiFileError(f"{path}:{number}: cannot parse number ({exc})") from exc
    finite = np.isfinite(values)
    if not np.all(finite):
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise CosiFileError(f"{path}:{line_numbers[row]}: NaN or infinite value in {body[row][:80]!r}")
    return values


def write_ori(path, records, overwrite=True):
    """Write orientation records as an ``.ori`` file, atomically.

    Numbers are written with 17 significant digits, so reading the file back
    gives identical values. Records with altitude and Earth zenith get the
    10-field layout (a missing livetime is written as the elapsed time, 0 on
    the last row); others get the 6-field layout.

    Parameters
    ----------
    path : str or pathlib.Path
        Destination.
    records : OriRecords
        The columns to write.
    overwrite : bool
        Replace an existing file.

    Raises
    ------
    CosiInputError
        A livetime without altitude and Earth zenith (the format has no
        place for it).
    """
    if records.livetime is not None and not records.has_earth_info:
        raise CosiInputError("the .ori format stores livetime after altitude and Earth zenith; "
                             "give the orientation altitude and earth_zenith to write its livetime")
    columns = [records.time, records.x_lat, records.x_lon, records.z_lat, records.z_lon]
    if records.has_earth_info:
        livetime = records.livetime
        if livetime is None:
            livetime = np.append(np.diff(records.time), 0.0)
        columns += [records.altitude, records.zenith_lat, records.zenith_lon, livetime]
    table = np.column_stack(columns)
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "w") as handle:
        handle.write(_HEADER + "\n")
        np.savetxt(handle, table, fmt="OG " + " ".join(["%.17g"] * table.shape[1]))
        handle.write("EN\n")
    logger.info("wrote %d attitude samples to %s", len(records), path)
