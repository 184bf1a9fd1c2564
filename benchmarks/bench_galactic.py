"""Precomputing the Galactic-frame response: the compiled rotated fold against the former per-row products.

The inputs of the built-in ``crab_continuum`` dataset (NSIDE 8 response and model
grid, 18 Phi bins, four Ei and four Em bins, two days of rocking in ScAtt bins at
NSIDE 8 with averaged pointings, truncated at rtol 1e-3). Timed in one run:

- ``galactic_precompute_s``: :func:`~cosi_imaging_plugin.engine.galactic_response` over all
  ScAtt rows;
- ``baseline_precompute_s``: the former implementation (below, kept here as the baseline:
  per attitude row and Ei bin, the CCM row times the response as scipy sparse products,
  made dense, then times the PsiChi rotation), over the same rows;
- ``speedup``: their ratio; ``max_rel_difference``: the largest difference of the two
  responses' stored values relative to the largest value.

``--rows N`` restricts both to the first N ScAtt rows (the baseline takes about
2 s a row on two cores). The last printed line is one JSON object.
"""
import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import healpy as hp
import numpy as np
from astropy import units as u
from histpy import Axes, Axis, HealpixAxis, Histogram
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cosi_imaging_plugin.engine import ColumnResponse, galactic_response  # noqa: E402
from cosi_imaging_plugin.engine.galactic import psichi_rotation  # noqa: E402
from cosi_imaging_plugin.exposure import ExposureTable, coordsys_conversion_matrix  # noqa: E402
from cosi_imaging_plugin.instrument.orbit import simulate_orbit  # noqa: E402
from cosi_imaging_plugin.instrument.response_generator import generate_response  # noqa: E402
from cosi_imaging_plugin.simulate.config import builtin_config  # noqa: E402

from _common import report  # noqa: E402

logger = logging.getLogger("benchmark")


def baseline_galactic_response(response, ccm, attitudes, max_memory_mb=512):
    """The former precomputation: for each chunk of lb pixels, each attitude row and each Ei bin, the CCM row
    times the response (scipy sparse), made dense, times the transposed PsiChi rotation."""
    nu_axis, ei_axis, em_axis, phi_axis, psi_axis = response.axes
    n_ei, n_em, n_phi, n_loc = ei_axis.nbins, em_axis.nbins, phi_axis.nbins, psi_axis.nbins
    n_gal = n_loc
    lb_axis = ccm.axes[1]
    n_lb, n_rows = lb_axis.nbins, ccm.axes[0].nbins
    chunk = max(1, min(n_lb, int(max_memory_mb * 1e6 // (8 * n_ei * n_em * n_phi * (n_gal + n_loc) * 2))))
    by_energy = response.to_scipy().tocsr()
    by_energy = [by_energy[e::n_ei] for e in range(n_ei)]
    s, j, nu = ccm.contents.coords
    values = np.asarray(ccm.contents.data, dtype=np.float64) * ccm.unit.to(u.s)
    ccm_rows = [sparse.csr_matrix((values[s == row], (j[s == row], nu[s == row])), shape=(n_lb, nu_axis.nbins))
                for row in range(n_rows)]
    rotations = [psichi_rotation(a, psi_axis.nside, psi_axis.nside, psi_axis.scheme, "ring").T.tocsr()
                 for a in attitudes]

    def chunks():
        for j0 in range(0, n_lb, chunk):
            j1 = min(n_lb, j0 + chunk)
            acc = np.zeros((j1 - j0, n_ei, n_em * n_phi, n_gal))
            for c_s, rot_t in zip(ccm_rows, rotations):
                weights = c_s[j0:j1]
                if weights.nnz == 0:
                    continue
                for e in range(n_ei):
                    local = (weights @ by_energy[e]).toarray().reshape(-1, n_loc)
                    acc[:, e] += np.asarray(local @ rot_t).reshape(j1 - j0, n_em * n_phi, n_gal)
            yield slice(j0, j1), acc.reshape(j1 - j0, n_ei, n_em, n_phi, n_gal)

    gal_psi = HealpixAxis(nside=psi_axis.nside, scheme="ring", coordsys="galactic", label="PsiChi")
    return ColumnResponse.from_chunks(chunks(), Axes([lb_axis, ei_axis, em_axis, phi_axis, gal_psi]),
                                      u.Unit("cm2 s"), rtol=0.0, dtype=np.float32)


def inputs(rows):
    """(response, CCM, attitudes) of crab_continuum, the CCM and attitudes cut to the first `rows` rows."""
    config = builtin_config("crab_continuum")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "response.h5"
        generate_response(config.instrument, path, progress=False)
        response = ColumnResponse.from_file(path, rtol=config.response_rtol, progress=False)
    table = ExposureTable.from_orientation(simulate_orbit(config.orbit), config.scatt_nside)
    ccm = coordsys_conversion_matrix(table, config.model_nside, config.instrument.nside,
                                     use_averaged_pointing=True, progress=False)
    return (response, *first_rows(ccm, table.mean_attitudes(), rows or len(table)))


def first_rows(ccm, attitudes, rows):
    """The CCM and attitudes of the first `rows` ScAtt rows."""
    rows = min(rows, ccm.axes[0].nbins)
    ccm = Histogram(Axes([Axis(np.arange(rows + 1), label="ScAtt"), ccm.axes[1], ccm.axes[2]]),
                    contents=ccm.contents[:rows], unit=ccm.unit)
    return ccm, attitudes[:rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="first ScAtt rows only (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    response, ccm, attitudes = inputs(args.rows)
    logger.info("response %s; %d ScAtt rows, %d CCM entries", response, ccm.axes[0].nbins, ccm.contents.nnz)
    galactic_response(response, *first_rows(ccm, attitudes, 1), rtol=0.0, progress=False)  # compiles the kernel
    t0 = time.perf_counter()
    fast = galactic_response(response, ccm, attitudes, rtol=0.0, progress=False)
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = baseline_galactic_response(response, ccm, attitudes)
    slow_s = time.perf_counter() - t0
    a, b = fast.to_scipy(), slow.to_scipy()
    difference = float(abs(a - b).max() / abs(b).max())
    report({"rows": int(ccm.axes[0].nbins), "nside": int(hp.npix2nside(response.axes[0].nbins)),
            "galactic_precompute_s": round(fast_s, 2), "baseline_precompute_s": round(slow_s, 2),
            "speedup": round(slow_s / fast_s, 1), "max_rel_difference": difference})


if __name__ == "__main__":
    main()
