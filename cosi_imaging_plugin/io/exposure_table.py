"""Deprecated: this module will be removed in cosi_imaging_plugin 0.3.

:class:`ExposureTable` (the table model) moved to :mod:`cosi_imaging_plugin.exposure`; its
FITS layout is read and written by :mod:`cosi_imaging_plugin.io.exposure_table_file`.
Importing this module warns and re-exports :class:`ExposureTable`.
"""
from .._deprecation import warn_moved
from ..exposure.exposure_table import ExposureTable

warn_moved("cosi_imaging_plugin.io.exposure_table", "cosi_imaging_plugin.exposure (ExposureTable)")

__all__ = ["ExposureTable"]
