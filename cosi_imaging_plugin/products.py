"""Deprecated: the figures live in :mod:`cosi_imaging_plugin.plots`. This alias is removed in 0.3."""
from ._deprecation import warn_moved
from .plots import plot_residuals as _plot_residuals
from .plots import save_image

warn_moved("cosi_imaging_plugin.products", "cosi_imaging_plugin.plots")


def residual_figures(plugin):
    """Data versus model of a plugin (see :func:`cosi_imaging_plugin.plots.residual_figures`)."""
    return plugin.display()


def plot_residuals(plugin, output_dir):
    """Write the residual figures of a plugin (see :func:`cosi_imaging_plugin.plots.plot_residuals`)."""
    return _plot_residuals(plugin.data_cds(), plugin.model_cds(), output_dir)


__all__ = ["save_image", "residual_figures", "plot_residuals"]
