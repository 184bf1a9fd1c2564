"""Sky images with error bars: Bayesian multiscale deconvolution on the HEALPix quad-tree (LIRA on the sphere).

- :class:`LIRA`: several exact Gibbs chains on a dataset (``LIRA(dataset, n_chains=4).run()``),
  checkpointed and resumable;
- :class:`LIRAResult`: posterior mean, std, quantile and significance maps (histpy
  histograms, HEALPix FITS), traces, split-R-hat and ESS, region fluxes with credible
  intervals;
- :mod:`.allocation`, :mod:`.tree`, :mod:`.gibbs`: the data augmentation, the multiscale
  prior and the sweep; :mod:`.diagnostics`: R-hat and ESS.
"""
from .diagnostics import ess, rhat
from .lira import LIRA
from .regions import FluxSummary, region_mask
from .results import QUANTILES, LIRAResult
from .tree import DEFAULT_DELTA, DEFAULT_TOTAL_PRIOR, MultiscaleTree

__all__ = [
    "DEFAULT_DELTA",
    "DEFAULT_TOTAL_PRIOR",
    "LIRA",
    "QUANTILES",
    "FluxSummary",
    "LIRAResult",
    "MultiscaleTree",
    "ess",
    "region_mask",
    "rhat",
]
