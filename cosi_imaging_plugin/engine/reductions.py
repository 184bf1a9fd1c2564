"""Sums over the non-empty bins, in compiled loops on the kernels' own threads.

numpy's ``dot`` and ``@`` on long vectors call the BLAS, whose threads keep
spinning for a while after each call. On a machine with few cores they then
compete with the kernels' threads for the cores: at DC2 scale one RL iteration
took 0.29 s instead of 0.18 s because of two ``np.dot`` calls. These loops run in
numba's thread pool instead. Each sum is taken over a fixed number of chunks,
added in order, so the result does not depend on the number of threads.

Waking the threads costs 30-90 microseconds per call, more than the arithmetic of
a small dataset: shorter arrays run the same loops on the calling thread, with the
same chunks (the same result to the bit).
"""
import types

import numba
import numpy as np

#: Chunks of every sum (more than any machine's threads; each is summed in order).
N_CHUNKS = 64
#: Sums shorter than this run on the calling thread. Measured by ``benchmarks/bench_reductions.py`` on two
#: cores: the threaded ``dot`` and log-likelihood loops tie with the serial ones at 1e5-2e5 elements and win
#: above 2e5-3e5; at 1,000 elements the serial ones take 1-2 us against 50-90 us.
PARALLEL_MIN_SIZE = 200_000
#: The same for :func:`combine_rows`, whose threads share one output array: they tie with the serial loop at
#: 1e6 columns and win at 3e6 (and lose 2-40 times below 1e6).
COMBINE_PARALLEL_MIN_SIZE = 1_000_000


def _threaded_and_serial(function):
    """(parallel, serial) compilations of one chunked loop; the serial copy has its own name for numba's cache."""
    serial = types.FunctionType(function.__code__, function.__globals__, f"{function.__name__}_serial")
    serial.__qualname__ = f"{function.__qualname__}_serial"
    return (numba.njit(parallel=True, cache=True, nogil=True)(function),
            numba.njit(cache=True, nogil=True)(serial))


@numba.njit(cache=True, nogil=True)
def _chunk(h, n):
    return h * n // N_CHUNKS, (h + 1) * n // N_CHUNKS


def _dot(a, b):
    n = a.shape[0]
    partial = np.zeros(N_CHUNKS)
    for h in numba.prange(N_CHUNKS):
        lo, hi = _chunk(h, n)
        acc = 0.0
        for i in range(lo, hi):
            acc += np.float64(a[i]) * b[i]
        partial[h] = acc
    total = 0.0
    for h in range(N_CHUNKS):
        total += partial[h]
    return total


_dot_threaded, _dot_serial = _threaded_and_serial(_dot)


def dot(a, b):
    """``sum_i a[i] b[i]`` in float64."""
    return (_dot_threaded if a.shape[0] >= PARALLEL_MIN_SIZE else _dot_serial)(a, b)


def poisson_log_likelihood(counts, eps, total, constant=0.0):
    """The Poisson log-likelihood ``sum_i d_i ln eps_i - total - constant`` from the non-empty bins.

    The package's one Poisson log-likelihood: the engine, the Richardson-Lucy line
    search and the 3ML plugin all evaluate it here.

    Parameters
    ----------
    counts : ndarray, shape (nnz,)
        Counts ``d_i`` of the non-empty bins.
    eps : ndarray, shape (nnz,)
        Expected counts at those bins.
    total : float
        Expected counts summed over all bins (``sum_i eps_i`` including the empty ones).
    constant : float
        Subtracted as well, e.g. ``sum_i ln d_i!``.

    Returns
    -------
    (float, int)
        The log-likelihood and the first bin where ``eps`` is not positive (-1 if
        none; the value is meaningless then).
    """
    log_sum, q = counts_log_sum(counts, eps)
    return float(log_sum - total - constant), q


def counts_log_sum(counts, eps):
    """``(sum_i d_i ln eps_i, q)`` with ``q`` the first bin where ``eps`` is not positive (-1 if none).

    The sum is meaningful only where ``q == -1``.
    """
    eps = np.asarray(eps, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_eps = np.log(eps)  # numpy's vector logarithm: several times faster than a compiled scalar loop
    counts = np.asarray(counts, dtype=np.float64)
    loop = _counts_log_sum_threaded if counts.shape[0] >= PARALLEL_MIN_SIZE else _counts_log_sum_serial
    return loop(counts, eps, log_eps)


def _counts_log_sum(counts, eps, log_eps):
    n = counts.shape[0]
    partial = np.zeros(N_CHUNKS)
    first_bad = np.full(N_CHUNKS, -1, dtype=np.int64)
    for h in numba.prange(N_CHUNKS):
        lo, hi = _chunk(h, n)
        acc = 0.0
        for i in range(lo, hi):
            if not eps[i] > 0.0:  # also NaN
                if first_bad[h] < 0:
                    first_bad[h] = i
            else:
                acc += counts[i] * log_eps[i]
        partial[h] = acc
    total = 0.0
    for h in range(N_CHUNKS):
        total += partial[h]
    for h in range(N_CHUNKS):
        if first_bad[h] >= 0:
            return total, first_bad[h]
    return total, -1


_counts_log_sum_threaded, _counts_log_sum_serial = _threaded_and_serial(_counts_log_sum)


def combine_rows(weights, rows):
    """``sum_e weights[e] rows[e, :]`` (float64), summed over ``e`` in order for each column."""
    loop = _combine_rows_threaded if rows.shape[1] >= COMBINE_PARALLEL_MIN_SIZE else _combine_rows_serial
    return loop(weights, rows)


def _combine_rows(weights, rows):
    n_rows, n = rows.shape
    out = np.zeros(n)
    for h in numba.prange(N_CHUNKS):
        lo, hi = _chunk(h, n)
        for e in range(n_rows):
            w = np.float64(weights[e])
            for i in range(lo, hi):
                out[i] += w * rows[e, i]
    return out


_combine_rows_threaded, _combine_rows_serial = _threaded_and_serial(_combine_rows)
