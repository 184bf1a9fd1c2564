"""Deprecated: the figures live in :mod:`cosi_imaging_plugin.plots`. This alias is removed in 0.3."""
from .._deprecation import warn_moved
from ..plots import plot_convergence, plot_image, save_figure, save_plots

warn_moved("cosi_imaging_plugin.deconvolution.plots", "cosi_imaging_plugin.plots")

__all__ = ["plot_convergence", "plot_image", "save_figure", "save_plots"]
