"""Tests of the deconvolution parameter files and the binning configuration reader."""
import textwrap

import pytest
import yaml

from cosi_imaging_plugin.errors import CosiFileError, CosiInputError
from cosi_imaging_plugin.io import DeconvolutionParameters, convert_flat_parameters, read_binning_config
from cosi_imaging_plugin.io.parameters import ALL_BACKGROUNDS

# The older flat form of the COSI team's DC2 511 keV tutorial (docs/formats.md, "Older flat form").
FLAT_FORM = textwrap.dedent("""\
    author: someone
    model_property:
      coordinate: "galactic"
      nside: 16
      scheme: "ring"
      energy_edges: [509.0, 513.0]
    model_initialization:
      algorithm: "flat"
      parameter_flat:
        values: [1e-4]
    deconvolution:
      algorithm: "RL"
      parameter_RL:
        iteration: 10
        acceleration: True
        alpha_max: 10.0
        save_results_each_iteration: False
        response_weighting: True
        response_weighting_index: 0.5
        smoothing: True
        smoothing_FWHM: 2.0
        background_normalization_fitting: True
        background_normalization_range: [0.01, 10.0]
        minimum_flux: 0.0
    """)


@pytest.fixture
def scatt_511(fixtures_dir):
    return DeconvolutionParameters.read(fixtures_dir / "imagedeconvolution_parfile_scatt_511keV.yml")


def test_nested_fixture_511keV(scatt_511):
    p = scatt_511
    assert p.get("model_definition:class") == "AllSkyImage"
    assert p.get("model_definition:property:nside") == 16
    assert p.get("model_definition:property:energy_edges") == {"value": [509.0, 513.0], "unit": "keV"}
    # '1e-4' is a float, not the string PyYAML's YAML 1.1 rules would give.
    assert p.get("model_definition:initialization:parameter:value") == [1e-4]
    assert p.get("deconvolution:algorithm") == "RL"
    assert p.get("deconvolution:parameter:iteration_max") == 10
    assert p.get("deconvolution:parameter:acceleration") == {"activate": True, "alpha_max": 10.0}
    assert p.get("deconvolution:parameter:smoothing:FWHM") == {"value": 2.0, "unit": "deg"}
    assert p.get("deconvolution:parameter:background_normalization_optimization:range") == {"albedo": [0.01, 10.0]}
    assert p.get("deconvolution:parameter:stopping_criteria:threshold") == 0.01
    assert p.get("deconvolution:parameter:no_such_key", "fallback") == "fallback"
    assert p.get("deconvolution:algorithm:deeper") is None


def test_nested_fixture_test_parfile(fixtures_dir):
    p = DeconvolutionParameters.read(fixtures_dir / "image_deconvolution/imagedeconvolution_parfile_test.yml")
    assert p.get("deconvolution:algorithm") == "RLsimple"
    assert p.get("deconvolution:parameter:iteration_max") == 2
    assert p.get("model_definition:property:nside") == 1
    assert len(p.get("model_definition:property:energy_edges:value")) == 11
    assert p.get("model_definition:initialization:parameter:value") == [1.0] * 10


def test_flat_form_is_converted(tmp_path, scatt_511):
    path = tmp_path / "old.yml"
    path.write_text(FLAT_FORM)
    p = DeconvolutionParameters.read(path)
    d = p.to_dict()
    assert "model_property" not in d and "model_initialization" not in d
    assert d["author"] == "someone"
    assert d["model_definition"] == {
        "class": "AllSkyImage",
        "property": {"coordinate": "galactic", "nside": 16, "scheme": "ring",
                     "energy_edges": {"value": [509.0, 513.0], "unit": "keV"}, "unit": "cm-2 s-1 sr-1"},
        "initialization": {"algorithm": "flat", "parameter": {"value": [1e-4], "unit": "cm-2 s-1 sr-1"}},
    }
    assert d["deconvolution"] == {
        "algorithm": "RL",
        "parameter": {
            "iteration_max": 10,
            "acceleration": {"activate": True, "alpha_max": 10.0},
            "response_weighting": {"activate": True, "index": 0.5},
            "smoothing": {"activate": True, "FWHM": {"value": 2.0, "unit": "deg"}},
            "background_normalization_optimization": {"activate": True, "range": {ALL_BACKGROUNDS: [0.01, 10.0]}},
            "save_results": {"activate": False, "only_final_result": False},
            "minimum_flux": 0.0,
        },
    }
    # The old tutorial file and the current one describe the same model and RL switches.
    for key in ("model_definition:property", "model_definition:initialization",
                "deconvolution:parameter:iteration_max", "deconvolution:parameter:acceleration",
                "deconvolution:parameter:response_weighting", "deconvolution:parameter:smoothing"):
        assert p.get(key) == scatt_511.get(key), key


def test_from_dict_does_not_modify_input():
    flat = yaml.safe_load(FLAT_FORM)
    before = yaml.safe_dump(flat)
    DeconvolutionParameters.from_dict(flat).override("deconvolution:parameter:iteration_max = 3")
    assert yaml.safe_dump(flat) == before
    with pytest.raises(CosiInputError, match="mixes"):
        convert_flat_parameters({**flat, "model_definition": {}})


def test_overrides(scatt_511):
    p = scatt_511
    p.override("deconvolution:parameter:iteration_max = 30")
    p.override("deconvolution:parameter:acceleration:activate = False",
               "deconvolution:parameter:acceleration:alpha_max = 3.5",
               "deconvolution:parameter:background_normalization_optimization:range:albedo = [1, 2]",
               "deconvolution:parameter:save_results:directory = ./out",
               "model_definition:initialization:parameter:value = [2e-3]")
    assert p.get("deconvolution:parameter:iteration_max") == 30
    assert type(p.get("deconvolution:parameter:iteration_max")) is int
    assert p.get("deconvolution:parameter:acceleration:activate") is False
    assert p.get("deconvolution:parameter:acceleration:alpha_max") == 3.5
    assert p.get("deconvolution:parameter:background_normalization_optimization:range") == {"albedo": [1, 2]}
    assert p.get("deconvolution:parameter:save_results:directory") == "./out"
    assert p.get("model_definition:initialization:parameter:value") == [2e-3]
    # New keys below an existing section are allowed (e.g. a MAP prior).
    p.override("deconvolution:parameter:prior:TSV:coefficient = 1.0e+2")
    assert p.get("deconvolution:parameter:prior") == {"TSV": {"coefficient": 100.0}}


@pytest.mark.parametrize("text, match", [
    ("deconvolutoin:parameter:iteration_max = 30", "unknown top-level section 'deconvolutoin'"),
    ("deconvolution:parameter:iteration_max", "must look like"),
    ("deconvolution::iteration_max = 3", "malformed"),
    ("deconvolution:parameter:iteration_max = ", "no value"),
    ("deconvolution:algorithm:name = RL", "'deconvolution:algorithm' is a value"),
    ("deconvolution:parameter:iteration_max = [1, 2", "invalid YAML"),
])
def test_override_errors(scatt_511, text, match):
    before = scatt_511.to_dict()
    with pytest.raises(CosiInputError, match=match) as info:
        scatt_511.override(text)
    assert not isinstance(info.value, CosiFileError)  # bad user input, not a bad file
    assert scatt_511.to_dict() == before


def test_write_read_round_trip(tmp_path, scatt_511):
    scatt_511.override("deconvolution:parameter:iteration_max = 7")
    path = tmp_path / "sub" / "params.yml"
    assert scatt_511.write(path) == path
    back = DeconvolutionParameters.read(path)
    assert back == scatt_511
    assert back.get("deconvolution:parameter:iteration_max") == 7
    assert back.get("model_definition:initialization:parameter:value") == [1e-4]


def test_parameter_file_errors(tmp_path):
    with pytest.raises(CosiFileError, match="missing.yml does not exist"):
        DeconvolutionParameters.read(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("deconvolution: [unclosed\n")
    with pytest.raises(CosiFileError, match="bad.yml.*invalid YAML"):
        DeconvolutionParameters.read(bad)
    scalar = tmp_path / "scalar.yml"
    scalar.write_text("just a string\n")
    with pytest.raises(CosiFileError, match="scalar.yml.*mapping"):
        DeconvolutionParameters.read(scalar)
    partial = tmp_path / "partial.yml"
    partial.write_text("deconvolution:\n  algorithm: RL\n")
    with pytest.raises(CosiInputError, match="partial.yml.*model_definition"):
        DeconvolutionParameters.read(partial)
    no_alg = tmp_path / "no_alg.yml"
    no_alg.write_text("model_definition: {}\ndeconvolution:\n  parameter: {}\n")
    with pytest.raises(CosiInputError, match="no_alg.yml.*deconvolution:algorithm"):
        DeconvolutionParameters.read(no_alg)


# ---------------------------------------------------------------------- binning file
def test_binning_config_fixture(fixtures_dir):
    cfg = read_binning_config(fixtures_dir / "inputs_511keV.yaml")
    assert cfg["energy_bins"] == [509.0, 513.0]
    assert cfg["phi_pix_size"] == 3.0
    assert cfg["nside"] == 16
    assert cfg["scheme"] == "ring"
    assert cfg["time_bins"] == 15.0
    assert cfg["tmin"] == 1835487300.0 and cfg["tmax"] == 1843467255.0
    assert isinstance(cfg, dict)


@pytest.mark.parametrize("key, value, match", [
    ("nside", 12, "key 'nside': NSIDE must be a positive power of two"),
    ("scheme", "fisbel", "ring"),
    ("energy_bins", [513.0, 509.0], "increasing"),
    ("phi_pix_size", 0, "key 'phi_pix_size': must be > 0.0"),
    ("phi_pix_size", 181.0, "key 'phi_pix_size': must be <= 180.0"),
    ("time_bins", -5, "key 'time_bins': must be > 0.0"),
    ("time_bins", [1.0, 1.0], "increasing"),
    ("tmax", 1.0, "after tmin"),
    ("nside", None, "key 'nside': missing key"),
])
def test_binning_config_errors(tmp_path, fixtures_dir, key, value, match):
    data = yaml.safe_load((fixtures_dir / "inputs_511keV.yaml").read_text())
    data[key] = value
    path = tmp_path / "binning.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CosiInputError, match=rf"binning.yaml.*{match}"):
        read_binning_config(path)
