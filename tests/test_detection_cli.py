"""The ``tsmap`` and ``detect`` commands on a small simulated dataset: their files and their messages."""
import numpy as np
import pytest
from histpy import Histogram

from cosi_imaging_plugin.cli import main, parse_spectrum
from cosi_imaging_plugin.detection import DetectionTable
from cosi_imaging_plugin.errors import CosiInputError


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    from cosi_imaging_plugin.simulate import builtin_config, simulate_dataset

    config = builtin_config("mini_511keV")
    out = tmp_path_factory.mktemp("data") / "mini"
    simulate_dataset(config, out, progress=False)
    return out


def test_tsmap_writes_maps_and_a_figure(dataset_dir, tmp_path):
    assert main(["-q", "tsmap", "--data", str(dataset_dir), "-o", str(tmp_path / "ts")]) == 0
    for name in ("ts_map.h5", "ts_map.fits", "sqrt_ts.png"):
        assert (tmp_path / "ts" / name).stat().st_size > 0
    ts = Histogram.open(tmp_path / "ts" / "ts_map.h5", name="ts")
    assert np.nanmax(ts.contents) > 25  # the bulge


def test_tsmap_fits_the_backgrounds_clear_of_an_exclusion_mask(dataset_dir, tmp_path, capsys):
    out = tmp_path / "masked"
    assert main(["tsmap", "--data", str(dataset_dir), "--mask-radius", "25", "--mask-threshold", "10",
                 "-o", str(out)]) == 0
    assert "backgrounds fitted clear of" in capsys.readouterr().out
    mask = Histogram.open(out / "background.h5", name="sky_mask")
    assert 0 < np.count_nonzero(mask.contents) < mask.axes[0].npix
    assert (out / "exclusion_mask.png").stat().st_size > 0


def test_detect_writes_a_table_a_model_and_a_figure(dataset_dir, tmp_path):
    out = tmp_path / "detect"
    assert main(["-q", "detect", "--data", str(dataset_dir), "--scales", "0,10", "--max-sources", "2",
                 "-o", str(out)]) == 0
    table = DetectionTable.read(out / "detections.ecsv")
    assert 1 <= len(table) <= 2
    assert (out / "detections_model.yml").stat().st_size > 0
    assert (out / "detections.png").stat().st_size > 0


def test_spectrum_option():
    spectrum = parse_spectrum("Powerlaw:index=-2.5", np.array([100.0, 10000.0]))
    assert spectrum.index.value == -2.5 and spectrum.piv.value == pytest.approx(1000.0)
    with pytest.raises(CosiInputError, match="no parameter 'gamma'"):
        parse_spectrum("Powerlaw:gamma=2", np.array([100.0, 1000.0]))
    with pytest.raises(CosiInputError, match="unknown spectral function"):
        parse_spectrum("Nothing", np.array([100.0, 1000.0]))
    assert main(["-q", "tsmap", "--data", "/nonexistent", "-o", "/tmp/x"]) == 2
