"""Issue 18, part 2: the MMD misspecification test is calibrated and has power.

On a 3-D standard Gaussian "simulator" the test's false-positive rate at ``p < 0.05`` is
checked on fresh draws (one at a time and in sets), its power on shifted and rescaled
draws, and bad input is refused naming the argument.
"""

import numpy as np
import pytest

from bmsbi.misspecification import MMDTest
from bmsbi.summaries import BandPower, combine, full_band_features


@pytest.fixture(scope="module")
def test():
    return MMDTest.fit(np.random.default_rng(0).normal(size=(4000, 3)), seed=0)


def test_false_positive_rate_is_nominal(test):
    fresh = np.random.default_rng(1).normal(size=(4000, 3))
    assert abs((test.pvalues(fresh) < 0.05).mean() - 0.05) < 0.012      # binomial sd 0.0034
    rng = np.random.default_rng(2)
    sets = [test.pvalue(rng.normal(size=(10, 3))) for _ in range(400)]
    assert abs(np.mean(np.array(sets) < 0.05) - 0.05) < 0.035           # binomial sd 0.011
    p = test.pvalues(fresh)
    assert 0.45 < np.median(p) < 0.55                                      # uniform under the null


def test_power_on_misspecified_draws(test):
    rng = np.random.default_rng(3)
    assert (test.pvalues(rng.normal(4.0, 1.0, (500, 3))) < 0.05).mean() > 0.9   # far off, alone
    shifted = [test.pvalue(rng.normal(0.7, 1.0, (30, 3))) for _ in range(50)]
    assert np.mean(np.array(shifted) < 0.05) > 0.9                       # a small shift, in sets of 30
    wide = [test.pvalue(rng.normal(0.0, 1.6, (30, 3))) for _ in range(50)]
    assert np.mean(np.array(wide) < 0.05) > 0.9                          # too wide, in sets of 30


def test_non_finite_observations_are_rejected(test):
    p = test.pvalues(np.array([[0.0, 0.0, 0.0], [np.nan, 0.0, 0.0]]))
    assert p[0] > 0.05 and p[1] == pytest.approx(1 / (1 + len(test.pool)))


@pytest.mark.parametrize("call, match", [
    (lambda: MMDTest.fit(np.zeros((5, 3))), "x: expected at least 20"),
    (lambda: MMDTest.fit(np.full((50, 3), np.nan)), "x: training observations must be finite"),
    (lambda: MMDTest.fit(np.zeros((50, 3)) + 1j), "x: expected real numbers"),
    (lambda: MMDTest.fit(np.random.default_rng(0).normal(size=(50, 3)), bandwidth=-1.0), "bandwidth"),
    (lambda: MMDTest.fit(np.random.default_rng(0).normal(size=(50, 3)), num_null=0), "num_null"),
])
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_wrong_observation_shape_is_refused(test):
    with pytest.raises(ValueError, match="x: expected observations of 3 entries"):
        test.pvalues(np.zeros((2, 4)))


def _oscillations(n, seed, fs=250.0, length=1000):
    """Noisy damped oscillations (AR(2)) with random frequency 4-40 Hz, damping and scale."""
    rng = np.random.default_rng(seed)
    f, r, scale = rng.uniform(4, 40, n), rng.uniform(0.8, 0.98, n), 10 ** rng.uniform(-1, 1, n)
    a1, a2 = 2 * r * np.cos(2 * np.pi * f / fs), -r ** 2
    e = rng.normal(size=(n, length + 200))
    x = np.zeros_like(e)
    for t in range(2, e.shape[1]):
        x[:, t] = a1 * x[:, t - 1] + a2 * x[:, t - 2] + e[:, t]
    return (scale[:, None] * x[:, 200:])[..., None].astype(np.float32)


def test_full_band_features_let_the_test_catch_line_noise_its_summary_cannot_see():
    fs = 250.0
    low_band = BandPower(fs, bands={"theta": (4, 8), "alpha": (8, 13), "beta": (13, 30), "low_gamma": (30, 40)})
    train, fresh = _oscillations(2500, 0), _oscillations(400, 1)
    t = np.arange(fresh.shape[1]) / fs
    mains = fresh + (0.3 * fresh.std(axis=1, keepdims=True) * np.sin(2 * np.pi * 50 * t)[None, :, None])
    blind = MMDTest.fit(train, summary=low_band, seed=0)
    seeing = MMDTest.fit(train, summary=combine(low_band, full_band_features(fs)), seed=0)
    assert "summary=BandPower" in repr(blind) and seeing.mean.size == 4 + 24
    for test in (blind, seeing):
        assert abs((test.pvalues(fresh) < 0.05).mean() - 0.05) < 0.035   # calibrated either way (sd 0.011)
    assert (blind.pvalues(mains) < 0.05).mean() < 0.2                   # 50 Hz is outside every band it reads
    assert (seeing.pvalues(mains) < 0.05).mean() > 0.9


def test_a_summary_test_takes_raw_recordings_only():
    with pytest.raises(ValueError, match="summary: expected a bmsbi.summaries.Summary"):
        MMDTest.fit(np.zeros((50, 3)), summary="psd")
    test = MMDTest.fit(_oscillations(100, 2), summary=full_band_features(250.0, num_bands=3), seed=0)
    with pytest.raises(ValueError, match=r"x: expected raw recordings \(m, time, regions\)"):
        test.pvalues(np.zeros((2, 3, 4, 5)))
