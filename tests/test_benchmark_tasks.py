"""Checks of the benchmark tasks' exact reference posteriors and of C2ST.

The two-moons reference sampler inverts the simulator; here it is compared with a
posterior computed on a fine grid from the likelihood density, which shares none of
its code path.
"""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import tasks  # noqa: E402

pytest.importorskip("sklearn")
from bmsbi.diagnostics import c2st  # noqa: E402


def _grid_posterior(x_obs, step=0.002):
    """Two-moons posterior on a grid over the prior box: (centres, weights (g, g))."""
    centres = np.arange(-1.0 + step / 2, 1.0, step)
    t0, t1 = np.meshgrid(centres, centres, indexing="ij")
    theta = np.stack([t0, t1], axis=-1)
    log_lik = tasks.two_moons_log_likelihood(theta, x_obs)
    w = np.exp(log_lik - log_lik.max())
    return centres, w / w.sum()


# Observation 5 has x0 > 0.25 (theta0 + theta1 near 0): there about 40 % of the noise
# draws have no preimage and must be rejected; skipping that rejection (as sbibm's
# sampler does) widens both marginals by 0.013 and fails the sd check below.
@pytest.mark.parametrize("index", [1, 2, 5])
def test_two_moons_reference_matches_grid_posterior(index):
    _, x_obs = tasks.observation("two_moons", index)
    centres, w = _grid_posterior(x_obs)
    ref = tasks.TASKS["two_moons"].reference_posterior(x_obs, 100_000, seed=index)
    assert ref.shape == (100_000, 2)
    assert np.all(np.abs(ref) <= 1.0)

    grid_mean = np.array([(w.sum(1) * centres).sum(), (w.sum(0) * centres).sum()])
    grid_sd = np.sqrt(
        [(w.sum(1) * centres**2).sum() - grid_mean[0] ** 2,
         (w.sum(0) * centres**2).sum() - grid_mean[1] ** 2]
    )
    # Monte Carlo error of the mean is sd / sqrt(1e5) < 2e-3, of the sd < 1e-3; the
    # grid's discretisation error is smaller still.
    np.testing.assert_allclose(ref.mean(0), grid_mean, atol=0.01)
    np.testing.assert_allclose(ref.std(0), grid_sd, atol=0.004)

    # Marginal histograms on 40 bins: the grid's mass per bin vs the sample fraction.
    edges = np.linspace(-1.0, 1.0, 41)
    for axis in (0, 1):
        marginal = w.sum(axis=1 - axis)
        grid_mass = np.histogram(centres, bins=edges, weights=marginal)[0]
        sample_mass = np.histogram(ref[:, axis], bins=edges)[0] / ref.shape[0]
        assert np.max(np.abs(grid_mass - sample_mass)) < 0.01

    # The two moons of the posterior: each sign choice carries half the mass where
    # both preimages lie in the box, so both halves must be populated.
    z0 = (ref[:, 0] + ref[:, 1]) / np.sqrt(2.0)
    grid_z0_pos = w[(centres[:, None] + centres[None, :]) > 0].sum()
    assert abs(np.mean(z0 > 0) - grid_z0_pos) < 0.01


def test_two_moons_likelihood_is_the_simulator_density():
    # Histogram of simulated x for one theta vs the likelihood integrated over bins.
    task = tasks.TASKS["two_moons"]
    theta = np.array([0.3, -0.5])
    keys = jax.random.split(jax.random.key(0), 200_000)
    x = np.asarray(jax.vmap(task.simulate, in_axes=(None, 0))(theta, keys))
    step = 0.002
    lo, hi = x.min(0) - 0.01, x.max(0) + 0.01
    g0 = np.arange(lo[0], hi[0], step)
    g1 = np.arange(lo[1], hi[1], step)
    xx = np.stack(np.meshgrid(g0, g1, indexing="ij"), axis=-1)
    dens = np.exp(tasks.two_moons_log_likelihood(theta, xx))
    assert abs(dens.sum() * step**2 - 1.0) < 0.01  # a normalised density
    # Mass of the upper half (x1 above the moon's centre line) is 1/2 by symmetry of a.
    z1 = (theta[1] - theta[0]) / np.sqrt(2.0)
    upper = dens[:, g1 > z1].sum() * step**2
    assert abs(upper - np.mean(x[:, 1] > z1)) < 0.01


def test_observations_are_fixed_and_in_support():
    for name, task in tasks.TASKS.items():
        theta_a, x_a = tasks.observations(name, 5)
        theta_b, x_b = tasks.observations(task, 5)
        np.testing.assert_array_equal(x_a, x_b)
        assert theta_a.shape == (5, task.dim_theta) and x_a.shape == (5, task.dim_x)
        assert len({tuple(row) for row in x_a}) == 5
    theta, _ = tasks.observations("two_moons", 10)
    assert np.all(np.abs(theta) <= 1.0)


def test_gaussian_linear_reference_moments():
    task = tasks.TASKS["gaussian_linear"]
    _, x_obs = tasks.observation(task, 1)
    ref = task.reference_posterior(x_obs, 200_000, seed=0)
    assert ref.shape == (200_000, 10)
    # mean x/2 to within 5 Monte Carlo standard errors, covariance 0.05 I.
    np.testing.assert_allclose(ref.mean(0), x_obs / 2, atol=5 * np.sqrt(0.05 / 2e5))
    np.testing.assert_allclose(np.cov(ref.T), 0.05 * np.eye(10), atol=2e-3)


def test_gaussian_linear_posterior_is_bayes_rule():
    # Joint simulation: theta | x from prior draws near x_obs agrees with x/2, 0.05.
    task = tasks.TASKS["gaussian_linear"]
    theta, x = task.simulate_bank(jax.random.key(3), 200_000)
    # E[theta | x] = x / 2 for every x: regress theta on x.
    slope = (theta * x).sum(0) / (x * x).sum(0)
    np.testing.assert_allclose(slope, 0.5, atol=0.01)
    np.testing.assert_allclose((theta - x / 2).var(0), 0.05, rtol=0.03)


def test_lognormal_linear_reference_is_bayes_rule():
    # Importance weighting of 400,000 prior draws by the log-normal likelihood of x_obs
    # agrees with the analytic Gaussian posterior (mean and sd).
    task = tasks.TASKS["lognormal_linear"]
    _, x_obs = tasks.observation(task, 2)
    assert x_obs.min() > 0
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(400_000, 2))
    y = np.log(x_obs)
    resid = y - (theta @ tasks._LN_A.T + tasks._LN_B)
    logw = -0.5 * (resid**2).sum(1) / tasks._LN_SIGMA**2
    w = np.exp(logw - logw.max())
    w /= w.sum()
    mean = w @ theta
    sd = np.sqrt(w @ (theta - mean) ** 2)
    ref_mean, ref_cov = tasks.lognormal_linear_posterior_moments(x_obs)
    np.testing.assert_allclose(mean, ref_mean, atol=0.02)
    np.testing.assert_allclose(sd, np.sqrt(np.diag(ref_cov)), rtol=0.05)
    ref = task.reference_posterior(x_obs, 100_000, seed=1)
    np.testing.assert_allclose(ref.mean(0), ref_mean, atol=0.005)
    # the features span orders of magnitude (what the task is for)
    _, x = task.simulate_bank(jax.random.key(0), 5000)
    span = np.quantile(x, 0.99, axis=0) / np.quantile(x, 0.01, axis=0)
    assert span.min() > 1e3 and x.max() / x.min() > 1e12


def test_c2st_same_distribution_is_chance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(1000, 2))
    b = rng.normal(size=(1000, 2))
    assert abs(c2st(a, b) - 0.5) < 0.05


def test_c2st_separated_distributions_is_one():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(1000, 2))
    b = rng.normal(4.0, 1.0, size=(1000, 2))
    assert c2st(a, b) > 0.97


def test_c2st_rejects_bad_input():
    a = np.zeros((10, 2))
    with pytest.raises(ValueError, match="`b`"):
        c2st(a, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="`a`"):
        c2st(np.zeros(10), a)
    with pytest.raises(ValueError, match="NaN"):
        c2st(a, np.full((10, 2), np.nan))


def test_npe_vs_sbi_table_reports_ratios_and_skips():
    from benchmarks import npe_vs_sbi as nvs

    args = nvs.parse_args(["--quick", "--no-append"])
    assert args.tasks == ["two_moons"] and args.budgets == [1000]
    sbi = nvs.Outcome("sbi", fit_s=40.0, epochs=100, c2st=[0.70, 0.80], mean_err=[0.1, 0.1])
    fj = nvs.Outcome("flowjax", fit_s=10.0, epochs=50, c2st=[0.75, 0.85], mean_err=[0.2, 0.2])
    skipped = nvs.Outcome("bmsbi", status="skipped: bmsbi has no NPE yet")
    md = nvs.table([("two_moons", 1000, [skipped, sbi, fj])])
    rows = md.splitlines()
    assert len(rows) == 5 and all(r.count("|") == rows[0].count("|") for r in rows)
    assert "| flowjax | 10.0 | 50 | 0.800 ± 0.050 | 0.200 | 0.25 | +0.050 |" in md
    assert "skipped: bmsbi has no NPE yet" in md


@pytest.mark.slow
def test_bmsbi_npe_two_moons_10k_c2st():
    # Issue 3's acceptance line, as the benchmark measures it (same bank, observations,
    # keys and C2ST): bmsbi's default NPE at 10,000 simulations, C2ST <= 0.55 averaged
    # over the 10 observations. About 2 minutes on 2 cores.
    from benchmarks import npe_vs_sbi as nvs

    args = nvs.parse_args(["--tasks", "two_moons", "--budgets", "10000", "--contenders", "bmsbi",
                           "--num-observations", "10", "--no-timing", "--no-append"])
    _, _, (out,) = nvs.run_case("two_moons", 10000, args)
    assert out.status == "ok" and len(out.c2st) == 10
    assert np.mean(out.c2st) <= 0.55, out.c2st
    assert max(out.c2st) < 0.62, out.c2st
