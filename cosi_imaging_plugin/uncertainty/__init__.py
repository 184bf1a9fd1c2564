"""Sky images with error bars: Bayesian multiscale deconvolution on the HEALPix quad-tree (LIRA on the sphere).

- :class:`LIRA`: several exact Gibbs chains on a dataset (``LIRA(dataset, n_chains=4).run()``),
  checkpointed and resumable;
- :class:`LIRAMode`: LIRA's mode-finding (EM) variant, a regularised point estimate;
- :func:`lira_main` (:mod:`.run`): a run on a dataset directory from a parameter file;
- :class:`LIRAResult`: posterior mean, std, quantile and significance maps (histpy
  histograms, HEALPix FITS), traces, split-R-hat and ESS, region fluxes with credible
  intervals; :func:`region_significance`: a region's flux against a null model without the
  feature, by posterior predictive simulation;
- :mod:`.allocation`, :mod:`.tree`, :mod:`.gibbs`, :mod:`.scale`: the data augmentation, the
  multiscale prior, the sweep and its joint move of the sky totals and background norms;
  :mod:`.hmc`: the optional image-space move (Hamiltonian Monte Carlo on the log-image);
  :mod:`.diagnostics`: R-hat and ESS; :mod:`.plots`: figures (``plot_summary``: all in one);
  :mod:`.sharing`: the engine handed to worker processes once, through shared memory.
"""
from .diagnostics import ess, rhat
from .lira import LIRA
from .mode import LIRAMode
from .regions import FluxSummary, region_mask
from .results import QUANTILES, LIRAResult
from .run import lira_main
from .significance import RegionSignificance, region_significance
from .tree import DEFAULT_DELTA, DEFAULT_TOTAL_PRIOR, MultiscaleTree

__all__ = [
    "DEFAULT_DELTA",
    "DEFAULT_TOTAL_PRIOR",
    "LIRA",
    "LIRAMode",
    "QUANTILES",
    "FluxSummary",
    "LIRAResult",
    "MultiscaleTree",
    "RegionSignificance",
    "ess",
    "lira_main",
    "region_mask",
    "region_significance",
    "rhat",
]
