"""The package's one YAML loader and writer.

Every configuration, parameter file and manifest is read here, with one rule for
numbers: ``1e-3`` is a float. PyYAML follows YAML 1.1, where a float needs a dot,
so a plain ``SafeLoader`` would read ``value: [1e-4]`` (as in the COSI team's
511 keV parameter file) as the text ``'1e-4'``.
"""
import re
from pathlib import Path

import numpy as np
import yaml

from .._atomic import atomic_path
from ..errors import CosiFileError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent notation without a dot (``1e-4``) as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text, where, error=CosiFileError):
    """Parse YAML text.

    Parameters
    ----------
    text : str
    where : str
        What the text is (a file, an override), for error messages.
    error : type
        Exception raised on invalid YAML.
    """
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise error(f"{where}: invalid YAML: {exc}") from exc


def read_yaml(path, what, mapping=False):
    """Parse a YAML file.

    Parameters
    ----------
    path : str or pathlib.Path
    what : str
        What the file is, for error messages (e.g. 'instrument configuration').
    mapping : bool
        Require the file to hold a mapping.

    Raises
    ------
    CosiFileError
        The file cannot be read, is not valid YAML, or (with `mapping`) holds no
        mapping; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CosiFileError(f"{what} {path} does not exist")
    try:
        text = path.read_text()
    except OSError as exc:
        raise CosiFileError(f"{path}: cannot read {what}: {exc}") from exc
    content = parse_yaml(text, path)
    if mapping and not isinstance(content, dict):
        raise CosiFileError(f"{what} {path} must hold a YAML mapping, found {type(content).__name__}")
    return content


def yaml_text(content):
    """Plain Python content as YAML text (keys in their order; leaf lists and mappings inline).

    NumPy scalars and arrays (e.g. an astropy angle's ``.deg``) are written as the numbers they hold.
    """
    return yaml.dump(content, Dumper=_PlainDumper, sort_keys=False, default_flow_style=None)


class _PlainDumper(yaml.SafeDumper):
    """The safe dumper, with NumPy numbers written as plain ones."""


_PlainDumper.add_multi_representer(np.generic, lambda dumper, value: dumper.represent_data(value.item()))
_PlainDumper.add_representer(np.ndarray, lambda dumper, value: dumper.represent_data(value.tolist()))


def write_yaml(content, path):
    """Write plain Python content as YAML (see :func:`yaml_text`), atomically; return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml_text(content))
    return path
