"""HEALPix skies: rasterizing astromodels shapes, integrating spectra, Galactic-frame shapes.

Importing this package registers the Galactic-frame shapes of :mod:`.functions`
(``Galactic_disk``, ``Galactic_gaussian``) with astromodels, so saved models that
use them load by name.
"""
from . import functions  # noqa: F401  (registers the shapes with astromodels)
