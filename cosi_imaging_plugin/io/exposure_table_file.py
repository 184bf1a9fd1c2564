"""FITS layout of the spacecraft-attitude exposure table: reader and writer.

FITS layout (BinTable HDU ``EXPOSURETABLE``, header ``NSIDE`` and ``SCHEME``),
as written by the COSI team's DC2-era tools::

    scatt_binning_index K, exposure D [s], num_pointings K, bkg_group K,
    healpix_index_z_pointing K, healpix_index_x_pointing K,
    delta_time PD() [s], zpointing_l/b PD() [deg], xpointing_l/b PD() [deg],
    zpointing_averaged_l/b D [deg], xpointing_averaged_l/b D [deg]

plus, when known, ``earth_zenith_l/b`` PD() [deg] and ``altitude`` PD() [km]
(needed for Earth occultation). The newer cosipy names ``livetime`` and
``total_livetime`` are read as ``delta_time`` and ``exposure``.

This module only handles the file; the table model built on it is
:class:`cosi_imaging_plugin.exposure.ExposureTable`.
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from .._atomic import atomic_path
from ..errors import CosiFileError

logger = logging.getLogger(__name__)

HDU_NAME = "EXPOSURETABLE"


@dataclass(frozen=True)
class ExposureTableColumns:
    """Header values and columns of an exposure table file, one row per ScAtt bin.

    Attributes
    ----------
    nside : int
        HEALPix NSIDE of the attitude binning (header ``NSIDE``).
    scheme : str
        HEALPix scheme (header ``SCHEME``).
    healpix_index_z, healpix_index_x : numpy.ndarray of int64, shape (n,)
        The (z, x) pixel pair of each bin.
    zpointing, xpointing : list of numpy.ndarray, each (k_b, 2)
        ``[l, b]`` in degrees of each interval in bin b.
    delta_time : list of numpy.ndarray, each (k_b,)
        Time of each interval in seconds.
    exposure : numpy.ndarray, shape (n,)
        Total time per bin, seconds.
    num_pointings : numpy.ndarray of int64, shape (n,)
        Number of intervals in each bin.
    zpointing_averaged, xpointing_averaged : numpy.ndarray, shape (n, 2), or None
        Mean pointings, degrees; None when the file lacks them.
    earth_zenith : list of numpy.ndarray, each (k_b, 2), or None
        ``[l, b]`` of the Earth zenith for each interval.
    altitude : list of numpy.ndarray, each (k_b,), or None
        Altitude in km for each interval.
    bkg_group : numpy.ndarray of int64, shape (n,), or None
        Background group of each bin.
    """

    nside: int
    scheme: str
    healpix_index_z: np.ndarray
    healpix_index_x: np.ndarray
    zpointing: list
    xpointing: list
    delta_time: list
    exposure: np.ndarray
    num_pointings: np.ndarray
    zpointing_averaged: np.ndarray | None = None
    xpointing_averaged: np.ndarray | None = None
    earth_zenith: list | None = None
    altitude: list | None = None
    bkg_group: np.ndarray | None = None


def read_exposure_table_columns(path):
    """Read the header values and columns of an exposure table FITS file (HDU ``EXPOSURETABLE``).

    Column names are case-insensitive; ``livetime`` and ``total_livetime`` are
    accepted for ``delta_time`` and ``exposure``. The columns are not checked
    against each other (:class:`cosi_imaging_plugin.exposure.ExposureTable` does that).

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    ExposureTableColumns
        Float64 and int64 arrays, independent of the (closed) file.

    Raises
    ------
    CosiFileError
        Missing file or HDU, missing header keyword or column (the message names
        the file, the HDU and the column).
    """
    path = Path(path)
    try:
        hdul = fits.open(path, memmap=False)
    except (OSError, ValueError) as exc:
        raise CosiFileError(f"{path}: cannot open as FITS ({exc})") from exc
    with hdul:
        if HDU_NAME not in hdul:
            raise CosiFileError(f"{path}: no {HDU_NAME} HDU (found {[h.name for h in hdul]})")
        hdu = hdul[HDU_NAME]
        header, data = hdu.header, hdu.data
        for key in ("NSIDE", "SCHEME"):
            if key not in header:
                raise CosiFileError(f"{path}: {HDU_NAME} header has no {key}")
        names = [n.lower() for n in (data.columns.names if data is not None else [])]

        def column(*candidates, required=True):
            for name in candidates:
                if name in names:
                    return data[data.columns.names[names.index(name)]]
            if required:
                raise CosiFileError(f"{path}: {HDU_NAME} has no column {' or '.join(candidates)}")
            return None

        def pairs(prefix, required=True):
            lon, lat = column(prefix + "_l", required=required), column(prefix + "_b", required=required)
            if lon is None or lat is None:
                return None
            return [np.column_stack([np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)])
                    for a, b in zip(lon, lat)]

        # A fixed lookup order: a file missing several columns always names the same one.
        delta_time = [np.asarray(v, dtype=np.float64) for v in column("delta_time", "livetime")]
        exposure = np.asarray(column("exposure", "total_livetime"), dtype=np.float64)
        averaged = {}
        for axis in ("z", "x"):
            lon = column(f"{axis}pointing_averaged_l", required=False)
            lat = column(f"{axis}pointing_averaged_b", required=False)
            averaged[axis] = (None if lon is None or lat is None else
                              np.column_stack([np.asarray(lon, float), np.asarray(lat, float)]))
        altitude = column("altitude", required=False)
        bkg_group = column("bkg_group", required=False)
        num_pointings = np.asarray(column("num_pointings"), dtype=np.int64)
        nside, scheme = int(header["NSIDE"]), str(header["SCHEME"])
        return ExposureTableColumns(
            nside=nside, scheme=scheme,
            healpix_index_z=np.asarray(column("healpix_index_z_pointing"), dtype=np.int64),
            healpix_index_x=np.asarray(column("healpix_index_x_pointing"), dtype=np.int64),
            zpointing=pairs("zpointing"), xpointing=pairs("xpointing"), delta_time=delta_time,
            exposure=exposure, num_pointings=num_pointings,
            zpointing_averaged=averaged["z"], xpointing_averaged=averaged["x"],
            earth_zenith=pairs("earth_zenith", required=False),
            altitude=None if altitude is None else [np.asarray(a, float) for a in altitude],
            bkg_group=None if bkg_group is None else np.asarray(bkg_group, dtype=np.int64))


def write_exposure_table_columns(path, columns, overwrite=True):
    """Write exposure table columns as FITS (HDU ``EXPOSURETABLE``), atomically.

    Parameters
    ----------
    path : str or pathlib.Path
    columns : ExposureTableColumns
        Everything but ``earth_zenith`` and ``altitude`` is required; those two
        columns are written when given. ``scatt_binning_index`` is ``arange(n)``.
    overwrite : bool
        Replace an existing file.
    """
    def varlen(rows):
        return np.array([np.asarray(r, dtype=np.float64) for r in rows] + [None], dtype=object)[:-1]

    c = columns
    n = len(c.healpix_index_z)
    fits_columns = [
        fits.Column(name="scatt_binning_index", format="K", array=np.arange(n, dtype=np.int64)),
        fits.Column(name="exposure", format="D", unit="s", array=c.exposure),
        fits.Column(name="num_pointings", format="K", array=c.num_pointings),
        fits.Column(name="bkg_group", format="K", array=c.bkg_group),
        fits.Column(name="healpix_index_z_pointing", format="K", array=c.healpix_index_z),
        fits.Column(name="healpix_index_x_pointing", format="K", array=c.healpix_index_x),
        fits.Column(name="delta_time", format="PD()", unit="s", array=varlen(c.delta_time)),
        fits.Column(name="zpointing_l", format="PD()", unit="degree", array=varlen(p[:, 0] for p in c.zpointing)),
        fits.Column(name="zpointing_b", format="PD()", unit="degree", array=varlen(p[:, 1] for p in c.zpointing)),
        fits.Column(name="xpointing_l", format="PD()", unit="degree", array=varlen(p[:, 0] for p in c.xpointing)),
        fits.Column(name="xpointing_b", format="PD()", unit="degree", array=varlen(p[:, 1] for p in c.xpointing)),
        fits.Column(name="zpointing_averaged_l", format="D", unit="degree", array=c.zpointing_averaged[:, 0]),
        fits.Column(name="zpointing_averaged_b", format="D", unit="degree", array=c.zpointing_averaged[:, 1]),
        fits.Column(name="xpointing_averaged_l", format="D", unit="degree", array=c.xpointing_averaged[:, 0]),
        fits.Column(name="xpointing_averaged_b", format="D", unit="degree", array=c.xpointing_averaged[:, 1]),
    ]
    if c.earth_zenith is not None:
        fits_columns += [
            fits.Column(name="earth_zenith_l", format="PD()", unit="degree",
                        array=varlen(p[:, 0] for p in c.earth_zenith)),
            fits.Column(name="earth_zenith_b", format="PD()", unit="degree",
                        array=varlen(p[:, 1] for p in c.earth_zenith)),
        ]
    if c.altitude is not None:
        fits_columns.append(fits.Column(name="altitude", format="PD()", unit="km", array=varlen(c.altitude)))
    table_hdu = fits.BinTableHDU.from_columns(fits_columns, name=HDU_NAME)
    table_hdu.header["NSIDE"] = c.nside
    table_hdu.header["SCHEME"] = c.scheme
    with atomic_path(path, overwrite=overwrite) as tmp:
        fits.HDUList([fits.PrimaryHDU(), table_hdu]).writeto(tmp, overwrite=True)
    logger.info("wrote exposure table with %d ScAtt bins to %s", n, path)
