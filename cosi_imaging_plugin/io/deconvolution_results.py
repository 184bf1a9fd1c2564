"""Saving, loading and resuming deconvolution results.

Two files are written (atomically) into the output directory:

``results.h5``
    One HDF5 file. Root attributes: ``format``, ``algorithm``, ``dataset_names``
    (JSON), ``parameters`` (the full parameter tree as YAML) and
    ``final_iteration``. One group ``iteration<N>`` per saved iteration (all, or
    only the final one) holding the images as histpy histograms (``model``,
    ``delta_model``, ``processed_delta_model`` and, for MAP_RL, ``prior_filter``)
    and as attributes ``alpha``, ``loglikelihood`` (one per dataset),
    ``background_normalization`` (JSON ``{dataset: {component: norm}}``) and,
    with priors, ``log_posterior`` and ``log_prior``. The final group is enough to
    resume (:func:`load_results`, ``ImageDeconvolution.resume``).
``results.fits``
    A binary table ``RESULTS`` with one row per iteration: ``ITERATION``,
    ``ALPHA``, ``LOGLIKELIHOOD`` (summed over datasets), ``LOGL_<dataset>``,
    ``BKG_<component>`` (one dataset) or ``BKG_<dataset>_<component>``, and
    ``LOG_POSTERIOR`` when priors are used.
"""
import json
import logging
from pathlib import Path

import h5py
import numpy as np
from astropy.table import Table
from histpy import Histogram

from .._atomic import atomic_path
from ..errors import CosiFileError
from .histograms import open_hdf5
from .yaml_files import parse_yaml, yaml_text

logger = logging.getLogger(__name__)

RESULTS_H5 = "results.h5"
RESULTS_FITS = "results.fits"
FORMAT = "cosi_imaging_plugin.deconvolution.results/1"  # the format's name, not this module's path: files carry it
IMAGE_KEYS = ("model", "delta_model", "processed_delta_model", "prior_filter")


def _nested_norms(norms, dataset_names):
    """Background norms as ``{dataset: {component: norm}}`` (results hold a flat dict for one dataset)."""
    if len(dataset_names) == 1 and not all(isinstance(v, dict) for v in norms.values()):
        return {dataset_names[0]: {k: float(v) for k, v in norms.items()}}
    if len(dataset_names) == 1 and not norms:
        return {dataset_names[0]: {}}
    return {ds: {k: float(v) for k, v in comps.items()} for ds, comps in norms.items()}


def _flat_norms(nested, dataset_names):
    if len(dataset_names) == 1:
        return dict(nested.get(dataset_names[0], {}))
    return nested


def results_table(results, dataset_names):
    """The per-iteration numbers as an astropy Table.

    Parameters
    ----------
    results : list of dict
        ``ImageDeconvolution.results``.
    dataset_names : list of str
        Dataset names, in the order of the ``loglikelihood`` lists.

    Returns
    -------
    astropy.table.Table
    """
    table = Table()
    table["ITERATION"] = np.array([r["iteration"] for r in results], dtype=np.int64)
    table["ALPHA"] = np.array([float(r.get("alpha", 1.0)) for r in results])
    table["LOGLIKELIHOOD"] = np.array([float(np.sum(r["loglikelihood"])) for r in results])
    for i, name in enumerate(dataset_names):
        table[f"LOGL_{name}"] = np.array([float(r["loglikelihood"][i]) for r in results])
    nested = [_nested_norms(r["background_normalization"], dataset_names) for r in results]
    if results:
        for ds in dataset_names:
            for comp in nested[0].get(ds, {}):
                column = f"BKG_{comp}" if len(dataset_names) == 1 else f"BKG_{ds}_{comp}"
                table[column] = np.array([n[ds][comp] for n in nested])
    if results and results[0].get("log_posterior") is not None:
        table["LOG_POSTERIOR"] = np.array([float(r["log_posterior"]) for r in results])
    table.meta["EXTNAME"] = "RESULTS"
    return table


def save_results(results, directory, only_final_result=False, algorithm=None, dataset_names=None,
                 parameters=None):
    """Write ``results.h5`` and ``results.fits`` into `directory`, atomically.

    Parameters
    ----------
    results : list of dict
        ``ImageDeconvolution.results`` (at least one iteration).
    directory : str or pathlib.Path
        Output directory (created if needed).
    only_final_result : bool
        Store the images of the final iteration only (the FITS table always has every iteration).
    algorithm : str, optional
        Algorithm name, stored for resuming.
    dataset_names : list of str, optional
        Dataset names (default ``dataset0, dataset1, ...``).
    parameters : dict, optional
        Full parameter tree (nested form), stored as YAML for resuming.

    Returns
    -------
    dict
        Paths ``{"hdf5": ..., "fits": ...}``.
    """
    if not results:
        raise CosiFileError("no results to save: run the deconvolution first")
    directory = Path(directory)
    if dataset_names is None:
        dataset_names = [f"dataset{i}" for i in range(len(results[0]["loglikelihood"]))]
    dataset_names = list(dataset_names)
    h5_path = directory / RESULTS_H5
    fits_path = directory / RESULTS_FITS
    saved = results[-1:] if only_final_result else results
    with atomic_path(h5_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["algorithm"] = algorithm or ""
            f.attrs["dataset_names"] = json.dumps(dataset_names)
            f.attrs["parameters"] = yaml_text(parameters) if parameters is not None else ""
            f.attrs["final_iteration"] = int(results[-1]["iteration"])
            for result in saved:
                group = f.create_group(f"iteration{int(result['iteration'])}")
                group.attrs["iteration"] = int(result["iteration"])
                group.attrs["alpha"] = float(result.get("alpha", 1.0))
                group.attrs["loglikelihood"] = np.asarray(result["loglikelihood"], dtype=np.float64)
                group.attrs["background_normalization"] = json.dumps(
                    _nested_norms(result["background_normalization"], dataset_names))
                if result.get("log_posterior") is not None:
                    group.attrs["log_posterior"] = float(result["log_posterior"])
                    group.attrs["log_prior"] = json.dumps({k: float(v) for k, v in result["log_prior"].items()})
        # histpy writes each histogram itself (it appends to the file)
        for result in saved:
            for key in IMAGE_KEYS:
                if isinstance(result.get(key), Histogram):
                    result[key].write(tmp, name=f"iteration{int(result['iteration'])}/{key}")
    with atomic_path(fits_path) as tmp:
        results_table(results, dataset_names).write(tmp, format="fits", overwrite=True)
    logger.info("saved %d iteration(s) of results to %s and %s", len(saved), h5_path, fits_path)
    return {"hdf5": h5_path, "fits": fits_path}


def load_results(path):
    """Read a ``results.h5`` written by :func:`save_results`.

    Parameters
    ----------
    path : str or pathlib.Path
        The HDF5 file, or the directory holding ``results.h5``.

    Returns
    -------
    dict
        ``results`` (list of result dicts, as ``ImageDeconvolution.results``, one per
        saved iteration), ``algorithm``, ``dataset_names``, ``parameters`` (dict or None)
        and ``final_iteration``.

    Raises
    ------
    CosiFileError
        Missing file, or a file not written by :func:`save_results`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_H5
    with open_hdf5(path, "deconvolution results file") as f:
        if f.attrs.get("format") != FORMAT:
            raise CosiFileError(f"{path} is not a deconvolution results file (format attribute "
                                f"{f.attrs.get('format')!r}, expected {FORMAT!r})")
        dataset_names = json.loads(f.attrs["dataset_names"])
        text = f.attrs["parameters"]
        parameters = parse_yaml(text, f"{path}: stored parameters") if text else None
        meta = []
        for name, group in f.items():
            attrs = group.attrs
            entry = {
                "iteration": int(attrs["iteration"]),
                "alpha": float(attrs["alpha"]),
                "loglikelihood": [float(v) for v in np.atleast_1d(attrs["loglikelihood"])],
                "background_normalization": _flat_norms(json.loads(attrs["background_normalization"]),
                                                        dataset_names),
            }
            if "log_posterior" in attrs:
                entry["log_posterior"] = float(attrs["log_posterior"])
                entry["log_prior"] = json.loads(attrs["log_prior"])
            meta.append((name, [k for k in IMAGE_KEYS if k in group], entry))
        out = {"algorithm": str(f.attrs["algorithm"]), "dataset_names": dataset_names, "parameters": parameters,
               "final_iteration": int(f.attrs["final_iteration"])}
    if not meta:
        raise CosiFileError(f"{path} holds no iteration")
    results = []
    for name, keys, entry in sorted(meta, key=lambda m: m[2]["iteration"]):
        for key in keys:
            entry[key] = Histogram.open(path, name=f"{name}/{key}")
        results.append(entry)
    out["results"] = results
    return out
