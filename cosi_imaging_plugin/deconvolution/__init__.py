"""Image deconvolution: the Richardson-Lucy family (RLsimple, RL, MAP_RL) on the response engine.

- :class:`DeconvolutionDataset`: event counts, backgrounds, response and CCM of one observation.
- :class:`ImageDeconvolution`: the orchestrator (parameter files, model, mask, run, resume).
- :mod:`.algorithms`: the algorithms and priors, working on arrays [n_pix, n_ei].
- :mod:`.results`: HDF5 + FITS results, loading for resuming.
- :mod:`.plots`: convergence plots and Mollweide images.
"""
from .algorithms import ALGORITHMS, MAPRichardsonLucy, PriorEntropy, PriorTSV, RichardsonLucy, RichardsonLucySimple
from .dataset import DeconvolutionDataset
from .image_deconvolution import AllSkyImage, ImageDeconvolution
from .results import load_results, results_table, save_results

__all__ = [
    "ALGORITHMS",
    "AllSkyImage",
    "DeconvolutionDataset",
    "ImageDeconvolution",
    "MAPRichardsonLucy",
    "PriorEntropy",
    "PriorTSV",
    "RichardsonLucy",
    "RichardsonLucySimple",
    "load_results",
    "results_table",
    "save_results",
]
