"""Exposure: attitude timeline -> exposure table -> coordinate conversion matrix, dwell-time maps.

- :class:`Orientation`: the spacecraft attitude timeline (``.ori`` files).
- :class:`ExposureTable`: intervals grouped into spacecraft-attitude (ScAtt) bins.
- :func:`coordsys_conversion_matrix`: the CCM ``[ScAtt | Time, lb, NuLambda]`` in seconds;
  :func:`dwell_matrix`: the same for any set of exact directions.
- :class:`AttitudeBins` (:func:`attitude_bins`): the attitudes of each CCM row, and the
  dwell of one exact direction in every row (how point sources are folded).
- :func:`dwell_time_map`, :func:`attitude_map`: where a sky direction sits in the
  instrument frame, and how long the spacecraft holds each attitude.
"""
from ..geometry import EARTH_RADIUS_KM, rotation_from_axes
from .attitude_bins import AttitudeBins
from .ccm import (
    attitude_bins,
    check_ccm,
    coordsys_conversion_matrix,
    dwell_matrix,
    matching_attitude_bins,
    write_ccm,
)
from .dwell import attitude_map, dwell_time_map
from .exposure_table import ExposureTable
from .orientation import Orientation
from .scatt import averaged_pointing, interval_midpoints, scatt_bins

__all__ = [
    "AttitudeBins",
    "EARTH_RADIUS_KM",
    "ExposureTable",
    "Orientation",
    "attitude_bins",
    "attitude_map",
    "averaged_pointing",
    "check_ccm",
    "coordsys_conversion_matrix",
    "dwell_matrix",
    "dwell_time_map",
    "interval_midpoints",
    "matching_attitude_bins",
    "rotation_from_axes",
    "scatt_bins",
    "write_ccm",
]
