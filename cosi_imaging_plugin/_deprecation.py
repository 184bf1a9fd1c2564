"""Deprecation warnings for public names that moved.

A moved module keeps a stub at its old path for one release: importing it warns once
and re-exports the new names. A moved package attribute is served by the package's
module ``__getattr__`` through :func:`warn_moved`.
"""
import warnings

#: The release that removes the old import paths.
REMOVED_IN = "0.3"


def warn_moved(old, new, stacklevel=3):
    """Warn that `old` (a module path or ``module.name``) now lives at `new`."""
    warnings.warn(f"{old} is deprecated and will be removed in cosi_imaging_plugin {REMOVED_IN}; "
                  f"use {new}", DeprecationWarning, stacklevel=stacklevel)
