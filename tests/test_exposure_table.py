"""Spacecraft-attitude exposure table: grouping, FITS I/O, agreement with the COSI fixture."""
import astropy.units as u
import healpy as hp
import numpy as np
import pytest
from astropy.io import fits

from cosi_imaging_plugin.errors import CosiFileError, CosiInputError
from cosi_imaging_plugin.exposure import ExposureTable, Orientation, attitude_map

from synthetic_inputs import circular_orbit


def orbit(n=200, **kwargs):
    return circular_orbit(n=n, t0=1.9e9, **kwargs)


FIXTURE_TABLE = "image_deconvolution/exposure_table_test_nside1_ring.fits"
FIXTURE_COLUMNS = ["scatt_binning_index", "exposure", "num_pointings", "bkg_group", "healpix_index_z_pointing",
                   "healpix_index_x_pointing", "delta_time", "zpointing_l", "zpointing_b", "xpointing_l",
                   "xpointing_b", "zpointing_averaged_l", "zpointing_averaged_b", "xpointing_averaged_l",
                   "xpointing_averaged_b"]


def test_read_fixture(fixtures_dir):
    table = ExposureTable.read(fixtures_dir / FIXTURE_TABLE)
    assert len(table) == 1
    assert table.nside == 1 and table.scheme == "ring"
    assert table.healpix_index_z[0] == 2 and table.healpix_index_x[0] == 0
    assert table.num_pointings[0] == 10
    assert table.exposure[0] == 9.999999999998366
    assert table.zpointing[0].shape == (10, 2) and table.delta_time[0].shape == (10,)
    assert table.zpointing[0][0, 0] == 221.87023389967254
    assert table.xpointing_averaged[0, 1] == 72.87963751322992
    assert not table.has_earth_info


def test_fixture_is_the_10sec_orientation_with_dc2_conventions(fixtures_dir):
    """The fixture uses interval midpoints and astropy elapsed times: we reproduce it."""
    fixture = ExposureTable.read(fixtures_dir / FIXTURE_TABLE)
    ori = Orientation.read(fixtures_dir / "20280301_first_10sec.ori")
    table = ExposureTable.from_orientation(ori, nside=1, pointing="midpoint", use_livetime=False)
    assert len(table) == len(fixture) == 1
    assert (table.nside, table.scheme) == (fixture.nside, fixture.scheme)
    np.testing.assert_array_equal(table.healpix_index_z, fixture.healpix_index_z)
    np.testing.assert_array_equal(table.healpix_index_x, fixture.healpix_index_x)
    np.testing.assert_array_equal(table.num_pointings, fixture.num_pointings)
    # bit-identical times: same astropy Time differences
    np.testing.assert_array_equal(table.delta_time[0], fixture.delta_time[0])
    np.testing.assert_array_equal(table.exposure, fixture.exposure)
    # the COSI tool round-trips pointings through a rotation matrix: a few ulp apart
    for name in ("zpointing", "xpointing"):
        np.testing.assert_allclose(getattr(table, name)[0], getattr(fixture, name)[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(getattr(table, name + "_averaged"), getattr(fixture, name + "_averaged"),
                                   rtol=0, atol=1e-12)


def test_default_conventions_use_start_attitude_and_livetime(fixtures_dir):
    ori = Orientation.read(fixtures_dir / "20280301_first_10sec.ori")
    table = ExposureTable.from_orientation(ori, nside=1)
    assert len(table) == 1 and table.exposure[0] == 10.0
    np.testing.assert_array_equal(table.zpointing[0][:, 0], ori.z_pointing.l.deg[:-1])
    np.testing.assert_array_equal(table.xpointing[0][:, 1], ori.x_pointing.b.deg[:-1])
    assert table.has_earth_info
    # the 2 s file covers another time: it does not give the fixture's 10 pointings
    other = ExposureTable.from_orientation(Orientation.read(fixtures_dir / "20280301_2s.ori"), nside=1)
    assert other.num_pointings.sum() == 2


def test_grouping_first_seen_order_and_totals():
    ori = orbit()
    nside = 2
    table = ExposureTable.from_orientation(ori, nside=nside)
    assert len(table) > 5
    assert table.num_pointings.sum() == len(ori) - 1
    np.testing.assert_allclose(table.exposure.sum(), ori.total_livetime.to_value(u.s), rtol=1e-12)
    # first-seen order: the first interval of each bin comes later for later bins
    t0 = ori.unix_seconds[:-1]
    first_times = []
    for b in range(len(table)):
        z, x = table.zpointing[b], table.xpointing[b]
        assert np.all(hp.ang2pix(nside, z[:, 0], z[:, 1], lonlat=True) == table.healpix_index_z[b])
        assert np.all(hp.ang2pix(nside, x[:, 0], x[:, 1], lonlat=True) == table.healpix_index_x[b])
        first_times.append(t0[np.flatnonzero(ori.z_pointing.l.deg[:-1] == z[0, 0])[0]])
    assert np.all(np.diff(first_times) > 0)
    pairs = set(zip(table.healpix_index_z.tolist(), table.healpix_index_x.tolist()))
    assert len(pairs) == len(table)  # each pair once, even when the orbit revisits it
    # exposure-weighted mean z pointing lies inside the bin's pixel
    assert np.all(hp.ang2pix(nside, table.zpointing_averaged[:, 0], table.zpointing_averaged[:, 1], lonlat=True)
                  == table.healpix_index_z)


def test_mean_attitudes_are_the_averaged_pointings():
    table = ExposureTable.from_orientation(orbit(), nside=2)
    attitudes = table.mean_attitudes()
    assert attitudes.shape == (len(table), 3, 3)
    for b in range(len(table)):
        np.testing.assert_array_equal(attitudes[b], table.rotation_matrices(b, averaged=True)[0])
    # proper rotations whose z column points at the averaged z pointing
    np.testing.assert_allclose(np.linalg.det(attitudes), 1.0, atol=1e-12)
    z = hp.ang2vec(table.zpointing_averaged[:, 0], table.zpointing_averaged[:, 1], lonlat=True)
    np.testing.assert_allclose(attitudes[:, :, 2], z, atol=1e-12)


def test_revisited_attitude_joins_its_first_bin():
    ori = orbit(n=400, step=30.0)  # two orbits: every attitude bin is visited twice
    table = ExposureTable.from_orientation(ori, nside=1)
    once = ExposureTable.from_orientation(ori.select(None, ori.unix_seconds[190]), nside=1)
    assert len(table) == len(once)
    np.testing.assert_array_equal(table.healpix_index_z, once.healpix_index_z)
    assert np.all(table.num_pointings > once.num_pointings)


def test_thresholds_drop_and_renumber_bins():
    ori = orbit()
    full = ExposureTable.from_orientation(ori, nside=4)
    cut = np.median(full.exposure)
    table = ExposureTable.from_orientation(ori, nside=4, min_exposure=cut, min_num_pointings=2)
    keep = (full.exposure >= cut) & (full.num_pointings >= 2)
    assert 0 < len(table) == keep.sum() < len(full)
    np.testing.assert_array_equal(table.scatt_binning_index, np.arange(len(table)))
    np.testing.assert_array_equal(table.exposure, full.exposure[keep])


def test_start_stop_select_the_time_range():
    ori = orbit()
    t = ori.unix_seconds
    table = ExposureTable.from_orientation(ori, nside=2, start=t[10], stop=t[50])
    assert table.num_pointings.sum() == 40


def test_write_read_round_trip(tmp_path, fixtures_dir):
    table = ExposureTable.from_orientation(orbit(), nside=2, scheme="nested")
    path = tmp_path / "table.fits"
    table.write(path)
    back = ExposureTable.read(path)
    assert (back.nside, back.scheme, len(back)) == (2, "nested", len(table))
    for name in ("healpix_index_z", "healpix_index_x", "exposure", "num_pointings", "zpointing_averaged",
                 "xpointing_averaged", "bkg_group"):
        np.testing.assert_array_equal(getattr(back, name), getattr(table, name), err_msg=name)
    for name in ("zpointing", "xpointing", "delta_time", "earth_zenith", "altitude"):
        for a, b in zip(getattr(back, name), getattr(table, name)):
            np.testing.assert_array_equal(a, b, err_msg=name)
    with fits.open(path) as hdul:
        hdu = hdul["EXPOSURETABLE"]
        assert hdu.header["NSIDE"] == 2 and hdu.header["SCHEME"] == "nested"
        assert hdu.columns.names[:len(FIXTURE_COLUMNS)] == FIXTURE_COLUMNS
        assert hdu.columns["delta_time"].format.startswith("PD")
    with fits.open(fixtures_dir / FIXTURE_TABLE) as hdul:
        assert hdul["EXPOSURETABLE"].columns.names == FIXTURE_COLUMNS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.fits"]


def test_fixture_rewrites_identically(tmp_path, fixtures_dir):
    fixture = ExposureTable.read(fixtures_dir / FIXTURE_TABLE)
    fixture.write(tmp_path / "copy.fits")
    with fits.open(fixtures_dir / FIXTURE_TABLE) as a, fits.open(tmp_path / "copy.fits") as b:
        for name in FIXTURE_COLUMNS:
            for x, y in zip(a[1].data[name], b[1].data[name]):
                np.testing.assert_array_equal(x, y, err_msg=name)


def test_attitude_map_sums_to_exposure():
    ori = orbit()
    hist = attitude_map(ori, nside=2)
    assert list(hist.axes.labels) == ["z", "x"]
    assert hist.unit == u.s
    np.testing.assert_allclose(hist.contents.sum().to_value(u.s), ori.total_livetime.to_value(u.s), rtol=1e-12)


# -------------------------------------------------------------- bad input
def test_bad_nside_and_scheme():
    ori = orbit(n=20)
    with pytest.raises(CosiInputError, match="nside=3 is not a valid HEALPix NSIDE for the nested"):
        ExposureTable.from_orientation(ori, nside=3, scheme="nested")
    with pytest.raises(CosiInputError, match="nside=0"):
        ExposureTable.from_orientation(ori, nside=0)
    with pytest.raises(CosiInputError, match="integer"):
        ExposureTable.from_orientation(ori, nside=2.0)
    with pytest.raises(CosiInputError, match="scheme"):
        ExposureTable.from_orientation(ori, nside=2, scheme="galactic")
    with pytest.raises(CosiInputError, match="pointing"):
        ExposureTable.from_orientation(ori, nside=2, pointing="end")
    with pytest.raises(CosiInputError, match="no ScAtt bin passes"):
        ExposureTable.from_orientation(ori, nside=2, min_exposure=1e9)
    with pytest.raises(CosiInputError, match="Orientation"):
        ExposureTable.from_orientation("file.ori", nside=2)


def test_read_rejects_bad_files(tmp_path, fixtures_dir):
    with pytest.raises(CosiFileError, match="cannot open"):
        ExposureTable.read(tmp_path / "absent.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="K", array=np.arange(2))], name="OTHER")]).writeto(tmp_path / "other.fits")
    with pytest.raises(CosiFileError, match="no EXPOSURETABLE HDU"):
        ExposureTable.read(tmp_path / "other.fits")
    # drop a column from the fixture
    with fits.open(fixtures_dir / FIXTURE_TABLE) as hdul:
        hdu = hdul["EXPOSURETABLE"]
        cols = [c for c in hdu.columns if c.name != "xpointing_b"]
        bad = fits.BinTableHDU.from_columns(cols, header=hdu.header, name="EXPOSURETABLE")
        fits.HDUList([fits.PrimaryHDU(), bad]).writeto(tmp_path / "missing.fits")
        hdr = hdu.header.copy()
        hdr["NSIDE"] = 3
        hdr["SCHEME"] = "nested"
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(hdu.columns, header=hdr,
                                                                       name="EXPOSURETABLE")]
                     ).writeto(tmp_path / "badnside.fits")
        hdr = hdu.header.copy()
        del hdr["NSIDE"]
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(hdu.columns, header=hdr,
                                                                       name="EXPOSURETABLE")]
                     ).writeto(tmp_path / "nonside.fits")
    with pytest.raises(CosiFileError, match="missing.fits: EXPOSURETABLE has no column xpointing_b"):
        ExposureTable.read(tmp_path / "missing.fits")
    with pytest.raises(CosiFileError, match="badnside.fits.*not a valid HEALPix NSIDE"):
        ExposureTable.read(tmp_path / "badnside.fits")
    with pytest.raises(CosiFileError, match="header has no NSIDE"):
        ExposureTable.read(tmp_path / "nonside.fits")


def test_constructor_checks_consistency():
    with pytest.raises(CosiInputError, match="exposure does not equal"):
        ExposureTable(1, "ring", [0], [1], [[[0.0, 0.0]]], [[[90.0, 0.0]]], [[1.0]], exposure=[2.0])
    with pytest.raises(CosiInputError, match="xpointing\\[0\\] has 2 entries"):
        ExposureTable(1, "ring", [0], [1], [[[0.0, 0.0]]], [[[90.0, 0.0], [91.0, 0.0]]], [[1.0]])
    with pytest.raises(CosiInputError, match="outside"):
        ExposureTable(1, "ring", [12], [1], [[[0.0, 0.0]]], [[[90.0, 0.0]]], [[1.0]])
