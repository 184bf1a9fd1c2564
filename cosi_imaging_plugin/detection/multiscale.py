"""Multiscale source detection on the sphere: TS maps over a ladder of kernel widths, peaks, merging, iteration.

The idea of the wavelet detection of flat images (significance thresholds at several
scales), on COSI's likelihood: at every scale a :class:`~.ts_map.TSMapEstimator` map
(a point source, then Gaussians of growing sigma), local maxima among HEALPix
neighbours above a significance threshold, one detection per sky region (the scale of
highest TS wins; a weaker peak closer than the overlap distance to a stronger one is
dropped), and iteration: the strongest new peak joins the null model, the norms of all
found so far are refitted jointly, and the search runs again until nothing new passes.

:class:`SourceDetector` returns a :class:`DetectionTable` (an astropy Table) whose
:meth:`~DetectionTable.to_model` gives an astromodels Model ready for a 3ML fit.
"""
import copy
import logging

import healpy as hp
import numpy as np
from astromodels import Disk_on_sphere, ExtendedSource, Gaussian_on_sphere, Model, PointSource
from astromodels.functions.function import get_function
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from threeML import DataList, JointLikelihood
from threeML.minimizer.minimization import FitFailed

from ..errors import CosiInputError
from ..threeml import COSIImagingLike
from .ts_map import TSMapEstimator

logger = logging.getLogger(__name__)

#: Default ladder of kernel widths (deg); 0 is a point source.
DEFAULT_SCALES = (0.0, 2.0, 4.0, 8.0, 16.0)
#: Names astromodels gives the normalization of spectral shapes that do not flag it.
NORMALIZATION_NAMES = ("K", "F", "A", "norm")


def local_maxima(values, nside, nest=False, threshold=-np.inf):
    """Pixels whose value is at least every neighbour's and above `threshold` (NaN never a maximum).

    Parameters
    ----------
    values : ndarray, shape (12 nside**2,)
    nside : int
    nest : bool
    threshold : float

    Returns
    -------
    numpy.ndarray of int, by decreasing value
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.where(np.isfinite(values), values, -np.inf)
    neighbours = hp.get_all_neighbours(nside, np.arange(values.size), nest=nest)  # (8, npix), -1 where none
    around = np.where(neighbours >= 0, finite[neighbours], -np.inf)
    peaks = np.flatnonzero((finite >= around.max(axis=0)) & (finite > threshold))
    return peaks[np.argsort(-finite[peaks])]


def grid_nside(scale, finest):
    """NSIDE of the test grid of a kernel width (deg): pixels at most half the width, no finer than `finest`."""
    if scale <= 0:
        return int(finest)
    nside = int(finest)
    while nside > 1 and np.degrees(hp.nside2resol(nside // 2)) <= scale / 2:
        nside //= 2
    return nside


def scaled_spectrum(spectrum, norm):
    """A copy of an astromodels spectral function with its normalization multiplied by `norm`."""
    scaled = copy.deepcopy(spectrum)
    parameter = _normalization(scaled)
    value = parameter.value * float(norm)
    if parameter.min_value is not None and value < parameter.min_value:
        parameter.min_value = value / 10
    if parameter.max_value is not None and value > parameter.max_value:
        parameter.max_value = value * 10
    parameter.value = value
    return scaled


def refit_norms(dataset, detected, null_model=None, background_norms=None):
    """Fit the norms of detected sources jointly (3ML, the plugin; everything else fixed): {name: norm factor}.

    Parameters
    ----------
    dataset : COSIDataset
    detected : astromodels.Model
        The detections, each with its spectrum scaled by its current norm (:meth:`DetectionTable.to_model`).
    null_model : astromodels.Model, optional
        Known sources, kept fixed.
    background_norms : dict, optional
        Background normalizations, kept fixed (default 1).
    """
    start = {}
    for name, source in detected.sources.items():
        for parameter in source.parameters.values():
            parameter.fix = True
        norm = _normalization(source.spectrum.main.shape)
        norm.free = True
        if norm.min_value is None or norm.min_value < 0:  # a detection's flux is not negative (e.g. Gaussian's F)
            norm.min_value = 0.0
        start[name] = norm.value
    fixed = list(null_model.sources.values()) if null_model is not None else []
    plugin = COSIImagingLike(f"{dataset.name}_refit", dataset)
    for name, parameter in plugin.background_parameters.items():
        parameter.value = (background_norms or {}).get(name, 1.0)
        parameter.fix = True
    model = Model(*fixed, *detected.sources.values())
    try:
        JointLikelihood(model, DataList(plugin), verbose=False).fit(quiet=True, compute_covariance=False)
    except FitFailed as exc:  # a detection the others explain away: its norm runs to the bound
        logger.warning("joint refit of the detections failed (%s): their norms are kept", exc)
        return {name: 1.0 for name in start}
    return {name: _normalization(source.spectrum.main.shape).value / start[name]
            for name, source in detected.sources.items()}


def _normalization(spectrum):
    parameters = spectrum.parameters
    name = next((n for n, p in parameters.items() if getattr(p, "is_normalization", False)), None)
    name = name or next((n for n in NORMALIZATION_NAMES if n in parameters), None)
    if name is None:
        raise CosiInputError(f"spectrum {spectrum.name} has no normalization parameter to scale "
                             f"(looked for is_normalization and {list(NORMALIZATION_NAMES)})")
    return parameters[name]


def spectrum_description(spectrum):
    """A spectral function as plain data, ``{"function": name, "parameters": {name: value}}`` (table metadata)."""
    return {"function": spectrum.name, "parameters": {n: float(p.value) for n, p in spectrum.parameters.items()}}


def spectrum_from_description(description):
    """The astromodels spectral function of :func:`spectrum_description`."""
    try:
        spectrum = get_function(description["function"])
    except Exception as exc:
        raise CosiInputError(f"unknown spectral function {description.get('function')!r} in the table's metadata") \
            from exc
    for name, value in description["parameters"].items():
        parameter = spectrum.parameters[name]
        if parameter.min_value is not None and value < parameter.min_value:
            parameter.min_value = value
        if parameter.max_value is not None and value > parameter.max_value:
            parameter.max_value = value
        parameter.value = value
    return spectrum


class DetectionTable(Table):
    """Detected sources: one row each (name, l, b, ra, dec in deg; scale in deg, 0 for a point; ts, sqrt_ts, norm,
    norm_err, flux, flux_err; the iteration that found it). ``meta['spectrum']`` describes the test spectrum
    (:func:`spectrum_description`), so a table read back from a file still gives its model."""

    def to_model(self, spectrum=None):
        """An astromodels Model of the detections, each with the test spectrum scaled by its norm.

        Points become ``PointSource`` (given in l, b), extended detections ``ExtendedSource`` with a
        ``Gaussian_on_sphere`` (sigma = scale) or a ``Disk_on_sphere`` (radius = scale), centred in
        (ra, dec) as astromodels' shapes are.

        Parameters
        ----------
        spectrum : astromodels spectral function, optional
            Spectral shape (default: the one the detection used).
        """
        if spectrum is None:
            if "spectrum" not in self.meta:
                raise CosiInputError("no spectrum: give one to to_model()")
            spectrum = spectrum_from_description(self.meta["spectrum"])
        sources = []
        for row in self:
            shape = scaled_spectrum(spectrum, row["norm"])
            name = str(row["name"])
            if row["scale"] == 0:
                sources.append(PointSource(name, l=float(row["l"]), b=float(row["b"]), spectral_shape=shape))
                continue
            if row["kernel"] == "disk":
                spatial = Disk_on_sphere(lon0=float(row["ra"]), lat0=float(row["dec"]), radius=float(row["scale"]))
            else:
                spatial = Gaussian_on_sphere(lon0=float(row["ra"]), lat0=float(row["dec"]), sigma=float(row["scale"]))
            sources.append(ExtendedSource(name, spatial_shape=spatial, spectral_shape=shape))
        return Model(*sources)


class SourceDetector:
    """Multiscale detection on COSI data (module docstring).

    Parameters
    ----------
    spectrum : astromodels spectral function
        The test sources' spectrum.
    scales : sequence of float
        Kernel widths in deg; 0 is a point source.
    kernel : {'gaussian', 'disk'}
        Shape of the extended kernels.
    threshold : float
        Smallest ``sqrt_ts`` of a detection.
    nside : int, optional
        Test grid of the point scale and the finest of all (default: the model grid's). A wider
        kernel is tested on the coarsest grid whose pixels are at most half its width (no
        finer than this one): the cost of a map grows with the kernel's area over a pixel's.
    overlap : float
        Two peaks overlap when closer than ``overlap * max(scale_1, scale_2, pixel size)``.
    max_iterations : int
        Searches at most; each adds the strongest new peak to the null model (and refits the norms of
        all found so far), so at most this many sources are found.
    em_channels : slice or list of int, optional
        Measured-energy bins used.
    """

    def __init__(self, spectrum, scales=DEFAULT_SCALES, kernel="gaussian", threshold=5.0, nside=None, overlap=2.0,
                 max_iterations=10, em_channels=None):
        if kernel not in ("gaussian", "disk"):
            raise CosiInputError(f"extended kernel must be 'gaussian' or 'disk', got {kernel!r}")
        scales = sorted(float(s) for s in scales)
        if not scales or scales[0] < 0:
            raise CosiInputError(f"scales must be widths >= 0 in deg, got {scales}")
        self.spectrum, self.scales, self.kernel = spectrum, scales, kernel
        self.threshold, self.nside, self.overlap = float(threshold), nside, float(overlap)
        self.max_iterations, self.em_channels = int(max_iterations), em_channels

    def run(self, dataset, null_model=None, background_norms=None, progress=True):
        """Detect sources in a dataset.

        Parameters
        ----------
        dataset : COSIDataset
        null_model : astromodels.Model, optional
            Fixed sources known beforehand.
        background_norms : dict, optional
            Background normalizations of the null model (default 1).
        progress : bool

        Returns
        -------
        DetectionTable
        """
        nside = self.nside or dataset.engine.model_axes[0].nside
        known = list(null_model.sources.values()) if null_model is not None else []
        rows = []
        for iteration in range(self.max_iterations):
            null = Model(*known) if known else None
            found = [d for d in self._search(dataset, nside, null, background_norms, progress)
                     if not self._overlaps(d, rows)]
            if not found:
                break
            # one source an iteration, the strongest: a bright source's wings reach far in the Compton data
            # space, so weaker peaks are judged only once it is in the null model
            detection = found[0]
            detection["iteration"] = iteration
            detection["name"] = f"src{len(rows):03d}"
            rows.append(detection)
            logger.info("detection iteration %d: %s at (l, b) = (%.2f, %.2f), scale %g deg, sqrt_ts %.1f", iteration,
                        detection["name"], detection["l"], detection["b"], detection["scale"], detection["sqrt_ts"])
            if iteration + 1 == self.max_iterations:
                break
            # the next search sees what was found, with norms fitted jointly (overlapping sources share counts)
            detected = DetectionTable(rows=[_row_values(d) for d in rows], names=list(_COLUMNS)).to_model(
                self.spectrum)
            fitted = refit_norms(dataset, detected, null_model, background_norms)
            for detection in rows:
                for name in ("norm", "flux"):
                    detection[name] *= fitted[detection["name"]]
            known = (list(null_model.sources.values()) if null_model is not None else []) + list(
                detected.sources.values())
        table = DetectionTable(rows=[_row_values(d) for d in rows] or None, names=list(_COLUMNS),
                               dtype=[_COLUMNS[c] for c in _COLUMNS],
                               meta={"spectrum": spectrum_description(self.spectrum), "threshold": self.threshold,
                                     "scales_deg": list(self.scales), "kernel": self.kernel})
        for name in ("l", "b", "ra", "dec", "scale"):
            table[name].unit = u.deg
        table["flux"].unit = table["flux_err"].unit = u.Unit("cm-2 s-1")
        return table

    def _search(self, dataset, nside, null, background_norms, progress):
        """Peaks of every scale above the threshold, merged: the highest TS in each region."""
        candidates = []
        for scale in self.scales:
            kernel, width = ("point", None) if scale == 0 else (self.kernel, scale)
            estimator = TSMapEstimator(self.spectrum, kernel=kernel, width=width, nside=grid_nside(scale, nside),
                                       em_channels=self.em_channels)
            result = estimator.run(dataset, null_model=null, background_norms=background_norms, progress=progress)
            sqrt_ts = result.values("sqrt_ts")
            for pixel in local_maxima(sqrt_ts, estimator.nside, estimator.axis.is_nested, self.threshold):
                candidates.append(_detection(result, pixel, scale, kernel, estimator.nside, estimator.axis.is_nested))
        candidates.sort(key=lambda d: -d["ts"])
        kept = []
        for candidate in candidates:
            if not self._overlaps(candidate, kept):
                kept.append(candidate)
        return kept

    def _overlaps(self, detection, others):
        for other in others:
            distance = hp.rotator.angdist((detection["l"], detection["b"]), (other["l"], other["b"]), lonlat=True)
            reach = self.overlap * max(detection["scale"], other["scale"], detection["resolution"])
            if np.degrees(distance[0] if np.ndim(distance) else distance) < reach:
                return True
        return False


_COLUMNS = {"name": "U16", "l": float, "b": float, "ra": float, "dec": float, "scale": float, "kernel": "U8",
            "ts": float, "sqrt_ts": float, "norm": float, "norm_err": float, "flux": float, "flux_err": float,
            "iteration": int}


def _detection(result, pixel, scale, kernel, nside, nest):
    lon, lat = hp.pix2ang(nside, pixel, nest=nest, lonlat=True)
    icrs = SkyCoord(l=lon * u.deg, b=lat * u.deg, frame="galactic").icrs
    values = {name: float(result.values(name)[pixel]) for name in ("ts", "sqrt_ts", "norm", "norm_err", "flux",
                                                                   "flux_err")}
    return {"name": "", "l": float(lon), "b": float(lat), "ra": float(icrs.ra.deg), "dec": float(icrs.dec.deg),
            "scale": float(scale), "kernel": kernel, **values, "iteration": 0,
            "resolution": float(np.degrees(hp.nside2resol(nside)))}


def _row_values(detection):
    return [detection[name] for name in _COLUMNS]
