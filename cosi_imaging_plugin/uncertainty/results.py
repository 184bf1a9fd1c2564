"""The posterior of a LIRA run: maps, traces, diagnostics and region fluxes."""
import logging
import warnings

import healpy as hp
import numpy as np
from histpy import Histogram

from .._atomic import atomic_path
from ..binning import IMAGE_UNIT, is_nested
from ..errors import CosiInputError
from .diagnostics import ess, rhat, warn_unconverged
from .regions import flux_summary, region_mask

logger = logging.getLogger(__name__)

#: Quantile maps made by :meth:`LIRAResult.maps` (2.5, 16, 50, 84, 97.5 %).
QUANTILES = (0.025, 0.16, 0.5, 0.84, 0.975)

#: Traced parameters checked by :meth:`LIRAResult.diagnostics`.
TRACED = ("log_posterior", "smoothing", "background_norms", "total_flux")
#: A background norm correlated with the all-sky flux beyond this (in absolute value) over the draws is reported as
#: hard to tell from a smooth sky (at the demo scale the instrumental norm's correlation is -0.82 to -0.95).
DEGENERATE_CORRELATION = 0.8


class LIRAResult:
    """Draws of the sky image from several chains, with their traces.

    Parameters
    ----------
    draws : ndarray, shape (n_chains, n_samples, n_pix, n_ei)
        Images after the burn-in (ph cm-2 s-1 sr-1).
    traces : dict of str to ndarray
        Per chain and sweep (burn-in included): ``log_likelihood``, ``log_posterior``,
        ``smoothing`` [level, Ei], ``background_norms`` [background], ``total_flux`` [Ei].
    engine : ResponseEngine
        The dataset's engine (model axes, exposure).
    burn_in : int
        Sweeps of the traces before the first draw.
    unexposed : ndarray of bool, shape (n_pix, n_ei), optional
        Pixels with no exposure (the prior alone describes them).
    background_names : list of str
    """

    def __init__(self, draws, traces, engine, burn_in=0, unexposed=None, background_names=()):
        self.draws = np.asarray(draws)
        self.traces = traces
        self.engine = engine
        self.model_axes = engine.model_axes
        self.burn_in = int(burn_in)
        self.unexposed = np.zeros(self.draws.shape[2:], bool) if unexposed is None else np.asarray(unexposed)
        self.background_names = list(background_names)
        self.solid_angle = 4 * np.pi / self.draws.shape[2]

    @property
    def n_chains(self):
        return self.draws.shape[0]

    @property
    def n_samples(self):
        return self.draws.shape[1]

    def _flat(self):
        return self.draws.reshape(-1, *self.draws.shape[2:]).astype(np.float64)

    def _histogram(self, values, unit=IMAGE_UNIT):
        return Histogram(self.model_axes, contents=np.asarray(values), unit=unit)

    # ---- maps --------------------------------------------------------------------------------
    def mean(self):
        """Posterior mean image (Histogram over the model axes)."""
        return self._histogram(self._flat().mean(axis=0))

    def std(self):
        """Posterior standard deviation of every pixel (Histogram)."""
        return self._histogram(self._flat().std(axis=0, ddof=1))

    def quantile(self, q):
        """Posterior quantile `q` (in [0, 1]) of every pixel (Histogram)."""
        if not 0 <= q <= 1:
            raise CosiInputError(f"quantile {q!r}: must be in [0, 1]")
        return self._histogram(np.quantile(self._flat(), q, axis=0))

    def significance(self):
        """Posterior mean over standard deviation of every pixel (Histogram, dimensionless)."""
        flat = self._flat()
        std = flat.std(axis=0, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._histogram(np.where(std > 0, flat.mean(axis=0) / std, 0.0), unit=None)

    def maps(self):
        """All maps by name: ``mean``, ``std``, ``q2.5``, ``q16``, ``q50``, ``q84``, ``q97.5``, ``significance``,
        ``unexposed`` (1 where the prior alone speaks)."""
        flat = self._flat()
        out = {"mean": self._histogram(flat.mean(axis=0)), "std": self._histogram(flat.std(axis=0, ddof=1))}
        for q, values in zip(QUANTILES, np.quantile(flat, QUANTILES, axis=0)):
            out[f"q{100 * q:g}"] = self._histogram(values)
        out["significance"] = self.significance()
        out["unexposed"] = self._histogram(self.unexposed.astype(np.float64), unit=None)
        return out

    def write_fits(self, path, energy_index=0, overwrite=True):
        """Write the maps of one Ei bin as the columns of one HEALPix FITS file (healpy), atomically."""
        maps = self.maps()
        names = list(maps)
        axis = self.model_axes[0]
        with atomic_path(path, overwrite=overwrite) as tmp:
            hp.write_map(str(tmp), [np.asarray(maps[n].contents)[:, energy_index].astype(np.float64) for n in names],
                         nest=is_nested(axis), coord="G", column_names=[n.upper().replace(".", "_") for n in names],
                         column_units=[str(maps[n].unit or "") for n in names], overwrite=True, dtype=np.float64,
                         extra_header=[("NCHAINS", self.n_chains), ("NSAMPLES", self.n_samples),
                                       ("EIBIN", energy_index)])
        logger.info("wrote LIRA maps %s to %s", names, path)
        return path

    def write(self, path, overwrite=True):
        """Write every map (all Ei bins) to one HDF5 file (histpy), atomically."""
        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.unlink()
            for name, hist in self.maps().items():
                hist.write(tmp, name=name, overwrite=True)
        logger.info("wrote LIRA maps to %s", path)
        return path

    # ---- diagnostics -------------------------------------------------------------------------
    def trace(self, name, burn_in=True):
        """Trace of a parameter per chain and sweep (without the burn-in if ``burn_in=False``)."""
        if name not in self.traces:
            raise CosiInputError(f"unknown trace '{name}'; known: {sorted(self.traces)}")
        values = self.traces[name]
        return values if burn_in else values[:, self.burn_in:]

    def diagnostics(self, warn=True):
        """Split-R-hat and bulk ESS of the pixels and of every traced parameter (after the burn-in).

        Returns
        -------
        dict
            ``rhat`` and ``ess``: dicts with ``pixels`` (arrays [n_pix, n_ei]) and every traced name;
            ``pixels_converged``: the fraction of (exposed) pixels with R-hat <= 1.01;
            ``flux_background_correlation``: for every sampled background, the correlation of its norm with the
            all-sky flux (summed over the Ei bins) over the kept draws of all chains.

        Where a background's norm and the all-sky flux are correlated beyond :data:`DEGENERATE_CORRELATION` and
        either has R-hat > 1.01, the warning names that background: the data hardly tell it from a smooth
        sky, and the chains move slowly along that direction.
        """
        out = {"rhat": {"pixels": rhat(self.draws)}, "ess": {"pixels": ess(self.draws)}}
        for name in TRACED:
            values = self.trace(name, burn_in=False)
            if values.size and (values.ndim == 2 or values.shape[2] > 0):
                out["rhat"][name] = rhat(values)
                out["ess"][name] = ess(values)
        exposed = ~self.unexposed
        out["pixels_converged"] = float(np.mean(out["rhat"]["pixels"][exposed] <= 1.01))
        out["flux_background_correlation"] = self._flux_background_correlation()
        if warn:
            for name, value in out["rhat"].items():
                warn_unconverged(value[exposed] if name == "pixels" else value, f"LIRA {name}")
            self._warn_degenerate(out)
        return out

    def _flux_background_correlation(self):
        """Correlation of every sampled background norm with the all-sky flux over the kept draws."""
        if np.size(self.traces.get("background_norms", ())) == 0:  # a dataset without backgrounds
            return {}
        flux = self.trace("total_flux", burn_in=False).sum(axis=-1).ravel()
        norms = self.trace("background_norms", burn_in=False).reshape(flux.size, -1)
        out = {}
        for name, values in zip(self.background_names, norms.T):
            if np.ptp(values) > 0 and np.ptp(flux) > 0:  # a fixed norm (not sampled) has no correlation
                out[name] = float(np.corrcoef(flux, values)[0, 1])
        return out

    def _warn_degenerate(self, diagnostics):
        """Warn for every background nearly degenerate with a smooth sky whose direction has not converged."""
        rhats = diagnostics["rhat"]
        for name, r in diagnostics["flux_background_correlation"].items():
            # only sampled backgrounds have a correlation, so their R-hat is there (none without backgrounds)
            norm_rhat = np.atleast_1d(rhats["background_norms"])[self.background_names.index(name)]
            worst = max(float(np.max(rhats["total_flux"])), float(norm_rhat))
            if abs(r) >= DEGENERATE_CORRELATION and worst > 1.01:
                warnings.warn(
                    f"LIRA: the all-sky flux and the norm of background '{name}' are correlated at {r:.2f} over "
                    f"the draws (R-hat up to {worst:.3f}): the data hardly tell this background from a smooth sky, "
                    "and the chains move slowly along that direction, so the all-sky flux and this norm need "
                    "longer chains (n_samples, burn_in) than the rest. A prior on the norm from an independent "
                    f"measurement (background_priors={{'{name}': (shape, rate)}}) shortens that direction where it "
                    "is tighter than the data's own constraint.",
                    RuntimeWarning, stacklevel=3)

    # ---- regions -----------------------------------------------------------------------------
    def region_flux_samples(self, *, disc=None, polygon=None, mask=None, energy_index=None):
        """Flux of a region (ph cm-2 s-1) in every draw: (mask, samples [n_chains, n_samples]).

        `energy_index` None sums the Ei bins.
        """
        pixels = region_mask(self.model_axes[0], disc=disc, polygon=polygon, mask=mask)
        per_ei = self.draws[:, :, pixels, :].astype(np.float64).sum(axis=2) * self.solid_angle
        return pixels, (per_ei.sum(axis=-1) if energy_index is None else per_ei[..., energy_index])

    def region_flux(self, *, disc=None, polygon=None, mask=None, energy_index=None):
        """The posterior of a region's flux: mean, std, median and 68 % / 95 % credible intervals.

        Parameters
        ----------
        disc, polygon, mask
            The region (see :func:`.regions.region_mask`).
        energy_index : int, optional
            One Ei bin; by default the sum over them.

        Returns
        -------
        FluxSummary
        """
        pixels, samples = self.region_flux_samples(disc=disc, polygon=polygon, mask=mask,
                                                   energy_index=energy_index)
        if np.any(self.unexposed[pixels]):
            logger.warning("region holds %d pixels without exposure: their flux is the prior's",
                           int(self.unexposed[pixels].any(axis=-1).sum()))
        return flux_summary(samples, int(pixels.sum()))

    def total_flux(self, energy_index=None):
        """The posterior of the all-sky flux (:class:`.regions.FluxSummary`)."""
        return self.region_flux(mask=np.ones(self.draws.shape[2], bool), energy_index=energy_index)

    def background_norms(self):
        """Posterior mean and std of every background norm (after the burn-in)."""
        values = self.trace("background_norms", burn_in=False)
        return {n: (float(values[..., k].mean()), float(values[..., k].std(ddof=1)))
                for k, n in enumerate(self.background_names)}
