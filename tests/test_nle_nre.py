"""NLE and NRE recover an analytic Gaussian-linear posterior (mean within 0.1 posterior sd)."""

import jax
import numpy as np
import numpyro.distributions as dist
import pytest

import bmsbi

D = 2
PRIOR_VAR, NOISE_VAR = 0.1, 0.1
POST_SD = np.sqrt(1.0 / (1.0 / PRIOR_VAR + 1.0 / NOISE_VAR))  # 0.2236


def gaussian_linear_bank(n, seed=0):
    prior = bmsbi.Prior({f"theta{i}": dist.Normal(0.0, PRIOR_VAR ** 0.5) for i in range(D)})
    theta = prior.sample(jax.random.key(seed), n)
    x = theta + NOISE_VAR ** 0.5 * jax.random.normal(jax.random.key(seed + 1), theta.shape)
    return prior, bmsbi.Bank(np.asarray(theta), np.asarray(x))


X_OBS = np.array([[0.3, -0.2], [-0.5, 0.1], [0.0, 0.6]], np.float32)


@pytest.fixture(scope="module", params=["NLE", "NRE"])
def fitted(request):
    prior, bank = gaussian_linear_bank(10_000)
    est = getattr(bmsbi, request.param)(num_warmup=200)
    post = est.fit(bank, prior=prior, key=jax.random.key(3), progress=False)
    samples = np.asarray(post.sample(jax.random.key(4), X_OBS, 4000))
    return request.param, post, samples


def test_posterior_mean_and_sd_match_analytic(fitted):
    name, post, samples = fitted
    assert samples.shape == (3, 4000, D)
    mean_err = np.abs(samples.mean(axis=1) - X_OBS * PRIOR_VAR / (PRIOR_VAR + NOISE_VAR)) / POST_SD
    assert mean_err.max() < 0.1, f"{name}: mean error {mean_err.max():.3f} posterior sd"
    sd_ratio = samples.std(axis=1) / POST_SD
    assert np.all(np.abs(sd_ratio - 1) < 0.15), f"{name}: sd ratio {sd_ratio}"
    assert not post.normalized


def test_log_prob_is_unnormalised_but_ranks_correctly(fitted):
    name, post, _ = fitted
    x = X_OBS[0]
    mode = x / 2
    far = mode + 3 * POST_SD
    lp = np.asarray(post.log_prob(np.stack([mode, far]), x))
    # Analytic log density difference between the mode and a point 3 sd away in each of D dims.
    expected = 0.5 * D * 9.0
    assert abs((lp[0] - lp[1]) - expected) < 0.25 * expected, f"{name}: {lp}"
    assert np.isfinite(lp).all()


def test_save_load_gives_the_same_density(fitted, tmp_path):
    name, post, _ = fitted
    path = tmp_path / f"{name}.bmsbi"
    post.save(path)
    again = bmsbi.load_posterior(path)
    assert type(again).__name__ == "MCMCPosterior" and again.config == post.config
    assert again.mcmc == post.mcmc
    # Same weights and standardisation: the same unnormalised density (NUTS then samples
    # identically for the same key; compiling it twice is left to the slow tests).
    theta = np.random.default_rng(0).normal(0.0, 0.3, (50, D)).astype(np.float32)
    np.testing.assert_allclose(again.log_prob(theta, X_OBS), post.log_prob(theta, X_OBS), rtol=1e-5)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="num_chains: expected a positive int"):
        bmsbi.NLE(num_chains=0)
    with pytest.raises(ValueError, match="hidden: expected a positive int"):
        bmsbi.NRE(hidden=-3)
    prior, bank = gaussian_linear_bank(100)
    wrong = bmsbi.Prior.uniform([0.0], [1.0])
    with pytest.raises(ValueError, match="bank: theta has dimension 2 but the prior has dimension 1"):
        bmsbi.NLE(max_epochs=1).fit(bank, prior=wrong, key=jax.random.key(0), progress=False)
    del prior


@pytest.mark.slow
@pytest.mark.parametrize("name", ["NLE", "NRE"])
def test_gaussian_linear_10d_at_10k(name):
    # The 10-D line for the likelihood and ratio estimators: theta ~ N(0, 0.1 I),
    # x ~ N(theta, 0.1 I), 10k simulations; posterior mean within 0.1 posterior sd.
    dim = 10
    prior = bmsbi.Prior({f"theta{i}": dist.Normal(0.0, PRIOR_VAR ** 0.5) for i in range(dim)})
    theta = np.asarray(prior.sample(jax.random.key(20), 10_000))
    x = theta + NOISE_VAR ** 0.5 * np.random.default_rng(21).normal(size=theta.shape)
    post = getattr(bmsbi, name)().fit(bmsbi.Bank(theta, x.astype(np.float32)), prior=prior,
                                      key=jax.random.key(22), progress=False)
    x_obs = (np.random.default_rng(23).normal(size=(3, dim))
             * np.sqrt(PRIOR_VAR + NOISE_VAR)).astype(np.float32)
    samples = np.asarray(post.sample(jax.random.key(24), x_obs, 4000))
    mean_err = np.abs(samples.mean(axis=1) - x_obs * PRIOR_VAR / (PRIOR_VAR + NOISE_VAR)) / POST_SD
    assert mean_err.max() < 0.1, f"{name}: mean error per dimension {np.round(mean_err, 3)}"
    sd_ratio = samples.std(axis=1) / POST_SD
    assert np.all(np.abs(sd_ratio - 1) < 0.15), f"{name}: sd ratio {np.round(sd_ratio, 3)}"


def test_gaussian_log_ratio_start_is_the_exact_log_ratio():
    # On a linear-Gaussian bank the NRE start equals log N(x; A t + b, S) - log N(x; m, C)
    # of the generating model up to the sampling error of 200k rows (about 0.03 here; the
    # log ratios themselves reach 20; a missing or wrong evidence term is off by > 1).
    from scipy.stats import multivariate_normal as mvn

    from bmsbi.estimators.nre import _gaussian_log_ratio

    rng = np.random.default_rng(5)
    d, dx, n = 2, 3, 200_000
    A, b = rng.normal(size=(dx, d)), rng.normal(size=dx)
    L = rng.normal(size=(dx, dx)) * 0.3 + np.eye(dx)
    S = L @ L.T
    t_eval = rng.normal(size=(50, d))
    x_eval = rng.normal(size=(50, d)) @ A.T + b + rng.multivariate_normal(np.zeros(dx), S, size=50)
    theta = rng.normal(size=(n, d))
    x = theta @ A.T + b + rng.multivariate_normal(np.zeros(dx), S, size=n)
    terms = _gaussian_log_ratio(theta, x, ridge=0.0)
    quad = lambda u, M, v: np.einsum("ni,ij,nj->n", u, M, v)  # noqa: E731
    fitted = (quad(t_eval, terms["bilinear"], x_eval) + quad(t_eval, terms["quadratic"], t_eval)
              + t_eval @ terms["linear"] + quad(x_eval, terms["x_quadratic"], x_eval)
              + x_eval @ terms["x_linear"] + terms["offset"])
    exact = np.array([mvn.logpdf(xe, A @ te + b, S) - mvn.logpdf(xe, b, A @ A.T + S)
                      for te, xe in zip(t_eval, x_eval)])
    assert np.abs(exact).max() > 5
    assert np.max(np.abs(fitted - exact)) < 0.1, np.max(np.abs(fitted - exact))
