"""Simulated COSI datasets: response, orbit, exposure, CCM, Poisson counts and a manifest.

:func:`simulate_dataset` turns a :class:`SimulationConfig` into a directory of
files in the COSI formats, all made by this package's own writers:

=====================================  ===========================================================
file                                   content
=====================================  ===========================================================
``response.h5``                        synthetic FullDetectorResponse, version 1 (dense)
``orientation.ori``                    attitude timeline of the simulated orbit
``exposure_table.fits``                ScAtt bins of the orientation at ``scatt_nside``
``ccm.hdf5``                           coordinate conversion matrix [ScAtt, lb, NuLambda] (s)
``data_scatt.hdf5``                    Poisson counts [ScAtt, Em, Phi, PsiChi(spacecraftframe)], COO
``bkg_<name>.hdf5``                    background templates (expected counts), axes of the data
``data_galactic.hdf5``                 with ``galactic``: counts [Time, Em, Phi, PsiChi(galactic)]
``bkg_<name>_galactic.hdf5``           with ``galactic``: the templates rotated to Galactic PsiChi
``imagedeconvolution_parfile.yml``     deconvolution parameters matching the binning and backgrounds
``manifest.yaml``                      every file by role, the configuration and the injected truth
=====================================  ===========================================================

The sky is folded exactly as the 3ML plugin folds it: the sources are rasterized
on the CCM's Galactic model grid and their spectra integrated over the Ei bins
(:func:`~cosi_imaging_plugin.simulate.sky_models.source_image`), mapped through
the CCM to per-ScAtt source rows and folded through the column-compressed
response read back from ``response.h5`` (truncated at ``response_rtol``). The
expected counts are materialized densely, a block of ScAtt rows at a time, and
drawn with ``numpy.random.default_rng``.

Galactic-CDS counts are made by moving every count of ScAtt bin b, local pixel
psi to one of the (up to four) Galactic pixels that share psi's rotated centre,
drawn with the bilinear weights of
:func:`~cosi_imaging_plugin.engine.galactic.psichi_rotation` for the bin's mean
attitude (the one the deconvolution uses). Counts stay integers, their total is
unchanged, and their expectation is ``rotate_to_galactic`` of the local one.

Everything is written into a temporary directory beside ``output_dir`` and
renamed at the end, so an interrupted run leaves no complete-looking directory.
"""
import copy
import dataclasses
import logging
import math
import re
import time
from importlib import resources
from pathlib import Path

import astropy.units as u
import healpy as hp
import numpy as np
import sparse
import yaml
from histpy import Axes, Axis, HealpixAxis, Histogram
from tqdm.auto import tqdm

from .. import __version__
from .._atomic import atomic_directory, atomic_path
from ..errors import CosiFileError, CosiInputError
from ..io.manifest import read_manifest_mapping, resolve_backgrounds, resolve_file
from ..io.yaml_files import read_yaml
from ..instrument.config import InstrumentConfig
from ..instrument.orbit import OrbitConfig
from .backgrounds import BACKGROUND_KINDS, fold_rows, scale_rows, template_rows
from .sky_models import build_sources, describe_source, expand_presets, source_image

logger = logging.getLogger(__name__)

__all__ = [
    "BackgroundSpec",
    "SimulationConfig",
    "Manifest",
    "simulate_dataset",
    "load_manifest",
    "builtin_config",
    "builtin_config_names",
    "simulate_main",
    "FILES",
]

MANIFEST_NAME = "manifest.yaml"
MANIFEST_FORMAT = "cosi_imaging_plugin.simulated_dataset"

#: File names of the written roles.
FILES = {
    "response": "response.h5",
    "orientation": "orientation.ori",
    "exposure_table": "exposure_table.fits",
    "ccm": "ccm.hdf5",
    "data_scatt": "data_scatt.hdf5",
    "data_galactic": "data_galactic.hdf5",
    "parameter_file": "imagedeconvolution_parfile.yml",
}
_REQUIRED_ROLES = ("response", "orientation", "exposure_table", "ccm", "data_scatt", "parameter_file")

# Working memory of one block of folded expected counts (float64, all folded components).
_BLOCK_BYTES = 256 * 2**20
# Range of the background normalizations written to the deconvolution parameter file.
_BKG_NORM_RANGE = [0.01, 10.0]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_TOP_KEYS = {"name", "seed", "instrument", "orbit", "scatt_nside", "model_nside", "sky", "backgrounds"}
_OPTIONAL_KEYS = {"response_rtol": 0.0, "galactic": True, "earth_occultation": True,
                  "use_averaged_pointing": False}
_BACKGROUND_KEYS = {"kind", "rate", "norm", "index"}


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
def _fail(source, key, message):
    raise CosiInputError(f"{source}: key '{key}': {message}")


def _number(value, key, source, low=None, low_open=False, high=None, high_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        _fail(source, key, f"expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        _fail(source, key, f"must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        _fail(source, key, f"must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        _fail(source, key, f"must be {'<' if high_open else '<='} {high}, got {value!r}")
    return value


def _flag(value, key, source):
    if not isinstance(value, bool):
        _fail(source, key, f"expected true or false, got {value!r}")
    return value


def _nside(value, key, source):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        _fail(source, key, f"expected an integer NSIDE, got {value!r}")
    value = int(value)
    if value < 1 or value & (value - 1):
        _fail(source, key, f"NSIDE must be a positive power of two, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class BackgroundSpec:
    """One injected background component.

    Attributes
    ----------
    kind : {'isotropic', 'albedo', 'instrumental'}
        See :mod:`cosi_imaging_plugin.simulate.backgrounds`.
    rate : float
        Counts per second of the template (its total is ``rate x live time``).
    norm : float
        Normalization injected into the data (the template written is unscaled by it).
    index : float
        Photon index of the component across the Ei bins.
    """

    kind: str
    rate: float
    norm: float = 1.0
    index: float = -2.0


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    """A validated description of a simulated dataset.

    Build it with :meth:`read`, :meth:`from_dict` or :func:`builtin_config`.
    The YAML keys are the attribute names; ``instrument`` is ``default``, a
    path, or ``{file: default | PATH, overrides: {...}}``; ``orbit`` holds
    :class:`~cosi_imaging_plugin.instrument.orbit.OrbitConfig` fields; ``sky``
    the source list of :mod:`~cosi_imaging_plugin.simulate.sky_models`;
    ``backgrounds`` maps a name to ``{kind, rate, norm (1), index (-2)}``.

    Attributes
    ----------
    name : str
    seed : int
        Seed of ``numpy.random.default_rng``.
    instrument : InstrumentConfig
        The instrument, overrides applied.
    instrument_file : str
        ``'default'`` or the absolute path of the instrument YAML.
    instrument_overrides : dict
    orbit : OrbitConfig
    scatt_nside, model_nside : int
        NSIDE of the attitude binning and of the Galactic model grid.
    response_rtol : float
        Truncation tolerance of the compressed response used to fold (0: exact).
    sky : tuple of dict
        Source descriptions, presets expanded.
    backgrounds : dict of str to BackgroundSpec
    galactic : bool
        Also write Galactic-CDS data and templates.
    earth_occultation : bool
        Build the CCM with Earth occultation (sky and isotropic photons blocked by the Earth).
    use_averaged_pointing : bool
        Build the CCM from each ScAtt bin's mean attitude instead of every pointing.
    source : str
        Where the configuration came from (for messages).
    """

    name: str
    seed: int
    instrument: InstrumentConfig
    instrument_file: str
    instrument_overrides: dict
    orbit: OrbitConfig
    scatt_nside: int
    model_nside: int
    response_rtol: float
    sky: tuple
    backgrounds: dict
    galactic: bool
    earth_occultation: bool
    use_averaged_pointing: bool
    source: str = "simulation config"

    @classmethod
    def from_dict(cls, mapping, source="simulation config", base_dir=None):
        """Validate a mapping (as read from YAML); every failure names the key.

        Parameters
        ----------
        mapping : dict
        source : str
            Name used in error messages (e.g. the file).
        base_dir : str or pathlib.Path, optional
            Directory against which a relative instrument path is resolved
            (default: the working directory).

        Returns
        -------
        SimulationConfig

        Raises
        ------
        CosiInputError
            Unknown or missing keys, impossible values, unknown sky functions or
            parameters, an invalid instrument or orbit; raised before any work.
        """
        if not isinstance(mapping, dict):
            raise CosiInputError(f"{source}: a simulation configuration must be a mapping, "
                                 f"got {type(mapping).__name__}")
        for key in mapping:
            if key not in _TOP_KEYS and key not in _OPTIONAL_KEYS:
                _fail(source, key, f"unknown key (expected {sorted(_TOP_KEYS | set(_OPTIONAL_KEYS))})")
        for key in sorted(_TOP_KEYS):
            if key not in mapping:
                _fail(source, key, "missing key")
        values = {**_OPTIONAL_KEYS, **mapping}

        name = values["name"]
        if not isinstance(name, str) or not name.strip():
            _fail(source, "name", f"expected a non-empty string, got {name!r}")
        seed = values["seed"]
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            _fail(source, "seed", f"expected a non-negative integer, got {seed!r}")

        instrument, instrument_file, overrides = _parse_instrument(values["instrument"], source, base_dir)

        orbit_spec = values["orbit"]
        if not isinstance(orbit_spec, dict):
            _fail(source, "orbit", f"expected a mapping of OrbitConfig fields, got {orbit_spec!r}")
        for key, value in orbit_spec.items():
            if key == "saa":
                _flag(value, f"orbit.{key}", source)
            elif key == "saa_longitude_deg":
                if not isinstance(value, (list, tuple)) or len(value) != 2:
                    _fail(source, f"orbit.{key}", f"expected [lo, hi] in degrees, got {value!r}")
                for i, v in enumerate(value):
                    _number(v, f"orbit.{key}[{i}]", source)
            elif key in OrbitConfig.__dataclass_fields__:
                _number(value, f"orbit.{key}", source)
        try:
            orbit = OrbitConfig.from_dict(orbit_spec)
        except CosiInputError as exc:
            raise CosiInputError(f"{source}: key 'orbit': {exc}") from exc

        scatt_nside = _nside(values["scatt_nside"], "scatt_nside", source)
        model_nside = _nside(values["model_nside"], "model_nside", source)
        rtol = _number(values["response_rtol"], "response_rtol", source, low=0.0, high=1.0, high_open=True)
        flags = {key: _flag(values[key], key, source)
                 for key in ("galactic", "earth_occultation", "use_averaged_pointing")}

        sky = expand_presets(values["sky"], where=f"{source}: sky")
        build_sources(sky, where=f"{source}: sky")  # validates functions, parameters and names
        backgrounds = _parse_backgrounds(values["backgrounds"], source)

        return cls(name=name, seed=int(seed), instrument=instrument, instrument_file=instrument_file,
                   instrument_overrides=overrides, orbit=orbit, scatt_nside=scatt_nside, model_nside=model_nside,
                   response_rtol=rtol, sky=tuple(sky), backgrounds=backgrounds, source=str(source), **flags)

    @classmethod
    def read(cls, path):
        """Read and validate a YAML simulation configuration.

        A relative instrument path is resolved against the file's directory.

        Parameters
        ----------
        path : str or pathlib.Path

        Returns
        -------
        SimulationConfig
        """
        path = Path(path)
        mapping = read_yaml(path, "simulation configuration")
        return cls.from_dict(mapping, source=str(path), base_dir=path.parent)

    def to_dict(self):
        """Plain-Python mapping that :meth:`from_dict` reads back to an equal configuration.

        Returns
        -------
        dict
        """
        orbit = dataclasses.asdict(self.orbit)
        orbit["saa_longitude_deg"] = list(orbit["saa_longitude_deg"])
        return {
            "name": self.name,
            "seed": self.seed,
            "instrument": {"file": self.instrument_file, "overrides": copy.deepcopy(self.instrument_overrides)},
            "orbit": orbit,
            "scatt_nside": self.scatt_nside,
            "model_nside": self.model_nside,
            "response_rtol": self.response_rtol,
            "earth_occultation": self.earth_occultation,
            "use_averaged_pointing": self.use_averaged_pointing,
            "galactic": self.galactic,
            "sky": copy.deepcopy(list(self.sky)),
            "backgrounds": {name: dataclasses.asdict(spec) for name, spec in self.backgrounds.items()},
        }


def _parse_instrument(spec, source, base_dir):
    if isinstance(spec, str):
        spec = {"file": spec}
    if not isinstance(spec, dict):
        _fail(source, "instrument", f"expected 'default', a path or {{file, overrides}}, got {spec!r}")
    for key in spec:
        if key not in ("file", "overrides"):
            _fail(source, f"instrument.{key}", "unknown key (expected file, overrides)")
    file = spec.get("file", "default")
    overrides = spec.get("overrides") or {}
    if not isinstance(file, str):
        _fail(source, "instrument.file", f"expected 'default' or a path, got {file!r}")
    if not isinstance(overrides, dict):
        _fail(source, "instrument.overrides", f"expected a mapping, got {overrides!r}")
    if file == "default":
        base = InstrumentConfig.default()
    else:
        path = Path(file)
        if not path.is_absolute():
            path = Path(base_dir or ".") / path
        path = path.resolve()
        if not path.is_file():
            _fail(source, "instrument.file", f"instrument file {path} does not exist")
        base = InstrumentConfig.read(path)
        file = str(path)
    instrument = base.updated(overrides, source=f"{source}: instrument.overrides") if overrides else base
    return instrument, file, copy.deepcopy(overrides)


def _parse_backgrounds(spec, source):
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        _fail(source, "backgrounds", f"expected a mapping of names to {{kind, rate, norm}}, got {spec!r}")
    out = {}
    for name, item in spec.items():
        key = f"backgrounds.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            _fail(source, key, "a background name must be an identifier (letters, digits, '_')")
        if not isinstance(item, dict):
            _fail(source, key, f"expected a mapping {{kind, rate, norm, index}}, got {item!r}")
        for sub in item:
            if sub not in _BACKGROUND_KEYS:
                _fail(source, f"{key}.{sub}", f"unknown key (expected {sorted(_BACKGROUND_KEYS)})")
        for sub in ("kind", "rate"):
            if sub not in item:
                _fail(source, f"{key}.{sub}", "missing key")
        if item["kind"] not in BACKGROUND_KINDS:
            _fail(source, f"{key}.kind", f"must be one of {list(BACKGROUND_KINDS)}, got {item['kind']!r}")
        out[name] = BackgroundSpec(
            kind=item["kind"],
            rate=_number(item["rate"], f"{key}.rate", source, low=0.0, low_open=True),
            norm=_number(item.get("norm", 1.0), f"{key}.norm", source, low=0.0),
            index=_number(item.get("index", -2.0), f"{key}.index", source),
        )
    return out


def _coerce_config(config):
    if isinstance(config, SimulationConfig):
        return config
    if isinstance(config, dict):
        return SimulationConfig.from_dict(config)
    return SimulationConfig.read(config)


def builtin_config_names():
    """Names of the simulation configurations shipped as package data.

    Returns
    -------
    list of str
    """
    folder = resources.files("cosi_imaging_plugin").joinpath("data/configs")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def builtin_config(name):
    """A simulation configuration shipped with the package (``data/configs/NAME.yaml``).

    Parameters
    ----------
    name : str
        E.g. ``'mini_511keV'``, ``'dc2_511keV'``, ``'crab_continuum'`` (``.yaml`` optional).

    Returns
    -------
    SimulationConfig
    """
    stem = name[:-5] if name.endswith(".yaml") else name
    names = builtin_config_names()
    if stem not in names:
        raise CosiInputError(f"unknown built-in simulation configuration '{name}'; known: {names}")
    resource = resources.files("cosi_imaging_plugin").joinpath(f"data/configs/{stem}.yaml")
    with resources.as_file(resource) as path:
        return SimulationConfig.read(path)


# ----------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Manifest:
    """The files of a simulated dataset (absolute paths) and its injected truth.

    Attributes
    ----------
    path : pathlib.Path
        The ``manifest.yaml``.
    name : str
    seed : int
    files : dict of str to pathlib.Path
        Role -> file: ``response``, ``orientation``, ``exposure_table``, ``ccm``,
        ``data_scatt``, ``parameter_file`` and, for Galactic data, ``data_galactic``.
    backgrounds : dict of str to pathlib.Path
        Local-CDS background templates by name.
    backgrounds_galactic : dict of str to pathlib.Path
        Galactic-CDS background templates by name (empty without Galactic data).
    truth : dict
        Injected sources, backgrounds and expected counts (see :func:`simulate_dataset`).
    config : dict
        The simulation configuration (:meth:`SimulationConfig.to_dict`).
    """

    path: Path
    name: str
    seed: int
    files: dict
    backgrounds: dict
    backgrounds_galactic: dict
    truth: dict
    config: dict

    @property
    def directory(self):
        """pathlib.Path: the dataset directory."""
        return self.path.parent

    def __getitem__(self, role):
        """Path of a role (``'backgrounds'`` gives the local templates by name)."""
        if role == "backgrounds":
            return dict(self.backgrounds)
        if role == "backgrounds_galactic":
            return dict(self.backgrounds_galactic)
        if role not in self.files:
            raise KeyError(f"{self.path} names no file of role '{role}'; roles: {sorted(self.files)}")
        return self.files[role]

    def __contains__(self, role):
        return role in self.files or (role == "backgrounds" and bool(self.backgrounds)) or (
            role == "backgrounds_galactic" and bool(self.backgrounds_galactic))

    def roles(self):
        """Role -> absolute path, ``backgrounds`` as {name: path} (the deconvolution CLI's layout).

        Returns
        -------
        dict
        """
        out = dict(self.files)
        if self.backgrounds:
            out["backgrounds"] = dict(self.backgrounds)
        return out


def load_manifest(path):
    """Read the ``manifest.yaml`` of a simulated dataset.

    Parameters
    ----------
    path : str or pathlib.Path
        The manifest or the directory holding it.

    Returns
    -------
    Manifest
        With absolute paths (resolved against the manifest's directory).

    Raises
    ------
    CosiFileError
        Missing or invalid manifest, a required role missing, or a named file
        that does not exist (the role is named).
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    data = read_manifest_mapping(path)
    if data.get("format") != MANIFEST_FORMAT:
        raise CosiFileError(f"{path}: not a simulated-dataset manifest (format must be '{MANIFEST_FORMAT}')")
    for role in _REQUIRED_ROLES:
        if role not in data:
            raise CosiFileError(f"{path}: missing role '{role}'")
    files = {role: resolve_file(path, role, data[role]) for role in FILES if role in data}
    backgrounds = {group: resolve_backgrounds(path, group, data.get(group))
                   for group in ("backgrounds", "backgrounds_galactic")}
    return Manifest(path=path.resolve(), name=str(data.get("name", "")), seed=int(data.get("seed", -1)),
                    files=files, backgrounds=backgrounds["backgrounds"],
                    backgrounds_galactic=backgrounds["backgrounds_galactic"], truth=data.get("truth") or {},
                    config=data.get("config") or {})


# ----------------------------------------------------------------------------------------------
# Simulation
# ----------------------------------------------------------------------------------------------
class _Stopwatch:
    """Logs the time of each stage of a simulation."""

    def __init__(self):
        self.start = self.last = time.perf_counter()

    def lap(self, what):
        now = time.perf_counter()
        logger.info("%s done in %.1f s (%.1f s so far)", what, now - self.last, now - self.start)
        self.last = now


def _rotation_table(attitude, nside_local, nside_galactic, scheme_local):
    """Galactic pixels and bilinear weights (n_local, 4) of every local PsiChi pixel at one attitude."""
    from ..engine.galactic import psichi_rotation

    op = psichi_rotation(attitude, nside_local, nside_galactic, scheme_local, "ring").tocsc()
    op.sort_indices()
    n_local = op.shape[1]
    per_column = np.diff(op.indptr)
    columns = np.repeat(np.arange(n_local), per_column)
    slot = np.arange(op.nnz) - np.repeat(op.indptr[:-1], per_column)
    pixels = np.zeros((n_local, 4), dtype=np.int64)
    weights = np.zeros((n_local, 4))
    pixels[columns, slot] = op.indices
    weights[columns, slot] = op.data
    return pixels, weights / weights.sum(axis=1, keepdims=True)


def _parameter_file(config, ei_edges):
    resolution = hp.nside2resol(config.model_nside, arcmin=True) / 60.0
    return {
        "author": f"cosi_imaging_plugin {__version__} simulate ({config.name})",
        "model_definition": {
            "class": "AllSkyImage",
            "property": {
                "coordinate": "galactic",
                "nside": config.model_nside,
                "scheme": "ring",
                "energy_edges": {"value": [float(e) for e in ei_edges], "unit": "keV"},
                "unit": "cm-2 s-1 sr-1",
            },
            "initialization": {"algorithm": "flat",
                               "parameter": {"value": [1.0e-4] * (len(ei_edges) - 1), "unit": "cm-2 s-1 sr-1"}},
        },
        "deconvolution": {
            "algorithm": "RL",
            "parameter": {
                "iteration_max": 30,
                "acceleration": {"activate": True, "alpha_max": 10.0},
                "response_weighting": {"activate": True, "index": 0.5},
                # half the model pixel size: smooths pixel-scale noise, keeps the resolution
                "smoothing": {"activate": True, "FWHM": {"value": float(round(0.5 * resolution, 2)), "unit": "deg"}},
                "stopping_criteria": {"statistics": "log-likelihood", "threshold": 0.01},
                "background_normalization_optimization": {
                    "activate": bool(config.backgrounds),
                    "range": {name: list(_BKG_NORM_RANGE) for name in config.backgrounds},
                },
                "save_results": {"activate": False, "directory": "./results", "only_final_result": True},
            },
        },
    }


def simulate_dataset(config, output_dir, progress=True, overwrite=False):
    """Simulate a COSI dataset and write it, with a manifest, to ``output_dir``.

    Parameters
    ----------
    config : SimulationConfig, dict or path-like
        The simulation (a dict or YAML path is validated first).
    output_dir : str or pathlib.Path
        Directory to create; it appears only once complete.
    progress : bool
        Show tqdm progress bars.
    overwrite : bool
        Replace an existing ``output_dir`` (only after the new one is complete).

    Returns
    -------
    Manifest
        The written manifest (absolute paths, truth).

    Raises
    ------
    CosiInputError
        Invalid configuration (before any work).
    FileExistsError
        ``output_dir`` exists and ``overwrite`` is False (before any work).

    Notes
    -----
    The manifest's ``truth`` holds: ``livetime_s``, ``n_scatt_bins``, ``ei_edges_kev``,
    ``response_rtol``; ``sources`` (per source: type, position or spatial function and
    parameters, spectrum function and parameters, ``flux_per_ei_bin`` (spectrum
    integrated over each Ei bin, ph cm-2 s-1), ``model_flux_per_ei_bin`` (its image on
    the model grid integrated over the sky) and ``expected_counts``);
    ``expected_sky_counts``; ``backgrounds`` (per name: kind, rate, norm, index,
    ``template_counts`` = rate x live time, ``expected_counts`` = norm x template_counts);
    ``expected_total_counts``; ``observed_counts``.
    """
    config = _coerce_config(config)
    output_dir = Path(output_dir)
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        truth, roles = _simulate_into(config, Path(tmp), progress)
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": 1,
            "created_by": f"cosi_imaging_plugin {__version__}",
            "name": config.name,
            "seed": config.seed,
            **roles,
            "truth": truth,
            "config": config.to_dict(),
        }
        with atomic_path(Path(tmp) / MANIFEST_NAME) as file:
            file.write_text(yaml.safe_dump(manifest, sort_keys=False))
    logger.info("simulated dataset '%s' written to %s", config.name, output_dir)
    return load_manifest(output_dir)


def _simulate_into(config, out, progress):
    """All the work of :func:`simulate_dataset`, writing into ``out``; returns (truth, roles)."""
    from ..engine import CCMMapping, ColumnResponse
    from ..exposure import coordsys_conversion_matrix, write_ccm
    from ..instrument.orbit import simulate_orbit
    from ..instrument.response_generator import generate_response
    from ..io import DeconvolutionParameters, ExposureTable

    watch = _Stopwatch()
    instrument = config.instrument
    roles = {}

    # -- instrument, orbit, exposure, CCM ---------------------------------------------------------
    generate_response(instrument, out / FILES["response"], progress=progress)
    roles["response"] = FILES["response"]
    watch.lap("response")
    orientation = simulate_orbit(config.orbit)
    orientation.write(out / FILES["orientation"])
    roles["orientation"] = FILES["orientation"]
    table = ExposureTable.from_orientation(orientation, config.scatt_nside)
    table.write(out / FILES["exposure_table"])
    roles["exposure_table"] = FILES["exposure_table"]
    livetime = float(np.sum(table.exposure))
    logger.info("orbit: %d samples, %d ScAtt bins at NSIDE %d, live time %.6g s", len(orientation), len(table),
                config.scatt_nside, livetime)
    watch.lap("orbit and exposure table")
    ccm = coordsys_conversion_matrix(table, config.model_nside, instrument.nside,
                                     use_averaged_pointing=config.use_averaged_pointing,
                                     earth_occultation=config.earth_occultation,
                                     response_scheme=instrument.binning.scheme, progress=progress)
    write_ccm(ccm, out / FILES["ccm"])
    roles["ccm"] = FILES["ccm"]
    watch.lap("CCM")
    response = ColumnResponse.from_file(out / FILES["response"], rtol=config.response_rtol, progress=progress)
    mapping = CCMMapping(ccm)
    del ccm
    watch.lap("response compression")

    # -- sky and background source rows, expected counts, Poisson draws ----------------------------
    sky = _SkyModel(config, response, mapping)
    components = _Components(config, response, mapping, table, livetime, sky.image)
    watch.lap("sky image and background rows")
    attitudes = table.mean_attitudes() if config.galactic else None
    draws = _draw(config, response, components, attitudes, progress)
    watch.lap("expected counts and Poisson draw")
    if not math.isclose(draws.folded_sky, sky.expected, rel_tol=1e-4, abs_tol=1e-9):
        logger.warning("dense sky expectation %.6g differs from the exposure-map total %.6g", draws.folded_sky,
                       sky.expected)

    # -- files ------------------------------------------------------------------------------------
    observed = _write_draws(draws, response, orientation, out, roles)
    DeconvolutionParameters(_parameter_file(config, sky.ei_edges), source="simulate").write(
        out / FILES["parameter_file"])
    roles["parameter_file"] = FILES["parameter_file"]
    watch.lap("writing data and templates")

    background_truth = {}
    for name, spec in config.backgrounds.items():
        background_truth[name] = {"kind": spec.kind, "rate": spec.rate, "norm": spec.norm, "index": spec.index,
                                  "template_counts": spec.rate * livetime,
                                  "expected_counts": spec.norm * spec.rate * livetime}
    truth = {
        "livetime_s": livetime,
        "n_scatt_bins": len(table),
        "ei_edges_kev": [float(e) for e in sky.ei_edges],
        "response_rtol": config.response_rtol,
        "sources": sky.truth,
        "expected_sky_counts": sky.expected,
        "backgrounds": background_truth,
        "expected_total_counts": sky.expected + sum(b["expected_counts"] for b in background_truth.values()),
        "observed_counts": observed,
    }
    logger.info("expected counts: sky %.6g, total %.6g; observed %d", sky.expected, truth["expected_total_counts"],
                observed["data_scatt"])
    return truth, _ordered_roles(roles)


class _SkyModel:
    """The sources of a configuration on the CCM's model grid, as the 3ML plugin folds them.

    Attributes: ``ei_edges`` (keV), ``image`` [n_pix, n_ei] (ph cm-2 s-1 sr-1 per Ei bin),
    ``expected`` (sky counts from the exposure map) and ``truth`` (one dict per source).
    """

    def __init__(self, config, response, mapping):
        from ..sky.rasterize import Rasterizer

        self.ei_edges = response.axes[1].edges.to_value(u.keV).astype(np.float64)
        model_axis = mapping.model_axis
        rasterizer = Rasterizer(model_axis.nside, str(model_axis.scheme), grid_frame="galactic",
                                function_frame="icrs")
        exposure_map = mapping.exposure(response.effective_area)
        self.image = np.zeros((mapping.n_model_pix, self.ei_edges.size - 1))
        self.truth = []
        for source in build_sources(list(config.sky), where=f"{config.source}: sky"):
            image = source_image(source, rasterizer, self.ei_edges)
            self.image += image
            info = describe_source(source, image, rasterizer.pixel_area, self.ei_edges)
            info["expected_counts"] = float(np.sum(exposure_map * image))
            self.truth.append(info)
        self.expected = float(np.sum(exposure_map * self.image))


class _Components:
    """Source rows of the sky and the scaled backgrounds.

    ``folded`` lists (name, rows) folded block by block (the sky first); a background
    whose rows are all proportional (instrumental) is folded once into ``rank_one[name] =
    (row weights, folded profile)`` and scaled per row.
    """

    def __init__(self, config, response, mapping, table, livetime, image):
        self.names = list(config.backgrounds)
        self.norms = {name: spec.norm for name, spec in config.backgrounds.items()}
        self.folded = [("sky", mapping.forward(image))]
        self.rank_one = {}
        for name, spec in config.backgrounds.items():
            rows = scale_rows(template_rows(spec.kind, response, mapping, table, spec.index), response, spec.rate,
                              livetime, name)
            proportional = _proportional_rows(rows)
            if proportional is None:
                self.folded.append((name, rows))
            else:
                weights, profile = proportional
                self.rank_one[name] = (weights, fold_rows(response, profile[None])[0])
        self.n_rows = mapping.n_rows


@dataclasses.dataclass
class _Draws:
    """Results of :func:`_draw`."""

    n_rows: int  # ScAtt bins
    coords: np.ndarray  # (2, nnz): ScAtt row, flat CDS column
    counts: np.ndarray  # (nnz,)
    templates: dict  # name -> float32 (n_rows, n_columns)
    folded_sky: float
    galactic_counts: np.ndarray = None  # flat (Em, Phi, PsiChi_gal), int64
    galactic_templates: dict = None  # name -> (Em, Phi, PsiChi_gal)
    nside_galactic: int = None


def _draw(config, response, components, attitudes, progress):
    """Dense expected counts a block of ScAtt rows at a time, Poisson draws and Galactic moves."""
    from ..engine.galactic import rotate_to_galactic

    n_rows, n_columns = components.n_rows, response.n_columns
    psi_axis = response.axes["PsiChi"]
    cds_shape = tuple(a.nbins for a in response.axes[2:])
    names = components.names
    templates = {name: np.empty((n_rows, n_columns), dtype=np.float32) for name in names}
    # independent streams: the counts do not depend on how the Galactic moves consume numbers
    rng_counts, rng_moves = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(2))
    # the folded block and its transposed copy dominate the working memory
    block = max(1, int(_BLOCK_BYTES // (2 * 8 * n_columns * len(components.folded))))
    coords, values, folded_sky = [], [], 0.0
    galactic = attitudes is not None
    if galactic:
        nside_gal = psi_axis.nside
        n_gal = hp.nside2npix(nside_gal)
        gal_counts = np.zeros(int(np.prod(cds_shape[:-1])) * n_gal, dtype=np.int64)
        gal_templates = {name: np.zeros((*cds_shape[:-1], n_gal)) for name in names}
    for r0 in tqdm(range(0, n_rows, block), desc="expected counts", unit="block", disable=not progress):
        r1 = min(n_rows, r0 + block)
        stacked = np.concatenate([rows[r0:r1] for _, rows in components.folded])
        folded = fold_rows(response, stacked).reshape(len(components.folded), r1 - r0, n_columns)
        for i, (name, _) in enumerate(components.folded[1:], start=1):
            templates[name][r0:r1] = folded[i]
        for name, (weights, profile) in components.rank_one.items():
            templates[name][r0:r1] = weights[r0:r1, None] * profile[None, :]
        expected = folded[0]
        folded_sky += float(expected.sum())
        for name in names:
            # the data are drawn from the template values as written (float32)
            expected += components.norms[name] * templates[name][r0:r1]
        counts = rng_counts.poisson(expected)
        del folded, expected
        rows, cols = np.nonzero(counts)
        n = counts[rows, cols]
        del counts
        coords.append(np.vstack([rows + r0, cols]))
        values.append(n)
        if galactic:
            _move_counts(rows + r0, cols, n, attitudes, psi_axis.nside, nside_gal, str(psi_axis.scheme),
                         cds_shape[-1], n_gal, rng_moves, gal_counts)
            for name in names:
                chunk = templates[name][r0:r1].reshape(r1 - r0, *cds_shape)
                gal_templates[name] += rotate_to_galactic(chunk, attitudes[r0:r1], psi_axis.nside, nside_gal,
                                                          str(psi_axis.scheme), "ring")
    draws = _Draws(n_rows=n_rows, coords=np.concatenate(coords, axis=1), counts=np.concatenate(values), templates=templates,
                   folded_sky=folded_sky)
    if galactic:
        draws.galactic_counts, draws.galactic_templates, draws.nside_galactic = gal_counts, gal_templates, nside_gal
    return draws


def _write_draws(draws, response, orientation, out, roles):
    """Write the local and Galactic counts and templates; return the observed totals."""
    from ..io import write_histogram

    cds_axes = list(response.axes[2:])
    cds_shape = tuple(a.nbins for a in cds_axes)
    data_axes = Axes([Axis(np.arange(draws.n_rows + 1), label="ScAtt"), *cds_axes])
    full = np.vstack([draws.coords[0], np.array(np.unravel_index(draws.coords[1], cds_shape))]).astype(np.int64)
    data = Histogram(data_axes, contents=sparse.COO(full, draws.counts.astype(np.float64),
                                                    shape=tuple(data_axes.nbins), has_duplicates=False,
                                                    sorted=True))
    write_histogram(data, out / FILES["data_scatt"])
    roles["data_scatt"] = FILES["data_scatt"]
    observed = {"data_scatt": int(draws.counts.sum())}
    roles["backgrounds"] = {}
    for name in list(draws.templates):
        file = f"bkg_{name}.hdf5"
        contents = draws.templates.pop(name).reshape(tuple(data_axes.nbins))  # free each once written
        write_histogram(Histogram(data_axes, contents=contents), out / file)
        roles["backgrounds"][name] = file
    if draws.galactic_counts is None:
        return observed
    t = orientation.unix_seconds
    gal_axes = Axes([Axis(np.array([t[0], t[-1]], dtype=np.float64) * u.s, label="Time"), *cds_axes[:-1],
                     HealpixAxis(nside=draws.nside_galactic, scheme="ring", coordsys="galactic", label="PsiChi")])
    shape = tuple(gal_axes.nbins)
    nz = np.flatnonzero(draws.galactic_counts)
    gal_coords = np.vstack([np.zeros((1, nz.size), dtype=np.int64),
                            np.array(np.unravel_index(nz, shape[1:]), dtype=np.int64).reshape(len(shape) - 1, -1)])
    gal = Histogram(gal_axes, contents=sparse.COO(gal_coords, draws.galactic_counts[nz].astype(np.float64),
                                                  shape=shape, has_duplicates=False, sorted=True))
    write_histogram(gal, out / FILES["data_galactic"])
    roles["data_galactic"] = FILES["data_galactic"]
    observed["data_galactic"] = int(draws.galactic_counts.sum())
    roles["backgrounds_galactic"] = {}
    for name, template in draws.galactic_templates.items():
        file = f"bkg_{name}_galactic.hdf5"
        write_histogram(Histogram(gal_axes, contents=template[None]), out / file)
        roles["backgrounds_galactic"][name] = file
    return observed


def _proportional_rows(rows):
    """(weights, profile) with ``rows = weights[:, None] * profile`` if all rows are proportional, else None."""
    totals = rows.sum(axis=1)
    reference = int(np.argmax(totals))
    if not totals[reference] > 0:
        return None
    profile = rows[reference] / totals[reference]
    if np.allclose(rows, totals[:, None] * profile[None, :], rtol=1e-12, atol=0.0):
        return totals, profile
    return None


def _ordered_roles(roles):
    order = ["response", "orientation", "exposure_table", "ccm", "data_scatt", "data_galactic", "backgrounds",
             "backgrounds_galactic", "parameter_file"]
    return {key: roles[key] for key in order if key in roles}


def _move_counts(rows, cols, counts, attitudes, nside_local, nside_gal, scheme_local, n_local, n_gal, rng, out):
    """Add the counts of local bins (row, col) to Galactic bins, each count to one of its bilinear pixels."""
    order = np.argsort(rows, kind="stable")
    rows, cols, counts = rows[order], cols[order], counts[order]
    bounds = np.flatnonzero(np.diff(rows)) + 1
    for sel in np.split(np.arange(rows.size), bounds):
        if sel.size == 0:
            continue
        pixels, weights = _rotation_table(attitudes[rows[sel[0]]], nside_local, nside_gal, scheme_local)
        psi = cols[sel] % n_local
        rest = cols[sel] // n_local  # (Em, Phi) index
        split = rng.multinomial(counts[sel], weights[psi])
        target = rest[:, None] * n_gal + pixels[psi]
        np.add.at(out, target.ravel(), split.ravel())


# ----------------------------------------------------------------------------------------------
# Command-line entry
# ----------------------------------------------------------------------------------------------
def simulate_main(config, output_dir, overwrite=False, progress=True):
    """Entry point of ``cosi-imaging simulate CONFIG -o DIR``.

    Parameters
    ----------
    config : str or pathlib.Path
        A YAML configuration file, or the name of a built-in one (see
        :func:`builtin_config_names`) when no such file exists.
    output_dir : str or pathlib.Path
    overwrite : bool
        Replace an existing output directory.
    progress : bool

    Returns
    -------
    Manifest
    """
    path = Path(config)
    if path.is_file():
        cfg = SimulationConfig.read(path)
    elif str(config).removesuffix(".yaml") in builtin_config_names():
        cfg = builtin_config(str(config))
    else:
        raise CosiFileError(f"{config} is neither a configuration file nor a built-in configuration "
                            f"({builtin_config_names()})")
    start = time.perf_counter()
    manifest = simulate_dataset(cfg, output_dir, progress=progress, overwrite=overwrite)
    truth = manifest.truth
    logger.info("dataset '%s': %d ScAtt bins, %.6g s live time, %d counts (expected %.6g) in %.1f s -> %s",
                cfg.name, truth["n_scatt_bins"], truth["livetime_s"], truth["observed_counts"]["data_scatt"],
                truth["expected_total_counts"], time.perf_counter() - start, manifest.path)
    return manifest
