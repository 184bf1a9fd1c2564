"""Expected counts of a simulated dataset and their Poisson draws, in the local and the Galactic CDS.

The sky and background source rows are folded a block of ScAtt rows at a time
(the dense expectation of all rows never sits in memory at once) and drawn with
``numpy.random.default_rng``. Galactic-CDS counts are made by moving every count
of ScAtt bin b, local pixel psi to one of the (up to four) Galactic pixels that
share psi's rotated centre, drawn with the bilinear weights of
:func:`~cosi_imaging_plugin.engine.galactic.psichi_rotation` for the bin's mean
attitude. Counts stay integers, their total is unchanged, and their expectation is
``rotate_to_galactic`` of the local one.
"""
import dataclasses

import healpy as hp
import numpy as np
from tqdm.auto import tqdm

from ..engine.galactic import psichi_rotation, rotate_to_galactic
from .backgrounds import fold_rows, scale_rows, template_rows

# Working memory of one block of folded expected counts (float64, all folded components).
_BLOCK_BYTES = 256 * 2**20


def _rotation_table(attitude, nside_local, nside_galactic, scheme_local):
    """Galactic pixels and bilinear weights (n_local, 4) of every local PsiChi pixel at one attitude."""
    op = psichi_rotation(attitude, nside_local, nside_galactic, scheme_local, "ring").tocsc()
    op.sort_indices()
    n_local = op.shape[1]
    per_column = np.diff(op.indptr)
    columns = np.repeat(np.arange(n_local), per_column)
    slot = np.arange(op.nnz) - np.repeat(op.indptr[:-1], per_column)
    pixels = np.zeros((n_local, 4), dtype=np.int64)
    weights = np.zeros((n_local, 4))
    pixels[columns, slot] = op.indices
    weights[columns, slot] = op.data
    return pixels, weights / weights.sum(axis=1, keepdims=True)


class Components:
    """Source rows of the sky and the scaled backgrounds.

    ``folded`` lists (name, rows) folded block by block (the sky first); a background
    whose rows are all proportional (instrumental) is folded once into ``rank_one[name] =
    (row weights, folded profile)`` and scaled per row.
    """

    def __init__(self, config, response, mapping, table, livetime, sky_rows):
        self.names = list(config.backgrounds)
        self.norms = {name: spec.norm for name, spec in config.backgrounds.items()}
        self.folded = [("sky", sky_rows)]
        self.rank_one = {}
        for name, spec in config.backgrounds.items():
            rows = scale_rows(template_rows(spec.kind, response, mapping, table, spec.index), response, spec.rate,
                              livetime, name)
            proportional = _proportional_rows(rows)
            if proportional is None:
                self.folded.append((name, rows))
            else:
                weights, profile = proportional
                self.rank_one[name] = (weights, fold_rows(response, profile[None])[0])
        self.n_rows = mapping.n_rows


@dataclasses.dataclass
class Draws:
    """Results of :func:`draw`."""

    n_rows: int  # ScAtt bins
    coords: np.ndarray  # (2, nnz): ScAtt row, flat CDS column
    counts: np.ndarray  # (nnz,)
    templates: dict  # name -> float32 (n_rows, n_columns)
    folded_sky: float
    galactic_counts: np.ndarray = None  # flat (Em, Phi, PsiChi_gal), int64
    galactic_templates: dict = None  # name -> (Em, Phi, PsiChi_gal)
    nside_galactic: int = None


def draw(config, response, components, attitudes, progress):
    """Dense expected counts a block of ScAtt rows at a time, Poisson draws and Galactic moves."""
    n_rows, n_columns = components.n_rows, response.n_columns
    psi_axis = response.axes["PsiChi"]
    cds_shape = tuple(a.nbins for a in response.axes[2:])
    names = components.names
    templates = {name: np.empty((n_rows, n_columns), dtype=np.float32) for name in names}
    # independent streams: the counts do not depend on how the Galactic moves consume numbers
    rng_counts, rng_moves = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(2))
    # the folded block and its transposed copy dominate the working memory
    block = max(1, int(_BLOCK_BYTES // (2 * 8 * n_columns * len(components.folded))))
    coords, values, folded_sky = [], [], 0.0
    galactic = attitudes is not None
    if galactic:
        nside_gal = psi_axis.nside
        n_gal = hp.nside2npix(nside_gal)
        gal_counts = np.zeros(int(np.prod(cds_shape[:-1])) * n_gal, dtype=np.int64)
        gal_templates = {name: np.zeros((*cds_shape[:-1], n_gal)) for name in names}
    for r0 in tqdm(range(0, n_rows, block), desc="expected counts", unit="block", disable=not progress):
        r1 = min(n_rows, r0 + block)
        stacked = np.concatenate([rows[r0:r1] for _, rows in components.folded])
        folded = fold_rows(response, stacked).reshape(len(components.folded), r1 - r0, n_columns)
        for i, (name, _) in enumerate(components.folded[1:], start=1):
            templates[name][r0:r1] = folded[i]
        for name, (weights, profile) in components.rank_one.items():
            templates[name][r0:r1] = weights[r0:r1, None] * profile[None, :]
        expected = folded[0]
        folded_sky += float(expected.sum())
        for name in names:
            # the data are drawn from the template values as written (float32)
            expected += components.norms[name] * templates[name][r0:r1]
        counts = rng_counts.poisson(expected)
        del folded, expected
        rows, cols = np.nonzero(counts)
        n = counts[rows, cols]
        del counts
        coords.append(np.vstack([rows + r0, cols]))
        values.append(n)
        if galactic:
            _move_counts(rows + r0, cols, n, attitudes, psi_axis.nside, nside_gal, str(psi_axis.scheme),
                         cds_shape[-1], n_gal, rng_moves, gal_counts)
            for name in names:
                chunk = templates[name][r0:r1].reshape(r1 - r0, *cds_shape)
                gal_templates[name] += rotate_to_galactic(chunk, attitudes[r0:r1], psi_axis.nside, nside_gal,
                                                          str(psi_axis.scheme), "ring")
    draws = Draws(n_rows=n_rows, coords=np.concatenate(coords, axis=1), counts=np.concatenate(values),
                  templates=templates, folded_sky=folded_sky)
    if galactic:
        draws.galactic_counts, draws.galactic_templates, draws.nside_galactic = gal_counts, gal_templates, nside_gal
    return draws


def _proportional_rows(rows):
    """(weights, profile) with ``rows = weights[:, None] * profile`` if all rows are proportional, else None."""
    totals = rows.sum(axis=1)
    reference = int(np.argmax(totals))
    if not totals[reference] > 0:
        return None
    profile = rows[reference] / totals[reference]
    if np.allclose(rows, totals[:, None] * profile[None, :], rtol=1e-12, atol=0.0):
        return totals, profile
    return None


def _move_counts(rows, cols, counts, attitudes, nside_local, nside_gal, scheme_local, n_local, n_gal, rng, out):
    """Add the counts of local bins (row, col) to Galactic bins, each count to one of its bilinear pixels."""
    order = np.argsort(rows, kind="stable")
    rows, cols, counts = rows[order], cols[order], counts[order]
    bounds = np.flatnonzero(np.diff(rows)) + 1
    for sel in np.split(np.arange(rows.size), bounds):
        if sel.size == 0:
            continue
        pixels, weights = _rotation_table(attitudes[rows[sel[0]]], nside_local, nside_gal, scheme_local)
        psi = cols[sel] % n_local
        rest = cols[sel] // n_local  # (Em, Phi) index
        split = rng.multinomial(counts[sel], weights[psi])
        target = rest[:, None] * n_gal + pixels[psi]
        np.add.at(out, target.ravel(), split.ravel())
