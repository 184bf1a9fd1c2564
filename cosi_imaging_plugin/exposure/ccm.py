"""Coordinate conversion matrix (CCM): Galactic model pixels -> spacecraft-frame pixels, in seconds.

``C[b, j, i] = sum over attitudes t in bin b of dt_t * w(i | R_t^T n_j)``, with
``n_j`` the centre of Galactic model pixel j, ``R_t`` the attitude rotation
(columns x, y = z cross x, z) and ``w`` the bilinear HEALPix interpolation
weights on the NuLambda grid. Each row therefore sums to the bin's exposure:
``sum_i C[b, j, i] = sum_t dt_t`` (less the occulted time with Earth
occultation, where a pixel below the limb at attitude t gets nothing).

Axes: ``[ScAtt | Time, lb, NuLambda]``; ScAtt edges ``arange(n+1)`` without a
unit, Time edges in seconds (Unix); unit ``s``; stored sparse (COO).
"""
import itertools
import logging

import astropy.units as u
import healpy as hp
import numpy as np
import sparse
from astropy.time import Time
from histpy import Axes, Axis, HealpixAxis, Histogram
from tqdm.auto import tqdm

from ..binning import check_nside, normalize_scheme
from ..errors import AxisMismatchError, CosiInputError
from ..geometry import lonlat_to_vec, rotation_from_axes, visible_mask
from ..io.histograms import check_ccm_layout, write_histogram
from .dwell import _CHUNK, _Accumulator, fold_attitudes, fold_directions, show_progress, spacecraft_axis
from .exposure_table import ExposureTable
from .orientation import Orientation
from .scatt import averaged_pointing

logger = logging.getLogger(__name__)

_BINNING_LABELS = {"scatt": "ScAtt", "time": "Time"}


class _Bin:
    """Attitudes of one CCM bin: axis vectors, times and optional Earth data."""

    __slots__ = ("altitude", "exposure", "times", "x", "x_avg", "z", "z_avg", "zenith")

    def __init__(self, x, z, times, zenith=None, altitude=None, x_avg=None, z_avg=None, exposure=None):
        self.x, self.z, self.times = x, z, times
        self.zenith, self.altitude = zenith, altitude
        self.x_avg, self.z_avg = x_avg, z_avg
        self.exposure = float(np.sum(times)) if exposure is None else float(exposure)


def _bins_from_table(table, earth_occultation):
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
    return bins


def _time_edges_seconds(time_edges, orientation):
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


def _bins_from_time_edges(orientation, edges, earth_occultation, use_livetime):
    """Split the timeline's intervals over time bins, in proportion to their overlap."""
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
    bins = []
    for lo, hi in itertools.pairwise(edges):
        first = np.searchsorted(stop, lo, side="right")  # first interval ending after lo
        last = np.searchsorted(start, hi, side="left")  # intervals starting before hi
        idx = np.arange(first, last)
        overlap = np.minimum(stop[idx], hi) - np.maximum(start[idx], lo)
        frac = np.clip(overlap, 0.0, None) / (stop[idx] - start[idx])
        w = times[idx] * frac
        lon_x, lat_x = orientation._x_l[idx], orientation._x_b[idx]
        lon_z, lat_z = orientation._z_l[idx], orientation._z_b[idx]
        x_avg = z_avg = None
        if idx.size:
            x_avg = lonlat_to_vec(*averaged_pointing(lon_x, lat_x, w))
            z_avg = lonlat_to_vec(*averaged_pointing(lon_z, lat_z, w))
        bins.append(_Bin(x_vec[idx], z_vec[idx], w,
                         None if zenith is None else zenith[idx],
                         None if altitude is None else altitude[idx], x_avg=x_avg, z_avg=z_avg))
    return bins


def _visible_exposure(b, directions):
    """Time each direction is above the Earth limb during bin b, shape (J,)."""
    total = np.zeros(directions.shape[0])
    step = max(1, _CHUNK // directions.shape[0])
    for s in range(0, len(b.times), step):
        sl = slice(s, s + step)
        total += b.times[sl] @ visible_mask(b.zenith[sl], b.altitude[sl], directions)
    return total


def coordsys_conversion_matrix(exposure_table_or_orientation, nside_model, nside_response, binning="scatt",
                               time_edges=None, use_averaged_pointing=False, earth_occultation=False,
                               scheme="ring", dtype=np.float64, nside_scatt=None, response_scheme="ring",
                               use_livetime=True, progress=None):
    """Build the coordinate conversion matrix.

    Parameters
    ----------
    exposure_table_or_orientation : ExposureTable or Orientation
        ScAtt binning uses the table's bins (an Orientation is first grouped at
        ``nside_scatt`` with :meth:`ExposureTable.from_orientation`). Time
        binning needs an Orientation.
    nside_model : int
        NSIDE of the Galactic model axis ``lb``.
    nside_response : int
        NSIDE of the response's spacecraft-frame axis ``NuLambda``.
    binning : {'scatt', 'time'}
        First axis: ScAtt bins or time bins.
    time_edges : astropy.time.Time, Quantity or array_like, optional
        Time-bin edges (numbers are Unix seconds); default one bin spanning the
        orientation. An interval straddling an edge is split in proportion to
        its overlap, keeping its start attitude.
    use_averaged_pointing : bool
        Use one attitude per bin, from the exposure-weighted mean z and x
        pointings, with the bin's whole exposure (fast, coarser).
    earth_occultation : bool
        Give a model pixel no time from attitudes where it is below the Earth
        limb (needs Earth zenith and altitude).
    scheme : {'ring', 'nested'}
        Scheme of the model axis.
    dtype : numpy dtype
        Dtype of the stored values (accumulated in float64).
    nside_scatt : int, optional
        Attitude NSIDE when an Orientation is given with ScAtt binning.
    response_scheme : {'ring', 'nested'}
        Scheme of the NuLambda axis.
    use_livetime : bool
        With an Orientation: weight intervals by live time (True) or elapsed time.
    progress : bool or None
        Progress bar over bins (None: only for long builds).

    Returns
    -------
    histpy.Histogram
        Axes ``[ScAtt | Time, lb, NuLambda]``, unit s, sparse (COO).

    Raises
    ------
    CosiInputError
        Invalid NSIDE or scheme, wrong input type for the binning, missing
        ``nside_scatt``, or Earth occultation without Earth information.
    """
    if binning not in _BINNING_LABELS:
        raise CosiInputError(f"binning must be 'scatt' or 'time', got {binning!r}")
    scheme = normalize_scheme(scheme)
    nside_model = check_nside(nside_model, scheme, "nside_model")
    response_axis = spacecraft_axis(nside_response, response_scheme)
    source = exposure_table_or_orientation

    if binning == "scatt":
        if isinstance(source, Orientation):
            if nside_scatt is None:
                raise CosiInputError("ScAtt binning of an Orientation needs nside_scatt "
                                     "(or pass an ExposureTable)")
            source = ExposureTable.from_orientation(source, nside_scatt, use_livetime=use_livetime)
        if not isinstance(source, ExposureTable):
            raise CosiInputError(f"ScAtt binning needs an ExposureTable or an Orientation, "
                                 f"got {type(source).__name__}")
        if time_edges is not None:
            raise CosiInputError("time_edges only applies to binning='time'")
        if earth_occultation and not source.has_earth_info:
            raise CosiInputError("this exposure table has no Earth zenith / altitude columns; "
                                 "Earth occultation cannot be applied")
        bins = _bins_from_table(source, earth_occultation)
        first_axis = Axis(np.arange(len(bins) + 1), label="ScAtt")
    else:
        if not isinstance(source, Orientation):
            raise CosiInputError(f"time binning needs an Orientation, got {type(source).__name__}")
        if earth_occultation and not source.has_earth_info:
            raise CosiInputError("this orientation has no Earth zenith / altitude; "
                                 "Earth occultation cannot be applied")
        edges = _time_edges_seconds(time_edges, source)
        bins = _bins_from_time_edges(source, edges, earth_occultation, use_livetime)
        first_axis = Axis(edges * u.s, label="Time")

    model_axis = HealpixAxis(nside=nside_model, scheme=scheme, coordsys="galactic", label="lb")
    directions = np.asarray(hp.pix2vec(nside_model, np.arange(model_axis.npix),
                                       nest=model_axis.is_nested)).T
    n_model, n_resp = model_axis.npix, response_axis.npix
    work = sum(1 if use_averaged_pointing else len(b.times) for b in bins) * n_model
    logger.info("building %s CCM: %d bins, model NSIDE %d, response NSIDE %d%s%s", first_axis.label,
                len(bins), nside_model, response_axis.nside,
                ", averaged pointing" if use_averaged_pointing else "",
                ", Earth occultation" if earth_occultation else "")

    coords, data = [], []
    for index, b in enumerate(tqdm(bins, desc=f"CCM ({first_axis.label})", unit="bin",
                                   disable=not show_progress(progress, work))):
        acc = _Accumulator(n_model * n_resp)
        if len(b.times) == 0:
            continue
        if use_averaged_pointing:
            exposure = (_visible_exposure(b, directions) if earth_occultation
                        else np.full(n_model, b.exposure))
            fold_directions(rotation_from_axes(b.x_avg, b.z_avg)[None], exposure[None, :], directions,
                            response_axis.nside, response_axis.is_nested, acc)
        else:
            fold_attitudes(b.x, b.z, b.times, directions, response_axis.nside, response_axis.is_nested, acc,
                           zenith=b.zenith, altitude=b.altitude, progress=False)
        keys, values = acc.result()
        coords.append(np.vstack([np.full(keys.size, index, dtype=np.int64), keys // n_resp, keys % n_resp]))
        data.append(values)

    shape = (first_axis.nbins, n_model, n_resp)
    coords = np.hstack(coords) if coords else np.zeros((3, 0), dtype=np.int64)
    data = np.concatenate(data).astype(dtype) if data else np.zeros(0, dtype=dtype)
    contents = sparse.COO(coords, data, shape=shape, has_duplicates=False, sorted=True)
    ccm = Histogram(Axes([first_axis, model_axis, response_axis]), contents=contents, unit=u.s)
    logger.info("CCM done: %d non-zero entries (%.2f%% filled)", data.size, 100.0 * data.size / np.prod(shape))
    return ccm


def write_ccm(ccm, path, name="hist", overwrite=True):
    """Validate a CCM and write it with histpy (HDF5, COO layout), atomically.

    Read it back with :func:`cosi_imaging_plugin.io.read_ccm`.

    Parameters
    ----------
    ccm : histpy.Histogram
    path : str or pathlib.Path
        Output file; it holds only this histogram.
    name : str
        HDF5 group.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
    """
    check_ccm(ccm)
    return write_histogram(ccm, path, name=name, overwrite=overwrite)


def check_ccm(ccm, nside_model=None, nside_response=None, where="CCM"):
    """Validate a CCM histogram's axes, frames, unit and (optionally) NSIDEs.

    Parameters
    ----------
    ccm : histpy.Histogram
    nside_model, nside_response : int, optional
        Expected NSIDEs of ``lb`` and ``NuLambda``.
    where : str
        Name used in error messages (e.g. the file).

    Raises
    ------
    CosiInputError
        A layout other than a CCM's (see :func:`~cosi_imaging_plugin.io.histograms.check_ccm_layout`).
    AxisMismatchError
        NSIDE different from the expected one.
    """
    check_ccm_layout(ccm, where)
    lb, nu = ccm.axes["lb"], ccm.axes["NuLambda"]
    if nside_model is not None and lb.nside != nside_model:
        raise AxisMismatchError(f"{where}: lb NSIDE is {lb.nside}, expected {nside_model}")
    if nside_response is not None and nu.nside != nside_response:
        raise AxisMismatchError(f"{where}: NuLambda NSIDE is {nu.nside}, expected {nside_response}")
