"""A COSI dataset: binned counts, background templates and the response engine that folds skies onto them.

Estimators run *on* datasets: Richardson-Lucy deconvolution, the 3ML plugin and
the detection and uncertainty estimators take one :class:`COSIDataset` (or several
sharing a sky) and ask it for expected counts, the Poisson statistic and the
engine's transpose products. A dataset is built from files
(:meth:`COSIDataset.from_files`), from a dataset manifest
(:meth:`COSIDataset.from_manifest`) or from histograms already in memory
(:meth:`COSIDataset.from_histograms`); every route assembles its engine in
:mod:`cosi_imaging_plugin.datasets.engine_builder`, with one set of defaults.
"""
import logging

from histpy import Histogram

from ..binning import EXPOSURE_UNIT, IMAGE_UNIT, is_nested
from ..engine import PixelMapping
from ..errors import CosiInputError
from ..io.manifest import Manifest, read_manifest
from .engine_builder import DEFAULT_DTYPE, DEFAULT_RTOL, build_engine

logger = logging.getLogger(__name__)

#: Frames of :meth:`COSIDataset.from_manifest`: which data of a manifest are analysed.
MANIFEST_FRAMES = ("spacecraft", "galactic", "auto")


class COSIDataset:
    """Binned COSI counts, background templates and their response engine.

    Parameters
    ----------
    engine : ResponseEngine
        Engine holding the response, the sky mapping (a CCM or a Galactic-frame
        response) and the data (``engine.set_data``).
    name : str
        Name of the dataset (unique among the datasets of one analysis).
    counts : histpy.Histogram, optional
        The binned counts the engine was given (kept for :attr:`counts`).
    backgrounds : dict of str to histpy.Histogram, optional
        The templates the engine was given.
    attitudes : AttitudeBins, optional
        The attitudes of the engine's rows (ScAtt or Time bins), through which point
        sources are folded exactly (:meth:`point_source_dwell`); without them, point
        sources are interpolated on the model grid. For Galactic-CDS data, the
        attitudes whose rotations made the Galactic-frame response, with `rotated`.
    rotated : RotatedResponse, optional
        For Galactic-CDS data: the spacecraft-frame response with the PsiChi rotations
        of `attitudes`, through which point sources are folded along their path
        (:meth:`point_source_cds`).

    Examples
    --------
    >>> dataset = COSIDataset.from_files(response="response.h5", data="data.h5",
    ...                                  backgrounds={"albedo": "bkg.h5"}, ccm="ccm.h5")  # doctest: +SKIP
    >>> dataset.log_likelihood(image, {"albedo": 1.0})                                   # doctest: +SKIP
    """

    def __init__(self, engine, name="cosi", counts=None, backgrounds=None, attitudes=None, rotated=None):
        if engine.data is None:
            raise CosiInputError(f"dataset '{name}': the engine has no data (call engine.set_data first)")
        if engine.data.nnz == 0:
            raise CosiInputError(f"dataset '{name}': the event histogram has no counts")
        self._engine = engine
        self._name = str(name)
        self._counts = counts
        self._backgrounds = dict(backgrounds or {})
        self._attitudes = attitudes
        self._rotated = rotated
        if attitudes is not None and rotated is None and isinstance(engine.mapping, PixelMapping):
            raise CosiInputError(f"dataset '{name}': Galactic-CDS data fold point sources through the rotated "
                                 "spacecraft-frame response: give rotated= with the attitudes")
        rows = engine.n_rows if rotated is None else rotated.n_rows
        if attitudes is not None and len(attitudes) != rows:
            raise CosiInputError(f"dataset '{name}': {len(attitudes)} attitude bins for {rows} "
                                 f"{'rows' if rotated is None else 'rotations of the response'}")
        logger.info("dataset '%s': %d non-empty bins, %.0f counts, backgrounds %s", self._name, engine.data.nnz,
                    engine.data.total_counts, engine.background_names)

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_files(cls, response, data, backgrounds=None, ccm=None, orientation=None, exposure_table=None, *,
                   name="cosi", rtol=DEFAULT_RTOL, dtype=DEFAULT_DTYPE, nside_model=None, progress=True, client=None,
                   mapping_on=None):
        """Dataset from the files of a COSI analysis, in either frame.

        Parameters
        ----------
        response : str or pathlib.Path
            FullDetectorResponse (spacecraft frame; version 1 dense or sparse, or version 2).
        data : str or pathlib.Path
            Binned counts (histpy HDF5), PsiChi in the spacecraft or the Galactic frame.
            Axes the analysis does not use (Time, Ei, SigmaTau, Dist) are summed out.
        backgrounds : dict of str to path, optional
            Background templates with the data's binning.
        ccm : str or pathlib.Path, optional
            Coordinate conversion matrix for spacecraft-frame data binned in ScAtt or
            Time (or, with `exposure_table`, the CCM of its bins for Galactic data).
        orientation : str or pathlib.Path, optional
            ``.ori`` file: spacecraft-frame data without CCM are folded with the
            dwell time of each sky direction; Galactic-frame data without exposure
            table with attitude bins at the response NSIDE.
        exposure_table : str or pathlib.Path, optional
            ScAtt exposure table (FITS) whose mean attitudes rotate the response
            for Galactic-frame data.
        name : str
        rtol : float
            Response truncation tolerance (see ColumnResponse).
        dtype : numpy dtype
            Storage type of the response.
        nside_model : int, optional
            NSIDE of the sky grid when the CCM is computed here.
        progress : bool
            Show progress bars while the response is compressed or rotated.
        client : distributed.Client, str or cluster, optional
            Shard the engine over a Dask cluster (a client, a scheduler address or a
            cluster): the workers read the response file, each its own CDS columns.
        mapping_on : {'auto', 'workers', 'client'}, optional
            With a client, where the sky mapping (the CCM) lives: 'auto' (the default, or
            that of an enclosing ``use_scheduler`` block) keeps it on the workers when their
            memory holds their shards plus the mapping (faster), else on the client.
        """
        built = build_engine(response, data, backgrounds, ccm=ccm, orientation=orientation,
                             exposure_table=exposure_table, rtol=rtol, dtype=dtype, nside_model=nside_model,
                             progress=progress, client=client, mapping_on=mapping_on)
        return cls(built.engine, name=name, counts=built.counts, backgrounds=built.backgrounds,
                   attitudes=built.attitudes, rotated=built.rotated)

    @classmethod
    def from_histograms(cls, counts, backgrounds, response, ccm=None, *, galactic=False, name="cosi",
                        rtol=DEFAULT_RTOL, dtype=DEFAULT_DTYPE, client=None, mapping_on=None):
        """Dataset from histograms in memory and a response.

        Parameters
        ----------
        counts : histpy.Histogram or path
            Binned counts [ScAtt | Time, Em, Phi, PsiChi], or [Em, Phi, PsiChi] for a
            Galactic-CDS analysis.
        backgrounds : dict of str to histpy.Histogram or path
            Background templates (expected counts) with the axes of `counts`.
        response : ColumnResponse, FullDetectorResponse or path
            The response; a file is compressed with tolerance `rtol`. With
            ``galactic=True``, a Galactic-frame response (source axis lb, cm2 s).
        ccm : histpy.Histogram or path, optional
            Coordinate conversion matrix [ScAtt | Time, lb, NuLambda] of a local-CDS analysis.
        galactic : bool
            Galactic-CDS analysis with a precomputed Galactic-frame response (no CCM).
        name : str
        rtol : float
        dtype : numpy dtype
        client : distributed.Client, str or cluster, optional
            Shard the engine over a Dask cluster (see :meth:`from_files`).
        mapping_on : {'auto', 'workers', 'client'}, optional
            Where the sky mapping lives on a cluster (see :meth:`from_files`).
        """
        built = build_engine(response, counts, backgrounds, ccm=ccm, galactic_response_given=galactic, rtol=rtol,
                             dtype=dtype, client=client, mapping_on=mapping_on)
        return cls(built.engine, name=name, counts=built.counts, backgrounds=built.backgrounds)

    @classmethod
    def from_manifest(cls, manifest, frame="spacecraft", *, name="cosi", rtol=DEFAULT_RTOL, dtype=DEFAULT_DTYPE,
                      progress=True, client=None, mapping_on=None):
        """Dataset of a dataset directory (``manifest.yaml``, e.g. written by ``cosi-imaging simulate``).

        Parameters
        ----------
        manifest : str, pathlib.Path or Manifest
            The manifest or its directory.
        frame : {'spacecraft', 'galactic', 'auto'}
            'spacecraft': the ScAtt-binned data with the CCM; 'galactic': the
            Galactic-frame data, the response rotated over the exposure table's
            ScAtt bins (or the orientation's); 'auto': spacecraft when the manifest
            has ScAtt-binned data.
        name, rtol, dtype, progress, client, mapping_on
            As for :meth:`from_files`.
        """
        if not isinstance(manifest, Manifest):
            manifest = read_manifest(manifest)
        if frame not in MANIFEST_FRAMES:
            raise CosiInputError(f"frame must be one of {list(MANIFEST_FRAMES)}, got {frame!r}")
        if frame == "auto":
            frame = "spacecraft" if "data_scatt" in manifest else "galactic"
        if frame == "spacecraft":
            manifest.require(["response", "ccm", "data_scatt"], "a spacecraft-frame analysis")
            return cls.from_files(manifest["response"], manifest["data_scatt"], manifest["backgrounds"],
                                  ccm=manifest["ccm"], exposure_table=manifest.get("exposure_table"),
                                  orientation=manifest.get("orientation"), name=name, rtol=rtol, dtype=dtype,
                                  progress=progress, client=client,
                                  mapping_on=mapping_on)
        manifest.require(["response", "data_galactic"], "a Galactic-frame analysis")
        table = manifest.get("exposure_table")
        if table is None:
            manifest.require(["orientation"], "a Galactic-frame analysis without exposure table")
        return cls.from_files(manifest["response"], manifest["data_galactic"], manifest["backgrounds_galactic"],
                              ccm=manifest.get("ccm") if table is not None else None,
                              orientation=manifest.get("orientation"), exposure_table=table, name=name,
                              rtol=rtol, dtype=dtype, progress=progress, client=client,
                                  mapping_on=mapping_on)

    def with_counts(self, counts, name=None):
        """A dataset on other counts with this one's response, sky mapping, exposure and templates.

        Parameters
        ----------
        counts : histpy.Histogram
            Counts with this dataset's data axes (e.g. a Poisson draw of :meth:`npred`).
        name : str, optional
            Default: this dataset's name.
        """
        engine = self._engine.with_data(counts)
        return type(self)(engine, name=self._name if name is None else name, counts=counts,
                          backgrounds=self._backgrounds, attitudes=self._attitudes, rotated=self._rotated)

    # ---- what it holds --------------------------------------------------------------------------
    @property
    def name(self):
        """Name of the dataset."""
        return self._name

    @property
    def engine(self):
        """The :class:`~cosi_imaging_plugin.engine.ResponseEngine` of this dataset."""
        return self._engine

    @property
    def attitudes(self):
        """The :class:`~cosi_imaging_plugin.exposure.AttitudeBins` of the rows, or None."""
        return self._attitudes

    def point_source_dwell(self, direction):
        """Dwell ``D[row, nu]`` (s) of an exact sky direction in each row, or None without attitudes.

        Parameters
        ----------
        direction : astropy.coordinates.SkyCoord or array_like
            A sky direction or its Galactic unit vector.
        """
        if self._attitudes is None:
            return None
        axis = self._engine.response.axes[0] if self._rotated is None else self._rotated.source_axis
        return self._attitudes.dwell(direction, axis.nside, is_nested(axis))

    def point_source_cds(self, direction):
        """Galactic-CDS expected counts per unit flux of an exact direction, folded along its path, or None.

        For Galactic-CDS data with attitudes: the direction's dwell in every NuLambda pixel
        of each ScAtt row, through the spacecraft-frame response, its PsiChi rotated by
        the row's attitude (the Galactic-frame response of that one direction). None for
        local-CDS data (see :meth:`point_source_dwell`) or without attitudes.

        Parameters
        ----------
        direction : astropy.coordinates.SkyCoord or array_like
            A sky direction or its Galactic unit vector.

        Returns
        -------
        numpy.ndarray or None
            Shape (n_ei, n_em * n_phi * n_psichi), cm2 s.
        """
        if self._rotated is None or self._attitudes is None:
            return None
        return self._rotated.point_source(self.point_source_dwell(direction))

    @property
    def counts(self):
        """The binned counts (histpy.Histogram) as given, or None when the dataset was made from an engine."""
        return self._counts

    @property
    def backgrounds(self):
        """The background templates {name: histpy.Histogram} as given."""
        return dict(self._backgrounds)

    @property
    def background_names(self):
        """Names of the background components, in order."""
        return list(self._engine.background_names)

    @property
    def model_axes(self):
        """Axes [lb, Ei] of the sky image."""
        return self._engine.model_axes

    @property
    def data_axes(self):
        """Axes of the binned data."""
        return self._engine.data_axes

    @property
    def cds_axes(self):
        """Axes [Em, Phi, PsiChi] of the Compton data space."""
        return self._engine.cds_axes

    @property
    def exposure(self):
        """Exposure map ``X_j = sum_i R_ij`` over all bins, an array [n_pix, n_ei] in cm2 s sr."""
        return self._engine.exposure_map

    @property
    def total_counts(self):
        """Total number of counts."""
        return self._engine.data.total_counts

    @property
    def n_bins(self):
        """Number of data bins, empty ones included."""
        return int(self._engine.n_rows * self._engine.n_columns)

    def exposure_histogram(self):
        """The exposure map as a Histogram over the model axes (cm2 s sr)."""
        return Histogram(self.model_axes, contents=self.exposure, unit=EXPOSURE_UNIT)

    def image_histogram(self, values, unit=IMAGE_UNIT):
        """Wrap an array [n_pix, n_ei] as a Histogram over the model axes."""
        return self._engine.image_histogram(values, unit=unit)

    def background_total(self, name):
        """Sum of background template `name` over all bins (counts at norm 1)."""
        if name not in self._engine.background_names:
            raise CosiInputError(f"dataset '{self._name}' has no background '{name}'; "
                                 f"known: {self._engine.background_names}")
        return self._engine.background_total(name)

    # ---- expected counts and the statistic ------------------------------------------------------
    def npred_at_bins(self, image, bkg_norms=None):
        """Expected counts (sky + backgrounds) at the non-empty data bins, in the engine's bin order."""
        return self._engine.expectation_at_bins(image, bkg_norms)

    def npred_total(self, image, bkg_norms=None):
        """Expected counts summed over all data bins (from the exposure map)."""
        return self._engine.total_expected(image, bkg_norms)

    def npred(self, image, bkg_norms=None):
        """Expected counts in every data bin (a dense Histogram over the data axes; large at scale)."""
        return self._engine.expectation(image, bkg_norms)

    def npred_cds(self, image, bkg_norms=None):
        """Expected counts summed over the ScAtt/Time rows: Histogram over [Em, Phi, PsiChi]."""
        return Histogram(self.cds_axes, contents=self._engine.expectation_cds(image, bkg_norms))

    def counts_cds(self):
        """Observed counts summed over the ScAtt/Time rows: Histogram over [Em, Phi, PsiChi]."""
        return Histogram(self.cds_axes, contents=self._engine.data_cds())

    def log_likelihood(self, image, bkg_norms=None):
        """Poisson log-likelihood ``sum d ln eps - sum eps - sum ln d!`` of a sky image and background norms."""
        return self._engine.log_likelihood(image, bkg_norms)

    def log_likelihood_from(self, npred_at_bins, npred_total, constant=None):
        """The Poisson log-likelihood from expected counts at the non-empty bins and over all bins.

        ``constant`` replaces the ``sum ln d!`` subtracted (see
        :meth:`ResponseEngine.log_likelihood_from <cosi_imaging_plugin.engine.ResponseEngine.log_likelihood_from>`).
        """
        return self._engine.log_likelihood_from(npred_at_bins, npred_total, constant)

    def __repr__(self):
        return (f"{type(self).__name__}('{self._name}', {self._engine.data.nnz} non-empty bins, "
                f"{self.total_counts:.0f} counts, backgrounds={self.background_names}, "
                f"exposure {self.exposure.sum():.4g} {EXPOSURE_UNIT})")

