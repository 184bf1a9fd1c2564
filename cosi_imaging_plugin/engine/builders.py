"""Engines from files: the setups COSI scientists have on disk.

- Local CDS (PsiChi in the spacecraft frame) with a CCM: rows are its ScAtt or
  Time bins.
- Local CDS with an orientation file and no CCM: the data are summed over time
  and folded with the dwell time of every sky pixel (a one-bin Time CCM).
- Galactic CDS (PsiChi Galactic) with an orientation file: the response is
  rotated into the Galactic frame over the attitude bins (ScAtt binning at the
  response NSIDE, each bin at its averaged attitude) and folded once.

Axes the analysis does not use (Time when summed, Ei, SigmaTau, Dist) are summed out.
"""
import logging

import numpy as np
from histpy import Axes, Histogram

from ..errors import CosiInputError
from .column_response import ColumnResponse
from .engine import ResponseEngine
from .galactic import galactic_response

logger = logging.getLogger(__name__)

CDS_LABELS = ["Em", "Phi", "PsiChi"]
ROW_LABELS = ("ScAtt", "Time")


def psichi_frame(hist):
    """'galactic' or 'spacecraftframe', the frame of a histogram's PsiChi axis."""
    if "PsiChi" not in hist.axes.labels:
        raise CosiInputError(f"binned data have no PsiChi axis (axes: {list(hist.axes.labels)})")
    frame = getattr(hist.axes["PsiChi"], "coordsys", None)
    name = (getattr(frame, "name", None) or str(frame)).lower()
    if name not in ("galactic", "spacecraftframe"):
        raise CosiInputError(f"PsiChi axis in unsupported frame {name!r}: expected galactic or spacecraftframe")
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


def load_response(response, rtol=1e-3, dtype=np.float32):
    """A ColumnResponse from a path, a FullDetectorResponse or a ColumnResponse."""
    if isinstance(response, ColumnResponse):
        return response
    return ColumnResponse.from_file(response, rtol=rtol, dtype=dtype)


def build_engine(response, data, backgrounds=None, ccm=None, orientation=None, rtol=1e-3, dtype=np.float32,
                 nside_model=None):
    """Engine for binned data in either frame (see module docstring).

    Parameters
    ----------
    response : str, pathlib.Path, FullDetectorResponse or ColumnResponse
        Spacecraft-frame detector response.
    data : histpy.Histogram
        Binned counts with at least Em, Phi and PsiChi axes.
    backgrounds : dict of str to histpy.Histogram, optional
        Templates with the data's binning.
    ccm : histpy.Histogram, optional
        Coordinate conversion matrix (local-CDS analyses).
    orientation : Orientation, optional
        Attitude timeline (local CDS without CCM, and every Galactic-CDS analysis).
    rtol : float
        Response truncation tolerance.
    dtype : numpy dtype
        Storage type of the response values.
    nside_model : int, optional
        NSIDE of the sky model grid (default: the CCM's, else the response's).
    """
    from ..exposure import ExposureTable, coordsys_conversion_matrix

    frame = psichi_frame(data)
    column_response = load_response(response, rtol=rtol, dtype=dtype)
    nside_rsp = column_response.axes[0].nside
    keep_rows = frame == "spacecraftframe" and ccm is not None
    data = reduce_axes(data, keep_rows, "data")
    backgrounds = {k: reduce_axes(v, keep_rows, f"background '{k}'") for k, v in (backgrounds or {}).items()}
    if frame == "spacecraftframe":
        if ccm is None:
            if orientation is None:
                raise CosiInputError("local-CDS data need a CCM or an orientation file")
            ccm = coordsys_conversion_matrix(orientation, nside_model or nside_rsp, nside_rsp, binning="time",
                                             time_edges=[orientation.unix_seconds[0], orientation.unix_seconds[-1]])
            data = _with_row_axis(data, ccm)
            backgrounds = {k: _with_row_axis(v, ccm) for k, v in backgrounds.items()}
        return ResponseEngine.from_ccm(column_response, ccm, data=data, backgrounds=backgrounds, dtype=dtype)
    if orientation is None:
        raise CosiInputError("Galactic-CDS data need an orientation file to rotate the response")
    table = ExposureTable.from_orientation(orientation, nside=nside_rsp)
    ccm = coordsys_conversion_matrix(table, nside_model or nside_rsp, nside_rsp, use_averaged_pointing=True)
    attitudes = table.mean_attitudes()
    gal = galactic_response(column_response, ccm, attitudes, nside_psichi=data.axes["PsiChi"].nside, rtol=rtol,
                            dtype=dtype)
    return ResponseEngine.from_galactic_response(gal, data=data, backgrounds=backgrounds, dtype=dtype)


def _with_row_axis(hist, ccm):
    """Add the CCM's single row axis in front of a [Em, Phi, PsiChi] histogram."""
    contents = hist.contents
    contents = contents.reshape((1, *contents.shape))
    axes = Axes([ccm.axes[0], *hist.axes])
    return Histogram(axes, contents=contents, unit=hist.unit)
