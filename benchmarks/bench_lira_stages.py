"""Where one LIRA Gibbs sweep spends its time, stage by stage, against one RL iteration in the same process.

On the DC2-scale inputs of ``_dc2.py``: the seconds of one RL iteration (the engine's fused step,
``ratio_products(evaluate(...))``) and of every stage of one sweep (:mod:`cosi_imaging_plugin.uncertainty.gibbs`),
each run the way the sweep runs it, best of ``--repeats``:

- ``scale_forward``: the forward product of the sky's unit shape per Ei bin (source rows through the
  CCM, then the engine's forward kernel at the bins), shared by the scale move and the allocation
  (its expectations at the bins and its source rows);
- ``scale_move``: the Newton solve for the conditional mode and the Metropolis proposals;
  ``scale_move_exact_mode``: the same with the mode solved to a Newton decrement of ``1e-12`` instead of
  ``scale.MODE_DECREMENT`` (the baseline of ``scale_move_over_exact_mode``);
- ``alloc_stage1``: bins to (row, source entry) and backgrounds, exponential spacings included;
- ``alloc_stage2``: the stage-one counts gathered, then (row, source entry) to sky pixels through the CCM;
- ``tree``: the exposure augmentation and the multiscale tree's draws; ``background``: the norms' draw;
- ``sweep``: one whole sweep (``GibbsSampler.sweep``); ``sweep_exact_mode``: the same with the scale move's mode
  solved to ``1e-12`` (the baseline of ``sweep_over_exact_mode``); ``sweep_swaps``: the same with LIRA's
  default sibling swaps under the parents of the simulated sky's brightest pixels (``swap_columns``: the time
  to compute their columns, once per run; ``sweep_swaps_over_sweep``).

The last printed line is one JSON object: seconds per stage and per stage over the RL iteration (``*_over_rl``).
"""
import copy
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cosi_imaging_plugin.engine.kernel_layout import TILE_WIDTH  # noqa: E402
from cosi_imaging_plugin.uncertainty import allocation, scale  # noqa: E402
from cosi_imaging_plugin.uncertainty.gibbs import GibbsSampler  # noqa: E402
from cosi_imaging_plugin.uncertainty.lira import DEFAULT_SIBLING_SWAPS  # noqa: E402
from cosi_imaging_plugin.uncertainty.swap import SiblingSwap, bright_parents  # noqa: E402

import _dc2  # noqa: E402
from _common import report  # noqa: E402

logger = logging.getLogger("benchmark")


def best(function, repeats):
    """Smallest wall time of `repeats` calls, and the last call's result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = _dc2.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warm-sweeps", type=int, default=3, help="sweeps from the dispersed start before timing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    dc2 = _dc2.build(args)
    engine = dc2.engine(args.rtol)
    sampler = GibbsSampler(engine, 1000.0, (1.0, 0.0))
    rng = np.random.default_rng(0)
    state = sampler.dispersed_start(rng)
    for _ in range(args.warm_sweeps):
        state, _ = sampler.sweep(state, rng)
    bkg = dict(zip(sampler.names, state.norms))
    seconds = {}
    seconds["rl_iter"], _ = best(lambda: engine.ratio_products(engine.evaluate(state.image, bkg)), args.repeats)
    seconds["sweep"], _ = best(lambda: sampler.sweep(state, rng), args.repeats)
    sampler.scale_move.tolerance = 1e-12
    seconds["sweep_exact_mode"], _ = best(lambda: sampler.sweep(state, rng), args.repeats)
    sampler.scale_move.tolerance = scale.MODE_DECREMENT
    start = time.perf_counter()
    sampler.swap = SiblingSwap(sampler.allocator, sampler.exposure, sampler.to_nested,
                               bright_parents(sampler.nested(dc2.image)), DEFAULT_SIBLING_SWAPS)
    seconds["swap_columns"] = time.perf_counter() - start
    seconds["sweep_swaps"], _ = best(lambda: sampler.sweep(state, rng), args.repeats)
    swap_parents, swap_mb = sampler.swap.n_parents, sampler.swap.memory_mb
    sampler.swap = None

    alloc = sampler.allocator
    image = state.image
    mu = image.sum(axis=0) * sampler.exposure_max
    seconds["scale_forward"], unit_sky = best(
        lambda: np.array([alloc.sky_at_bins(alloc.tiled_rows(np.where(np.arange(sampler.n_ei) == e, image / mu, 0.0)))
                          for e in range(sampler.n_ei)]), args.repeats)
    unit_totals = (image * sampler.exposure).sum(axis=0) / mu
    current = np.concatenate([mu, state.norms])
    seconds["scale_move"], _ = best(lambda: sampler.scale_move.draw(unit_sky, unit_totals, current, rng),
                                    args.repeats)
    exact_mode = copy.copy(sampler.scale_move)
    exact_mode.tolerance = 1e-12
    seconds["scale_move_exact_mode"], _ = best(lambda: exact_mode.draw(unit_sky, unit_totals, current, rng),
                                               args.repeats)
    rows = alloc.tiled_rows(image)

    data = engine.data
    tiles = engine.response.tiled_blocks()
    bkg_weights = np.ascontiguousarray(alloc._templates * state.norms[:, None])
    expectation = mu @ unit_sky + bkg_weights.sum(axis=0)
    n_tasks = alloc._chunks.size - 1

    def stage1():
        out_source = np.zeros((n_tasks,) + rows.shape, dtype=np.int32)
        out_bkg = np.zeros((n_tasks, bkg_weights.shape[0]))
        spacings = rng.standard_exponential(alloc._n_spacings)
        allocation.allocate_bins(tiles.tile_ptr, tiles.local_block, tiles.values, data.active_cols, alloc._chunks,
                                 data.data_ptr, data.row, data.counts, alloc._offsets, spacings, expectation, rows,
                                 bkg_weights, out_source, out_bkg, np.zeros(n_tasks),
                                 np.full(n_tasks, -1, dtype=np.int64))
        return out_source

    seconds["alloc_stage1"], out_source = best(stage1, args.repeats)

    def stage2():
        source = np.empty((engine.n_rows, engine.response.n_source), dtype=np.int64)
        needs = np.empty(engine.n_rows, dtype=np.int64)
        allocation.gather_source_counts(out_source.reshape(n_tasks, -1), alloc._entry_offsets, TILE_WIDTH, source,
                                        needs)
        row_start = np.concatenate([[0], np.cumsum(needs)[:-1]]).astype(np.int64)
        spacings = rng.standard_exponential(int(needs.sum()))
        out = np.zeros((alloc._row_chunks.size - 1,) + image.shape)
        allocation.allocate_to_sky(*alloc._csr, image, source, row_start, spacings, alloc._row_chunks, out)
        return out.sum(axis=0)

    seconds["alloc_stage2"], sky = best(stage2, args.repeats)

    def tree():
        complete = sampler.nested(sky)
        nested = sampler.nested(image)
        exposure = sampler.nested(sampler.exposure)
        for e in range(sampler.n_ei):
            extra = rng.poisson(nested[:, e] * np.maximum(sampler.exposure_max[e] - exposure[:, e], 0.0))
            sampler.tree.draw(complete[:, e] + extra, sampler.exposure_max[e], state.smoothing[:, e], rng)

    seconds["tree"], _ = best(tree, args.repeats)
    seconds["background"], _ = best(lambda: rng.gamma(1.0 + np.ones(len(sampler.names))) / sampler.bkg_totals,
                                    args.repeats)
    stages = ("scale_forward", "scale_move", "alloc_stage1", "alloc_stage2", "tree", "background")
    seconds["stages_total"] = sum(seconds[k] for k in stages)
    result = {k: round(v, 4) for k, v in seconds.items()}
    result.update({f"{k}_over_rl": round(v / seconds["rl_iter"], 2) for k, v in seconds.items() if k != "rl_iter"})
    for stage in ("scale_move", "sweep"):
        result[f"{stage}_over_exact_mode"] = round(seconds[stage] / seconds[f"{stage}_exact_mode"], 3)
    result.update({"sweep_swaps_over_sweep": round(seconds["sweep_swaps"] / seconds["sweep"], 3),
                   "swap_parents": swap_parents, "swap_mb": round(swap_mb, 1)})
    result.update({"scatt_bins": engine.n_rows, "nnz": data.nnz})
    report(result)


if __name__ == "__main__":
    main()
