"""Datasets: binned counts, background templates and their response engine; estimators run on them.

- :class:`COSIDataset`: one observation (local or Galactic CDS), built from files,
  a manifest or histograms in memory.
- :func:`build_engine`: the one place an engine is assembled, with the defaults
  :data:`DEFAULT_RTOL` and :data:`DEFAULT_DTYPE`.
"""
from .dataset import COSIDataset
from .engine_builder import DEFAULT_DTYPE, DEFAULT_RTOL, build_engine, load_response

__all__ = ["COSIDataset", "DEFAULT_DTYPE", "DEFAULT_RTOL", "build_engine", "load_response"]
