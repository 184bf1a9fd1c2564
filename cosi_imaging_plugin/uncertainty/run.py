"""A LIRA run on a dataset directory, from a parameter file: maps, summary, plots and a resumable checkpoint.

The parameter file is YAML with one ``lira`` section holding :class:`~.lira.LIRA`'s keywords
and, optionally, ``regions``: named regions whose flux posterior is summarised::

    lira:
      n_chains: 4
      n_samples: 300
      burn_in: 300
      delta: 1000.0
      seed: 0
      initial_image: ../rl
      regions:
        bulge: {disc: [0.0, 0.0, 10.0]}
        patch: {polygon: [[20, -5], [40, -5], [40, 5], [20, 5]]}

``initial_image`` is the image the chains start around, as :class:`~.lira.LIRA`'s `initial_image`
(with it come the scale move's brightness regions, the smoothing move and the sibling swaps): the
output folder of ``cosi-imaging deconvolve`` (RL) or its ``results.h5``, whose last image is taken, or
``{file: PATH, name: NAME}``, a histogram of a histpy HDF5 file (e.g. ``{file: lira/lira_maps.h5,
name: mean}``, an earlier run's posterior mean). Paths are relative to the parameter file.
"""
import inspect
import json
import logging
from pathlib import Path

import numpy as np

from .. import validation
from .._atomic import atomic_path
from ..datasets import COSIDataset
from ..errors import AxisMismatchError, CosiFileError, CosiInputError
from ..io.deconvolution_results import load_results
from ..io.histograms import read_image
from ..io.manifest import read_manifest
from ..io.yaml_files import read_yaml
from .lira import LIRA
from .plots import save_result_plots

logger = logging.getLogger(__name__)

#: Keys of the ``lira`` section: LIRA's keywords (all but those this runner sets), and the regions summarised.
KEYS = tuple(name for name in inspect.signature(LIRA).parameters if name not in ("dataset", "checkpoint", "progress")
             ) + ("regions",)
#: Keys of ``initial_image`` given as a mapping (a histogram of a histpy file).
IMAGE_KEYS = ("file", "name")


def read_lira_parameters(path):
    """The ``lira`` section of a parameter file, its keys checked (errors name the file and key)."""
    content = read_yaml(path, "LIRA parameter file", mapping=True)
    validation.check_keys(content, "", str(path), known=("lira",), required=("lira",))
    section = content["lira"] or {}
    validation.check_keys(section, "lira", str(path), known=KEYS)
    for name, region in (section.get("regions") or {}).items():
        validation.check_keys(region, f"lira.regions.{name}", str(path), known=("disc", "polygon"))
    return dict(section)


def read_initial_image(value, base, where=None):
    """The image a parameter file's ``initial_image`` names (see the module docstring).

    Parameters
    ----------
    value : str or pathlib.Path or dict
        An RL output folder or its ``results.h5`` (the last image is taken), or ``{file: PATH, name: NAME}``, a
        histogram of a histpy HDF5 file.
    base : pathlib.Path
        Folder that relative paths start from (the parameter file's).
    where : str, optional
        The parameter file, named in errors.

    Returns
    -------
    histpy.Histogram
        The image ``[lb, Ei]``.

    Raises
    ------
    CosiInputError
        A missing or unreadable file, or one holding no image; the message names ``lira.initial_image``.
    """
    if isinstance(value, dict):
        validation.check_keys(value, "lira.initial_image", where, known=IMAGE_KEYS, required=("file",))
        path, name = Path(base, value["file"]), str(value.get("name", "hist"))
    elif isinstance(value, (str, Path)):
        path, name = Path(base, value), None
    else:
        validation.fail("lira.initial_image", f"expected an RL output folder, its results.h5 or {{file: PATH, "
                        f"name: NAME}}, got {value!r}", where)
    try:
        if name is None:
            image = load_results(path)["results"][-1]["model"]
            logger.info("LIRA: chains start around the last image of %s", path)
        else:
            image = read_image(path, name)
            logger.info("LIRA: chains start around %s [%s]", path, name)
    except CosiInputError as err:
        kind = CosiFileError if isinstance(err, CosiFileError) else CosiInputError
        raise kind(f"{where or 'LIRA parameters'}: lira.initial_image: {err}") from err
    return image


def lira_main(data_dir, output_dir, parameters=None, frame="spacecraft", progress=True, n_jobs=None):
    """Run LIRA on a dataset directory and write its outputs.

    Parameters
    ----------
    data_dir : str or pathlib.Path
        Directory with ``manifest.yaml``.
    output_dir : str or pathlib.Path
        Receives ``lira_maps.h5`` (every map, histpy), ``lira_maps_E<i>.fits`` (HEALPix),
        ``lira_summary.json`` (diagnostics, the sweep's moves, the worker processes, the initial image,
        background norms, total and region fluxes),
        PNG figures, and ``lira_checkpoint.npz``, from which a rerun resumes.
    parameters : str or pathlib.Path or dict, optional
        Parameter file (see the module docstring) or its ``lira`` section as a dict.
    frame : {'spacecraft', 'galactic', 'auto'}
    progress : bool
    n_jobs : int, optional
        Worker processes where the parameters give no ``n_jobs`` (None: :class:`~.lira.LIRA`'s default).
        The command passes the cores: its entry point runs under the main guard, so no worker runs it again.

    Returns
    -------
    dict
        The summary written to ``lira_summary.json``.
    """
    options = {} if parameters is None else (
        dict(parameters) if isinstance(parameters, dict) else read_lira_parameters(parameters))
    regions = options.pop("regions", None) or {}
    if options.get("n_jobs") is None and n_jobs is not None:
        options["n_jobs"] = n_jobs
    where, base = (None, Path.cwd()) if parameters is None or isinstance(parameters, dict) else (
        str(parameters), Path(parameters).resolve().parent)
    image_source = options.get("initial_image")
    if image_source is not None and not hasattr(image_source, "axes"):
        options["initial_image"] = read_initial_image(image_source, base, where)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dataset = COSIDataset.from_manifest(read_manifest(data_dir), frame, progress=progress)
    try:
        lira = LIRA(dataset, checkpoint=output_dir / "lira_checkpoint.npz", progress=progress, **options)
    except AxisMismatchError as err:
        if "initial_image" not in options:
            raise
        raise AxisMismatchError(f"{where or 'LIRA parameters'}: lira.initial_image ({image_source}): {err}") from err
    result = lira.run()
    diagnostics = result.diagnostics()
    summary = {
        "n_chains": result.n_chains, "n_samples": result.n_samples,
        "pixels_converged": diagnostics["pixels_converged"],
        "rhat_max": {k: float(np.max(v)) for k, v in diagnostics["rhat"].items()},
        "ess_median": {k: float(np.median(v)) for k, v in diagnostics["ess"].items()},
        "background_norms": result.background_norms(),
        "flux_background_correlation": diagnostics["flux_background_correlation"],
        "moves": lira.moves(),
        "workers": min(lira.n_jobs, lira.n_chains),
        "initial_image": (image_source if image_source is None or isinstance(image_source, dict)
                          else str(image_source) if isinstance(image_source, (str, Path)) else "given"),
        "total_flux": result.total_flux().as_dict(),
        "regions": {name: result.region_flux(**region).as_dict() for name, region in regions.items()},
    }
    files = [result.write(output_dir / "lira_maps.h5")]
    files += [result.write_fits(output_dir / f"lira_maps_E{e}.fits", energy_index=e)
              for e in range(result.draws.shape[3])]
    files += save_result_plots(result, output_dir)
    summary["files"] = [Path(f).name for f in files]  # within the output folder, wherever it ends up
    with atomic_path(output_dir / "lira_summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    logger.info("LIRA: %d chains x %d draws, %.1f%% of pixels with R-hat <= 1.01; outputs in %s", result.n_chains,
                result.n_samples, 100 * summary["pixels_converged"], output_dir)
    return summary
