"""A joint Metropolis move of the sky totals and the background norms, the sky's shape held fixed.

On a short observation the sky's total counts and a background that is nearly isotropic in
the spacecraft frame explain the data almost equally well: the Gibbs sweep, which moves them
in turn through the allocated counts, then wanders along that ridge for hundreds of sweeps.
This move draws them together from their conditional posterior given the sky's shape (the
multiscale splits), integrating the allocation out:

``p(mu, b | shape, d) ~ prod_i Poisson(d_i; sum_e mu_e G_e,i + sum_k b_k B_k,i) p(mu) p(b)``

with ``mu_e`` the expected complete counts of Ei bin ``e`` (the tree's total times ``Xmax``),
``G_e,i`` the expected counts at bin ``i`` per unit ``mu_e`` of the current shape and
``B_k,i`` the background templates. The proposal is an independent multivariate Student-t
on the logarithms, centred on the conditional mode with the scale of the curvature there
(a Laplace approximation). The mode and the curvature depend on the shape and the data only,
never on the current totals, so the Metropolis-Hastings ratio of an independence sampler
makes the move exact. On the original scale the log-density with the Jacobian of the
logarithms is concave (a Poisson likelihood linear in ``(mu, b)`` and Gamma priors of
positive shape), so the mode is unique and Newton's method with step halving finds it (to within
a Newton decrement of ``MODE_DECREMENT``: the centre need only be close, not exact). With
several regions of one image (``sky_log_prior``) the prior is not concave everywhere; the
search then takes saddle-free steps where the curvature is not negative, and where no
negative curvature is found the move stays put (a decision on the shape alone, so still exact).
"""
import numba
import numpy as np

#: Degrees of freedom of the Student-t proposal: tails heavier than the posterior's.
T_DOF = 5.0
#: Fixed pieces of the sums over bins (here and in :mod:`.swap`): the sums do not depend on the number of
#: threads.
SUM_PIECES = 32
#: Newton's decrement below which the mode search takes one last step without a line search, then one pass
#: for the curvature at its end. From a decrement of 0.1 that step leaves the centre within a few hundredths
#: of a posterior standard deviation of the mode (the convergence is quadratic), which the Student-t
#: proposal cannot tell apart.
MODE_DECREMENT = 0.1
#: Above this many bins, the mode search starts from the mode of every ``STRIDE``-th bin.
SUBSAMPLE_BINS = 1 << 16
STRIDE = 16


@numba.njit(parallel=True, cache=True, nogil=True)
def _poisson_pieces(columns, offset, counts, value, derivatives, out):
    """Per piece of the bins: ``sum d ln eps`` (``out[h, 0]``; -inf where an ``eps <= 0``) and, with
    `derivatives`, the gradient ``sum d / eps G_j`` and the Hessian ``-sum d / eps^2 G_j G_l`` of it with
    respect to `value`, where ``eps = sum_j value_j G_j + offset`` and ``columns`` is ``G`` (n_params, nnz)."""
    n_params, nnz = columns.shape
    n_pieces = out.shape[0]
    for h in numba.prange(n_pieces):
        ll = 0.0
        grad = np.zeros(n_params)
        hess = np.zeros((n_params, n_params))
        for i in range(h * nnz // n_pieces, (h + 1) * nnz // n_pieces):
            eps = offset[i]
            for j in range(n_params):
                eps += value[j] * columns[j, i]
            if not eps > 0.0:
                ll = -np.inf
                continue
            ll += counts[i] * np.log(eps)
            if derivatives:
                w = counts[i] / eps
                for j in range(n_params):
                    grad[j] += w * columns[j, i]
                    for k in range(j + 1):
                        hess[j, k] -= w / eps * columns[j, i] * columns[k, i]
        out[h, 0] = ll
        for j in range(n_params):
            out[h, 1 + j] = grad[j]
            for k in range(n_params):
                out[h, 1 + n_params + j * n_params + k] = hess[max(j, k), min(j, k)]


def poisson_terms(columns, offset, counts, value, derivatives=True):
    """``sum_i d_i ln eps_i`` with ``eps = columns @ value + offset`` (-inf where an ``eps <= 0``), and
    its gradient and Hessian in `value`: one pass over the bins.

    Parameters
    ----------
    columns : ndarray, shape (nnz, n_params)
    offset, counts : ndarray, shape (nnz,)
    value : ndarray, shape (n_params,)
    derivatives : bool

    Returns
    -------
    float, ndarray (n_params,), ndarray (n_params, n_params)
    """
    n = columns.shape[1]
    out = np.empty((SUM_PIECES, 1 + n + n * n))
    _poisson_pieces(np.ascontiguousarray(columns.T), np.ascontiguousarray(offset, dtype=np.float64),
                    np.ascontiguousarray(counts, dtype=np.float64), np.asarray(value, dtype=np.float64),
                    derivatives, out)
    total = out.sum(axis=0)
    return float(total[0]), total[1:1 + n], total[1 + n:].reshape(n, n)


def _ascent_step(hess, grad):
    """Newton's step where the log-density is concave; elsewhere the step with the Hessian's eigenvalues made
    negative (saddle-free Newton), which always climbs. A prior over several regions of one image is not
    concave everywhere (its terms of negative coefficient are convex), and Newton's own step can then stop at
    a saddle."""
    try:
        np.linalg.cholesky(-hess)
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(hess)
        magnitude = np.maximum(np.abs(values), 1e-12 * np.abs(values).max())
        return vectors @ ((vectors.T @ grad) / magnitude)
    return np.linalg.solve(hess, -grad)


class ScaleMove:
    """Independence Metropolis-Hastings move of ``(log mu_e, log b_k)`` given the sky's shape.

    Parameters
    ----------
    counts : ndarray, shape (nnz,)
        Counts of the non-empty bins (the empty bins enter through the totals only).
    templates : ndarray, shape (n_bkg, nnz)
        Background templates at the non-empty bins (per unit norm).
    template_totals : ndarray, shape (n_bkg,)
        Background templates summed over all bins.
    sky_prior : (float, float)
        Gamma (shape, rate) prior of every ``mu_e``.
    bkg_prior : ndarray, shape (n_bkg, 2)
        Gamma (shape, rate) priors of the norms.
    n_proposals : int
        Proposals per move.
    tolerance : float
        Newton's decrement at which the mode search stops (:meth:`mode`).
    """

    def __init__(self, counts, templates, template_totals, sky_prior, bkg_prior, n_proposals=3,
                 tolerance=MODE_DECREMENT):
        self.counts = np.asarray(counts, dtype=np.float64)
        self.templates = np.asarray(templates, dtype=np.float64)
        self.template_totals = np.asarray(template_totals, dtype=np.float64)
        self.sky_prior = tuple(float(v) for v in sky_prior)
        self.bkg_prior = np.asarray(bkg_prior, dtype=np.float64).reshape(-1, 2)
        self.n_proposals = int(n_proposals)
        self.tolerance = float(tolerance)

    def _design(self, unit_sky, unit_totals):
        """Columns (nnz, n_params) and all-bin totals (n_params,) per unit of every parameter; prior shapes, rates."""
        # stored parameter by parameter: the kernels read each parameter's column contiguously
        columns = np.concatenate([np.asarray(unit_sky, dtype=np.float64).reshape(-1, self.counts.size),
                                  self.templates]).T
        totals = np.concatenate([unit_totals, self.template_totals])
        n_sky = len(unit_totals)
        shape = np.concatenate([np.full(n_sky, self.sky_prior[0]), self.bkg_prior[:, 0]])
        rate = np.concatenate([np.full(n_sky, self.sky_prior[1]), self.bkg_prior[:, 1]])
        return columns, totals, shape, rate

    @staticmethod
    def log_target(theta, columns, totals, counts, shape, rate, offset, sky_log_prior=None):
        """Log-density of the logarithms ``theta`` (Jacobian included, up to a constant).

        `sky_log_prior`, where given, is the sky parameters' prior as a function of their logarithms
        (``theta[:n] -> (value, gradient, Hessian)``), beside the Gamma priors ``shape``, ``rate``.
        """
        value = np.exp(theta)
        data_term = poisson_terms(columns, offset, counts, value, derivatives=False)[0]
        return ScaleMove._log_target_from(data_term, theta, value, totals, shape, rate, sky_log_prior)

    @staticmethod
    def _log_target_from(data_term, theta, value, totals, shape, rate, sky_log_prior):
        """:meth:`log_target` from its data term ``sum d ln eps`` (-inf where that is not finite)."""
        if not np.isfinite(data_term):
            return -np.inf
        out = data_term - float(totals @ value) + float(np.sum(shape * theta - rate * value))
        if sky_log_prior is not None:
            out += sky_log_prior(theta)[0]
        return out

    @staticmethod
    def mode(columns, totals, counts, shape, rate, offset, max_iter=200, sky_log_prior=None,
             tolerance=MODE_DECREMENT):
        """The conditional mode (on the original scale) and the curvature of the log-density at it.

        Newton's method with step halving, from the mode of a subsample of the bins (every ``STRIDE``-th,
        its totals and prior scaled alike) where there are many: each step is one pass over the bins.
        Once Newton's decrement ``-grad . step`` is below `tolerance`, the last step is taken without a line
        search, and one more pass gives the curvature at its end (the curvature of the point it started
        from can be 10 % off). The result depends on the data and the shape only, never on the chain's
        state, which is what the move's exactness needs; how close it is to the exact mode only sets the
        acceptance rate.

        Returns
        -------
        value : ndarray, shape (n_params,)
            ``(mu, b)`` at the mode.
        hessian : ndarray, shape (n_params, n_params)
            Hessian of the log-density of the logarithms at the mode.
        """
        def terms(v):
            """Log-density on the original scale, its gradient and Hessian (-inf outside the domain)."""
            if not np.all(v > 0):
                return -np.inf, None, None
            data_term, grad, hess = poisson_terms(columns, offset, counts, v)
            value = data_term - float(totals @ v) + float(np.sum(shape * np.log(v) - rate * v))
            grad, hess = grad - totals + shape / v - rate, hess - np.diag(shape / v ** 2)
            if sky_log_prior is not None:  # its derivatives in ln v, carried to v
                prior, prior_grad, prior_hess = sky_log_prior(np.log(v))
                n = prior_grad.size
                value += prior
                grad[:n] += prior_grad / v[:n]
                hess[:n, :n] += (prior_hess - np.diag(prior_grad)) / np.outer(v[:n], v[:n])
            return value, grad, hess

        # a start of the data's own, never the chain's state: the proposal must not depend on it
        if counts.size > SUBSAMPLE_BINS:
            subsample_prior = None if sky_log_prior is None else (
                lambda t: tuple(part / STRIDE for part in sky_log_prior(t)))
            v = ScaleMove.mode(columns[::STRIDE], totals / STRIDE, counts[::STRIDE], shape / STRIDE,
                               rate / STRIDE, offset[::STRIDE], max_iter, subsample_prior, tolerance)[0]
        else:  # every parameter given an equal share of the counts
            v = max(float(counts.sum()), 1.0) / (totals.size * totals)
        current, grad, hess = terms(v)
        for _ in range(max_iter):
            step = _ascent_step(hess, grad)
            # Newton's decrement: half of it bounds what a full step can still gain near the mode
            if float(grad @ step) < tolerance:
                # close to the mode the log-density is nearly quadratic: the full step needs no line search,
                # only its curvature (which changes over the step by more than the proposal may ignore)
                trial = v + step
                if np.all(trial > 0):
                    value, _, trial_hess = terms(trial)
                    if np.isfinite(value):
                        v, hess = trial, trial_hess
                break
            t = 1.0
            while t > 1e-12:
                trial = v + t * step
                value, trial_grad, trial_hess = terms(trial)
                if value >= current:
                    break
                t *= 0.5
            if t <= 1e-12:
                break
            converged = np.all(np.abs(trial - v) <= 1e-9 * v)
            v, current, grad, hess = trial, value, trial_grad, trial_hess
            if converged:
                break
        # curvature of the log-density of log v: D H D (the gradient all but vanishes here; H is that of the
        # last point evaluated)
        return v, v[:, None] * hess * v[None, :]

    def draw(self, unit_sky, unit_totals, current, rng, offset=None, data_term=False, sky_log_prior=None):
        """New ``(mu, b)`` from the move.

        Parameters
        ----------
        unit_sky : ndarray, shape (n_ei, nnz)
            Expected counts at the non-empty bins per unit ``mu_e`` of the current shape.
        unit_totals : ndarray, shape (n_ei,)
            The same summed over all bins.
        current : ndarray, shape (n_ei + n_bkg,)
            Current ``(mu, b)``.
        rng : numpy.random.Generator
        offset : ndarray, shape (nnz,), optional
            Fixed expected counts at the non-empty bins (backgrounds whose norms are not sampled; their
            total over all bins is a constant of the target).
        data_term : bool
            Also return ``sum_i d_i ln eps_i`` at `current`, which the move computes anyway.
        sky_log_prior : callable, optional
            The prior of the sky parameters as a function of their logarithms, ``-> (value, gradient,
            Hessian)``, replacing their Gamma priors (for parameters that share a prior, e.g. regions of
            one image).

        Returns
        -------
        ndarray, shape (n_ei + n_bkg,)
        int
            Accepted proposals.
        float
            With `data_term`: ``sum_i d_i ln eps_i`` at `current`.
        """
        columns, totals, shape, rate = self._design(unit_sky, unit_totals)
        if sky_log_prior is not None:
            shape[:len(unit_totals)] = rate[:len(unit_totals)] = 0.0
        counts = self.counts
        offset = np.zeros(counts.size) if offset is None else np.asarray(offset, dtype=np.float64)
        value, hess = self.mode(columns, totals, counts, shape, rate, offset, sky_log_prior=sky_log_prior,
                                tolerance=self.tolerance)
        centre = np.log(value)
        # Student-t scale: the inverse of the curvature (its Cholesky factor), mode and scale free of `current`
        try:
            chol = np.linalg.cholesky(np.linalg.inv(-hess))
        except np.linalg.LinAlgError:
            # no curvature to scale a proposal by: the move stays put. The mode and the curvature depend on the
            # shape alone, which the move never changes, so staying put for such shapes keeps the move exact
            chol = None
        n = centre.size
        inv_chol = None if chol is None else np.linalg.inv(chol)

        def log_proposal(theta):
            z = inv_chol @ (theta - centre)
            return -0.5 * (T_DOF + n) * np.log1p(z @ z / T_DOF)

        value = np.asarray(current, dtype=np.float64)
        theta = np.log(value)
        data_now = poisson_terms(columns, offset, counts, value, derivatives=False)[0]
        log_target = self._log_target_from(data_now, theta, value, totals, shape, rate, sky_log_prior)
        accepted = 0
        if chol is None:
            return (value, accepted, data_now) if data_term else (value, accepted)
        log_ratio_now = log_target - log_proposal(theta)
        for _ in range(self.n_proposals):
            z = rng.standard_normal(n) * np.sqrt(T_DOF / rng.chisquare(T_DOF))
            proposal = centre + chol @ z
            log_ratio = (self.log_target(proposal, columns, totals, counts, shape, rate, offset, sky_log_prior)
                         - log_proposal(proposal))
            if np.log(rng.random()) < log_ratio - log_ratio_now:
                theta, log_ratio_now = proposal, log_ratio
                accepted += 1
        return (np.exp(theta), accepted, data_now) if data_term else (np.exp(theta), accepted)
