"""The 3ML plugin: a COSI dataset as a likelihood over astromodels sources.

Point and extended sources of an astromodels ``Model`` are rasterized onto the
dataset's HEALPix model grid, folded through its response (cached per source and
per spatial-parameter state, :mod:`.source_folders`) and fitted jointly with one
normalization per named background template, which appear in 3ML as nuisance
parameters ``{plugin}_{template}_norm`` (or ``{plugin}_{template}_g{k}_norm``, one
per group of ScAtt/Time rows, when a template is split into groups;
:mod:`.background_norms`).
"""
import logging

import numpy as np
from histpy import Histogram
from threeML.plugin_prototype import PluginPrototype

from .._deprecation import warn_moved
from ..binning import IMAGE_UNIT, frame_name
from ..datasets import DEFAULT_DTYPE, DEFAULT_RTOL, COSIDataset
from ..engine import ResponseEngine
from ..errors import CosiInputError
from ..io.histograms import write_histogram
from ..plots import residual_figures
from ..sky.rasterize import Rasterizer
from .background_norms import BackgroundNormalization
from .source_folders import folder_for

logger = logging.getLogger(__name__)

LOG_LIKE_OFFSETS = ("saturated", "factorial")


class COSIImagingLike(PluginPrototype):
    """COSI binned imaging likelihood for 3ML.

    Parameters
    ----------
    name : str
        Plugin name (prefix of its nuisance parameters).
    dataset : COSIDataset
        The binned data, background templates and response engine (a
        ResponseEngine holding data is accepted too, deprecated).
    background_bounds : dict of str to (float, float), optional
        Bounds of each background normalization (default (0, 100)).
    background_priors : dict of str to (float, float), optional
        Gaussian prior (mean, sigma) on a background normalization, added to the
        log-likelihood.
    fixed_backgrounds : iterable of str, optional
        Templates whose normalization is fixed at 1.
    log_like_offset : {'saturated', 'factorial'}
        'saturated' (default) reports ``log L - log L_saturated``, a small number
        close to minus half the Poisson deviance, which suits minimizers;
        'factorial' reports the full Poisson log-likelihood ``sum d ln eps - sum eps - sum ln d!``.
    function_frame : {'icrs', 'galactic'}
        Frame of the astromodels spatial parameters (astromodels uses ICRS).
    background_groups : dict of str to array_like of int, optional
        Templates split into one normalization per group of ScAtt/Time rows:
        ``groups[row]`` is the group (0, 1, ...) of each row of the data. Bounds,
        priors and fixing given for the template apply to each of its groups.
    """

    def __init__(self, name, dataset, background_bounds=None, background_priors=None, fixed_backgrounds=(),
                 log_like_offset="saturated", function_frame="icrs", background_groups=None):
        if isinstance(dataset, ResponseEngine):
            warn_moved("COSIImagingLike(name, engine)", "COSIImagingLike(name, COSIDataset(engine, name))")
            dataset = COSIDataset(dataset, name=name)
        if not isinstance(dataset, COSIDataset):
            raise CosiInputError(f"COSIImagingLike needs a COSIDataset, got {type(dataset).__name__}")
        engine = dataset.engine
        if log_like_offset not in LOG_LIKE_OFFSETS:
            raise CosiInputError(f"log_like_offset must be one of {LOG_LIKE_OFFSETS}, got {log_like_offset!r}")
        self._dataset = dataset
        self._engine = engine
        self._log_like_offset = log_like_offset
        self._function_frame = function_frame
        background_bounds = dict(background_bounds or {})
        self._priors = dict(background_priors or {})
        self._groups = {k: np.asarray(v) for k, v in (background_groups or {}).items()}
        for key, what in ((set(background_bounds), "background_bounds"), (set(self._priors), "background_priors"),
                          (set(fixed_backgrounds), "fixed_backgrounds"), (set(self._groups), "background_groups")):
            unknown = key - set(engine.background_names)
            if unknown:
                raise CosiInputError(f"{what} names unknown background(s) {sorted(unknown)}; "
                                     f"known: {engine.background_names}")
        self._backgrounds = [BackgroundNormalization(name, engine, bkg, self._groups.get(bkg),
                                                     background_bounds.get(bkg, (0.0, 100.0)),
                                                     free=bkg not in set(fixed_backgrounds))
                             for bkg in engine.background_names]
        nuisance = {par.name: par for par in self.background_parameters.values()}
        super().__init__(name, nuisance)
        axis = engine.model_axes[0]
        self._rasterizer = Rasterizer(axis.nside, axis.scheme, grid_frame=frame_name(axis, "galactic"),
                                      function_frame=function_frame)
        self._ei_edges = np.asarray(engine.model_axes[1].edges.to_value("keV"), dtype=np.float64)
        counts = engine.data.counts
        # subtracted from sum d ln eps - sum eps: sum ln d! for the full log-likelihood, or sum (d ln d - d)
        # for log L - log L_saturated (the factorials cancel)
        self._constant = engine.data.log_factorial
        if log_like_offset == "saturated":
            self._constant = float(np.sum(counts * np.log(counts) - counts))
        self._model = None
        self._folders = {}
        # background norms of the plugin this dataset was simulated from (see get_simulated_dataset)
        self._parent_backgrounds = {}
        self._simulation_rng = np.random.default_rng()

    # ---- construction from files -----------------------------------------------------------------
    @classmethod
    def from_files(cls, name, response, data, backgrounds=None, ccm=None, orientation=None, exposure_table=None,
                   rtol=DEFAULT_RTOL, dtype=DEFAULT_DTYPE, nside_model=None, progress=True, **kwargs):
        """Plugin on the files of a COSI analysis, in either frame.

        The file arguments are those of :meth:`COSIDataset.from_files
        <cosi_imaging_plugin.datasets.COSIDataset.from_files>`: a response, binned data,
        background templates, and a CCM (spacecraft-frame data binned in ScAtt or
        Time), an orientation file (spacecraft-frame data without CCM; Galactic-frame
        data) or an exposure table (Galactic-frame data).

        Parameters
        ----------
        name : str
            Plugin name.
        response, data, backgrounds, ccm, orientation, exposure_table, rtol, dtype, nside_model
            See :meth:`COSIDataset.from_files <cosi_imaging_plugin.datasets.COSIDataset.from_files>`.
        progress : bool
            Show progress bars while the response is compressed (False: none).
        **kwargs
            Passed to the constructor (background bounds and priors, log_like_offset, ...).
        """
        dataset = COSIDataset.from_files(response, data, backgrounds, ccm=ccm, orientation=orientation,
                                         exposure_table=exposure_table, name=name, rtol=rtol, dtype=dtype,
                                         nside_model=nside_model, progress=progress)
        return cls(name, dataset, **kwargs)

    @classmethod
    def from_manifest(cls, name, manifest, frame="spacecraft", rtol=DEFAULT_RTOL, dtype=DEFAULT_DTYPE, progress=True,
                      **kwargs):
        """Plugin on a dataset directory (``manifest.yaml``, e.g. written by ``cosi-imaging simulate``).

        Parameters
        ----------
        name : str
            Plugin name.
        manifest : str or pathlib.Path
            The dataset's ``manifest.yaml`` or its directory.
        frame : {'spacecraft', 'galactic'}
            'spacecraft': the ScAtt-binned data with the CCM; 'galactic': the
            Galactic-frame data (when simulated), the response rotated over the
            exposure table's ScAtt bins.
        rtol, dtype, progress, **kwargs
            As for :meth:`from_files`.
        """
        if frame not in ("spacecraft", "galactic"):
            raise CosiInputError(f"frame must be 'spacecraft' or 'galactic', got {frame!r}")
        return cls(name, COSIDataset.from_manifest(manifest, frame, name=name, rtol=rtol, dtype=dtype,
                                                   progress=progress), **kwargs)

    # ---- 3ML interface -------------------------------------------------------------------------
    def set_model(self, likelihood_model):
        """Register an astromodels Model; check that every source can be folded."""
        folders = {name: folder_for(source, self._dataset, self._rasterizer, self._ei_edges)
                   for name, source in {**likelihood_model.point_sources,
                                        **likelihood_model.extended_sources}.items()}
        others = [name for name in likelihood_model.sources if name not in folders]
        if others:
            raise CosiInputError(f"COSIImagingLike cannot fold source(s) {others}: only point and extended "
                                 f"sources are supported")
        if not folders:
            logger.warning("model for %s has no point or extended source", self.name)
        self._model = likelihood_model
        self._folders = folders
        self._fix_copied_parent_norms(likelihood_model)
        # fold once now: a source that cannot be rasterized or integrated fails before the fit starts
        for folder in folders.values():
            folder.check()

    def _fix_copied_parent_norms(self, likelihood_model):
        """Fix the copies of the background norms of the plugin this dataset was simulated from.

        3ML's ``GoodnessOfFit`` and ``LikelihoodRatioTest`` fit each simulated dataset with a
        clone of the best-fit model, which carries copies of the original plugin's nuisance
        parameters as external parameters. Nothing in the simulated dataset constrains them, so
        left free they make the fit degenerate (MIGRAD fails); they are fixed at their best-fit
        values. The original plugin's own parameters (a model shared with it) are left alone.
        """
        parameters = likelihood_model.parameters
        for name, original in self._parent_backgrounds.items():
            copy = parameters.get(name)
            if copy is not None and copy is not original and copy.free:
                copy.free = False
                logger.info("%s: fixed %s = %g, a copy of a nuisance parameter of the dataset it was "
                            "simulated from", self.name, name, copy.value)

    def background_norms(self):
        """Current background normalizations {template: value} (``template_g{k}`` for split templates)."""
        return {key: float(par.value) for key, par in self.background_parameters.items()}

    def background_row_norms(self):
        """{template: normalization} as the engine takes it: a number, or one value per row for split templates."""
        return {background.template: background.row_norms() for background in self._backgrounds}

    @property
    def background_parameters(self):
        """The nuisance parameters {template (or ``template_g{k}``): astromodels Parameter}."""
        return {key: par for background in self._backgrounds for key, par in background.parameters.items()}

    def expectation_at_bins(self):
        """(expected counts at the non-empty bins, expected counts over all bins) for the current model."""
        if self._model is None:
            raise CosiInputError(f"plugin {self.name}: set_model() has not been called")
        eps = np.zeros(self._engine.data.nnz)
        total = 0.0
        for folder in self._folders.values():
            at_bins, summed = folder.expectation()
            eps += at_bins
            total += summed
        for background in self._backgrounds:
            at_bins, summed = background.expectation()
            eps += at_bins
            total += summed
        return eps, total

    def get_log_like(self):
        """Poisson log-likelihood of the data for the current model (see ``log_like_offset``).

        Each source's folds stay where the engine keeps its bins (on the workers of a
        sharded engine); only its bin fluxes and the background norms go there, and the
        engine returns the likelihood (:meth:`ResponseEngine.log_likelihood_of_terms
        <cosi_imaging_plugin.engine.ResponseEngine.log_likelihood_of_terms>`).
        """
        if self._model is None:
            raise CosiInputError(f"plugin {self.name}: set_model() has not been called")
        terms, total = [], 0.0
        for folder in self._folders.values():
            weights, kept, summed = folder.term()
            terms.append((weights, kept))
            total += summed
        for background in self._backgrounds:
            total += background.total()
        try:
            log_like = self._engine.log_likelihood_of_terms(terms, self.background_row_norms(), total,
                                                            self._constant)
        except CosiInputError as exc:
            state = ", ".join(f"{p.path}={p.value:.6g}" for p in self._model.free_parameters.values())
            raise CosiInputError(f"plugin {self.name}: {exc}, for model state [{state}]") from exc
        for background in self._backgrounds:
            if background.template in self._priors:
                mean, sigma = self._priors[background.template]
                for par in background.parameters.values():
                    log_like -= 0.5 * ((par.value - mean) / sigma) ** 2
        return log_like

    def inner_fit(self):
        """No inner nuisance fit: the background norms are 3ML parameters."""
        return self.get_log_like()

    def get_number_of_data_points(self):
        """Number of bins of the dataset (empty ones included)."""
        return self._dataset.n_bins

    # ---- model images, counts and simulations --------------------------------------------------
    def model_image(self, sources=None):
        """Sky image [n_pix, n_ei] of the current model (ph cm-2 s-1 sr-1 per Ei bin)."""
        names = list(self._folders) if sources is None else list(sources)
        image = np.zeros(tuple(self._engine.model_axes.nbins))
        for name in names:
            image += self._folders[name].image()
        return image

    def model_rows(self, sources=None):
        """Response source rows of the current model, each source folded as the likelihood folds it.

        Sources folded outside the engine's response (point sources of Galactic-CDS data)
        are left out: see :meth:`direct_cds`.
        """
        names = list(self._folders) if sources is None else list(sources)
        rows = np.zeros((self._engine.n_rows, self._engine.response.n_source))
        for name in names:
            source_rows = self._folders[name].source_rows()
            if source_rows is not None:
                rows += source_rows
        return rows

    def direct_cds(self, sources=None):
        """Expected counts over the CDS [Em, Phi, PsiChi] of the sources folded outside the engine's response.

        Point sources of Galactic-CDS data are folded along their path through the rotated
        spacecraft-frame response, not through the precomputed Galactic-frame response.
        """
        names = list(self._folders) if sources is None else list(sources)
        out = np.zeros(tuple(self._engine.cds_axes.nbins))
        for name in names:
            counts = self._folders[name].direct_cds()
            if counts is not None:
                out += counts.reshape(out.shape)
        return out

    def get_model_counts(self):
        """Expected counts of the current model in every bin (dense Histogram over the data axes)."""
        counts = self._engine.expectation(bkg_norms=self.background_row_norms(), rows=self.model_rows())
        direct = self.direct_cds()
        if np.any(direct):  # Galactic CDS: one row, the data axes are the CDS
            counts = Histogram(counts.axes, contents=np.asarray(counts.contents) + direct.reshape(counts.axes.nbins),
                               unit=counts.unit)
        return counts

    def seed_simulations(self, seed):
        """Seed the stream of Poisson draws :meth:`get_simulated_dataset` uses when given no seed.

        3ML's ``GoodnessOfFit`` and ``LikelihoodRatioTest`` ask for simulated datasets without a
        seed: after ``seed_simulations(seed)`` their simulations are reproducible.
        """
        self._simulation_rng = np.random.default_rng(seed)

    def get_simulated_dataset(self, name=None, seed=None):
        """A new plugin on Poisson counts drawn from the current model (for GoodnessOfFit and LRT).

        Parameters
        ----------
        name : str, optional
            Name of the new plugin (default ``{name}_sim``).
        seed : int or numpy.random.Generator, optional
            Seed of the Poisson draw; by default the plugin's stream (see :meth:`seed_simulations`).
        """
        rng = np.random.default_rng(seed) if seed is not None else self._simulation_rng
        expected = self.get_model_counts()
        counts = rng.poisson(np.asarray(expected.contents)).astype(np.float64)
        name = name or f"{self.name}_sim"
        dataset = self._dataset.with_counts(Histogram(expected.axes, contents=counts), name=name)
        new = COSIImagingLike(name, dataset, background_priors=self._priors,
                              log_like_offset=self._log_like_offset, function_frame=self._function_frame,
                              background_groups=self._groups)
        copies = new.background_parameters
        for key, par in self.background_parameters.items():
            copies[key].bounds = par.bounds
            copies[key].value = par.value
            copies[key].free = par.free
        new._parent_backgrounds = {par.name: par for par in self.background_parameters.values()}
        return new

    # ---- data versus model ---------------------------------------------------------------------
    def data_cds(self):
        """Observed counts summed over the ScAtt/Time rows: Histogram over [Em, Phi, PsiChi]."""
        return self._dataset.counts_cds()

    def model_cds(self, sources=None, backgrounds=True):
        """Expected counts of the current model summed over the rows: Histogram over [Em, Phi, PsiChi].

        Parameters
        ----------
        sources : list of str, optional
            Sources included (default all).
        backgrounds : bool
            Include the normalized background templates.
        """
        norms = self.background_row_norms()
        if not backgrounds:
            norms = {name: 0.0 for name in norms}
        contents = self._engine.expectation_cds(bkg_norms=norms, rows=self.model_rows(sources))
        return Histogram(self._engine.cds_axes, contents=contents + self.direct_cds(sources))

    def residuals_cds(self):
        """Significance ``(data - model) / sqrt(model)`` per CDS bin summed over the rows (0 where model is 0)."""
        data, model = self.data_cds().contents, self.model_cds().contents
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(model > 0, (data - model) / np.sqrt(model), 0.0)
        return Histogram(self._engine.cds_axes, contents=values)

    def display(self):
        """Data versus model: the Phi distribution with residuals, and PsiChi maps of data, model and residuals.

        Returns
        -------
        (matplotlib.figure.Figure, matplotlib.figure.Figure)
            The Phi figure and the PsiChi figure.
        """
        return residual_figures(self.data_cds(), self.model_cds())

    def write_model_map(self, path, sources=None, overwrite=False):
        """Write the model sky image (ph cm-2 s-1 sr-1 per Ei bin) as a histpy HDF5 file, atomically.

        Parameters
        ----------
        path : str or pathlib.Path
        sources : list of str, optional
            Sources included (default all).
        overwrite : bool

        Returns
        -------
        pathlib.Path
        """
        image = Histogram(self._engine.model_axes, contents=self.model_image(sources), unit=IMAGE_UNIT)
        return write_histogram(image, path, overwrite=overwrite)

    @property
    def dataset(self):
        """The :class:`~cosi_imaging_plugin.datasets.COSIDataset` of this plugin."""
        return self._dataset

    @property
    def engine(self):
        """The response engine of this plugin's dataset."""
        return self._engine

    @property
    def folders(self):
        """The per-source folding caches {source name: folder}."""
        return self._folders
