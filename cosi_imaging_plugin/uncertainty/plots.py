"""Figures of a LIRA posterior: mean, std and significance maps, traces with their R-hat."""
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..plots import plot_image, save_figure


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
    names = [n for n in ("log_posterior", "smoothing", "background_norms", "total_flux") if n in diagnostics["rhat"]]
    if fig is None:
        fig = plt.figure(figsize=(8, 2.2 * len(names)))
    fig.clear()
    axes = np.atleast_1d(fig.subplots(len(names), 1, sharex=True))
    for ax, name in zip(axes, names):
        values = result.trace(name)
        flat = values.reshape(values.shape[0], values.shape[1], -1)
        for c in range(flat.shape[0]):
            for p in range(flat.shape[2]):
                ax.plot(flat[c, :, p], lw=0.6, color=f"C{c}", alpha=0.8)
        if name == "smoothing":
            ax.set_yscale("log")
        ax.axvspan(0, result.burn_in, color="grey", alpha=0.15)
        ax.set_title(f"{name}: R-hat {float(np.max(diagnostics['rhat'][name])):.3f}", fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("sweep")
    fig.tight_layout()
    return fig


def save_result_plots(result, directory, energy_indices=None):
    """Write ``lira_mean_E<i>.png``, ``lira_std_E<i>.png``, ``lira_significance_E<i>.png`` and ``lira_traces.png``.

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
    paths.append(save_figure(plot_traces(result), directory / "lira_traces.png"))
    return paths
