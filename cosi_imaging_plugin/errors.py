"""Exceptions raised for bad input.

Every error names the file, axis or key at fault so that a user can act on it.
"""


class CosiInputError(ValueError):
    """Invalid user input: a file, an axis, a key or a value that cannot be used."""


class CosiFileError(CosiInputError, OSError):
    """A file that is missing, truncated, corrupt or not in the expected layout."""


class AxisMismatchError(CosiInputError):
    """Two objects that must share a binning do not (edges, units, NSIDE, scheme or frame)."""


class InvalidValueError(CosiInputError):
    """A configuration key or keyword argument with an unusable value.

    The message reads ``"{where}: key '{key}': {problem}"``; the parts stay available
    so that a caller who knows the key under another name (a keyword argument read from
    a parameter-file path, say) can report it there with :meth:`renamed`.

    Parameters
    ----------
    key : str
        The key or keyword at fault.
    problem : str
        What is wrong with its value.
    where : str, optional
        The file, configuration or function the key belongs to.
    """

    def __init__(self, key, problem, where=None):
        self.key, self.problem, self.where = str(key), str(problem), where
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}key '{key}': {problem}")

    def renamed(self, key, where=None):
        """The same problem reported under another key name (and place)."""
        return InvalidValueError(key, self.problem, self.where if where is None else where)
