"""The end-to-end pipeline and the command line."""
import base64
import copy
import json
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import yaml

from cosi_imaging_plugin import __version__
from cosi_imaging_plugin.cli import main
from cosi_imaging_plugin.errors import CosiInputError
from cosi_imaging_plugin.pipeline import read_fit_config, run_pipeline

from test_simulate import tiny_config

PRODUCTS = ["summary.json", "fit_results.fits", "fit_results_full.fits", "fit_results.txt", "rl_image.png",
            "rl_image_log.png", "fitted_model.png", "fitted_model_grid.png", "residuals_phi.png",
            "residuals_psichi.png", "rl/results.h5", "rl/results.fits", "rl/convergence.png"]


def fit_config(data):
    """The demo's model on another dataset: bulge width and flux, disk flux, two background norms."""
    config = copy.deepcopy(read_fit_config("demo_mini_511keV"))
    config.pop("_base")
    config["data"] = data
    config["deconvolution"]["overrides"] = ["deconvolution:parameter:iteration_max = 10"]
    return config


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """Simulate a small bulge + disk dataset (two days, NSIDE 8) and run the whole pipeline on it."""
    root = tmp_path_factory.mktemp("pipeline")
    sim = tiny_config(name="small", sky=[{"preset": "bulge_511"}, {"preset": "disk_511"}],
                      backgrounds={"albedo": {"kind": "albedo", "rate": 0.11},
                                   "instrumental": {"kind": "instrumental", "rate": 0.07}})
    sim["instrument"]["overrides"]["binning"].update(nside=8, phi_edges_deg={"start": 0.0, "stop": 180.0,
                                                                             "bins": 15})
    sim.update(scatt_nside=8, model_nside=8, galactic=False, response_rtol=1e-3)
    sim["orbit"].update(duration_s=2 * 86400.0, rocking_period_s=86400.0)
    sim_path = root / "small.yaml"
    sim_path.write_text(yaml.safe_dump(sim))
    out = root / "out"
    summary = run_pipeline(fit_config({"simulate": str(sim_path)}), out, progress=False)
    return out, summary


def test_pipeline_writes_every_product(pipeline_run):
    out, summary = pipeline_run
    for name in PRODUCTS:
        assert (out / name).is_file(), name
    written = json.loads((out / "summary.json").read_text())
    assert written["sources"] == summary["sources"]
    assert set(summary["sources"]) == {"bulge_511", "disk_511"}
    assert set(summary["backgrounds"]) == {"albedo", "instrumental"}


def test_pipeline_recovers_injected_fluxes(pipeline_run):
    _, summary = pipeline_run
    for name, entry in summary["sources"].items():
        # a 3-sigma bound: a false failure has probability 0.3% per source
        assert abs(entry["flux_pull"]) < 3.0, (name, entry)
    for name, entry in summary["backgrounds"].items():
        assert abs(entry["pull"]) < 3.0, (name, entry)


def test_cached_dataset_is_reused(pipeline_run, caplog):
    out, _ = pipeline_run
    manifest = next((out / "data").glob("*/manifest.yaml"))
    stamp = manifest.stat().st_mtime
    config = fit_config({"manifest": str(manifest)})
    config["deconvolution"]["overrides"] = ["deconvolution:parameter:iteration_max = 2"]
    run_pipeline(config, out / "again", progress=False)
    assert manifest.stat().st_mtime == stamp


def test_bad_fit_configuration_names_the_key(tmp_path):
    config = fit_config({"simulate": "mini_511keV"})
    config["modle"] = {}
    with pytest.raises(CosiInputError, match="modle"):
        read_fit_config(config)
    config = fit_config({"simulate": "mini_511keV", "manifest": "x"})
    with pytest.raises(CosiInputError, match="exactly one"):
        read_fit_config(config)


def test_cli_info_and_errors(fixtures_dir, capsys):
    assert main(["-q", "info", str(fixtures_dir / "test_full_detector_response.h5")]) == 0
    assert "FullDetectorResponse v1 (sparse)" in capsys.readouterr().out
    assert main(["-q", "info", str(fixtures_dir / "missing.h5")]) == 2
    assert main(["-q", "fit", "no_such_config"]) == 2


def test_cli_simulate_refuses_to_overwrite(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(galactic=False)))
    out = tmp_path / "sim"
    assert main(["-q", "simulate", str(config), "-o", str(out)]) == 0
    assert (out / "manifest.yaml").is_file()
    assert main(["-q", "simulate", str(config), "-o", str(out)]) == 2


def test_summary_states_units_band_and_definitions(pipeline_run):
    out, summary = pipeline_run
    written = json.loads((out / "summary.json").read_text())
    assert written["band_kev"] == [509.0, 513.0]
    assert written["units"]["flux"] == "ph cm-2 s-1"
    assert {"sources.flux", "sources.flux_pull", "backgrounds.norm"} <= set(written["definitions"])
    units = {path: entry["unit"] for path, entry in written["parameters"].items()}
    assert units["bulge_511.spectrum.main.Gaussian.F"] == "1 / (s cm2)"
    assert units["bulge_511.Gaussian_on_sphere.sigma"] == "deg"
    assert "run.log" in {p.name for p in out.iterdir()}


class _Page(HTMLParser):
    """The headings, images, tables (as rows of cell texts) and external references of a page."""

    def __init__(self):
        super().__init__()
        self.headings, self.images, self.tables, self.external = [], [], [], []
        self._text, self._cell = None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs and not attrs[key].startswith("data:"):
                self.external.append(attrs[key])
        if tag == "img":
            self.images.append(attrs)
        elif tag in ("h2", "h3"):
            self._text = ""
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("h2", "h3"):
            self.headings.append(self._text)
            self._text = None
        elif tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._text is not None:
            self._text += data
        if self._cell is not None:
            self._cell += data


def test_report_holds_every_figure_and_table(pipeline_run):
    out, summary = pipeline_run
    page = _Page()
    page.feed((out / "report.html").read_text())
    assert page.external == []  # self-contained
    for heading in ("Inputs", "Results", "Fitted parameters", "Fluxes in 509-513 keV (ph cm-2 s-1)",
                    "Background normalizations", "Images", "Convergence", "Residuals", "Provenance"):
        assert heading in page.headings, heading
    # test_cached_dataset_is_reused runs again into out/again, after the report was written
    figures = sorted(str(p.relative_to(out)) for p in out.rglob("*.png") if p.relative_to(out).parts[0] != "again")
    assert sorted(image["alt"] for image in page.images) == figures
    for image in page.images:
        assert base64.b64decode(image["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    inputs, parameters, fluxes, backgrounds, provenance = page.tables
    assert {row[0] for row in inputs[1:]} >= {"response", "data", "ccm", "backgrounds:albedo"}
    assert all(len(row[2]) == 64 for row in inputs[1:])  # SHA-256
    # the simulated inputs are named where they lie after the run, not in the temporary folder
    assert all(row[1].startswith(str(out.resolve() / "data")) for row in inputs[1:]), inputs
    assert parameters[0] == ["parameter", "value", "error", "unit"]
    rows = {row[0]: row for row in parameters[1:]}
    assert set(rows) == set(summary["parameters"])
    assert rows["bulge_511.Gaussian_on_sphere.sigma"][3] == "deg"
    assert {row[0] for row in fluxes[1:]} == set(summary["sources"])
    assert {row[0] for row in backgrounds[1:]} == set(summary["backgrounds"])
    assert dict(provenance[1:])["version cosi-imaging-plugin"] == __version__


def test_a_second_run_in_the_same_folder(pipeline_run, caplog):
    out, summary = pipeline_run
    config = fit_config({"simulate": str(next(out.parent.glob("*.yaml")))})
    stamp = (out / "summary.json").stat().st_mtime
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_pipeline(config, out, progress=False)
    assert (out / "summary.json").stat().st_mtime == stamp
    with caplog.at_level("INFO", logger="cosi_imaging_plugin"):
        again = run_pipeline(config, out, progress=False, overwrite=True)
    assert "reusing the simulated dataset of the previous run" in caplog.text
    assert "reusing the finished RL stage of the previous run" in caplog.text
    # the same data and RL image: the same fit
    for name, entry in summary["sources"].items():
        assert again["sources"][name]["flux"] == pytest.approx(entry["flux"], rel=1e-6)
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []


def test_fit_results_load_with_3ml_in_a_fresh_process(pipeline_run):
    """fit_results.fits with threeML alone; fit_results_full.fits once the package's shapes are imported."""
    out, summary = pipeline_run
    script = ("import json, sys\n"
              "if sys.argv[2] == 'full':\n"
              "    import cosi_imaging_plugin.sky\n"
              "from threeML import load_analysis_results\n"
              "results = load_analysis_results(sys.argv[1])\n"
              "frame = results.get_data_frame()\n"
              "print(json.dumps({k: float(v) for k, v in frame['value'].items()}))\n")
    for name, kind in (("fit_results.fits", "portable"), ("fit_results_full.fits", "full")):
        run = subprocess.run([sys.executable, "-c", script, str(out / name), kind], capture_output=True,
                             text=True, timeout=600, cwd=out.parent)
        assert run.returncode == 0, run.stderr[-2000:]
        values = json.loads(run.stdout.strip().splitlines()[-1])
        for path, entry in summary["parameters"].items():
            # the portable file freezes the package's shapes into templates: their parameters are not in it
            if path in values or kind == "full":
                assert values[path] == pytest.approx(entry["value"], rel=1e-10), (name, path)
