"""Checks of configuration values and keyword arguments; every failure names the key.

One implementation serves the instrument and simulation configurations, the sky
descriptions, the deconvolution keywords and the fit configurations. Each check
returns the value in its canonical Python type or raises
:class:`~cosi_imaging_plugin.errors.InvalidValueError`
(``"{where}: key '{key}': {problem}"``).
"""
import difflib
import math
import re

import astropy.units as u
import numpy as np

from .errors import InvalidValueError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def fail(key, problem, where=None):
    """Raise :class:`~cosi_imaging_plugin.errors.InvalidValueError` for `key`."""
    raise InvalidValueError(key, problem, where)


def _looks_numeric(value):
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def number(value, key, where=None, *, low=None, high=None, low_open=False, high_open=False, integer=False,
           allow_inf=False):
    """A real number within bounds (booleans are not numbers).

    Parameters
    ----------
    value : object
    key : str
        Name reported in errors.
    where : str, optional
        File or object the key belongs to.
    low, high : float, optional
        Bounds, closed unless `low_open` / `high_open`.
    integer : bool
        Require an integral value; returned as int.
    allow_inf : bool
        Accept +-inf (NaN never).

    Returns
    -------
    float or int
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        hint = " (a number is expected, not text)" if isinstance(value, str) and _looks_numeric(value) else ""
        fail(key, f"expected a number, got {value!r}{hint}", where)
    if integer:
        if not math.isfinite(float(value)) or float(value) != int(value):
            fail(key, f"expected an integer, got {value!r}", where)
        value = int(value)
    else:
        value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        fail(key, f"must be finite, got {value!r}", where)
    if low is not None and (value <= low if low_open else value < low):
        fail(key, f"must be {'>' if low_open else '>='} {low}, got {value!r}", where)
    if high is not None and (value >= high if high_open else value > high):
        fail(key, f"must be {'<' if high_open else '<='} {high}, got {value!r}", where)
    return value


def number_list(value, key, where=None, *, min_len=1, increasing=False, **bounds):
    """A sequence of numbers (each checked as by :func:`number` with `bounds`), as a tuple of float."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
        fail(key, f"expected a list of numbers, got {value!r}", where)
    if len(value) < min_len:
        fail(key, f"needs at least {min_len} values, got {len(value)}", where)
    out = tuple(number(v, f"{key}[{i}]", where, **bounds) for i, v in enumerate(value))
    if increasing and np.any(np.diff(out) <= 0):
        fail(key, f"values must be strictly increasing, got {list(out)}", where)
    return out


def flag(value, key, where=None):
    """A boolean (``true`` / ``false``; numbers and text are refused)."""
    if not isinstance(value, (bool, np.bool_)):
        fail(key, f"expected true or false, got {value!r}", where)
    return bool(value)


def power_of_two(value, key, where=None):
    """A positive integral power of two (a HEALPix NSIDE), as int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        fail(key, f"expected an integer NSIDE, got {value!r}", where)
    value = int(value)
    if value < 1 or value & (value - 1):
        fail(key, f"NSIDE must be a positive power of two, got {value}", where)
    return value


def identifier(value, key, where=None):
    """A name made of letters, digits and '_' that does not start with a digit."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        fail(key, f"must be an identifier (letters, digits, '_'), got {value!r}", where)
    return value


def choice(value, key, options, where=None):
    """One of `options`."""
    if value not in options:
        fail(key, f"must be one of {list(options)}, got {value!r}", where)
    return value


def mapping(value, key, where=None):
    """A dict."""
    if not isinstance(value, dict):
        fail(key, f"expected a mapping, got {value!r}", where)
    return value


def did_you_mean(name, known):
    """`` (did you mean 'x'?)`` for the closest of `known` to `name` (difflib), or an empty string."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_key(sub, known, key="", where=None):
    """Fail for the unknown key `sub` of the mapping `key`, with the closest known key suggested."""
    fail(f"{key}.{sub}" if key else str(sub),
         f"unknown key{did_you_mean(sub, known)} (expected one of {sorted(known)})", where)


def check_keys(value, key, where=None, *, known, required=()):
    """Check that the mapping `value` holds every `required` key and only `known` ones.

    Sub-keys are reported as ``{key}.{sub}`` (``key`` empty: the top level).
    """
    label = key or "<top level>"
    mapping(value, label, where)
    known = set(known) | set(required)
    for sub in value:
        if sub not in known:
            unknown_key(sub, known, key, where)
    for sub in required:
        if sub not in value:
            fail(f"{key}.{sub}" if key else str(sub), "missing key", where)
    return value


def quantity(value, key, unit, where=None, *, low=None, allow_inf=False):
    """A number, or an array of numbers, in `unit`.

    An astropy Quantity is converted (its unit must be convertible); plain numbers
    are taken to be in `unit` already.

    Returns
    -------
    float or numpy.ndarray
    """
    if isinstance(value, u.Quantity):
        if not value.unit.is_equivalent(unit):
            fail(key, f"unit must be convertible to {unit}, got '{value.unit}'", where)
        value = value.to_value(unit)
    values = np.asarray(value, dtype=object)
    checked = [number(v, key, where, low=low, allow_inf=allow_inf) for v in values.ravel()]
    return checked[0] if values.ndim == 0 else np.array(checked, dtype=np.float64).reshape(values.shape)
