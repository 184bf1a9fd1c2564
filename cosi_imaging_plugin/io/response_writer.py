"""Writer of COSI full detector response files: :func:`write_response`.

Only the version-1 dense layout is written (``docs/formats.md``; the layout
itself is described in :mod:`.response_layout`). The contents may be one array
or a stream of blocks of NuLambda pixels, so a response larger than memory can
be generated chunk by chunk; the file appears under its name only once every
pixel has been written and checked.
"""
import logging
from pathlib import Path

import astropy.units as u
import h5py
import numpy as np
from histpy import Axes, HealpixAxis

from .._atomic import atomic_path
from ..errors import CosiInputError
from .response_layout import AXIS_UNITS, DEFAULT_CHUNK_BYTES, RESPONSE_LABELS, float_dtype, write_v1_axis

logger = logging.getLogger(__name__)

__all__ = ["write_response"]


def _check_write_axes(axes):
    """`axes` as histpy Axes, checked against the version-1 layout (labels, full-sky HEALPix, units)."""
    try:
        axes = axes if isinstance(axes, Axes) else Axes(axes, copy_axes=False)
    except Exception as exc:
        raise CosiInputError(f"write_response: axes must be a histpy.Axes: {exc}") from exc
    labels = tuple(axes.labels)
    if labels != RESPONSE_LABELS:
        raise CosiInputError(f"write_response: axes must be labelled {list(RESPONSE_LABELS)}, got {list(labels)}")
    for axis in axes:
        if axis.label in ("NuLambda", "PsiChi"):
            if not isinstance(axis, HealpixAxis):
                raise CosiInputError(f"write_response: axis '{axis.label}' must be a HEALPix axis")
            if not np.array_equal(axis.edges, np.arange(axis.npix + 1)):
                raise CosiInputError(f"write_response: HEALPix axis '{axis.label}' must cover the full sky")
        else:
            target = AXIS_UNITS[axis.label]
            if axis.unit is None or not axis.unit.is_equivalent(target):
                raise CosiInputError(
                    f"write_response: axis '{axis.label}' needs a unit convertible to {target}, got {axis.unit}"
                )
    return axes


def _as_area(block, what):
    if isinstance(block, u.Quantity):
        if not block.unit.is_equivalent(u.cm**2):
            raise CosiInputError(f"write_response: {what} has unit {block.unit}, not an area")
        return block.to_value(u.cm**2)
    return np.asarray(block)


def _blocks(contents, shape):
    """(first pixel, block) pairs from a full array or an iterable of (nu, block)."""
    if isinstance(contents, (np.ndarray, u.Quantity)):
        if tuple(contents.shape) != shape:
            raise CosiInputError(f"write_response: contents have shape {contents.shape}, axes give {shape}")
        # Write in pixel groups so a unit or dtype conversion never copies the whole array.
        step = max(1, int(DEFAULT_CHUNK_BYTES // (8 * max(1, int(np.prod(shape[1:]))))))
        for start in range(0, shape[0], step):
            yield start, _as_area(contents[start:start + step], "contents")
        return
    for item in contents:
        try:
            nu, block = item
        except (TypeError, ValueError) as exc:
            raise CosiInputError("write_response: streamed contents must be (nu_slice, block) pairs") from exc
        block = _as_area(block, f"block for NuLambda {nu}")
        if isinstance(nu, (int, np.integer)):
            start, stop = int(nu), int(nu) + 1
            if block.shape == shape[1:]:
                block = block[None]
        elif isinstance(nu, slice) and nu.step in (None, 1):
            start, stop, _ = nu.indices(shape[0])
        else:
            raise CosiInputError(f"write_response: NuLambda selector must be an int or a unit-step slice, got {nu!r}")
        if block.shape != (stop - start,) + shape[1:]:
            raise CosiInputError(
                f"write_response: block for NuLambda {start}:{stop} has shape {block.shape}, "
                f"expected {(stop - start,) + shape[1:]}"
            )
        yield start, block


def write_response(path, axes, contents, dtype=np.float32, *, compression=None):
    """Write a response as a version-1 dense file, atomically.

    Layout: group ``/DRM`` (attributes ``UNIT='cm2'``, ``SPARSE=False``), ``/DRM/AXES``
    created with ``track_order=True`` holding one dataset per axis in the order NuLambda,
    Ei, Em, Phi, PsiChi, and ``/DRM/CONTENTS`` chunked ``(1, Ei, Em, Phi, PsiChi)`` so one
    NuLambda pixel reads alone.

    Parameters
    ----------
    path : str or pathlib.Path
        Output file (replaced if it exists).
    axes : histpy.Axes
        [NuLambda, Ei, Em, Phi, PsiChi]; full-sky HEALPix NuLambda and PsiChi; Ei and Em in
        energy units, Phi in angle units.
    contents : numpy.ndarray, astropy Quantity or iterable of (nu, block)
        The full array in cm2, or, for streaming generation, pairs of a NuLambda slice (or
        int) and its block of shape (n, Ei, Em, Phi, PsiChi); every pixel exactly once.
    dtype : numpy dtype
        Storage type (float32 by default).
    compression : str, optional
        h5py compression filter for CONTENTS (e.g. ``"gzip"``).

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    CosiInputError
        Bad axes, shapes, negative or non-finite values, pixels missing or written twice.
        Nothing is left under ``path`` in that case.
    """
    path = Path(path)
    axes = _check_write_axes(axes)
    dtype = float_dtype(dtype)
    shape = tuple(axes.shape)
    written = np.zeros(shape[0], dtype=bool)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        drm = f.create_group("DRM")
        drm.attrs["UNIT"] = "cm2"
        drm.attrs["SPARSE"] = False
        group = drm.create_group("AXES", track_order=True)
        for axis in axes:
            write_v1_axis(group, axis)
        ds = drm.create_dataset("CONTENTS", shape=shape, dtype=dtype,
                                chunks=(1,) + shape[1:], compression=compression)
        for start, block in _blocks(contents, shape):
            stop = start + len(block)
            if written[start:stop].any():
                first = start + int(np.flatnonzero(written[start:stop])[0])
                raise CosiInputError(f"write_response: NuLambda pixel {first} written twice")
            if block.size and not (block.min() >= 0 and block.max() < np.inf):
                bad = ~(np.isfinite(block) & (block >= 0)).reshape(len(block), -1).all(axis=1)
                raise CosiInputError(
                    f"write_response: negative or non-finite values for NuLambda pixel "
                    f"{start + int(np.flatnonzero(bad)[0])}"
                )
            ds[start:stop] = block
            written[start:stop] = True
        if not written.all():
            missing = np.flatnonzero(~written)
            raise CosiInputError(
                f"write_response: {missing.size} NuLambda pixels never written (first {missing[0]})"
            )
    logger.info("wrote response %s, shape %s, %s", path, shape, dtype)
    return path
