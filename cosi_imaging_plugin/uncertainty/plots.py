"""Figures of a LIRA posterior: mean, std and significance maps, traces with their R-hat, and all in one figure."""
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..binning import IMAGE_UNIT_TEXT, frame_name, is_nested
from ..plots import band_label, mollweide, plot_image, save_figure

#: Traced parameters drawn, in order.
TRACE_NAMES = ("log_posterior", "smoothing", "background_norms", "total_flux")


def _draw_trace(ax, result, name, r_hat):
    """Every chain's trace of one traced parameter, the burn-in shaded, the worst R-hat in the title."""
    values = result.trace(name)
    flat = values.reshape(values.shape[0], values.shape[1], -1)
    for c in range(flat.shape[0]):
        for p in range(flat.shape[2]):
            ax.plot(flat[c, :, p], lw=0.6, color=f"C{c}", alpha=0.8)
    if name == "smoothing":
        ax.set_yscale("log")
    ax.axvspan(0, result.burn_in, color="grey", alpha=0.15)
    ax.set_title(f"{name}: R-hat {float(np.max(r_hat)):.3f}", fontsize=9)
    ax.grid(True, alpha=0.3)


def plot_traces(result, fig=None):
    """Traces of the log-posterior, the smoothing parameters, the background norms and the total flux.

    Every chain is one line; the burn-in is shaded and each panel's title gives the split-R-hat
    (the worst over the panel's parameters) after the burn-in.

    Parameters
    ----------
    result : LIRAResult
    fig : matplotlib.figure.Figure, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    diagnostics = result.diagnostics(warn=False)
    names = [n for n in TRACE_NAMES if n in diagnostics["rhat"]]
    if fig is None:
        fig = plt.figure(figsize=(8, 2.2 * len(names)))
    fig.clear()
    axes = np.atleast_1d(fig.subplots(len(names), 1, sharex=True))
    for ax, name in zip(axes, names):
        _draw_trace(ax, result, name, diagnostics["rhat"][name])
    axes[-1].set_xlabel("sweep")
    fig.tight_layout()
    return fig


def plot_summary(result, energy_index=0, fig=None):
    """One figure of a LIRA posterior: the mean, std and significance (mean / std) maps of one Ei bin
    above the traces of the traced parameters, each with its split-R-hat.

    Parameters
    ----------
    result : LIRAResult
    energy_index : int
        Ei bin of the maps.
    fig : matplotlib.figure.Figure, optional
        A pyplot figure to draw into (cleared); a new one by default.

    Returns
    -------
    matplotlib.figure.Figure
    """
    maps = result.maps()
    diagnostics = result.diagnostics(warn=False)
    names = [n for n in TRACE_NAMES if n in diagnostics["rhat"]]
    if fig is None:
        fig = plt.figure(figsize=(15, 7.5))
    fig.clear()
    axis = result.model_axes[0]
    band = band_label(result.model_axes[1], energy_index)
    for i, (name, title, cmap, unit) in enumerate((
            ("mean", "posterior mean", "magma", IMAGE_UNIT_TEXT),
            ("std", "posterior std", "magma", IMAGE_UNIT_TEXT),
            ("significance", "posterior mean / std", "viridis", ""))):
        values = np.asarray(maps[name].contents, dtype=np.float64)[:, energy_index]
        mollweide(values, fig, is_nested(axis), frame_name(axis, "galactic"), title=f"{title}, {band}",
                  label=unit, cmap=cmap, sub=(2, 3, i + 1))
    for i, name in enumerate(names):
        ax = fig.add_subplot(2, len(names), len(names) + i + 1)
        _draw_trace(ax, result, name, diagnostics["rhat"][name])
        ax.set_xlabel("sweep")
    return fig


def save_result_plots(result, directory, energy_indices=None):
    """Write ``lira_mean_E<i>.png``, ``lira_std_E<i>.png``, ``lira_significance_E<i>.png``,
    ``lira_summary_E<i>.png`` (:func:`plot_summary`) and ``lira_traces.png``.

    Returns
    -------
    list of pathlib.Path
    """
    directory = Path(directory)
    maps = result.maps()
    n_ei = result.draws.shape[3]
    paths = []
    for e in range(n_ei) if energy_indices is None else energy_indices:
        for name, title in (("mean", "posterior mean"), ("std", "posterior std"),
                            ("significance", "posterior mean / std")):
            fig = plot_image(maps[name], energy_index=e, title=f"{title} (Ei bin {e})",
                             cmap="magma" if name != "significance" else "viridis")
            paths.append(save_figure(fig, directory / f"lira_{name}_E{e}.png"))
        paths.append(save_figure(plot_summary(result, e), directory / f"lira_summary_E{e}.png"))
    paths.append(save_figure(plot_traces(result), directory / "lira_traces.png"))
    return paths
