"""Synthetic COSI-like full detector response.

Implements the response model of docs/instrument.md ("The response"). For a source pixel nu at
direction s (spacecraft frame), an Ei bin, a Phi bin k and a PsiChi pixel psi,
with delta = angle(psi, s):

    w[k, psi] = sum over phi samples j in bin k of
                dsigma/dphi(E, phi_j) dphi_j * K(psi | phi_j) * eff(E2(phi_j), psi)

    K(psi | phi) = g(delta_psi - phi) / sum_psi' g(delta_psi' - phi)

where g is the ARM profile (Gaussian core plus Gaussian tail) broadened by the
pixel size, eff the chance that the scattered photon, escaping along -psi, is
absorbed, and the samples cover only the Compton angles whose recoil electron
passes the threshold. K is a probability distribution over PsiChi for each
sample, so the Phi marginal is the Klein-Nishina integral over the bin weighted
by the efficiency averaged over the smeared cone (exactly Klein-Nishina x
eff(E2) when eff does not depend on direction), even for cones smaller than a
pixel. Adding the pixel variance p^2/12 to the ARM variance stands in for the
integral of the profile over a pixel. Finally

    R[nu, e, m, k, psi] = A(Ei_e, theta_nu) P(m | e) w[k, psi] / sum_{k, psi} w,

so summing over (Em, Phi, PsiChi) gives the configured effective area, which is
therefore the area of the events the binning selects (Em window, Phi range).

Conventions: A is averaged flat in energy over the Ei bin (exactly) and taken at
the NuLambda pixel centre; the kinematics, ARM width and efficiency of an Ei bin
are evaluated at its log-centre energy.

The response is built in chunks of NuLambda pixels (numba, parallel over pixels)
and streamed to :func:`cosi_imaging_plugin.io.response.write_response`, so
memory stays at a few chunks whatever the size of the file.
"""
import logging
import math
import time
from pathlib import Path
from typing import NamedTuple

import astropy.units as u
import healpy as hp
import numba
import numpy as np
import scoords  # noqa: F401  (registers the 'spacecraftframe' astropy frame)
from histpy import Axes, Axis, HealpixAxis
from tqdm.auto import tqdm

from ..errors import CosiInputError
from ..io.response import write_response
from . import kinematics
from .config import InstrumentConfig

log = logging.getLogger(__name__)

__all__ = [
    "GeneratedResponse",
    "generate_response",
    "response_pixels",
    "response_axes",
    "effective_area",
    "binned_effective_area",
]

# The ARM profile is cut at this many standard deviations of its widest
# component: the neglected density is exp(-32) ~ 1e-14 of the peak.
_KERNEL_TRUNCATION_SIGMA = 8.0
# Working memory (float64) of one chunk of NuLambda pixels when the caller does not choose.
_DEFAULT_CHUNK_BYTES = 64 * 2**20


class GeneratedResponse(NamedTuple):
    """A response held in memory.

    Attributes
    ----------
    axes : histpy.Axes
        [NuLambda, Ei, Em, Phi, PsiChi].
    contents : numpy.ndarray
        Bin-averaged effective area in cm2, shape ``axes.shape``.
    """

    axes: Axes
    contents: np.ndarray


# ----------------------------------------------------------------------------
# Public model functions
# ----------------------------------------------------------------------------
def effective_area(config, energy, theta):
    """Effective area of the instrument for a source at off-axis angle theta.

    Parameters
    ----------
    config : InstrumentConfig
    energy : array_like
        Energy in keV, inside the configured table.
    theta : array_like
        Angle between the source and the spacecraft +z axis, radians.
        Broadcasts against ``energy``.

    Returns
    -------
    numpy.ndarray
        A_on(E) [(1 + cos theta) / 2]^gamma in cm2, zero beyond the horizon.
    """
    return config.on_axis_area(energy) * config.off_axis_factor(theta)


def binned_effective_area(config):
    """Effective area per (NuLambda pixel, Ei bin): what the response sums to.

    The on-axis area is averaged flat in energy over each Ei bin (exactly), and
    the off-axis factor taken at the pixel centre.

    Parameters
    ----------
    config : InstrumentConfig

    Returns
    -------
    numpy.ndarray
        Shape (N_NuLambda, N_Ei), cm2.
    """
    ei = config.ei_edges
    mean_area = np.array([config.mean_on_axis_area(lo, hi) for lo, hi in zip(ei[:-1], ei[1:])])
    theta, _ = hp.pix2ang(config.nside, np.arange(hp.nside2npix(config.nside)), nest=_nest(config))
    return config.off_axis_factor(theta)[:, None] * mean_area[None, :]


def response_axes(config):
    """The histpy axes of the response for a configuration.

    Parameters
    ----------
    config : InstrumentConfig

    Returns
    -------
    histpy.Axes
        NuLambda and PsiChi: HEALPix in the 'spacecraftframe' frame; Ei and Em
        in keV (log scale); Phi in deg.
    """
    b = config.binning
    sky = dict(nside=b.nside, scheme=b.scheme, coordsys="spacecraftframe")
    return Axes([
        HealpixAxis(label="NuLambda", **sky),
        Axis(np.asarray(b.ei_edges_kev) * u.keV, scale="log", label="Ei"),
        Axis(np.asarray(b.em_edges_kev) * u.keV, scale="log", label="Em"),
        Axis(np.asarray(b.phi_edges_deg) * u.deg, scale="linear", label="Phi"),
        HealpixAxis(label="PsiChi", **sky),
    ])


# ----------------------------------------------------------------------------
# The cone kernel (numba)
# ----------------------------------------------------------------------------
@numba.njit(cache=True)
def _arm_profile(x, a_core, inv2s2_core, a_tail, inv2s2_tail):
    value = a_core * math.exp(-x * x * inv2s2_core)
    if a_tail > 0.0:
        value += a_tail * math.exp(-x * x * inv2s2_tail)
    return value


@numba.njit(parallel=True, cache=True)
def _cone_weights(nu_vec, psi_vec, phi_sub, sub_bin, sub_weight, eff_t, n_phi,
                  a_core, inv2s2_core, a_tail, inv2s2_tail, window, out):
    """w[nu, k, psi] for one Ei bin (see the module docstring).

    nu_vec (n_nu, 3) and psi_vec (n_psi, 3) are unit vectors; phi_sub (n_s,) are the
    sorted phi samples with their Phi bin sub_bin and weight dsigma/dphi * dphi;
    eff_t (n_psi, n_s) the absorption efficiency. out (n_nu, n_phi, n_psi) is
    overwritten.
    """
    n_nu = nu_vec.shape[0]
    n_psi = psi_vec.shape[0]
    n_s = phi_sub.shape[0]
    for i in numba.prange(n_nu):
        sx, sy, sz = nu_vec[i, 0], nu_vec[i, 1], nu_vec[i, 2]
        delta = np.empty(n_psi)
        lo = np.empty(n_psi, dtype=np.int64)
        hi = np.empty(n_psi, dtype=np.int64)
        norm = np.zeros(n_s)
        # Pass 1: the normalisation of K(. | phi_j) over all PsiChi pixels.
        for p in range(n_psi):
            c = sx * psi_vec[p, 0] + sy * psi_vec[p, 1] + sz * psi_vec[p, 2]
            c = min(1.0, max(-1.0, c))
            d = math.acos(c)
            delta[p] = d
            j0 = np.searchsorted(phi_sub, d - window)
            j1 = np.searchsorted(phi_sub, d + window, side="right")
            lo[p] = j0
            hi[p] = j1
            for j in range(j0, j1):
                norm[j] += _arm_profile(d - phi_sub[j], a_core, inv2s2_core, a_tail, inv2s2_tail)
        scale = np.zeros(n_s)
        for j in range(n_s):
            if norm[j] > 0.0:
                scale[j] = sub_weight[j] / norm[j]
        # Pass 2: accumulate into (psi, k) then transpose, for contiguous inner loops.
        local = np.zeros((n_psi, n_phi))
        for p in range(n_psi):
            d = delta[p]
            for j in range(lo[p], hi[p]):
                g = _arm_profile(d - phi_sub[j], a_core, inv2s2_core, a_tail, inv2s2_tail)
                local[p, sub_bin[j]] += g * scale[j] * eff_t[p, j]
        for k in range(n_phi):
            for p in range(n_psi):
                out[i, k, p] = local[p, k]


# ----------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------
def _nest(config):
    return config.binning.scheme == "nested"


def _pixel_vectors(config):
    npix = hp.nside2npix(config.nside)
    return np.ascontiguousarray(np.array(hp.pix2vec(config.nside, np.arange(npix), nest=_nest(config))).T)


def _auto_subsamples(config, sigma_core):
    # Sample phi at least every half core width so the sum over samples resolves the
    # ARM profile (the sampling error of a Gaussian then is ~exp(-2 pi^2 4) ~ 1e-34).
    widths = np.diff(config.phi_edges)
    return max(1, int(math.ceil(widths.max() / (0.5 * sigma_core.min()))))


class _EnergyBinModel(NamedTuple):
    """Everything the cone kernel needs for one Ei bin, shared by all NuLambda pixels."""

    phi_sub: np.ndarray
    sub_bin: np.ndarray
    sub_weight: np.ndarray
    eff_t: np.ndarray
    a_core: float
    inv2s2_core: float
    a_tail: float
    inv2s2_tail: float
    window: float


def _energy_bin_models(config, psi_vec, phi_subsamples):
    """Phi samples, Klein-Nishina weights, efficiency and ARM profile per Ei bin.

    The kinematics and the ARM width of a bin are evaluated at its log-centre energy.
    """
    ei = config.ei_edges
    energies = np.sqrt(ei[:-1] * ei[1:])
    pixel_var = hp.nside2pixarea(config.nside) / 12.0  # variance of a uniform pixel's offset
    sigma_core, sigma_tail = config.arm_sigmas(energies)
    sigma_core = np.sqrt(sigma_core**2 + pixel_var)
    sigma_tail = np.sqrt(sigma_tail**2 + pixel_var)
    if phi_subsamples is None:
        phi_subsamples = _auto_subsamples(config, sigma_core)
    phi_edges = config.phi_edges
    f_tail = config.arm.tail_fraction
    down_cosine = psi_vec[:, 2]  # the scattered photon travels along -psi
    models = []
    for e, energy in enumerate(energies):
        phi_min = float(config.minimum_compton_angle(energy))
        lo = np.maximum(phi_edges[:-1], phi_min)
        hi = phi_edges[1:]
        valid = np.flatnonzero(hi > lo)
        # Midpoints of phi_subsamples equal steps over the part of each bin above threshold.
        step = (hi[valid] - lo[valid]) / phi_subsamples
        offsets = np.arange(phi_subsamples) + 0.5
        phi_sub = (lo[valid, None] + step[:, None] * offsets[None, :]).ravel()
        sub_bin = np.repeat(valid, phi_subsamples).astype(np.int64)
        dphi = np.repeat(step, phi_subsamples)
        sub_weight = kinematics.klein_nishina_dsigma_dphi(energy, phi_sub) * dphi
        sub_weight /= sub_weight.sum()  # only relative weights matter; keep numbers O(1)
        e2 = kinematics.scattered_energy(energy, phi_sub)
        eff_t = np.ascontiguousarray(config.absorption_efficiency(e2[None, :], down_cosine[:, None]))
        sc, st = float(sigma_core[e]), float(sigma_tail[e])
        models.append(_EnergyBinModel(
            phi_sub=phi_sub,
            sub_bin=sub_bin,
            sub_weight=sub_weight,
            eff_t=eff_t,
            a_core=(1.0 - f_tail) / sc,
            inv2s2_core=0.5 / sc**2,
            a_tail=f_tail / st,
            inv2s2_tail=0.5 / st**2,
            window=_KERNEL_TRUNCATION_SIGMA * (st if f_tail > 0 else sc),
        ))
    return models, phi_subsamples


class _Builder:
    """Computes response blocks for any set of NuLambda pixels."""

    def __init__(self, config, phi_subsamples=None):
        if isinstance(config, dict):
            config = InstrumentConfig.from_dict(config)
        elif isinstance(config, (str, Path)):
            config = InstrumentConfig.read(config)
        elif not isinstance(config, InstrumentConfig):
            raise CosiInputError(f"config must be an InstrumentConfig, a mapping or a YAML path, got "
                                 f"{type(config).__name__}")
        if phi_subsamples is not None and (
            isinstance(phi_subsamples, bool) or not isinstance(phi_subsamples, (int, np.integer))
            or phi_subsamples < 1
        ):
            raise CosiInputError(f"phi_subsamples must be a positive integer, got {phi_subsamples!r}")
        self.config = config
        self.axes = response_axes(config)
        self.shape = tuple(self.axes.shape)
        self.vectors = _pixel_vectors(config)
        self.area = binned_effective_area(config)
        self.dispersion = config.energy_dispersion_matrix()
        self.models, self.phi_subsamples = _energy_bin_models(config, self.vectors, phi_subsamples)

    def block(self, pixels):
        """Response of the NuLambda pixels ``pixels`` in float64, shape (n, Ei, Em, Phi, PsiChi)."""
        pixels = np.asarray(pixels, dtype=np.int64)
        n_nu, n_ei, n_em, n_phi, n_psi = self.shape
        out = np.zeros((pixels.size, n_ei, n_em, n_phi, n_psi))
        seen = np.flatnonzero(self.area[pixels].max(axis=1) > 0)  # skip pixels beyond the horizon
        if seen.size == 0:
            return out
        nu_vec = np.ascontiguousarray(self.vectors[pixels[seen]])
        w = np.empty((seen.size, n_phi, n_psi))
        for e, m in enumerate(self.models):
            _cone_weights(nu_vec, self.vectors, m.phi_sub, m.sub_bin, m.sub_weight, m.eff_t, n_phi,
                          m.a_core, m.inv2s2_core, m.a_tail, m.inv2s2_tail, m.window, w)
            w /= w.sum(axis=(1, 2), keepdims=True)
            for i, nu in enumerate(pixels[seen]):
                out[seen[i], e] = (self.area[nu, e] * self.dispersion[e])[:, None, None] * w[i][None]
        return out


def response_pixels(config, pixels, phi_subsamples=None):
    """Synthetic response of selected NuLambda pixels.

    Parameters
    ----------
    config : InstrumentConfig, dict or path-like
        The instrument (a mapping or a YAML path is validated first).
    pixels : array_like of int
        NuLambda pixel indices (in the configured scheme).
    phi_subsamples : int, optional
        Compton-angle samples per Phi bin; by default enough to sample every
        half width of the (pixel-broadened) ARM core.

    Returns
    -------
    numpy.ndarray
        float64, shape (len(pixels), N_Ei, N_Em, N_Phi, N_PsiChi), in cm2.
    """
    builder = _Builder(config, phi_subsamples)
    pixels = np.atleast_1d(np.asarray(pixels))
    if pixels.dtype.kind not in "iu" or pixels.ndim != 1 or np.any((pixels < 0) | (pixels >= builder.shape[0])):
        raise CosiInputError(f"pixels must be NuLambda pixel indices in [0, {builder.shape[0]}), got {pixels!r}")
    return builder.block(pixels)


def _chunk_size(shape, pixels_per_chunk):
    if pixels_per_chunk is None:
        per_pixel = 8 * int(np.prod(shape[1:]))
        return max(2, _DEFAULT_CHUNK_BYTES // per_pixel)
    if isinstance(pixels_per_chunk, bool) or not isinstance(pixels_per_chunk, (int, np.integer)) \
            or pixels_per_chunk < 1:
        raise CosiInputError(f"pixels_per_chunk must be a positive integer, got {pixels_per_chunk!r}")
    return int(pixels_per_chunk)


def generate_response(config=None, path=None, dtype=np.float32, pixels_per_chunk=None, progress=True,
                      phi_subsamples=None):
    """Build the synthetic COSI-like response.

    Parameters
    ----------
    config : InstrumentConfig, dict or path-like, optional
        The instrument and binning; a mapping or a YAML path is validated
        first; None is :meth:`InstrumentConfig.default`.
    path : str or pathlib.Path, optional
        Write a version-1 dense FullDetectorResponse here (atomically), streaming
        chunk by chunk. If None, return the response in memory.
    dtype : numpy dtype
        Floating type of the stored values (float32 by default).
    pixels_per_chunk : int, optional
        NuLambda pixels computed at once; by default about 64 MB of float64
        working memory per chunk.
    progress : bool
        Show a tqdm progress bar.
    phi_subsamples : int, optional
        Compton-angle samples per Phi bin (see :func:`response_pixels`).

    Returns
    -------
    pathlib.Path or GeneratedResponse
        The written file, or ``(axes, contents)`` when ``path`` is None.

    Raises
    ------
    CosiInputError
        A bad configuration, dtype or chunk size (before any work).
    """
    if config is None:
        config = InstrumentConfig.default()
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise CosiInputError(f"dtype must be a floating type, got {dtype}")
    start_time = time.perf_counter()
    builder = _Builder(config, phi_subsamples)
    shape = builder.shape
    step = _chunk_size(shape, pixels_per_chunk)
    n_nu = shape[0]
    log.info("generating synthetic response '%s': shape %s (%.3g GB as %s), %d phi samples per bin, "
             "%d pixels per chunk", builder.config.name, shape, np.prod(shape) * dtype.itemsize / 1e9, dtype,
             builder.phi_subsamples, step)

    def blocks():
        with tqdm(total=n_nu, unit="pixel", desc="response", disable=not progress) as bar:
            for first in range(0, n_nu, step):
                last = min(first + step, n_nu)
                block = builder.block(np.arange(first, last)).astype(dtype)
                bar.update(last - first)
                yield slice(first, last), block

    if path is not None:
        out = write_response(Path(path), builder.axes, blocks(), dtype=dtype)
        log.info("response written to %s in %.1f s", out, time.perf_counter() - start_time)
        return Path(out)
    contents = np.empty(shape, dtype=dtype)
    for nu, block in blocks():
        contents[nu] = block
    log.info("response built in %.1f s", time.perf_counter() - start_time)
    return GeneratedResponse(builder.axes, contents)
