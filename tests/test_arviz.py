"""Posterior.to_arviz fills every ArviZ group with named, dimensioned, coordinated data that
ArviZ's own summaries and plots accept, and survives a netCDF round trip."""

import matplotlib

matplotlib.use("Agg")

import arviz as az  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402

import bmsbi  # noqa: E402
from bmsbi.posterior import Posterior  # noqa: E402

X_OBS = np.array([0.8, -0.6], np.float32)
FEATURES = ["x_a", "x_b"]


def simulator(theta, key):
    return theta + jax.random.normal(key, theta.shape)


@pytest.fixture(scope="module")
def post():
    """NPE on theta ~ N(0, I), x ~ N(theta, I): posterior N(x / 2, I / 2)."""
    prior = bmsbi.Prior({"a": dist.Normal(0.0, 1.0), "b": dist.Normal(0.0, 1.0)})
    bank = bmsbi.simulate_bank(simulator, prior, 2000, key=jax.random.key(0), progress=False)
    npe = bmsbi.NPE(density_estimator="maf", hidden=32, num_layers=2, max_epochs=40)
    return npe.fit(bank, prior=prior, key=jax.random.key(1), progress=False)


@pytest.fixture(scope="module")
def idata(post):
    return post.to_arviz(jax.random.key(2), X_OBS, num_samples=250, num_chains=4,
                         simulator=simulator, feature_names=FEATURES)


def test_all_groups_with_names_dims_and_coords(idata, post):
    assert set(idata.groups()) == {"posterior", "sample_stats", "prior", "sample_stats_prior",
                                   "posterior_predictive", "observed_data"}
    assert set(idata.posterior.data_vars) == set(idata.prior.data_vars) == {"a", "b"}
    assert idata.posterior["a"].dims == ("chain", "draw") and idata.posterior["a"].shape == (4, 250)
    assert idata.prior["a"].shape == (1, 1000)  # num_prior_samples defaults to all draws
    pp, obs = idata.posterior_predictive["x_obs"], idata.observed_data["x_obs"]
    assert pp.dims == ("chain", "draw", "feature") and pp.shape == (4, 250, 2)
    assert obs.dims == ("feature",)
    assert list(obs["feature"].values) == list(pp["feature"].values) == FEATURES
    np.testing.assert_array_equal(obs.values, X_OBS)
    assert idata.posterior.attrs["inference_library"] == "bmsbi"


def test_group_contents_are_consistent(idata, post):
    draws = np.stack([idata.posterior[n].values for n in post.names], -1).reshape(-1, 2)
    # lp is the posterior log density of exactly these draws.
    lp = idata.sample_stats["lp"]
    assert lp.dims == ("chain", "draw") and lp.attrs["normalized"] == 1
    np.testing.assert_allclose(lp.values.reshape(-1), np.asarray(post.log_prob(draws, X_OBS)),
                               rtol=1e-5, atol=1e-5)
    # posterior_predictive is simulated at the posterior draw of the same chain and draw.
    noise = (idata.posterior_predictive["x_obs"].values.reshape(-1, 2) - draws)
    np.testing.assert_allclose(noise.mean(0), 0.0, atol=0.1)
    np.testing.assert_allclose(noise.std(0), 1.0, atol=0.1)
    # prior group: draws from the N(0, 1) prior with their prior log density.
    prior = np.stack([idata.prior[n].values[0] for n in post.names], -1)
    np.testing.assert_allclose(prior.mean(0), 0.0, atol=0.12)
    np.testing.assert_allclose(prior.std(0), 1.0, atol=0.1)
    np.testing.assert_allclose(idata.sample_stats_prior["lp"].values[0],
                               np.asarray(post.prior.log_prob(prior)), rtol=1e-5)


def test_arviz_summary_and_plots_work(idata, tmp_path):
    summary = az.summary(idata)
    assert list(summary.index) == ["a", "b"]
    np.testing.assert_allclose(summary["mean"].values, X_OBS / 2, atol=0.12)
    np.testing.assert_allclose(summary["sd"].values, np.sqrt(0.5), rtol=0.15)
    assert np.all(summary["r_hat"] < 1.02) and np.all(summary["ess_bulk"] > 500)
    plots = {"pair": lambda: az.plot_pair(idata, kind="kde", marginals=True),
             "posterior": lambda: az.plot_posterior(idata),
             "ppc": lambda: az.plot_ppc(idata, num_pp_samples=50)}
    for name, make in plots.items():
        axes = np.ravel(make())
        path = tmp_path / f"{name}.png"
        axes[0].figure.savefig(path)
        assert path.read_bytes()[:4] == b"\x89PNG"
        plt.close("all")


def test_netcdf_round_trip(idata, tmp_path):
    path = tmp_path / "posterior.nc"
    idata.to_netcdf(str(path))
    again = az.from_netcdf(str(path))
    assert set(again.groups()) == set(idata.groups())
    for group in idata.groups():
        a, b = getattr(idata, group), getattr(again, group)
        for var in a.data_vars:
            np.testing.assert_array_equal(a[var].values, b[var].values)
            assert a[var].dims == b[var].dims
    assert list(again.observed_data["feature"].values) == FEATURES
    assert again.sample_stats["lp"].attrs["normalized"] == 1


class Striped(Posterior):
    """No network: draw j is (j, -j) whatever x is; an unnormalised log density, 4 'NUTS chains'."""

    normalized = False

    def __init__(self):
        prior = bmsbi.Prior({"u": dist.Normal(0.0, 10.0), "v": dist.Normal(0.0, 10.0)})
        super().__init__(prior=prior, x_shape=(3, 2), config={"estimator": "test"})
        self.mcmc = {"num_chains": 4}

    def _params(self):
        return ()

    def _sample_batch(self, params, key, x, n):
        j = jnp.arange(n, dtype=jnp.float32)
        return jnp.broadcast_to(jnp.stack([j, -j], -1), (x.shape[0], n, 2))

    def _log_prob_batch(self, params, theta, x):
        return -0.5 * jnp.sum(theta ** 2, -1) + 100.0


def test_chains_unnormalised_lp_and_multi_axis_x():
    post = Striped()
    x_obs = np.arange(6, dtype=np.float32).reshape(3, 2)
    idata = post.to_arviz(0, x_obs, num_samples=5, feature_names=["left", "right"])
    u = idata.posterior["u"].values
    # Default chains: the posterior's own 4; draw j of an MCMC run belongs to chain j % 4.
    assert u.shape == (4, 5)
    np.testing.assert_array_equal(u[1], [1, 5, 9, 13, 17])
    lp = idata.sample_stats["lp"]
    assert lp.attrs["normalized"] == 0 and "unnormalised" in lp.attrs["description"]
    assert idata.posterior.attrs["log_prob_normalized"] == 0
    assert idata.observed_data["x_obs"].dims == ("x_dim_0", "feature")
    assert list(idata.observed_data["feature"].values) == ["left", "right"]
    assert "posterior_predictive" not in idata.groups()
    assert idata.prior["u"].shape == (1, 20)


def test_brainmass_task_predictive_with_feature_names(tmp_path):
    """A real brainmass simulator: posterior_predictive runs it vmapped, named by its features."""
    import simulators

    task = simulators.get("hopf_node")

    class PriorAsPosterior(Posterior):
        def __init__(self):
            super().__init__(prior=task.prior, x_shape=(len(task.feature_names),),
                             config={"estimator": "prior"})

        def _params(self):
            return ()

        def _sample_batch(self, params, key, x, n):
            return jax.vmap(lambda k: task.prior.sample(k, n))(jax.random.split(key, x.shape[0]))

        def _log_prob_batch(self, params, theta, x):
            return jax.vmap(task.prior.log_prob)(theta)

    x_obs = np.asarray(task.simulate(task.true_theta, jax.random.key(0)))
    idata = PriorAsPosterior().to_arviz(1, x_obs, num_samples=6, num_chains=2,
                                        simulator=task.simulator,
                                        feature_names=task.feature_names)
    pp = idata.posterior_predictive["x_obs"]
    assert pp.shape == (2, 6, len(task.feature_names)) and np.isfinite(pp.values).all()
    assert list(pp["feature"].values) == task.feature_names
    # Each simulation is the task's simulator at that chain/draw's parameters.
    theta = np.array([idata.posterior[n].values[1, 3] for n in task.names], np.float32)
    assert not np.allclose(pp.values[1, 3], pp.values[0, 3])
    assert bool(task.prior.in_support(theta))
    az.plot_ppc(idata, num_pp_samples=6)
    plt.savefig(tmp_path / "ppc_hopf.png")
    plt.close("all")


def test_bad_input(post):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="feature_names: expected 2 distinct names"):
        post.to_arviz(key, X_OBS, num_samples=10, feature_names=["only"])
    with pytest.raises(ValueError, match="simulator: expected a callable"):
        post.to_arviz(key, X_OBS, num_samples=10, simulator="no")
    with pytest.raises(ValueError, match="num_prior_samples"):
        post.to_arviz(key, X_OBS, num_samples=10, num_prior_samples=0)
    with pytest.raises(ValueError, match="num_chains"):
        post.to_arviz(key, X_OBS, num_samples=10, num_chains=0)
    with pytest.raises(ValueError, match="num_samples"):
        post.to_arviz(key, X_OBS, num_samples=-1)
    with pytest.raises(ValueError, match="x_obs: to_arviz takes one observation"):
        post.to_arviz(key, np.zeros((3, 2)), num_samples=10)


def test_export_function_is_to_arviz_and_simulates_like_posterior_predictive(post):
    """bmsbi.arviz_export.to_inference_data is what to_arviz returns; its posterior predictive
    is diagnostics.posterior_predictive at the same draws with the same key."""
    from bmsbi.arviz_export import to_inference_data
    from bmsbi.diagnostics import posterior_predictive

    key = jax.random.key(5)
    a = post.to_arviz(key, X_OBS, num_samples=20, num_chains=2, simulator=simulator)
    b = to_inference_data(post, key, X_OBS, num_samples=20, num_chains=2, simulator=simulator)
    for group in ("posterior", "sample_stats", "prior", "posterior_predictive"):
        for name, var in getattr(a, group).data_vars.items():
            np.testing.assert_array_equal(var.values, getattr(b, group)[name].values)

    def flat(v):  # (chain, draw, ...) back to the draw order: draw j in chain j % num_chains
        return np.swapaxes(v, 0, 1).reshape(-1, *v.shape[2:])

    draws = np.stack([flat(a.posterior[n].values) for n in post.names], -1)
    x_pred = posterior_predictive(post, simulator, X_OBS, key=jax.random.split(key, 3)[2], theta=draws)
    np.testing.assert_allclose(flat(a.posterior_predictive["x_obs"].values), x_pred, rtol=1e-6)
    with pytest.raises(ValueError, match="posterior: expected a bmsbi.Posterior"):
        to_inference_data(object(), key, X_OBS)
