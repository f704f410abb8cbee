"""Robust inference (``infer(..., robust=True)``, :mod:`bmsbi.robust`): a recording with one
feature no simulation reaches gets the posterior of the features the model can match, the
feature is named as the misfit, and what cannot work is refused.

Model: theta ~ N(0, I_2); x = (theta_1, theta_2, theta_1 + theta_2) + N(0, 0.5^2 I_3).
"""

import warnings

import jax
import numpy as np
import numpyro.distributions as dist
import pytest

import bmsbi
from bmsbi import robust
from bmsbi.estimators import NPE

SIGMA = 0.5


def simulate(theta, rng):
    clean = np.stack([theta[:, 0], theta[:, 1], theta[:, 0] + theta[:, 1]], axis=1)
    return (clean + SIGMA * rng.normal(size=clean.shape)).astype(np.float32)


def analytic(x):
    """Posterior mean and covariance of theta given all three features ``x``."""
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    cov = np.linalg.inv(np.eye(2) + a.T @ a / SIGMA**2)
    return cov @ a.T @ x / SIGMA**2, cov


@pytest.fixture(scope="module")
def post():
    prior = bmsbi.Prior({"t1": dist.Normal(0.0, 1.0), "t2": dist.Normal(0.0, 1.0)})
    theta = np.asarray(prior.sample(jax.random.key(0), 6000))
    bank = bmsbi.Bank(theta, simulate(theta, np.random.default_rng(0)), names=prior.names)
    return NPE(density_estimator="maf").fit(bank, prior=prior, key=jax.random.key(1), progress=False)


def test_match_lets_the_features_that_fit_decide():
    rows = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 9.0]])
    w, ess, misfit = robust.match(np.array([[1.0, 30.0], [2.0, 9.0]]), rows, scale=0.1)
    assert np.argmax(w[0]) == 1 and w[0, 1] > 0.9           # feature 2 is off for every row
    assert np.argmax(w[1]) == 2 and ess[1] < 1.01            # an exact match takes all weight
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert misfit[0, 1] > 20 and abs(misfit[0, 0]) < 0.2     # the misfit is where the data is off


def test_a_corrupted_feature_is_matched_around_and_named(post):
    theta_true = np.array([0.6, -0.4])
    x = simulate(theta_true[None], np.random.default_rng(5))[0]
    bad = x.copy()
    bad[2] += 15.0                                           # ~12 training sds: no simulation is near
    # reference: the analytic posterior of the features the model still matches (1 and 2)
    mean12 = x[:2] / SIGMA**2 / (1 + 1 / SIGMA**2)
    sd12 = np.sqrt(1 / (1 + 1 / SIGMA**2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bmsbi.OutOfDistributionWarning)
        plain = np.asarray(post.sample(jax.random.key(1), bad, 4000))
        res = post.infer(jax.random.key(2), bad[None], 4000, robust=0.1)   # few features: a small scale
    rob = res.samples[0]
    assert np.abs(rob.mean(0) - mean12).max() < 0.3 * sd12, (rob.mean(0), mean12)
    assert np.all(rob.std(0) > 0.9 * sd12) and np.all(rob.std(0) < 1.6 * sd12), rob.std(0)
    # without it, the network extrapolates: its posterior is far from both
    assert np.abs(plain.mean(0) - mean12).max() > 1.0 * sd12, plain.mean(0)
    assert res.flagged[0]
    name, value = res.misfits(0, top=1)[0]
    assert name == "feature 2" and value > 10.0
    assert 1.0 <= res.ess[0] <= len(post.ood.matching)


def test_a_recording_the_model_explains_keeps_its_posterior(post):
    x = simulate(np.array([[-0.5, 0.8]]), np.random.default_rng(7))[0]
    mean, cov = analytic(x.astype(np.float64))
    sd = np.sqrt(np.diag(cov))
    rob = np.asarray(post.sample(jax.random.key(3), x, 4000, robust=0.1))
    assert rob.shape == (4000, 2)
    assert np.all(np.abs(rob.mean(0) - mean) < 0.3 * sd), (rob.mean(0), mean)
    # a mixture over matched simulations: never narrower, not much wider
    assert np.all(rob.std(0) > 0.9 * sd) and np.all(rob.std(0) < 1.6 * sd), (rob.std(0), sd)
    res = post.infer(jax.random.key(3), x[None], 4000, robust=0.1)
    assert not res.flagged[0] and np.all(np.abs(res.misfit[0]) < 0.5)
    # the default scale (chosen for summaries of ~100 features) blurs three features more
    wide = np.asarray(post.sample(jax.random.key(3), x, 4000, robust=True))
    assert np.all(wide.std(0) > rob.std(0))


def test_robust_survives_files_and_falls_back_to_the_reference_rows(post, tmp_path):
    x = simulate(np.array([[0.2, 0.1]]), np.random.default_rng(9))
    path = post.save(tmp_path / "p.bmsbi")
    back = bmsbi.load_posterior(path)
    np.testing.assert_array_equal(back.ood.matching, post.ood.matching)
    a = np.asarray(post.sample(jax.random.key(4), x, 500, robust=0.3))
    b = np.asarray(back.sample(jax.random.key(4), x, 500, robust=0.3))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    back.ood.matching = None                                  # a file written before robust inference
    old = np.asarray(back.sample(jax.random.key(4), x, 4000, robust=True))[0]
    assert np.all(np.abs(old.mean(0) - a[0].mean(0)) < 0.3)


def test_what_cannot_work_is_refused(post):
    x = np.zeros(3, np.float32)
    for bad in (-1.0, 0.0, "yes", np.nan):
        with pytest.raises(ValueError, match="robust: expected False, True or a positive"):
            post.sample(jax.random.key(0), x, 10, robust=bad)
    with pytest.raises(ValueError, match="x_obs: 1 of 1 observations hold NaN"):
        post.sample(jax.random.key(0), np.array([[0.0, np.nan, 0.0]], np.float32), 10, robust=True)
    theta = np.asarray(post.prior.sample(jax.random.key(5), 60))
    small = bmsbi.Bank(theta, simulate(theta, np.random.default_rng(5)), names=post.prior.names)
    few = NPE(max_epochs=2).fit(small, prior=post.prior, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="robust: .*fewer than 100 simulations"):
        few.sample(jax.random.key(0), x, 10, robust=True)
    nle = bmsbi.NLE(max_epochs=2).fit(small, prior=post.prior, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="robust: needs a posterior that samples directly"):
        nle.sample(jax.random.key(0), x, 10, robust=True)
    res = post.infer(jax.random.key(0), x[None], 10)
    with pytest.raises(ValueError, match="row: this Inference holds no misfit"):
        res.misfits(0)
