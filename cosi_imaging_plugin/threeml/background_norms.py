"""Background templates of a 3ML plugin: one normalization per template, or one per group of rows.

A template is gathered at the non-empty bins once; its normalizations are
astromodels parameters (3ML nuisance parameters) with bounds, and its expected
counts over all bins come from its per-row totals, so a change of norm costs
O(nnz).
"""
import numpy as np
from astromodels import Parameter

from ..errors import CosiInputError


class BackgroundNormalization:
    """A background template gathered at the non-empty bins, with one normalization or one per group of rows.

    The parameters are named ``{plugin}_{template}_norm`` or, split into groups,
    ``{plugin}_{template}_g{k}_norm``.

    Parameters
    ----------
    plugin_name : str
    engine : ResponseEngine
        The engine of the plugin's dataset.
    template : str
        Template name in the engine.
    groups : ndarray of int, shape (n_rows,), optional
        Group of each ScAtt/Time row; one normalization per distinct value.
    bounds : (float, float)
    free : bool
    """

    def __init__(self, plugin_name, engine, template, groups, bounds, free):
        self.template = template
        self.at_bins = engine.background_template_at_bins(template)
        description = f"normalization of background template '{template}' of {plugin_name}"
        if groups is None:
            self.labels, self.row_group, self.bin_group = [None], None, None
            self.totals = np.array([engine.background_total(template)])
        else:
            if (groups.shape != (engine.n_rows,) or not np.issubdtype(groups.dtype, np.integer)
                    or groups.min(initial=0) < 0):
                raise CosiInputError(f"background_groups['{template}'] must hold one non-negative integer group "
                                     f"per row, shape ({engine.n_rows},); got shape {groups.shape} and dtype "
                                     f"{groups.dtype}")
            self.labels, self.row_group = np.unique(groups, return_inverse=True)
            self.bin_group = self.row_group[engine.data.row]
            self.totals = np.bincount(self.row_group, weights=engine.background_row_totals(template),
                                      minlength=len(self.labels))
        self.parameters = {}
        for label in self.labels:
            key = template if label is None else f"{template}_g{label}"
            self.parameters[key] = Parameter(
                f"{plugin_name}_{key}_norm", 1.0, min_value=bounds[0], max_value=bounds[1], delta=0.01, free=free,
                desc=description + ("" if label is None else f", row group {label}"))

    def norms(self):
        """Current normalization of each group (one value without groups)."""
        return np.array([par.value for par in self.parameters.values()], dtype=np.float64)

    def row_norms(self):
        """The normalization as the engine takes it: a number, or one value per row."""
        norms = self.norms()
        return float(norms[0]) if self.row_group is None else norms[self.row_group]

    def total(self):
        """Expected counts over all bins."""
        return float(self.norms() @ self.totals)

    def expectation(self):
        """(expected counts at the non-empty bins, expected counts over all bins)."""
        norms = self.norms()
        at_bins = norms[0] * self.at_bins if self.bin_group is None else norms[self.bin_group] * self.at_bins
        return at_bins, self.total()
