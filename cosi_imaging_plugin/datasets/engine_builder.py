"""The one place a :class:`~cosi_imaging_plugin.engine.ResponseEngine` is assembled from COSI inputs.

Every route into an analysis (the dataset constructors, the 3ML plugin, the
deconvolution command, the pipeline) comes here, so they share one set of defaults
(:data:`DEFAULT_RTOL`, float32 response values) and one choice of attitudes. The
setups on disk:

- Local CDS (PsiChi in the spacecraft frame) with a CCM: the rows are its ScAtt or
  Time bins.
- Local CDS with an orientation file and no CCM: the data are summed over time and
  folded with the dwell time of every sky pixel (a one-bin Time CCM).
- Galactic CDS (PsiChi Galactic): the response is rotated into the Galactic frame
  over attitude bins, each at its averaged attitude, and folded once. The bins are
  those of a given exposure table (with its CCM when given: they are what the data
  were made with); without a table, the orientation is binned at the response NSIDE.
- A precomputed Galactic-frame response (source axis lb, cm2 s): folded as it is.

Axes the analysis does not use (Time when summed, Ei, SigmaTau, Dist) are summed out.
"""
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
from histpy import Axes, Histogram

from ..binning import frame_name
from ..distributed import check_mapping_on, connect, current_mapping_on, current_scheduler, sharded_engine
from ..engine import CCMMapping, ColumnResponse, PixelMapping, ResponseEngine, RotatedResponse, galactic_response
from ..errors import CosiInputError
from ..exposure import AttitudeBins, ExposureTable, Orientation, coordsys_conversion_matrix, matching_attitude_bins
from ..io.histograms import read_ccm, read_histogram
from ..io.response import FullDetectorResponse

logger = logging.getLogger(__name__)

#: Response truncation tolerance of every engine built from a response file (see ColumnResponse):
#: the expected counts of any non-negative sky change by at most this fraction.
DEFAULT_RTOL = 1e-3
#: Storage type of the response values and of the kernels' source rows.
DEFAULT_DTYPE = np.float32

CDS_LABELS = ["Em", "Phi", "PsiChi"]
ROW_LABELS = ("ScAtt", "Time")
FRAMES = ("galactic", "spacecraftframe")


class BuiltEngine(NamedTuple):
    """What :func:`build_engine` returns."""

    #: The engine, with its data set.
    engine: ResponseEngine
    #: The data, as the engine holds them (unused axes summed out, a row axis added where needed).
    counts: Histogram
    #: The background templates, likewise.
    backgrounds: dict
    #: The attitudes through which point sources are folded (None: on the model grid): those of the engine's
    #: rows for local-CDS data, those whose rotations made the Galactic-frame response for Galactic-CDS data.
    attitudes: AttitudeBins = None
    #: For Galactic-CDS data, the spacecraft-frame response with the rotations of `attitudes` (point sources
    #: are folded through it along their path).
    rotated: RotatedResponse = None


def psichi_frame(hist, what="binned data"):
    """'galactic' or 'spacecraftframe', the frame of a histogram's PsiChi axis."""
    if "PsiChi" not in hist.axes.labels:
        raise CosiInputError(f"{what} have no PsiChi axis (axes: {list(hist.axes.labels)})")
    name = frame_name(hist.axes["PsiChi"])
    if name not in FRAMES:
        raise CosiInputError(f"{what}: PsiChi axis in unsupported frame {name!r}: expected one of {list(FRAMES)}")
    return name


def reduce_axes(hist, keep_rows, what):
    """Sum out every axis but the CDS ones (and the row axis when `keep_rows`)."""
    labels = list(hist.axes.labels)
    missing = [label for label in CDS_LABELS if label not in labels]
    if missing:
        raise CosiInputError(f"{what} lacks axis/axes {missing} (axes: {labels})")
    rows = [label for label in labels if label in ROW_LABELS]
    keep = ([rows[0]] if keep_rows and rows else []) + CDS_LABELS
    if keep == labels:
        return hist
    dropped = [label for label in labels if label not in keep]
    logger.info("%s: summing out axes %s", what, dropped)
    return hist.project(keep)


def load_response(response, rtol=DEFAULT_RTOL, dtype=DEFAULT_DTYPE, progress=True):
    """A ColumnResponse from a ColumnResponse, a FullDetectorResponse or a file path."""
    if isinstance(response, ColumnResponse):
        return response
    if isinstance(response, (str, Path, FullDetectorResponse)):
        logger.info("compressing response %s (rtol=%g)", getattr(response, "filename", response), rtol)
        return ColumnResponse.from_file(response, rtol=rtol, dtype=dtype, progress=progress)
    raise CosiInputError(f"response must be a ColumnResponse, a FullDetectorResponse or a file path, "
                         f"got {type(response).__name__}")


def as_histogram(obj, what, counts=False):
    """A Histogram, read from a file when `obj` is a path."""
    if isinstance(obj, Histogram):
        return obj
    if isinstance(obj, (str, Path)):
        return read_histogram(obj, counts=counts)
    raise CosiInputError(f"{what} must be a histpy.Histogram or a file path, got {type(obj).__name__}")


def check_time_overlap(time_axis, orientation, name="the orientation"):
    """Refuse data whose Time bins lie outside the orientation's time range; warn of a partial overlap.

    Parameters
    ----------
    time_axis : histpy.Axis
        The data's ``Time`` axis (Unix seconds).
    orientation : Orientation
    name : str
        The orientation as messages name it (its file).
    """
    edges = time_axis.edges
    edges = np.asarray(edges.to_value("s") if hasattr(edges, "to_value") else edges, dtype=float)
    start, stop = float(orientation.unix_seconds[0]), float(orientation.unix_seconds[-1])
    if edges[-1] <= start or edges[0] >= stop:
        raise CosiInputError(f"the data's Time axis ({edges[0]:.3f} .. {edges[-1]:.3f} s) does not overlap "
                             f"{name} ({start:.3f} .. {stop:.3f} s): are they of the same observation?")
    if edges[0] < start or edges[-1] > stop:
        logger.warning("the data's Time axis (%.3f .. %.3f s) reaches beyond %s (%.3f .. %.3f s)", edges[0],
                       edges[-1], name, start, stop)


def _as_ccm(ccm):
    return read_ccm(ccm) if isinstance(ccm, (str, Path)) else ccm


def _as_orientation(orientation):
    return Orientation.read(orientation) if isinstance(orientation, (str, Path)) else orientation


def _as_table(table):
    return ExposureTable.read(table) if isinstance(table, (str, Path)) else table


def build_engine(response, data, backgrounds=None, ccm=None, orientation=None, exposure_table=None,
                 galactic_response_given=False, rtol=DEFAULT_RTOL, dtype=DEFAULT_DTYPE, nside_model=None,
                 progress=True, client=None, mapping_on=None):
    """Engine for binned data in either frame (see module docstring).

    Parameters
    ----------
    response : str, pathlib.Path, FullDetectorResponse or ColumnResponse
        Spacecraft-frame detector response, or with `galactic_response_given` a
        Galactic-frame response (source axis lb, cm2 s).
    data : histpy.Histogram or path
        Binned counts with at least Em, Phi and PsiChi axes.
    backgrounds : dict of str to histpy.Histogram or path, optional
        Templates (expected counts) with the data's binning.
    ccm : histpy.Histogram or path, optional
        Coordinate conversion matrix (local CDS; for Galactic data, the one of
        `exposure_table`).
    orientation : Orientation or path, optional
        Attitude timeline (local CDS without CCM; Galactic CDS without exposure table).
    exposure_table : ExposureTable or path, optional
        ScAtt bins whose mean attitudes rotate the response for Galactic data.
    galactic_response_given : bool
        `response` is already in the Galactic frame: no CCM and no rotation.
    rtol : float
        Response truncation tolerance (when compressing a file or rotating).
    dtype : numpy dtype
        Storage type of the response values.
    nside_model : int, optional
        NSIDE of the sky model grid when a CCM is computed here (default: the response's).
    progress : bool
        Show progress bars while compressing or rotating.
    client : distributed.Client, str or cluster, optional
        Shard the engine over the workers of a Dask cluster (a client, a scheduler
        address or a cluster object; :mod:`cosi_imaging_plugin.distributed`). A response
        file is then read by the workers, each its own columns; a Galactic-frame response
        made here by rotation is rotated in this process and its shards sent out.
        By default, the client of an enclosing
        :func:`~cosi_imaging_plugin.distributed.use_scheduler` block (none: one process).
    mapping_on : {'auto', 'workers', 'client'}, optional
        With a client, where the sky mapping (the CCM) lives (see
        :func:`~cosi_imaging_plugin.distributed.sharded_engine`). By default, that of an
        enclosing :func:`~cosi_imaging_plugin.distributed.use_scheduler` block, else 'auto'.

    Returns
    -------
    BuiltEngine
        The engine with its data set, the data and templates as the engine holds them, and
        the attitudes of its rows: for local-CDS data binned with a CCM, those of the exposure
        table (ScAtt) or orientation (Time) that reproduce the CCM's rows, when given; for data
        folded with the orientation, those the CCM was built from.
    """
    data = as_histogram(data, "data", counts=True)
    if orientation is not None and "Time" in data.axes.labels:
        name = f"orientation {orientation}" if isinstance(orientation, (str, Path)) else "the orientation"
        orientation = _as_orientation(orientation)
        check_time_overlap(data.axes["Time"], orientation, name)
    backgrounds = {str(k): as_histogram(v, f"background '{k}'") for k, v in (backgrounds or {}).items()}
    client = current_scheduler() if client is None else connect(client)
    mapping_on = check_mapping_on(current_mapping_on() if mapping_on is None else mapping_on)
    # on a cluster a response file stays a path: the workers read it
    lazy = client is not None and not isinstance(response, ColumnResponse)
    column_response = response if lazy else load_response(response, rtol=rtol, dtype=dtype, progress=progress)
    response_axes = _response_axes(column_response)
    if galactic_response_given:
        if ccm is not None:
            raise CosiInputError("a Galactic-frame response is folded as it is: give no CCM with it")
        engine = _make_engine(column_response, PixelMapping(response_axes[0].nbins), data, backgrounds, rtol, dtype,
                              client, mapping_on)
        return BuiltEngine(engine, data, backgrounds)
    frame = psichi_frame(data)
    nside_rsp = response_axes[0].nside
    keep_rows = frame == "spacecraftframe" and ccm is not None
    data = reduce_axes(data, keep_rows, "data")
    backgrounds = {k: reduce_axes(v, keep_rows, f"background '{k}'") for k, v in backgrounds.items()}
    if frame == "spacecraftframe":
        if ccm is None:
            if orientation is None:
                raise CosiInputError("local-CDS data: the analysis needs a CCM (ccm=...) or an orientation file "
                                     "(a precomputed Galactic-frame response is folded with galactic=True)")
            orientation = _as_orientation(orientation)
            time_edges = orientation.unix_seconds[[0, -1]]
            ccm = coordsys_conversion_matrix(orientation, nside_model or nside_rsp, nside_rsp, binning="time",
                                             time_edges=time_edges)
            attitudes = AttitudeBins.from_orientation(orientation, time_edges)
            data = _with_row_axis(data, ccm)
            backgrounds = {k: _with_row_axis(v, ccm) for k, v in backgrounds.items()}
        else:
            ccm = _as_ccm(ccm)
            attitudes = _ccm_attitudes(ccm, exposure_table, orientation)
        engine = _make_engine(column_response, CCMMapping(ccm), data, backgrounds, rtol, dtype, client, mapping_on)
        return BuiltEngine(engine, data, backgrounds, attitudes)
    ccm, table = _galactic_attitude_bins(exposure_table, ccm, orientation, nside_model or nside_rsp, nside_rsp)
    psichi = data.axes["PsiChi"]
    if lazy:  # the rotation reads every column
        column_response = load_response(response, rtol=rtol, dtype=dtype, progress=progress)
    rotated = RotatedResponse(column_response, table.mean_attitudes(), psichi.nside, str(psichi.scheme).lower())
    gal = galactic_response(column_response, ccm, table.mean_attitudes(), rtol=rtol, dtype=dtype, progress=progress,
                            rotated=rotated)
    engine = _make_engine(gal, PixelMapping(gal.axes[0].nbins), data, backgrounds, rtol, dtype, client,
                          mapping_on)
    return BuiltEngine(engine, data, backgrounds, matching_attitude_bins(table, ccm), rotated)


def _response_axes(response):
    """Axes of a ColumnResponse, an open FullDetectorResponse or a response file (read lazily)."""
    if isinstance(response, (ColumnResponse, FullDetectorResponse)):
        return response.axes
    with FullDetectorResponse.open(response) as opened:
        return opened.axes


def _make_engine(response, mapping, data, backgrounds, rtol, dtype, client, mapping_on):
    """The single-process engine, or with a client the engine sharded over its workers."""
    if client is None:
        return ResponseEngine(response, mapping, data=data, backgrounds=backgrounds, dtype=dtype)
    return sharded_engine(client, response, mapping, data=data, backgrounds=backgrounds, rtol=rtol, dtype=dtype,
                          mapping_on=mapping_on)


def _ccm_attitudes(ccm, exposure_table, orientation):
    """The attitudes that reproduce a given CCM's rows (a table for ScAtt rows, an orientation for Time rows)."""
    source = exposure_table if ccm.axes[0].label == "ScAtt" else orientation
    if source is None:
        logger.info("no %s given with the CCM: point sources are folded on the model grid",
                    "exposure table" if ccm.axes[0].label == "ScAtt" else "orientation")
        return None
    loader = _as_table if ccm.axes[0].label == "ScAtt" else _as_orientation
    return matching_attitude_bins(loader(source), ccm)


def _galactic_attitude_bins(exposure_table, ccm, orientation, nside_model, nside_response):
    """(CCM, ExposureTable): the ScAtt bins whose mean attitudes rotate a Galactic-frame response, and their CCM."""
    if exposure_table is not None:
        table = _as_table(exposure_table)
        if ccm is None:
            ccm = coordsys_conversion_matrix(table, nside_model, nside_response, use_averaged_pointing=True)
        else:
            ccm = _as_ccm(ccm)
            if ccm.axes[0].nbins != len(table):
                raise CosiInputError(f"the exposure table has {len(table)} ScAtt bins but the CCM has "
                                     f"{ccm.axes[0].nbins}")
        logger.info("Galactic CDS: rotating the response over the %d ScAtt bins of the exposure table",
                    len(table))
        return ccm, table
    if ccm is not None:
        raise CosiInputError("Galactic-CDS data: a CCM needs the exposure table of its ScAtt bins (their mean "
                             "attitudes rotate the response)")
    if orientation is None:
        raise CosiInputError("Galactic-CDS data need an exposure table or an orientation file to rotate the "
                             "response")
    table = ExposureTable.from_orientation(_as_orientation(orientation), nside=nside_response)
    logger.info("Galactic CDS: rotating the response over %d ScAtt bins of the orientation at NSIDE %d",
                len(table), nside_response)
    return coordsys_conversion_matrix(table, nside_model, nside_response, use_averaged_pointing=True), table


def _with_row_axis(hist, ccm):
    """Add the CCM's single row axis in front of a [Em, Phi, PsiChi] histogram."""
    contents = hist.contents
    contents = contents.reshape((1, *contents.shape))
    return Histogram(Axes([ccm.axes[0], *hist.axes]), contents=contents, unit=hist.unit)
