"""Deprecated: the algorithms live in :mod:`.base`, :mod:`.richardson_lucy`, :mod:`.map_richardson_lucy`,
:mod:`.priors` and :mod:`.parameters` of :mod:`cosi_imaging_plugin.deconvolution`. This alias is removed in 0.3."""
from .._deprecation import warn_moved
from .base import DeconvolutionAlgorithm
from .map_richardson_lucy import MAPRichardsonLucy
from .parameters import ALGORITHMS, FREE_MAPPING, LEAF, normalize_parameter, validate_tree
from .priors import PriorEntropy, PriorTSV
from .richardson_lucy import RichardsonLucy, RichardsonLucySimple

warn_moved("cosi_imaging_plugin.deconvolution.algorithms", "cosi_imaging_plugin.deconvolution")

__all__ = ["ALGORITHMS", "DeconvolutionAlgorithm", "FREE_MAPPING", "LEAF", "MAPRichardsonLucy", "PriorEntropy",
           "PriorTSV", "RichardsonLucy", "RichardsonLucySimple", "normalize_parameter", "validate_tree"]
