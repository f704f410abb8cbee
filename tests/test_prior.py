import json

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from hypothesis import given, settings, strategies as st

import bmsbi


def mixed_prior():
    return bmsbi.Prior({
        "a": dist.Uniform(-1.0, 1.0),
        "sigma": dist.LogUniform(1e-3, 1e-1),
        "mu": dist.Normal(0.5, 2.0),
        "tau": dist.Gamma(2.0, 1.0),
        "c": dist.TruncatedNormal(0.0, 1.0, low=-0.5, high=2.0),
    })


def test_sample_shape_names_and_support():
    prior = mixed_prior()
    theta = prior.sample(jax.random.key(0), 4000)
    assert theta.shape == (4000, 5) and theta.dtype == jnp.float32
    assert prior.names == ("a", "sigma", "mu", "tau", "c") and prior.dim == 5
    assert bool(prior.in_support(theta).all())
    # Moments a user would check: Uniform(-1, 1) mean 0, sd 1/sqrt(3); Normal(0.5, 2).
    assert abs(float(theta[:, 0].mean())) < 0.05
    assert abs(float(theta[:, 0].std()) - 1 / np.sqrt(3)) < 0.02
    assert abs(float(theta[:, 2].mean()) - 0.5) < 0.1
    assert abs(float(theta[:, 2].std()) - 2.0) < 0.1


def test_log_prob_matches_scipy_and_is_minus_inf_outside():
    from scipy import stats

    prior = bmsbi.Prior({"a": dist.Uniform(-1.0, 1.0), "mu": dist.Normal(0.5, 2.0)})
    theta = np.array([[0.2, 1.0], [-0.9, -3.0], [1.5, 0.0], [np.nan, 0.0]], dtype=np.float32)
    lp = np.asarray(prior.log_prob(theta))
    ref = stats.uniform(-1, 2).logpdf(theta[:2, 0]) + stats.norm(0.5, 2.0).logpdf(theta[:2, 1])
    np.testing.assert_allclose(lp[:2], ref, rtol=1e-5)
    assert lp[2] == -np.inf and lp[3] == -np.inf
    # Gradient at an in-support point is finite even with outside points in the batch.
    g = jax.grad(lambda t: prior.log_prob(t)[:2].sum())(jnp.asarray(theta))
    assert bool(jnp.all(jnp.isfinite(g[:2])))


def test_bijection_round_trip_and_jacobian():
    prior = mixed_prior()
    theta = prior.sample(jax.random.key(1), 200)
    z = prior.to_unconstrained(theta)
    assert bool(jnp.all(jnp.isfinite(z)))
    np.testing.assert_allclose(prior.from_unconstrained(z), theta, rtol=2e-4, atol=1e-5)
    # Any z maps inside the support.
    zz = 5.0 * jax.random.normal(jax.random.key(2), (500, prior.dim))
    assert bool(prior.in_support(prior.from_unconstrained(zz)).all())
    # log|det J| equals the log of the diagonal derivative computed by autodiff.
    z0 = z[0]
    jac = jax.jacfwd(prior.from_unconstrained)(z0)
    np.testing.assert_allclose(prior.log_det_jacobian(z0), jnp.log(jnp.abs(jnp.diag(jac))).sum(), rtol=1e-4)


def test_bijection_with_parameters_kept_in_their_own_coordinates():
    prior = mixed_prior()
    keep = np.arange(prior.dim) % 2 == 0
    theta = prior.sample(jax.random.key(1), 50)
    z = prior.to_unconstrained(theta, keep=keep)
    np.testing.assert_array_equal(z[:, keep], theta[:, keep])
    np.testing.assert_allclose(z[:, ~keep], prior.to_unconstrained(theta)[:, ~keep], rtol=1e-6)
    np.testing.assert_allclose(prior.from_unconstrained(z, keep=keep), theta, rtol=2e-4, atol=1e-5)
    jac = jax.jacfwd(lambda v: prior.from_unconstrained(v, keep=keep))(z[0])
    np.testing.assert_allclose(prior.log_det_jacobian(z[0], keep=keep),
                               jnp.log(jnp.abs(jnp.diag(jac))).sum(), rtol=1e-4)
    with pytest.raises(ValueError, match="keep: expected"):
        prior.to_unconstrained(theta, keep=[True])


def test_uniform_constructor_and_spec_round_trip():
    prior = bmsbi.Prior.uniform([-1.0, 0.0], [1.0, 2.0], names=["a", "w"])
    assert prior.names == ("a", "w")
    lo, hi = prior.bounds()
    np.testing.assert_array_equal(lo, [-1, 0])
    np.testing.assert_array_equal(hi, [1, 2])
    spec = json.loads(json.dumps(mixed_prior().to_dict()))
    again = bmsbi.Prior.from_dict(spec)
    assert again == mixed_prior()
    theta = mixed_prior().sample(jax.random.key(3), 10)
    np.testing.assert_allclose(again.log_prob(theta), mixed_prior().log_prob(theta), rtol=1e-6)
    assert bmsbi.Prior.uniform([0.0], [1.0]).names == ("theta0",)


def test_spec_refuses_unknown_family():
    with pytest.raises(ValueError, match="family"):
        bmsbi.Prior.from_dict({"parameters": [{"name": "a", "family": "os.system", "low": 0}]})


@pytest.mark.parametrize("bad, match", [
    ({}, "distributions"),
    ([dist.Normal()], "distributions"),
    ({"a": 3.0}, "distributions\\['a'\\]"),
    ({"a": dist.Normal(jnp.zeros(2), 1.0)}, "scalar"),
    ({"a": dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2))}, "scalar"),
])
def test_bad_distributions_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        bmsbi.Prior(bad)


def test_uniform_bad_bounds_and_theta_shape():
    with pytest.raises(ValueError, match="low/high"):
        bmsbi.Prior.uniform([1.0], [0.0])
    with pytest.raises(ValueError, match="names"):
        bmsbi.Prior.uniform([0.0, 0.0], [1.0, 1.0], names=["a"])
    prior = bmsbi.Prior.uniform([0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"theta: expected shape \(d,\) or \(n, d\) with d=2"):
        prior.log_prob(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="n: expected"):
        prior.sample(jax.random.key(0), -1)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=4), st.floats(0.1, 3.0))
def test_uniform_log_prob_property(lows, width):
    low = np.array(lows)
    high = low + width
    prior = bmsbi.Prior.uniform(low, high)
    theta = prior.sample(jax.random.key(0), 64)
    expected = -len(lows) * np.log(width)
    np.testing.assert_allclose(prior.log_prob(theta), expected, rtol=1e-4, atol=1e-4)
