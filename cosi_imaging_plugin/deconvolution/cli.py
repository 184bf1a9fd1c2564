"""Deprecated: :func:`deconvolve_main` lives in :mod:`cosi_imaging_plugin.cli` and manifests are read by
:func:`cosi_imaging_plugin.io.manifest.read_manifest`. This alias is removed in 0.3."""
from .._deprecation import warn_moved
from ..cli import deconvolve_main

warn_moved("cosi_imaging_plugin.deconvolution.cli", "cosi_imaging_plugin.cli")

__all__ = ["deconvolve_main"]
