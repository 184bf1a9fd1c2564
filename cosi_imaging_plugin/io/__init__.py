"""Readers and writers of the COSI file formats (see ``docs/formats.md``).

- :mod:`.response`: full detector response files (read versions 1 and 2, write version 1).
- :mod:`.histograms`: histpy histograms: binned data, backgrounds, CCMs, image models.
- :mod:`.parameters`: image-deconvolution parameter files and binning configurations.
- :mod:`.deconvolution_results`: the results of an image deconvolution (HDF5 + FITS).
- :mod:`.ori_file`: ``.ori`` attitude timelines; :mod:`.exposure_table_file`: the ScAtt exposure table (FITS).

The models built on the last two, :class:`~cosi_imaging_plugin.exposure.Orientation` and
:class:`~cosi_imaging_plugin.exposure.ExposureTable`, live in :mod:`cosi_imaging_plugin.exposure`.
"""
from .._deprecation import warn_moved
from .histograms import check_axes_match, read_ccm, read_histogram, read_image, write_histogram
from .ori_file import read_ori, write_ori
from .parameters import DeconvolutionParameters, convert_flat_parameters, read_binning_config
from .response import FullDetectorResponse, write_response

__all__ = [
    "DeconvolutionParameters",
    "FullDetectorResponse",
    "check_axes_match",
    "convert_flat_parameters",
    "read_binning_config",
    "read_ccm",
    "read_histogram",
    "read_image",
    "read_ori",
    "write_histogram",
    "write_ori",
    "write_response",
]

# Deprecated aliases (removed in 0.3): the models moved up to the exposure layer, which
# imports io, so they are imported lazily here rather than at module top.
_MOVED_TO_EXPOSURE = ("Orientation", "ExposureTable")


def __getattr__(name):
    """Serve the moved ``Orientation`` and ``ExposureTable`` with a DeprecationWarning."""
    if name in _MOVED_TO_EXPOSURE:
        warn_moved(f"cosi_imaging_plugin.io.{name}", f"cosi_imaging_plugin.exposure.{name}")
        from .. import exposure

        return getattr(exposure, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
