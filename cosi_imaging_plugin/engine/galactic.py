"""Galactic-frame analyses: rotating PsiChi and precomputing the Galactic-frame response.

A local-CDS bin (Em, Phi, PsiChi in the spacecraft frame) seen at attitude s
is moved to the Galactic CDS by rotating its PsiChi direction. Counts are
conserved: each spacecraft-frame PsiChi pixel is shared among the Galactic
pixels around its rotated centre with HEALPix bilinear weights (which sum to one).
The same operator rebins data and precomputes the response, so a Galactic-CDS
expectation equals the rebinned local-CDS expectation exactly.

``Rg[j, e, m, phi, psi_g] = sum_s sum_nu C[s, j, nu] sum_psi_l P_s[psi_g, psi_l] R[nu, e, m, phi, psi_l]``
in cm2 s.
"""
import logging

import healpy as hp
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
    n_local = hp.nside2npix(nside_local)
    vec = np.array(hp.pix2vec(nside_local, np.arange(n_local), nest=scheme_local.lower() == "nested"))
    theta, phi = hp.vec2ang((attitude @ vec).T)
    pix, weights = hp.get_interp_weights(nside_galactic, theta, phi, nest=scheme_galactic.lower() == "nested")
    cols = np.broadcast_to(np.arange(n_local), pix.shape)
    return sparse.csr_matrix((weights.ravel(), (pix.ravel(), cols.ravel())),
                             shape=(hp.nside2npix(nside_galactic), n_local))


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


def _ccm_rows(ccm):
    """Per-row sparse matrices C_s [lb, NuLambda] in seconds."""
    contents = ccm.contents
    scale = (ccm.unit or u.s).to(u.s)
    n_rows, n_lb, n_nu = (a.nbins for a in ccm.axes)
    if hasattr(contents, "coords"):
        s, j, nu = contents.coords
        values = np.asarray(contents.data, dtype=np.float64) * scale
    else:
        dense = np.asarray(getattr(contents, "value", contents))
        s, j, nu = np.nonzero(dense)
        values = dense[s, j, nu] * scale
    order = np.argsort(s, kind="stable")
    bounds = np.searchsorted(s[order], np.arange(n_rows + 1))
    return [sparse.csr_matrix((values[order[a:b]], (j[order[a:b]], nu[order[a:b]])), shape=(n_lb, n_nu))
            for a, b in zip(bounds[:-1], bounds[1:])]


def galactic_response(response, ccm, attitudes, nside_psichi=None, scheme_psichi="ring", rtol=0.0,
                      dtype=np.float32, max_memory_mb=512, progress=True):
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

    Returns
    -------
    ColumnResponse
        With source axis lb (Galactic) and values in cm2 s.
    """
    n_rows = ccm.axes[0].nbins
    attitudes = np.asarray(attitudes)
    if attitudes.shape != (n_rows, 3, 3):
        raise AxisMismatchError(f"attitudes of shape {attitudes.shape}, expected ({n_rows}, 3, 3) for the CCM rows")
    nu_axis, ei_axis, em_axis, phi_axis, psi_axis = response.axes
    if ccm.axes[2].nbins != nu_axis.nbins:
        raise AxisMismatchError(f"CCM NuLambda axis has {ccm.axes[2].nbins} pixels, response has {nu_axis.nbins}")
    nside_psichi = nside_psichi or psi_axis.nside
    n_ei, n_em, n_phi, n_loc = ei_axis.nbins, em_axis.nbins, phi_axis.nbins, psi_axis.nbins
    n_gal = hp.nside2npix(nside_psichi)
    lb_axis = ccm.axes[1]
    n_lb = lb_axis.nbins
    per_pixel_bytes = 8 * n_ei * n_em * n_phi * (n_gal + n_loc) * 2
    chunk = max(1, min(n_lb, int(max_memory_mb * 1e6 // per_pixel_bytes)))
    logger.info("Galactic-frame response: %d lb pixels in chunks of %d, %d attitude rows", n_lb, chunk, n_rows)

    by_energy = response.to_scipy().tocsr()
    by_energy = [by_energy[e::n_ei] for e in range(n_ei)]
    ccm_rows = _ccm_rows(ccm)
    rotations = [psichi_rotation(a, psi_axis.nside, nside_psichi, psi_axis.scheme, scheme_psichi).T.tocsr()
                 for a in attitudes]

    def chunks():
        starts = range(0, n_lb, chunk)
        for j0 in (tqdm(starts, desc="Galactic response", unit="chunk") if progress else starts):
            j1 = min(n_lb, j0 + chunk)
            acc = np.zeros((j1 - j0, n_ei, n_em * n_phi, n_gal))
            for c_s, rot_t in zip(ccm_rows, rotations):
                weights = c_s[j0:j1]
                if weights.nnz == 0:
                    continue
                for e in range(n_ei):
                    local = (weights @ by_energy[e]).toarray().reshape(-1, n_loc)
                    acc[:, e] += np.asarray(local @ rot_t).reshape(j1 - j0, n_em * n_phi, n_gal)
            yield slice(j0, j1), acc.reshape(j1 - j0, n_ei, n_em, n_phi, n_gal)

    gal_psi = HealpixAxis(nside=nside_psichi, scheme=scheme_psichi, coordsys="galactic", label="PsiChi")
    axes = Axes([lb_axis, ei_axis, em_axis, phi_axis, gal_psi])
    return ColumnResponse.from_chunks(chunks(), axes, u.Unit("cm2 s"), rtol=rtol, dtype=dtype)
