"""Linear maps from a sky image to the source rows seen by the response.

The engine evaluates ``eps[row, c] = sum_k M[row, k] R[k, c]`` where a *row* is a
ScAtt or Time bin (or the single row of a Galactic-frame analysis) and
``k = pixel * n_ei + ei`` indexes the response's source axis. A mapping turns a
sky image ``x[j, e]`` (ph cm-2 s-1 sr-1 on the model HEALPix grid) into ``M``
(``forward``), brings a source-space array back to the sky (``adjoint``), and
gives the exposure of every sky pixel (``exposure``).
"""
import numpy as np
from scipy import sparse

from ..errors import AxisMismatchError, CosiInputError
from .kernels import csr_forward_tiled


class CCMMapping:
    """Sky image -> per-attitude source rows through a coordinate conversion matrix.

    ``M[s, nu*n_ei + e] = sum_j C[s, j, nu] x[j, e] dOmega_j``.

    Parameters
    ----------
    ccm : histpy.Histogram
        Axes [ScAtt | Time, lb, NuLambda], unit s (dense or COO contents).
    """

    def __init__(self, ccm):
        from astropy import units as u

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
        # rows (s, nu), columns j: the forward map is one sparse product.
        self.matrix = sparse.csr_matrix(
            (values * scale * solid_angle, (s * self.n_source_pix + nu, j)),
            shape=(self.n_rows * self.n_source_pix, self.n_model_pix))
        self._matrix_t = self.matrix.T.tocsr()
        self.row_exposure = np.bincount(s, weights=values * scale, minlength=self.n_rows) / self.n_model_pix

    def forward(self, image, dtype=np.float64):
        """Source rows ``M`` [n_rows, n_source_pix * n_ei] for a sky image [n_model_pix, n_ei]."""
        image = np.asarray(image, dtype=np.float64)
        rows = self.matrix @ image
        return np.ascontiguousarray(rows.reshape(self.n_rows, -1), dtype=dtype)

    def forward_tiled(self, image, position, out):
        """Source rows of a sky image laid out tile by tile for the kernels (see :mod:`.kernel_layout`).

        Parameters
        ----------
        image : ndarray, shape (n_model_pix, n_ei)
        position : ndarray of int64
            Internal position of each source index ``nu * n_ei + e``.
        out : ndarray, shape (n_tiles, n_rows, tile_width)
            Written at every source position; the padding past the last one is
            left as it is (zero in a buffer that started as zeros).
        """
        csr_forward_tiled(self.matrix.indptr, self.matrix.indices, self.matrix.data,
                          np.ascontiguousarray(image, dtype=np.float64), self.n_source_pix, position, out)
        return out

    def adjoint(self, rows):
        """Sky array [n_model_pix, n_ei] from source rows [n_rows, n_source_pix * n_ei]."""
        rows = np.asarray(rows, dtype=np.float64).reshape(self.n_rows * self.n_source_pix, -1)
        return np.asarray(self._matrix_t @ rows)

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

    def forward(self, image, dtype=np.float64):
        """Source row ``M`` [1, n_pix * n_ei] for a sky image [n_pix, n_ei]."""
        return np.ascontiguousarray(np.asarray(image, dtype=np.float64).reshape(1, -1) * self.scale, dtype=dtype)

    def forward_tiled(self, image, position, out):
        """Source row laid out tile by tile for the kernels (see :meth:`CCMMapping.forward_tiled`)."""
        width = out.shape[2]
        out[position // width, 0, position % width] = self.forward(image)[0]
        return out

    def adjoint(self, rows):
        """Sky array [n_pix, n_ei] from a source row."""
        return np.asarray(rows, dtype=np.float64).reshape(self.n_model_pix, -1) * self.scale

    def exposure(self, effective_area):
        """Exposure per pixel and Ei bin: ``A[j, e] dOmega T``."""
        return np.asarray(effective_area, dtype=np.float64) * self.scale
