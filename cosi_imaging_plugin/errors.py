"""Exceptions raised for bad input.

Every error names the file, axis or key at fault so that a user can act on it.
"""


class CosiInputError(ValueError):
    """Invalid user input: a file, an axis, a key or a value that cannot be used."""


class CosiFileError(CosiInputError, OSError):
    """A file that is missing, truncated, corrupt or not in the expected layout."""


class AxisMismatchError(CosiInputError):
    """Two objects that must share a binning do not (edges, units, NSIDE, scheme or frame)."""
