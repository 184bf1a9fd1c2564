"""The image-deconvolution orchestrator, with the workflow of the COSI 511 keV tutorial.

>>> deconv = ImageDeconvolution()                                                   # doctest: +SKIP
>>> deconv.set_dataset([dataset])                                                   # doctest: +SKIP
>>> deconv.read_parameterfile("imagedeconvolution_parfile_scatt_511keV.yml")       # doctest: +SKIP
>>> deconv.override_parameter("deconvolution:parameter:iteration_max = 30")         # doctest: +SKIP
>>> deconv.initialize()                                                             # doctest: +SKIP
>>> results = deconv.run_deconvolution()                                            # doctest: +SKIP

Parameter files come in the nested form (``model_definition`` / ``deconvolution``)
or the older flat form (read through
:class:`~cosi_imaging_plugin.io.parameters.DeconvolutionParameters`); the
intermediate form of the tutorial's overrides (``deconvolution:parameter:alpha_max``)
is accepted too. Unknown keys, model classes and algorithms are errors naming the key.
"""
import copy
import logging
from pathlib import Path

import numpy as np
from astropy import units as u
from histpy import HealpixAxis, Histogram
from tqdm.auto import tqdm

from ..engine.engine import IMAGE_UNIT
from ..errors import AxisMismatchError, CosiInputError
from ..io.histograms import check_axes_match
from ..io.parameters import DeconvolutionParameters
from .algorithms import ALGORITHMS, FREE_MAPPING, LEAF, _number, _quantity, normalize_parameter, validate_tree
from .dataset import DeconvolutionDataset

logger = logging.getLogger(__name__)

#: Initialization methods of the AllSkyImage model and the keys of their ``parameter`` block.
INITIALIZATIONS = {
    "flat": {"value": LEAF, "unit": LEAF},
    "user": {"file": LEAF, "name": LEAF},
    "backprojection": {},
}

_MODEL_DEFINITION_KEYS = {
    "class": LEAF,
    "property": {"coordinate": LEAF, "nside": LEAF, "scheme": LEAF,
                 "energy_edges": {"value": LEAF, "unit": LEAF}, "unit": LEAF},
    "initialization": {"algorithm": LEAF, "parameter": FREE_MAPPING},
}
_DECONVOLUTION_KEYS = {"algorithm": LEAF, "parameter": FREE_MAPPING}


class AllSkyImage:
    """The ``AllSkyImage`` model class: HEALPix maps in Ei bands, checked against the datasets.

    Parameters
    ----------
    prop : dict
        ``model_definition:property`` (coordinate, nside, scheme, energy_edges, unit).
    datasets : list of DeconvolutionDataset
        The model axes are taken from the datasets' engines after checking that
        NSIDE, scheme, frame and energy edges agree with `prop`.
    """

    name = "AllSkyImage"

    def __init__(self, prop, datasets):
        key = "model_definition:property"
        for needed in ("nside", "energy_edges"):
            if needed not in prop:
                raise CosiInputError(f"missing parameter '{key}:{needed}'")
        axes = datasets[0].model_axes
        lb, ei = axes[0], axes[1]
        if not isinstance(lb, HealpixAxis):
            raise CosiInputError(f"the datasets' sky axis '{lb.label}' is not a HEALPix axis")
        nside = _number(prop["nside"], f"{key}:nside", low=1, integer=True)
        if nside != lb.nside:
            raise AxisMismatchError(f"'{key}:nside' is {nside} but the CCM/response sky axis '{lb.label}' has "
                                    f"NSIDE {lb.nside}; they must be equal")
        scheme = str(prop.get("scheme", "ring"))
        if scheme.upper() != str(lb.scheme).upper():
            raise AxisMismatchError(f"'{key}:scheme' is '{scheme}' but the sky axis '{lb.label}' is "
                                    f"'{lb.scheme}'")
        coordinate = str(prop.get("coordinate", "galactic")).lower()
        frame = getattr(lb.coordsys, "name", None)
        if coordinate != "galactic" or (frame is not None and str(frame).lower() != "galactic"):
            raise CosiInputError(f"'{key}:coordinate' must be 'galactic' (the sky axis frame is {frame}), "
                                 f"got '{coordinate}'")
        edges = _quantity(prop["energy_edges"], f"{key}:energy_edges", u.keV, default_unit="keV", low=0.0)
        edges = np.atleast_1d(edges)
        ref = ei.edges.to_value(u.keV) if ei.unit is not None else np.asarray(ei.edges)
        if edges.shape != ref.shape or not np.allclose(edges, ref, rtol=1e-6, atol=0):
            raise AxisMismatchError(f"'{key}:energy_edges' {edges.tolist()} keV differ from the response Ei "
                                    f"edges {ref.tolist()} keV")
        try:
            self.unit = u.Unit(prop.get("unit", str(IMAGE_UNIT)))
        except (ValueError, TypeError) as exc:
            raise CosiInputError(f"'{key}:unit' is not a unit: {prop.get('unit')!r}") from exc
        if not self.unit.is_equivalent(IMAGE_UNIT):
            raise CosiInputError(f"'{key}:unit' must be an intensity like {IMAGE_UNIT}, got '{self.unit}'")
        self.axes = axes
        self.nside = nside

    def histogram(self, values):
        """Histogram of an array [n_pix, n_ei] in ph cm-2 s-1 sr-1, in the model unit."""
        return Histogram(self.axes, contents=np.asarray(values) * IMAGE_UNIT.to(self.unit), unit=self.unit)

    def initial_values(self, init, datasets, user_model=None):
        """Initial image [n_pix, n_ei] in ph cm-2 s-1 sr-1.

        Parameters
        ----------
        init : dict
            ``model_definition:initialization`` (algorithm and parameter).
        datasets : list of DeconvolutionDataset
        user_model : histpy.Histogram, optional
            Image given with ``ImageDeconvolution.set_initial_model`` (for ``user``).
        """
        key = "model_definition:initialization"
        algorithm = init.get("algorithm")
        if algorithm not in INITIALIZATIONS:
            raise CosiInputError(f"unknown '{key}:algorithm' {algorithm!r}; known: {sorted(INITIALIZATIONS)}")
        parameter = init.get("parameter") or {}
        validate_tree(parameter, INITIALIZATIONS[algorithm], f"{key}:parameter")
        shape = tuple(self.axes.nbins)
        if algorithm == "flat":
            if "value" not in parameter:
                raise CosiInputError(f"missing parameter '{key}:parameter:value' (one value per energy bin)")
            values = np.atleast_1d(_quantity(parameter, f"{key}:parameter", IMAGE_UNIT,
                                             default_unit=str(self.unit)))
            if np.ndim(parameter["value"]) == 0:
                values = np.repeat(values, shape[1])
            if values.shape != (shape[1],):
                raise CosiInputError(f"'{key}:parameter:value' has {values.size} values but the model has "
                                     f"{shape[1]} energy bins")
            if np.any(values <= 0):
                raise CosiInputError(f"'{key}:parameter:value' must be positive (Richardson-Lucy cannot move "
                                     f"a pixel away from zero), got {values.tolist()}")
            return np.broadcast_to(values, shape).copy()
        if algorithm == "user":
            if "file" in parameter:
                from ..io.histograms import read_image

                user_model = read_image(parameter["file"], name=parameter.get("name", "hist"))
            if user_model is None:
                raise CosiInputError(f"'{key}:algorithm' is 'user': give '{key}:parameter:file' or call "
                                     f"set_initial_model()")
            check_axes_match(user_model.axes, self.axes, [self.axes[0].label, self.axes[1].label],
                             "initial model", "model axes")
            values = datasets[0].image_values(user_model)
            if np.any(values < 0):
                raise CosiInputError("the user initial model has negative pixels")
            return values
        return self.backprojection(datasets)

    @staticmethod
    def backprojection(datasets):
        """Simple back-projection ``sum_i R_ij d_i / sum_i R_ij``, scaled to the counts minus background.

        The scale makes the expected sky counts ``sum_j X_j x_j`` equal the total counts
        minus the backgrounds at unit normalization (at least 1% of the counts, so the
        start stays positive when the backgrounds explain everything).
        """
        numerator = sum(ds.engine.transpose_product(ds.engine.data.counts) for ds in datasets)
        exposure = sum(ds.engine.exposure_map for ds in datasets)
        image = np.divide(numerator, exposure, out=np.zeros_like(numerator), where=exposure > 0)
        counts = sum(ds.engine.data.total_counts for ds in datasets)
        background = sum(ds.engine.background_total(n) for ds in datasets for n in ds.background_names)
        target = counts - background
        if target < 0.01 * counts:
            logger.warning("backgrounds (%.4g counts) explain the data (%.4g counts): the back-projection is "
                           "scaled to 1%% of the counts", background, counts)
            target = 0.01 * counts
        sky = float(np.sum(exposure * image))
        if sky <= 0:
            raise CosiInputError("back-projection is zero everywhere: no response overlaps the data")
        logger.info("back-projection scaled to %.4g expected sky counts", target)
        return image * (target / sky)


#: Model classes by the name used in parameter files.
MODEL_CLASSES = {AllSkyImage.name: AllSkyImage}


class ImageDeconvolution:
    """Reconstruct all-sky images from COSI data with the Richardson-Lucy family.

    Workflow: :meth:`set_dataset`, :meth:`read_parameterfile`,
    (:meth:`override_parameter`, :meth:`set_mask`), :meth:`initialize`,
    :meth:`run_deconvolution`; or :meth:`resume` from saved results.
    """

    model_classes = MODEL_CLASSES
    deconvolution_algorithm_classes = ALGORITHMS

    def __init__(self):
        self._dataset = None
        self._parameter = None
        self._user_mask = None
        self._mask = None
        self._user_model = None
        self._model = None
        self._initial_model = None
        self._algorithm = None
        self._resume_state = None
        self._stale = True

    # ---- inputs -------------------------------------------------------------------------------
    def set_dataset(self, dataset):
        """Register the datasets (a list of :class:`DeconvolutionDataset`; one is wrapped in a list).

        All datasets must share the model axes (same CCM lb grid and response Ei bins).
        """
        if isinstance(dataset, DeconvolutionDataset):
            dataset = [dataset]
        dataset = list(dataset)
        if not dataset or not all(isinstance(d, DeconvolutionDataset) for d in dataset):
            raise CosiInputError("set_dataset needs a non-empty list of DeconvolutionDataset")
        names = [d.name for d in dataset]
        if len(set(names)) != len(names):
            raise CosiInputError(f"dataset names must be unique, got {names}")
        first = dataset[0].model_axes
        for d in dataset[1:]:
            check_axes_match(d.model_axes, first, [first[0].label, first[1].label],
                             f"dataset '{d.name}'", f"dataset '{dataset[0].name}'")
        self._dataset = dataset
        self._stale = True
        self._resume_state = None

    def set_mask(self, mask):
        """Mask of the fitted pixels: a Histogram over the model axes ([lb, Ei] or [lb]), bool or 0/1.

        Pixels where the mask is False (0) are fixed at zero. Zero-exposure pixels
        are masked in any case.
        """
        if not isinstance(mask, Histogram):
            raise CosiInputError(f"the mask must be a histpy.Histogram over the model axes, got "
                                 f"{type(mask).__name__}")
        values = mask.contents.todense() if hasattr(mask.contents, "todense") else mask.contents
        values = np.asarray(getattr(values, "value", values))
        if not np.all(np.isin(values, (0, 1))):
            raise CosiInputError("the mask must hold booleans or 0/1 values")
        self._user_mask = mask
        self._stale = True

    def set_initial_model(self, image):
        """Image (Histogram over the model axes) used by the ``user`` initialization."""
        if not isinstance(image, Histogram):
            raise CosiInputError(f"the initial model must be a histpy.Histogram, got {type(image).__name__}")
        self._user_model = image

    def read_parameterfile(self, parameter_filepath):
        """Read a parameter file (nested or old flat YAML form)."""
        self._parameter = DeconvolutionParameters.read(parameter_filepath)
        self._stale = True
        logger.info("parameters read from %s", parameter_filepath)

    def set_parameter(self, parameter):
        """Set the parameters from a dict (either form) or a DeconvolutionParameters."""
        if isinstance(parameter, DeconvolutionParameters):
            self._parameter = DeconvolutionParameters(parameter.to_dict(), parameter.source)
        else:
            self._parameter = DeconvolutionParameters.from_dict(parameter)
        self._stale = True

    def override_parameter(self, *args):
        """Override parameters, e.g. ``override_parameter("deconvolution:parameter:iteration_max = 30")``.

        Run :meth:`initialize` again afterwards.
        """
        if self._parameter is None:
            raise CosiInputError("no parameters yet: call read_parameterfile() first")
        self._parameter.override(*args)
        self._stale = True

    # ---- properties ---------------------------------------------------------------------------
    @property
    def dataset(self):
        """The registered datasets."""
        return self._dataset

    @property
    def parameter(self):
        """The registered parameters (DeconvolutionParameters)."""
        return self._parameter

    @property
    def initial_model(self):
        """The initial model (Histogram), after :meth:`initialize`."""
        return self._initial_model

    @property
    def mask(self):
        """The mask in use (Histogram of bool over the model axes), after :meth:`initialize`."""
        return self._mask

    @property
    def results(self):
        """One dict per iteration: iteration, model, delta_model, processed_delta_model,
        background_normalization, alpha, loglikelihood (and prior terms for MAP_RL)."""
        return [] if self._algorithm is None else self._algorithm.results

    @property
    def algorithm(self):
        """The registered algorithm object, after :meth:`initialize`."""
        return self._algorithm

    # ---- initialization -----------------------------------------------------------------------
    def _checked_tree(self):
        """The parameter tree, validated section by section (errors name the key)."""
        if self._dataset is None:
            raise CosiInputError("no dataset: call set_dataset() first")
        if self._parameter is None:
            raise CosiInputError("no parameters: call read_parameterfile() first")
        tree = self._parameter.to_dict()
        validate_tree(tree["model_definition"], _MODEL_DEFINITION_KEYS, "model_definition")
        validate_tree(tree["deconvolution"], _DECONVOLUTION_KEYS, "deconvolution")
        return tree

    def model_initialization(self):
        """Create the model from ``model_definition`` and set its initial values.

        Returns
        -------
        bool
            True once done.
        """
        tree = self._checked_tree()
        definition = tree["model_definition"]
        name = definition.get("class")
        if name not in self.model_classes:
            raise CosiInputError(f"unknown model class 'model_definition:class' = {name!r}; known: "
                                 f"{sorted(self.model_classes)}")
        self._model = self.model_classes[name](definition.get("property") or {}, self._dataset)
        logger.info("model %s: NSIDE %d, %d energy bins, unit %s", name, self._model.nside,
                    self._model.axes[1].nbins, self._model.unit)
        shape = tuple(self._model.axes.nbins)
        exposure = sum(d.engine.exposure_map for d in self._dataset)
        mask = np.ones(shape, dtype=bool)
        if self._user_mask is not None:
            labels = list(self._user_mask.axes.labels)
            check_axes_match(self._user_mask.axes, self._model.axes, labels, "mask", "model axes")
            values = self._user_mask.contents
            values = np.asarray(getattr(values, "value", values)).astype(bool)
            mask = np.broadcast_to(values.reshape(shape[0], -1), shape).copy()
        mask &= exposure > 0
        self._mask = Histogram(self._model.axes, contents=mask)
        if self._resume_state is not None:
            values = self._dataset[0].image_values(self._resume_state["results"][-1]["model"])
        else:
            if "initialization" not in definition:
                raise CosiInputError("missing section 'model_definition:initialization'")
            values = self._model.initial_values(definition["initialization"], self._dataset, self._user_model)
        self._initial_model = self._model.histogram(np.where(mask, values, 0.0))
        return True

    def register_deconvolution_algorithm(self):
        """Create the algorithm named in ``deconvolution:algorithm`` with its parameters.

        Returns
        -------
        bool
            True once done.
        """
        tree = self._checked_tree()
        name = tree["deconvolution"].get("algorithm")
        if name not in self.deconvolution_algorithm_classes:
            raise CosiInputError(f"unknown 'deconvolution:algorithm' {name!r}; known: "
                                 f"{sorted(self.deconvolution_algorithm_classes)}")
        parameter = normalize_parameter(tree["deconvolution"].get("parameter") or {})
        tree["deconvolution"]["parameter"] = parameter
        cls = self.deconvolution_algorithm_classes[name]
        state = self._resume_state or {}
        previous = state.get("results")
        self._algorithm = cls(
            self._dataset[0].image_values(self._initial_model), self._dataset,
            mask=np.asarray(self._mask.contents, dtype=bool), parameter=parameter, model_unit=self._model.unit,
            start_iteration=previous[-1]["iteration"] if previous else 0,
            initial_bkg_norms=state.get("bkg_norms"), previous_results=copy.copy(previous),
            metadata={"parameters": tree})
        logger.info("algorithm %s registered: %s", name, parameter)
        return True

    def initialize(self):
        """Create and initialize the model and register the algorithm; call before running.

        Call it again after changing datasets, parameters or the mask.
        """
        logger.info("initializing the image deconvolution")
        self.model_initialization()
        self.register_deconvolution_algorithm()
        self._stale = False
        logger.info("initialization finished")

    # ---- running ------------------------------------------------------------------------------
    def run_deconvolution(self, progress=True):
        """Iterate until a stopping criterion is met; save the results if configured.

        Parameters
        ----------
        progress : bool
            Show a tqdm progress bar (iteration, log-likelihood, alpha).

        Returns
        -------
        list of dict
            :attr:`results`. If interrupted (KeyboardInterrupt), the iterations done so
            far are finalized (and saved when configured) before re-raising.
        """
        if self._algorithm is None or self._stale:
            raise CosiInputError("call initialize() before run_deconvolution() (and again after changing the "
                                 "datasets, parameters or mask)")
        algo = self._algorithm
        logger.info("image deconvolution starts (%s)", algo.name)
        algo.initialization()
        done = algo.iteration_count
        if done >= algo.iteration_max:
            logger.warning("already %d iterations done (iteration_max %d): nothing to run", done,
                           algo.iteration_max)
            return algo.results
        bar = tqdm(total=algo.iteration_max, initial=done, desc=algo.name, unit="it", disable=not progress)
        try:
            while True:
                stop = algo.iteration()
                last = algo.results[-1]
                bar.update(1)
                postfix = {"logL": f"{np.sum(last['loglikelihood']):.8g}", "alpha": f"{last['alpha']:.3g}"}
                if last.get("log_posterior") is not None:
                    postfix["logP"] = f"{last['log_posterior']:.8g}"
                bar.set_postfix(postfix)
                if stop:
                    break
        except KeyboardInterrupt:
            logger.warning("interrupted after iteration %d: finalizing", algo.iteration_count)
            if algo.results:
                algo.finalization()
            raise
        finally:
            bar.close()
        algo.finalization()
        logger.info("image deconvolution finished after %d iterations", algo.iteration_count)
        return algo.results

    def save_results(self, directory, only_final_result=False):
        """Save :attr:`results` (``results.h5`` and ``results.fits``) into `directory`.

        Returns
        -------
        dict
            Paths of the written files.
        """
        from .results import save_results

        if self._algorithm is None or not self._algorithm.results:
            raise CosiInputError("no results to save: run the deconvolution first")
        return save_results(self.results, directory, only_final_result=only_final_result,
                            algorithm=self._algorithm.name, dataset_names=self._algorithm.names,
                            parameters=self._algorithm.metadata.get("parameters"))

    def resume(self, path):
        """Continue a deconvolution from saved results (``results.h5`` or its directory).

        The datasets must be set first. Without parameters (:meth:`read_parameterfile`),
        the saved ones are used. ``iteration_max`` counts the iterations already done,
        so raise it to run further (:meth:`override_parameter`, then :meth:`initialize`:
        until :meth:`set_dataset` is called again, initializing starts from the saved
        state). Then call :meth:`run_deconvolution`.

        Returns
        -------
        int
            The iteration the run continues from.
        """
        from .results import load_results

        if self._dataset is None:
            raise CosiInputError("set the datasets (set_dataset) before resuming")
        state = load_results(path)
        names = [d.name for d in self._dataset]
        if state["dataset_names"] != names:
            raise CosiInputError(f"{path}: saved for datasets {state['dataset_names']}, but the datasets are "
                                 f"{names}")
        if self._parameter is None:
            if state["parameters"] is None:
                raise CosiInputError(f"{path} stores no parameters: call read_parameterfile() first")
            self._parameter = DeconvolutionParameters.from_dict(state["parameters"], source=str(path))
        saved_algorithm = state["algorithm"]
        algorithm = self._parameter.get("deconvolution:algorithm")
        if saved_algorithm and algorithm != saved_algorithm:
            logger.warning("resuming %s results with algorithm %s", saved_algorithm, algorithm)
        last = state["results"][-1]
        norms = last["background_normalization"]
        state["bkg_norms"] = {names[0]: norms} if len(names) == 1 else norms
        self._resume_state = state
        try:
            self.initialize()
        except Exception:
            self._resume_state = None
            raise
        logger.info("resuming from iteration %d of %s", last["iteration"], Path(path))
        return last["iteration"]
