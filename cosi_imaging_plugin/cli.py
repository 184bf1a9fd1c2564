"""The ``cosi-imaging`` command.

Subcommands:

- ``demo [-o DIR]``: the main job on the built-in ``mini_511keV`` dataset
  (simulate once, RL image, RL-initialized 3ML fit of a bulge + disk, products);
- ``simulate CONFIG -o DIR``: build a synthetic dataset (built-in name or YAML);
- ``deconvolve PARFILE --data DIR [-o OUT]``: image deconvolution of a dataset (``--algorithm LIRA``:
  Bayesian multiscale deconvolution with error maps, PARFILE then a YAML file with a ``lira`` section);
- ``fit CONFIG [-o OUT]``: the demo pipeline on any dataset and model in YAML;
- ``tsmap --data DIR [-o OUT]``: a TS map of a test source (maps in HDF5 and FITS, a PNG);
- ``detect --data DIR [-o OUT]``: multiscale detection (a source table, its astromodels
  model, the TS map of the last search with the detections marked);
- ``info FILE``: what a COSI file holds.

Every failure ends with a one-line message and a non-zero exit status.
"""
import argparse
import logging
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
from astromodels.functions.function import get_function

from ._atomic import atomic_path
from .datasets import COSIDataset
from .deconvolution import ImageDeconvolution
from .deconvolution.parameters import save_options
from .detection import SourceDetector, TSMapEstimator
from .errors import CosiFileError, CosiInputError
from .io.describe import describe_file
from .io.manifest import read_manifest
from .pipeline import run_pipeline
from .plots import plot_sky_map, save_figure, save_plots
from .simulate import SimulationConfig, builtin_config, builtin_config_names, simulate_dataset
from .uncertainty import lira_main

logger = logging.getLogger("cosi_imaging_plugin")


def simulate_main(config, output_dir, overwrite=False, progress=True):
    """Entry point of ``cosi-imaging simulate CONFIG -o DIR``.

    Parameters
    ----------
    config : str or pathlib.Path
        A YAML configuration file, or the name of a built-in one (see
        :func:`~cosi_imaging_plugin.simulate.builtin_config_names`) when no such file exists.
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


def deconvolve_main(parfile, data_dir, output_dir, overrides=(), rtol=None, cds="auto", progress=True):
    """Run an image deconvolution on a data directory and write results and plots.

    Parameters
    ----------
    parfile : str or pathlib.Path or None
        Parameter file; None uses the manifest's ``parameter_file``.
    data_dir : str or pathlib.Path
        Directory with ``manifest.yaml`` (see :mod:`cosi_imaging_plugin.io.manifest`).
    output_dir : str or pathlib.Path
        Receives ``results.h5``, ``results.fits``, ``parameters.yaml`` (the parameters
        used) and PNG plots (``convergence.png``, ``model_E<i>.png``, ``model_E<i>_log.png``).
        The parameter file's ``save_results:directory`` is not used.
    overrides : sequence of str
        ``"section:key = value"`` overrides applied after reading the parameter file.
    rtol : float, optional
        Response truncation tolerance (default: the datasets' default).
    cds : {'auto', 'scatt', 'galactic'}
        ``scatt``: ScAtt-binned data with the CCM (the sparse-data path);
        ``galactic``: Galactic-CDS data with the response rotated over the exposure
        table's ScAtt bins; ``auto``: ``scatt`` when the manifest has ScAtt-binned data.
    progress : bool
        Show the progress bar.

    Returns
    -------
    dict
        ``iterations``, ``loglikelihood`` (final, summed), ``background_normalization``
        (final), ``files`` (paths written).
    """
    frames = {"auto": "auto", "scatt": "spacecraft", "galactic": "galactic"}
    if cds not in frames:
        raise CosiInputError(f"cds must be one of {list(frames)}, got {cds!r}")
    manifest = read_manifest(data_dir)
    if parfile is None:
        if "parameter_file" not in manifest:
            raise CosiInputError(f"no parameter file given and {manifest.path} names none ('parameter_file')")
        parfile = manifest["parameter_file"]
    output_dir = Path(output_dir)
    deconv = ImageDeconvolution()
    deconv.read_parameterfile(parfile)
    for text in overrides:
        deconv.override_parameter(text)
    _, _, only_final = save_options(deconv.parameter.get("deconvolution:parameter") or {})
    # results go to output_dir, not to the parameter file's directory
    deconv.override_parameter("deconvolution:parameter:save_results:activate = False")
    options = {} if rtol is None else {"rtol": rtol}
    deconv.set_dataset(COSIDataset.from_manifest(manifest, frames[cds], name="data", progress=progress, **options))
    deconv.initialize()
    results = deconv.run_deconvolution(progress=progress)

    files = deconv.save_results(output_dir, only_final_result=only_final)
    files["parameters"] = deconv.parameter.write(output_dir / "parameters.yaml")
    files["plots"] = save_plots(results, output_dir, mask=deconv.mask)
    final = results[-1]
    logger.info("deconvolution done: %d iterations, log-likelihood %.8g, outputs in %s", final["iteration"],
                float(np.sum(final["loglikelihood"])), output_dir)
    return {"iterations": final["iteration"], "loglikelihood": float(np.sum(final["loglikelihood"])),
            "background_normalization": final["background_normalization"], "files": files}


def parse_spectrum(text, ei_edges):
    """An astromodels spectral function from ``"Name:par=value,par=value"`` (e.g. ``"Powerlaw:index=-2"``).

    Unset parameters keep astromodels' defaults, except a power law's pivot, set to the
    geometric centre of the Ei range (``ei_edges``, keV) so that its norm is a flux there.
    """
    name, _, settings = str(text).partition(":")
    try:
        spectrum = get_function(name.strip())
    except Exception as exc:
        raise CosiInputError(f"unknown spectral function {name.strip()!r} in --spectrum {text!r}") from exc
    if "piv" in spectrum.parameters:
        spectrum.piv.value = float(np.sqrt(ei_edges[0] * ei_edges[-1]))
    for item in filter(None, (part.strip() for part in settings.split(","))):
        key, _, value = item.partition("=")
        if key.strip() not in spectrum.parameters:
            raise CosiInputError(f"--spectrum {text!r}: {name} has no parameter {key.strip()!r} (it has "
                                 f"{list(spectrum.parameters)})")
        try:
            spectrum.parameters[key.strip()].value = float(value)
        except ValueError as exc:
            raise CosiInputError(f"--spectrum {text!r}: {key.strip()} = {value!r} is not a number") from exc
    return spectrum


def _detection_inputs(args):
    """(dataset, test spectrum, Em channels) of the tsmap and detect commands."""
    dataset = COSIDataset.from_manifest(args.data, frame=args.frame, progress=not args.quiet)
    ei_edges = dataset.model_axes[1].edges.to_value("keV")
    channels = None if args.em_channels is None else [int(c) for c in args.em_channels.split(",")]
    return dataset, parse_spectrum(args.spectrum, ei_edges), channels


def _tsmap(args):
    dataset, spectrum, channels = _detection_inputs(args)
    estimator = TSMapEstimator(spectrum, kernel=args.kernel, width=args.width,
                               nside=args.nside or dataset.model_axes[0].nside, em_channels=channels,
                               selection_optional="all")
    result = estimator.run(dataset, progress=not args.quiet)
    args.output.mkdir(parents=True, exist_ok=True)
    result.write(args.output / "ts_map.h5")
    result.write_fits(args.output / "ts_map.fits")
    pixel, ts = result.peak("ts")
    lon, lat = (float(v) for v in result.axis.pix2ang(pixel, lonlat=True))
    title = f"sqrt(TS), {args.kernel} kernel" + (f" of {args.width:g} deg" if args.width else "")
    save_figure(plot_sky_map(result["sqrt_ts"], title=title, markers=[(lon, lat)], unit="sqrt(TS)"),
                args.output / "sqrt_ts.png")
    logger.warning("peak TS %.1f at (l, b) = (%.2f, %.2f); maps in %s", ts, lon, lat, args.output)
    return 0


def _detect(args):
    dataset, spectrum, channels = _detection_inputs(args)
    scales = [float(s) for s in args.scales.split(",")]
    detector = SourceDetector(spectrum, scales=scales, threshold=args.threshold, em_channels=channels,
                              max_iterations=args.max_sources)
    table = detector.run(dataset, progress=not args.quiet)
    args.output.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.output / "detections.ecsv") as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
    if len(table):
        model = table.to_model()
        with atomic_path(args.output / "detections_model.yml") as tmp:
            model.save(str(tmp), overwrite=True)
    residual = TSMapEstimator(spectrum, nside=dataset.model_axes[0].nside, em_channels=channels).run(
        dataset, null_model=table.to_model() if len(table) else None, progress=not args.quiet)
    residual.write(args.output / "residual_ts_map.h5")
    markers = [(float(r["l"]), float(r["b"])) for r in table]
    save_figure(plot_sky_map(residual["sqrt_ts"], title=f"residual sqrt(TS) after {len(table)} detection(s)",
                             markers=markers, unit="sqrt(TS)"), args.output / "detections.png")
    for row in table:
        logger.warning("%s: (l, b) = (%.2f, %.2f), scale %g deg, sqrt(TS) %.1f, flux %.3g +- %.2g ph/cm2/s",
                       row["name"], row["l"], row["b"], row["scale"], row["sqrt_ts"], row["flux"], row["flux_err"])
    logger.warning("%d source(s) above sqrt(TS) %g; table, model and figures in %s", len(table), args.threshold,
                   args.output)
    return 0


def _add_detection_arguments(p):
    p.add_argument("--data", type=Path, required=True, help="dataset directory with manifest.yaml")
    p.add_argument("--frame", choices=["auto", "spacecraft", "galactic"], default="auto",
                   help="which data of the dataset (default: spacecraft-frame when present)")
    p.add_argument("--spectrum", default="Powerlaw:index=-2",
                   help="test spectrum 'Name:par=value,...' (astromodels; default a power law of index -2 "
                        "with its pivot at the Ei range's centre)")
    p.add_argument("--em-channels", default=None, help="Em bins used, e.g. '0,1' (default all)")


def _configure_logging(verbose):
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("cosi_imaging_plugin").setLevel(level)


def _demo(args):
    summary = run_pipeline("demo_mini_511keV", args.output, progress=not args.quiet)
    for name, entry in summary["sources"].items():
        logger.warning("%s: flux %.4g +- %.2g ph/cm2/s (injected %.4g)", name, entry["flux"],
                       entry.get("flux_error") or float("nan"), entry.get("flux_injected", float("nan")))
    logger.warning("demo outputs in %s (summary.json, PNG figures, fit_results.*)", args.output)
    return 0


def _simulate(args):
    simulate_main(args.config, args.output, overwrite=args.overwrite, progress=not args.quiet)
    return 0


def _deconvolve(args):
    if args.algorithm == "LIRA":
        summary = lira_main(args.data, args.output, parameters=args.parfile, progress=not args.quiet)
        logger.warning("LIRA: %d chains x %d draws, %.1f%% of pixels with R-hat <= 1.01; results in %s",
                       summary["n_chains"], summary["n_samples"], 100 * summary["pixels_converged"], args.output)
        return 0
    summary = deconvolve_main(args.parfile, args.data, args.output, overrides=args.override, rtol=args.rtol,
                              progress=not args.quiet)
    logger.warning("%d iterations, log-likelihood %.6g; results in %s", summary["iterations"],
                   summary["loglikelihood"], args.output)
    return 0


def _fit(args):
    run_pipeline(args.config, args.output, progress=not args.quiet)
    logger.warning("fit outputs in %s", args.output)
    return 0


def _info(args):
    sys.stdout.write(describe_file(args.file) + "\n")
    return 0


def build_parser():
    """The argument parser of ``cosi-imaging``."""
    parser = argparse.ArgumentParser(prog="cosi-imaging", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=1, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job on the built-in mini_511keV dataset")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_output"))
    p.set_defaults(run=_demo)

    p = sub.add_parser("simulate", help="build a synthetic dataset")
    p.add_argument("config", help="built-in name (mini_511keV, dc2_511keV, crab_continuum) or YAML file")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(run=_simulate)

    p = sub.add_parser("deconvolve", help="Richardson-Lucy image deconvolution of a dataset")
    p.add_argument("parfile", nargs="?", help="parameter file (default: the dataset's)")
    p.add_argument("--data", type=Path, required=True, help="dataset directory with manifest.yaml")
    p.add_argument("-o", "--output", type=Path, default=Path("deconvolution_output"))
    p.add_argument("--override", action="append", default=[], metavar="'a:b:c = value'",
                   help="override a parameter (repeatable)")
    p.add_argument("--rtol", type=float, default=None, help="response truncation tolerance (default 1e-3)")
    p.add_argument("--algorithm", choices=["RL", "LIRA"], default="RL",
                   help="RL: the parameter file's Richardson-Lucy; LIRA: Bayesian multiscale deconvolution "
                        "(parfile: a YAML file with a 'lira' section, optional)")
    p.set_defaults(run=_deconvolve)

    p = sub.add_parser("fit", help="RL image + RL-initialized 3ML fit described in YAML")
    p.add_argument("config", help="fit configuration (YAML) or a built-in name")
    p.add_argument("-o", "--output", type=Path, default=Path("fit_output"))
    p.set_defaults(run=_fit)

    p = sub.add_parser("tsmap", help="TS map of a test source (HDF5, FITS and PNG)")
    _add_detection_arguments(p)
    p.add_argument("--kernel", choices=["point", "gaussian", "disk"], default="point")
    p.add_argument("--width", type=float, default=None, help="Gaussian sigma or disk radius in deg")
    p.add_argument("--nside", type=int, default=None, help="test grid NSIDE (default: the model grid's)")
    p.add_argument("-o", "--output", type=Path, default=Path("tsmap_output"))
    p.set_defaults(run=_tsmap)

    p = sub.add_parser("detect", help="multiscale source detection (table, model, figures)")
    _add_detection_arguments(p)
    p.add_argument("--scales", default="0,2,4,8,16", help="kernel widths in deg, 0 for a point (default 0,2,4,8,16)")
    p.add_argument("--threshold", type=float, default=5.0, help="smallest sqrt(TS) of a detection")
    p.add_argument("--max-sources", type=int, default=10, help="searches at most (one source each)")
    p.add_argument("-o", "--output", type=Path, default=Path("detect_output"))
    p.set_defaults(run=_detect)

    p = sub.add_parser("info", help="describe a COSI file (response, histogram, .ori, exposure table)")
    p.add_argument("file", type=Path)
    p.set_defaults(run=_info)
    return parser


def main(argv=None):
    """Entry point of ``cosi-imaging``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    matplotlib.use("Agg")  # the command line never needs a display
    if args.quiet:
        args.verbose = 0
    _configure_logging(args.verbose)
    try:
        return args.run(args)
    except (CosiInputError, FileNotFoundError, FileExistsError) as exc:
        logger.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except Exception as exc:  # a clear message and a non-zero exit, with the traceback when verbose
        logger.error("%s: %s", type(exc).__name__, exc, exc_info=args.verbose > 1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
