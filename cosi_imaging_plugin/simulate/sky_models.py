"""Deprecated: source descriptions moved to :mod:`cosi_imaging_plugin.sky.sources`, images to
:mod:`cosi_imaging_plugin.sky.source_images`. This alias is removed in 0.3."""
from .._deprecation import warn_moved
from ..sky.source_images import sky_image, source_image
from ..sky.sources import (
                           PRESETS,
                           build_model,
                           build_source,
                           build_sources,
                           describe_source,
                           expand_presets,
                           preset_sources,
)

warn_moved("cosi_imaging_plugin.simulate.sky_models", "cosi_imaging_plugin.sky")

__all__ = ["PRESETS", "preset_sources", "expand_presets", "build_source", "build_sources", "build_model",
           "source_image", "sky_image", "describe_source"]
