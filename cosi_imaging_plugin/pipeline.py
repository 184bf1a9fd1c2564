"""The end-to-end analysis: data -> RL image -> RL-initialized 3ML fit -> products.

A fit configuration (YAML) names the data (a simulated dataset to build and
cache, a dataset manifest, or the COSI team's files), the deconvolution, the
astromodels sources with their free parameters and bounds, and the background
normalizations. :func:`run_pipeline` writes into one output directory:

- ``rl/``: the deconvolution results (HDF5 + FITS) and their plots;
- ``rl_image.png``, ``rl_image_log.png``: Mollweide images of the RL image;
- ``fitted_model.png``: the fitted functions drawn at display resolution (NSIDE 64),
  ``fitted_model_grid.png``: the fitted model as the analysis grid samples it;
- ``fit_results.fits`` (3ML's own results format; it loads in any Python session: the
  package's spatial shapes are HEALPix templates of their fitted form in
  ``fit_results_templates/``), ``fit_results_full.fits`` (every fitted parameter, read
  after ``import cosi_imaging_plugin.sky``; written when the model has such shapes) and
  ``fit_results.txt``;
- ``residuals_phi.png``, ``residuals_psichi.png``: data versus model in the CDS;
- ``summary.json``: fitted versus injected parameters and fluxes, with units, the
  integration band and the definitions of its fields;
- ``run.log``: the command, the package versions, the inputs' checksums, the log;
- ``report.html``: one self-contained page of the run (inputs, parameters, figures, provenance).
"""
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import matplotlib
import numpy as np
from astromodels import Model
from histpy import Axes, HealpixAxis, Histogram
from threeML import DataList, JointLikelihood
from tqdm.auto import tqdm

from . import validation
from ._atomic import atomic_path
from .binning import IMAGE_UNIT
from .datasets import DEFAULT_RTOL, COSIDataset
from .deconvolution import ImageDeconvolution
from .deconvolution.results import load_results
from .distributed import check_mapping_on
from .errors import CosiFileError, CosiInputError
from .io.manifest import read_manifest
from .io.yaml_files import read_yaml
from .outputs import OutputFolder
from .plots import plot_residuals, save_image, save_plots
from .simulate import builtin_config, builtin_config_names, simulate_dataset
from .simulate.config import coerce_config
from .sky.rasterize import Rasterizer
from .sky.source_images import sky_image
from .sky.sources import build_sources, expand_presets
from .sky.spectra import integrate_spectrum
from .threeml import COSIImagingLike
from .threeml.portable_results import write_portable_results
from .threeml.rl_initializer import NORMALIZATION_PARAMETERS, initialize_from_image

logger = logging.getLogger(__name__)

#: The schema of a fit configuration: key -> sub-schema (a dict), or None for a value.
FILE_ROLES = ("response", "data", "backgrounds", "ccm", "orientation", "exposure_table", "parameter_file")
SCHEMA = {
    "name": None,
    "data": {"simulate": None, "manifest": None, "files": dict.fromkeys(FILE_ROLES)},
    "response_rtol": None,
    "deconvolution": {"parameter_file": None, "overrides": None},
    "model": {"sources": None, "initialize_from_rl": None},
    "backgrounds": None,  # per template: BACKGROUND_KEYS
    "fit": {"minimizer": None},
    "scheduler": None,  # a Dask scheduler address: the engine sharded over its workers
    "mapping_on": None,  # on a scheduler, where the CCM lives: auto, workers or client
}
BACKGROUND_KEYS = ("bounds", "prior", "free")
DATA_KEYS = set(SCHEMA["data"])
STAGES = ["data", "engine", "deconvolution", "fit", "products"]
WHERE = "fit configuration"
RL_STAGE_FILE = "stage.json"


def builtin_fit_config_names():
    """Names of the fit configurations shipped with the package."""
    return sorted(p.stem for p in (Path(__file__).parent / "data" / "fit_configs").glob("*.yaml"))


def builtin_fit_config(name):
    """Path of a fit configuration shipped with the package (e.g. ``'demo_mini_511keV'``)."""
    path = Path(__file__).parent / "data" / "fit_configs" / f"{name}.yaml"
    if not path.is_file():
        known = builtin_fit_config_names()
        raise CosiInputError(f"no built-in fit configuration '{name}'{validation.did_you_mean(name, known)}; "
                             f"built-in: {known}")
    return path


def _config_path(config):
    """The file of a fit configuration given by path or built-in name; a missing file is named as such."""
    path = Path(config)
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise CosiFileError(f"fit configuration file {path} does not exist")
    return builtin_fit_config(str(config))


def _check_schema(value, schema, key, where):
    """Check `value` against `schema` at every level (unknown keys with a did-you-mean)."""
    validation.check_keys(value, key, where, known=schema)
    for sub, sub_schema in schema.items():
        if isinstance(sub_schema, dict) and value.get(sub) is not None:
            _check_schema(value[sub], sub_schema, f"{key}.{sub}" if key else sub, where)


def read_fit_config(config):
    """Read and check a fit configuration (a path, a built-in name or a dict) in full.

    Every level is checked against :data:`SCHEMA` (unknown keys are errors naming the key,
    with the closest known key suggested), and the model's sources are built, so that
    unknown functions and parameters are reported before any work.
    """
    base = Path.cwd()
    if not isinstance(config, dict):
        path = _config_path(config)
        base = path.parent
        where = f"{WHERE} {path}"
        config = read_yaml(path, WHERE)
    else:
        where = WHERE
    if not isinstance(config, dict):
        raise CosiInputError(f"{where}: a fit configuration must be a mapping")
    config = {k: v for k, v in config.items() if k != "_base"}
    _check_schema(config, SCHEMA, "", where)
    data = config.get("data")
    if not isinstance(data, dict) or len(set(data) & DATA_KEYS) != 1:
        raise CosiInputError(f"{where}: 'data' must hold exactly one of {sorted(DATA_KEYS)}")
    if not (config.get("model") or {}).get("sources"):
        raise CosiInputError(f"{where}: 'model:sources' must list at least one source")
    for name, entry in (config.get("backgrounds") or {}).items():
        validation.check_keys(entry, f"backgrounds.{name}", where, known=BACKGROUND_KEYS)
    if config.get("mapping_on") is not None:
        check_mapping_on(config["mapping_on"], key=f"{where}: 'mapping_on'")
    _model(config)
    config["_base"] = base
    return config


def _resolve(base, value):
    path = Path(value)
    return path if path.is_absolute() else base / path


def _simulation(config):
    """(simulation configuration, cache folder name) of ``data: {simulate: ...}``."""
    name = config["data"]["simulate"]
    if str(name) in builtin_config_names():
        return builtin_config(str(name)), str(name)
    return coerce_config(_resolve(config["_base"], name)), Path(str(name)).stem


def _background_names(config):
    """The background templates the configured data will have, known before any work."""
    data, base = config["data"], config["_base"]
    if "files" in data:
        return sorted(data["files"].get("backgrounds") or {})
    if "manifest" in data:
        return sorted(read_manifest(_resolve(base, data["manifest"])).backgrounds)
    return sorted(_simulation(config)[0].backgrounds)


def check_fit_config(config):
    """Everything that can be checked before any work, beyond :func:`read_fit_config`.

    The simulation configuration (when the data are simulated), the background names of the
    ``backgrounds`` section against the data's templates, and the deconvolution parameter
    file with its overrides (when it exists before the run).
    """
    names = _background_names(config)
    unknown = sorted(set(config.get("backgrounds") or {}) - set(names))
    if unknown:
        raise CosiInputError(f"{WHERE}: backgrounds {unknown}{validation.did_you_mean(unknown[0], names)} are not "
                             f"in the data (templates: {names})")
    section = config.get("deconvolution") or {}
    parfile = section.get("parameter_file")
    if parfile is None and "manifest" in config["data"]:
        parfile = read_manifest(_resolve(config["_base"], config["data"]["manifest"])).get("parameter_file")
    if parfile is None and "files" in config["data"]:
        parfile = config["data"]["files"].get("parameter_file")
    if parfile is not None:
        _deconvolution(config, parfile)
    elif "simulate" not in config["data"]:
        raise CosiInputError(f"{WHERE}: no deconvolution parameter file (deconvolution:parameter_file)")


def _deconvolution(config, parfile):
    """An ImageDeconvolution with the configured parameter file and overrides, checked in full."""
    deconvolution = ImageDeconvolution()
    deconvolution.read_parameterfile(_resolve(config["_base"], parfile))
    for line in (config.get("deconvolution") or {}).get("overrides") or []:
        deconvolution.override_parameter(line)
    deconvolution.check_parameters()
    return deconvolution


def _reuse(previous, work, relative):
    """Copy ``previous/relative`` into ``work/relative`` (hard links where possible); True if it existed."""
    if previous is None or not (previous / relative).is_dir():
        return False

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(previous / relative, work / relative, copy_function=link)
    return True


def _dataset(config, out, progress):
    """(manifest or None, file roles) of the configured data, simulating it once if asked."""
    data, base = config["data"], config["_base"]
    if "files" in data:
        files = {k: (_resolve(base, v) if k != "backgrounds" else {n: _resolve(base, p) for n, p in v.items()})
                 for k, v in data["files"].items()}
        return None, files
    if "manifest" in data:
        manifest = read_manifest(_resolve(base, data["manifest"]))
    else:
        sim_config, stem = _simulation(config)
        relative = Path("data") / stem
        if _reuse(out.previous, out.work, relative) and (out.work / relative / "manifest.yaml").is_file():
            logger.info("reusing the simulated dataset of the previous run (%s)", out.path / relative)
            manifest = read_manifest(out.work / relative)
        else:
            shutil.rmtree(out.work / relative, ignore_errors=True)
            manifest = simulate_dataset(sim_config, out.work / relative, progress=progress)
    files = {"response": manifest["response"], "data": manifest["data_scatt"], "ccm": manifest["ccm"],
             "backgrounds": manifest["backgrounds"], "parameter_file": manifest["parameter_file"]}
    return manifest, files


def _input_files(files):
    """Role -> path of every input file (backgrounds as ``backgrounds:NAME``)."""
    flat = {}
    for role, value in files.items():
        if isinstance(value, dict):
            flat.update({f"{role}:{name}": path for name, path in value.items()})
        elif value is not None:
            flat[role] = value
    return flat


def _analysis_dataset(files, rtol, progress, scheduler=None, mapping_on=None):
    """The COSIDataset of the configured files (its engine sharded over a Dask scheduler's workers if given)."""
    roles = ("response", "data", "backgrounds", "ccm", "orientation", "exposure_table")
    return COSIDataset.from_files(**{role: files[role] for role in roles if files.get(role)}, rtol=rtol,
                                  progress=progress, client=scheduler, mapping_on=mapping_on)


def _rl_fingerprint(config, checksums):
    """A digest of everything the RL stage depends on: data, deconvolution section, tolerance, input files."""
    content = {key: config.get(key) for key in ("data", "deconvolution", "response_rtol")}
    content["inputs"] = sorted(checksums.values())
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _rl_stage(config, dataset, files, out, fingerprint, progress):
    """The RL image: reused from the previous run when its fingerprint matches, else computed into ``rl/``."""
    rl_dir = out.work / "rl"
    stage_file = Path("rl") / RL_STAGE_FILE
    if out.previous is not None and (out.previous / stage_file).is_file():
        stored = json.loads((out.previous / stage_file).read_text())
        if stored.get("fingerprint") == fingerprint and _reuse(out.previous, out.work, Path("rl")):
            logger.info("reusing the finished RL stage of the previous run (same data and parameters)")
            return load_results(rl_dir)["results"][-1]["model"]
        logger.info("the previous run's RL stage used other data or parameters: running it again")
    section = config.get("deconvolution") or {}
    parfile = section.get("parameter_file") or files.get("parameter_file")
    deconvolution = _deconvolution(config, parfile)
    deconvolution.set_dataset(dataset)
    deconvolution.initialize()
    deconvolution.run_deconvolution(progress=progress)
    deconvolution.save_results(rl_dir, only_final_result=True)
    save_plots(deconvolution.results, rl_dir, mask=deconvolution.mask)
    _write_json(rl_dir / RL_STAGE_FILE, {"fingerprint": fingerprint,
                                         "iterations": deconvolution.results[-1]["iteration"]})
    return deconvolution.results[-1]["model"]


class _CloneBoundsFilter(logging.Filter):
    """Drops astromodels' bound warnings raised while 3ML clones a model.

    3ML copies the fitted model through astromodels' parser, which rebuilds each function
    at its default values and sets the bounds before the values, so a parameter set
    within its bounds (F = 5e-4 in [1e-7, 0.1]) is reported as 'above the new maximum'.
    """

    def filter(self, record):
        message = record.getMessage()
        return not ("the new maximum" in message or "the new minimum" in message)


@contextlib.contextmanager
def _quiet_model_cloning():
    target = logging.getLogger("astromodels.core.parameter")
    quiet = _CloneBoundsFilter()
    target.addFilter(quiet)
    try:
        yield
    finally:
        target.removeFilter(quiet)


#: NSIDE at which the fitted functions are drawn (about 0.9 deg pixels).
DISPLAY_NSIDE = 64


def display_image(model, ei_axis, nside=DISPLAY_NSIDE):
    """The fitted model's sources drawn from their functions on a fine Galactic grid (for figures).

    Parameters
    ----------
    model : astromodels.Model
    ei_axis : histpy.Axis
        The Ei axis of the analysis (keV).
    nside : int

    Returns
    -------
    histpy.Histogram
        [lb, Ei] in ph cm-2 s-1 sr-1.
    """
    values, _ = sky_image(list(model.sources.values()), Rasterizer(nside, "ring"), ei_axis.edges.to_value("keV"))
    lb = HealpixAxis(nside=nside, scheme="ring", coordsys="galactic", label="lb")
    return Histogram(Axes([lb, ei_axis]), contents=values, unit=IMAGE_UNIT)


def _model(config):
    return Model(*build_sources(expand_presets(config["model"]["sources"], "model:sources"), "model:sources"))


def _plugin(config, dataset):
    section = config.get("backgrounds") or {}
    bounds = {k: tuple(v["bounds"]) for k, v in section.items() if "bounds" in v}
    priors = {k: tuple(v["prior"]) for k, v in section.items() if v.get("prior")}
    fixed = [k for k, v in section.items() if v.get("free", True) is False]
    return COSIImagingLike(config.get("name", "cosi"), dataset, background_bounds=bounds,
                           background_priors=priors, fixed_backgrounds=fixed)


def _flux_with_error(source, ei_edges, results):
    """Integrated flux over the Ei bins and its error from the normalization's fitted error."""
    shape = source.spectrum.main.shape
    flux = float(np.sum(integrate_spectrum(shape, ei_edges, allow_negative=True)))
    for name in NORMALIZATION_PARAMETERS:
        if name in shape.parameters and shape.parameters[name].free:
            path = shape.parameters[name].path
            if path in results.index:
                relative = results.loc[path, "error"] / abs(results.loc[path, "value"])
                return flux, flux * float(relative)
    return flux, None


#: The definitions written into ``summary.json``.
DEFINITIONS = {
    "parameters": "fitted value and 1-sigma error (3ML, minimizer's covariance) of every free parameter, in 'unit'",
    "sources.flux": "the fitted spectrum integrated over the analysis band (band_kev), ph cm-2 s-1",
    "sources.flux_error": "1-sigma error of flux from the relative error of the spectral normalization",
    "sources.flux_injected": "the injected source's flux in the band as the model grid represents it (simulations)",
    "sources.flux_pull": "(flux - flux_injected) / flux_error",
    "backgrounds.norm": "fitted normalization of the background template (1 = the template as given)",
    "backgrounds.pull": "(norm - norm_injected) / error",
    "minus_log_likelihood": "-log L of the fit (Poisson, 3ML's definition)",
    "elapsed_s": "wall time of the run, s",
}


def _summary(model, results, plugin, manifest, ei_edges, elapsed):
    band = [float(ei_edges[0]), float(ei_edges[-1])]
    summary = {"band_kev": band, "units": {"flux": "ph cm-2 s-1", "band_kev": "keV", "elapsed_s": "s"},
               "definitions": DEFINITIONS, "parameters": {}, "sources": {}, "backgrounds": {}, "elapsed_s": elapsed}
    free = model.free_parameters
    for path, row in results.iterrows():
        unit = str(free[path].unit) if path in free else ""
        summary["parameters"][path] = {"value": float(row["value"]), "error": float(row["error"]), "unit": unit}
    truth = manifest.truth if manifest is not None else {}
    injected = {s["name"]: s for s in truth.get("sources", [])}
    for name, source in model.sources.items():
        flux, error = _flux_with_error(source, ei_edges, results)
        entry = {"flux": flux, "flux_error": error}
        if name in injected:
            true_flux = float(np.sum(injected[name].get("model_flux_per_ei_bin",
                                                        injected[name].get("flux_per_ei_bin", [np.nan]))))
            entry["flux_injected"] = true_flux
            if error:
                entry["flux_pull"] = (flux - true_flux) / error
                entry["within_2_sigma"] = bool(abs(entry["flux_pull"]) <= 2.0)
        summary["sources"][name] = entry
    for bkg, value in plugin.background_norms().items():
        path = plugin.nuisance_parameters[f"{plugin.name}_{bkg}_norm"].path
        entry = {"norm": value}
        if path in results.index:
            entry["error"] = float(results.loc[path, "error"])
        norm_true = truth.get("backgrounds", {}).get(bkg, {}).get("norm")
        if norm_true is not None:
            entry["norm_injected"] = float(norm_true)
            if entry.get("error"):
                entry["pull"] = (value - norm_true) / entry["error"]
        summary["backgrounds"][bkg] = entry
    return summary


def _write_json(path, content):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2, default=float))


def run_pipeline(config, output_dir, progress=True, overwrite=False):
    """Run data -> RL -> RL-initialized 3ML fit -> products (see module docstring).

    The configuration is checked in full first (:func:`read_fit_config`,
    :func:`check_fit_config`); the output folder follows
    :class:`~cosi_imaging_plugin.outputs.OutputFolder`. With ``overwrite``, the finished
    stages of the run being replaced are reused when their inputs are the same: the
    simulated dataset, and the RL image when the data, the deconvolution section and
    the input files' checksums match. An interruption after the RL stage keeps the
    finished stages in ``output_dir`` (no ``summary.json``), for a rerun with ``overwrite``.

    Parameters
    ----------
    config : str, pathlib.Path or dict
        Fit configuration (a file, the name of a built-in one, or its content).
    output_dir : str or pathlib.Path
        Receives every product; a simulated dataset is cached under ``data/``.
    progress : bool
        Show progress bars.
    overwrite : bool
        Replace a non-empty ``output_dir`` made by this package.

    Returns
    -------
    dict
        The content of ``summary.json``.
    """
    matplotlib.use("Agg")
    start = time.perf_counter()
    config = read_fit_config(config)
    check_fit_config(config)
    output_dir = Path(output_dir)
    out = OutputFolder(output_dir, overwrite=overwrite)
    try:
        summary = _run_stages(config, out, progress, start)
    except KeyboardInterrupt:
        if out.keep_on_interrupt:
            logger.warning("interrupted: the finished stages (data, RL image) are kept in %s; the same command with "
                           "--overwrite (overwrite=True) reuses them", output_dir)
        raise
    logger.info("pipeline done in %.1f s: %s", summary["elapsed_s"], output_dir)
    return summary


def _run_stages(config, out, progress, start):
    """The stages of :func:`run_pipeline`, in the output folder `out`; returns the summary."""
    with out, tqdm(total=len(STAGES), desc="pipeline", unit="stage", disable=not progress) as bar:
        def stage(name):
            bar.set_postfix_str(name)
            logger.info("stage: %s", name)

        stage("data")
        manifest, files = _dataset(config, out, progress)
        checksums = out.record_inputs(_input_files(files))
        bar.update()
        stage("engine")
        dataset = _analysis_dataset(files, float(config.get("response_rtol", DEFAULT_RTOL)), progress,
                                    config.get("scheduler"), config.get("mapping_on"))
        bar.update()
        stage("deconvolution")
        rl_image = _rl_stage(config, dataset, files, out, _rl_fingerprint(config, checksums), progress)
        # from here an interruption keeps the finished stages for a rerun
        out.keep_on_interrupt = True
        bar.update()
        stage("fit")
        model = _model(config)
        if config["model"].get("initialize_from_rl", True):
            initialize_from_image(model, rl_image)
        plugin = _plugin(config, dataset)
        jl = JointLikelihood(model, DataList(plugin), verbose=False)
        minimizer = (config.get("fit") or {}).get("minimizer")
        if minimizer:
            jl.set_minimizer(minimizer)
        with _quiet_model_cloning():
            results = jl.fit(quiet=True)[0]
        bar.update()
        stage("products")
        work = out.work
        with _quiet_model_cloning():
            if write_portable_results(jl.results, work / "fit_results.fits", final_dir=out.path):
                # every fitted parameter, the package's shapes included (read after import cosi_imaging_plugin.sky)
                jl.results.write_to(str(work / "fit_results_full.fits"), overwrite=True)
        with atomic_path(work / "fit_results.txt") as tmp:
            tmp.write_text(results.to_string() + "\n\n" + jl.results.get_statistic_frame().to_string() + "\n")
        save_image(rl_image, work / "rl_image.png", "RL image")
        save_image(rl_image, work / "rl_image_log.png", "RL image (log)", log=True)
        save_image(display_image(model, dataset.model_axes[1]), work / "fitted_model.png",
                   f"fitted model, NSIDE {DISPLAY_NSIDE}")
        save_image(dataset.image_histogram(plugin.model_image()), work / "fitted_model_grid.png",
                   f"fitted model on the analysis grid, NSIDE {dataset.model_axes[0].nside}")
        plot_residuals(plugin.data_cds(), plugin.model_cds(), work)
        ei_edges = dataset.model_axes[1].edges.to_value("keV")
        summary = _summary(model, results, plugin, manifest, ei_edges, time.perf_counter() - start)
        summary["minus_log_likelihood"] = float(jl.results.get_statistic_frame()["-log(likelihood)"]["total"])
        _write_json(work / "summary.json", summary)
        bar.update()
    return summary
