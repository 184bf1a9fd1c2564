"""Manifest files: roles resolved against the manifest's folder, errors naming the file and role."""
import pytest

from cosi_imaging_plugin.errors import CosiFileError
from cosi_imaging_plugin.io.manifest import read_manifest_mapping, resolve_backgrounds, resolve_file


def test_roles_resolve_relative_to_the_manifest(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.h5").write_bytes(b"x")
    (tmp_path / "bkg.h5").write_bytes(b"x")
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("data: sub/data.h5\nbackgrounds: {albedo: bkg.h5}\n")
    mapping = read_manifest_mapping(manifest)
    assert resolve_file(manifest, "data", mapping["data"]) == (tmp_path / "sub" / "data.h5").resolve()
    assert resolve_backgrounds(manifest, "backgrounds", mapping["backgrounds"]) == {
        "albedo": (tmp_path / "bkg.h5").resolve()}
    assert resolve_backgrounds(manifest, "backgrounds", None) == {}


@pytest.mark.parametrize("text, match", [
    (None, "manifest .*missing.yaml does not exist"),
    ("a: [1, 2", "not valid YAML"),
    ("- a\n- b\n", "must hold a mapping"),
])
def test_unreadable_manifests_name_the_file(tmp_path, text, match):
    path = tmp_path / ("missing.yaml" if text is None else "manifest.yaml")
    if text is not None:
        path.write_text(text)
    with pytest.raises(CosiFileError, match=match):
        read_manifest_mapping(path)


def test_bad_roles_name_the_role(tmp_path):
    manifest = tmp_path / "manifest.yaml"
    with pytest.raises(CosiFileError, match="role 'ccm' must name a file"):
        resolve_file(manifest, "ccm", 3)
    with pytest.raises(CosiFileError, match="file .*ccm.h5 of role 'ccm' does not exist"):
        resolve_file(manifest, "ccm", "ccm.h5")
    with pytest.raises(CosiFileError, match="'backgrounds' must map background names to files"):
        resolve_backgrounds(manifest, "backgrounds", ["bkg.h5"])
    with pytest.raises(CosiFileError, match="role 'backgrounds:albedo'"):
        resolve_backgrounds(manifest, "backgrounds", {"albedo": "nothing.h5"})
