"""Correctness of the response engine on small random problems.

Every test compares the engine against a direct dense computation written out
with numpy (``einsum``) from the same inputs, so a wrong index, transpose or
normalization in the compiled kernels fails here.
"""
import healpy as hp
import numpy as np
import pytest
import scoords  # noqa: F401  (registers the spacecraftframe frame used by the axes)
import sparse
from astropy import units as u
from histpy import Axes, Axis, HealpixAxis, Histogram
from scipy import stats

from cosi_imaging_plugin.engine import CCMMapping, ColumnResponse, PixelMapping, ResponseEngine
from cosi_imaging_plugin.engine.galactic import galactic_response, psichi_rotation, rotate_to_galactic
from cosi_imaging_plugin.errors import AxisMismatchError, CosiInputError

from synthetic_inputs import random_attitudes

NSIDE_RSP, NSIDE_MODEL, N_EI, N_EM, N_PHI, N_ROWS = 2, 2, 2, 2, 5, 4


def response_axes(nside=NSIDE_RSP):
    return Axes([
        HealpixAxis(nside=nside, coordsys="spacecraftframe", label="NuLambda"),
        Axis(np.geomspace(400, 600, N_EI + 1) * u.keV, label="Ei", scale="log"),
        Axis(np.geomspace(400, 600, N_EM + 1) * u.keV, label="Em", scale="log"),
        Axis(np.linspace(0, 180, N_PHI + 1) * u.deg, label="Phi"),
        HealpixAxis(nside=nside, coordsys="spacecraftframe", label="PsiChi"),
    ])


def random_response(rng, zero_fraction=0.6):
    """A non-negative response with many exact zeros, like a band-limited line response."""
    axes = response_axes()
    shape = tuple(a.nbins for a in axes)
    values = rng.gamma(0.5, 1.0, size=shape) * (rng.random(shape) > zero_fraction)
    return values, axes


def ccm_from_attitudes(attitudes, dt, nside_model=NSIDE_MODEL, nside_rsp=NSIDE_RSP):
    """C[s, j, nu] = dt_s * bilinear weight of Galactic pixel j seen at attitude s."""
    n_lb, n_nu = hp.nside2npix(nside_model), hp.nside2npix(nside_rsp)
    vec = np.array(hp.pix2vec(nside_model, np.arange(n_lb)))
    dense = np.zeros((len(attitudes), n_lb, n_nu))
    for s, (att, t) in enumerate(zip(attitudes, dt)):
        theta, phi = hp.vec2ang((att.T @ vec).T)
        pix, w = hp.get_interp_weights(nside_rsp, theta, phi)
        for k in range(4):
            np.add.at(dense[s], (np.arange(n_lb), pix[k]), t * w[k])
    axes = Axes([Axis(np.arange(len(attitudes) + 1), label="ScAtt"),
                 HealpixAxis(nside=nside_model, coordsys="galactic", label="lb"),
                 HealpixAxis(nside=nside_rsp, coordsys="spacecraftframe", label="NuLambda")])
    return Histogram(axes, contents=sparse.COO.from_numpy(dense), unit=u.s), dense


def data_axes(n_rows=N_ROWS, phi_edges=None):
    rsp = response_axes()
    phi = rsp["Phi"] if phi_edges is None else Axis(phi_edges * u.deg, label="Phi")
    return Axes([Axis(np.arange(n_rows + 1), label="ScAtt"), rsp["Em"], phi, rsp["PsiChi"]])


def dense_expectation(rsp_values, ccm_dense, image):
    """Reference: eps[s, m, phi, psi] = sum_{j,nu,e} C[s,j,nu] x[j,e] dOmega R[nu,e,m,phi,psi]."""
    domega = 4 * np.pi / image.shape[0]
    rows = np.einsum("sjn,je->sne", ccm_dense, image * domega)
    return np.einsum("sne,nempq->smpq", rows, rsp_values)


@pytest.fixture
def problem(rng):
    rsp_values, axes = random_response(rng)
    attitudes = random_attitudes(rng, N_ROWS)
    ccm, ccm_dense = ccm_from_attitudes(attitudes, dt=rng.uniform(50, 100, N_ROWS))
    image = rng.gamma(1.0, 1e-3, size=(hp.nside2npix(NSIDE_MODEL), N_EI))
    truth = dense_expectation(rsp_values, ccm_dense, image)
    bkg = rng.gamma(1.0, 0.05, size=truth.shape)
    counts = rng.poisson(truth + bkg).astype(float)
    data = Histogram(data_axes(), contents=sparse.COO.from_numpy(counts))
    return dict(rsp_values=rsp_values, axes=axes, attitudes=attitudes, ccm=ccm, ccm_dense=ccm_dense,
                image=image, truth=truth, bkg=bkg, counts=counts, data=data)


def make_engine(p, dtype=np.float64, rtol=0.0):
    rsp = ColumnResponse.from_dense(p["rsp_values"], p["axes"], u.cm**2, rtol=rtol, dtype=dtype)
    bkg = Histogram(data_axes(), contents=p["bkg"])
    return ResponseEngine.from_ccm(rsp, p["ccm"], data=p["data"], backgrounds={"albedo": bkg}, dtype=dtype)


def test_sparse_path_equals_dense_reference(problem):
    engine = make_engine(problem)
    assert 0 < engine.data.nnz < problem["counts"].size  # the test exercises the sparse selection
    eps = engine.expectation_at_bins(problem["image"], {"albedo": 1.3})
    reference = (problem["truth"] + 1.3 * problem["bkg"]).reshape(-1)[engine.data.flat_index]
    np.testing.assert_allclose(eps, reference, rtol=1e-12)
    dense = engine.expectation(problem["image"], {"albedo": 1.3})
    np.testing.assert_allclose(dense.contents, problem["truth"] + 1.3 * problem["bkg"], rtol=1e-12)


def test_float32_storage_matches_float64(problem):
    eps64 = make_engine(problem, np.float64).expectation_at_bins(problem["image"])
    eps32 = make_engine(problem, np.float32).expectation_at_bins(problem["image"])
    # float32 values and rows: relative rounding ~ 2 * 2^-24 per product, accumulated in float64
    np.testing.assert_allclose(eps32, eps64, rtol=1e-6)



def test_float64_rows_of_a_float32_engine_are_a_smooth_function_of_the_image(problem):
    """dtype=float64 keeps the source rows in float64 from the image on: a relative change of
    1e-9 of the image changes every expectation by 1e-9 (float32 rows would round it away)."""
    engine = make_engine(problem, np.float32)
    image = problem["image"]
    base = engine.sky_expectation_at_bins(image, dtype=np.float64)
    scaled = engine.sky_expectation_at_bins(image * (1.0 + 1e-9), dtype=np.float64)
    np.testing.assert_allclose(scaled / base - 1.0, 1e-9, rtol=1e-4)


def test_ccm_is_stored_with_16_bit_sky_pixels_and_float64_weights(problem):
    """What the benchmarks count as streamed: one row pointer per (row, NuLambda) pair, then a
    16-bit sky pixel (the model grid has fewer than 2**16 pixels) and a float64 weight per entry."""
    mapping = CCMMapping(problem["ccm"])
    n_entries = np.count_nonzero(problem["ccm_dense"])
    n_pointers = N_ROWS * hp.nside2npix(NSIDE_RSP) + 1
    assert mapping.nbytes in (n_pointers * 4 + n_entries * 10, n_pointers * 8 + n_entries * 10)
    assert PixelMapping(12).nbytes == 0


def test_adjoint_identity(problem, rng):
    engine = make_engine(problem)
    x = rng.normal(size=problem["image"].shape)
    y = rng.normal(size=engine.data.nnz)
    lhs = np.dot(engine.sky_expectation_at_bins(x), y)
    rhs = np.sum(x * engine.transpose_product(y))
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_exposure_map_is_response_summed_over_all_bins(problem):
    engine = make_engine(problem)
    domega = 4 * np.pi / problem["image"].shape[0]
    reference = np.einsum("sjn,nempq->je", problem["ccm_dense"], problem["rsp_values"]) * domega
    np.testing.assert_allclose(engine.exposure_map, reference, rtol=1e-12)
    total = engine.total_expected(problem["image"], {"albedo": 0.7})
    assert total == pytest.approx(problem["truth"].sum() + 0.7 * problem["bkg"].sum(), rel=1e-12)


def test_log_likelihood_equals_scipy_poisson_sum(problem):
    engine = make_engine(problem)
    expected = problem["truth"] + 0.9 * problem["bkg"]
    reference = stats.poisson.logpmf(problem["counts"], expected).sum()
    assert engine.log_likelihood(problem["image"], {"albedo": 0.9}) == pytest.approx(reference, rel=1e-12)


def test_per_row_background_norms(problem, rng):
    engine = make_engine(problem)
    row_norms = rng.uniform(0.5, 1.5, N_ROWS)
    expected = problem["truth"] + row_norms.reshape(-1, *([1] * (problem["bkg"].ndim - 1))) * problem["bkg"]
    reference = stats.poisson.logpmf(problem["counts"], expected).sum()
    assert engine.log_likelihood(problem["image"], {"albedo": row_norms}) == pytest.approx(reference, rel=1e-12)
    assert engine.total_expected(problem["image"], {"albedo": row_norms}) == pytest.approx(expected.sum(), rel=1e-12)
    dense = engine.expectation(problem["image"], {"albedo": row_norms}).contents
    np.testing.assert_allclose(dense, expected, rtol=1e-12)
    np.testing.assert_allclose(engine.expectation_cds(problem["image"], {"albedo": row_norms}),
                               expected.sum(axis=0), rtol=1e-12)
    with pytest.raises(CosiInputError, match="normalization of background 'albedo' has shape"):
        engine.total_expected(problem["image"], {"albedo": row_norms[:-1]})


def test_background_products(problem, rng):
    engine = make_engine(problem)
    w = rng.normal(size=engine.data.nnz)
    reference = np.dot(problem["bkg"].reshape(-1)[engine.data.flat_index], w)
    assert engine.background_products(w)["albedo"] == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("rtol", [1e-3, 3e-2])
def test_truncation_error_within_stated_tolerance(problem, rtol):
    exact = make_engine(problem).expectation(problem["image"], {"albedo": 0.0}).contents
    engine = make_engine(problem, rtol=rtol)
    assert engine.response.nnz < make_engine(problem).response.nnz
    truncated = engine.expectation(problem["image"], {"albedo": 0.0}).contents
    # contract: summed |change| over all bins <= rtol * summed expectation (non-negative sky)
    assert np.abs(truncated - exact).sum() <= rtol * exact.sum()
    # the exposure map follows the stored response, so totals stay self-consistent
    assert engine.total_expected(problem["image"], {"albedo": 0.0}) == pytest.approx(truncated.sum(), rel=1e-12)


def test_galactic_and_local_cds_agree(problem):
    engine = make_engine(problem)
    local = engine.expectation(problem["image"], {"albedo": 0.0}).contents
    rebinned = rotate_to_galactic(local, problem["attitudes"], NSIDE_RSP, NSIDE_RSP)
    rsp = ColumnResponse.from_dense(problem["rsp_values"], problem["axes"], u.cm**2, dtype=np.float64)
    gal_rsp = galactic_response(rsp, problem["ccm"], problem["attitudes"], dtype=np.float64, max_memory_mb=0.01,
                                progress=False)
    gal_axes = Axes([gal_rsp.axes["Em"], gal_rsp.axes["Phi"], gal_rsp.axes["PsiChi"]])
    gal_data = Histogram(gal_axes, contents=np.round(rebinned))
    gal_engine = ResponseEngine.from_galactic_response(gal_rsp, data=gal_data, dtype=np.float64)
    gal = gal_engine.expectation(problem["image"]).contents
    np.testing.assert_allclose(gal, rebinned, rtol=1e-10, atol=1e-14 * rebinned.max())
    # counts are conserved by the PsiChi rotation
    assert rebinned.sum() == pytest.approx(local.sum(), rel=1e-12)
    assert gal_engine.log_likelihood(problem["image"]) == pytest.approx(
        stats.poisson.logpmf(np.round(rebinned), rebinned).sum(), rel=1e-10)


def test_psichi_rotation_identity_and_conservation(rng):
    op = psichi_rotation(np.eye(3), 4, 4)
    np.testing.assert_allclose(op.toarray(), np.eye(hp.nside2npix(4)), atol=1e-12)
    op = psichi_rotation(random_attitudes(rng, 1)[0], 4, 8)
    np.testing.assert_allclose(np.asarray(op.sum(axis=0)).ravel(), 1.0, rtol=1e-12)


# ---- bad input ------------------------------------------------------------------------------------
def test_mismatched_phi_axis_names_both_sides(problem):
    rsp = ColumnResponse.from_dense(problem["rsp_values"], problem["axes"], u.cm**2)
    bad = Histogram(data_axes(phi_edges=np.linspace(0, 150, N_PHI + 1)), contents=problem["counts"])
    with pytest.raises(AxisMismatchError, match="Phi"):
        ResponseEngine.from_ccm(rsp, problem["ccm"], data=bad)


def test_wrong_number_of_rows(problem):
    rsp = ColumnResponse.from_dense(problem["rsp_values"], problem["axes"], u.cm**2)
    bad = Histogram(data_axes(n_rows=N_ROWS + 1), contents=np.ones((N_ROWS + 1, N_EM, N_PHI, 48)))
    with pytest.raises(AxisMismatchError, match="ScAtt"):
        ResponseEngine.from_ccm(rsp, problem["ccm"], data=bad)


@pytest.mark.parametrize("value, match", [(-1.0, "negative"), (np.nan, "NaN")])
def test_bad_counts(problem, value, match):
    rsp = ColumnResponse.from_dense(problem["rsp_values"], problem["axes"], u.cm**2)
    counts = problem["counts"].copy()
    counts[1, 0, 2, 5] = value
    with pytest.raises(CosiInputError, match=match):
        ResponseEngine.from_ccm(rsp, problem["ccm"], data=Histogram(data_axes(), contents=counts))


def test_negative_response_rejected(problem):
    values = problem["rsp_values"].copy()
    values[3, 0, 0, 0, 0] = -1e-3
    with pytest.raises(CosiInputError, match="negative"):
        ColumnResponse.from_dense(values, problem["axes"], u.cm**2)


def test_ccm_in_wrong_unit(problem):
    rsp = ColumnResponse.from_dense(problem["rsp_values"], problem["axes"], u.cm**2)
    ccm = Histogram(problem["ccm"].axes, contents=problem["ccm"].contents, unit=u.cm)
    with pytest.raises(CosiInputError, match="CCM unit"):
        ResponseEngine.from_ccm(rsp, ccm)


def test_unknown_background_name(problem):
    engine = make_engine(problem)
    with pytest.raises(CosiInputError, match="unknown background"):
        engine.expectation_at_bins(problem["image"], {"albedoo": 1.0})


def test_zero_expectation_at_a_count_is_an_error_naming_the_bin(problem):
    engine = make_engine(problem)
    with pytest.raises(CosiInputError, match="ScAtt="):
        engine.log_likelihood(np.zeros_like(problem["image"]), {"albedo": 0.0})


def test_negative_background_rejected(problem):
    rsp = ColumnResponse.from_dense(problem["rsp_values"], problem["axes"], u.cm**2)
    bkg = problem["bkg"].copy()
    bkg[0, 1, 1, 1] = -0.5
    with pytest.raises(CosiInputError, match="background 'albedo' has negative"):
        ResponseEngine.from_ccm(rsp, problem["ccm"], data=problem["data"],
                                backgrounds={"albedo": Histogram(data_axes(), contents=bkg)})
