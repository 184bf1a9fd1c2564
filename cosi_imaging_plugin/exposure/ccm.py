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
from histpy import Axes, HealpixAxis, Histogram
from scipy import sparse as scipy_sparse
from tqdm.auto import tqdm

from ..binning import check_nside, normalize_scheme
from ..errors import AxisMismatchError, CosiInputError
from ..geometry import rotation_from_axes
from ..io.histograms import check_ccm_layout, write_histogram
from .attitude_bins import AttitudeBins
from .dwell import _Accumulator, fold_attitudes, fold_directions, show_progress, spacecraft_axis
from .exposure_table import ExposureTable
from .orientation import Orientation

logger = logging.getLogger(__name__)

_BINNING_LABELS = {"scatt": "ScAtt", "time": "Time"}


def attitude_bins(exposure_table_or_orientation, binning="scatt", time_edges=None, use_averaged_pointing=False,
                  earth_occultation=False, nside_scatt=None, use_livetime=True):
    """The :class:`AttitudeBins` of a CCM's rows (the arguments of :func:`coordsys_conversion_matrix`)."""
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
        return AttitudeBins.from_exposure_table(source, use_averaged_pointing, earth_occultation)
    if binning != "time":
        raise CosiInputError(f"binning must be 'scatt' or 'time', got {binning!r}")
    return AttitudeBins.from_orientation(source, time_edges, use_averaged_pointing, earth_occultation, use_livetime)


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
    bins = attitude_bins(exposure_table_or_orientation, binning, time_edges=time_edges,
                         use_averaged_pointing=use_averaged_pointing, earth_occultation=earth_occultation,
                         nside_scatt=nside_scatt, use_livetime=use_livetime)
    first_axis = bins.row_axis

    model_axis = HealpixAxis(nside=nside_model, scheme=scheme, coordsys="galactic", label="lb")
    directions = np.asarray(hp.pix2vec(nside_model, np.arange(model_axis.npix),
                                       nest=model_axis.is_nested)).T
    n_model, n_resp = model_axis.npix, response_axis.npix
    logger.info("building %s CCM: %d bins, model NSIDE %d, response NSIDE %d%s%s", first_axis.label,
                len(bins), nside_model, response_axis.nside,
                ", averaged pointing" if use_averaged_pointing else "",
                ", Earth occultation" if earth_occultation else "")

    rows, pixels, nus, data = _fold_directions_per_bin(bins, directions, response_axis, progress)
    coords = np.vstack([rows, pixels, nus])
    shape = (first_axis.nbins, n_model, n_resp)
    data = data.astype(dtype)
    contents = sparse.COO(coords, data, shape=shape, has_duplicates=False, sorted=True)
    ccm = Histogram(Axes([first_axis, model_axis, response_axis]), contents=contents, unit=u.s)
    logger.info("CCM done: %d non-zero entries (%.2f%% filled)", data.size, 100.0 * data.size / np.prod(shape))
    return ccm


def _fold_directions_per_bin(bins, directions, response_axis, progress):
    """(row, direction, NuLambda pixel, seconds) of every non-zero dwell of `directions` in the rows of `bins`."""
    n_dir, n_resp = directions.shape[0], response_axis.npix
    rows, keys_all, data = [], [], []
    for index, b in enumerate(tqdm(bins.bins, desc=f"CCM ({bins.row_axis.label})", unit="bin",
                                   disable=not show_progress(progress, bins.work * n_dir))):
        acc = _Accumulator(n_dir * n_resp)
        if len(b.times) == 0:
            continue
        if bins.use_averaged_pointing:
            exposure = (b.visible_exposure(directions) if bins.earth_occultation
                        else np.full(n_dir, b.exposure))
            fold_directions(rotation_from_axes(b.x_avg, b.z_avg)[None], exposure[None, :], directions,
                            response_axis.nside, response_axis.is_nested, acc)
        else:
            fold_attitudes(b.x, b.z, b.times, directions, response_axis.nside, response_axis.is_nested, acc,
                           zenith=b.zenith, altitude=b.altitude, progress=False)
        keys, values = acc.result()
        rows.append(np.full(keys.size, index, dtype=np.int64))
        keys_all.append(keys)
        data.append(values)
    if not data:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0)
    keys = np.concatenate(keys_all)
    return np.concatenate(rows), keys // n_resp, keys % n_resp, np.concatenate(data)


def dwell_matrix(attitudes, directions, nside_response, response_scheme="ring", progress=None):
    """The dwell of many exact directions in every response pixel of every row, as one sparse matrix.

    The CCM of a sky whose "pixels" are these directions: what :meth:`AttitudeBins.dwell` gives for
    one direction, for all of them at once (point sources folded along their path).

    Parameters
    ----------
    attitudes : AttitudeBins
    directions : ndarray, shape (n, 3)
        Galactic unit vectors.
    nside_response : int
    response_scheme : {'ring', 'nested'}
    progress : bool or None

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n_rows * n_nu, n)
        ``D[s * n_nu + nu, i]`` in seconds.
    """
    directions = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    response_axis = spacecraft_axis(nside_response, response_scheme)
    rows, index, nu, seconds = _fold_directions_per_bin(attitudes, directions, response_axis, progress)
    return scipy_sparse.csr_matrix((seconds, (rows * response_axis.npix + nu, index)),
                                   shape=(len(attitudes) * response_axis.npix, directions.shape[0]))


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


def matching_attitude_bins(exposure_table_or_orientation, ccm, where="CCM"):
    """The :class:`AttitudeBins` that reproduce a CCM's rows, or None when no way of building it does.

    A CCM does not record how it was made. Each choice (every attitude or one averaged
    attitude per row; with or without Earth occultation) is tried on twelve model pixels
    spread over the sky (those holding the centres of the NSIDE 1 pixels, where the Earth
    hides some at some time): the first whose rows equal the CCM's columns at all of them
    (to 1e-6 of the largest entry) is returned.

    Parameters
    ----------
    exposure_table_or_orientation : ExposureTable or Orientation
        The attitudes of a ScAtt-binned CCM (a table) or a Time-binned one (an orientation).
    ccm : histpy.Histogram
    where : str
        Name used in messages.
    """
    source = exposure_table_or_orientation
    binning = "scatt" if ccm.axes[0].label == "ScAtt" else "time"
    time_edges = ccm.axes[0].edges.to_value(u.s) if binning == "time" else None
    lb, nu = ccm.axes["lb"], ccm.axes["NuLambda"]
    contents = ccm.contents
    contents = contents if hasattr(contents, "coords") else sparse.COO.from_numpy(np.asarray(contents))
    scale = (ccm.unit or u.s).to(u.s)
    spread = hp.pix2vec(1, np.arange(12))
    chosen = np.unique(hp.vec2pix(lb.nside, *spread, nest=lb.is_nested))
    columns = {j: np.asarray(contents[:, j, :].todense()) * scale for j in chosen}
    has_earth = source.has_earth_info
    for averaged, occultation in itertools.product((False, True), (False, True) if has_earth else (False,)):
        try:
            bins = attitude_bins(source, binning, time_edges=time_edges, use_averaged_pointing=averaged,
                                 earth_occultation=occultation)
        except CosiInputError:
            return None
        if len(bins) != ccm.axes[0].nbins:
            logger.warning("%s has %d rows but its attitudes give %d: point sources are folded on the model grid",
                           where, ccm.axes[0].nbins, len(bins))
            return None
        if all(np.allclose(bins.dwell(np.array(hp.pix2vec(lb.nside, j, nest=lb.is_nested)), nu.nside, nu.is_nested),
                           column, rtol=0.0, atol=1e-6 * max(column.max(), 1e-300))
               for j, column in columns.items()):
            logger.info("%s: rows reproduced from the attitudes (%s pointing%s)", where,
                        "averaged" if averaged else "every", ", Earth occultation" if occultation else "")
            return bins
    logger.warning("%s: no way of building it from the attitudes reproduces its rows; point sources are folded "
                   "on the model grid", where)
    return None
