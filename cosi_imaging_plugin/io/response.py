"""Reader of the COSI full detector response: :class:`FullDetectorResponse`.

Three on-disk layouts are read (``docs/formats.md``; see :mod:`.response_layout`):
version 1 dense, version 1 sparse (one variable-length COO row per NuLambda pixel,
SigmaTau and Dist summed out) and version 2 (``COUNTS * EFF_AREA[Ei]``). The
response is opened lazily: opening reads axes and attributes; contents are read
per NuLambda pixel, per Ei bin or per chunk of pixels, so a 20 GB response can be
streamed.

Only version 1 dense is written, by :func:`~.response_writer.write_response`,
which this module re-exports.
"""
import logging
from pathlib import Path

import astropy.units as u
import numpy as np
from histpy import Histogram

from ..errors import CosiFileError, CosiInputError
from .histograms import open_hdf5
from .response_layout import DEFAULT_CHUNK_BYTES, RESPONSE_LABELS, float_dtype, read_layout
from .response_writer import write_response

try:  # version-2 files written by cosipy compress COUNTS with a Bitshuffle filter
    import hdf5plugin
except ImportError:  # pragma: no cover - depends on the environment
    hdf5plugin = None

logger = logging.getLogger(__name__)

__all__ = ["RESPONSE_LABELS", "FullDetectorResponse", "write_response"]


class FullDetectorResponse:
    """Lazy, read-only access to a COSI full detector response file.

    Values are bin-averaged effective areas in cm2, indexed
    ``[NuLambda, Ei, Em, Phi, PsiChi]``. Use :meth:`open` to create one; close it with
    :meth:`close` or use it as a context manager.

    Examples
    --------
    >>> with FullDetectorResponse.open("response.h5") as rsp:      # doctest: +SKIP
    ...     aeff = rsp.effective_area()
    ...     for nu, block in rsp.iter_chunks(64):
    ...         ...
    """

    def __init__(self, h5file, path, layout, dtype):
        # Internal: use FullDetectorResponse.open().
        self._file = h5file
        self._path = Path(path)
        self._version = layout.version
        self._kind = layout.kind  # 'dense', 'sparse' or 'counts' (version 2)
        self._axes = layout.axes
        self._file_shape = tuple(layout.file_shape)  # shape on disk, extra summed axes included
        self._scale = layout.scale  # file unit -> cm2
        self._dtype = dtype
        self._eff_area = layout.eff_area

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path, dtype=None):
        """Open a response file; only axes and attributes are read.

        Parameters
        ----------
        path : str or pathlib.Path
            HDF5 response file (version 1 dense or sparse, or version 2).
        dtype : numpy dtype, optional
            Floating type of the arrays returned by the data accessors (default float64).

        Returns
        -------
        FullDetectorResponse

        Raises
        ------
        CosiFileError
            Missing, truncated or non-HDF5 file; missing ``/DRM``, axes or datasets;
            inconsistent shapes; a unit that is not an area.
        """
        path = Path(path)
        dtype = float_dtype(dtype)
        h5file = open_hdf5(path, "response file")
        try:
            return cls._parse(h5file, path, dtype)
        except CosiFileError:
            h5file.close()
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            h5file.close()
            raise CosiFileError(f"{path}: not a readable COSI response: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def _parse(cls, f, path, dtype):
        new = cls(f, path, read_layout(f, path), dtype)
        logger.debug("opened %r", new)
        return new

    # ------------------------------------------------------------------ properties
    @property
    def axes(self):
        """histpy.Axes: [NuLambda, Ei, Em, Phi, PsiChi] (HEALPix axes in the spacecraft frame)."""
        return self._axes

    @property
    def shape(self):
        """tuple of int: number of bins along NuLambda, Ei, Em, Phi, PsiChi."""
        return tuple(self._axes.shape)

    @property
    def ndim(self):
        """int: number of axes (5)."""
        return self._axes.ndim

    @property
    def nside(self):
        """int: HEALPix NSIDE of the NuLambda axis."""
        return int(self._axes["NuLambda"].nside)

    @property
    def npix(self):
        """int: number of NuLambda pixels."""
        return int(self._axes["NuLambda"].npix)

    @property
    def scheme(self):
        """str: HEALPix scheme of the NuLambda axis, 'ring' or 'nested'."""
        return self._axes["NuLambda"].scheme.lower()

    @property
    def unit(self):
        """astropy.units.Unit: unit of every returned value (cm2)."""
        return u.cm**2

    @property
    def dtype(self):
        """numpy.dtype: floating type of returned arrays."""
        return self._dtype

    @property
    def filename(self):
        """pathlib.Path: the response file."""
        return self._path

    @property
    def is_sparse(self):
        """bool: True for a version-1 sparse file."""
        return self._kind == "sparse"

    @property
    def version(self):
        """int: on-disk format version (1 or 2)."""
        return self._version

    def __repr__(self):
        layout = {"dense": "dense", "sparse": "sparse", "counts": "counts x eff_area"}[self._kind]
        return (f"FullDetectorResponse('{self._path}', version={self._version}, {layout}, "
                f"shape={self.shape}, nside={self.nside}, scheme='{self.scheme}')")

    # ------------------------------------------------------------------ lifetime
    def close(self):
        """Close the underlying HDF5 file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()

    def __reduce__(self):
        # h5py handles cannot be pickled; worker processes reopen the file by name.
        return (type(self).open, (self._path, self._dtype))

    def _drm(self):
        if self._file is None:
            raise CosiInputError(f"response {self._path} is closed")
        return self._file["DRM"]

    # ------------------------------------------------------------------ raw reading
    def _check(self, block, pixels):
        """Reject negative/NaN/inf values, naming the first NuLambda pixel that has one."""
        if block.size == 0:
            return
        # min() < 0 or NaN, max() == inf: two reductions, no temporary arrays.
        if block.min() >= 0 and block.max() < np.inf:
            return
        flat = block.reshape(len(block), -1)
        bad_rows = np.flatnonzero(~(np.isfinite(flat) & (flat >= 0)).all(axis=1))
        row = int(bad_rows[0])
        values = flat[row][~(np.isfinite(flat[row]) & (flat[row] >= 0))]
        raise CosiFileError(
            f"{self._path}: response has negative or non-finite entries for NuLambda pixel "
            f"{int(pixels[row])} (e.g. {values[0]}; {values.size} such bins in that pixel)"
        )

    def _h5read(self, key, selection):
        try:
            return self._drm()[key][selection]
        except OSError as exc:
            # only version-2 files use the HDF5 compression filters that hdf5plugin provides
            hint = " (install hdf5plugin for compressed version-2 files)" if hdf5plugin is None and self._version == 2 \
                else ""
            raise CosiFileError(f"{self._path}: cannot read /DRM/{key}{hint}: {exc}") from exc

    def _sparse_row(self, pixel, bins, values):
        """Validated (coords, values) of one sparse row; coords has one row per file axis after NuLambda."""
        rest = self._file_shape[1:]
        bins = np.asarray(bins)
        values = np.asarray(values, dtype=np.float64)
        if bins.size != len(rest) * values.size:
            raise CosiFileError(
                f"{self._path}: sparse row of NuLambda pixel {pixel} has {bins.size} bin numbers "
                f"for {values.size} values and {len(rest)} axes"
            )
        if values.size and not (values.min() >= 0 and values.max() < np.inf):
            raise CosiFileError(
                f"{self._path}: response has negative or non-finite entries for NuLambda pixel {pixel}"
            )
        # cosipy writes coords.flatten(): all Ei coordinates, then all Em coordinates, ...
        coords = bins.reshape(len(rest), -1)
        if coords.size and (coords.min() < 0 or np.any(coords.max(axis=1) >= np.asarray(rest))):
            raise CosiFileError(f"{self._path}: sparse row of NuLambda pixel {pixel} has bin numbers out of range")
        return coords, values

    def _decode_sparse(self, pixel, bins, values, ei=None):
        """Dense [Ei, Em, Phi, PsiChi] array (or [Em, Phi, PsiChi] for one Ei) of one sparse row."""
        coords, values = self._sparse_row(pixel, bins, values)
        rest = self._file_shape[1:]
        if ei is None:
            shape = rest[:4]
            flat = np.ravel_multi_index(tuple(coords[:4]), shape)
        else:
            keep = coords[0] == ei
            shape = rest[1:4]
            flat = np.ravel_multi_index(tuple(coords[1:4, keep]), shape)
            values = values[keep]
        # bincount sums the SigmaTau/Dist entries that share (Ei, Em, Phi, PsiChi).
        return np.bincount(flat, weights=values, minlength=int(np.prod(shape))).reshape(shape)

    def _read_range(self, start, stop, dtype):
        """Pixels start..stop-1 as [n, Ei, Em, Phi, PsiChi] in cm2."""
        pixels = np.arange(start, stop)
        if self._kind == "sparse":
            bins = self._h5read("BIN_NUMBERS", slice(start, stop))
            values = self._h5read("CONTENTS", slice(start, stop))
            block = np.empty((stop - start,) + self.shape[1:], dtype=dtype)
            for i, p in enumerate(pixels):
                block[i] = self._decode_sparse(p, bins[i], values[i])
        else:
            block = self._read_dense_like(slice(start, stop), dtype)
        if self._scale != 1.0 and self._kind != "counts":
            block *= self._scale
        self._check(block, pixels)
        return block

    def _read_list(self, pixels, dtype):
        """Sorted unique pixel list as [n, Ei, Em, Phi, PsiChi] in cm2."""
        if pixels.size and pixels[-1] - pixels[0] + 1 == pixels.size:
            return self._read_range(int(pixels[0]), int(pixels[-1]) + 1, dtype)
        if self._kind == "sparse":
            block = np.empty((pixels.size,) + self.shape[1:], dtype=dtype)
            for i, p in enumerate(pixels):
                block[i] = self._read_range(int(p), int(p) + 1, dtype)[0]
            return block
        block = self._read_dense_like(pixels.tolist(), dtype)
        if self._scale != 1.0 and self._kind != "counts":
            block *= self._scale
        self._check(block, pixels)
        return block

    def _read_dense_like(self, selection, dtype):
        if self._kind == "counts":
            counts = self._h5read("COUNTS", selection)
            eff = self._eff_area.astype(dtype)[None, :, None, None, None]
            return counts.astype(dtype) * eff
        block = self._h5read("CONTENTS", selection)
        if block.ndim > 5:  # dense file carrying SigmaTau/Dist: sum them out
            block = block.sum(axis=tuple(range(5, block.ndim)))
        return np.asarray(block, dtype=dtype)

    def _normalize_pixels(self, index):
        """Return ('range', start, stop) or ('list', sorted_unique, inverse)."""
        n = self.shape[0]

        def check_int(i):
            i = int(i)
            if not -n <= i < n:
                raise IndexError(f"{self._path}: NuLambda pixel {i} out of range (0..{n - 1})")
            return i % n

        if isinstance(index, (int, np.integer)):
            i = check_int(index)
            return "range", i, i + 1
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step == 1:
                return "range", start, max(start, stop)
            index = np.arange(start, stop, step)
        index = np.asarray(index)
        if index.dtype == bool:
            if index.shape != (n,):
                raise IndexError(f"{self._path}: boolean pixel mask must have length {n}, got {index.shape}")
            index = np.flatnonzero(index)
        if index.ndim != 1 or (index.size and index.dtype.kind not in "iu"):
            raise CosiInputError(
                f"{self._path}: pixel index must be an int, a slice or a 1-D integer array, got {index!r}"
            )
        index = index.astype(np.int64)
        if index.size and (index.min() < -n or index.max() >= n):
            bad = index[(index < -n) | (index >= n)][0]
            raise IndexError(f"{self._path}: NuLambda pixel {bad} out of range (0..{n - 1})")
        unique, inverse = np.unique(index % n, return_inverse=True)
        return "list", unique, inverse

    # ------------------------------------------------------------------ public access
    def read_pixels(self, index):
        """Read the response of some NuLambda pixels; only those rows are read from disk.

        Parameters
        ----------
        index : int, slice or array of int (or boolean mask)
            NuLambda pixels. Negative values count from the end; an array may be unsorted
            and hold repeats.

        Returns
        -------
        numpy.ndarray
            Shape (n, Ei, Em, Phi, PsiChi) in cm2 (n = 1 for an int), dtype :attr:`dtype`.

        Raises
        ------
        IndexError
            A pixel out of range.
        CosiFileError
            Negative or non-finite entries in a pixel read, or an unreadable file.
        """
        how = self._normalize_pixels(index)
        if how[0] == "range":
            return self._read_range(how[1], how[2], self._dtype)
        _, unique, inverse = how
        if unique.size == 0:
            return np.empty((0,) + self.shape[1:], dtype=self._dtype)
        block = self._read_list(unique, self._dtype)
        if unique.size == inverse.size and np.array_equal(inverse, np.arange(inverse.size)):
            return block
        return block[inverse]

    def __getitem__(self, nu):
        """Response of one NuLambda pixel as a Histogram [Ei, Em, Phi, PsiChi] in cm2."""
        if not isinstance(nu, (int, np.integer)):
            raise TypeError(f"{self._path}: response[...] takes one NuLambda pixel (int); use read_pixels() "
                            f"for slices and arrays, got {type(nu).__name__}")
        row = self.read_pixels(int(nu))[0]
        return Histogram(self._axes[1:], contents=row, unit=self.unit, copy_contents=False)

    def read_energy_slice(self, ei):
        """Read the response for one Ei bin, all NuLambda pixels.

        Parameters
        ----------
        ei : int
            Ei bin index (negative counts from the end).

        Returns
        -------
        numpy.ndarray
            Shape (NuLambda, Em, Phi, PsiChi) in cm2.
        """
        n_ei = self.shape[1]
        if not isinstance(ei, (int, np.integer)) or not -n_ei <= ei < n_ei:
            raise IndexError(f"{self._path}: Ei bin {ei!r} out of range (0..{n_ei - 1})")
        ei = int(ei) % n_ei
        pixels = np.arange(self.shape[0])
        if self._kind == "sparse":
            out = np.empty((self.shape[0],) + self.shape[2:], dtype=self._dtype)
            for start in range(0, self.shape[0], 64):
                stop = min(start + 64, self.shape[0])
                bins = self._h5read("BIN_NUMBERS", slice(start, stop))
                values = self._h5read("CONTENTS", slice(start, stop))
                for i in range(stop - start):
                    out[start + i] = self._decode_sparse(start + i, bins[i], values[i], ei=ei)
            out *= self._scale
        elif self._kind == "counts":
            counts = self._h5read("COUNTS", (slice(None), ei))
            out = counts.astype(self._dtype) * self._dtype.type(self._eff_area[ei])
        else:
            out = self._h5read("CONTENTS", (slice(None), ei))
            if out.ndim > 4:
                out = out.sum(axis=tuple(range(4, out.ndim)))
            out = np.asarray(out, dtype=self._dtype)
            if self._scale != 1.0:
                out *= self._scale
        self._check(out, pixels)
        return out

    def _pixels_per_chunk(self, pixels_per_chunk, dtype):
        if pixels_per_chunk is None:
            row_bytes = np.prod(self.shape[1:]) * np.dtype(dtype).itemsize
            return max(1, int(DEFAULT_CHUNK_BYTES // max(row_bytes, 1)))
        if not isinstance(pixels_per_chunk, (int, np.integer)) or pixels_per_chunk < 1:
            raise CosiInputError(f"pixels_per_chunk must be a positive integer, got {pixels_per_chunk!r}")
        return int(pixels_per_chunk)

    def iter_chunks(self, pixels_per_chunk=None):
        """Stream the response in blocks of consecutive NuLambda pixels.

        Parameters
        ----------
        pixels_per_chunk : int, optional
            Pixels per block; by default blocks of about 256 MiB.

        Yields
        ------
        nu : slice
            NuLambda pixels of the block.
        block : numpy.ndarray
            Shape (nu.stop - nu.start, Ei, Em, Phi, PsiChi) in cm2.
        """
        yield from self._iter_chunks(pixels_per_chunk, self._dtype)

    def _iter_chunks(self, pixels_per_chunk, dtype):
        step = self._pixels_per_chunk(pixels_per_chunk, dtype)
        n = self.shape[0]
        for start in range(0, n, step):
            stop = min(start + step, n)
            yield slice(start, stop), self._read_range(start, stop, dtype)

    def to_dense(self, dtype=None):
        """Load the whole response into memory (the explicit 'load all' call).

        Parameters
        ----------
        dtype : numpy dtype, optional
            Floating type; :attr:`dtype` by default.

        Returns
        -------
        numpy.ndarray
            Shape (NuLambda, Ei, Em, Phi, PsiChi) in cm2.
        """
        dtype = self._dtype if dtype is None else float_dtype(dtype)
        out = np.empty(self.shape, dtype=dtype)
        for nu, block in self._iter_chunks(None, dtype):
            out[nu] = block
        return out

    def effective_area(self):
        """Effective area per (NuLambda, Ei): the sum over Em, Phi and PsiChi.

        Computed chunk by chunk (sparse rows are summed without densifying them).

        Returns
        -------
        histpy.Histogram
            Axes [NuLambda, Ei], unit cm2, float64.
        """
        n, n_ei = self.shape[:2]
        aeff = np.zeros((n, n_ei))
        if self._kind == "sparse":
            for start in range(0, n, 64):
                stop = min(start + 64, n)
                bins = self._h5read("BIN_NUMBERS", slice(start, stop))
                values = self._h5read("CONTENTS", slice(start, stop))
                for i in range(stop - start):
                    coords, vals = self._sparse_row(start + i, bins[i], values[i])
                    aeff[start + i] = np.bincount(coords[0], weights=vals, minlength=n_ei) * self._scale
        else:
            for nu, block in self._iter_chunks(None, np.float64):
                aeff[nu] = block.sum(axis=(2, 3, 4))
        return Histogram(self._axes[["NuLambda", "Ei"]], contents=aeff, unit=self.unit, copy_contents=False)

