"""Figures of an analysis: sky images, deconvolution convergence, data versus model in the CDS.

Sky maps are Mollweide views (``healpy.projview``) with the frame named, a labelled
longitude/latitude graticule, a colour bar with quantity, unit and readable ticks,
and the energy band in the title; a logarithmic stretch starts at a floor set by a
dynamic range (``dynamic_range``, 1e3 by default) below the peak, so that faint haze
does not fill the map; residual maps use a diverging scale centred on zero.

The ``plot_*`` and ``*_figures`` functions return matplotlib Figures (for
notebooks); :func:`save_figure` and the ``save_*`` / ``plot_residuals`` functions
write PNG files atomically and close their figures. They read histograms and
result dictionaries only, so every estimator can draw with them (the 3ML plugin's
``display()``, the deconvolution's result plots). The command line selects the Agg
backend, so nothing needs a display.
"""
import logging
from pathlib import Path

import healpy as hp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import LogLocator, MaxNLocator

from ._atomic import atomic_path
from .binning import IMAGE_UNIT, IMAGE_UNIT_TEXT, dense_values, frame_name, is_nested

logger = logging.getLogger(__name__)


def _flat_norm_series(results):
    """``{label: [norm per iteration]}`` from the results' background normalizations."""
    series = {}
    for r in results:
        norms = r["background_normalization"]
        for key, value in norms.items():
            if isinstance(value, dict):
                for comp, v in value.items():
                    series.setdefault(f"{key}: {comp}", []).append(float(v))
            else:
                series.setdefault(key, []).append(float(value))
    return series


def plot_convergence(results, fig=None):
    """Log-likelihood (and log-posterior), alpha and background norms versus iteration.

    Parameters
    ----------
    results : list of dict
        ``ImageDeconvolution.results``.
    fig : matplotlib.figure.Figure, optional
        Figure to draw into (cleared); a new one by default.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if fig is None:
        fig = plt.figure(figsize=(7, 8))
    fig.clear()
    axes = fig.subplots(3, 1, sharex=True)
    iterations = [r["iteration"] for r in results]
    axes[0].plot(iterations, [float(np.sum(r["loglikelihood"])) for r in results], "o-", label="log-likelihood")
    if results and results[0].get("log_posterior") is not None:
        axes[0].plot(iterations, [r["log_posterior"] for r in results], "s--", label="log-posterior")
    axes[0].set_ylabel("log-likelihood")
    axes[0].legend(loc="lower right")
    axes[1].plot(iterations, [float(r.get("alpha", 1.0)) for r in results], "o-")
    axes[1].set_ylabel("alpha")
    for label, values in _flat_norm_series(results).items():
        axes[2].plot(iterations, values, "o-", label=label)
    if axes[2].lines:
        axes[2].legend(loc="best")
    axes[2].set_ylabel("background norm")
    axes[2].set_xlabel("iteration")
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


#: Axis labels of the frames of sky maps.
FRAME_LABELS = {
    "galactic": ("Galactic longitude l", "Galactic latitude b"),
    "icrs": ("right ascension", "declination"),
    "spacecraftframe": ("Psi (spacecraft frame)", "latitude (spacecraft frame)"),
}


def band_label(axis, index):
    """``'509-513 keV'``: the edges of bin `index` of an energy axis."""
    edges = axis.edges
    unit = getattr(edges, "unit", None)
    values = edges.to_value("keV") if unit is not None and unit.physical_type == "energy" else np.asarray(edges)
    suffix = " keV" if unit is None or unit.physical_type == "energy" else f" {unit}"
    return f"{values[index]:.4g}-{values[index + 1]:.4g}{suffix}"


def _colour_ticks(low, high, log):
    """Five or six readable colour-bar ticks between `low` and `high`."""
    locator = LogLocator(numticks=6) if log else MaxNLocator(5)
    ticks = [float(t) for t in locator.tick_values(low, high) if low <= t <= high]
    return ticks if len(ticks) >= 2 else [float(low), float(high)]


def mollweide(values, fig, nest, frame="galactic", title="", label="", cmap="viridis", vmin=None, vmax=None,
              log=False, sub=111, extend=None):
    """Draw one HEALPix map (``hp.UNSEEN`` pixels grey) into `fig`: frame, graticule, colour bar.

    Parameters
    ----------
    values : ndarray
    fig : matplotlib.figure.Figure
    nest : bool
    frame : str
        Frame of the map ('galactic', 'icrs', 'spacecraftframe'): names the axes.
    title, label : str
        Title, and colour-bar label (quantity [unit]).
    cmap : str
    vmin, vmax : float, optional
    log : bool
        Logarithmic colour scale (values must be positive).
    sub : int or tuple
        Subplot position.
    extend : str, optional
        Colour-bar extension ('min', 'max', 'both').
    """
    valid = values != hp.UNSEEN
    finite = values[valid & np.isfinite(values)]
    low = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    high = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if high <= low:
        high = low + (abs(low) if low else 1.0)
    xlabel, ylabel = FRAME_LABELS.get(frame, (f"longitude ({frame})", f"latitude ({frame})"))
    hp.projview(values, fig=fig.number, sub=sub, nest=nest, title=title, unit=label, cmap=cmap, min=low, max=high,
                norm="log" if log else None, graticule=True, graticule_labels=True, xlabel=xlabel, ylabel=ylabel,
                cbar_ticks=_colour_ticks(low, high, log), format="%.3g", extend=extend, hold=sub == 111,
                xtick_label_color="0.55")  # longitude labels lie on the map: a grey that shows on dark and light
    return fig


def plot_image(image, energy_index=0, log=False, fig=None, title=None, vmin=None, vmax=None, cmap="magma",
               mask=None, dynamic_range=1e3, quantity="intensity"):
    """Mollweide view of one energy plane of an image, with its band in the title.

    Parameters
    ----------
    image : histpy.Histogram
        Image over [lb (HEALPix), Ei].
    energy_index : int
        Ei bin to show.
    log : bool
        Logarithmic colour scale from a floor (`vmin`, or the peak / `dynamic_range`)
        to the peak; fainter pixels are drawn at the floor.
    fig : matplotlib.figure.Figure, optional
        A pyplot figure to draw into (cleared); a new one by default.
    title : str, optional
        Title; the Ei band is appended.
    vmin, vmax : float, optional
        Colour range (image unit).
    cmap : str
    mask : histpy.Histogram or ndarray of bool, optional
        Pixels where False are drawn as missing (grey).
    dynamic_range : float
        Ratio of the peak to the floor of the logarithmic stretch.
    quantity : str
        What the values are, for the colour bar.

    Returns
    -------
    matplotlib.figure.Figure
    """
    axis = image.axes[0]
    values = np.asarray(dense_values(image)[:, energy_index], dtype=np.float64)
    if mask is not None:
        m = getattr(mask, "contents", mask)
        m = np.asarray(m, dtype=bool)
        m = m[:, energy_index] if m.ndim == 2 else m
        values = np.where(m, values, hp.UNSEEN)
    valid = values != hp.UNSEEN
    extend = None
    if log:
        peak = vmax if vmax is not None else float(values[valid].max(initial=0.0))
        peak = peak if peak > 0 else 1.0
        floor = vmin if vmin is not None else peak / float(dynamic_range)
        values = np.where(valid, np.clip(values, floor, None), hp.UNSEEN)
        vmin, vmax, extend = floor, peak, "min"
    if fig is None:
        fig = plt.figure(figsize=(8.5, 5.4))
    fig.clear()
    band = band_label(image.axes[1], energy_index)
    unit = "" if image.unit is None else f" [{IMAGE_UNIT_TEXT if image.unit == IMAGE_UNIT else image.unit}]"
    return mollweide(values, fig, is_nested(axis), frame_name(axis, "galactic"),
                     title=f"{title}, {band}" if title else band, label=f"{quantity}{unit}", cmap=cmap,
                     vmin=vmin, vmax=vmax, log=log, extend=extend)


def plot_sky_map(sky_map, title=None, markers=None, unit=None, cmap="viridis", fig=None):
    """Mollweide view of a HEALPix map with a colour bar, and optional markers (a TS map and its detections).

    Parameters
    ----------
    sky_map : histpy.Histogram
        One HEALPix axis (Galactic); NaN pixels are drawn grey.
    title : str, optional
    markers : sequence of (l, b) in deg, optional
        Positions marked with circles.
    unit : str, optional
        Colour-bar label (default the map's unit).
    cmap : str
    fig : matplotlib.figure.Figure, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    axis = sky_map.axes[0]
    values = np.asarray(dense_values(sky_map), dtype=np.float64).ravel()
    values = np.where(np.isfinite(values), values, hp.UNSEEN)
    if fig is None:
        fig = plt.figure(figsize=(8.5, 5.4))
    fig.clear()
    label = unit if unit is not None else ("" if sky_map.unit is None else str(sky_map.unit))
    mollweide(values, fig, is_nested(axis), frame_name(axis, "galactic"), title=title or "", label=label, cmap=cmap)
    for lon, lat in markers or ():
        hp.newprojplot(theta=np.radians(90.0 - lat), phi=np.radians(lon), marker="o", markersize=12,
                       markerfacecolor="none", markeredgecolor="red", markeredgewidth=1.5, linestyle="")
    return fig


def save_figure(fig, path):
    """Save a figure as PNG atomically and close it; return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def save_image(image, path, title, log=False, energy_index=0):
    """Mollweide PNG of one Ei plane of a sky image Histogram [lb, Ei] (see :func:`plot_image`)."""
    return save_figure(plot_image(image, energy_index=energy_index, log=log, title=title), path)


def residual_figures(data, model):
    """Data versus model in the CDS, summed over ScAtt and Em: the Phi distribution and PsiChi maps.

    Parameters
    ----------
    data, model : histpy.Histogram
        Observed and expected counts over [Em, Phi, PsiChi] (e.g. ``plugin.data_cds()`` and
        ``plugin.model_cds()``).

    Returns
    -------
    (matplotlib.figure.Figure, matplotlib.figure.Figure)
        Phi distribution with a residual panel; PsiChi maps of data, model and residuals.
    """
    phi_edges = data.axes["Phi"].edges.to_value("deg")
    centres = 0.5 * (phi_edges[1:] + phi_edges[:-1])
    data_phi, model_phi = data.project("Phi").contents, model.project("Phi").contents
    phi_figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 6),
                                             gridspec_kw={"height_ratios": [3, 1]})
    top.errorbar(centres, data_phi, yerr=np.sqrt(data_phi), fmt="o", ms=3, label="data")
    top.stairs(model_phi, phi_edges, label="model", color="C1")
    top.set_ylabel("counts")
    top.legend()
    with np.errstate(divide="ignore", invalid="ignore"):
        bottom.plot(centres, (data_phi - model_phi) / np.sqrt(model_phi), "o", ms=3)
    bottom.axhline(0, color="k", lw=0.8)
    bottom.set_xlabel("Compton scattering angle Phi [deg]")
    bottom.set_ylabel("(d - m) / sqrt(m)")

    psichi = data.axes["PsiChi"]
    frame = frame_name(psichi, "spacecraftframe")
    data_psi = np.asarray(dense_values(data.project("PsiChi")), dtype=np.float64)
    model_psi = np.asarray(dense_values(model.project("PsiChi")), dtype=np.float64)
    psichi_figure = plt.figure(figsize=(16, 4.5))
    with np.errstate(divide="ignore", invalid="ignore"):
        residual = np.where(model_psi > 0, (data_psi - model_psi) / np.sqrt(model_psi), hp.UNSEEN)
    finite = residual[residual != hp.UNSEEN]
    # diverging scale centred on zero
    limit = float(np.max(np.abs(finite))) if finite.size and np.any(finite) else 1.0
    frame_text = "spacecraft frame" if frame == "spacecraftframe" else f"{frame} frame"
    high = float(max(data_psi.max(initial=0.0), model_psi.max(initial=0.0))) or 1.0
    panels = [(data_psi, "data", "counts", "viridis", 0.0, high), (model_psi, "model", "counts", "viridis", 0.0, high),
              (residual, "(d - m) / sqrt(m)", "(d - m) / sqrt(m)", "RdBu_r", -limit, limit)]
    for i, (values, title, label, cmap, low, top) in enumerate(panels):
        mollweide(values, psichi_figure, is_nested(psichi), frame, title=f"PsiChi ({frame_text}): {title}",
                  label=label, cmap=cmap, vmin=low, vmax=top, sub=(1, 3, i + 1))
    return phi_figure, psichi_figure


def plot_residuals(data, model, output_dir):
    """Write ``residuals_phi.png`` and ``residuals_psichi.png`` (see :func:`residual_figures`) into `output_dir`."""
    phi_figure, psichi_figure = residual_figures(data, model)
    output_dir = Path(output_dir)
    return [save_figure(phi_figure, output_dir / "residuals_phi.png"),
            save_figure(psichi_figure, output_dir / "residuals_psichi.png")]


def save_plots(results, directory, mask=None, energy_indices=None):
    """Write ``convergence.png`` and, for the final model, ``model_E<i>.png`` and ``model_E<i>_log.png``.

    Parameters
    ----------
    results : list of dict
        ``ImageDeconvolution.results``.
    directory : str or pathlib.Path
    mask : histpy.Histogram, optional
        Masked pixels are drawn grey.
    energy_indices : list of int, optional
        Ei bins to draw (default all).

    Returns
    -------
    list of pathlib.Path
    """
    directory = Path(directory)
    paths = [save_figure(plot_convergence(results), directory / "convergence.png")]
    final = results[-1]
    model = final["model"]
    n_ei = model.axes[1].nbins
    for e in range(n_ei) if energy_indices is None else energy_indices:
        title = f"RL image, iteration {final['iteration']}"
        paths.append(save_figure(plot_image(model, e, mask=mask, title=title), directory / f"model_E{e}.png"))
        paths.append(save_figure(plot_image(model, e, log=True, mask=mask, title=title + " (log)"),
                                 directory / f"model_E{e}_log.png"))
    logger.info("wrote %d plots to %s", len(paths), directory)
    return paths
