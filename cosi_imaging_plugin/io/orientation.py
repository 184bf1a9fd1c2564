"""Deprecated: this module will be removed in cosi_imaging_plugin 0.3.

Its contents moved:

- :class:`Orientation` (the attitude model) to :mod:`cosi_imaging_plugin.exposure`;
- the vector geometry (``EARTH_RADIUS_KM``, :func:`rotation_from_axes`, :func:`lonlat_to_vec`,
  :func:`vec_to_lonlat`, :func:`galactic_vectors`, :func:`earth_limb_radius`,
  :func:`visible_mask`) to :mod:`cosi_imaging_plugin.geometry`;
- the ``.ori`` text format (:func:`read_ori`, :func:`write_ori`) to :mod:`cosi_imaging_plugin.io.ori_file`.

Importing it warns and re-exports the moved names.
"""
from .._deprecation import warn_moved
from ..exposure.orientation import Orientation
from ..geometry import (
    EARTH_RADIUS_KM,
    earth_limb_radius,
    galactic_vectors,
    lonlat_to_vec,
    rotation_from_axes,
    vec_to_lonlat,
    visible_mask,
)

warn_moved("cosi_imaging_plugin.io.orientation",
           "cosi_imaging_plugin.exposure (Orientation) and cosi_imaging_plugin.geometry")

__all__ = [
    "EARTH_RADIUS_KM",
    "Orientation",
    "earth_limb_radius",
    "galactic_vectors",
    "lonlat_to_vec",
    "rotation_from_axes",
    "vec_to_lonlat",
    "visible_mask",
]
