"""Sibling swaps: a Metropolis move that exchanges two children's shares of their parent's intensity.

At LIRA's large ``delta`` the smoothing parameters are small and the multiscale prior favours sparse splits:
the chains put a bright source's flux into a few pixels of its neighbourhood, each chain into different ones,
and the Gibbs sweep, which moves flux only through the allocated counts, keeps a chain in its configuration
for hundreds of sweeps (``benchmarks/RESULTS.md``). This move picks a parent node of the NESTED tree and two
of its four children and exchanges the children's totals, each child keeping its own sub-shape. The
parent's ``Dirichlet(a, a, a, a)`` split is exchangeable and no other split changes, so the prior is
unchanged; the proposal is symmetric, so the Metropolis ratio is the likelihood ratio alone.

The likelihood ratio needs the expected counts at the non-empty bins of the few pixels that change. They are
computed once, pixel by pixel, with the engine's forward product (through the CCM) and stored sparse: a
swap then reads a few pixels' columns instead of a whole forward product. The parents are those above the
brightest pixels of a first image (the RL image the chains start around), as many as a memory budget
allows; the choice depends on that image only, never on a chain's state.
"""
import logging

import numba
import numpy as np

from .scale import SUM_PIECES

logger = logging.getLogger(__name__)

#: Share of the first image's pixels, brightest first, whose parents the swaps visit.
BRIGHT_FRACTION = 0.1
#: Levels above the pixels of the parents visited: 1 exchanges two pixels, 2 two blocks of four.
LEVELS_UP = (1, 2)
#: Memory for the pixels' columns (MB); parents beyond it are left out, the faintest first.
MEMORY_MB = 256.0


def bright_parents(image, levels_up=LEVELS_UP, fraction=BRIGHT_FRACTION):
    """Parent nodes above the brightest pixels of an image, brightest first.

    Parameters
    ----------
    image : ndarray, shape (n_pix,) or (n_pix, n_ei)
        A first image in NESTED order; several Ei bins are summed.
    levels_up : sequence of int
        Levels above the pixels.
    fraction : float
        Share of the pixels, brightest first, whose parents are returned.

    Returns
    -------
    list of (int, int)
        ``(levels up, NESTED index of the node at its level)``, ordered by the node's summed brightness.
    """
    values = np.asarray(image, dtype=np.float64)
    values = values.reshape(values.shape[0], -1).sum(axis=1)
    top = np.argsort(values, kind="stable")[::-1][:max(1, int(round(fraction * values.size)))]
    nodes = []
    for up in levels_up:
        for node in np.unique(top >> (2 * up)):
            nodes.append((float(values[node << (2 * up):(node + 1) << (2 * up)].sum()), up, int(node)))
    return [(up, node) for _, up, node in sorted(nodes, reverse=True)]


class SiblingSwap:
    """Exchange of two children's totals under the bright parents of a first image (Metropolis, exact).

    Parameters
    ----------
    allocator : Allocator
        The sampler's allocator (its forward product gives the pixels' columns).
    exposure : ndarray, shape (n_pix, n_ei)
        Expected counts over all bins per unit intensity of every pixel (model order).
    to_nested : ndarray of int or None
        Model pixel of every NESTED index (None where the model grid is NESTED).
    parents : list of (int, int)
        Candidate parents, ``(levels up, NESTED index)``, in the order they are kept under the budget.
    n_swaps : int
        Proposals per sweep.
    memory_mb : float
        Budget of the pixels' columns.
    """

    def __init__(self, allocator, exposure, to_nested, parents, n_swaps, memory_mb=MEMORY_MB):
        self.exposure = np.ascontiguousarray(exposure, dtype=np.float64)
        n_pix, self.n_ei = self.exposure.shape
        self.n_swaps = int(n_swaps)
        model_pixel = np.arange(n_pix) if to_nested is None else np.asarray(to_nested)
        slot_of = {}
        ptr, indices, values = [0], [], []
        node_ptr, node_pixels, node_slots, used = [0], [], [], 0
        for up, node in parents:
            leaves = model_pixel[node << (2 * up):(node + 1) << (2 * up)]
            new = [p for p in leaves if p not in slot_of]
            columns = [self._column(allocator, n_pix, p) for p in new]
            size = sum(12.0 * idx.size for col in columns for idx, _ in col) / 1e6  # int32 index, float64 value
            if used + size > memory_mb:
                logger.info("sibling swaps: %d of %d parents within the %.0f MB budget", len(node_ptr) - 1,
                            len(parents), memory_mb)
                break
            used += size
            for p, col in zip(new, columns):
                slot_of[p] = len(slot_of)
                for idx, val in col:
                    indices.append(idx)
                    values.append(val)
                    ptr.append(ptr[-1] + idx.size)
            node_pixels.extend(leaves)
            node_slots.extend(slot_of[p] for p in leaves)
            node_ptr.append(len(node_pixels))
        self.n_parents = len(node_ptr) - 1
        self.memory_mb = used
        logger.info("sibling swaps: %d parents, %d pixel columns, %.1f MB", self.n_parents, len(slot_of), used)
        self.col_ptr = np.asarray(ptr, dtype=np.int64)
        self.col_idx = np.concatenate(indices).astype(np.int32) if indices else np.zeros(0, dtype=np.int32)
        self.col_val = np.concatenate(values) if values else np.zeros(0)
        self.node_ptr = np.asarray(node_ptr, dtype=np.int64)
        self.node_pixels = np.asarray(node_pixels, dtype=np.int64)
        self.node_slots = np.asarray(node_slots, dtype=np.int64)

    def _column(self, allocator, n_pix, pixel):
        """Expected counts at the non-empty bins per unit intensity of one pixel, per Ei bin, kept sparse: one
        forward product split by Ei bin."""
        unit = np.zeros((n_pix, self.n_ei))
        unit[pixel] = 1.0
        out = []
        for column in allocator.sky_at_bins_per_ei(allocator.tiled_rows(unit)):
            nonzero = np.flatnonzero(column)
            out.append((nonzero, column[nonzero]))
        return out

    def draw(self, image, expected, sky, counts, rng):
        """`n_swaps` proposals in turn.

        Parameters
        ----------
        image : ndarray, shape (n_pix, n_ei)
            Sky image in the model grid's order.
        expected : ndarray, shape (nnz,)
            Expected counts (sky and backgrounds) at the non-empty bins; updated in place with every
            accepted swap.
        sky : ndarray, shape (nnz,)
            The sky's part of `expected`, updated in place with it: the sweep then needs no new forward
            product after the swaps.
        counts : ndarray, shape (nnz,)
        rng : numpy.random.Generator

        Returns
        -------
        ndarray, shape (n_pix, n_ei)
            The new image.
        int
            Accepted swaps.
        """
        image = np.array(image, dtype=np.float64)
        if self.n_parents == 0 or self.n_swaps == 0:
            return image, 0
        n = self.n_swaps
        nodes = rng.integers(self.n_parents, size=n)
        eis = rng.integers(self.n_ei, size=n)
        first = rng.integers(4, size=n)
        second = (first + 1 + rng.integers(3, size=n)) % 4  # a second child, uniform among the other three
        log_u = np.log(rng.random(n))
        scratch = np.zeros(expected.size)
        touched = np.zeros(expected.size, dtype=np.bool_)
        bins = np.empty(expected.size, dtype=np.int64)
        accepted = _swaps(image, self.exposure, expected, sky, np.asarray(counts, dtype=np.float64), self.node_ptr,
                          self.node_pixels, self.node_slots, self.col_ptr, self.col_idx, self.col_val, nodes, eis,
                          first, second, log_u, scratch, touched, bins)
        return image, int(accepted)


@numba.njit(parallel=True, cache=True, nogil=True)
def _log_ratio(bins, n_bins, scratch, expected, counts):
    """``sum d ln((eps + change) / eps)`` over the changed bins (-inf where an ``eps + change <= 0``), in
    `SUM_PIECES` fixed pieces summed in order: the same sum whatever the number of threads."""
    parts = np.zeros(SUM_PIECES)
    for h in numba.prange(SUM_PIECES):
        acc = 0.0
        for t in range(h * n_bins // SUM_PIECES, (h + 1) * n_bins // SUM_PIECES):
            j = bins[t]
            if not expected[j] + scratch[j] > 0.0:
                acc = -np.inf
                break
            acc += counts[j] * np.log1p(scratch[j] / expected[j])
        parts[h] = acc
    total = 0.0
    for h in range(SUM_PIECES):
        total += parts[h]
    return total


@numba.njit(cache=True, nogil=True)
def _swaps(image, exposure, expected, sky, counts, node_ptr, node_pixels, node_slots, col_ptr, col_idx, col_val,
           nodes, eis, first, second, log_u, scratch, touched, bins):
    """The proposals of :meth:`SiblingSwap.draw`: each exchanges the totals of two children of one parent in
    one Ei bin and is accepted on the change of the Poisson log-likelihood; `image`, `expected` and `sky`
    change in place."""
    n_ei = image.shape[1]
    accepted = 0
    for k in range(nodes.size):
        start = node_ptr[nodes[k]]
        size = (node_ptr[nodes[k] + 1] - start) // 4
        e = eis[k]
        a = start + first[k] * size
        b = start + second[k] * size
        total_a = 0.0
        total_b = 0.0
        for q in range(size):
            total_a += image[node_pixels[a + q], e]
            total_b += image[node_pixels[b + q], e]
        if not (total_a > 0.0 and total_b > 0.0):
            continue
        n_bins = 0
        change_total = 0.0
        for lo, ratio in ((a, total_b / total_a - 1.0), (b, total_a / total_b - 1.0)):
            for q in range(lo, lo + size):
                change = image[node_pixels[q], e] * ratio
                change_total += change * exposure[node_pixels[q], e]
                col = node_slots[q] * n_ei + e
                for i in range(col_ptr[col], col_ptr[col + 1]):
                    j = col_idx[i]
                    if not touched[j]:
                        touched[j] = True
                        bins[n_bins] = j
                        n_bins += 1
                    scratch[j] += change * col_val[i]
        accept = log_u[k] < _log_ratio(bins, n_bins, scratch, expected, counts) - change_total
        for t in range(n_bins):
            j = bins[t]
            if accept:
                expected[j] += scratch[j]
                sky[j] = max(sky[j] + scratch[j], 0.0)  # a sum of non-negative terms, rounding aside
            scratch[j] = 0.0
            touched[j] = False
        if accept:
            accepted += 1
            for lo, factor in ((a, total_b / total_a), (b, total_a / total_b)):
                for q in range(lo, lo + size):
                    image[node_pixels[q], e] *= factor
    return accepted
