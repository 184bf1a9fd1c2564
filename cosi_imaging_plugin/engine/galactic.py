"""Galactic-frame analyses: rotating PsiChi and precomputing the Galactic-frame response.

A local-CDS bin (Em, Phi, PsiChi in the spacecraft frame) seen at attitude s
is moved to the Galactic CDS by rotating its PsiChi direction. Counts are
conserved: each spacecraft-frame PsiChi pixel is shared among the Galactic
pixels around its rotated centre with HEALPix bilinear weights (which sum to one).
The same operator rebins data and precomputes the response, so a Galactic-CDS
expectation equals the rebinned local-CDS expectation exactly.

``Rg[j, e, m, phi, psi_g] = sum_s sum_nu C[s, j, nu] sum_psi_l P_s[psi_g, psi_l] R[nu, e, m, phi, psi_l]``
in cm2 s.

The precomputation walks the stored entries once per CCM entry: each (s, j, nu, C)
adds the response column of nu, its PsiChi moved by the four bilinear weights of
attitude s, to the lb pixel j (:func:`rotated_fold`, compiled; lb pixels run in
parallel, each thread writing only its own). The work is
``nnz(C) * nnz(R[nu]) * 4`` multiply-adds, with no dense intermediate.
"""
import logging

import healpy as hp
import numba
import numpy as np
from astropy import units as u
from histpy import Axes, HealpixAxis
from scipy import sparse
from tqdm.auto import tqdm

from ..errors import AxisMismatchError, CosiInputError
from .column_response import ColumnResponse

logger = logging.getLogger(__name__)


def psichi_rotation(attitude, nside_local, nside_galactic, scheme_local="ring", scheme_galactic="ring"):
    """Operator moving spacecraft-frame PsiChi pixels to Galactic PsiChi pixels.

    Parameters
    ----------
    attitude : ndarray, shape (3, 3)
        Rotation whose columns are the Galactic unit vectors of the spacecraft
        x, y and z axes (``n_gal = attitude @ n_sc``).
    nside_local, nside_galactic : int
        NSIDE of the spacecraft-frame and Galactic PsiChi grids.
    scheme_local, scheme_galactic : {'ring', 'nested'}

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n_galactic, n_local)
        Columns sum to one.
    """
    attitude = np.asarray(attitude, dtype=np.float64)
    if attitude.shape != (3, 3):
        raise CosiInputError(f"attitude must be a 3x3 rotation matrix, got shape {attitude.shape}")
    pixels, weights = psichi_rotation_weights(attitude[None], nside_local, nside_galactic, scheme_local,
                                              scheme_galactic)
    n_local = pixels.shape[-1]
    cols = np.broadcast_to(np.arange(n_local), (4, n_local))
    return sparse.csr_matrix((weights[0].ravel(), (pixels[0].ravel(), cols.ravel())),
                             shape=(hp.nside2npix(nside_galactic), n_local))


def psichi_rotation_weights(attitudes, nside_local, nside_galactic, scheme_local="ring", scheme_galactic="ring"):
    """Galactic pixels and bilinear weights of every rotated local PsiChi pixel, for many attitudes at once.

    The same operators as :func:`psichi_rotation`, as arrays: local pixel ``l`` seen at attitude ``s`` goes to
    Galactic pixels ``pixels[s, :, l]`` with weights ``weights[s, :, l]`` (four each, summing to one).

    Returns
    -------
    pixels : ndarray of int64, shape (n_attitudes, 4, n_local)
    weights : ndarray of float64, shape (n_attitudes, 4, n_local)
    """
    attitudes = np.asarray(attitudes, dtype=np.float64)
    if attitudes.ndim != 3 or attitudes.shape[1:] != (3, 3):
        raise CosiInputError(f"attitudes must be 3x3 rotation matrices, got shape {attitudes.shape}")
    n_local = hp.nside2npix(nside_local)
    vec = np.array(hp.pix2vec(nside_local, np.arange(n_local), nest=scheme_local.lower() == "nested"))
    rotated = np.einsum("sij,jl->sil", attitudes, vec)  # (n_s, 3, n_local)
    theta, phi = hp.vec2ang(np.moveaxis(rotated, 1, 2).reshape(-1, 3))
    pixels, weights = hp.get_interp_weights(nside_galactic, theta, phi, nest=scheme_galactic.lower() == "nested")
    shape = (attitudes.shape[0], n_local, 4)
    return (np.ascontiguousarray(np.moveaxis(pixels.T.reshape(shape), 2, 1)).astype(np.int64),
            np.ascontiguousarray(np.moveaxis(weights.T.reshape(shape), 2, 1)))


@numba.njit(parallel=True, cache=True, nogil=True)
def rotated_fold(entry_ptr, entry_row, entry_nu, entry_weight, indptr, mphi, local, data, n_ei, pixels, weights,
                 out):
    """``out[j, e, mphi, g] += sum_(s, nu, w) w sum_l P_s[g, l] R[nu * n_ei + e, (mphi, l)]``.

    Parameters
    ----------
    entry_ptr : ndarray of int64, shape (n_out + 1,)
        The entries of output ``j`` are ``entry_ptr[j]:entry_ptr[j + 1]``.
    entry_row, entry_nu, entry_weight : ndarray
        Attitude row, response pixel and weight (s) of each entry.
    indptr, mphi, local, data : ndarray
        The response as CSR rows ``nu * n_ei + e``, with the (Em, Phi) index and the local PsiChi pixel of
        each stored value.
    pixels, weights : ndarray, shape (n_rows, n_local, 4)
        Galactic pixels and bilinear weights of every local PsiChi pixel at each attitude row.
    out : ndarray, shape (n_out, n_ei, n_mphi, n_galactic)
    """
    for j in numba.prange(out.shape[0]):
        for e in range(n_ei):  # one Ei slice of the output at a time stays in cache
            target = out[j, e]
            for q in range(entry_ptr[j], entry_ptr[j + 1]):
                pix_s = pixels[entry_row[q]]
                w_s = weights[entry_row[q]]
                w_entry = entry_weight[q]
                row = entry_nu[q] * n_ei + e
                for p in range(indptr[row], indptr[row + 1]):
                    value = w_entry * data[p]
                    psi = local[p]
                    for k in range(4):
                        target[mphi[p], pix_s[psi, k]] += value * w_s[psi, k]


def rotate_to_galactic(local, attitudes, nside_local, nside_galactic, scheme_local="ring",
                       scheme_galactic="ring"):
    """Rebin local-CDS counts [row, Em, Phi, PsiChi_local] into the Galactic CDS [Em, Phi, PsiChi_gal].

    Parameters
    ----------
    local : ndarray, shape (n_rows, n_em, n_phi, n_local)
    attitudes : ndarray, shape (n_rows, 3, 3)
        Attitude of each row (see :func:`psichi_rotation`).
    """
    local = np.asarray(local, dtype=np.float64)
    attitudes = np.asarray(attitudes)
    if attitudes.shape[0] != local.shape[0]:
        raise AxisMismatchError(f"{attitudes.shape[0]} attitudes for {local.shape[0]} rows of local-CDS data")
    n_gal = hp.nside2npix(nside_galactic)
    out = np.zeros((int(np.prod(local.shape[1:-1])), n_gal))
    for row, attitude in zip(local, attitudes):
        op_t = psichi_rotation(attitude, nside_local, nside_galactic, scheme_local, scheme_galactic).T.tocsr()
        out += np.asarray(row.reshape(-1, local.shape[-1]) @ op_t)
    return out.reshape(*local.shape[1:-1], n_gal)


def _index_type(n):
    """The smallest unsigned integer type of indices below `n` (16 or 32 bits)."""
    return np.uint16 if n <= np.iinfo(np.uint16).max + 1 else np.uint32


def _ccm_entries(ccm):
    """(row, lb, NuLambda, seconds) of every non-zero CCM entry, as int64 and float64 arrays."""
    contents = ccm.contents
    scale = (ccm.unit or u.s).to(u.s)
    if hasattr(contents, "coords"):
        s, j, nu = (np.asarray(c, dtype=np.int64) for c in contents.coords)
        values = np.asarray(contents.data, dtype=np.float64) * scale
    else:
        dense = np.asarray(getattr(contents, "value", contents))
        s, j, nu = np.nonzero(dense)
        values = dense[s, j, nu] * scale
    keep = values != 0
    return s[keep], j[keep], nu[keep], values[keep]


class RotatedResponse:
    """A spacecraft-frame response with the PsiChi rotations of a set of attitude rows.

    What both Galactic-frame folds need: the response as CSR rows ``nu * n_ei + e``
    (values as stored, 16-bit indices where they fit) and, per attitude row, the four
    Galactic pixels and weights of every local PsiChi pixel.

    Parameters
    ----------
    response : ColumnResponse
        Spacecraft-frame response [NuLambda, Ei, Em, Phi, PsiChi].
    attitudes : ndarray, shape (n_rows, 3, 3)
        Attitude of each row (see :func:`psichi_rotation`).
    nside_psichi : int, optional
        NSIDE of the Galactic PsiChi grid (default: the response's).
    scheme_psichi : {'ring', 'nested'}
    """

    def __init__(self, response, attitudes, nside_psichi=None, scheme_psichi="ring"):
        attitudes = np.asarray(attitudes, dtype=np.float64)
        if attitudes.ndim != 3 or attitudes.shape[1:] != (3, 3):
            raise AxisMismatchError(f"attitudes of shape {attitudes.shape}, expected (n_rows, 3, 3)")
        self.axes = response.axes
        nu_axis, ei_axis, em_axis, phi_axis, psi_axis = response.axes
        self.nside_psichi = nside_psichi or psi_axis.nside
        self.scheme_psichi = scheme_psichi
        self.n_rows = attitudes.shape[0]
        self.n_ei, self.n_mphi, self.n_local = ei_axis.nbins, em_axis.nbins * phi_axis.nbins, psi_axis.nbins
        self.n_galactic = hp.nside2npix(self.nside_psichi)
        csr = response.to_scipy().tocsr()
        csr.sort_indices()  # within a row, consecutive columns: the rotated writes walk the output in order
        # the stored values as they are (float32 by default) and 16-bit indices where they fit: a fold streams
        # the response once per entry, so its bytes per value set the pace
        self._indptr, self._data = csr.indptr.astype(np.int64), csr.data
        self._mphi, self._local = (part.astype(_index_type(limit)) for part, limit in
                                   zip(np.divmod(csr.indices, self.n_local), (self.n_mphi, self.n_local)))
        pixels, weights = psichi_rotation_weights(attitudes, psi_axis.nside, self.nside_psichi, psi_axis.scheme,
                                                  scheme_psichi)
        # the four pixels and weights of a local pixel side by side
        self._pixels = np.ascontiguousarray(pixels.transpose(0, 2, 1), dtype=np.int32)
        self._weights = np.ascontiguousarray(weights.transpose(0, 2, 1))

    @property
    def source_axis(self):
        """The spacecraft-frame source axis (NuLambda) over which dwells are given."""
        return self.axes[0]

    def fold(self, entry_ptr, rows, nu, weights, out):
        """Add the rotated response columns of the entries to `out` (see :func:`rotated_fold`).

        Parameters
        ----------
        entry_ptr : ndarray of int64, shape (n_out + 1,)
        rows, nu, weights : ndarray
            Attitude row, NuLambda pixel and weight (s) of each entry, grouped by output.
        out : ndarray of float64, shape (n_out, n_ei, n_em * n_phi, n_galactic)
        """
        rotated_fold(np.asarray(entry_ptr, dtype=np.int64), np.asarray(rows, dtype=np.int64),
                     np.asarray(nu, dtype=np.int64), np.asarray(weights, dtype=np.float64), self._indptr,
                     self._mphi, self._local, self._data, self.n_ei, self._pixels, self._weights, out)
        return out

    def point_source(self, dwell):
        """A direction's Galactic-frame response from its dwell in every row: ``[n_ei, n_em * n_phi * n_gal]``.

        Parameters
        ----------
        dwell : ndarray, shape (n_rows, n_nu)
            Seconds the direction spends at each NuLambda pixel in each row
            (:meth:`~cosi_imaging_plugin.exposure.AttitudeBins.dwell`).

        Returns
        -------
        numpy.ndarray
            Expected counts per unit flux (cm2 s) in each Ei bin over the Galactic CDS.
        """
        dwell = np.asarray(dwell, dtype=np.float64)
        if dwell.shape != (self.n_rows, self.axes[0].nbins):
            raise AxisMismatchError(f"dwell of shape {dwell.shape}, expected ({self.n_rows}, {self.axes[0].nbins})")
        rows, nu = np.nonzero(dwell)
        out = np.zeros((1, self.n_ei, self.n_mphi, self.n_galactic))
        self.fold([0, rows.size], rows, nu, dwell[rows, nu], out)
        return out.reshape(self.n_ei, -1)


def galactic_response(response, ccm, attitudes, nside_psichi=None, scheme_psichi="ring", rtol=0.0,
                      dtype=np.float32, max_memory_mb=512, progress=True, rotated=None):
    """Precompute the Galactic-frame response ``Rg[lb, Ei, Em, Phi, PsiChi_gal]`` (cm2 s).

    Parameters
    ----------
    response : ColumnResponse
        Spacecraft-frame response [NuLambda, Ei, Em, Phi, PsiChi].
    ccm : histpy.Histogram
        Coordinate conversion matrix [ScAtt|Time, lb, NuLambda] in s.
    attitudes : ndarray, shape (n_rows, 3, 3)
        Attitude of each CCM row, used to rotate PsiChi.
    nside_psichi : int, optional
        NSIDE of the Galactic PsiChi grid (default: the response's).
    rtol : float
        Truncation tolerance of the compressed result (see ColumnResponse).
    max_memory_mb : float
        Memory budget of the working arrays; the lb pixels are processed in
        chunks that fit in it.
    rotated : RotatedResponse, optional
        The response with these attitudes' rotations, when already made.

    Returns
    -------
    ColumnResponse
        With source axis lb (Galactic) and values in cm2 s.
    """
    n_rows = ccm.axes[0].nbins
    attitudes = np.asarray(attitudes)
    if attitudes.shape != (n_rows, 3, 3):
        raise AxisMismatchError(f"attitudes of shape {attitudes.shape}, expected ({n_rows}, 3, 3) for the CCM rows")
    nu_axis, ei_axis, em_axis, phi_axis, _ = response.axes
    if ccm.axes[2].nbins != nu_axis.nbins:
        raise AxisMismatchError(f"CCM NuLambda axis has {ccm.axes[2].nbins} pixels, response has {nu_axis.nbins}")
    rotated = rotated or RotatedResponse(response, attitudes, nside_psichi, scheme_psichi)
    n_ei, n_mphi, n_gal = rotated.n_ei, rotated.n_mphi, rotated.n_galactic
    lb_axis = ccm.axes[1]
    n_lb = lb_axis.nbins
    per_pixel_bytes = 8 * n_ei * n_mphi * n_gal * 2  # the accumulator and its compression
    chunk = max(1, min(n_lb, int(max_memory_mb * 1e6 // per_pixel_bytes)))
    logger.info("Galactic-frame response: %d lb pixels in chunks of %d, %d attitude rows", n_lb, chunk, n_rows)

    rows, lb, nu, seconds = _ccm_entries(ccm)
    order = np.lexsort((rows, lb))  # by lb pixel, then attitude
    rows, lb, nu, seconds = rows[order], lb[order], nu[order], seconds[order]
    lb_ptr = np.searchsorted(lb, np.arange(n_lb + 1))

    def chunks():
        starts = range(0, n_lb, chunk)
        for j0 in (tqdm(starts, desc="Galactic response", unit="chunk") if progress else starts):
            j1 = min(n_lb, j0 + chunk)
            a, b = lb_ptr[j0], lb_ptr[j1]
            acc = rotated.fold(lb_ptr[j0:j1 + 1] - a, rows[a:b], nu[a:b], seconds[a:b],
                               np.zeros((j1 - j0, n_ei, n_mphi, n_gal)))
            yield slice(j0, j1), acc.reshape(j1 - j0, n_ei, em_axis.nbins, phi_axis.nbins, n_gal)

    gal_psi = HealpixAxis(nside=rotated.nside_psichi, scheme=rotated.scheme_psichi, coordsys="galactic",
                          label="PsiChi")
    axes = Axes([lb_axis, ei_axis, em_axis, phi_axis, gal_psi])
    return ColumnResponse.from_chunks(chunks(), axes, u.Unit("cm2 s"), rtol=rtol, dtype=dtype)
