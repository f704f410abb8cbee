"""Diagnostics on an analytic Gaussian-linear task: a calibrated NPE passes SBC and
coverage, a deliberately overconfident version of it fails both, z-score / shrinkage
and C2ST give the analytic numbers, the ECDF band and the uniformity tests are
calibrated themselves, plots are written, bad input is refused.

Task: theta ~ N(0, I_2), x ~ N(theta, I_2). Posterior N(x / 2, I / 2): shrinkage 0.5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import bmsbi
from bmsbi import diagnostics as D
from bmsbi import plotting as P
from bmsbi.posterior import Posterior

M, L = 400, 500            # held-out simulations, posterior draws per simulation
SHRINK = 0.5               # scale of the overconfident posterior
X_OBS = np.array([0.4, -1.0], np.float32)


def simulator(theta, key):
    return theta + jax.random.normal(key, theta.shape)


@pytest.fixture(scope="module")
def prior():
    return bmsbi.Prior({f"t{i}": dist.Normal(0.0, 1.0) for i in range(2)})


@pytest.fixture(scope="module")
def post(prior):
    bank = bmsbi.simulate_bank(simulator, prior, 5000, key=jax.random.key(0), progress=False)
    # An affine MAF represents this posterior exactly; 2 small layers train in ~20 s.
    npe = bmsbi.NPE(density_estimator="maf", hidden=32, num_layers=2, max_epochs=60)
    return npe.fit(bank, prior=prior, key=jax.random.key(1), progress=False)


@pytest.fixture(scope="module")
def heldout(prior):
    return bmsbi.simulate_bank(simulator, prior, M, key=jax.random.key(7), progress=False)


class Overconfident(Posterior):
    """The trained posterior scaled down by ``factor`` around its mean (a "scaled-down flow").

    Samples ``c + f (s - c)`` and the exact density of that pushforward,
    ``q((t - c) / f + c) / f^d``, with ``c`` the base posterior mean (fixed-key draws).
    """

    def __init__(self, base, factor):
        super().__init__(prior=base.prior, x_shape=base.x_shape, config=base.config)
        self.base, self.factor = base, factor

    def _params(self):
        return self.base._params()

    def _center(self, params, x):
        return self.base._sample_batch(params, jax.random.key(123), x, 256).mean(1)[:, None]

    def _sample_batch(self, params, key, x, n):
        c = self._center(params, x)
        return c + self.factor * (self.base._sample_batch(params, key, x, n) - c)

    def _log_prob_batch(self, params, theta, x):
        c = self._center(params, x)
        lp = self.base._log_prob_batch(params, c + (theta - c) / self.factor, x)
        return lp - theta.shape[-1] * jnp.log(self.factor)


@pytest.fixture(scope="module")
def shrunk(post):
    return Overconfident(post, SHRINK)


_cache = {}


@pytest.fixture(scope="module")
def results(post, shrunk, heldout):
    """Every diagnostic once per posterior (each one compiled call over all M simulations)."""
    def run(name):
        if name not in _cache:
            p = {"npe": post, "shrunk": shrunk}[name]
            th, x = heldout.theta, heldout.x
            _cache[name] = {
                "ranks": D.sbc_ranks(p, th, x, key=2, num_samples=L),
                "hpd": D.expected_coverage(p, th, x, key=3, num_samples=L),
                "tarp": D.expected_coverage(p, th, x, key=4, num_samples=L, method="tarp"),
                "zs": D.zscore_shrinkage(p, th, x, key=2, num_samples=L),
            }
        return _cache[name]
    return run


# ------------------------------------------------------------------- acceptance
def test_calibrated_npe_coverage_within_0p1_of_nominal(results):
    r = results("npe")
    for method in ("hpd", "tarp"):
        cov = r[method]
        assert cov.method == method and cov.coverage.shape == cov.levels.shape == (19,)
        assert cov.credibility.shape == (M,)
        assert cov.max_deviation < 0.1, (method, np.round(cov.coverage - cov.levels, 3))
    # HPD coverage of this posterior is even inside the calibrated binomial band almost everywhere.
    lo, hi = r["hpd"].band(0.99)
    assert np.mean((r["hpd"].coverage >= lo) & (r["hpd"].coverage <= hi)) >= 0.9


def test_calibrated_npe_sbc_ranks_pass_uniformity(results):
    ranks = results("npe")["ranks"]
    assert ranks.shape == (M, 2) and ranks.dtype == np.int64
    assert ranks.min() >= 0 and ranks.max() <= L
    for method in ("chi2", "ks", "ecdf"):
        p = D.sbc_uniformity(ranks, L, method=method)
        assert p.shape == (2,)
        assert np.all(p > 0.01), (method, p)


def test_overconfident_posterior_detected_by_coverage_and_sbc(results):
    r = results("shrunk")
    cov = r["hpd"]
    upper = cov.levels >= 0.5
    assert np.all(cov.coverage[upper] < cov.levels[upper] - 0.15), cov.coverage
    # Analytic for an exact 2-D Gaussian posterior shrunk by 1/2: coverage(g) = 1 - (1 - g)^(1/4).
    np.testing.assert_allclose(cov.coverage, 1 - (1 - cov.levels) ** 0.25, atol=0.1)
    assert cov.max_deviation > 0.3
    tarp = r["tarp"]
    assert tarp.max_deviation > 0.15 and np.all(tarp.coverage[-5:] < tarp.levels[-5:] - 0.1)
    p_chi2 = D.sbc_uniformity(r["ranks"], L)
    assert np.all(p_chi2 < 1e-10), p_chi2
    assert np.all(D.sbc_uniformity(r["ranks"], L, method="ecdf") < 1e-3)
    # Overconfidence shows as too many extreme ranks (a U-shaped histogram).
    extreme = np.mean((r["ranks"] < 0.05 * L) | (r["ranks"] > 0.95 * L))
    assert extreme > 0.25


def test_zscore_and_shrinkage_match_analytic(results):
    zs = results("npe")["zs"]
    assert zs.zscore.shape == zs.shrinkage.shape == (M, 2) and zs.names == ("t0", "t1")
    np.testing.assert_allclose(zs.prior_var, 1.0, atol=0.05)
    # Posterior var 1/2 of a prior var 1: shrinkage 0.5; calibrated z-scores are N(0, 1).
    np.testing.assert_allclose(zs.shrinkage.mean(0), 0.5, atol=0.05)
    np.testing.assert_allclose(zs.posterior_sd.mean(0), np.sqrt(0.5), rtol=0.05)
    assert np.all(np.abs(zs.zscore.mean(0)) < 0.15)
    np.testing.assert_allclose(zs.zscore.std(0), 1.0, atol=0.15)
    bad = results("shrunk")["zs"]
    np.testing.assert_allclose(bad.shrinkage.mean(0), 1 - SHRINK**2 * 0.5, atol=0.05)
    assert np.all(bad.zscore.std(0) > 1.6)


def test_c2st_of_npe_against_analytic_posterior_is_near_half(post):
    samples = np.asarray(post.sample(jax.random.key(9), X_OBS, 1000))
    exact = X_OBS / 2 + np.sqrt(0.5) * np.random.default_rng(0).normal(size=(1000, 2))
    assert D.c2st(exact, samples) < 0.6


class Unnormalised(Posterior):
    """The trained posterior with its log density shifted by a constant, as an MCMC posterior's."""

    normalized = False

    def __init__(self, base, shift):
        super().__init__(prior=base.prior, x_shape=base.x_shape, config=base.config)
        self.base, self.shift = base, shift

    def _params(self):
        return self.base._params()

    def _sample_batch(self, params, key, x, n):
        return self.base._sample_batch(params, key, x, n)

    def _log_prob_batch(self, params, theta, x):
        return self.base._log_prob_batch(params, theta, x) - self.shift


def test_hpd_coverage_ignores_the_normalising_constant(post, heldout, results):
    """An MCMC-style unnormalised log_prob (constant shift) gives the same HPD coverage."""
    shifted = D.expected_coverage(Unnormalised(post, 321.0), heldout.theta, heldout.x, key=3,
                                  num_samples=L)
    base = results("npe")["hpd"]
    # Equal up to float32 rounding of the shifted densities (a near-tie may flip).
    np.testing.assert_allclose(shifted.credibility, base.credibility, atol=3 / L)
    np.testing.assert_allclose(shifted.coverage, base.coverage, atol=0.01)


# ------------------------------------------------------------ the tests themselves
def test_ecdf_band_is_simultaneous_and_uniformity_tests_are_calibrated():
    band = D.sbc_ecdf_band(M, L)
    rng = np.random.default_rng(3)
    null = rng.integers(0, L + 1, size=(M, 1000))
    cut = np.round(band["points"] * (L + 1)).astype(int)
    ecdf = D._ecdf_at(null, cut)
    inside = np.all((ecdf >= band["lower"]) & (ecdf <= band["upper"]), axis=1)
    assert 0.93 <= inside.mean() <= 0.97, inside.mean()
    for method in ("chi2", "ks", "ecdf"):
        rate = np.mean(D.sbc_uniformity(null, L, method=method) < 0.05)
        assert 0.03 <= rate <= 0.07, (method, rate)


# ----------------------------------------------------------- posterior predictive
@pytest.fixture(scope="module")
def predictive(post):
    return D.posterior_predictive(post, simulator, X_OBS, key=6, n=1000, return_theta=True)


def test_posterior_predictive_matches_the_analytic_predictive(post, predictive):
    x_pred, th = predictive
    assert x_pred.shape == (1000, 2) and th.shape == (1000, 2)
    # Predictive: N(x/2, (1/2 + 1) I); each simulation is paired with its draw (x - theta ~ N(0, I)).
    np.testing.assert_allclose(x_pred.mean(0), X_OBS / 2, atol=0.15)
    np.testing.assert_allclose(x_pred.var(0), 1.5, atol=0.25)
    np.testing.assert_allclose((x_pred - th).std(0), 1.0, atol=0.1)
    again = D.posterior_predictive(post, simulator, X_OBS, key=6, theta=th)
    np.testing.assert_array_equal(again, x_pred)
    batch = D.posterior_predictive(post, simulator, np.stack([X_OBS, -X_OBS]), key=0,
                                   theta=np.stack([th[:7], th[7:14]]))
    assert batch.shape == (2, 7, 2)


# ------------------------------------------------------------------------- plots
def test_plots_return_figures_and_write_png(results, post, predictive, tmp_path):
    from matplotlib.figure import Figure

    r, bad = results("npe"), results("shrunk")
    x_pred, x_obs = predictive[0], X_OBS
    figs = {
        "sbc": P.plot_sbc_ecdf(bad["ranks"], L, names=post.names, path=tmp_path / "sbc.png"),
        "coverage": P.plot_coverage([r["hpd"], bad["hpd"]], labels=["NPE", "overconfident"],
                                    path=tmp_path / "coverage.png"),
        "zscore": P.plot_zscore_shrinkage(r["zs"], path=tmp_path / "zscore.png"),
        "ppc": P.plot_posterior_predictive(x_pred, x_obs, feature_names=["mean", "var"],
                                           path=tmp_path / "ppc.png"),
    }
    for name, fig in figs.items():
        assert isinstance(fig, Figure)
        data = (tmp_path / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert len(figs["sbc"].axes) == 2 and "t0" in figs["sbc"].axes[0].get_title()
    assert P.plot_coverage(r["tarp"]).axes  # no path: nothing written, figure returned


# ---------------------------------------------------------------------- bad input
def test_bad_input_names_the_argument(post, heldout):
    th, x = heldout.theta[:5], heldout.x[:5]
    with pytest.raises(ValueError, match=r"theta: expected shape \(m, 2\)"):
        D.sbc_ranks(post, th[:, :1], x, key=0)
    with pytest.raises(ValueError, match=r"x: expected shape \(5, 2\)"):
        D.expected_coverage(post, th, x[:4], key=0)
    with pytest.raises(ValueError, match="theta"):
        D.zscore_shrinkage(post, th[0], x[0], key=0)
    with pytest.raises(ValueError, match="num_samples: expected a positive int, got 0"):
        D.sbc_ranks(post, th, x, key=0, num_samples=0)
    with pytest.raises(ValueError, match="num_samples"):
        D.expected_coverage(post, th, x, key=0, num_samples=-3)
    with pytest.raises(ValueError, match=r"method: expected one of \('hpd', 'tarp'\), got 'box'"):
        D.expected_coverage(post, th, x, key=0, method="box")
    with pytest.raises(ValueError, match="method"):
        D.sbc_uniformity(np.zeros((10, 2), int), 10, method="anderson")
    with pytest.raises(ValueError, match="levels"):
        D.expected_coverage(post, th, x, key=0, levels=[0.5, 1.0])
    with pytest.raises(ValueError, match="references"):
        D.expected_coverage(post, th, x, key=0, method="tarp", references=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"ranks: expected values in \[0, num_samples=10\]"):
        D.sbc_uniformity(np.full((10, 2), 11), 10)
    with pytest.raises(ValueError, match=r"ranks: expected shape \(m, d\)"):
        P.plot_sbc_ecdf(np.zeros(10, int), 10)
    with pytest.raises(ValueError, match="x_obs"):
        D.posterior_predictive(post, simulator, np.zeros(3), key=0)
    with pytest.raises(ValueError, match="simulator: expected a callable"):
        D.posterior_predictive(post, "sim", np.zeros(2), key=0)
    with pytest.raises(ValueError, match="simulator: returns x of shape"):
        D.posterior_predictive(post, lambda t, k: jnp.zeros(3), np.zeros(2), key=0,
                               theta=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"theta: expected shape \(n, 2\)"):
        D.posterior_predictive(post, simulator, np.zeros(2), key=0, theta=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="posterior: expected a bmsbi posterior"):
        D.sbc_ranks("post", th, x, key=0)
    with pytest.raises(ValueError, match="feature_names: expected 2 names"):
        P.plot_posterior_predictive(np.zeros((5, 2)), np.zeros(2), feature_names=["a"])


def test_coverage_from_draws_matches_expected_coverage_and_checks_its_input(post, heldout):
    """The draws-based entry point gives expected_coverage's numbers for the same draws."""
    th, x = np.asarray(heldout.theta), np.asarray(heldout.x)
    k_post, k_ref = jax.random.split(jax.random.key(3))
    draws = post.sample(k_post, x, L)
    lp_d = post.log_prob(draws, x)
    lp_t = post.log_prob(th[:, None, :], x)[:, 0]
    for method in ("hpd", "tarp"):
        ref = D.expected_coverage(post, th, x, key=3, num_samples=L, method=method)
        got = D.coverage_from_draws(th, draws, method=method, log_prob_draws=lp_d,
                                    log_prob_theta=lp_t, prior=post.prior, key=k_ref)
        np.testing.assert_array_equal(got.credibility, ref.credibility)
    with pytest.raises(ValueError, match="log_prob_draws"):
        D.coverage_from_draws(th, draws, method="hpd")
    with pytest.raises(ValueError, match="prior"):
        D.coverage_from_draws(th, draws, method="tarp")
    with pytest.raises(ValueError, match="draws"):
        D.coverage_from_draws(th, draws[:, :, :1], method="tarp", prior=post.prior)
