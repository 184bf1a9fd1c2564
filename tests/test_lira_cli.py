"""``cosi-imaging deconvolve --algorithm LIRA`` on a small simulated dataset: files, summary, resumption, errors."""
import json
import re

import healpy as hp
import numpy as np
import pytest
import yaml
from histpy import Histogram

from cosi_imaging_plugin.cli import main

PARAMETERS = {"lira": {"n_chains": 2, "n_samples": 10, "burn_in": 10, "seed": 3,
                       "regions": {"bulge": {"disc": [0.0, 0.0, 15.0]}}}}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    from cosi_imaging_plugin.simulate import builtin_config, simulate_dataset

    config = builtin_config("mini_511keV").to_dict()
    config["orbit"]["duration_s"] = 86400.0  # one day: the command's outputs, not the sky, are tested here
    config["galactic"] = False
    out = tmp_path_factory.mktemp("data") / "mini"
    simulate_dataset(config, out, progress=False)
    return out


def test_lira_writes_maps_summary_and_figures(dataset_dir, tmp_path, capsys):
    parfile = tmp_path / "lira.yaml"
    parfile.write_text(yaml.safe_dump(PARAMETERS))
    out = tmp_path / "lira"
    assert main(["-q", "deconvolve", str(parfile), "--data", str(dataset_dir), "--algorithm", "LIRA",
                 "-o", str(out)]) == 0
    # chains this short are not converged, and the console says so (warnings go through logging)
    assert re.search(r"WARNING py\.warnings: .*RuntimeWarning: .*R-hat", capsys.readouterr().err, re.DOTALL)
    summary = json.loads((out / "lira_summary.json").read_text())
    assert summary["n_chains"] == 2 and summary["n_samples"] == 10
    assert all(-1.0 <= r <= 1.0 for r in summary["flux_background_correlation"].values())
    bulge = summary["regions"]["bulge"]
    assert bulge["interval_95"][0] <= bulge["median"] <= bulge["interval_95"][1]
    mean = Histogram.open(out / "lira_maps.h5", name="mean")
    fits_mean = hp.read_map(str(out / "lira_maps_E0.fits"), field=0, nest=None)
    assert np.allclose(fits_mean, np.asarray(mean.contents)[:, 0])
    for name in ("lira_mean_E0.png", "lira_std_E0.png", "lira_significance_E0.png", "lira_summary_E0.png",
                 "lira_traces.png", "lira_checkpoint.npz"):
        assert (out / name).stat().st_size > 0
    # the folder is not replaced by accident
    assert main(["-q", "deconvolve", str(parfile), "--data", str(dataset_dir), "--algorithm", "LIRA",
                 "-o", str(out)]) == 2
    # resumed, the run finds its finished checkpoint: no new sweeps, the same posterior
    capsys.readouterr()
    assert main(["-q", "deconvolve", str(parfile), "--data", str(dataset_dir), "--algorithm", "LIRA",
                 "--resume", str(out)]) == 0
    assert "R-hat" in capsys.readouterr().err
    assert json.loads((out / "lira_summary.json").read_text())["regions"] == summary["regions"]


def test_lira_parameter_file_errors_name_the_key(dataset_dir, tmp_path, capsys):
    parfile = tmp_path / "bad.yaml"
    parfile.write_text(yaml.safe_dump({"lira": {"n_chain": 2}}))
    assert main(["-q", "deconvolve", str(parfile), "--data", str(dataset_dir), "--algorithm", "LIRA",
                 "-o", str(tmp_path / "x")]) != 0
    assert "lira.n_chain" in capsys.readouterr().err
