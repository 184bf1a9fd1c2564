"""Manifest files: a YAML mapping of roles to files, with paths relative to the manifest.

Both the simulator's dataset manifests and the data directories of
``cosi-imaging deconvolve`` use this layout; a role maps to one file, a
background role maps template names to files.
"""
from pathlib import Path

from ..errors import CosiFileError
from .yaml_files import read_yaml


def read_manifest_mapping(path):
    """The mapping held by a manifest file.

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    dict

    Raises
    ------
    CosiFileError
        The file is missing, is not valid YAML or does not hold a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise CosiFileError(f"manifest {path} does not exist")
    mapping = read_yaml(path, "manifest")
    if not isinstance(mapping, dict):
        raise CosiFileError(f"{path} must hold a mapping of roles to files")
    return mapping


def resolve_file(manifest_path, role, value):
    """Absolute path of the file named for `role`, relative to the manifest's directory.

    Raises
    ------
    CosiFileError
        `value` is not a file name or the file does not exist (the role is named).
    """
    if not isinstance(value, str):
        raise CosiFileError(f"{manifest_path}: role '{role}' must name a file, got {value!r}")
    file = (Path(manifest_path).parent / value).resolve()
    if not file.is_file():
        raise CosiFileError(f"{manifest_path}: file {file} of role '{role}' does not exist")
    return file


def resolve_backgrounds(manifest_path, role, value):
    """{template name: absolute path} of a background role (``None`` gives an empty mapping)."""
    value = value or {}
    if not isinstance(value, dict):
        raise CosiFileError(f"{manifest_path}: '{role}' must map background names to files, got {value!r}")
    return {str(name): resolve_file(manifest_path, f"{role}:{name}", file) for name, file in value.items()}
