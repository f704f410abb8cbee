"""NPE: analytic Gaussian posteriors recovered, samples inside the support, densities
normalised, shapes and bad inputs."""

import functools
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import bmsbi
from bmsbi.embeddings import CNN1DEmbedding, DeepSetEmbedding, GRUEmbedding, MLPEmbedding
from bmsbi.estimators import NPE

SIGMA = 0.5


def gaussian_linear(dim, n, seed=0, sigma=SIGMA):
    """x ~ N(theta, sigma^2 I), theta ~ N(0, I): posterior N(x / (1 + sigma^2), s^2 I)."""
    prior = bmsbi.Prior({f"t{i}": dist.Normal(0.0, 1.0) for i in range(dim)})
    theta = np.asarray(prior.sample(jax.random.key(seed), n))
    x = theta + sigma * np.random.default_rng(seed).normal(size=theta.shape)
    return prior, bmsbi.Bank(theta, x.astype(np.float32), names=prior.names)


def analytic(x_obs, sigma=SIGMA):
    prec = 1.0 + 1.0 / sigma**2
    return x_obs / sigma**2 / prec, np.sqrt(1.0 / prec)


@pytest.fixture(scope="module")
def gl2():
    # An affine MAF is the right family for a Gaussian posterior; the spline flow ("nsf",
    # the default, tuned on two-moons) needs more data to be this close (measured: mean
    # error up to 0.1 sd, sd up to 12 % off at 10k).
    prior, bank = gaussian_linear(2, 10000)
    post = NPE(density_estimator="maf").fit(bank, prior=prior, key=jax.random.key(1),
                                            progress=False)
    return prior, post


def test_gaussian_linear_2d_mean_and_sd(gl2):
    prior, post = gl2
    for x_obs in (np.array([0.3, -0.8], np.float32), np.array([-1.2, 0.5], np.float32)):
        s = np.asarray(post.sample(jax.random.key(2), x_obs, 20000))
        mean, sd = analytic(x_obs)
        assert np.all(np.abs(s.mean(0) - mean) < 0.1 * sd), (s.mean(0), mean)
        np.testing.assert_allclose(s.std(0), sd, rtol=0.1)


def test_log_prob_matches_analytic_density(gl2):
    prior, post = gl2
    x_obs = np.array([0.3, -0.8], np.float32)
    mean, sd = analytic(x_obs)
    theta = mean + sd * np.random.default_rng(0).normal(size=(200, 2))
    exact = -0.5 * np.sum(((theta - mean) / sd) ** 2, 1) - 2 * np.log(sd) - np.log(2 * np.pi)
    lp = np.asarray(post.log_prob(theta, x_obs))
    assert lp.shape == (200,)
    assert np.mean(np.abs(lp - exact)) < 0.15


def test_sample_shapes_single_and_batched(gl2):
    prior, post = gl2
    one = post.sample(jax.random.key(0), np.zeros(2), 5)
    assert one.shape == (5, 2)
    many = post.sample(jax.random.key(0), np.zeros((3, 2)), 5)
    assert many.shape == (3, 5, 2)
    lp = post.log_prob(np.zeros((4, 2)), np.zeros((3, 2)))
    assert lp.shape == (3, 4)
    assert post.log_prob(np.zeros((3, 4, 2)), np.zeros((3, 2))).shape == (3, 4)
    assert post.log_prob(np.zeros(2), np.zeros(2)).shape == ()
    assert post.names == ("t0", "t1") and post.history.epochs > 0


def test_map_finds_the_mode(gl2):
    prior, post = gl2
    x_obs = np.array([0.3, -0.8], np.float32)
    mean, sd = analytic(x_obs)
    found = np.asarray(post.map(x_obs, num_samples=500, num_steps=100))
    assert found.shape == (2,)
    np.testing.assert_allclose(found, mean, atol=0.15 * sd)


def edge_problem(n, seed):
    """theta ~ U([0, 1] x [-1, 1]), x ~ N(theta, 0.3^2 I): the posterior piles up at the box's edges."""
    prior = bmsbi.Prior.uniform([0.0, -1.0], [1.0, 1.0], names=["g", "h"])
    theta = np.asarray(prior.sample(jax.random.key(seed), n))
    x = theta + 0.3 * np.random.default_rng(seed).normal(size=theta.shape)
    return prior, bmsbi.Bank(theta, x.astype(np.float32), names=prior.names)


def edge_problem_log_posterior(theta, x):
    """Exact log density of :func:`edge_problem`'s posterior: a product of truncated normals."""
    from scipy.stats import norm
    lo, hi = np.array([0.0, -1.0]), np.array([1.0, 1.0])
    mass = norm.cdf((hi - x) / 0.3) - norm.cdf((lo - x) / 0.3)
    return np.sum(norm.logpdf(theta, x, 0.3) - np.log(mass), axis=-1)


@functools.lru_cache(maxsize=None)
def fit_edge_problem(variant):
    """``(prior, posterior)`` on :func:`edge_problem` (3,000 simulations), fitted once per test session."""
    prior, bank = edge_problem(3000, 0)
    space = "auto" if variant == "edge" else variant
    post = NPE(hidden=16, num_layers=3, max_epochs=30, theta_space=space,
               edge_spline=variant == "edge").fit(bank, prior=prior, key=jax.random.key(3), progress=False)
    return prior, post


@pytest.fixture(scope="module", params=["auto", "unconstrained", "edge"])
def box(request):
    # Narrow box with the likelihood piling mass on its edge. "auto" (default): the flow
    # models the Uniform parameters in their own coordinates and rejects draws outside
    # the box, dividing its density by the mass inside; "unconstrained": through a logit;
    # "edge": "auto" with the box-edge spline (NPE(edge_spline=True)).
    prior, post = fit_edge_problem(request.param)
    assert post.config["theta_space"] == ("auto" if request.param == "edge" else request.param)
    assert ("edge_box" in post.config) == (request.param == "edge")
    return prior, post


def test_the_edge_spline_brings_the_flow_closer_to_a_posterior_cut_by_the_box():
    # KL(p || q) estimated on 2,000 fresh (theta, x) pairs against the exact posterior,
    # the same bank, keys and settings with and without the box-edge spline (the box
    # tests' posteriors; measured 0.061 and 0.033, sd of each estimate about 0.008).
    _, held = edge_problem(2000, 99)
    theta, x = np.asarray(held.theta), np.asarray(held.x)
    kl = {}
    for variant in ("auto", "edge"):
        _, post = fit_edge_problem(variant)
        lq = np.asarray(post.log_prob(theta[:, None, :], x))[:, 0]
        kl[variant] = float(np.mean(edge_problem_log_posterior(theta, x) - lq))
    assert kl["edge"] < 0.055, kl
    assert kl["edge"] < kl["auto"] - 0.005, kl


def test_the_edge_spline_saves_and_loads(box, tmp_path):
    prior, post = box
    if "edge_box" not in post.config:
        pytest.skip("the posterior has no box-edge spline")
    back = bmsbi.load_posterior(post.save(tmp_path / "edge.bmsbi"))
    assert back.config["edge_box"] == post.config["edge_box"]
    theta = np.array([[0.02, 0.9], [0.5, 0.0], [0.97, -0.99]], np.float32)
    x_obs = np.array([-0.1, 1.1], np.float32)
    np.testing.assert_allclose(np.asarray(back.log_prob(theta, x_obs)), np.asarray(post.log_prob(theta, x_obs)),
                               rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(back.sample(jax.random.key(0), x_obs, 50)),
                                  np.asarray(post.sample(jax.random.key(0), x_obs, 50)))


def test_edge_spline_settings_are_checked():
    for bad in (dict(edge_spline="yes"), dict(edge_spline=True, density_estimator="maf"),
                dict(edge_spline=True, linear_init="full"), dict(edge_spline=True, theta_space="unconstrained")):
        with pytest.raises(ValueError, match="edge_spline"):
            NPE(**bad)


def test_edge_spline_inverts_and_its_log_det_is_the_jacobians():
    from bmsbi.estimators.npe import SplineCouplingStack
    stack = SplineCouplingStack(3, 4, num_layers=2, hidden=16, num_bins=6, tail_bound=3.0,
                                box=([-0.5, -np.inf, -2.0], [1.0, np.inf, 0.3]), key=jax.random.key(0))
    rng = np.random.default_rng(1)
    stack = eqx.tree_at(lambda s: (s.edge, s.weights, s.biases), stack, replace_fn=lambda t: jax.tree_util.tree_map(
        lambda v: v + jnp.asarray(rng.normal(0, 0.2, np.shape(v)), jnp.float32), t))
    c = jnp.asarray(rng.normal(size=4), jnp.float32)
    y = jnp.asarray(rng.uniform(-2.5, 2.5, (500, 3)), jnp.float32)

    @jax.jit
    def check(y):
        u, ld = jax.vmap(lambda v: stack.inverse_and_log_det(v, c))(y)
        back, ld_back = jax.vmap(lambda v: stack.transform_and_log_det(v, c))(u)
        jac = jax.vmap(jax.jacfwd(lambda v: stack.inverse_and_log_det(v, c)[0]))(y)
        return back, ld, ld_back, jnp.linalg.slogdet(jac)[1]

    back, ld, ld_back, ld_jac = (np.asarray(a) for a in check(y))
    np.testing.assert_allclose(back, np.asarray(y), atol=1e-4)
    np.testing.assert_allclose(ld, -ld_back, atol=1e-3)
    np.testing.assert_allclose(ld, ld_jac, atol=1e-3)
    # the box maps onto itself: the edge spline moves nothing across a bound
    loc, scale = stack._loc_scale(c)
    z = (y - loc) / scale
    moved = np.asarray(jax.vmap(lambda v: stack._edge_spline(v, c, loc, scale, inverse=False)[0])(z))
    low, high = (np.array([-0.5, -1e4, -2.0]) - loc) / scale, (np.array([1.0, 1e4, 0.3]) - loc) / scale
    inside = lambda a: (a >= low) & (a <= high)  # noqa: E731
    np.testing.assert_array_equal(inside(moved), inside(np.asarray(z)))
    assert not np.allclose(moved, np.asarray(z))  # and it does move what is inside


def test_samples_stay_inside_uniform_support(box):
    prior, post = box
    x_obs = np.array([[1.2, 0.95], [-0.3, -1.4], [0.5, 0.0]], np.float32)
    s = np.asarray(post.sample(jax.random.key(5), x_obs, 5000))
    assert s.shape == (3, 5000, 2)
    assert np.asarray(prior.in_support(s.reshape(-1, 2))).all()
    assert s[0, :, 0].mean() > 0.6  # the edge case is actually pushing against the bound


def test_rejection_that_gives_up_clips_and_warns(box):
    # An observation far outside the bank: the flow puts (almost) no mass inside the box,
    # so the draws left after 100 rejection rounds are clipped to it, with a warning.
    # Through the logit ("unconstrained") every draw maps into the box: no warning.
    prior, post = box
    far = np.array([40.0, -40.0], np.float32)
    if post.config["theta_space"] == "auto":
        with pytest.warns(UserWarning, match="lie exactly on the prior's bounds"):
            s = np.asarray(post.sample(jax.random.key(6), far, 500))
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*prior's bounds")
            s = np.asarray(post.sample(jax.random.key(6), far, 500))
    assert np.asarray(prior.in_support(s)).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ordinary observation: no warning
        post.sample(jax.random.key(6), np.array([0.5, 0.0], np.float32), 500)


def test_a_hopeless_observation_leaves_the_others_in_its_batch_alone(box):
    # Rejection runs a few rounds for a chunk of observations together, then only the
    # short ones continue one at a time: every observation's draws depend on its own key
    # and condition alone, whatever else is in the batch.
    prior, post = box
    ordinary = np.array([[0.5, 0.0], [1.2, 0.95], [-0.3, -1.4]], np.float32)
    with_far = np.concatenate([ordinary, [[40.0, -40.0]]]).astype(np.float32)
    with_near = np.concatenate([ordinary, [[0.2, 0.3]]]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = np.asarray(post.sample(jax.random.key(8), with_far, 400))
    b = np.asarray(post.sample(jax.random.key(8), with_near, 400))
    np.testing.assert_array_equal(a[:3], b[:3])
    assert np.asarray(prior.in_support(a.reshape(-1, 2))).all()


def test_log_prob_outside_support_is_minus_inf_never_nan(box):
    prior, post = box
    theta = np.array([[0.5, 0.0], [1.5, 0.0], [-0.1, 0.3], [0.5, 2.0], [np.nan, 0.0],
                      [1.0, 1.0]], np.float32)
    lp = np.asarray(post.log_prob(theta, np.zeros(2)))
    assert np.isfinite(lp[0])
    assert np.all(lp[1:4] == -np.inf) and lp[4] == -np.inf
    assert not np.isnan(lp).any()


def test_density_integrates_to_one_over_the_box(box):
    # Checks the Jacobians (logit map or none, z-scoring) and, with rejection, the
    # division by the flow's mass inside the box (x_obs = (1.2, 0.95) sits past a corner).
    prior, post = box
    g = (np.arange(200) + 0.5) / 200
    h = -1 + 2 * (np.arange(200) + 0.5) / 200
    grid = np.stack(np.meshgrid(g, h, indexing="ij"), -1).reshape(-1, 2)
    for x_obs in (np.array([0.5, 0.0]), np.array([1.2, 0.95])):
        p = np.exp(np.asarray(post.log_prob(grid, x_obs.astype(np.float32))))
        assert p.sum() * (1 / 200) * (2 / 200) == pytest.approx(1.0, abs=0.03)


def test_support_mass_is_the_share_of_the_flows_draws_inside_the_box(box):
    # "auto": the flow's own draws (mapped back from its standardised coordinates, both
    # parameters Uniform so kept as they are) counted inside the box, independently of
    # the posterior's code; "unconstrained": nothing can fall outside.
    prior, post = box
    x_obs = np.array([[0.5, 0.0], [1.2, 0.95], [40.0, -40.0]], np.float32)
    mass = post.support_mass(x_obs)
    assert mass.shape == (3,)
    assert isinstance(post.support_mass(x_obs[0]), float)
    if post.config["theta_space"] == "unconstrained":
        np.testing.assert_array_equal(mass, 1.0)
        return
    flow, stats = post.model.flow, post.stats
    for i, x in enumerate(x_obs[:2]):
        cond = (x - stats["x_mean"]) / stats["x_std"]
        s = np.asarray(flow.sample(jax.random.key(11), (20000,), condition=jnp.asarray(cond)))
        inside = np.mean(np.asarray(prior.in_support(s * stats["theta_std"] + stats["theta_mean"])))
        assert mass[i] == pytest.approx(inside, abs=0.02)
    assert mass[0] > 0.9                 # an observation in the middle of the box
    assert mass[1] < mass[0] - 0.1       # past a corner: the flow spreads over the bound
    assert mass[2] <= 0.01               # far outside: (almost) nothing inside


def test_support_mass_refuses_bad_observations(box):
    _, post = box
    with pytest.raises(ValueError, match="x_obs"):
        post.support_mass(np.zeros(3, np.float32))


def test_bank_with_nan_rows_is_refused():
    prior, bank = gaussian_linear(2, 100)
    x = bank.x.copy()
    x[[3, 10, 50]] = np.nan
    with pytest.raises(ValueError, match=r"bank: 3 of 100 rows"):
        NPE(max_epochs=1).fit(bmsbi.Bank(bank.theta, x, names=prior.names), prior=prior,
                              key=jax.random.key(0),
                              progress=False)


def test_bank_dimension_must_match_prior():
    prior, bank = gaussian_linear(2, 100)
    other = bmsbi.Prior.uniform([-3.0] * 3, [3.0] * 3)
    with pytest.raises(ValueError, match=r"bank: theta has dimension 2 but the prior has dimension 3"):
        NPE(max_epochs=1).fit(bank, prior=other, key=jax.random.key(0), progress=False)


def test_bank_outside_prior_support_is_refused():
    prior = bmsbi.Prior.uniform([0.0, 0.0], [1.0, 1.0])
    bank = bmsbi.Bank(np.full((10, 2), 2.0, np.float32), np.zeros((10, 2), np.float32))
    with pytest.raises(ValueError, match="outside the prior"):
        NPE(max_epochs=1).fit(bank, prior=prior, key=jax.random.key(0), progress=False)


def test_bad_x_obs_raises(box):
    prior, post = box
    with pytest.raises(ValueError, match=r"x_obs: expected shape \(2,\).*got \(3,\)"):
        post.sample(jax.random.key(0), np.zeros(3), 10)
    with pytest.raises(ValueError, match=r"x_obs: expected shape"):
        post.log_prob(np.zeros(2), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="x_obs: 1 of 1 observations hold NaN"):
        post.sample(jax.random.key(0), np.array([np.nan, 0.0]), 10)
    with pytest.raises(ValueError, match="theta"):
        post.log_prob(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="num_samples"):
        post.sample(jax.random.key(0), np.zeros(2), 0)


def test_bad_estimator_arguments():
    with pytest.raises(ValueError, match="density_estimator"):
        NPE(density_estimator="gmm")
    with pytest.raises(ValueError, match="hidden"):
        NPE(hidden=0)
    with pytest.raises(ValueError, match="embedding"):
        NPE(embedding="cnn")
    with pytest.raises(ValueError, match="theta_space"):
        NPE(theta_space="constrained")
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(ValueError, match="truncation_fraction"):
            NPE(truncation_fraction=bad)


def test_truncation_term_is_the_gradient_of_the_mass_inside():
    # A conditional Gaussian flow (affine map of the condition) and the interval (-0.5, 1):
    # the truncated loss minus the plain one must be Z - 1 in value and grad Z in
    # gradient, Z the analytic Gaussian mass inside, up to Monte Carlo error.
    from flowjax.distributions import StandardNormal, Transformed
    from jax.scipy.stats import norm

    from bmsbi.estimators.npe import ConditionalAffine, NPEModel, _affine_loc_scale, _nll

    affine = ConditionalAffine(1, 1, hidden=8, key=jax.random.key(0))
    rng = np.random.default_rng(0)
    affine = jax.tree_util.tree_map(  # move the map off the identity
        lambda a: jnp.asarray(rng.normal(0.0, 0.5, a.shape), jnp.float32), affine)
    model = NPEModel(Transformed(StandardNormal((1,)), affine), None)
    n, c = 400_000, 0.7
    batch = (jnp.zeros((n, 1)), jnp.full((n, 1), c))
    box = (jnp.array([-0.5]), jnp.array([1.0]))  # the interval, as NPE's support_box gives it

    def mass(m):
        loc, scale = _affine_loc_scale(m.flow.bijection.affine, m.flow.bijection.affine_linear,
                                       jnp.array([c]), 1)
        return (norm.cdf((1.0 - loc) / scale) - norm.cdf((-0.5 - loc) / scale))[0]

    plain = eqx.filter_value_and_grad(lambda m: _nll(m, None, batch, jax.random.key(1)))(model)
    trunc = eqx.filter_value_and_grad(lambda m: _nll(m, box, batch, jax.random.key(1), fraction=1.0))(model)
    z, grad_z = eqx.filter_value_and_grad(mass)(model)
    assert 0.3 < float(z) < 0.9  # the interval cuts the flow's mass substantially
    assert abs(float(trunc[0] - plain[0]) - (float(z) - 1.0)) < 0.005
    got = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda t, p: t - p, trunc[1], plain[1]))])
    want = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(grad_z)])
    assert np.linalg.norm(want) > 0.05
    assert np.linalg.norm(got - want) < 0.05 * np.linalg.norm(want)


@pytest.mark.parametrize("make", [
    pytest.param(lambda k: MLPEmbedding((30, 2), out_dim=4, hidden=(16,), key=k),
                 marks=pytest.mark.slow),
    lambda k: CNN1DEmbedding((30, 2), out_dim=4, channels=(4, 8), key=k),
    pytest.param(lambda k: GRUEmbedding((30, 2), out_dim=4, hidden_size=8, key=k),
                 marks=pytest.mark.slow),
    pytest.param(lambda k: DeepSetEmbedding((30, 2), out_dim=4, hidden=(8, 8), key=k),
                 marks=pytest.mark.slow),
], ids=["mlp", "cnn1d", "gru", "deepset"])
def test_embeddings_train_jointly(make):
    # theta sets the mean of 30 noisy 2-channel steps; the embedding must learn it.
    prior = bmsbi.Prior.uniform([-1.0], [1.0], names=["mu"])
    theta = np.asarray(prior.sample(jax.random.key(0), 1000))
    x = theta[:, :, None] + 0.3 * np.random.default_rng(0).normal(size=(1000, 30, 2))
    net = make(jax.random.key(1))
    post = NPE(density_estimator="maf", hidden=16, num_layers=2, embedding=net,
               max_epochs=30, batch_size=64, learning_rate=3e-3).fit(
        bmsbi.Bank(theta, x.astype(np.float32), names=["mu"]), prior=prior,
        key=jax.random.key(2), progress=False)
    x_obs = (0.5 + 0.3 * np.random.default_rng(9).normal(size=(30, 2))).astype(np.float32)
    s = np.asarray(post.sample(jax.random.key(3), x_obs, 2000))
    assert s.shape == (2000, 1)
    assert abs(s.mean() - 0.5) < 0.25
    with pytest.raises(ValueError, match="in_shape"):
        NPE(embedding=make(jax.random.key(1))).fit(
            bmsbi.Bank(theta, x[:, :20].astype(np.float32), names=["mu"]), prior=prior,
            key=jax.random.key(0),
            progress=False)


@pytest.mark.slow
def test_gaussian_linear_10d_at_10k():
    from bmsbi.diagnostics import c2st

    prior, bank = gaussian_linear(10, 10000, seed=11)
    post = NPE(density_estimator="maf").fit(bank, prior=prior, key=jax.random.key(0),
                                            progress=False)
    rng = np.random.default_rng(5)
    for i in range(3):
        x_obs = (rng.normal(size=10) * np.sqrt(1 + SIGMA**2)).astype(np.float32)
        mean, sd = analytic(x_obs)
        s = np.asarray(post.sample(jax.random.key(i), x_obs, 10000))
        assert np.all(np.abs(s.mean(0) - mean) < 0.1 * sd)
        ref = mean + sd * rng.normal(size=(10000, 10))
        assert c2st(ref, s) <= 0.56


@pytest.mark.parametrize("estimator", ["nsf", "maf", "flowjax_nsf"])
def test_linear_gaussian_init_is_the_least_squares_gaussian(estimator):
    # Before any training the flow is N(A x + b, diag(sd^2)) from least squares.
    from bmsbi.estimators.npe import build_flow, linear_gaussian_init

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3))
    theta = x @ np.array([[0.5, -1.0], [0.0, 0.3], [2.0, 0.0]]) + [0.2, -0.1] \
        + [0.3, 0.7] * rng.normal(size=(4000, 2))
    flow = build_flow(estimator, 2, 3, hidden=8, num_layers=2, num_bins=4, tail_bound=3.0,
                      nn_depth=1, key=jax.random.key(0), conditional_affine=True)
    flow = linear_gaussian_init(flow, theta, x, ridge=0.0)
    design = np.c_[x, np.ones(len(x))]
    coef = np.linalg.lstsq(design, theta, rcond=None)[0]
    sd = (theta - design @ coef).std(0)
    x_new, t_new = np.array([0.4, -1.0, 0.2]), np.array([0.1, 0.5])
    mean = np.r_[x_new, 1.0] @ coef
    exact = np.sum(-0.5 * ((t_new - mean) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi))
    lp = float(flow.log_prob(jnp.asarray(t_new, jnp.float32), jnp.asarray(x_new, jnp.float32)))
    assert lp == pytest.approx(exact, abs=1e-3)


@pytest.mark.parametrize("estimator", ["nsf", "maf", "flowjax_nsf"])
def test_full_covariance_init_is_the_least_squares_gaussian_with_its_correlations(estimator):
    # linear_init="full": before training the flow is N(A x + b, S), S the least-squares
    # residual covariance (here with a correlation of 0.8 a diagonal start cannot hold).
    from bmsbi.estimators.npe import build_flow, linear_gaussian_init

    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 3))
    noise = rng.normal(size=(4000, 2)) @ np.linalg.cholesky([[0.09, 0.168], [0.168, 0.49]]).T
    theta = x @ np.array([[0.5, -1.0], [0.0, 0.3], [2.0, 0.0]]) + [0.2, -0.1] + noise
    flow = build_flow(estimator, 2, 3, hidden=8, num_layers=2, num_bins=4, tail_bound=3.0,
                      nn_depth=1, key=jax.random.key(0), conditional_affine=True, full_covariance=True)
    flow = linear_gaussian_init(flow, theta, x, ridge=0.0)
    design = np.c_[x, np.ones(len(x))]
    coef = np.linalg.lstsq(design, theta, rcond=None)[0]
    resid = theta - design @ coef
    cov = resid.T @ resid / len(x)
    x_new, t_new = np.array([0.4, -1.0, 0.2]), np.array([0.1, 0.5])
    d = t_new - np.r_[x_new, 1.0] @ coef
    exact = -0.5 * d @ np.linalg.solve(cov, d) - 0.5 * np.log(np.linalg.det(2 * np.pi * cov))
    lp = float(flow.log_prob(jnp.asarray(t_new, jnp.float32), jnp.asarray(x_new, jnp.float32)))
    assert lp == pytest.approx(exact, abs=1e-3)


def test_full_covariance_npe_recovers_a_correlated_posterior_and_survives_files(tmp_path):
    # theta ~ N(0, [[1, .9], [.9, 1]]), x ~ N(theta, 0.25 I): a posterior with correlation
    # about 0.6 and exact moments. The fixed triangular map is saved with the weights.
    prior_cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    prior = bmsbi.Prior({"w": (dist.MultivariateNormal(jnp.zeros(2), jnp.asarray(prior_cov, jnp.float32)),
                               ["w0", "w1"])})
    theta = np.asarray(prior.sample(jax.random.key(0), 4000))
    x = (theta + 0.5 * np.random.default_rng(0).normal(size=theta.shape)).astype(np.float32)
    # base_calibration off: a scale fitted per latent coordinate on 400 validation rows
    # (about 4 % noise each) would tilt the correlation the triangular map carries.
    post = NPE(linear_init="full", max_epochs=30, base_calibration="none").fit(
        bmsbi.Bank(theta, x, names=prior.names), prior=prior, key=jax.random.key(1), progress=False)
    assert post.config["full_covariance"] is True
    x_obs = np.array([0.8, -0.3], np.float32)
    post_cov = np.linalg.inv(np.linalg.inv(prior_cov) + np.eye(2) / 0.25)
    post_mean = post_cov @ (x_obs / 0.25)
    s = np.asarray(post.sample(jax.random.key(2), x_obs, 40000))
    sd = np.sqrt(np.diag(post_cov))
    assert np.all(np.abs(s.mean(0) - post_mean) < 0.1 * sd), (s.mean(0), post_mean)
    np.testing.assert_allclose(s.std(0), sd, rtol=0.1)
    exact_r = post_cov[0, 1] / (sd[0] * sd[1])
    assert abs(np.corrcoef(s.T)[0, 1] - exact_r) < 0.05, (np.corrcoef(s.T)[0, 1], exact_r)
    back = bmsbi.load_posterior(post.save(tmp_path / "full.bmsbi"))
    assert back.config["full_covariance"] is True
    np.testing.assert_allclose(back.log_prob(s[:50], x_obs), post.log_prob(s[:50], x_obs), rtol=1e-5)
    with pytest.raises(ValueError, match="linear_init"):
        NPE(linear_init="diagonal")


def test_summary_noise_gives_the_posterior_of_a_noisier_observation():
    """theta ~ N(0, 1), x = theta + 0.5 eps. With summary_noise=s the estimator learns the
    posterior given x + s * sd(x) * eps': observation variance 0.25 + s**2 * 1.25."""
    prior = bmsbi.Prior({"t": dist.Normal(0.0, 1.0)})
    theta = np.asarray(prior.sample(jax.random.key(0), 4000))
    x = theta + 0.5 * np.asarray(jax.random.normal(jax.random.key(1), theta.shape))
    x_obs = np.array([0.8], np.float32)
    for s in (0.0, 1.0):
        post = NPE(summary_noise=s, hidden=32, num_layers=2).fit(
            bmsbi.Bank(theta, x), prior=prior, key=jax.random.key(2), progress=False)
        var_obs = 0.25 + s ** 2 * float(np.var(x))
        sd = (1.0 / (1.0 + 1.0 / var_obs)) ** 0.5
        mean = sd ** 2 * float(x_obs[0]) / var_obs
        draws = np.asarray(post.sample(jax.random.key(3), x_obs, 4000))[:, 0]
        assert abs(draws.mean() - mean) < 0.1 * sd + 0.03, (s, draws.mean(), mean)
        assert abs(draws.std() / sd - 1.0) < 0.1, (s, draws.std(), sd)
    with pytest.raises(ValueError, match="summary_noise"):
        NPE(summary_noise=-0.1)


def test_support_box_agrees_with_the_prior_support():
    # The truncated loss checks draws against a box in the flow's standardised
    # coordinates; it must say "inside" exactly where the prior does.
    import numpyro.distributions as dist

    from bmsbi.estimators.npe import support_box
    from bmsbi.posterior import identity_mask

    prior = bmsbi.Prior({"a": dist.Uniform(-1.0, 2.0), "s": dist.LogNormal(0.0, 1.0),
                         "w": (dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)), ["w0", "w1"]),
                         "b": dist.Uniform(0.0, 5.0)})
    keep = identity_mask(prior, "auto")
    stats = {"theta_mean": np.array([0.5, 0.1, 0.0, 0.0, 2.5]),
             "theta_std": np.array([0.9, 1.2, 1.0, 1.0, 1.4])}
    lo, hi = support_box(prior, keep, stats)
    s = np.random.default_rng(0).normal(0.0, 2.0, (4000, prior.unconstrained_dim)).astype(np.float32)
    in_box = np.all((s >= lo) & (s <= hi), axis=1)
    theta = prior.from_unconstrained(jnp.asarray(s * stats["theta_std"] + stats["theta_mean"],
                                                 jnp.float32), keep=keep)
    want = np.asarray(prior.in_support(theta))
    assert 0.2 < want.mean() < 0.8  # the check cuts both ways
    assert (in_box == want).mean() > 0.999  # (float rounding at the very edge aside)


# ---------------------------------------------------------------- base calibration
def test_fitted_base_scale_recovers_a_known_scale(gl2):
    """Pairs drawn from the flow with its base scaled by 2 give back a fitted scale of 2."""
    from bmsbi.estimators.npe import fitted_base_scale

    _, post = gl2
    s, x_std = _pairs_from_widened(post.model, [2.0, 0.5], n=4000, x_seed=3, key=4)
    np.testing.assert_allclose(fitted_base_scale(post.model, s, x_std), [2.0, 0.5], rtol=0.05)


def test_truncated_base_scale_recovers_the_scale_of_a_posterior_cut_by_the_box():
    """Truths from N(0, diag(0.7, 1.3)^2) cut to a box: the untruncated RMS narrows both, the cut fit does not."""
    from flowjax.bijections import Affine
    from flowjax.distributions import StandardNormal, Transformed

    from bmsbi.estimators.npe import NPEModel, fitted_base_scale, truncated_base_scale

    model = NPEModel(Transformed(StandardNormal((2,)), Affine(jnp.zeros(2), jnp.ones(2))), None)
    lo, hi = np.array([-0.5, -np.inf], np.float32), np.array([np.inf, 1.0], np.float32)
    draws = np.random.default_rng(0).normal(size=(20000, 2)) * [0.7, 1.3]
    s = draws[np.all((draws >= lo) & (draws <= hi), axis=1)][:3000].astype(np.float32)
    x_std = np.zeros((len(s), 1), np.float32)
    ml = fitted_base_scale(model, s, x_std)
    assert np.all(ml < [0.64, 1.15])  # what ignoring the box gives: both too narrow
    np.testing.assert_allclose(truncated_base_scale(model, s, x_std, (lo, hi)), [0.7, 1.3], rtol=0.04)
    # nothing cut: the same as the untruncated estimate
    free = (np.full(2, -np.inf, np.float32), np.full(2, np.inf, np.float32))
    np.testing.assert_allclose(truncated_base_scale(model, s, x_std, free), ml, rtol=1e-4)


def test_the_default_base_scale_is_fitted_on_the_posterior_cut_to_the_box():
    """NPE()'s scale is base_calibration="truncated"'s; where the box cuts, it is wider than the untruncated fit's."""
    prior, bank = edge_problem(3000, 0)
    fit = {bc: NPE(hidden=16, num_layers=3, max_epochs=30, base_calibration=bc).fit(
        bank, prior=prior, key=jax.random.key(3), progress=False).config["base_scale"]
        for bc in ("auto", "truncated", "scale")}
    np.testing.assert_allclose(fit["auto"], fit["truncated"])
    assert np.all(np.asarray(fit["truncated"]) > np.asarray(fit["scale"]) + 0.03)


def _pairs_from_widened(model, scale, *, n, x_seed, key):
    """``(s, x_std)``: ``n`` standard-normal conditions and one draw each from ``model`` with its base scaled."""
    from bmsbi.estimators.npe import with_base_scale

    x_std = np.random.default_rng(x_seed).normal(size=(n, 2)).astype(np.float32)
    wide = with_base_scale(model, scale)
    cond = jax.vmap(wide.condition)(jnp.asarray(x_std))
    s = jax.vmap(lambda k, c: wide.flow.sample(k, condition=c))(jax.random.split(jax.random.key(key), n), cond)
    return np.asarray(s), x_std


def test_coverage_fitted_factor_recovers_a_known_widening(gl2):
    """Pairs from the flow with its base widened by 1.3: the HPD-coverage factor is 1.3, and the
    unwidened flow's coverage on them is visibly off (the criterion can tell)."""
    from bmsbi.estimators.npe import coverage_fitted_factor
    from bmsbi.posterior import identity_mask

    prior, post = gl2
    model = post.model
    s, x_std = _pairs_from_widened(model, [1.3, 1.3], n=1000, x_seed=5, key=6)
    factors = np.round(np.arange(0.8, 1.801, 0.05), 2)
    factor, dev = coverage_fitted_factor(model, np.ones(2), s, x_std, prior=prior,
                                         identity=identity_mask(prior, "auto"), stats=post.stats, factors=factors)
    assert abs(factor - 1.3) <= 0.1, (factor, dev)
    assert dev[list(factors).index(1.0)] > 0.1 > dev.min()


def assert_scaled_and_exact(post):
    """A base scale near 1 (the flow family holds the exact posterior, so held-out rows see a
    standard base) and the analytic moments; returns ``(x_obs, draws)``."""
    scale = np.asarray(post.config["base_scale"])
    assert scale.shape == (2,) and np.all(np.abs(scale - 1) < 0.1), scale
    x_obs = np.array([0.3, -0.8], np.float32)
    s = np.asarray(post.sample(jax.random.key(2), x_obs, 20000))
    mean, sd = analytic(x_obs)
    assert np.all(np.abs(s.mean(0) - mean) < 0.1 * sd), (s.mean(0), mean)
    np.testing.assert_allclose(s.std(0), sd, rtol=0.1)
    return x_obs, s


def test_base_calibration_scale_keeps_an_exact_posterior_and_survives_files(tmp_path):
    prior, bank = gaussian_linear(2, 5000, seed=5)
    post = NPE(density_estimator="maf", base_calibration="scale").fit(
        bank, prior=prior, key=jax.random.key(6), progress=False)
    x_obs, s = assert_scaled_and_exact(post)
    post.save(tmp_path / "p.bmsbi")
    back = bmsbi.load_posterior(tmp_path / "p.bmsbi")
    assert back.config["base_scale"] == post.config["base_scale"]
    np.testing.assert_allclose(back.log_prob(s[:50], x_obs), post.log_prob(s[:50], x_obs), rtol=1e-5)


def test_ensemble_is_the_mixture_of_its_members_and_survives_files(tmp_path):
    prior, bank = gaussian_linear(2, 4000, seed=7)
    post = NPE(density_estimator="maf", ensemble=3, max_epochs=40).fit(
        bank, prior=prior, key=jax.random.key(8), progress=False)
    assert post.config["ensemble"] == 3 and "base_scale" not in post.config   # "auto": no scale on a mixture
    x_obs = np.array([[0.3, -0.8], [1.5, 0.2]], np.float32)
    s = np.asarray(post.sample(jax.random.key(2), x_obs, 20001))            # not a multiple of 3
    assert s.shape == (2, 20001, 2)
    for i in range(2):
        mean, sd = analytic(x_obs[i])
        assert np.all(np.abs(s[i].mean(0) - mean) < 0.1 * sd), (s[i].mean(0), mean)
        np.testing.assert_allclose(s[i].std(0), sd, rtol=0.1)
    # log_prob is the log of the members' mean density: members rebuilt one by one agree
    members = post.model.members
    lp = np.asarray(post.log_prob(s[:, :40], x_obs))
    per = []
    for k in range(3):
        one = jax.tree.map(lambda a: a[k] if eqx.is_array(a) else a, members)
        single = bmsbi.posterior.DirectPosterior(one, prior=prior, x_shape=(2,), stats=post.stats,
                                                 config={**post.config, "ensemble": 1})
        per.append(np.asarray(single.log_prob(s[:, :40], x_obs)))
    np.testing.assert_allclose(lp, np.log(np.mean(np.exp(per), axis=0)), rtol=1e-4, atol=1e-4)
    assert np.abs(per[0] - per[1]).max() > 1e-3                              # members differ
    post.save(tmp_path / "e.bmsbi")
    back = bmsbi.load_posterior(tmp_path / "e.bmsbi")
    np.testing.assert_allclose(np.asarray(back.log_prob(s[:, :40], x_obs)), lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(back.sample(jax.random.key(4), x_obs, 30)),
                                  np.asarray(post.sample(jax.random.key(4), x_obs, 30)))


def test_mixture_scale_of_one_member_is_the_closed_form_and_an_ensemble_keeps_an_exact_posterior(gl2, tmp_path):
    from bmsbi.estimators.npe import fitted_base_scale, fitted_mixture_scale

    prior, post = gl2
    rng = np.random.default_rng(3)
    s_theta = rng.normal(size=(500, 2)).astype(np.float32) * [1.3, 0.8]
    x_std = rng.normal(size=(500, 2)).astype(np.float32)
    model = post.model
    np.testing.assert_allclose(fitted_mixture_scale([model], s_theta, x_std),
                               fitted_base_scale(model, s_theta, x_std), rtol=1e-4)
    # An ensemble with a shared scale: members held out of one set of rows, the scale fitted
    # on them near 1 for a flow family that holds the exact posterior, kept in the file.
    prior, bank = gaussian_linear(2, 4000, seed=7)
    ens = NPE(density_estimator="maf", ensemble=3, max_epochs=40, base_calibration="scale").fit(
        bank, prior=prior, key=jax.random.key(8), progress=False)
    x_obs, s = assert_scaled_and_exact(ens)
    back = bmsbi.load_posterior(ens.save(tmp_path / "es.bmsbi"))
    np.testing.assert_allclose(np.asarray(back.log_prob(s[:50], x_obs)), np.asarray(ens.log_prob(s[:50], x_obs)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, word", [({"base_calibration": "tau"}, "base_calibration"),
                                          ({"base_calibration": "scale", "validation_fraction": 0.0},
                                           "base_calibration"),
                                          ({"ensemble": 0}, "ensemble: expected an int"),
                                          ({"ensemble": 2.0}, "ensemble: expected an int"),
                                          ({"ensemble": 3, "base_calibration": "scale", "validation_fraction": 0.0},
                                           "base_calibration"),
                                          ({"ensemble": 3, "base_calibration": "coverage"},
                                           "base_calibration: 'coverage' calibrates one network"),
                                          ({"base_calibration": "coverage", "validation_fraction": 0.0},
                                           "base_calibration")])
def test_base_calibration_bad_input(kwargs, word):
    with pytest.raises(ValueError, match=word):
        NPE(**kwargs)


def test_a_warm_start_begins_at_the_earlier_fit_and_keeps_its_standardisation(tmp_path):
    prior, bank = gaussian_linear(2, 600)
    small = dict(hidden=16, num_layers=2, base_calibration="none")
    first = NPE(max_epochs=15, **small).fit(bank, prior=prior, key=1, progress=False)
    first.save(tmp_path / "first.bmsbi")
    back = bmsbi.load_posterior(tmp_path / "first.bmsbi")
    # Another bank, shifted: a fresh fit would standardise it differently.
    _, other = gaussian_linear(2, 600, seed=5)
    shifted = bmsbi.Bank(other.theta, other.x + 0.5, names=other.names)
    # A vanishing learning rate: no epoch beats the start (keep_start), so the result IS the start.
    still = NPE(max_epochs=1, learning_rate=1e-12, **small).fit(shifted, prior=prior, key=2, progress=False,
                                                                init=back)
    assert still.history.best_epoch == -1
    for k in first.stats:
        np.testing.assert_array_equal(still.stats[k], first.stats[k])
    theta = np.asarray(first.sample(jax.random.key(3), np.zeros(2, np.float32), 50))
    np.testing.assert_allclose(np.asarray(still.log_prob(theta, np.zeros(2, np.float32))),
                               np.asarray(first.log_prob(theta, np.zeros(2, np.float32))), atol=1e-5)
    # A calibrated start has its base scale taken off before training, and a new one fitted.
    calibrated = NPE(max_epochs=15, hidden=16, num_layers=2).fit(bank, prior=prior, key=1, progress=False)
    again = NPE(max_epochs=3, hidden=16, num_layers=2).fit(bank, prior=prior, key=2, progress=False,
                                                           init=calibrated, validation_rows=np.arange(100))
    assert len(again.config["base_scale"]) == 2 and again.history.num_val == 100


def test_a_warm_start_refuses_another_architecture_and_bad_validation_rows():
    prior, bank = gaussian_linear(2, 300)
    first = NPE(max_epochs=2, hidden=16, num_layers=2).fit(bank, prior=prior, key=1, progress=False)
    with pytest.raises(ValueError, match=r"init: its architecture differs from this NPE's \(in \['hidden'\]\)"):
        NPE(max_epochs=2, hidden=8, num_layers=2).fit(bank, prior=prior, key=2, progress=False, init=first)
    with pytest.raises(ValueError, match="init: expected a posterior from NPE.fit"):
        NPE(max_epochs=2).fit(bank, prior=prior, key=2, progress=False, init="posterior")
    maf = NPE(max_epochs=2, hidden=16, num_layers=2, density_estimator="maf")
    with pytest.raises(ValueError, match="init: a warm start needs a flow without paramax.Parameterize"):
        maf.fit(bank, prior=prior, key=2, progress=False, init=maf.fit(bank, prior=prior, key=1, progress=False))
    for rows, needle in [([1, 1, 2], r"distinct indices in \[0, 300\)"), ([0, 300], "distinct indices"),
                         (np.arange(300), "leave none to train on"), ([0.5], "row indices")]:
        with pytest.raises(ValueError, match=f"validation_rows: .*{needle}"):
            NPE(max_epochs=2).fit(bank, prior=prior, key=2, progress=False, validation_rows=rows)
