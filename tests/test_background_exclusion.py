"""Background norms with an exclusion mask: the data-space bins of a sky region, and the iteration.

A bright point source (about as many counts as the background) over the instrumental template of
``small_setup.py``'s dataset, drawn through the plugin. Fitted on all the data, the background
norm absorbs the source; fitted on the bins clear of the mask, it is unbiased.
"""
import functools

import healpy as hp
import numpy as np
import pytest
import sparse
from astromodels import Model, PointSource, Powerlaw
from astropy.table import Table
from histpy import Histogram

from cosi_imaging_plugin.datasets import COSIDataset
from cosi_imaging_plugin.detection import BackgroundEstimator, ExcludedBins, TSMapEstimator, fit_background_norms
from cosi_imaging_plugin.errors import CosiInputError
from cosi_imaging_plugin.threeml import COSIImagingLike

from small_setup import instrument

SOURCE = (184.56, -5.78)
N_SEEDS = 16


def spectrum(K=1.0):
    return Powerlaw(K=K, index=-2.1, piv=500.0)


@functools.cache
def expected_counts():
    """(base dataset, expected counts of the bright source plus the template at norm 1)."""
    response, ccm, _, template = instrument()
    base = COSIDataset.from_histograms(template, {"instrumental": template}, response, ccm, dtype=np.float64)
    truth = COSIImagingLike("truth", base)
    truth.set_model(Model(PointSource("bright", l=SOURCE[0], b=SOURCE[1], spectral_shape=spectrum(5e-6))))
    return base, np.asarray(truth.get_model_counts().contents)


def draw(seed):
    base, expected = expected_counts()
    counts = np.random.default_rng(seed).poisson(expected).astype(float)
    return base.with_counts(Histogram(base.data_axes, contents=sparse.COO.from_numpy(counts)))


def test_excluded_bins_leave_at_most_the_leakage_of_the_region():
    base, _ = expected_counts()
    engine = base.engine
    axis = engine.model_axes[0]
    mask = np.zeros(axis.npix, dtype=bool)
    mask[hp.query_disc(axis.nside, hp.ang2vec(*SOURCE, lonlat=True), np.radians(15.0), nest=axis.is_nested)] = True
    excluded = ExcludedBins.of_sky_region(engine, mask, leakage=1e-2)
    region = engine.response.fold(engine.mapping.forward(np.repeat(mask[:, None], 3, axis=1).astype(float)))
    kept = ~excluded.excluded(np.arange(region.size))
    assert 0 < excluded.n_excluded < region.size
    assert region.ravel()[kept].sum() <= 1e-2 * region.sum()
    # the cut is the smallest: every excluded bin sees more of the region than any kept one
    assert region.ravel()[~kept].min() >= region.ravel()[kept].max()
    # the kept totals of the template and the kept area, against dense sums
    template = np.asarray(base.backgrounds["instrumental"].contents).reshape(engine.n_rows, -1)
    np.testing.assert_allclose(excluded.kept_template_row_totals(engine, "instrumental"),
                               np.where(kept.reshape(template.shape), template, 0).sum(axis=1), rtol=1e-12)
    fluxes = np.array([1.0, 0.5, 0.25])
    response = engine.response.to_dense().reshape(engine.response.axes[0].nbins, 3, -1)  # [nu, ei, column]
    per_column = np.einsum("nec,e->nc", response, fluxes)
    dense_area = kept.reshape(engine.n_rows, -1).astype(float) @ per_column.T
    np.testing.assert_allclose(excluded.kept_area(engine.response, fluxes), dense_area, rtol=1e-9,
                               atol=1e-12 * dense_area.max())
    np.testing.assert_array_equal(excluded.kept_at_bins(engine),
                                  ~excluded.excluded(engine.data.row * engine.n_columns + engine.data.column))


def test_background_norm_unbiased_with_the_mask_and_biased_without():
    """Pulls of the fitted norm (truth 1) over seeds: with the mask their mean is within 3/sqrt(N) of 0 and
    their spread within 3 standard errors of 1; on all the data the source drags the norm far up."""
    estimator = BackgroundEstimator(spectrum(), radius=20.0)
    halves = np.repeat([0, 1], [50, expected_counts()[0].engine.n_rows - 50])
    masked, grouped, plain = [], [], []
    for seed in range(N_SEEDS):
        data = draw(seed)
        result = estimator.run(data, progress=False)
        assert result.converged and len(result.history) == 2
        peak = result.history[1]
        assert np.degrees(hp.rotator.angdist((peak["l"], peak["b"]), SOURCE, lonlat=True)[0]) < 8.0
        masked.append((result.norms["instrumental"] - 1) / result.errors["instrumental"])
        groups = fit_background_norms(data, result.excluded, {"instrumental": halves})
        grouped.extend((np.array([groups.values["instrumental_g0"], groups.values["instrumental_g1"]]) - 1)
                       / groups.errors["instrumental"])
        everything = fit_background_norms(data)
        plain.append((everything.norms["instrumental"] - 1) / everything.errors["instrumental"])
    for pulls in (np.array(masked), np.array(grouped)):
        assert abs(pulls.mean()) < 3 / np.sqrt(pulls.size), pulls
        assert abs(pulls.std(ddof=1) - 1) < 3 / np.sqrt(2 * (pulls.size - 1)), pulls
    assert np.mean(plain) > 10, plain


def test_the_mask_and_history_are_written_and_the_norms_reach_the_plugin(tmp_path):
    data = draw(0)
    halves = np.repeat([0, 1], [50, data.engine.n_rows - 50])
    result = BackgroundEstimator(spectrum(), radius=20.0).run(data, background_groups={"instrumental": halves},
                                                              progress=False)
    plugin = COSIImagingLike("cosi", data, background_groups={"instrumental": halves})
    result.apply_to(plugin)
    assert plugin.background_norms() == pytest.approx(result.values)
    np.testing.assert_allclose(plugin.background_row_norms()["instrumental"], result.norms["instrumental"])
    with pytest.raises(CosiInputError, match="background_groups"):
        result.apply_to(COSIImagingLike("plain", data))
    result.write(tmp_path / "background.h5")
    mask = Histogram.open(tmp_path / "background.h5", name="sky_mask")
    np.testing.assert_array_equal(np.asarray(mask.contents) > 0, result.excluded.sky_mask)
    history = Table.read(tmp_path / "background.h5", path="history")
    assert list(history["iteration"]) == [0, 1]
    assert history["instrumental_g1_norm"][1] == pytest.approx(result.values["instrumental_g1"])
    assert history["instrumental_g1_norm_err"][1] == pytest.approx(result.errors["instrumental"][1])


def test_a_ts_map_clear_of_the_mask_does_not_see_the_source():
    data = draw(3)
    result = BackgroundEstimator(spectrum(), radius=20.0).run(data, progress=False)
    ts = TSMapEstimator(spectrum(), nside=8).run(data, background_norms=result.norms, excluded=result.excluded,
                                                 progress=False)
    on_all = TSMapEstimator(spectrum(), nside=8).run(data, background_norms=result.norms, progress=False)
    far = hp.query_disc(8, hp.ang2vec(*SOURCE, lonlat=True), np.radians(60.0))
    outside = np.setdiff1d(np.arange(hp.nside2npix(8)), far)
    assert np.nanmax(on_all.values("sqrt_ts")[outside]) > 5
    assert np.nanmax(ts.values("sqrt_ts")[outside]) < 5


def test_bad_settings_are_named():
    data = draw(0)
    with pytest.raises(CosiInputError, match="radius"):
        BackgroundEstimator(spectrum(), radius=0.0)
    with pytest.raises(CosiInputError, match="leakage"):
        BackgroundEstimator(spectrum(), leakage=1.5)
    with pytest.raises(CosiInputError, match="instrumental"):
        fit_background_norms(data, background_groups={"instrumental": np.zeros(3, dtype=int)})
    with pytest.raises(CosiInputError, match="unknown background 'albedo'"):
        fit_background_norms(data, background_groups={"albedo": np.zeros(data.engine.n_rows, dtype=int)})
    with pytest.raises(CosiInputError, match="sky mask of shape"):
        ExcludedBins.of_sky_region(data.engine, np.zeros(5, dtype=bool))
