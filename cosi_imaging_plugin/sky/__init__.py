"""HEALPix skies: astromodels sources from descriptions, their images on a grid, spectra, Galactic shapes.

Importing this package registers the Galactic-frame shapes of :mod:`.functions`
(``Galactic_disk``, ``Galactic_gaussian``) with astromodels, so saved models that
use them load by name.
"""
from . import functions  # noqa: F401  (registers the shapes with astromodels)
from .source_images import sky_image, source_image
from .sources import PRESETS, build_model, build_source, build_sources, describe_source, expand_presets, preset_sources

__all__ = ["PRESETS", "build_model", "build_source", "build_sources", "describe_source", "expand_presets",
           "preset_sources", "sky_image", "source_image"]
