"""An exact image-space move: Hamiltonian Monte Carlo on the logarithm of the sky, the allocation integrated out.

The data augmentation sweep moves the split of the flux between neighbouring regions at the
pace of an EM iteration: where the Compton response is broad, the allocation ties each
region's counts to its current intensity and the chain creeps along directions that the data
constrain only weakly. This move samples the image of every Ei bin together from its
conditional posterior given the smoothing and the background norms, with the allocation
integrated out:

``log p(theta | a, b, d) = sum_i d_i ln eps_i - sum_i eps_i + sum_e log p(x_e | a_e) + sum theta``

over ``theta = ln x`` (the last term the Jacobian of ``x = exp(theta)``), with the multiscale
prior written in image coordinates (:meth:`.MultiscaleTree.image_log_prior`). Its gradient
comes from the engine's fused step: :meth:`~.ResponseEngine.evaluate` gives the
log-likelihood, :meth:`~.ResponseEngine.ratio_products` the transpose product
``R^T (d / eps)``, and ``d/dx log L = R^T (d / eps) - exposure``. A leapfrog trajectory of
``n_steps`` steps costs ``n_steps`` evaluations and transpose products (RL iterations).

The move is built to be exact: a leapfrog trajectory with a diagonal mass matrix in ``theta``, its step
size jittered by a factor uniform in [0.8, 1.2] independent of the state, ends with a
Metropolis-Hastings accept or reject. During the burn-in only (:func:`tuned`), the step size is
tuned towards an acceptance rate of :data:`TARGET_ACCEPT` (Robbins-Monro on its logarithm, a
gain falling as ``1 / sqrt(t)``) and the inverse mass set to the variance of every ``theta`` over
doubling windows of sweeps (a pixel the data pin down moves in small steps, an unconstrained
faint one in large steps); both are fixed afterwards, so the kept draws come from a fixed, exact
kernel. Geweke's successive-conditional test of the sweep with the move passes over 8000 sweeps
(``tests/test_lira_coverage_slow.py``; over 2000 the slowly mixing base-level split made its errors
too small). The move is off in the default sweep (``hmc_steps=0``): at the demo scale it gains little
for what it costs (``benchmarks/RESULTS.md``).
"""
import math

import numpy as np

from ..errors import CosiInputError

#: Acceptance rate the step size is tuned to during the burn-in.
TARGET_ACCEPT = 0.7
#: Initial leapfrog step on ``ln x`` (the tuning moves it within tens of sweeps).
INITIAL_STEP = 0.02
#: Sweeps of the first window over which the mass matrix is estimated (the next ones twice as long each).
FIRST_WINDOW = 25
#: Largest inverse mass (a log-pixel's scale of 5 per unit step): the Gibbs step floors pixels with no counts
#: hundreds of e-folds below the sky, a spread that would otherwise send trajectories into overflow.
MAX_INVERSE_MASS = 25.0


class ImageHMC:
    """Hamiltonian Monte Carlo on the log-image of every Ei bin, given smoothing and background norms.

    Parameters
    ----------
    engine : ResponseEngine
        Engine with data.
    tree : MultiscaleTree
        The prior of one Ei bin's image.
    exposure_max : ndarray, shape (n_ei,)
        The uniform exposure of the tree's total (``Xmax`` per Ei bin).
    nested, model_order : callable
        Reorder an array [n_pix, ...] from the model grid's order to NESTED and back.
    n_steps : int
        Leapfrog steps per trajectory.
    """

    def __init__(self, engine, tree, exposure_max, nested, model_order, n_steps):
        self.engine = engine
        self.tree = tree
        self.exposure_max = np.asarray(exposure_max, dtype=np.float64)
        self.exposure = np.asarray(engine.exposure_map, dtype=np.float64)
        self.nested = nested
        self.model_order = model_order
        self.n_steps = int(n_steps)
        self.names = list(engine.background_names)

    def log_density(self, theta, smoothing, norms, gradient=True):
        """Log-density of the log-image ``theta`` (model order, [n_pix, n_ei]) and its gradient.

        Returns ``(-inf, None)`` where the image or its expectations overflow, or the expectations vanish at a
        counted bin (a trajectory that gets there is rejected).
        """
        with np.errstate(over="ignore"):
            image = np.exp(theta)
        if not np.all(np.isfinite(image)) or not np.all(image > 0):
            return -math.inf, None
        norms = dict(zip(self.names, norms))
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                evaluation = self.engine.evaluate(image, norms)
        except CosiInputError:  # an expectation overflowed (inf * 0 = nan) or vanished where counts were seen
            return -math.inf, None
        value = evaluation.log_likelihood + float(np.sum(theta))
        grad_x = None
        if gradient:
            transpose, _ = self.engine.ratio_products(evaluation)
            grad_x = np.asarray(transpose, dtype=np.float64) - self.exposure
        nested = self.nested(image)
        prior_grad = np.empty_like(nested)
        for e in range(nested.shape[1]):
            if gradient:
                lp, prior_grad[:, e] = self.tree.image_log_prior(nested[:, e], smoothing[:, e], self.exposure_max[e],
                                                                 gradient=True)
            else:
                lp = self.tree.image_log_prior(nested[:, e], smoothing[:, e], self.exposure_max[e])
            value += lp
        if not math.isfinite(value):
            return -math.inf, None
        if not gradient:
            return value, None
        grad_x += self.model_order(prior_grad)
        return value, image * grad_x + 1.0

    def draw(self, image, smoothing, norms, step, rng, inverse_mass=None):
        """One trajectory from the image and its accept or reject.

        Parameters
        ----------
        image : ndarray, shape (n_pix, n_ei)
            Current image (model order, positive).
        smoothing : ndarray, shape (L + 1, n_ei)
        norms : ndarray, shape (n_bkg,)
        step : float
            Leapfrog step (before its jitter).
        rng : numpy.random.Generator
        inverse_mass : ndarray, shape (n_pix, n_ei), optional
            Diagonal of the inverse mass matrix (identity by default).

        Returns
        -------
        image : ndarray
            The new image (the current one where rejected).
        accept_probability : float
            ``min(1, exp(-dH))`` of the trajectory (0 where it diverged).
        """
        def target(theta):
            return self.log_density(theta, smoothing, norms)

        theta, accept, accepted = hmc_draw(target, np.log(image), step, self.n_steps, rng, inverse_mass)
        return (np.exp(theta) if accepted else image), accept


def hmc_draw(log_density, theta, step, n_steps, rng, inverse_mass=None):
    """One Hamiltonian Monte Carlo transition (diagonal mass matrix, leapfrog, Metropolis-Hastings).

    Parameters
    ----------
    log_density : callable
        ``theta -> (log-density, gradient)``; ``(-inf, None)`` outside the support.
    theta : ndarray
        Current position.
    step : float
        Leapfrog step, jittered by a factor uniform in [0.8, 1.2] (independent of the state, so the
        transition stays reversible).
    n_steps : int
        Leapfrog steps.
    rng : numpy.random.Generator
    inverse_mass : ndarray, optional
        Diagonal of the inverse mass matrix (the scale of each coordinate squared); identity by default.

    Returns
    -------
    theta : ndarray
        The new position (the current one where rejected).
    accept : float
        The acceptance probability ``min(1, exp(-dH))`` (0 for a trajectory that left the support).
    accepted : bool
    """
    value, grad = log_density(theta)
    if grad is None:
        return theta, 0.0, False
    inverse_mass = np.ones(np.shape(theta)) if inverse_mass is None else inverse_mass
    eps = step * rng.uniform(0.8, 1.2)
    momentum = rng.standard_normal(np.shape(theta)) / np.sqrt(inverse_mass)
    new = np.array(theta, dtype=np.float64)
    p = momentum + 0.5 * eps * grad
    for k in range(n_steps):
        new += eps * inverse_mass * p
        new_value, new_grad = log_density(new)
        if new_grad is None:
            return theta, 0.0, False
        p += (eps if k < n_steps - 1 else 0.5 * eps) * new_grad
    log_ratio = ((new_value - 0.5 * float(np.sum(inverse_mass * p ** 2)))
                 - (value - 0.5 * float(np.sum(inverse_mass * momentum ** 2))))
    if not math.isfinite(log_ratio):
        return theta, 0.0, False
    accept = math.exp(min(log_ratio, 0.0))
    accepted = bool(rng.random() < accept)
    return (new if accepted else theta), accept, accepted


def new_tuning(shape):
    """The tuning state of a chain before its burn-in: ``(scalars, metric)``.

    ``scalars``: ln step, step updates since the last metric change, draws in the current window, windows done;
    ``metric`` [3, *shape]: the inverse mass, the window's sums of ``theta`` and ``theta^2``.
    """
    metric = np.zeros((3,) + tuple(shape))
    metric[0] = 1.0
    return np.array([math.log(INITIAL_STEP), 0.0, 0.0, 0.0]), metric


def tuned(scalars, metric, accept_probability, theta):
    """The tuning after one burn-in trajectory (never called after the burn-in: the kept draws need a fixed kernel).

    The step: Robbins-Monro on ``ln step`` towards :data:`TARGET_ACCEPT`, gain ``1 / sqrt(updates + 1)``. The
    metric: the variance of every ``theta`` over windows of :data:`FIRST_WINDOW`, then twice, four times ... as many
    sweeps (shrunk towards 1e-3 as Stan does, capped at :data:`MAX_INVERSE_MASS`) becomes the inverse mass at the
    end of each window, and the step's gain restarts: a coordinate the data pin down gets a small scale, an
    unconstrained faint pixel a large one.
    """
    scalars, metric = scalars.copy(), metric.copy()
    scalars[0] += (accept_probability - TARGET_ACCEPT) / math.sqrt(scalars[1] + 1.0)
    scalars[1] += 1.0
    metric[1] += theta
    metric[2] += theta ** 2
    scalars[2] += 1.0
    n = scalars[2]
    if n >= FIRST_WINDOW * 2 ** scalars[3]:
        variance = np.maximum(metric[2] / n - (metric[1] / n) ** 2, 0.0) * n / (n - 1.0)
        metric[0] = np.minimum((n * variance + 5.0 * 1e-3) / (n + 5.0), MAX_INVERSE_MASS)
        metric[1:] = 0.0
        scalars[1:3] = 0.0
        scalars[3] += 1.0
    return scalars, metric
