"""Simulated COSI datasets: response, orbit, exposure, CCM, Poisson counts and a manifest.

:func:`simulate_dataset` turns a :class:`SimulationConfig` into a directory of
files in the COSI formats, all made by this package's own writers:

=====================================  ===========================================================
file                                   content
=====================================  ===========================================================
``response.h5``                        synthetic FullDetectorResponse, version 1 (dense)
``orientation.ori``                    attitude timeline of the simulated orbit
``exposure_table.fits``                ScAtt bins of the orientation at ``scatt_nside``
``ccm.hdf5``                           coordinate conversion matrix [ScAtt, lb, NuLambda] (s)
``data_scatt.hdf5``                    Poisson counts [ScAtt, Em, Phi, PsiChi(spacecraftframe)], COO
``bkg_<name>.hdf5``                    background templates (expected counts), axes of the data
``data_galactic.hdf5``                 with ``galactic``: counts [Time, Em, Phi, PsiChi(galactic)]
``bkg_<name>_galactic.hdf5``           with ``galactic``: the templates rotated to Galactic PsiChi
``imagedeconvolution_parfile.yml``     deconvolution parameters matching the binning and backgrounds
``manifest.yaml``                      every file by role, the configuration and the injected truth
=====================================  ===========================================================

The sky is folded exactly as the 3ML plugin folds it: the sources are rasterized
on the CCM's Galactic model grid and their spectra integrated over the Ei bins
(:func:`~cosi_imaging_plugin.sky.source_images.source_image`), mapped through
the CCM to per-ScAtt source rows and folded through the column-compressed
response read back from ``response.h5`` (truncated at ``response_rtol``). The
expected counts and their Poisson draws, local and Galactic, are made by
:mod:`.draws`; the configuration is checked by :mod:`.config`.

The output folder follows :class:`~cosi_imaging_plugin.outputs.OutputFolder`: built
beside ``output_dir`` and renamed at the end, so an interrupted run leaves no
complete-looking directory, with a ``run.log``.
"""
import logging
import math
import time
from pathlib import Path

import astropy.units as u
import healpy as hp
import numpy as np
import sparse
from histpy import Axes, Axis, HealpixAxis, Histogram

from .. import __version__
from ..binning import IMAGE_UNIT_TEXT, is_nested
from ..engine import CCMMapping, ColumnResponse
from ..exposure import ExposureTable, attitude_bins, coordsys_conversion_matrix, write_ccm
from ..instrument.orbit import simulate_orbit
from ..instrument.response_generator import generate_response
from ..io.histograms import write_histogram
from ..io.manifest import SIMULATED_FORMAT, read_manifest, write_manifest
from ..io.parameters import DeconvolutionParameters
from ..outputs import OutputFolder
from ..sky.rasterize import Rasterizer
from ..sky.source_images import is_point_source, point_source_direction, source_image
from ..sky.sources import build_sources, describe_source
from .config import coerce_config
from .draws import Components, draw

logger = logging.getLogger(__name__)

#: File names of the written roles.
FILES = {
    "response": "response.h5",
    "orientation": "orientation.ori",
    "exposure_table": "exposure_table.fits",
    "ccm": "ccm.hdf5",
    "data_scatt": "data_scatt.hdf5",
    "data_galactic": "data_galactic.hdf5",
    "parameter_file": "imagedeconvolution_parfile.yml",
}

# Range of the background normalizations written to the deconvolution parameter file.
_BKG_NORM_RANGE = [0.01, 10.0]


class _Stopwatch:
    """Logs the time of each stage of a simulation."""

    def __init__(self):
        self.start = self.last = time.perf_counter()

    def lap(self, what):
        now = time.perf_counter()
        logger.info("%s done in %.1f s (%.1f s so far)", what, now - self.last, now - self.start)
        self.last = now


def _parameter_file(config, ei_edges):
    resolution = hp.nside2resol(config.model_nside, arcmin=True) / 60.0
    return {
        "author": f"cosi_imaging_plugin {__version__} simulate ({config.name})",
        "model_definition": {
            "class": "AllSkyImage",
            "property": {
                "coordinate": "galactic",
                "nside": config.model_nside,
                "scheme": "ring",
                "energy_edges": {"value": [float(e) for e in ei_edges], "unit": "keV"},
                "unit": IMAGE_UNIT_TEXT,
            },
            "initialization": {"algorithm": "flat",
                               "parameter": {"value": [1.0e-4] * (len(ei_edges) - 1), "unit": IMAGE_UNIT_TEXT}},
        },
        "deconvolution": {
            "algorithm": "RL",
            "parameter": {
                "iteration_max": 30,
                "acceleration": {"activate": True, "alpha_max": 10.0},
                "response_weighting": {"activate": True, "index": 0.5},
                # half the model pixel size: smooths pixel-scale noise, keeps the resolution
                "smoothing": {"activate": True, "FWHM": {"value": float(round(0.5 * resolution, 2)), "unit": "deg"}},
                "stopping_criteria": {"statistics": "log-likelihood", "threshold": 0.01},
                "background_normalization_optimization": {
                    "activate": bool(config.backgrounds),
                    "range": {name: list(_BKG_NORM_RANGE) for name in config.backgrounds},
                },
                "save_results": {"activate": False, "directory": "./results", "only_final_result": True},
            },
        },
    }


def simulate_dataset(config, output_dir, progress=True, overwrite=False):
    """Simulate a COSI dataset and write it, with a manifest, to ``output_dir``.

    Parameters
    ----------
    config : SimulationConfig, dict or path-like
        The simulation (a dict or YAML path is validated first).
    output_dir : str or pathlib.Path
        Directory to create; it appears only once complete.
    progress : bool
        Show tqdm progress bars.
    overwrite : bool
        Replace an existing non-empty ``output_dir`` (only after the new one is complete).

    Returns
    -------
    Manifest
        The written manifest (absolute paths, truth).

    Raises
    ------
    CosiInputError
        Invalid configuration (before any work).
    OutputExistsError
        ``output_dir`` is not empty and ``overwrite`` is False (before any work); a
        ``FileExistsError``.

    Notes
    -----
    The manifest's ``truth`` holds: ``livetime_s``, ``n_scatt_bins``, ``ei_edges_kev``,
    ``response_rtol``; ``sources`` (per source: type, position or spatial function and
    parameters, spectrum function and parameters, ``flux_per_ei_bin`` (spectrum
    integrated over each Ei bin, ph cm-2 s-1), ``model_flux_per_ei_bin`` (its image on
    the model grid integrated over the sky) and ``expected_counts``);
    ``expected_sky_counts``; ``backgrounds`` (per name: kind, rate, norm, index,
    ``template_counts`` = rate x live time, ``expected_counts`` = norm x template_counts);
    ``expected_total_counts``; ``observed_counts``.
    """
    config = coerce_config(config)
    output_dir = Path(output_dir)
    with OutputFolder(output_dir, overwrite=overwrite) as out:
        tmp = out.work
        truth, roles = _simulate_into(config, tmp, progress)
        write_manifest(tmp, {**roles, "truth": truth, "config": config.to_dict()}, format=SIMULATED_FORMAT,
                       version=1, created_by=f"cosi_imaging_plugin {__version__}", name=config.name,
                       seed=config.seed)
    logger.info("simulated dataset '%s' written to %s", config.name, output_dir)
    return read_manifest(output_dir)


def _simulate_into(config, out, progress):
    """All the work of :func:`simulate_dataset`, writing into ``out``; returns (truth, roles)."""
    watch = _Stopwatch()
    instrument = config.instrument
    roles = {}

    # -- instrument, orbit, exposure, CCM ---------------------------------------------------------
    generate_response(instrument, out / FILES["response"], progress=progress)
    roles["response"] = FILES["response"]
    watch.lap("response")
    orientation = simulate_orbit(config.orbit)
    orientation.write(out / FILES["orientation"])
    roles["orientation"] = FILES["orientation"]
    table = ExposureTable.from_orientation(orientation, config.scatt_nside)
    table.write(out / FILES["exposure_table"])
    roles["exposure_table"] = FILES["exposure_table"]
    livetime = float(np.sum(table.exposure))
    logger.info("orbit: %d samples, %d ScAtt bins at NSIDE %d, live time %.6g s", len(orientation), len(table),
                config.scatt_nside, livetime)
    watch.lap("orbit and exposure table")
    ccm = coordsys_conversion_matrix(table, config.model_nside, instrument.nside,
                                     use_averaged_pointing=config.use_averaged_pointing,
                                     earth_occultation=config.earth_occultation,
                                     response_scheme=instrument.binning.scheme, progress=progress)
    write_ccm(ccm, out / FILES["ccm"])
    roles["ccm"] = FILES["ccm"]
    watch.lap("CCM")
    response = ColumnResponse.from_file(out / FILES["response"], rtol=config.response_rtol, progress=progress)
    mapping = CCMMapping(ccm)
    del ccm
    watch.lap("response compression")

    # -- sky and background source rows, expected counts, Poisson draws ----------------------------
    attitudes = attitude_bins(table, use_averaged_pointing=config.use_averaged_pointing,
                              earth_occultation=config.earth_occultation)
    sky = _SkyModel(config, response, mapping, attitudes)
    components = Components(config, response, mapping, table, livetime, sky.rows)
    watch.lap("sky image and background rows")
    attitudes = table.mean_attitudes() if config.galactic else None
    draws = draw(config, response, components, attitudes, progress)
    watch.lap("expected counts and Poisson draw")
    if not math.isclose(draws.folded_sky, sky.expected, rel_tol=1e-4, abs_tol=1e-9):
        logger.warning("dense sky expectation %.6g differs from the exposure-map total %.6g", draws.folded_sky,
                       sky.expected)

    # -- files ------------------------------------------------------------------------------------
    observed = _write_draws(draws, response, orientation, out, roles)
    DeconvolutionParameters(_parameter_file(config, sky.ei_edges), source="simulate").write(
        out / FILES["parameter_file"])
    roles["parameter_file"] = FILES["parameter_file"]
    watch.lap("writing data and templates")

    background_truth = {}
    for name, spec in config.backgrounds.items():
        background_truth[name] = {"kind": spec.kind, "rate": spec.rate, "norm": spec.norm, "index": spec.index,
                                  "template_counts": spec.rate * livetime,
                                  "expected_counts": spec.norm * spec.rate * livetime}
    truth = {
        "livetime_s": livetime,
        "n_scatt_bins": len(table),
        "ei_edges_kev": [float(e) for e in sky.ei_edges],
        "response_rtol": config.response_rtol,
        "sources": sky.truth,
        "expected_sky_counts": sky.expected,
        "backgrounds": background_truth,
        "expected_total_counts": sky.expected + sum(b["expected_counts"] for b in background_truth.values()),
        "observed_counts": observed,
    }
    logger.info("expected counts: sky %.6g, total %.6g; observed %d", sky.expected, truth["expected_total_counts"],
                observed["data_scatt"])
    return truth, _ordered_roles(roles)


class _SkyModel:
    """The sources of a configuration folded as the 3ML plugin folds them.

    Extended sources are rasterized on the CCM's model grid; point sources are folded
    along their path in the spacecraft frame through the attitudes the CCM was built
    from. Attributes: ``ei_edges`` (keV), ``image`` [n_pix, n_ei] (ph cm-2 s-1 sr-1 per
    Ei bin, every source on the grid, for the record), ``rows`` (the response source
    rows of the sky, [n_rows, n_nu * n_ei]), ``expected`` (sky counts over all bins) and
    ``truth`` (one dict per source).
    """

    def __init__(self, config, response, mapping, attitudes):
        self.ei_edges = response.axes[1].edges.to_value(u.keV).astype(np.float64)
        model_axis = mapping.model_axis
        rasterizer = Rasterizer(model_axis.nside, str(model_axis.scheme), grid_frame="galactic",
                                function_frame="icrs")
        nu_axis = response.axes[0]
        area = response.effective_area.ravel()  # per source row index nu * n_ei + e
        self.image = np.zeros((mapping.n_model_pix, self.ei_edges.size - 1))
        self.rows = np.zeros((mapping.n_rows, response.n_source))
        self.truth = []
        for source in build_sources(list(config.sky), where=f"{config.source}: sky"):
            image = source_image(source, rasterizer, self.ei_edges)
            if is_point_source(source):
                position = source.position
                dwell = attitudes.dwell(point_source_direction(float(position.get_ra()), float(position.get_dec())),
                                        nu_axis.nside, is_nested(nu_axis))
                rows = (dwell[:, :, None] * image.sum(axis=0)[None, None, :] * rasterizer.pixel_area)
                rows = rows.reshape(mapping.n_rows, -1)
            else:
                rows = mapping.forward(image)
            self.image += image
            self.rows += rows
            info = describe_source(source, image, rasterizer.pixel_area, self.ei_edges)
            info["expected_counts"] = float(np.sum(rows @ area))
            self.truth.append(info)
        self.expected = float(np.sum(self.rows @ area))


def _write_draws(draws, response, orientation, out, roles):
    """Write the local and Galactic counts and templates; return the observed totals."""
    cds_axes = list(response.axes[2:])
    cds_shape = tuple(a.nbins for a in cds_axes)
    data_axes = Axes([Axis(np.arange(draws.n_rows + 1), label="ScAtt"), *cds_axes])
    full = np.vstack([draws.coords[0], np.array(np.unravel_index(draws.coords[1], cds_shape))]).astype(np.int64)
    data = Histogram(data_axes, contents=sparse.COO(full, draws.counts.astype(np.float64),
                                                    shape=tuple(data_axes.nbins), has_duplicates=False,
                                                    sorted=True))
    write_histogram(data, out / FILES["data_scatt"])
    roles["data_scatt"] = FILES["data_scatt"]
    observed = {"data_scatt": int(draws.counts.sum())}
    roles["backgrounds"] = {}
    for name in list(draws.templates):
        file = f"bkg_{name}.hdf5"
        contents = draws.templates.pop(name).reshape(tuple(data_axes.nbins))  # free each once written
        write_histogram(Histogram(data_axes, contents=contents), out / file)
        roles["backgrounds"][name] = file
    if draws.galactic_counts is None:
        return observed
    t = orientation.unix_seconds
    gal_axes = Axes([Axis(np.array([t[0], t[-1]], dtype=np.float64) * u.s, label="Time"), *cds_axes[:-1],
                     HealpixAxis(nside=draws.nside_galactic, scheme="ring", coordsys="galactic", label="PsiChi")])
    shape = tuple(gal_axes.nbins)
    nz = np.flatnonzero(draws.galactic_counts)
    gal_coords = np.vstack([np.zeros((1, nz.size), dtype=np.int64),
                            np.array(np.unravel_index(nz, shape[1:]), dtype=np.int64).reshape(len(shape) - 1, -1)])
    gal = Histogram(gal_axes, contents=sparse.COO(gal_coords, draws.galactic_counts[nz].astype(np.float64),
                                                  shape=shape, has_duplicates=False, sorted=True))
    write_histogram(gal, out / FILES["data_galactic"])
    roles["data_galactic"] = FILES["data_galactic"]
    observed["data_galactic"] = int(draws.galactic_counts.sum())
    roles["backgrounds_galactic"] = {}
    for name, template in draws.galactic_templates.items():
        file = f"bkg_{name}_galactic.hdf5"
        write_histogram(Histogram(gal_axes, contents=template[None]), out / file)
        roles["backgrounds_galactic"][name] = file
    return observed


def _ordered_roles(roles):
    order = ["response", "orientation", "exposure_table", "ccm", "data_scatt", "data_galactic", "backgrounds",
             "backgrounds_galactic", "parameter_file"]
    return {key: roles[key] for key in order if key in roles}
