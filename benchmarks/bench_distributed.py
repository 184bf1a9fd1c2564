"""The engine sharded over a Dask LocalCluster: seconds per RL iteration on one and on two workers.

The DC2-scale inputs of ``_dc2.py`` (``--em-bins`` > 1 makes a continuum response with
that many Ei/Em bins, for a response larger than one worker may hold). In the same
process:

- the single-process engine on one kernel thread (the baseline of ``overhead_ms``);
- the engine sharded over a LocalCluster of one worker of one thread (``iter_s_1``);
- the same over two workers of one thread each (``iter_s_2``).

An iteration is the RL step of the engine as RL calls it: ``evaluate`` (expectations
at the non-empty bins, left where the bins live, and the log-likelihood) and
``ratio_products`` (transpose and background products of the ratios to the data). The
single-process engine also runs the step with the ratios computed by the caller, as
before the fused step (``single_fused_over_client_side``: its speed). Results of the sharded runs are
checked against the single-process ones. The compressed response is cut by this
process and sent to the workers (at this scale, writing the dense response file
for the workers to read would take 2 GB of disk per Em bin).

The last printed line is one JSON object: ``workers``, ``iter_s_1``, ``iter_s_2``,
``scaling_efficiency`` (``iter_s_1 / (2 iter_s_2)``), ``overhead_ms`` (``iter_s_1``
less the single-process iteration, in ms), ``overhead_fraction``, ``shard_mb``
(largest shard with two workers), ``total_response_mb`` (both copies of the stored
blocks), ``worker_rss_mb`` (largest growth of a worker's resident memory when its
shard was built, freed heap pages handed back), ``worker_limit_mb`` (when ``--worker-memory`` is given) and
``max_rel_diff``; ``worker_memory_ratio`` (``worker_rss_mb / (total_response_mb / 2)``, target 1.2);
``mapping_on`` (where the CCM went: ``--mapping-on`` workers, client, or auto, the choice
by the workers' memory limit, asked in ``mapping_on_asked``); ``balance`` (``--balance``: the columns cut
by stored blocks or by the EM step's work) and ``worker_compute_s_2_each`` (each worker's task seconds per
iteration with two workers), ``shard_work`` and ``shard_mb_each`` (each shard's EM-step work, its stored
blocks summed over its non-empty bins, and its bytes);
``worker_compute_s_1`` and ``worker_compute_s_2`` (seconds per iteration in the
busiest worker's tasks, from Dask's task stream: the split of the work, free of the load that
other processes put on a shared machine) and ``compute_scaling_efficiency`` from them.

What two workers can reach on this machine at best (skipped with ``--no-ceiling``; each of two
workers then holds the whole single-process engine, without the workers' memory limit):
``two_at_once_slowdown``, the time of one worker's whole single-process step while a second
worker runs the same step, over its time alone (the machine's cores, caches and memory
bandwidth shared); ``ccm_share``, the CCM's forward and adjoint products' share of the
single-process step, work that every worker repeats when it holds the CCM and that the client
does alone when it does; and from them the bounds on ``scaling_efficiency`` of an ideal cut
(equal halves, no scheduling, no transfer): ``ceiling_mapping_on_workers``
``= 1 / ((1 + f) s)`` and ``ceiling_mapping_on_client`` ``= 1 / (2 f + (1 - f) s)``, with ``f`` the
CCM's share and ``s`` the slowdown; ``step_on_a_worker_s``, the whole step alone in a worker's task
(against ``single_process_iter_s`` in this process: what running inside a worker costs by itself).
"""
import ctypes
import logging
import sys
import time
import warnings
from pathlib import Path

import numba
import numpy as np
import psutil
from distributed import Client, LocalCluster, get_task_stream, wait

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cosi_imaging_plugin.distributed import sharded_engine  # noqa: E402
from cosi_imaging_plugin.engine import ResponseEngine  # noqa: E402
from cosi_imaging_plugin.errors import CosiInputError  # noqa: E402

import _dc2  # noqa: E402
from _common import report  # noqa: E402

logger = logging.getLogger("benchmark")


def rl_step(engine, image, norms):
    """One RL step of the engine, as RL calls it: ``evaluate`` (expectations and log-likelihood) and
    ``ratio_products`` (transpose and background products of the ratios to the data)."""
    return engine.ratio_products(engine.evaluate(image, norms))[0]


def client_side_step(engine, image, norms):
    """The same step with the ratios computed by the caller (before the fused step): the baseline of its speed."""
    eps = engine.expectation_at_bins(image, norms)
    engine.log_likelihood_from(eps, engine.total_expected(image, norms))
    weights = engine.data.counts / eps
    engine.background_products(weights)
    return engine.transpose_product(weights)


def seconds_per_iteration(engine, image, norms, repeats, step=rl_step):
    step(engine, image, norms)  # compile / warm the kernels and buffers
    start = time.perf_counter()
    for _ in range(repeats):
        product = step(engine, image, norms)
    return (time.perf_counter() - start) / repeats, product


def rss():
    return psutil.Process().memory_info().rss


def _import_package():
    import cosi_imaging_plugin.distributed.shards  # noqa: F401


def trimmed_rss():
    """Resident memory after handing freed heap pages back to the system (glibc keeps them otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
    return rss()


def on_cluster(n_workers, response, dc2, data, background, image, norms, repeats, memory_limit, mapping_on,
               balance="blocks"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               memory_limit=memory_limit)
    with cluster, Client(cluster) as client:
        client.run(_import_package)  # the package's own memory is not the shard's
        before = client.run(trimmed_rss)
        start = time.perf_counter()
        engine = sharded_engine(client, response, dc2.mapping, data=data, backgrounds={"activation": background},
                                dtype=np.float32, mapping_on=mapping_on, balance=balance)
        built_s = time.perf_counter() - start
        # the pickled slices received are freed once unpacked: count what the shards hold
        growth = max(after - before[w] for w, after in client.run(trimmed_rss).items())
        rl_step(engine, image, norms)  # warm
        with get_task_stream(client) as stream:
            iter_s, product = seconds_per_iteration(engine, image, norms, repeats)
        busy, moved = {}, []
        for task in stream.data:  # the kernels' time on each worker, free of the client's and the machine's load
            for part in task["startstops"]:
                if part["action"] == "compute":
                    busy[task["worker"]] = busy.get(task["worker"], 0.0) + part["stop"] - part["start"]
                elif part["action"] == "transfer":  # results moved between workers (the reduction tree)
                    moved.append((str(task["key"])[:30], round(part["stop"] - part["start"], 3)))
        each_s = sorted(round(b / (repeats + 1), 3) for b in busy.values())
        compute_s = max(busy.values()) / (repeats + 1)
        logger.info("seconds per iteration in each worker's tasks: %s; %d transfers between workers %s",
                    [round(b / (repeats + 1), 3) for b in busy.values()], len(moved), moved)
        facts = engine.shard_facts()
        logger.info("%d workers: %.3f s per iteration (%.3f s in the busiest worker's tasks), shards %s MB, "
                    "built in %.1f s", n_workers, iter_s, compute_s, [round(f["response_bytes"] / 1e6) for f in facts],
                    built_s)
        facts[0]["placement"] = engine.placement["mapping_on"]
        facts[0]["compute_each_s"] = each_s
        return iter_s, product, facts, growth, compute_s


def full_engine(response, mapping, data, background):
    """The single-process engine, built on a worker (one thread) and kept there."""
    numba.set_num_threads(1)
    engine = ResponseEngine(response, mapping, data=data, backgrounds={"activation": background}, dtype=np.float32)
    engine.response.tiled_blocks()
    return engine


def timed_steps(engine, image, norms, repeats):
    """Seconds per RL step of `engine`, measured on the worker that holds it."""
    return seconds_per_iteration(engine, image, norms, repeats)[0]


def two_at_once(response, dc2, data, background, image, norms, repeats):
    """(seconds per step alone on each of two workers, the same with both running it at once).

    Each worker holds the whole single-process engine: the steps are the same work, so their
    ratio is what running two at once costs on this machine, whatever the cut.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        workers = list(client.scheduler_info()["workers"])
        engines = [client.submit(full_engine, response, dc2.mapping, data, background, workers=[w], pure=False)
                   for w in workers]
        wait(engines)
        alone = [client.submit(timed_steps, e, image, norms, repeats, workers=[w], pure=False).result()
                 for e, w in zip(engines, workers)]
        together = client.gather([client.submit(timed_steps, e, image, norms, repeats, workers=[w], pure=False)
                                  for e, w in zip(engines, workers)])
    logger.info("one step of the whole engine on a worker: %s s alone, %s s with both at once",
                np.round(alone, 3).tolist(), np.round(together, 3).tolist())
    return alone, together


def ccm_share(mapping, image, step_s, repeats):
    """The CCM's forward and adjoint products' share of a single-process step of `step_s` seconds."""
    rows = mapping.forward(image, dtype=np.float32)
    mapping.adjoint(rows)
    start = time.perf_counter()
    for _ in range(repeats):
        mapping.adjoint(mapping.forward(image, dtype=np.float32))
    return (time.perf_counter() - start) / repeats / step_s


def ceilings(slowdown, share):
    """Bounds on two workers' scaling efficiency of an ideal cut, CCM on the workers and on the client."""
    return {"ceiling_mapping_on_workers": round(1 / ((1 + share) * slowdown), 2),
            "ceiling_mapping_on_client": round(1 / (2 * share + (1 - share) * slowdown), 2)}


def main():
    parser = _dc2.parser(__doc__)
    parser.add_argument("--em-bins", type=int, default=1, help="Ei/Em bins (1: the 511 keV line bin)")
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per engine")
    parser.add_argument("--worker-memory", default="auto", help="memory limit of each worker (e.g. '1.5GB')")
    parser.add_argument("--mapping-on", choices=("auto", "workers", "client"), default="client",
                        help="where the CCM lives (sharded_engine's mapping_on)")
    parser.add_argument("--balance", choices=("blocks", "work"), default="blocks",
                        help="how the columns are cut (sharded_engine's balance)")
    parser.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                        help="skip the measurement of what two workers can reach on this machine")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if args.em_bins > 1:
        edges = np.geomspace(200.0, 2000.0, args.em_bins + 1).tolist()
        dc2 = _dc2.build(args, binning={"ei_edges_kev": edges, "em_edges_kev": edges})
    else:
        dc2 = _dc2.build(args)
    response = dc2.compressed_response(args.rtol)
    data, background = dc2.histograms()
    image = dc2.image
    norms = {"activation": 1.0}
    numba.set_num_threads(1)
    single = dc2.engine(args.rtol)
    single_s, expected = seconds_per_iteration(single, image, norms, args.repeats)
    # the fused step against the ratios computed by the caller, interleaved so a change of load hits both
    fused, client_side = [], []
    for _ in range(3):
        client_side.append(seconds_per_iteration(single, image, norms, args.repeats, client_side_step)[0])
        fused.append(seconds_per_iteration(single, image, norms, args.repeats)[0])
    logger.info("single process: fused step %.3f s, ratios by the caller %.3f s (best of 3)", min(fused),
                min(client_side))
    total = response.nbytes + response.tiled_blocks().nbytes
    logger.info("single process, one thread: %.3f s per iteration; response %.0f MB", single_s, total / 1e6)
    figures = {}
    if args.ceiling:
        share = ccm_share(dc2.mapping, image, single_s, args.repeats)
        del single
        alone, together = two_at_once(response, dc2, data, background, image, norms, args.repeats)
        slowdown = float(np.mean(np.array(together) / np.array(alone)))
        figures.update({"two_at_once_slowdown": round(slowdown, 2), "ccm_share": round(share, 3),
                        **ceilings(slowdown, share), "step_on_a_worker_s": round(float(np.mean(alone)), 3)})
    else:
        del single
    limit = args.worker_memory
    try:
        iter_s_1, product_1, _, _, compute_1 = on_cluster(1, response, dc2, data, background, image, norms,
                                                          args.repeats, limit, args.mapping_on, args.balance)
    except CosiInputError as err:  # one worker may not hold the whole response: measured without the limit
        logger.info("one worker refused, as it should: %s", err)
        figures["one_worker_refused"] = True
        iter_s_1, product_1, _, _, compute_1 = on_cluster(1, response, dc2, data, background, image, norms,
                                                          args.repeats, "auto", args.mapping_on, args.balance)
    iter_s_2, product_2, facts, growth, compute_2 = on_cluster(2, response, dc2, data, background, image, norms,
                                                               args.repeats, limit, args.mapping_on, args.balance)
    diff = max(float(np.max(np.abs(p - expected)) / np.max(np.abs(expected))) for p in (product_1, product_2))
    overhead_s = iter_s_1 - single_s
    figures = {
        **figures,
        "workers": 2,
        "iter_s_1": round(iter_s_1, 3),
        "iter_s_2": round(iter_s_2, 3),
        "scaling_efficiency": round(iter_s_1 / (2 * iter_s_2), 2),
        "overhead_ms": round(1e3 * overhead_s, 1),
        "overhead_fraction": round(overhead_s / iter_s_1, 3),
        "single_process_iter_s": round(single_s, 3),
        "worker_compute_s_1": round(compute_1, 3),
        "worker_compute_s_2": round(compute_2, 3),
        "compute_scaling_efficiency": round(compute_1 / (2 * compute_2), 2),
        "shard_mb": round(max(f["response_bytes"] for f in facts) / 1e6, 1),
        "total_response_mb": round(total / 1e6, 1),
        "worker_rss_mb": round(growth / 1e6, 1),
        "worker_memory_ratio": round(growth / (total / 2), 2),
        "mapping_on": facts[0]["placement"],
        "mapping_on_asked": args.mapping_on,
        "balance": args.balance,
        "worker_compute_s_2_each": facts[0]["compute_each_s"],
        "shard_work": [f["work"] for f in facts],
        "shard_mb_each": [round(f["response_bytes"] / 1e6, 1) for f in facts],
        "single_fused_over_client_side": round(min(fused) / min(client_side), 3),
        **({"worker_limit_mb": round(_bytes(limit) / 1e6)} if limit != "auto" else {}),
        "em_bins": args.em_bins,
        "nnz": int(data.contents.nnz),
        "max_rel_diff": float(f"{diff:.3g}"),
    }
    report(figures)


def _bytes(text):
    from dask.utils import parse_bytes

    return parse_bytes(text)


if __name__ == "__main__":
    main()
