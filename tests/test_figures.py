"""Figures a scientist can put on a slide: bands, frames, colour bars, stretches, residuals, iterations."""
import astropy.units as u
import healpy as hp
import matplotlib
import numpy as np
import pytest
from histpy import Axes, Axis, HealpixAxis, Histogram
from scoords import SpacecraftFrame

from cosi_imaging_plugin.binning import IMAGE_UNIT
from cosi_imaging_plugin.plots import plot_convergence, plot_image, residual_figures

matplotlib.use("Agg")


@pytest.fixture
def image(rng):
    axes = Axes([HealpixAxis(nside=8, scheme="ring", coordsys="galactic", label="lb"),
                 Axis([509.0, 513.0, 520.0] * u.keV, label="Ei")])
    values = rng.uniform(1e-9, 1e-7, size=(axes[0].nbins, 2))
    values[hp.ang2pix(8, 0.0, 0.0, lonlat=True)] = 1e-2  # one bright pixel: six decades above the haze
    return Histogram(axes, contents=values, unit=IMAGE_UNIT)


def _map_and_colour_bar(fig):
    sky, bar = fig.axes[0], fig.axes[-1]
    return sky, bar, sky.collections[0].norm


def test_image_names_band_frame_and_quantity(image):
    fig = plot_image(image, energy_index=1, title="RL image")
    sky, bar, _ = _map_and_colour_bar(fig)
    assert sky.get_title() == "RL image, 513-520 keV"
    assert sky.get_xlabel() == "Galactic longitude l" and sky.get_ylabel() == "Galactic latitude b"
    assert bar.get_xlabel() == "intensity [cm-2 s-1 sr-1]"
    assert len(bar.get_xticks()) >= 3  # readable ticks, not only the extremes
    labels = [t.get_text() for t in sky.get_yticklabels()]
    assert "30°" in "".join(labels) or "30" in "".join(labels)


def test_log_stretch_has_a_floor_below_the_peak(image):
    fig = plot_image(image, log=True, dynamic_range=1e3)
    _, _, norm = _map_and_colour_bar(fig)
    assert "Log" in type(norm).__name__
    assert norm.vmax == pytest.approx(1e-2) and norm.vmin == pytest.approx(1e-5)  # not the haze at 1e-9


def test_residual_map_is_centred_and_names_the_psichi_frame(rng):
    axes = Axes([Axis([0.0, 1.0], label="Em"), Axis([0.0, 90.0, 180.0] * u.deg, label="Phi"),
                 HealpixAxis(nside=4, scheme="ring", coordsys=SpacecraftFrame(), label="PsiChi")])
    model = Histogram(axes, contents=np.full(axes.nbins, 50.0))
    data = Histogram(axes, contents=rng.poisson(50.0, size=axes.nbins).astype(float) + 3.0)  # an offset
    _, psichi = residual_figures(data, model)
    residual = [ax for ax in psichi.axes if "(d - m)" in ax.get_title()][0]
    norm = residual.collections[0].norm
    assert norm.vmin == pytest.approx(-norm.vmax) and norm.vmax > 0
    assert "PsiChi (spacecraft frame)" in residual.get_title()


def test_convergence_has_integer_iteration_ticks():
    results = [{"iteration": i, "loglikelihood": [-100.0 + i], "alpha": 1.0, "background_normalization": {"a": 1.0}}
               for i in range(1, 4)]
    fig = plot_convergence(results)
    ticks = fig.axes[-1].get_xticks()
    assert np.all(ticks == np.round(ticks))
