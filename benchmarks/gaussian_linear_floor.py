"""How close can any estimator get on the 10-D Gaussian-linear tests? The oracle floor.

The slow tests ``tests/test_npe.py::test_gaussian_linear_10d_at_10k`` and
``tests/test_nle_nre.py::test_gaussian_linear_10d_at_10k`` ask for a posterior mean
within 0.1 posterior sd of the analytic one in every dimension (30 numbers: 3
observations x 10 dimensions). This script fits the *correct parametric family* by
ordinary least squares on the same simulations those tests train on — a linear-Gaussian
posterior ``theta | x ~ N(C x + d, Sigma)`` (the NPE oracle) and a linear-Gaussian
likelihood ``x | theta ~ N(A theta + b, S)`` combined with the exact prior (the NLE
oracle) — and reports their posterior-mean errors. No neural estimator can be expected
to beat an estimator that knows the model family; the gap between a flow and this
floor is the price of flexibility.

    python benchmarks/gaussian_linear_floor.py
"""

from __future__ import annotations

import jax
import numpy as np
import numpyro.distributions as dist

import bmsbi


def _errors(mean_hat, mean_true, sd):
    err = np.abs(mean_hat - mean_true) / sd
    return float(err.max()), float(np.sqrt((err ** 2).mean()))


def npe_test_floor(train_fraction=0.9):
    """Setup of tests/test_npe.py: theta ~ N(0, I), x ~ N(theta, 0.5^2 I), bank seed 11."""
    dim, sigma, n = 10, 0.5, 10_000
    prior = bmsbi.Prior({f"t{i}": dist.Normal(0.0, 1.0) for i in range(dim)})
    theta = np.asarray(prior.sample(jax.random.key(11), n), np.float64)
    x = theta + sigma * np.random.default_rng(11).normal(size=theta.shape)
    m = int(train_fraction * n)
    X = np.c_[x[:m], np.ones(m)]
    coef = np.linalg.lstsq(X, theta[:m], rcond=None)[0]      # theta ~ C x + d
    prec = 1.0 + 1.0 / sigma ** 2
    sd = np.sqrt(1.0 / prec)
    rng = np.random.default_rng(5)
    x_obs = []
    for _ in range(3):  # as the test: an observation, then its 10,000 reference draws
        x_obs.append(rng.normal(size=dim) * np.sqrt(1 + sigma ** 2))
        rng.normal(size=(10_000, dim))
    x_obs = np.stack(x_obs)
    return _errors(np.c_[x_obs, np.ones(3)] @ coef, x_obs / sigma ** 2 / prec, sd)


def nle_test_floor(train_fraction=0.9):
    """Setup of tests/test_nle_nre.py: theta ~ N(0, 0.1 I), x ~ N(theta, 0.1 I)."""
    dim, pv, nv, n = 10, 0.1, 0.1, 10_000
    prior = bmsbi.Prior({f"theta{i}": dist.Normal(0.0, pv ** 0.5) for i in range(dim)})
    theta = np.asarray(prior.sample(jax.random.key(20), n), np.float64)
    x = theta + nv ** 0.5 * np.random.default_rng(21).normal(size=theta.shape)
    m = int(train_fraction * n)
    T = np.c_[theta[:m], np.ones(m)]
    W = np.linalg.lstsq(T, x[:m], rcond=None)[0]
    A, b = W[:dim].T, W[dim]
    S = np.cov((x[:m] - T @ W).T)
    x_obs = np.random.default_rng(23).normal(size=(3, dim)) * np.sqrt(pv + nv)
    P = np.eye(dim) / pv + A.T @ np.linalg.solve(S, A)
    mean_hat = np.linalg.solve(P, A.T @ np.linalg.solve(S, (x_obs - b).T)).T
    sd = np.sqrt(1.0 / (1.0 / pv + 1.0 / nv))
    return _errors(mean_hat, x_obs * pv / (pv + nv), sd)


if __name__ == "__main__":
    print("oracle (correct linear-Gaussian family fitted by least squares on 90 % of the bank)")
    print("| test | max error (sd) over 30 | rms error (sd) |")
    print("|---|---:|---:|")
    for name, fn in (("NPE 10-D (test_npe.py)", npe_test_floor),
                     ("NLE/NRE 10-D (test_nle_nre.py)", nle_test_floor)):
        mx, rms = fn()
        print(f"| {name} | {mx:.3f} | {rms:.3f} |")
