"""iid trials: simulate_bank(trials=K), bmsbi.Trials, NPE's trial embedding, NLE/NRE sums.

The model throughout is 3-D linear-Gaussian, ``theta ~ N(0, I)``, each trial
``x_j = theta + N(0, 0.5^2 I)``, whose posterior given ``k`` trials is Gaussian with
precision ``1 + 4 k`` and mean ``4 sum_j x_j / (1 + 4 k)``.
"""

import json
import warnings

import jax
import numpy as np
import numpyro.distributions as dist
import pytest

import bmsbi
from bmsbi.cli import main
from bmsbi.embeddings import TrialEmbedding, embedding_from_config
from bmsbi.estimators.npe import random_trial_subsets

S0, S, K = 1.0, 0.5, 20
PRIOR = bmsbi.Prior({f"t{i}": dist.Normal(0.0, S0) for i in range(3)})


def sim(theta, key):
    return theta + S * jax.random.normal(key, (3,))


def analytic(x_k):
    """Mean and sd of the exact posterior given trials ``x_k (k, 3)``."""
    prec = 1.0 / S0**2 + len(x_k) / S**2
    return np.sum(x_k, axis=0) / S**2 / prec, prec**-0.5


def trials_of(theta, k, seed):
    return (theta + S * np.random.default_rng(seed).normal(size=(k, 3))).astype(np.float32)


@pytest.fixture(scope="module")
def trial_bank():
    return bmsbi.simulate_bank(sim, PRIOR, 3000, key=0, trials=K, progress=False)


@pytest.fixture(scope="module")
def npe_post(trial_bank):
    return bmsbi.NPE(max_epochs=40).fit(trial_bank, prior=PRIOR, key=1, progress=False)


@pytest.fixture(scope="module")
def nle_post():
    bank = bmsbi.simulate_bank(sim, PRIOR, 2000, key=2, progress=False)
    return bmsbi.NLE(max_epochs=15, num_warmup=150).fit(bank, prior=PRIOR, key=3, progress=False)


# ----------------------------------------------------------------------- Trials
@pytest.mark.parametrize("data, match", [
    ([np.zeros(3), np.zeros(4)], "ragged shapes: trial 0 \\(3,\\), trial 1 \\(4,\\)"),
    ([], "at least one trial"),
    (np.zeros((0, 3)), "k >= 1"),
    (np.zeros((2, 3), complex), "complex"),
    (np.array(["a", "b"]), "numeric"),
    ([bmsbi.Recording(np.zeros((10, 1)), 10.0), np.zeros((10, 1))], "mixing"),
])
def test_trials_refuses_bad_data_naming_the_argument(data, match):
    with pytest.raises(ValueError, match="data: .*" + match):
        bmsbi.Trials(data)


def test_trials_holds_stacked_float_trials():
    t = bmsbi.Trials([np.zeros(3), np.ones(3)], name="A")
    assert t.data.shape == (2, 3) and t.data.dtype == np.float32 and len(t) == 2 and t.shape == (3,)
    assert "2 trials of shape (3,)" in repr(t)
    with pytest.raises(ValueError, match="name"):
        bmsbi.Trials(np.zeros((2, 3)), name=3)


# ------------------------------------------------------------------------- bank
def test_simulate_bank_with_trials_gives_independent_trials_independent_of_chunking(trial_bank):
    assert trial_bank.x.shape == (3000, K, 3) and trial_bank.trials == K and trial_bank.meta["trials"] == K
    other = bmsbi.simulate_bank(sim, PRIOR, 3000, key=0, trials=K, chunk_size=77, progress=False)
    np.testing.assert_array_equal(trial_bank.theta, other.theta)
    np.testing.assert_allclose(trial_bank.x, other.x, atol=1e-6)
    noise = (trial_bank.x - trial_bank.theta[:, None, :]) / S          # (n, K, 3): iid N(0, 1)
    assert abs(noise.std() - 1.0) < 0.01
    corr = np.corrcoef(noise[:, 0, 0], noise[:, 1, 0])[0, 1]            # trials do not share noise
    assert abs(corr) < 0.06


def test_simulate_bank_trials_resume_and_refuse_another_trial_count(tmp_path):
    a = bmsbi.simulate_bank(sim, PRIOR, 50, key=0, trials=4, chunk_size=16, path=tmp_path / "b",
                            progress=False)
    b = bmsbi.Bank.load(tmp_path / "b")
    np.testing.assert_array_equal(a.x, b.x)
    assert b.trials == 4
    with pytest.raises(ValueError, match="path: .*other arguments"):
        bmsbi.simulate_bank(sim, PRIOR, 50, key=0, trials=5, chunk_size=16, path=tmp_path / "b",
                            progress=False)
    with pytest.raises(ValueError, match="trials: expected a positive int"):
        bmsbi.simulate_bank(sim, PRIOR, 50, key=0, trials=0, progress=False)


def test_bank_meta_trials_must_match_x():
    with pytest.raises(ValueError, match="x: meta\\['trials'\\] = 5 needs x of shape \\(n, 5"):
        bmsbi.Bank(np.zeros((4, 3)), np.zeros((4, 3)), meta={"trials": 5})
    with pytest.raises(ValueError, match="meta\\['trials'\\]: expected a positive int"):
        bmsbi.Bank(np.zeros((4, 3)), np.zeros((4, 2, 3)), meta={"trials": "2"})
    assert bmsbi.Bank(np.zeros((4, 3)), np.zeros((4, 2, 3)), meta={"trials": 2}).trials == 2


# -------------------------------------------------------------------- embedding
def test_trial_embedding_ignores_order_and_which_slots_are_absent():
    net = TrialEmbedding((6, 3), key=jax.random.key(0))
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    padded = np.full_like(x, np.nan)
    padded[[1, 4, 5]] = x[:3]
    front = np.full_like(x, np.nan)
    front[:3] = x[2::-1]
    np.testing.assert_allclose(net(padded), net(front), atol=1e-5)
    assert not np.allclose(net(front), net(x))                          # the count matters
    assert embedding_from_config(json.loads(json.dumps(net.config()))).config() == net.config()


def test_random_trial_subsets_keep_between_one_and_all_trials():
    x = np.ones((4000, 5, 2), np.float32)
    kept = np.isfinite(np.asarray(random_trial_subsets(jax.random.key(0), x))[..., 0]).sum(axis=1)
    assert kept.min() == 1 and kept.max() == 5
    np.testing.assert_allclose(np.bincount(kept)[1:] / len(kept), 0.2, atol=0.03)


# -------------------------------------------------------------------------- NPE
def test_npe_with_trials_narrows_with_the_trial_count(npe_post):
    theta = np.array([0.3, -0.5, 0.8], np.float32)
    x_k = trials_of(theta, K, seed=1)
    sds = []
    for k in (1, 5, 20):
        draws = np.asarray(npe_post.sample(jax.random.key(k), bmsbi.Trials(x_k[:k]), 2000))
        mean, sd = analytic(x_k[:k])
        assert np.all(np.abs(draws.mean(0) - mean) < 0.5 * sd), (k, draws.mean(0), mean, sd)
        sds.append(draws.std(0).mean() / sd)
    # the posterior sd follows the analytic one over a four-fold range (3,000 simulations, 40 epochs)
    assert 0.75 < min(sds) and max(sds) < 1.3, sds
    assert npe_post.max_trials == K and npe_post.config["trials"] == K


def test_npe_with_trials_refuses_more_trials_than_trained(npe_post):
    with pytest.raises(ValueError, match=f"x_obs: 21 iid trials, but this posterior was trained on at most {K}"):
        npe_post.sample(jax.random.key(0), bmsbi.Trials(np.zeros((21, 3))), 10)


def test_npe_with_trials_reads_plain_arrays_as_experiments_of_one_trial(npe_post):
    x = trials_of(np.zeros(3), 2, seed=2)
    key = jax.random.key(0)
    batch = np.asarray(npe_post.sample(key, x, 100))                              # 2 experiments
    as_trials = np.asarray(npe_post.sample(key, [bmsbi.Trials(x[:1]), bmsbi.Trials(x[1:])], 100))
    np.testing.assert_allclose(batch, as_trials, atol=1e-5)
    bank_shaped = np.asarray(npe_post.sample(key, np.stack([x, x]), 100))        # (m, k, 3)
    one = np.asarray(npe_post.sample(key, [bmsbi.Trials(x), bmsbi.Trials(x)], 100))
    np.testing.assert_allclose(bank_shaped, one, atol=1e-5)
    lp = npe_post.log_prob(np.zeros((5, 3)), bmsbi.Trials(x))
    assert lp.shape == (5,) and np.all(np.isfinite(lp))


def test_npe_with_trials_survives_save_and_load(npe_post, tmp_path):
    npe_post.save(tmp_path / "p.bmsbi")
    back = bmsbi.load_posterior(tmp_path / "p.bmsbi")
    t = bmsbi.Trials(trials_of(np.zeros(3), 7, seed=3))
    np.testing.assert_allclose(back.sample(jax.random.key(0), t, 50), npe_post.sample(jax.random.key(0), t, 50),
                               atol=1e-5)
    assert back.max_trials == K


def test_infer_and_to_arviz_take_trials(npe_post):
    x = trials_of(np.zeros(3), 6, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bmsbi.OutOfDistributionWarning)
        res = npe_post.infer(jax.random.key(0), [bmsbi.Trials(x, name="A"), bmsbi.Trials(x[:2], name="B")], 200)
        bad = npe_post.infer(jax.random.key(0), bmsbi.Trials(np.where(np.arange(6)[:, None] == 2, np.nan, x)), 20)
    assert res.samples.shape == (2, 200, 3) and res.labels == ["A", "B"]
    assert res.samples[0].std(0).mean() < res.samples[1].std(0).mean()          # 6 trials say more than 2
    assert bad.flagged.all() and np.isnan(bad.samples).all()                     # a NaN trial: flagged, no draws
    with pytest.raises(ValueError, match="x_obs: trials \\[2\\] of 6 hold NaN"):
        npe_post.sample(jax.random.key(0), bmsbi.Trials(np.where(np.arange(6)[:, None] == 2, np.nan, x)), 5)
    idata = npe_post.to_arviz(jax.random.key(0), bmsbi.Trials(x[:4]), num_samples=50)
    assert idata.observed_data["x_obs"].dims[0] == "trial" and idata.observed_data["x_obs"].shape[0] == 4


def test_npe_without_trials_takes_one_trial_and_refuses_more():
    bank = bmsbi.simulate_bank(sim, PRIOR, 500, key=5, progress=False)
    post = bmsbi.NPE(max_epochs=3, hidden=16, num_layers=2).fit(bank, prior=PRIOR, key=0, progress=False)
    x = trials_of(np.zeros(3), 2, seed=5)
    np.testing.assert_allclose(post.sample(jax.random.key(0), bmsbi.Trials(x[:1]), 20),
                               post.sample(jax.random.key(0), x[0], 20), atol=1e-6)
    with pytest.raises(ValueError, match="trained without trials; train NPE on a bank simulated with"):
        post.sample(jax.random.key(0), bmsbi.Trials(x), 20)
    with pytest.raises(ValueError, match="list mixing"):
        post.sample(jax.random.key(0), [bmsbi.Trials(x), x], 20)


# -------------------------------------------------------------------- NLE / NRE
def test_nle_sums_the_log_likelihood_over_trials(nle_post):
    x = trials_of(np.zeros(3), 3, seed=6)
    theta = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    joint = np.asarray(nle_post.log_prob(theta, bmsbi.Trials(x)))
    single = sum(np.asarray(nle_post.log_prob(theta, x[j])) for j in range(3))
    log_prior = np.asarray(PRIOR.log_prob(theta))
    np.testing.assert_allclose(joint, single - 2 * log_prior, rtol=1e-4, atol=1e-3)
    assert nle_post.max_trials == np.inf


def test_nle_posterior_given_trials_narrows(nle_post):
    theta = np.array([0.2, 0.1, -0.4], np.float32)
    x_k = trials_of(theta, 10, seed=7)
    one, ten = (np.asarray(nle_post.sample(jax.random.key(0), bmsbi.Trials(x_k[:k]), 400)) for k in (1, 10))
    ratio = one.std(0).mean() / ten.std(0).mean()
    exact = analytic(x_k[:1])[1] / analytic(x_k)[1]
    assert abs(ratio / exact - 1) < 0.3, (ratio, exact)


def test_nle_on_a_bank_with_trials_trains_on_every_trial():
    bank = bmsbi.simulate_bank(sim, PRIOR, 300, key=8, trials=4, progress=False)
    post = bmsbi.NLE(max_epochs=2).fit(bank, prior=PRIOR, key=0, progress=False)
    assert post.x_shape == (3,) and post.config["trials"] == 4
    assert post.sample(jax.random.key(0), bank.x[:2], 8).shape == (2, 8, 3)        # bank-shaped: 2 experiments


# -------------------------------------------------------------------------- CLI
def test_cli_infer_trials_reads_files_as_one_experiment(npe_post, tmp_path, capsys):
    npe_post.save(tmp_path / "p.bmsbi")
    x = trials_of(np.zeros(3), 3, seed=9)
    for j in range(3):
        np.save(tmp_path / f"t{j}.npy", x[j])
    files = [str(tmp_path / f"t{j}.npy") for j in range(3)]
    assert main(["infer", str(tmp_path / "p.bmsbi"), *files, "--trials", "--num-samples", "50",
                 "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "trials of 3 files" in out
    rows = json.loads((tmp_path / "r.json").read_text())
    assert len(rows["recordings"] if isinstance(rows, dict) and "recordings" in rows else rows) == 1


# ------------------------------------------------------------------- acceptance
def _errors(post, seeds=range(5)):
    """Worst |mean error| / sd and |sd ratio - 1| over k in {1, 5, 20} and a few true thetas."""
    worst_mean = worst_sd = 0.0
    rng = np.random.default_rng(11)
    for seed in seeds:
        theta = rng.normal(0.0, S0, 3).astype(np.float32)
        x_k = trials_of(theta, K, seed=100 + seed)
        for k in (1, 5, 20):
            draws = np.asarray(post.sample(jax.random.key(seed), bmsbi.Trials(x_k[:k]), 4000))
            mean, sd = analytic(x_k[:k])
            worst_mean = max(worst_mean, float(np.max(np.abs(draws.mean(0) - mean)) / sd))
            worst_sd = max(worst_sd, float(np.max(np.abs(draws.std(0) / sd - 1))))
    return worst_mean, worst_sd


@pytest.mark.slow
def test_npe_one_posterior_for_1_to_20_trials_matches_the_analytic_posterior():
    bank = bmsbi.simulate_bank(sim, PRIOR, 40000, key=20, trials=K, progress=False)
    post = bmsbi.NPE().fit(bank, prior=PRIOR, key=21, progress=False)
    worst_mean, worst_sd = _errors(post)
    print(f"NPE (40k simulations x 20 trials): worst mean error {worst_mean:.3f} sd, worst sd error {worst_sd:.3f}")
    assert worst_mean < 0.15 and worst_sd < 0.15


@pytest.mark.slow
def test_nle_given_1_to_20_trials_matches_the_analytic_posterior():
    bank = bmsbi.simulate_bank(sim, PRIOR, 10000, key=22, trials=K, progress=False)
    post = bmsbi.NLE().fit(bank, prior=PRIOR, key=23, progress=False)   # trains on every trial
    worst_mean, worst_sd = _errors(post, seeds=range(3))
    print(f"NLE (10k simulations x 20 trials): worst mean error {worst_mean:.3f} sd, worst sd error {worst_sd:.3f}")
    assert worst_mean < 0.15 and worst_sd < 0.15


# ------------------------------------------------------------------------- docs
def test_the_trials_page_runs_and_its_posterior_narrows_as_the_page_says():
    import pathlib
    import re

    page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "trials.md"
    code = "\n".join(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))
    ns = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bmsbi.OutOfDistributionWarning)
        exec(compile(code, str(page), "exec"), ns)
    post, x_k = ns["post"], ns["x_k"]
    for k in (1, 10):
        sd = np.asarray(post.sample(jax.random.key(3), bmsbi.Trials(x_k[:k]), 2000)).std(0).mean()
        assert abs(sd / (1 + 4 * k) ** -0.5 - 1) < 0.2, (k, sd)
    nle_draws = np.asarray(ns["draws"])
    mean, sd = analytic(np.asarray(x_k))
    assert np.all(np.abs(nle_draws.mean(0) - mean) < 0.5 * sd)


def test_a_long_recording_as_trials_is_split_into_reported_epochs():
    import simulators

    task = simulators.get("hopf_node")
    bank = task.bank(300, jax.random.key(0), trials=2, progress=False)
    assert bank.x.shape == (300, 2, len(task.feature_names))
    post = bmsbi.NPE(max_epochs=3, hidden=16, num_layers=2).fit(bank, prior=task.prior, key=1, progress=False)
    assert post.recording_spec.n_samples == task.n_time and post.max_trials == 2
    two = np.concatenate([np.asarray(task.observe(task.true_theta, jax.random.key(i))) for i in (1, 2)])
    rec = bmsbi.Recording(np.concatenate([two, two[:50]]), fs=task.fs, name="session")   # 2 epochs + a tail
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bmsbi.OutOfDistributionWarning)
        res = post.infer(jax.random.key(0), bmsbi.Trials(rec, name="session"), 100)
        with pytest.raises(ValueError, match="recordings: 4 iid trials, but this posterior was trained on at most 2"):
            post.infer(jax.random.key(0), bmsbi.Trials(bmsbi.Recording(np.concatenate([two, two]), fs=task.fs)), 10)
    assert res.samples.shape == (1, 100, 3) and res.labels == ["session"]
    assert any("epoch 1 of 2" in c for c in res.corrections[0]) and any("dropped" in c or "tail" in c
                                                                       for c in res.corrections[0]), res.corrections


def test_cli_simulate_trials_writes_a_bank_with_trials(tmp_path, capsys):
    assert main(["simulate", "hopf_node", "-n", "20", "--trials", "3", "--out", str(tmp_path / "b.npz"),
                 "--quiet"]) == 0
    assert "20 x 3 trials simulations" in capsys.readouterr().out
    bank = bmsbi.Bank.load(tmp_path / "b.npz")
    assert bank.trials == 3 and bank.x.shape[:2] == (20, 3)
    assert main(["simulate", "hopf_node", "-n", "20", "--trials", "0", "--out", str(tmp_path / "c.npz")]) == 2
    assert "trials: expected a positive int" in capsys.readouterr().err
