"""Coordinate conversion matrix: agreement with the COSI team's fixtures, sums, I/O and bad input."""
import astropy.units as u
import h5py
import healpy as hp
import numpy as np
import pytest
import sparse
from astropy.coordinates import SkyCoord
from histpy import Histogram

from cosi_imaging_plugin.errors import AxisMismatchError, CosiInputError
from cosi_imaging_plugin.exposure import (
    ExposureTable,
    Orientation,
    attitude_bins,
    check_ccm,
    coordsys_conversion_matrix,
    write_ccm,
)
from cosi_imaging_plugin.geometry import vec_to_lonlat
from cosi_imaging_plugin.io import read_ccm

from synthetic_inputs import circular_orbit

FIX = "image_deconvolution/"


def dense(hist):
    c = hist.contents
    c = c.value if isinstance(c, u.Quantity) else c
    return c.todense() if isinstance(c, sparse.SparseArray) else np.asarray(c)


@pytest.fixture(scope="module")
def fixture_table(fixtures_dir):
    return ExposureTable.read(fixtures_dir / FIX / "exposure_table_test_nside1_ring.fits")


@pytest.mark.parametrize("averaged", [False, True])
def test_scatt_ccm_matches_cosi_fixture(fixtures_dir, fixture_table, averaged):
    ccm = coordsys_conversion_matrix(fixture_table, nside_model=1, nside_response=1,
                                     use_averaged_pointing=averaged)
    ref = read_ccm(fixtures_dir / FIX / f"ccm_scatt_use_averaged_pointing_{averaged}_test.hdf5")
    assert ccm.axes == ref.axes
    assert list(ccm.axes.labels) == ["ScAtt", "lb", "NuLambda"]
    assert ccm.unit == u.s and ref.unit == u.s
    assert ccm.is_sparse
    assert ccm.contents.nnz == ref.contents.nnz == 48
    np.testing.assert_allclose(dense(ccm), dense(ref), rtol=1e-13, atol=1e-13)


def test_scatt_ccm_from_orientation_matches_fixture(fixtures_dir):
    ori = Orientation.read(fixtures_dir / "20280301_first_10sec.ori")
    table = ExposureTable.from_orientation(ori, nside=1, pointing="midpoint", use_livetime=False)
    ccm = coordsys_conversion_matrix(table, 1, 1)
    ref = read_ccm(fixtures_dir / FIX / "ccm_scatt_use_averaged_pointing_False_test.hdf5")
    np.testing.assert_allclose(dense(ccm), dense(ref), rtol=1e-13, atol=1e-13)


def test_time_ccm_matches_cosi_fixture(fixtures_dir):
    ori = Orientation.read(fixtures_dir / "20280301_first_10sec.ori")
    ccm = coordsys_conversion_matrix(ori, 1, 1, binning="time")
    ref = read_ccm(fixtures_dir / FIX / "ccm_time_test.hdf5")
    assert ccm.axes == ref.axes
    assert ccm.axes["Time"].unit == u.s
    np.testing.assert_array_equal(ccm.axes["Time"].edges.value, [1835478000.0, 1835478010.0])
    np.testing.assert_allclose(dense(ccm), dense(ref), rtol=1e-13, atol=1e-13)
    # the start attitude of each interval, not the midpoint: differs from the ScAtt fixture
    scatt = read_ccm(fixtures_dir / FIX / "ccm_scatt_use_averaged_pointing_False_test.hdf5")
    assert np.abs(dense(scatt) - dense(ref)).max() > 1e-3


def test_row_sums_are_exposures(fixture_table):
    ccm = coordsys_conversion_matrix(fixture_table, nside_model=2, nside_response=4)
    assert dense(ccm).shape == (1, 48, 192)
    np.testing.assert_allclose(dense(ccm).sum(axis=2), fixture_table.exposure[0], rtol=1e-13)
    ori = circular_orbit()
    table = ExposureTable.from_orientation(ori, nside=2)
    ccm = coordsys_conversion_matrix(table, nside_model=4, nside_response=2)
    sums = dense(ccm).sum(axis=2)
    np.testing.assert_allclose(sums, np.broadcast_to(table.exposure[:, None], sums.shape), rtol=1e-12)
    np.testing.assert_array_equal(ccm.axes["ScAtt"].edges, np.arange(len(table) + 1))


def test_matches_direct_per_pointing_sum():
    """Independent check: one direction, one attitude at a time, through histpy's interpolation."""
    ori = circular_orbit(n=12)
    table = ExposureTable.from_orientation(ori, nside=1)
    ccm = coordsys_conversion_matrix(table, nside_model=2, nside_response=2)
    values = dense(ccm)
    axis = ccm.axes["NuLambda"]
    j = 17
    n_j = np.array(hp.pix2vec(2, j))
    for b in range(len(table)):
        expected = np.zeros(axis.nbins)
        for k in range(table.num_pointings[b]):
            rot = table.rotation_matrices(b)[k]
            lon, lat = vec_to_lonlat(rot.T @ n_j)
            pixels, weights = axis.get_interp_weights(SkyCoord(lon=lon * u.deg, lat=lat * u.deg,
                                                               frame=axis.coordsys))
            np.add.at(expected, pixels, weights * table.delta_time[b][k])
        np.testing.assert_allclose(values[b, j], expected, rtol=1e-12, atol=1e-12)


def test_nested_model_scheme_is_a_permutation(fixture_table):
    ring = dense(coordsys_conversion_matrix(fixture_table, 2, 1))
    nest = dense(coordsys_conversion_matrix(fixture_table, 2, 1, scheme="nested"))
    np.testing.assert_allclose(nest, ring[:, hp.nest2ring(2, np.arange(48))], rtol=1e-13, atol=1e-13)


def test_time_bins_split_intervals_by_overlap(fixtures_dir):
    ori = Orientation.read(fixtures_dir / "20280301_first_10sec.ori")
    edges = np.array([1835478000.0, 1835478002.5, 1835478010.0]) * u.s
    ccm = coordsys_conversion_matrix(ori, 1, 1, binning="time", time_edges=edges)
    sums = dense(ccm).sum(axis=2)
    np.testing.assert_allclose(sums[0], 2.5, rtol=1e-12)
    np.testing.assert_allclose(sums[1], 7.5, rtol=1e-12)
    one = dense(coordsys_conversion_matrix(ori, 1, 1, binning="time"))
    np.testing.assert_allclose(dense(ccm).sum(axis=0), one[0], rtol=1e-12, atol=1e-13)


def test_earth_occultation_zeroes_pixels_below_the_limb():
    ori = circular_orbit(n=60)
    table = ExposureTable.from_orientation(ori, nside=1)
    ccm = dense(coordsys_conversion_matrix(table, 2, 2, earth_occultation=True))
    free = dense(coordsys_conversion_matrix(table, 2, 2))
    dirs = np.array(hp.pix2vec(2, np.arange(48))).T
    occulted = ori.earth_occulted(dirs)[:-1]  # (intervals, pixels)
    livetime = ori.intervals()[1].to_value(u.s)
    for b in range(len(table)):
        members = np.isin(ori.z_pointing.l.deg[:-1], table.zpointing[b][:, 0])
        visible = livetime[members] @ ~occulted[members]
        np.testing.assert_allclose(ccm[b].sum(axis=1), visible, rtol=1e-12, atol=1e-9)
    assert ccm.sum() < 0.8 * free.sum()  # zenith pointing: a good part of the sky is behind the Earth
    averaged = dense(coordsys_conversion_matrix(table, 2, 2, earth_occultation=True, use_averaged_pointing=True))
    np.testing.assert_allclose(averaged.sum(axis=2), ccm.sum(axis=2), rtol=1e-12, atol=1e-9)


def test_orientation_scatt_and_float32():
    ori = circular_orbit(n=40)
    table = ExposureTable.from_orientation(ori, nside=2)
    direct = coordsys_conversion_matrix(ori, 1, 1, nside_scatt=2, dtype=np.float32)
    assert direct.contents.dtype == np.float32
    np.testing.assert_allclose(dense(direct), dense(coordsys_conversion_matrix(table, 1, 1)), rtol=1e-6)


def test_write_and_read_back(tmp_path, fixture_table):
    ccm = coordsys_conversion_matrix(fixture_table, 1, 2)
    path = tmp_path / "ccm.h5"
    write_ccm(ccm, path)
    with h5py.File(path) as f:
        assert f["hist"].attrs["format"] == "coo" and f["hist"].attrs["unit"] == "s"
        assert f["hist/axes/2"].attrs["coordsys"] == "spacecraftframe"
    back = read_ccm(path)
    assert back.axes == ccm.axes and back.unit == u.s
    np.testing.assert_array_equal(dense(back), dense(ccm))
    check_ccm(back, nside_model=1, nside_response=2)


# -------------------------------------------------------------- bad input
def test_check_ccm_rejects_wrong_nside(fixtures_dir):
    ref = read_ccm(fixtures_dir / FIX / "ccm_time_test.hdf5")
    check_ccm(ref, nside_model=1, nside_response=1)
    with pytest.raises(AxisMismatchError, match="lb NSIDE is 1, expected 2"):
        check_ccm(ref, nside_model=2)
    with pytest.raises(AxisMismatchError, match="NuLambda NSIDE is 1, expected 16"):
        check_ccm(ref, nside_response=16)


def test_ccm_with_wrong_unit_is_rejected(tmp_path, fixtures_dir):
    ref = read_ccm(fixtures_dir / FIX / "ccm_time_test.hdf5")
    wrong = Histogram(ref.axes, contents=ref.contents, unit=u.cm ** 2)
    path = tmp_path / "wrong_unit.h5"
    wrong.write(path)
    with pytest.raises(CosiInputError, match="wrong_unit.h5") as info:
        read_ccm(path)
    assert "cm2" in str(info.value)
    with pytest.raises(CosiInputError, match="unit must be a time"):
        check_ccm(wrong)
    with pytest.raises(CosiInputError, match="unit must be a time"):
        write_ccm(wrong, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_bad_arguments(fixture_table, fixtures_dir):
    ori = Orientation.read(fixtures_dir / "20280301_first_10sec.ori")
    with pytest.raises(CosiInputError, match="binning"):
        coordsys_conversion_matrix(fixture_table, 1, 1, binning="orbit")
    with pytest.raises(CosiInputError, match="nside_model=3"):
        coordsys_conversion_matrix(fixture_table, 3, 1, scheme="nested")
    with pytest.raises(CosiInputError, match="nside=0"):
        coordsys_conversion_matrix(fixture_table, 1, 0)
    with pytest.raises(CosiInputError, match="Earth"):
        coordsys_conversion_matrix(fixture_table, 1, 1, earth_occultation=True)
    with pytest.raises(CosiInputError, match="time binning needs an Orientation"):
        coordsys_conversion_matrix(fixture_table, 1, 1, binning="time")
    with pytest.raises(CosiInputError, match="nside_scatt"):
        coordsys_conversion_matrix(ori, 1, 1)
    with pytest.raises(CosiInputError, match="strictly increasing"):
        coordsys_conversion_matrix(ori, 1, 1, binning="time", time_edges=[5.0, 1.0])
    with pytest.raises(CosiInputError, match="times"):
        coordsys_conversion_matrix(ori, 1, 1, binning="time", time_edges=[0.0, 1.0] * u.m)


@pytest.mark.parametrize("binning, averaged, occultation", [
    ("scatt", False, False), ("scatt", True, False), ("scatt", False, True), ("scatt", True, True),
    ("time", False, True), ("time", True, False),
])
def test_dwell_of_a_pixel_centre_is_its_ccm_column(binning, averaged, occultation):
    """A point source's rows are the CCM of a sky holding only its direction: at a model pixel centre they are
    that pixel's CCM column, for every way of building a CCM (the sums differ only in their order)."""
    orientation = circular_orbit(n=200, step=60.0)
    source = ExposureTable.from_orientation(orientation, nside=4) if binning == "scatt" else orientation
    time_edges = None if binning == "scatt" else orientation.unix_seconds[[0, 70, 150, -1]]
    options = dict(binning=binning, time_edges=time_edges, use_averaged_pointing=averaged,
                   earth_occultation=occultation)
    ccm = dense(coordsys_conversion_matrix(source, nside_model=4, nside_response=2, **options))
    bins = attitude_bins(source, **options)
    assert len(bins) == ccm.shape[0]
    for pixel in (0, 77, 150):
        direction = np.array(hp.pix2vec(4, pixel))
        np.testing.assert_allclose(bins.dwell(direction, nside=2), ccm[:, pixel, :], rtol=1e-12, atol=1e-9)
