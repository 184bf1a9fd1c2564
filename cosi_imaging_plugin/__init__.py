"""Fast COSI imaging: one response engine for Richardson-Lucy deconvolution and 3ML fits.

The package is organised in layers (``docs/architecture.md``):

- :mod:`cosi_imaging_plugin.io`, :mod:`cosi_imaging_plugin.sky`: file formats; astromodels sources and their images;
- :mod:`cosi_imaging_plugin.exposure`: orientation -> exposure table -> CCM;
- :mod:`cosi_imaging_plugin.instrument`: the synthetic COSI-like instrument;
- :mod:`cosi_imaging_plugin.engine`: the response engine (forward, adjoint, exposure, likelihood);
- :mod:`cosi_imaging_plugin.datasets`: :class:`~cosi_imaging_plugin.datasets.COSIDataset`, on which
  the estimators run: :mod:`cosi_imaging_plugin.deconvolution`, :mod:`cosi_imaging_plugin.threeml`.

Importing the package sets how the compiled kernels use threads (:mod:`cosi_imaging_plugin._threads`).
"""
import logging

from . import _threads

__version__ = "0.2.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
_threads.configure()
