"""LIRA on the sphere: several Gibbs chains, their draws, checkpoints and resumption.

The chains run segment by segment (the sweeps between two checkpoints), each chain with its
own generator: in worker processes (``n_jobs > 1``) or in turn, the draws are the same.
"""
import json
import logging
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numba
import numpy as np
from tqdm.auto import tqdm

from .. import validation
from .._atomic import atomic_path
from ..errors import CosiFileError, CosiInputError
from . import sharing
from .diagnostics import MIN_DRAWS
from .gibbs import DEFAULT_HMC_STEPS, GibbsSampler, brightness_regions
from .results import LIRAResult
from .tree import DEFAULT_DELTA, DEFAULT_TOTAL_PRIOR

logger = logging.getLogger(__name__)

_WHERE = "LIRA"

#: Brightness regions of the initial image whose totals the scale move draws each on its own.
DEFAULT_SCALE_REGIONS = 3
#: Sibling swaps per sweep where the chains start around an image (:mod:`.swap`).
DEFAULT_SIBLING_SWAPS = 16

#: The sampler of a worker process (set once by :func:`_start_worker`).
_WORKER_SAMPLER = None


def run_segment(sampler, state, rng, start, stop, burn_in, thin):
    """Sweeps ``start`` to ``stop`` of one chain.

    Parameters
    ----------
    sampler : GibbsSampler
    state : ChainState
        The state at sweep ``start``.
    rng : numpy.random.Generator
        The chain's generator.
    start, stop : int
    burn_in, thin : int
        Which sweeps are kept as draws.

    Returns
    -------
    state : ChainState
        The state at sweep ``stop``.
    rng : numpy.random.Generator
    traces : dict of str to ndarray
        Rows ``start`` to ``stop`` of the chain's traces (the state each sweep starts from).
    draws : dict of int to ndarray
        Kept images by draw index.
    """
    n = stop - start
    traces = {"log_likelihood": np.empty(n), "log_posterior": np.empty(n),
              "smoothing": np.empty((n,) + state.smoothing.shape), "background_norms": np.empty((n, len(state.norms))),
              "total_flux": np.empty((n, sampler.n_ei))}
    draws = {}
    for i, t in enumerate(range(start, stop)):
        new, log_like = sampler.sweep(state, rng, adapt=t < burn_in)
        # the traces describe the state each sweep starts from (its likelihood comes with the sweep)
        traces["log_likelihood"][i] = log_like
        traces["log_posterior"][i] = log_like + state.log_prior
        traces["smoothing"][i] = state.smoothing
        traces["background_norms"][i] = state.norms
        traces["total_flux"][i] = sampler.total_flux(state.image)
        kept = t - burn_in
        if kept >= 0 and kept % thin == 0:
            draws[kept // thin] = new.image.astype(np.float32)
        state = new
    return state, rng, traces, draws


def default_jobs(n_chains):
    """Worker processes for `n_chains` chains when ``n_jobs`` is not given: one per chain up to the cores
    (numba's thread count) where the main module is no file (a notebook, IPython, ``python -c``), else 1.

    Spawned workers import the main module's file again, so in a script every worker would re-run the
    script's top level unless LIRA runs under ``if __name__ == "__main__":``, which cannot be seen from here.
    """
    if getattr(sys.modules.get("__main__"), "__file__", None) is not None:
        return 1
    return max(1, min(int(n_chains), numba.get_num_threads()))


def _start_worker(payload, threads):
    global _WORKER_SAMPLER
    _WORKER_SAMPLER = sharing.load(payload)
    numba.set_num_threads(threads)


def _worker_segment(*args):
    return run_segment(_WORKER_SAMPLER, *args)


class LIRA:
    """Bayesian multiscale deconvolution on the HEALPix quad-tree, by exact Gibbs sampling.

    The model and the sweep are described in :mod:`.gibbs`; the prior in :mod:`.tree`.

    Parameters
    ----------
    dataset : COSIDataset
        Counts (whole numbers), backgrounds and the engine; a full-sky HEALPix model grid.
    n_chains : int
        Chains, each from its own dispersed start.
    n_samples : int
        Draws kept per chain after the burn-in (after thinning).
    burn_in : int
        Sweeps discarded at the start of every chain. The defaults (1000 + 2000 sweeps, those of pylira's
        ``LIRADeconvolver``) follow what the demo-scale chains need: started around RL's image they drift
        for 500 to 1000 sweeps before they settle, so the draws of shorter chains still carry the start
        (``benchmarks/RESULTS.md``). At the DC2 scale a sweep costs several RL iterations, so the defaults
        take hours there. The R-hat warnings say when the chains are too short.
    thin : int
        Keep one sweep in `thin`.
    delta : float
        Hyperprior of the smoothing parameters, ``p(a) ~ exp(-delta a^3 / 3)`` (LIRA's 1000).
    total_prior : (float, float)
        Gamma (shape, rate) prior on the expected total complete counts of the sky; flat (1, 0) by default
        (LIRA's (1, 0.05) makes the images 5 % too faint).
    initial_smoothing : float
        Smoothing parameter around which the starts are dispersed.
    initial_image : histpy.Histogram or ndarray, optional
        Image around which the starts are dispersed (e.g. an RL image); by default flat.
    background_priors : dict of str to (float, float), optional
        Gamma (shape, rate) priors of background norms; flat where not given.
    fit_backgrounds : bool
        Sample the background norms (else they stay at `initial_norms`).
    scale_move : bool
        Add to every sweep the joint move of the sky totals and the background norms (:mod:`.scale`):
        it crosses in one step the ridge along which a sky total and a background trade counts. Its
        forward product of the sky's shape (split by Ei bin) replaces the one the allocation would make,
        so with one region it adds only a few passes over the non-empty bins.
    scale_regions : int
        With an `initial_image`, the scale move draws the totals of this many brightness regions of it
        (:func:`.gibbs.brightness_regions`, equal numbers of pixels) each on its own: the faint sky between
        the sources then trades counts with the backgrounds in one step. Each region adds one forward
        product to the sweep. Without an initial image the sky is one region.
    smoothing_move : bool, optional
        Add to every sweep the joint move of one level's smoothing and splits (:mod:`.smoothing_move`): the
        smoothing and the image's roughness move together, where the Gibbs steps alone move them in turn.
        It adds one forward product to the sweep. By default it is on where the scale move has several
        regions: at the demo scale the two together gave 2.6 times the pixels' effective samples per sweep
        for 1.9 times the time, the smoothing move alone 1.1 times for 1.2 (``benchmarks/RESULTS.md``).
    sibling_swaps : int
        With an `initial_image`, proposals per sweep that exchange two children's totals under the parents of
        its brightest tenth of pixels (:mod:`.swap`): at a large `delta` a bright source's flux then moves
        between neighbouring pixels in one step, where the Gibbs steps leave each chain in its own speckle
        for hundreds of sweeps. The pixels' columns at the non-empty bins are computed once (at most
        ``swap.MEMORY_MB``). At the demo scale the 16 swaps gave the brightest tenth of the pixels five
        times the effective samples for 1.25 times the sweep's time; at DC2 scale, where a column covers
        a fifth of 1.5 million bins, for 1.3 times (``benchmarks/RESULTS.md``). 0 leaves the move out.
    hmc_steps : int
        Leapfrog steps of the image move (:mod:`.hmc`, Hamiltonian Monte Carlo on the log-image, the allocation
        integrated out) in every sweep, each costing about one RL iteration; 0 (the default) leaves the move
        out. Each step costs about one RL iteration, which at the demo scale buys little mixing
        (``benchmarks/RESULTS.md``).
    initial_norms : dict of str to float, optional
        Starting background norms (1 where not given).
    seed : int
        Seed of every chain's generator (chain c uses ``(seed, c)``).
    checkpoint : str or pathlib.Path, optional
        File (``.npz``) where the run is saved every `checkpoint_every` sweeps and at the end,
        atomically; a run finding it resumes from it.
    checkpoint_every : int
        Sweeps between checkpoints (and between two updates of the progress bar).
    n_jobs : int, optional
        Worker processes running the chains in parallel (at most one per chain), each with
        ``cores // n_jobs`` threads; the engine's arrays reach them once, in shared memory
        (:mod:`.sharing`), not as one copy per worker. 1 runs the chains in turn in this process. The
        draws are the same either way. The workers are spawned and import the main module again: a script
        starts LIRA under ``if __name__ == "__main__":`` (without it the run stops with an error saying so).
        None (the default): one worker per chain up to the cores (numba's thread count) in an interactive
        session (a notebook, IPython, ``python -c``), whose main module is no file a worker would run
        again; 1 in a script, which asks for workers with `n_jobs` under the guard.
    progress : bool
        Show a progress bar.

    Examples
    --------
    >>> result = LIRA(dataset, n_chains=4, n_samples=300, burn_in=300).run()   # doctest: +SKIP
    >>> result.mean(), result.std(), result.region_flux(disc=(0, 0, 10))      # doctest: +SKIP
    """

    def __init__(self, dataset, *, n_chains=4, n_samples=2000, burn_in=1000, thin=1, delta=DEFAULT_DELTA,
                 total_prior=DEFAULT_TOTAL_PRIOR, initial_smoothing=1.0, initial_image=None,
                 background_priors=None, fit_backgrounds=True, scale_move=True, hmc_steps=DEFAULT_HMC_STEPS,
                 smoothing_move=None, scale_regions=DEFAULT_SCALE_REGIONS, sibling_swaps=DEFAULT_SIBLING_SWAPS,
                 initial_norms=None, seed=0,
                 checkpoint=None, checkpoint_every=50, n_jobs=None, progress=True):
        self.dataset = dataset
        self.n_chains = validation.number(n_chains, "n_chains", _WHERE, low=1, integer=True)
        self.n_samples = validation.number(n_samples, "n_samples", _WHERE, low=1, integer=True)
        self.burn_in = validation.number(burn_in, "burn_in", _WHERE, low=0, integer=True)
        self.thin = validation.number(thin, "thin", _WHERE, low=1, integer=True)
        self.delta = validation.number(delta, "delta", _WHERE, low=0, low_open=True)
        if np.ndim(total_prior) != 1 or len(total_prior) != 2:
            validation.fail("total_prior", f"expected (shape, rate), got {total_prior!r}", _WHERE)
        self.total_prior = (validation.number(total_prior[0], "total_prior shape", _WHERE, low=0, low_open=True),
                            validation.number(total_prior[1], "total_prior rate", _WHERE, low=0))
        self.initial_smoothing = validation.number(initial_smoothing, "initial_smoothing", _WHERE, low=0,
                                                   low_open=True)
        self.background_priors = {}
        for name, prior in (background_priors or {}).items():
            if np.ndim(prior) != 1 or len(prior) != 2:
                validation.fail(f"background_priors.{name}", f"expected (shape, rate), got {prior!r}", _WHERE)
            self.background_priors[name] = (
                validation.number(prior[0], f"background_priors.{name} shape", _WHERE, low=0, low_open=True),
                validation.number(prior[1], f"background_priors.{name} rate", _WHERE, low=0))
        self.fit_backgrounds = validation.flag(fit_backgrounds, "fit_backgrounds", _WHERE)
        self.scale_move = validation.flag(scale_move, "scale_move", _WHERE)
        self.hmc_steps = validation.number(hmc_steps, "hmc_steps", _WHERE, low=0, integer=True)
        self.scale_regions = validation.number(scale_regions, "scale_regions", _WHERE, low=1, integer=True)
        self.sibling_swaps = validation.number(sibling_swaps, "sibling_swaps", _WHERE, low=0, integer=True)
        self.seed = validation.number(seed, "seed", _WHERE, low=0, integer=True)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every = validation.number(checkpoint_every, "checkpoint_every", _WHERE, low=1,
                                                  integer=True)
        self.n_jobs = (default_jobs(self.n_chains) if n_jobs is None
                       else validation.number(n_jobs, "n_jobs", _WHERE, low=1, integer=True))
        self.progress = validation.flag(progress, "progress", _WHERE)
        if self.n_chains < 2 or self.n_samples < MIN_DRAWS:
            logger.warning("LIRA: %d chain(s) of %d draws: R-hat needs at least 2 chains of %d draws "
                           "(n_chains, n_samples)", self.n_chains, self.n_samples, MIN_DRAWS)
        self.initial_image = None if initial_image is None else dataset.engine.image_values(initial_image)
        regions = None
        if self.initial_image is not None and self.scale_regions > 1:
            regions = brightness_regions(self.initial_image, self.scale_regions)
        # alone the smoothing move buys little for its forward product; with regions the two mix together
        self.smoothing_move = (regions is not None and self.scale_move if smoothing_move is None
                               else validation.flag(smoothing_move, "smoothing_move", _WHERE))
        self.sampler = GibbsSampler(dataset.engine, self.delta, self.total_prior, self.background_priors,
                                    self.fit_backgrounds, self.scale_move, self.hmc_steps, self.smoothing_move,
                                    regions, self.initial_image, self.sibling_swaps)
        norms = dict(initial_norms or {})
        self.initial_norms = np.array([float(norms.get(n, 1.0)) for n in self.sampler.names])

    @property
    def n_sweeps(self):
        """Sweeps per chain: the burn-in and the thinned draws."""
        return self.burn_in + self.n_samples * self.thin

    def moves(self):
        """The moves of every sweep besides the Gibbs steps, as the sampler makes them.

        Returns
        -------
        dict
            ``scale_move``, ``scale_regions`` (1 without an initial image), ``smoothing_move``,
            ``sibling_swaps`` (0 without an initial image) and ``hmc_steps``.
        """
        return {"scale_move": self.scale_move, "scale_regions": self.sampler.n_regions,
                "smoothing_move": self.smoothing_move,
                "sibling_swaps": 0 if self.sampler.swap is None else self.sibling_swaps, "hmc_steps": self.hmc_steps}

    def _settings(self):
        return {"n_chains": self.n_chains, "n_samples": self.n_samples, "burn_in": self.burn_in,
                "thin": self.thin, "delta": self.delta, "total_prior": list(self.total_prior),
                "seed": self.seed, "n_pix": self.sampler.n_pix, "n_ei": self.sampler.n_ei,
                "backgrounds": self.sampler.names, "fit_backgrounds": self.fit_backgrounds, **self.moves()}

    def _start(self):
        """Fresh chains: generators, dispersed states, empty traces and draws."""
        s = self.sampler
        rngs = [np.random.default_rng([self.seed, c]) for c in range(self.n_chains)]
        states = [s.dispersed_start(rng, self.initial_image, self.initial_smoothing, self.initial_norms)
                  for rng in rngs]
        shape = (self.n_chains, self.n_sweeps)
        traces = {"log_likelihood": np.full(shape, np.nan), "log_posterior": np.full(shape, np.nan),
                  "smoothing": np.full(shape + (s.tree.levels + 1, s.n_ei), np.nan),
                  "background_norms": np.full(shape + (len(s.names),), np.nan),
                  "total_flux": np.full(shape + (s.n_ei,), np.nan)}
        draws = np.zeros((self.n_chains, self.n_samples, s.n_pix, s.n_ei), dtype=np.float32)
        return {"sweep": 0, "rngs": rngs, "states": states, "traces": traces, "draws": draws}

    def run(self, max_sweeps=None):
        """Run (or resume) the chains.

        Parameters
        ----------
        max_sweeps : int, optional
            Stop after this many sweeps of every chain (the run is checkpointed, if a
            checkpoint file was given, and can be resumed).

        Returns
        -------
        LIRAResult or None
            The result once every chain has all its sweeps; None when stopped before.
        """
        run = self._load() if self.checkpoint is not None and self.checkpoint.exists() else self._start()
        s = self.sampler
        stop = self.n_sweeps if max_sweeps is None else min(self.n_sweeps, run["sweep"] + int(max_sweeps))
        bar = tqdm(total=self.n_sweeps, initial=run["sweep"], desc="LIRA sweeps", unit="sweep",
                   disable=not self.progress)
        workers = min(self.n_jobs, self.n_chains)
        pool = shared = None
        if workers > 1 and run["sweep"] < stop:
            threads = max(1, numba.get_num_threads() // workers)
            # the engine's arrays go to the workers once, in shared memory
            shared = sharing.SharedPickle(s)
            logger.info("LIRA: %d worker processes, %.1f MB shared, %.1f MB pickled", workers,
                        shared.shared_bytes / 1e6, len(shared.payload) / 1e6)
            # spawned workers: forking a process whose compiled kernels hold threads is not safe
            # the pickle's block name, not the pickle, goes through the start-up pipe (see sharing)
            source = shared.payload if shared.handle is None else shared.handle
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_start_worker, initargs=(source, threads))
        try:
            while run["sweep"] < stop:
                start = run["sweep"]
                end = min(stop, (start // self.checkpoint_every + 1) * self.checkpoint_every)
                args = [(run["states"][c], run["rngs"][c], start, end, self.burn_in, self.thin)
                        for c in range(self.n_chains)]
                if pool is None:
                    segments = [run_segment(s, *a) for a in args]
                else:
                    try:
                        segments = [f.result() for f in [pool.submit(_worker_segment, *a) for a in args]]
                    except BrokenProcessPool as error:
                        raise RuntimeError(
                            f"LIRA: a worker process stopped (n_jobs={self.n_jobs}). Workers are spawned and "
                            "import the main module again: a script must start LIRA under "
                            "'if __name__ == \"__main__\":'. A worker killed for memory stops the run too. "
                            "n_jobs=1 runs the chains in this process"
                            + (f"; the checkpoint {self.checkpoint} resumes the run" if self.checkpoint else "")
                        ) from error
                for c, (state, rng, traces, draws) in enumerate(segments):
                    run["states"][c], run["rngs"][c] = state, rng
                    for name, values in traces.items():
                        run["traces"][name][c, start:end] = values
                    for index, image in draws.items():
                        run["draws"][c, index] = image
                run["sweep"] = end
                bar.update(end - start)
                if self.checkpoint is not None and end % self.checkpoint_every == 0:
                    self._save(run)
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            if shared is not None:
                shared.close()
        if self.checkpoint is not None:
            self._save(run)
        if run["sweep"] < self.n_sweeps:
            logger.info("LIRA stopped after %d of %d sweeps", run["sweep"], self.n_sweeps)
            return None
        return LIRAResult(run["draws"], run["traces"], self.dataset.engine, burn_in=self.burn_in,
                          unexposed=s.unexposed, background_names=s.names)

    # ---- checkpoints -------------------------------------------------------------------------
    def _save(self, run):
        arrays = {f"trace_{k}": v for k, v in run["traces"].items()}
        for c, st in enumerate(run["states"]):
            arrays[f"image_{c}"] = st.image
            arrays[f"smoothing_{c}"] = st.smoothing
            arrays[f"norms_{c}"] = st.norms
            arrays[f"log_prior_{c}"] = np.array(st.log_prior)
            arrays[f"tuning_{c}"] = st.tuning
            arrays[f"metric_{c}"] = st.metric
            arrays[f"smoothing_steps_{c}"] = st.smoothing_steps
        rng_states = [rng.bit_generator.state for rng in run["rngs"]]
        with atomic_path(self.checkpoint) as tmp, open(tmp, "wb") as f:
            np.savez(f, draws=run["draws"], sweep=np.array(run["sweep"]),
                     settings=np.array(json.dumps(self._settings())), rngs=np.array(json.dumps(rng_states)),
                     **arrays)
        logger.debug("LIRA checkpoint at sweep %d written to %s", run["sweep"], self.checkpoint)

    def _load(self):
        path = self.checkpoint
        try:
            with np.load(path) as f:
                content = {k: f[k] for k in f.files}
        except (OSError, ValueError) as err:
            raise CosiFileError(f"{path}: not a LIRA checkpoint ({err})") from err
        settings = json.loads(str(content["settings"]))
        if settings != json.loads(json.dumps(self._settings())):
            raise CosiInputError(f"{path}: checkpoint of another run (settings {settings}); remove it or give "
                                 "the same settings")
        run = self._start()
        run["sweep"] = int(content["sweep"])
        run["draws"] = content["draws"]
        run["traces"] = {k: content[f"trace_{k}"] for k in run["traces"]}
        for c, state in enumerate(json.loads(str(content["rngs"]))):
            run["rngs"][c].bit_generator.state = state
            st = run["states"][c]
            st.image, st.smoothing = content[f"image_{c}"], content[f"smoothing_{c}"]
            st.norms, st.log_prior = content[f"norms_{c}"], float(content[f"log_prior_{c}"])
            st.tuning, st.metric = content[f"tuning_{c}"], content[f"metric_{c}"]
            st.smoothing_steps = content[f"smoothing_steps_{c}"]
        logger.info("LIRA resumed from %s at sweep %d of %d", path, run["sweep"], self.n_sweeps)
        return run
