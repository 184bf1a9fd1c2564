"""Deprecated: the folders live in :mod:`cosi_imaging_plugin.threeml.source_folders`, one class per
source kind. This alias is removed in 0.3."""
from .._deprecation import warn_moved
from .source_folders import ExtendedSourceFolder, Function3DSourceFolder, PointSourceFolder, folder_for

warn_moved("cosi_imaging_plugin.threeml.source_folding", "cosi_imaging_plugin.threeml.source_folders")

__all__ = ["ExtendedSourceFolder", "Function3DSourceFolder", "PointSourceFolder", "folder_for"]
