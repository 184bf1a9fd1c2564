"""Figures of an analysis: sky images and data-versus-model residuals in the CDS."""
import logging

import healpy as hp
import numpy as np

from ._atomic import atomic_path

logger = logging.getLogger(__name__)


def _save(fig, path):
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def save_image(image, path, title, log=False, energy_index=0):
    """Mollweide PNG of one Ei plane of a sky image Histogram [lb, Ei]."""
    from .deconvolution.plots import plot_image

    fig = plot_image(image, energy_index=energy_index, log=log, title=title)
    _save(fig, path)


def residual_figures(plugin):
    """Data versus model in the CDS, summed over ScAtt and Em: the Phi distribution and PsiChi maps.

    Parameters
    ----------
    plugin : cosi_imaging_plugin.threeml.COSIImagingLike
        With a model set.

    Returns
    -------
    (matplotlib.figure.Figure, matplotlib.figure.Figure)
        Phi distribution with a residual panel; PsiChi maps of data, model and residuals.
    """
    import matplotlib.pyplot as plt

    data, model = plugin.data_cds(), plugin.model_cds()
    phi_edges = data.axes["Phi"].edges.to_value("deg")
    centres = 0.5 * (phi_edges[1:] + phi_edges[:-1])
    data_phi, model_phi = data.project("Phi").contents, model.project("Phi").contents
    phi_figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 6),
                                             gridspec_kw={"height_ratios": [3, 1]})
    top.errorbar(centres, data_phi, yerr=np.sqrt(data_phi), fmt="o", ms=3, label="data")
    top.stairs(model_phi, phi_edges, label="model", color="C1")
    top.set_ylabel("counts")
    top.legend()
    with np.errstate(divide="ignore", invalid="ignore"):
        bottom.plot(centres, (data_phi - model_phi) / np.sqrt(model_phi), "o", ms=3)
    bottom.axhline(0, color="k", lw=0.8)
    bottom.set_xlabel("Compton scattering angle Phi [deg]")
    bottom.set_ylabel("(d - m) / sqrt(m)")

    psi_axis = data.axes["PsiChi"]
    data_psi, model_psi = data.project("PsiChi").contents, model.project("PsiChi").contents
    nest = str(psi_axis.scheme).lower() == "nested"
    psichi_figure = plt.figure(figsize=(15, 4))
    with np.errstate(divide="ignore", invalid="ignore"):
        residual = np.where(model_psi > 0, (data_psi - model_psi) / np.sqrt(model_psi), hp.UNSEEN)
    for i, (values, title) in enumerate([(data_psi, "data"), (model_psi, "model"),
                                         (residual, "(d - m) / sqrt(m)")]):
        hp.mollview(values, fig=psichi_figure.number, sub=(1, 3, i + 1), title=f"PsiChi: {title}", nest=nest,
                    cmap="RdBu_r" if i == 2 else "viridis")
    return phi_figure, psichi_figure


def plot_residuals(plugin, output_dir):
    """Write ``residuals_phi.png`` and ``residuals_psichi.png`` (see :func:`residual_figures`) into `output_dir`."""
    phi_figure, psichi_figure = residual_figures(plugin)
    _save(phi_figure, output_dir / "residuals_phi.png")
    _save(psichi_figure, output_dir / "residuals_psichi.png")
