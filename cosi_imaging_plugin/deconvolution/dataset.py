"""One binned dataset for image deconvolution: event counts, backgrounds, response, CCM.

:class:`DeconvolutionDataset` plays the role of cosipy's ``DataIF_COSI_DC2``: it
holds what the algorithms need and owns a
:class:`~cosi_imaging_plugin.engine.ResponseEngine`, through which every
expectation, transpose product and likelihood is computed on the non-empty bins
only.
"""
import logging
from pathlib import Path

import numpy as np
from astropy import units as u
from histpy import Histogram

from ..engine import ColumnResponse, ResponseEngine
from ..engine.engine import IMAGE_UNIT
from ..errors import CosiInputError

logger = logging.getLogger(__name__)


def _as_histogram(obj, what, counts=True):
    """A Histogram, reading it when `obj` is a path."""
    if isinstance(obj, Histogram):
        return obj
    if isinstance(obj, (str, Path)):
        from ..io.histograms import read_histogram

        return read_histogram(obj, counts=counts)
    raise CosiInputError(f"{what} must be a histpy.Histogram or a file path, got {type(obj).__name__}")


def _as_response(obj, rtol, dtype):
    """A ColumnResponse from a ColumnResponse, a FullDetectorResponse or a path."""
    if isinstance(obj, ColumnResponse):
        return obj
    from ..io.response import FullDetectorResponse

    if isinstance(obj, (str, Path, FullDetectorResponse)):
        logger.info("compressing response %s (rtol=%g)", getattr(obj, "filename", obj), rtol)
        return ColumnResponse.from_file(obj, rtol=rtol, dtype=dtype)
    raise CosiInputError(f"response must be a ColumnResponse, a FullDetectorResponse or a file path, "
                         f"got {type(obj).__name__}")


class DeconvolutionDataset:
    """Binned data, background templates and the response of one observation.

    Parameters
    ----------
    name : str
        Name of the dataset (unique among the datasets of a deconvolution).
    event : histpy.Histogram or str or pathlib.Path
        Binned counts [ScAtt | Time, Em, Phi, PsiChi], or [Em, Phi, PsiChi] for a
        Galactic-CDS analysis.
    backgrounds : dict of str to histpy.Histogram or path
        Background templates (expected counts) with the axes of `event`.
    response : ColumnResponse or FullDetectorResponse or str or pathlib.Path
        The response; a FullDetectorResponse (or its path) is compressed on load
        with tolerance `rtol`. With ``galactic=True`` it must be a Galactic-frame
        response (source axis lb, cm2 s).
    ccm : histpy.Histogram or str or pathlib.Path, optional
        Coordinate conversion matrix [ScAtt | Time, lb, NuLambda] for a local-CDS analysis.
    galactic : bool
        Galactic-CDS analysis with a precomputed Galactic-frame response (no CCM).
    rtol : float
        Truncation tolerance when compressing a response file (see
        :class:`~cosi_imaging_plugin.engine.ColumnResponse`).
    dtype : numpy dtype
        Storage type of the compressed response and of the kernel rows.

    Examples
    --------
    >>> ds = DeconvolutionDataset("511keV", event, {"albedo": bkg}, "response.h5", ccm=ccm)  # doctest: +SKIP
    >>> ds.engine.log_likelihood(image, {"albedo": 1.0})                                      # doctest: +SKIP
    """

    def __init__(self, name, event, backgrounds, response, ccm=None, galactic=False, rtol=0.0, dtype=np.float32):
        self._name = str(name)
        self._event = _as_histogram(event, f"dataset '{name}': event")
        self._backgrounds = {str(k): _as_histogram(v, f"dataset '{name}': background '{k}'")
                             for k, v in (backgrounds or {}).items()}
        rsp = _as_response(response, rtol, dtype)
        if galactic:
            if ccm is not None:
                raise CosiInputError(f"dataset '{name}': a Galactic-CDS analysis uses a Galactic-frame response "
                                     f"and no CCM")
            self._engine = ResponseEngine.from_galactic_response(rsp, data=self._event,
                                                                 backgrounds=self._backgrounds, dtype=dtype)
        else:
            if ccm is None:
                raise CosiInputError(f"dataset '{name}': a local-CDS analysis needs a CCM (ccm=...); pass "
                                     f"galactic=True for a Galactic-frame response")
            if isinstance(ccm, (str, Path)):
                from ..io.histograms import read_ccm

                ccm = read_ccm(ccm)
            self._engine = ResponseEngine.from_ccm(rsp, ccm, data=self._event, backgrounds=self._backgrounds,
                                                   dtype=dtype)
        self._check_engine()

    @classmethod
    def from_engine(cls, name, engine, event=None, backgrounds=None):
        """Wrap an engine that already holds data and backgrounds.

        Parameters
        ----------
        name : str
        engine : ResponseEngine
            With data set (``engine.set_data``).
        event, backgrounds : optional
            The Histograms the engine was given, kept for :attr:`event` and :meth:`bkg_model`.
        """
        if engine.data is None:
            raise CosiInputError(f"dataset '{name}': the engine has no data (call engine.set_data first)")
        new = cls.__new__(cls)
        new._name = str(name)
        new._engine = engine
        new._event = event
        new._backgrounds = dict(backgrounds or {})
        new._check_engine()
        return new

    @classmethod
    def load(cls, name, event_binned_data, dict_bkg_binned_data, rsp, coordsys_conv_matrix=None,
             is_miniDC2_format=False, rtol=0.0, dtype=np.float32):
        """Build a dataset with the argument names of cosipy's ``DataIF_COSI_DC2.load``.

        ``coordsys_conv_matrix=None`` means a Galactic-CDS analysis with a
        Galactic-frame response. The mini-DC2 layout is not supported.
        """
        if is_miniDC2_format:
            raise CosiInputError("is_miniDC2_format=True: the mini-DC2 layout is not supported")
        return cls(name, event_binned_data, dict_bkg_binned_data, rsp, ccm=coordsys_conv_matrix,
                   galactic=coordsys_conv_matrix is None, rtol=rtol, dtype=dtype)

    def _check_engine(self):
        if self._engine.data.nnz == 0:
            raise CosiInputError(f"dataset '{self._name}': the event histogram has no counts")
        logger.info("dataset '%s': %d non-empty bins, %.0f counts, backgrounds %s", self._name,
                    self._engine.data.nnz, self._engine.data.total_counts, self._engine.background_names)

    # ---- properties ---------------------------------------------------------------------------
    @property
    def name(self):
        """Name of the dataset."""
        return self._name

    @property
    def event(self):
        """The binned counts (histpy.Histogram), as given."""
        return self._event

    @property
    def engine(self):
        """The :class:`~cosi_imaging_plugin.engine.ResponseEngine` of this dataset."""
        return self._engine

    @property
    def background_names(self):
        """Names of the background components, in order."""
        return list(self._engine.background_names)

    def keys_bkg_models(self):
        """Names of the background components (cosipy's name for :attr:`background_names`)."""
        return self.background_names

    def bkg_model(self, key):
        """The background template `key` (histpy.Histogram)."""
        self._check_bkg(key)
        return self._backgrounds.get(key)

    def summed_bkg_model(self, key):
        """Sum of background template `key` over all bins (counts at norm 1)."""
        self._check_bkg(key)
        return self._engine.background_total(key)

    def _check_bkg(self, key):
        if key not in self._engine.background_names:
            raise CosiInputError(f"dataset '{self._name}' has no background '{key}'; "
                                 f"known: {self._engine.background_names}")

    @property
    def model_axes(self):
        """Axes [lb, Ei] of the sky image."""
        return self._engine.model_axes

    @property
    def data_axes(self):
        """Axes of the binned data."""
        return self._engine.data_axes

    @property
    def exposure_map(self):
        """Exposure ``sum_i R_ij`` over all bins (Histogram over the model axes, cm2 s sr)."""
        return self._engine.exposure_histogram()

    @property
    def total_counts(self):
        """Total number of counts."""
        return self._engine.data.total_counts

    def calc_expectation(self, model, dict_bkg_norm=None):
        """Expected counts in every bin (dense Histogram over the data axes).

        Parameters
        ----------
        model : histpy.Histogram or ndarray
            Image over the model axes (ph cm-2 s-1 sr-1).
        dict_bkg_norm : dict, optional
            Background normalizations (default 1).
        """
        return self._engine.expectation(model, dict_bkg_norm)

    def calc_loglikelihood(self, model, dict_bkg_norm=None):
        """Poisson log-likelihood of the data for an image and background normalizations."""
        return self._engine.log_likelihood(model, dict_bkg_norm)

    def image_values(self, image):
        """An image (Histogram or array) as an array [n_pix, n_ei] in ph cm-2 s-1 sr-1."""
        if isinstance(image, Histogram) and image.unit is not None and not image.unit.is_equivalent(IMAGE_UNIT):
            raise CosiInputError(f"image unit '{image.unit}' is not an intensity ({IMAGE_UNIT})")
        return self._engine.image_values(image)

    def __repr__(self):
        unit = u.Unit("cm2 s sr")
        return (f"DeconvolutionDataset('{self._name}', {self._engine.data.nnz} non-empty bins, "
                f"{self.total_counts:.0f} counts, backgrounds={self.background_names}, "
                f"exposure {self._engine.exposure_map.sum():.4g} {unit})")
