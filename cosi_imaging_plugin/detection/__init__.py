"""Where the sources are and how significant: TS maps and multiscale detection on the engine's likelihood.

- :class:`TSMapEstimator`: the maximum-likelihood norm of a test source (point, Gaussian
  or disk) at every position of a HEALPix grid, with gammapy's names and maps;
- :class:`TSMapResult`: the maps by name, written as HDF5 or HEALPix FITS;
- :class:`SourceDetector`: TS maps over a ladder of scales, peaks, merging and iteration,
  giving a :class:`DetectionTable` whose ``to_model()`` is ready for a 3ML fit;
- :class:`BackgroundEstimator`: background norms fitted clear of the sources by the
  exclusion-mask iteration, on the data-space bins (:class:`ExcludedBins`) whose cones
  stay clear of the masked sky.
"""
from .background import BackgroundEstimator, BackgroundFit, BackgroundResult, fit_background_norms
from .exclusion import ExcludedBins
from .kernel_mapping import KERNELS, kernel_images
from .multiscale import DetectionTable, SourceDetector, local_maxima, refit_norms, scaled_spectrum
from .ts_map import MultiOrderTSMap, TSMapEstimator, TSMapResult

__all__ = ["KERNELS", "BackgroundEstimator", "BackgroundFit", "BackgroundResult", "DetectionTable", "ExcludedBins",
           "MultiOrderTSMap", "SourceDetector", "TSMapEstimator", "TSMapResult", "fit_background_norms",
           "kernel_images", "local_maxima", "refit_norms", "scaled_spectrum"]
