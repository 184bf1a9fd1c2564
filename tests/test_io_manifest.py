"""Manifest files: roles resolved against the manifest's folder, errors naming the file and role."""
import numpy as np
import pytest

from cosi_imaging_plugin.errors import CosiFileError
from cosi_imaging_plugin.io.manifest import SIMULATED_FORMAT, read_manifest, write_manifest
from cosi_imaging_plugin.io.yaml_files import read_yaml, write_yaml


def test_roles_resolve_relative_to_the_manifest(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.h5").write_bytes(b"x")
    (tmp_path / "bkg.h5").write_bytes(b"x")
    write_manifest(tmp_path, {"data_scatt": "sub/data.h5", "backgrounds": {"albedo": "bkg.h5"}}, name="plain")
    for where in (tmp_path, tmp_path / "manifest.yaml"):
        manifest = read_manifest(where)
        assert manifest["data_scatt"] == (tmp_path / "sub" / "data.h5").resolve()
        assert manifest["backgrounds"] == {"albedo": (tmp_path / "bkg.h5").resolve()}
        assert manifest["backgrounds_galactic"] == {}
        assert "data_scatt" in manifest and "ccm" not in manifest and "backgrounds_galactic" not in manifest
        assert manifest.get("ccm") is None
        assert manifest.name == "plain" and manifest.truth == {}


@pytest.mark.parametrize("text, match", [
    (None, "manifest .*missing.yaml does not exist"),
    ("a: [1, 2", "invalid YAML"),
    ("- a\n- b\n", "must hold a YAML mapping"),
    ("format: something_else\n", "unknown manifest format 'something_else'"),
    (f"format: {SIMULATED_FORMAT}\n", "missing role 'response'"),
])
def test_unreadable_manifests_name_the_file(tmp_path, text, match):
    path = tmp_path / ("missing.yaml" if text is None else "manifest.yaml")
    if text is not None:
        path.write_text(text)
    with pytest.raises(CosiFileError, match=match):
        read_manifest(path)


@pytest.mark.parametrize("text, match", [
    ("ccm: 3\n", "role 'ccm' must name a file"),
    ("ccm: ccm.h5\n", "file .*ccm.h5 of role 'ccm' does not exist"),
    ("backgrounds: [bkg.h5]\n", "'backgrounds' must map background names to files"),
    ("backgrounds: {albedo: nothing.h5}\n", "role 'backgrounds:albedo'"),
])
def test_bad_roles_name_the_role(tmp_path, text, match):
    (tmp_path / "manifest.yaml").write_text(text)
    with pytest.raises(CosiFileError, match=match):
        read_manifest(tmp_path)


def test_missing_roles_are_named_for_their_purpose(tmp_path):
    (tmp_path / "ccm.h5").write_bytes(b"x")
    write_manifest(tmp_path, {"ccm": "ccm.h5"})
    with pytest.raises(CosiFileError, match=r"lacks role\(s\) \['response', 'data_scatt'\] needed for a fit"):
        read_manifest(tmp_path).require(["response", "ccm", "data_scatt"], "a fit")


def test_numpy_numbers_are_written_as_plain_ones(tmp_path):
    """A sky given with NumPy numbers (an astropy angle's ``.deg``) is written and read back as numbers."""
    path = tmp_path / "content.yaml"
    write_yaml({"lon0": np.float64(266.4), "bins": np.arange(3), "count": np.int32(4)}, path)
    assert read_yaml(path, "content") == {"lon0": 266.4, "bins": [0, 1, 2], "count": 4}
