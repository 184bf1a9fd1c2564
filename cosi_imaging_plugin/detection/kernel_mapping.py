"""Test sources at many positions, mapped to the response's source rows: the matrix ``T[(s, nu), p]``.

A test source of unit flux at position ``p`` puts ``T[(s, nu), p] F_e`` on response source
entry ``(nu, e)`` in row ``s`` (the engine's source rows, :mod:`cosi_imaging_plugin.engine.sky_mapping`):

- a point source, when the dataset knows the attitudes of its rows (local CDS), is folded
  along its path: ``T`` is the dwell of the exact direction in every response pixel of every
  row (:func:`~cosi_imaging_plugin.exposure.dwell_matrix`), as the 3ML plugin folds it;
- otherwise, and for the extended kernels, the source is an image on the model grid (a point's
  bilinear weights; a Gaussian or a disk averaged over 16 sub-pixels of each pixel) and ``T``
  is the dataset's sky mapping times these images.

Kernel images are normalised to one over the sphere (sr^-1), so a norm is a flux.
"""
import healpy as hp
import numpy as np
from scipy import sparse

from ..binning import is_nested
from ..engine import CCMMapping
from ..errors import CosiInputError
from ..exposure import dwell_matrix

#: Test-source shapes: ``width`` is the Gaussian's sigma or the disk's radius (deg).
KERNELS = ("point", "gaussian", "disk")
#: Sub-pixels per pixel side (as a NESTED level) at which extended kernels are averaged.
SUBPIXEL_LEVEL = 2
#: The Gaussian kernel is cut at this many sigma (98.9% of a 2-D Gaussian's flux lies within; the image is
#: renormalized to one).
GAUSSIAN_CUT = 3.0


def check_kernel(kernel, width):
    """Validate a kernel name and width; return (kernel, width in deg or None)."""
    if kernel not in KERNELS:
        raise CosiInputError(f"unknown kernel {kernel!r}: expected one of {list(KERNELS)}")
    if kernel == "point":
        if width not in (None, 0, 0.0):
            raise CosiInputError(f"a point kernel has no width, got width={width}")
        return kernel, None
    if width is None or not np.isfinite(width) or width <= 0:
        raise CosiInputError(f"a {kernel} kernel needs a positive width in deg, got {width}")
    return kernel, float(width)


def kernel_images(kernel, width, directions, nside, nest):
    """Images of the kernel centred on each direction, on a HEALPix grid (sr^-1, each integrating to one).

    Parameters
    ----------
    kernel : {'point', 'gaussian', 'disk'}
    width : float or None
        Gaussian sigma or disk radius in deg.
    directions : ndarray, shape (n, 3)
        Galactic unit vectors of the centres.
    nside : int
    nest : bool

    Returns
    -------
    scipy.sparse.csc_matrix, shape (12 nside**2, n)
    """
    kernel, width = check_kernel(kernel, width)
    directions = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    n_pix, n_dir = hp.nside2npix(nside), directions.shape[0]
    solid_angle = 4 * np.pi / n_pix
    if kernel == "point":
        theta, phi = hp.vec2ang(directions)
        pixels, weights = hp.get_interp_weights(nside, theta, phi, nest=nest)
        # at a pixel centre the weights are (1, 0, 0, 0) up to 1e-14 of rounding: drop those crumbs (each would
        # cost a pass over every bin its pixel reaches)
        weights = np.where(weights > 1e-12, weights, 0.0)
        return sparse.csc_matrix((weights.ravel() / solid_angle, (pixels.ravel(), np.tile(np.arange(n_dir), 4))),
                                 shape=(n_pix, n_dir))
    sigma = np.radians(width)
    radius = GAUSSIAN_CUT * sigma if kernel == "gaussian" else sigma
    radius += 2 * hp.nside2resol(nside)  # every pixel with a sub-pixel inside
    n_sub = 4 ** SUBPIXEL_LEVEL
    columns, rows, values = [], [], []
    for i, centre in enumerate(directions):
        pixels = hp.query_disc(nside, centre, radius, inclusive=True, nest=nest)
        nested = pixels if nest else hp.ring2nest(nside, pixels)
        children = (nested[:, None] * n_sub + np.arange(n_sub)).ravel()
        vec = np.array(hp.pix2vec(nside * 2 ** SUBPIXEL_LEVEL, children, nest=True))
        angle = np.arccos(np.clip(centre @ vec, -1.0, 1.0))
        profile = np.exp(-0.5 * (angle / sigma) ** 2) if kernel == "gaussian" else (angle <= sigma).astype(float)
        weight = profile.reshape(-1, n_sub).mean(axis=1)
        total = weight.sum() * solid_angle
        if total <= 0:
            raise CosiInputError(f"the {kernel} kernel of width {width} deg covers no sub-pixel of the NSIDE {nside} "
                                 "grid: use a wider kernel or a finer model grid")
        keep = weight > 0
        rows.append(pixels[keep])
        columns.append(np.full(np.count_nonzero(keep), i))
        values.append(weight[keep] / total)
    return sparse.csc_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))),
                             shape=(n_pix, n_dir))


def kernel_mapping(dataset, kernel, width, directions, path=True):
    """The test mapping ``T`` of a kernel at each direction, for a dataset (module docstring).

    Parameters
    ----------
    dataset : COSIDataset
    kernel : {'point', 'gaussian', 'disk'}
    width : float or None
    directions : ndarray, shape (n, 3)
        Galactic unit vectors of the test positions.
    path : bool
        Fold a point source along its path when the dataset allows it (else on the grid).

    Returns
    -------
    T : scipy.sparse.csr_matrix, shape (n_rows * n_nu, n)
        Sorted indices; values in s (path) or s sr x sr^-1 (images).
    folded_along_path : bool
    """
    engine = dataset.engine
    nu_axis = engine.response.axes[0]
    # Galactic-CDS data fold point sources through the rotated response, which T cannot hold: the grid there
    local = dataset.attitudes is not None and isinstance(engine.mapping, CCMMapping)
    if kernel == "point" and path and local:
        mapping = dwell_matrix(dataset.attitudes, directions, nu_axis.nside, "nested" if is_nested(nu_axis)
                               else "ring")
        along_path = True
    else:
        model_axis = engine.model_axes[0]
        images = kernel_images(kernel, width, directions, model_axis.nside, is_nested(model_axis))
        mapping = (engine.mapping.matrix() @ images).tocsr()
        along_path = False
    mapping.sum_duplicates()
    mapping.eliminate_zeros()  # bilinear weights at a pixel centre are (1, 0, 0, 0)
    mapping.sort_indices()
    return mapping, along_path
