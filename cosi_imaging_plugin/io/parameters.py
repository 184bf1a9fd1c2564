"""Image-deconvolution parameter files and binning configuration files (YAML).

Two parameter-file forms exist:

- the current nested form (cosipy's ``imagedeconvolution_parfile_*.yml``), with sections
  ``model_definition`` and ``deconvolution`` (see ``docs/formats.md``);
- the older flat form of the DC2 tutorials, with ``model_property``,
  ``model_initialization`` and ``deconvolution: {algorithm, parameter_RL: {...}}``.

The older form is converted to the nested one on reading (see
:func:`convert_flat_parameters` for the mapping), so the rest of the package sees one form.
"""
import copy
import logging
from pathlib import Path

from .. import validation
from ..binning import IMAGE_UNIT_TEXT
from ..errors import CosiInputError
from .yaml_files import parse_yaml, read_yaml, write_yaml

logger = logging.getLogger(__name__)

__all__ = [
    "DeconvolutionParameters",
    "convert_flat_parameters",
    "read_binning_config",
    "ALL_BACKGROUNDS",
]

#: Background name used when an old-form file gives one normalisation range for all backgrounds.
ALL_BACKGROUNDS = "*"

def _split_key(key):
    parts = [p.strip() for p in str(key).split(":")]
    if not parts or any(p == "" for p in parts):
        raise CosiInputError(f"parameter key '{key}' is malformed; use 'section:key:subkey'")
    return parts


def _is_flat(data):
    dec = data.get("deconvolution")
    return "model_property" in data or "model_initialization" in data or (
        isinstance(dec, dict) and any(str(k).startswith("parameter_") for k in dec)
    )


def convert_flat_parameters(flat, where="parameters"):
    """Convert an old flat-form parameter dict to the current nested form.

    Mapping (old -> new)::

        model_property:coordinate            -> model_definition:property:coordinate
        model_property:nside                 -> model_definition:property:nside
        model_property:scheme                -> model_definition:property:scheme
        model_property:energy_edges [keV]    -> model_definition:property:energy_edges:{value, unit: keV}
        (implicit)                           -> model_definition:class = AllSkyImage,
                                                model_definition:property:unit = cm-2 s-1 sr-1
        model_initialization:algorithm       -> model_definition:initialization:algorithm
        model_initialization:parameter_flat:values
                                             -> model_definition:initialization:parameter:{value, unit}
        model_initialization:parameter_<alg> -> model_definition:initialization:parameter (as is)
        deconvolution:algorithm              -> deconvolution:algorithm
        deconvolution:parameter_<alg>:
          iteration                          -> parameter:iteration_max
          acceleration, alpha_max            -> parameter:acceleration:{activate, alpha_max}
          response_weighting, response_weighting_index
                                             -> parameter:response_weighting:{activate, index}
          smoothing, smoothing_FWHM [deg]    -> parameter:smoothing:{activate, FWHM:{value, unit: deg}}
          background_normalization_fitting, background_normalization_range [lo, hi]
                                             -> parameter:background_normalization_optimization:
                                                {activate, range: {ALL_BACKGROUNDS: [lo, hi]}}
                                                (the old form had one factor for all backgrounds)
          save_results_each_iteration        -> parameter:save_results:{activate,
                                                only_final_result: False}
          any other key                      -> parameter:<key> (unchanged)

    Keys absent from the old file stay absent: no defaults are invented.

    Parameters
    ----------
    flat : dict
        Old-form parameters.
    where : str
        Source name for error messages.

    Returns
    -------
    dict
        Nested-form parameters.
    """
    flat = copy.deepcopy(flat)
    if "model_definition" in flat:
        raise CosiInputError(f"{where}: mixes the old form (model_property/parameter_*) with model_definition")
    out = {k: v for k, v in flat.items()
           if k not in ("model_property", "model_initialization", "deconvolution")}

    prop = flat.get("model_property")
    if not isinstance(prop, dict):
        raise CosiInputError(f"{where}: old-form file needs a 'model_property' section")
    new_prop = {k: v for k, v in prop.items() if k != "energy_edges"}
    if "energy_edges" in prop:
        edges = prop["energy_edges"]
        new_prop["energy_edges"] = edges if isinstance(edges, dict) else {"value": list(edges), "unit": "keV"}
    new_prop.setdefault("unit", IMAGE_UNIT_TEXT)
    model = {"class": "AllSkyImage", "property": new_prop}

    init = flat.get("model_initialization")
    if init is not None:
        if not isinstance(init, dict) or "algorithm" not in init:
            raise CosiInputError(f"{where}: 'model_initialization' needs an 'algorithm'")
        algorithm = init["algorithm"]
        params = init.get(f"parameter_{algorithm}", {})
        if algorithm == "flat" and isinstance(params, dict) and "values" in params:
            params = {"value": params["values"], "unit": IMAGE_UNIT_TEXT}
        model["initialization"] = {"algorithm": algorithm, "parameter": params}
    out["model_definition"] = model

    dec = flat.get("deconvolution")
    if not isinstance(dec, dict) or "algorithm" not in dec:
        raise CosiInputError(f"{where}: old-form file needs a 'deconvolution' section with an 'algorithm'")
    algorithm = dec["algorithm"]
    old = dict(dec.get(f"parameter_{algorithm}") or {})
    for key in dec:
        if str(key).startswith("parameter_") and key != f"parameter_{algorithm}":
            logger.warning("%s: ignoring deconvolution:%s (algorithm is %s)", where, key, algorithm)

    new = {}
    if "iteration" in old:
        new["iteration_max"] = old.pop("iteration")

    def group(new_key, pairs):
        sub = {new_name: old.pop(old_name) for old_name, new_name in pairs if old_name in old}
        if sub:
            new[new_key] = sub
        return sub

    group("acceleration", [("acceleration", "activate"), ("alpha_max", "alpha_max")])
    group("response_weighting", [("response_weighting", "activate"), ("response_weighting_index", "index")])
    smoothing = group("smoothing", [("smoothing", "activate"), ("smoothing_FWHM", "FWHM")])
    if "FWHM" in smoothing and not isinstance(smoothing["FWHM"], dict):
        smoothing["FWHM"] = {"value": smoothing["FWHM"], "unit": "deg"}
    bkg = group("background_normalization_optimization",
                [("background_normalization_fitting", "activate"), ("background_normalization_range", "range")])
    if "range" in bkg and not isinstance(bkg["range"], dict):
        bkg["range"] = {ALL_BACKGROUNDS: list(bkg["range"])}
    save = group("save_results", [("save_results_each_iteration", "activate")])
    if save:
        save["only_final_result"] = False
    new.update(old)  # keys without a renaming keep their name
    out["deconvolution"] = {"algorithm": algorithm, "parameter": new}
    return out


class DeconvolutionParameters:
    """Image-deconvolution parameters: a thin wrapper over the nested parameter dict.

    Keys are addressed as ``"section:key:subkey"``, as in cosipy's ``override_parameter``.

    Parameters
    ----------
    data : dict
        Nested-form parameters (use :meth:`from_dict` to accept the old form too).
    source : str, optional
        Where the parameters came from, for messages.
    """

    #: Sections every parameter set must have.
    REQUIRED_SECTIONS = ("model_definition", "deconvolution")

    def __init__(self, data, source="parameters"):
        if not isinstance(data, dict):
            raise CosiInputError(f"{source}: parameters must be a mapping, got {type(data).__name__}")
        for section in self.REQUIRED_SECTIONS:
            if not isinstance(data.get(section), dict):
                raise CosiInputError(f"{source}: missing section '{section}' (found {sorted(map(str, data))})")
        if "algorithm" not in data["deconvolution"]:
            raise CosiInputError(f"{source}: missing key 'deconvolution:algorithm'")
        self._data = data
        self.source = str(source)

    @classmethod
    def from_dict(cls, data, source="parameters"):
        """Build from a dict in either the nested or the old flat form (which is converted).

        Parameters
        ----------
        data : dict
            Parameters; copied, never modified.
        source : str
            Name used in error messages.

        Returns
        -------
        DeconvolutionParameters
        """
        if not isinstance(data, dict):
            raise CosiInputError(f"{source}: parameters must be a mapping, got {type(data).__name__}")
        if _is_flat(data):
            logger.info("%s: converting old flat-form parameters to the nested form", source)
            return cls(convert_flat_parameters(data, source), source)
        return cls(copy.deepcopy(data), source)

    @classmethod
    def read(cls, path):
        """Read a YAML parameter file (nested or old flat form).

        Parameters
        ----------
        path : str or pathlib.Path
            YAML file.

        Returns
        -------
        DeconvolutionParameters

        Raises
        ------
        CosiFileError
            Missing file, invalid YAML, or not a mapping.
        CosiInputError
            Missing sections.
        """
        path = Path(path)
        return cls.from_dict(read_yaml(path, "parameter file", mapping=True), source=str(path))

    def get(self, key, default=None):
        """Value at ``"a:b:c"``, or ``default`` when any part of the path is missing."""
        node = self._data
        for part in _split_key(key):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return copy.deepcopy(node)

    def override(self, *assignments):
        """Override values with ``"section:key:subkey = value"`` strings.

        The value is parsed as YAML (``30`` -> int, ``True`` -> bool, ``[1, 2]`` -> list,
        ``3.0`` and ``1e-4`` -> float, anything else -> str). Missing keys below an existing
        top-level section are created (and logged); an unknown top-level section is an error,
        so a typo never silently adds a section.

        Parameters
        ----------
        *assignments : str
            One or more ``"a:b:c = value"`` strings.

        Raises
        ------
        CosiInputError
            Malformed assignment, unknown top-level section, or a path through a value that
            is not a section.
        """
        for text in assignments:
            if not isinstance(text, str) or "=" not in text:
                raise CosiInputError(f"override '{text}' must look like 'section:key = value'")
            key, value_text = text.split("=", 1)
            parts = _split_key(key)
            if value_text.strip() == "":
                raise CosiInputError(f"override '{text}' has no value")
            value = parse_yaml(value_text.strip(), f"override '{text}'", CosiInputError)
            if parts[0] not in self._data:
                raise CosiInputError(
                    f"override '{text}': unknown top-level section '{parts[0]}' "
                    f"(sections: {sorted(map(str, self._data))})"
                )
            node = self._data
            for depth, part in enumerate(parts[:-1]):
                if part not in node:
                    logger.info("%s: override creates new section '%s'", self.source, ":".join(parts[:depth + 1]))
                    node[part] = {}
                node = node[part]
                if not isinstance(node, dict):
                    raise CosiInputError(
                        f"override '{text}': '{':'.join(parts[:depth + 1])}' is a value "
                        f"({node!r}), not a section"
                    )
            old = node.get(parts[-1], "<unset>")
            node[parts[-1]] = value
            logger.info("%s: %s: %r -> %r", self.source, ":".join(parts), old, value)

    def to_dict(self):
        """Deep copy of the nested parameter dict."""
        return copy.deepcopy(self._data)

    def write(self, path):
        """Write the parameters as YAML (nested form), atomically.

        Parameters
        ----------
        path : str or pathlib.Path
            Output file.

        Returns
        -------
        pathlib.Path
        """
        path = Path(path)
        write_yaml(self._data, path)
        return path

    def __eq__(self, other):
        return isinstance(other, DeconvolutionParameters) and self._data == other._data

    def __repr__(self):
        return f"DeconvolutionParameters(source='{self.source}', algorithm={self.get('deconvolution:algorithm')!r})"


def read_binning_config(path):
    """Read a data-binning configuration file (e.g. the tutorials' ``inputs_511keV.yaml``).

    Parameters
    ----------
    path : str or pathlib.Path
        YAML file.

    Returns
    -------
    dict
        ``energy_bins`` (list of float, keV, increasing), ``phi_pix_size`` (float, deg),
        ``nside`` (int, power of 2), ``scheme`` (``'ring'`` or ``'nested'``), ``time_bins``
        (float bin size in s, or list of float edges), plus ``tmin``/``tmax`` (float, s)
        when the file has them.

    Raises
    ------
    CosiFileError
        Missing file or invalid YAML.
    CosiInputError
        A missing or invalid key (named in the message).
    """
    path = Path(path)
    data = read_yaml(path, "binning file", mapping=True)
    where = str(path)
    for key in ("energy_bins", "phi_pix_size", "nside", "scheme", "time_bins"):
        if data.get(key) is None:
            validation.fail(key, "missing key", where)
    time_bins = data["time_bins"]
    if isinstance(time_bins, list):
        time_bins = list(validation.number_list(time_bins, "time_bins", where, min_len=2, increasing=True))
    else:
        time_bins = validation.number(time_bins, "time_bins", where, low=0.0, low_open=True)
    scheme = data["scheme"]
    out = {
        "energy_bins": list(validation.number_list(data["energy_bins"], "energy_bins", where, min_len=2,
                                                   increasing=True, low=0.0, low_open=True)),
        "phi_pix_size": validation.number(data["phi_pix_size"], "phi_pix_size", where, low=0.0, low_open=True,
                                          high=180.0),
        "nside": validation.power_of_two(data["nside"], "nside", where),
        "scheme": validation.choice(scheme.lower() if isinstance(scheme, str) else scheme, "scheme",
                                    ("ring", "nested"), where),
        "time_bins": time_bins,
    }
    for key in ("tmin", "tmax"):
        if data.get(key) is not None:
            out[key] = validation.number(data[key], key, where)
    if "tmin" in out and "tmax" in out and out["tmax"] <= out["tmin"]:
        validation.fail("tmax", f"({out['tmax']}) must be after tmin ({out['tmin']})", where)
    return out
