"""On-disk layout of COSI full detector response files (``docs/formats.md``).

What the reader (:mod:`.response`) and the writer (:mod:`.response_writer`) both
know about the HDF5 layout: the axis labels and their storage order, canonical
units and descriptions, how a version-1 axis dataset is stored
(:func:`read_v1_axis`, :func:`write_v1_axis`), and how the ``/DRM`` group of a
version-1 (dense or sparse) or version-2 file is recognised and checked
(:func:`read_layout`), before any response value is read:

- version 1 dense: ``/DRM/CONTENTS`` of shape (NuLambda, Ei, Em, Phi, PsiChi);
- version 1 sparse (no ``SPARSE`` attribute means sparse): ``/DRM/BIN_NUMBERS`` and
  ``/DRM/CONTENTS`` hold one variable-length row per NuLambda pixel. A row's bin numbers
  are the COO coordinates over the remaining axes (Ei, Em, Phi, PsiChi, SigmaTau, Dist)
  stored axis after axis, i.e. ``coords = row.reshape(ndim - 1, nnz)`` as cosipy writes
  ``coords.flatten()``. SigmaTau and Dist are summed out;
- version 2 (``VERSION = 2``): histpy ``Axes`` in ``/DRM/AXES``, raw simulated ``COUNTS``
  and a per-Ei ``EFF_AREA`` (simulated area per simulated photon in that Ei bin). As in
  cosipy's own reader, the response is ``COUNTS * EFF_AREA[Ei]``: the counts are already
  the numbers detected out of the photons thrown per (NuLambda, Ei), so they are not
  renormalised per (NuLambda, Ei).
"""
import dataclasses
import logging

import astropy.units as u
import h5py
import numpy as np
import scoords  # noqa: F401  (registers the 'spacecraftframe' astropy frame)
from histpy import Axes, Axis, HealpixAxis
from scoords import SpacecraftFrame

from ..errors import CosiFileError, CosiInputError

logger = logging.getLogger(__name__)

__all__ = [
    "AXIS_UNITS",
    "DEFAULT_CHUNK_BYTES",
    "DESCRIPTIONS",
    "RESPONSE_LABELS",
    "SUMMED_LABELS",
    "ResponseLayout",
    "attr_str",
    "float_dtype",
    "read_layout",
    "read_v1_axis",
    "write_v1_axis",
]

#: Axis labels of a response, in storage order.
RESPONSE_LABELS = ("NuLambda", "Ei", "Em", "Phi", "PsiChi")
#: Extra axes of version-1 sparse files; they are summed out.
SUMMED_LABELS = ("SigmaTau", "Dist")
#: Canonical unit of each non-HEALPix axis: values are returned and written in these.
AXIS_UNITS = {"Ei": u.keV, "Em": u.keV, "Phi": u.deg}
#: ``DESCRIPTION`` attribute of each axis dataset.
DESCRIPTIONS = {
    "NuLambda": "Location of the simulated source in the spacecraft coordinates",
    "Ei": "Initial simulated energy",
    "Em": "Measured energy",
    "Phi": "Compton angle",
    "PsiChi": "Location in the Compton Data Space",
    "SigmaTau": "Electron recoil angle",
    "Dist": "Distance from first interaction",
}
#: Target size of one block of pixels read or written when the caller does not choose.
DEFAULT_CHUNK_BYTES = 256 * 2**20


@dataclasses.dataclass(frozen=True)
class ResponseLayout:
    """What the ``/DRM`` group of a response file holds, as found by :func:`read_layout`.

    Attributes
    ----------
    version : int
        On-disk format version (1 or 2).
    kind : str
        ``'dense'`` or ``'sparse'`` (version 1), ``'counts'`` (version 2).
    axes : histpy.Axes
        [NuLambda, Ei, Em, Phi, PsiChi], HEALPix axes in the spacecraft frame, energies
        in keV and Phi in deg.
    file_shape : tuple of int
        Shape on disk, the summed SigmaTau / Dist axes of a version-1 file included.
    scale : float
        Factor from the file's area unit to cm2.
    eff_area : numpy.ndarray or None
        Version 2: area per simulated photon of each Ei bin, in cm2.
    """

    version: int
    kind: str
    axes: Axes
    file_shape: tuple
    scale: float
    eff_area: np.ndarray | None = None


def attr_str(value):
    """HDF5 string attributes come back as str, bytes or 0-d arrays depending on the writer."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode()
    return str(value)


def float_dtype(dtype, default=np.float64):
    """`dtype` (or `default` when None) as a floating numpy dtype; anything else is refused."""
    dtype = np.dtype(default if dtype is None else dtype)
    if dtype.kind != "f":
        raise CosiInputError(f"response values are floating point; dtype {dtype} is not")
    return dtype


def _healpix_full_sky(axis, where):
    if not np.array_equal(axis.edges, np.arange(axis.npix + 1)):
        raise CosiFileError(f"{where}: HEALPix axis '{axis.label}' must cover the full sky (edges 0..{axis.npix})")


def _with_unit(axis, where):
    """Copy of a 1-D axis converted to the canonical unit of its label (keV, deg)."""
    target = AXIS_UNITS.get(axis.label)
    if target is None:
        return axis
    if axis.unit is None or not axis.unit.is_equivalent(target):
        raise CosiFileError(f"{where}: axis '{axis.label}' has unit {axis.unit}, expected {target}")
    return Axis(axis.edges.to(target), scale=axis.axis_scale, label=axis.label)


def _spacecraft_healpix(axis):
    """HEALPix response axes live in the spacecraft frame whatever the file says."""
    return HealpixAxis(edges=np.asarray(axis.edges), nside=axis.nside, scheme=axis.scheme.lower(),
                       coordsys=SpacecraftFrame(), label=axis.label)


def _response_axes(axes, path):
    """The five response axes in canonical form; HEALPix axes must cover the full sky."""
    out = []
    for axis in axes:
        if axis.label in ("NuLambda", "PsiChi"):
            if not isinstance(axis, HealpixAxis):
                raise CosiFileError(f"{path}: axis '{axis.label}' must be a HEALPix axis")
            _healpix_full_sky(axis, path)
            out.append(_spacecraft_healpix(axis))
        else:
            out.append(_with_unit(axis, path))
    return Axes(out, copy_axes=False)


# ---------------------------------------------------------------------- axis datasets
def read_v1_axis(dataset, label, where):
    """A histpy axis from a version-1 ``/DRM/AXES/{label}`` dataset (edges + TYPE, NSIDE, SCHEME, UNIT).

    Parameters
    ----------
    dataset : h5py.Dataset
    label : str
    where : str or pathlib.Path
        File named in errors.

    Returns
    -------
    histpy.Axis or histpy.HealpixAxis

    Raises
    ------
    CosiFileError
        A missing or unknown attribute, or edges histpy refuses.
    """
    attrs = dataset.attrs
    if "TYPE" not in attrs:
        raise CosiFileError(f"{where}: axis dataset /DRM/AXES/{label} has no TYPE attribute")
    kind = attr_str(attrs["TYPE"]).lower()
    edges = dataset[()]
    try:
        if kind == "healpix":
            if "NSIDE" not in attrs:
                raise CosiFileError(f"{where}: HEALPix axis /DRM/AXES/{label} has no NSIDE attribute")
            scheme = attr_str(attrs.get("SCHEME", "ring")).lower()
            if scheme not in ("ring", "nested"):
                raise CosiFileError(f"{where}: axis /DRM/AXES/{label} has SCHEME '{scheme}' (ring or nested)")
            return HealpixAxis(edges=edges, nside=int(attrs["NSIDE"]), scheme=scheme,
                               coordsys=SpacecraftFrame(), label=label)
        if kind in ("log", "linear"):
            if "UNIT" not in attrs:
                raise CosiFileError(f"{where}: axis /DRM/AXES/{label} has no UNIT attribute")
            return Axis(edges * u.Unit(attr_str(attrs["UNIT"])), scale=kind, label=label)
    except (ValueError, TypeError) as exc:
        raise CosiFileError(f"{where}: invalid axis /DRM/AXES/{label}: {exc}") from exc
    raise CosiFileError(f"{where}: axis /DRM/AXES/{label} has unknown TYPE '{kind}' (healpix, log or linear)")


def write_v1_axis(group, axis):
    """Store `axis` as the version-1 dataset ``group[axis.label]`` that :func:`read_v1_axis` reads.

    Parameters
    ----------
    group : h5py.Group
        ``/DRM/AXES``.
    axis : histpy.Axis or histpy.HealpixAxis
        A response axis; non-HEALPix axes are stored in their canonical unit.
    """
    if isinstance(axis, HealpixAxis):
        ds = group.create_dataset(axis.label, data=np.arange(axis.npix + 1, dtype=np.int64))
        ds.attrs["TYPE"] = "healpix"
        ds.attrs["NSIDE"] = np.int64(axis.nside)
        ds.attrs["SCHEME"] = axis.scheme.lower()
    else:
        unit = AXIS_UNITS[axis.label]
        ds = group.create_dataset(axis.label, data=axis.edges.to_value(unit))
        ds.attrs["TYPE"] = axis.axis_scale
        ds.attrs["UNIT"] = unit.to_string()
    ds.attrs["DESCRIPTION"] = DESCRIPTIONS[axis.label]


# ---------------------------------------------------------------------- /DRM group
def read_layout(f, path):
    """Recognise and check the ``/DRM`` group of an open response file; no values are read.

    Parameters
    ----------
    f : h5py.File
    path : str or pathlib.Path
        File named in errors.

    Returns
    -------
    ResponseLayout

    Raises
    ------
    CosiFileError
        No ``/DRM``, ``/DRM/AXES`` or ``UNIT``; a unit that is not an area; an unsupported
        version; axes, datasets or shapes that do not match the layout.
    """
    drm = f.get("DRM")
    if not isinstance(drm, h5py.Group):
        raise CosiFileError(
            f"{path} has no /DRM group (groups present: {sorted(f.keys())}); "
            "it is not a COSI full detector response"
        )
    if "UNIT" not in drm.attrs:
        raise CosiFileError(f"{path}: /DRM has no UNIT attribute")
    unit_text = attr_str(drm.attrs["UNIT"])
    try:
        unit = u.Unit(unit_text)
    except ValueError as exc:
        raise CosiFileError(f"{path}: /DRM attribute UNIT = '{unit_text}' is not a unit") from exc
    if not unit.is_equivalent(u.cm**2):
        raise CosiFileError(f"{path}: /DRM attribute UNIT = '{unit_text}' is not an area (expected cm2)")
    scale = float(unit.to(u.cm**2))
    if not isinstance(drm.get("AXES"), h5py.Group):
        raise CosiFileError(f"{path}: /DRM/AXES group is missing (found {sorted(drm.keys())})")

    version = int(drm.attrs.get("VERSION", 1))
    if version == 1:
        return _read_v1_layout(drm, path, scale)
    if version == 2:
        return _read_v2_layout(drm, path, scale)
    raise CosiFileError(f"{path}: response format VERSION = {version} is not supported (1 or 2)")


def _read_v1_layout(drm, path, scale):
    group = drm["AXES"]
    names = list(group.keys())
    if not group.id.get_create_plist().get_link_creation_order():
        # Without order tracking HDF5 lists names alphabetically, which scrambles the
        # storage order; the COSI order is the only sensible guess.
        canonical = [n for n in RESPONSE_LABELS + SUMMED_LABELS if n in names]
        names = canonical + [n for n in names if n not in canonical]
        logger.warning("%s: /DRM/AXES does not track creation order; assuming axis order %s", path, names)
    axes = [read_v1_axis(group[name], name, path) for name in names]
    labels = [a.label for a in axes]
    if tuple(labels[:5]) != RESPONSE_LABELS or any(lab not in SUMMED_LABELS for lab in labels[5:]):
        raise CosiFileError(
            f"{path}: /DRM/AXES must be {list(RESPONSE_LABELS)} (+ SigmaTau, Dist), found {labels}"
        )
    file_shape = tuple(a.nbins for a in axes)
    out_axes = _response_axes(axes[:5], path)

    sparse = bool(drm.attrs["SPARSE"]) if "SPARSE" in drm.attrs else True
    if sparse:
        for key in ("BIN_NUMBERS", "CONTENTS"):
            ds = drm.get(key)
            if not isinstance(ds, h5py.Dataset):
                raise CosiFileError(f"{path}: sparse response has no /DRM/{key} dataset")
            if ds.ndim != 1 or ds.shape[0] != file_shape[0] or h5py.check_vlen_dtype(ds.dtype) is None:
                raise CosiFileError(
                    f"{path}: /DRM/{key} must hold {file_shape[0]} variable-length rows "
                    f"(one per NuLambda pixel), found shape {ds.shape}, dtype {ds.dtype}"
                )
        kind = "sparse"
    else:
        ds = drm.get("CONTENTS")
        if not isinstance(ds, h5py.Dataset):
            raise CosiFileError(f"{path}: dense response has no /DRM/CONTENTS dataset")
        if ds.shape != file_shape:
            raise CosiFileError(
                f"{path}: /DRM/CONTENTS has shape {ds.shape} but the axes {labels} give {file_shape}"
            )
        kind = "dense"
    return ResponseLayout(1, kind, out_axes, file_shape, scale)


def _read_v2_layout(drm, path, scale):
    try:
        axes = Axes.open(drm["AXES"])
    except Exception as exc:
        raise CosiFileError(f"{path}: cannot read histpy axes in /DRM/AXES: {exc}") from exc
    labels = list(axes.labels)
    if "Pol" in labels:
        raise CosiFileError(f"{path}: polarization responses (axis 'Pol') are not supported")
    if tuple(labels) != RESPONSE_LABELS:
        raise CosiFileError(f"{path}: /DRM/AXES must be {list(RESPONSE_LABELS)}, found {labels}")
    out_axes = _response_axes(list(axes), path)
    for key in ("EFF_AREA", "COUNTS"):
        if not isinstance(drm.get(key), h5py.Dataset):
            raise CosiFileError(f"{path}: version-2 response has no /DRM/{key} dataset")
    if drm["COUNTS"].shape != axes.shape:
        raise CosiFileError(f"{path}: /DRM/COUNTS has shape {drm['COUNTS'].shape}, axes give {axes.shape}")
    eff_area = np.asarray(drm["EFF_AREA"][()], dtype=np.float64).reshape(-1)
    if eff_area.shape != (axes["Ei"].nbins,):
        raise CosiFileError(
            f"{path}: /DRM/EFF_AREA has {eff_area.size} values for {axes['Ei'].nbins} Ei bins"
        )
    if not (np.all(np.isfinite(eff_area)) and np.all(eff_area >= 0)):
        raise CosiFileError(f"{path}: /DRM/EFF_AREA has negative or non-finite values: {eff_area}")
    return ResponseLayout(2, "counts", out_axes, tuple(axes.shape), scale, eff_area=eff_area * scale)
