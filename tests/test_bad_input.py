"""A bad-input harness: generated bad and edge values for every public entry point.

Every case must end in one of two ways:

- a ``ValueError`` whose message names the argument that was wrong (the CLI: exit
  status 2 and exactly one stderr line ``bmsbi VERB: error: ...``), or
- a correct result (checked per entry point: shapes, support, finiteness),

never another exception, a traceback from the CLI, a silently different result or a
hang (each case runs under an alarm of ``CASE_SECONDS``).

Profiles: the default (fast, CI) runs ``FAST`` generated cases per entry point — more
than 300 in all; ``-m slow`` runs the same entry points with ``SLOW`` cases each (more
than 5,000 in all).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import numpyro.distributions as dist
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import bmsbi
from bmsbi import discovery
from bmsbi.cli import main

FAST, SLOW = 30, 450
CASE_SECONDS = 60
ROOT = Path(__file__).resolve().parents[1]
_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                        HealthCheck.data_too_large, HealthCheck.filter_too_much])


def strategies(**kwargs):
    """Record the hypothesis strategies of a case body (see :func:`profiles`)."""
    def deco(body):
        body.strategies = kwargs
        return body
    return deco


def profiles(body):
    """Two tests from one case body: a fast profile and a slow one (``-m slow``)."""
    def make(n):
        def test(*args, **kwargs):
            return body(*args, **kwargs)
        test.__signature__ = inspect.signature(body)
        test.__name__, test.__doc__ = body.__name__.lstrip("_"), body.__doc__
        return settings(max_examples=n, **_SETTINGS)(given(**body.strategies)(test))
    return make(FAST), pytest.mark.slow(make(SLOW))


# ------------------------------------------------------------------ the contract
class Violation(AssertionError):
    pass


@contextlib.contextmanager
def time_bound(seconds=CASE_SECONDS):
    def on_alarm(signum, frame):
        raise Violation(f"a case ran past {seconds} s (a hang?)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def contract(call, names):
    """Run ``call``; ``(True, result)`` or ``(False, ValueError)`` whose message names one of ``names``."""
    try:
        with time_bound(), np.errstate(all="ignore"):
            return True, call()
    except Violation:
        raise
    except ValueError as err:
        msg = str(err)
        assert any(n in msg for n in names), f"ValueError that names none of {names}: {msg!r}"
        return False, err
    except FileNotFoundError as err:  # allowed where the message names the path argument
        assert "path" in names and "path" in str(err), f"FileNotFoundError not naming path: {err!r}"
        return False, err
    except Exception as err:  # noqa: BLE001 - the point: nothing else may escape
        raise Violation(f"{type(err).__name__} instead of a ValueError naming {names}: {err!r:.300}") from err


# ------------------------------------------------------------- value strategies
def scalars():
    return st.one_of(
        st.none(), st.booleans(), st.integers(-10**18, 10**18),
        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
        st.complex_numbers(allow_nan=False, max_magnitude=10), st.just(object()),
        st.just([]), st.just({}), st.just(()))


def arrays(max_dims=3, max_side=4):
    """Arrays of odd shapes and dtypes, NaN and inf included, plus ragged nested lists."""
    shape = st.lists(st.integers(0, max_side), min_size=0, max_size=max_dims).map(tuple)
    floats = st.floats(-1e3, 1e3) | st.sampled_from([np.nan, np.inf, -np.inf, 0.0])

    def build(args):
        s, kind, fill = args
        a = np.full(s, fill)
        if kind == "int":
            a = np.zeros(s, np.int64)
        elif kind == "complex":
            a = a.astype(complex) + 1j
        elif kind == "bool":
            a = np.zeros(s, bool)
        elif kind == "str":
            a = np.full(s, "a")
        elif kind == "noisy":
            a = a + np.random.default_rng(len(s)).normal(size=s)
        return a

    regular = st.tuples(shape, st.sampled_from(["float", "int", "complex", "bool", "str", "noisy"]),
                        floats).map(build)
    ragged = st.lists(st.lists(st.floats(-1, 1), max_size=3), min_size=2, max_size=3).filter(
        lambda v: len({len(r) for r in v}) > 1)
    return st.one_of(regular, ragged, scalars())


def ints():
    """Counts: a few valid values (each new one compiles), non-positive, huge, and non-ints."""
    return st.one_of(st.sampled_from([1, 7, 40]), st.integers(-5, 0), st.sampled_from([10**15, 2**63 - 1]),
                     scalars())


# ------------------------------------------------------------------ fixtures
PRIOR = bmsbi.Prior.uniform([-1.0, -1.0], [1.0, 1.0], names=["a", "b"])


def sim(theta, key):
    return theta + 0.1 * jax.random.normal(key, (2,))


@pytest.fixture(scope="module")
def small_bank():
    return bmsbi.simulate_bank(sim, PRIOR, 300, key=0, progress=False)


@pytest.fixture(scope="module")
def post(small_bank):
    return bmsbi.NPE(hidden=8, num_layers=1, max_epochs=2).fit(small_bank, prior=PRIOR, key=1, progress=False)


@pytest.fixture(scope="module")
def files(post, small_bank, tmp_path_factory):
    d = tmp_path_factory.mktemp("harness")
    post.save(d / "post.bmsbi")
    small_bank.save(d / "bank.npz")
    bmsbi.simulate_bank(sim, PRIOR, 40, key=3, chunk_size=10, path=d / "folder", progress=False)
    np.save(d / "x.npy", np.zeros(2, np.float32))
    return d


# ---------------------------------------------------------------------- Prior
def _prior_case(low, high, names):
    prior = bmsbi.Prior.uniform(low, high, names=names)
    theta = np.asarray(prior.sample(jax.random.key(0), 5))
    assert theta.shape == (5, prior.dim) and bool(prior.in_support(theta).all())
    assert len(prior.names) == prior.dim and all(isinstance(n, str) and n for n in prior.names)
    if isinstance(names, str):
        assert prior.names == (names,)  # a string is one name, never split into letters
    return prior


@strategies(low=arrays(2), high=arrays(2), names=st.one_of(st.none(), st.text(max_size=3),
                                                      st.lists(st.text(max_size=2), max_size=3), scalars()))
def _prior_uniform(low, high, names):
    contract(lambda: _prior_case(low, high, names), ["low", "high", "names"])


test_prior_uniform, test_prior_uniform_slow = profiles(_prior_uniform)

_DISTS = [dist.Uniform(0.0, 1.0), dist.Normal(0.0, 1.0), dist.LogNormal(0.0, 1.0)]


@strategies(entries=st.dictionaries(
    st.one_of(st.text(max_size=3), st.integers(), st.none()),
    st.one_of(st.sampled_from(_DISTS), scalars(),
              st.tuples(st.sampled_from([dist.MultivariateNormal(np.zeros(2), np.eye(2)),
                                         dist.Dirichlet(np.ones(3)), dist.Normal(0.0, 1.0)]),
                        st.lists(st.text(min_size=1, max_size=2), max_size=4))),
    max_size=3) | scalars())
def _prior_dict(entries):
    def case():
        prior = bmsbi.Prior(entries)
        theta = np.asarray(prior.sample(jax.random.key(0), 4))
        assert theta.shape == (4, prior.dim) and np.isfinite(np.asarray(prior.log_prob(theta))).all()
        assert bmsbi.Prior.from_dict(json.loads(json.dumps(prior.to_dict()))) == prior
    contract(case, ["distributions"])


test_prior_dict, test_prior_dict_slow = profiles(_prior_dict)


@strategies(spec=st.recursive(scalars() | st.text(max_size=8),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                             st.sampled_from(["parameters", "name", "family", "low", "high", "loc",
                                              "scale", "coordinates", "covariance_matrix"]), inner,
                             max_size=4), max_leaves=8))
def _prior_spec(spec):
    def case():
        prior = bmsbi.Prior.from_dict(spec)
        assert prior.dim >= 1
    contract(case, ["spec"])


test_prior_spec, test_prior_spec_slow = profiles(_prior_spec)


# ------------------------------------------------------------ simulate_bank / Bank
@strategies(n=ints(), chunk=st.one_of(st.none(), ints()), on_invalid=st.one_of(st.sampled_from(["drop", "keep", "raise"]), scalars()),
       trials=st.one_of(st.none(), ints()))
def _simulate_bank(n, chunk, on_invalid, trials):
    def case():
        bank = bmsbi.simulate_bank(sim, PRIOR, n, key=0, chunk_size=chunk, on_invalid=on_invalid,
                                   trials=trials, progress=False)
        assert len(bank) == n and bank.theta.shape == (n, 2)
        assert bank.x.shape == ((n, trials, 2) if trials else (n, 2))
    contract(case, ["num_simulations", "chunk_size", "on_invalid", "trials"])


test_simulate_bank, test_simulate_bank_slow = profiles(_simulate_bank)


@strategies(theta=arrays(), x=arrays(), names=st.one_of(st.none(), st.lists(st.text(max_size=2), max_size=3), scalars()),
       meta=st.one_of(st.none(), st.dictionaries(st.sampled_from(["trials", "task", "k"]), scalars(), max_size=2)))
def _bank(theta, x, names, meta):
    def case():
        bank = bmsbi.Bank(theta, x, names=names, meta=meta)
        assert len(bank) == bank.theta.shape[0] == bank.x.shape[0]
        assert len(bank.names) == bank.dim
    contract(case, ["theta", "x", "names", "meta"])


test_bank, test_bank_slow = profiles(_bank)


def _mutate_bytes(data: bytes, cut: int, flips) -> bytes:
    b = bytearray(data[:max(0, len(data) - cut)])
    for pos, val in flips:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


@strategies(cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3))
def _bank_load_corrupted(files, tmp_path_factory, cut, flips):
    """A bank file truncated or with bytes changed: a ValueError naming the path, or the same bank."""
    good = (files / "bank.npz").read_bytes()
    bad = tmp_path_factory.mktemp("b") / "bank.npz"
    bad.write_bytes(_mutate_bytes(good, cut, flips))
    ok, result = contract(lambda: bmsbi.Bank.load(bad), ["path"])
    if ok:
        ref = bmsbi.Bank.load(files / "bank.npz")
        np.testing.assert_array_equal(result.theta, ref.theta)
        np.testing.assert_array_equal(result.x, ref.x)


test_bank_load_corrupted, test_bank_load_corrupted_slow = profiles(_bank_load_corrupted)


@strategies(op=st.sampled_from(["copy", "swap", "delete", "foreign", "manifest_key", "manifest_type",
                           "manifest_json", "manifest_value"]),
       i=st.integers(0, 3), j=st.integers(0, 3), key=st.sampled_from(["num_simulations", "num_chunks", "names",
                                                                     "x_shape", "chunk_size", "format"]),
       value=scalars())
def _bank_folder_tampered(files, tmp_path_factory, op, i, j, key, value):
    """A bank folder with chunks copied, swapped, deleted or foreign, or a manifest broken."""
    import shutil

    folder = tmp_path_factory.mktemp("f") / "bank"
    shutil.copytree(files / "folder", folder)
    chunks = sorted(p for p in folder.iterdir() if p.suffix == ".npz")
    manifest = json.loads((folder / "manifest.json").read_text())
    if op == "copy" and i != j:
        shutil.copy(chunks[i], chunks[j])
    elif op == "swap" and i != j:
        a, b = chunks[i].read_bytes(), chunks[j].read_bytes()
        chunks[i].write_bytes(b)
        chunks[j].write_bytes(a)
    elif op == "delete":
        chunks[i].unlink()
    elif op == "foreign":
        other = tmp_path_factory.mktemp("o") / "bank"
        bmsbi.simulate_bank(sim, PRIOR, 40, key=9, chunk_size=10, path=other, progress=False)
        shutil.copy(sorted(p for p in other.iterdir() if p.suffix == ".npz")[i], chunks[i])
    elif op == "manifest_key":
        manifest.pop(key, None)
    elif op == "manifest_value":
        manifest[key] = value if not isinstance(value, (complex, object)) or isinstance(
            value, (int, float, str, list, dict, type(None))) else str(value)
    if op == "manifest_type":
        (folder / "manifest.json").write_text(json.dumps([manifest]))
    elif op == "manifest_json":
        (folder / "manifest.json").write_text(json.dumps(manifest)[:-3])
    else:
        (folder / "manifest.json").write_text(json.dumps(manifest, default=str))
    ok, result = contract(lambda: bmsbi.Bank.load(folder), ["path", "manifest", "chunk"])
    if ok:  # loading may succeed only when nothing that matters changed: then it is the same bank
        ref = bmsbi.Bank.load(files / "folder")
        np.testing.assert_array_equal(result.theta, ref.theta)
        np.testing.assert_array_equal(result.x, ref.x)


test_bank_folder_tampered, test_bank_folder_tampered_slow = profiles(_bank_folder_tampered)


# -------------------------------------------------------------------- estimators
_INT_FIELDS = {"hidden", "num_layers", "num_bins", "nn_depth", "batch_size", "max_epochs", "patience"}
_FLOAT_FIELDS = {"tail_bound": (0, math.inf), "learning_rate": (0, math.inf),
                 "validation_fraction": (0, 1), "truncation_fraction": (0, 1), "summary_noise": (0, math.inf)}


def _plausible(field, value) -> bool:
    """Would a fit be able to use this accepted setting?"""
    if field in _INT_FIELDS:
        return (value is None and field in ("max_epochs", "patience")) or (
            isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1)
    if field in _FLOAT_FIELDS:
        lo, hi = _FLOAT_FIELDS[field]
        return isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi and \
            (value > 0 if field in ("learning_rate", "tail_bound") else value < 1 if field == "validation_fraction" else True)
    if field == "embedding":
        return value is None or isinstance(value, bmsbi.embeddings.Embedding)
    return isinstance(value, str)


@strategies(field=st.sampled_from(sorted(_INT_FIELDS | set(_FLOAT_FIELDS) | {
           "density_estimator", "theta_space", "z_score_x", "embedding"})),
       estimator=st.sampled_from(["NPE", "NLE", "NRE"]),
       value=scalars() | st.integers(-3, 300) | st.floats(-2, 2))
def _estimator_settings(estimator, field, value):
    cls = getattr(bmsbi, estimator)
    if field not in cls.__dataclass_fields__:
        return
    ok, _ = contract(lambda: cls(**{field: value}), [field])
    assert not ok or _plausible(field, value), f"{estimator}({field}={value!r}) accepted silently"


test_estimator_settings, test_estimator_settings_slow = profiles(_estimator_settings)


@strategies(theta=arrays(), x=arrays(), estimator=st.sampled_from(["NPE", "NLE", "NRE"]))
def _fit_bad_bank(theta, x, estimator):
    """A bank that cannot be trained on (shapes, NaN, dtypes) is refused before training."""
    try:
        bank = bmsbi.Bank(theta, x)
    except ValueError:
        return
    th = np.asarray(bank.theta)
    if th.ndim == 2 and th.shape[1] == 2 and len(th) >= 2 and np.isfinite(th).all() and \
            np.isfinite(np.asarray(bank.x, float).reshape(len(th), -1)).all() and \
            bool(PRIOR.in_support(th).all()) and bank.x.ndim >= 2 and bank.x[0].size > 0:
        return  # a valid bank: training it is tested elsewhere
    contract(lambda: getattr(bmsbi, estimator)(max_epochs=1).fit(bank, prior=PRIOR, key=0, progress=False),
             ["bank", "x", "theta"])


test_fit_bad_bank, test_fit_bad_bank_slow = profiles(_fit_bad_bank)


# --------------------------------------------------------------------- posterior
@strategies(x_obs=arrays(3, 3), n=ints())
def _posterior_sample(post, x_obs, n):
    def case():
        out = np.asarray(post.sample(jax.random.key(0), x_obs, n))
        assert out.shape[-2:] == (n, 2) and np.isfinite(out).all() and bool(PRIOR.in_support(out.reshape(-1, 2)).all())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        contract(case, ["x_obs", "num_samples"])


test_posterior_sample, test_posterior_sample_slow = profiles(_posterior_sample)


@strategies(theta=arrays(3, 3), x_obs=arrays(2, 3))
def _posterior_log_prob(post, theta, x_obs):
    def case():
        lp = np.asarray(post.log_prob(theta, x_obs))
        assert not np.isnan(lp).any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        contract(case, ["theta", "x_obs"])


test_posterior_log_prob, test_posterior_log_prob_slow = profiles(_posterior_log_prob)


@strategies(recordings=arrays(3, 3), n=ints(), long=st.one_of(st.sampled_from(["refuse", "epochs"]), scalars()))
def _posterior_infer(post, recordings, n, long):
    def case():
        res = post.infer(jax.random.key(0), recordings, n, long=long)
        assert res.samples.shape[1:] == (n, 2) and len(res.labels) == len(res.samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        contract(case, ["recordings", "x_obs", "num_samples", "long"])


test_posterior_infer, test_posterior_infer_slow = profiles(_posterior_infer)


@strategies(cut=st.integers(0, 2000), flips=st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 255)), max_size=3))
def _load_posterior_corrupted(files, tmp_path_factory, cut, flips):
    good = (files / "post.bmsbi").read_bytes()
    bad = tmp_path_factory.mktemp("p") / "post.bmsbi"
    bad.write_bytes(_mutate_bytes(good, cut, flips))
    ok, result = contract(lambda: bmsbi.load_posterior(bad), ["path"])
    if ok:  # only changes the checksum does not cover may load, and then it is the same posterior
        ref = bmsbi.load_posterior(files / "post.bmsbi")
        x = np.zeros(2, np.float32)
        np.testing.assert_array_equal(result.sample(jax.random.key(0), x, 20), ref.sample(jax.random.key(0), x, 20))


test_load_posterior_corrupted, test_load_posterior_corrupted_slow = profiles(_load_posterior_corrupted)


@strategies(trials=st.one_of(arrays(3, 3), st.lists(arrays(1, 3), max_size=3)), name=st.one_of(st.none(), scalars()))
def _trials(trials, name):
    def case():
        t = bmsbi.Trials(trials, name=name)
        assert len(t) >= 1
    contract(case, ["data", "name"])


test_trials, test_trials_slow = profiles(_trials)


@strategies(data=arrays(3, 4), fs=scalars() | st.floats(), channels=st.one_of(st.none(), st.lists(st.text(max_size=2), max_size=3), scalars()))
def _recording(data, fs, channels):
    def case():
        rec = bmsbi.Recording(data, fs, channels=channels)
        assert rec.data.ndim == 2 and np.isfinite(rec.data).all() and rec.fs > 0
    contract(case, ["data", "fs", "channels"])


test_recording, test_recording_slow = profiles(_recording)


# ----------------------------------------------------------- discovery / Trainer
@strategies(data=arrays(3, 5), dt=scalars() | st.floats(), threshold=scalars() | st.floats())
def _discovery_fit(data, dt, threshold):
    library = discovery.PolynomialLibrary(2, 2)
    contract(lambda: discovery.fit(data, dt, library=library, threshold=threshold, n_bootstrap=2),
             ["data", "dt", "threshold", "library"])


test_discovery_fit, test_discovery_fit_slow = profiles(_discovery_fit)


# ------------------------------------------------------------------------- CLI
_VERBS = {
    "simulate": lambda f, v: ["simulate", v, "-n", "5", "--out", str(f / "cli-bank.npz"), "--quiet"],
    "simulate-n": lambda f, v: ["simulate", "hopf_node", "-n", v, "--out", str(f / "cli-bank2.npz"), "--quiet"],
    "train": lambda f, v: ["train", v, "--out", str(f / "cli-post.bmsbi"), "--max-epochs", "1", "--quiet"],
    "infer": lambda f, v: ["infer", str(f / "post.bmsbi"), v, "--num-samples", "10"],
    "infer-post": lambda f, v: ["infer", v, str(f / "x.npy")],
    "infer-n": lambda f, v: ["infer", str(f / "post.bmsbi"), str(f / "x.npy"), "--num-samples", v],
    "diagnose": lambda f, v: ["diagnose", v, "--out", str(f / "cli-diag")],
    "tasks": lambda f, v: ["tasks", v],
}


@strategies(verb=st.sampled_from(sorted(_VERBS)),
       value=st.one_of(st.sampled_from(["", "-1", "0", "nan", "1e99", "no_such_task", "no.module:attr",
                                        "missing.npy", "x.npy", "post.bmsbi", "bank.npz", "folder", "--quiet"]),
                       st.text(alphabet="abc:./-_0123456789", max_size=8)))
def _cli(files, capsys, verb, value):
    # a large valid budget is real work, not a hang: keep generated budgets small
    assume(not (verb in ("simulate-n", "infer-n") and value.isdigit() and int(value) > 200))
    argv = _VERBS[verb](files, str(files / value) if value in ("missing.npy", "x.npy", "post.bmsbi",
                                                               "bank.npz", "folder") else value)
    with time_bound():
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse usage errors exit 2 with a usage block
            status = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert status in (0, 2), (argv, status, err)
    if status == 2 and not err.startswith("usage:"):
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"bmsbi {argv[0]}: error: "), (argv, err)


test_cli, test_cli_slow = profiles(_cli)


@pytest.mark.parametrize("argv", [
    ["simulate", "no_such_task", "-n", "5", "--out", "{d}/b.npz"],
    ["train", "{d}/missing.npz", "--out", "{d}/p.bmsbi"],
    ["infer", "{d}/post.bmsbi", "{d}/missing.npy"],
    ["diagnose", "{d}/missing.bmsbi", "--out", "{d}/diag"],
    ["demo", "--task", "no_such_task", "--out", "{d}/demo"],
])
def test_every_cli_verb_fails_in_one_line_in_a_real_process(files, argv):
    """The console entry in a subprocess: one stderr line, exit 2, no traceback."""
    argv = [a.format(d=files) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "bmsbi.cli", *argv], capture_output=True, text=True,
                          timeout=300, cwd=str(files))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"bmsbi {argv[0]}: error: ") and "Traceback" not in proc.stderr
