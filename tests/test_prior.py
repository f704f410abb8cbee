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


# ----------------------------------------------------------------- joint priors (blocks)
COV = np.array([[1.0, 0.6, 0.2], [0.6, 2.0, -0.5], [0.2, -0.5, 1.5]], np.float32)


def joint_prior():
    return bmsbi.Prior({
        "w": (dist.MultivariateNormal(jnp.array([0.0, 1.0, -1.0]), jnp.asarray(COV)), ["w0", "w1", "w2"]),
        "tau": dist.Uniform(1.0, 5.0),
        "p": (dist.Dirichlet(jnp.array([2.0, 3.0, 4.0, 1.5])), ["p0", "p1", "p2", "p3"]),
        "g": (dist.Gamma(jnp.array([2.0, 3.0]), 1.0).to_event(1), ["g0", "g1"]),
        "l": (dist.LowRankMultivariateNormal(jnp.zeros(2), jnp.array([[1.0], [0.5]]), jnp.ones(2)),
              ["l0", "l1"]),
        "u": (dist.Uniform(0.0, 2.0).expand([2]).to_event(1), ["u0", "u1"]),
    })


def test_joint_prior_names_dims_and_sampling():
    prior = joint_prior()
    assert prior.names == ("w0", "w1", "w2", "tau", "p0", "p1", "p2", "p3", "g0", "g1", "l0", "l1",
                           "u0", "u1")
    assert prior.dim == 14 and prior.unconstrained_dim == 13  # the simplex loses one coordinate
    assert prior.blocks["p"] == ("p0", "p1", "p2", "p3") and "tau" not in prior.blocks
    assert repr(prior).startswith("Prior(w=MultivariateNormal[w0, w1, w2], tau=Uniform, p=Dirichlet[")
    theta = jax.jit(lambda k: prior.sample(k, 20_000))(jax.random.key(0))
    assert theta.shape == (20_000, 14) and theta.dtype == jnp.float32
    assert bool(prior.in_support(theta).all())
    # The block's correlations survive sampling; the Dirichlet's mean is alpha / sum(alpha).
    np.testing.assert_allclose(np.cov(np.asarray(theta[:, :3]), rowvar=False), COV, atol=0.08)
    np.testing.assert_allclose(np.asarray(theta[:, 4:8]).mean(0), np.array([2, 3, 4, 1.5]) / 10.5, atol=0.01)
    assert prior.sample(jax.random.key(0), 0).shape == (0, 14)
    lo, hi = prior.bounds()
    np.testing.assert_array_equal(lo, [-np.inf] * 3 + [1.0] + [0.0] * 6 + [-np.inf] * 2 + [0.0] * 2)
    np.testing.assert_array_equal(hi, [np.inf] * 3 + [5.0] + [1.0] * 4 + [np.inf] * 4 + [2.0] * 2)
    assert [d is None for d in prior.column_distributions()] == [True] * 3 + [False] + [True] * 10


def test_joint_log_prob_equals_numpyro_and_is_minus_inf_outside():
    prior = joint_prior()
    theta = prior.sample(jax.random.key(1), 50)
    d = prior.distributions
    expected = (d["w"].log_prob(theta[:, 0:3]) + d["tau"].log_prob(theta[:, 3])
                + d["p"].log_prob(theta[:, 4:8]) + d["g"].log_prob(theta[:, 8:10])
                + d["l"].log_prob(theta[:, 10:12]) + d["u"].log_prob(theta[:, 12:14]))
    np.testing.assert_allclose(prior.log_prob(theta), expected, rtol=1e-5, atol=1e-4)
    bad = np.array(theta[:5])
    bad[0, 4:8] = [0.5, 0.5, 0.5, -0.5]   # sums to 1 but leaves the simplex
    bad[1, 4] += 0.1                       # off the simplex's plane
    bad[2, 8] = -1.0                       # Gamma block below zero
    bad[3, 0] = np.nan                     # NaN in the MVN block
    bad[4, 13] = 2.5                       # above the Uniform block's bound
    lp = np.asarray(prior.log_prob(bad))
    assert np.all(lp == -np.inf)
    assert not bool(prior.in_support(bad).any())
    # Gradients stay finite at in-support rows even with outside rows in the batch.
    both = jnp.concatenate([theta[:5], jnp.asarray(bad)])
    g = jax.grad(lambda t: prior.log_prob(t)[:5].sum())(both)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_joint_bijection_round_trip_jacobian_and_keep():
    prior = joint_prior()
    theta = prior.sample(jax.random.key(2), 300)
    z = prior.to_unconstrained(theta)
    assert z.shape == (300, 13) and bool(jnp.all(jnp.isfinite(z)))
    np.testing.assert_allclose(prior.from_unconstrained(z), theta, rtol=1e-3, atol=1e-4)
    zz = 4.0 * jax.random.normal(jax.random.key(3), (500, prior.unconstrained_dim))
    assert bool(prior.in_support(prior.from_unconstrained(zz)).all())
    assert bool(prior.in_support(prior.interior_point()))
    # log|det J|: the Jacobian of theta without the simplex's last coordinate (the
    # coordinates the Dirichlet's density is defined in) with respect to z is square.
    free = np.r_[0:7, 8:14]
    jac = jax.jacfwd(lambda v: prior.from_unconstrained(v)[free])(z[0])
    np.testing.assert_allclose(prior.log_det_jacobian(z[0]), jnp.linalg.slogdet(jac)[1], rtol=1e-4,
                               atol=1e-4)
    # keep= leaves scalar columns in their own coordinates; a block's coordinates cannot stay.
    keep = np.zeros(prior.dim, bool)
    keep[3] = True
    zk = prior.to_unconstrained(theta, keep=keep)
    np.testing.assert_array_equal(zk[:, 3], theta[:, 3])
    np.testing.assert_allclose(prior.from_unconstrained(zk, keep=keep), theta, rtol=1e-3, atol=1e-4)
    keep[0] = True
    with pytest.raises(ValueError, match="keep: the coordinates of the block 'w'"):
        prior.to_unconstrained(theta, keep=keep)
    with pytest.raises(ValueError, match="z: expected a last axis of length 13"):
        prior.from_unconstrained(jnp.zeros(14))


def test_joint_spec_json_round_trip_and_copy():
    prior = joint_prior()
    spec = json.loads(json.dumps(prior.to_dict()))
    entry = spec["parameters"][0]
    assert entry["family"] == "MultivariateNormal" and entry["coordinates"] == ["w0", "w1", "w2"]
    np.testing.assert_allclose(entry["covariance_matrix"], COV, rtol=1e-6)
    assert spec["parameters"][3]["base"]["family"] == "Gamma"
    again = bmsbi.Prior.from_dict(spec)
    assert again == prior and again.names == prior.names
    assert again.unconstrained_dim == prior.unconstrained_dim
    theta = prior.sample(jax.random.key(4), 20)
    np.testing.assert_allclose(again.log_prob(theta), prior.log_prob(theta), rtol=1e-5)
    np.testing.assert_array_equal(again.sample(jax.random.key(5), 7), prior.sample(jax.random.key(5), 7))
    assert bmsbi.Prior(prior) == prior
    assert bmsbi.Prior(prior.entries()) == prior
    other = joint_prior().to_dict()
    other["parameters"][0]["coordinates"] = ["a", "b", "c"]
    assert bmsbi.Prior.from_dict(other) != prior


MVN2 = dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2))


@pytest.mark.parametrize("bad, match", [
    ({"w": (MVN2, ["w0", "w1", "w2"])}, r"distributions\['w'\]: expected 2 coordinate names .*got 3"),
    ({"w": (MVN2, ["w0"])}, r"distributions\['w'\]: expected 2 coordinate names"),
    ({"w": (MVN2, ["a", "b"]), "v": (MVN2, ["b", "c"])}, r"distributions\['v'\]: .*'b' is also used by"),
    ({"a": dist.Normal(), "w": (MVN2, ["a", "b"])}, r"distributions\['w'\]: .*'a' is also used by"),
    ({"w": ("MultivariateNormal", ["a", "b"])}, r"distributions\['w'\]: expected a block \(distribution"),
    ({"w": (MVN2, ["a", "b"], "extra")}, r"distributions\['w'\]: expected a block \(distribution"),
    ({"w": (MVN2, "ab")}, r"distributions\['w'\]: expected a list of non-empty coordinate names"),
    ({"w": [MVN2, ["a", "b"]]}, r"distributions\['w'\]: expected a numpyro Distribution or a"),
    ({"w": (dist.Normal(0.0, 1.0), ["a"])}, r"distributions\['w'\]: expected a multivariate .*got a scalar"),
    ({"w": (dist.MultivariateStudentT(3.0, jnp.zeros(2), jnp.eye(2)), ["a", "b"])},
     r"distributions\['w'\]: expected a multivariate .*got a MultivariateStudentT"),
    ({"w": (dist.Normal(jnp.zeros(2), 1.0), ["a", "b"])}, r"distributions\['w'\]: expected a multivariate"),
    ({"w": (dist.MultivariateNormal(jnp.zeros((3, 2)), jnp.eye(2)), ["a", "b"])},
     r"distributions\['w'\]: expected a block with batch_shape=\(\)"),
    ({"w": MVN2}, r"distributions\['w'\]: expected a scalar distribution .*\(distribution, \[names\]\)"),
    ({"tau": dist.Uniform(1.0, 0.0)}, r"distributions\['tau'\]: expected a support with lower bound < upper"),
    ({"w": (dist.Uniform(jnp.array([0.0, 2.0]), 1.0).to_event(1), ["a", "b"])},
     r"distributions\['w'\]: expected a support with lower bound < upper"),
])
def test_bad_blocks_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        bmsbi.Prior(bad)


def _spec(**block):
    base = {"name": "w", "family": "MultivariateNormal", "coordinates": ["a", "b"],
            "loc": [0.0, 0.0], "covariance_matrix": [[1.0, 0.5], [0.5, 1.0]]}
    return {"parameters": [{k: v for k, v in {**base, **block}.items() if v is not None}]}


@pytest.mark.parametrize("spec, match", [
    (_spec(), None),
    (_spec(covariance_matrix=[[1.0, 0.5], [0.0, 1.0]]), "invalid arguments.*covariance_matrix"),
    (_spec(covariance_matrix=[[1.0, 2.0], [2.0, 1.0]]), "invalid arguments.*covariance_matrix"),
    (_spec(covariance_matrix=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), "expected shapes"),
    (_spec(loc=[0.0, "x"]), r"\['loc'\]: expected a 1-D array of numbers"),
    (_spec(loc=[0.0, float("nan")]), r"\['loc'\]: expected a 1-D array of finite numbers"),
    (_spec(coordinates=None), "needs 'coordinates'"),
    (_spec(coordinates="ab"), r"\['coordinates'\]: expected a non-empty list"),
    (_spec(coordinates=["a", "b", "c"]), "expected shapes"),
    (_spec(family="Dirichlet", loc=None, covariance_matrix=None, concentration=[1.0, -1.0]),
     "invalid arguments.*concentration"),
    (_spec(family="Independent", loc=None, covariance_matrix=None,
           base={"family": "Uniform", "low": [0.0, 1.0], "high": [1.0, 0.5]}), "lower bound < upper"),
    (_spec(family="Independent", loc=None, covariance_matrix=None,
           base={"family": "Normal", "loc": [0.0], "scale": [1.0]}), "arguments of length 2"),
    (_spec(family="Independent", loc=None, covariance_matrix=None, base={"family": "os.system"}),
     r"\['base'\]: expected a dict with a family"),
    (_spec(family="MultivariateStudentT"), "expected a family in"),
])
def test_spec_is_validated_on_load(spec, match):
    if match is None:
        assert bmsbi.Prior.from_dict(spec).names == ("a", "b")
        return
    with pytest.raises(ValueError, match=r"spec\['parameters'\]\[0\] \('w'\).*" + match):
        bmsbi.Prior.from_dict(spec)


def test_spec_refuses_a_repeated_name():
    spec = {"parameters": [{"name": "a", "family": "Normal", "loc": 0.0, "scale": 1.0}] * 2}
    with pytest.raises(ValueError, match=r"spec\['parameters'\]\[1\]: the name 'a' appears twice"):
        bmsbi.Prior.from_dict(spec)


def test_prior_docstring_examples_run():
    import doctest

    from bmsbi import prior as prior_module

    result = doctest.testmod(prior_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8 and result.failed == 0
