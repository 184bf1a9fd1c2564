"""Simulated COSI datasets: Poisson counts from an astromodels sky plus background templates.

- :mod:`.sky_models`: astromodels sources from YAML-able descriptions, the built-in skies.
- :mod:`.backgrounds`: isotropic, Earth-albedo and instrumental templates folded through the response.
- :mod:`.dataset`: :class:`SimulationConfig`, :func:`simulate_dataset` and the dataset manifest.
"""
from .backgrounds import (BACKGROUND_KINDS, albedo_exposure, background_template, fold_rows, scale_rows,
                          spectral_weights, template_rows)
from .dataset import (BackgroundSpec, Manifest, SimulationConfig, builtin_config, builtin_config_names,
                      load_manifest, simulate_dataset, simulate_main)
from .sky_models import (PRESETS, build_model, build_source, build_sources, describe_source, expand_presets,
                         preset_sources, sky_image, source_image)

__all__ = [
    "SimulationConfig",
    "BackgroundSpec",
    "Manifest",
    "simulate_dataset",
    "simulate_main",
    "load_manifest",
    "builtin_config",
    "builtin_config_names",
    "PRESETS",
    "preset_sources",
    "expand_presets",
    "build_source",
    "build_sources",
    "build_model",
    "source_image",
    "sky_image",
    "describe_source",
    "BACKGROUND_KINDS",
    "spectral_weights",
    "albedo_exposure",
    "template_rows",
    "scale_rows",
    "fold_rows",
    "background_template",
]
