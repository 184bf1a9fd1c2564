"""Background templates in the local Compton data space, folded through the response.

Every template is expected counts with axes ``[ScAtt, Em, Phi, PsiChi]`` (PsiChi
in the spacecraft frame) and is built like the sky: *source rows*
``M[b, k]`` (ScAtt bin b; k = NuLambda pixel x Ei bin, in s sr) folded through
the response, ``B[b, c] = sum_k M[b, k] R[k, c]``. The kinds (docs/instrument.md, "Backgrounds"):

``isotropic``
    Cosmic diffuse photons: a flat sky through the coordinate conversion matrix
    (so Earth occultation applies when the CCM has it).
``albedo``
    Earth emission, uniform over the Earth's disk, i.e. the directions more than
    ``pi - arcsin(R_E / (R_E + h))`` from the zenith. For every orientation
    sample the zenith is rotated into the spacecraft frame and each NuLambda
    pixel gets the fraction of it that lies beyond the limb; these maps are
    accumulated per ScAtt bin, weighted by the sample's live time.
``instrumental``
    Activation, isotropic in the instrument frame: each ScAtt bin's live time
    times the response summed over NuLambda.

Photons of every kind follow a power law ``E^index`` across the Ei bins
(one Ei bin: no effect). Each template is scaled so that its total is
``rate x total live time``; that total follows from the rows and the effective
area alone (``sum_c R[k, c] = A[k]``), before any dense folding.
"""
import logging
import math

import healpy as hp
import numpy as np
from histpy import Axes, Histogram
from scipy import sparse

from ..engine import CCMMapping
from ..errors import AxisMismatchError, CosiInputError
from ..geometry import earth_limb_radius, lonlat_to_vec

logger = logging.getLogger(__name__)

__all__ = [
    "BACKGROUND_KINDS",
    "spectral_weights",
    "albedo_exposure",
    "template_rows",
    "scale_rows",
    "fold_rows",
    "background_template",
]

#: Kinds of background template this module builds.
BACKGROUND_KINDS = ("isotropic", "albedo", "instrumental")

# Orientation samples x pixels evaluated at once in albedo_exposure.
_ALBEDO_CHUNK = 2**22


def spectral_weights(ei_edges, index=-2.0):
    """Share of a power-law photon spectrum ``E^index`` in each Ei bin (sums to one).

    Parameters
    ----------
    ei_edges : array_like
        Ei edges in keV.
    index : float
        Photon index (negative for a falling spectrum).

    Returns
    -------
    numpy.ndarray, shape (n_ei,)
    """
    edges = np.asarray(ei_edges, dtype=np.float64)
    if abs(index + 1.0) < 1e-12:
        counts = np.diff(np.log(edges))
    else:
        counts = np.diff(edges ** (index + 1.0)) / (index + 1.0)
    return counts / counts.sum()


def _pixel_vectors(nside, scheme):
    npix = hp.nside2npix(nside)
    return np.asarray(hp.pix2vec(nside, np.arange(npix), nest=scheme.lower() == "nested")).T


def albedo_exposure(table, nside, scheme="ring"):
    """Time each spacecraft-frame pixel spends looking at the Earth, per ScAtt bin.

    For orientation sample t with zenith z_t (Galactic) and attitude R_t, the
    spacecraft-frame zenith is ``R_t^T z_t``; a pixel at angle theta from it gets
    the fraction ``clip((theta - theta_limb) / delta + 1/2, 0, 1)`` of the Earth's
    disk, a linear ramp over one pixel size delta across the limb
    ``theta_limb = pi - arcsin(R_E / (R_E + h))``. Pixels whose centre lies more
    than half a pixel size above the limb get exactly zero.

    Parameters
    ----------
    table : cosi_imaging_plugin.io.ExposureTable
        With Earth zenith and altitude (``has_earth_info``).
    nside : int
        NSIDE of the spacecraft-frame (NuLambda) grid.
    scheme : {'ring', 'nested'}

    Returns
    -------
    numpy.ndarray, shape (n_scatt, n_pix)
        Seconds (live time) times the Earth fraction of each pixel.
    """
    if not table.has_earth_info:
        raise CosiInputError("the exposure table has no Earth zenith / altitude: the albedo background "
                             "needs them")
    vectors = _pixel_vectors(nside, scheme)
    npix = vectors.shape[0]
    delta = math.sqrt(hp.nside2pixarea(nside))
    rotations = np.concatenate([table.rotation_matrices(b) for b in range(len(table))])
    zenith = np.concatenate([lonlat_to_vec(z[:, 0], z[:, 1]) for z in table.earth_zenith])
    limb = earth_limb_radius(np.concatenate(table.altitude))
    times = np.concatenate(table.delta_time)
    owner = np.repeat(np.arange(len(table)), table.num_pointings)
    # zenith in spacecraft coordinates: (x.z, y.z, z.z) with x, y, z the columns of R
    zenith_sc = np.einsum("kba,kb->ka", rotations, zenith)
    out = np.zeros((len(table), npix))
    step = max(1, _ALBEDO_CHUNK // npix)
    for start in range(0, times.size, step):
        sl = slice(start, start + step)
        theta = np.arccos(np.clip(zenith_sc[sl] @ vectors.T, -1.0, 1.0))
        fraction = np.clip((theta - limb[sl, None]) / delta + 0.5, 0.0, 1.0)
        k = times[sl].size
        weights = sparse.csr_matrix((times[sl], (owner[sl], np.arange(k))), shape=(len(table), k))
        out += weights @ fraction
    return out


def template_rows(kind, response, mapping, table, index=-2.0):
    """Unnormalised source rows ``M[b, k]`` (s sr) of a background kind.

    Parameters
    ----------
    kind : {'isotropic', 'albedo', 'instrumental'}
    response : cosi_imaging_plugin.engine.ColumnResponse
        Spacecraft-frame response [NuLambda, Ei, Em, Phi, PsiChi].
    mapping : cosi_imaging_plugin.engine.CCMMapping
        The CCM of the dataset (its rows are the ScAtt bins of ``table``).
    table : cosi_imaging_plugin.io.ExposureTable
    index : float
        Photon index across the Ei bins.

    Returns
    -------
    numpy.ndarray, shape (n_scatt, n_nulambda * n_ei)
    """
    if kind not in BACKGROUND_KINDS:
        raise CosiInputError(f"unknown background kind {kind!r}; known: {list(BACKGROUND_KINDS)}")
    if mapping.n_rows != len(table):
        raise AxisMismatchError(f"the CCM has {mapping.n_rows} rows but the exposure table {len(table)} ScAtt bins")
    nu_axis, ei_axis = response.axes[0], response.axes[1]
    weights = spectral_weights(ei_axis.edges.to_value("keV"), index)
    pixel_area = 4.0 * math.pi / nu_axis.nbins
    if kind == "isotropic":
        flat = np.ones((mapping.n_model_pix, 1)) * weights[None, :]
        return mapping.forward(flat)
    if kind == "albedo":
        seen = albedo_exposure(table, nu_axis.nside, str(nu_axis.scheme))
    else:
        seen = np.repeat(np.asarray(table.exposure, dtype=np.float64)[:, None], nu_axis.nbins, axis=1)
    return np.einsum("bn,e->bne", seen * pixel_area, weights).reshape(len(table), -1)


def scale_rows(rows, response, rate, livetime, name="background"):
    """Scale source rows so that the folded template totals ``rate x livetime`` counts.

    Parameters
    ----------
    rows : numpy.ndarray, shape (n_rows, n_source)
    response : ColumnResponse
    rate : float
        Counts per second over the whole data space.
    livetime : float
        Total live time in s.
    name : str
        Used in error messages.

    Returns
    -------
    numpy.ndarray
        ``rows x rate x livetime / total`` with ``total = sum_bk M[b, k] A[k]``.
    """
    total = float(rows.sum(axis=0) @ response.effective_area.reshape(-1))
    if not total > 0:
        raise CosiInputError(f"background '{name}' folds to zero counts: its emission never reaches the "
                             f"instrument's field of view")
    return rows * (rate * livetime / total)


def fold_rows(response, rows):
    """Dense expected counts ``rows @ R`` for every CDS bin (:meth:`ColumnResponse.fold`, shape-checked).

    Parameters
    ----------
    response : ColumnResponse
    rows : numpy.ndarray, shape (m, n_source)
        Source rows (one per ScAtt bin, or any stack of them).

    Returns
    -------
    numpy.ndarray, shape (m, n_columns), float64
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != response.n_source:
        raise AxisMismatchError(f"source rows of shape {rows.shape}, expected (m, {response.n_source})")
    return response.fold(rows)


def background_template(kind, response, ccm, table, rate, index=-2.0):
    """A dense background template [ScAtt, Em, Phi, PsiChi] totalling ``rate x live time`` counts.

    Parameters
    ----------
    kind : {'isotropic', 'albedo', 'instrumental'}
    response : ColumnResponse
    ccm : histpy.Histogram
        CCM [ScAtt, lb, NuLambda] of the ScAtt bins of ``table``.
    table : ExposureTable
    rate : float
        Counts per second, > 0.
    index : float
        Photon index across the Ei bins.

    Returns
    -------
    histpy.Histogram
        Expected counts (float64), dense.
    """
    if not (isinstance(rate, (int, float)) and rate > 0 and math.isfinite(rate)):
        raise CosiInputError(f"background rate must be a positive number of counts/s, got {rate!r}")
    mapping = CCMMapping(ccm)
    rows = template_rows(kind, response, mapping, table, index)
    rows = scale_rows(rows, response, rate, float(np.sum(table.exposure)), kind)
    dense = fold_rows(response, rows)
    axes = Axes([ccm.axes[0], *response.axes[2:]])
    return Histogram(axes, contents=dense.reshape(tuple(axes.nbins)))
