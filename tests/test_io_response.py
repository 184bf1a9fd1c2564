"""Tests of the full detector response reader and writer against the cosipy fixtures."""
import logging

import astropy.units as u
import h5py
import numpy as np
import pytest
from histpy import Axes, Axis, HealpixAxis, Histogram

from cosi_imaging_plugin.errors import CosiFileError, CosiInputError
from cosi_imaging_plugin.io import FullDetectorResponse, write_response

DENSE = "test_full_detector_response_dense.h5"
SPARSE = "test_full_detector_response.h5"
SHAPE = (12, 10, 10, 30, 12)
EI_EDGES = [150.0, 220.0, 325.0, 480.0, 520.0, 765.0, 1120.0, 1650.0, 2350.0, 3450.0, 5000.0]


@pytest.fixture
def dense(fixtures_dir):
    with FullDetectorResponse.open(fixtures_dir / DENSE) as rsp:
        yield rsp


@pytest.fixture
def sparse_rsp(fixtures_dir):
    with FullDetectorResponse.open(fixtures_dir / SPARSE) as rsp:
        yield rsp


@pytest.fixture
def raw_dense(fixtures_dir):
    """The dense fixture's CONTENTS read directly with h5py: the reference numbers."""
    with h5py.File(fixtures_dir / DENSE, "r") as f:
        return f["DRM/CONTENTS"][()]


def small_axes(nside=1, n_ei=3, n_em=2, n_phi=4):
    return Axes([
        HealpixAxis(nside=nside, scheme="ring", label="NuLambda"),
        Axis(np.geomspace(100, 1000, n_ei + 1) * u.keV, scale="log", label="Ei"),
        Axis(np.geomspace(100, 1000, n_em + 1) * u.keV, scale="log", label="Em"),
        Axis(np.linspace(0, 180, n_phi + 1) * u.deg, label="Phi"),
        HealpixAxis(nside=nside, scheme="ring", label="PsiChi"),
    ])


def small_contents(rng, axes):
    return rng.uniform(0.0, 2.0, size=axes.shape)


# ---------------------------------------------------------------------- opening
@pytest.mark.parametrize("name, sparse", [(DENSE, False), (SPARSE, True)])
def test_fixture_axes_and_properties(fixtures_dir, name, sparse):
    with FullDetectorResponse.open(fixtures_dir / name) as rsp:
        assert rsp.version == 1
        assert rsp.is_sparse is sparse
        assert list(rsp.axes.labels) == ["NuLambda", "Ei", "Em", "Phi", "PsiChi"]
        assert rsp.shape == SHAPE
        assert (rsp.nside, rsp.npix, rsp.scheme) == (1, 12, "ring")
        assert rsp.unit == u.cm**2
        assert rsp.dtype == np.float64
        assert rsp.filename == fixtures_dir / name
        for label in ("NuLambda", "PsiChi"):
            axis = rsp.axes[label]
            assert isinstance(axis, HealpixAxis)
            assert axis.coordsys.name == "spacecraftframe"
        np.testing.assert_array_equal(rsp.axes["Ei"].edges.to_value(u.keV), EI_EDGES)
        np.testing.assert_array_equal(rsp.axes["Em"].edges.to_value(u.keV), EI_EDGES)
        assert rsp.axes["Ei"].axis_scale == "log"
        assert rsp.axes["Phi"].axis_scale == "linear"
        np.testing.assert_array_equal(rsp.axes["Phi"].edges.to_value(u.deg), np.arange(0, 181, 6))


def test_open_is_lazy(fixtures_dir, monkeypatch):
    """Opening reads axes only: never CONTENTS or BIN_NUMBERS."""
    read = []
    original = h5py.Dataset.__getitem__

    def spy(self, args, *a, **k):
        read.append(self.name)
        return original(self, args, *a, **k)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    for name in (DENSE, SPARSE):
        FullDetectorResponse.open(fixtures_dir / name).close()
    assert read, "the spy saw no reads at all"
    assert all(n.startswith("/DRM/AXES/") for n in read), read


def test_pickle_reopens(dense, raw_dense):
    import pickle

    with pickle.loads(pickle.dumps(dense)) as copy:
        assert copy.filename == dense.filename and copy.dtype == dense.dtype
        np.testing.assert_array_equal(copy.read_pixels(2), raw_dense[2:3])


def test_context_manager_closes(fixtures_dir):
    with FullDetectorResponse.open(fixtures_dir / DENSE) as rsp:
        pass
    with pytest.raises(CosiInputError, match="closed"):
        rsp.read_pixels(0)
    rsp.close()  # idempotent


# ---------------------------------------------------------------------- reading
def test_read_pixels_matches_h5py(dense, raw_dense):
    np.testing.assert_array_equal(dense.read_pixels(3), raw_dense[3:4])
    np.testing.assert_array_equal(dense.read_pixels(-1), raw_dense[11:12])
    np.testing.assert_array_equal(dense.read_pixels(slice(2, 7)), raw_dense[2:7])
    np.testing.assert_array_equal(dense.read_pixels(slice(1, None, 4)), raw_dense[1::4])
    np.testing.assert_array_equal(dense.read_pixels([7, 2, 2, -3]), raw_dense[[7, 2, 2, 9]])
    np.testing.assert_array_equal(dense.read_pixels(np.array([0, 5])), raw_dense[[0, 5]])
    assert dense.read_pixels([]).shape == (0,) + SHAPE[1:]
    with pytest.raises(IndexError, match="12"):
        dense.read_pixels(12)
    with pytest.raises(IndexError):
        dense.read_pixels([0, -13])
    with pytest.raises(CosiInputError):
        dense.read_pixels([0.5])


def test_read_pixels_reads_only_that_pixel(dense, raw_dense, monkeypatch):
    selections = []
    original = h5py.Dataset.__getitem__

    def spy(self, args, *a, **k):
        selections.append((self.name, args))
        return original(self, args, *a, **k)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    block = dense.read_pixels(3)
    np.testing.assert_array_equal(block, raw_dense[3:4])
    contents_reads = [args for name, args in selections if name == "/DRM/CONTENTS"]
    assert contents_reads == [slice(3, 4)], selections
    # The fixture is chunked (3, 3, 5, 15, 6): HDF5 itself touches only the chunks of
    # pixels 3-5; files we write are chunked one pixel per chunk (see the round trip).
    with h5py.File(dense.filename, "r") as f:
        assert f["DRM/CONTENTS"].chunks[0] == 3


def test_getitem_histogram(dense, raw_dense):
    hist = dense[5]
    assert isinstance(hist, Histogram)
    assert list(hist.axes.labels) == ["Ei", "Em", "Phi", "PsiChi"]
    assert hist.unit == u.cm**2
    np.testing.assert_array_equal(hist.contents.to_value(u.cm**2), raw_dense[5])
    with pytest.raises(TypeError):
        dense[1:3]


def test_dtype_float32(fixtures_dir, raw_dense):
    with FullDetectorResponse.open(fixtures_dir / SPARSE, dtype=np.float32) as rsp:
        assert rsp.dtype == np.float32
        block = rsp.read_pixels([1, 4])
        assert block.dtype == np.float32
        np.testing.assert_allclose(block, raw_dense[[1, 4]], rtol=1e-6)
        assert rsp.read_energy_slice(2).dtype == np.float32
    with pytest.raises(CosiInputError):
        FullDetectorResponse.open(fixtures_dir / DENSE, dtype=np.int32)


@pytest.mark.parametrize("name", [DENSE, SPARSE])
def test_energy_slice_and_chunks(fixtures_dir, raw_dense, name):
    with FullDetectorResponse.open(fixtures_dir / name) as rsp:
        for ei in (0, 4, -1):
            np.testing.assert_allclose(rsp.read_energy_slice(ei), raw_dense[:, ei], rtol=1e-12, atol=0)
        with pytest.raises(IndexError):
            rsp.read_energy_slice(10)
        chunks = list(rsp.iter_chunks(5))
        assert [c[0] for c in chunks] == [slice(0, 5), slice(5, 10), slice(10, 12)]
        np.testing.assert_allclose(np.concatenate([b for _, b in chunks]), raw_dense, rtol=1e-12, atol=0)
        with pytest.raises(CosiInputError):
            next(rsp.iter_chunks(0))


def test_dense_and_sparse_fixtures_agree(dense, sparse_rsp, raw_dense):
    # Finding: the two fixtures describe the same simulation. After decoding the sparse rows
    # with coords = BIN_NUMBERS[row].reshape(6, nnz) (all Ei coordinates, then all Em, ...)
    # and summing SigmaTau and Dist (which have 12 and 1 bins), every one of the 67459
    # non-zero (NuLambda, Ei, Em, Phi, PsiChi) bins equals the dense CONTENTS exactly. The
    # effective areas (sum over Em, Phi, PsiChi) agree to ~3e-15 cm2 (summation order only).
    # Reading the bin numbers the other way (reshape(nnz, 6).T) gives out-of-range indices.
    dense_all = dense.to_dense()
    sparse_all = sparse_rsp.to_dense()
    np.testing.assert_array_equal(dense_all, raw_dense)
    np.testing.assert_allclose(sparse_all, dense_all, rtol=1e-12, atol=0)
    assert np.count_nonzero(sparse_all) == np.count_nonzero(raw_dense) == 67459

    aeff_dense = dense.effective_area()
    aeff_sparse = sparse_rsp.effective_area()
    for aeff in (aeff_dense, aeff_sparse):
        assert list(aeff.axes.labels) == ["NuLambda", "Ei"]
        assert aeff.unit == u.cm**2
    expected = raw_dense.sum(axis=(2, 3, 4))
    np.testing.assert_allclose(aeff_dense.contents.to_value(u.cm**2), expected, rtol=1e-12)
    np.testing.assert_allclose(aeff_sparse.contents.to_value(u.cm**2), expected, rtol=1e-12)
    # A value pinned from the file: pixel 0, Ei bin 520-765 keV.
    assert aeff_dense.contents[0, 5].to_value(u.cm**2) == pytest.approx(2.24013146, rel=1e-8)


def test_sparse_row_convention(fixtures_dir, raw_dense):
    """Decode one sparse row by hand, independently of the reader."""
    with h5py.File(fixtures_dir / SPARSE, "r") as f:
        bins = f["DRM/BIN_NUMBERS"][7]
        values = f["DRM/CONTENTS"][7]
    coords = bins.reshape(6, -1)
    assert coords.shape[1] == values.size
    row = np.zeros((10, 10, 30, 12, 12, 1))
    np.add.at(row, tuple(coords), values)
    np.testing.assert_allclose(row.sum(axis=(4, 5)), raw_dense[7], rtol=1e-12, atol=0)


# ---------------------------------------------------------------------- writing
def test_write_round_trip(tmp_path, dense, raw_dense):
    path = tmp_path / "rsp.h5"
    assert write_response(path, dense.axes, raw_dense, dtype=np.float64) == path
    with FullDetectorResponse.open(path) as back:
        assert back.version == 1 and not back.is_sparse
        assert back.axes == dense.axes
        for label in ("NuLambda", "PsiChi"):
            assert back.axes[label].coordsys.name == "spacecraftframe"
        np.testing.assert_array_equal(back.to_dense(), raw_dense)
    with h5py.File(path, "r") as f:
        group = f["DRM/AXES"]
        assert group.id.get_create_plist().get_link_creation_order()
        assert list(group.keys()) == ["NuLambda", "Ei", "Em", "Phi", "PsiChi"]
        assert f["DRM/CONTENTS"].chunks == (1,) + SHAPE[1:]
        assert f["DRM/CONTENTS"].dtype == np.float64
        assert f["DRM"].attrs["UNIT"] == "cm2" and not f["DRM"].attrs["SPARSE"]
        nu = group["NuLambda"]
        assert (nu.attrs["TYPE"], int(nu.attrs["NSIDE"]), nu.attrs["SCHEME"]) == ("healpix", 1, "ring")
        np.testing.assert_array_equal(nu[()], np.arange(13))
        assert (group["Ei"].attrs["TYPE"], group["Ei"].attrs["UNIT"]) == ("log", "keV")
        assert (group["Phi"].attrs["TYPE"], group["Phi"].attrs["UNIT"]) == ("linear", "deg")
        assert group["Em"].attrs["DESCRIPTION"] == "Measured energy"


def test_write_streaming_from_sparse(tmp_path, sparse_rsp, raw_dense):
    path = tmp_path / "streamed.h5"
    write_response(path, sparse_rsp.axes, sparse_rsp.iter_chunks(5))  # float32 storage
    with FullDetectorResponse.open(path) as back:
        np.testing.assert_allclose(back.to_dense(), raw_dense, rtol=1e-6)
        np.testing.assert_allclose(back.effective_area().contents.value,
                                   raw_dense.sum(axis=(2, 3, 4)), rtol=1e-5)


def test_write_quantity_and_int_blocks(tmp_path, rng):
    axes = small_axes()
    contents = small_contents(rng, axes)
    write_response(tmp_path / "q.h5", axes, contents * 1e-4 * u.m**2, dtype=np.float64)
    with FullDetectorResponse.open(tmp_path / "q.h5") as back:
        np.testing.assert_allclose(back.to_dense(), contents, rtol=1e-12)
    write_response(tmp_path / "rows.h5", axes, ((i, contents[i]) for i in range(12)), dtype=np.float64)
    with FullDetectorResponse.open(tmp_path / "rows.h5") as back:
        np.testing.assert_array_equal(back.to_dense(), contents)


def _no_files_left(directory):
    return [p.name for p in directory.iterdir()] == []


@pytest.mark.parametrize("case", ["shape", "negative", "nan", "missing", "twice", "labels", "unit"])
def test_write_rejects_bad_input_and_leaves_nothing(tmp_path, rng, case):
    out = tmp_path / "out"
    out.mkdir()
    axes = small_axes()
    contents = small_contents(rng, axes)
    if case == "shape":
        args, match = (axes, contents[:, :2]), "shape"
    elif case == "negative":
        contents[4, 1, 0, 2, 3] = -1.0
        args, match = (axes, contents), "pixel 4"
    elif case == "nan":
        contents[9, 0, 0, 0, 0] = np.nan
        args, match = (axes, contents), "pixel 9"
    elif case == "missing":
        args, match = (axes, [(slice(0, 6), contents[:6])]), "never written"
    elif case == "twice":
        args, match = (axes, [(slice(0, 6), contents[:6]), (slice(5, 12), contents[5:])]), "twice"
    elif case == "labels":
        bad = Axes([axes[0], axes[1], axes[2], axes[4], axes[3]])
        args, match = (bad, contents), "labelled"
    else:
        bad = Axes([axes[0], Axis(np.arange(4) * u.s, label="Ei"), axes[2], axes[3], axes[4]])
        args, match = (bad, contents), "Ei"
    with pytest.raises(CosiInputError, match=match):
        write_response(out / "rsp.h5", *args)
    assert _no_files_left(out)


# ---------------------------------------------------------------------- bad files
def test_missing_file(tmp_path):
    with pytest.raises(CosiFileError, match="nope.h5.*does not exist"):
        FullDetectorResponse.open(tmp_path / "nope.h5")


def test_not_hdf5(tmp_path):
    path = tmp_path / "text.h5"
    path.write_text("this is not HDF5\n" * 100)
    with pytest.raises(CosiFileError, match="text.h5.*not an HDF5 file"):
        FullDetectorResponse.open(path)


def test_truncated_file(tmp_path, rng):
    path = tmp_path / "cut.h5"
    axes = small_axes()
    write_response(path, axes, small_contents(rng, axes))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CosiFileError, match="cut.h5"):
        with FullDetectorResponse.open(path) as rsp:
            rsp.to_dense()


@pytest.mark.parametrize("version, hint", [(1, False), (2, True)])
def test_hdf5plugin_hint_only_for_version_2(tmp_path, rng, monkeypatch, version, hint):
    """A dataset that HDF5 cannot read: the hint to install hdf5plugin (its filters) only for version-2 files."""
    import cosi_imaging_plugin.io.response as response_module

    path = tmp_path / "unreadable.h5"
    axes = small_axes()
    write_response(path, axes, small_contents(rng, axes))

    class Unreadable:
        def __getitem__(self, key):
            raise OSError("Can't synchronously read data (required filter 'blosc' is not registered)")

    monkeypatch.setattr(response_module, "hdf5plugin", None)
    with FullDetectorResponse.open(path) as rsp:
        monkeypatch.setattr(rsp, "_drm", lambda: {"CONTENTS": Unreadable()})
        monkeypatch.setattr(rsp, "_version", version)
        with pytest.raises(CosiFileError, match="unreadable.h5: cannot read /DRM/CONTENTS") as error:
            rsp._h5read("CONTENTS", slice(None))
    assert ("install hdf5plugin" in str(error.value)) is hint


def test_missing_drm_lists_groups(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_group("hist")
    with pytest.raises(CosiFileError, match=r"other.h5 has no /DRM.*\['hist'\]"):
        FullDetectorResponse.open(path)


def _edit(path, func):
    with h5py.File(path, "r+") as f:
        func(f)


@pytest.mark.parametrize("edit, match", [
    (lambda f: f["DRM"].__delitem__("AXES"), "/DRM/AXES"),
    (lambda f: f["DRM/AXES"].__delitem__("Phi"), "found"),
    (lambda f: f["DRM/AXES/NuLambda"].attrs.__delitem__("NSIDE"), "NSIDE"),
    (lambda f: f["DRM/AXES/Ei"].attrs.__delitem__("UNIT"), "Ei has no UNIT"),
    (lambda f: f["DRM/AXES/Ei"].attrs.__setitem__("TYPE", "fisbel"), "fisbel"),
    (lambda f: f["DRM"].__delitem__("CONTENTS"), "CONTENTS"),
    (lambda f: f["DRM"].attrs.__setitem__("UNIT", "s"), "UNIT = 's' is not an area"),
    (lambda f: f["DRM"].attrs.__setitem__("VERSION", 7), "VERSION = 7"),
])
def test_broken_layouts(tmp_path, rng, edit, match):
    path = tmp_path / "broken.h5"
    axes = small_axes()
    write_response(path, axes, small_contents(rng, axes))
    _edit(path, edit)
    with pytest.raises(CosiFileError, match=match) as info:
        FullDetectorResponse.open(path)
    assert "broken.h5" in str(info.value)


def test_negative_entries_detected_on_read(tmp_path, rng):
    path = tmp_path / "neg.h5"
    axes = small_axes()
    write_response(path, axes, small_contents(rng, axes))

    def poison(f):
        f["DRM/CONTENTS"][7, 1, 0, 2, 5] = -3.0

    _edit(path, poison)
    with FullDetectorResponse.open(path) as rsp:  # lazy: opening does not see it
        rsp.read_pixels(slice(0, 7))
        for call in (lambda: rsp.read_pixels(7), lambda: rsp.read_energy_slice(1), rsp.effective_area,
                     lambda: list(rsp.iter_chunks(4))):
            with pytest.raises(CosiFileError, match="neg.h5.*NuLambda pixel 7"):
                call()


def test_area_unit_is_converted(tmp_path, rng):
    path = tmp_path / "m2.h5"
    axes = small_axes()
    contents = small_contents(rng, axes)
    write_response(path, axes, contents, dtype=np.float64)
    _edit(path, lambda f: f["DRM"].attrs.__setitem__("UNIT", "m2"))
    with FullDetectorResponse.open(path) as rsp:
        assert rsp.unit == u.cm**2
        np.testing.assert_allclose(rsp.read_pixels(2), contents[2:3] * 1e4, rtol=1e-12)


def test_untracked_axis_order_falls_back_to_cosi_order(tmp_path, rng, caplog):
    """A writer that forgot track_order gets alphabetical names; the COSI order is restored."""
    path = tmp_path / "alpha.h5"
    axes = small_axes()
    contents = small_contents(rng, axes)
    write_response(path, axes, contents, dtype=np.float64)
    with h5py.File(path, "r+") as f:
        old = f["DRM/AXES"]
        new = f["DRM"].create_group("AXES_NEW")  # no order tracking
        for name in old:
            f.copy(old[name], new, name=name)
        del f["DRM/AXES"]
        f["DRM"].move("AXES_NEW", "AXES")
        assert list(f["DRM/AXES"].keys()) == ["Ei", "Em", "NuLambda", "Phi", "PsiChi"]
    with caplog.at_level(logging.WARNING), FullDetectorResponse.open(path) as rsp:
        assert list(rsp.axes.labels) == ["NuLambda", "Ei", "Em", "Phi", "PsiChi"]
        np.testing.assert_array_equal(rsp.to_dense(), contents)
    assert "creation order" in caplog.text


# ---------------------------------------------------------------------- version 2
def write_v2(path, axes, counts, eff_area, extra_axes=None):
    """A version-2 file laid out as cosipy's RspConverter._create_h5 writes it."""
    axes = Axes(list(axes) if extra_axes is None else extra_axes)
    with h5py.File(path, "w") as f:
        drm = f.create_group("DRM")
        drm.attrs["VERSION"] = 2
        headers = drm.create_group("HEADERS")
        headers.attrs["TS"] = "1000000"
        headers.attrs["SA"] = "3.14e4"
        drm.attrs["HEADER_ORDER"] = np.array([1, 0])
        drm.attrs["UNIT"] = "cm2"
        drm.attrs["SPARSE"] = False
        axes.write(drm.create_group("AXES"))
        desc = drm.create_group("AXIS_DESCRIPTIONS")
        for label in axes.labels:
            desc.attrs[label] = f"axis {label}"
        drm.create_dataset("EFF_AREA", data=eff_area)
        chunks = tuple(1 if a.label in ("NuLambda", "Ei", "Pol") else a.nbins for a in axes)
        drm.create_dataset("COUNTS", data=counts, chunks=chunks)


def test_version2_counts_times_eff_area(tmp_path, rng):
    from scoords import SpacecraftFrame

    axes = small_axes()
    axes = Axes([HealpixAxis(nside=1, label="NuLambda", coordsys=SpacecraftFrame()), axes[1], axes[2],
                 axes[3], HealpixAxis(nside=1, label="PsiChi", coordsys=SpacecraftFrame())])
    counts = rng.poisson(3.0, size=axes.shape).astype(np.uint16)
    eff_area = np.array([0.5, 2.0, 7.0])  # cm2 per simulated photon, per Ei bin
    path = tmp_path / "v2.h5"
    write_v2(path, axes, counts, eff_area)
    expected = counts * eff_area[None, :, None, None, None]
    with FullDetectorResponse.open(path) as rsp:
        assert rsp.version == 2 and not rsp.is_sparse
        assert list(rsp.axes.labels) == ["NuLambda", "Ei", "Em", "Phi", "PsiChi"]
        assert rsp.axes["PsiChi"].coordsys.name == "spacecraftframe"
        np.testing.assert_allclose(rsp.read_pixels([3, 0]), expected[[3, 0]], rtol=1e-15)
        np.testing.assert_allclose(rsp.read_energy_slice(2), expected[:, 2], rtol=1e-15)
        np.testing.assert_allclose(rsp.to_dense(), expected, rtol=1e-15)
        np.testing.assert_allclose(rsp.effective_area().contents.value,
                                   counts.sum(axis=(2, 3, 4)) * eff_area, rtol=1e-14)
        # Round trip to version 1 keeps the numbers.
        write_response(tmp_path / "v1.h5", rsp.axes, rsp.iter_chunks(4), dtype=np.float64)
    with FullDetectorResponse.open(tmp_path / "v1.h5") as v1:
        np.testing.assert_allclose(v1.to_dense(), expected, rtol=1e-15)


def test_version2_bad_layouts(tmp_path, rng):
    axes = small_axes()
    counts = np.ones(axes.shape, dtype=np.uint8)
    path = tmp_path / "v2bad.h5"
    write_v2(path, axes, counts, np.ones(2))  # 2 values for 3 Ei bins
    with pytest.raises(CosiFileError, match="v2bad.h5.*EFF_AREA"):
        FullDetectorResponse.open(path)

    pol = Axis(np.linspace(0, 180, 3) * u.deg, label="Pol")
    with_pol = [axes[0], axes[1], pol, axes[2], axes[3], axes[4]]
    write_v2(path, axes, np.ones(Axes(with_pol).shape, dtype=np.uint8), np.ones(3), extra_axes=with_pol)
    with pytest.raises(CosiFileError, match="Pol"):
        FullDetectorResponse.open(path)
