"""Engine benchmark at the data-challenge scale: sparse-data path versus the dense way.

Inputs (default): the built-in COSI-like line response at NSIDE 16 with 60 Phi bins
of 3 deg and one 509-513 keV bin; a three-month rocking orbit binned into ~1000
spacecraft-attitude bins at NSIDE 16; a model image at NSIDE 16 (bulge + disk);
an instrument-frame background template; ~1.5 million Poisson counts.

One iteration = expectation at the non-empty bins + Poisson log-likelihood +
transpose product of ``d / eps`` (+ background products), as one step of RL or
one gradient of a fit needs. Printed figures (last line: one JSON object):

- ``sparse_s``: seconds per iteration on the sparse-data path (median of
  ``--repeats``; ``sparse_best_s`` is the fastest, measured like the two rates
  of ``limit_s``, which are best-of too, and ``limit_ratio_best`` its ratio);
- ``dense_s``: the same the dense way, as the COSI team's DataIF does it: one
  float32 ``tensordot`` of the model rows with the dense response over all bins,
  the log-likelihood over all bins, and the transpose ``tensordot``;
- ``limit_s``: ``max(2 x response bytes as stored / memory read bandwidth,
  4 x nnz x m / float32 GEMM rate)``, with m the mean number of stored response
  entries per non-empty data bin, both rates measured in this run;
- ``speedup = dense_s / sparse_s``, ``limit_ratio = sparse_s / limit_s``,
  ``limit_with_ccm_s`` (``limit_s`` with the CCM's bytes added to the response's:
  the local-frame path streams the CCM once per product, both ways, which
  ``limit_s`` leaves out) and its ratio ``limit_ratio_with_ccm``,
  ``peak_mb`` (resident memory during two further sparse iterations, dense arrays
  freed; sampled apart from the timed ones, whose cores the sampler would share).
"""
import gc
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cosi_imaging_plugin.engine import ResponseEngine  # noqa: E402

import _dc2  # noqa: E402
from _common import PeakRSS, gemm_rate, memory_read_bandwidth, report, timed  # noqa: E402

logger = logging.getLogger("benchmark")


def dense_reference(mapping, rsp_matrix, counts, bkg, image, repeats):
    """(seconds, log-likelihood, transpose product, expectation at the non-empty bins) of the dense way."""

    def dense_iteration():
        rows = mapping.forward(image, dtype=np.float32)
        eps = np.tensordot(rows, rsp_matrix, axes=(1, 0)) + bkg
        with np.errstate(divide="ignore", invalid="ignore"):
            logl = float(np.sum(np.where(counts > 0, counts * np.log(eps), 0), dtype=np.float64)
                         - np.sum(eps, dtype=np.float64))
            ratio = np.where(counts > 0, counts / eps, 0).astype(np.float32)
        transposed = mapping.adjoint(np.tensordot(ratio, rsp_matrix, axes=(1, 1)))
        return logl, transposed, eps

    dense_s, (logl, transposed, eps) = timed(dense_iteration, repeats)
    return dense_s, logl, transposed, eps.reshape(-1)[np.flatnonzero(counts)].astype(np.float64)


def main():
    parser = _dc2.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=7, help="sparse iterations timed (median and best)")
    parser.add_argument("--dense-repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also time each step of the sparse iteration")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    dc2 = _dc2.build(args)
    mapping, image = dc2.mapping, dc2.image
    dense_s, dense_logl, dense_t, dense_eps_at_bins = dense_reference(
        mapping, dc2.response_matrix, dc2.counts, dc2.background, image, args.dense_repeats)
    logger.info("dense iteration: %.2f s", dense_s)

    data, background = dc2.histograms()
    dense_bytes = dc2.response_matrix.nbytes
    response = dc2.compressed_response(args.rtol)
    del dc2
    gc.collect()
    engine = ResponseEngine(response, mapping, data=data, backgrounds={"activation": background}, dtype=np.float32)
    del data, background
    gc.collect()
    norms = {"activation": 1.0}

    def sparse_iteration():
        eps = engine.expectation_at_bins(image, norms)
        logl = engine.log_likelihood_from(eps, engine.total_expected(image, norms))
        ratio = engine.data.counts / eps
        return logl, engine.transpose_product(ratio), engine.background_products(ratio), eps

    sparse_iteration()  # compile the kernels
    if args.profile:
        eps = engine.expectation_at_bins(image, norms)
        ratio = engine.data.counts / eps
        rows = engine.source_rows(image)
        steps = {
            "source_rows": lambda: engine.source_rows(image),
            "sky_expectation": lambda: engine.sky_expectation_at_bins(image),
            "forward_from_rows": lambda: engine.sky_expectation_at_bins(rows=rows),
            "ccm_adjoint": lambda: engine.mapping.adjoint(rows),
            "backgrounds": lambda: engine.background_at_bins(norms),
            "total_expected": lambda: engine.total_expected(image, norms),
            "log_likelihood": lambda: engine.log_likelihood_from(eps, 1.0),
            "transpose_product": lambda: engine.transpose_product(ratio),
            "background_products": lambda: engine.background_products(ratio),
        }
        for name, step in steps.items():
            logger.info("profile %-20s %.4f s", name, timed(step, args.repeats)[0])
    # timed alone: the memory sampler's thread would take a share of the two cores from the kernels
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        sparse_logl, sparse_t, _, sparse_eps = sparse_iteration()
        times.append(time.perf_counter() - start)
    sparse_s, sparse_best_s = float(np.median(times)), min(times)
    with PeakRSS() as memory:
        for _ in range(2):
            sparse_iteration()

    order = np.argsort(engine.data.flat_index)
    eps_err = np.abs(sparse_eps[order] - dense_eps_at_bins) / dense_eps_at_bins
    t_err = np.abs(sparse_t - dense_t).sum() / np.abs(dense_t).sum()

    bandwidth = memory_read_bandwidth()
    gemm = gemm_rate()
    entries_per_bin = np.diff(response.col_ptr)[engine.data.column] * response.block_size
    m = float(entries_per_bin.mean())
    nnz = engine.data.nnz
    gemm_s = 4 * nnz * m / gemm
    limit_s = max(2 * response.nbytes / bandwidth, gemm_s)
    limit_with_ccm_s = max(2 * (response.nbytes + mapping.nbytes) / bandwidth, gemm_s)
    report({
        "sparse_s": round(sparse_s, 4),
        "dense_s": round(dense_s, 3),
        "limit_s": round(limit_s, 4),
        "speedup": round(dense_s / sparse_s, 1),
        "limit_ratio": round(sparse_s / limit_s, 2),
        "sparse_best_s": round(sparse_best_s, 4),
        "limit_ratio_best": round(sparse_best_s / limit_s, 2),
        "limit_with_ccm_s": round(limit_with_ccm_s, 4),
        "limit_ratio_with_ccm": round(sparse_s / limit_with_ccm_s, 2),
        "peak_mb": round(memory.peak_mb, 0),
        "dense_response_mb": round(dense_bytes / 1e6, 0),
        "stored_response_mb": round(response.nbytes / 1e6, 0),
        "stored_ccm_mb": round(mapping.nbytes / 1e6, 0),
        "stored_fraction": round(response.nnz / (response.n_source * response.n_columns), 4),
        "rtol": args.rtol,
        "scatt_bins": engine.n_rows,
        "nnz": nnz,
        "m_per_data_bin": round(m, 1),
        "m_per_cds_bin": round(response.mean_entries_per_column, 1),
        "bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "gemm_gflop_s": round(gemm / 1e9, 1),
        "max_rel_err_eps": float(f"{eps_err.max():.3g}"),
        "rel_err_transpose": float(f"{t_err:.3g}"),
        "logl_sparse_minus_dense": round(sparse_logl + engine.data.log_factorial - dense_logl, 3),
    })


if __name__ == "__main__":
    main()
