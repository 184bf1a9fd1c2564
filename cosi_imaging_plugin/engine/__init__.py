"""The response engine: forward folding, transpose products and likelihood, sparse-data path."""
from ..binning import IMAGE_UNIT
from .column_response import ColumnResponse
from .engine import Evaluation, ResponseEngine
from .galactic import RotatedResponse, galactic_response, psichi_rotation, rotate_to_galactic
from .sky_mapping import CCMMapping, PixelMapping
from .sparse_data import SparseData

__all__ = ["ColumnResponse", "Evaluation", "ResponseEngine", "IMAGE_UNIT", "CCMMapping", "PixelMapping", "SparseData",
           "RotatedResponse", "galactic_response", "psichi_rotation", "rotate_to_galactic"]
