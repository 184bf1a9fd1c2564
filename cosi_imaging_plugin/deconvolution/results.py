"""Deprecated: the results files' reader and writer live in :mod:`cosi_imaging_plugin.io.deconvolution_results`
(a file format, read also by LIRA's parameter file). This alias is removed in 0.3."""
from .._deprecation import warn_moved
from ..io.deconvolution_results import load_results, results_table, save_results

warn_moved("cosi_imaging_plugin.deconvolution.results", "cosi_imaging_plugin.io.deconvolution_results")

__all__ = ["load_results", "results_table", "save_results"]
