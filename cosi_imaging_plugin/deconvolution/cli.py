"""Command-line entry of the image deconvolution: ``cosi-imaging deconvolve PARFILE --data DIR [-o OUT]``.

The data directory holds a ``manifest.yaml`` naming its files by role (paths
relative to the manifest)::

    response: response.h5            # FullDetectorResponse (spacecraft frame)
    ccm: ccm.h5                      # [ScAtt, lb, NuLambda]
    data_scatt: data_scatt.h5        # counts [ScAtt, Em, Phi, PsiChi]
    data_galactic: data_gal.h5       # counts [Em, Phi, PsiChi] in the Galactic frame (optional)
    backgrounds: {albedo: bkg.h5}    # templates [ScAtt, Em, Phi, PsiChi] for data_scatt
    backgrounds_galactic: {albedo: bkg_gal.h5}   # templates for data_galactic
    exposure_table: exposure.fits    # needed for a Galactic-CDS analysis
    orientation: orbit.ori
    parameter_file: parfile.yml      # used when no PARFILE is given
"""
import logging
from pathlib import Path

import numpy as np

from ..errors import CosiFileError, CosiInputError
from ..io.manifest import read_manifest_mapping, resolve_backgrounds, resolve_file

logger = logging.getLogger(__name__)

MANIFEST = "manifest.yaml"
#: Roles a manifest may name; ``backgrounds`` maps names to files.
ROLES = ("response", "ccm", "data_scatt", "data_galactic", "backgrounds", "backgrounds_galactic", "exposure_table",
         "orientation", "parameter_file")
#: Roles that map background names to files.
BACKGROUND_ROLES = ("backgrounds", "backgrounds_galactic")


def read_manifest(data_dir):
    """Read ``manifest.yaml`` of a data directory and resolve its paths.

    Parameters
    ----------
    data_dir : str or pathlib.Path

    Returns
    -------
    dict
        Role -> absolute path (``backgrounds``: name -> path). Only roles present are returned.

    Raises
    ------
    CosiFileError
        Missing manifest or a named file that does not exist (the role is named).
    """
    path = Path(data_dir) / MANIFEST
    out = {}
    for role, value in read_manifest_mapping(path).items():
        if role not in ROLES:
            logger.info("%s: role '%s' is not used by the deconvolution", path, role)
        elif role in BACKGROUND_ROLES:
            out[role] = resolve_backgrounds(path, role, value)
        else:
            out[role] = resolve_file(path, role, value)
    return out


def build_dataset(manifest, name="data", cds="auto", rtol=0.0, dtype=np.float32):
    """A :class:`~cosi_imaging_plugin.deconvolution.DeconvolutionDataset` from a resolved manifest.

    Parameters
    ----------
    manifest : dict
        From :func:`read_manifest`.
    name : str
        Dataset name.
    cds : {'auto', 'scatt', 'galactic'}
        ``scatt``: ScAtt-binned data with the CCM (the sparse-data path).
        ``galactic``: Galactic-CDS data with a Galactic-frame response precomputed from
        the response, the CCM and the exposure table's mean attitude of each ScAtt bin.
        ``auto``: ``scatt`` when ``data_scatt`` is present, else ``galactic``.
    rtol : float
        Response truncation tolerance.
    dtype : numpy dtype
    """
    from ..engine import ColumnResponse
    from ..engine.galactic import galactic_response
    from ..io.histograms import read_ccm, read_histogram
    from .dataset import DeconvolutionDataset

    if cds == "auto":
        cds = "scatt" if "data_scatt" in manifest else "galactic"
    if cds not in ("scatt", "galactic"):
        raise CosiInputError(f"cds must be 'auto', 'scatt' or 'galactic', got {cds!r}")
    needed = ("response", "ccm", "data_scatt") if cds == "scatt" else ("response", "ccm", "data_galactic",
                                                                        "exposure_table")
    missing = [role for role in needed if role not in manifest]
    if missing:
        raise CosiFileError(f"the manifest lacks role(s) {missing} needed for a {cds} analysis")
    # the templates must have the binning of the data analysed
    role = "backgrounds" if cds == "scatt" else "backgrounds_galactic"
    backgrounds = {k: read_histogram(v, counts=True) for k, v in manifest.get(role, {}).items()}
    response = ColumnResponse.from_file(manifest["response"], rtol=rtol, dtype=dtype)
    ccm = read_ccm(manifest["ccm"])
    if cds == "scatt":
        event = read_histogram(manifest["data_scatt"], counts=True)
        return DeconvolutionDataset(name, event, backgrounds, response, ccm=ccm, dtype=dtype)
    from ..io.exposure_table import ExposureTable

    table = ExposureTable.read(manifest["exposure_table"])
    if len(table) != ccm.axes[0].nbins:
        raise CosiInputError(f"exposure table {manifest['exposure_table']} has {len(table)} ScAtt bins but the "
                             f"CCM {manifest['ccm']} has {ccm.axes[0].nbins}")
    logger.info("Galactic-CDS analysis: precomputing the Galactic-frame response with the mean attitude of "
                "each ScAtt bin")
    attitudes = table.mean_attitudes()
    gal = galactic_response(response, ccm, attitudes, rtol=rtol, dtype=dtype)
    event = read_histogram(manifest["data_galactic"], counts=True)
    return DeconvolutionDataset(name, event, backgrounds, gal, galactic=True, dtype=dtype)


def deconvolve_main(parfile, data_dir, output_dir, overrides=(), rtol=0.0, cds="auto", progress=True):
    """Run an image deconvolution on a data directory and write results and plots.

    Parameters
    ----------
    parfile : str or pathlib.Path or None
        Parameter file; None uses the manifest's ``parameter_file``.
    data_dir : str or pathlib.Path
        Directory with ``manifest.yaml``.
    output_dir : str or pathlib.Path
        Receives ``results.h5``, ``results.fits``, ``parameters.yaml`` (the parameters
        used) and PNG plots (``convergence.png``, ``model_E<i>.png``, ``model_E<i>_log.png``).
        The parameter file's ``save_results:directory`` is not used.
    overrides : sequence of str
        ``"section:key = value"`` overrides applied after reading the parameter file.
    rtol : float
        Response truncation tolerance.
    cds : {'auto', 'scatt', 'galactic'}
        See :func:`build_dataset`.
    progress : bool
        Show the progress bar.

    Returns
    -------
    dict
        ``iterations``, ``loglikelihood`` (final, summed), ``background_normalization``
        (final), ``files`` (paths written).
    """
    import matplotlib

    matplotlib.use("Agg")  # the command line never needs a display

    from .algorithms import normalize_parameter
    from .image_deconvolution import ImageDeconvolution
    from .plots import save_plots

    manifest = read_manifest(data_dir)
    if parfile is None:
        if "parameter_file" not in manifest:
            raise CosiInputError(f"no parameter file given and {Path(data_dir) / MANIFEST} names none "
                                 f"('parameter_file')")
        parfile = manifest["parameter_file"]
    output_dir = Path(output_dir)
    deconv = ImageDeconvolution()
    deconv.read_parameterfile(parfile)
    for text in overrides:
        deconv.override_parameter(text)
    tree = deconv.parameter.to_dict()
    parameter = normalize_parameter(tree["deconvolution"].get("parameter") or {})
    save = parameter.get("save_results") or {}
    only_final = bool(save.get("only_final_result", False))
    # results go to output_dir, not to the parameter file's directory
    parameter["save_results"] = {"activate": False, "only_final_result": only_final}
    tree["deconvolution"]["parameter"] = parameter
    deconv.set_parameter(tree)

    deconv.set_dataset([build_dataset(manifest, cds=cds, rtol=rtol)])
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
