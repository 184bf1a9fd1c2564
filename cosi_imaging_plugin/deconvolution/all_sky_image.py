"""The ``AllSkyImage`` model class of the COSI team's parameter files: HEALPix maps in Ei bands.

``model_definition`` of a parameter file names the model class, its properties
(frame, NSIDE, scheme, energy edges, unit) and its initialization (``flat``,
``user`` or ``backprojection``); :class:`AllSkyImage` checks the properties
against the datasets and makes the initial image.
"""
import logging

import numpy as np
from astropy import units as u
from histpy import HealpixAxis, Histogram

from .. import validation
from ..binning import IMAGE_UNIT, check_axes_match, frame_name
from ..errors import AxisMismatchError, CosiInputError
from ..io.histograms import read_image
from .base import backprojection
from .parameters import FREE_MAPPING, LEAF, quantity_node, validate_tree

logger = logging.getLogger(__name__)

#: Initialization methods of the AllSkyImage model and the keys of their ``parameter`` block.
INITIALIZATIONS = {
    "flat": {"value": LEAF, "unit": LEAF},
    "user": {"file": LEAF, "name": LEAF},
    "backprojection": {},
}

#: Keys known under ``model_definition``.
MODEL_DEFINITION_KEYS = {
    "class": LEAF,
    "property": {"coordinate": LEAF, "nside": LEAF, "scheme": LEAF,
                 "energy_edges": {"value": LEAF, "unit": LEAF}, "unit": LEAF},
    "initialization": {"algorithm": LEAF, "parameter": FREE_MAPPING},
}


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
        nside = validation.number(prop["nside"], f"{key}:nside", low=1, integer=True)
        if nside != lb.nside:
            raise AxisMismatchError(f"'{key}:nside' is {nside} but the CCM/response sky axis '{lb.label}' has "
                                    f"NSIDE {lb.nside}; they must be equal")
        scheme = str(prop.get("scheme", "ring"))
        if scheme.upper() != str(lb.scheme).upper():
            raise AxisMismatchError(f"'{key}:scheme' is '{scheme}' but the sky axis '{lb.label}' is "
                                    f"'{lb.scheme}'")
        coordinate = str(prop.get("coordinate", "galactic")).lower()
        frame = frame_name(lb)
        if coordinate != "galactic" or (frame is not None and frame != "galactic"):
            raise CosiInputError(f"'{key}:coordinate' must be 'galactic' (the sky axis frame is {frame}), "
                                 f"got '{coordinate}'")
        edges = quantity_node(prop["energy_edges"], f"{key}:energy_edges", u.keV, default_unit="keV", low=0.0)
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
            values = np.atleast_1d(quantity_node(parameter, f"{key}:parameter", IMAGE_UNIT,
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
                user_model = read_image(parameter["file"], name=parameter.get("name", "hist"))
            if user_model is None:
                raise CosiInputError(f"'{key}:algorithm' is 'user': give '{key}:parameter:file' or call "
                                     f"set_initial_model()")
            check_axes_match(user_model.axes, self.axes, [self.axes[0].label, self.axes[1].label],
                             "initial model", "model axes")
            values = datasets[0].engine.image_values(user_model)
            if np.any(values < 0):
                raise CosiInputError("the user initial model has negative pixels")
            return values
        return backprojection(datasets)



#: Model classes by the name used in parameter files.
MODEL_CLASSES = {AllSkyImage.name: AllSkyImage}
