"""Simulation configurations: what a simulated dataset holds, validated before any work.

A configuration (YAML, or a mapping) names the instrument, the orbit, the ScAtt and
model NSIDEs, the sky (source descriptions of :mod:`cosi_imaging_plugin.sky.sources`)
and the backgrounds; :class:`SimulationConfig` checks every key and value and names
the one at fault. The built-in configurations ship as package data
(``cosi_imaging_plugin/data/configs``), the one copy of them.
"""
import copy
import dataclasses
import logging
from importlib import resources
from pathlib import Path

import numpy as np

from .. import validation
from ..errors import CosiInputError
from ..instrument.config import InstrumentConfig
from ..instrument.orbit import OrbitConfig
from ..io.yaml_files import read_yaml
from ..sky.sources import build_sources, expand_presets
from .backgrounds import BACKGROUND_KINDS

logger = logging.getLogger(__name__)

_TOP_KEYS = {"name", "seed", "instrument", "orbit", "scatt_nside", "model_nside", "sky", "backgrounds"}
_OPTIONAL_KEYS = {"response_rtol": 0.0, "galactic": True, "earth_occultation": True,
                  "use_averaged_pointing": False}
_BACKGROUND_KEYS = {"kind", "rate", "norm", "index"}


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
    the source list of :mod:`~cosi_imaging_plugin.sky.sources`;
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
                validation.unknown_key(key, _TOP_KEYS | set(_OPTIONAL_KEYS), where=source)
        for key in sorted(_TOP_KEYS):
            if key not in mapping:
                validation.fail(key, "missing key", source)
        values = {**_OPTIONAL_KEYS, **mapping}

        name = values["name"]
        if not isinstance(name, str) or not name.strip():
            validation.fail("name", f"expected a non-empty string, got {name!r}", source)
        seed = values["seed"]
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            validation.fail("seed", f"expected a non-negative integer, got {seed!r}", source)

        instrument, instrument_file, overrides = _parse_instrument(values["instrument"], source, base_dir)

        orbit_spec = values["orbit"]
        if not isinstance(orbit_spec, dict):
            validation.fail("orbit", f"expected a mapping of OrbitConfig fields, got {orbit_spec!r}", source)
        for key, value in orbit_spec.items():
            if key == "saa":
                validation.flag(value, f"orbit.{key}", source)
            elif key == "saa_longitude_deg":
                if not isinstance(value, (list, tuple)) or len(value) != 2:
                    validation.fail(f"orbit.{key}", f"expected [lo, hi] in degrees, got {value!r}", source)
                for i, v in enumerate(value):
                    validation.number(v, f"orbit.{key}[{i}]", source)
            elif key in OrbitConfig.__dataclass_fields__:
                validation.number(value, f"orbit.{key}", source)
        try:
            orbit = OrbitConfig.from_dict(orbit_spec)
        except CosiInputError as exc:
            raise CosiInputError(f"{source}: key 'orbit': {exc}") from exc

        scatt_nside = validation.power_of_two(values["scatt_nside"], "scatt_nside", source)
        model_nside = validation.power_of_two(values["model_nside"], "model_nside", source)
        rtol = validation.number(values["response_rtol"], "response_rtol", source, low=0.0, high=1.0, high_open=True)
        flags = {key: validation.flag(values[key], key, source)
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
        validation.fail("instrument", f"expected 'default', a path or {{file, overrides}}, got {spec!r}", source)
    for key in spec:
        if key not in ("file", "overrides"):
            validation.unknown_key(key, ("file", "overrides"), "instrument", source)
    file = spec.get("file", "default")
    overrides = spec.get("overrides") or {}
    if not isinstance(file, str):
        validation.fail("instrument.file", f"expected 'default' or a path, got {file!r}", source)
    if not isinstance(overrides, dict):
        validation.fail("instrument.overrides", f"expected a mapping, got {overrides!r}", source)
    if file == "default":
        base = InstrumentConfig.default()
    else:
        path = Path(file)
        if not path.is_absolute():
            path = Path(base_dir or ".") / path
        path = path.resolve()
        if not path.is_file():
            validation.fail("instrument.file", f"instrument file {path} does not exist", source)
        base = InstrumentConfig.read(path)
        file = str(path)
    instrument = base.updated(overrides, source=f"{source}: instrument.overrides") if overrides else base
    return instrument, file, copy.deepcopy(overrides)


def _parse_backgrounds(spec, source):
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        validation.fail("backgrounds", f"expected a mapping of names to {{kind, rate, norm}}, got {spec!r}", source)
    out = {}
    for name, item in spec.items():
        key = f"backgrounds.{name}"
        validation.identifier(name, key, source)
        if not isinstance(item, dict):
            validation.fail(key, f"expected a mapping {{kind, rate, norm, index}}, got {item!r}", source)
        for sub in item:
            if sub not in _BACKGROUND_KEYS:
                validation.unknown_key(sub, _BACKGROUND_KEYS, key, source)
        for sub in ("kind", "rate"):
            if sub not in item:
                validation.fail(f"{key}.{sub}", "missing key", source)
        if item["kind"] not in BACKGROUND_KINDS:
            validation.fail(f"{key}.kind", f"must be one of {list(BACKGROUND_KINDS)}, got {item['kind']!r}", source)
        out[name] = BackgroundSpec(
            kind=item["kind"],
            rate=validation.number(item["rate"], f"{key}.rate", source, low=0.0, low_open=True),
            norm=validation.number(item.get("norm", 1.0), f"{key}.norm", source, low=0.0),
            index=validation.number(item.get("index", -2.0), f"{key}.index", source),
        )
    return out


def coerce_config(config):
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
