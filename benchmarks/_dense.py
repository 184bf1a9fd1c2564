"""The dense baseline: the engine's interface computed the way the COSI team's DataIF does it.

Expected counts are one float32 ``tensordot`` of the model rows with the dense
response over every bin of the data space, the transpose product one
``tensordot`` of a dense weight array with the response. Only the benchmarks use it.
"""
import copy

import numpy as np


def dense_engine(engine, response_matrix):
    """A copy of `engine` whose forward and transpose products run the dense way.

    Parameters
    ----------
    engine : ResponseEngine
        Holds the data, backgrounds and mapping (shared, not copied).
    response_matrix : ndarray, float32 [n_source, n_columns]
        The dense response.
    """
    dense = copy.copy(engine)
    shape = (engine.n_rows, engine.n_columns)

    def sky_expectation_at_bins(image=None, rows=None, dtype=None):
        # `dtype` is accepted for interface parity; the baseline always works in float32
        if rows is None:
            rows = engine.mapping.forward(engine.image_values(image), dtype=np.float32)
        full = np.tensordot(np.asarray(rows, dtype=np.float32), response_matrix, axes=(1, 0))
        return full.reshape(-1)[engine.data.flat_index].astype(np.float64)

    def transpose_product(weights):
        full = np.zeros(shape[0] * shape[1], dtype=np.float32)
        full[engine.data.flat_index] = weights
        rows = np.tensordot(full.reshape(shape), response_matrix, axes=(1, 1))
        return engine.mapping.adjoint(rows)

    dense.sky_expectation_at_bins = sky_expectation_at_bins
    dense.transpose_product = transpose_product
    return dense
