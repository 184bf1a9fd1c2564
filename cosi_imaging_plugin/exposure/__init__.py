"""Exposure: attitude timeline -> exposure table -> coordinate conversion matrix, dwell-time maps.

- :class:`Orientation`: the spacecraft attitude timeline (``.ori`` files).
- :class:`ExposureTable`: intervals grouped into spacecraft-attitude (ScAtt) bins.
- :func:`coordsys_conversion_matrix`: the CCM ``[ScAtt | Time, lb, NuLambda]`` in seconds.
- :func:`dwell_time_map`, :func:`attitude_map`: where a sky direction sits in the
  instrument frame, and how long the spacecraft holds each attitude.
"""
from ..io.exposure_table import ExposureTable
from ..io.orientation import EARTH_RADIUS_KM, Orientation, rotation_from_axes
from .ccm import check_ccm, coordsys_conversion_matrix, write_ccm
from .dwell import attitude_map, dwell_time_map
from .scatt import averaged_pointing, interval_midpoints, scatt_bins

__all__ = [
    "Orientation",
    "ExposureTable",
    "EARTH_RADIUS_KM",
    "rotation_from_axes",
    "coordsys_conversion_matrix",
    "check_ccm",
    "write_ccm",
    "dwell_time_map",
    "attitude_map",
    "scatt_bins",
    "averaged_pointing",
    "interval_midpoints",
]
