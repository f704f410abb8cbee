"""Tests of the ready-made inference tasks in :mod:`simulators`.

Each task is compiled twice at most (its cached ``observe`` and one
``simulate_bank`` chunk); every further call reuses the compiled code.
"""

from __future__ import annotations

import brainmass
import jax
import numpy as np
import pytest

import bmsbi
import simulators
from bmsbi.summaries import FC, SpectralPeak

EXPECTED = {  # parameter names, recording shape, number of default-summary features
    "hopf_node": (("a", "f", "sigma"), (1000, 1), 15),
    "jansen_rit": (("A", "B", "C", "mu"), (1000, 1), 15),
    "wilson_cowan": (("wEE", "wIE", "P", "sigma"), (1000, 1), 15),
    "montbrio": (("eta", "J", "Delta", "sigma"), (1000, 1), 15),
    "hopf_network": (("G", "a", "sigma"), (1000, 8), 73),
}
TASKS = sorted(EXPECTED)


def _theta(*values):
    return np.asarray(values, np.float32)


def _observe(task, theta, seed=0):
    return np.asarray(task.observe(_theta(*theta), jax.random.key(seed)))


# ------------------------------------------------------------------ registry
def test_registry_lists_every_task_and_module_attributes_agree():
    # the whole-brain BOLD tasks are built on first use (tests/test_empirical.py)
    assert simulators.list_tasks() == sorted(TASKS + ["hopf_bold_gw", "hopf_bold_hcp"])
    for name in TASKS:
        module = getattr(simulators, name)
        assert module.task is simulators.get(name)
        assert module.prior is module.task.prior and module.summary is module.task.summary
        assert module.fs == module.task.fs == 250.0
    with pytest.raises(KeyError, match="available tasks: hopf_bold_gw, hopf_bold_hcp, hopf_network"):
        simulators.get("hopf")


@pytest.mark.parametrize("name", TASKS)
def test_prior_names_dim_and_true_theta(name):
    task = simulators.get(name)
    names, shape, n_features = EXPECTED[name]
    assert task.prior.names == names and task.prior.dim == len(names)
    assert bool(task.prior.in_support(np.asarray(task.true_theta, np.float32)))
    assert bmsbi.Prior.from_dict(task.prior.to_dict()) == task.prior
    assert (task.n_time, task.n_regions) == shape
    assert len(task.feature_names) == n_features == task.summary.output_size(*shape)
    assert set(task.units) == set(names) | {"recording"} and task.description


# ----------------------------------------------------------- observe/simulate
@pytest.mark.parametrize("name", TASKS)
def test_observe_shape_and_simulate_determinism(name):
    task = simulators.get(name)
    _, shape, n_features = EXPECTED[name]
    rec = task.observe(task.true_theta, jax.random.key(0))
    assert rec.shape == shape and rec.dtype == np.float32
    assert np.all(np.isfinite(rec)) and float(np.std(rec)) > 0
    s0 = task.simulate(task.true_theta, jax.random.key(0))
    assert s0.shape == (n_features,) and np.all(np.isfinite(s0))
    np.testing.assert_array_equal(s0, task.simulate(task.true_theta, jax.random.key(0)))
    assert not np.allclose(s0, task.simulate(task.true_theta, jax.random.key(1)))
    # simulate is the default summary of the recording, and int seeds are keys
    np.testing.assert_allclose(s0, task.summary(rec), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rec, task.observe(task.true_theta, 0))


def test_with_summary_swaps_the_statistic_and_renames_the_simulator():
    task = simulators.get("hopf_network")
    fc_task = task.with_summary(FC())
    x = fc_task.simulate(task.true_theta, 0)
    assert x.shape == (28,) and fc_task.prior is task.prior
    np.testing.assert_allclose(x, FC()(task.observe(task.true_theta, 0)), rtol=1e-6)
    assert fc_task.simulator.__qualname__ != task.simulator.__qualname__
    with pytest.raises(ValueError, match="FC: signal has 1 region"):
        simulators.get("hopf_node").with_summary(FC())


def test_observe_rejects_a_wrong_parameter_vector():
    task = simulators.get("hopf_node")
    with pytest.raises(ValueError, match=r"theta: expected shape \(3,\) .*a, f, sigma.*got \(4,\)"):
        task.observe(np.zeros(4, np.float32), 0)


@pytest.mark.parametrize("name", TASKS)
def test_task_runs_under_simulate_bank_with_finite_outputs(name):
    task = simulators.get(name)
    bank = task.bank(64, jax.random.key(7), progress=False)
    assert bank.meta["num_simulations"] == 64 and bank.meta["task"] == name
    assert bank.meta["num_invalid"] <= 3 and len(bank) == 64 - bank.meta["num_invalid"]
    assert bank.x_shape == (EXPECTED[name][2],) and np.all(np.isfinite(bank.x))
    assert bank.names == task.prior.names and bool(task.prior.in_support(bank.theta).all())
    # Parameters, not only the noise, set the summaries: across the prior a feature
    # varies several times more than over repeated simulations at true_theta.
    repeats = np.stack([task.simulate(task.true_theta, jax.random.key(100 + i)) for i in range(8)])
    ratio = bank.x.std(0) / np.maximum(repeats.std(0), 1e-6)
    assert np.median(ratio) > 3, np.round(ratio, 1)


@pytest.mark.parametrize("name", TASKS)
def test_every_parameter_is_identifiable_from_the_default_summary(name):
    """A random forest trained on 384 shipped simulations predicts each parameter of 128 others."""
    ensemble = pytest.importorskip("sklearn.ensemble")
    bank = simulators.load_bank(name)
    train, test = slice(0, 384), slice(384, None)
    for j, pname in enumerate(bank.names):
        forest = ensemble.RandomForestRegressor(50, min_samples_leaf=3, random_state=0, n_jobs=1)
        pred = forest.fit(bank.x[train], bank.theta[train, j]).predict(bank.x[test])
        r2 = 1 - np.mean((pred - bank.theta[test, j]) ** 2) / np.var(bank.theta[test, j])
        assert r2 > 0.2, f"{name}: {pname} is barely identifiable from the summary (R^2 {r2:.2f})"


# ------------------------------------------------- effects a modeller expects
def test_hopf_node_power_follows_the_bifurcation_and_the_noise_intensity():
    task = simulators.get("hopf_node")
    below = _observe(task, (-0.04, 10.0, 0.005))[:, 0]
    above = _observe(task, (0.04, 10.0, 0.005))[:, 0]
    assert below.var() * 10 < above.var()
    # limit cycle of radius sqrt(a): std of x is sqrt(a / 2)
    assert abs(above.std() / np.sqrt(0.04 / 2) - 1) < 0.05
    # below the bifurcation x is a noisy damped rotation: var(x) = sigma^2 / (2 |a|)
    assert abs(below.var() / (0.005 ** 2 / (2 * 0.04)) - 1) < 0.3


def test_hopf_node_peak_frequency_tracks_f_within_the_welch_resolution():
    task = simulators.get("hopf_node")
    peak = SpectralPeak(task.fs, nperseg=256)
    for f in (6.0, 12.5, 25.0, 37.0):
        freq = float(peak(_observe(task, (0.02, f, 0.005)))[0])
        assert abs(freq - f) <= task.fs / 256, (f, freq)


def test_jansen_rit_standard_parameters_give_an_alpha_rhythm():
    task = simulators.get("jansen_rit")
    peak = SpectralPeak(task.fs, nperseg=256)
    standard = _observe(task, task.true_theta)  # A = 3.25 mV, B = 22 mV, C = 135, mu = 220 Hz
    assert 8.0 <= float(peak(standard)[0]) <= 13.0
    # a weaker excitatory gain leaves only noise around a fixed point
    weak = _observe(task, (2.7, 22.0, 135.0, 220.0))
    assert weak.std() * 2 < standard.std()


def test_wilson_cowan_drive_switches_the_oscillation_on():
    task = simulators.get("wilson_cowan")
    quiet = _observe(task, (16.0, 12.0, 0.5, 0.05))
    active = _observe(task, (16.0, 12.0, 1.5, 0.05))
    assert quiet.mean() < active.mean() and quiet.std() * 10 < active.std()
    assert 15.0 <= float(SpectralPeak(task.fs, nperseg=256)(active)[0]) <= 45.0


@pytest.mark.parametrize("eta, J, Delta", [(-8.0, 5.0, 1.0), (-2.0, 5.0, 1.0), (-1.0, 10.0, 1.0)])
def test_montbrio_mean_rate_matches_the_analytic_fixed_point(eta, J, Delta):
    # Steady state of the MPR equations: v = -Delta / (2 pi r), r^2 (v^2 + eta + J r - pi^2 r^2) = 0
    roots = np.roots([-np.pi ** 2, J, eta, 0.0, Delta ** 2 / (4 * np.pi ** 2)])
    rate = [z.real for z in roots if abs(z.imag) < 1e-9 and z.real > 0]
    assert len(rate) == 1  # monostable
    rate_hz = rate[0] / 0.010  # tau_m = 10 ms
    rec = _observe(simulators.get("montbrio"), (eta, J, Delta, 0.01))
    assert abs(rec.mean() / rate_hz - 1) < 0.01


def test_hopf_network_functional_connectivity_grows_with_coupling():
    task = simulators.get("hopf_network")
    fc = FC()
    mean_fc = {G: float(np.mean(fc(_observe(task, (G, -0.01, 0.01))))) for G in (0.0, 0.01, 0.05)}
    assert abs(mean_fc[0.0]) < 0.1  # independent noise, no coupling
    assert mean_fc[0.0] < mean_fc[0.01] < mean_fc[0.05] and mean_fc[0.05] > 0.15


# ------------------------------------------------------------ shipped banks
@pytest.mark.parametrize("name", TASKS)
def test_registered_bank_loads_through_brainmass_datasets(name):
    task = simulators.get(name)
    registered = dict(brainmass.datasets.list_datasets())
    assert simulators.dataset_name(name) in registered
    bank = brainmass.datasets.load_dataset(f"bmsbi_{name}_bank")
    assert isinstance(bank, bmsbi.Bank) and bank.names == task.prior.names
    assert len(bank) == 512 - bank.meta["num_invalid"] and len(bank) >= 500
    assert bank.theta.shape == (len(bank), task.prior.dim)
    assert bank.x.shape == (len(bank), EXPECTED[name][2]) and np.all(np.isfinite(bank.x))
    assert bool(task.prior.in_support(bank.theta).all())
    assert bank.meta["summary"] == task.summary.to_dict() and bank.meta["prior"] == task.prior.to_dict()


@pytest.mark.parametrize("name", TASKS)
def test_shipped_bank_matches_the_current_task(name):
    """Row 0 re-simulated now equals the shipped one: regenerate the banks after changing a task."""
    from simulators._data.make_banks import SEEDS

    task = simulators.get(name)
    bank = simulators.load_bank(name)
    assert 0 not in bank.meta["invalid_indices"]
    k_theta, k_sim = jax.random.split(jax.random.key(SEEDS[name]))  # as bmsbi.simulate_bank derives them
    theta0 = task.prior.sample(jax.random.fold_in(k_theta, 0), 1)[0]
    np.testing.assert_allclose(bank.theta[0], theta0, rtol=1e-6)
    x0 = task.simulate(theta0, jax.random.fold_in(k_sim, 0))
    np.testing.assert_allclose(bank.x[0], x0, rtol=1e-3, atol=1e-4)


def test_bank_registration_is_idempotent():
    assert simulators.register_banks(TASKS) == []  # the hopf_bold tasks ship no bank
