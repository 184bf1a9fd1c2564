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


def plot_residuals(plugin, output_dir):
    """Data versus model in the CDS: the Phi distribution and PsiChi maps, summed over ScAtt and Em.

    Writes ``residuals_phi.png`` and ``residuals_psichi.png`` into `output_dir`.
    """
    import matplotlib.pyplot as plt

    engine = plugin.engine
    data = engine.data_cds()
    model = engine.expectation_cds(plugin.model_image(), plugin.background_norms())
    phi_axis = engine.cds_axes["Phi"]
    phi_edges = phi_axis.edges.to_value("deg")
    centres = 0.5 * (phi_edges[1:] + phi_edges[:-1])
    data_phi, model_phi = data.sum(axis=(0, 2)), model.sum(axis=(0, 2))
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 6), gridspec_kw={"height_ratios": [3, 1]})
    top.errorbar(centres, data_phi, yerr=np.sqrt(data_phi), fmt="o", ms=3, label="data")
    top.stairs(model_phi, phi_edges, label="model", color="C1")
    top.set_ylabel("counts")
    top.legend()
    with np.errstate(divide="ignore", invalid="ignore"):
        bottom.plot(centres, (data_phi - model_phi) / np.sqrt(model_phi), "o", ms=3)
    bottom.axhline(0, color="k", lw=0.8)
    bottom.set_xlabel("Compton scattering angle Phi [deg]")
    bottom.set_ylabel("(d - m) / sqrt(m)")
    _save(fig, output_dir / "residuals_phi.png")

    psi_axis = engine.cds_axes["PsiChi"]
    data_psi, model_psi = data.sum(axis=(0, 1)), model.sum(axis=(0, 1))
    nest = str(psi_axis.scheme).lower() == "nested"
    fig = plt.figure(figsize=(15, 4))
    with np.errstate(divide="ignore", invalid="ignore"):
        residual = np.where(model_psi > 0, (data_psi - model_psi) / np.sqrt(model_psi), hp.UNSEEN)
    for i, (values, title) in enumerate([(data_psi, "data"), (model_psi, "model"),
                                         (residual, "(d - m) / sqrt(m)")]):
        hp.mollview(values, fig=fig.number, sub=(1, 3, i + 1), title=f"PsiChi: {title}", nest=nest,
                    cmap="RdBu_r" if i == 2 else "viridis")
    _save(fig, output_dir / "residuals_psichi.png")
