"""Exposure: attitude timeline -> exposure table -> coordinate conversion matrix, dwell-time maps.

- :class:`Orientation`: the spacecraft attitude timeline (``.ori`` files).
- :class:`ExposureTable`: intervals grouped into spacecraft-attitude (ScAtt) bins.
- :func:`coordsys_conversion_matrix`: the CCM ``[ScAtt | Time, lb, NuLambda]`` in seconds.
- :func:`dwell_time_map`, :func:`attitude_map`: where a sky direction sits in the
  instrument frame, and how long the spacecraft holds each attitude.
"""
from ..geometry import EARTH_RADIUS_KM, rotation_from_axes
from .ccm import check_ccm, coordsys_conversion_matrix, write_ccm
from .dwell import attitude_map, dwell_time_map
from .exposure_table import ExposureTable
from .orientation import Orientation
from .scatt import averaged_pointing, interval_midpoints, scatt_bins

__all__ = [
    "EARTH_RADIUS_KM",
    "ExposureTable",
    "Orientation",
    "attitude_map",
    "averaged_pointing",
    "check_ccm",
    "coordsys_conversion_matrix",
    "dwell_time_map",
    "interval_midpoints",
    "rotation_from_axes",
    "scatt_bins",
    "write_ccm",
]
