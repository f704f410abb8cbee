"""Summary statistics against NumPy/SciPy references, under jit/vmap, and serialised."""

import doctest
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
import scipy.stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmsbi import summaries
from bmsbi.summaries import (
    FC,
    FCD,
    Autocorrelation,
    BandPower,
    Combined,
    Moments,
    PeakContrast,
    SpectralPeak,
    WelchPSD,
    combine,
    default_eeg_summary,
    from_dict,
    full_band_features,
    welch,
)

FS = 250.0


def _rng(seed=0):
    return np.random.default_rng(seed)


def _sine_noise(n=2500, regions=3, freq=10.0, amp=2.0, noise=0.5, fs=FS, seed=0):
    t = np.arange(n) / fs
    phase = _rng(seed).uniform(0, 2 * np.pi, regions)
    x = amp * np.sin(2 * np.pi * freq * t[:, None] + phase)
    return (x + noise * _rng(seed + 1).standard_normal((n, regions))).astype(np.float32)


def _ref_acf(x, lags):
    d = x - x.mean(0)
    return np.stack([(d[:-k] * d[k:]).sum(0) / (d * d).sum(0) for k in lags])


def _ref_fcd(x, window, step, quantiles):
    n_win = (x.shape[0] - window) // step + 1
    iu = np.triu_indices(x.shape[1], 1)
    fcs = np.array([np.corrcoef(x[i * step : i * step + window].T)[iu] for i in range(n_win)])
    v = np.corrcoef(fcs)[np.triu_indices(n_win, 1)]
    return np.array([v.mean(), v.std(), *np.quantile(v, quantiles)])


# every statistic with non-default settings, for the generic checks
ALL_STATS = [
    Moments(),
    Moments(orders=(4, 1)),
    Autocorrelation(),
    WelchPSD(FS, nperseg=128, fmin=1.0, fmax=60.0),
    WelchPSD(FS, nperseg=101, noverlap=20, window="hamming", detrend="linear", log=False),
    BandPower(FS),
    BandPower(FS, bands={"low": (2, 9), "high": (9, 40)}, relative=True, log=False, nperseg=200),
    SpectralPeak(FS),
    FC(),
    FCD(FS, window=200, step=100),
    combine(Moments(), FC(), combine(Autocorrelation(lags=(3,)), SpectralPeak(FS, fmax=40.0))),
    default_eeg_summary(FS),
    PeakContrast(FS, bands={"low": (1, 40), "mains": (45, 55)}, near=2.0, far=6.0, nperseg=200),
    full_band_features(FS, num_bands=6),
]
IDS = [f"{type(s).__name__}{i}" for i, s in enumerate(ALL_STATS)]


# --------------------------------------------------------------------------- references


def test_moments_match_scipy():
    x = np.concatenate(
        [_rng(0).exponential(2.0, (3000, 2)), 5.0 + _rng(1).standard_t(5, (3000, 2))], axis=1
    )
    out = np.asarray(Moments()(x.astype(np.float32))).reshape(4, 4)
    np.testing.assert_allclose(out[0], x.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], x.std(0), rtol=1e-5)
    np.testing.assert_allclose(out[2], scipy.stats.skew(x, axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[3], scipy.stats.kurtosis(x, axis=0), rtol=1e-4, atol=1e-4)
    sub = np.asarray(Moments(orders=(3, 1))(x[:, 0].astype(np.float32)))
    np.testing.assert_allclose(sub, [scipy.stats.skew(x[:, 0]), x[:, 0].mean()], rtol=1e-4)


def test_moments_large_offset_keeps_precision():
    x = (1e4 + _rng(0).standard_normal((2000, 2))).astype(np.float32)
    x64 = x.astype(np.float64)
    out = np.asarray(Moments()(x)).reshape(4, 2)
    np.testing.assert_allclose(out[1], x64.std(0), rtol=1e-4)
    np.testing.assert_allclose(out[2], scipy.stats.skew(x64), atol=1e-3)


def test_peak_contrast_matches_a_scipy_reference_and_finds_a_line():
    x = _sine_noise(n=2000, regions=2, freq=50.0, amp=0.5, noise=1.0)
    bands = {"low": (1.0, 40.0), "mains": (45.0, 55.0), "high": (55.0, 124.0)}
    out = np.asarray(PeakContrast(FS, bands=bands)(x)).reshape(3, 2)
    f, p = scipy.signal.welch(x, fs=FS, nperseg=256, axis=0)
    logp = np.log10(p)
    ref = np.empty((3, 2))
    inner = np.arange(1, len(f) - 1)
    contrast = np.stack([logp[j] - np.median(logp[[k for k in inner if 3 <= abs(f[k] - f[j]) <= 8]], axis=0)
                         for j in inner])
    for b, (low, high) in enumerate(bands.values()):
        keep = (f[inner] >= low) & (f[inner] < high)
        ref[b] = contrast[keep].max(axis=0)
    np.testing.assert_allclose(out, ref, atol=2e-3)   # interior bins: the padded edges do not reach these bands
    assert (out[1] > 1.0).all() and (out[[0, 2]] < 0.7).all()   # the 50 Hz line stands 1+ decade out


def test_full_band_features_cover_the_spectrum_and_refuse_too_many_bands():
    stat = full_band_features(FS, num_bands=5)
    edges = [e for _, e in stat.stats[0].bands]
    assert edges[0][0] == pytest.approx(FS / 256) and edges[-1][1] == FS / 2
    assert all(a[1] == b[0] for a, b in zip(edges, edges[1:]))
    assert stat.stats[1].bands == stat.stats[0].bands
    with pytest.raises(ValueError, match="num_bands: expected at most 127 bands"):
        full_band_features(FS, num_bands=500)
    with pytest.raises(ValueError, match="near, far"):
        PeakContrast(FS, near=5.0, far=4.0)
    with pytest.raises(ValueError, match="holds no Welch bin"):
        PeakContrast(FS, near=0.1, far=0.2)


def test_autocorrelation_matches_numpy():
    x = np.cumsum(_rng(0).standard_normal((500, 3)), axis=0).astype(np.float32)
    lags = (1, 2, 5, 10, 49)
    out = np.asarray(Autocorrelation(lags)(x)).reshape(len(lags), 3)
    np.testing.assert_allclose(out, _ref_acf(x.astype(np.float64), lags), atol=2e-5)


@pytest.mark.parametrize(
    "nperseg, noverlap, window, detrend",
    [
        (256, None, "hann", "constant"),
        (100, 10, "hamming", "linear"),
        (127, 60, "blackman", None),
        (64, 0, "boxcar", "constant"),
    ],
)
def test_welch_matches_scipy(nperseg, noverlap, window, detrend):
    x = _sine_noise(n=1111, regions=2)
    freqs, psd = welch(x, FS, nperseg, noverlap, window, detrend)
    f_ref, p_ref = scipy.signal.welch(
        x.astype(np.float64), FS, window=window, nperseg=nperseg, noverlap=noverlap,
        detrend=False if detrend is None else detrend, axis=0,
    )
    np.testing.assert_array_equal(freqs, f_ref)
    np.testing.assert_allclose(np.asarray(psd), p_ref, rtol=2e-4, atol=1e-6 * p_ref.max())


def test_welch_1d_is_one_region_and_windows_match_scipy():
    x = _rng(0).standard_normal(600).astype(np.float32)
    _, psd = welch(x, 100.0, nperseg=100)
    _, p_ref = scipy.signal.welch(x.astype(np.float64), 100.0, nperseg=100)
    assert psd.shape == (51, 1)
    np.testing.assert_allclose(np.asarray(psd[:, 0]), p_ref, rtol=2e-4, atol=1e-7)
    for name in ["hann", "hamming", "blackman", "boxcar"]:
        np.testing.assert_allclose(
            summaries._window_values(name, 33), scipy.signal.get_window(name, 33), atol=1e-12
        )


def test_welch_psd_is_log10_of_scipy_on_the_range():
    x = _sine_noise(regions=2)
    stat = WelchPSD(FS, nperseg=128, fmin=2.0, fmax=50.0)
    f_ref, p_ref = scipy.signal.welch(x.astype(np.float64), FS, nperseg=128, axis=0)
    keep = (f_ref >= 2.0) & (f_ref <= 50.0)
    np.testing.assert_array_equal(stat.freqs, f_ref[keep])
    out = np.asarray(stat(x)).reshape(-1, 2)
    np.testing.assert_allclose(out, np.log10(p_ref[keep]), atol=2e-4)
    names = stat.feature_names(2)
    assert names[:3] == ["psd[3.90625Hz,r0]", "psd[3.90625Hz,r1]", "psd[5.85938Hz,r0]"]
    assert len(names) == stat.output_size(len(x), 2) == out.size


def test_band_power_matches_rectangle_rule_on_scipy_psd():
    x = _sine_noise(regions=2)
    bands = {"delta": (1, 4), "alpha": (8, 13), "beta": (13, 30)}
    f, p = scipy.signal.welch(x.astype(np.float64), FS, nperseg=256, axis=0)
    df = f[1] - f[0]
    ref = np.stack([p[(f >= lo) & (f < hi)].sum(0) * df for lo, hi in bands.values()])
    out = np.asarray(BandPower(FS, bands=bands, log=False)(x)).reshape(3, 2)
    np.testing.assert_allclose(out, ref, rtol=2e-4)
    log_out = np.asarray(BandPower(FS, bands=bands)(x)).reshape(3, 2)
    np.testing.assert_allclose(log_out, np.log10(ref), atol=1e-4)
    total = p[(f >= 1) & (f < 30)].sum(0) * df
    rel = np.asarray(BandPower(FS, bands=bands, relative=True, log=False)(x)).reshape(3, 2)
    np.testing.assert_allclose(rel, ref / total, rtol=2e-4)


def test_band_power_of_sine_is_alpha_and_amplitude_squared_over_two():
    amp = 2.0
    x = _sine_noise(n=5000, regions=3, amp=amp, noise=0.3)
    stat = BandPower(FS, log=False)
    power = np.asarray(stat(x)).reshape(5, 3)
    assert np.all(power.argmax(0) == list(summaries.EEG_BANDS).index("alpha"))
    np.testing.assert_allclose(power[2], amp**2 / 2, rtol=0.03)
    rel = np.asarray(BandPower(FS, relative=True, log=False)(x)).reshape(5, 3)
    np.testing.assert_allclose(rel.sum(0), 1.0, rtol=1e-5)


def test_total_welch_power_is_variance():
    x = _rng(3).standard_normal((8192, 2)).astype(np.float32)
    stat = BandPower(FS, bands={"all": (0.0, FS / 2)}, log=False, window="boxcar", noverlap=0)
    total = np.asarray(stat(x))
    # [0, fs/2) leaves out the Nyquist bin, about 1/128 of white-noise power
    np.testing.assert_allclose(total, x.var(0) * (1 - 1 / 256), rtol=0.03)


def test_spectral_peak_finds_sine_frequency():
    x = _sine_noise(n=5000, regions=3, freq=10.0, noise=1.0)
    stat = SpectralPeak(FS)
    freq, power = np.asarray(stat(x)).reshape(2, 3)
    assert np.all(np.abs(freq - 10.0) <= FS / stat.nperseg)
    f, p = scipy.signal.welch(x.astype(np.float64), FS, nperseg=256, axis=0)
    keep = f >= 1.0
    k = p[keep].argmax(0)
    np.testing.assert_array_equal(freq, f[keep][k])
    np.testing.assert_allclose(power, np.log10(p[keep][k, range(3)]), atol=1e-4)
    names = ["peak_freq[r0]", "peak_freq[r1]", "peak_power[r0]", "peak_power[r1]"]
    assert stat.feature_names(2) == names


def test_fc_matches_corrcoef():
    x = _rng(0).standard_normal((300, 6)) @ _rng(1).standard_normal((6, 6))
    x = (x + 3.0).astype(np.float32)
    ref = np.corrcoef(x.T.astype(np.float64))[np.triu_indices(6, 1)]
    np.testing.assert_allclose(np.asarray(FC()(x)), ref, atol=2e-6)
    assert FC().feature_names(3) == ["fc[0,1]", "fc[0,2]", "fc[1,2]"]


def test_fcd_matches_numpy():
    # regions whose coupling drifts, so windows differ
    n, r = 2000, 5
    base = _rng(0).standard_normal((n, 1))
    mix = np.linspace(0, 1, n)[:, None] * _rng(1).uniform(-1, 1, (1, r))
    x = (mix * base + _rng(2).standard_normal((n, r))).astype(np.float32)
    stat = FCD(FS, window=250, step=125, quantiles=(0.0, 0.1, 0.5, 0.9, 1.0))
    ref = _ref_fcd(x.astype(np.float64), 250, 125, stat.quantiles)
    np.testing.assert_allclose(np.asarray(stat(x)), ref, atol=5e-5)
    assert stat.window_seconds == 1.0 and stat.step_seconds == 0.5


# --------------------------------------------------------------------------- robustness


def test_constant_region_values():
    x = np.stack([np.full(500, 2.0), _rng(0).standard_normal(500)], axis=1).astype(np.float32)
    mean, std, skew, kurt = np.asarray(Moments()(x)).reshape(4, 2)[:, 0]
    assert (mean, std, skew, kurt) == (2.0, 0.0, 0.0, 0.0)
    assert np.all(np.asarray(Autocorrelation()(x)).reshape(4, 2)[:, 0] == 0.0)
    assert float(FC()(x)[0]) == 0.0
    total = lambda s: Moments()(s).sum() + FC()(s).sum() + Autocorrelation()(s).sum()  # noqa: E731
    grad = jax.jit(jax.grad(total))(x)
    assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("stat", ALL_STATS[:-1], ids=IDS[:-1])
def test_jit_and_vmap_match_eager(stat):
    noise = _rng(5).standard_normal((3, 1000, 4)).astype(np.float32)
    xs = _sine_noise(n=1000, regions=4, seed=0)[None] + noise
    eager = np.stack([np.asarray(stat(x)) for x in xs])
    assert eager.dtype == np.float32 and eager.shape == (3, stat.output_size(1000, 4))
    np.testing.assert_allclose(np.asarray(jax.jit(stat)(xs[0])), eager[0], rtol=1e-5, atol=1e-5)
    batched = np.asarray(jax.jit(jax.vmap(stat))(xs))
    np.testing.assert_allclose(batched, eager, rtol=1e-5, atol=1e-5)
    assert len(stat.feature_names(4)) == eager.shape[1]


@pytest.mark.parametrize("stat", ALL_STATS, ids=IDS)
def test_constant_signal_gives_finite_output(stat):
    x = np.full((1000, 4), 7.5, np.float32)  # shape of the jit/vmap test: reuses its programs
    assert np.all(np.isfinite(np.asarray(stat(x))))


def test_statistic_can_be_a_static_jit_argument():
    f = jax.jit(lambda stat, x: stat(x), static_argnums=0)
    x = _sine_noise(n=600, regions=2)
    expected = np.asarray(BandPower(FS)(x))
    np.testing.assert_allclose(np.asarray(f(BandPower(FS), x)), expected, rtol=1e-6)
    assert hash(BandPower(FS)) == hash(BandPower(FS, bands=dict(summaries.EEG_BANDS)))


# --------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize("stat", ALL_STATS, ids=IDS)
def test_to_dict_from_dict_round_trip(stat):
    d = stat.to_dict()
    assert d["name"] == type(stat).__name__
    back = from_dict(json.loads(json.dumps(d)))
    assert back == stat and hash(back) == hash(stat) and back.to_dict() == d


def test_combined_dict_is_nested_list_and_combine_flattens():
    stat = combine(Moments(), combine(FC(), Autocorrelation()))
    assert isinstance(stat, Combined) and len(stat.stats) == 3
    d = stat.to_dict()
    assert [s["name"] for s in d["stats"]] == ["Moments", "FC", "Autocorrelation"]
    assert d["stats"][0] == {"name": "Moments", "orders": [1, 2, 3, 4]}


def test_defaults_are_normalised_in_settings():
    d = WelchPSD(FS).to_dict()
    assert d == {"name": "WelchPSD", "fs": 250.0, "nperseg": 256, "noverlap": 128, "window": "hann",
                 "detrend": "constant", "fmin": 0.0, "fmax": 125.0, "log": True}
    assert BandPower(FS).to_dict()["bands"]["alpha"] == [8.0, 13.0]


@pytest.mark.parametrize(
    "d, match",
    [
        ({"name": "Nope"}, "unknown summary name"),
        ({"orders": [1]}, "'name'"),
        ({"name": "Moments", "order": [1]}, "unknown settings"),
        ({"name": "Combined", "stats": "Moments"}, "stats"),
        ({"name": "Moments", "orders": [7]}, "orders"),
        ({"name": "FCD", "window": 10, "step": 5}, "fs"),
        ("Moments", "mapping"),
    ],
)
def test_from_dict_rejects_bad_input(d, match):
    with pytest.raises(ValueError, match=match):
        from_dict(d)


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "build, arg",
    [
        (lambda: Moments(orders=(1, 5)), "orders"),
        (lambda: Moments(orders=()), "orders"),
        (lambda: Moments(orders=(1, 1)), "orders"),
        (lambda: Autocorrelation(lags=(0, 1)), "lags"),
        (lambda: Autocorrelation(lags=(1.5,)), "lags"),
        (lambda: WelchPSD(0.0), "fs"),
        (lambda: WelchPSD(float("nan")), "fs"),
        (lambda: WelchPSD(FS, nperseg=0), "nperseg"),
        (lambda: WelchPSD(FS, nperseg=True), "nperseg"),
        (lambda: WelchPSD(FS, noverlap=256), "noverlap"),
        (lambda: WelchPSD(FS, window="kaiser"), "window"),
        (lambda: WelchPSD(FS, detrend="quadratic"), "detrend"),
        (lambda: WelchPSD(FS, fmax=200.0), "fmax"),
        (lambda: WelchPSD(FS, fmin=10.0, fmax=10.2), "fmin"),
        (lambda: BandPower(FS, bands={"x": (10, 5)}), "bands['x']"),
        (lambda: BandPower(100.0), "bands['gamma']"),
        (lambda: BandPower(FS, bands={"x": (10.0, 10.5)}), "bands['x']"),
        (lambda: BandPower(FS, bands={}), "bands"),
        (lambda: BandPower(FS, bands={"x": 3}), "bands['x']"),
        (lambda: SpectralPeak(FS, fmin=-1.0), "fmin"),
        (lambda: FCD(FS, window=1, step=1), "window"),
        (lambda: FCD(FS, window=10, step=0), "step"),
        (lambda: FCD(FS, window=10, step=5, quantiles=(1.5,)), "quantiles"),
        (lambda: Combined([]), "stats"),
        (lambda: Combined([Moments(), "FC"]), "stats"),
        (lambda: default_eeg_summary(-1.0), "fs"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(build, arg):
    with pytest.raises(ValueError) as info:
        build()
    assert arg in str(info.value)


@pytest.mark.parametrize(
    "stat, shape, match",
    [
        (WelchPSD(FS), (200, 2), "nperseg=256"),
        (BandPower(FS), (255,), "nperseg=256"),
        (SpectralPeak(FS), (100, 1), "nperseg=256"),
        (Autocorrelation(), (10, 2), "lags"),
        (FC(), (100, 1), "regions"),
        (FCD(FS, window=100, step=50), (149, 4), "two windows"),
        (FCD(FS, window=100, step=50), (500, 2), "regions"),
        (Moments(), (2, 10, 3), "jax.vmap"),
        (Moments(), (0, 3), "non-empty"),
    ],
)
def test_bad_signals_raise_value_error_even_under_jit(stat, shape, match):
    x = jnp.zeros(shape)
    with pytest.raises(ValueError, match=match):
        stat(x)
    with pytest.raises(ValueError, match=match):
        jax.jit(stat)(x)


def test_complex_signal_rejected_and_integer_signal_accepted():
    with pytest.raises(ValueError, match="real"):
        Moments()(jnp.ones(10, jnp.complex64))
    np.testing.assert_allclose(np.asarray(Moments(orders=(1,))(np.arange(5))), [2.0])


# --------------------------------------------------------------------------- shapes


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_time=st.integers(64, 3000), n_regions=st.integers(3, 20))
def test_output_size_and_names_agree_with_output_shape(n_time, n_regions):
    # eval_shape traces without compiling, so many shapes stay cheap
    stat = combine(
        Moments(), Autocorrelation(lags=(1, 7)), WelchPSD(100.0, nperseg=64, fmax=20.0),
        BandPower(100.0, bands={"a": (2, 10), "b": (10, 40)}, nperseg=64),
        SpectralPeak(100.0, nperseg=64), FC(), FCD(100.0, window=32, step=16),
    )
    out = jax.eval_shape(stat, jax.ShapeDtypeStruct((n_time, n_regions), jnp.float32))
    assert out.shape == (stat.output_size(n_time, n_regions),) and out.dtype == jnp.float32
    names = stat.feature_names(n_regions)
    assert len(names) == len(set(names)) == out.shape[0]
    batch = jax.ShapeDtypeStruct((2, n_time, n_regions), jnp.float32)
    batched = jax.eval_shape(jax.vmap(stat), batch)
    assert batched.shape == (2, out.shape[0])


def test_default_eeg_summary_clips_bands_to_nyquist():
    stat = default_eeg_summary(100.0, nperseg=128)
    band = next(s for s in stat.stats if isinstance(s, BandPower))
    assert dict(band.bands)["gamma"] == (30.0, 50.0)
    names = stat.feature_names(2)
    assert "bandpower_alpha[r1]" in names and "peak_freq[r0]" in names
    assert stat.output_size(1000, 2) == 2 * (4 + 4 + 5 + 2)


def test_docstring_examples_run():
    result = doctest.testmod(summaries, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
