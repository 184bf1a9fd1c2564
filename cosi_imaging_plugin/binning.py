"""Binning utilities shared by every layer: HEALPix conventions, axis matching, units, arrays.

- :data:`IMAGE_UNIT`: the unit of sky images (photon intensity per Ei bin);
- :func:`normalize_scheme`, :func:`check_nside`, :func:`is_nested`: HEALPix conventions;
- :func:`frame_name`: the coordinate frame of a histpy axis, as a lower-case name;
- :func:`check_axes_match`: two objects share the binning of some axes, or an error
  names the axis and what differs;
- :func:`dense_values`: the contents of a Histogram as a plain float64 array.
"""
import astropy.units as u
import healpy as hp
import numpy as np
from histpy import Axes, HealpixAxis

from .errors import AxisMismatchError, CosiInputError

#: Unit of a sky image: ph cm-2 s-1 sr-1, integrated over each Ei bin (as the parameter files write it).
IMAGE_UNIT_TEXT = "cm-2 s-1 sr-1"
IMAGE_UNIT = u.Unit(IMAGE_UNIT_TEXT)
#: Unit of an exposure map ``sum_i R_ij`` (the pixel solid angle included).
EXPOSURE_UNIT = u.Unit("cm2 s sr")

_SCHEMES = {"ring": "ring", "nested": "nested", "nest": "nested"}


def normalize_scheme(scheme):
    """'ring' or 'nested' for a HEALPix scheme name (case-insensitive; 'nest' accepted)."""
    key = str(scheme).strip().lower()
    if key not in _SCHEMES:
        raise CosiInputError(f"HEALPix scheme must be 'ring' or 'nested', got {scheme!r}")
    return _SCHEMES[key]


def is_nested(axis_or_scheme):
    """True for the NESTED scheme (given a scheme name or a HEALPix axis)."""
    return normalize_scheme(getattr(axis_or_scheme, "scheme", axis_or_scheme)) == "nested"


def check_nside(nside, scheme="ring", name="nside"):
    """Validate a HEALPix NSIDE for a scheme and return it as int.

    Raises
    ------
    CosiInputError
        NSIDE not a positive integer, or not a power of two for the nested scheme.
    """
    scheme = normalize_scheme(scheme)
    if isinstance(nside, bool) or not isinstance(nside, (int, np.integer)):
        raise CosiInputError(f"{name} must be an integer, got {nside!r}")
    if not hp.isnsideok(int(nside), nest=(scheme == "nested")):
        raise CosiInputError(f"{name}={nside} is not a valid HEALPix NSIDE for the {scheme} scheme"
                             + (" (must be a power of 2)" if scheme == "nested" else ""))
    return int(nside)


def frame_name(axis, default=None):
    """Lower-case name of an axis' coordinate frame ('galactic', 'spacecraftframe', ...), or `default`."""
    frame = getattr(axis, "coordsys", None)
    if frame is None:
        return default
    return str(getattr(frame, "name", None) or frame).lower()


def _axes_of(obj, what):
    """The histpy Axes of a Histogram, an Axes, a response or a list of Axis."""
    if isinstance(obj, Axes):
        return obj
    axes = getattr(obj, "axes", None)
    if isinstance(axes, Axes):
        return axes
    try:
        return Axes(obj, copy_axes=False)
    except Exception as exc:
        raise CosiInputError(f"{what} has no histpy axes (got {type(obj).__name__})") from exc


def _axis_difference(ax_a, ax_b):
    """What differs between two axes, or None when they bin alike."""
    hpx_a, hpx_b = isinstance(ax_a, HealpixAxis), isinstance(ax_b, HealpixAxis)
    if hpx_a != hpx_b:
        return f"HEALPix axis {hpx_a} vs {hpx_b}"
    if hpx_a:
        if ax_a.nside != ax_b.nside:
            return f"NSIDE {ax_a.nside} vs {ax_b.nside}"
        if ax_a.scheme.upper() != ax_b.scheme.upper():
            return f"scheme {ax_a.scheme} vs {ax_b.scheme}"
        if frame_name(ax_a) != frame_name(ax_b):
            return f"coordinate frame {frame_name(ax_a)} vs {frame_name(ax_b)}"
        if not np.array_equal(ax_a.edges, ax_b.edges):
            return f"pixel edges {ax_a.edges} vs {ax_b.edges}"
        return None
    unit_a, unit_b = ax_a.unit, ax_b.unit
    if (unit_a is None) != (unit_b is None):
        return f"unit {unit_a} vs {unit_b}"
    if unit_a is not None:
        if not unit_b.is_equivalent(unit_a):
            return f"unit {unit_a} vs {unit_b} (not convertible)"
        edges_a, edges_b = ax_a.edges.to_value(unit_a), ax_b.edges.to_value(unit_a)
    else:
        edges_a, edges_b = np.asarray(ax_a.edges), np.asarray(ax_b.edges)
    if edges_a.shape != edges_b.shape:
        return f"{edges_a.size - 1} vs {edges_b.size - 1} bins"
    # the relative tolerance only absorbs unit-conversion rounding (keV vs MeV), not real shifts
    if not np.allclose(edges_a, edges_b, rtol=1e-10, atol=0.0):
        return f"edges {edges_a} vs {edges_b} ({unit_a})"
    return None


def check_axes_match(a, b, labels=None, what_a="first object", what_b="second object"):
    """Check that two objects share the binning of the given axes.

    For every label, the axis must exist on both sides and agree in kind (HEALPix or
    not), bin edges, units (edges are compared after converting ``b`` to ``a``'s unit),
    and for HEALPix axes NSIDE, scheme and coordinate frame.

    Parameters
    ----------
    a, b : histpy.Histogram, histpy.Axes, FullDetectorResponse or list of Axis
        Objects whose axes are compared.
    labels : sequence of str, optional
        Axis labels to compare; all of ``a``'s labels by default.
    what_a, what_b : str
        Human-readable names of ``a`` and ``b`` (e.g. a file name) used in messages.

    Raises
    ------
    AxisMismatchError
        Naming both sides and the axis at fault.
    """
    axes_a, axes_b = _axes_of(a, what_a), _axes_of(b, what_b)
    if labels is None:
        labels = list(axes_a.labels)
    elif isinstance(labels, str):
        labels = [labels]
    for label in labels:
        for axes, what in ((axes_a, what_a), (axes_b, what_b)):
            if label not in list(axes.labels):
                raise AxisMismatchError(
                    f"axis '{label}' is missing from {what} (its axes: {list(axes.labels)}); "
                    f"it is needed to compare {what_a} with {what_b}")
        difference = _axis_difference(axes_a[label], axes_b[label])
        if difference:
            raise AxisMismatchError(f"axis '{label}' differs between {what_a} and {what_b}: {difference}")


def dense_values(hist, unit=None):
    """Contents of a Histogram (dense or sparse, with or without a unit) as a float64 ndarray.

    Parameters
    ----------
    hist : histpy.Histogram
    unit : astropy.units.Unit, optional
        Convert to this unit first (the histogram's unit must be convertible; a
        unitless histogram is taken to be in it already).
    """
    contents = hist.contents
    if hasattr(contents, "todense"):
        contents = contents.todense()
    factor = 1.0
    hist_unit = getattr(hist, "unit", None)
    if unit is not None and hist_unit is not None and hist_unit != u.dimensionless_unscaled:
        factor = hist_unit.to(unit)
    values = np.asarray(getattr(contents, "value", contents), dtype=np.float64)
    return values * factor if factor != 1.0 else values
