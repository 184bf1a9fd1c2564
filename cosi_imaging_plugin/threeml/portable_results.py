"""3ML fit results that load in any Python session.

astromodels finds a function by name among the classes defined so far and offers no way to
register another package's functions: a model with the package's Galactic shapes
(``Galactic_disk``, ``Galactic_gaussian``) is read back only after
``import cosi_imaging_plugin.sky``. The portable copy made here replaces each such spatial shape
with astromodels' own ``SpatialTemplate_2D_Healpix``: a HEALPix map (ICRS, RING) of the fitted
shape, pixel-averaged and normalised to one over the sphere, written beside the results. The
shape's parameters are frozen into the map, so the copy's covariance is the fit's restricted to
the remaining free parameters: the marginal of the fit's Gaussian approximation.
"""
import logging
import re
import shutil
from pathlib import Path

import numpy as np
from astromodels import ExtendedSource, clone_model
from astromodels.core.model_parser import ModelParser
from astropy.io import fits

from .._atomic import atomic_path
from ..errors import CosiInputError
from ..sky.rasterize import Rasterizer
from ..sky.sources import set_value_and_bounds
from .rl_initializer import healpix_template

__all__ = [
    "TEMPLATE_NSIDE",
    "is_astromodels_function",
    "portable_results",
    "relocate_portable_results",
    "write_portable_results",
]

logger = logging.getLogger(__name__)

#: NSIDE of the templates (0.46 deg pixels: finer than any analysis grid of the package).
TEMPLATE_NSIDE = 128


def is_astromodels_function(function):
    """True if astromodels itself defines the class of `function` (it loads without other imports)."""
    return type(function).__module__.split(".")[0] == "astromodels"


def _copy_function(function):
    """A new, parentless instance of `function`'s class with the same parameter settings."""
    copy = type(function)()
    for name, parameter in function.parameters.items():
        target = copy.parameters[name]
        target.unit = parameter.unit
        set_value_and_bounds(target, parameter.value, min_value=parameter.min_value,
                             max_value=parameter.max_value)
        target.delta = parameter.delta
        target.free = parameter.free
        if parameter.has_prior():
            target.prior = parameter.prior
    return copy


def portable_results(results, template_dir, nside=TEMPLATE_NSIDE):
    """A copy of MLE fit results whose model uses only astromodels' own functions.

    Parameters
    ----------
    results : threeML.analysis_results.MLEResults
        The fit's results (``JointLikelihood.results``).
    template_dir : str or pathlib.Path
        Folder for the templates (one FITS file per replaced source, ``<source>.fits``).
    nside : int
        NSIDE of the templates.

    Returns
    -------
    threeML.analysis_results.MLEResults
        `results` itself when every function is astromodels' own, else the copy.
    list of pathlib.Path
        The templates written.
    """
    from threeML.analysis_results import MLEResults

    if results.analysis_type != "MLE":
        raise CosiInputError(f"portable results are made from MLE results, not {results.analysis_type}")
    model = clone_model(results.optimized_model)
    replaced = [name for name, source in model.extended_sources.items()
                if not is_astromodels_function(source.spatial_shape)]
    unknown = [name for name, source in model.sources.items()
               if not all(is_astromodels_function(c.shape) for c in source.components.values())]
    if unknown:
        raise CosiInputError(f"sources {unknown} have spectra astromodels does not define: no portable copy")
    several = [name for name in replaced if len(model.sources[name].components) > 1]
    if several:
        raise CosiInputError(f"sources {several} have several spectral components: no portable copy")
    if not replaced:
        return results, []
    template_dir = Path(template_dir).absolute()  # astromodels opens the file from any working directory
    template_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in replaced:
        source = model.sources[name]
        path = template_dir / f"{name}.fits"
        values = Rasterizer(nside, "ring", grid_frame="icrs")(source.spatial_shape)
        template = healpix_template(values, path, "ring", "C",
                                    header=[("SHAPE", source.spatial_shape.name, "the fitted astromodels shape")])
        written.append(path)
        spectrum = _copy_function(source.spectrum.main.shape)
        model.remove_source(name)
        model.add_source(ExtendedSource(name, spatial_shape=template, spectral_shape=spectrum))
    # parameters in the order a reader parses them back, which the stored covariance must follow
    model = ModelParser(model_dict=model.to_dict_with_types()).get_model()
    before = list(results.optimized_model.free_parameters)
    keep = [before.index(parameter) for parameter in model.free_parameters]
    covariance = np.asarray(results.covariance_matrix)[np.ix_(keep, keep)]
    portable = MLEResults(model, covariance, dict(results.optimal_statistic_values),
                          statistical_measures=dict(results.statistical_measures))
    return portable, written


def write_portable_results(results, path, final_dir=None, nside=TEMPLATE_NSIDE):
    """Write :func:`portable_results` to `path`, its templates to ``<path stem>_templates/``.

    Parameters
    ----------
    results : threeML.analysis_results.MLEResults
    path : str or pathlib.Path
        The results file (FITS), written atomically.
    final_dir : str or pathlib.Path, optional
        Where the folder holding `path` will finally be (an output folder built beside its
        destination and renamed at the end): the model records its templates' absolute paths
        there. Default: the folder of `path`.
    nside : int

    Returns
    -------
    list of pathlib.Path
        The templates, where they were written.
    """
    path = Path(path)
    template_dir = path.parent / _template_folder(path)
    portable, written = portable_results(results, template_dir, nside)
    with atomic_path(path) as tmp:
        portable.write_to(str(tmp), overwrite=True)
        if written and final_dir is not None:
            # the templates are opened by absolute path when the file is read: record where they will be
            _record_template_folder(tmp, Path(final_dir) / _template_folder(path))
    logger.info("%s: fit results that load with threeML alone (%d template(s) in %s)", path.name, len(written),
                template_dir.name)
    return written


def relocate_portable_results(path):
    """Point a moved results file at the templates beside it (``<path stem>_templates/``).

    The model records its templates by absolute path: after moving or copying an output
    folder, this rewrites those paths (atomically) so that ``load_analysis_results`` finds
    the templates in their new place.

    Parameters
    ----------
    path : str or pathlib.Path
        A results file written by :func:`write_portable_results`.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        _record_template_folder(tmp, path.parent / _template_folder(path))


def _template_folder(path):
    return f"{Path(path).stem}_templates"


def _record_template_folder(fits_path, folder):
    """Rewrite the templates' folder in every serialised model of a results file to `folder`."""
    folder = Path(folder).absolute()
    # threeML stores the model's YAML in one header string, its line breaks written as _NEWLINE_:
    # a template's path is the value that runs, within one line, up to '/<folder name>/'
    pattern = re.compile(r"(?<=value: )(?:(?!_NEWLINE_).)*?(?=/" + re.escape(folder.name) + "/)")
    with fits.open(fits_path, mode="update") as hdus:
        for hdu in hdus[1:]:
            if "MODEL" in hdu.header:
                hdu.header["MODEL"] = pattern.sub(lambda _: str(folder.parent), hdu.header["MODEL"])
