"""The COSI team's parameter tree translated into the algorithms' keywords, in one place.

A parameter file (:class:`~cosi_imaging_plugin.io.parameters.DeconvolutionParameters`)
holds ``deconvolution:algorithm`` and a ``deconvolution:parameter`` tree such as::

    iteration_max: 30
    acceleration: {activate: true, alpha_max: 10.0, line_search: {activate: true, steps: 10}}
    response_weighting: {activate: true, index: 0.5}
    smoothing: {activate: true, FWHM: {value: 2.0, unit: deg}}
    background_normalization_optimization: {activate: true, range: {albedo: [0.01, 10.0]}}
    stopping_criteria: {statistics: log-likelihood, threshold: 1.0e-2}
    minimum_flux: {value: 0.0, unit: cm-2 s-1 sr-1}
    save_results: {activate: false, directory: ./results, only_final_result: true}
    prior: {TSV: {coefficient: 1.0e+6}, entropy: {coefficient: 1.0, prior_map: {value: 1e-4, unit: ...}},
            gamma: {model: {theta: {value: .inf, unit: ...}, k: {value: 0.9}},
                    background: {theta: {value: .inf}, k: {value: 1.0}}}}      # MAP_RL

:func:`build_algorithm` checks the tree against the algorithm's keys, converts
``{value, unit}`` nodes, and constructs the algorithm with keywords
(:data:`KEYWORD_PATHS` maps each keyword to its tree path); an invalid value is
reported under its tree path, so a parameter file's error names the file's key.
``save_results`` is not an algorithm option: :func:`save_options` reads it for the
orchestrator.
"""
import copy
import logging

from astropy import units as u

from .. import validation
from ..binning import IMAGE_UNIT
from ..errors import CosiInputError, InvalidValueError
from .map_richardson_lucy import MAPRichardsonLucy
from .richardson_lucy import RichardsonLucy, RichardsonLucySimple

logger = logging.getLogger(__name__)

#: Marker for a parameter leaf (any value) in the parameter schemas below.
LEAF = None
#: Marker for a mapping whose keys are free (e.g. background names).
FREE_MAPPING = "free mapping"
#: Where the algorithm parameters live in a parameter file.
PARAMETER_PATH = "deconvolution:parameter"
#: Stopping threshold of a ``stopping_criteria`` block that gives none.
DEFAULT_STOPPING_THRESHOLD = 1e-2

#: Keys known under ``deconvolution``.
DECONVOLUTION_KEYS = {"algorithm": LEAF, "parameter": FREE_MAPPING}
#: Algorithms by the name used in parameter files.
ALGORITHMS = {cls.name: cls for cls in (RichardsonLucySimple, RichardsonLucy, MAPRichardsonLucy)}

_COMMON_KEYS = {
    "iteration_max": LEAF,
    "minimum_flux": {"value": LEAF, "unit": LEAF},
    "background_normalization_optimization": {"activate": LEAF, "range": FREE_MAPPING},
    "stopping_criteria": {"statistics": LEAF, "threshold": LEAF},
    "save_results": {"activate": LEAF, "directory": LEAF, "only_final_result": LEAF},
    "response_weighting": {"activate": LEAF, "index": LEAF},
}
#: Keys known under ``deconvolution:parameter`` for each algorithm.
PARAMETER_KEYS = {
    "RLsimple": _COMMON_KEYS,
    "RL": dict(_COMMON_KEYS, acceleration={"activate": LEAF, "alpha_max": LEAF,
                                           "line_search": {"activate": LEAF, "steps": LEAF}},
               smoothing={"activate": LEAF, "FWHM": {"value": LEAF, "unit": LEAF}}),
    "MAP_RL": dict(_COMMON_KEYS, prior={
        "TSV": {"coefficient": LEAF},
        "entropy": {"coefficient": LEAF, "prior_map": {"value": LEAF, "unit": LEAF}},
        "gamma": {"model": {"theta": {"value": LEAF, "unit": LEAF}, "k": {"value": LEAF}},
                  "background": {"theta": {"value": LEAF}, "k": {"value": LEAF}}},
    }),
}

#: Tree path (below ``deconvolution:parameter``) of each keyword.
KEYWORD_PATHS = {
    "iterations": "iteration_max",
    "minimum_flux": "minimum_flux",
    "response_weighting": "response_weighting:activate",
    "response_weighting_index": "response_weighting:index",
    "fit_backgrounds": "background_normalization_optimization:activate",
    "background_ranges": "background_normalization_optimization:range",
    "stopping_threshold": "stopping_criteria:threshold",
    "stopping_statistic": "stopping_criteria:statistics",
    "acceleration": "acceleration:activate",
    "alpha_max": "acceleration:alpha_max",
    "line_search": "acceleration:line_search:activate",
    "line_search_steps": "acceleration:line_search:steps",
    "smoothing_fwhm": "smoothing:FWHM",
    "gamma_k": "prior:gamma:model:k:value",
    "gamma_theta": "prior:gamma:model:theta:value",
    "background_gamma_k": "prior:gamma:background:k:value",
    "background_gamma_theta": "prior:gamma:background:theta:value",
    "tsv_coefficient": "prior:TSV:coefficient",
    "entropy_coefficient": "prior:entropy:coefficient",
    "entropy_prior_map": "prior:entropy:prior_map:value",
}

# Keys of the intermediate cosipy form ("deconvolution:parameter:alpha_max = 10", as in the COSI team's
# 511 keV tutorial) and where they live in the nested form.
_LEGACY_KEYS = {
    "alpha_max": ("acceleration", "alpha_max"),
    "response_weighting_index": ("response_weighting", "index"),
    "smoothing_FWHM": ("smoothing", "FWHM"),
    "background_normalization_range": ("background_normalization_optimization", "range"),
    "save_results_directory": ("save_results", "directory"),
}
_SWITCHES = ("acceleration", "response_weighting", "smoothing", "background_normalization_optimization",
             "save_results")


def _get(tree, key, default=None):
    """Value at ``"a:b:c"`` in a nested dict, or `default`."""
    node = tree
    for part in key.split(":"):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def normalize_parameter(tree, where="deconvolution:parameter"):
    """Bring the intermediate cosipy parameter form into the nested form.

    ``acceleration: true`` becomes ``acceleration: {activate: true}``, ``alpha_max``
    becomes ``acceleration:alpha_max`` and likewise for ``response_weighting_index``,
    ``smoothing_FWHM``, ``background_normalization_range`` and
    ``save_results_directory`` (the form printed in the COSI 511 keV tutorial and
    used by its ``override_parameter`` examples). A value given in the flat form
    replaces the nested one, since it can only come from a later override.

    Parameters
    ----------
    tree : dict
        The ``deconvolution:parameter`` mapping (not modified).
    where : str
        Key prefix for messages.

    Returns
    -------
    dict
    """
    tree = copy.deepcopy(tree or {})
    if not isinstance(tree, dict):
        raise CosiInputError(f"'{where}' must be a mapping, got {tree!r}")
    for switch in _SWITCHES + ("acceleration:line_search",):
        parent, _, leaf = switch.rpartition(":")
        node = _get(tree, parent) if parent else tree
        if isinstance(node, dict) and isinstance(node.get(leaf), bool):
            node[leaf] = {"activate": node[leaf]}
    for old, (section, key) in _LEGACY_KEYS.items():
        if old in tree:
            value = tree.pop(old)
            target = tree.setdefault(section, {})
            if not isinstance(target, dict):
                raise CosiInputError(f"'{where}:{section}' must be a mapping, got {target!r}")
            logger.info("parameter '%s:%s' read as '%s:%s:%s'", where, old, where, section, key)
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                target[key].update(value)  # e.g. smoothing_FWHM:value keeps smoothing:FWHM:unit
            else:
                target[key] = value
    return tree


def validate_tree(tree, schema, prefix):
    """Raise CosiInputError naming the first key of `tree` that `schema` does not know.

    Parameters
    ----------
    tree : dict
        Parameters.
    schema : dict
        Known keys; a value is ``LEAF`` (any value), ``FREE_MAPPING`` (a mapping
        with free keys) or a nested schema.
    prefix : str
        Key path of `tree`, for messages.
    """
    if not isinstance(tree, dict):
        raise CosiInputError(f"'{prefix}' must be a mapping, got {tree!r}")
    for key, value in tree.items():
        path = f"{prefix}:{key}"
        if key not in schema:
            raise CosiInputError(f"unknown parameter '{path}'{validation.did_you_mean(key, schema)}; known keys under "
                                 f"'{prefix}': {sorted(schema)}")
        sub = schema[key]
        if sub is FREE_MAPPING:
            if not isinstance(value, dict):
                raise CosiInputError(f"'{path}' must be a mapping, got {value!r}")
        elif isinstance(sub, dict):
            validate_tree(value, sub, path)


def quantity_node(node, key, unit, default_unit=None, allow_inf=False, low=None):
    """Value of a ``{value, unit}`` node converted to `unit` (scalar or array)."""
    if not isinstance(node, dict) or "value" not in node:
        raise CosiInputError(f"'{key}' must be a mapping with 'value' (and 'unit'), got {node!r}")
    unit_text = node.get("unit", default_unit)
    try:
        given = u.Unit(unit_text) if unit_text is not None else u.dimensionless_unscaled
    except (ValueError, TypeError) as exc:
        raise CosiInputError(f"'{key}:unit' is not a unit: {unit_text!r}") from exc
    if not given.is_equivalent(unit):
        raise CosiInputError(f"'{key}:unit' must be convertible to {unit}, got '{given}'")
    return validation.quantity(node["value"], f"{key}:value", u.dimensionless_unscaled, low=low,
                               allow_inf=allow_inf) * given.to(unit)



def _flag(tree, path, default=False):
    return validation.flag(_get(tree, path, default), f"{PARAMETER_PATH}:{path}")


def algorithm_class(name):
    """The algorithm class of a parameter-file name (``RLsimple``, ``RL``, ``MAP_RL``)."""
    if name not in ALGORITHMS:
        raise CosiInputError(f"unknown 'deconvolution:algorithm' {name!r}; known: {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


def algorithm_keywords(name, parameter):
    """The keywords of algorithm `name` given by a ``deconvolution:parameter`` tree.

    The tree may be in the intermediate form (:func:`normalize_parameter`); keys the
    algorithm does not know are errors naming the key. Keys absent from the tree
    give no keyword (the algorithm's defaults apply), except ``stopping_criteria``
    without ``threshold`` (0.01, as in cosipy).

    Parameters
    ----------
    name : str
        ``RLsimple``, ``RL`` or ``MAP_RL``.
    parameter : dict
        The ``deconvolution:parameter`` mapping (not modified).

    Returns
    -------
    dict
    """
    algorithm_class(name)
    tree = normalize_parameter(parameter, PARAMETER_PATH)
    validate_tree(tree, PARAMETER_KEYS[name], PARAMETER_PATH)
    keywords = {}
    for keyword, path in KEYWORD_PATHS.items():
        if keyword in ("minimum_flux", "smoothing_fwhm", "gamma_theta", "entropy_prior_map"):
            continue  # {value, unit} nodes, below
        value = _get(tree, path)
        if value is not None:
            keywords[keyword] = value
    if "minimum_flux" in tree:
        keywords["minimum_flux"] = quantity_node(tree["minimum_flux"], f"{PARAMETER_PATH}:minimum_flux", IMAGE_UNIT,
                                             default_unit=str(IMAGE_UNIT), low=0.0)
    if "stopping_criteria" in tree:
        keywords.setdefault("stopping_threshold", DEFAULT_STOPPING_THRESHOLD)
    if name == "RL" and _flag(tree, "smoothing:activate"):
        if "FWHM" not in tree["smoothing"]:
            raise CosiInputError(f"'{PARAMETER_PATH}:smoothing:FWHM' is needed when smoothing is active")
        keywords["smoothing_fwhm"] = quantity_node(tree["smoothing"]["FWHM"], f"{PARAMETER_PATH}:smoothing:FWHM",
                                               u.deg, default_unit="deg", low=0.0)
    else:
        keywords.pop("smoothing_fwhm", None)
    if name == "MAP_RL":
        theta = _get(tree, "prior:gamma:model:theta")
        if theta is not None:
            keywords["gamma_theta"] = quantity_node(theta, f"{PARAMETER_PATH}:prior:gamma:model:theta", IMAGE_UNIT,
                                                default_unit=str(IMAGE_UNIT), allow_inf=True)
        for prior, keyword in (("TSV", "tsv_coefficient"), ("entropy", "entropy_coefficient")):
            if _get(tree, f"prior:{prior}") is not None and keyword not in keywords:
                raise CosiInputError(f"'{PARAMETER_PATH}:prior:{prior}:coefficient' is needed by the {prior} prior")
        entropy = _get(tree, "prior:entropy")
        if entropy is not None:
            if "prior_map" not in entropy:
                raise CosiInputError(f"'{PARAMETER_PATH}:prior:entropy:prior_map' is needed by the entropy prior")
            keywords["entropy_prior_map"] = quantity_node(entropy["prior_map"],
                                                      f"{PARAMETER_PATH}:prior:entropy:prior_map", IMAGE_UNIT,
                                                      default_unit=str(IMAGE_UNIT))
    return keywords


def build_algorithm(name, parameter, datasets, **state):
    """Construct algorithm `name` from a ``deconvolution:parameter`` tree.

    Parameters
    ----------
    name : str
        ``RLsimple``, ``RL`` or ``MAP_RL``.
    parameter : dict
        The ``deconvolution:parameter`` mapping.
    datasets : COSIDataset or list of COSIDataset
    **state
        Keywords that are not parameters: ``initial_model``, ``mask``, ``model_unit``,
        ``start_iteration``, ``background_norms``, ``previous_results``, ``metadata``.

    Raises
    ------
    InvalidValueError
        A value the algorithm refuses, reported under its tree path.
    """
    keywords = algorithm_keywords(name, parameter)
    try:
        return algorithm_class(name)(datasets, **keywords, **state)
    except InvalidValueError as exc:
        keyword, _, rest = exc.key.partition(":")
        if keyword not in KEYWORD_PATHS:
            raise
        path = f"{PARAMETER_PATH}:{KEYWORD_PATHS[keyword]}" + (f":{rest}" if rest else "")
        raise exc.renamed(path, where=None) from exc


def save_options(parameter):
    """(activate, directory, only_final_result) of the tree's ``save_results`` block."""
    tree = normalize_parameter(parameter, PARAMETER_PATH)
    node = tree.get("save_results") or {}
    return (_flag(tree, "save_results:activate"), node.get("directory", "./results"),
            _flag(tree, "save_results:only_final_result"))
