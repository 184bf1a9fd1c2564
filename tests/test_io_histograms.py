"""Tests of the histpy histogram readers/writers on the cosipy fixture files."""
import astropy.units as u
import h5py
import numpy as np
import pytest
import sparse
from histpy import Axes, Axis, HealpixAxis, Histogram

from cosi_imaging_plugin.errors import AxisMismatchError, CosiFileError, CosiInputError
from cosi_imaging_plugin.io import (
    FullDetectorResponse,
    check_axes_match,
    read_ccm,
    read_histogram,
    read_image,
    write_histogram,
)

CDS_LABELS = ["Em", "Phi", "PsiChi"]


@pytest.mark.parametrize("name, first, frame, is_sparse", [
    ("test_event_histogram_galacticCDS.hdf5", "Time", "galactic", True),
    ("test_event_histogram_localCDS.hdf5", "Time", "spacecraftframe", True),
    ("image_deconvolution/test_event_histogram_localCDS_scatt.h5", "ScAtt", "spacecraftframe", False),
])
def test_binned_data_fixtures(fixtures_dir, name, first, frame, is_sparse):
    hist = read_histogram(fixtures_dir / name, counts=True)
    assert list(hist.axes.labels) == [first] + CDS_LABELS
    assert hist.shape == (1, 10, 30, 12)
    assert hist.is_sparse is is_sparse
    if is_sparse:
        assert isinstance(hist.contents, sparse.COO)
    assert hist.unit is None
    assert hist.axes["Em"].unit == u.keV and hist.axes["Phi"].unit == u.deg
    np.testing.assert_array_equal(hist.axes["Em"].edges.value[[0, -1]], [150.0, 5000.0])
    psichi = hist.axes["PsiChi"]
    assert isinstance(psichi, HealpixAxis)
    assert (psichi.nside, psichi.scheme, psichi.coordsys.name) == (1, "RING", frame)
    total = hist.contents.sum()
    assert float(total) == 4173.0
    if first == "Time":
        assert hist.axes["Time"].unit == u.s
    else:
        np.testing.assert_array_equal(hist.axes["ScAtt"].edges, [0, 1])


def test_local_binned_data_fixtures_hold_the_same_counts(fixtures_dir):
    a = read_histogram(fixtures_dir / "test_event_histogram_localCDS.hdf5")
    b = read_histogram(fixtures_dir / "image_deconvolution/test_event_histogram_localCDS_scatt.h5")
    np.testing.assert_array_equal(a.contents.todense(), b.contents)
    check_axes_match(a, b, CDS_LABELS, "local time-binned data", "local ScAtt-binned data")


@pytest.mark.parametrize("name, first, total", [
    ("ccm_scatt_use_averaged_pointing_False_test.hdf5", "ScAtt", 120.0),
    ("ccm_scatt_use_averaged_pointing_True_test.hdf5", "ScAtt", 120.0),
    ("ccm_time_test.hdf5", "Time", 120.0),
])
def test_ccm_fixtures(fixtures_dir, name, first, total):
    ccm = read_ccm(fixtures_dir / "image_deconvolution" / name)
    assert list(ccm.axes.labels) == [first, "lb", "NuLambda"]
    assert ccm.shape == (1, 12, 12)
    assert ccm.unit == u.s
    assert isinstance(ccm.contents, sparse.COO)
    assert ccm.axes["lb"].coordsys.name == "galactic"
    assert ccm.axes["NuLambda"].coordsys.name == "spacecraftframe"
    assert (ccm.axes["lb"].nside, ccm.axes["NuLambda"].nside) == (1, 1)
    assert float(ccm.contents.sum()) == pytest.approx(total, rel=1e-12)
    # Summing NuLambda gives each lb pixel's exposure: the whole 120 s interval for every pixel.
    np.testing.assert_allclose(ccm.contents.sum(axis=2).todense(), 10.0, rtol=1e-12)


def test_ccm_matches_response_nulambda(fixtures_dir):
    ccm = read_ccm(fixtures_dir / "image_deconvolution/ccm_time_test.hdf5")
    with FullDetectorResponse.open(fixtures_dir / "test_full_detector_response_dense.h5") as rsp:
        check_axes_match(ccm, rsp, ["NuLambda"], "CCM", "response")
        data = read_histogram(fixtures_dir / "test_event_histogram_localCDS.hdf5")
        check_axes_match(data, rsp, CDS_LABELS, "local data", "response")
        galactic = read_histogram(fixtures_dir / "test_event_histogram_galacticCDS.hdf5")
        with pytest.raises(AxisMismatchError, match="PsiChi.*galactic data.*response.*frame"):
            check_axes_match(galactic, rsp, CDS_LABELS, "galactic data", "response")


def test_image_model_fixture(fixtures_dir):
    image = read_image(fixtures_dir / "image_deconvolution/all_sky_image_model_test_nside1.hdf5")
    assert list(image.axes.labels) == ["lb", "Ei"]
    assert image.shape == (12, 1)
    assert image.unit == u.Unit("1 / (cm2 s sr)")
    assert image.axes["lb"].coordsys.name == "galactic"
    np.testing.assert_array_equal(image.axes["Ei"].edges.to_value(u.keV), [100.0, 1000.0])
    np.testing.assert_array_equal(image.contents.value, 1.0)


# ---------------------------------------------------------------------- round trips
def _cds_axes():
    from scoords import SpacecraftFrame

    return [
        Axis(np.arange(4), label="ScAtt"),
        Axis(np.geomspace(100, 5000, 4) * u.keV, scale="log", label="Em"),
        Axis(np.linspace(0, 180, 7) * u.deg, label="Phi"),
        HealpixAxis(nside=2, scheme="nested", coordsys=SpacecraftFrame(), label="PsiChi"),
    ]


def test_round_trip_dense(tmp_path, rng):
    axes = _cds_axes()
    hist = Histogram(axes, contents=rng.poisson(2.0, size=(3, 3, 6, 48)).astype(float), unit=u.s)
    path = tmp_path / "dense.h5"
    assert write_histogram(hist, path, name="bkg") == path
    back = read_histogram(path, "bkg", counts=True)
    assert not back.is_sparse
    assert back.unit == u.s
    assert back.axes == hist.axes
    assert back.axes["PsiChi"].coordsys.name == "spacecraftframe"
    assert back.axes["PsiChi"].scheme == "NESTED"
    np.testing.assert_array_equal(back.contents.value, hist.contents.value)


def test_round_trip_coo(tmp_path, rng):
    dense = rng.poisson(0.05, size=(3, 3, 6, 48)).astype(float)
    hist = Histogram(_cds_axes(), contents=sparse.COO.from_numpy(dense))
    path = tmp_path / "coo.h5"
    write_histogram(hist, path)
    with h5py.File(path, "r") as f:
        assert f["hist"].attrs["format"] == "coo"
    back = read_histogram(path)
    assert isinstance(back.contents, sparse.COO)
    assert back.contents.nnz == np.count_nonzero(dense)
    np.testing.assert_array_equal(back.contents.todense(), dense)


def test_write_overwrite_and_atomicity(tmp_path, rng, monkeypatch):
    hist = Histogram(_cds_axes(), contents=np.ones((3, 3, 6, 48)))
    path = tmp_path / "h.h5"
    write_histogram(hist, path)
    with pytest.raises(FileExistsError):
        write_histogram(hist, path, overwrite=False)
    write_histogram(hist * 2, path)  # overwrite=True replaces the file
    assert float(read_histogram(path).contents.sum()) == 2 * hist.contents.sum()

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Histogram, "_write", explode)
    with pytest.raises(RuntimeError):
        write_histogram(hist, tmp_path / "never.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.h5"]
    with pytest.raises(CosiInputError, match="histpy.Histogram"):
        write_histogram(np.ones(3), tmp_path / "x.h5")


# ---------------------------------------------------------------------- errors
def test_missing_and_corrupt_files(tmp_path, fixtures_dir):
    with pytest.raises(CosiFileError, match="absent.h5 does not exist"):
        read_histogram(tmp_path / "absent.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x00garbage" * 64)
    with pytest.raises(CosiFileError, match="junk.h5 is not an HDF5 file"):
        read_histogram(junk)
    cut = tmp_path / "cut.h5"
    data = (fixtures_dir / "test_event_histogram_localCDS.hdf5").read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(CosiFileError, match="cut.h5"):
        read_histogram(cut)


def test_missing_group_lists_groups(tmp_path):
    hist = Histogram(_cds_axes(), contents=np.zeros((3, 3, 6, 48)))
    path = tmp_path / "named.h5"
    write_histogram(hist, path, name="signal")
    with pytest.raises(CosiFileError, match=r"named.h5 has no group 'hist'; groups present: \['signal'\]"):
        read_histogram(path)
    with h5py.File(path, "a") as f:
        f.create_group("empty")
    with pytest.raises(CosiFileError, match="'empty' is not a histpy histogram"):
        read_histogram(path, "empty")


@pytest.mark.parametrize("value, match", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"),
                                          (-1.0, "negative"), (2.5, "non-integer")])
def test_counts_validation(tmp_path, value, match):
    contents = np.ones((3, 3, 6, 48))
    contents[1, 2, 3, 4] = value
    path = tmp_path / "bad_counts.h5"
    write_histogram(Histogram(_cds_axes(), contents=contents), path)
    read_histogram(path)  # without counts=True the values are not checked
    with pytest.raises(CosiInputError, match=rf"bad_counts.h5.*{match}.*\(1, 2, 3, 4\)"):
        read_histogram(path, counts=True)
    coo = tmp_path / "bad_coo.h5"
    write_histogram(Histogram(_cds_axes(), contents=sparse.COO.from_numpy(contents)), coo)
    with pytest.raises(CosiInputError, match=rf"bad_coo.h5.*{match}.*\(1, 2, 3, 4\)"):
        read_histogram(coo, counts=True)


def test_read_ccm_rejects_wrong_unit_and_axes(tmp_path, fixtures_dir):
    ccm = read_ccm(fixtures_dir / "image_deconvolution/ccm_time_test.hdf5")
    path = tmp_path / "ccm_cm2.h5"
    write_histogram(ccm.to(u.cm**2, update=False), path)
    with pytest.raises(CosiInputError, match="ccm_cm2.h5.*seconds.*cm2"):
        read_ccm(path)
    write_histogram(ccm.to(u.min), tmp_path / "ccm_min.h5")
    back = read_ccm(tmp_path / "ccm_min.h5")
    assert back.unit == u.s
    assert float(back.contents.sum()) == pytest.approx(120.0)
    with pytest.raises(CosiInputError, match="axes"):
        read_ccm(fixtures_dir / "image_deconvolution/all_sky_image_model_test_nside1.hdf5")


def test_read_image_checks(tmp_path, fixtures_dir):
    image = read_image(fixtures_dir / "image_deconvolution/all_sky_image_model_test_nside1.hdf5")
    negative = image * -1
    write_histogram(negative, tmp_path / "neg.h5")
    with pytest.raises(CosiInputError, match="neg.h5.*negative"):
        read_image(tmp_path / "neg.h5")
    assert read_image(tmp_path / "neg.h5", allow_negative=True).contents.value.min() == -1.0
    write_histogram(image.to(None, update=False), tmp_path / "nounit.h5")
    with pytest.raises(CosiInputError, match="nounit.h5.*unit"):
        read_image(tmp_path / "nounit.h5")


# ---------------------------------------------------------------------- axis matching
def test_check_axes_match_names_both_sides_and_axis():
    from scoords import SpacecraftFrame

    base = Axes(_cds_axes())
    check_axes_match(base, base.copy(), None, "data", "background")
    # Same bins in MeV: equal after conversion.
    mev = Axes([base[0], Axis(base["Em"].edges.to(u.MeV), scale="log", label="Em"), base[2], base[3]])
    check_axes_match(base, mev, ["Em"], "data", "background")

    cases = {
        "edges": (1, Axis(np.geomspace(100, 5000, 4) * 1.01 * u.keV, scale="log", label="Em"), "edges"),
        "unit": (2, Axis(np.linspace(0, 180, 7) * u.s, label="Phi"), "unit"),
        "nside": (3, HealpixAxis(nside=4, scheme="nested", coordsys=SpacecraftFrame(), label="PsiChi"), "NSIDE"),
        "scheme": (3, HealpixAxis(nside=2, scheme="ring", coordsys=SpacecraftFrame(), label="PsiChi"), "scheme"),
        "frame": (3, HealpixAxis(nside=2, scheme="nested", coordsys="galactic", label="PsiChi"), "coordinate frame"),
    }
    for i, axis, detail in cases.values():
        other = list(base)
        other[i] = axis
        with pytest.raises(AxisMismatchError, match=rf"axis '{axis.label}' differs between data and bkg: {detail}"):
            check_axes_match(base, Axes(other), ["Em", "Phi", "PsiChi"], "data", "bkg")
    with pytest.raises(AxisMismatchError, match="'Time' is missing from data"):
        check_axes_match(base, base, ["Time"], "data", "bkg")
