"""Issue 18, model comparison: ``bmsbi.ModelComparison`` on a problem with a known answer.

Three 2-D Gaussian "models", ``x ~ N(mu_k, I)``: the Bayes-optimal model probabilities
are ``p(k | x) ∝ pi_k N(x; mu_k, I)``, so the trained ones are checked against them, as
are calibration on held-out simulations, Bayes' rule for other priors, class balance,
the file round trip, bad input and the command line.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

import bmsbi
from bmsbi.comparison import ComparisonCalibration, expected_calibration_error

MUS = {"a": np.array([-1.0, 0.0]), "b": np.array([1.0, 0.0]), "c": np.array([0.0, 1.5])}


def bank(name, n, seed):
    rng = np.random.default_rng(seed)
    return bmsbi.Bank(np.zeros((n, 1)), rng.normal(MUS[name], 1.0, (n, 2)).astype(np.float32))


def exact(x, prior=None):
    """Bayes-optimal ``p(k | x)`` (columns a, b, c)."""
    prior = np.ones(3) / 3 if prior is None else np.asarray(prior)
    logl = np.stack([-0.5 * ((x - mu) ** 2).sum(axis=1) for mu in MUS.values()], axis=1) + np.log(prior)
    p = np.exp(logl - logl.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def mc():
    banks = {k: bank(k, 4000, i) for i, k in enumerate(MUS)}
    return bmsbi.ModelComparison().fit(banks, key=0, progress=False)


@pytest.fixture(scope="module")
def test_x():
    """Points from the mixture (held out: other seeds)."""
    return np.concatenate([bank(k, 400, 100 + i).x for i, k in enumerate(MUS)])


def test_probabilities_match_the_bayes_optimal_ones(mc, test_x):
    assert mc.models == ("a", "b", "c")
    p = mc.probabilities(test_x)
    assert p.shape == (len(test_x), 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    err = np.abs(p - exact(test_x))
    assert err.mean() < 0.02
    assert np.quantile(err, 0.99) < 0.05
    one = mc.probabilities(test_x[0])
    assert one.shape == (3,)
    np.testing.assert_allclose(one, p[0], atol=1e-6)


def test_calibration_on_held_out_simulations(mc):
    held = {k: bank(k, 3000, 200 + i) for i, k in enumerate(MUS)}
    cal = mc.calibration(held)
    assert isinstance(cal, ComparisonCalibration)
    assert cal.ece <= 0.03
    x = np.concatenate([b.x for b in held.values()])
    labels = np.repeat(np.arange(3), 3000)
    optimal = (exact(x).argmax(axis=1) == labels).mean()       # the Bayes classifier's accuracy
    assert cal.accuracy > optimal - 0.02
    assert cal.confusion.sum() == 9000 and cal.confusion.shape == (3, 3)
    np.testing.assert_allclose(np.diag(cal.confusion_rates), [cal.per_model_accuracy[k] for k in MUS])
    assert "expected calibration error" in str(cal)
    json.dumps(cal.to_dict())


def test_expected_calibration_error_definition():
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    # bins: 0.9 -> hit 1; 0.8 -> miss; 0.7 -> hit. |1 - .9| + |0 - .8| + |1 - .7| over 3 rows
    assert expected_calibration_error(p, np.array([0, 1, 1])) == pytest.approx((0.1 + 0.8 + 0.3) / 3)
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0


def test_prior_probs_follow_bayes_rule(mc, test_x):
    prior = {"a": 0.7, "b": 0.2, "c": 0.1}
    shifted = mc.with_prior_probs(prior).probabilities(test_x)
    base = mc.probabilities(test_x)
    expect = base * np.array([0.7, 0.2, 0.1]) * 3
    expect /= expect.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(shifted, expect, atol=1e-5)
    assert np.abs(shifted - exact(test_x, [0.7, 0.2, 0.1])).mean() < 0.02
    np.testing.assert_allclose(mc.with_prior_probs([1, 1, 1]).probabilities(test_x), base, atol=1e-6)


def test_prior_probs_given_when_training():
    banks = {k: bank(k, 1500, 10 + i) for i, k in enumerate(["a", "b"])}
    trained = bmsbi.ModelComparison(prior_probs=[0.9, 0.1], max_epochs=40).fit(banks, key=1, progress=False)
    x = np.zeros((1, 2))
    p = trained.probabilities(x)[0]
    flat = trained.with_prior_probs(None).probabilities(x)[0]
    assert p[0] / p[1] == pytest.approx(9 * flat[0] / flat[1], rel=1e-4)


def test_unequal_bank_sizes_do_not_act_as_a_prior(test_x):
    """A 6:1 imbalance left uncorrected would add log 6 to a's logit; balancing removes it."""
    banks = {"a": bank("a", 6000, 20), "b": bank("b", 1000, 21)}
    mc2 = bmsbi.ModelComparison().fit(banks, key=2, progress=False)
    x = np.concatenate([bank("a", 500, 22).x, bank("b", 500, 23).x])
    logl = np.stack([-0.5 * ((x - MUS[k]) ** 2).sum(axis=1) for k in "ab"], axis=1)
    truth = 1 / (1 + np.exp(logl[:, 1] - logl[:, 0]))
    p = mc2.probabilities(x)[:, 0]
    assert abs(np.mean(p - truth)) < 0.02        # no shift towards the bigger bank
    assert np.abs(p - truth).mean() < 0.03


def test_save_and_load_give_identical_probabilities(mc, test_x, tmp_path):
    path = tmp_path / "which.bmsbi"
    mc.with_prior_probs([0.5, 0.3, 0.2]).save(path)
    loaded = bmsbi.load_model_comparison(path)
    assert loaded.models == mc.models
    np.testing.assert_array_equal(loaded.probabilities(test_x),
                                  mc.with_prior_probs([0.5, 0.3, 0.2]).probabilities(test_x))
    assert loaded.history.epochs == mc.history.epochs
    raw = bytearray(path.read_bytes())
    raw[-40] ^= 1
    (tmp_path / "bad.bmsbi").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="path"):
        bmsbi.load_model_comparison(tmp_path / "bad.bmsbi")


def test_summary_pipeline_of_the_banks_is_kept(tmp_path):
    """Banks of a task record their summary: the comparison takes raw recordings, also when loaded."""
    import jax

    import simulators

    task = simulators.get("hopf_node")
    full = task.bank(300, jax.random.key(0), progress=False)
    shifted = bmsbi.Bank(full.theta, full.x + 1.0, full.names, full.meta)
    mc3 = bmsbi.ModelComparison(max_epochs=5).fit({"hopf": full, "shifted": shifted}, key=0, progress=False)
    rec = np.asarray(task.observe(task.true_theta, jax.random.key(1)))
    summary = np.asarray(task.summary.batch(rec[None]))[0].reshape(mc3.x_shape)
    recording = bmsbi.Recording(rec, task.fs)
    np.testing.assert_allclose(mc3.probabilities(recording), mc3.probabilities(summary), atol=1e-6)
    mc3.save(tmp_path / "m.bmsbi")
    loaded = bmsbi.load_model_comparison(tmp_path / "m.bmsbi")
    np.testing.assert_allclose(loaded.probabilities([recording, recording]),
                               mc3.probabilities(summary)[None].repeat(2, 0), atol=1e-6)
    assert loaded.recording_spec.fs == task.fs
    other = dict(full.meta, summary=None)
    with pytest.raises(ValueError, match="banks.*summary"):
        bmsbi.ModelComparison(max_epochs=1).fit(
            {"hopf": full, "plain": bmsbi.Bank(full.theta, full.x, full.names, other)}, key=0, progress=False)


def test_table_and_rows(mc, test_x):
    rows = mc.rows(test_x[:2], labels=["first", "second"])
    assert [r["recording"] for r in rows] == ["first", "second"]
    assert set(rows[0]) == {"recording", "p_a", "p_b", "p_c", "best", "p_best"}
    assert rows[0]["best"] in MUS and rows[0]["p_best"] == max(rows[0][f"p_{k}"] for k in MUS)
    text = mc.table(test_x[:2], labels=["first", "second"])
    assert text.splitlines()[0].split() == ["recording", "a", "b", "c", "best"]
    with pytest.raises(ValueError, match="labels"):
        mc.rows(test_x[:2], labels=["one"])


def test_plot_model_calibration(mc, tmp_path):
    from bmsbi.plotting import plot_model_calibration

    cal = mc.calibration({k: bank(k, 300, 300 + i) for i, k in enumerate(MUS)})
    fig = plot_model_calibration(cal, path=tmp_path / "cal.png")
    assert (tmp_path / "cal.png").stat().st_size > 0
    labels = [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes[:2]]
    assert all(x and y for x, y in labels)
    with pytest.raises(ValueError, match="calibration"):
        plot_model_calibration({"ece": 0.1})


@pytest.mark.parametrize("banks, match", [
    ({"a": None}, "banks"),
    ([1, 2], "banks: expected a dict"),
    ({"a": bmsbi.Bank(np.zeros((10, 1)), np.zeros((10, 2)))}, "at least 2 models"),
    ({"a": bmsbi.Bank(np.zeros((10, 1)), np.zeros((10, 2))),
      "b": bmsbi.Bank(np.zeros((10, 1)), np.zeros((10, 3)))}, "x shape"),
    ({"a": bmsbi.Bank(np.zeros((10, 1)), np.zeros((10, 2))),
      "b": bmsbi.Bank(np.zeros((10, 1)), np.full((10, 2), np.nan))}, r"banks\['b'\]: 10 of 10 rows"),
    ({"a": bmsbi.Bank(np.zeros((10, 1)), np.zeros((10, 2))), "b": np.zeros((10, 2))}, r"banks\['b'\]"),
])
def test_bad_banks_are_refused(banks, match):
    with pytest.raises(ValueError, match=match):
        bmsbi.ModelComparison(max_epochs=1).fit(banks, key=0, progress=False)


@pytest.mark.parametrize("prior, match", [
    ([0.5, 0.5], "prior_probs: expected 3 probabilities"),
    ([0.5, -0.1, 0.6], "prior_probs: expected finite probabilities >= 0"),
    ({"a": 1, "b": 1, "z": 1}, "prior_probs.*unknown"),
    ([1, 0, 1], "prior_probs: a model with prior probability 0"),
])
def test_bad_prior_probs_are_refused(mc, prior, match):
    with pytest.raises(ValueError, match=match):
        mc.with_prior_probs(prior)


def test_bad_settings_and_observations_are_refused(mc):
    with pytest.raises(ValueError, match="prior_probs"):
        bmsbi.ModelComparison(prior_probs=[1, -1])
    with pytest.raises(ValueError, match="hidden"):
        bmsbi.ModelComparison(hidden=0)
    with pytest.raises(ValueError, match="learning_rate"):
        bmsbi.ModelComparison(learning_rate=-1.0)
    with pytest.raises(ValueError, match=r"x: expected shape \(2,\)"):
        mc.probabilities(np.zeros(3))
    with pytest.raises(ValueError, match="x: .*NaN"):
        mc.probabilities(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="x: expected real numbers"):
        mc.probabilities(np.array([1j, 0.0]))
    with pytest.raises(ValueError, match="not fitted"):
        bmsbi.ModelComparison().probabilities(np.zeros(2))
    with pytest.raises(ValueError, match="unknown models"):
        mc.calibration({"z": bank("a", 10, 0)})


@pytest.fixture(scope="module")
def cli_banks(tmp_path_factory):
    d = tmp_path_factory.mktemp("compare")
    for i, k in enumerate(["a", "b"]):
        bank(k, 800, 40 + i).save(d / f"{k}.npz")
    np.save(d / "obs.npy", np.array([[-2.0, 0.0], [2.0, 0.0]], np.float32))
    return d


def test_cli_round_trip(cli_banks, tmp_path):
    """`bmsbi compare BANK... --out` then `bmsbi compare --load FILE RECORDING`, in a subprocess."""
    out = tmp_path / "which.bmsbi"
    cmd = [sys.executable, "-m", "bmsbi.cli", "compare", str(cli_banks / "a.npz"), str(cli_banks / "b.npz"),
           "--out", str(out), "--max-epochs", "20", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and out.exists()
    table = tmp_path / "p.json"
    done = subprocess.run([sys.executable, "-m", "bmsbi.cli", "compare", "--load", str(out),
                           str(cli_banks / "obs.npy"), "--out", str(table)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(table.read_text())["recordings"]
    assert [r["best"] for r in rows] == ["a", "b"]
    assert rows[0]["p_a"] > 0.9 and rows[1]["p_b"] > 0.9
    expect = bmsbi.load_model_comparison(out).probabilities(np.load(cli_banks / "obs.npy"))
    np.testing.assert_allclose([[r["p_a"], r["p_b"]] for r in rows], expect, atol=1e-6)


@pytest.mark.parametrize("args, match", [
    (["{d}/a.npz", "--out", "{t}/x.bmsbi"], "BANK: expected at least two banks"),
    (["{d}/a.npz", "{d}/b.npz"], "--out: expected the file"),
    (["{d}/a.npz", "{d}/b.npz", "--out", "{t}/x.bmsbi", "--names", "one"], "--names: expected 2"),
    (["{d}/a.npz", "{d}/a.npz", "--out", "{t}/x.bmsbi"], "--names: every model needs its own name"),
    (["{d}/a.npz", "{d}/b.npz", "--out", "{t}/x.bmsbi", "--prior-probs", "1"], "--prior-probs: expected 2"),
    (["{d}/a.npz", "{d}/missing.npz", "--out", "{t}/x.bmsbi"], "bank: no such file"),
    (["--load", "{d}/a.npz", "{d}/obs.npy"], "--load: "),
    (["--load", "{d}/missing.bmsbi", "{d}/obs.npy"], "--load: no such file"),
])
def test_cli_errors_are_one_line(cli_banks, tmp_path, capsys, args, match):
    from bmsbi.cli import main

    argv = ["compare"] + [a.format(d=cli_banks, t=tmp_path) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
