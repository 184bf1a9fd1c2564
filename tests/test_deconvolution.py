"""The Richardson-Lucy family on the response engine.

Problems are small (NSIDE 2, 2 Ei bins, 4 attitude bins) with a Compton-cone-like
response and a known injected sky, so every iteration runs in milliseconds and
dense numpy references are cheap. Thresholds come from two derived results:

- EM convergence bound (Vardi, Shepp & Kaufman 1985; Iusem 1992): for ML-EM on
  noise-free data (d = eps(x*)), with the background norms as extra unknowns,
  ``L(x*) - L(x_k) <= KL_X(x* || x_0) / k`` where
  ``KL_X(a || b) = sum_j X_j (a_j ln(a_j / b_j) - a_j + b_j)`` (plus the same term
  for each background norm with X -> sum_i B_i). Proof: Jensen on ``ln sum_i
  (R_ij / X_j) d_i / eps_i`` gives ``KL(x*||x_k) - KL(x*||x_{k+1}) >= L* - L(x_k)``;
  sum over k and use that L(x_k) never decreases.
- Strong concavity: on noise-free data, along the segment from x* to x the
  Poisson Hessian is at least ``F*/c^2`` with ``F* = sum_i R_i R_i^T / d_i`` and
  ``c = max(1, max_i eps_i(x) / d_i)``, and the gradient vanishes at x* (interior),
  so ``||x - x*||^2 <= 2 c^2 (L* - L(x)) / lambda_min(F*)``: a likelihood gap
  bounds the image error.
"""
import json

import h5py
import healpy as hp
import numpy as np
import pytest
import scoords  # noqa: F401  (registers the spacecraftframe frame)
import sparse
import yaml
from astropy import units as u
from astropy.table import Table
from histpy import Axes, Axis, HealpixAxis, Histogram
from scipy.special import gammaln

from cosi_imaging_plugin.cli import deconvolve_main
from cosi_imaging_plugin.deconvolution import (
    DeconvolutionDataset,
    ImageDeconvolution,
    MAPRichardsonLucy,
    PriorTSV,
    RichardsonLucy,
    RichardsonLucySimple,
    build_algorithm,
    load_results,
)
from cosi_imaging_plugin.engine import ColumnResponse
from cosi_imaging_plugin.errors import AxisMismatchError, CosiFileError, CosiInputError
from cosi_imaging_plugin.io import write_histogram, write_response
from cosi_imaging_plugin.plots import plot_convergence, plot_image

from synthetic_inputs import random_attitudes

NSIDE, N_EM, N_PHI, N_ROWS = 2, 2, 6, 4
NPIX = hp.nside2npix(NSIDE)
DOMEGA = 4 * np.pi / NPIX
EI_EDGES = [400.0, 480.0, 600.0]


# ---- problem builders -------------------------------------------------------------------------
def response_axes(ei_edges):
    ei_edges = np.asarray(ei_edges, dtype=float)
    return Axes([HealpixAxis(nside=NSIDE, coordsys="spacecraftframe", label="NuLambda"),
                 Axis(ei_edges * u.keV, label="Ei", scale="log"),
                 Axis(np.geomspace(ei_edges[0], ei_edges[-1], N_EM + 1) * u.keV, label="Em", scale="log"),
                 Axis(np.linspace(0, 180, N_PHI + 1) * u.deg, label="Phi"),
                 HealpixAxis(nside=NSIDE, coordsys="spacecraftframe", label="PsiChi")])


def cone_response(ei_edges, arm_deg=25.0):
    """Source nu fills PsiChi at angle ~Phi from nu (Gaussian ARM); area depends on the zenith angle."""
    axes = response_axes(ei_edges)
    n_ei = len(ei_edges) - 1
    vec = np.array(hp.pix2vec(NSIDE, np.arange(NPIX)))
    angle = np.degrees(np.arccos(np.clip(vec.T @ vec, -1, 1)))
    phi_edges = np.linspace(0, 180, N_PHI + 1)
    phi_c = 0.5 * (phi_edges[1:] + phi_edges[:-1])
    cone = np.exp(-0.5 * ((angle[:, None, :] - phi_c[None, :, None]) / arm_deg) ** 2)
    phi_prob = np.sin(np.radians(phi_c)) + 0.2
    cone = cone / cone.sum(axis=2, keepdims=True) * (phi_prob / phi_prob.sum())[None, :, None]
    em = np.full((n_ei, N_EM), 0.2 / N_EM)
    em[np.arange(n_ei), np.minimum(np.arange(n_ei) * N_EM // n_ei, N_EM - 1)] += 0.8
    area = 100.0 * (1 + 0.5 * vec[2])
    values = area[:, None, None, None, None] * em[None, :, :, None, None] * cone[:, None, None, :, :]
    return values, axes


def ccm_dense(attitudes, dt):
    """C[s, j, nu] = dt_s * bilinear weight of Galactic pixel j seen at attitude s."""
    vec = np.array(hp.pix2vec(NSIDE, np.arange(NPIX)))
    dense = np.zeros((len(attitudes), NPIX, NPIX))
    for s, (att, t) in enumerate(zip(attitudes, dt)):
        theta, phi = hp.vec2ang((att.T @ vec).T)
        pix, w = hp.get_interp_weights(NSIDE, theta, phi)
        for k in range(4):
            np.add.at(dense[s], (np.arange(NPIX), pix[k]), t * w[k])
    return dense


def ccm_histogram(dense):
    axes = Axes([Axis(np.arange(dense.shape[0] + 1), label="ScAtt"),
                 HealpixAxis(nside=NSIDE, coordsys="galactic", label="lb"),
                 HealpixAxis(nside=NSIDE, coordsys="spacecraftframe", label="NuLambda")])
    return Histogram(axes, contents=sparse.COO.from_numpy(dense), unit=u.s)


def injected_sky(n_ei):
    """Diffuse level plus two Gaussian blobs, positive everywhere (ph cm-2 s-1 sr-1)."""
    vec = np.array(hp.pix2vec(NSIDE, np.arange(NPIX)))

    def blob(lon, lat, sigma_deg):
        return np.exp((vec.T @ hp.ang2vec(lon, lat, lonlat=True) - 1) / np.radians(sigma_deg) ** 2)

    spatial = 1e-4 * (0.2 + 3 * blob(0, 0, 20) + 2 * blob(120, 40, 15))
    return spatial[:, None] * np.geomspace(1.0, 0.6, n_ei)[None, :]


class Problem:
    """A dense reference problem and the engine-based dataset built from it."""

    def __init__(self, rng, ei_edges=EI_EDGES, bkg_norms=(1.3, 0.7), n_rows=N_ROWS, zero_lb=None):
        self.values, self.axes = cone_response(ei_edges)
        self.n_ei = len(ei_edges) - 1
        self.ccm = ccm_dense(random_attitudes(rng, n_rows), rng.uniform(5e3, 1e4, n_rows))
        if zero_lb is not None:
            self.ccm[:, zero_lb, :] = 0.0  # a sky pixel never seen
        # dense data-space response R[(s, c), (j, e)] in cm2 s sr
        self.R = np.einsum("sjn,nec->scje", self.ccm, self.values.reshape(NPIX, self.n_ei, -1)) * DOMEGA
        self.sky = injected_sky(self.n_ei)
        self.sky_counts = np.einsum("scje,je->sc", self.R, self.sky)
        level = self.sky_counts.mean()
        self.templates = {"albedo": rng.gamma(2.0, 1.0, self.sky_counts.shape) * level / 2,
                          "cr": np.broadcast_to(rng.gamma(5.0, 1.0, self.sky_counts.shape[1]),
                                                self.sky_counts.shape) * level / 5}
        self.bkg_norms = dict(zip(self.templates, bkg_norms))
        self.expected = self.sky_counts + sum(self.bkg_norms[k] * t for k, t in self.templates.items())
        self.shape = (n_rows, N_EM, N_PHI, NPIX)
        self.data_axes = Axes([Axis(np.arange(n_rows + 1), label="ScAtt"), self.axes["Em"], self.axes["Phi"],
                               self.axes["PsiChi"]])

    def hist(self, values):
        return Histogram(self.data_axes, contents=np.asarray(values, dtype=float).reshape(self.shape))

    def dataset(self, counts=None, name="sim", dtype=np.float64):
        counts = self.expected if counts is None else counts
        rsp = ColumnResponse.from_dense(self.values, self.axes, u.cm**2, dtype=dtype)
        return DeconvolutionDataset(name, self.hist(counts), {k: self.hist(t) for k, t in self.templates.items()},
                                    rsp, ccm=ccm_histogram(self.ccm), dtype=dtype)

    def exposure(self):
        return self.R.reshape(-1, NPIX, self.n_ei).sum(axis=0)

    def loglike(self, counts, image, norms):
        """Dense reference log-likelihood over all bins."""
        eps = np.einsum("scje,je->sc", self.R, image) + sum(norms[k] * t for k, t in self.templates.items())
        keep = counts > 0
        return float(np.sum(counts[keep] * np.log(eps[keep])) - eps.sum() - gammaln(counts + 1).sum())


@pytest.fixture
def problem(rng):
    return Problem(rng)


@pytest.fixture(autouse=True, scope="module")
def one_kernel_thread():
    """The problems here are tiny: thread start-up of the parallel kernels would dominate on shared cores."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def run(algorithm, dataset, x0, parameter, mask=None):
    """Run `algorithm` configured by a ``deconvolution:parameter`` tree (the parameter files' route)."""
    algo = build_algorithm(algorithm.name, parameter, dataset, initial_model=x0, mask=mask)
    algo.initialization()
    history = [float(np.sum(algo.loglikelihood_list))]
    while True:
        stop = algo.iteration()
        history.append(float(np.sum(algo.loglikelihood_list)))
        if stop:
            return algo, np.array(history)


def kl(exposure, a, b):
    return float(np.sum(exposure * (a * np.log(a / b) - a + b)))


# ---- RLsimple: monotone, within the EM bound, count-conserving -----------------------------------
@pytest.mark.parametrize("noise", ["noise-free", "poisson"])
def test_rlsimple_never_decreases_loglikelihood(problem, rng, noise):
    counts = problem.expected if noise == "noise-free" else rng.poisson(problem.expected).astype(float)
    x0 = np.full(problem.sky.shape, problem.sky.mean())
    par = {"iteration_max": 40, "background_normalization_optimization": {"activate": True}}
    algo, history = run(RichardsonLucySimple, problem.dataset(counts), x0, par)
    assert len(history) == 41
    # float64 sums over ~2000 terms of size <= |L|: rounding << 1e-9 |L|
    assert np.all(np.diff(history) >= -1e-9 * abs(history[-1]))
    # the engine's sparse-path likelihood equals a dense reference over all bins
    norms = algo.bkg_norms["sim"]
    assert history[-1] == pytest.approx(problem.loglike(counts, algo.model, norms), rel=1e-12)
    # EM conserves counts: sum_j X_j x_j + sum_k b_k sum_i B_k,i = sum_i d_i after every step
    total = np.sum(problem.exposure() * algo.model) + sum(norms[k] * t.sum() for k, t in problem.templates.items())
    assert total == pytest.approx(counts.sum(), rel=1e-12)


def test_rlsimple_within_em_convergence_bound(problem):
    x0 = np.full(problem.sky.shape, problem.sky.mean())
    par = {"iteration_max": 60, "background_normalization_optimization": {"activate": True}}
    algo, history = run(RichardsonLucySimple, problem.dataset(), x0, par)
    l_star = problem.loglike(problem.expected, problem.sky, problem.bkg_norms)
    kl0 = kl(problem.exposure(), problem.sky, x0) + sum(
        kl(t.sum(), problem.bkg_norms[k], 1.0) for k, t in problem.templates.items())
    gaps = l_star - history[1:]
    k = np.arange(1, len(gaps) + 1)
    assert np.all(gaps >= -1e-9 * abs(l_star))  # nothing beats the truth on noise-free data
    assert np.all(gaps <= kl0 / k + 1e-9 * abs(l_star))


# ---- RL: convergence on noise-free data, its steps ------------------------------------------------
def functional_bounds(columns, data, estimate, truth, gap, functionals):
    """Guaranteed errors ``|g.(estimate - truth)|`` of linear functionals g after a likelihood gap.

    Strong concavity (module docstring) gives ``e^T F* e <= 2 c^2 gap`` and Cauchy-Schwarz
    in the F* metric ``|g.e| <= sqrt(e^T F* e) sqrt(g^T F*^-1 g)``. The parameters are
    scaled by the truth so that F* is well scaled for the solve.
    """
    c = max(1.0, float(np.max((columns @ estimate) / data)))
    scaled = columns * truth
    fisher = (scaled / data[:, None]).T @ scaled
    return {name: np.sqrt(2 * c**2 * gap * (g * truth) @ np.linalg.solve(fisher, g * truth))
            for name, g in functionals.items()}


def test_rl_line_search_converges_to_injected_sky(problem):
    """Figure of merit: total flux per Ei bin and background norms, guaranteed within 3% by 150 iterations.

    The guarantee follows from the likelihood gap reached (``functional_bounds``); plain
    ML-EM needs several times more iterations for it, so a broken acceleration fails here.
    """
    n_iter = 150
    x0 = np.full(problem.sky.shape, problem.sky.mean())
    par = {"iteration_max": n_iter, "acceleration": {"activate": True, "alpha_max": 10.0, "line_search": True},
           "background_normalization_optimization": {"activate": True},
           "stopping_criteria": {"statistics": "log-likelihood", "threshold": 0.0}}
    algo, history = run(RichardsonLucy, problem.dataset(), x0, par)
    l_star = problem.loglike(problem.expected, problem.sky, problem.bkg_norms)
    gap = l_star - history[-1]
    kl0 = kl(problem.exposure(), problem.sky, x0) + sum(
        kl(t.sum(), problem.bkg_norms[k], 1.0) for k, t in problem.templates.items())
    assert 0 <= gap <= kl0 / n_iter  # at least as good as the plain EM guarantee
    assert np.all(np.diff(history) >= -1e-9 * abs(l_star))  # the line search never accepts a worse step

    columns = np.concatenate([problem.R.reshape(problem.expected.size, -1),
                              np.stack([t.ravel() for t in problem.templates.values()], axis=1)], axis=1)
    estimate = np.concatenate([algo.model.ravel(), list(algo.bkg_norms["sim"].values())])
    truth = np.concatenate([problem.sky.ravel(), list(problem.bkg_norms.values())])
    functionals = {}
    for e in range(problem.n_ei):
        g = np.zeros(truth.size)
        g[:problem.sky.size].reshape(problem.sky.shape)[:, e] = DOMEGA  # total flux, ph cm-2 s-1
        functionals[f"flux E{e}"] = g
    for k, name in enumerate(problem.templates):
        g = np.zeros(truth.size)
        g[problem.sky.size + k] = 1.0
        functionals[name] = g
    bounds = functional_bounds(columns, problem.expected.ravel(), estimate, truth, gap, functionals)
    for name, g in functionals.items():
        value = g @ truth
        assert abs(g @ (estimate - truth)) <= bounds[name]
        assert bounds[name] / value < 0.03, name


def test_acceleration_and_response_weighting_and_smoothing_steps(problem):
    ds = problem.dataset()
    x0 = problem.sky * np.linspace(0.5, 1.5, problem.sky.size).reshape(problem.sky.shape)
    par = {"iteration_max": 1, "acceleration": {"activate": True, "alpha_max": 10.0},
           "response_weighting": {"activate": True, "index": 0.5},
           "smoothing": {"activate": True, "FWHM": {"value": 40.0, "unit": "deg"}}}
    mask = np.ones(x0.shape, bool)
    mask[5] = False
    algo, _ = run(RichardsonLucy, ds, x0, par, mask=mask)
    result = algo.results[0]
    x0 = np.where(mask, x0, 0.0)
    eps = np.einsum("scje,je->sc", problem.R, x0) + sum(problem.templates.values())
    ratio = np.einsum("scje,sc->je", problem.R, problem.expected / eps) / problem.exposure()
    delta = np.where(mask, x0 * (ratio - 1), 0.0)
    weighted = delta * np.sqrt(problem.exposure() / problem.exposure().max())
    smoothed = np.stack([hp.smoothing(weighted[:, e], fwhm=np.radians(40.0)) for e in range(2)], axis=1)
    smoothed[~mask] = 0.0
    shrinking = smoothed < 0
    alpha = np.clip(np.min(-x0[shrinking] / smoothed[shrinking]), 1.0, 10.0)
    np.testing.assert_allclose(result["delta_model"].contents.value, delta, rtol=1e-10, atol=1e-20)
    np.testing.assert_allclose(result["processed_delta_model"].contents.value, smoothed, rtol=1e-10, atol=1e-20)
    assert result["alpha"] == pytest.approx(alpha, rel=1e-12)
    np.testing.assert_allclose(result["model"].contents.value, np.maximum(x0 + alpha * smoothed, 0.0),
                               rtol=1e-10, atol=1e-20)
    assert np.all(result["model"].contents.value[5] == 0)


# ---- RL against an independent implementation of its definition ------------------------------------------
def reference_rl(problem, counts, x0, iterations, acceleration=False, alpha_max=1.0, weighting_index=None,
                 fwhm_deg=0.0, background_range=None, threshold=None):
    """Richardson-Lucy written from its definition with dense arrays; the log-likelihood before and after each step.

    delta = x (sum_i R_ij d_i / eps_i / X_j - 1); optionally times (X_j / max X)^index, then smoothed on the
    sphere; alpha = min(-x_j / delta_j) over the pixels with x_j > 0 and delta_j < 0, within [1, alpha_max];
    x <- max(x + alpha delta, 0); backgrounds b <- b sum_i B_i w_i / sum_i B_i within their range, from the same
    state; stop when the log-likelihood rises by less than the threshold.
    """
    response = problem.R.reshape(-1, *problem.sky.shape)
    exposure = response.sum(axis=0)
    templates = {k: t.ravel() for k, t in problem.templates.items()}
    d = counts.ravel()
    seen = d > 0
    constant = gammaln(d + 1).sum()

    def loglike(x, b):
        eps = np.einsum("ije,je->i", response, x) + sum(b[k] * t for k, t in templates.items())
        return np.sum(d[seen] * np.log(eps[seen])) - eps.sum() - constant, eps

    x, b = x0.copy(), {k: 1.0 for k in templates}
    value, eps = loglike(x, b)
    trace, alphas = [value], []
    for _ in range(iterations):
        w = d / eps
        delta = x * (np.einsum("ije,i->je", response, w) / exposure - 1.0)
        if background_range is not None:
            b = {k: float(np.clip(b[k] * (t @ w) / t.sum(), *background_range)) for k, t in templates.items()}
        if weighting_index is not None:
            delta = delta * (exposure / exposure.max()) ** weighting_index
        if fwhm_deg:
            delta = np.stack([hp.smoothing(delta[:, e], fwhm=np.radians(fwhm_deg)) for e in range(delta.shape[1])],
                             axis=1)
        alpha = 1.0
        if acceleration:
            limiting = (delta < 0) & (x > 0)
            alpha = float(np.clip(np.min(-x[limiting] / delta[limiting]), 1.0, alpha_max)) if limiting.any() \
                else alpha_max
        x = np.maximum(x + alpha * delta, 0.0)
        value, eps = loglike(x, b)
        trace.append(value)
        alphas.append(alpha)
        if threshold is not None and 0 <= trace[-1] - trace[-2] < threshold:
            break
    return np.array(trace), np.array(alphas)


@pytest.mark.parametrize("algorithm, options, reference", [
    (RichardsonLucySimple, {"iterations": 8, "fit_backgrounds": True},
     {"iterations": 8, "background_range": (0.0, 100.0)}),
    (RichardsonLucy, {"iterations": 12, "acceleration": True, "alpha_max": 10.0, "smoothing_fwhm": 40.0},
     {"iterations": 12, "acceleration": True, "alpha_max": 10.0, "fwhm_deg": 40.0}),
    (RichardsonLucy, {"iterations": 12, "acceleration": True, "alpha_max": 10.0, "smoothing_fwhm": 40.0,
                      "response_weighting": True, "response_weighting_index": 0.5, "fit_backgrounds": True,
                      "background_ranges": {"*": (0.5, 1.5)}},
     {"iterations": 12, "acceleration": True, "alpha_max": 10.0, "fwhm_deg": 40.0, "weighting_index": 0.5,
      "background_range": (0.5, 1.5)}),
    (RichardsonLucy, {"iterations": 40, "acceleration": True, "alpha_max": 3.0, "stopping_threshold": 1.0},
     {"iterations": 40, "acceleration": True, "alpha_max": 3.0, "threshold": 1.0}),
], ids=["RLsimple-backgrounds", "RL-accelerated-smoothed", "RL-all-options", "RL-stopping"])
def test_rl_follows_its_definition_step_by_step(problem, rng, algorithm, options, reference):
    """On Poisson data with no response truncation, the log-likelihood trace equals the definition's to 1e-8."""
    counts = rng.poisson(problem.expected).astype(float)
    x0 = np.full(problem.sky.shape, problem.sky.mean())
    options.setdefault("stopping_threshold", None)
    algo = algorithm(problem.dataset(counts), initial_model=x0, **options)
    results = algo.run(progress=False)
    trace, alphas = reference_rl(problem, counts, x0, **reference)
    assert len(results) == len(trace) - 1
    mine = [float(np.sum(r["loglikelihood"])) for r in results]
    np.testing.assert_allclose(mine, trace[1:], rtol=1e-8)
    np.testing.assert_allclose([r["alpha"] for r in results], alphas, rtol=1e-8)


def test_acceleration_stays_on_after_pixels_reach_zero(problem, rng):
    """Smoothing feeds negative deltas into pixels an accelerated step has set to zero; those must not limit the
    step (they would make it 0, floored to 1: the acceleration off for good)."""
    counts = rng.poisson(problem.expected).astype(float)
    algo = RichardsonLucy(problem.dataset(counts), initial_model=np.full(problem.sky.shape, problem.sky.mean()),
                          iterations=15, acceleration=True, alpha_max=10.0, smoothing_fwhm=40.0,
                          stopping_threshold=None)
    results = algo.run(progress=False)
    alphas = []
    for before, result in zip(results, results[1:]):
        zero = algo.free & (before["model"].contents.value == 0)
        if np.any(zero & (result["processed_delta_model"].contents.value < 0)):
            alphas.append(result["alpha"])
    assert alphas, "on this problem the smoothed deltas of some iterations are negative on zero pixels"
    assert max(alphas) > 1.0


# ---- one iteration by hand: 2 pixels, 3 bins ---------------------------------------------------------
R_HAND = np.array([[1.0, 2.0, 0.5], [0.5, 1.0, 3.0]])  # cm2 s per (pixel, bin), before dOmega
D_HAND = np.array([3.0, 5.0, 4.0])
B_HAND = np.array([0.5, 0.2, 1.0])
X0_HAND = np.array([0.1, 0.2])


@pytest.fixture
def hand_dataset():
    """Galactic-frame response on a 2-pixel sky: the engine's R_ij = r_ij * dOmega with dOmega = 4 pi / 2."""
    axes = Axes([Axis([0, 1, 2], label="lb"), Axis([509.0, 513.0] * u.keV, label="Ei"),
                 Axis([509.0, 513.0] * u.keV, label="Em"), Axis([0, 60, 120, 180] * u.deg, label="Phi"),
                 Axis([0, 1], label="PsiChi")])
    rsp = ColumnResponse.from_dense(R_HAND.reshape(2, 1, 1, 3, 1), axes, u.Unit("cm2 s"), dtype=np.float64)
    cds = Axes(list(axes[2:]))
    event = Histogram(cds, contents=D_HAND.reshape(1, 3, 1))
    bkg = Histogram(cds, contents=B_HAND.reshape(1, 3, 1))
    return DeconvolutionDataset("hand", event, {"albedo": bkg}, rsp, galactic=True, dtype=np.float64)


def hand_loglike(x, b):
    """Log-likelihood of images x [..., 2] (a batch along leading axes) and background norm b."""
    eps = np.asarray(x) @ (2 * np.pi * R_HAND) + np.multiply.outer(b, B_HAND)
    value = np.sum(D_HAND * np.log(eps), axis=-1) - eps.sum(axis=-1) - gammaln(D_HAND + 1).sum()
    return float(value) if np.ndim(value) == 0 else value


def hand_em_quantities(x, b):
    r = 2 * np.pi * R_HAND  # dOmega = 4 pi / 2
    eps = r.T @ x + b * B_HAND
    w = D_HAND / eps
    return r @ w, r.sum(axis=1), B_HAND @ w  # T_j, X_j, sum_i B_i w_i


def test_hand_rlsimple(hand_dataset):
    algo, _ = run(RichardsonLucySimple, hand_dataset, X0_HAND[:, None],
                  {"iteration_max": 1, "background_normalization_optimization": {"activate": True}})
    t, x, bw = hand_em_quantities(X0_HAND, 1.0)
    x1 = X0_HAND * t / x
    b1 = 1.0 * bw / B_HAND.sum()
    r = algo.results[0]
    np.testing.assert_allclose(r["model"].contents.value[:, 0], x1, rtol=1e-12)
    np.testing.assert_allclose(r["delta_model"].contents.value[:, 0], x1 - X0_HAND, rtol=1e-12)
    assert r["background_normalization"]["albedo"] == pytest.approx(b1, rel=1e-12)
    assert r["loglikelihood"][0] == pytest.approx(hand_loglike(x1, b1), rel=1e-12)
    assert r["alpha"] == 1.0


def test_hand_rl_acceleration_and_response_weighting(hand_dataset):
    par = {"iteration_max": 1, "acceleration": {"activate": True, "alpha_max": 10.0},
           "response_weighting": {"activate": True, "index": 0.5},
           "background_normalization_optimization": {"activate": True, "range": {"albedo": [0.5, 0.9]}}}
    algo, _ = run(RichardsonLucy, hand_dataset, X0_HAND[:, None], par)
    t, x, bw = hand_em_quantities(X0_HAND, 1.0)
    delta = X0_HAND * (t / x - 1)
    processed = delta * np.sqrt(x / x.max())
    negative = processed < 0
    alpha = min(10.0, np.min(-X0_HAND[negative] / processed[negative])) if negative.any() else 10.0
    alpha = max(alpha, 1.0)
    x1 = X0_HAND + alpha * processed
    b1 = min(max(bw / B_HAND.sum(), 0.5), 0.9)
    r = algo.results[0]
    np.testing.assert_allclose(r["processed_delta_model"].contents.value[:, 0], processed, rtol=1e-12)
    assert r["alpha"] == pytest.approx(alpha, rel=1e-12)
    np.testing.assert_allclose(r["model"].contents.value[:, 0], x1, rtol=1e-12)
    assert r["background_normalization"]["albedo"] == pytest.approx(b1, rel=1e-12)
    assert r["loglikelihood"][0] == pytest.approx(hand_loglike(x1, b1), rel=1e-12)


def test_hand_rl_line_search_finds_the_likelihood_maximum(hand_dataset):
    steps = 12
    par = {"iteration_max": 1, "acceleration": {"activate": True, "alpha_max": 50.0,
                                                "line_search": {"activate": True, "steps": steps}}}
    algo, _ = run(RichardsonLucy, hand_dataset, X0_HAND[:, None], par)
    t, x, _ = hand_em_quantities(X0_HAND, 1.0)
    delta = X0_HAND * (t / x - 1)
    negative = delta < 0
    high = min(50.0, np.min(-X0_HAND[negative] / delta[negative])) if negative.any() else 50.0
    grid = np.linspace(1.0, high, 200001)
    values = hand_loglike(X0_HAND + grid[:, None] * delta, np.ones(grid.size))
    best = grid[int(np.argmax(values))]
    alpha = algo.results[0]["alpha"]
    # golden section: the bracket shrinks by 0.618 per evaluation after the first two
    assert abs(alpha - best) <= (high - 1.0) * 0.6180339887 ** (steps - 2) + (grid[1] - grid[0])
    assert hand_loglike(X0_HAND + alpha * delta, 1.0) >= hand_loglike(X0_HAND + delta, 1.0)


def test_hand_map_rl_gamma_and_entropy(hand_dataset):
    k, theta, kb, theta_b, c, m = 0.9, 2.0, 1.5, 10.0, 0.5, 0.15
    par = {"iteration_max": 1, "background_normalization_optimization": {"activate": True},
           "prior": {"gamma": {"model": {"theta": {"value": theta, "unit": "cm-2 s-1 sr-1"}, "k": {"value": k}},
                               "background": {"theta": {"value": theta_b}, "k": {"value": kb}}},
                     "entropy": {"coefficient": c, "prior_map": {"value": m, "unit": "cm-2 s-1 sr-1"}}}}
    algo, _ = run(MAPRichardsonLucy, hand_dataset, X0_HAND[:, None], par)
    t, x, bw = hand_em_quantities(X0_HAND, 1.0)
    x_em = (X0_HAND * t + k - 1) / (x + 1 / theta)
    prior_filter = np.exp(-c * np.log(x_em / m) / (x + 1 / theta))
    x1 = prior_filter * x_em
    b1 = (1.0 * bw + kb - 1) / (B_HAND.sum() + 1 / theta_b)
    log_prior = ((k - 1) * np.sum(np.log(x1 + np.finfo(float).eps)) - x1.sum() / theta
                 + (kb - 1) * np.log(b1) - b1 / theta_b + c * np.sum(x1 * (1 - np.log(x1 / m))))
    r = algo.results[0]
    np.testing.assert_allclose(u.Quantity(r["prior_filter"].contents).value[:, 0], prior_filter, rtol=1e-12)
    np.testing.assert_allclose(r["model"].contents.value[:, 0], x1, rtol=1e-12)
    assert r["background_normalization"]["albedo"] == pytest.approx(b1, rel=1e-12)
    assert r["log_posterior"] == pytest.approx(hand_loglike(x1, b1) + log_prior, rel=1e-12)


def test_tsv_prior_matches_cosipy_formula_and_its_gradient(rng):
    axes = Axes([HealpixAxis(nside=4, coordsys="galactic", label="lb"), Axis([1.0, 2.0, 3.0] * u.keV, label="Ei")])
    image = rng.gamma(2.0, 1.0, (axes[0].nbins, 2))
    prior = PriorTSV(0.7, axes, np.ones(image.shape, bool))
    nb = hp.get_all_neighbours(4, np.arange(axes[0].nbins))
    nb = np.where(nb >= 0, nb, np.arange(axes[0].nbins))
    diff = image[None] - image[nb]
    assert prior.log_prior(image) == pytest.approx(-0.7 * np.sum(diff**2), rel=1e-12)
    # HEALPix neighbourhoods are symmetric, so the exact gradient is cosipy's -4 c sum_k (x_j - x_k)
    np.testing.assert_allclose(prior.grad_log_prior(image), -4 * 0.7 * diff.sum(axis=0), rtol=1e-10, atol=1e-12)
    # with a mask the gradient is still the derivative of the log prior (central differences, exact for a quadratic)
    free = rng.random(image.shape) > 0.2
    prior = PriorTSV(0.7, axes, free)
    h = 1e-3
    for j, e in [(0, 0), (17, 1), (100, 0)]:
        step = np.zeros_like(image)
        step[j, e] = h
        numeric = (prior.log_prior(image + step) - prior.log_prior(image - step)) / (2 * h)
        assert prior.grad_log_prior(image)[j, e] == pytest.approx(numeric, rel=1e-8, abs=1e-10)


# ---- backgrounds and several datasets ----------------------------------------------------------------
def test_background_norms_recovered_per_dataset(rng):
    """Two observation periods with different injected norms share one sky; each norm within 3%."""
    a = Problem(rng, bkg_norms=(1.3, 0.7))
    b = Problem(np.random.default_rng(7), bkg_norms=(0.8, 1.2))
    b.sky = a.sky
    b.sky_counts = np.einsum("scje,je->sc", b.R, b.sky)
    b.expected = b.sky_counts + sum(b.bkg_norms[k] * t for k, t in b.templates.items())
    datasets = [a.dataset(name="early"), b.dataset(name="late")]
    x0 = np.full(a.sky.shape, a.sky.mean())
    par = {"iteration_max": 150, "acceleration": {"activate": True, "alpha_max": 10.0, "line_search": True},
           "background_normalization_optimization": {"activate": True, "range": {"*": [0.01, 10.0]}},
           "stopping_criteria": {"threshold": 0.0}}
    algo, history = run(RichardsonLucy, datasets, x0, par)
    gap = a.loglike(a.expected, a.sky, a.bkg_norms) + b.loglike(b.expected, b.sky, b.bkg_norms) - history[-1]
    # parameters: sky pixels, then early's two norms, then late's two norms
    blocks = []
    for p, position in ((a, 0), (b, 1)):
        templates = np.stack([t.ravel() for t in p.templates.values()], axis=1)
        norms = np.zeros((templates.shape[0], 4))
        norms[:, 2 * position:2 * position + 2] = templates
        blocks.append(np.concatenate([p.R.reshape(p.expected.size, -1), norms], axis=1))
    columns = np.concatenate(blocks)
    data = np.concatenate([a.expected.ravel(), b.expected.ravel()])
    estimate = np.concatenate([algo.model.ravel(), list(algo.bkg_norms["early"].values()),
                               list(algo.bkg_norms["late"].values())])
    truth = np.concatenate([a.sky.ravel(), list(a.bkg_norms.values()), list(b.bkg_norms.values())])
    functionals = {}
    for k, (name, comp) in enumerate([("early", c) for c in a.templates] + [("late", c) for c in b.templates]):
        g = np.zeros(truth.size)
        g[a.sky.size + k] = 1.0
        functionals[(name, comp)] = g
    bounds = functional_bounds(columns, data, estimate, truth, gap, functionals)
    for (name, comp), g in functionals.items():
        true = g @ truth
        assert abs(algo.bkg_norms[name][comp] - true) <= bounds[(name, comp)]
        assert bounds[(name, comp)] / true < 0.03
    assert set(algo.results[-1]["background_normalization"]) == {"early", "late"}


def test_two_datasets_equal_one_dataset_with_all_rows(problem):
    """Splitting the attitude bins into two datasets changes nothing when the norms are fixed."""
    full = problem.dataset()
    rsp = ColumnResponse.from_dense(problem.values, problem.axes, u.cm**2, dtype=np.float64)
    halves = []
    for name, rows in (("a", slice(0, 2)), ("b", slice(2, 4))):
        axes = Axes([Axis(np.arange(3), label="ScAtt"), *problem.data_axes[1:]])
        shape = (2,) + problem.shape[1:]

        def hist(values, axes=axes, rows=rows, shape=shape):
            return Histogram(axes, contents=np.asarray(values).reshape(problem.shape)[rows].reshape(shape))

        halves.append(DeconvolutionDataset(name, hist(problem.expected),
                                           {k: hist(t) for k, t in problem.templates.items()}, rsp,
                                           ccm=ccm_histogram(problem.ccm[rows]), dtype=np.float64))
    x0 = np.full(problem.sky.shape, problem.sky.mean())
    par = {"iteration_max": 5, "acceleration": {"activate": True, "alpha_max": 10.0, "line_search": True},
           "response_weighting": {"activate": True}, "stopping_criteria": {"threshold": 0.0}}
    one, h1 = run(RichardsonLucy, full, x0, par)
    two, h2 = run(RichardsonLucy, halves, x0, par)
    np.testing.assert_allclose(two.model, one.model, rtol=1e-10)
    np.testing.assert_allclose(h2, h1, rtol=1e-12)
    assert len(two.results[-1]["loglikelihood"]) == 2


# ---- keyword constructors -------------------------------------------------------------------------------
def test_keywords_and_the_parameter_tree_give_the_same_run(problem):
    """The parameter files are translated into the keywords: both routes make the same numbers."""
    x0 = problem.sky * np.linspace(0.5, 1.5, problem.sky.size).reshape(problem.sky.shape)
    tree = {"iteration_max": 5, "acceleration": {"activate": True, "alpha_max": 10.0, "line_search": True},
            "response_weighting": {"activate": True, "index": 0.4},
            "smoothing": {"activate": True, "FWHM": {"value": 0.5, "unit": "rad"}},
            "background_normalization_optimization": {"activate": True, "range": {"*": [0.5, 2.0]}},
            "stopping_criteria": {"threshold": 0.0}}
    from_tree, tree_history = run(RichardsonLucy, problem.dataset(), x0, tree)
    keywords = RichardsonLucy(problem.dataset(), initial_model=x0, iterations=5, acceleration=True, alpha_max=10.0,
                              line_search=True, response_weighting=True, response_weighting_index=0.4,
                              smoothing_fwhm=0.5 * u.rad, fit_backgrounds=True, background_ranges={"*": (0.5, 2.0)},
                              stopping_threshold=0.0)
    results = keywords.run(progress=False)
    assert len(results) == 5 == len(from_tree.results)
    for mine, ref in zip(results, from_tree.results):
        np.testing.assert_array_equal(mine["model"].contents.value, ref["model"].contents.value)
        assert mine["background_normalization"] == ref["background_normalization"]
        assert mine["loglikelihood"] == ref["loglikelihood"]


def test_keyword_defaults_and_the_back_projection_start(problem):
    algo = RichardsonLucySimple(problem.dataset())
    assert (algo.iteration_max, algo.stopping_threshold, algo.bkg_optimization) == (1, None, False)
    assert RichardsonLucy(problem.dataset()).stopping_threshold == 0.01
    assert MAPRichardsonLucy(problem.dataset()).stopping_statistic == "log-posterior"
    # no initial model: the back-projection scaled to the counts minus the backgrounds at norm 1
    background = sum(t.sum() for t in problem.templates.values())
    assert np.sum(problem.exposure() * algo.initial_model) == pytest.approx(problem.expected.sum() - background,
                                                                            rel=1e-10)


@pytest.mark.parametrize("algorithm, keywords, message", [
    (RichardsonLucy, {"alpha_max": 0.5}, r"RichardsonLucy: key 'alpha_max': must be >= 1.0, got 0.5"),
    (RichardsonLucy, {"iterations": 2.5}, r"key 'iterations': expected an integer"),
    (RichardsonLucy, {"smoothing_fwhm": 2 * u.keV}, r"key 'smoothing_fwhm': unit must be convertible to deg"),
    (RichardsonLucySimple, {"acceleration": True}, r"unexpected keyword argument 'acceleration'"),
    (RichardsonLucySimple, {"background_ranges": {"nope": (0, 1)}}, r"key 'background_ranges:nope': names no "
                                                                   r"background; known: \['albedo', 'cr'\]"),
    (RichardsonLucySimple, {"stopping_statistic": "log-posterior"}, r"key 'stopping_statistic': must be one of"),
    (MAPRichardsonLucy, {"entropy_coefficient": 1.0}, r"key 'entropy_prior_map': is needed by the entropy prior"),
    (MAPRichardsonLucy, {"gamma_theta": 0.0}, r"key 'gamma_theta': must be positive"),
])
def test_keyword_errors_name_the_keyword(problem, algorithm, keywords, message):
    with pytest.raises((CosiInputError, TypeError), match=message):
        algorithm(problem.dataset(), **keywords)


# ---- the orchestrator -----------------------------------------------------------------------------------
def nested_parameters(algorithm="RLsimple", nside=NSIDE, ei_edges=EI_EDGES, **deconv):
    return {"model_definition": {
        "class": "AllSkyImage",
        "property": {"coordinate": "galactic", "nside": nside, "scheme": "ring",
                     "energy_edges": {"value": list(ei_edges), "unit": "keV"}, "unit": "cm-2 s-1 sr-1"},
        "initialization": {"algorithm": "flat", "parameter": {"value": [1e-4] * (len(ei_edges) - 1),
                                                              "unit": "cm-2 s-1 sr-1"}}},
        "deconvolution": {"algorithm": algorithm, "parameter": {"iteration_max": 3, **deconv}}}


def orchestrator(problem, parameters, mask=None):
    deconv = ImageDeconvolution()
    deconv.set_dataset([problem.dataset()])
    deconv.set_parameter(parameters)
    if mask is not None:
        deconv.set_mask(mask)
    return deconv


@pytest.mark.parametrize("override, key", [
    ("deconvolution:algorithm = RLfast", "deconvolution:algorithm"),
    ("model_definition:class = HealpixImage", "model_definition:class"),
    ("deconvolution:parameter:acceleration:alpha_maxx = 3", "deconvolution:parameter:acceleration:alpha_maxx"),
    ("deconvolution:parameter:iteration_max = -2", "deconvolution:parameter:iteration_max"),
    ("model_definition:initialization:algorithm = random", "model_definition:initialization:algorithm"),
    ("model_definition:initialization:parameter:value = [1e-4]", "model_definition:initialization:parameter:value"),
    ("model_definition:property:energy_edges:value = [400, 500, 600]", "model_definition:property:energy_edges"),
    ("deconvolution:parameter:background_normalization_optimization:range = {albedoo: [0, 2]}",
     "deconvolution:parameter:background_normalization_optimization:range:albedoo"),
    ("deconvolution:parameter:smoothing = {activate: true, FWHM: {value: 2, unit: keV}}",
     "deconvolution:parameter:smoothing:FWHM:unit"),
    ("deconvolution:parameter:stopping_criteria:statistics = chi2", "deconvolution:parameter:stopping_criteria"),
    ("model_definition:prop:nside = 2", "model_definition:prop"),
])
def test_parameter_errors_name_the_key(problem, override, key):
    algorithm = "RL" if "smoothing" in override or "acceleration" in override else "RLsimple"
    deconv = orchestrator(problem, nested_parameters(algorithm))
    deconv.override_parameter(override)
    with pytest.raises(CosiInputError, match=key):
        deconv.initialize()


def test_model_nside_must_equal_ccm_nside(problem):
    deconv = orchestrator(problem, nested_parameters(nside=4))
    with pytest.raises(AxisMismatchError, match=r"'model_definition:property:nside' is 4 .*NSIDE 2"):
        deconv.initialize()


def test_prior_keys_only_for_map_rl(problem):
    deconv = orchestrator(problem, nested_parameters("RL", prior={"TSV": {"coefficient": 1.0}}))
    with pytest.raises(CosiInputError, match="deconvolution:parameter:prior"):
        deconv.initialize()


def test_zero_exposure_and_user_mask(rng):
    problem = Problem(rng, zero_lb=[3])
    mask_values = np.ones((NPIX, problem.n_ei), bool)
    mask_values[10, 1] = False
    axes = problem.dataset().model_axes
    deconv = orchestrator(problem, nested_parameters(), mask=Histogram(axes, contents=mask_values))
    deconv.initialize()
    results = deconv.run_deconvolution(progress=False)
    assert not deconv.mask.contents[3].any() and not deconv.mask.contents[10, 1]
    assert deconv.mask.contents.sum() == mask_values.size - 3
    for r in results:
        assert np.all(r["model"].contents.value[3] == 0) and r["model"].contents.value[10, 1] == 0
    assert np.all(results[-1]["model"].contents.value[deconv.mask.contents] > 0)


@pytest.mark.parametrize("init", ["backprojection", "user"])
def test_initializations(problem, tmp_path, init):
    parameters = nested_parameters()
    if init == "user":
        image = Histogram(problem.dataset().model_axes, contents=problem.sky, unit=u.Unit("cm-2 s-1 sr-1"))
        write_histogram(image, tmp_path / "start.h5")
        parameters["model_definition"]["initialization"] = {"algorithm": "user",
                                                            "parameter": {"file": str(tmp_path / "start.h5")}}
    else:
        parameters["model_definition"]["initialization"] = {"algorithm": "backprojection"}
    deconv = orchestrator(problem, parameters)
    deconv.initialize()
    x0 = deconv.initial_model.contents.value
    if init == "user":
        np.testing.assert_allclose(x0, problem.sky, rtol=1e-12)
    else:
        # sum_j X_j x_j equals the counts minus the backgrounds at unit norm
        bkg = sum(t.sum() for t in problem.templates.values())
        assert np.sum(problem.exposure() * x0) == pytest.approx(problem.expected.sum() - bkg, rel=1e-10)
        t = np.einsum("scje,sc->je", problem.R, problem.expected)
        np.testing.assert_allclose(x0 / x0.sum(), (t / problem.exposure()) / (t / problem.exposure()).sum(),
                                   rtol=1e-10)


def test_seed_tutorial_overrides_accepted(problem):
    """The override lines of the COSI 511 keV tutorial work on the nested parameter form."""
    deconv = orchestrator(problem, nested_parameters("RL", acceleration={"activate": True, "alpha_max": 10.0},
                                                     smoothing={"activate": True,
                                                                "FWHM": {"value": 2.0, "unit": "deg"}}))
    deconv.override_parameter("deconvolution:parameter:iteration_max = 2")
    deconv.override_parameter("deconvolution:parameter:background_normalization_optimization = True")
    deconv.override_parameter("deconvolution:parameter:alpha_max = 4")
    deconv.override_parameter("deconvolution:parameter:smoothing_FWHM:value = 3.0")
    deconv.initialize()
    algo = deconv.algorithm
    assert (algo.alpha_max, algo.bkg_optimization, algo.iteration_max) == (4.0, True, 2)
    assert algo.smoothing_fwhm == pytest.approx(np.radians(3.0))
    assert len(deconv.run_deconvolution(progress=False)) == 2
    # as in the tutorial: after an override, initialize() again (the results stay readable)
    deconv.override_parameter("deconvolution:parameter:iteration_max = 3")
    assert len(deconv.results) == 2
    with pytest.raises(CosiInputError, match="initialize"):
        deconv.run_deconvolution(progress=False)


def test_old_flat_parameter_form_runs(problem, tmp_path):
    """The DC2-era flat form (model_property, parameter_RL) reads and runs like the nested one."""
    flat = {"model_property": {"coordinate": "galactic", "nside": NSIDE, "scheme": "ring", "energy_edges": EI_EDGES},
            "model_initialization": {"algorithm": "flat", "parameter_flat": {"values": [1e-4, 1e-4]}},
            "deconvolution": {"algorithm": "RL", "parameter_RL": {
                "iteration": 2, "acceleration": True, "alpha_max": 10.0, "save_results_each_iteration": False,
                "response_weighting": True, "response_weighting_index": 0.5, "smoothing": True,
                "smoothing_FWHM": 20.0, "background_normalization_fitting": True,
                "background_normalization_range": [0.5, 1.5]}}}
    (tmp_path / "old.yml").write_text(yaml.safe_dump(flat))
    deconv = ImageDeconvolution()
    deconv.set_dataset(problem.dataset())
    deconv.read_parameterfile(tmp_path / "old.yml")
    deconv.initialize()
    algo = deconv.algorithm
    assert (algo.name, algo.iteration_max, algo.alpha_max, algo.response_weighting) == ("RL", 2, 10.0, True)
    assert algo.smoothing_fwhm == pytest.approx(np.radians(20.0))
    assert algo.bkg_range["sim"] == {"albedo": (0.5, 1.5), "cr": (0.5, 1.5)}  # one range for every background
    assert len(deconv.run_deconvolution(progress=False)) == 2


def test_dataset_needs_a_ccm_or_galactic_response(problem):
    rsp = ColumnResponse.from_dense(problem.values, problem.axes, u.cm**2)
    with pytest.raises(CosiInputError, match="needs a CCM"):
        DeconvolutionDataset("x", problem.hist(problem.expected), {}, rsp)
    ds = problem.dataset()
    assert ds.summed_bkg_model("cr") == pytest.approx(problem.templates["cr"].sum(), rel=1e-12)
    assert ds.keys_bkg_models() == ["albedo", "cr"]
    with pytest.raises(CosiInputError, match="no background 'albedoo'"):
        ds.summed_bkg_model("albedoo")


# ---- the COSI team's parameter files -----------------------------------------------------------------
def test_cosipy_test_parfile_on_cosipy_fixtures(fixtures_dir):
    """imagedeconvolution_parfile_test.yml (NSIDE 1, 10 Ei bins, RLsimple) on the COSI team's test files."""
    folder = fixtures_dir / "image_deconvolution"
    event = folder / "test_event_histogram_localCDS_scatt.h5"
    dataset = DeconvolutionDataset("test", event, {"albedo": event}, fixtures_dir / "test_full_detector_response.h5",
                                   ccm=folder / "ccm_scatt_use_averaged_pointing_False_test.hdf5")
    deconv = ImageDeconvolution()
    deconv.set_dataset([dataset])
    deconv.read_parameterfile(folder / "imagedeconvolution_parfile_test.yml")
    deconv.initialize()
    results = deconv.run_deconvolution(progress=False)
    assert [r["iteration"] for r in results] == [1, 2]
    assert results[0]["model"].axes["lb"].nside == 1 and results[0]["model"].axes["Ei"].nbins == 10
    ll = [deconv.algorithm.results[0]["loglikelihood"][0], results[1]["loglikelihood"][0]]
    assert ll[1] > ll[0]
    # the dense cosipy-style likelihood of the final state agrees with the sparse path
    final = results[-1]
    assert dataset.calc_loglikelihood(final["model"], final["background_normalization"]) == pytest.approx(ll[1],
                                                                                                         rel=1e-9)
    assert 0 < final["background_normalization"]["albedo"] < 100


def test_511kev_parfile_on_small_synthetic_data(fixtures_dir, rng):
    """imagedeconvolution_parfile_scatt_511keV.yml (RL, acceleration, smoothing, response weighting).

    It asks for NSIDE 16; the synthetic problem has NSIDE 2, so nside is overridden
    to 2 (everything else as in the file: Ei 509-513 keV, background 'albedo').
    """
    problem = Problem(rng, ei_edges=[509.0, 513.0], bkg_norms=(1.0, 1.0))
    problem.templates = {"albedo": problem.templates["albedo"]}
    problem.bkg_norms = {"albedo": 1.0}
    problem.expected = problem.sky_counts + problem.templates["albedo"]
    counts = rng.poisson(problem.expected * 50).astype(float)
    problem.templates["albedo"] = problem.templates["albedo"] * 50
    deconv = ImageDeconvolution()
    deconv.set_dataset([problem.dataset(counts, name="511keV")])
    deconv.read_parameterfile(fixtures_dir / "imagedeconvolution_parfile_scatt_511keV.yml")
    deconv.override_parameter("model_definition:property:nside = 2")
    deconv.initialize()
    results = deconv.run_deconvolution(progress=False)
    assert 2 <= len(results) <= 10
    first = results[0]
    assert set(first) >= {"iteration", "model", "delta_model", "processed_delta_model", "background_normalization",
                          "alpha", "loglikelihood"}
    assert all(1.0 <= r["alpha"] <= 10.0 for r in results)
    assert all(0.01 <= r["background_normalization"]["albedo"] <= 10.0 for r in results)
    assert deconv.algorithm.smoothing_fwhm == pytest.approx(np.radians(2.0))
    # the file's stopping rule: it ran to iteration_max or stopped on a small likelihood gain
    ll = [np.sum(r["loglikelihood"]) for r in results]
    assert len(results) == 10 or 0 <= ll[-1] - ll[-2] < 0.01


# ---- results: save, resume, plots, command line -------------------------------------------------------
def test_save_and_resume_round_trip(problem, tmp_path):
    deconv_par = dict(acceleration={"activate": True, "alpha_max": 10.0, "line_search": True},
                      smoothing={"activate": True, "FWHM": {"value": 30.0, "unit": "deg"}},
                      background_normalization_optimization={"activate": True},
                      stopping_criteria={"threshold": 0.0})
    straight = orchestrator(problem, nested_parameters("RL", **deconv_par))
    straight.override_parameter("deconvolution:parameter:iteration_max = 6")
    straight.initialize()
    reference = straight.run_deconvolution(progress=False)

    first = orchestrator(problem, nested_parameters("RL", **deconv_par, save_results={
        "activate": True, "directory": str(tmp_path / "out"), "only_final_result": False}))
    first.initialize()
    first.run_deconvolution(progress=False)
    with h5py.File(tmp_path / "out" / "results.h5") as f:
        assert sorted(f) == ["iteration1", "iteration2", "iteration3"]
        assert json.loads(f["iteration3"].attrs["background_normalization"]).keys() == {"sim"}
    table = Table.read(tmp_path / "out" / "results.fits", hdu="RESULTS")
    assert list(table["ITERATION"]) == [1, 2, 3]
    np.testing.assert_allclose(table["BKG_albedo"], [r["background_normalization"]["albedo"]
                                                     for r in reference[:3]], rtol=1e-12)
    np.testing.assert_allclose(table["LOGLIKELIHOOD"], [r["loglikelihood"][0] for r in reference[:3]], rtol=1e-12)

    resumed = ImageDeconvolution()
    resumed.set_dataset([problem.dataset()])
    assert resumed.resume(tmp_path / "out") == 3
    assert len(resumed.results) == 3 and resumed.results[-1]["iteration"] == 3
    resumed.override_parameter("deconvolution:parameter:iteration_max = 6")
    resumed.override_parameter("deconvolution:parameter:save_results:activate = False")
    resumed.initialize()  # still starts from the saved state
    results = resumed.run_deconvolution(progress=False)
    assert [r["iteration"] for r in results] == [1, 2, 3, 4, 5, 6]
    for mine, ref in zip(results[3:], reference[3:]):
        np.testing.assert_allclose(mine["model"].contents.value, ref["model"].contents.value, rtol=1e-12)
        assert mine["loglikelihood"][0] == pytest.approx(ref["loglikelihood"][0], rel=1e-12)
        assert mine["alpha"] == pytest.approx(ref["alpha"], rel=1e-12)


def test_only_final_result_and_load(problem, tmp_path):
    deconv = orchestrator(problem, nested_parameters("MAP_RL", prior={"TSV": {"coefficient": 10.0}},
                                                     save_results={"activate": True, "directory": str(tmp_path),
                                                                   "only_final_result": True}))
    deconv.initialize()
    results = deconv.run_deconvolution(progress=False)
    loaded = load_results(tmp_path)
    assert [r["iteration"] for r in loaded["results"]] == [3]
    assert loaded["algorithm"] == "MAP_RL" and loaded["dataset_names"] == ["sim"]
    final = loaded["results"][0]
    np.testing.assert_allclose(final["model"].contents.value, results[-1]["model"].contents.value, rtol=0)
    assert final["log_posterior"] == results[-1]["log_posterior"]
    assert final["log_prior"].keys() == {"gamma_model", "gamma_bkg", "TSV"}
    assert "LOG_POSTERIOR" in Table.read(tmp_path / "results.fits").colnames
    write_histogram(results[0]["model"], tmp_path / "other.h5")
    with pytest.raises(CosiFileError, match="not a deconvolution results file"):
        load_results(tmp_path / "other.h5")


def test_plots_return_figures(problem):
    deconv = orchestrator(problem, nested_parameters("RL", acceleration={"activate": True, "alpha_max": 3.0}))
    deconv.initialize()
    results = deconv.run_deconvolution(progress=False)
    fig = plot_convergence(results)
    assert len(fig.axes) == 3 and len(fig.axes[0].lines) == 1
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), [r["alpha"] for r in results])
    fig = plot_image(results[-1]["model"], energy_index=1, log=True, mask=deconv.mask)
    assert fig.axes
    import matplotlib.pyplot as plt

    plt.close("all")


def write_manifest_dataset(problem, folder, parfile):
    """A data directory as the simulator writes it: files by role in manifest.yaml."""
    folder.mkdir()
    write_response(folder / "response.h5", problem.axes, problem.values, dtype=np.float64)
    write_histogram(ccm_histogram(problem.ccm), folder / "ccm.h5")
    # counts are integers: a Poisson draw of the expectation
    counts = np.random.default_rng(909).poisson(problem.expected).astype(float)
    write_histogram(problem.hist(counts), folder / "data_scatt.h5")
    for name, template in problem.templates.items():
        write_histogram(problem.hist(template), folder / f"bkg_{name}.h5")
    (folder / "parfile.yml").write_text(yaml.safe_dump(parfile))
    manifest = {"response": "response.h5", "ccm": "ccm.h5", "data_scatt": "data_scatt.h5",
                "backgrounds": {name: f"bkg_{name}.h5" for name in problem.templates},
                "parameter_file": "parfile.yml"}
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))


def test_command_line_writes_results_and_plots(problem, tmp_path):
    parfile = nested_parameters("RL", acceleration={"activate": True, "alpha_max": 5.0},
                                background_normalization_optimization={"activate": True},
                                save_results={"activate": True, "directory": str(tmp_path / "elsewhere")})
    write_manifest_dataset(problem, tmp_path / "data", parfile)
    out = tmp_path / "out"
    summary = deconvolve_main(None, tmp_path / "data", out, overrides=["deconvolution:parameter:iteration_max = 4"],
                              progress=False)
    assert summary["iterations"] == 4
    for name in ("results.h5", "results.fits", "parameters.yaml", "convergence.png", "model_E0.png",
                 "model_E1_log.png"):
        assert (out / name).stat().st_size > 0
    assert not (tmp_path / "elsewhere").exists()
    loaded = load_results(out)
    assert [r["iteration"] for r in loaded["results"]] == [1, 2, 3, 4]
    assert loaded["parameters"]["deconvolution"]["parameter"]["iteration_max"] == 4
    assert summary["loglikelihood"] == pytest.approx(loaded["results"][-1]["loglikelihood"][0], rel=1e-12)


def test_command_line_missing_role_is_named(problem, tmp_path):
    write_manifest_dataset(problem, tmp_path / "data", nested_parameters())
    manifest = yaml.safe_load((tmp_path / "data" / "manifest.yaml").read_text())
    manifest["ccm"] = "missing_ccm.h5"
    (tmp_path / "data" / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(CosiFileError, match="role 'ccm'"):
        deconvolve_main(None, tmp_path / "data", tmp_path / "out", progress=False)
