"""Reading YAML configuration files with errors that name the file."""
from pathlib import Path

import yaml

from ..errors import CosiFileError


def read_yaml(path, what):
    """Parse a YAML file.

    Parameters
    ----------
    path : str or pathlib.Path
    what : str
        What the file is, for error messages (e.g. 'instrument configuration').

    Raises
    ------
    CosiFileError
        The file cannot be read or is not valid YAML (the message names the file).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CosiFileError(f"{path}: cannot read {what}: {exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CosiFileError(f"{path}: not valid YAML: {exc}") from exc
