"""Simulated COSI datasets: Poisson counts from an astromodels sky plus background templates.

- :mod:`.config`: :class:`SimulationConfig`, the built-in configurations.
- :mod:`.backgrounds`: isotropic, Earth-albedo and instrumental templates folded through the response.
- :mod:`.draws`: expected counts and Poisson draws, in the local and the Galactic CDS.
- :mod:`.dataset`: :func:`simulate_dataset`, which writes the files and their manifest.

The sky descriptions and images live in :mod:`cosi_imaging_plugin.sky`, the manifest
reader in :mod:`cosi_imaging_plugin.io.manifest`.
"""
from .._deprecation import warn_moved
from .backgrounds import (
    BACKGROUND_KINDS,
    albedo_exposure,
    background_template,
    fold_rows,
    scale_rows,
    spectral_weights,
    template_rows,
)
from .config import BackgroundSpec, SimulationConfig, builtin_config, builtin_config_names
from .dataset import simulate_dataset

__all__ = [
    "SimulationConfig",
    "BackgroundSpec",
    "simulate_dataset",
    "builtin_config",
    "builtin_config_names",
    "BACKGROUND_KINDS",
    "spectral_weights",
    "albedo_exposure",
    "template_rows",
    "scale_rows",
    "fold_rows",
    "background_template",
]

_MOVED_TO_SKY = ("PRESETS", "preset_sources", "expand_presets", "build_source", "build_sources", "build_model",
                 "source_image", "sky_image", "describe_source")


def __getattr__(name):
    """Names that moved (removed in 0.3): the sky descriptions, the manifest reader, the command entry."""
    if name in _MOVED_TO_SKY:
        from .. import sky

        warn_moved(f"cosi_imaging_plugin.simulate.{name}", f"cosi_imaging_plugin.sky.{name}")
        return getattr(sky, name)
    if name in ("Manifest", "load_manifest"):
        from ..io import manifest

        new = "read_manifest" if name == "load_manifest" else name
        warn_moved(f"cosi_imaging_plugin.simulate.{name}", f"cosi_imaging_plugin.io.manifest.{new}")
        return getattr(manifest, new)
    if name == "simulate_main":
        from ..cli import simulate_main

        warn_moved("cosi_imaging_plugin.simulate.simulate_main", "cosi_imaging_plugin.cli.simulate_main")
        return simulate_main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
