"""Reader and writer of the COSI full detector response (``FullDetectorResponse`` files).

Three on-disk layouts are read (``FORMATS.md``):

- version 1 dense: ``/DRM/CONTENTS`` of shape (NuLambda, Ei, Em, Phi, PsiChi);
- version 1 sparse (no ``SPARSE`` attribute means sparse): ``/DRM/BIN_NUMBERS`` and
  ``/DRM/CONTENTS`` hold one variable-length row per NuLambda pixel. A row's bin numbers
  are the COO coordinates over the remaining axes (Ei, Em, Phi, PsiChi, SigmaTau, Dist)
  stored axis after axis, i.e. ``coords = row.reshape(ndim - 1, nnz)`` as cosipy writes
  ``coords.flatten()``. SigmaTau and Dist are summed out;
- version 2 (``VERSION = 2``): histpy ``Axes`` in ``/DRM/AXES``, raw simulated ``COUNTS``
  and a per-Ei ``EFF_AREA`` (simulated area per simulated photon in that Ei bin). As in
  cosipy's own reader, the response is ``COUNTS * EFF_AREA[Ei]``: the counts are already
  the numbers detected out of the photons thrown per (NuLambda, Ei), so they are not
  renormalised per (NuLambda, Ei).

Only version 1 dense is written. The response is opened lazily: opening reads axes and
attributes; contents are read per NuLambda pixel, per Ei bin or per chunk of pixels, so a
20 GB response can be streamed.
"""
import logging
from pathlib import Path

import astropy.units as u
import h5py
import numpy as np
import scoords  # noqa: F401  (registers the 'spacecraftframe' astropy frame)
from histpy import Axes, Axis, HealpixAxis, Histogram
from scoords import SpacecraftFrame

from .._atomic import atomic_path
from ..errors import CosiFileError, CosiInputError
from .histograms import open_hdf5

try:  # version-2 files written by cosipy compress COUNTS with a Bitshuffle filter
    import hdf5plugin  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    hdf5plugin = None

logger = logging.getLogger(__name__)

__all__ = ["FullDetectorResponse", "write_response", "RESPONSE_LABELS"]

#: Axis labels of a response, in storage order.
RESPONSE_LABELS = ("NuLambda", "Ei", "Em", "Phi", "PsiChi")
#: Extra axes of version-1 sparse files; they are summed out.
_SUMMED_LABELS = ("SigmaTau", "Dist")
_HEALPIX_LABELS = ("NuLambda", "PsiChi", "SigmaTau")
_AXIS_UNITS = {"Ei": u.keV, "Em": u.keV, "Phi": u.deg}
_DESCRIPTIONS = {
    "NuLambda": "Location of the simulated source in the spacecraft coordinates",
    "Ei": "Initial simulated energy",
    "Em": "Measured energy",
    "Phi": "Compton angle",
    "PsiChi": "Location in the Compton Data Space",
    "SigmaTau": "Electron recoil angle",
    "Dist": "Distance from first interaction",
}
# Target size of one block yielded by iter_chunks() when the caller does not choose.
_DEFAULT_CHUNK_BYTES = 256 * 2**20


def _attr_str(value):
    """HDF5 string attributes come back as str, bytes or 0-d arrays depending on the writer."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode()
    return str(value)


def _float_dtype(dtype, default=np.float64):
    dtype = np.dtype(default if dtype is None else dtype)
    if dtype.kind != "f":
        raise CosiInputError(f"response values are floating point; dtype {dtype} is not")
    return dtype


def _healpix_full_sky(axis, where):
    if not np.array_equal(axis.edges, np.arange(axis.npix + 1)):
        raise CosiFileError(f"{where}: HEALPix axis '{axis.label}' must cover the full sky (edges 0..{axis.npix})")


def _with_unit(axis, where):
    """Copy of a 1-D axis converted to the canonical unit of its label (keV, deg)."""
    target = _AXIS_UNITS.get(axis.label)
    if target is None:
        return axis
    if axis.unit is None or not axis.unit.is_equivalent(target):
        raise CosiFileError(f"{where}: axis '{axis.label}' has unit {axis.unit}, expected {target}")
    return Axis(axis.edges.to(target), scale=axis.axis_scale, label=axis.label)


def _spacecraft_healpix(axis):
    """HEALPix response axes live in the spacecraft frame whatever the file says."""
    return HealpixAxis(edges=np.asarray(axis.edges), nside=axis.nside, scheme=axis.scheme.lower(),
                       coordsys=SpacecraftFrame(), label=axis.label)


def _read_v1_axis(dataset, label, where):
    attrs = dataset.attrs
    if "TYPE" not in attrs:
        raise CosiFileError(f"{where}: axis dataset /DRM/AXES/{label} has no TYPE attribute")
    kind = _attr_str(attrs["TYPE"]).lower()
    edges = dataset[()]
    try:
        if kind == "healpix":
            if "NSIDE" not in attrs:
                raise CosiFileError(f"{where}: HEALPix axis /DRM/AXES/{label} has no NSIDE attribute")
            scheme = _attr_str(attrs.get("SCHEME", "ring")).lower()
            if scheme not in ("ring", "nested"):
                raise CosiFileError(f"{where}: axis /DRM/AXES/{label} has SCHEME '{scheme}' (ring or nested)")
            return HealpixAxis(edges=edges, nside=int(attrs["NSIDE"]), scheme=scheme,
                               coordsys=SpacecraftFrame(), label=label)
        if kind in ("log", "linear"):
            if "UNIT" not in attrs:
                raise CosiFileError(f"{where}: axis /DRM/AXES/{label} has no UNIT attribute")
            return Axis(edges * u.Unit(_attr_str(attrs["UNIT"])), scale=kind, label=label)
    except (ValueError, TypeError) as exc:
        raise CosiFileError(f"{where}: invalid axis /DRM/AXES/{label}: {exc}") from exc
    raise CosiFileError(f"{where}: axis /DRM/AXES/{label} has unknown TYPE '{kind}' (healpix, log or linear)")


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

    def __init__(self, h5file, path, version, kind, axes, file_shape, scale, dtype, eff_area=None):
        # Internal: use FullDetectorResponse.open().
        self._file = h5file
        self._path = Path(path)
        self._version = version
        self._kind = kind  # 'dense', 'sparse' or 'counts' (version 2)
        self._axes = axes
        self._file_shape = tuple(file_shape)  # shape on disk, extra summed axes included
        self._scale = scale  # file unit -> cm2
        self._dtype = dtype
        self._eff_area = eff_area

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
        dtype = _float_dtype(dtype)
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
        drm = f.get("DRM")
        if not isinstance(drm, h5py.Group):
            raise CosiFileError(
                f"{path} has no /DRM group (groups present: {sorted(f.keys())}); "
                "it is not a COSI full detector response"
            )
        if "UNIT" not in drm.attrs:
            raise CosiFileError(f"{path}: /DRM has no UNIT attribute")
        unit_text = _attr_str(drm.attrs["UNIT"])
        try:
            unit = u.Unit(unit_text)
        except ValueError as exc:
            raise CosiFileError(f"{path}: /DRM attribute UNIT = '{unit_text}' is not a unit") from exc
        if not unit.is_equivalent(u.cm**2):
            raise CosiFileError(f"{path}: /DRM attribute UNIT = '{unit_text}' is not an area (expected cm2)")
        scale = float(unit.to(u.cm**2))
        if not isinstance(drm.get("AXES"), h5py.Group):
            raise CosiFileError(f"{path}: /DRM/AXES group is missing (found {sorted(drm.keys())})")

        version = int(drm.attrs.get("VERSION", 1))
        if version == 1:
            new = cls._parse_v1(f, drm, path, dtype, scale)
        elif version == 2:
            new = cls._parse_v2(f, drm, path, dtype, scale)
        else:
            raise CosiFileError(f"{path}: response format VERSION = {version} is not supported (1 or 2)")
        logger.debug("opened %r", new)
        return new

    @classmethod
    def _parse_v1(cls, f, drm, path, dtype, scale):
        group = drm["AXES"]
        names = list(group.keys())
        if not group.id.get_create_plist().get_link_creation_order():
            # Without order tracking HDF5 lists names alphabetically, which scrambles the
            # storage order; the COSI order is the only sensible guess.
            canonical = [n for n in RESPONSE_LABELS + _SUMMED_LABELS if n in names]
            names = canonical + [n for n in names if n not in canonical]
            logger.warning("%s: /DRM/AXES does not track creation order; assuming axis order %s", path, names)
        axes = [_read_v1_axis(group[name], name, path) for name in names]
        labels = [a.label for a in axes]
        if tuple(labels[:5]) != RESPONSE_LABELS or any(lab not in _SUMMED_LABELS for lab in labels[5:]):
            raise CosiFileError(
                f"{path}: /DRM/AXES must be {list(RESPONSE_LABELS)} (+ SigmaTau, Dist), found {labels}"
            )
        file_shape = tuple(a.nbins for a in axes)
        out_axes = cls._response_axes(axes[:5], path)

        sparse = bool(drm.attrs["SPARSE"]) if "SPARSE" in drm.attrs else True
        if sparse:
            for key in ("BIN_NUMBERS", "CONTENTS"):
                ds = drm.get(key)
                if not isinstance(ds, h5py.Dataset):
                    raise CosiFileError(f"{path}: sparse response has no /DRM/{key} dataset")
                if ds.ndim != 1 or ds.shape[0] != file_shape[0] or h5py.check_vlen_dtype(ds.dtype) is None:
                    raise CosiFileError(
                        f"{path}: /DRM/{key} must hold {file_shape[0]} variable-length rows "
                        f"(one per NuLambda pixel), found shape {ds.shape}, dtype {ds.dtype}"
                    )
            kind = "sparse"
        else:
            ds = drm.get("CONTENTS")
            if not isinstance(ds, h5py.Dataset):
                raise CosiFileError(f"{path}: dense response has no /DRM/CONTENTS dataset")
            if ds.shape != file_shape:
                raise CosiFileError(
                    f"{path}: /DRM/CONTENTS has shape {ds.shape} but the axes {labels} give {file_shape}"
                )
            kind = "dense"
        return cls(f, path, 1, kind, out_axes, file_shape, scale, dtype)

    @classmethod
    def _parse_v2(cls, f, drm, path, dtype, scale):
        try:
            axes = Axes.open(drm["AXES"])
        except Exception as exc:
            raise CosiFileError(f"{path}: cannot read histpy axes in /DRM/AXES: {exc}") from exc
        labels = list(axes.labels)
        if "Pol" in labels:
            raise CosiFileError(f"{path}: polarization responses (axis 'Pol') are not supported")
        if tuple(labels) != RESPONSE_LABELS:
            raise CosiFileError(f"{path}: /DRM/AXES must be {list(RESPONSE_LABELS)}, found {labels}")
        out_axes = cls._response_axes(list(axes), path)
        for key in ("EFF_AREA", "COUNTS"):
            if not isinstance(drm.get(key), h5py.Dataset):
                raise CosiFileError(f"{path}: version-2 response has no /DRM/{key} dataset")
        if drm["COUNTS"].shape != axes.shape:
            raise CosiFileError(f"{path}: /DRM/COUNTS has shape {drm['COUNTS'].shape}, axes give {axes.shape}")
        eff_area = np.asarray(drm["EFF_AREA"][()], dtype=np.float64).reshape(-1)
        if eff_area.shape != (axes["Ei"].nbins,):
            raise CosiFileError(
                f"{path}: /DRM/EFF_AREA has {eff_area.size} values for {axes['Ei'].nbins} Ei bins"
            )
        if not (np.all(np.isfinite(eff_area)) and np.all(eff_area >= 0)):
            raise CosiFileError(f"{path}: /DRM/EFF_AREA has negative or non-finite values: {eff_area}")
        return cls(f, path, 2, "counts", out_axes, axes.shape, scale, dtype, eff_area=eff_area * scale)

    @staticmethod
    def _response_axes(axes, path):
        out = []
        for axis in axes:
            if axis.label in ("NuLambda", "PsiChi"):
                if not isinstance(axis, HealpixAxis):
                    raise CosiFileError(f"{path}: axis '{axis.label}' must be a HEALPix axis")
                _healpix_full_sky(axis, path)
                out.append(_spacecraft_healpix(axis))
            else:
                out.append(_with_unit(axis, path))
        return Axes(out, copy_axes=False)

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
            hint = " (install hdf5plugin for compressed version-2 files)" if hdf5plugin is None else ""
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
            return max(1, int(_DEFAULT_CHUNK_BYTES // max(row_bytes, 1)))
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
        dtype = self._dtype if dtype is None else _float_dtype(dtype)
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


# ---------------------------------------------------------------------- writing
def _check_write_axes(axes):
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
            target = _AXIS_UNITS[axis.label]
            if axis.unit is None or not axis.unit.is_equivalent(target):
                raise CosiInputError(
                    f"write_response: axis '{axis.label}' needs a unit convertible to {target}, got {axis.unit}"
                )
    return axes


def _write_axis(group, axis):
    if isinstance(axis, HealpixAxis):
        ds = group.create_dataset(axis.label, data=np.arange(axis.npix + 1, dtype=np.int64))
        ds.attrs["TYPE"] = "healpix"
        ds.attrs["NSIDE"] = np.int64(axis.nside)
        ds.attrs["SCHEME"] = axis.scheme.lower()
    else:
        unit = _AXIS_UNITS[axis.label]
        ds = group.create_dataset(axis.label, data=axis.edges.to_value(unit))
        ds.attrs["TYPE"] = axis.axis_scale
        ds.attrs["UNIT"] = unit.to_string()
    ds.attrs["DESCRIPTION"] = _DESCRIPTIONS[axis.label]


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
        step = max(1, int(_DEFAULT_CHUNK_BYTES // (8 * max(1, int(np.prod(shape[1:]))))))
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
    dtype = _float_dtype(dtype)
    shape = tuple(axes.shape)
    written = np.zeros(shape[0], dtype=bool)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            drm = f.create_group("DRM")
            drm.attrs["UNIT"] = "cm2"
            drm.attrs["SPARSE"] = False
            group = drm.create_group("AXES", track_order=True)
            for axis in axes:
                _write_axis(group, axis)
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
