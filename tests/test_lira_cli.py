"""``cosi-imaging deconvolve --algorithm LIRA`` on a small simulated dataset: files, summary, resumption, errors."""
import json
import re

import healpy as hp
import numba
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
    # the command runs under the main guard: its chains run in workers, one per chain up to the cores
    assert summary["workers"] == min(2, numba.get_num_threads())
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


def test_lira_starts_around_an_rl_image_named_in_the_parameter_file(dataset_dir, tmp_path):
    """``initial_image`` brings the moves that need a first image (regions, smoothing move, swaps), as in Python."""
    assert main(["-q", "deconvolve", "--data", str(dataset_dir), "-o", str(tmp_path / "rl"),
                 "--override", "deconvolution:parameter:iteration_max = 3"]) == 0
    runs = {"flat": {}, "rl": {"initial_image": "rl"},
            "named": {"initial_image": {"file": "rl/results.h5", "name": "iteration3/model"}}}
    summaries = {}
    for label, extra in runs.items():
        folder = tmp_path / f"run_{label}"
        folder.mkdir()
        parfile = folder / "lira.yaml"  # relative paths start from the parameter file's folder
        if extra:
            (folder / "rl").symlink_to(tmp_path / "rl")
        parfile.write_text(yaml.safe_dump({"lira": {**PARAMETERS["lira"], **extra}}))
        assert main(["-q", "deconvolve", str(parfile), "--data", str(dataset_dir), "--algorithm", "LIRA",
                     "-o", str(folder / "out")]) == 0
        summaries[label] = json.loads((folder / "out" / "lira_summary.json").read_text())
    flat, rl, named = summaries["flat"]["moves"], summaries["rl"]["moves"], summaries["named"]["moves"]
    assert flat["scale_regions"] == 1 and flat["sibling_swaps"] == 0 and not flat["smoothing_move"]
    assert rl == named == {"scale_move": True, "scale_regions": 3, "smoothing_move": True, "sibling_swaps": 16,
                           "hmc_steps": 0}
    assert summaries["rl"]["initial_image"] == "rl" and summaries["flat"]["initial_image"] is None
    # the same image either way, so the same chains
    assert summaries["rl"]["total_flux"] == summaries["named"]["total_flux"]
    assert summaries["rl"]["total_flux"] != summaries["flat"]["total_flux"]


@pytest.mark.parametrize("value, message", [
    ("no_such_folder", r"lira\.initial_image: .*no_such_folder"),
    ({"file": "rl/results.h5", "group": "x"}, r"lira\.initial_image\.group"),
    ({"file": "image.h5"}, r"lira\.initial_image \(.*image\.h5"),
    (3, r"lira\.initial_image"),
])
def test_lira_initial_image_errors_name_the_key_and_the_file(dataset_dir, tmp_path, capsys, value, message):
    from histpy import Axis, HealpixAxis

    from cosi_imaging_plugin.io import write_histogram

    # an image of another grid (NSIDE 2) than the dataset's
    axes = [HealpixAxis(nside=2, scheme="nested", coordsys="galactic", label="lb"),
            Axis([500.0, 520.0], unit="keV", label="Ei", scale="linear")]
    write_histogram(Histogram(axes, contents=np.ones((48, 1)), unit="cm-2 s-1 sr-1"), tmp_path / "image.h5")
    parfile = tmp_path / "lira.yaml"
    parfile.write_text(yaml.safe_dump({"lira": {**PARAMETERS["lira"], "initial_image": value}}))
    assert main(["-q", "deconvolve", str(parfile), "--data", str(dataset_dir), "--algorithm", "LIRA",
                 "-o", str(tmp_path / "out")]) != 0
    assert re.search(message, capsys.readouterr().err)
