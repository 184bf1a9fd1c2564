"""astromodels sources from a YAML-able description, and the presets of the built-in skies.

A sky is a list of source descriptions, each a mapping::

    {name: bulge, type: extended,
     spatial: {function: Gaussian_on_sphere, lon0: 266.405, lat0: -28.936, sigma: 8.49},
     spectrum: {function: Gaussian, F: 1.0e-3, mu: 511.0, sigma: 1.0}}
    {name: crab, type: point, ra: 83.633, dec: 22.015,        # or l: ..., b: ... (Galactic)
     spectrum: {function: Powerlaw, K: 6.6e-4, piv: 100.0, index: -2.1}}
    {preset: positron_511}                                    # expands to the preset's sources

Functions are looked up in astromodels, which also knows the Galactic templates
of :mod:`cosi_imaging_plugin.sky.functions` (registered on import). A parameter
is a number or a mapping ``{value, min_value, max_value, free}``; astromodels'
default bounds are fit ranges, so a value outside them needs explicit bounds.
Spatial parameters are in degrees (astromodels: ICRS unless the function says
otherwise), spectral ones in keV and ph cm-2 s-1 (keV-1).

The sky image of a source on a HEALPix grid is made by
:mod:`cosi_imaging_plugin.sky.source_images`, the code the 3ML plugin folds with.
"""
import copy
import difflib
import logging
import math

import numpy as np
from astromodels import ExtendedSource, Model, PointSource
from astromodels.functions.function import Function1D, Function2D, _known_functions

from .. import validation
from ..errors import CosiInputError
from . import functions as _galactic_functions  # noqa: F401  (registers Galactic_disk, Galactic_gaussian)
from .spectra import integrate_spectrum

logger = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "preset_sources",
    "expand_presets",
    "build_source",
    "build_sources",
    "build_model",
    "describe_source",
    "set_value_and_bounds",
]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
# ICRS position of Sgr A* / the Galactic centre (deg).
_GC_RA, _GC_DEC = 266.40499, -28.93617

#: The built-in skies (docs/instrument.md, "The sky"). Fluxes in ph cm-2 s-1.
PRESETS = {
    # 511 keV bulge: a 2-D Gaussian of FWHM 20 deg at the Galactic centre, ~1e-3 ph cm-2 s-1,
    # line width ~2.4 keV FWHM (sigma 1 keV).
    "bulge_511": [{
        "name": "bulge_511", "type": "extended",
        "spatial": {"function": "Gaussian_on_sphere", "lon0": _GC_RA, "lat0": _GC_DEC,
                    "sigma": round(20.0 * _FWHM_TO_SIGMA, 4)},
        "spectrum": {"function": "Gaussian", "F": 1.0e-3, "mu": 511.0, "sigma": 1.0},
    }],
    # 511 keV thin disk: scale height 3 deg, long extent in longitude, ~1e-3 ph cm-2 s-1.
    "disk_511": [{
        "name": "disk_511", "type": "extended",
        "spatial": {"function": "Galactic_disk", "l0": 0.0, "b0": 0.0, "sigma_l": 60.0, "scale_height": 3.0},
        "spectrum": {"function": "Gaussian", "F": 1.0e-3, "mu": 511.0, "sigma": 1.0},
    }],
    # Crab-like point source: dN/dE = 6.6e-4 (E / 100 keV)^-2.1 ph cm-2 s-1 keV-1.
    "crab": [{
        "name": "crab", "type": "point", "ra": 83.6331, "dec": 22.0145,
        "spectrum": {"function": "Powerlaw", "K": 6.6e-4, "piv": 100.0, "index": -2.1},
    }],
    # 26Al-like Galactic plane line at 1808.7 keV: broad in longitude, thin in latitude.
    "al26_plane": [{
        "name": "al26_plane", "type": "extended",
        "spatial": {"function": "Galactic_gaussian", "l0": 0.0, "b0": 0.0, "sigma_l": 40.0, "sigma_b": 5.0},
        "spectrum": {"function": "Gaussian", "F": 1.0e-3, "mu": 1808.65, "sigma": 1.0},
    }],
}
PRESETS["positron_511"] = PRESETS["bulge_511"] + PRESETS["disk_511"]

_SOURCE_KEYS = {"point": {"name", "type", "ra", "dec", "l", "b", "spectrum"},
                "extended": {"name", "type", "spatial", "spectrum"}}
_PARAMETER_KEYS = {"value", "min_value", "max_value", "free"}


def preset_sources(name):
    """Source descriptions of a preset sky (deep copies).

    Parameters
    ----------
    name : str
        One of :data:`PRESETS`.

    Returns
    -------
    list of dict
    """
    if name not in PRESETS:
        raise CosiInputError(f"unknown sky preset '{name}'{validation.did_you_mean(name, PRESETS)}; known: "
                             f"{sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def expand_presets(spec_list, where="sky"):
    """Replace ``{preset: NAME}`` items by the preset's sources; copy the rest.

    Parameters
    ----------
    spec_list : list of dict
    where : str
        Name of the list in error messages.

    Returns
    -------
    list of dict
    """
    if spec_list is None:
        return []
    if not isinstance(spec_list, (list, tuple)):
        raise CosiInputError(f"'{where}' must be a list of source descriptions, got {type(spec_list).__name__}")
    out = []
    for i, item in enumerate(spec_list):
        if isinstance(item, dict) and "preset" in item:
            if set(item) != {"preset"}:
                extra = sorted(set(item) - {"preset"})
                raise CosiInputError(f"{where}[{i}]: a preset item takes no other key, got {extra}")
            out.extend(preset_sources(item["preset"]))
        else:
            out.append(copy.deepcopy(item))
    return out


def _function_class(name, dimension, where):
    """astromodels function class ``name`` of the given dimension (1: spectrum, 2: spatial)."""
    # astromodels' registry itself: get_function_class() would log the whole list on every miss
    if not isinstance(name, str) or name not in _known_functions:
        known = [k for k, v in _known_functions.items()
                 if issubclass(v, Function1D if dimension == 1 else Function2D)]
        close = difflib.get_close_matches(str(name), known, n=3)
        hint = f"; did you mean {close}?" if close else f"; known: {sorted(known)}"
        raise CosiInputError(f"{where}: unknown {'spectral' if dimension == 1 else 'spatial'} function "
                             f"{name!r}{hint}")
    cls = _known_functions[name]
    expected = Function1D if dimension == 1 else Function2D
    if not issubclass(cls, expected):
        raise CosiInputError(f"{where}: function '{name}' is not a {expected.__name__} "
                             f"({'a spectrum' if dimension == 1 else 'a spatial shape'} is needed here)")
    return cls


def _build_function(spec, dimension, where):
    """An astromodels function from ``{function: NAME, param: value | {value, min_value, max_value, free}}``."""
    if not isinstance(spec, dict):
        raise CosiInputError(f"{where}: expected a mapping with 'function' and parameters, got {spec!r}")
    if "function" not in spec:
        raise CosiInputError(f"{where}: missing key 'function'")
    cls = _function_class(spec["function"], dimension, f"{where}.function")
    function = cls()
    parameters = {k: v for k, v in spec.items() if k != "function"}
    unknown = sorted(set(parameters) - set(function.parameters))
    if unknown:
        raise CosiInputError(f"{where}: unknown parameter(s) {unknown} of function '{spec['function']}'"
                             f"{validation.did_you_mean(unknown[0], function.parameters)}; "
                             f"known: {list(function.parameters)}")
    for pname, value in parameters.items():
        par = function.parameters[pname]
        key = f"{where}.{pname}"
        bounds = {}
        if isinstance(value, dict):
            validation.check_keys(value, key, known=_PARAMETER_KEYS, required=("value",))
            bounds = {bound: validation.number(value[bound], f"{key}.{bound}")
                      for bound in ("min_value", "max_value") if bound in value}
            if "free" in value:
                par.free = validation.flag(value["free"], f"{key}.free")
            value = value["value"]
        number = validation.number(value, key)
        lo, hi = bounds.get("min_value", par.min_value), bounds.get("max_value", par.max_value)
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            raise CosiInputError(f"{key}: value {number} is outside the bounds [{lo}, {hi}] of '{pname}' of "
                                 f"function '{spec['function']}'; give explicit bounds, e.g. "
                                 f"{{value: {number}, min_value: ..., max_value: ...}}")
        set_value_and_bounds(par, number, **bounds)
    return function


def set_value_and_bounds(parameter, value, **bounds):
    """Set an astromodels parameter's value and bounds in an order that raises no warning.

    astromodels warns whenever the current value falls outside newly set bounds, so the bounds
    given are lifted first, the value set, and the new bounds applied.

    Parameters
    ----------
    parameter : astromodels.Parameter
    value : float
    **bounds
        ``min_value`` and/or ``max_value`` (those not given are left as they are).
    """
    for bound in bounds:
        setattr(parameter, bound, None)
    parameter.value = value
    for bound, limit in bounds.items():
        setattr(parameter, bound, limit)


def build_source(spec, where="source"):
    """One astromodels source from its description.

    Parameters
    ----------
    spec : dict
        See the module docstring (no ``preset`` here; see :func:`expand_presets`).
    where : str
        Name used in error messages.

    Returns
    -------
    astromodels.PointSource or astromodels.ExtendedSource

    Raises
    ------
    CosiInputError
        Unknown keys, functions or parameter names (named), values outside bounds,
        a missing or ambiguous position.
    """
    if not isinstance(spec, dict):
        raise CosiInputError(f"{where}: a source must be a mapping, got {spec!r}")
    kind = spec.get("type")
    if kind not in _SOURCE_KEYS:
        raise CosiInputError(f"{where}.type: must be 'point' or 'extended', got {kind!r}")
    unknown = sorted(set(spec) - _SOURCE_KEYS[kind])
    if unknown:
        raise CosiInputError(f"{where}: unknown key(s) {unknown} for a {kind} source"
                             f"{validation.did_you_mean(unknown[0], _SOURCE_KEYS[kind])}; "
                             f"expected {sorted(_SOURCE_KEYS[kind])}")
    name = validation.identifier(spec.get("name"), f"{where}.name")
    if "spectrum" not in spec:
        raise CosiInputError(f"{where}: missing key 'spectrum'")
    spectrum = _build_function(spec["spectrum"], 1, f"{where}.spectrum")
    if kind == "point":
        has_icrs = "ra" in spec or "dec" in spec
        has_gal = "l" in spec or "b" in spec
        if has_icrs == has_gal:
            raise CosiInputError(f"{where}: a point source needs either 'ra' and 'dec' or 'l' and 'b'")
        keys = ("ra", "dec") if has_icrs else ("l", "b")
        for key in keys:
            if key not in spec:
                raise CosiInputError(f"{where}: missing key '{key}'")
        lon = validation.number(spec[keys[0]], f"{where}.{keys[0]}")
        lat = validation.number(spec[keys[1]], f"{where}.{keys[1]}", low=-90.0, high=90.0)
        return PointSource(name, spectral_shape=spectrum, **{keys[0]: lon % 360.0, keys[1]: lat})
    if "spatial" not in spec:
        raise CosiInputError(f"{where}: missing key 'spatial'")
    spatial = _build_function(spec["spatial"], 2, f"{where}.spatial")
    return ExtendedSource(name, spatial_shape=spatial, spectral_shape=spectrum)


def build_sources(spec_list, where="sky"):
    """astromodels sources from a list of descriptions (presets expanded).

    Parameters
    ----------
    spec_list : list of dict
    where : str
        Name of the list in error messages.

    Returns
    -------
    list of astromodels sources
    """
    specs = expand_presets(spec_list, where)
    sources = [build_source(spec, f"{where}[{i}]") for i, spec in enumerate(specs)]
    names = [s.name for s in sources]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise CosiInputError(f"{where}: duplicated source name(s) {duplicated}")
    return sources


def build_model(spec_list, where="sky"):
    """An astromodels ``Model`` of the described sources.

    Parameters
    ----------
    spec_list : list of dict
    where : str

    Returns
    -------
    astromodels.Model
    """
    return Model(*build_sources(spec_list, where))


def _parameter_values(function):
    return {name: float(par.value) for name, par in function.parameters.items()}


def describe_source(source, image=None, pixel_area=None, ei_edges=None):
    """Plain-Python description of a source's injected truth (for the manifest).

    Parameters
    ----------
    source : astromodels source
    image : numpy.ndarray, optional
        Its sky image [n_pix, n_ei] (ph cm-2 s-1 sr-1 per Ei bin) on the model grid.
    pixel_area : float, optional
        Pixel solid angle of the model grid in sr (needed with ``image``).
    ei_edges : array_like, optional
        Ei edges in keV: adds the spectrum integrated over each Ei bin.

    Returns
    -------
    dict
        ``type``; position (``ra``, ``dec``, ``l``, ``b``) or ``spatial`` {function, parameters};
        ``spectrum`` {function, parameters}; with ``ei_edges``: ``flux_per_ei_bin``
        (ph cm-2 s-1, the spectrum integrated over each bin); with ``image``:
        ``model_flux_per_ei_bin`` (the image integrated over the sky, i.e. what the
        model grid holds).
    """
    out = {"name": source.name}
    if hasattr(source, "position"):
        out["type"] = "point"
        sky = source.position.sky_coord
        out.update(ra=float(sky.icrs.ra.deg), dec=float(sky.icrs.dec.deg), l=float(sky.galactic.l.deg),
                   b=float(sky.galactic.b.deg))
        shape = source.spectrum.main.shape
        spectrum = source
    else:
        out["type"] = "extended"
        out["spatial"] = {"function": source.spatial_shape.name, **_parameter_values(source.spatial_shape)}
        shape = source.spectrum.main.shape
        spectrum = shape
    out["spectrum"] = {"function": shape.name, **_parameter_values(shape)}
    if ei_edges is not None:
        out["flux_per_ei_bin"] = [float(v) for v in integrate_spectrum(spectrum, np.asarray(ei_edges, float))]
    if image is not None:
        out["model_flux_per_ei_bin"] = [float(v) for v in np.asarray(image).sum(axis=0) * pixel_area]
    return out
