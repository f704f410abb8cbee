"""Observation transforms (bmsbi.xtransform): the "auto" rule, overrides, files, refusals, accuracy.

Positive observations over orders of magnitude are modelled in log space; the choice is
made on the bank, stored with the posterior and applied to every observation.
"""

import jax
import numpy as np
import numpyro.distributions as dist
import pytest

import bmsbi
from bmsbi import io as bio
from bmsbi.posterior import SCHEMA_VERSION, load_posterior
from bmsbi.xtransform import LOG_SPAN, XTransform

RNG = np.random.default_rng(0)


def _bank_columns(n=2000):
    """Columns: wide positive, narrow positive, wide with a zero, Gaussian, span just under / over LOG_SPAN."""
    z = RNG.normal(size=n)
    wide = np.exp(2.0 * z)                               # q99/q01 ~ 1e4
    narrow = 5.0 + 0.5 * RNG.normal(size=n)              # positive, q99/q01 ~ 1.6
    zeros = np.exp(2.0 * RNG.normal(size=n))
    zeros[7] = 0.0                                       # one zero: log impossible
    gauss = RNG.normal(size=n)                           # negatives
    sd = np.log(LOG_SPAN) / (2 * 2.3263)                 # log-normal with q99/q01 = LOG_SPAN
    under = np.exp(0.9 * sd * RNG.normal(size=n))         # ~ LOG_SPAN ** 0.9
    over = np.exp(1.1 * sd * RNG.normal(size=n))          # ~ LOG_SPAN ** 1.1
    return np.stack([wide, narrow, zeros, gauss, under, over], axis=1)


def test_auto_picks_log_exactly_for_wide_positive_features():
    t = XTransform.choose("auto", _bank_columns())
    assert t.log == (True, False, False, False, False, True)
    assert t.log_features == (0, 5) and t.rule == "auto" and t.active
    assert repr(t) == "XTransform(log features [0, 5] of 6, x_shape=(6,), rule='auto')"


def test_auto_per_channel_pools_each_channel():
    n = 500
    wide = np.exp(2.0 * RNG.normal(size=(n, 8)))          # channel 0: wide positive time series
    flat = 3.0 + 0.1 * RNG.normal(size=(n, 8))             # channel 1: narrow
    x = np.stack([wide, flat], axis=-1)                    # (n, time 8, channels 2)
    t = XTransform.choose("auto", x, per_channel=True)
    mask = np.asarray(t.log).reshape(8, 2)
    assert mask[:, 0].all() and not mask[:, 1].any()


def test_overrides_none_log_and_mask():
    x = _bank_columns()
    assert not XTransform.choose("none", x).active
    pos = x[:, [0, 1, 4]]
    assert XTransform.choose("log", pos).log == (True, True, True)
    assert XTransform.choose([False, True, False], pos).log == (False, True, False)
    assert XTransform.choose(np.array([True, False, False]), pos).rule == "mask"
    with pytest.raises(ValueError, match=r"x_transform: log space needs strictly positive values, but "
                                         r"feature 2 of the bank has minimum 0"):
        XTransform.choose("log", x)
    with pytest.raises(ValueError, match=r"x_transform: a mask needs one entry per feature \(3"):
        XTransform.choose([True, False], pos)


@pytest.mark.parametrize("bad", ["logs", 3, [1, 0], [], "AUTO", [[True], [False, True]]])
def test_bad_x_transform_is_refused_when_the_estimator_is_made(bad):
    for est in (bmsbi.NPE, bmsbi.NLE, bmsbi.NRE):
        with pytest.raises(ValueError, match="x_transform: expected one of"):
            est(x_transform=bad)


def test_apply_and_check():
    t = XTransform((True, False), (2,), "mask")
    x = np.array([[100.0, -3.0], [np.nan, 2.0]], np.float32)
    out = t.apply(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [np.log(100.0), -3.0], rtol=1e-6)
    assert np.isnan(out[1, 0]) and out[1, 1] == 2.0
    t.check(x)  # NaN (an absent trial) is not refused
    with pytest.raises(ValueError, match=r"x_obs: feature 0 is -0.5, but this posterior models it in "
                                         r"log space"):
        t.check(np.array([-0.5, 1.0]))
    grid = XTransform((False, False, True, False), (2, 2), "mask")
    with pytest.raises(ValueError, match=r"recordings: feature 2 \(index \(1, 0\) of x_shape \(2, 2\)\) is 0"):
        grid.check(np.array([[1.0, 1.0], [0.0, 1.0]]), "recordings")

    # invert (robust inference maps stored training rows back to observations): exp where log
    x = np.array([[100.0, -3.0], [0.25, 2.0]], np.float32)
    back = t.invert(t.apply(x))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, x, rtol=1e-6)
    np.testing.assert_array_equal(XTransform.identity((2,)).invert(x), x)


def test_dict_round_trip_and_files_before_transforms():
    t = XTransform((True, False, True), (3,), "auto")
    assert XTransform.from_dict(t.to_dict(), (3,)) == t
    assert XTransform.from_dict(None, (3,)) == XTransform.identity((3,))
    with pytest.raises(ValueError, match="path: the file's x_transform names features outside"):
        XTransform.from_dict({"log_features": [5]}, (3,))


# ------------------------------------------------------------------ with a fitted NPE
# log x = A theta + b + 0.3 eps: three features over 10^-3 .. 10^4 and one Gaussian.
A = np.array([[1.5, 0.0], [0.0, 1.5], [1.0, 1.0]])
B = np.log(10.0) * np.array([-2.0, 0.0, 3.0])
NOISE = 0.3


def lognormal_bank(n, seed=0):
    prior = bmsbi.Prior({"a": dist.Normal(0.0, 1.0), "b": dist.Normal(0.0, 1.0)})
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n, 2))
    x = np.exp(theta @ A.T + B + NOISE * rng.normal(size=(n, 3)))
    x = np.concatenate([x, theta[:, :1] - theta[:, 1:] + 0.3 * rng.normal(size=(n, 1))], axis=1)
    return prior, bmsbi.Bank(theta.astype(np.float32), x.astype(np.float32), names=["a", "b"])


def analytic_sd():
    """Posterior sd of (a, b): log features A, linear feature (1, -1), noise 0.3 each; prior N(0, I)."""
    design = np.vstack([A, [[1.0, -1.0]]])
    return np.sqrt(np.diag(np.linalg.inv(np.eye(2) + design.T @ design / NOISE**2)))


@pytest.fixture(scope="module")
def fitted():
    prior, bank = lognormal_bank(3000)
    post = bmsbi.NPE(hidden=32, num_layers=2, max_epochs=40).fit(
        bank, prior=prior, key=jax.random.key(1), progress=False)
    return prior, bank, post


def test_fit_chooses_log_for_the_wide_features(fitted):
    _, _, post = fitted
    assert post.x_transform.log == (True, True, True, False)
    assert "log features [0, 1, 2] of 4" in repr(post.x_transform)


def test_transform_survives_save_and_load(fitted, tmp_path):
    _, bank, post = fitted
    path = post.save(tmp_path / "p.bmsbi")
    header, _ = bio.read_file(path)
    assert header["schema_version"] == SCHEMA_VERSION == 4
    assert header["x_transform"] == {"log_features": [0, 1, 2], "rule": "auto"}
    again = load_posterior(path)
    assert again.x_transform == post.x_transform
    x_obs = np.asarray(bank.x[:3])
    np.testing.assert_array_equal(np.asarray(again.sample(jax.random.key(5), x_obs, 200)),
                                  np.asarray(post.sample(jax.random.key(5), x_obs, 200)))
    np.testing.assert_allclose(again.ood_score(x_obs), post.ood_score(x_obs), rtol=1e-6)


def test_a_file_from_before_transforms_loads_without_one(tmp_path):
    prior, bank = lognormal_bank(400)
    post = bmsbi.NPE(hidden=8, num_layers=1, max_epochs=2, x_transform="none").fit(
        bank, prior=prior, key=jax.random.key(2), progress=False)
    path = post.save(tmp_path / "new.bmsbi")
    header, payload = bio.read_file(path)
    header = {k: v for k, v in header.items() if k not in
              ("kind", "schema_version", "bmsbi_version", "payload_size", "payload_sha256", "x_transform")}
    old = bio.write_file(tmp_path / "old.bmsbi", kind="posterior", schema_version=3, header=header,
                         payload=payload)
    loaded = load_posterior(old)
    assert loaded.x_transform == XTransform.identity((4,)) and not loaded.x_transform.active
    x_obs = np.asarray(bank.x[0])
    np.testing.assert_array_equal(np.asarray(loaded.sample(jax.random.key(3), x_obs, 50)),
                                  np.asarray(post.sample(jax.random.key(3), x_obs, 50)))


def test_non_positive_observation_in_a_log_feature_is_refused_everywhere(fitted):
    _, bank, post = fitted
    x = np.asarray(bank.x[0]).copy()
    x[1] = 0.0
    msg = r"feature 1 is 0, but this posterior models it in log space"
    with pytest.raises(ValueError, match="x_obs: " + msg):
        post.sample(jax.random.key(0), x, 10)
    with pytest.raises(ValueError, match="x_obs: " + msg):
        post.log_prob(np.zeros(2, np.float32), x)
    # infer / ood_score flag such a row, as they flag non-finite ones, and say why
    with pytest.warns(bmsbi.OutOfDistributionWarning, match="x_obs: " + msg):
        assert post.ood_score(x) == np.inf
    with pytest.warns(bmsbi.OutOfDistributionWarning, match="recordings: " + msg):
        res = post.infer(jax.random.key(0), np.stack([np.asarray(bank.x[1]), x]), 10)
    assert res.flagged.tolist() == [False, True] and np.isnan(res.samples[1]).all()
    assert np.isfinite(res.samples[0]).all()
    x[1], x[3] = 1.0, -2.0  # a negative value in the feature kept linear is fine
    assert np.isfinite(np.asarray(post.sample(jax.random.key(0), x, 10))).all()


def test_ood_reference_lives_in_the_transformed_space(fitted):
    _, bank, post = fitted
    typical = np.asarray(bank.x[:50])
    assert np.median(post.ood_score(typical)) < 1.0
    far = typical[:1].copy()
    far[0, 0] *= 1e6  # six orders of magnitude beyond: far in log space too
    assert post.ood_score(far)[0] > 1.0


def test_auto_posterior_sd_is_close_to_the_analytic_and_none_is_wider():
    """What a user cares about: the width of the posterior (NPE defaults, 5,000 simulations)."""
    prior, bank = lognormal_bank(5000, seed=3)
    _, test = lognormal_bank(8, seed=99)
    x_obs = np.asarray(test.x)
    ratios = {}
    for mode in ("auto", "none"):
        post = bmsbi.NPE(max_epochs=60).fit(bank, prior=prior, key=jax.random.key(4), progress=False)\
            if mode == "auto" else bmsbi.NPE(max_epochs=60, x_transform="none").fit(
                bank, prior=prior, key=jax.random.key(4), progress=False)
        s = np.asarray(post.sample(jax.random.key(6), x_obs, 2000))
        ratios[mode] = s.std(axis=1) / analytic_sd()       # (8, 2)
    auto, none = ratios["auto"], ratios["none"]
    assert np.all(np.abs(auto - 1) < 0.2), auto
    assert np.median(none) > np.median(auto) + 0.2, (np.median(none), np.median(auto))


def test_nle_models_the_wide_features_in_log_space_and_keeps_it_in_its_file(tmp_path):
    prior, bank = lognormal_bank(1000)
    post = bmsbi.NLE(hidden=16, num_layers=2, max_epochs=5, num_chains=2, num_warmup=20).fit(
        bank, prior=prior, key=jax.random.key(7), progress=False)
    assert post.x_transform.log_features == (0, 1, 2)
    again = load_posterior(post.save(tmp_path / "nle.bmsbi"))
    assert again.x_transform == post.x_transform
    x = np.asarray(bank.x[0])
    theta = np.zeros((3, 2), np.float32)
    lp = np.asarray(post.log_prob(theta, x))
    assert np.isfinite(lp).all()
    np.testing.assert_allclose(np.asarray(again.log_prob(theta, x)), lp, rtol=1e-5)
    x[2] = -1.0
    with pytest.raises(ValueError, match=r"x_obs: feature 2 is -1, but this posterior models it in log"):
        post.log_prob(theta, x)


@pytest.mark.filterwarnings("ignore:recordings. recording 0. channel")  # the flat (all-zero) recording
def test_the_transform_applies_to_the_summary_features_of_recordings():
    from bmsbi.summaries import BandPower

    summary = BandPower(fs=100.0, bands={"low": (2.0, 10.0), "high": (10.0, 40.0)}, log=False, nperseg=64)
    prior = bmsbi.Prior({"g": dist.Normal(0.0, 1.0)})
    rng = np.random.default_rng(1)
    theta = rng.normal(size=(1000, 1)).astype(np.float32)
    signals = (np.exp(2.0 * theta)[:, :, None] * rng.normal(size=(1000, 256, 1))).astype(np.float32)
    x = np.asarray(summary.batch(signals))                 # band powers ~ exp(4 g): wide, positive
    post = bmsbi.NPE(hidden=16, num_layers=2, max_epochs=20).fit(
        bmsbi.Bank(theta, x, names=["g"]), prior=prior, key=jax.random.key(0), progress=False,
        summary=summary, recording_shape=(256, 1))
    assert post.x_transform.log_features == (0, 1)
    res = post.infer(jax.random.key(1), signals[:4], 500)
    err = np.abs(res.samples.mean(axis=1)[:, 0] - theta[:4, 0])
    assert err.max() < 0.5 and not res.flagged.any()
    with pytest.warns(bmsbi.OutOfDistributionWarning,
                      match=r"recordings: feature 0 is 0, but this posterior models it in log"):
        res = post.infer(jax.random.key(1), np.zeros((256, 1), np.float32), 10)
    assert res.flagged.all() and np.isnan(res.samples).all()
