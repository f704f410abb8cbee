"""Amortized inference on raw recordings: the summary pipeline travels in the posterior
file, each recording gets an out-of-distribution score, and unlike recordings are flagged."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import pytest

import bmsbi
import simulators
from bmsbi.ood import OODReference


@pytest.fixture(scope="module")
def jr():
    """Jansen–Rit NPE on 1,500 simulations of the task's default summary."""
    task = simulators.get("jansen_rit")
    bank = task.bank(1500, jax.random.key(0), progress=False)
    post = bmsbi.NPE(hidden=32, num_layers=3, max_epochs=25).fit(
        bank, prior=task.prior, key=jax.random.key(1), progress=False)
    return task, bank, post


def _recordings(task, n, seed):
    """``n`` recordings at parameters drawn from the prior, and those parameters."""
    theta = np.asarray(task.prior.sample(jax.random.key(seed), n))
    recs = np.stack([np.asarray(task.observe(t, jax.random.key(seed + 100 + i)))
                     for i, t in enumerate(theta)])
    return theta, recs


def _line_noise(task, amplitude=1.0):
    """A 50 Hz sinusoid plus a little noise: no Jansen–Rit parameter produces it."""
    t = np.arange(task.n_time) / task.fs
    rng = np.random.default_rng(3)
    sig = amplitude * np.sin(2 * np.pi * 50.0 * t) + 0.01 * rng.normal(size=t.shape)
    return sig[:, None].astype(np.float32)


def test_bank_from_a_task_records_its_pipeline(jr):
    task, bank, post = jr
    assert bank.meta["recording_shape"] == [task.n_time, task.n_regions]
    assert post.summary == task.summary and post.recording_shape == (task.n_time, task.n_regions)
    _, recs = _recordings(task, 2, seed=5)
    np.testing.assert_allclose(post.summarize(recs)[0][1], np.asarray(task.summary(recs[1])),
                               rtol=1e-5, atol=1e-6)


def test_raw_recording_gives_the_same_posterior_as_its_summary(jr):
    task, _, post = jr
    _, recs = _recordings(task, 1, seed=6)
    key = jax.random.key(4)
    from_raw = np.asarray(post.sample(key, recs[0], 300))
    from_x = np.asarray(post.sample(key, np.asarray(task.summary(recs[0])), 300))
    np.testing.assert_allclose(from_raw, from_x, rtol=1e-4, atol=1e-4)
    batch = np.asarray(post.sample(key, recs, 300))  # (m, time, regions) -> (m, n, d)
    assert batch.shape == (1, 300, task.prior.dim)
    lp_raw = np.asarray(post.log_prob(from_raw[:5], recs[0]))
    lp_x = np.asarray(post.log_prob(from_raw[:5], np.asarray(task.summary(recs[0]))))
    np.testing.assert_allclose(lp_raw, lp_x, rtol=1e-4, atol=1e-4)


def test_fresh_simulations_are_rarely_flagged_and_line_noise_is(jr):
    task, _, post = jr
    theta, recs = _recordings(task, 200, seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bmsbi.OutOfDistributionWarning)
        res = post.infer(jax.random.key(0), recs, 200)
    # alpha = 0.001: a couple of the 200 fresh simulations may cross by chance, not more
    assert res.flagged.sum() <= 3, np.sort(res.ood_score)[-5:]
    # p-values of in-distribution recordings are roughly uniform, not piled near 0
    assert 0.3 < np.median(res.ood_pvalue) < 0.7
    noise = _line_noise(task)
    with pytest.warns(bmsbi.OutOfDistributionWarning, match="1 of 1 recordings"):
        out = post.infer(jax.random.key(0), noise, 100)
    assert out.flagged.tolist() == [True] and out.ood_score[0] > 3 and out.ood_pvalue[0] < 2e-3
    with pytest.warns(bmsbi.OutOfDistributionWarning):
        post.sample(jax.random.key(0), noise, 10)  # sample() warns too


_NEW_PROCESS = textwrap.dedent("""
    import sys, json, warnings, jax, numpy as np, bmsbi
    post = bmsbi.load_posterior(sys.argv[1])
    recs = np.load(sys.argv[2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = post.infer(jax.random.key(9), recs, 400)
    print("RESULT" + json.dumps({
        "mean": res.mean().tolist(), "flagged": res.flagged.tolist(),
        "score": res.ood_score.tolist(),
        "warned": [str(w.message) for w in caught
                   if issubclass(w.category, bmsbi.OutOfDistributionWarning)]}))
""")


def test_posterior_file_in_a_new_process_infers_on_raw_recordings_and_flags_ood(jr, tmp_path):
    task, _, post = jr
    theta, recs = _recordings(task, 3, seed=21)
    batch = np.concatenate([recs, _line_noise(task)[None]], axis=0)  # 3 real + 1 OOD
    path, rec_path = str(tmp_path / "jr.bmsbi"), str(tmp_path / "recs.npy")
    post.save(path)
    np.save(rec_path, batch)
    proc = subprocess.run([sys.executable, "-c", _NEW_PROCESS, path, rec_path], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][0][6:])
    assert out["flagged"] == [False, False, False, True]
    assert len(out["warned"]) == 1 and "[3]" in out["warned"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bmsbi.OutOfDistributionWarning)
        here = post.infer(jax.random.key(9), batch, 400)
    np.testing.assert_allclose(np.asarray(out["mean"]), here.mean(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["score"], here.ood_score, rtol=1e-5)
    # the posteriors of the real recordings are informative: closer to the truth than the prior
    prior_sd = np.asarray(task.prior.sample(jax.random.key(0), 4000)).std(0)
    err = np.abs(np.asarray(out["mean"])[:3] - theta) / prior_sd
    assert np.median(err) < 0.5, err


def test_non_finite_recording_is_flagged_not_fatal(jr):
    task, _, post = jr
    _, recs = _recordings(task, 2, seed=31)
    recs[1, 10:20, 0] = np.nan
    with pytest.warns(bmsbi.OutOfDistributionWarning, match=r"\[1\]"):
        res = post.infer(jax.random.key(0), recs, 50)
    assert res.flagged.tolist() == [False, True] and np.isinf(res.ood_score[1])
    assert np.isfinite(res.samples[0]).all() and np.isnan(res.samples[1]).all()
    with pytest.raises(ValueError, match="x_obs: the summaries of 1 of 2 recordings"):
        post.sample(jax.random.key(0), recs, 10)


def test_bad_recordings_get_clear_errors(jr):
    task, bank, post = jr
    with pytest.raises(ValueError, match=r"recordings: expected recordings with 1 regions"):
        post.infer(jax.random.key(0), np.zeros((task.n_time, 3), np.float32), 10)
    with pytest.raises(ValueError, match="recordings: expected one recording"):
        post.infer(jax.random.key(0), np.zeros((2, 3, task.n_time, 1), np.float32), 10)
    with pytest.raises(ValueError, match="x_obs"):
        post.sample(jax.random.key(0), np.zeros((4, 4, 4, 4)), 10)
    plain = bmsbi.NPE(hidden=8, num_layers=1, max_epochs=1).fit(
        bmsbi.Bank(bank.theta, bank.x, names=task.prior.names), prior=task.prior, key=jax.random.key(0), progress=False)
    assert plain.summary is None and plain.ood is not None
    with pytest.raises(ValueError, match="no stored summary pipeline"):
        plain.summarize(np.zeros((task.n_time, 1)))
    with pytest.raises(ValueError, match="x_obs: expected shape"):
        plain.sample(jax.random.key(0), np.zeros((task.n_time, 1)), 10)


def test_ood_reference_scores_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -1.0]
    ref = OODReference.fit(x, seed=1)
    fresh = rng.normal(size=(2000, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -1.0]
    p = ref.pvalue(fresh)
    assert abs(np.mean(p < 0.1) - 0.1) < 0.03 and ref.flag(fresh).mean() < 0.005
    far = np.array([[0.0, 5.0, 0.0]])  # 10 sd out in the third feature only
    assert ref.flag(far)[0] and ref.score(far)[0] > 2
    assert np.isinf(ref.distance(np.array([[np.nan, 0.0, 0.0]])))[0]
    entries, arrays = ref.to_file()
    again = OODReference.from_file(json.loads(json.dumps(entries)), arrays)
    np.testing.assert_allclose(again.score(fresh[:50]), ref.score(fresh[:50]), rtol=1e-5)
    with pytest.raises(ValueError, match="x: expected at least 12 rows"):
        OODReference.fit(x[:5])
    with pytest.raises(ValueError, match="incomplete"):
        OODReference.from_file(entries, {})
    big = rng.normal(size=(300, 1000))  # raw series: compared after a fixed projection
    ref_big = OODReference.fit(big)
    assert ref_big.reference.shape == (150, 256)
    assert ref_big.flag(5 + rng.normal(size=(1, 1000)))[0]


def test_summary_batch_matches_single_calls():
    stat = simulators.get("hopf_network").summary
    sig = np.random.default_rng(0).normal(size=(3, 1000, 8)).astype(np.float32)
    batch = np.asarray(stat.batch(sig))
    single = np.stack([np.asarray(stat(s)) for s in sig])
    np.testing.assert_allclose(batch, single, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="signals: expected a batch"):
        stat.batch(sig[0, :, 0])


def test_infer_without_an_ood_reference_says_so():
    """A posterior trained on fewer than 100 simulations has no OOD reference: infer warns
    instead of returning NaN scores that read as 'in distribution'."""
    prior = bmsbi.Prior.uniform([0.0], [1.0], names=["t"])
    theta = np.asarray(prior.sample(jax.random.key(0), 60))
    post = bmsbi.NPE(max_epochs=2).fit(bmsbi.Bank(theta, theta + 0.1), prior=prior,
                                       key=jax.random.key(1), progress=False)
    assert post.ood is None
    with pytest.warns(bmsbi.OutOfDistributionWarning, match="no out-of-distribution reference"):
        res = post.infer(jax.random.key(2), np.array([[0.5]], np.float32), 50)
    assert np.isnan(res.ood_score).all() and not res.flagged.any()
