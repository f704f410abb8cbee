"""bmsbi.discovery: libraries, smoothing, datasets, bad input and the acceptance numbers.

Acceptance (issue 6), on the registered benchmark data (noise sd = fraction of each
state's sd):
- Stuart–Landau, 1 % noise: support F1 = 1 and relative coefficient error <= 5 %;
  5 % noise, trajectory method: F1 >= 0.9;
- FitzHugh–Nagumo, 1 % noise: F1 = 1;
- inclusion probabilities >= 0.9 on true terms, <= 0.1 on most false ones (1 % noise);
- the discovered module runs in brainmass.Simulator and reproduces a held-out trajectory.
"""

import json

import brainmass
import brainstate
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmsbi import discovery as D
from bmsbi.engine import split_brainstate


# ------------------------------------------------------------------- libraries
def test_polynomial_library_names_and_values():
    lib = D.polynomial_library(2, 3)
    assert lib.names == ("1", "x0", "x1", "x0^2", "x0*x1", "x1^2", "x0^3", "x0^2*x1",
                         "x0*x1^2", "x1^3")
    x = np.array([[2.0, 3.0], [-1.0, 0.5]])
    got = np.asarray(lib(x))
    want = np.array([[1, a, b, a * a, a * b, b * b, a ** 3, a * a * b, a * b * b, b ** 3]
                     for a, b in x])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert D.polynomial_library(3, 2, include_bias=False).n_terms == 9
    # gradients through the library stay finite at x = 0 (the trajectory method needs them)
    g = jax.grad(lambda z: jnp.sum(lib(z)))(jnp.zeros(2))
    assert np.all(np.isfinite(g))


def test_function_coupling_and_concat_libraries():
    lib = D.polynomial_library(2, 1) + D.sigmoid_library(2, gain=2.0) + D.tanh_library(2)
    assert lib.names == ("1", "x0", "x1", "S(x0)", "S(x1)", "tanh(x0)", "tanh(x1)")
    x = jnp.array([0.3, -0.7])
    out = np.asarray(lib(x))
    np.testing.assert_allclose(out[3:5], 1 / (1 + np.exp(-2 * np.array([0.3, -0.7]))), rtol=1e-6)
    np.testing.assert_allclose(out[5:], np.tanh([0.3, -0.7]), rtol=1e-6)

    C = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.0], [0.2, 0.3, 0.0]])
    net = D.polynomial_library(2, 1) + D.coupling_library(C, 2)
    assert net.names[-2:] == ("C@x0", "C@x1") and net.needs_nodes
    X = np.random.default_rng(0).normal(size=(5, 3, 2))
    th = np.asarray(net(X))
    assert th.shape == (5, 3, 5)
    np.testing.assert_allclose(th[..., 3], np.einsum("ij,tj->ti", C, X[..., 0]), rtol=1e-5)
    with pytest.raises(ValueError, match="x: expected network states"):
        net(np.ones((5, 2)))


def test_library_json_roundtrip_jit_and_errors():
    C = np.eye(2)
    for lib in (D.polynomial_library(3, 2), D.sigmoid_library(2, gain=4.0, threshold=1.0),
                D.polynomial_library(2, 2) + D.tanh_library(2),
                D.polynomial_library(1, 1) + D.coupling_library(C, 1)):
        back = D.library_from_json(lib.to_json())
        assert back == lib and back.names == lib.names and hash(back) == hash(lib)
        json.loads(lib.to_json())  # plain JSON
    lib = D.polynomial_library(2, 2) + D.sigmoid_library(2)
    x = jnp.ones((4, 2))
    np.testing.assert_allclose(jax.jit(lib)(x), lib(x))
    with pytest.raises(ValueError, match="names must be unique"):
        D.polynomial_library(2, 1) + D.polynomial_library(2, 2)
    with pytest.raises(ValueError, match="same number of states"):
        D.polynomial_library(2, 1) + D.sigmoid_library(3)
    with pytest.raises(ValueError, match="degree: expected a positive int, got 0"):
        D.polynomial_library(2, 0)
    with pytest.raises(ValueError, match=r"x: expected an array of shape \(\.\.\., 2\)"):
        lib(jnp.ones((4, 3)))


# ------------------------------------------------------------------- smoothing
def test_smooth_derivative_accuracy():
    t = np.arange(0, 20, 0.01)
    x = np.stack([np.sin(t), np.cos(2 * t)], -1)
    _, dx, used = D.smooth_derivative(x, 0.01)
    np.testing.assert_allclose(dx, np.stack([np.cos(t), -2 * np.sin(2 * t)], -1), atol=1e-3)
    assert used.tolist() == [7, 7]  # clean data: the narrowest window
    noisy = x + 0.02 * np.random.default_rng(1).normal(size=x.shape)
    _, dxn, used = D.smooth_derivative(noisy, 0.01)
    assert np.all(used > 7)  # noise widens the window
    err = np.sqrt(np.mean((dxn - np.stack([np.cos(t), -2 * np.sin(2 * t)], -1)) ** 2))
    assert err < 0.1


# -------------------------------------------------------------------- datasets
def test_datasets_registered_deterministic_and_noise_level():
    names = dict(brainmass.datasets.list_datasets())
    for system in D.SYSTEMS:
        for noise in D.NOISE_LEVELS:
            assert D.dataset_name(system, noise) in names
    assert D.register_datasets() == []  # a second registration is a no-op
    a = brainmass.datasets.load_dataset("bmsbi_discovery_fitzhugh_nagumo_noise5")
    b = D.benchmark_system("fitzhugh_nagumo", 0.05)
    np.testing.assert_array_equal(np.stack(a.trajectories), np.stack(b.trajectories))
    clean, noisy = np.concatenate(a.clean), np.concatenate(a.trajectories)
    ratio = (noisy - clean).std(0) / clean.std(0)
    np.testing.assert_allclose(ratio, 0.05, rtol=0.1)
    # the true coefficients give the generating vector field
    for system in D.SYSTEMS:
        data = D.benchmark_system(system, 0.0)
        x = np.concatenate(data.clean)
        np.testing.assert_allclose(np.asarray(data.library(x), float) @ data.coefficients,
                                   D.SYSTEMS[system]["field"](x), atol=1e-5)


# ------------------------------------------------------------------- bad input
def test_bad_data_errors_name_argument_expected_and_received():
    data = D.benchmark_system("stuart_landau", 0.0)
    lib = data.library
    x = np.array(data.trajectories[0])
    x[5, 1] = np.nan
    with pytest.raises(ValueError, match=r"data: expected finite values, got 1 NaN/inf"):
        D.fit(x, 0.01, library=lib)
    with pytest.raises(ValueError, match=r"data\[1\]: expected finite values"):
        D.fit([data.trajectories[0], x], 0.01, library=lib)
    with pytest.raises(ValueError, match=r"data: expected shape \(time, 2\).*single time point"):
        D.fit(np.ones(2), 0.01, library=lib)
    with pytest.raises(ValueError, match=r"data: expected at least 3 time points.*got 1"):
        D.fit(np.ones((1, 2)), 0.01, library=lib)
    with pytest.raises(ValueError, match=r"data: expected at least n_terms=10 samples.*got 6"):
        D.fit([np.ones((3, 2)), np.ones((3, 2))], 0.01, library=lib)
    with pytest.raises(ValueError, match=r"data: expected shape \(time, 2\) to match "
                                         r"library.n_states=2, got \(50, 3\)"):
        D.fit(np.ones((50, 3)), 0.01, library=lib)
    with pytest.raises(ValueError, match="dt: expected a positive float"):
        D.fit(data.trajectories[0], -1.0, library=lib)
    with pytest.raises(ValueError, match="method: expected one of"):
        D.fit(data.trajectories[0], 0.01, library=lib, method="sindy")
    with pytest.raises(ValueError, match="library: expected a bmsbi.discovery library"):
        D.fit(data.trajectories[0], 0.01, library="poly3")


# ------------------------------------------------------------------ acceptance
@pytest.fixture(scope="module")
def stuart_landau_1pct():
    data = brainmass.datasets.load_dataset("bmsbi_discovery_stuart_landau_noise1")
    found = D.fit(list(data.trajectories), data.dt, library=data.library, key=0,
                  n_bootstrap=20)
    return data, found


def test_stuart_landau_1pct_support_coefficients_and_inclusion(stuart_landau_1pct):
    data, found = stuart_landau_1pct
    assert D.support_f1(found.coefficients, data.coefficients) == 1.0
    assert D.coefficient_error(found.coefficients, data.coefficients) <= 0.05
    true = data.coefficients != 0
    ip = found.inclusion_probability
    assert ip.shape == (10, 2)
    assert ip[true].min() >= 0.9
    assert np.mean(ip[~true] <= 0.1) >= 0.8  # "most" false terms
    assert found.ensemble_coefficients.shape == (20, 10, 2)
    lines = found.equations().splitlines()
    assert lines[0].startswith("dx0/dt = ") and " x0^3" in lines[0] and "x0^2*x1" not in lines[0]
    assert lines[1].startswith("dx1/dt = 2.0")


def test_discovered_module_runs_in_simulator_and_reproduces_heldout(stuart_landau_1pct):
    data, found = stuart_landau_1pct
    # held out: a new initial condition, never seen in fitting, simulated from the truth
    x0 = np.array([1.6, -1.1])
    truth = D.datasets._rk4(D.SYSTEMS["stuart_landau"]["field"], [x0], data.dt, 301)[0]
    model = found.module
    assert isinstance(model, brainstate.nn.Dynamics)
    assert isinstance(model.coefficients, brainstate.nn.Param)
    params, _ = split_brainstate(model)
    assert len(jax.tree_util.tree_leaves(params)) == 1  # the coefficients are the trainables
    sim = brainmass.Simulator(model, dt=data.dt)
    brainstate.nn.init_all_states(model)
    model.x.value = jnp.asarray(x0, jnp.float32)
    out = np.asarray(sim.run(300 * data.dt, init_states=False)["output"])
    pred = np.concatenate([x0[None], out])
    rel = np.sqrt(np.mean((pred - truth) ** 2)) / truth.std()
    assert rel < 0.05, rel
    np.testing.assert_allclose(found.simulate(x0, 301), pred, atol=1e-5)
    batch = found.simulate(np.stack([x0, -x0]), 11)
    assert batch.shape == (2, 11, 2)
    np.testing.assert_allclose(batch[0], pred[:11], atol=1e-5)


def test_discovered_json_roundtrip(stuart_landau_1pct):
    _, found = stuart_landau_1pct
    back = D.Discovered.from_json(found.to_json())
    np.testing.assert_allclose(back.coefficients, found.coefficients)
    np.testing.assert_allclose(back.inclusion_probability, found.inclusion_probability)
    assert back.equations() == found.equations()


def test_fitzhugh_nagumo_1pct_support():
    data = brainmass.datasets.load_dataset("bmsbi_discovery_fitzhugh_nagumo_noise1")
    found = D.fit(list(data.trajectories), data.dt, library=data.library, key=0, n_bootstrap=0)
    assert D.support_f1(found.coefficients, data.coefficients) == 1.0
    assert D.coefficient_error(found.coefficients, data.coefficients) <= 0.05


def test_stuart_landau_5pct_trajectory_method():
    data = brainmass.datasets.load_dataset("bmsbi_discovery_stuart_landau_noise5")
    found = D.fit(list(data.trajectories), data.dt, library=data.library, method="trajectory",
                  key=0, n_bootstrap=0)
    assert D.support_f1(found.coefficients, data.coefficients) >= 0.9
    assert D.coefficient_error(found.coefficients, data.coefficients) <= 0.05
    assert found.method == "trajectory" and len(found.history) >= 2


def test_format_equations():
    text = D.format_equations(np.array([[0.5, 0.0], [-1.0, 0.0], [0.0, 2.25]]),
                              ("1", "x0", "S(x1)"), precision=2)
    assert text == "dx0/dt = 0.50 - 1.00 x0\ndx1/dt = 2.25 S(x1)"
    assert D.format_equations(np.zeros((1, 1)), ("x0",)) == "dx0/dt = 0"


def test_network_discovery_with_coupling_terms():
    # three identical nodes, x0 coupled through C: the coupling strength is discovered
    C = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.2], [0.5, 0.2, 0.0]])

    def field(x):
        x0, x1 = x[..., 0], x[..., 1]
        return np.stack([x0 - 2 * x1 - x0 ** 3 + 0.5 * np.einsum("ij,...j->...i", C, x0),
                         2 * x0 - 0.5 * x1], -1)

    rng = np.random.default_rng(0)
    clean = D.datasets._rk4(field, rng.normal(size=(3, 3, 2)), 0.01, 401)
    noisy = clean + 0.01 * clean.reshape(-1, 2).std(0) * rng.normal(size=clean.shape)
    lib = D.polynomial_library(2, 3) + D.coupling_library(C, 2)
    true = np.zeros((lib.n_terms, 2))
    for name, k, c in [("x0", 0, 1.0), ("x1", 0, -2.0), ("x0^3", 0, -1.0), ("C@x0", 0, 0.5),
                       ("x0", 1, 2.0), ("x1", 1, -0.5)]:
        true[lib.names.index(name), k] = c
    found = D.fit(list(noisy), 0.01, library=lib, key=0, n_bootstrap=0)
    assert D.support_f1(found.coefficients, true) == 1.0
    assert D.coefficient_error(found.coefficients, true) <= 0.05
    assert found.module.state_shape == (3, 2)
    assert found.simulate(noisy[0][0], 4).shape == (4, 3, 2)


def test_brainmass_objective_as_data_loss_and_stacked_input():
    data = D.benchmark_system("stuart_landau", 0.01)
    found = D.fit(np.stack(data.trajectories), data.dt, library=data.library, key=0,
                  n_bootstrap=0, loss=brainmass.objectives.timeseries_rmse())
    assert D.support_f1(found.coefficients, data.coefficients) == 1.0
    assert D.coefficient_error(found.coefficients, data.coefficients) <= 0.05
