"""Configuration of the synthetic COSI-like instrument.

Every physical number of the synthetic response (``docs/instrument.md``) is a
parameter here, together with the binning of the response. This module holds
the configuration sections (:class:`EffectiveAreaConfig`,
:class:`EnergyDispersionConfig`, :class:`ARMConfig`, :class:`AbsorptionConfig`,
:class:`BinningConfig`) and :class:`InstrumentConfig`, which gathers them and is
read from YAML, validated completely before any work (unknown keys, missing
keys and impossible values raise
:class:`~cosi_imaging_plugin.errors.InvalidValueError` naming the key), derived
and written back. The curves the parameters define (effective area, energy
resolution, ARM profile, absorption efficiency, energy dispersion) are
evaluated by the methods ``InstrumentConfig`` inherits from
:class:`~cosi_imaging_plugin.instrument.response_curves.ResponseCurves`.

The default instrument ships as package data (``data/instrument/cosi_like.yaml``)
and is loaded by :meth:`InstrumentConfig.default`.
"""
import copy
import dataclasses
import itertools
import logging
import math
from importlib import resources
from pathlib import Path

import numpy as np

from ..io.yaml_files import read_yaml, write_yaml
from ..validation import check_keys, fail, number, number_list, unknown_key
from .response_curves import ResponseCurves

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------
# Validation helpers specific to the instrument file
# ----------------------------------------------------------------------------
def _check_section_keys(section, d, prefix, source):
    """Every field of the dataclass `section` is a required key of the mapping `d`."""
    check_keys(d, prefix, source, known=(), required=[f.name for f in dataclasses.fields(section)])


def _edges(value, key, source, *, low=0.0, low_open=False, high=None, default_scale="linear"):
    """Bin edges from a list, or from a mapping {start, stop, bins[, scale]}, as a tuple of float."""
    if not isinstance(value, dict):
        return number_list(value, key, source, min_len=2, low=low, low_open=low_open, high=high, increasing=True)
    check_keys(value, key, source, known=("scale",), required=("start", "stop", "bins"))
    start = number(value["start"], f"{key}.start", source, low=low, low_open=low_open, high=high)
    stop = number(value["stop"], f"{key}.stop", source, low=low, low_open=low_open, high=high)
    bins = number(value["bins"], f"{key}.bins", source, low=1, integer=True)
    scale = value.get("scale", default_scale)
    if scale not in ("linear", "log"):
        fail(f"{key}.scale", f"must be 'linear' or 'log', got {scale!r}", source)
    if stop <= start:
        fail(key, f"stop ({stop}) must exceed start ({start})", source)
    if scale == "log":
        if start <= 0:
            fail(f"{key}.start", "log-spaced edges need start > 0", source)
        edges = np.geomspace(start, stop, bins + 1)
    else:
        edges = np.linspace(start, stop, bins + 1)
    return tuple(float(e) for e in edges)


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
        _check_section_keys(cls, d, p, source)
        energy = number_list(d["energy_kev"], f"{p}.energy_kev", source, min_len=2, low=0, low_open=True,
                             increasing=True)
        area = number_list(d["on_axis_cm2"], f"{p}.on_axis_cm2", source, min_len=2, low=0, low_open=True)
        if len(area) != len(energy):
            fail(f"{p}.on_axis_cm2", f"has {len(area)} values but energy_kev has {len(energy)}", source)
        return cls(
            energy_kev=energy,
            on_axis_cm2=area,
            off_axis_index=number(d["off_axis_index"], f"{p}.off_axis_index", source, low=0),
            max_off_axis_deg=number(d["max_off_axis_deg"], f"{p}.max_off_axis_deg", source, low=0,
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
        _check_section_keys(cls, d, p, source)
        a = number(d["fwhm_a_kev"], f"{p}.fwhm_a_kev", source, low=0)
        b = number(d["fwhm_b_kev"], f"{p}.fwhm_b_kev", source, low=0)
        if a == 0 and b == 0:
            fail(f"{p}.fwhm_a_kev", "fwhm_a_kev and fwhm_b_kev are both zero: the FWHM would be zero", source)
        energy = number_list(d["photopeak_energy_kev"], f"{p}.photopeak_energy_kev", source, low=0,
                             low_open=True, increasing=True)
        frac = number_list(d["photopeak_fraction"], f"{p}.photopeak_fraction", source, low=0, high=1)
        if len(frac) != len(energy):
            fail(f"{p}.photopeak_fraction",
                 f"has {len(frac)} values but photopeak_energy_kev has {len(energy)}", source)
        return cls(
            fwhm_a_kev=a,
            fwhm_b_kev=b,
            photopeak_energy_kev=energy,
            photopeak_fraction=frac,
            continuum_min_fraction=number(d["continuum_min_fraction"], f"{p}.continuum_min_fraction", source,
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
        _check_section_keys(cls, d, p, source)
        tail_fraction = number(d["tail_fraction"], f"{p}.tail_fraction", source, low=0, high=1, high_open=True)
        width = number(d["tail_width_factor"], f"{p}.tail_width_factor", source, low=1)
        return cls(
            fwhm_deg=number(d["fwhm_deg"], f"{p}.fwhm_deg", source, low=0, low_open=True, high=180),
            reference_energy_kev=number(d["reference_energy_kev"], f"{p}.reference_energy_kev", source, low=0,
                                        low_open=True),
            energy_index=number(d["energy_index"], f"{p}.energy_index", source),
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
        _check_section_keys(cls, d, p, source)
        return cls(
            attenuation_per_cm=number(d["attenuation_per_cm"], f"{p}.attenuation_per_cm", source, low=0,
                                      low_open=True),
            reference_energy_kev=number(d["reference_energy_kev"], f"{p}.reference_energy_kev", source, low=0,
                                        low_open=True),
            energy_index=number(d["energy_index"], f"{p}.energy_index", source, low=0),
            path_down_cm=number(d["path_down_cm"], f"{p}.path_down_cm", source, low=0, low_open=True),
            path_up_cm=number(d["path_up_cm"], f"{p}.path_up_cm", source, low=0, low_open=True),
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
        _check_section_keys(cls, d, p, source)
        nside = number(d["nside"], f"{p}.nside", source, low=1, integer=True)
        if nside & (nside - 1):
            fail(f"{p}.nside", f"must be a power of two, got {nside}", source)
        scheme = d["scheme"]
        if not isinstance(scheme, str) or scheme.lower() not in ("ring", "nested"):
            fail(f"{p}.scheme", f"must be 'ring' or 'nested', got {scheme!r}", source)
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
class InstrumentConfig(ResponseCurves):
    """A complete, validated description of the synthetic COSI-like instrument.

    Build it with :meth:`read`, :meth:`from_dict` or :meth:`default`; derive
    variants with :meth:`updated`. The methods inherited from
    :class:`~cosi_imaging_plugin.instrument.response_curves.ResponseCurves`
    evaluate the curves the parameters define (all energies in keV, angles in
    radians unless the name says deg).

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
        InvalidValueError
            (a :class:`~cosi_imaging_plugin.errors.CosiInputError`)
            Naming the key at fault: unknown or missing keys, values of the
            wrong type or out of range, edges out of order, NSIDE not a power
            of two, or a binning that the instrument cannot fill.
        """
        check_keys(mapping, "", source, known=(), required=["name", "electron_threshold_kev", *_SECTIONS])
        name = mapping["name"]
        if not isinstance(name, str):
            fail("name", f"expected a string, got {name!r}", source)
        sections = {key: section._parse(mapping[key], source) for key, section in _SECTIONS.items()}
        config = cls(
            name=name,
            electron_threshold_kev=number(mapping["electron_threshold_kev"], "electron_threshold_kev", source,
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
        InvalidValueError
            (a :class:`~cosi_imaging_plugin.errors.CosiInputError`)
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
                fail(prefix or "<top level>", f"expected a mapping, got {new!r}", source)
            for key, value in new.items():
                dotted = f"{prefix}.{key}" if prefix else str(key)
                if key not in target:
                    unknown_key(key, target, prefix, source)
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
        write_yaml(self.to_dict(), path)

    def _check_consistency(self, source):
        """Cross-key checks: the binning must be one this instrument can fill."""
        table = self.effective_area.energy_kev
        ei = self.ei_edges
        if ei[0] < table[0] or ei[-1] > table[-1]:
            fail("binning.ei_edges_kev",
                 f"edges [{ei[0]}, {ei[-1]}] keV reach outside the effective-area table "
                 f"'effective_area.energy_kev' [{table[0]}, {table[-1]}] keV", source)
        phi_hi = self.phi_edges[-1]
        for lo, hi in itertools.pairwise(ei):
            # The bin's kinematics are evaluated at its log-centre energy.
            phi_min = self.minimum_compton_angle(math.sqrt(lo * hi))
            if not np.isfinite(phi_min) or phi_min >= phi_hi:
                fail("binning.phi_edges_deg",
                     f"no Phi bin lies above the smallest Compton angle that passes "
                     f"'electron_threshold_kev' ({self.electron_threshold_kev} keV) for the Ei bin "
                     f"[{lo}, {hi}] keV", source)
        reach = self._dispersion(normalise=False).sum(axis=1)
        for i in np.flatnonzero(reach < 1e-6):
            fail("binning.em_edges_kev",
                 f"the Em bins catch a fraction {reach[i]:.2g} < 1e-6 of the events of the Ei bin "
                 f"[{ei[i]}, {ei[i + 1]}] keV", source)

