"""A short text description of any COSI file this package reads."""
from pathlib import Path

import h5py
import numpy as np

from ..binning import frame_name, normalize_scheme
from ..errors import CosiFileError
from .exposure_table_file import read_exposure_table_columns
from .histograms import read_histogram
from .ori_file import read_ori
from .response import FullDetectorResponse


def _axes_lines(axes):
    lines = []
    for axis in axes:
        if hasattr(axis, "nside"):
            frame = frame_name(axis)
            lines.append(f"  {axis.label}: HEALPix NSIDE {axis.nside} {axis.scheme} ({frame}), {axis.nbins} pixels")
        else:
            edges = axis.edges
            lines.append(f"  {axis.label}: {axis.nbins} bins, {edges[0]} .. {edges[-1]}")
    return lines


def _total_livetime(records):
    """Sum of the interval live times in seconds; without a livetime column, the elapsed time.

    Unlike :attr:`cosi_imaging_plugin.exposure.Orientation.total_livetime` the elapsed time
    ignores leap seconds, which is close enough for a one-line summary.
    """
    if records.livetime is None:
        return float(records.time[-1] - records.time[0])
    return float(np.sum(records.livetime[:-1]))


def describe_file(path):
    """Describe a response, histogram, orientation or exposure-table file.

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    str
    """
    path = Path(path)
    if not path.is_file():
        raise CosiFileError(f"{path} does not exist")
    if path.suffix == ".ori":
        rec = read_ori(path)
        t = rec.time
        return (f"{path}: orientation, {len(t)} samples over {t[-1] - t[0]:.1f} s, "
                f"livetime {_total_livetime(rec):.1f} s")
    if path.suffix in (".fits", ".fit"):
        table = read_exposure_table_columns(path)
        return (f"{path}: exposure table, {len(table.healpix_index_z)} ScAtt bins at NSIDE {table.nside} "
                f"({normalize_scheme(table.scheme)})")
    try:
        with h5py.File(path, "r") as f:
            is_response = "DRM" in f
            groups = list(f.keys())
    except OSError as exc:
        raise CosiFileError(f"{path}: not a readable HDF5 file ({exc})") from exc
    if is_response:
        with FullDetectorResponse.open(path) as rsp:
            kind = "sparse" if rsp.is_sparse else "dense"
            head = f"{path}: FullDetectorResponse v{rsp.version} ({kind}), unit {rsp.unit}, shape {rsp.shape}"
            return "\n".join([head, *_axes_lines(rsp.axes)])
    name = "hist" if "hist" in groups else groups[0]
    hist = read_histogram(path, name=name)
    contents = hist.contents
    values = contents.data if hasattr(contents, "coords") else np.asarray(getattr(contents, "value", contents))
    head = (f"{path}: histogram '{name}', shape {tuple(int(n) for n in hist.axes.nbins)}, unit {hist.unit}, "
            f"{'sparse' if hist.is_sparse else 'dense'}, total {float(np.sum(values)):.6g}")
    return "\n".join([head, *_axes_lines(hist.axes)])
