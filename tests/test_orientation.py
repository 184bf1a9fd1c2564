"""Orientation (.ori) reading, writing and attitude geometry."""
import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.time import Time

from cosi_imaging_plugin.errors import CosiFileError, CosiInputError
from cosi_imaging_plugin.exposure import Orientation
from cosi_imaging_plugin.geometry import EARTH_RADIUS_KM, rotation_from_axes
from cosi_imaging_plugin.io.ori_file import OriRecords, read_ori, write_ori

ROW = "OG {t} 68.44034002307066 44.61117227945379 -21.559659976929343 44.61117227945379 550.0 0.0 0.0 1.0"


def _ori_text(rows, header="Type OrientationsGalactic", end="EN"):
    lines = [header] + list(rows) + ([end] if end else [])
    return "\n".join(lines) + "\n"


def _write(tmp_path, text, name="test.ori"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _good_rows(n=3):
    return [ROW.format(t=1835487300.0 + i) for i in range(n)]


# ---------------------------------------------------------------- fixtures
def test_read_10sec_fixture(fixtures_dir):
    ori = Orientation.read(fixtures_dir / "20280301_first_10sec.ori")
    assert len(ori) == 11
    assert ori.unix_seconds[0] == 1835478000.0 and ori.unix_seconds[-1] == 1835478010.0
    assert isinstance(ori.time, Time) and ori.time.format == "unix"
    # OG t x_b x_l z_b z_l: latitude first in the file
    assert ori.x_pointing.frame.name == "galactic"
    assert ori.x_pointing[0].b.deg == 73.14907746670937
    assert ori.x_pointing[0].l.deg == 41.85821768724895
    assert ori.z_pointing[3].b.deg == 17.012608918687327
    assert ori.z_pointing[3].l.deg == 221.93035532675577
    assert ori.altitude.unit == u.km and np.all(ori.altitude.value == 0.0)
    assert ori.earth_zenith.frame.name == "galactic"
    assert ori.livetime.unit == u.s
    np.testing.assert_array_equal(ori.livetime.value, [1.0] * 10 + [0.0])
    assert ori.total_livetime == 10.0 * u.s


def test_read_2s_fixture_and_intervals(fixtures_dir):
    ori = Orientation.read(fixtures_dir / "20280301_2s.ori")
    assert len(ori) == 3
    dt, livetime = ori.intervals()
    assert dt.unit == u.s and livetime.unit == u.s
    assert dt.shape == (2,) and livetime.shape == (2,)
    # elapsed time comes from astropy Time differences: 1 s up to their ~1e-11 s rounding
    np.testing.assert_allclose(dt.value, 1.0, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(livetime.value, [1.0, 1.0])


def test_rotation_matrices_columns_are_axes(fixtures_dir):
    ori = Orientation.read(fixtures_dir / "20280301_first_10sec.ori")
    rot = ori.rotation_matrices()
    assert rot.shape == (11, 3, 3)
    x = ori.x_pointing.cartesian.xyz.value.T
    z = ori.z_pointing.cartesian.xyz.value.T
    np.testing.assert_allclose(rot[:, :, 0], x, atol=1e-12)
    np.testing.assert_allclose(rot[:, :, 2], z, atol=1e-12)
    np.testing.assert_allclose(rot[:, :, 1], np.cross(z, x), atol=1e-12)
    np.testing.assert_allclose(np.einsum("kji,kjl->kil", rot, rot), np.broadcast_to(np.eye(3), rot.shape),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)


def test_rotation_from_axes_orthogonalises_like_markley():
    # Slightly non-orthogonal axes (as averaged pointings are) still give a proper rotation
    x = np.array([1.0, 1e-6, 0.0])
    z = np.array([0.0, 0.0, 1.0])
    rot = rotation_from_axes(x / np.linalg.norm(x), z)
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-14)
    np.testing.assert_allclose(rot[:, 2], z, atol=1e-6)


def test_to_spacecraft_axes_land_on_frame_axes(fixtures_dir):
    ori = Orientation.read(fixtures_dir / "20280301_first_10sec.ori")
    sc = ori.to_spacecraft(ori.z_pointing[0])
    assert sc.shape == (11,)
    assert sc.frame.name == "spacecraftframe"
    assert abs(sc[0].lat.deg - 90.0) < 1e-9
    # the attitude moves ~0.06 deg/s: the first z axis drifts away from +z
    assert 0.4 < 90.0 - sc[-1].lat.deg < 0.8
    vec = ori.to_spacecraft_vectors(ori.x_pointing[0])
    np.testing.assert_allclose(vec[0], [1.0, 0.0, 0.0], atol=1e-12)
    # y = z cross x lands on (0, 1, 0), i.e. lon 90 deg
    y = np.cross(ori.z_pointing[0].cartesian.xyz.value, ori.x_pointing[0].cartesian.xyz.value)
    sc_y = ori.to_spacecraft(y)
    assert abs(sc_y[0].lon.deg - 90.0) < 1e-9 and abs(sc_y[0].lat.deg) < 1e-9


def test_to_spacecraft_latitude_is_90_minus_polar_angle(fixtures_dir):
    ori = Orientation.read(fixtures_dir / "20280301_2s.ori")
    dirs = SkyCoord(l=[10.0, 200.0, 300.0] * u.deg, b=[-40.0, 5.0, 70.0] * u.deg, frame="galactic")
    sc = ori.to_spacecraft(dirs)
    assert sc.shape == (3, 3)
    z = ori.z_pointing.cartesian.xyz.value.T
    polar = np.degrees(np.arccos(np.clip(z @ dirs.cartesian.xyz.value, -1, 1)))
    np.testing.assert_allclose(sc.lat.deg, 90.0 - polar, atol=1e-9)
    # an ICRS input gives the same answer
    np.testing.assert_allclose(ori.to_spacecraft(dirs.icrs).lat.deg, sc.lat.deg, atol=1e-9)


def test_write_read_round_trip_is_exact(fixtures_dir, tmp_path):
    ori = Orientation.read(fixtures_dir / "20280301_first_10sec.ori")
    out = tmp_path / "copy.ori"
    ori.write(out)
    text = out.read_text().splitlines()
    assert text[0] == "Type OrientationsGalactic" and text[-1] == "EN" and text[1].startswith("OG ")
    back = Orientation.read(out)
    for name in ("_t", "_x_l", "_x_b", "_z_l", "_z_b", "_alt", "_zen_l", "_zen_b", "_livetime"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ori, name), err_msg=name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.ori"]


def test_select(fixtures_dir):
    ori = Orientation.read(fixtures_dir / "20280301_first_10sec.ori")
    sub = ori.select(1835478002.0, 1835478005.0)
    np.testing.assert_array_equal(sub.unix_seconds, [1835478002.0, 1835478003.0, 1835478004.0, 1835478005.0])
    assert sub.total_livetime == 3.0 * u.s
    sub2 = ori.select(Time(1835478002.5, format="unix"), None)
    assert sub2.unix_seconds[0] == 1835478003.0 and len(sub2) == 8
    with pytest.raises(CosiInputError, match="no attitude sample"):
        ori.select(0.0, 1.0)
    with pytest.raises(CosiInputError, match="after"):
        ori.select(1835478005.0, 1835478002.0)


def test_earth_occultation_limb():
    # zenith at (l, b) = (0, 0), 550 km: the limb is 180 - asin(R/(R+h)) ~ 113 deg from zenith
    n = 2
    ori = Orientation(np.array([0.0, 10.0]),
                      SkyCoord(l=[90.0] * n * u.deg, b=[0.0] * n * u.deg, frame="galactic"),
                      SkyCoord(l=[0.0] * n * u.deg, b=[0.0] * n * u.deg, frame="galactic"),
                      altitude=[550.0, 550.0] * u.km,
                      earth_zenith=SkyCoord(l=[0.0] * n * u.deg, b=[0.0] * n * u.deg, frame="galactic"))
    limb = 180.0 - np.degrees(np.arcsin(EARTH_RADIUS_KM / (EARTH_RADIUS_KM + 550.0)))
    assert 112.5 < limb < 113.5
    dirs = SkyCoord(l=[0.0, limb - 0.1, limb + 0.1, 180.0] * u.deg, b=[0.0] * 4 * u.deg, frame="galactic")
    occ = ori.earth_occulted(dirs)
    assert occ.shape == (2, 4)
    np.testing.assert_array_equal(occ[0], [False, False, True, True])


def test_attitude_only_file(tmp_path):
    rows = [f"OG {1000.0 + 2 * i} 0.0 0.0 90.0 0.0" for i in range(4)]  # x on (0,0), z at the pole
    ori = Orientation.read(_write(tmp_path, _ori_text(rows)))
    assert not ori.has_earth_info and ori.altitude is None
    np.testing.assert_allclose(ori.intervals()[1].value, [2.0, 2.0, 2.0], atol=1e-9)
    with pytest.raises(CosiInputError, match="Earth"):
        ori.earth_occulted(SkyCoord(l=0 * u.deg, b=0 * u.deg, frame="galactic"))
    ori.write(tmp_path / "six.ori")
    written = (tmp_path / "six.ori").read_text().splitlines()[1].split()
    assert written[0] == "OG" and [float(v) for v in written[1:]] == [float(v) for v in rows[0].split()[1:]]
    with_livetime = Orientation(ori.time, ori.x_pointing, ori.z_pointing, livetime=[1.0] * 4 * u.s)
    with pytest.raises(CosiInputError, match="livetime"):
        with_livetime.write(tmp_path / "lost.ori")
    assert not (tmp_path / "lost.ori").exists()


# -------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad_row, match", [
    ("OG 1835487302.0 68.3 44.6 -21.7 44.6 0.0 0.0 0.0", "expected 10 fields"),
    ("OG 1835487302.0 68.3 44.6 -21.7 44.6 0.0 0.0 abc 1.0", "cannot parse"),
    ("OG 1835487302.0 68.3 44.6 nan 44.6 0.0 0.0 0.0 1.0", "NaN"),
    ("XX 1835487302.0 68.3 44.6 -21.7 44.6 0.0 0.0 0.0 1.0", "'OG'"),
    ("OG 1835487300.5 68.3 44.6 -21.7 44.6 0.0 0.0 0.0 1.0", "does not increase"),
    ("OG 1835487302.0 68.3 44.6 68.3 44.6 0.0 0.0 0.0 1.0", "not perpendicular"),
    ("OG 1835487302.0 68.3 44.6 -21.7 44.6 0.0 0.0 0.0 -1.0", None),  # last row: livetime unused
    ("OG 1835487302.0 95.0 44.6 -21.7 44.6 0.0 0.0 0.0 1.0", "outside"),
])
def test_malformed_row_names_file_and_line(tmp_path, bad_row, match):
    path = _write(tmp_path, _ori_text(_good_rows(2) + [bad_row]))
    if match is None:
        assert len(Orientation.read(path)) == 3
        return
    with pytest.raises(CosiFileError, match=match) as info:
        Orientation.read(path)
    assert f"{path}:4" in str(info.value)


def test_negative_livetime_is_rejected(tmp_path):
    rows = _good_rows(3)
    rows[0] = rows[0].rsplit(" ", 1)[0] + " -1.0"
    with pytest.raises(CosiFileError, match=r"test.ori:2: negative livetime"):
        Orientation.read(_write(tmp_path, _ori_text(rows)))


def test_unknown_type(tmp_path):
    with pytest.raises(CosiFileError, match=r"test.ori:1: unsupported orientation type 'OrientationsEquatorial'"):
        Orientation.read(_write(tmp_path, _ori_text(_good_rows(), header="Type OrientationsEquatorial")))
    with pytest.raises(CosiFileError, match="expected 'Type OrientationsGalactic'"):
        Orientation.read(_write(tmp_path, _ori_text(_good_rows(), header="OG 1 2 3")))


def test_missing_end_is_an_error_unless_allowed(tmp_path):
    path = _write(tmp_path, _ori_text(_good_rows(), end=None))
    with pytest.raises(CosiFileError, match="no closing 'EN'"):
        Orientation.read(path)
    with pytest.warns(UserWarning, match="truncated"):
        ori = Orientation.read(path, allow_missing_end=True)
    assert len(ori) == 3


def test_text_after_end(tmp_path):
    path = _write(tmp_path, _ori_text(_good_rows()) + ROW.format(t=1.0) + "\n")
    with pytest.raises(CosiFileError, match=r"test.ori:6: text after the closing 'EN'"):
        Orientation.read(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(CosiFileError, match="cannot read"):
        Orientation.read(tmp_path / "absent.ori")
    with pytest.raises(CosiFileError, match="empty"):
        Orientation.read(_write(tmp_path, ""))
    with pytest.raises(CosiFileError, match="no 'OG' rows"):
        Orientation.read(_write(tmp_path, _ori_text([])))


def test_constructor_validation():
    sky = SkyCoord(l=[0.0, 0.0] * u.deg, b=[0.0, 0.0] * u.deg, frame="galactic")
    pole = SkyCoord(l=[0.0, 0.0] * u.deg, b=[90.0, 90.0] * u.deg, frame="galactic")
    with pytest.raises(CosiInputError, match="strictly increasing"):
        Orientation([5.0, 5.0], pole, sky)
    with pytest.raises(CosiInputError, match="SkyCoord"):
        Orientation([0.0, 1.0], np.zeros((2, 2)), sky)
    with pytest.raises(CosiInputError, match="shape"):
        Orientation([0.0, 1.0, 2.0], pole, sky)
    with pytest.raises(CosiInputError, match="not perpendicular"):
        Orientation([0.0, 1.0], sky, sky)
    with pytest.raises(CosiInputError, match="livetime contains NaN"):
        Orientation([0.0, 1.0], pole, sky, livetime=[1.0, np.nan] * u.s)
    ori = Orientation(Time([0.0, 1.0], format="unix"), pole, sky.icrs)
    np.testing.assert_allclose(ori.z_pointing.b.deg, 0.0, atol=1e-9)
    np.testing.assert_allclose((ori.z_pointing.l.deg + 180.0) % 360.0 - 180.0, 0.0, atol=1e-9)


# ------------------------------------------------------------ .ori file layer
_RECORD_FIELDS = ("time", "x_lon", "x_lat", "z_lon", "z_lat", "altitude", "zenith_lon", "zenith_lat", "livetime")


def test_read_ori_write_ori_round_trip_is_exact(fixtures_dir, tmp_path):
    records = read_ori(fixtures_dir / "20280301_first_10sec.ori")
    assert isinstance(records, OriRecords) and len(records) == 11 and records.has_earth_info
    write_ori(tmp_path / "copy.ori", records)
    back = read_ori(tmp_path / "copy.ori")
    for name in _RECORD_FIELDS:
        np.testing.assert_array_equal(getattr(back, name), getattr(records, name), err_msg=name)
        assert getattr(back, name).dtype == np.float64
    # the same numbers as the Orientation built on them
    ori = Orientation.read(fixtures_dir / "20280301_first_10sec.ori")
    np.testing.assert_array_equal(ori.unix_seconds, back.time)
    np.testing.assert_array_equal(ori.x_pointing.b.deg, back.x_lat)
    with pytest.raises(FileExistsError):
        write_ori(tmp_path / "copy.ori", records, overwrite=False)


def test_read_ori_attitude_only_file_has_no_earth_columns(tmp_path):
    rows = [f"OG {1000.0 + 2 * i} 0.0 0.0 90.0 0.0" for i in range(4)]
    records = read_ori(_write(tmp_path, _ori_text(rows)))
    assert not records.has_earth_info
    assert records.altitude is None and records.zenith_lon is None and records.livetime is None
    write_ori(tmp_path / "six.ori", records)
    back = read_ori(tmp_path / "six.ori")
    for name in _RECORD_FIELDS[:5]:
        np.testing.assert_array_equal(getattr(back, name), getattr(records, name), err_msg=name)


# ---------------------------------------------------------- deprecated paths
def test_io_orientation_module_is_a_deprecated_alias():
    import importlib
    import sys

    import cosi_imaging_plugin.exposure
    import cosi_imaging_plugin.geometry

    sys.modules.pop("cosi_imaging_plugin.io.orientation", None)
    with pytest.warns(DeprecationWarning, match="cosi_imaging_plugin.io.orientation"):
        old = importlib.import_module("cosi_imaging_plugin.io.orientation")
    assert old.Orientation is cosi_imaging_plugin.exposure.Orientation
    for name in ("EARTH_RADIUS_KM", "rotation_from_axes", "lonlat_to_vec", "vec_to_lonlat", "galactic_vectors",
                 "earth_limb_radius", "visible_mask"):
        assert getattr(old, name) is getattr(cosi_imaging_plugin.geometry, name), name


def test_io_exposure_table_module_is_a_deprecated_alias():
    import importlib
    import sys

    import cosi_imaging_plugin.exposure

    sys.modules.pop("cosi_imaging_plugin.io.exposure_table", None)
    with pytest.warns(DeprecationWarning, match="cosi_imaging_plugin.io.exposure_table"):
        old = importlib.import_module("cosi_imaging_plugin.io.exposure_table")
    assert old.ExposureTable is cosi_imaging_plugin.exposure.ExposureTable


@pytest.mark.parametrize("name", ["Orientation", "ExposureTable"])
def test_io_package_attributes_are_deprecated_aliases(name):
    import cosi_imaging_plugin.exposure
    import cosi_imaging_plugin.io

    with pytest.warns(DeprecationWarning, match=f"cosi_imaging_plugin.exposure.{name}"):
        value = getattr(cosi_imaging_plugin.io, name)
    assert value is getattr(cosi_imaging_plugin.exposure, name)
    assert name not in cosi_imaging_plugin.io.__all__
    with pytest.raises(AttributeError):
        cosi_imaging_plugin.io.NoSuchName  # noqa: B018
