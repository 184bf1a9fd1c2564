"""The ``cosi-imaging`` command.

Subcommands:

- ``demo [-o DIR]``: the main job on the built-in ``mini_511keV`` dataset
  (simulate once, RL image, RL-initialized 3ML fit of a bulge + disk, products);
- ``simulate CONFIG -o DIR``: build a synthetic dataset (built-in name or YAML);
- ``deconvolve PARFILE --data DIR [-o OUT]``: image deconvolution of a dataset;
- ``fit CONFIG [-o OUT]``: the demo pipeline on any dataset and model in YAML;
- ``info FILE``: what a COSI file holds.

Every failure ends with a one-line message and a non-zero exit status.
"""
import argparse
import logging
import sys
from pathlib import Path

from .errors import CosiInputError

logger = logging.getLogger("cosi_imaging_plugin")


def _configure_logging(verbose):
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("cosi_imaging_plugin").setLevel(level)


def _demo(args):
    from .pipeline import run_pipeline

    summary = run_pipeline("demo_mini_511keV", args.output, progress=not args.quiet)
    for name, entry in summary["sources"].items():
        logger.warning("%s: flux %.4g +- %.2g ph/cm2/s (injected %.4g)", name, entry["flux"],
                       entry.get("flux_error") or float("nan"), entry.get("flux_injected", float("nan")))
    logger.warning("demo outputs in %s (summary.json, PNG figures, fit_results.*)", args.output)
    return 0


def _simulate(args):
    from .simulate import simulate_main

    simulate_main(args.config, args.output, overwrite=args.overwrite, progress=not args.quiet)
    return 0


def _deconvolve(args):
    from .deconvolution.cli import deconvolve_main

    summary = deconvolve_main(args.parfile, args.data, args.output, overrides=args.override, rtol=args.rtol,
                              progress=not args.quiet)
    logger.warning("%d iterations, log-likelihood %.6g; results in %s", summary["iterations"],
                   summary["loglikelihood"], args.output)
    return 0


def _fit(args):
    from .pipeline import run_pipeline

    run_pipeline(args.config, args.output, progress=not args.quiet)
    logger.warning("fit outputs in %s", args.output)
    return 0


def _info(args):
    from .io.describe import describe_file

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
    p.add_argument("--rtol", type=float, default=1e-3, help="response truncation tolerance")
    p.set_defaults(run=_deconvolve)

    p = sub.add_parser("fit", help="RL image + RL-initialized 3ML fit described in YAML")
    p.add_argument("config", help="fit configuration (YAML) or a built-in name")
    p.add_argument("-o", "--output", type=Path, default=Path("fit_output"))
    p.set_defaults(run=_fit)

    p = sub.add_parser("info", help="describe a COSI file (response, histogram, .ori, exposure table)")
    p.add_argument("file", type=Path)
    p.set_defaults(run=_info)
    return parser


def main(argv=None):
    """Entry point of ``cosi-imaging``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
