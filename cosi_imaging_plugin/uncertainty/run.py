"""A LIRA run on a dataset directory, from a parameter file: maps, summary, plots and a resumable checkpoint.

The parameter file is YAML with one ``lira`` section holding :class:`~.lira.LIRA`'s keywords
and, optionally, ``regions``: named regions whose flux posterior is summarised::

    lira:
      n_chains: 4
      n_samples: 300
      burn_in: 300
      delta: 1000.0
      seed: 0
      regions:
        bulge: {disc: [0.0, 0.0, 10.0]}
        patch: {polygon: [[20, -5], [40, -5], [40, 5], [20, 5]]}
"""
import json
import logging
from pathlib import Path

import numpy as np

from .. import validation
from .._atomic import atomic_path
from ..datasets import COSIDataset
from ..io.manifest import read_manifest
from ..io.yaml_files import read_yaml
from .lira import LIRA
from .plots import save_result_plots

logger = logging.getLogger(__name__)

#: Keys of the ``lira`` section (LIRA's keywords, and the regions summarised).
KEYS = ("n_chains", "n_samples", "burn_in", "thin", "delta", "total_prior", "initial_smoothing",
        "background_priors", "fit_backgrounds", "scale_move", "smoothing_move", "hmc_steps", "seed",
        "checkpoint_every", "n_jobs", "regions")


def read_lira_parameters(path):
    """The ``lira`` section of a parameter file, its keys checked (errors name the file and key)."""
    content = read_yaml(path, "LIRA parameter file", mapping=True)
    validation.check_keys(content, "", str(path), known=("lira",), required=("lira",))
    section = content["lira"] or {}
    validation.check_keys(section, "lira", str(path), known=KEYS)
    for name, region in (section.get("regions") or {}).items():
        validation.check_keys(region, f"lira.regions.{name}", str(path), known=("disc", "polygon"))
    return dict(section)


def lira_main(data_dir, output_dir, parameters=None, frame="spacecraft", progress=True):
    """Run LIRA on a dataset directory and write its outputs.

    Parameters
    ----------
    data_dir : str or pathlib.Path
        Directory with ``manifest.yaml``.
    output_dir : str or pathlib.Path
        Receives ``lira_maps.h5`` (every map, histpy), ``lira_maps_E<i>.fits`` (HEALPix),
        ``lira_summary.json`` (diagnostics, background norms, total and region fluxes),
        PNG figures, and ``lira_checkpoint.npz``, from which a rerun resumes.
    parameters : str or pathlib.Path or dict, optional
        Parameter file (see the module docstring) or its ``lira`` section as a dict.
    frame : {'spacecraft', 'galactic', 'auto'}
    progress : bool

    Returns
    -------
    dict
        The summary written to ``lira_summary.json``.
    """
    options = {} if parameters is None else (
        dict(parameters) if isinstance(parameters, dict) else read_lira_parameters(parameters))
    regions = options.pop("regions", None) or {}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dataset = COSIDataset.from_manifest(read_manifest(data_dir), frame, progress=progress)
    result = LIRA(dataset, checkpoint=output_dir / "lira_checkpoint.npz", progress=progress, **options).run()
    diagnostics = result.diagnostics()
    summary = {
        "n_chains": result.n_chains, "n_samples": result.n_samples,
        "pixels_converged": diagnostics["pixels_converged"],
        "rhat_max": {k: float(np.max(v)) for k, v in diagnostics["rhat"].items()},
        "ess_median": {k: float(np.median(v)) for k, v in diagnostics["ess"].items()},
        "background_norms": result.background_norms(),
        "flux_background_correlation": diagnostics["flux_background_correlation"],
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
