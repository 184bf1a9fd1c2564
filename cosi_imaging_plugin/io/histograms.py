"""Readers and writers of histpy histograms: binned data, backgrounds, CCMs, image models.

All of these files use histpy's own HDF5 layout (see ``docs/formats.md``), so histpy does the
actual reading and writing; this module adds what histpy leaves out: errors that name the
file and group at fault, validation of the contents (counts, exposure times, image fluxes),
axis-compatibility checks between two objects, and atomic output.
"""
import logging
from pathlib import Path

import astropy.units as u
import h5py
import numpy as np
import scoords  # noqa: F401  (registers the 'spacecraftframe' astropy frame named by local-CDS axes)
import sparse
from histpy import HealpixAxis, Histogram

from .._atomic import atomic_path
from ..binning import IMAGE_UNIT, check_axes_match, frame_name
from ..errors import CosiFileError, CosiInputError

logger = logging.getLogger(__name__)

__all__ = [
    "read_histogram",
    "write_histogram",
    "check_axes_match",
    "read_ccm",
    "read_image",
]

_SPACECRAFT_FRAME = "spacecraftframe"


def open_hdf5(path, what="file"):
    """Open an HDF5 file read-only, turning every failure into a `CosiFileError`.

    Parameters
    ----------
    path : str or pathlib.Path
        File to open.
    what : str
        What the file is meant to be (e.g. ``"response file"``); used in messages.

    Returns
    -------
    h5py.File
        The open file; the caller closes it.

    Raises
    ------
    CosiFileError
        If the file is missing, is a directory, is not HDF5, or is truncated/corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise CosiFileError(f"{what} {path} does not exist")
    if path.is_dir():
        raise CosiFileError(f"{what} {path} is a directory, not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        # is_hdf5 only checks the signature: a file that has one but fails to open is damaged.
        if h5py.is_hdf5(path):
            reason = "is damaged (truncated or corrupt HDF5)"
        else:
            reason = "is not an HDF5 file"
        raise CosiFileError(f"{what} {path} {reason}: {exc}") from exc


def _raw_values(hist):
    """Stored values (under/overflow included) of a Histogram, without units.

    Returns (values, fill_value, locate) where locate(i) gives the bin index of the
    i-th stored value; fill_value is None for dense contents.
    """
    contents = hist.full_contents
    if isinstance(contents, u.Quantity):
        contents = contents.value
    if isinstance(contents, sparse.SparseArray):
        coo = contents if isinstance(contents, sparse.COO) else contents.asformat("coo")
        return coo.data, coo.fill_value, lambda i: tuple(int(c) for c in coo.coords[:, i])
    values = np.asarray(contents)
    return values.ravel(), None, lambda i: tuple(int(c) for c in np.unravel_index(i, values.shape))


def _check_values(hist, where, what, nonnegative=True, integer=False):
    """Raise CosiInputError if the histogram holds NaN/inf or (optionally) negative or non-integer values."""
    values, fill, locate = _raw_values(hist)
    if fill is not None and not (np.isfinite(fill) and (fill >= 0 or not nonnegative)):
        raise CosiInputError(f"{where}: {what} has an invalid sparse fill value {fill}")
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CosiInputError(
            f"{where}: {what} has {int(bad.sum())} NaN or infinite bin(s), "
            f"first at bin {locate(first)} (value {values[first]})"
        )
    if nonnegative:
        neg = values < 0
        if neg.any():
            first = int(np.flatnonzero(neg)[0])
            raise CosiInputError(
                f"{where}: {what} has {int(neg.sum())} negative bin(s), "
                f"first at bin {locate(first)} (value {values[first]})"
            )
    if integer:
        fractional = values != np.round(values)
        if fractional.any():
            first = int(np.flatnonzero(fractional)[0])
            raise CosiInputError(
                f"{where}: {what} has {int(fractional.sum())} non-integer bin(s), first at bin {locate(first)} "
                f"(value {values[first]}); the Poisson likelihood needs counts: give background-subtracted "
                "or weighted data as counts and background templates instead"
            )


def read_histogram(path, name="hist", *, counts=False):
    """Read a histpy Histogram from an HDF5 file.

    COO-stored histograms stay sparse (their contents are a ``sparse.COO``); dense ones are
    numpy arrays. Axes in the spacecraft frame open because :mod:`scoords` is imported here.

    Parameters
    ----------
    path : str or pathlib.Path
        HDF5 file.
    name : str
        Group holding the histogram (histpy's default is ``"hist"``).
    counts : bool
        Validate the contents as binned counts: no NaN/inf, no negative and no non-integer values.

    Returns
    -------
    histpy.Histogram

    Raises
    ------
    CosiFileError
        Missing, truncated or corrupt file; missing group (the groups present are listed);
        a group that is not a histpy histogram.
    CosiInputError
        ``counts=True`` and the contents are not valid counts.
    """
    path = Path(path)
    with open_hdf5(path, "histogram file") as f:
        if name not in f:
            raise CosiFileError(
                f"{path} has no group '{name}'; groups present: {sorted(f.keys())}"
            )
        group = f[name]
        if not isinstance(group, h5py.Group) or "axes" not in group or "contents" not in group:
            raise CosiFileError(
                f"{path}: '{name}' is not a histpy histogram (needs 'axes' and 'contents'; "
                f"found {sorted(group.keys()) if isinstance(group, h5py.Group) else 'a dataset'})"
            )
    try:
        hist = Histogram.open(path, name=name)
    except Exception as exc:
        raise CosiFileError(f"{path}: cannot read histogram '{name}': {type(exc).__name__}: {exc}") from exc
    logger.debug("read %s[%s]: axes %s, shape %s", path, name, list(hist.axes.labels), hist.shape)
    if counts:
        _check_values(hist, f"{path} [{name}]", "binned data", integer=True)
    return hist


def write_histogram(hist, path, name="hist", overwrite=True):
    """Write a Histogram to a new HDF5 file, atomically.

    The file holds only this histogram, under group ``name``, in histpy's layout (dense or
    COO, as the histogram is). It appears under ``path`` only once fully written.

    Parameters
    ----------
    hist : histpy.Histogram
        Histogram to write.
    path : str or pathlib.Path
        Output file; replaced if it exists and ``overwrite`` is True.
    name : str
        Group name.
    overwrite : bool
        If False and ``path`` exists, raise FileExistsError.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    if not isinstance(hist, Histogram):
        raise CosiInputError(f"write_histogram needs a histpy.Histogram, got {type(hist).__name__}")
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        # atomic_path leaves an empty placeholder; histpy opens in append mode, which needs
        # either a valid HDF5 file or no file at all.
        tmp.unlink()
        hist.write(tmp, name=name, overwrite=True)
    logger.info("wrote histogram %s[%s] %s", path, name, hist.shape)
    return path


def read_ccm(path, name="hist"):
    """Read a coordinate conversion matrix (CCM) written by cosipy or by this package.

    Parameters
    ----------
    path : str or pathlib.Path
        HDF5 file.
    name : str
        Group name.

    Returns
    -------
    histpy.Histogram
        Axes ``[ScAtt | Time, lb, NuLambda]``, unit seconds, usually COO.

    Raises
    ------
    CosiInputError
        Wrong axes, a unit that is not a time, NaN/inf or negative entries.
    """
    path = Path(path)
    hist = read_histogram(path, name)
    where = f"{path} [{name}]"
    check_ccm_layout(hist, where)
    if hist.unit != u.s:
        hist = hist.to(u.s)
    _check_values(hist, where, "CCM")
    return hist


def check_ccm_layout(ccm, where="CCM"):
    """Check that a histogram is laid out as a CCM: ``[ScAtt | Time, lb, NuLambda]`` in a time unit.

    ``lb`` and ``NuLambda`` are HEALPix axes, in a sky frame (Galactic) and in the
    spacecraft frame.

    Raises
    ------
    CosiInputError
        Naming `where` and what is wrong.
    """
    if not isinstance(ccm, Histogram):
        raise CosiInputError(f"{where}: a CCM must be a histpy.Histogram, got {type(ccm).__name__}")
    labels = list(ccm.axes.labels)
    if len(labels) != 3 or labels[0] not in ("ScAtt", "Time") or labels[1:] != ["lb", "NuLambda"]:
        raise CosiInputError(f"{where}: a CCM needs axes [ScAtt|Time, lb, NuLambda], found {labels}")
    for label in ("lb", "NuLambda"):
        if not isinstance(ccm.axes[label], HealpixAxis):
            raise CosiInputError(f"{where}: CCM axis '{label}' is not a HEALPix axis")
    if frame_name(ccm.axes["NuLambda"]) != _SPACECRAFT_FRAME:
        raise CosiInputError(f"{where}: CCM axis 'NuLambda' must be in the spacecraft frame, "
                             f"found {frame_name(ccm.axes['NuLambda'])}")
    if frame_name(ccm.axes["lb"]) in (None, _SPACECRAFT_FRAME):
        raise CosiInputError(f"{where}: CCM axis 'lb' must be in a sky frame (galactic), "
                             f"found {frame_name(ccm.axes['lb'])}")
    if ccm.unit is None or not ccm.unit.is_equivalent(u.s):
        raise CosiInputError(f"{where}: a CCM's unit must be a time (seconds), found unit {ccm.unit}")


def read_image(path, name="hist", *, allow_negative=False):
    """Read an all-sky image model histogram ``[lb, Ei]``.

    Parameters
    ----------
    path : str or pathlib.Path
        HDF5 file.
    name : str
        Group name.
    allow_negative : bool
        Accept negative pixels (e.g. a residual map); image models must be non-negative.

    Returns
    -------
    histpy.Histogram
        Axes ``[lb (HEALPix), Ei (energy)]``, a unit of photon intensity (``cm-2 s-1 sr-1``).

    Raises
    ------
    CosiInputError
        Wrong axes, a unit that is not an intensity, NaN/inf (or negative) pixels.
    """
    path = Path(path)
    hist = read_histogram(path, name)
    where = f"{path} [{name}]"
    labels = list(hist.axes.labels)
    if labels != ["lb", "Ei"]:
        raise CosiInputError(f"{where}: an image model needs axes [lb, Ei], found {labels}")
    if not isinstance(hist.axes["lb"], HealpixAxis):
        raise CosiInputError(f"{where}: image axis 'lb' is not a HEALPix axis")
    ei_unit = hist.axes["Ei"].unit
    if ei_unit is None or not ei_unit.is_equivalent(u.keV):
        raise CosiInputError(f"{where}: image axis 'Ei' must have an energy unit, found {ei_unit}")
    if hist.unit is None or not hist.unit.is_equivalent(IMAGE_UNIT):
        raise CosiInputError(f"{where}: an image model must be in {IMAGE_UNIT}, found unit {hist.unit}")
    _check_values(hist, where, "image", nonnegative=not allow_negative)
    return hist
