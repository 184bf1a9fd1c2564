"""Spacecraft-attitude exposure table (the COSI team's ``SpacecraftAttitudeExposureTable``).

Each row is one ScAtt bin: the orientation intervals whose z and x pointings
fall in the same pair of HEALPix pixels at the table's NSIDE, in first-seen
order. A row keeps the pointings of its intervals, their live (or elapsed)
times, the total exposure and the exposure-weighted mean z and x pointings.
The FITS layout is read and written by :mod:`cosi_imaging_plugin.io.exposure_table_file`.
"""
import logging
from pathlib import Path

import astropy.units as u
import numpy as np
from histpy import Axes, HealpixAxis, Histogram

from ..binning import check_nside, normalize_scheme
from ..errors import CosiFileError, CosiInputError
from ..geometry import lonlat_to_vec, rotation_from_axes
from ..io.exposure_table_file import ExposureTableColumns, read_exposure_table_columns, write_exposure_table_columns
from .orientation import Orientation
from .scatt import averaged_pointing, interval_midpoints, scatt_bins

__all__ = ["ExposureTable"]

logger = logging.getLogger(__name__)


def _ragged(values, name):
    """List of float64 arrays from a sequence of sequences."""
    out = [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in values]
    for row, arr in enumerate(out):
        if arr.ndim != 1:
            raise CosiInputError(f"{name}[{row}] must be one-dimensional, got shape {arr.shape}")
    return out


def _pointing_lists(values, name):
    """List of (k, 2) float64 arrays of [lon, lat] in degrees."""
    out = []
    for row, v in enumerate(values):
        arr = np.asarray(v, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise CosiInputError(f"{name}[{row}] must have shape (k, 2) of [lon, lat], got {arr.shape}")
        out.append(arr)
    return out


class ExposureTable:
    """Exposure per spacecraft-attitude (ScAtt) bin.

    Build it with :meth:`from_orientation` or :meth:`read`; the constructor
    takes already-grouped rows.

    Parameters
    ----------
    nside : int
        HEALPix NSIDE of the attitude binning.
    scheme : {'ring', 'nested'}
        HEALPix scheme of the attitude binning.
    healpix_index_z, healpix_index_x : array_like of int, shape (n,)
        The (z, x) pixel pair of each bin.
    zpointing, xpointing : sequence of array_like, each (k_b, 2)
        ``[l, b]`` in degrees of each interval in bin b.
    delta_time : sequence of array_like, each (k_b,)
        Time of each interval in seconds (live time when known).
    zpointing_averaged, xpointing_averaged : array_like, shape (n, 2), optional
        Exposure-weighted mean pointings; computed when omitted.
    exposure : array_like, shape (n,), optional
        Total time per bin; the sum of ``delta_time`` when omitted.
    earth_zenith : sequence of array_like, each (k_b, 2), optional
        ``[l, b]`` of the Earth zenith for each interval.
    altitude : sequence of array_like, each (k_b,), optional
        Altitude in km for each interval.
    bkg_group : array_like of int, shape (n,), optional
        Background group of each bin (0 by default).

    Attributes
    ----------
    num_pointings : numpy.ndarray of int
        Number of intervals in each bin.
    scatt_binning_index : numpy.ndarray of int
        ``arange(n)``, the ScAtt axis bin of each row.
    """

    def __init__(self, nside, scheme, healpix_index_z, healpix_index_x, zpointing, xpointing, delta_time,
                 zpointing_averaged=None, xpointing_averaged=None, exposure=None,
                 earth_zenith=None, altitude=None, bkg_group=None):
        self.scheme = normalize_scheme(scheme)
        self.nside = check_nside(nside, self.scheme)
        self.healpix_index_z = np.asarray(healpix_index_z, dtype=np.int64).ravel()
        self.healpix_index_x = np.asarray(healpix_index_x, dtype=np.int64).ravel()
        n = self.healpix_index_z.size
        npix = 12 * self.nside ** 2
        for name, idx in (("healpix_index_z", self.healpix_index_z), ("healpix_index_x", self.healpix_index_x)):
            if idx.size != n:
                raise CosiInputError(f"{name} has {idx.size} rows, expected {n}")
            if np.any((idx < 0) | (idx >= npix)):
                raise CosiInputError(f"{name} has pixels outside [0, {npix}) for NSIDE {self.nside}")
        self.zpointing = _pointing_lists(zpointing, "zpointing")
        self.xpointing = _pointing_lists(xpointing, "xpointing")
        self.delta_time = _ragged(delta_time, "delta_time")
        self.num_pointings = np.array([len(dt) for dt in self.delta_time], dtype=np.int64)
        for name, rows in (("zpointing", self.zpointing), ("xpointing", self.xpointing),
                           ("delta_time", self.delta_time)):
            if len(rows) != n:
                raise CosiInputError(f"{name} has {len(rows)} rows, expected {n}")
            lengths = np.array([len(r) for r in rows], dtype=np.int64)
            if not np.array_equal(lengths, self.num_pointings):
                row = int(np.flatnonzero(lengths != self.num_pointings)[0])
                raise CosiInputError(f"{name}[{row}] has {lengths[row]} entries but delta_time has "
                                     f"{self.num_pointings[row]}")
        if np.any(self.num_pointings == 0):
            raise CosiInputError("every ScAtt bin needs at least one pointing")
        for row, dt in enumerate(self.delta_time):
            if not np.all(np.isfinite(dt)) or np.any(dt < 0):
                raise CosiInputError(f"delta_time[{row}] must be finite and non-negative")

        self.earth_zenith = None if earth_zenith is None else _pointing_lists(earth_zenith, "earth_zenith")
        self.altitude = None if altitude is None else _ragged(altitude, "altitude")
        for name, rows in (("earth_zenith", self.earth_zenith), ("altitude", self.altitude)):
            if rows is not None and [len(r) for r in rows] != self.num_pointings.tolist():
                raise CosiInputError(f"{name} rows do not match the pointings of each bin")

        computed = np.array([np.sum(dt) for dt in self.delta_time], dtype=np.float64)
        if exposure is None:
            self.exposure = computed
        else:
            self.exposure = np.asarray(exposure, dtype=np.float64).ravel()
            if self.exposure.shape != (n,) or not np.allclose(self.exposure, computed, rtol=1e-9, atol=1e-9):
                raise CosiInputError("exposure does not equal the sum of delta_time in each bin")

        if zpointing_averaged is None:
            zpointing_averaged = [averaged_pointing(p[:, 0], p[:, 1], dt)
                                  for p, dt in zip(self.zpointing, self.delta_time)]
        if xpointing_averaged is None:
            xpointing_averaged = [averaged_pointing(p[:, 0], p[:, 1], dt)
                                  for p, dt in zip(self.xpointing, self.delta_time)]
        self.zpointing_averaged = np.asarray(zpointing_averaged, dtype=np.float64).reshape(n, 2)
        self.xpointing_averaged = np.asarray(xpointing_averaged, dtype=np.float64).reshape(n, 2)
        self.bkg_group = (np.zeros(n, dtype=np.int64) if bkg_group is None
                          else np.asarray(bkg_group, dtype=np.int64).ravel())
        if self.bkg_group.shape != (n,):
            raise CosiInputError(f"bkg_group has shape {self.bkg_group.shape}, expected ({n},)")
        self.scatt_binning_index = np.arange(n, dtype=np.int64)

    # ------------------------------------------------------------ construction
    @classmethod
    def from_orientation(cls, orientation, nside, scheme="ring", start=None, stop=None,
                         min_exposure=0, min_num_pointings=1, pointing="start", use_livetime=True):
        """Group an attitude timeline into ScAtt bins.

        Parameters
        ----------
        orientation : Orientation
            Attitude timeline.
        nside : int
            HEALPix NSIDE of the attitude binning.
        scheme : {'ring', 'nested'}
            HEALPix scheme of the attitude binning.
        start, stop : astropy.time.Time or float, optional
            Use only samples in ``[start, stop]`` (see :meth:`Orientation.select`).
        min_exposure : float or Quantity
            Drop bins with less total time (seconds).
        min_num_pointings : int
            Drop bins with fewer intervals.
        pointing : {'start', 'midpoint'}
            Attitude assigned to interval ``[t_i, t_{i+1})``: the sample at
            ``t_i`` (the current COSI convention and that of the time-binned
            CCM), or the arithmetic (l, b) mean of the samples at ``t_i`` and
            ``t_{i+1}`` (the DC2-era convention of the COSI fixture table).
        use_livetime : bool
            Weight intervals by their live time (True) or by the elapsed time
            from astropy Time differences (False, the DC2-era convention).

        Returns
        -------
        ExposureTable
        """
        if not isinstance(orientation, Orientation):
            raise CosiInputError(f"orientation must be an Orientation, got {type(orientation).__name__}")
        scheme = normalize_scheme(scheme)
        nside = check_nside(nside, scheme)
        if pointing not in ("start", "midpoint"):
            raise CosiInputError(f"pointing must be 'start' or 'midpoint', got {pointing!r}")
        if isinstance(min_exposure, u.Quantity):
            min_exposure = min_exposure.to_value(u.s)
        if start is not None or stop is not None:
            orientation = orientation.select(start, stop)
        if len(orientation) < 2:
            raise CosiInputError("the orientation needs at least two samples (one interval) to build a table")

        dt, livetime = orientation.intervals()
        weights = (livetime if use_livetime else dt).to_value(u.s)
        o = orientation
        if pointing == "start":
            z_l, z_b, x_l, x_b = o._z_l[:-1], o._z_b[:-1], o._x_l[:-1], o._x_b[:-1]
        else:
            z_l, z_b = interval_midpoints(o._z_l, o._z_b)
            x_l, x_b = interval_midpoints(o._x_l, o._x_b)
        idx_z, idx_x, members = scatt_bins(z_l, z_b, x_l, x_b, nside, scheme)

        zp = np.column_stack([z_l, z_b])
        xp = np.column_stack([x_l, x_b])
        rows = {
            "zpointing": [zp[m] for m in members],
            "xpointing": [xp[m] for m in members],
            "delta_time": [weights[m] for m in members],
        }
        if o.has_earth_info:
            zen = np.column_stack([o._zen_l[:-1], o._zen_b[:-1]])
            rows["earth_zenith"] = [zen[m] for m in members]
            rows["altitude"] = [o._alt[:-1][m] for m in members]

        exposure = np.array([np.sum(w) for w in rows["delta_time"]])
        counts = np.array([len(m) for m in members])
        keep = (exposure >= min_exposure) & (counts >= min_num_pointings)
        if not keep.any():
            raise CosiInputError(f"no ScAtt bin passes min_exposure={min_exposure} and "
                                 f"min_num_pointings={min_num_pointings}")
        if not keep.all():
            logger.info("dropping %d of %d ScAtt bins below the exposure / pointing thresholds",
                        int((~keep).sum()), keep.size)
        kept = np.flatnonzero(keep)
        rows = {name: [values[i] for i in kept] for name, values in rows.items()}
        return cls(nside, scheme, idx_z[kept], idx_x[kept], **rows)

    # --------------------------------------------------------------- file I/O
    @classmethod
    def read(cls, path):
        """Read an exposure table from a FITS file (HDU ``EXPOSURETABLE``).

        Parameters
        ----------
        path : str or pathlib.Path

        Returns
        -------
        ExposureTable

        Raises
        ------
        CosiFileError
            Missing file or HDU, missing header keyword or column, or rows that
            are inconsistent (the message names the file and column; see
            :func:`cosi_imaging_plugin.io.exposure_table_file.read_exposure_table_columns`).
        """
        path = Path(path)
        c = read_exposure_table_columns(path)
        try:
            table = cls(c.nside, c.scheme, c.healpix_index_z, c.healpix_index_x, c.zpointing, c.xpointing,
                        c.delta_time, zpointing_averaged=c.zpointing_averaged,
                        xpointing_averaged=c.xpointing_averaged, exposure=c.exposure,
                        earth_zenith=c.earth_zenith, altitude=c.altitude, bkg_group=c.bkg_group)
        except CosiInputError as exc:
            raise CosiFileError(f"{path}: inconsistent exposure table: {exc}") from exc
        if not np.array_equal(c.num_pointings, table.num_pointings):
            raise CosiFileError(f"{path}: num_pointings does not match the length of delta_time")
        logger.info("read exposure table with %d ScAtt bins (NSIDE %d, %s) from %s",
                    len(table), table.nside, table.scheme, path)
        return table

    def write(self, path, overwrite=True):
        """Write the table as FITS (HDU ``EXPOSURETABLE``), atomically.

        Parameters
        ----------
        path : str or pathlib.Path
        overwrite : bool
            Replace an existing file.
        """
        write_exposure_table_columns(path, ExposureTableColumns(
            nside=self.nside, scheme=self.scheme, healpix_index_z=self.healpix_index_z,
            healpix_index_x=self.healpix_index_x, zpointing=self.zpointing, xpointing=self.xpointing,
            delta_time=self.delta_time, exposure=self.exposure, num_pointings=self.num_pointings,
            zpointing_averaged=self.zpointing_averaged, xpointing_averaged=self.xpointing_averaged,
            earth_zenith=self.earth_zenith, altitude=self.altitude, bkg_group=self.bkg_group),
            overwrite=overwrite)

    # ------------------------------------------------------------------ access
    def __len__(self):
        return self.healpix_index_z.size

    def __repr__(self):
        return (f"<ExposureTable: {len(self)} ScAtt bins, NSIDE {self.nside} ({self.scheme}), "
                f"{int(self.num_pointings.sum())} pointings, {self.exposure.sum():.6g} s>")

    @property
    def has_earth_info(self):
        """True when Earth zenith and altitude are known for every pointing."""
        return self.earth_zenith is not None and self.altitude is not None

    def mean_attitudes(self):
        """The attitude of every ScAtt bin built from its averaged pointings.

        Returns
        -------
        numpy.ndarray, shape (n_bins, 3, 3)
            One rotation per bin (see :meth:`rotation_matrices` with ``averaged=True``).
        """
        z, x = self.zpointing_averaged, self.xpointing_averaged
        return rotation_from_axes(lonlat_to_vec(x[:, 0], x[:, 1]), lonlat_to_vec(z[:, 0], z[:, 1]))

    def rotation_matrices(self, index, averaged=False):
        """Attitude rotation matrices of one ScAtt bin.

        Parameters
        ----------
        index : int
            ScAtt bin.
        averaged : bool
            Return the single attitude built from the averaged z and x pointings.

        Returns
        -------
        numpy.ndarray, shape (k, 3, 3)
            Columns x, y = z cross x, z (see :func:`rotation_from_axes`).
        """
        if averaged:
            z, x = self.zpointing_averaged[index:index + 1], self.xpointing_averaged[index:index + 1]
        else:
            z, x = self.zpointing[index], self.xpointing[index]
        return rotation_from_axes(lonlat_to_vec(x[:, 0], x[:, 1]), lonlat_to_vec(z[:, 0], z[:, 1]))

    def attitude_map(self):
        """Exposure per (z pixel, x pixel) pair.

        Returns
        -------
        histpy.Histogram
            Axes ``z`` and ``x`` (Galactic HEALPix at the table's NSIDE), unit s.
        """
        axes = Axes([HealpixAxis(nside=self.nside, scheme=self.scheme, coordsys="galactic", label="z"),
                     HealpixAxis(nside=self.nside, scheme=self.scheme, coordsys="galactic", label="x")])
        contents = np.zeros(axes.nbins)
        np.add.at(contents, (self.healpix_index_z, self.healpix_index_x), self.exposure)
        return Histogram(axes, contents=contents, unit=u.s)
