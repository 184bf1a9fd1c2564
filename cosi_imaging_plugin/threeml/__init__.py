"""The 3ML plugin: COSI binned imaging likelihood with rasterized astromodels sources.

- :class:`COSIImagingLike`: the plugin, on a :class:`~cosi_imaging_plugin.datasets.COSIDataset`;
- :func:`goodness_of_fit`: a goodness-of-fit test that holds at COSI's sparse counts;
- :mod:`.rl_initializer`: starting values and template sources from an RL image.
"""
from .goodness_of_fit import GoodnessOfFitResult, goodness_of_fit
from .plugin import COSIImagingLike

__all__ = ["COSIImagingLike", "GoodnessOfFitResult", "goodness_of_fit"]
