"""Readers and writers of the COSI file formats (see ``FORMATS.md``).

- :mod:`.response`: full detector response files (read versions 1 and 2, write version 1).
- :mod:`.histograms`: histpy histograms: binned data, backgrounds, CCMs, image models.
- :mod:`.parameters`: image-deconvolution parameter files and binning configurations.
- :mod:`.orientation`: ``.ori`` attitude timelines; :mod:`.exposure_table`: the ScAtt exposure table.
"""
from .histograms import check_axes_match, read_ccm, read_histogram, read_image, write_histogram
from .parameters import DeconvolutionParameters, convert_flat_parameters, read_binning_config
from .response import FullDetectorResponse, write_response
from .orientation import Orientation
from .exposure_table import ExposureTable

__all__ = [
    "Orientation",
    "ExposureTable",
    "FullDetectorResponse",
    "write_response",
    "read_histogram",
    "write_histogram",
    "check_axes_match",
    "read_ccm",
    "read_image",
    "DeconvolutionParameters",
    "convert_flat_parameters",
    "read_binning_config",
]
