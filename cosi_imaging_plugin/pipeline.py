"""The end-to-end analysis: data -> RL image -> RL-initialized 3ML fit -> products.

A fit configuration (YAML) names the data (a simulated dataset to build and
cache, a dataset manifest, or the COSI team's files), the deconvolution, the
astromodels sources with their free parameters and bounds, and the background
normalizations. :func:`run_pipeline` writes into one output directory:

- ``rl/``: the deconvolution results (HDF5 + FITS) and their plots;
- ``rl_image.png``, ``rl_image_log.png``, ``fitted_model.png``: Mollweide images;
- ``fit_results.fits`` (3ML's own results format) and ``fit_results.txt``;
- ``residuals_phi.png``, ``residuals_psichi.png``: data versus model in the CDS;
- ``summary.json``: fitted versus injected parameters and fluxes.
"""
import json
import logging
import time
from pathlib import Path

import matplotlib
import numpy as np
from astromodels import Model
from threeML import DataList, JointLikelihood
from tqdm.auto import tqdm

from ._atomic import atomic_path
from .datasets import DEFAULT_RTOL, COSIDataset
from .deconvolution import ImageDeconvolution
from .errors import CosiInputError
from .io.manifest import read_manifest
from .io.yaml_files import read_yaml
from .plots import plot_residuals, save_image, save_plots
from .simulate import builtin_config, builtin_config_names, simulate_dataset
from .sky.sources import build_sources, expand_presets
from .sky.spectra import integrate_spectrum
from .threeml import COSIImagingLike
from .threeml.rl_initializer import NORMALIZATION_PARAMETERS, initialize_from_image

logger = logging.getLogger(__name__)

FIT_KEYS = {"name", "data", "response_rtol", "deconvolution", "model", "backgrounds", "fit", "scheduler"}
DATA_KEYS = {"simulate", "manifest", "files"}
STAGES = ["data", "engine", "deconvolution", "fit", "products"]


def builtin_fit_config(name):
    """Path of a fit configuration shipped with the package (e.g. ``'demo_mini_511keV'``)."""
    path = Path(__file__).parent / "data" / "fit_configs" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise CosiInputError(f"no built-in configuration '{name}'; known: {known}")
    return path


def read_fit_config(config):
    """Read and check a fit configuration (a path or a dict); unknown keys are errors naming the key."""
    base = Path.cwd()
    if not isinstance(config, dict):
        path = Path(config)
        if not path.is_file():
            path = builtin_fit_config(str(config))
        base = path.parent
        config = read_yaml(path, "fit configuration")
    if not isinstance(config, dict):
        raise CosiInputError("a fit configuration must be a mapping")
    unknown = set(config) - FIT_KEYS
    if unknown:
        raise CosiInputError(f"fit configuration: unknown key(s) {sorted(unknown)}; known: {sorted(FIT_KEYS)}")
    data = config.get("data")
    if not isinstance(data, dict) or len(set(data) & DATA_KEYS) != 1 or set(data) - DATA_KEYS:
        raise CosiInputError(f"fit configuration: 'data' must hold exactly one of {sorted(DATA_KEYS)}")
    if "model" not in config or not config["model"].get("sources"):
        raise CosiInputError("fit configuration: 'model:sources' must list at least one source")
    config = dict(config)
    config["_base"] = base
    return config


def _resolve(base, value):
    path = Path(value)
    return path if path.is_absolute() else base / path


def _dataset(config, output_dir, progress):
    """(manifest or None, file roles) of the configured data, simulating it once if asked."""
    data, base = config["data"], config["_base"]
    if "files" in data:
        files = {k: (_resolve(base, v) if k != "backgrounds" else {n: _resolve(base, p) for n, p in v.items()})
                 for k, v in data["files"].items()}
        return None, files
    if "manifest" in data:
        manifest = read_manifest(_resolve(base, data["manifest"]))
    else:
        name = data["simulate"]
        sim_config = builtin_config(name) if name in builtin_config_names() else _resolve(base, name)
        cache = Path(output_dir) / "data" / Path(str(name)).stem
        if (cache / "manifest.yaml").is_file():
            logger.info("using the cached simulated dataset %s", cache)
            manifest = read_manifest(cache)
        else:
            manifest = simulate_dataset(sim_config, cache, progress=progress)
    files = {"response": manifest["response"], "data": manifest["data_scatt"], "ccm": manifest["ccm"],
             "backgrounds": manifest["backgrounds"], "parameter_file": manifest["parameter_file"]}
    return manifest, files


def _analysis_dataset(files, rtol, progress, scheduler=None):
    """The COSIDataset of the configured files (its engine sharded over `scheduler`'s workers when given)."""
    roles = ("response", "data", "backgrounds", "ccm", "orientation", "exposure_table")
    return COSIDataset.from_files(**{role: files[role] for role in roles if files.get(role)}, rtol=rtol,
                                  progress=progress, client=scheduler)


def _deconvolve(config, dataset, files, output_dir, progress):
    section = config.get("deconvolution") or {}
    parfile = section.get("parameter_file") or files.get("parameter_file")
    if parfile is None:
        raise CosiInputError("fit configuration: no deconvolution parameter file (deconvolution:parameter_file)")
    deconvolution = ImageDeconvolution()
    deconvolution.set_dataset(dataset)
    deconvolution.read_parameterfile(_resolve(config["_base"], parfile))
    for line in section.get("overrides", []):
        deconvolution.override_parameter(line)
    deconvolution.initialize()
    deconvolution.run_deconvolution(progress=progress)
    rl_dir = Path(output_dir) / "rl"
    deconvolution.save_results(rl_dir, only_final_result=True)
    save_plots(deconvolution.results, rl_dir, mask=deconvolution.mask)
    return deconvolution


def _model(config):
    return Model(*build_sources(expand_presets(config["model"]["sources"], "model:sources"), "model:sources"))


def _plugin(config, dataset):
    section = config.get("backgrounds") or {}
    unknown = set(section) - set(dataset.background_names)
    if unknown:
        raise CosiInputError(f"fit configuration: backgrounds {sorted(unknown)} are not in the data "
                             f"(templates: {dataset.background_names})")
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


def _summary(model, results, plugin, manifest, ei_edges, elapsed):
    summary = {"parameters": {}, "sources": {}, "backgrounds": {}, "elapsed_s": elapsed}
    for path, row in results.iterrows():
        summary["parameters"][path] = {"value": float(row["value"]), "error": float(row["error"])}
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


def run_pipeline(config, output_dir, progress=True):
    """Run data -> RL -> RL-initialized 3ML fit -> products (see module docstring).

    Parameters
    ----------
    config : str, pathlib.Path or dict
        Fit configuration (a file, the name of a built-in one, or its content).
    output_dir : str or pathlib.Path
        Receives every product; a simulated dataset is cached under ``data/``.
    progress : bool
        Show progress bars.

    Returns
    -------
    dict
        The content of ``summary.json``.
    """
    matplotlib.use("Agg")
    start = time.perf_counter()
    config = read_fit_config(config)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(STAGES), desc="pipeline", unit="stage", disable=not progress) as bar:
        def stage(name):
            bar.set_postfix_str(name)
            logger.info("stage: %s", name)

        stage("data")
        manifest, files = _dataset(config, output_dir, progress)
        bar.update()
        stage("engine")
        dataset = _analysis_dataset(files, float(config.get("response_rtol", DEFAULT_RTOL)), progress,
                                    config.get("scheduler"))
        bar.update()
        stage("deconvolution")
        deconvolution = _deconvolve(config, dataset, files, output_dir, progress)
        rl_image = deconvolution.results[-1]["model"]
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
        results = jl.fit(quiet=True)[0]
        bar.update()
        stage("products")
        jl.results.write_to(str(output_dir / "fit_results.fits"), overwrite=True)
        with atomic_path(output_dir / "fit_results.txt") as tmp:
            tmp.write_text(results.to_string() + "\n\n" + jl.results.get_statistic_frame().to_string() + "\n")
        save_image(rl_image, output_dir / "rl_image.png", "RL image")
        save_image(rl_image, output_dir / "rl_image_log.png", "RL image (log)", log=True)
        save_image(dataset.image_histogram(plugin.model_image()), output_dir / "fitted_model.png", "fitted model")
        plot_residuals(plugin.data_cds(), plugin.model_cds(), output_dir)
        ei_edges = dataset.model_axes[1].edges.to_value("keV")
        summary = _summary(model, results, plugin, manifest, ei_edges, time.perf_counter() - start)
        summary["minus_log_likelihood"] = float(jl.results.get_statistic_frame()["-log(likelihood)"]["total"])
        _write_json(output_dir / "summary.json", summary)
        bar.update()
    logger.info("pipeline done in %.1f s: %s", summary["elapsed_s"], output_dir)
    return summary
