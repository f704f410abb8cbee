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


def check_posterior(post, prior, samples):
    assert post.names == prior.names and post.dim == 6
    assert samples.shape == (2, 200, 6)
    assert bool(prior.in_support(samples.reshape(-1, 6)).all())
    lp = np.asarray(post.log_prob(samples[0, :20], X_OBS[0]))
    assert lp.shape == (20,) and np.isfinite(lp).all()
    outside = np.array(samples[0, 0])
    outside[2] += 0.5  # off the simplex
    assert float(post.log_prob(outside, X_OBS[0])) == -np.inf
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
    check_posterior(post, prior, samples)
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
