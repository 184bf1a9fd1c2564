"""Deprecated: engines are built by :mod:`cosi_imaging_plugin.datasets.engine_builder`
(:meth:`cosi_imaging_plugin.datasets.COSIDataset.from_files`). This alias is removed in 0.3."""
from .._deprecation import warn_moved
from ..datasets import engine_builder as _builder

warn_moved("cosi_imaging_plugin.engine.builders", "cosi_imaging_plugin.datasets")

psichi_frame = _builder.psichi_frame
reduce_axes = _builder.reduce_axes
load_response = _builder.load_response


def build_engine(response, data, backgrounds=None, ccm=None, orientation=None, rtol=1e-3, dtype=None,
                 nside_model=None):
    """The engine of :func:`cosi_imaging_plugin.datasets.build_engine` (which also returns the histograms)."""
    return _builder.build_engine(response, data, backgrounds, ccm=ccm, orientation=orientation, rtol=rtol,
                                 dtype=dtype or _builder.DEFAULT_DTYPE, nside_model=nside_model).engine
