"""Estimators with a joint prior (named multivariate blocks beside scalar parameters).

Fast: NPE, NLE and NRE train on a prior with a correlated Gaussian block, a Dirichlet
block and a scalar, and their posteriors sample inside the support, evaluate densities,
find MAPs, export ArviZ coordinates and survive save/load (NPE in a new process).
Slow: the 10-D linear-Gaussian acceptance with a correlated ``MultivariateNormal``
prior at 10k simulations against the analytic posterior.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import bmsbi

ROOT = Path(__file__).resolve().parents[1]
COV = np.array([[1.0, 0.7], [0.7, 1.0]], np.float32)


def joint_prior():
    return bmsbi.Prior({
        "w": (dist.MultivariateNormal(jnp.zeros(2), jnp.asarray(COV)), ["w0", "w1"]),
        "p": (dist.Dirichlet(jnp.array([2.0, 2.0, 2.0])), ["p0", "p1", "p2"]),
        "tau": dist.Uniform(1.0, 5.0),
    })


def simulate(theta, seed):
    rng = np.random.default_rng(seed)
    t = np.asarray(theta, np.float64)
    x = np.stack([t[:, 0] + t[:, 1], t[:, 0] - t[:, 1], t[:, 2] - t[:, 4], t[:, 3], t[:, 5] / 5], 1)
    return (x + 0.1 * rng.normal(size=x.shape)).astype(np.float32)


X_OBS = np.array([[0.5, 0.1, 0.2, 0.3, 0.6], [-1.0, 0.3, -0.3, 0.2, 0.4]], np.float32)


@pytest.fixture(scope="module")
def bank():
    prior = joint_prior()
    theta = np.asarray(prior.sample(jax.random.key(0), 2000))
    return prior, bmsbi.Bank(theta, simulate(theta, 1), names=prior.names)


def check_posterior(post, prior, samples, with_map=True):
    assert post.names == prior.names and post.dim == 6
    assert samples.shape == (2, 200, 6)
    assert bool(prior.in_support(samples.reshape(-1, 6)).all())
    lp = np.asarray(post.log_prob(samples[0, :20], X_OBS[0]))
    assert lp.shape == (20,) and np.isfinite(lp).all()
    outside = np.array(samples[0, 0])
    outside[2] += 0.5  # off the simplex
    assert float(post.log_prob(outside, X_OBS[0])) == -np.inf
    if with_map:
        theta_map = np.asarray(post.map(X_OBS, num_samples=64, num_steps=20))
        assert theta_map.shape == (2, 6) and bool(prior.in_support(theta_map).all())


@pytest.fixture(scope="module")
def npe_post(bank):
    prior, b = bank
    return bmsbi.NPE(hidden=16, num_layers=2, max_epochs=5).fit(
        b, prior=prior, key=jax.random.key(2), progress=False)


def test_npe_with_a_joint_prior(bank, npe_post):
    prior, _ = bank
    assert npe_post.model.flow.shape == (prior.unconstrained_dim,)  # the flow lives in 5-D
    samples = np.asarray(npe_post.sample(jax.random.key(3), X_OBS, 200))
    check_posterior(npe_post, prior, samples)
    idata = npe_post.to_arviz(jax.random.key(4), X_OBS[0], num_samples=50)
    assert list(idata.posterior.data_vars) == list(prior.names)
    assert list(idata.prior.data_vars) == list(prior.names)
    prior_p = np.stack([idata.prior[n].values[0] for n in ("p0", "p1", "p2")], -1)
    np.testing.assert_allclose(prior_p.sum(-1), 1.0, atol=1e-5)
    # Diagnostics that draw from the prior and rank per coordinate.
    from bmsbi import diagnostics

    theta = np.asarray(prior.sample(jax.random.key(8), 20))
    x = simulate(theta, 9)
    ranks = diagnostics.sbc_ranks(npe_post, theta, x, key=jax.random.key(10), num_samples=50)
    assert ranks.shape == (20, 6)
    cov = diagnostics.expected_coverage(npe_post, theta, x, key=jax.random.key(11), num_samples=50)
    assert np.isfinite(np.asarray(cov.coverage)).all()
    zs = diagnostics.zscore_shrinkage(npe_post, theta, x, key=jax.random.key(12), num_samples=50,
                                      num_prior_samples=500)
    assert zs.names == prior.names and np.isfinite(zs.shrinkage).all()


def test_simulate_bank_with_a_joint_prior():
    prior = joint_prior()

    def simulator(theta, key):
        return theta[:3] + 0.1 * jax.random.normal(key, (3,))

    bank = bmsbi.simulate_bank(simulator, prior, 64, key=jax.random.key(0), progress=False)
    assert bank.theta.shape == (64, 6) and tuple(bank.names) == prior.names
    assert bool(prior.in_support(bank.theta).all())


_RELOAD = textwrap.dedent("""
    import sys, json, jax, numpy as np, bmsbi
    post = bmsbi.load_posterior(sys.argv[1])
    x = np.asarray(json.loads(sys.argv[2]), np.float32)
    s = post.sample(jax.random.key(7), x, 100)
    lp = post.log_prob(np.asarray(s), x)
    print("RESULT" + json.dumps({"s": np.asarray(s).tolist(), "lp": np.asarray(lp).tolist(),
                                 "prior": post.prior.to_dict(), "names": list(post.names),
                                 "unconstrained_dim": post.prior.unconstrained_dim}))
""")


def test_npe_with_a_joint_prior_survives_save_load_in_a_new_process(bank, npe_post, tmp_path):
    prior, _ = bank
    path = npe_post.save(tmp_path / "joint.bmsbi")
    proc = subprocess.run([sys.executable, "-c", _RELOAD, str(path), json.dumps(X_OBS[0].tolist())],
                          capture_output=True, text=True, timeout=600, cwd=str(ROOT),
                          env=dict(os.environ, JAX_PLATFORMS="cpu",
                                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][0][6:])
    assert bmsbi.Prior.from_dict(out["prior"]) == prior
    assert out["names"] == list(prior.names) and out["unconstrained_dim"] == 5
    here = np.asarray(npe_post.sample(jax.random.key(7), X_OBS[0], 100))
    np.testing.assert_array_equal(np.asarray(out["s"], np.float32), here)
    np.testing.assert_allclose(out["lp"], np.asarray(npe_post.log_prob(here, X_OBS[0])), rtol=1e-5)


@pytest.mark.parametrize("name", ["NLE", "NRE"])
def test_nle_and_nre_with_a_joint_prior(bank, name, tmp_path):
    prior, b = bank
    est = getattr(bmsbi, name)(hidden=16, max_epochs=3, num_chains=2, num_warmup=50,
                               **({"num_layers": 2} if name == "NLE" else {}))
    post = est.fit(b, prior=prior, key=jax.random.key(5), progress=False)
    samples = np.asarray(post.sample(jax.random.key(6), X_OBS, 200))
    check_posterior(post, prior, samples, with_map=name == "NLE")  # MAP's code is shared; once is enough
    again = bmsbi.load_posterior(post.save(tmp_path / f"{name}.bmsbi"))
    assert again.prior == prior
    np.testing.assert_allclose(again.log_prob(samples[0, :20], X_OBS[0]),
                               post.log_prob(samples[0, :20], X_OBS[0]), rtol=1e-5)


def test_docs_joint_prior_example_runs():
    text = (ROOT / "docs" / "concepts.md").read_text()
    section = text.split("#### Correlated and joint priors", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)
    scope = {}
    exec(compile(code, "concepts.md", "exec"), scope)
    prior, theta = scope["prior"], np.asarray(scope["theta"])
    assert prior.names == ("w0", "w1", "w2", "mix_a", "mix_b", "mix_c", "tau")
    assert prior.dim == 7 and prior.unconstrained_dim == 6 and theta.shape == (1000, 7)
    np.testing.assert_allclose(theta[:, 3:6].sum(1), 1.0, atol=1e-5)


# ------------------------------------------------------------------ acceptance (slow)
DIM, NOISE_VAR = 10, 0.1


def correlated_gaussian_problem():
    """theta ~ N(m, C) with C_ij = s_i s_j 0.8^|i-j|, x ~ N(theta, 0.1 I): analytic posterior."""
    idx = np.arange(DIM)
    scales = 0.3 + 0.02 * idx
    cov = np.outer(scales, scales) * 0.8 ** np.abs(idx[:, None] - idx[None, :])
    mean = np.linspace(-0.5, 0.5, DIM)
    prior = bmsbi.Prior({"w": (dist.MultivariateNormal(jnp.asarray(mean, jnp.float32),
                                                       jnp.asarray(cov, jnp.float32)),
                               [f"w{i}" for i in range(DIM)])})
    return prior, mean, cov


def analytic_posterior(x_obs, mean, cov):
    prec = np.linalg.inv(cov)
    post_cov = np.linalg.inv(prec + np.eye(DIM) / NOISE_VAR)
    post_mean = (post_cov @ (prec @ mean[:, None] + x_obs.T / NOISE_VAR)).T
    return post_mean, np.sqrt(np.diag(post_cov))


def least_squares_floor(theta, x, x_obs, post_mean, post_sd):
    """Mean error (posterior sd) of the exact least-squares linear-Gaussian posterior fit to the
    bank: what any estimator that learns the posterior's mean from these 10k pairs is up against."""
    design = np.c_[x, np.ones(len(x))]
    coef, *_ = np.linalg.lstsq(design, np.asarray(theta, np.float64), rcond=None)
    fitted = np.c_[x_obs, np.ones(len(x_obs))] @ coef
    return (np.abs(fitted - post_mean) / post_sd).max()


# NPE for this problem: the full-covariance linear start (the flow starts as the
# least-squares Gaussian posterior with its correlations) and an ensemble of five networks.
# Measured on this bank (benchmarks/RESULTS.md, "Joint priors"): the default NPE() is off by
# 0.15-0.17 posterior sd on the first observation (Mahalanobis distance 4.0 under the prior
# predictive), where the least-squares posterior from the same bank is off by 0.086.
ESTIMATORS = {"NPE": lambda: bmsbi.NPE(linear_init="full", ensemble=5), "NLE": lambda: bmsbi.NLE()}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["NPE", "NLE"])
def test_correlated_gaussian_prior_10d_at_10k(name, tmp_path):
    # Issue 14's acceptance: 10-D linear-Gaussian with a correlated MultivariateNormal prior,
    # 10k simulations; posterior means within 0.1 posterior sd of the analytic ones and sds
    # within 10 % for three prior-predictive observations. NLE at its defaults (4 chains,
    # 300 warmup steps) with 12,000 draws per observation: with 4,000 the chains' Monte
    # Carlo error alone is about 0.03 sd. NPE's draws are independent and cheap: 50,000
    # (Monte Carlo error of a mean 0.0045 sd) so the test reads the posterior, not the draws.
    prior, mean, cov = correlated_gaussian_problem()
    theta = np.asarray(prior.sample(jax.random.key(0), 10_000))
    x = (theta + NOISE_VAR ** 0.5 * np.random.default_rng(1).normal(size=theta.shape)).astype(np.float32)
    th_obs = np.asarray(prior.sample(jax.random.key(5), 3))
    noise = NOISE_VAR ** 0.5 * np.random.default_rng(6).normal(size=th_obs.shape)
    x_obs = (th_obs + noise).astype(np.float32)
    post_mean, post_sd = analytic_posterior(x_obs, mean, cov)
    post = ESTIMATORS[name]().fit(bmsbi.Bank(theta, x, names=prior.names), prior=prior,
                                      key=jax.random.key(2), progress=False)
    samples = np.asarray(post.sample(jax.random.key(3), x_obs, 50_000 if name == "NPE" else 12_000))
    mean_err = np.abs(samples.mean(axis=1) - post_mean) / post_sd
    sd_dev = np.abs(samples.std(axis=1) / post_sd - 1)
    report = (f"{name}: max |mean error| {mean_err.max():.3f} posterior sd (per observation "
              f"{np.round(mean_err.max(1), 3)}; least-squares posterior from the bank "
              f"{least_squares_floor(theta, x, x_obs, post_mean, post_sd):.3f}), max |sd ratio - 1| "
              f"{sd_dev.max():.3f}")
    print(report)
    assert mean_err.max() < 0.1, report
    assert sd_dev.max() < 0.1, report
    # The prior survives the posterior file: same spec, same density.
    again = bmsbi.load_posterior(post.save(tmp_path / f"{name}.bmsbi"))
    assert again.prior == prior
