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
- ``info PATH``: what a COSI file, a dataset or an output folder of this package holds.

Every command that writes follows one output-folder policy
(:class:`~cosi_imaging_plugin.outputs.OutputFolder`): a non-empty folder is refused
unless ``--overwrite`` is given, writability is checked before any work, results are
built beside the folder and swapped in at the end, with a ``run.log``. SIGINT and
SIGTERM clean up; an interrupted ``deconvolve`` keeps its last completed iteration
and prints the command that resumes it (``deconvolve --resume DIR``).

Results are printed on standard output; log messages go to standard error
(warnings by default, ``-v`` for information, ``-vv`` for debugging) and progress
bars too (``-q`` turns them off). Every failure ends with a one-line message and a
non-zero exit status.
"""
import argparse
import json
import logging
import shlex
import signal
import sys
import time
from pathlib import Path

import matplotlib
import numba
import numpy as np
from astromodels.functions.function import get_function
from tqdm.contrib.logging import logging_redirect_tqdm

from . import __version__
from ._atomic import atomic_path
from .datasets import COSIDataset
from .deconvolution import ImageDeconvolution
from .deconvolution.parameters import save_options
from .detection import BackgroundEstimator, SourceDetector, TSMapEstimator
from .distributed import MAPPING_PLACES, use_scheduler
from .errors import CosiFileError, CosiInputError
from .io.describe import describe_path
from .io.manifest import read_manifest
from .outputs import Interrupted, OutputFolder, interrupts_from_signals
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


#: The record of a deconvolution's inputs in its output folder, read by ``--resume``.
DECONVOLVE_RECORD = "deconvolve.json"


def _resume_record(directory):
    """The inputs recorded by an earlier deconvolution in `directory` (for ``--resume``)."""
    directory = Path(directory)
    record = directory / DECONVOLVE_RECORD
    if not record.is_file() or not (directory / "results.h5").is_file():
        raise CosiFileError(f"{directory} holds no deconvolution to resume ({DECONVOLVE_RECORD} and results.h5 "
                            "are written by cosi-imaging deconvolve)")
    return json.loads(record.read_text())


def deconvolve_main(parfile, data_dir, output_dir, overrides=(), rtol=None, cds="auto", progress=True,
                    overwrite=False, resume=None):
    """Run an image deconvolution on a data directory and write results and plots.

    The parameters are checked in full before the data are read. If the run is
    interrupted (SIGINT, SIGTERM: ``KeyboardInterrupt``), the last completed iteration
    is saved into `output_dir` and the command that resumes it is logged.

    Parameters
    ----------
    parfile : str or pathlib.Path or None
        Parameter file; None uses the manifest's ``parameter_file``.
    data_dir : str or pathlib.Path or None
        Directory with ``manifest.yaml`` (see :mod:`cosi_imaging_plugin.io.manifest`);
        None with `resume`.
    output_dir : str or pathlib.Path or None
        Receives ``results.h5``, ``results.fits``, ``parameters.yaml`` (the parameters
        used), ``deconvolve.json`` (the inputs, for resuming), ``run.log`` and PNG plots
        (``convergence.png``, ``model_E<i>.png``, ``model_E<i>_log.png``). The parameter
        file's ``save_results:directory`` is not used. None with `resume`: the resumed folder.
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
    overwrite : bool
        Replace a non-empty `output_dir` made by this package.
    resume : str or pathlib.Path, optional
        An earlier output folder of this function (finished or interrupted): its data,
        response tolerance and parameters are used, and the run continues from its last
        iteration up to ``iteration_max`` (raise it with an override to run further).

    Returns
    -------
    dict
        ``iterations``, ``loglikelihood`` (final, summed), ``background_normalization``
        (final), ``files`` (paths written).
    """
    frames = {"auto": "auto", "scatt": "spacecraft", "galactic": "galactic"}
    if resume is not None:
        record = _resume_record(resume)
        data_dir, cds, rtol = record["data"], record["cds"], record["rtol"]
        parfile = Path(resume) / "parameters.yaml"
        if output_dir is None or Path(output_dir).resolve() == Path(resume).resolve():
            output_dir, overwrite = resume, True
    if cds not in frames:
        raise CosiInputError(f"cds must be one of {list(frames)}, got {cds!r}")
    if data_dir is None or output_dir is None:
        raise CosiInputError("give the dataset (--data) and the output folder, or --resume DIR")
    manifest = read_manifest(data_dir)
    if parfile is None:
        if "parameter_file" not in manifest:
            raise CosiInputError(f"no parameter file given and {manifest.path} names none ('parameter_file')")
        parfile = manifest["parameter_file"]
    deconv = ImageDeconvolution()
    deconv.read_parameterfile(parfile)
    for text in overrides:
        deconv.override_parameter(text)
    _, _, only_final = save_options(deconv.parameter.get("deconvolution:parameter") or {})
    # results go to output_dir, not to the parameter file's directory
    deconv.override_parameter("deconvolution:parameter:save_results:activate = False")
    deconv.check_parameters()
    options = {} if rtol is None else {"rtol": rtol}
    output_dir = Path(output_dir)
    record = {"data": str(manifest.directory), "cds": cds, "rtol": rtol, "parameter_file": str(Path(parfile).resolve()),
              "overrides": list(overrides), "resumed_from": None if resume is None else str(Path(resume).resolve())}
    saved = False
    try:
        with OutputFolder(output_dir, overwrite=overwrite) as out:
            out.record_inputs({"data": manifest.directory, "parameter_file": parfile})
            deconv.set_dataset(COSIDataset.from_manifest(manifest, frames[cds], name="data", progress=progress,
                                                         **options))
            if resume is not None:
                deconv.resume(Path(resume) / "results.h5")
            else:
                deconv.initialize()
            try:
                results = deconv.run_deconvolution(progress=progress)
            except KeyboardInterrupt:
                if not deconv.results:
                    raise
                _write_deconvolution(deconv, out.work, only_final, {**record, "complete": False})
                out.keep_on_interrupt = saved = True
                raise
            files = _write_deconvolution(deconv, out.work, only_final, {**record, "complete": True})
    except KeyboardInterrupt:
        if saved:
            iteration = deconv.results[-1]["iteration"]
            logger.warning("interrupted: iteration %d saved in %s; resume with: cosi-imaging deconvolve --resume %s",
                           iteration, output_dir, shlex.quote(str(output_dir)))
        raise
    # the paths written in the temporary folder, under their final name
    files = {key: [output_dir / Path(v).name for v in value] if isinstance(value, list) else
             output_dir / Path(value).name for key, value in files.items()}
    final = results[-1]
    logger.info("deconvolution done: %d iterations, log-likelihood %.8g, outputs in %s", final["iteration"],
                float(np.sum(final["loglikelihood"])), output_dir)
    return {"iterations": final["iteration"], "loglikelihood": float(np.sum(final["loglikelihood"])),
            "background_normalization": final["background_normalization"], "files": files}


def _write_deconvolution(deconv, directory, only_final, record):
    """Results, parameters, the inputs' record and plots of a deconvolution, into `directory`."""
    files = deconv.save_results(directory, only_final_result=only_final)
    files["parameters"] = deconv.parameter.write(directory / "parameters.yaml")
    with atomic_path(directory / DECONVOLVE_RECORD) as tmp:
        tmp.write_text(json.dumps({**record, "iterations": deconv.results[-1]["iteration"]}, indent=2))
    files["record"] = directory / DECONVOLVE_RECORD
    files["plots"] = save_plots(deconv.results, directory, mask=deconv.mask)
    return files


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


def _fitted_backgrounds(args, dataset, spectrum, channels, out):
    """Background norms fitted with an exclusion mask when ``--mask-radius`` is given (else None), and a line."""
    if args.mask_radius is None:
        return None, []
    estimator = BackgroundEstimator(spectrum, radius=args.mask_radius, threshold=args.mask_threshold,
                                    em_channels=channels)
    background = estimator.run(dataset, progress=not args.quiet)
    background.write(out.work / "background.h5")
    save_figure(plot_sky_map(background.sky_mask, title="exclusion mask", unit="excluded"),
                out.work / "exclusion_mask.png")
    norms = ", ".join(f"{key} {value:.4g} +- {background.value_errors[key]:.2g}"
                      for key, value in background.values.items())
    return background.norms, [f"backgrounds fitted clear of {len(background.history) - 1} masked peak(s): {norms}"]


def _tsmap(args, out):
    dataset, spectrum, channels = _detection_inputs(args)
    out.record_inputs({"data": args.data})
    norms, lines = _fitted_backgrounds(args, dataset, spectrum, channels, out)
    estimator = TSMapEstimator(spectrum, kernel=args.kernel, width=args.width,
                               nside=args.nside or dataset.model_axes[0].nside, em_channels=channels,
                               selection_optional="all")
    result = estimator.run(dataset, background_norms=norms, progress=not args.quiet)
    result.write(out.work / "ts_map.h5")
    result.write_fits(out.work / "ts_map.fits")
    pixel, ts = result.peak("ts")
    lon, lat = (float(v) for v in result.axis.pix2ang(pixel, lonlat=True))
    title = f"sqrt(TS), {args.kernel} kernel" + (f" of {args.width:g} deg" if args.width else "")
    save_figure(plot_sky_map(result["sqrt_ts"], title=title, markers=[(lon, lat)], unit="sqrt(TS)"),
                out.work / "sqrt_ts.png")
    return lines + [f"peak TS {ts:.1f} at (l, b) = ({lon:.2f}, {lat:.2f})"]


def _detect(args, out):
    dataset, spectrum, channels = _detection_inputs(args)
    out.record_inputs({"data": args.data})
    norms, background_lines = _fitted_backgrounds(args, dataset, spectrum, channels, out)
    scales = [float(s) for s in args.scales.split(",")]
    detector = SourceDetector(spectrum, scales=scales, threshold=args.threshold, em_channels=channels,
                              max_iterations=args.max_sources)
    table = detector.run(dataset, background_norms=norms, progress=not args.quiet)
    with atomic_path(out.work / "detections.ecsv") as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
    if len(table):
        model = table.to_model()
        with atomic_path(out.work / "detections_model.yml") as tmp:
            model.save(str(tmp), overwrite=True)
    residual = TSMapEstimator(spectrum, nside=dataset.model_axes[0].nside, em_channels=channels).run(
        dataset, null_model=table.to_model() if len(table) else None, background_norms=norms,
        progress=not args.quiet)
    residual.write(out.work / "residual_ts_map.h5")
    markers = [(float(r["l"]), float(r["b"])) for r in table]
    save_figure(plot_sky_map(residual["sqrt_ts"], title=f"residual sqrt(TS) after {len(table)} detection(s)",
                             markers=markers, unit="sqrt(TS)"), out.work / "detections.png")
    lines = [f"{row['name']}: (l, b) = ({row['l']:.2f}, {row['b']:.2f}), scale {row['scale']:g} deg, "
             f"sqrt(TS) {row['sqrt_ts']:.1f}, flux {row['flux']:.3g} +- {row['flux_err']:.2g} ph cm-2 s-1"
             for row in table]
    return background_lines + lines + [f"{len(table)} source(s) above sqrt(TS) {args.threshold:g}"]


def _add_detection_arguments(p):
    p.add_argument("--data", type=Path, required=True, help="dataset directory with manifest.yaml")
    p.add_argument("--frame", choices=["auto", "spacecraft", "galactic"], default="auto",
                   help="which data of the dataset (default: spacecraft-frame when present)")
    p.add_argument("--spectrum", default="Powerlaw:index=-2",
                   help="test spectrum 'Name:par=value,...' (astromodels; default a power law of index -2 "
                        "with its pivot at the Ei range's centre)")
    p.add_argument("--em-channels", default=None, help="Em bins used, e.g. '0,1' (default all)")
    p.add_argument("--mask-radius", type=float, default=None,
                   help="fit the background norms first, clear of an exclusion mask of discs of this radius (deg) "
                        "around the significant peaks (default: norms of 1)")
    p.add_argument("--mask-threshold", type=float, default=5.0,
                   help="sqrt(TS) of a peak the exclusion mask covers (default 5)")


def _demo(args):
    return _fit(args, "demo_mini_511keV")


def _simulate(args):
    manifest = simulate_main(args.config, args.output, overwrite=args.overwrite, progress=not args.quiet)
    truth = manifest.truth
    return [f"dataset '{manifest.config.get('name', manifest.directory.name)}': {truth['n_scatt_bins']} ScAtt bins, "
            f"{truth['livetime_s']:.6g} s live time, {truth['observed_counts']['data_scatt']} counts "
            f"(expected {truth['expected_total_counts']:.6g})"]


def _deconvolve(args):
    if args.resume is None and args.data is None:
        raise CosiInputError("deconvolve needs --data DIR (a dataset), or --resume DIR (an earlier output folder)")
    if args.algorithm == "LIRA":
        return _lira(args)
    output = args.output if args.output is not None or args.resume is not None else Path("deconvolution_output")
    summary = deconvolve_main(args.parfile, args.data, output, overrides=args.override, rtol=args.rtol,
                              progress=not args.quiet, overwrite=args.overwrite, resume=args.resume)
    norms = summary["background_normalization"]
    lines = [f"{summary['iterations']} iterations, log-likelihood {summary['loglikelihood']:.10g}"]
    lines += [f"background {name}: norm {float(np.ravel(value)[0]):.4g}" for name, value in (norms or {}).items()
              if np.size(value) == 1]
    return lines


def _lira(args):
    """LIRA into a new output folder, or on in the folder of an earlier run (--resume: from its checkpoint)."""
    if args.data is None:
        raise CosiInputError("LIRA needs --data DIR, also with --resume")
    # the command runs under the main guard, so its chains can run in workers (one per chain, up to the cores)
    jobs = numba.get_num_threads()
    if args.resume is not None:  # the checkpoint in the folder carries the run on
        output = args.resume
        summary = lira_main(args.data, output, parameters=args.parfile, progress=not args.quiet, n_jobs=jobs)
    else:
        output = args.output or Path("deconvolution_output")
        with OutputFolder(output, overwrite=args.overwrite) as out:
            out.keep_on_interrupt = True  # its checkpoint lets --resume go on
            out.record_inputs({"data": args.data})
            summary = lira_main(args.data, out.work, parameters=args.parfile, progress=not args.quiet, n_jobs=jobs)
    return [f"LIRA: {summary['n_chains']} chains x {summary['n_samples']} draws, "
            f"{100 * summary['pixels_converged']:.1f}% of pixels with R-hat <= 1.01; results in {output}"]


def _fit(args, config=None):
    summary = run_pipeline(config or args.config, args.output, progress=not args.quiet, overwrite=args.overwrite)
    return summary_table(summary)


def summary_table(summary):
    """The lines of the results table of a fit (``summary.json``): parameters, fluxes, backgrounds."""
    lo, hi = summary["band_kev"]
    lines = [f"{'parameter':<48} {'value':>12} {'error':>10}  unit"]
    for path, entry in summary["parameters"].items():
        lines.append(f"{path:<48} {entry['value']:>12.5g} {entry['error']:>10.3g}  {entry['unit']}")
    lines.append(f"{'flux in ' + f'{lo:g}-{hi:g} keV':<48} {'value':>12} {'error':>10}  injected (pull)")
    for name, entry in summary["sources"].items():
        error = entry.get("flux_error")
        injected = (f"{entry['flux_injected']:.5g} ({entry['flux_pull']:+.2f})" if "flux_pull" in entry else
                    f"{entry['flux_injected']:.5g}" if "flux_injected" in entry else "")
        lines.append(f"{name:<48} {entry['flux']:>12.5g} {error if error is None else format(error, '.3g'):>10}  "
                     f"ph cm-2 s-1 {injected}")
    for name, entry in summary["backgrounds"].items():
        injected = f"  injected {entry['norm_injected']:.4g}" if "norm_injected" in entry else ""
        lines.append(f"{'background ' + name:<48} {entry['norm']:>12.5g} {entry.get('error', float('nan')):>10.3g}"
                     f"{injected}")
    return lines


def _info(args):
    return [describe_path(args.file)]


def _global_options(parser, suppress):
    """-v, -q: accepted before and after the subcommand (after it, without overriding what came before)."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument("-v", "--verbose", action="count", help="more messages: -v information, -vv debugging",
                        **(default or {"default": 0}))
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings and results only",
                        **default)
    parser.add_argument("--scheduler", metavar="ADDRESS", help="shard the engine over the workers of this Dask "
                        "scheduler (e.g. tcp://host:8786)", **(default or {"default": None}))
    parser.add_argument("--mapping-on", choices=MAPPING_PLACES, help="with --scheduler (or a scheduler named in "
                        "a fit configuration), where the sky mapping (the CCM) lives: auto (on the workers when "
                        "their memory holds it besides their shards, else on the client), workers or client",
                        **(default or {"default": "auto"}))


def _output_options(p, default):
    p.add_argument("-o", "--output", type=Path, default=default,
                   help="output folder" + (f" (default {default})" if default else ""))
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty output folder made by cosi-imaging (only once the new one is complete)")


def build_parser():
    """The argument parser of ``cosi-imaging``."""
    parser = argparse.ArgumentParser(prog="cosi-imaging", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, run, help_text, writes=False):
        p = sub.add_parser(name, help=help_text, parents=[common])
        p.set_defaults(run=run, wraps_output=writes)
        return p

    p = command("demo", _demo, "the main job on the built-in mini_511keV dataset")
    _output_options(p, Path("demo_output"))

    p = command("simulate", _simulate, "build a synthetic dataset")
    p.add_argument("config", help="built-in name (mini_511keV, dc2_511keV, crab_continuum) or YAML file")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder made by cosi-imaging")

    p = command("deconvolve", _deconvolve, "Richardson-Lucy image deconvolution of a dataset")
    p.add_argument("parfile", nargs="?", help="parameter file (default: the dataset's)")
    p.add_argument("--data", type=Path, default=None, help="dataset directory with manifest.yaml")
    _output_options(p, None)
    p.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="continue the deconvolution saved in DIR (interrupted or finished; raise iteration_max with "
                        "--override to run further); writes into DIR unless -o is given")
    p.add_argument("--override", action="append", default=[], metavar="'a:b:c = value'",
                   help="override a parameter (repeatable)")
    p.add_argument("--rtol", type=float, default=None, help="response truncation tolerance (default 1e-3)")
    p.add_argument("--algorithm", choices=["RL", "LIRA"], default="RL",
                   help="RL: the parameter file's Richardson-Lucy; LIRA: Bayesian multiscale deconvolution "
                        "(parfile: a YAML file with a 'lira' section, optional; --resume continues from its "
                        "checkpoint)")

    p = command("fit", _fit, "RL image + RL-initialized 3ML fit described in YAML")
    p.add_argument("config", help="fit configuration (YAML) or a built-in name")
    _output_options(p, Path("fit_output"))

    p = command("tsmap", _tsmap, "TS map of a test source (HDF5, FITS and PNG)", writes=True)
    _add_detection_arguments(p)
    p.add_argument("--kernel", choices=["point", "gaussian", "disk"], default="point")
    p.add_argument("--width", type=float, default=None, help="Gaussian sigma or disk radius in deg")
    p.add_argument("--nside", type=int, default=None, help="test grid NSIDE (default: the model grid's)")
    _output_options(p, Path("tsmap_output"))

    p = command("detect", _detect, "multiscale source detection (table, model, figures)", writes=True)
    _add_detection_arguments(p)
    p.add_argument("--scales", default="0,2,4,8,16", help="kernel widths in deg, 0 for a point (default 0,2,4,8,16)")
    p.add_argument("--threshold", type=float, default=5.0, help="smallest sqrt(TS) of a detection")
    p.add_argument("--max-sources", type=int, default=10, help="searches at most (one source each)")
    _output_options(p, Path("detect_output"))

    p = command("info", _info, "describe a COSI file, a dataset or an output folder of cosi-imaging")
    p.add_argument("file", type=Path, metavar="PATH")
    return parser


def configure_console(verbose, quiet):
    """Log records of the package to standard error: warnings, -v information, -vv debugging.

    The package's logger passes everything (DEBUG) on, so that ``run.log`` gets it all;
    the console handler filters. Third-party loggers show warnings, or everything with -vv.

    Returns
    -------
    logging.Handler
        The console handler.
    """
    level = logging.WARNING if quiet or verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = _console_handler(level)
    logger.handlers = [h for h in logger.handlers if isinstance(h, logging.NullHandler)] + [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    # third-party records (astromodels, threeML, Python warnings) reach the root logger: one console
    # handler there too, so that tqdm's redirection writes them between the bars like the package's own
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not getattr(h, "cosi_console", False)] + [_console_handler(level)]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
    logging.captureWarnings(True)
    return handler


def _console_handler(level):
    handler = logging.StreamHandler(sys.stderr)
    handler.cosi_console = True
    # a filter rather than a level: tqdm's logging redirection copies the filters of the handler it replaces
    handler.addFilter(lambda record: record.levelno >= level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    return handler


def _run(args):
    if not args.wraps_output:
        return args.run(args)
    with OutputFolder(args.output, overwrite=args.overwrite) as out:
        return args.run(args, out)


def main(argv=None):
    """Entry point of ``cosi-imaging``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    matplotlib.use("Agg")  # the command line never needs a display
    configure_console(args.verbose, args.quiet)
    try:
        return _main(args)
    finally:
        release_console()


def release_console():
    """Undo what :func:`configure_console` did outside the package's logger (for callers of :func:`main`)."""
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not getattr(h, "cosi_console", False)]
    logging.captureWarnings(False)


def _main(args):
    try:
        with use_scheduler(args.scheduler, mapping_on=args.mapping_on), interrupts_from_signals(), \
                logging_redirect_tqdm(loggers=[logger, logging.getLogger()]):
            lines = _run(args)
        sys.stdout.write("".join(f"{line}\n" for line in lines or []))
        output = getattr(args, "output", None) or getattr(args, "resume", None)
        if output is not None and args.command != "info":
            logger.info("outputs in %s", output)
        return 0
    except (CosiInputError, FileNotFoundError, FileExistsError) as exc:
        logger.error("%s", exc)
        return 2
    except Interrupted as exc:
        logger.error("interrupted by %s", signal.Signals(exc.signum).name)
        return exc.exit_status
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except Exception as exc:  # a clear message and a non-zero exit, with the traceback when verbose
        logger.error("%s: %s", type(exc).__name__, exc, exc_info=args.verbose > 1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
