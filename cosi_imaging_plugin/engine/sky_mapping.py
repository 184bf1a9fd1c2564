"""Linear maps from a sky image to the source rows seen by the response.

The engine evaluates ``eps[row, c] = sum_k M[row, k] R[k, c]`` where a *row* is a
ScAtt or Time bin (or the single row of a Galactic-frame analysis) and
``k = pixel * n_ei + ei`` indexes the response's source axis. A mapping turns a
sky image ``x[j, e]`` (ph cm-2 s-1 sr-1 on the model HEALPix grid) into ``M``
(``forward``), brings a source-space array back to the sky (``adjoint``), and
gives the exposure of every sky pixel (``exposure``).
"""
import numpy as np
from astropy import units as u
from scipy import sparse

from ..errors import AxisMismatchError, CosiInputError
from .kernel_layout import TILE_WIDTH, tiled_offsets
from .kernels import ccm_adjoint, ccm_forward


class CCMMapping:
    """Sky image -> per-attitude source rows through a coordinate conversion matrix.

    ``M[s, nu*n_ei + e] = sum_j C[s, j, nu] x[j, e] dOmega_j``.

    Parameters
    ----------
    ccm : histpy.Histogram
        Axes [ScAtt | Time, lb, NuLambda], unit s (dense or COO contents).
    """

    def __init__(self, ccm):
        if ccm.ndim != 3:
            raise CosiInputError(f"CCM must have 3 axes [ScAtt|Time, lb, NuLambda], got {list(ccm.axes.labels)}")
        unit = ccm.unit if ccm.unit is not None else u.dimensionless_unscaled
        if not unit.is_equivalent(u.s):
            raise CosiInputError(f"CCM unit must be a time (s), got '{unit}'")
        self.ccm_axes = ccm.axes
        self.row_axis = ccm.axes[0]
        self.model_axis = ccm.axes[1]
        self.source_axis = ccm.axes[2]
        self.n_rows = ccm.axes[0].nbins
        self.n_model_pix = ccm.axes[1].nbins
        self.n_source_pix = ccm.axes[2].nbins
        scale = unit.to(u.s)
        contents = ccm.contents
        if hasattr(contents, "coords"):  # sparse.COO
            s, j, nu = contents.coords
            values = np.asarray(contents.data, dtype=np.float64)
        else:
            contents = np.asarray(getattr(contents, "value", contents))
            s, j, nu = np.nonzero(contents)
            values = contents[s, j, nu].astype(np.float64)
        if np.any(~np.isfinite(values)) or np.any(values < 0):
            raise CosiInputError("CCM has negative, NaN or infinite entries")
        solid_angle = 4 * np.pi / self.n_model_pix
        # rows (s, nu), columns j (scipy sums duplicates and sorts); the kernels stream it twice per
        # iteration, so the sky pixel indices take 16 bits where the model grid allows
        matrix = sparse.csr_matrix(
            (values * scale * solid_angle, (s * self.n_source_pix + nu, j)),
            shape=(self.n_rows * self.n_source_pix, self.n_model_pix))
        matrix.sum_duplicates()
        self._indptr = matrix.indptr
        self._sky_pixel = matrix.indices.astype(np.uint16 if self.n_model_pix <= 2 ** 16 else np.int32)
        self._weight = matrix.data
        del matrix
        self.row_exposure = np.bincount(s, weights=values * scale, minlength=self.n_rows) / self.n_model_pix

    @property
    def nbytes(self):
        """Bytes of the stored matrix, which every forward and adjoint product streams once."""
        return self._indptr.nbytes + self._sky_pixel.nbytes + self._weight.nbytes

    def matrix(self):
        """The map as a ``scipy.sparse.csr_matrix`` [n_rows * n_source_pix, n_model_pix]: ``C[s, j, nu] dOmega_j``
        (s sr) at row ``s * n_source_pix + nu``."""
        return sparse.csr_matrix((self._weight, self._sky_pixel.astype(np.int64), self._indptr),
                                 shape=(self.n_rows * self.n_source_pix, self.n_model_pix))

    def forward(self, image, dtype=np.float64):
        """Source rows ``M`` [n_rows, n_source_pix * n_ei] for a sky image [n_model_pix, n_ei]."""
        image = self._image(image)
        n_source = self.n_source_pix * image.shape[1]
        rows = np.empty((self.n_rows, n_source), dtype=dtype)
        ccm_forward(self._indptr, self._sky_pixel, self._weight, image,
                    np.arange(n_source, dtype=np.int64), n_source, rows.reshape(-1))
        return rows

    def forward_tiled(self, image, position, out):
        """Source rows of a sky image laid out tile by tile for the kernels (see :mod:`.kernel_layout`).

        Parameters
        ----------
        image : ndarray, shape (n_model_pix, n_ei)
        position : ndarray of int64
            Internal position of each source index ``nu * n_ei + e``.
        out : ndarray, shape (n_tiles, n_rows, TILE_WIDTH)
            Written at every source position; the padding past the last one is
            left as it is (zero in a buffer that started as zeros).
        """
        ccm_forward(self._indptr, self._sky_pixel, self._weight, self._image(image),
                    tiled_offsets(position, self.n_rows), TILE_WIDTH, out.reshape(-1))
        return out

    def adjoint(self, rows):
        """Sky array [n_model_pix, n_ei] from source rows [n_rows, n_source_pix * n_ei] (any float type)."""
        rows = np.ascontiguousarray(rows)
        if rows.dtype not in (np.float32, np.float64):
            rows = rows.astype(np.float64)
        rows = rows.reshape(self.n_rows, -1)
        n_source = rows.shape[1]
        return self._adjoint(rows.reshape(-1), np.arange(n_source, dtype=np.int64), n_source)

    def adjoint_tiled(self, tiled, position):
        """:meth:`adjoint` of source rows laid out tile by tile (n_tiles, n_rows, TILE_WIDTH)."""
        return self._adjoint(tiled.reshape(-1), tiled_offsets(position, self.n_rows), TILE_WIDTH)

    def _adjoint(self, flat_rows, offsets, row_stride):
        n_ei = offsets.size // self.n_source_pix
        out = np.empty((self.n_model_pix, n_ei))
        # one partial sky per chunk of rows: at most 64 chunks and 64 MB, fixed by the shapes alone
        n_chunks = int(np.clip(2 ** 23 // (self.n_model_pix * n_ei), 1, min(64, self.n_rows)))
        row_chunks = np.linspace(0, self.n_rows, n_chunks + 1).round().astype(np.int64)
        ccm_adjoint(self._indptr, self._sky_pixel, self._weight, flat_rows, offsets, row_stride, row_chunks, out)
        return out

    def _image(self, image):
        image = np.ascontiguousarray(image, dtype=np.float64)
        if image.ndim == 1:
            image = image[:, None]
        if image.ndim != 2 or image.shape[0] != self.n_model_pix:
            raise CosiInputError(f"sky image of shape {image.shape}: expected ({self.n_model_pix}, n_ei)")
        return image

    def exposure(self, effective_area):
        """Exposure ``sum_{s,nu} C[s,j,nu] dOmega A[nu, e]`` (cm2 s sr) per sky pixel and Ei bin."""
        return self.adjoint(np.tile(np.asarray(effective_area, dtype=np.float64), (self.n_rows, 1)))

    def check_source_axis(self, response_axis, what="response"):
        """Raise unless the CCM's NuLambda axis matches the response's."""
        a, b = self.source_axis, response_axis
        if (a.nbins != b.nbins or getattr(a, "nside", None) != getattr(b, "nside", None)
                or str(getattr(a, "scheme", "")).lower() != str(getattr(b, "scheme", "")).lower()):
            raise AxisMismatchError(
                f"CCM axis NuLambda (nside={getattr(a, 'nside', None)}, scheme={getattr(a, 'scheme', None)}) "
                f"does not match the {what} axis {b.label} (nside={getattr(b, 'nside', None)}, "
                f"scheme={getattr(b, 'scheme', None)})")


class PixelMapping:
    """Sky image already on the response's source grid: ``M[0, k] = x[j, e] dOmega_j T``.

    Used with a Galactic-frame response (source axis lb, values in cm2 s, T=1)
    or with a spacecraft-frame sky observed for a fixed time T.

    Parameters
    ----------
    n_pix : int
        Number of pixels of the source grid.
    exposure_time : float
        Seconds multiplying the response (1 for a Galactic-frame response in cm2 s).
    """

    n_rows = 1

    def __init__(self, n_pix, exposure_time=1.0):
        self.n_model_pix = self.n_source_pix = int(n_pix)
        self.scale = 4 * np.pi / n_pix * float(exposure_time)
        self.row_exposure = np.array([float(exposure_time)])

    #: Nothing is stored: the products are one scaling.
    nbytes = 0

    def matrix(self):
        """The map as a ``scipy.sparse.csr_matrix`` [n_pix, n_pix]: ``dOmega_j T`` on the diagonal."""
        return sparse.identity(self.n_model_pix, format="csr") * self.scale

    def forward(self, image, dtype=np.float64):
        """Source row ``M`` [1, n_pix * n_ei] for a sky image [n_pix, n_ei]."""
        return np.ascontiguousarray(np.asarray(image, dtype=np.float64).reshape(1, -1) * self.scale, dtype=dtype)

    def forward_tiled(self, image, position, out):
        """Source row laid out tile by tile for the kernels (see :meth:`CCMMapping.forward_tiled`)."""
        out.reshape(-1)[tiled_offsets(position, 1)] = self.forward(image)[0]
        return out

    def adjoint_tiled(self, tiled, position):
        """:meth:`adjoint` of a source row laid out tile by tile (n_tiles, 1, TILE_WIDTH)."""
        return self.adjoint(tiled.reshape(-1)[tiled_offsets(position, 1)])

    def adjoint(self, rows):
        """Sky array [n_pix, n_ei] from a source row."""
        return np.asarray(rows, dtype=np.float64).reshape(self.n_model_pix, -1) * self.scale

    def exposure(self, effective_area):
        """Exposure per pixel and Ei bin: ``A[j, e] dOmega T``."""
        return np.asarray(effective_area, dtype=np.float64) * self.scale
