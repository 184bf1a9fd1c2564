"""Image deconvolution: the Richardson-Lucy family (RLsimple, RL, MAP_RL) on the response engine.

- :class:`RichardsonLucySimple`, :class:`RichardsonLucy`, :class:`MAPRichardsonLucy`:
  the algorithms, constructed with plain keywords on one or several datasets
  (``RichardsonLucy(dataset, iterations=30, acceleration=True, alpha_max=10.0)``,
  then ``.run()``);
- :class:`PriorTSV`, :class:`PriorEntropy`: the priors of MAP-RL;
- :class:`ImageDeconvolution`: the COSI team's parameter-file workflow (read a
  parameter file, override, initialize, run, resume), translated into keywords by
  :mod:`.parameters`;
- :class:`DeconvolutionDataset`: a dataset with the method names of cosipy's DataIF;
- :func:`save_results`, :func:`load_results`: HDF5 + FITS results, loading for resuming (the file
  format lives in :mod:`cosi_imaging_plugin.io.deconvolution_results`).
"""
from ..io.deconvolution_results import load_results, results_table, save_results
from .all_sky_image import AllSkyImage
from .base import DeconvolutionAlgorithm, backprojection
from .dataset import DeconvolutionDataset
from .image_deconvolution import ImageDeconvolution
from .map_richardson_lucy import MAPRichardsonLucy
from .parameters import ALGORITHMS, algorithm_keywords, build_algorithm
from .priors import PriorEntropy, PriorTSV
from .richardson_lucy import RichardsonLucy, RichardsonLucySimple

__all__ = [
    "ALGORITHMS",
    "AllSkyImage",
    "DeconvolutionAlgorithm",
    "DeconvolutionDataset",
    "ImageDeconvolution",
    "MAPRichardsonLucy",
    "PriorEntropy",
    "PriorTSV",
    "RichardsonLucy",
    "RichardsonLucySimple",
    "algorithm_keywords",
    "backprojection",
    "build_algorithm",
    "load_results",
    "results_table",
    "save_results",
]
