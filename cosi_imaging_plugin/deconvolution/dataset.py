"""A dataset with the method names of cosipy's ``DataIF_COSI_DC2``, for users of the COSI team's workflow.

:class:`DeconvolutionDataset` is a :class:`~cosi_imaging_plugin.datasets.COSIDataset`
built with the argument order of the COSI team's image-deconvolution tutorials and
offering their method names (``keys_bkg_models``, ``bkg_model``,
``calc_expectation``, ...). Any COSIDataset works with the deconvolution; this
class only eases moving scripts over.
"""
from ..datasets import DEFAULT_DTYPE, DEFAULT_RTOL, COSIDataset, build_engine
from ..errors import CosiInputError


class DeconvolutionDataset(COSIDataset):
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
    >>> ds.calc_loglikelihood(image, {"albedo": 1.0})                                         # doctest: +SKIP
    """

    def __init__(self, name, event, backgrounds, response, ccm=None, galactic=False, rtol=DEFAULT_RTOL,
                 dtype=DEFAULT_DTYPE):
        built = build_engine(response, event, backgrounds, ccm=ccm, galactic_response_given=galactic, rtol=rtol,
                             dtype=dtype)
        super().__init__(built.engine, name=name, counts=built.counts, backgrounds=built.backgrounds)

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
        new = cls.__new__(cls)
        COSIDataset.__init__(new, engine, name=name, counts=event, backgrounds=backgrounds)
        return new

    @classmethod
    def load(cls, name, event_binned_data, dict_bkg_binned_data, rsp, coordsys_conv_matrix=None,
             is_miniDC2_format=False, rtol=DEFAULT_RTOL, dtype=DEFAULT_DTYPE):  # noqa: N803 (cosipy's names)
        """Build a dataset with the argument names of cosipy's ``DataIF_COSI_DC2.load``.

        ``coordsys_conv_matrix=None`` means a Galactic-CDS analysis with a
        Galactic-frame response. The mini-DC2 layout is not supported.
        """
        if is_miniDC2_format:
            raise CosiInputError("is_miniDC2_format=True: the mini-DC2 layout is not supported")
        return cls(name, event_binned_data, dict_bkg_binned_data, rsp, ccm=coordsys_conv_matrix,
                   galactic=coordsys_conv_matrix is None, rtol=rtol, dtype=dtype)

    @property
    def event(self):
        """The binned counts (histpy.Histogram), as given (cosipy's name for :attr:`counts`)."""
        return self.counts

    def keys_bkg_models(self):
        """Names of the background components (cosipy's name for :attr:`background_names`)."""
        return self.background_names

    def bkg_model(self, key):
        """The background template `key` (histpy.Histogram)."""
        self.background_total(key)  # names the dataset and the known templates when `key` is unknown
        return self._backgrounds.get(key)

    def summed_bkg_model(self, key):
        """Sum of background template `key` over all bins (counts at norm 1)."""
        return self.background_total(key)

    @property
    def exposure_map(self):
        """Exposure ``sum_i R_ij`` over all bins (Histogram over the model axes, cm2 s sr)."""
        return self.exposure_histogram()

    def calc_expectation(self, model, dict_bkg_norm=None):
        """Expected counts in every bin (dense Histogram over the data axes; see :meth:`npred`)."""
        return self.npred(model, dict_bkg_norm)

    def calc_loglikelihood(self, model, dict_bkg_norm=None):
        """Poisson log-likelihood of the data for an image and background normalizations."""
        return self.log_likelihood(model, dict_bkg_norm)

    def image_values(self, image):
        """An image (Histogram or array) as an array [n_pix, n_ei] in ph cm-2 s-1 sr-1."""
        return self.engine.image_values(image)
