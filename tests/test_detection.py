"""Multiscale detection: peaks, merging across scales, iteration, the source table and its model.

The sky of the detection tutorial, two point sources and a Gaussian of sigma 10 deg over the
instrumental background, on ``small_setup.py``'s dataset (NSIDE 4 response, NSIDE 8 model grid,
a CCM of averaged pointings: point sources on the grid), drawn through the plugin.
"""
import functools

import healpy as hp
import numpy as np
import pytest
import sparse
from astromodels import ExtendedSource, Gaussian_on_sphere, Model, PointSource, Powerlaw
from histpy import Histogram
from threeML import DataList, JointLikelihood

from cosi_imaging_plugin.datasets import COSIDataset
from cosi_imaging_plugin.detection import DetectionTable, SourceDetector, local_maxima, scaled_spectrum
from cosi_imaging_plugin.errors import CosiInputError
from cosi_imaging_plugin.threeml import COSIImagingLike

from point_setup import icrs_of_galactic
from small_setup import instrument

INDEX, PIVOT = -2.1, 500.0
#: (l, b) of the injected sources and their scale (0: point).
POINTS = [(184.56, -5.78), (300.0, 40.0)]
BLOB = (30.0, -30.0, 10.0)


def spectrum(K=1.0):
    return Powerlaw(K=K, index=INDEX, piv=PIVOT)


def sky(K_point=1e-5, K_blob=4e-5):
    sources = [PointSource(f"p{i}", l=lon, b=lat, spectral_shape=spectrum(K_point))
               for i, (lon, lat) in enumerate(POINTS)]
    ra, dec = icrs_of_galactic(BLOB[0], BLOB[1])
    sources.append(ExtendedSource("blob", spatial_shape=Gaussian_on_sphere(lon0=ra, lat0=dec, sigma=BLOB[2]),
                                  spectral_shape=spectrum(K_blob)))
    return sources


def angular_distance(a, b):
    return float(np.degrees(hp.rotator.angdist(a, b, lonlat=True))[0])


@functools.cache
def base_dataset():
    response, ccm, _, template = instrument()
    return COSIDataset.from_histograms(template, {"instrumental": template}, response, ccm, dtype=np.float64)


def detect(seed):
    """(detections, dataset) of one Poisson draw of the sky."""
    dataset = base_dataset()
    truth = COSIImagingLike("truth", dataset)
    truth.set_model(Model(*sky()))
    expected = np.asarray(truth.get_model_counts().contents)
    counts = np.random.default_rng(seed).poisson(expected).astype(float)
    data = dataset.with_counts(Histogram(dataset.data_axes, contents=sparse.COO.from_numpy(counts)))
    detector = SourceDetector(spectrum(), scales=(0.0, 10.0), threshold=5.0)
    return detector.run(data, progress=False), data


def check_detections(table):
    """Every injected source is found (a point within 1.5 model pixels at any scale, the blob within its sigma at
    its own scale) and nothing else above 5 sigma."""
    pixel = np.degrees(hp.nside2resol(8))
    matched = set()
    for row in table:
        position = (row["l"], row["b"])
        near_points = [i for i, p in enumerate(POINTS) if angular_distance(position, p) < 1.5 * pixel]
        if near_points:
            matched.add(near_points[0])
            continue
        assert angular_distance(position, BLOB[:2]) < BLOB[2] and row["scale"] == BLOB[2], dict(row)
        matched.add("blob")
    assert matched == {0, 1, "blob"}, table


def test_the_tutorial_sky_is_found(tmp_path):
    table, data = detect(seed=1)
    check_detections(table)
    assert isinstance(table, DetectionTable)
    assert np.all(table["sqrt_ts"] >= 5.0)
    model = table.to_model()
    assert len(model.sources) == len(table)
    # the model fits: 3ML moves the norms little from the detection's
    plugin = COSIImagingLike("cosi", data)
    for source in model.sources.values():
        for parameter in source.parameters.values():
            parameter.fix = True
        source.spectrum.main.shape.K.free = True
    jl = JointLikelihood(model, DataList(plugin), verbose=False)
    jl.fit(quiet=True)
    table.write(tmp_path / "sources.ecsv")
    back = DetectionTable.read(tmp_path / "sources.ecsv")
    assert sorted(back.to_model().sources) == sorted(model.sources)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 12))
def test_the_tutorial_sky_is_found_for_ten_seeds(seed):
    check_detections(detect(seed)[0])


def test_local_maxima_on_the_sphere():
    nside = 8
    values = np.zeros(hp.nside2npix(nside))
    values[[100, 500]] = [3.0, 7.0]
    values[hp.get_all_neighbours(nside, 500)] = 6.0
    values[10] = np.nan
    np.testing.assert_array_equal(local_maxima(values, nside, threshold=2.0), [500, 100])
    assert local_maxima(values, nside, threshold=5.0).tolist() == [500]


def test_scaled_spectrum_multiplies_the_normalization_only():
    shape = Powerlaw(K=2e-3, index=-2.0, piv=100.0)
    scaled = scaled_spectrum(shape, 0.5)
    assert scaled.K.value == pytest.approx(1e-3) and scaled.index.value == -2.0
    assert shape.K.value == pytest.approx(2e-3)
    energies = np.array([100.0, 1000.0])
    np.testing.assert_allclose(scaled(energies), 0.5 * shape(energies))


def test_detector_rejects_bad_settings():
    with pytest.raises(CosiInputError, match="extended kernel"):
        SourceDetector(spectrum(), kernel="box")
    with pytest.raises(CosiInputError, match="scales"):
        SourceDetector(spectrum(), scales=(-1.0,))
    empty = DetectionTable(names=["name"], dtype=["U8"])
    with pytest.raises(CosiInputError, match="no spectrum"):
        empty.to_model()
