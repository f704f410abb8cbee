"""sbibm benchmark tasks with exact reference posteriors, in numpy and JAX.

Two tasks of the sbibm benchmark [1] that have a closed-form posterior, so that a
posterior estimate can be scored against exact samples with C2ST:

* ``two_moons``: 2 parameters, 2 data dimensions, a bimodal crescent-shaped posterior.
* ``gaussian_linear``: 10 parameters, 10 data dimensions, a Gaussian posterior.
* ``lognormal_linear`` (ours, not sbibm's): 2 parameters, 4 strictly positive data
  dimensions spanning about 16 orders of magnitude together (each about 4 on its own),
  log-normal given the parameters, so the posterior is Gaussian and exact (issue 17).

Each task offers a JAX simulator ``simulate(theta (d,), key) -> x (d_x,)`` (vmap it
for banks), a JAX prior sampler, the prior in plain numbers (bounds or scale), a set of
fixed observations, and ``reference_posterior(x_obs, num_samples, seed)`` which draws
exact posterior samples with numpy.

Fixed observations
------------------
Observation ``i`` (1-based, as in sbibm) of a task is made with
``numpy.random.default_rng(1000 + i)``: first θ is drawn from the prior, then the
simulator's noise, both from that generator (see `observation`). sbibm ships its own
stored observations; ours are made the same way (prior draw, then one simulation) but
with our own seeds, so C2ST numbers are comparable in kind, not observation by
observation.

This module needs only numpy and JAX (and `bmsbi.diagnostics.c2st`, which needs
scikit-learn); it does not use bmsbi's inference code.

References
----------
.. [1] Lueckmann, J.-M., Boelts, J., Greenberg, D., Gonçalves, P., Macke, J. H. (2021).
   Benchmarking Simulation-Based Inference. AISTATS.
.. [2] Greenberg, D., Nonnenmacher, M., Macke, J. H. (2019). Automatic Posterior
   Transformation for Likelihood-Free Inference. ICML. (Origin of two-moons.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bmsbi.diagnostics import c2st

__all__ = [
    "Task",
    "TASKS",
    "get_task",
    "observation",
    "observations",
    "two_moons_map",
    "two_moons_log_likelihood",
    "lognormal_linear_posterior_moments",
    "c2st",
]

OBSERVATION_SEED_BASE = 1000

# ---------------------------------------------------------------------------------
# Two moons (sbibm definition)
# ---------------------------------------------------------------------------------
_TM_A_LOW, _TM_A_HIGH = -math.pi / 2.0, math.pi / 2.0
_TM_R_LOC, _TM_R_SCALE = 0.1, 0.01
_TM_OFFSET = 0.25
_TM_BOUND = 1.0
_SQRT2 = math.sqrt(2.0)


def two_moons_map(theta, a, r):
    """Deterministic part of the two-moons simulator.

    ``x = p + g(theta)`` with ``p = (r cos a + 0.25, r sin a)`` and
    ``g(theta) = (-|theta0 + theta1| / sqrt 2, (theta1 - theta0) / sqrt 2)``.

    Works on numpy or JAX arrays; `theta` has shape (..., 2), `a` and `r` shape (...).
    """
    xp = jnp if isinstance(theta, jax.Array) else np
    theta = xp.asarray(theta)
    z0 = (theta[..., 0] + theta[..., 1]) / _SQRT2
    z1 = (theta[..., 1] - theta[..., 0]) / _SQRT2
    p0 = r * xp.cos(a) + _TM_OFFSET
    p1 = r * xp.sin(a)
    return xp.stack([p0 - xp.abs(z0), p1 + z1], axis=-1)


def _two_moons_simulate(theta, key):
    key_a, key_r = jax.random.split(key)
    a = jax.random.uniform(key_a, (), minval=_TM_A_LOW, maxval=_TM_A_HIGH)
    r = _TM_R_LOC + _TM_R_SCALE * jax.random.normal(key_r, ())
    return two_moons_map(jnp.asarray(theta), a, r)


def _two_moons_numpy_simulate(theta, rng):
    a = rng.uniform(_TM_A_LOW, _TM_A_HIGH)
    r = rng.normal(_TM_R_LOC, _TM_R_SCALE)
    return two_moons_map(np.asarray(theta, dtype=np.float64), a, r)


def two_moons_log_likelihood(theta, x):
    """Exact log-density of the two-moons simulator, ``log p(x | theta)``.

    With ``u = x - g(theta) - (0.25, 0)`` the noise point ``p - (0.25, 0)`` is
    ``r (cos a, sin a)``, so in polar coordinates ``(r, a)`` of `u`:
    ``p(x | theta) = Uniform(a; -pi/2, pi/2) * Normal(r; 0.1, 0.01) / r`` where the
    ``1 / r`` is the polar-to-Cartesian Jacobian, and zero where ``u0 < 0``
    (``|a| > pi/2``). (sbibm's own likelihood leaves out the ``1 / r``; the
    difference is small because ``r`` stays near 0.1.) The negligible mass of
    ``r < 0`` (``P < 1e-20``) is ignored.

    Parameters
    ----------
    theta : array_like, shape (..., 2)
    x : array_like, shape (..., 2)
        Broadcast against `theta`.

    Returns
    -------
    numpy.ndarray, shape (...)
        ``-inf`` where `x` cannot be produced from `theta`.
    """
    theta = np.asarray(theta, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    z0 = (theta[..., 0] + theta[..., 1]) / _SQRT2
    z1 = (theta[..., 1] - theta[..., 0]) / _SQRT2
    u0 = x[..., 0] + np.abs(z0) - _TM_OFFSET
    u1 = x[..., 1] - z1
    r = np.hypot(u0, u1)
    log_r_density = (
        -0.5 * ((r - _TM_R_LOC) / _TM_R_SCALE) ** 2
        - math.log(_TM_R_SCALE * math.sqrt(2.0 * math.pi))
    )
    with np.errstate(divide="ignore"):
        out = log_r_density - np.log(r) - math.log(_TM_A_HIGH - _TM_A_LOW)
    return np.where((u0 >= 0.0) & (r > 0.0), out, -np.inf)


def _two_moons_reference(x_obs, num_samples, seed):
    """Exact two-moons posterior samples by inverting the simulator.

    Why this is exact: ``x = p + g(theta)`` where the noise point ``p`` has density
    ``q(p)`` independent of theta, and ``g = (-|z0|, z1)`` with ``z = R theta`` for the
    rotation ``R`` by -pi/4. On each half-plane ``z0 > 0`` and ``z0 < 0`` the map ``g``
    is affine with ``|det Dg| = |det R| = 1``. So ``p(x_o | theta) = q(x_o - g(theta))``
    and the posterior on the prior box is proportional to ``q(x_o - g(theta))``.
    Draw ``p ~ q`` and set ``u = x_o - p``; if ``u0 > 0`` no theta gives ``g(theta) =
    u`` (the draw is rejected), otherwise exactly two thetas do:
    ``z = (+-|u0|, u1)``, ``theta = R^T z``. Picking either with probability 1/2
    gives theta the density ``q(x_o - g(theta)) * |det Dg| / 2``, and keeping only
    draws inside the box conditions on the uniform prior's support. The result is
    proportional to the posterior, with no approximation. (sbibm's sampler skips
    the ``u0 <= 0`` rejection, which only matters for observations near the
    moons' tips.) `tests/test_benchmark_tasks.py` checks this against a grid posterior
    built from `two_moons_log_likelihood`.
    """
    x_obs = np.asarray(x_obs, dtype=np.float64).reshape(2)
    rng = np.random.default_rng(seed)
    kept = []
    num_kept = 0
    batch = max(1024, 2 * num_samples)
    for _ in range(10_000):
        a = rng.uniform(_TM_A_LOW, _TM_A_HIGH, size=batch)
        r = rng.normal(_TM_R_LOC, _TM_R_SCALE, size=batch)
        u0 = x_obs[0] - (r * np.cos(a) + _TM_OFFSET)
        u1 = x_obs[1] - r * np.sin(a)
        sign = np.where(rng.uniform(size=batch) < 0.5, -1.0, 1.0)
        z0 = sign * np.abs(u0)
        z1 = u1
        # theta = R^T z with z0 = (t0 + t1)/sqrt2, z1 = (t1 - t0)/sqrt2
        theta = np.stack([(z0 - z1) / _SQRT2, (z0 + z1) / _SQRT2], axis=-1)
        ok = (u0 <= 0.0) & np.all(np.abs(theta) <= _TM_BOUND, axis=-1)
        kept.append(theta[ok])
        num_kept += int(ok.sum())
        if num_kept >= num_samples:
            return np.concatenate(kept)[:num_samples]
    raise RuntimeError(
        f"two-moons reference sampler accepted only {num_kept} of {num_samples} "
        f"samples for x_obs={x_obs}; is x_obs producible by the simulator?"
    )


# ---------------------------------------------------------------------------------
# Gaussian linear (sbibm definition, 10-D)
# ---------------------------------------------------------------------------------
_GL_DIM = 10
_GL_PRIOR_VAR = 0.1
_GL_NOISE_VAR = 0.1


def _gaussian_linear_simulate(theta, key):
    theta = jnp.asarray(theta)
    return theta + math.sqrt(_GL_NOISE_VAR) * jax.random.normal(key, theta.shape)


def _gaussian_linear_numpy_simulate(theta, rng):
    theta = np.asarray(theta, dtype=np.float64)
    return theta + math.sqrt(_GL_NOISE_VAR) * rng.normal(size=theta.shape)


def gaussian_linear_posterior_moments(x_obs):
    """Analytic posterior of Gaussian-linear: mean ``x / 2``, covariance ``0.05 I``.

    Prior ``N(0, 0.1 I)`` and likelihood ``N(x; theta, 0.1 I)`` give precision
    ``1/0.1 + 1/0.1 = 20`` and mean ``0.05 * x / 0.1 = x / 2``.
    """
    x_obs = np.asarray(x_obs, dtype=np.float64).reshape(_GL_DIM)
    post_var = 1.0 / (1.0 / _GL_PRIOR_VAR + 1.0 / _GL_NOISE_VAR)
    mean = post_var * x_obs / _GL_NOISE_VAR
    return mean, post_var * np.eye(_GL_DIM)


def _gaussian_linear_reference(x_obs, num_samples, seed):
    mean, cov = gaussian_linear_posterior_moments(x_obs)
    rng = np.random.default_rng(seed)
    return mean + np.sqrt(np.diag(cov)) * rng.normal(size=(num_samples, _GL_DIM))


# ---------------------------------------------------------------------------------
# Log-normal linear (ours): positive observations over orders of magnitude
# ---------------------------------------------------------------------------------
# log x = A theta + b + sigma eps, theta ~ N(0, I_2), eps ~ N(0, I_4). Each feature's log
# has sd about 2.1 (its 1st to 99th percentile span about 10^4); the offsets b put the
# features at 10^-3 .. 10^5, so together they cover about 10^-7 .. 10^9.
_LN_A = np.array([[2.0, 0.0], [0.0, 2.0], [1.5, 1.5], [1.5, -1.5]])
_LN_B = math.log(10.0) * np.array([-3.0, 0.0, 2.0, 5.0])
_LN_SIGMA = 0.5


def _lognormal_linear_simulate(theta, key):
    theta = jnp.asarray(theta)
    eps = jax.random.normal(key, (_LN_A.shape[0],))
    return jnp.exp(jnp.asarray(_LN_A, jnp.float32) @ theta + jnp.asarray(_LN_B, jnp.float32)
                   + _LN_SIGMA * eps)


def _lognormal_linear_numpy_simulate(theta, rng):
    theta = np.asarray(theta, dtype=np.float64)
    return np.exp(_LN_A @ theta + _LN_B + _LN_SIGMA * rng.normal(size=_LN_A.shape[0]))


def lognormal_linear_posterior_moments(x_obs):
    """Analytic posterior of ``lognormal_linear``: Gaussian ``(mean (2,), cov (2, 2))``.

    ``y = log x = A theta + b + sigma eps`` is Gaussian-linear in ``theta`` with prior
    ``N(0, I)``: precision ``I + A^T A / sigma^2``, mean ``cov A^T (y - b) / sigma^2``.
    """
    y = np.log(np.asarray(x_obs, dtype=np.float64).reshape(_LN_A.shape[0]))
    precision = np.eye(_LN_A.shape[1]) + _LN_A.T @ _LN_A / _LN_SIGMA**2
    cov = np.linalg.inv(precision)
    return cov @ _LN_A.T @ (y - _LN_B) / _LN_SIGMA**2, cov


def _lognormal_linear_reference(x_obs, num_samples, seed):
    mean, cov = lognormal_linear_posterior_moments(x_obs)
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(mean, cov, size=num_samples)


# ---------------------------------------------------------------------------------
# Task records
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One benchmark task.

    Attributes
    ----------
    name : str
    dim_theta, dim_x : int
    prior_kind : str
        ``"uniform"`` (box ``[low, high]``) or ``"normal"`` (independent
        ``Normal(loc, scale)`` per dimension).
    prior_low, prior_high : numpy.ndarray, shape (dim_theta,)
        Box bounds (uniform) or loc / scale (normal; `prior_low` = loc,
        `prior_high` = scale).
    simulate : callable
        ``simulate(theta (dim_theta,), key) -> x (dim_x,)``, JAX-traceable; `key` is a
        typed (``jax.random.key``) or raw key.
    numpy_simulate : callable
        ``numpy_simulate(theta, rng) -> x`` with a ``numpy.random.Generator``.
    reference_posterior : callable
        ``reference_posterior(x_obs (dim_x,), num_samples, seed) -> (num_samples,
        dim_theta)`` exact posterior samples (numpy).
    """

    name: str
    dim_theta: int
    dim_x: int
    prior_kind: str
    prior_low: np.ndarray
    prior_high: np.ndarray
    simulate: Callable
    numpy_simulate: Callable
    reference_posterior: Callable

    @property
    def names(self) -> list[str]:
        return [f"theta{i}" for i in range(self.dim_theta)]

    def prior_sample(self, key, num_samples: int) -> jax.Array:
        """Draw ``(num_samples, dim_theta)`` parameters from the prior (JAX)."""
        shape = (num_samples, self.dim_theta)
        low = jnp.asarray(self.prior_low, jnp.float32)
        high = jnp.asarray(self.prior_high, jnp.float32)
        if self.prior_kind == "uniform":
            return jax.random.uniform(key, shape, minval=low, maxval=high)
        return low + high * jax.random.normal(key, shape)

    def numpy_prior_sample(self, rng: np.random.Generator, num_samples: int):
        """Draw ``(num_samples, dim_theta)`` parameters from the prior (numpy)."""
        shape = (num_samples, self.dim_theta)
        if self.prior_kind == "uniform":
            return rng.uniform(self.prior_low, self.prior_high, size=shape)
        return self.prior_low + self.prior_high * rng.normal(size=shape)

    def simulate_bank(self, key, num_simulations: int):
        """Prior draws and their simulations, ``(theta (n, d), x (n, d_x))``, float32.

        ``key`` is split once into a prior key and one key per simulation.
        """
        key_prior, key_sim = jax.random.split(key)
        theta = self.prior_sample(key_prior, num_simulations)
        keys = jax.random.split(key_sim, num_simulations)
        x = jax.jit(jax.vmap(self.simulate))(theta, keys)
        return np.asarray(theta, np.float32), np.asarray(x, np.float32)


TASKS: dict[str, Task] = {
    "two_moons": Task(
        name="two_moons",
        dim_theta=2,
        dim_x=2,
        prior_kind="uniform",
        prior_low=-_TM_BOUND * np.ones(2),
        prior_high=_TM_BOUND * np.ones(2),
        simulate=_two_moons_simulate,
        numpy_simulate=_two_moons_numpy_simulate,
        reference_posterior=_two_moons_reference,
    ),
    "gaussian_linear": Task(
        name="gaussian_linear",
        dim_theta=_GL_DIM,
        dim_x=_GL_DIM,
        prior_kind="normal",
        prior_low=np.zeros(_GL_DIM),
        prior_high=math.sqrt(_GL_PRIOR_VAR) * np.ones(_GL_DIM),
        simulate=_gaussian_linear_simulate,
        numpy_simulate=_gaussian_linear_numpy_simulate,
        reference_posterior=_gaussian_linear_reference,
    ),
    "lognormal_linear": Task(
        name="lognormal_linear",
        dim_theta=_LN_A.shape[1],
        dim_x=_LN_A.shape[0],
        prior_kind="normal",
        prior_low=np.zeros(_LN_A.shape[1]),
        prior_high=np.ones(_LN_A.shape[1]),
        simulate=_lognormal_linear_simulate,
        numpy_simulate=_lognormal_linear_numpy_simulate,
        reference_posterior=_lognormal_linear_reference,
    ),
}
# The sbibm tasks (what benchmarks/npe_vs_sbi.py runs by default).
SBIBM_TASKS = ("two_moons", "gaussian_linear")


def get_task(name: str) -> Task:
    """Look up a task by name (``"two_moons"``, ``"gaussian_linear"`` or ``"lognormal_linear"``)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; expected one of {sorted(TASKS)}."
        ) from None


def observation(task: Task | str, index: int):
    """Fixed observation `index` (1-based) of a task: ``(theta_true, x_obs)``.

    Made with ``numpy.random.default_rng(1000 + index)``: θ from the prior, then one
    simulation with the same generator. Pure numpy, so the values do not depend on
    the JAX version.
    """
    task = get_task(task) if isinstance(task, str) else task
    if index < 1:
        raise ValueError(f"observation `index` is 1-based; received {index}.")
    rng = np.random.default_rng(OBSERVATION_SEED_BASE + index)
    theta = task.numpy_prior_sample(rng, 1)[0]
    x = task.numpy_simulate(theta, rng)
    return theta, np.asarray(x, dtype=np.float64)


def observations(task: Task | str, num_observations: int):
    """Observations ``1..num_observations``: ``(theta_true (m, d), x_obs (m, d_x))``."""
    pairs = [observation(task, i) for i in range(1, num_observations + 1)]
    return np.stack([t for t, _ in pairs]), np.stack([x for _, x in pairs])
