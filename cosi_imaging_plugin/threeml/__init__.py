"""The 3ML plugin: COSI binned imaging likelihood with rasterized astromodels sources."""
from .plugin import COSIImagingLike

__all__ = ["COSIImagingLike"]
