"""The compiled sums over the non-empty bins against numpy, and their independence of the thread count."""
import numba
import numpy as np
import pytest

from cosi_imaging_plugin.engine.reductions import (
    N_CHUNKS,
    combine_rows,
    counts_log_sum,
    dot,
)


@pytest.fixture
def vectors():
    rng = np.random.default_rng(5)
    n = 10 * N_CHUNKS + 7  # chunks of unequal length
    return rng.poisson(2.0, n).astype(np.float64), rng.uniform(0.1, 3.0, n)


def test_dot_equals_numpy(vectors):
    a, b = vectors
    assert dot(a, b) == pytest.approx(float(np.dot(a, b)), rel=1e-14)
    assert dot(a.astype(np.float32), b) == pytest.approx(float(np.dot(a.astype(np.float64), b)), rel=1e-14)
    assert dot(a[:3], b[:3]) == pytest.approx(float(np.dot(a[:3], b[:3])), rel=1e-15)  # fewer entries than chunks


def test_counts_log_sum_equals_numpy(vectors):
    counts, eps = vectors
    value, bad = counts_log_sum(counts, eps)
    assert bad == -1
    assert value == pytest.approx(float(np.dot(counts, np.log(eps))), rel=1e-14)


@pytest.mark.parametrize("bad_value", [0.0, -1.0, np.nan])
def test_counts_log_sum_finds_the_first_bad_bin(vectors, bad_value):
    counts, eps = vectors
    eps[[400, 37, 600]] = bad_value
    assert counts_log_sum(counts, eps)[1] == 37


def test_combine_rows_equals_numpy():
    rng = np.random.default_rng(6)
    rows, weights = rng.normal(size=(3, 1001)), np.array([0.5, -2.0, 3.0])
    np.testing.assert_allclose(combine_rows(weights, rows), weights @ rows, rtol=1e-14, atol=1e-14)


def test_sums_do_not_depend_on_the_thread_count(vectors):
    counts, eps = vectors
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = (dot(counts, eps), counts_log_sum(counts, eps))
        numba.set_num_threads(before)
        assert (dot(counts, eps), counts_log_sum(counts, eps)) == single  # bit for bit
    finally:
        numba.set_num_threads(before)


def test_threaded_and_serial_loops_agree_to_the_bit(vectors):
    """Short arrays run on the calling thread: the same chunks, so the same sums as the threaded loops."""
    from cosi_imaging_plugin.engine import reductions

    counts, eps = vectors
    log_eps = np.log(eps)
    rows = np.stack([counts, eps, log_eps])
    weights = np.array([0.3, -1.5, 2.0])
    assert reductions._dot_threaded(counts, eps) == reductions._dot_serial(counts, eps)
    assert (reductions._counts_log_sum_threaded(counts, eps, log_eps)
            == reductions._counts_log_sum_serial(counts, eps, log_eps))
    np.testing.assert_array_equal(reductions._combine_rows_threaded(weights, rows),
                                  reductions._combine_rows_serial(weights, rows))
