"""Dwell-time maps and attitude maps."""
import astropy.units as u
import healpy as hp
import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from cosi_imaging_plugin.errors import CosiInputError
from cosi_imaging_plugin.exposure import Orientation, attitude_map, coordsys_conversion_matrix, dwell_time_map
from cosi_imaging_plugin.geometry import vec_to_lonlat


def sky(v):
    lon, lat = vec_to_lonlat(v)
    return SkyCoord(l=lon * u.deg, b=lat * u.deg, frame="galactic")


def orbit(n=150, step=30.0, altitude=550.0, inclination=0.4, livetime_fraction=0.9):
    """Zenith-pointing circular orbit (period 95 min), x axis along the velocity."""
    t = 1.83e9 + step * np.arange(n)
    phase = 2 * np.pi * (t - t[0]) / 5700.0
    zenith = np.stack([np.cos(phase), np.sin(phase) * np.cos(inclination), np.sin(phase) * np.sin(inclination)], -1)
    normal = np.array([0.0, -np.sin(inclination), np.cos(inclination)])
    x = np.cross(normal, zenith)
    return Orientation(t, sky(x), sky(zenith), altitude=np.full(n, altitude) * u.km, earth_zenith=sky(zenith),
                       livetime=np.full(n, livetime_fraction * step) * u.s)


def test_sums_to_total_livetime(fixtures_dir):
    ori = Orientation.read(fixtures_dir / "20280301_first_10sec.ori")
    source = SkyCoord(l=184.56 * u.deg, b=-5.78 * u.deg, frame="galactic")
    dwell = dwell_time_map(ori, source, nside=4)
    assert list(dwell.axes.labels) == ["NuLambda"]
    assert dwell.axes["NuLambda"].coordsys.name == "spacecraftframe"
    assert dwell.axes["NuLambda"].nside == 4 and dwell.unit == u.s
    assert dwell.contents.sum().to_value(u.s) == pytest.approx(10.0, rel=1e-13)
    assert np.all(dwell.contents.value >= 0)


def test_source_on_z_axis_lands_on_the_pole():
    # z fixed on the Galactic pole while x spins around it
    n = 50
    phase = np.linspace(0.0, 4 * np.pi, n)
    x = np.stack([np.cos(phase), np.sin(phase), np.zeros(n)], -1)
    z = np.tile([0.0, 0.0, 1.0], (n, 1))
    ori = Orientation(np.arange(n, dtype=float), sky(x), sky(z), livetime=np.full(n, 2.0) * u.s)
    dwell = dwell_time_map(ori, SkyCoord(l=0 * u.deg, b=90 * u.deg, frame="galactic"), nside=4)
    contents = dwell.contents.to_value(u.s)
    north = np.arange(4)  # the four ring pixels around the north pole
    np.testing.assert_allclose(contents[north], 2.0 * (n - 1) / 4, rtol=1e-12)
    assert np.all(contents[4:] == 0)
    # and a source on the equator in the x direction at t0 moves along the spacecraft equator
    eq = dwell_time_map(ori, SkyCoord(l=0 * u.deg, b=0 * u.deg, frame="galactic"), nside=4).contents.value
    theta, _ = hp.pix2ang(4, np.flatnonzero(eq))
    assert np.all(np.abs(theta - np.pi / 2) < 0.3)


def test_equals_a_row_of_the_time_ccm():
    ori = orbit(n=40)
    ccm = coordsys_conversion_matrix(ori, nside_model=2, nside_response=4, binning="time")
    j = 30
    direction = np.array(hp.pix2vec(2, j))
    dwell = dwell_time_map(ori, direction, nside=4)
    np.testing.assert_allclose(dwell.contents.value, ccm.contents.todense()[0, j], rtol=1e-12, atol=1e-12)


def test_earth_occultation_removes_blocked_time():
    ori = orbit()
    source = SkyCoord(l=30 * u.deg, b=10 * u.deg, frame="galactic")
    full = dwell_time_map(ori, source, nside=8).contents.sum().to_value(u.s)
    visible = dwell_time_map(ori, source, nside=8, earth_occultation=True).contents.sum().to_value(u.s)
    livetime = ori.intervals()[1].to_value(u.s)
    blocked = ori.earth_occulted(source)[:-1]
    assert 0 < blocked.sum() < blocked.size  # the source sets and rises in this orbit
    np.testing.assert_allclose(full, livetime.sum(), rtol=1e-12)
    np.testing.assert_allclose(visible, livetime[~blocked].sum(), rtol=1e-12)
    elapsed = dwell_time_map(ori, source, nside=8, use_livetime=False).contents.sum().to_value(u.s)
    np.testing.assert_allclose(elapsed, ori.intervals()[0].to_value(u.s).sum(), rtol=1e-12)


def test_attitude_map_groups_attitudes():
    ori = orbit()
    hist = attitude_map(ori, nside=2, scheme="nested")
    assert list(hist.axes.labels) == ["z", "x"] and hist.unit == u.s
    assert hist.axes["z"].scheme == "NESTED"
    contents = hist.contents.to_value(u.s)
    np.testing.assert_allclose(contents.sum(), ori.total_livetime.to_value(u.s), rtol=1e-12)
    assert np.count_nonzero(contents) > 4


def test_bad_input(fixtures_dir):
    ori = Orientation.read(fixtures_dir / "20280301_2s.ori")
    two = SkyCoord(l=[0, 1] * u.deg, b=[0, 0] * u.deg, frame="galactic")
    with pytest.raises(CosiInputError, match="one direction"):
        dwell_time_map(ori, two, nside=4)
    with pytest.raises(CosiInputError, match="Orientation"):
        dwell_time_map("20280301_2s.ori", two[0], nside=4)
    with pytest.raises(CosiInputError, match="nside=3"):
        dwell_time_map(ori, two[0], nside=3, scheme="nested")
    with pytest.raises(CosiInputError, match="shape"):
        dwell_time_map(ori, [1.0, 0.0], nside=4)
    with pytest.raises(CosiInputError, match="at least two samples"):
        dwell_time_map(ori[:1], two[0], nside=4)
