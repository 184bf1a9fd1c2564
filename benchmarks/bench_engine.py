"""Engine benchmark at the data-challenge scale: sparse-data path versus the dense way.

Inputs (default): the built-in COSI-like line response at NSIDE 16 with 60 Phi bins
of 3 deg and one 509-513 keV bin; a three-month rocking orbit binned into ~1000
spacecraft-attitude bins at NSIDE 16; a model image at NSIDE 16 (bulge + disk);
an instrument-frame background template; ~1.5 million Poisson counts.

One iteration = expectation at the non-empty bins + Poisson log-likelihood +
transpose product of ``d / eps`` (+ background products), as one step of RL or
one gradient of a fit needs. Printed figures (last line: one JSON object):

- ``sparse_s``: seconds per iteration on the sparse-data path;
- ``dense_s``: the same the dense way, as the COSI team's DataIF does it: one
  float32 ``tensordot`` of the model rows with the dense response over all bins,
  the log-likelihood over all bins, and the transpose ``tensordot``;
- ``limit_s``: ``max(2 x response bytes as stored / memory read bandwidth,
  4 x nnz x m / float32 GEMM rate)``, with m the mean number of stored response
  entries per non-empty data bin, both rates measured in this run;
- ``speedup = dense_s / sparse_s``, ``limit_ratio = sparse_s / limit_s``,
  ``peak_mb`` (resident memory during the sparse iterations, dense arrays freed).
"""
import argparse
import gc
import logging
import sys
from pathlib import Path

import healpy as hp
import numpy as np
import sparse
from astropy import units as u
from histpy import Axes, Axis, Histogram

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakRSS, gemm_rate, memory_read_bandwidth, report, timed  # noqa: E402

from cosi_imaging_plugin.engine import CCMMapping, ColumnResponse, ResponseEngine  # noqa: E402
from cosi_imaging_plugin.exposure import ExposureTable, coordsys_conversion_matrix  # noqa: E402
from cosi_imaging_plugin.instrument.config import InstrumentConfig  # noqa: E402
from cosi_imaging_plugin.instrument.orbit import OrbitConfig, simulate_orbit  # noqa: E402
from cosi_imaging_plugin.instrument.response_generator import generate_response  # noqa: E402

logger = logging.getLogger("benchmark")


def bulge_disk_image(nside, flux_bulge=1e-3, flux_disk=1e-3):
    """511 keV-like sky (ph cm-2 s-1 sr-1): Gaussian bulge (FWHM 20 deg) + thin disk (3 deg scale height)."""
    lon, lat = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)), lonlat=True)
    lon = (lon + 180) % 360 - 180
    sigma = np.radians(20 / 2.355)
    vec = np.array(hp.ang2vec(lon, lat, lonlat=True))
    r = np.arccos(np.clip(vec[:, 0], -1, 1))
    bulge = np.exp(-0.5 * (r / sigma) ** 2)
    disk = np.exp(-np.abs(lat) / 3.0) * np.exp(-0.5 * (lon / 60.0) ** 2)
    domega = 4 * np.pi / lon.size
    image = flux_bulge * bulge / (bulge.sum() * domega) + flux_disk * disk / (disk.sum() * domega)
    return image[:, None]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nside", type=int, default=16, help="response, model and ScAtt NSIDE")
    parser.add_argument("--phi-bins", type=int, default=60)
    parser.add_argument("--days", type=float, default=90.0)
    parser.add_argument("--counts", type=float, default=1.5e6, help="total expected counts")
    parser.add_argument("--rtol", type=float, default=1e-3, help="response truncation tolerance")
    parser.add_argument("--repeats", type=int, default=5, help="sparse iterations timed (median)")
    parser.add_argument("--dense-repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also time each step of the sparse iteration")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rng = np.random.default_rng(1)

    config = InstrumentConfig.default().updated(
        {"binning": {"nside": args.nside, "phi_edges_deg": {"start": 0.0, "stop": 180.0, "bins": args.phi_bins}}})
    logger.info("generating the response")
    generated = generate_response(config, dtype=np.float32)
    dense_rsp, rsp_axes = generated.contents, generated.axes
    del generated
    n_nu, n_ei = dense_rsp.shape[:2]
    cds_shape = dense_rsp.shape[2:]
    n_columns = int(np.prod(cds_shape))
    rsp_matrix = dense_rsp.reshape(n_nu * n_ei, n_columns)

    orbit = OrbitConfig(duration_s=args.days * 86400, cadence_s=60.0, rocking_deg=22.0, inclination_deg=1.0,
                        precession_period_days=60.0)
    table = ExposureTable.from_orientation(simulate_orbit(orbit), nside=args.nside)
    ccm = coordsys_conversion_matrix(table, nside_model=args.nside, nside_response=args.nside,
                                     use_averaged_pointing=True)
    mapping = CCMMapping(ccm)
    n_rows = mapping.n_rows
    logger.info("%d ScAtt bins, %d CDS bins per row", n_rows, n_columns)

    image = bulge_disk_image(args.nside)
    rows32 = mapping.forward(image, dtype=np.float32)
    sky = rows32 @ rsp_matrix
    # instrument-frame background: isotropic in the spacecraft frame, proportional to each bin's exposure
    bkg_shape = rsp_matrix.sum(axis=0, dtype=np.float64)
    bkg = (mapping.row_exposure[:, None] * bkg_shape[None, :]).astype(np.float32)
    scale_bkg = (args.counts - sky.sum(dtype=np.float64)) / bkg.sum(dtype=np.float64)
    bkg *= np.float32(scale_bkg)
    counts = rng.poisson(sky + bkg).astype(np.float32)
    logger.info("%.0f counts in %d non-empty bins of %d", counts.sum(dtype=np.float64), np.count_nonzero(counts),
                counts.size)

    def dense_iteration():
        rows = mapping.forward(image, dtype=np.float32)
        eps = np.tensordot(rows, rsp_matrix, axes=(1, 0)) + bkg
        with np.errstate(divide="ignore", invalid="ignore"):
            logl = float(np.sum(np.where(counts > 0, counts * np.log(eps), 0), dtype=np.float64)
                         - np.sum(eps, dtype=np.float64))
            ratio = np.where(counts > 0, counts / eps, 0).astype(np.float32)
        transposed = mapping.adjoint(np.tensordot(ratio, rsp_matrix, axes=(1, 1)))
        return logl, transposed, eps

    dense_s, (dense_logl, dense_t, dense_eps) = timed(dense_iteration, args.dense_repeats)
    logger.info("dense iteration: %.2f s", dense_s)

    data_axes = Axes([Axis(np.arange(n_rows + 1), label="ScAtt"), *rsp_axes[2:]])
    data = Histogram(data_axes, contents=sparse.COO.from_numpy(counts.reshape(n_rows, *cds_shape)))
    background = Histogram(data_axes, contents=bkg.reshape(n_rows, *cds_shape))
    nonzero = np.flatnonzero(counts)
    dense_eps_at_bins = dense_eps.reshape(-1)[nonzero].astype(np.float64)
    del sky, counts, dense_eps
    gc.collect()

    chunk = 64
    response = ColumnResponse.from_chunks(
        ((slice(i, min(n_nu, i + chunk)), dense_rsp[i:i + chunk]) for i in range(0, n_nu, chunk)),
        rsp_axes, u.cm**2, rtol=args.rtol, dtype=np.float32)
    dense_bytes = dense_rsp.nbytes
    del dense_rsp, rsp_matrix, bkg
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
            "forward_kernel": lambda: engine.sky_expectation_at_bins(rows=rows),
            "backgrounds": lambda: engine.background_at_bins(norms),
            "total_expected": lambda: engine.total_expected(image, norms),
            "log_likelihood": lambda: engine.log_likelihood_from(eps, 1.0),
            "transpose_product": lambda: engine.transpose_product(ratio),
            "background_products": lambda: engine.background_products(ratio),
        }
        for name, step in steps.items():
            logger.info("profile %-20s %.4f s", name, timed(step, args.repeats)[0])
    with PeakRSS() as memory:
        sparse_s, (sparse_logl, sparse_t, _, sparse_eps) = timed(sparse_iteration, args.repeats)

    order = np.argsort(engine.data.flat_index)
    eps_err = np.abs(sparse_eps[order] - dense_eps_at_bins) / dense_eps_at_bins
    t_err = np.abs(sparse_t - dense_t).sum() / np.abs(dense_t).sum()

    bandwidth = memory_read_bandwidth()
    gemm = gemm_rate()
    entries_per_bin = np.diff(response.col_ptr)[engine.data.column] * response.block_size
    m = float(entries_per_bin.mean())
    nnz = engine.data.nnz
    limit_s = max(2 * response.nbytes / bandwidth, 4 * nnz * m / gemm)
    report({
        "sparse_s": round(sparse_s, 4),
        "dense_s": round(dense_s, 3),
        "limit_s": round(limit_s, 4),
        "speedup": round(dense_s / sparse_s, 1),
        "limit_ratio": round(sparse_s / limit_s, 2),
        "peak_mb": round(memory.peak_mb, 0),
        "dense_response_mb": round(dense_bytes / 1e6, 0),
        "stored_response_mb": round(response.nbytes / 1e6, 0),
        "stored_fraction": round(response.nnz / (response.n_source * response.n_columns), 4),
        "rtol": args.rtol,
        "scatt_bins": n_rows,
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
