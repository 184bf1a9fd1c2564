"""Configuration of the synthetic COSI-like instrument.

Every physical number of the synthetic response (INSTRUMENT.md) is a parameter
here, together with the binning of the response. A configuration is read from
YAML, validated completely before any work (unknown keys, missing keys and
impossible values raise :class:`~cosi_imaging_plugin.errors.CosiInputError`
naming the key), and then evaluates the curves it defines: effective area,
energy resolution, ARM profile, absorption efficiency and energy dispersion.

The default instrument ships as package data (``data/instrument/cosi_like.yaml``)
and is loaded by :meth:`InstrumentConfig.default`.
"""
import copy
import dataclasses
import logging
import math
from importlib import resources
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import brentq
from scipy.special import ndtr

from ..errors import CosiInputError
from ..io.yaml_files import read_yaml
from . import kinematics

log = logging.getLogger(__name__)

#: FWHM of a unit normal distribution, 2 sqrt(2 ln 2).
GAUSS_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))

# Gauss-Legendre nodes for averages over an Ei bin; the integrands (power laws,
# error functions a few FWHM wide) are smooth on the bin, so 16 nodes are plenty.
_N_ENERGY_NODES = 16


# ----------------------------------------------------------------------------
# Validation helpers: every one names the key at fault.
# ----------------------------------------------------------------------------
def _fail(source, key, message):
    raise CosiInputError(f"{source}: key '{key}': {message}")


def _number(value, key, source, *, low=None, high=None, low_open=False, high_open=False, integer=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        hint = ""
        if isinstance(value, str):
            try:
                float(value)
                hint = " (YAML reads exponents without a decimal point, like 1e-3, as text: write 1.0e-3)"
            except ValueError:
                pass
        _fail(source, key, f"expected a number, got {value!r}{hint}")
    if integer:
        if isinstance(value, (float, np.floating)) and not float(value).is_integer():
            _fail(source, key, f"expected an integer, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    if not math.isfinite(value):
        _fail(source, key, f"must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        _fail(source, key, f"must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        _fail(source, key, f"must be {'<' if high_open else '<='} {high}, got {value!r}")
    return value


def _number_list(value, key, source, *, min_len=1, low=None, low_open=False, high=None, increasing=False):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        _fail(source, key, f"expected a list of numbers, got {value!r}")
    if len(value) < min_len:
        _fail(source, key, f"needs at least {min_len} values, got {len(value)}")
    out = tuple(
        _number(v, f"{key}[{i}]", source, low=low, low_open=low_open, high=high) for i, v in enumerate(value)
    )
    if increasing and np.any(np.diff(out) <= 0):
        _fail(source, key, f"values must be strictly increasing, got {list(out)}")
    return out


def _edges(value, key, source, *, low=0.0, low_open=False, high=None, default_scale="linear"):
    """Bin edges from a list, or from a mapping {start, stop, bins[, scale]}."""
    if isinstance(value, dict):
        unknown = set(value) - {"start", "stop", "bins", "scale"}
        if unknown:
            _fail(source, f"{key}.{sorted(unknown)[0]}", "unknown key (expected start, stop, bins, scale)")
        for sub in ("start", "stop", "bins"):
            if sub not in value:
                _fail(source, f"{key}.{sub}", "missing key")
        start = _number(value["start"], f"{key}.start", source, low=low, low_open=low_open, high=high)
        stop = _number(value["stop"], f"{key}.stop", source, low=low, low_open=low_open, high=high)
        bins = _number(value["bins"], f"{key}.bins", source, low=1, integer=True)
        scale = value.get("scale", default_scale)
        if scale not in ("linear", "log"):
            _fail(source, f"{key}.scale", f"must be 'linear' or 'log', got {scale!r}")
        if stop <= start:
            _fail(source, key, f"stop ({stop}) must exceed start ({start})")
        if scale == "log":
            if start <= 0:
                _fail(source, f"{key}.start", "log-spaced edges need start > 0")
            edges = np.geomspace(start, stop, bins + 1)
        else:
            edges = np.linspace(start, stop, bins + 1)
        return tuple(float(e) for e in edges)
    return _number_list(value, key, source, min_len=2, low=low, low_open=low_open, high=high, increasing=True)


def _check_keys(mapping, expected, prefix, source, optional=()):
    if not isinstance(mapping, dict):
        _fail(source, prefix or "<top level>", f"expected a mapping, got {type(mapping).__name__}")
    dotted = (lambda k: f"{prefix}.{k}") if prefix else (lambda k: str(k))
    for k in mapping:
        if k not in expected and k not in optional:
            _fail(source, dotted(k), f"unknown key (expected one of {sorted(expected)})")
    for k in expected:
        if k not in mapping:
            _fail(source, dotted(k), "missing key")


# ----------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EffectiveAreaConfig:
    """On-axis effective area table and off-axis falloff.

    Attributes
    ----------
    energy_kev, on_axis_cm2 : tuple of float
        On-axis effective area (after event selection) tabulated against energy,
        interpolated as a power law between nodes (linear in log-log).
    off_axis_index : float
        gamma in A(theta) = A_on [(1 + cos theta) / 2]^gamma.
    max_off_axis_deg : float
        Horizon: no response for sources further than this from the +z axis.
    """

    energy_kev: tuple
    on_axis_cm2: tuple
    off_axis_index: float
    max_off_axis_deg: float

    @classmethod
    def _parse(cls, d, source, p="effective_area"):
        _check_keys(d, [f.name for f in dataclasses.fields(cls)], p, source)
        energy = _number_list(d["energy_kev"], f"{p}.energy_kev", source, min_len=2, low=0, low_open=True,
                              increasing=True)
        area = _number_list(d["on_axis_cm2"], f"{p}.on_axis_cm2", source, min_len=2, low=0, low_open=True)
        if len(area) != len(energy):
            _fail(source, f"{p}.on_axis_cm2", f"has {len(area)} values but energy_kev has {len(energy)}")
        return cls(
            energy_kev=energy,
            on_axis_cm2=area,
            off_axis_index=_number(d["off_axis_index"], f"{p}.off_axis_index", source, low=0),
            max_off_axis_deg=_number(d["max_off_axis_deg"], f"{p}.max_off_axis_deg", source, low=0,
                                     low_open=True, high=180),
        )


@dataclasses.dataclass(frozen=True)
class EnergyDispersionConfig:
    """Energy resolution, photopeak fraction and continuum.

    Attributes
    ----------
    fwhm_a_kev, fwhm_b_kev : float
        FWHM(E) = sqrt(a^2 + b E) in keV (b in keV, E in keV).
    photopeak_energy_kev, photopeak_fraction : tuple of float
        Fraction of the events that deposit the full energy, linear in log E
        between nodes and constant beyond the table.
    continuum_min_fraction : float
        The other events have a measured energy uniform in [c E, E].
    """

    fwhm_a_kev: float
    fwhm_b_kev: float
    photopeak_energy_kev: tuple
    photopeak_fraction: tuple
    continuum_min_fraction: float

    @classmethod
    def _parse(cls, d, source, p="energy_dispersion"):
        _check_keys(d, [f.name for f in dataclasses.fields(cls)], p, source)
        a = _number(d["fwhm_a_kev"], f"{p}.fwhm_a_kev", source, low=0)
        b = _number(d["fwhm_b_kev"], f"{p}.fwhm_b_kev", source, low=0)
        if a == 0 and b == 0:
            _fail(source, f"{p}.fwhm_a_kev", "fwhm_a_kev and fwhm_b_kev are both zero: the FWHM would be zero")
        energy = _number_list(d["photopeak_energy_kev"], f"{p}.photopeak_energy_kev", source, low=0,
                              low_open=True, increasing=True)
        frac = _number_list(d["photopeak_fraction"], f"{p}.photopeak_fraction", source, low=0, high=1)
        if len(frac) != len(energy):
            _fail(source, f"{p}.photopeak_fraction",
                  f"has {len(frac)} values but photopeak_energy_kev has {len(energy)}")
        return cls(
            fwhm_a_kev=a,
            fwhm_b_kev=b,
            photopeak_energy_kev=energy,
            photopeak_fraction=frac,
            continuum_min_fraction=_number(d["continuum_min_fraction"], f"{p}.continuum_min_fraction", source,
                                           low=0, high=1, high_open=True),
        )


@dataclasses.dataclass(frozen=True)
class ARMConfig:
    """Angular resolution measure: a Gaussian core plus a wider Gaussian tail.

    Attributes
    ----------
    fwhm_deg : float
        FWHM of the whole ARM profile (core + tail) at ``reference_energy_kev``.
    reference_energy_kev : float
        Energy where the FWHM is ``fwhm_deg``.
    energy_index : float
        FWHM(E) = fwhm_deg (E / reference_energy_kev)^energy_index.
    tail_fraction : float
        Fraction of the events in the tail component.
    tail_width_factor : float
        sigma_tail / sigma_core.
    """

    fwhm_deg: float
    reference_energy_kev: float
    energy_index: float
    tail_fraction: float
    tail_width_factor: float

    @classmethod
    def _parse(cls, d, source, p="arm"):
        _check_keys(d, [f.name for f in dataclasses.fields(cls)], p, source)
        tail_fraction = _number(d["tail_fraction"], f"{p}.tail_fraction", source, low=0, high=1, high_open=True)
        width = _number(d["tail_width_factor"], f"{p}.tail_width_factor", source, low=1)
        return cls(
            fwhm_deg=_number(d["fwhm_deg"], f"{p}.fwhm_deg", source, low=0, low_open=True, high=180),
            reference_energy_kev=_number(d["reference_energy_kev"], f"{p}.reference_energy_kev", source, low=0,
                                         low_open=True),
            energy_index=_number(d["energy_index"], f"{p}.energy_index", source),
            tail_fraction=tail_fraction,
            tail_width_factor=width,
        )


@dataclasses.dataclass(frozen=True)
class AbsorptionConfig:
    """Chance that the scattered photon is absorbed: 1 - exp(-mu(E2) L(escape direction)).

    Attributes
    ----------
    attenuation_per_cm : float
        Attenuation coefficient mu of the detector material at ``reference_energy_kev``.
    reference_energy_kev : float
        Energy of ``attenuation_per_cm``.
    energy_index : float
        mu(E2) = attenuation_per_cm (E2 / reference_energy_kev)^(-energy_index).
    path_down_cm, path_up_cm : float
        Mean path length through the detector for a photon escaping straight down
        (-z, into the stack) and straight up (+z); linear in the downward direction
        cosine in between.
    """

    attenuation_per_cm: float
    reference_energy_kev: float
    energy_index: float
    path_down_cm: float
    path_up_cm: float

    @classmethod
    def _parse(cls, d, source, p="absorption"):
        _check_keys(d, [f.name for f in dataclasses.fields(cls)], p, source)
        return cls(
            attenuation_per_cm=_number(d["attenuation_per_cm"], f"{p}.attenuation_per_cm", source, low=0,
                                       low_open=True),
            reference_energy_kev=_number(d["reference_energy_kev"], f"{p}.reference_energy_kev", source, low=0,
                                         low_open=True),
            energy_index=_number(d["energy_index"], f"{p}.energy_index", source, low=0),
            path_down_cm=_number(d["path_down_cm"], f"{p}.path_down_cm", source, low=0, low_open=True),
            path_up_cm=_number(d["path_up_cm"], f"{p}.path_up_cm", source, low=0, low_open=True),
        )


@dataclasses.dataclass(frozen=True)
class BinningConfig:
    """Binning of the response.

    Attributes
    ----------
    nside : int
        HEALPix NSIDE of both NuLambda and PsiChi (a power of two).
    scheme : str
        HEALPix scheme, ``'ring'`` or ``'nested'``.
    phi_edges_deg, ei_edges_kev, em_edges_kev : tuple of float
        Edges of the Compton-angle, initial-energy and measured-energy axes.
    """

    nside: int
    scheme: str
    phi_edges_deg: tuple
    ei_edges_kev: tuple
    em_edges_kev: tuple

    @classmethod
    def _parse(cls, d, source, p="binning"):
        _check_keys(d, [f.name for f in dataclasses.fields(cls)], p, source)
        nside = _number(d["nside"], f"{p}.nside", source, low=1, integer=True)
        if nside & (nside - 1):
            _fail(source, f"{p}.nside", f"must be a power of two, got {nside}")
        scheme = d["scheme"]
        if not isinstance(scheme, str) or scheme.lower() not in ("ring", "nested"):
            _fail(source, f"{p}.scheme", f"must be 'ring' or 'nested', got {scheme!r}")
        return cls(
            nside=nside,
            scheme=scheme.lower(),
            phi_edges_deg=_edges(d["phi_edges_deg"], f"{p}.phi_edges_deg", source, low=0, high=180),
            ei_edges_kev=_edges(d["ei_edges_kev"], f"{p}.ei_edges_kev", source, low=0, low_open=True),
            em_edges_kev=_edges(d["em_edges_kev"], f"{p}.em_edges_kev", source, low=0, low_open=True),
        )


_SECTIONS = {
    "effective_area": EffectiveAreaConfig,
    "energy_dispersion": EnergyDispersionConfig,
    "arm": ARMConfig,
    "absorption": AbsorptionConfig,
    "binning": BinningConfig,
}


@dataclasses.dataclass(frozen=True)
class InstrumentConfig:
    """A complete, validated description of the synthetic COSI-like instrument.

    Build it with :meth:`read`, :meth:`from_dict` or :meth:`default`; derive
    variants with :meth:`updated`. The methods evaluate the curves the
    parameters define (all energies in keV, angles in radians unless the name
    says deg).

    Attributes
    ----------
    name : str
        Free-text name.
    electron_threshold_kev : float
        Events whose recoil electron has less energy than this are not detected.
    effective_area : EffectiveAreaConfig
    energy_dispersion : EnergyDispersionConfig
    arm : ARMConfig
    absorption : AbsorptionConfig
    binning : BinningConfig
    """

    name: str
    electron_threshold_kev: float
    effective_area: EffectiveAreaConfig
    energy_dispersion: EnergyDispersionConfig
    arm: ARMConfig
    absorption: AbsorptionConfig
    binning: BinningConfig

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, mapping, source="instrument config"):
        """Validate a nested mapping (as read from YAML) and build the configuration.

        Parameters
        ----------
        mapping : dict
            Sections ``effective_area``, ``energy_dispersion``, ``arm``,
            ``absorption``, ``binning`` and the keys ``name`` and
            ``electron_threshold_kev``; every key is required.
        source : str
            Name used in error messages (a file name, say).

        Returns
        -------
        InstrumentConfig

        Raises
        ------
        CosiInputError
            Naming the key at fault: unknown or missing keys, values of the
            wrong type or out of range, edges out of order, NSIDE not a power
            of two, or a binning that the instrument cannot fill.
        """
        _check_keys(mapping, ["name", "electron_threshold_kev", *_SECTIONS], "", source)
        name = mapping["name"]
        if not isinstance(name, str):
            _fail(source, "name", f"expected a string, got {name!r}")
        sections = {key: section._parse(mapping[key], source) for key, section in _SECTIONS.items()}
        config = cls(
            name=name,
            electron_threshold_kev=_number(mapping["electron_threshold_kev"], "electron_threshold_kev", source,
                                           low=0),
            **sections,
        )
        config._check_consistency(source)
        return config

    @classmethod
    def read(cls, path):
        """Read and validate a YAML instrument file.

        Parameters
        ----------
        path : str or pathlib.Path

        Returns
        -------
        InstrumentConfig

        Raises
        ------
        CosiFileError
            If the file is missing or not valid YAML.
        CosiInputError
            If a key is unknown, missing or has an impossible value (the message
            names the file and the key).
        """
        path = Path(path)
        mapping = read_yaml(path, "instrument configuration")
        config = cls.from_dict(mapping, source=str(path))
        log.debug("read instrument configuration '%s' from %s", config.name, path)
        return config

    @classmethod
    def default(cls):
        """The built-in COSI-like instrument (package data ``data/instrument/cosi_like.yaml``).

        Returns
        -------
        InstrumentConfig
        """
        resource = resources.files("cosi_imaging_plugin").joinpath("data/instrument/cosi_like.yaml")
        with resources.as_file(resource) as path:
            return cls.read(path)

    def to_dict(self):
        """The configuration as a nested dict of plain Python values (YAML-ready).

        Returns
        -------
        dict
            ``InstrumentConfig.from_dict(config.to_dict()) == config``.
        """

        def plain(value):
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            return value

        out = {"name": self.name, "electron_threshold_kev": self.electron_threshold_kev}
        for key in _SECTIONS:
            section = getattr(self, key)
            out[key] = {f.name: plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
        return out

    def updated(self, overrides, source="instrument config overrides"):
        """A new, re-validated configuration with some keys replaced.

        Parameters
        ----------
        overrides : dict
            Nested mapping of the keys to change, e.g.
            ``{"binning": {"nside": 4}, "arm": {"tail_fraction": 0.0}}``.
        source : str
            Name used in error messages.

        Returns
        -------
        InstrumentConfig
        """
        merged = self.to_dict()

        def merge(target, new, prefix):
            if not isinstance(new, dict):
                _fail(source, prefix or "<top level>", f"expected a mapping, got {new!r}")
            for key, value in new.items():
                dotted = f"{prefix}.{key}" if prefix else str(key)
                if key not in target:
                    _fail(source, dotted, "unknown key")
                if isinstance(target[key], dict) and key in _SECTIONS and prefix == "":
                    merge(target[key], value, dotted)
                else:
                    target[key] = copy.deepcopy(value)

        merge(merged, overrides, "")
        return type(self).from_dict(merged, source=source)

    def write(self, path):
        """Write the configuration as YAML (readable by :meth:`read`).

        Parameters
        ----------
        path : str or pathlib.Path
        """
        from .._atomic import atomic_path

        with atomic_path(path) as tmp:
            Path(tmp).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    # ------------------------------------------------------------ binning
    @property
    def phi_edges(self):
        """numpy.ndarray: Phi edges in radians."""
        return np.radians(self.binning.phi_edges_deg)

    @property
    def ei_edges(self):
        """numpy.ndarray: Ei edges in keV."""
        return np.asarray(self.binning.ei_edges_kev)

    @property
    def em_edges(self):
        """numpy.ndarray: Em edges in keV."""
        return np.asarray(self.binning.em_edges_kev)

    @property
    def nside(self):
        """int: HEALPix NSIDE of NuLambda and PsiChi."""
        return self.binning.nside

    # -------------------------------------------------------------- curves
    def on_axis_area(self, energy):
        """On-axis effective area in cm2, power-law interpolation of the table.

        Parameters
        ----------
        energy : array_like
            Energy in keV, inside the table's range.

        Returns
        -------
        numpy.ndarray

        Raises
        ------
        CosiInputError
            If an energy lies outside ``effective_area.energy_kev``.
        """
        energy = np.asarray(energy, dtype=float)
        table_e = np.asarray(self.effective_area.energy_kev)
        if np.any((energy < table_e[0]) | (energy > table_e[-1])) or np.any(np.isnan(energy)):
            raise CosiInputError(
                f"energy outside the effective-area table 'effective_area.energy_kev' "
                f"[{table_e[0]}, {table_e[-1]}] keV"
            )
        log_area = np.interp(np.log(energy), np.log(table_e), np.log(self.effective_area.on_axis_cm2))
        return np.exp(log_area)

    def mean_on_axis_area(self, lo, hi):
        """On-axis effective area averaged (flat in energy) over [lo, hi], exactly.

        The table is a power law between nodes, so each piece integrates in
        closed form.

        Parameters
        ----------
        lo, hi : float
            Bin limits in keV, inside the table, lo < hi.

        Returns
        -------
        float
            (1 / (hi - lo)) integral of A_on(E) dE, in cm2.
        """
        table_e = np.asarray(self.effective_area.energy_kev)
        self.on_axis_area([lo, hi])  # range check
        nodes = np.concatenate([[lo], table_e[(table_e > lo) & (table_e < hi)], [hi]])
        total = 0.0
        for a, b in zip(nodes[:-1], nodes[1:]):
            area_a, area_b = self.on_axis_area([a, b])
            slope = math.log(area_b / area_a) / math.log(b / a)
            if abs(slope + 1.0) < 1e-12:
                total += area_a * a * math.log(b / a)
            else:
                total += area_a * a / (slope + 1.0) * ((b / a) ** (slope + 1.0) - 1.0)
        return total / (hi - lo)

    def off_axis_factor(self, theta):
        """Off-axis falloff [(1 + cos theta) / 2]^gamma, zero beyond the horizon.

        Parameters
        ----------
        theta : array_like
            Angle from the spacecraft +z axis in radians.

        Returns
        -------
        numpy.ndarray
        """
        theta = np.asarray(theta, dtype=float)
        factor = (0.5 * (1.0 + np.cos(theta))) ** self.effective_area.off_axis_index
        return np.where(theta <= math.radians(self.effective_area.max_off_axis_deg), factor, 0.0)

    def energy_fwhm(self, energy):
        """Energy resolution FWHM(E) = sqrt(a^2 + b E) in keV.

        Parameters
        ----------
        energy : array_like
            keV.

        Returns
        -------
        numpy.ndarray
        """
        ed = self.energy_dispersion
        return np.sqrt(ed.fwhm_a_kev**2 + ed.fwhm_b_kev * np.asarray(energy, dtype=float))

    def photopeak_fraction(self, energy):
        """Fraction of the events depositing the full energy, linear in log E.

        Parameters
        ----------
        energy : array_like
            keV.

        Returns
        -------
        numpy.ndarray
        """
        ed = self.energy_dispersion
        return np.interp(np.log(np.asarray(energy, dtype=float)), np.log(ed.photopeak_energy_kev),
                         ed.photopeak_fraction)

    def arm_fwhm(self, energy):
        """FWHM of the whole ARM profile in radians at ``energy`` keV.

        Parameters
        ----------
        energy : array_like
            keV.

        Returns
        -------
        numpy.ndarray
        """
        arm = self.arm
        ratio = np.asarray(energy, dtype=float) / arm.reference_energy_kev
        return np.radians(arm.fwhm_deg) * ratio**arm.energy_index

    def arm_sigmas(self, energy):
        """Standard deviations of the ARM core and tail Gaussians in radians.

        The core width is chosen so that the FWHM of the mixture
        (1 - f) N(0, s) + f N(0, k s) equals :meth:`arm_fwhm`.

        Parameters
        ----------
        energy : array_like
            keV.

        Returns
        -------
        sigma_core, sigma_tail : numpy.ndarray
        """
        fwhm_over_sigma = _mixture_fwhm_over_core_sigma(self.arm.tail_fraction, self.arm.tail_width_factor)
        core = self.arm_fwhm(energy) / fwhm_over_sigma
        return core, core * self.arm.tail_width_factor

    def attenuation(self, energy):
        """Attenuation coefficient of the detector for the scattered photon, in cm-1.

        Parameters
        ----------
        energy : array_like
            Scattered-photon energy E2 in keV.

        Returns
        -------
        numpy.ndarray
        """
        ab = self.absorption
        return ab.attenuation_per_cm * (np.asarray(energy, dtype=float) / ab.reference_energy_kev) ** (
            -ab.energy_index
        )

    def path_length(self, down_cosine):
        """Mean path through the detector for a scattered photon, in cm.

        Parameters
        ----------
        down_cosine : array_like
            Cosine between the escape direction and -z (1: straight down into
            the stack, 0: horizontal, -1: straight up).

        Returns
        -------
        numpy.ndarray
        """
        ab = self.absorption
        t = 0.5 * (1.0 + np.asarray(down_cosine, dtype=float))
        return ab.path_up_cm + (ab.path_down_cm - ab.path_up_cm) * t

    def absorption_efficiency(self, scattered_energy, down_cosine):
        """Chance that the scattered photon is absorbed, 1 - exp(-mu(E2) L(direction)).

        Parameters
        ----------
        scattered_energy : array_like
            E2 in keV.
        down_cosine : array_like
            See :meth:`path_length`. Broadcasts against ``scattered_energy``.

        Returns
        -------
        numpy.ndarray
        """
        return -np.expm1(-self.attenuation(scattered_energy) * self.path_length(down_cosine))

    def minimum_compton_angle(self, energy):
        """Smallest scatter angle whose electron passes the threshold, in radians.

        Parameters
        ----------
        energy : array_like
            Incident energy in keV.

        Returns
        -------
        numpy.ndarray
            NaN where no angle gives the electron enough energy.
        """
        return kinematics.compton_angle(energy, self.electron_threshold_kev)

    def energy_dispersion_matrix(self):
        """P(Em bin | Ei bin) for the configured binning, each row summing to 1.

        For E inside an Ei bin (averaged with weight A_on(E), Gauss-Legendre on
        the smooth pieces between table nodes and continuum edges),
        a photopeak fraction f(E) is spread as a Gaussian of FWHM(E) around E
        and the rest uniformly over [c E, E]. Each row is then normalised over
        the Em bins: the configured effective area is the area of the events
        selected by the Em binning.

        Returns
        -------
        numpy.ndarray
            Shape (n_Ei, n_Em).
        """
        return self._dispersion(normalise=True)

    # ------------------------------------------------------------ internal
    def _dispersion(self, normalise):
        ei, em = self.ei_edges, self.em_edges
        x, wq = np.polynomial.legendre.leggauss(_N_ENERGY_NODES)
        out = np.empty((ei.size - 1, em.size - 1))
        c = self.energy_dispersion.continuum_min_fraction
        # The tables have kinks at their nodes and the continuum at c E = Em edges:
        # integrate piece by piece between them so every piece is smooth.
        kinks = np.concatenate([self.effective_area.energy_kev, self.energy_dispersion.photopeak_energy_kev,
                                em, em / c if c > 0 else []])
        for i, (lo, hi) in enumerate(zip(ei[:-1], ei[1:])):
            pieces = np.unique(np.concatenate([[lo, hi], kinks[(kinks > lo) & (kinks < hi)]]))
            half = 0.5 * np.diff(pieces)[:, None]
            energy = (half * x[None, :] + 0.5 * (pieces[1:] + pieces[:-1])[:, None]).ravel()
            weight = (half * wq[None, :]).ravel() * self.on_axis_area(energy)
            sigma = self.energy_fwhm(energy)[:, None] / GAUSS_FWHM
            peak = ndtr((em[None, 1:] - energy[:, None]) / sigma) - ndtr((em[None, :-1] - energy[:, None]) / sigma)
            c_lo = c * energy[:, None]
            overlap = np.clip(np.minimum(em[None, 1:], energy[:, None]) - np.maximum(em[None, :-1], c_lo), 0, None)
            cont = overlap / (energy[:, None] - c_lo)
            frac = self.photopeak_fraction(energy)[:, None]
            out[i] = weight @ (frac * peak + (1.0 - frac) * cont) / weight.sum()
        if normalise:
            out /= out.sum(axis=1, keepdims=True)
        return out

    def _check_consistency(self, source):
        """Cross-key checks: the binning must be one this instrument can fill."""
        table = self.effective_area.energy_kev
        ei = self.ei_edges
        if ei[0] < table[0] or ei[-1] > table[-1]:
            _fail(source, "binning.ei_edges_kev",
                  f"edges [{ei[0]}, {ei[-1]}] keV reach outside the effective-area table "
                  f"'effective_area.energy_kev' [{table[0]}, {table[-1]}] keV")
        phi_hi = self.phi_edges[-1]
        for lo, hi in zip(ei[:-1], ei[1:]):
            # The bin's kinematics are evaluated at its log-centre energy.
            phi_min = self.minimum_compton_angle(math.sqrt(lo * hi))
            if not np.isfinite(phi_min) or phi_min >= phi_hi:
                _fail(source, "binning.phi_edges_deg",
                      f"no Phi bin lies above the smallest Compton angle that passes "
                      f"'electron_threshold_kev' ({self.electron_threshold_kev} keV) for the Ei bin "
                      f"[{lo}, {hi}] keV")
        reach = self._dispersion(normalise=False).sum(axis=1)
        for i in np.flatnonzero(reach < 1e-6):
            _fail(source, "binning.em_edges_kev",
                  f"the Em bins catch a fraction {reach[i]:.2g} < 1e-6 of the events of the Ei bin "
                  f"[{ei[i]}, {ei[i + 1]}] keV")


def _mixture_fwhm_over_core_sigma(tail_fraction, width_factor):
    """FWHM / sigma_core of (1 - f) N(0, 1) + f N(0, k): the mixture is scale-free."""
    if tail_fraction == 0.0 or width_factor == 1.0:
        return GAUSS_FWHM
    f, k = tail_fraction, width_factor

    def density(x):
        return (1.0 - f) * np.exp(-0.5 * x * x) + (f / k) * np.exp(-0.5 * (x / k) ** 2)

    half = 0.5 * density(0.0)
    # The density falls monotonically for x > 0 and is below half at x = k * GAUSS_FWHM.
    return 2.0 * brentq(lambda x: density(x) - half, 0.0, k * GAUSS_FWHM, xtol=1e-14, rtol=1e-14)
