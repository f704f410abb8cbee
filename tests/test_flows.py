"""NPE's flowjax coupling spline flow (``density_estimator="flowjax_nsf"``): identity start,
a recovered analytic posterior, and a posterior file that loads (its linear-Gaussian start
is checked with the other flows' in ``test_npe.py``)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import bmsbi
from bmsbi.estimators import NPE
from bmsbi.estimators.npe import build_flow

SIGMA = 0.5


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_untrained_flow_is_the_standard_normal(dim):
    # Zeroed conditioner outputs and an identity affine map: log q is the base density.
    flow = build_flow("flowjax_nsf", dim, 4, hidden=8, num_layers=3, num_bins=4, tail_bound=3.0,
                      nn_depth=2, key=jax.random.key(0))
    theta = jax.random.normal(jax.random.key(1), (20, dim)) * 2.0   # some beyond the tail bound
    cond = jax.random.normal(jax.random.key(2), (20, 4))
    exact = jnp.sum(jax.scipy.stats.norm.logpdf(theta), axis=-1)
    np.testing.assert_allclose(flow.log_prob(theta, cond), exact, atol=1e-5)


@pytest.fixture(scope="module")
def trained():
    """2-D Gaussian-linear: theta ~ N(0, I), x ~ N(theta, 0.5^2 I), 2,000 simulations."""
    prior = bmsbi.Prior({f"t{i}": dist.Normal(0.0, 1.0) for i in range(2)})
    theta = np.asarray(prior.sample(jax.random.key(0), 2000))
    x = theta + SIGMA * np.random.default_rng(0).normal(size=theta.shape)
    bank = bmsbi.Bank(theta, x.astype(np.float32), names=prior.names)
    npe = NPE(density_estimator="flowjax_nsf", hidden=16, num_layers=2, max_epochs=15)
    return npe.fit(bank, prior=prior, key=jax.random.key(1), progress=False)


def test_recovers_the_analytic_posterior(trained):
    # Posterior N(x / (1 + sigma^2), 1 / (1 + 1 / sigma^2) I). Tolerance: 0.15 posterior sd
    # for the mean (the draws alone give about 0.01) and 10 % for the sd.
    prec = 1.0 + 1.0 / SIGMA**2
    sd = np.sqrt(1.0 / prec)
    for x_obs in (np.array([0.3, -0.8], np.float32), np.array([-1.2, 0.5], np.float32)):
        s = np.asarray(trained.sample(jax.random.key(2), x_obs, 10_000))
        mean = x_obs / SIGMA**2 / prec
        assert np.all(np.abs(s.mean(0) - mean) < 0.15 * sd), (s.mean(0), mean)
        np.testing.assert_allclose(s.std(0), sd, rtol=0.1)


def test_posterior_file_rebuilds_the_flow(trained, tmp_path):
    assert trained.config["density_estimator"] == "flowjax_nsf"
    path = trained.save(tmp_path / "flowjax_nsf.bmsbi")
    again = bmsbi.load_posterior(path)
    assert again.config["density_estimator"] == "flowjax_nsf"
    x_obs = np.array([0.3, -0.8], np.float32)
    theta = np.array([[0.1, -0.5], [0.4, 0.2]], np.float32)
    np.testing.assert_allclose(again.log_prob(theta, x_obs), trained.log_prob(theta, x_obs),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(again.sample(jax.random.key(3), x_obs, 100),
                                  trained.sample(jax.random.key(3), x_obs, 100))
