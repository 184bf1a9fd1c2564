"""Dataset manifests: ``manifest.yaml``, a YAML mapping of roles to files.

One layout serves the datasets written by ``cosi-imaging simulate`` and the data
directories users assemble for ``cosi-imaging deconvolve``::

    response: response.h5            # FullDetectorResponse (spacecraft frame)
    ccm: ccm.hdf5                    # [ScAtt, lb, NuLambda]
    data_scatt: data_scatt.hdf5      # counts [ScAtt, Em, Phi, PsiChi] in the spacecraft frame
    data_galactic: data_gal.hdf5     # counts [Em, Phi, PsiChi] in the Galactic frame (optional)
    backgrounds: {albedo: bkg.hdf5}  # templates with the binning of data_scatt
    backgrounds_galactic: {albedo: bkg_gal.hdf5}   # templates for data_galactic
    exposure_table: exposure.fits
    orientation: orbit.ori
    parameter_file: parfile.yml

Paths are relative to the manifest. A simulated dataset also states
``format: cosi_imaging_plugin.simulated_dataset`` and carries its ``name``,
``seed``, injected ``truth`` and simulation ``config``.
"""
import dataclasses
import logging
from pathlib import Path

from ..errors import CosiFileError
from .yaml_files import read_yaml, write_yaml

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.yaml"
#: ``format`` of the manifests written by the simulator.
SIMULATED_FORMAT = "cosi_imaging_plugin.simulated_dataset"
#: Roles naming one file each.
FILE_ROLES = ("response", "orientation", "exposure_table", "ccm", "data_scatt", "data_galactic", "parameter_file")
#: Roles mapping template names to files.
BACKGROUND_ROLES = ("backgrounds", "backgrounds_galactic")
#: Roles every simulated dataset has.
SIMULATED_ROLES = ("response", "orientation", "exposure_table", "ccm", "data_scatt", "parameter_file")
#: Keys that describe a manifest rather than name files.
_DESCRIPTION_KEYS = ("format", "version", "created_by", "name", "seed", "truth", "config")


@dataclasses.dataclass
class Manifest:
    """The files of a dataset (absolute paths) and, for a simulated one, its injected truth.

    Attributes
    ----------
    path : pathlib.Path
        The ``manifest.yaml``.
    files : dict of str to pathlib.Path
        Role -> file for the roles of :data:`FILE_ROLES` present.
    backgrounds, backgrounds_galactic : dict of str to pathlib.Path
        Background templates by name (empty when absent).
    name : str
    seed : int or None
    truth : dict
        Injected sources, backgrounds and expected counts of a simulated dataset.
    config : dict
        The simulation configuration of a simulated dataset.
    """

    path: Path
    files: dict
    backgrounds: dict = dataclasses.field(default_factory=dict)
    backgrounds_galactic: dict = dataclasses.field(default_factory=dict)
    name: str = ""
    seed: int = None
    truth: dict = dataclasses.field(default_factory=dict)
    config: dict = dataclasses.field(default_factory=dict)

    @property
    def directory(self):
        """pathlib.Path: the dataset directory."""
        return self.path.parent

    def __getitem__(self, role):
        """Path of a role (a background role gives {name: path})."""
        if role in BACKGROUND_ROLES:
            return dict(getattr(self, role))
        if role not in self.files:
            raise KeyError(f"{self.path} names no file of role '{role}'; roles: {sorted(self.files)}")
        return self.files[role]

    def __contains__(self, role):
        return role in self.files or (role in BACKGROUND_ROLES and bool(getattr(self, role)))

    def get(self, role, default=None):
        """Path of a role, or `default` when the manifest does not name it."""
        return self[role] if role in self else default

    def roles(self):
        """Role -> absolute path, background roles as {name: path}."""
        out = dict(self.files)
        for role in BACKGROUND_ROLES:
            if getattr(self, role):
                out[role] = dict(getattr(self, role))
        return out

    def require(self, roles, purpose):
        """Raise CosiFileError naming the `roles` missing for `purpose` (e.g. 'a Galactic-CDS analysis')."""
        missing = [role for role in roles if role not in self]
        if missing:
            raise CosiFileError(f"{self.path}: the manifest lacks role(s) {missing} needed for {purpose}")


def _resolve_file(manifest_path, role, value):
    if not isinstance(value, str):
        raise CosiFileError(f"{manifest_path}: role '{role}' must name a file, got {value!r}")
    file = (manifest_path.parent / value).resolve()
    if not file.is_file():
        raise CosiFileError(f"{manifest_path}: file {file} of role '{role}' does not exist")
    return file


def _resolve_backgrounds(manifest_path, role, value):
    value = value or {}
    if not isinstance(value, dict):
        raise CosiFileError(f"{manifest_path}: '{role}' must map background names to files, got {value!r}")
    return {str(name): _resolve_file(manifest_path, f"{role}:{name}", file) for name, file in value.items()}


def read_manifest(path):
    """Read a ``manifest.yaml`` and resolve its files.

    Parameters
    ----------
    path : str or pathlib.Path
        The manifest or the directory holding it.

    Returns
    -------
    Manifest

    Raises
    ------
    CosiFileError
        Missing or invalid manifest, a file that does not exist (its role is named),
        an unknown ``format``, or a simulated dataset lacking one of its roles.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise CosiFileError(f"manifest {path} does not exist")
    path = path.resolve()
    data = read_yaml(path, "manifest", mapping=True)
    kind = data.get("format")
    if kind is not None and kind != SIMULATED_FORMAT:
        raise CosiFileError(f"{path}: unknown manifest format {kind!r} (expected '{SIMULATED_FORMAT}' or none)")
    if kind == SIMULATED_FORMAT:
        for role in SIMULATED_ROLES:
            if role not in data:
                raise CosiFileError(f"{path}: missing role '{role}'")
    for key in data:
        if key not in FILE_ROLES + BACKGROUND_ROLES + _DESCRIPTION_KEYS:
            logger.info("%s: key '%s' is not a role this package uses", path, key)
    files = {role: _resolve_file(path, role, data[role]) for role in FILE_ROLES if role in data}
    backgrounds = {role: _resolve_backgrounds(path, role, data.get(role)) for role in BACKGROUND_ROLES}
    seed = data.get("seed")
    return Manifest(path=path, files=files, name=str(data.get("name", "")),
                    seed=None if seed is None else int(seed), truth=data.get("truth") or {},
                    config=data.get("config") or {}, **backgrounds)


def write_manifest(directory, roles, **description):
    """Write ``manifest.yaml`` into `directory`, atomically.

    Parameters
    ----------
    directory : str or pathlib.Path
    roles : dict
        Role -> file name relative to `directory` (background roles: {name: file}).
    **description
        ``format``, ``name``, ``seed``, ``truth``, ``config`` and the like, written first.

    Returns
    -------
    pathlib.Path
    """
    return write_yaml({**description, **roles}, Path(directory) / MANIFEST_NAME)
