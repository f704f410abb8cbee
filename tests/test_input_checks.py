"""Bad input to the prior, posterior, recording, CLI-infer, Trainer and discovery entry points.

Each row is one hole of issue 15 (or one of its class found beside it): the call must
raise a ``ValueError`` whose message names the argument and what came (the CLI: one
stderr line and exit 2), never drop data silently (the imaginary part of complex
numbers, a string read as a list of names, NaN read as a result) nor fail with numpy's
own message. One tiny posterior is trained per module.
"""

import re

import jax
import numpy as np
import numpyro.distributions as dist
import pytest

import bmsbi
from bmsbi import discovery
from bmsbi import io as bio
from bmsbi.cli import main
from bmsbi.estimators import NPE
from bmsbi.posterior import SCHEMA_VERSION, load_posterior

X_OBS = np.array([0.5, 0.1, 1.0], np.float32)


@pytest.fixture(scope="module")
def post():
    """NPE on 300 simulations of a 2-parameter model with 3 features (no summary pipeline)."""
    prior = bmsbi.Prior({"a": dist.Uniform(-1.0, 1.0), "s": dist.LogNormal(0.0, 0.5)})
    theta = np.asarray(prior.sample(jax.random.key(0), 300))
    x = np.stack([theta[:, 0] + theta[:, 1], theta[:, 0] * theta[:, 1], theta[:, 1]], 1)
    bank = bmsbi.Bank(theta, x.astype(np.float32), names=prior.names)
    return NPE(hidden=16, num_layers=2, max_epochs=2).fit(bank, prior=prior, key=jax.random.key(1),
                                                          progress=False)


# ------------------------------------------------------------------------ Prior.uniform
@pytest.mark.parametrize("kwargs, message", [
    (dict(low=[0.0], high=[1.0], names="mu"),
     r"^names: expected a list of 1 names, got the string 'mu'.*pass names=\['mu'\]"),
    (dict(low=[0.0, 0.0], high=[1.0, 1.0], names="mu"),
     r"^names: expected a list of 2 names, got the string 'mu': a string is not a list of names"),
    (dict(low=[0.0], high=[1.0], names=[1]), r"^names: expected non-empty strings, got \[1\]"),
    (dict(low=[0.0], high=[1.0], names=[""]), r"^names: expected non-empty strings"),
    (dict(low=[0.0], high=[1.0], names=5), r"^names: expected a list of 1 names \(str\), got int 5"),
    (dict(low=[0.0, 0.0], high=[1.0, 1.0], names={"a", "b"}), r"^names: expected .* got set"),
    (dict(low=[0.0, 0.0], high=[1.0, 1.0], names=["a", "a"]), r"^names: expected 2 distinct names"),
    (dict(low=[0.0, 0.0], high=[1.0, 1.0], names=["a"]), r"^names: expected 2 distinct names"),
    (dict(low=["a"], high=["b"]), r"^low: expected numbers .*got text \['a'\]"),
    (dict(low=[0.0], high=["b"]), r"^high: expected numbers .*got text \['b'\]"),
    (dict(low=[], high=[]), r"^low/high: expected bounds for at least one parameter, got empty"),
    (dict(low=None, high=[1.0]), r"^low: expected numbers .*got NoneType"),
    (dict(low=[0j], high=[1.0]), r"^low: expected real numbers, got complex"),
    (dict(low=[False], high=[True]), r"^low: expected real numbers, got booleans"),
    (dict(low=[[0.0], [1.0, 2.0]], high=[1.0]), r"^low: expected .*ragged list of 2 items .*\(1,\), \(2,\)"),
    (dict(low=[0.0, 0.0], high=[1.0]), r"^low/high: expected two 1-D arrays of the same length"),
    (dict(low=[1.0], high=[0.0]), r"^low/high: expected finite bounds with low < high"),
    (dict(low=[0.0], high=[np.inf]), r"^low/high: expected finite bounds"),
])
def test_prior_uniform_refuses(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bmsbi.Prior.uniform(**kwargs)


def test_prior_uniform_names_as_a_list_tuple_or_array():
    assert bmsbi.Prior.uniform(0.0, 1.0, names=["mu"]).names == ("mu",)
    assert bmsbi.Prior.uniform([0, 0], [1, 2], names=("a", "b")).names == ("a", "b")
    assert bmsbi.Prior.uniform([0, 0], [1, 2], names=np.array(["a", "b"])).names == ("a", "b")
    assert bmsbi.Prior.uniform([0, 0], [1, 2]).names == ("theta0", "theta1")


def test_posterior_file_whose_prior_has_low_above_high_is_refused(post, tmp_path):
    path = tmp_path / "p.bmsbi"
    post.save(path)
    header, payload = bio.read_file(path)
    for k in ("kind", "schema_version", "bmsbi_version", "payload_size", "payload_sha256"):
        header.pop(k)
    entry = header["prior"]["parameters"][0]
    assert entry["name"] == "a" and entry["family"] == "Uniform"
    entry["low"], entry["high"] = 1.0, -1.0
    bio.write_file(path, kind="posterior", schema_version=SCHEMA_VERSION, header=header, payload=payload)
    with pytest.raises(ValueError, match=r"\('a'\).*lower bound 1\.0 and upper bound -1\.0"):
        load_posterior(path)


# -------------------------------------------------------------- posterior x_obs / recordings
_RAGGED = [[0.5, 0.1, 1.0], [0.5, 0.1]]
_BAD_X = [
    ("complex", X_OBS + 1j, r"expected real numbers, got complex values \(complex64\), whose imaginary part"),
    ("ragged lists", _RAGGED, r"ragged list of 2 items whose shapes differ \(\(3,\), \(2,\)\)"),
    ("ragged arrays", [X_OBS, X_OBS[:2]], r"ragged list of 2 items whose shapes differ \(\(3,\), \(2,\)\)"),
    ("objects", np.array([0.5, None, 1.0], dtype=object), r"object array holding \['NoneType', 'float'\]"),
    ("text", ["0.5", "0.1", "1.0"], r"got text \['0\.5', '0\.1', '1\.0'\]"),
]
_CALLS = {
    "sample": ("x_obs", lambda p, x: p.sample(jax.random.key(0), x, 10)),
    "log_prob": ("x_obs", lambda p, x: p.log_prob(np.zeros(2), x)),
    "infer": ("recordings", lambda p, x: p.infer(jax.random.key(0), x, 10)),
    "to_arviz": ("x_obs", lambda p, x: p.to_arviz(jax.random.key(0), x, 10)),
    "map": ("x_obs", lambda p, x: p.map(x, num_samples=10, num_steps=0)),
    "ood_score": ("x_obs", lambda p, x: p.ood_score(x)),
}


@pytest.mark.parametrize("call", list(_CALLS))
@pytest.mark.parametrize("what, x, message", _BAD_X, ids=[r[0] for r in _BAD_X])
def test_posterior_refuses_bad_observations(post, call, what, x, message):
    arg, fn = _CALLS[call]
    with pytest.raises(ValueError, match=f"^{arg}: .*{message}"):
        fn(post, x)


@pytest.mark.parametrize("theta, message", [
    (np.zeros(2) + 1j, r"^theta: expected real numbers, got complex"),
    ([[0.0, 1.0], [0.0]], r"^theta: .*ragged list of 2 items .*\(\(2,\), \(1,\)\)"),
    (["a", "b"], r"^theta: .*got text"),
])
def test_log_prob_refuses_bad_theta(post, theta, message):
    with pytest.raises(ValueError, match=message):
        post.log_prob(theta, X_OBS)


def test_posterior_still_takes_lists_ints_and_jax_arrays(post):
    one = post.ood_score(X_OBS)  # through the same input checks as sample / log_prob / infer
    assert post.ood_score(X_OBS.tolist()) == one and post.ood_score(jax.numpy.asarray(X_OBS)) == one
    np.testing.assert_allclose(post.ood_score([X_OBS, X_OBS]), [one, one], rtol=1e-12)
    assert post.ood_score(np.array([1, 0, 1])) == post.ood_score(np.array([1.0, 0.0, 1.0]))
    assert post.ood_score(np.array([True, False, True])) == post.ood_score(np.array([1.0, 0.0, 1.0]))


# ------------------------------------------------------------------------------ Recording
_DATA = np.zeros((100, 2))


@pytest.mark.parametrize("kwargs, message", [
    (dict(data=_DATA + 1j, fs=100), r"^data: expected real numbers, got complex values \(complex128\)"),
    (dict(data=np.array([[1.0], [None]], dtype=object), fs=100), r"^data: .*object array holding"),
    (dict(data=[[1.0, 2.0], [3.0]], fs=100), r"^data: .*ragged list of 2 items .*\(\(2,\), \(1,\)\)"),
    (dict(data=[np.zeros(3), np.zeros(4)], fs=100), r"^data: .*ragged list of 2 items .*\(\(3,\), \(4,\)\)"),
    (dict(data=np.array(["1", "2"]), fs=100), r"^data: expected a numeric array \(time, channels\), got text"),
    (dict(data=np.ones(3, bool), fs=100), r"^data: expected real numbers, got booleans"),
    (dict(data=_DATA, fs="100"), r"^fs: expected a sampling rate in Hz .*got '100'"),
    (dict(data=_DATA, fs=True), r"^fs: expected a sampling rate in Hz .*got True"),
    (dict(data=_DATA, fs=float("nan")), r"^fs: expected .*finite number\), got nan"),
    (dict(data=_DATA, fs=float("inf")), r"^fs: expected .*finite number\), got inf"),
    (dict(data=_DATA, fs=1j), r"^fs: expected a sampling rate in Hz .*got 1j"),
    (dict(data=_DATA, fs=100, channels=[1, 2]), r"^channels: expected non-empty strings, got \[1, 2\]"),
    (dict(data=_DATA, fs=100, channels=["a", "a"]), r"^channels: expected unique names, got duplicates \['a'\]"),
    (dict(data=_DATA, fs=100, channels="ab"), r"^channels: expected a sequence of channel names \(str\), got 'ab'"),
    (dict(data=_DATA[:, :1], fs=100, channels="a"), r"^channels: expected a sequence of channel names"),
    (dict(data=_DATA, fs=100, notes="resampled"), r"^notes: expected a list of str .*got 'resampled'; for one note"),
    (dict(data=_DATA, fs=100, notes=5), r"^notes: expected a list of str .*got 5"),
    (dict(data=_DATA, fs=100, notes=[1]), r"^notes: expected a list of str"),
])
def test_recording_refuses(kwargs, message):
    data, fs = kwargs.pop("data"), kwargs.pop("fs")
    with pytest.raises(ValueError, match=message):
        bmsbi.Recording(data, fs, **kwargs)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_read_recording_refuses_a_complex_file(tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    data = np.zeros((100, 1)) + 1j
    np.save(path, data) if suffix == ".npy" else np.savez(path, data=data, fs=100.0)
    with pytest.raises(ValueError, match=rf"^data: expected real numbers, got complex.*\(reading c{suffix}\)"):
        bmsbi.read_recording(path, fs=100.0 if suffix == ".npy" else None)


# -------------------------------------------------------------------------- bmsbi infer
def cli(capsys, *argv):
    """``(status, stdout, stderr lines)`` of ``bmsbi argv...`` run in-process."""
    status = main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err.strip().splitlines()


def refused(capsys, *argv):
    """The one stderr line of a ``bmsbi`` call that must exit 2."""
    status, _, err = cli(capsys, *argv)
    assert status == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"bmsbi {argv[0]}: error: ")
    return err[0]


@pytest.fixture(scope="module")
def files(post, tmp_path_factory):
    d = tmp_path_factory.mktemp("infer")
    post.save(d / "post.bmsbi")
    good = np.stack([X_OBS, X_OBS * 1.1, X_OBS * 0.9, X_OBS])
    np.save(d / "good.npy", good)
    np.save(d / "nan.npy", np.where(np.arange(4)[:, None] == 2, np.nan, good))
    np.save(d / "inf.npy", np.where(np.arange(3) == 1, np.inf, X_OBS))
    np.save(d / "complex.npy", good + 1j)
    np.savetxt(d / "nan.csv", np.where(np.arange(4)[:, None] >= 1, np.nan, good), delimiter=",")
    return d


@pytest.mark.parametrize("fmt, out, refuse", [
    ("npz", "res.csv", ".csv but --format is npz"),
    ("csv", "res.json", ".json but --format is csv"),
    ("json", "res.NPZ", ".npz but --format is json"),
    ("npz", "res.out", None),  # np.savez alone would write res.out.npz
    ("json", "res.json", None),
])
def test_infer_writes_exactly_the_out_path_or_refuses_a_contradicting_suffix(files, tmp_path, capsys, fmt, out,
                                                                            refuse):
    argv = ("infer", files / "post.bmsbi", files / "good.npy", "--num-samples", 20, "--format", fmt,
            "--out", tmp_path / out)
    if refuse:
        line = refused(capsys, *argv)
        assert line.startswith("bmsbi infer: error: --out: ") and refuse in line
        assert list(tmp_path.iterdir()) == []
        return
    status, stdout, err = cli(capsys, *argv)
    assert status == 0, err
    assert [p.name for p in tmp_path.iterdir()] == [out]
    assert f"wrote {fmt} for 4 recordings to {tmp_path / out}" in stdout
    if fmt == "npz":
        with np.load(tmp_path / out) as f:
            assert f["samples"].shape == (4, 20, 2)


@pytest.mark.parametrize("name, message", [
    ("nan.npy", r"nan\.npy holds 3 NaN values in 1 of its 4 rows \(first: row 2\)"),
    ("nan.csv", r"nan\.csv holds 9 NaN values in 3 of its 4 rows \(first: row 1\)"),
    ("inf.npy", r"inf\.npy holds 1 inf values at 1 of its 3 positions \(first: 1\)"),
    ("complex.npy", r"complex\.npy: expected real numbers, got complex values"),
])
def test_infer_refuses_a_file_holding_nan_inf_or_complex(files, capsys, name, message):
    line = refused(capsys, "infer", files / "post.bmsbi", files / name, "--num-samples", 20)
    assert line.startswith("bmsbi infer: error: recordings: ") and re.search(message, line), line


def test_infer_with_one_bad_file_among_good_ones_refuses_all_naming_it(files, tmp_path, capsys):
    line = refused(capsys, "infer", files / "post.bmsbi", files / "good.npy", files / "nan.npy", files / "good.npy",
                   "--num-samples", 20, "--out", tmp_path / "res.csv")
    assert str(files / "nan.npy") in line and "good.npy" not in line
    assert not (tmp_path / "res.csv").exists()


# ------------------------------------------------------------------ Trainer and discovery
@pytest.fixture(scope="module")
def trainer():
    import brainmass
    import brainunit as u
    import optax

    from bmsbi.trainer import Trainer, cross_entropy

    x, y = brainmass.datasets.delayed_match_task(16, seq_len=4, n_symbols=2)
    net = brainmass.HORNSeqNetwork(n_input=2, n_hidden=4, n_output=2, alpha=0.2)
    return Trainer(net, cross_entropy, optax.adam(3e-2), dt=1.0 * u.ms), np.asarray(x), np.asarray(y)


def _fit(t, x, y):
    return t.fit((x, y), epochs=1, batch_size=8, key=0, progress=False)


@pytest.mark.parametrize("what, call, message", [
    ("complex inputs", lambda t, x, y: _fit(t, x + 1j, y),
     r"^train_data\[0\] \(inputs\): expected real numbers, got complex"),
    ("NaN inputs", lambda t, x, y: _fit(t, np.where(x > 0.5, np.nan, x), y),
     r"^train_data\[0\] \(inputs\): expected finite values, got \d+ NaN/inf in \d+ of 16 samples"),
    ("ragged inputs", lambda t, x, y: _fit(t, [x[0], x[1][:2]], y[:2]),
     r"^train_data\[0\] \(inputs\): .*ragged list of 2 items .*\(\(4, 2\), \(2, 2\)\)"),
    ("text targets", lambda t, x, y: _fit(t, x, np.array(["a"] * 16)), r"^train_data\[1\] \(targets\): .*got text"),
    ("NaN targets", lambda t, x, y: _fit(t, x, np.where(np.arange(16) == 3, np.nan, y)),
     r"^train_data\[1\] \(targets\): expected finite values, got 1 NaN/inf in 1 of 16 samples \(first: sample 3\)"),
    ("complex validation", lambda t, x, y: t.fit((x, y), validation_data=(x + 1j, y), epochs=1, batch_size=8,
                                                  key=0, progress=False),
     r"^validation_data\[0\] \(inputs\): expected real numbers, got complex"),
    ("complex predict", lambda t, x, y: t.predict(x + 1j), r"^inputs: expected real numbers, got complex"),
    ("NaN evaluate", lambda t, x, y: t.evaluate((np.full_like(x, np.nan), y)),
     r"^data\[0\] \(inputs\): expected finite values"),
    ("key as inputs", lambda t, x, y: t.predict(jax.random.key(0)), r"^inputs: expected a numeric array, got"),
])
def test_trainer_refuses(trainer, what, call, message):
    t, x, y = trainer
    with pytest.raises(ValueError, match=message):
        call(t, x, y)


_T = np.arange(0.0, 2.0, 0.01)
_TRAJ = np.stack([np.sin(_T), np.cos(_T)], -1)
_LIB = discovery.polynomial_library(2, 2)


@pytest.mark.parametrize("what, call, message", [
    ("complex data", lambda: discovery.fit(_TRAJ + 1j, 0.01, library=_LIB, key=0),
     r"^data: expected real numbers, got complex"),
    ("ragged trajectory", lambda: discovery.fit([[[1.0, 2.0], [3.0]]], 0.01, library=_LIB, key=0),
     r"^data\[0\]: expected a numeric \(time, \*\(2,\)\) array, got a ragged list of 2 items"),
    ("text data", lambda: discovery.fit(np.array([["a", "b"]] * 20), 0.01, library=_LIB, key=0),
     r"^data: expected a numeric .* got text"),
    ("smoothing complex", lambda: discovery.smooth_derivative(_TRAJ + 1j, 0.01), r"^x: expected real numbers"),
    ("smoothing NaN", lambda: discovery.smooth_derivative(np.where(_T[:, None] > 1, np.nan, _TRAJ), 0.01),
     r"^x: expected finite values, got 198 NaN/inf"),
    ("smoothing too short", lambda: discovery.smooth_derivative(_TRAJ[:2], 0.01), r"^x: expected a trajectory .*at least 3"),
    ("smoothing dt text", lambda: discovery.smooth_derivative(_TRAJ, "0.01"), r"^dt: expected a positive, finite"),
    ("smoothing dt 0", lambda: discovery.smooth_derivative(_TRAJ, 0.0), r"^dt: expected a positive, finite"),
    ("smoothing even window", lambda: discovery.smooth_derivative(_TRAJ, 0.01, window=8),
     r"^window: expected None or an odd int between 3 and 200"),
    ("smoothing float window", lambda: discovery.smooth_derivative(_TRAJ, 0.01, window=9.5), r"^window: "),
    ("smoothing polyorder", lambda: discovery.smooth_derivative(_TRAJ, 0.01, polyorder="3"), r"^polyorder: "),
    ("complex weights", lambda: discovery.coupling_library(np.eye(2) + 1j, 2), r"^weights: expected real numbers"),
    ("text states", lambda: discovery.coupling_library(np.eye(2), 2, states="01"),
     r"^states: expected a list of state indices \(int\), got '01'"),
    ("float states", lambda: discovery.coupling_library(np.eye(2), 2, states=[0.5]), r"^states: expected a list"),
    ("complex estimate", lambda: discovery.coefficient_error(np.ones(2) + 1j, np.ones(2)),
     r"^estimated: expected real numbers"),
    ("ragged truth", lambda: discovery.support_f1(np.ones(2), [[1.0], [1.0, 2.0]]), r"^true: .*ragged list"),
])
def test_discovery_refuses(what, call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_discovered_simulate_refuses_a_complex_start():
    found = discovery.Discovered(coefficients=np.zeros((_LIB.n_terms, 2)), library=_LIB, dt=0.01,
                                 method="derivative", threshold=0.0)
    with pytest.raises(ValueError, match=r"^x0: expected real numbers, got complex"):
        found.simulate(np.zeros(2) + 1j, 5)
