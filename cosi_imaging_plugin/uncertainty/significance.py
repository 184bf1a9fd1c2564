"""The significance of a feature in a region, by posterior predictive simulation under a null model.

In LIRA's spirit (Stein et al. 2015, ApJ 813, 66): the statistic is the posterior mean of the
region's flux; its distribution under a null model without the feature comes from datasets
simulated from the null model and analysed with the same chains. The p-value is the fraction of
null datasets whose statistic reaches the observed one, ``(1 + #{T_null >= T_obs}) / (1 + n)``
(never zero, so an upper bound for the true tail probability at this number of simulations), and
the significance its one-sided normal equivalent.
"""
import logging
from dataclasses import dataclass

import healpy as hp
import numpy as np
import sparse
from histpy import Histogram
from scipy.stats import norm as normal
from tqdm.auto import tqdm

from .. import validation
from ..binning import is_nested
from ..errors import CosiInputError
from .lira import LIRA
from .regions import region_mask

logger = logging.getLogger(__name__)


@dataclass
class RegionSignificance:
    """Result of :func:`region_significance`.

    Attributes
    ----------
    observed : float
        Posterior mean flux of the region in the data (ph cm-2 s-1).
    null : ndarray
        The same statistic on every dataset simulated from the null model.
    p_value : float
        ``(1 + #{null >= observed}) / (1 + n)``.
    significance : float
        One-sided normal equivalent of the p-value (sigma).
    """

    observed: float
    null: np.ndarray
    p_value: float
    significance: float


def null_image(result, pixels, width_deg=None):
    """The posterior mean with the region's pixels replaced by the mean intensity of a ring around it.

    The ring holds the pixels within ``width_deg`` (default: the region's own radius, at least two
    pixels) of the region and outside it: the feature removed, its surroundings kept.
    """
    axis = result.model_axes[0]
    mean = np.asarray(result.mean().contents, dtype=np.float64)
    nest = is_nested(axis)
    radius = width_deg if width_deg is not None else max(
        np.degrees(np.sqrt(pixels.sum() * 4 * np.pi / axis.nbins / np.pi)), 2 * np.degrees(hp.nside2resol(axis.nside)))
    ring = np.zeros_like(pixels)
    for p in np.flatnonzero(pixels):
        ring[hp.query_disc(axis.nside, hp.pix2vec(axis.nside, p, nest=nest), np.radians(radius), nest=nest)] = True
    ring &= ~pixels
    if not ring.any():
        raise CosiInputError("region significance: the region covers the sky; give a null image")
    out = mean.copy()
    out[pixels] = mean[ring].mean(axis=0)
    return out


def region_significance(result, dataset, *, disc=None, polygon=None, mask=None, null=None, n_simulations=20,
                        seed=0, progress=True, **lira_options):
    """Significance of a region's flux against a null model, by posterior predictive simulation.

    Parameters
    ----------
    result : LIRAResult
        The posterior of the data.
    dataset : COSIDataset
        The dataset analysed (its engine and templates simulate the null datasets).
    disc, polygon, mask
        The region (see :func:`.regions.region_mask`).
    null : ndarray or histpy.Histogram, optional
        The null sky; by default :func:`null_image` (the feature replaced by its surroundings).
        The backgrounds are at their posterior mean norms.
    n_simulations : int
        Datasets simulated from the null model.
    seed : int
    progress : bool
    **lira_options
        Keywords of :class:`~.lira.LIRA` for the chains on the simulated datasets (by default those
        of a short run: 2 chains, 100 + 100 sweeps, run in this process, where worker processes would
        start anew for every dataset).

    Returns
    -------
    RegionSignificance
    """
    n_simulations = validation.number(n_simulations, "n_simulations", "region_significance", low=1, integer=True)
    engine = dataset.engine
    pixels = region_mask(result.model_axes[0], disc=disc, polygon=polygon, mask=mask)
    sky = null_image(result, pixels) if null is None else engine.image_values(null)
    norms = {name: value[0] for name, value in result.background_norms().items()}
    expected = np.asarray(engine.expectation(sky, norms).contents, dtype=np.float64)
    observed = float(result.region_flux(mask=pixels).mean)
    options = {"n_chains": 2, "n_samples": 100, "burn_in": 100, "n_jobs": 1, **lira_options, "progress": False}
    rng = np.random.default_rng(seed)
    values = []
    for _ in tqdm(range(n_simulations), desc="null simulations", unit="dataset", disable=not progress):
        counts = Histogram(engine.data_axes, contents=sparse.COO.from_numpy(rng.poisson(expected).astype(float)))
        simulated = LIRA(dataset.with_counts(counts), seed=int(rng.integers(2 ** 31)), **options).run()
        values.append(simulated.region_flux(mask=pixels).mean)
    values = np.array(values)
    p_value = (1 + int(np.sum(values >= observed))) / (1 + n_simulations)
    logger.info("region significance: observed %.4g, null %.4g +- %.2g, p <= %.3g", observed, values.mean(),
                values.std(), p_value)
    return RegionSignificance(observed, values, p_value, float(normal.isf(p_value)))
