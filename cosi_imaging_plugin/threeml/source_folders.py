"""Folding astromodels sources through a dataset's engine, with caching: one folder class per source kind.

A point source and an extended source whose morphology does not depend on energy
are *separable*: the sky brightness is ``S(lon, lat) * F(E)``. Folding the spatial
map once per Ei bin gives per-bin expected counts at the non-empty data bins; a
change of spectral parameters then only re-weights those arrays (O(n_ei x nnz)),
and a change of spatial parameters re-folds this source alone (the habit of
threeML's HAWC plugin, which keeps one convolved source per kind).

- :class:`PointSourceFolder`: a point source, spread over the model grid with
  bilinear weights; its spatial state is its position.
- :class:`ExtendedSourceFolder`: an extended source with an astromodels
  ``Function2D`` shape; its spatial state is the shape's parameters.
- :class:`Function3DSourceFolder`: an extended source with energy-dependent
  morphology, re-folded whenever any of its parameters changes.

:func:`folder_for` picks the class for a source. The sky images come from
:mod:`cosi_imaging_plugin.sky.source_images`, the code the simulator uses too.
"""
import logging
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from ..engine.reductions import combine_rows
from ..errors import CosiInputError
from ..sky.source_images import (
    extended_source_map,
    function3d_image,
    has_energy_dependent_morphology,
    is_point_source,
    point_source_direction,
    point_source_map,
    source_spectrum,
)
from ..sky.spectra import integrate_spectrum

logger = logging.getLogger(__name__)

#: Most recent spatial states whose folds a folder keeps.
MAX_CACHED_STATES = 32


def _parameter_state(parameters):
    return tuple(float(p.value) for p in parameters.values())


class _Fold(NamedTuple):
    """One spatial state of a separable source, folded per unit flux in each Ei bin."""

    #: The morphology on the model grid (sr^-1): model maps and, without a path, the fold itself.
    spatial_map: np.ndarray
    #: Expected counts at the non-empty bins, shape (n_ei, nnz), kept where the engine keeps its bins
    #: (:meth:`ResponseEngine.sky_folds_at_bins <cosi_imaging_plugin.engine.ResponseEngine.sky_folds_at_bins>`).
    folded: object
    #: Expected counts over all bins, shape (n_ei,).
    exposure: np.ndarray
    #: The dwell ``D[row, nu]`` (s) of a point source folded along its path (local CDS), else None.
    dwell: np.ndarray = None
    #: Expected counts per unit flux over the Galactic CDS, shape (n_ei, n_cds), of a point source folded
    #: along its path through the rotated response (Galactic CDS), else None.
    cds: np.ndarray = None


class _SourceFolder:
    """What every folder holds: its source, the dataset it folds onto, the model grid and the Ei edges."""

    def __init__(self, source, dataset, rasterizer, ei_edges):
        self.source = source
        self.name = source.name
        self.dataset = dataset
        self.rasterizer = rasterizer
        self.ei_edges = np.asarray(ei_edges, dtype=np.float64)
        self._state = None
        self.n_folds = 0

    def direct_cds(self):
        """Expected counts over the CDS of a source folded outside the engine's response, else None."""
        return None


class _SeparableSourceFolder(_SourceFolder):
    """Cached per-Ei-bin folds of a separable source's spatial map; spectral changes re-weight them.

    Subclasses define :meth:`spatial_state` (the cache key) and :meth:`spatial_image`.

    Parameters
    ----------
    source : astromodels PointSource or ExtendedSource
    dataset : COSIDataset
    rasterizer : cosi_imaging_plugin.sky.rasterize.Rasterizer
        On the dataset's model grid.
    ei_edges : ndarray
        Edges of the response's Ei bins in keV.
    cache_bytes : float
        Memory for the folds of recent spatial states (at least two states are
        kept, at most :data:`MAX_CACHED_STATES`). Minimizers come back to recent
        states (a central point after its finite-difference steps, the shifted
        points of HESSE's mixed derivatives): at NSIDE 8, 32 states instead of 8
        save 11% of the folds.
    """

    def __init__(self, source, dataset, rasterizer, ei_edges, cache_bytes=256e6):
        super().__init__(source, dataset, rasterizer, ei_edges)
        self._cache = OrderedDict()
        fold_bytes = 8 * (self.ei_edges.size - 1) * dataset.engine.data.nnz
        self.cache_size = int(np.clip(cache_bytes // max(fold_bytes, 1), 2, MAX_CACHED_STATES))
        self.fold = None

    @property
    def spatial_map(self):
        """The current morphology on the model grid (sr^-1)."""
        return self.fold.spatial_map

    @property
    def folded(self):
        """Expected counts at the non-empty bins per unit flux in each Ei bin, shape (n_ei, nnz)."""
        return self.dataset.engine.kept_values(self.fold.folded)

    def spatial_state(self):
        """Values of the parameters that define the morphology (the cache key)."""
        raise NotImplementedError

    def spatial_image(self):
        """Morphology on the model grid, in sr^-1 (integrates to one over the sky)."""
        raise NotImplementedError

    def forget(self):
        """Drop every cached fold: the next call folds anew."""
        self._state = None
        self._cache.clear()

    def update(self):
        """Re-fold if the morphology changed since the last call; return True if it was folded anew."""
        state = self.spatial_state()
        if state == self._state:
            return False
        if state in self._cache:
            self._cache.move_to_end(state)
            self.fold = self._cache[state]
            self._state = state
            return False
        self.fold = self._cache[state] = self._fold()
        self._state = state
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        self.n_folds += 1
        logger.debug("re-folded source %s (%d folds)", self.name, self.n_folds)
        return True

    def _fold(self):
        """The current morphology folded per unit flux in each Ei bin (a :class:`_Fold`), on the model grid."""
        engine = self.dataset.engine
        spatial_map = self.spatial_image()
        n_ei = self.ei_edges.size - 1
        unit_images = np.zeros((n_ei, spatial_map.size, n_ei))
        for e in range(n_ei):
            unit_images[e, :, e] = spatial_map
        # expected counts over all bins per unit flux in each Ei bin
        return _Fold(spatial_map, engine.sky_folds_at_bins(list(unit_images)),
                     np.einsum("j,je->e", spatial_map, engine.exposure_map))

    def bin_fluxes(self, allow_negative=True):
        """Photon flux integrated over each Ei bin (ph cm-2 s-1)."""
        return integrate_spectrum(source_spectrum(self.source), self.ei_edges, allow_negative=allow_negative)

    def check(self):
        """Fold once and check the spectrum at the current values (NaN or negative flux are errors)."""
        self.update()
        self.bin_fluxes(allow_negative=False)

    def image(self):
        """Sky image [n_pix, n_ei] of this source (ph cm-2 s-1 sr-1 integrated over each Ei bin)."""
        self.update()
        return self.fold.spatial_map[:, None] * self.bin_fluxes()[None, :]

    def source_rows(self):
        """Response source rows ``[n_rows, n_nu * n_ei]`` of this source, folded as the likelihood folds it.

        None when the source is folded outside the engine's response (see :meth:`direct_cds`).
        """
        self.update()
        if self.fold.cds is not None:
            return None
        if self.fold.dwell is None:
            return self.dataset.engine.source_rows(self.image(), dtype=np.float64)
        rows = self.fold.dwell[:, :, None] * self.bin_fluxes()[None, None, :]
        return rows.reshape(rows.shape[0], -1)

    def direct_cds(self):
        """Expected counts over the CDS of a source folded outside the engine's response (a point source of
        Galactic-CDS data, along its path), else None."""
        self.update()
        return None if self.fold.cds is None else self.bin_fluxes() @ self.fold.cds

    def term(self):
        """(weights, folds kept at the bins, expected counts over all bins): the expectation at the bins is
        ``weights @ folds`` (:meth:`ResponseEngine.log_likelihood_of_terms
        <cosi_imaging_plugin.engine.ResponseEngine.log_likelihood_of_terms>`)."""
        self.update()
        fluxes = self.bin_fluxes()
        return fluxes, self.fold.folded, float(fluxes @ self.fold.exposure)

    def expectation(self):
        """(expected counts at the non-empty bins, expected counts over all bins)."""
        weights, kept, total = self.term()
        return combine_rows(weights, self.dataset.engine.kept_values(kept)), total


class PointSourceFolder(_SeparableSourceFolder):
    """Cached folding of one astromodels point source (its position is the spatial state).

    When the dataset knows the attitudes of its rows, the source is folded along its path
    in the spacecraft frame (:meth:`COSIDataset.point_source_dwell
    <cosi_imaging_plugin.datasets.COSIDataset.point_source_dwell>`): its dwell in every
    response pixel, row by row, straight through the response, with no model grid. The
    likelihood is then smooth in the position (the interpolation on the response's grid
    averages out over the attitudes) and unbiased by the grid's coarseness. Without
    attitudes, the source is interpolated bilinearly on the model grid.
    """

    def spatial_state(self):
        """The position's parameter values in the frame they are given in ((ra, dec) or (l, b), degrees).

        The key of the fold cache, read at every likelihood call: astromodels' ``get_ra()`` would run an
        astropy frame transform each time for a source given in Galactic coordinates (milliseconds).
        """
        return _parameter_state(self.source.position.parameters)

    def spatial_image(self):
        """Bilinear weights of the position over the four nearest pixels, in sr^-1."""
        position = self.source.position
        return point_source_map(self.rasterizer, float(position.get_ra()), float(position.get_dec()))

    def _fold(self):
        """Along the source's path when the dataset has attitudes (through the rotated response for Galactic-CDS
        data), else on the grid."""
        position = self.source.position
        direction = point_source_direction(float(position.get_ra()), float(position.get_dec()))
        engine = self.dataset.engine
        cds = self.dataset.point_source_cds(direction)
        if cds is not None:  # Galactic CDS: one row, the data bins index the CDS
            return _Fold(self.spatial_image(), engine.keep_at_bins(cds[:, engine.data.column]), cds.sum(axis=1),
                         cds=cds)
        dwell = self.dataset.point_source_dwell(direction)
        if dwell is None:
            return super()._fold()
        folded = engine.sky_folds_at_bins(rows=_UnitRows(dwell, self.ei_edges.size - 1))
        return _Fold(self.spatial_image(), folded, dwell.sum(axis=0) @ engine.response.effective_area, dwell)


class _UnitRows:
    """The source rows of a dwell with unit flux in one Ei bin, for each bin, made one at a time when read
    (n_ei of them at once would take n_ei times the memory of one)."""

    def __init__(self, dwell, n_ei):
        self.dwell = dwell
        self.n_ei = n_ei

    def __len__(self):
        return self.n_ei

    def __getitem__(self, e):
        if not 0 <= e < self.n_ei:
            raise IndexError(e)
        rows = np.zeros((*self.dwell.shape, self.n_ei))
        rows[:, :, e] = self.dwell
        return rows.reshape(self.dwell.shape[0], -1)


class ExtendedSourceFolder(_SeparableSourceFolder):
    """Cached folding of one extended source with an energy-independent (Function2D) shape."""

    def __init__(self, source, dataset, rasterizer, ei_edges, cache_bytes=256e6):
        shape = source.spatial_shape
        if getattr(shape, "n_dim", 2) != 2:
            raise CosiInputError(f"source '{source.name}': spatial shape {shape.name} is not a Function2D")
        super().__init__(source, dataset, rasterizer, ei_edges, cache_bytes)
        # fixed once per source: an adaptive split would make the likelihood jump as parameters move
        self._level = rasterizer.level_for(shape)

    def spatial_state(self):
        """Values of the shape's parameters."""
        return _parameter_state(self.source.spatial_shape.parameters)

    def spatial_image(self):
        """The shape averaged over the sub-pixels of every pixel, in sr^-1."""
        return extended_source_map(self.source.spatial_shape, self.rasterizer, self._level, self.name)


class Function3DSourceFolder(_SourceFolder):
    """Folding of an extended source with energy-dependent morphology (astromodels Function3D).

    The whole image is folded when any parameter changes (see
    :func:`~cosi_imaging_plugin.sky.source_images.function3d_image`).
    """

    def __init__(self, source, dataset, rasterizer, ei_edges):
        super().__init__(source, dataset, rasterizer, ei_edges)
        self._cached = None

    def forget(self):
        """Drop the cached fold: the next call folds anew."""
        self._state = None

    def check(self):
        """Fold once at the current values (NaN or negative brightness are errors)."""
        self.term()

    def image(self):
        """Sky image [n_pix, n_ei] (ph cm-2 s-1 sr-1 integrated over each Ei bin)."""
        return function3d_image(self.source, self.rasterizer, self.ei_edges)

    def source_rows(self):
        """Response source rows ``[n_rows, n_nu * n_ei]`` of this source."""
        return self.dataset.engine.source_rows(self.image(), dtype=np.float64)

    def term(self):
        """(weights, the fold kept at the bins, expected counts over all bins), as
        :meth:`_SeparableSourceFolder.term` with one weight of 1."""
        state = _parameter_state(self.source.parameters)
        if state != self._state:
            engine = self.dataset.engine
            image = self.image()
            self._cached = (np.ones(1), engine.sky_folds_at_bins([image]), float(np.sum(engine.exposure_map * image)))
            self._state = state
            self.n_folds += 1
        return self._cached

    def expectation(self):
        """(expected counts at the non-empty bins, expected counts over all bins)."""
        _, kept, total = self.term()
        return self.dataset.engine.kept_values(kept)[0], total


def folder_for(source, dataset, rasterizer, ei_edges):
    """The folder class of a source's kind, made for `dataset`.

    Raises
    ------
    CosiInputError
        For a source that is neither a point nor an extended source.
    """
    if is_point_source(source):
        return PointSourceFolder(source, dataset, rasterizer, ei_edges)
    if not hasattr(source, "spatial_shape"):
        raise CosiInputError(f"source '{source.name}' of type {type(source).__name__} cannot be folded: only "
                             f"point and extended sources are supported")
    if has_energy_dependent_morphology(source):
        return Function3DSourceFolder(source, dataset, rasterizer, ei_edges)
    return ExtendedSourceFolder(source, dataset, rasterizer, ei_edges)
