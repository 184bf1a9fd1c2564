"""The 3ML plugin: a binned COSI dataset as a likelihood over astromodels sources.

Point and extended sources of an astromodels ``Model`` are rasterized onto the
engine's HEALPix model grid, folded through the response (cached per source and
per spatial-parameter state) and fitted jointly with one normalization per named
background template, which appear in 3ML as nuisance parameters
``{plugin}_{template}_norm`` (or ``{plugin}_{template}_g{k}_norm``, one per group
of ScAtt/Time rows, when a template is split into groups).
"""
import logging

import numpy as np
from astromodels import Parameter
from histpy import Histogram
from threeML.plugin_prototype import PluginPrototype

from ..engine.reductions import counts_log_sum
from ..errors import CosiInputError
from ..sky.rasterize import Rasterizer
from .source_folding import Function3DSourceFolder, SeparableSourceFolder

logger = logging.getLogger(__name__)

LOG_LIKE_OFFSETS = ("saturated", "factorial")


class COSIImagingLike(PluginPrototype):
    """COSI binned imaging likelihood for 3ML.

    Parameters
    ----------
    name : str
        Plugin name (prefix of its nuisance parameters).
    engine : ResponseEngine
        Engine holding the response, the sky mapping (CCM or Galactic-frame
        response), the binned data and the background templates.
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

    def __init__(self, name, engine, background_bounds=None, background_priors=None, fixed_backgrounds=(),
                 log_like_offset="saturated", function_frame="icrs", background_groups=None):
        if engine.data is None:
            raise CosiInputError("the engine given to COSIImagingLike has no data (call engine.set_data first)")
        if log_like_offset not in LOG_LIKE_OFFSETS:
            raise CosiInputError(f"log_like_offset must be one of {LOG_LIKE_OFFSETS}, got {log_like_offset!r}")
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
        self._backgrounds = [_BackgroundTemplate(name, engine, bkg, self._groups.get(bkg),
                                                 background_bounds.get(bkg, (0.0, 100.0)),
                                                 free=bkg not in set(fixed_backgrounds))
                             for bkg in engine.background_names]
        nuisance = {par.name: par for par in self.background_parameters.values()}
        super().__init__(name, nuisance)
        axis = engine.model_axes[0]
        self._rasterizer = Rasterizer(axis.nside, axis.scheme, grid_frame=_frame_name(axis),
                                      function_frame=function_frame)
        self._ei_edges = np.asarray(engine.model_axes[1].edges.to_value("keV"), dtype=np.float64)
        self._counts = engine.data.counts
        self._saturated = float(np.sum(self._counts * np.log(self._counts) - self._counts) - engine.data.log_factorial)
        self._model = None
        self._folders = {}
        # background norms of the plugin this dataset was simulated from (see get_simulated_dataset)
        self._parent_backgrounds = {}

    # ---- construction from files -----------------------------------------------------------------
    @classmethod
    def from_files(cls, name, response, data, backgrounds=None, ccm=None, orientation=None, rtol=1e-3,
                   dtype=np.float32, nside_model=None, **kwargs):
        """Plugin from the files of a COSI analysis, in either frame.

        Parameters
        ----------
        name : str
            Plugin name.
        response : str or pathlib.Path
            FullDetectorResponse (spacecraft frame; version 1 dense or sparse, or version 2).
        data : str or pathlib.Path
            Binned counts (histpy HDF5), PsiChi in the spacecraft or the Galactic frame.
            Axes the analysis does not use (Time, Ei, SigmaTau, Dist) are summed out.
        backgrounds : dict of str to path, optional
            Background templates with the data's binning.
        ccm : str or pathlib.Path, optional
            Coordinate conversion matrix for spacecraft-frame data binned in ScAtt or Time.
        orientation : str or pathlib.Path, optional
            ``.ori`` file: spacecraft-frame data without CCM are folded with the
            dwell time of each sky direction; Galactic-frame data with the
            attitude bins and a rotation of PsiChi.
        rtol : float
            Response truncation tolerance (see ColumnResponse).
        dtype : numpy dtype
            Storage type of the response.
        nside_model : int, optional
            NSIDE of the sky grid sources are rasterized on.
        **kwargs
            Passed to the constructor (background bounds and priors, log_like_offset, ...).
        """
        from ..engine.builders import build_engine
        from ..io import Orientation, read_ccm, read_histogram

        engine = build_engine(
            response, read_histogram(data, counts=True),
            backgrounds={k: read_histogram(v) for k, v in (backgrounds or {}).items()},
            ccm=None if ccm is None else read_ccm(ccm),
            orientation=None if orientation is None else Orientation.read(orientation),
            rtol=rtol, dtype=dtype, nside_model=nside_model)
        return cls(name, engine, **kwargs)

    @classmethod
    def from_manifest(cls, name, manifest, frame="spacecraft", rtol=1e-3, dtype=np.float32, **kwargs):
        """Plugin on a dataset written by ``cosi-imaging simulate``.

        Parameters
        ----------
        name : str
            Plugin name.
        manifest : str or pathlib.Path
            The dataset's ``manifest.yaml`` or its directory.
        frame : {'spacecraft', 'galactic'}
            'spacecraft': the ScAtt-binned data with the CCM; 'galactic': the
            Galactic-frame data (when simulated) with the orientation.
        rtol, dtype, **kwargs
            As for :meth:`from_files`.
        """
        from ..simulate import load_manifest

        dataset = load_manifest(manifest)
        if frame == "spacecraft":
            return cls.from_files(name, response=dataset["response"], data=dataset["data_scatt"],
                                  backgrounds=dataset["backgrounds"], ccm=dataset["ccm"], rtol=rtol, dtype=dtype,
                                  **kwargs)
        if frame == "galactic":
            if "data_galactic" not in dataset:
                raise CosiInputError(f"{dataset.path} holds no Galactic-frame data (simulate with galactic: true)")
            return cls.from_files(name, response=dataset["response"], data=dataset["data_galactic"],
                                  backgrounds=dataset["backgrounds_galactic"], orientation=dataset["orientation"],
                                  rtol=rtol, dtype=dtype, **kwargs)
        raise CosiInputError(f"frame must be 'spacecraft' or 'galactic', got {frame!r}")

    # ---- 3ML interface -------------------------------------------------------------------------
    def set_model(self, likelihood_model):
        """Register an astromodels Model; check that every source can be folded."""
        folders = {}
        for name, source in likelihood_model.point_sources.items():
            folders[name] = SeparableSourceFolder(source, self._engine, self._rasterizer, self._ei_edges)
        for name, source in likelihood_model.extended_sources.items():
            shape = source.spatial_shape
            if getattr(shape, "n_dim", 2) == 3:
                folders[name] = Function3DSourceFolder(source, self._engine, self._rasterizer, self._ei_edges)
            else:
                folders[name] = SeparableSourceFolder(source, self._engine, self._rasterizer, self._ei_edges)
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
        """Poisson log-likelihood of the data for the current model (see ``log_like_offset``)."""
        eps, total = self.expectation_at_bins()
        log_sum, q = counts_log_sum(self._counts, eps)
        if q >= 0:
            state = ", ".join(f"{p.path}={p.value:.6g}" for p in self._model.free_parameters.values())
            raise CosiInputError(f"plugin {self.name}: expected counts {eps[q]:g} at a bin with "
                                 f"{self._counts[q]:g} counts ({self._engine.describe_bin(q)}) for model state "
                                 f"[{state}]")
        log_like = float(log_sum - total)
        if self._log_like_offset == "saturated":
            log_like -= self._saturated + self._engine.data.log_factorial
        else:
            log_like -= self._engine.data.log_factorial
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
        return int(self._engine.n_rows * self._engine.n_columns)

    # ---- model images, counts and simulations --------------------------------------------------
    def model_image(self, sources=None):
        """Sky image [n_pix, n_ei] of the current model (ph cm-2 s-1 sr-1 per Ei bin)."""
        names = list(self._folders) if sources is None else list(sources)
        image = np.zeros(tuple(self._engine.model_axes.nbins))
        for name in names:
            image += self._folders[name].image()
        return image

    def get_model_counts(self):
        """Expected counts of the current model in every bin (dense Histogram over the data axes)."""
        return self._engine.expectation(self.model_image(), self.background_row_norms())

    def get_simulated_dataset(self, name=None, seed=None):
        """A new plugin on Poisson counts drawn from the current model (for GoodnessOfFit and LRT).

        Parameters
        ----------
        name : str, optional
            Name of the new plugin (default ``{name}_sim``).
        seed : int or numpy.random.Generator, optional
            Seed of the Poisson draw.
        """
        rng = np.random.default_rng(seed)
        expected = self.get_model_counts()
        counts = rng.poisson(np.asarray(expected.contents)).astype(np.float64)
        engine = self._engine.with_data(Histogram(expected.axes, contents=counts))
        new = COSIImagingLike(name or f"{self.name}_sim", engine, background_priors=self._priors,
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
        return Histogram(self._engine.cds_axes, contents=self._engine.data_cds())

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
        return Histogram(self._engine.cds_axes,
                         contents=self._engine.expectation_cds(self.model_image(sources), norms))

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
        from ..products import residual_figures

        return residual_figures(self)

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
        from astropy import units as u

        from ..io.histograms import write_histogram

        image = Histogram(self._engine.model_axes, contents=self.model_image(sources), unit=u.Unit("cm-2 s-1 sr-1"))
        return write_histogram(image, path, overwrite=overwrite)

    @property
    def engine(self):
        """The response engine of this dataset."""
        return self._engine

    @property
    def folders(self):
        """The per-source folding caches {source name: folder}."""
        return self._folders


def _frame_name(axis):
    frame = getattr(axis, "coordsys", None)
    name = getattr(frame, "name", None) or str(frame or "galactic")
    return name.lower()


class _BackgroundTemplate:
    """A background template gathered at the non-empty bins, with one normalization or one per group of rows.

    Parameters
    ----------
    plugin_name : str
    engine : ResponseEngine
    template : str
        Template name in the engine.
    groups : ndarray of int, shape (n_rows,), optional
        Group of each ScAtt/Time row; one normalization per distinct value.
    bounds : (float, float)
    free : bool
    """

    def __init__(self, plugin_name, engine, template, groups, bounds, free):
        self.template = template
        self.at_bins = engine.background_template_at_bins(template)
        description = f"normalization of background template '{template}' of {plugin_name}"
        if groups is None:
            self.labels, self.row_group, self.bin_group = [None], None, None
            self.totals = np.array([engine.background_total(template)])
        else:
            if (groups.shape != (engine.n_rows,) or not np.issubdtype(groups.dtype, np.integer)
                    or groups.min(initial=0) < 0):
                raise CosiInputError(f"background_groups['{template}'] must hold one non-negative integer group "
                                     f"per row, shape ({engine.n_rows},); got shape {groups.shape} and dtype "
                                     f"{groups.dtype}")
            self.labels, self.row_group = np.unique(groups, return_inverse=True)
            self.bin_group = self.row_group[engine.data.row]
            self.totals = np.bincount(self.row_group, weights=engine.background_row_totals(template),
                                      minlength=len(self.labels))
        self.parameters = {}
        for label in self.labels:
            key = template if label is None else f"{template}_g{label}"
            self.parameters[key] = Parameter(
                f"{plugin_name}_{key}_norm", 1.0, min_value=bounds[0], max_value=bounds[1], delta=0.01, free=free,
                desc=description + ("" if label is None else f", row group {label}"))

    def norms(self):
        """Current normalization of each group (one value without groups)."""
        return np.array([par.value for par in self.parameters.values()], dtype=np.float64)

    def row_norms(self):
        """The normalization as the engine takes it: a number, or one value per row."""
        norms = self.norms()
        return float(norms[0]) if self.row_group is None else norms[self.row_group]

    def expectation(self):
        """(expected counts at the non-empty bins, expected counts over all bins)."""
        norms = self.norms()
        at_bins = norms[0] * self.at_bins if self.bin_group is None else norms[self.bin_group] * self.at_bins
        return at_bins, float(norms @ self.totals)
