"""Data-challenge-scale inputs shared by the benchmarks, built in memory.

The built-in COSI-like line response (NSIDE 16, 60 Phi bins of 3 deg, one
509-513 keV bin), a three-month rocking orbit binned into ~1000 ScAtt bins at
NSIDE 16, a bulge + disk sky at NSIDE 16, an instrument-frame background
template, and ~1.5 million Poisson counts drawn the dense way.
"""
import argparse
import logging
from dataclasses import dataclass

import healpy as hp
import numpy as np
import sparse
from astropy import units as u
from histpy import Axes, Axis, Histogram

from cosi_imaging_plugin.engine import CCMMapping, ColumnResponse, ResponseEngine
from cosi_imaging_plugin.exposure import ExposureTable, coordsys_conversion_matrix
from cosi_imaging_plugin.instrument import InstrumentConfig, OrbitConfig, generate_response, simulate_orbit

logger = logging.getLogger("benchmark")


def add_arguments(parser):
    """The scale options every DC2 benchmark accepts."""
    parser.add_argument("--nside", type=int, default=16, help="response, model and ScAtt NSIDE")
    parser.add_argument("--phi-bins", type=int, default=60)
    parser.add_argument("--days", type=float, default=90.0)
    parser.add_argument("--counts", type=float, default=1.5e6, help="total expected counts")
    parser.add_argument("--rtol", type=float, default=1e-3, help="response truncation tolerance")
    return parser


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


@dataclass
class DC2:
    """Dense inputs (the baseline's) and what the engine is built from."""

    response_matrix: np.ndarray   # float32 [NuLambda * Ei, Em * Phi * PsiChi]
    response_axes: Axes
    mapping: CCMMapping
    ccm: Histogram
    image: np.ndarray
    counts: np.ndarray            # float32 [ScAtt, CDS]
    background: np.ndarray        # float32 [ScAtt, CDS]
    table: ExposureTable

    @property
    def data_axes(self):
        return Axes([Axis(np.arange(self.mapping.n_rows + 1), label="ScAtt"), *self.response_axes[2:]])

    @property
    def cds_shape(self):
        return tuple(int(a.nbins) for a in self.response_axes[2:])

    def histograms(self):
        """(data, background) Histograms for the engine."""
        shape = (self.mapping.n_rows, *self.cds_shape)
        data = Histogram(self.data_axes, contents=sparse.COO.from_numpy(self.counts.reshape(shape)))
        return data, Histogram(self.data_axes, contents=self.background.reshape(shape))

    def compressed_response(self, rtol, chunk=64):
        """The response as the engine stores it, compressed chunk by chunk."""
        n_pix = self.response_axes[0].nbins
        blocks = self.response_matrix.reshape(n_pix, *[a.nbins for a in self.response_axes[1:]])
        return ColumnResponse.from_chunks(
            ((slice(i, min(n_pix, i + chunk)), blocks[i:i + chunk]) for i in range(0, n_pix, chunk)),
            self.response_axes, u.cm**2, rtol=rtol, dtype=np.float32)

    def engine(self, rtol):
        """The sparse-data engine on these inputs."""
        data, background = self.histograms()
        return ResponseEngine(self.compressed_response(rtol), self.mapping, data=data,
                              backgrounds={"activation": background}, dtype=np.float32)


def build(args, seed=1, image=None, binning=None):
    """Generate the DC2-scale inputs described in the module docstring.

    `image` (ph cm-2 s-1 sr-1, [n_pix, n_ei]) replaces the bulge + disk sky (the same in every Ei bin);
    `binning` updates the instrument's binning (e.g. ``ei_edges_kev`` and ``em_edges_kev`` of a continuum).
    """
    rng = np.random.default_rng(seed)
    config = InstrumentConfig.default().updated(
        {"binning": {"nside": args.nside, "phi_edges_deg": {"start": 0.0, "stop": 180.0, "bins": args.phi_bins},
                     **(binning or {})}})
    logger.info("generating the response")
    generated = generate_response(config, dtype=np.float32)
    axes = generated.axes
    matrix = generated.contents.reshape(axes[0].nbins * axes[1].nbins, -1)
    del generated
    orbit = OrbitConfig(duration_s=args.days * 86400, cadence_s=60.0, rocking_deg=22.0, inclination_deg=1.0,
                        precession_period_days=60.0)
    table = ExposureTable.from_orientation(simulate_orbit(orbit), nside=args.nside)
    ccm = coordsys_conversion_matrix(table, nside_model=args.nside, nside_response=args.nside,
                                     use_averaged_pointing=True)
    mapping = CCMMapping(ccm)
    logger.info("%d ScAtt bins, %d CDS bins per row", mapping.n_rows, matrix.shape[1])
    if image is None:
        image = np.repeat(bulge_disk_image(args.nside), axes[1].nbins, axis=1)
    sky = mapping.forward(image, dtype=np.float32) @ matrix
    # instrument-frame background: isotropic in the spacecraft frame, proportional to each bin's exposure
    shape = matrix.sum(axis=0, dtype=np.float64)
    background = (mapping.row_exposure[:, None] * shape[None, :]).astype(np.float32)
    background *= np.float32((args.counts - sky.sum(dtype=np.float64)) / background.sum(dtype=np.float64))
    counts = rng.poisson(sky + background).astype(np.float32)
    logger.info("%.0f counts in %d non-empty bins of %d", counts.sum(dtype=np.float64), np.count_nonzero(counts),
                counts.size)
    return DC2(matrix, axes, mapping, ccm, image, counts, background, table)


def parser(description):
    """An argument parser with the DC2 scale options."""
    return add_arguments(argparse.ArgumentParser(description=description,
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))
