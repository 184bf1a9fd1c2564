"""Fit results that 3ML reads back in a Python session that never imported the package."""
import json
import subprocess
import sys

import astropy.units as u
import healpy as hp
import numpy as np
import pytest
from astromodels import ExtendedSource, Gaussian, Model, Parameter, PointSource, Powerlaw
from threeML.analysis_results import MLEResults

from cosi_imaging_plugin.sky.functions import Galactic_gaussian
from cosi_imaging_plugin.sky.rasterize import Rasterizer
from cosi_imaging_plugin.threeml.portable_results import (
    is_astromodels_function,
    relocate_portable_results,
    write_portable_results,
)

# reads the file with threeML alone and prints the parameter names and the covariance
READ = ("import json, sys\n"
        "from threeML import load_analysis_results\n"
        "results = load_analysis_results(sys.argv[1])\n"
        "print(json.dumps({'names': list(results.optimized_model.free_parameters),\n"
        "                  'modules': sorted(m for m in sys.modules if m.startswith('cosi_imaging_plugin')),\n"
        "                  'covariance': results.covariance_matrix.tolist()}))\n")


@pytest.fixture(scope="module")
def fitted():
    """MLE results of a model with a package shape (free widths) and astromodels' own functions."""
    shape = Galactic_gaussian()
    shape.l0, shape.b0, shape.sigma_l, shape.sigma_b = 20.0, 5.0, 12.0, 4.0
    shape.sigma_l.free = shape.sigma_b.free = True
    line = Gaussian(F=1e-3, mu=511.0, sigma=1.0)
    line.mu.fix = line.sigma.fix = True
    line.F.bounds = (1e-6, 1.0)
    point = PointSource("src", ra=83.6, dec=22.0, spectral_shape=Powerlaw(K=1e-4, index=-2.0))
    point.position.ra.free = True
    model = Model(ExtendedSource("blob", spatial_shape=shape, spectral_shape=line), point)
    # a free parameter outside the sources, as a plugin's background norm is: a reader parses it after them
    model.add_external_parameter(Parameter("cosi_bkg_norm", 1.0, min_value=0.0, max_value=10.0, free=True))
    # a correlated covariance with errors of 2 % of each value (the samples stay inside the bounds)
    n = len(model.free_parameters)
    root = np.random.default_rng(3).normal(size=(n, n))
    correlation = root @ root.T + n * np.eye(n)
    scale = 0.02 * np.abs([p.value for p in model.free_parameters.values()]) / np.sqrt(np.diag(correlation))
    covariance = correlation * np.outer(scale, scale)
    return MLEResults(model, covariance, {"cosi": 123.4}), covariance


def _read(path, cwd):
    run = subprocess.run([sys.executable, "-c", READ, str(path)], capture_output=True, text=True, timeout=600,
                         cwd=cwd)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_package_shapes_are_told_apart():
    assert not is_astromodels_function(Galactic_gaussian())
    assert is_astromodels_function(Gaussian())


def test_portable_results_load_without_the_package(fitted, tmp_path):
    results, covariance = fitted
    folder = tmp_path / "built"
    written = write_portable_results(results, folder / "fit_results.fits", final_dir=folder)
    assert [p.name for p in written] == ["blob.fits"]
    # read from another working directory: the template is found by its absolute path
    read = _read(folder / "fit_results.fits", cwd=tmp_path.parent)
    assert read["modules"] == []
    full = list(results.optimized_model.free_parameters)
    assert set(full) - set(read["names"]) == {"blob.Galactic_gaussian.sigma_l", "blob.Galactic_gaussian.sigma_b"}
    index = [full.index(name) for name in read["names"]]
    # the covariance of the remaining parameters, unchanged
    np.testing.assert_allclose(read["covariance"], covariance[np.ix_(index, index)], rtol=1e-12, atol=0)


def test_templates_are_recorded_where_the_folder_will_be(fitted, tmp_path):
    results, _ = fitted
    work, final = tmp_path / ".out.tmp", tmp_path / "out"
    write_portable_results(results, work / "fit_results.fits", final_dir=final)
    work.rename(final)
    read = _read(final / "fit_results.fits", cwd=tmp_path)
    assert "blob.spectrum.main.Gaussian.F" in read["names"]
    # a folder moved later: relocating the file points it at the templates beside it
    moved = tmp_path / "elsewhere" / "fit with spaces"
    moved.parent.mkdir()
    final.rename(moved)
    relocate_portable_results(moved / "fit_results.fits")
    assert _read(moved / "fit_results.fits", cwd=tmp_path)["names"] == read["names"]


def test_template_is_the_fitted_shape_normalised(fitted, tmp_path):
    results, _ = fitted
    written = write_portable_results(results, tmp_path / "r.fits")
    template = hp.read_map(written[0])
    nside = hp.npix2nside(template.size)
    assert template.sum() * hp.nside2pixarea(nside) == pytest.approx(1.0, rel=1e-12)
    shape = results.optimized_model.blob.spatial_shape
    expected = Rasterizer(nside, "ring", grid_frame="icrs")(shape)
    # the closed-form normalisation of the shape and the map's sum agree to the rasterizer's tolerance
    np.testing.assert_allclose(template, expected / (expected.sum() * hp.nside2pixarea(nside)), rtol=1e-6)
    assert expected.sum() * hp.nside2pixarea(nside) == pytest.approx(1.0, rel=1e-3)
    # the template evaluates the shape where astromodels calls it: ICRS (R.A., Dec.) in degrees
    ra, dec = np.array([266.4, 100.0]), np.array([-28.9, 30.0])
    peak = hp.ang2pix(nside, ra, dec, lonlat=True)
    assert u.Quantity(shape(ra, dec)).value == pytest.approx(template[peak], rel=0.05)
