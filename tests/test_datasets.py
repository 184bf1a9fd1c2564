"""COSIDataset: every route to a dataset builds the same engine with the same defaults.

A tiny simulated dataset (NSIDE 4, six hours of orbit) is opened from its files,
its manifest and its histograms; the routes must agree to rounding, and the
Galactic-frame route must rotate the response over the dataset's own attitude bins.
"""
import numpy as np
import pytest
from histpy import Histogram

from cosi_imaging_plugin.datasets import DEFAULT_RTOL, COSIDataset, build_engine
from cosi_imaging_plugin.deconvolution import DeconvolutionDataset
from cosi_imaging_plugin.engine import ColumnResponse
from cosi_imaging_plugin.errors import CosiFileError, CosiInputError
from cosi_imaging_plugin.exposure import ExposureTable
from cosi_imaging_plugin.io import read_ccm, read_histogram
from cosi_imaging_plugin.io.manifest import read_manifest, write_manifest
from cosi_imaging_plugin.threeml import COSIImagingLike

from test_simulate import tiny_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from cosi_imaging_plugin.simulate import simulate_dataset

    return simulate_dataset(tiny_config(), tmp_path_factory.mktemp("sim") / "tiny", progress=False)


def flat_image(dataset, value=1e-3):
    return np.full(tuple(dataset.model_axes.nbins), value)


def test_files_manifest_and_histograms_give_the_same_dataset(tiny):
    from_manifest = COSIDataset.from_manifest(tiny.path, rtol=0.0, progress=False)
    from_files = COSIDataset.from_files(tiny["response"], tiny["data_scatt"], tiny["backgrounds"], ccm=tiny["ccm"],
                                        rtol=0.0, progress=False)
    response = ColumnResponse.from_file(tiny["response"], rtol=0.0, progress=False)
    from_histograms = COSIDataset.from_histograms(
        read_histogram(tiny["data_scatt"], counts=True),
        {name: read_histogram(path) for name, path in tiny["backgrounds"].items()}, response, read_ccm(tiny["ccm"]))
    image = flat_image(from_manifest)
    norms = {name: 0.9 for name in tiny["backgrounds"]}
    reference = from_manifest.log_likelihood(image, norms)
    for dataset in (from_files, from_histograms):
        assert dataset.background_names == from_manifest.background_names
        assert dataset.total_counts == from_manifest.total_counts == tiny.truth["observed_counts"]["data_scatt"]
        assert dataset.log_likelihood(image, norms) == pytest.approx(reference, rel=1e-12)
    # expected counts: at the non-empty bins plus the rest equal the dense total
    dense = from_manifest.npred(image, norms).contents
    assert from_manifest.npred_total(image, norms) == pytest.approx(float(np.sum(dense)), rel=1e-9)
    assert from_manifest.npred_cds(image, norms).contents.sum() == pytest.approx(float(np.sum(dense)), rel=1e-9)
    assert from_manifest.counts_cds().contents.sum() == from_manifest.total_counts
    assert from_manifest.n_bins == dense.size


def test_every_route_uses_the_default_truncation(tiny):
    """One set of defaults: a response file is compressed with DEFAULT_RTOL whichever route opens it."""
    data = read_histogram(tiny["data_scatt"], counts=True)
    ccm = read_ccm(tiny["ccm"])
    datasets = [
        COSIDataset.from_files(tiny["response"], tiny["data_scatt"], ccm=tiny["ccm"], progress=False),
        COSIDataset.from_manifest(tiny.path, progress=False),
        COSIDataset.from_histograms(data, {}, tiny["response"], ccm),
        DeconvolutionDataset("d", data, {}, tiny["response"], ccm=ccm),
        COSIImagingLike.from_files("cosi", tiny["response"], tiny["data_scatt"], ccm=tiny["ccm"]).dataset,
    ]
    assert DEFAULT_RTOL == 1e-3
    for dataset in datasets:
        assert dataset.engine.response.rtol == DEFAULT_RTOL
        assert dataset.engine.dtype == np.float32


def test_galactic_frame_uses_the_dataset_attitude_bins(tiny, tmp_path):
    """The rotation only moves PsiChi: over the exposure table's bins and with its CCM, the Galactic-frame
    exposure map is the spacecraft-frame one. Without the table, the orientation is binned anew (another
    binning, no Earth occultation), and the exposure differs."""
    local = COSIDataset.from_manifest(tiny.path, "spacecraft", rtol=0.0, progress=False)
    galactic = COSIDataset.from_manifest(tiny.path, "galactic", rtol=0.0, progress=False)
    # both responses are stored in float32: each value rounded by at most eps/2 relative, sums of positive terms
    np.testing.assert_allclose(galactic.exposure, local.exposure, rtol=np.finfo(np.float32).eps)
    assert galactic.total_counts == tiny.truth["observed_counts"]["data_galactic"]
    assert np.isfinite(galactic.log_likelihood(flat_image(galactic)))

    roles = {role: str(path) for role, path in tiny.files.items() if role not in ("exposure_table", "ccm")}
    roles["backgrounds_galactic"] = {name: str(path) for name, path in tiny["backgrounds_galactic"].items()}
    write_manifest(tmp_path, roles)
    from_orientation = COSIDataset.from_manifest(tmp_path, "galactic", rtol=0.0, progress=False)
    assert len(ExposureTable.read(tiny["exposure_table"])) == local.engine.n_rows
    assert not np.allclose(from_orientation.exposure, local.exposure, rtol=1e-3)


def test_with_counts_shares_the_engine_parts(tiny):
    dataset = COSIDataset.from_manifest(tiny.path, progress=False)
    image = flat_image(dataset)
    expected = dataset.npred(image)
    counts = np.random.default_rng(3).poisson(expected.contents).astype(float)
    other = dataset.with_counts(Histogram(expected.axes, contents=counts), name="draw")
    assert other.name == "draw" and other.engine.response is dataset.engine.response
    assert other.total_counts == counts.sum()
    assert other.background_names == dataset.background_names
    np.testing.assert_array_equal(other.exposure, dataset.exposure)


def test_bad_inputs_are_named(tiny, tmp_path):
    with pytest.raises(CosiInputError, match="needs a CCM"):
        COSIDataset.from_files(tiny["response"], tiny["data_scatt"], progress=False)
    with pytest.raises(CosiInputError, match="response must be a ColumnResponse"):
        build_engine(3, tiny["data_scatt"])
    with pytest.raises(CosiInputError, match="frame must be one of"):
        COSIDataset.from_manifest(tiny.path, "local")
    with pytest.raises(CosiInputError, match="a CCM needs the exposure table"):
        COSIDataset.from_files(tiny["response"], tiny["data_galactic"], ccm=tiny["ccm"],
                               orientation=tiny["orientation"], progress=False)
    write_manifest(tmp_path, {"response": str(tiny["response"]), "data_galactic": str(tiny["data_galactic"])})
    with pytest.raises(CosiFileError, match=r"lacks role\(s\) \['orientation'\]"):
        COSIDataset.from_manifest(tmp_path, "galactic")
    with pytest.raises(CosiFileError, match=r"lacks role\(s\) \['ccm', 'data_scatt'\]"):
        COSIDataset.from_manifest(read_manifest(tmp_path), "spacecraft")
    with pytest.raises(CosiInputError, match="has no background 'albedoo'"):
        COSIDataset.from_manifest(tiny.path, progress=False).background_total("albedoo")
