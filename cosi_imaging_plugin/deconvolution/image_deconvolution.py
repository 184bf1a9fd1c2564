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

The algorithms themselves take plain keywords (:mod:`.richardson_lucy`,
:mod:`.map_richardson_lucy`); this class is the parameter-file workflow around them.
"""
import copy
import logging
from pathlib import Path

import numpy as np
from histpy import Histogram

from ..binning import check_axes_match, dense_values
from ..errors import CosiInputError
from ..io.deconvolution_results import load_results, save_results
from ..io.parameters import DeconvolutionParameters
from .all_sky_image import MODEL_CLASSES, MODEL_DEFINITION_KEYS
from .base import as_dataset_list
from .parameters import ALGORITHMS, DECONVOLUTION_KEYS, algorithm_keywords, build_algorithm, save_options, validate_tree

logger = logging.getLogger(__name__)


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
        """Register the datasets (a list of :class:`~cosi_imaging_plugin.datasets.COSIDataset`, or one).

        All datasets must share the model axes (same CCM lb grid and response Ei bins).
        """
        dataset = as_dataset_list(dataset)
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
        if not np.all(np.isin(dense_values(mask), (0, 1))):
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
    def check_parameters(self):
        """Check the parameters in full before any work: every key, the algorithm and its keywords.

        Needs no dataset, so that a command can refuse bad parameters before it reads
        the data; the values that depend on the data are checked by :meth:`initialize`.

        Returns
        -------
        dict
            The parameter tree (nested form).
        """
        if self._parameter is None:
            raise CosiInputError("no parameters: call read_parameterfile() first")
        tree = self._parameter.to_dict()
        validate_tree(tree["model_definition"], MODEL_DEFINITION_KEYS, "model_definition")
        validate_tree(tree["deconvolution"], DECONVOLUTION_KEYS, "deconvolution")
        algorithm_keywords(tree["deconvolution"].get("algorithm"), tree["deconvolution"].get("parameter") or {})
        return tree

    def _checked_tree(self):
        """The parameter tree, validated section by section (errors name the key)."""
        if self._dataset is None:
            raise CosiInputError("no dataset: call set_dataset() first")
        return self.check_parameters()

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
        exposure = sum(d.exposure for d in self._dataset)
        mask = np.ones(shape, dtype=bool)
        if self._user_mask is not None:
            labels = list(self._user_mask.axes.labels)
            check_axes_match(self._user_mask.axes, self._model.axes, labels, "mask", "model axes")
            values = dense_values(self._user_mask).astype(bool)
            mask = np.broadcast_to(values.reshape(shape[0], -1), shape).copy()
        mask &= exposure > 0
        self._mask = Histogram(self._model.axes, contents=mask)
        if self._resume_state is not None:
            values = self._dataset[0].engine.image_values(self._resume_state["results"][-1]["model"])
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
        state = self._resume_state or {}
        previous = state.get("results")
        self._algorithm = build_algorithm(
            name, tree["deconvolution"].get("parameter") or {}, self._dataset,
            initial_model=self._dataset[0].engine.image_values(self._initial_model),
            mask=np.asarray(self._mask.contents, dtype=bool), model_unit=self._model.unit,
            start_iteration=previous[-1]["iteration"] if previous else 0,
            background_norms=state.get("bkg_norms"), previous_results=copy.copy(previous),
            metadata={"parameters": tree})
        logger.info("algorithm %s registered", name)
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
        """Iterate until a stopping criterion is met; save the results if the parameters say so.

        Parameters
        ----------
        progress : bool
            Show a tqdm progress bar (iteration, log-likelihood, alpha).

        Returns
        -------
        list of dict
            :attr:`results`. If interrupted (KeyboardInterrupt), the iterations done so
            far are saved (when configured) before re-raising.
        """
        if self._algorithm is None or self._stale:
            raise CosiInputError("call initialize() before run_deconvolution() (and again after changing the "
                                 "datasets, parameters or mask)")
        try:
            self._algorithm.run(progress=progress)
        except KeyboardInterrupt:
            done = self._algorithm.results[-1]["iteration"] if self._algorithm.results else 0
            logger.warning("interrupted in iteration %d; the results of iteration %d are kept",
                           self._algorithm.iteration_count, done)
            if self._algorithm.results:
                self._save_as_configured()
            raise
        self._save_as_configured()
        return self._algorithm.results

    def _save_as_configured(self):
        """Save the results where ``deconvolution:parameter:save_results`` says, if it is active."""
        activate, directory, only_final = save_options(self._parameter.get("deconvolution:parameter") or {})
        if activate:
            self.save_results(directory, only_final_result=only_final)

    def save_results(self, directory, only_final_result=False):
        """Save :attr:`results` (``results.h5`` and ``results.fits``) into `directory`.

        Returns
        -------
        dict
            Paths of the written files.
        """
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
