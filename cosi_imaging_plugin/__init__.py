"""Fast COSI imaging: one response engine for Richardson-Lucy deconvolution and 3ML fits.

The package is organised by concept:

- :mod:`cosi_imaging_plugin.io`: readers and writers of the COSI file formats.
- :mod:`cosi_imaging_plugin.exposure`: orientation -> exposure table -> CCM.
- :mod:`cosi_imaging_plugin.engine`: the response engine (forward, adjoint, exposure).
- :mod:`cosi_imaging_plugin.instrument`: the synthetic COSI-like instrument.
"""
import logging

__version__ = "0.2.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
