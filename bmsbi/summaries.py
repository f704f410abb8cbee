"""Jittable summary statistics of neural time series.

A summary statistic maps a signal of shape ``(time, regions)`` (a 1-D signal
``(time,)`` is one region) sampled at ``fs`` Hz to a 1-D ``float32`` vector of a
length fixed by the signal's shape. Each statistic is a small frozen, hashable
object built from its settings and called on a signal::

    stat = BandPower(fs=250.0)
    features = stat(signal)                      # (output_size,)
    batch = jax.vmap(stat)(signals)              # (batch, output_size)

Every statistic works eagerly, under ``jax.jit`` and under ``jax.vmap``; since it
is hashable it can also be a static argument of a jitted function. Settings are
checked when the statistic is built, and the signal's shape (static under jit) is
checked when it is called, so mistakes raise ``ValueError`` before any tracing.

Layout. Per-region statistics are returned feature-major, region-minor: the
flattening of a ``(n_features, n_regions)`` array, so entry ``i * n_regions + r``
is feature ``i`` of region ``r``. ``feature_names(n_regions)`` names every entry.

Serialisation. ``stat.to_dict()`` gives a JSON-serialisable dict
``{"name": <class name>, **settings}`` and :func:`from_dict` rebuilds an equal
object, nested pipelines (:class:`Combined`) included; nothing is evaluated or
unpickled.

Degenerate signals. A constant region has no scale, so statistics that divide
by a standard deviation or a total power are defined as 0 there (skewness,
excess kurtosis, autocorrelation, correlations, relative band power) instead of
NaN. Centring first subtracts the first sample, so a constant signal centres to
exactly zero in floating point and the rule is applied exactly, without an
epsilon that would bias ordinary signals. Logarithms are taken of
``power + tiny`` (``tiny`` the smallest normal number of the dtype, about
1.2e-38 in float32), which changes no representable power above ``tiny`` but
keeps zero power finite. NaN or inf in the input propagates to the output (the
check cannot run inside ``jit``); banks handle non-finite simulations.

Spectral statistics share one Welch estimator, :func:`welch`, that follows
``scipy.signal.welch``'s conventions: periodic window, ``noverlap`` defaulting
to ``nperseg // 2``, per-segment detrending, one-sided density scaling in
``units**2 / Hz``, segments averaged by the mean, trailing samples that do not
fill a segment dropped.

References
----------
Welch, P. (1967). The use of fast Fourier transform for the estimation of power
spectra. IEEE Trans. Audio Electroacoust. 15(2), 70-73.
Hansen, E. C. A. et al. (2015). Functional connectivity dynamics: modeling the
switching behavior of the resting state. NeuroImage 105, 525-535.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "EEG_BANDS",
    "Summary",
    "Moments",
    "Autocorrelation",
    "WelchPSD",
    "BandPower",
    "SpectralPeak",
    "FC",
    "FCStats",
    "FCStrength",
    "BandPassed",
    "FCD",
    "Combined",
    "combine",
    "welch",
    "from_dict",
    "default_eeg_summary",
    "PeakContrast",
    "full_band_features",
]

#: Conventional EEG frequency bands in Hz, half-open ``[low, high)``.
EEG_BANDS: dict[str, tuple[float, float]] = {
    "delta": (1.0, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 13.0),
    "beta": (13.0, 30.0),
    "gamma": (30.0, 80.0),
}

_WINDOWS = ("hann", "hamming", "blackman", "boxcar")
_DETRENDS = ("constant", "linear", None)
_HIGHEST = jax.lax.Precision.HIGHEST  # GPUs would otherwise use TF32 for float32 matmuls


# --------------------------------------------------------------------------- #
# argument checks (run eagerly, on Python values)
# --------------------------------------------------------------------------- #


def _int_arg(value: Any, name: str, owner: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}; got {value!r}.")
    try:
        ivalue = operator.index(value)
    except TypeError:
        raise ValueError(
            f"{owner}: {name} must be an integer >= {minimum}; got {value!r} "
            f"of type {type(value).__name__}."
        ) from None
    if ivalue < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}; got {ivalue}.")
    return int(ivalue)


def _float_arg(value: Any, name: str, owner: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be a finite real number; got {value!r}.")
    try:
        fvalue = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{owner}: {name} must be a finite real number; got {value!r} "
            f"of type {type(value).__name__}."
        ) from None
    if not math.isfinite(fvalue):
        raise ValueError(f"{owner}: {name} must be a finite real number; got {fvalue}.")
    return fvalue


def _positive_float_arg(value: Any, name: str, owner: str) -> float:
    fvalue = _float_arg(value, name, owner)
    if fvalue <= 0:
        raise ValueError(f"{owner}: {name} must be > 0; got {fvalue}.")
    return fvalue


def _quantiles_arg(quantiles: Any, owner: str) -> tuple[float, ...]:
    expected = f"{owner}: quantiles must be a sequence of floats in [0, 1]"
    if isinstance(quantiles, (str, bytes)) or not isinstance(quantiles, Sequence | np.ndarray):
        raise ValueError(f"{expected}; got {quantiles!r}.")
    quantiles = tuple(_float_arg(q, "each entry of quantiles", owner) for q in quantiles)
    if not all(0.0 <= q <= 1.0 for q in quantiles):
        raise ValueError(f"{expected}; got {quantiles}.")
    return quantiles


def _int_tuple_arg(value: Any, name: str, owner: str, minimum: int) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(
            f"{owner}: {name} must be a non-empty sequence of distinct integers >= {minimum}; "
            f"got {value!r}."
        )
    items = tuple(_int_arg(v, f"each entry of {name}", owner, minimum) for v in value)
    if not items or len(set(items)) != len(items):
        raise ValueError(
            f"{owner}: {name} must be a non-empty sequence of distinct integers >= {minimum}; "
            f"got {tuple(value)!r}."
        )
    return items


def _welch_args(
    owner: str, fs: Any, nperseg: Any, noverlap: Any, window: Any, detrend: Any
) -> tuple[float, int, int, str, str | None]:
    """Check and normalise Welch settings; ``noverlap=None`` becomes ``nperseg // 2``."""
    fs = _positive_float_arg(fs, "fs", owner)
    nperseg = _int_arg(nperseg, "nperseg", owner, 2)
    if noverlap is None:
        noverlap = nperseg // 2
    else:
        noverlap = _int_arg(noverlap, "noverlap", owner, 0)
        if noverlap >= nperseg:
            raise ValueError(
                f"{owner}: noverlap must satisfy 0 <= noverlap < nperseg = {nperseg}; "
                f"got {noverlap}."
            )
    if window not in _WINDOWS:
        raise ValueError(f"{owner}: window must be one of {_WINDOWS}; got {window!r}.")
    if detrend is False:
        detrend = None
    if detrend not in _DETRENDS:
        raise ValueError(f"{owner}: detrend must be one of {_DETRENDS}; got {detrend!r}.")
    return fs, nperseg, noverlap, window, detrend


def _freq_slice(
    owner: str, freqs: np.ndarray, low: float, high: float, include_high: bool, what: str
) -> tuple[int, int]:
    """Index range ``[start, stop)`` of ``freqs`` inside ``[low, high)`` (or ``[low, high]``)."""
    inside = (freqs >= low) & ((freqs <= high) if include_high else (freqs < high))
    hits = np.flatnonzero(inside)
    if hits.size == 0:
        df = freqs[1] - freqs[0]
        raise ValueError(
            f"{owner}: {what} contains no Welch frequency bin (resolution fs/nperseg = "
            f"{df:g} Hz); widen it or increase nperseg."
        )
    return int(hits[0]), int(hits[-1]) + 1


def _freq_range_args(
    owner: str, fs: float, nperseg: int, fmin: Any, fmax: Any
) -> tuple[float, float]:
    """Check ``0 <= fmin < fmax <= fs / 2`` (None is ``fs / 2``) with a Welch bin inside."""
    fmin = _float_arg(fmin, "fmin", owner)
    fmax = fs / 2.0 if fmax is None else _float_arg(fmax, "fmax", owner)
    if not 0.0 <= fmin < fmax <= fs / 2.0:
        raise ValueError(
            f"{owner}: fmin and fmax must satisfy 0 <= fmin < fmax <= fs/2 = {fs / 2} Hz; "
            f"got fmin={fmin}, fmax={fmax}."
        )
    what = f"[fmin, fmax] = [{fmin}, {fmax}] Hz"
    _freq_slice(owner, _welch_freqs(fs, nperseg), fmin, fmax, True, what)
    return fmin, fmax


def _set_fields(obj: Any, **values: Any) -> None:
    """Store normalised settings on a frozen dataclass."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def _check_time(owner: str, n_time: int, needed: int, why: str) -> None:
    if n_time < needed:
        raise ValueError(
            f"{owner}: signal has {n_time} samples but {why} needs at least {needed}; "
            "pass a longer signal or change the settings."
        )


def _check_regions(owner: str, n_regions: int, needed: int, why: str) -> None:
    if n_regions < needed:
        raise ValueError(
            f"{owner}: signal has {n_regions} region(s) but {why} needs at least {needed}; "
            "pass a (time, regions) signal with more regions."
        )


# --------------------------------------------------------------------------- #
# numerical helpers (traceable)
# --------------------------------------------------------------------------- #


def _as_signal(signal: Any, owner: str) -> jax.Array:
    """Return ``signal`` as a floating ``(time, regions)`` array (float32 at least)."""
    x = jnp.asarray(signal)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(
            f"{owner}: signal must have shape (time,) or (time, regions); got shape "
            f"{tuple(x.shape)}. For a batch of signals use jax.vmap(stat)(signals)."
        )
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise ValueError(f"{owner}: signal must be real; got dtype {x.dtype}.")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{owner}: signal must be non-empty; got shape {tuple(x.shape)}.")
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _center(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """Mean along ``axis`` and deviations from it; exact zeros for a constant signal.

    Subtracting the first sample before averaging makes constant signals centre to
    exactly 0 and reduces cancellation when the mean is large compared with the spread.
    """
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    shifted = x - first
    shift_mean = jnp.mean(shifted, axis=axis, keepdims=True)
    return jnp.squeeze(first + shift_mean, axis=axis), shifted - shift_mean


def _safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den`` where ``den > 0`` and 0 elsewhere; gradients stay finite."""
    positive = den > 0
    return jnp.where(positive, num / jnp.where(positive, den, 1.0), 0.0)


def _std(d: jax.Array, axis: int) -> jax.Array:
    """Population standard deviation (ddof=0) of centred ``d``; gradient-safe at 0."""
    var = jnp.mean(d * d, axis=axis)
    positive = var > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)


def _log10(power: jax.Array) -> jax.Array:
    return jnp.log10(power + jnp.finfo(power.dtype).tiny)


def _standardize(x: jax.Array, axis: int) -> jax.Array:
    """z-scores along ``axis`` (ddof=0); a constant series gives zeros."""
    _, d = _center(x, axis)
    return _safe_divide(d, jnp.expand_dims(_std(d, axis), axis))


def _corr_matrix(x: jax.Array) -> jax.Array:
    """Pearson correlations between the columns of ``x (..., time, regions)``, clipped to [-1, 1]."""
    z = _standardize(x, axis=-2)
    corr = jnp.einsum("...tr,...ts->...rs", z, z, precision=_HIGHEST) / x.shape[-2]
    return jnp.clip(corr, -1.0, 1.0)


def _corr_upper(x: jax.Array) -> jax.Array:
    """Pearson correlations between the columns of ``x (..., time, regions)``.

    Returns the strict upper triangle, row-major, shape ``(..., regions*(regions-1)/2)``.
    """
    rows, cols = np.triu_indices(x.shape[-1], 1)
    return _corr_matrix(x)[..., rows, cols]


def _window_values(window: str, nperseg: int) -> np.ndarray:
    """Periodic window of length ``nperseg`` (``scipy.signal.get_window`` convention)."""
    phase = 2.0 * np.pi * np.arange(nperseg) / nperseg
    if window == "hann":
        return 0.5 - 0.5 * np.cos(phase)
    if window == "hamming":
        return 0.54 - 0.46 * np.cos(phase)
    if window == "blackman":
        return 0.42 - 0.5 * np.cos(phase) + 0.08 * np.cos(2.0 * phase)
    return np.ones(nperseg)  # boxcar


def _welch_freqs(fs: float, nperseg: int) -> np.ndarray:
    return np.fft.rfftfreq(nperseg, 1.0 / fs)


def _welch(
    x: jax.Array, fs: float, nperseg: int, noverlap: int, window: str, detrend: str | None
) -> jax.Array:
    """Welch PSD of checked ``x (time, regions)``; returns ``(nperseg // 2 + 1, regions)``."""
    n_time = x.shape[0]
    step = nperseg - noverlap
    n_segments = (n_time - nperseg) // step + 1
    index = np.arange(n_segments)[:, None] * step + np.arange(nperseg)[None, :]
    segments = x[index]  # (segments, nperseg, regions)
    if detrend == "constant":
        segments = segments - jnp.mean(segments, axis=1, keepdims=True)
    elif detrend == "linear":
        t = np.arange(nperseg) - (nperseg - 1) / 2.0
        t_col = jnp.asarray(t[:, None], x.dtype)
        segments = segments - jnp.mean(segments, axis=1, keepdims=True)
        slope = jnp.sum(t_col * segments, axis=1, keepdims=True) / float(np.sum(t * t))
        segments = segments - slope * t_col
    taper = _window_values(window, nperseg)
    spectrum = jnp.fft.rfft(segments * jnp.asarray(taper[:, None], x.dtype), axis=1)
    power = jnp.mean(spectrum.real**2 + spectrum.imag**2, axis=0)
    # one-sided density: double every bin but DC (and Nyquist when nperseg is even)
    weight = np.full(nperseg // 2 + 1, 2.0)
    weight[0] = 1.0
    if nperseg % 2 == 0:
        weight[-1] = 1.0
    weight /= fs * np.sum(taper * taper)
    return power * jnp.asarray(weight[:, None], x.dtype)


_welch_jit = jax.jit(_welch, static_argnums=(1, 2, 3, 4, 5))


def welch(
    signal: Any,
    fs: float,
    nperseg: int = 256,
    noverlap: int | None = None,
    window: str = "hann",
    detrend: str | None = "constant",
) -> tuple[np.ndarray, jax.Array]:
    """Welch power spectral density, following ``scipy.signal.welch``'s conventions.

    The signal is cut into segments of ``nperseg`` samples that start every
    ``nperseg - noverlap`` samples (trailing samples that do not fill a segment are
    dropped); each segment is detrended, multiplied by a periodic window and
    Fourier transformed; the squared magnitudes are averaged over segments and
    scaled to a one-sided density, so that ``psd.sum(0) * fs / nperseg`` is about
    the signal's variance.

    Parameters
    ----------
    signal : array, shape (time,) or (time, regions)
        Real signal; a 1-D signal is one region.
    fs : float
        Sampling rate in Hz (a Python number: frequencies are fixed at trace time).
    nperseg : int, default 256
        Segment length in samples, ``>= 2``; the FFT length and the frequency
        resolution ``fs / nperseg`` follow from it. Must not exceed ``time``.
    noverlap : int, optional
        Overlap between segments in samples, ``0 <= noverlap < nperseg``;
        default ``nperseg // 2``.
    window : {"hann", "hamming", "blackman", "boxcar"}, default "hann"
        Periodic taper, as ``scipy.signal.get_window(window, nperseg)``.
    detrend : {"constant", "linear", None}, default "constant"
        Per-segment detrending before tapering; ``None`` (or ``False``) for none.

    Returns
    -------
    freqs : numpy.ndarray, shape (nperseg // 2 + 1,)
        Frequencies in Hz, ``numpy.fft.rfftfreq(nperseg, 1 / fs)`` (static).
    psd : jax.Array, shape (nperseg // 2 + 1, regions)
        Power spectral density in ``signal_units**2 / Hz``.

    Raises
    ------
    ValueError
        For invalid settings, a signal that is not 1-D/2-D, or fewer than
        ``nperseg`` samples.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> t = jnp.arange(1000) / 250.0
    >>> freqs, psd = welch(jnp.sin(2 * jnp.pi * 10.0 * t), fs=250.0, nperseg=250)
    >>> psd.shape, float(freqs[psd[:, 0].argmax()])
    ((126, 1), 10.0)
    """
    fs, nperseg, noverlap, window, detrend = _welch_args(
        "welch", fs, nperseg, noverlap, window, detrend
    )
    x = _as_signal(signal, "welch")
    _check_time("welch", x.shape[0], nperseg, f"nperseg={nperseg}")
    return _welch_freqs(fs, nperseg), _welch_jit(x, fs, nperseg, noverlap, window, detrend)


# --------------------------------------------------------------------------- #
# statistics
# --------------------------------------------------------------------------- #

_REGISTRY: dict[str, type[Summary]] = {}


def _register(cls: type[Summary]) -> type[Summary]:
    _REGISTRY[cls.__name__] = cls
    return cls


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


class Summary:
    """Base class of summary statistics: call, size, names, serialisation.

    Subclasses are frozen dataclasses that implement ``_check(n_time, n_regions)``,
    ``_names(n_regions)`` (one name per output entry) and ``_compute(x)`` on a
    checked ``(time, regions)`` floating array.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> stat = Moments(orders=(1, 2))
    >>> stat(jnp.ones((100, 3))).shape, stat.output_size(100, 3)
    ((6,), 6)
    """

    def __call__(self, signal: Any) -> jax.Array:
        """Summarise ``signal (time,)`` or ``(time, regions)`` into a float32 vector."""
        owner = type(self).__name__
        x = _as_signal(signal, owner)
        self._check(*x.shape)
        return _compute_jit(self, x)

    def batch(self, signals: Any) -> jax.Array:
        """Summarise a batch ``(m, time, regions)`` (or ``(m, time)``) into ``(m, n_features)``.

        One compiled, vmapped call per shape; the same numbers as calling the statistic
        on each signal.

        Example
        -------
        >>> import jax.numpy as jnp
        >>> Moments(orders=(1, 2)).batch(jnp.ones((5, 100, 3))).shape
        (5, 6)
        """
        owner = type(self).__name__
        x = jnp.asarray(signals)
        if x.ndim not in (2, 3) or x.shape[0] == 0:
            raise ValueError(f"{owner}: signals: expected a batch (m, time) or (m, time, regions) with "
                             f"m >= 1, got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.float32)
        if x.ndim == 2:
            x = x[:, :, None]
        self._check(*x.shape[1:])
        return _batch_jit(self, x)

    def output_size(self, n_time: int, n_regions: int = 1) -> int:
        """Length of the output for a ``(n_time, n_regions)`` signal.

        Raises ``ValueError`` when such a signal would be rejected.
        """
        owner = type(self).__name__
        n_time = _int_arg(n_time, "n_time", owner, 1)
        n_regions = _int_arg(n_regions, "n_regions", owner, 1)
        self._check(n_time, n_regions)
        return len(self._names(n_regions))

    def feature_names(self, n_regions: int = 1) -> list[str]:
        """A readable name per output entry, e.g. ``"mean[r0]"`` or ``"fc[0,1]"``."""
        n_regions = _int_arg(n_regions, "n_regions", type(self).__name__, 1)
        return self._names(n_regions)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable ``{"name": ..., **settings}``; :func:`from_dict` inverts it."""
        settings = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"name": type(self).__name__, **settings}

    @classmethod
    def _from_settings(cls, settings: dict[str, Any]) -> Summary:
        try:
            return cls(**settings)
        except TypeError as err:  # e.g. a required setting is missing
            raise ValueError(f"from_dict: cannot build {cls.__name__}: {err}.") from None

    def _check(self, n_time: int, n_regions: int) -> None:
        pass

    def _names(self, n_regions: int) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} must implement _names (a hook of bmsbi.summaries.Summary)")

    def _compute(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError(f"{type(self).__name__} must implement _compute (a hook of bmsbi.summaries.Summary)")


# One compiled program per (statistic, shape, dtype): eager calls would otherwise compile
# every small op separately; inside a caller's jit/vmap this is simply inlined.
@functools.partial(jax.jit, static_argnums=0)
def _compute_jit(stat: Summary, x: jax.Array) -> jax.Array:
    return jnp.ravel(stat._compute(x)).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _batch_jit(stat: Summary, x: jax.Array) -> jax.Array:
    return jax.vmap(lambda r: jnp.ravel(stat._compute(r)).astype(jnp.float32))(x)


def _per_region(labels: Sequence[str], n_regions: int) -> list[str]:
    return [f"{label}[r{r}]" for label in labels for r in range(n_regions)]


@_register
@dataclasses.dataclass(frozen=True)
class Moments(Summary):
    """Per-region moments: mean, standard deviation, skewness, excess kurtosis.

    With ``d = x - mean(x)`` over time and ``s = sqrt(mean(d**2))`` (population,
    ddof=0): order 1 is the mean, 2 is ``s``, 3 is the skewness ``mean(d**3) / s**3``
    and 4 the excess kurtosis ``mean(d**4) / s**4 - 3`` -- the biased estimators of
    ``scipy.stats.skew`` and ``scipy.stats.kurtosis`` (their defaults). A constant
    region gets skewness and excess kurtosis 0.

    Parameters
    ----------
    orders : sequence of int, default (1, 2, 3, 4)
        Distinct orders from {1, 2, 3, 4}, returned in the given order.

    Notes
    -----
    Output is ``(len(orders), regions)`` flattened, named ``mean[r0]``, ``std[r0]``,
    ``skewness[r0]``, ``kurtosis[r0]``.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> [round(v, 4) for v in Moments()(jnp.array([0.0, 1.0, 2.0, 3.0])).tolist()]
    [1.5, 1.118, 0.0, -1.36]
    """

    orders: tuple[int, ...] = (1, 2, 3, 4)

    _LABELS: ClassVar[dict[int, str]] = {1: "mean", 2: "std", 3: "skewness", 4: "kurtosis"}

    def __post_init__(self) -> None:
        orders = _int_tuple_arg(self.orders, "orders", "Moments", 1)
        if not set(orders) <= {1, 2, 3, 4}:
            raise ValueError(
                f"Moments: orders must be distinct values from (1, 2, 3, 4); got {orders}."
            )
        object.__setattr__(self, "orders", orders)

    def _names(self, n_regions: int) -> list[str]:
        return _per_region([self._LABELS[k] for k in self.orders], n_regions)

    def _compute(self, x: jax.Array) -> jax.Array:
        mean, d = _center(x, axis=0)
        std = _std(d, axis=0)
        z = _safe_divide(d, std)
        values = {
            1: mean,
            2: std,
            3: jnp.where(std > 0, jnp.mean(z**3, axis=0), 0.0),
            4: jnp.where(std > 0, jnp.mean(z**4, axis=0) - 3.0, 0.0),
        }
        return jnp.stack([values[k] for k in self.orders])


@_register
@dataclasses.dataclass(frozen=True)
class Autocorrelation(Summary):
    """Per-region normalised autocorrelation at given lags.

    ``acf(k) = sum_t d[t] d[t+k] / sum_t d[t]**2`` with ``d = x - mean(x)`` (the
    standard biased estimator, as ``statsmodels.tsa.stattools.acf``), so values lie
    in ``[-1, 1]``. A constant region gives 0.

    Parameters
    ----------
    lags : sequence of int, default (1, 2, 5, 10)
        Distinct lags in samples, each ``>= 1``; the signal needs more than
        ``max(lags)`` samples.
    average : bool, default False
        Average each lag's autocorrelation over regions (one value per lag), e.g. for
        a whole-brain recording whose regions share their time scales.

    Notes
    -----
    Output is ``(len(lags), regions)`` flattened, named ``acf_lag1[r0]``, ...; with
    ``average=True`` it is ``(len(lags),)``, named ``acf_lag1``, ...

    Example
    -------
    >>> import jax.numpy as jnp
    >>> Autocorrelation(lags=(1, 2))(jnp.array([1.0, -1.0, 1.0, -1.0])).tolist()
    [-0.75, 0.5]
    """

    lags: tuple[int, ...] = (1, 2, 5, 10)
    average: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "lags", _int_tuple_arg(self.lags, "lags", "Autocorrelation", 1))
        if not isinstance(self.average, (bool, np.bool_)):
            raise ValueError(f"Autocorrelation: average must be True or False; got {self.average!r}.")
        object.__setattr__(self, "average", bool(self.average))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if not self.average:  # the default is left out: dicts written before it existed stay equal
            del d["average"]
        return d

    def _check(self, n_time: int, n_regions: int) -> None:
        _check_time("Autocorrelation", n_time, max(self.lags) + 1, f"lags={self.lags}")

    def _names(self, n_regions: int) -> list[str]:
        labels = [f"acf_lag{k}" for k in self.lags]
        return labels if self.average else _per_region(labels, n_regions)

    def _compute(self, x: jax.Array) -> jax.Array:
        _, d = _center(x, axis=0)
        energy = jnp.sum(d * d, axis=0)
        acf = jnp.stack(
            [_safe_divide(jnp.sum(d[:-k] * d[k:], axis=0), energy) for k in self.lags]
        )
        return jnp.mean(acf, axis=1) if self.average else acf


@_register
@dataclasses.dataclass(frozen=True)
class WelchPSD(Summary):
    """Per-region Welch power spectral density on a frequency range.

    Computed with :func:`welch` (same settings and conventions), restricted to the
    bins with ``fmin <= f <= fmax``, and by default returned as ``log10(psd)``.

    Parameters
    ----------
    fs : float
        Sampling rate in Hz.
    nperseg, noverlap, window, detrend
        As in :func:`welch`; ``noverlap=None`` is stored as ``nperseg // 2``.
    fmin : float, default 0.0
        Lowest frequency kept, Hz. With ``detrend="constant"`` the 0 Hz bin is
        close to zero, so ``fmin > 0`` usually makes a better feature.
    fmax : float, optional
        Highest frequency kept, Hz, ``<= fs / 2``; default (and stored) ``fs / 2``.
    log : bool, default True
        Return ``log10(psd)`` (zero power stays finite, see module notes) instead of
        the density in ``units**2 / Hz``.

    Notes
    -----
    Output is ``(n_freqs, regions)`` flattened; ``freqs`` gives the kept
    frequencies and entries are named ``psd[10Hz,r0]``.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> stat = WelchPSD(fs=100.0, nperseg=100, fmin=1.0, fmax=40.0)
    >>> stat(jnp.zeros((400, 2))).shape, stat.freqs[:3].tolist()
    ((80,), [1.0, 2.0, 3.0])
    """

    fs: float
    nperseg: int = 256
    noverlap: int | None = None
    window: str = "hann"
    detrend: str | None = "constant"
    fmin: float = 0.0
    fmax: float | None = None
    log: bool = True

    def __post_init__(self) -> None:
        owner = "WelchPSD"
        fs, nperseg, noverlap, window, detrend = _welch_args(
            owner, self.fs, self.nperseg, self.noverlap, self.window, self.detrend
        )
        fmin, fmax = _freq_range_args(owner, fs, nperseg, self.fmin, self.fmax)
        _set_fields(self, fs=fs, nperseg=nperseg, noverlap=noverlap, window=window,
                    detrend=detrend, fmin=fmin, fmax=fmax, log=bool(self.log))

    @property
    def _slice(self) -> tuple[int, int]:
        freqs = _welch_freqs(self.fs, self.nperseg)
        return _freq_slice("WelchPSD", freqs, self.fmin, self.fmax, True, "[fmin, fmax]")

    @property
    def freqs(self) -> np.ndarray:
        """Frequencies (Hz) of the returned bins, shape ``(n_freqs,)``."""
        start, stop = self._slice
        return _welch_freqs(self.fs, self.nperseg)[start:stop]

    def _check(self, n_time: int, n_regions: int) -> None:
        _check_time("WelchPSD", n_time, self.nperseg, f"nperseg={self.nperseg}")

    def _names(self, n_regions: int) -> list[str]:
        return [f"psd[{f:g}Hz,r{r}]" for f in self.freqs for r in range(n_regions)]

    def _compute(self, x: jax.Array) -> jax.Array:
        psd = _welch(x, self.fs, self.nperseg, self.noverlap, self.window, self.detrend)
        start, stop = self._slice
        psd = psd[start:stop]
        return _log10(psd) if self.log else psd


def _bands_arg(bands: Any, owner: str) -> tuple[tuple[str, tuple[float, float]], ...]:
    items = bands.items() if isinstance(bands, Mapping) else bands
    try:
        pairs = [(name, edges) for name, edges in items]
    except (TypeError, ValueError):
        raise ValueError(
            f"{owner}: bands must be a mapping name -> (low, high) in Hz; got {bands!r}."
        ) from None
    if not pairs:
        raise ValueError(f"{owner}: bands must name at least one band; got {bands!r}.")
    out = []
    for name, edges in pairs:
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"{owner}: band names in bands must be non-empty strings; got {name!r}."
            )
        try:
            low, high = edges
        except (TypeError, ValueError):
            raise ValueError(
                f"{owner}: bands[{name!r}] must be a pair (low, high) in Hz; got {edges!r}."
            ) from None
        low = _float_arg(low, f"bands[{name!r}][0]", owner)
        high = _float_arg(high, f"bands[{name!r}][1]", owner)
        out.append((name, (low, high)))
    names = [name for name, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: band names in bands must be distinct; got {names}.")
    return tuple(out)


def _checked_bands(bands: Any, owner: str, fs: float, nperseg: int) -> tuple[tuple[str, tuple[float, float]], ...]:
    """Band edges within ``[0, fs / 2]``, each holding a Welch bin; ``ValueError`` naming the band."""
    bands = _bands_arg(bands, owner)
    freqs = _welch_freqs(fs, nperseg)
    for name, (low, high) in bands:
        if not 0.0 <= low < high <= fs / 2.0:
            raise ValueError(
                f"{owner}: bands[{name!r}] must satisfy 0 <= low < high <= fs/2 = {fs / 2} Hz; "
                f"got ({low}, {high})."
            )
        _freq_slice(owner, freqs, low, high, False, f"bands[{name!r}] = [{low}, {high}) Hz")
    return bands


def _bands_to_dict(out: dict[str, Any], bands) -> dict[str, Any]:
    out["bands"] = {name: [low, high] for name, (low, high) in bands}
    return out


@_register
@dataclasses.dataclass(frozen=True)
class BandPower(Summary):
    """Per-region power in frequency bands, from the Welch PSD.

    Integration rule: each Welch bin ``f_k = k * fs / nperseg`` stands for a
    rectangle of width ``df = fs / nperseg``, and a band ``[low, high)`` gets
    ``df * sum(psd[f_k])`` over the bins with ``low <= f_k < high``. Bands are
    half-open so adjacent bands share no bin, and every band must contain at least
    one bin. Power is in ``signal_units**2``; for a sine of amplitude ``A`` inside a
    band it is about ``A**2 / 2``.

    Parameters
    ----------
    fs : float
        Sampling rate in Hz.
    bands : mapping str -> (low, high), default :data:`EEG_BANDS`
        Band edges in Hz with ``0 <= low < high <= fs / 2``; output follows the
        mapping's order.
    relative : bool, default False
        Divide by the total power over ``[min(low), max(high))`` (same rule), so
        contiguous bands sum to 1; a signal with no power there gives 0.
    log : bool, default True
        Return ``log10`` of the (relative) power; zero power stays finite.
    nperseg, noverlap, window, detrend
        Welch settings, as in :func:`welch`.

    Notes
    -----
    Output is ``(n_bands, regions)`` flattened, named ``bandpower_alpha[r0]``
    (``relbandpower_alpha[r0]`` when ``relative``).

    Example
    -------
    >>> import jax.numpy as jnp
    >>> t = jnp.arange(2000) / 200.0
    >>> stat = BandPower(fs=200.0, bands={"alpha": (8, 13), "beta": (13, 30)}, log=False)
    >>> [round(p, 2) for p in stat(2.0 * jnp.sin(2 * jnp.pi * 10.0 * t)).tolist()]
    [2.0, 0.0]
    """

    fs: float
    bands: Any = dataclasses.field(default_factory=lambda: dict(EEG_BANDS))
    relative: bool = False
    log: bool = True
    nperseg: int = 256
    noverlap: int | None = None
    window: str = "hann"
    detrend: str | None = "constant"

    def __post_init__(self) -> None:
        owner = "BandPower"
        fs, nperseg, noverlap, window, detrend = _welch_args(
            owner, self.fs, self.nperseg, self.noverlap, self.window, self.detrend
        )
        bands = _checked_bands(self.bands, owner, fs, nperseg)
        _set_fields(self, fs=fs, bands=bands, relative=bool(self.relative), log=bool(self.log),
                    nperseg=nperseg, noverlap=noverlap, window=window, detrend=detrend)

    def to_dict(self) -> dict[str, Any]:
        return _bands_to_dict(super().to_dict(), self.bands)

    def _check(self, n_time: int, n_regions: int) -> None:
        _check_time("BandPower", n_time, self.nperseg, f"nperseg={self.nperseg}")

    def _names(self, n_regions: int) -> list[str]:
        prefix = "relbandpower" if self.relative else "bandpower"
        return _per_region([f"{prefix}_{name}" for name, _ in self.bands], n_regions)

    def _compute(self, x: jax.Array) -> jax.Array:
        psd = _welch(x, self.fs, self.nperseg, self.noverlap, self.window, self.detrend)
        freqs = _welch_freqs(self.fs, self.nperseg)
        df = self.fs / self.nperseg

        def integrate(low: float, high: float) -> jax.Array:
            start, stop = _freq_slice("BandPower", freqs, low, high, False, "band")
            return jnp.sum(psd[start:stop], axis=0) * df

        power = jnp.stack([integrate(low, high) for _, (low, high) in self.bands])
        if self.relative:
            low = min(edges[0] for _, edges in self.bands)
            high = max(edges[1] for _, edges in self.bands)
            power = _safe_divide(power, integrate(low, high))
        return _log10(power) if self.log else power


@_register
@dataclasses.dataclass(frozen=True)
class SpectralPeak(Summary):
    """Per-region frequency and log10 power of the largest Welch PSD bin.

    The peak is searched over the bins with ``fmin <= f <= fmax``; the frequency is
    that bin's centre (resolution ``fs / nperseg``), the power its density in
    ``log10(units**2 / Hz)``. Ties go to the lowest frequency (a constant signal
    reports the first bin).

    Parameters
    ----------
    fs : float
        Sampling rate in Hz.
    fmin : float, default 1.0
        Lowest frequency searched, Hz.
    fmax : float, optional
        Highest frequency searched, Hz, ``<= fs / 2``; default (and stored) ``fs / 2``.
    nperseg, noverlap, window, detrend
        Welch settings, as in :func:`welch`.

    Notes
    -----
    Output is ``[peak_freq[r0..], peak_power[r0..]]``, shape ``(2 * regions,)``.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> t = jnp.arange(1000) / 250.0
    >>> freq, power = SpectralPeak(fs=250.0, nperseg=250)(jnp.sin(2 * jnp.pi * 10.0 * t))
    >>> float(freq)
    10.0
    """

    fs: float
    fmin: float = 1.0
    fmax: float | None = None
    nperseg: int = 256
    noverlap: int | None = None
    window: str = "hann"
    detrend: str | None = "constant"

    def __post_init__(self) -> None:
        owner = "SpectralPeak"
        fs, nperseg, noverlap, window, detrend = _welch_args(
            owner, self.fs, self.nperseg, self.noverlap, self.window, self.detrend
        )
        fmin, fmax = _freq_range_args(owner, fs, nperseg, self.fmin, self.fmax)
        _set_fields(self, fs=fs, fmin=fmin, fmax=fmax, nperseg=nperseg, noverlap=noverlap,
                    window=window, detrend=detrend)

    def _check(self, n_time: int, n_regions: int) -> None:
        _check_time("SpectralPeak", n_time, self.nperseg, f"nperseg={self.nperseg}")

    def _names(self, n_regions: int) -> list[str]:
        return _per_region(["peak_freq", "peak_power"], n_regions)

    def _compute(self, x: jax.Array) -> jax.Array:
        psd = _welch(x, self.fs, self.nperseg, self.noverlap, self.window, self.detrend)
        freqs = _welch_freqs(self.fs, self.nperseg)
        start, stop = _freq_slice("SpectralPeak", freqs, self.fmin, self.fmax, True, "[fmin, fmax]")
        psd = psd[start:stop]
        peak = jnp.argmax(psd, axis=0)
        peak_freq = jnp.asarray(freqs[start:stop], x.dtype)[peak]
        peak_power = jnp.take_along_axis(psd, peak[None, :], axis=0)[0]
        return jnp.stack([peak_freq, _log10(peak_power)])


@_register
@dataclasses.dataclass(frozen=True)
class PeakContrast(Summary):
    """Per band and region, how far the spectrum's narrowest peak stands above its surroundings.

    For every Welch bin ``f`` (DC and Nyquist left out) the contrast is
    ``log10 psd(f) - median log10 psd(g)`` over the bins ``g`` with
    ``near <= |g - f| <= far`` Hz; each band reports the largest contrast among its bins.
    A smooth spectrum (a damped oscillation, 1/f background) gives values near 0, an
    oscillation's narrow peak a few tenths to a few decades, and a line — mains
    interference at 50 or 60 Hz, a stimulation frequency — the most: a feature that
    tells narrow artefacts from broadband power, where band power alone mixes both.

    Parameters
    ----------
    fs : float
        Sampling rate in Hz.
    bands : mapping str -> (low, high)
        Band edges in Hz with ``0 <= low < high <= fs / 2``, each holding a bin.
    near, far : float, default 3.0 and 8.0
        The surroundings of a bin, in Hz (``0 < near < far``; at least one bin must lie
        in them on one side).
    nperseg, noverlap, window, detrend
        Welch settings, as in :func:`welch`.

    Notes
    -----
    Output is ``(n_bands, regions)`` flattened, named ``peakcontrast_<band>[r0]``.

    Example
    -------
    >>> import jax, jax.numpy as jnp
    >>> t = jnp.arange(2000) / 250.0
    >>> noise = jax.random.normal(jax.random.key(0), (2000,))
    >>> stat = PeakContrast(fs=250.0, bands={"low": (1, 40), "mains": (45, 55)})
    >>> [round(float(v), 1) for v in stat(noise + jnp.sin(2 * jnp.pi * 50.0 * t))]   # 50 Hz stands out
    [0.2, 1.7]
    >>> [round(float(v), 1) for v in stat(noise)]
    [0.2, 0.4]
    """

    fs: float
    bands: Any = dataclasses.field(default_factory=lambda: dict(EEG_BANDS))
    near: float = 3.0
    far: float = 8.0
    nperseg: int = 256
    noverlap: int | None = None
    window: str = "hann"
    detrend: str | None = "constant"

    def __post_init__(self) -> None:
        owner = "PeakContrast"
        fs, nperseg, noverlap, window, detrend = _welch_args(
            owner, self.fs, self.nperseg, self.noverlap, self.window, self.detrend
        )
        near = _positive_float_arg(self.near, "near", owner)
        far = _positive_float_arg(self.far, "far", owner)
        if not near < far:
            raise ValueError(f"{owner}: near, far: expected 0 < near < far Hz, got near={near}, far={far}")
        bands = _checked_bands(self.bands, owner, fs, nperseg)
        _set_fields(self, fs=fs, bands=bands, near=near, far=far, nperseg=nperseg, noverlap=noverlap,
                    window=window, detrend=detrend)
        self._neighbours()  # raises when a bin has no surroundings

    def to_dict(self) -> dict[str, Any]:
        return _bands_to_dict(super().to_dict(), self.bands)

    def _neighbours(self) -> tuple[np.ndarray, np.ndarray]:
        """``(bins, width)`` indices of each inner bin's surroundings (repeating the last
        one to pad) and ``(bins,)`` the inner bin indices."""
        freqs = _welch_freqs(self.fs, self.nperseg)
        inner = np.arange(1, len(freqs) - 1)
        rows = []
        for j in inner:
            d = np.abs(freqs[inner] - freqs[j])
            rows.append(inner[(d >= self.near - 1e-9) & (d <= self.far + 1e-9)])
        if min(len(r) for r in rows) == 0:
            raise ValueError(f"PeakContrast: near, far: [{self.near}, {self.far}] Hz holds no Welch bin "
                             f"(resolution fs/nperseg = {self.fs / self.nperseg:g} Hz); widen it")
        width = max(len(r) for r in rows)
        # pad by repeating a row's entries cyclically: the median moves little at the edges
        index = np.stack([np.resize(r, width) for r in rows])
        return index, inner

    def _check(self, n_time: int, n_regions: int) -> None:
        _check_time("PeakContrast", n_time, self.nperseg, f"nperseg={self.nperseg}")

    def _names(self, n_regions: int) -> list[str]:
        return _per_region([f"peakcontrast_{name}" for name, _ in self.bands], n_regions)

    def _compute(self, x: jax.Array) -> jax.Array:
        logpsd = _log10(_welch(x, self.fs, self.nperseg, self.noverlap, self.window, self.detrend))
        index, inner = self._neighbours()
        contrast = logpsd[inner] - jnp.median(logpsd[index], axis=1)  # (inner bins, regions)
        freqs = _welch_freqs(self.fs, self.nperseg)[inner]
        out = []
        for _, (low, high) in self.bands:
            keep = np.flatnonzero((freqs >= low) & (freqs < high))
            out.append(jnp.max(contrast[keep], axis=0) if keep.size else jnp.zeros(x.shape[1], x.dtype))
        return jnp.stack(out)


@_register
@dataclasses.dataclass(frozen=True)
class FC(Summary):
    """Functional connectivity: Pearson correlations between regions.

    Returns the strict upper triangle of the ``(regions, regions)`` correlation
    matrix over time, row-major -- the same numbers as
    ``np.corrcoef(signal.T)[np.triu_indices(regions, 1)]``. Pairs involving a
    constant region give 0. Needs at least 2 regions.

    Output has ``regions * (regions - 1) / 2`` entries named ``fc[i,j]``.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> x = jnp.stack([jnp.arange(5.0), -jnp.arange(5.0), jnp.ones(5)], axis=1)
    >>> [round(v, 4) for v in FC()(x).tolist()]
    [-1.0, 0.0, 0.0]
    """

    def _check(self, n_time: int, n_regions: int) -> None:
        _check_regions("FC", n_regions, 2, "a correlation between regions")

    def _names(self, n_regions: int) -> list[str]:
        return [f"fc[{i},{j}]" for i, j in zip(*np.triu_indices(n_regions, 1), strict=True)]

    def _compute(self, x: jax.Array) -> jax.Array:
        return _corr_upper(x)


@_register
@dataclasses.dataclass(frozen=True)
class FCD(Summary):
    """Functional connectivity dynamics: statistics of the FCD matrix.

    The signal is cut into windows of ``window`` samples starting every ``step``
    samples (trailing samples that do not fill a window are dropped). Each window's
    FC is the strict upper triangle of its region-by-region Pearson correlation
    matrix (as :class:`FC`); the FCD matrix is the Pearson correlation between the
    windows' FC vectors (windows x windows). Returned are the mean, the standard
    deviation (ddof=0) and the ``quantiles`` (linear interpolation, as
    ``numpy.quantile``) of the FCD matrix's strict upper triangle, i.e. over all
    pairs of distinct windows. Constant windows or regions count as correlation 0.

    Parameters
    ----------
    fs : float
        Sampling rate in Hz; fixes :attr:`window_seconds` and :attr:`step_seconds`.
    window : int
        Window length in samples, ``>= 2``.
    step : int
        Window step in samples, ``>= 1``; the signal needs ``window + step`` samples
        (two windows) at least.
    quantiles : sequence of float, default (0.1, 0.5, 0.9)
        Quantile levels in ``[0, 1]``.

    Notes
    -----
    Output is ``(2 + len(quantiles),)``, named ``fcd_mean``, ``fcd_std``,
    ``fcd_q0.1``, ... Needs at least 3 regions (with 2, each window has a single FC
    value and correlations between windows are undefined).

    Example
    -------
    >>> import jax
    >>> x = jax.random.normal(jax.random.key(0), (600, 4))
    >>> stat = FCD(fs=100.0, window=100, step=50)
    >>> stat(x).shape, stat.feature_names(4)
    ((5,), ['fcd_mean', 'fcd_std', 'fcd_q0.1', 'fcd_q0.5', 'fcd_q0.9'])
    """

    fs: float
    window: int
    step: int
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)

    def __post_init__(self) -> None:
        owner = "FCD"
        fs = _positive_float_arg(self.fs, "fs", owner)
        window = _int_arg(self.window, "window", owner, 2)
        step = _int_arg(self.step, "step", owner, 1)
        quantiles = _quantiles_arg(self.quantiles, owner)
        _set_fields(self, fs=fs, window=window, step=step, quantiles=quantiles)

    @property
    def window_seconds(self) -> float:
        """Window length in seconds."""
        return self.window / self.fs

    @property
    def step_seconds(self) -> float:
        """Window step in seconds."""
        return self.step / self.fs

    def _check(self, n_time: int, n_regions: int) -> None:
        _check_time("FCD", n_time, self.window + self.step,
                    f"two windows (window={self.window}, step={self.step})")
        _check_regions("FCD", n_regions, 3, "an FCD matrix")

    def _names(self, n_regions: int) -> list[str]:
        return ["fcd_mean", "fcd_std"] + [f"fcd_q{q:g}" for q in self.quantiles]

    def _compute(self, x: jax.Array) -> jax.Array:
        n_windows = (x.shape[0] - self.window) // self.step + 1
        index = np.arange(n_windows)[:, None] * self.step + np.arange(self.window)[None, :]
        fc = _corr_upper(x[index])  # (windows, pairs)
        fcd = _corr_upper(fc.T)  # correlations between windows, upper triangle
        mean, d = _center(fcd, axis=0)
        stats = [mean, _std(d, axis=0)]
        if self.quantiles:
            stats.append(jnp.quantile(fcd, jnp.asarray(self.quantiles, fcd.dtype)))
        return jnp.concatenate([jnp.atleast_1d(s) for s in stats])


@_register
@dataclasses.dataclass(frozen=True)
class FCStats(Summary):
    """Distribution and leading eigenvalues of the functional connectivity.

    From the region-by-region Pearson correlation matrix over time (as :class:`FC`):
    the mean, the standard deviation (ddof=0) and the ``quantiles`` of its strict upper
    triangle, then its ``n_eigen`` largest eigenvalues divided by the number of regions
    (the share of variance in the leading modes: near 1/regions each for independent
    regions, the first near 1 for a globally synchronised brain). Constant regions count
    as correlation 0. Needs at least 2 regions and ``n_eigen <= regions``.

    Parameters
    ----------
    quantiles : sequence of float, default (0.1, 0.5, 0.9)
        Quantile levels in ``[0, 1]``.
    n_eigen : int, default 3
        Number of leading eigenvalues, ``>= 0``.

    Notes
    -----
    Output is ``(2 + len(quantiles) + n_eigen,)``, named ``fc_mean``, ``fc_std``,
    ``fc_q0.1``, ..., ``fc_eig1``, ...

    Example
    -------
    >>> FCStats(n_eigen=1).feature_names(4)
    ['fc_mean', 'fc_std', 'fc_q0.1', 'fc_q0.5', 'fc_q0.9', 'fc_eig1']
    """

    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    n_eigen: int = 3

    def __post_init__(self) -> None:
        _set_fields(self, quantiles=_quantiles_arg(self.quantiles, "FCStats"),
                    n_eigen=_int_arg(self.n_eigen, "n_eigen", "FCStats", 0))

    def _check(self, n_time: int, n_regions: int) -> None:
        _check_regions("FCStats", n_regions, max(2, self.n_eigen), f"n_eigen={self.n_eigen} and a correlation")

    def _names(self, n_regions: int) -> list[str]:
        return (["fc_mean", "fc_std"] + [f"fc_q{q:g}" for q in self.quantiles]
                + [f"fc_eig{k + 1}" for k in range(self.n_eigen)])

    def _compute(self, x: jax.Array) -> jax.Array:
        n_regions = x.shape[1]
        corr = _corr_matrix(x)
        rows, cols = np.triu_indices(n_regions, 1)
        upper = corr[rows, cols]
        mean, d = _center(upper, axis=0)
        stats = [jnp.atleast_1d(mean), jnp.atleast_1d(_std(d, axis=0))]
        if self.quantiles:
            stats.append(jnp.quantile(upper, jnp.asarray(self.quantiles, upper.dtype)))
        if self.n_eigen:
            # constant regions have a zero diagonal in corr; the trace is not assumed
            eig = jnp.linalg.eigvalsh(corr)[::-1][: self.n_eigen]
            stats.append(eig / n_regions)
        return jnp.concatenate(stats)


@_register
@dataclasses.dataclass(frozen=True)
class FCStrength(Summary):
    """Per-region functional connectivity strength: mean correlation with the other regions.

    Row means of the Pearson correlation matrix without its diagonal (``regions``
    values): which regions are hubs of the functional network. Much shorter than the
    full :class:`FC` triangle (``regions`` instead of ``regions * (regions - 1) / 2``
    values) while keeping a regional pattern. Needs at least 2 regions.

    Notes
    -----
    Output is ``(regions,)``, named ``fc_strength[r0]``, ...

    Example
    -------
    >>> import jax.numpy as jnp
    >>> x = jnp.stack([jnp.arange(5.0), jnp.arange(5.0), -jnp.arange(5.0)], axis=1)
    >>> [round(v, 4) for v in FCStrength()(x).tolist()]
    [0.0, 0.0, -1.0]
    """

    def _check(self, n_time: int, n_regions: int) -> None:
        _check_regions("FCStrength", n_regions, 2, "a correlation between regions")

    def _names(self, n_regions: int) -> list[str]:
        return _per_region(["fc_strength"], n_regions)

    def _compute(self, x: jax.Array) -> jax.Array:
        n_regions = x.shape[1]
        corr = _corr_matrix(x) * (1.0 - jnp.eye(n_regions, dtype=x.dtype))
        return jnp.sum(corr, axis=1) / (n_regions - 1)


@_register
@dataclasses.dataclass(frozen=True)
class BandPassed(Summary):
    """Another statistic of the signal after linear detrending and a zero-phase band-pass.

    Each region is detrended (least-squares line removed), then frequencies outside
    ``[low, high]`` Hz are zeroed in its discrete Fourier transform (an ideal, zero-phase
    filter, applied identically to simulated and recorded signals), and ``stats`` is
    computed on the result. This is the usual preprocessing of resting-state BOLD
    before functional connectivity (e.g. 0.01-0.1 Hz) and removes scanner offsets and
    drifts, so a raw recording in scanner units and a simulation give comparable
    features.

    Parameters
    ----------
    fs : float
        Sampling rate, Hz.
    low, high : float
        Pass band in Hz, ``0 <= low < high <= fs / 2``.
    stats : Summary
        The statistic computed on the filtered signal (e.g. a :func:`combine`).

    Notes
    -----
    Output and names are those of ``stats``. The signal needs at least one Fourier
    bin inside the band (``n_time >= fs / (high - low)`` samples suffice).

    Example
    -------
    >>> import jax.numpy as jnp
    >>> t = jnp.arange(1000) / 10.0                       # 100 s at 10 Hz
    >>> x = jnp.sin(2 * jnp.pi * 0.05 * t) + 5.0 + jnp.sin(2 * jnp.pi * 2.0 * t)
    >>> stat = BandPassed(10.0, 0.01, 0.1, Moments(orders=(1, 2)))
    >>> mean, std = stat(x).tolist()       # offset and the 2 Hz wave removed
    >>> abs(mean) < 1e-4, round(std, 1)     # the 0.05 Hz sine: about 1 / sqrt(2)
    (True, 0.7)
    """

    fs: float
    low: float
    high: float
    stats: Summary

    def __post_init__(self) -> None:
        owner = "BandPassed"
        fs = _positive_float_arg(self.fs, "fs", owner)
        low, high = _float_arg(self.low, "low", owner), _float_arg(self.high, "high", owner)
        if not 0.0 <= low < high <= fs / 2.0:
            raise ValueError(f"{owner}: expected 0 <= low < high <= fs / 2 = {fs / 2:g} Hz; "
                             f"got low={low:g}, high={high:g}.")
        if not isinstance(self.stats, Summary):
            raise ValueError(f"{owner}: stats must be a Summary; got {type(self.stats).__name__}.")
        _set_fields(self, fs=fs, low=low, high=high)

    def to_dict(self) -> dict[str, Any]:
        return {"name": "BandPassed", "fs": self.fs, "low": self.low, "high": self.high,
                "stats": self.stats.to_dict()}

    @classmethod
    def _from_settings(cls, settings: dict[str, Any]) -> Summary:
        stats = settings.get("stats")
        if not isinstance(stats, Mapping):
            raise ValueError(f"from_dict: BandPassed needs 'stats', a dict; got {stats!r}.")
        return super()._from_settings({**settings, "stats": from_dict(stats)})

    def _mask(self, n_time: int) -> np.ndarray:
        freqs = np.fft.rfftfreq(n_time, 1.0 / self.fs)
        return (freqs >= self.low) & (freqs <= self.high)

    def _check(self, n_time: int, n_regions: int) -> None:
        _check_time("BandPassed", n_time, 2, "a trend and a spectrum")
        if not self._mask(n_time).any():
            raise ValueError(f"BandPassed: no Fourier bin of a {n_time}-sample signal at "
                             f"{self.fs:g} Hz lies in [{self.low:g}, {self.high:g}] Hz; "
                             f"a longer signal is needed.")
        self.stats._check(n_time, n_regions)

    def _names(self, n_regions: int) -> list[str]:
        return self.stats._names(n_regions)

    def filter(self, signal: Any) -> jax.Array:
        """The detrended, band-passed signal itself, ``(time, regions)`` (what ``stats`` sees).

        Example
        -------
        >>> import jax.numpy as jnp
        >>> stat = BandPassed(10.0, 0.01, 0.1, Moments(orders=(1,)))
        >>> stat.filter(jnp.ones((100, 2)) * 5.0).shape
        (100, 2)
        """
        x = _as_signal(signal, "BandPassed")
        self._check(*x.shape)
        return self._filtered(x)

    def _compute(self, x: jax.Array) -> jax.Array:
        return self.stats._compute(self._filtered(x))

    def _filtered(self, x: jax.Array) -> jax.Array:
        n_time = x.shape[0]
        t = jnp.linspace(-1.0, 1.0, n_time, dtype=x.dtype)[:, None]
        mean, d = _center(x, axis=0)
        slope = jnp.sum(t * d, axis=0) / jnp.sum(t * t)
        d = d - t * slope
        spectrum = jnp.fft.rfft(d, axis=0) * jnp.asarray(self._mask(n_time), d.dtype)[:, None]
        return jnp.fft.irfft(spectrum, n=n_time, axis=0).astype(x.dtype)


@_register
@dataclasses.dataclass(frozen=True)
class Combined(Summary):
    """Several statistics of the same signal, concatenated in order.

    Parameters
    ----------
    stats : sequence of Summary
        The statistics; at least one. ``to_dict`` stores them as a list of their
        own dicts, so pipelines round-trip through :func:`from_dict` and JSON.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> stat = Combined([Moments(orders=(1,)), FC()])
    >>> stat(jnp.ones((50, 3))).shape, stat.feature_names(3)
    ((6,), ['mean[r0]', 'mean[r1]', 'mean[r2]', 'fc[0,1]', 'fc[0,2]', 'fc[1,2]'])
    """

    stats: tuple[Summary, ...]

    def __post_init__(self) -> None:
        stats = self.stats
        if isinstance(stats, Summary) or not isinstance(stats, Sequence):
            raise ValueError(
                f"Combined: stats must be a sequence of Summary objects; got {stats!r}."
            )
        stats = tuple(stats)
        if not stats:
            raise ValueError(
                "Combined: stats must hold at least one statistic; got an empty sequence."
            )
        for s in stats:
            if not isinstance(s, Summary):
                raise ValueError(
                    f"Combined: every entry of stats must be a Summary; got {type(s).__name__}."
                )
        object.__setattr__(self, "stats", stats)

    def to_dict(self) -> dict[str, Any]:
        return {"name": "Combined", "stats": [s.to_dict() for s in self.stats]}

    @classmethod
    def _from_settings(cls, settings: dict[str, Any]) -> Summary:
        stats = settings.get("stats")
        if not isinstance(stats, Sequence) or isinstance(stats, (str, bytes)):
            raise ValueError(f"from_dict: Combined needs 'stats', a list of dicts; got {stats!r}.")
        return cls(tuple(from_dict(s) for s in stats))

    def _check(self, n_time: int, n_regions: int) -> None:
        for s in self.stats:
            s._check(n_time, n_regions)

    def _names(self, n_regions: int) -> list[str]:
        return [name for s in self.stats for name in s._names(n_regions)]

    def _compute(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([jnp.ravel(s._compute(x)).astype(jnp.float32) for s in self.stats])


def combine(*stats: Summary) -> Combined:
    """Concatenate statistics into one :class:`Combined`; nested ones are flattened.

    Example
    -------
    >>> combine(Moments(), combine(FC(), Autocorrelation())).stats
    (Moments(orders=(1, 2, 3, 4)), FC(), Autocorrelation(lags=(1, 2, 5, 10), average=False))
    """
    flat: list[Summary] = []
    for s in stats:
        flat.extend(s.stats if isinstance(s, Combined) else [s])
    return Combined(tuple(flat))


def from_dict(d: Mapping[str, Any]) -> Summary:
    """Rebuild a statistic from ``stat.to_dict()`` (or its JSON round trip).

    Parameters
    ----------
    d : mapping
        ``{"name": <class name>, **settings}``; unknown names or settings raise
        ``ValueError``. Nothing is evaluated.

    Example
    -------
    >>> import json
    >>> stat = combine(Moments(), BandPower(fs=250.0))
    >>> from_dict(json.loads(json.dumps(stat.to_dict()))) == stat
    True
    """
    if not isinstance(d, Mapping) or "name" not in d:
        raise ValueError(f"from_dict: d must be a mapping with a 'name' key; got {d!r}.")
    cls = _REGISTRY.get(d["name"])
    if cls is None:
        raise ValueError(
            f"from_dict: unknown summary name {d['name']!r}; expected one of {sorted(_REGISTRY)}."
        )
    settings = {k: v for k, v in d.items() if k != "name"}
    unknown = set(settings) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"from_dict: unknown settings {sorted(unknown)} for {cls.__name__}.")
    return cls._from_settings(settings)


def default_eeg_summary(fs: float, nperseg: int = 256) -> Combined:
    """Moments, autocorrelation, EEG band powers and spectral peak, combined.

    The bands are :data:`EEG_BANDS` with upper edges clipped to ``fs / 2``; bands that
    then hold no Welch bin are left out. Band powers are absolute and in ``log10``.

    Parameters
    ----------
    fs : float
        Sampling rate in Hz.
    nperseg : int, default 256
        Welch segment length in samples; signals need at least this many samples.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> stat = default_eeg_summary(fs=250.0)
    >>> stat(jnp.zeros((1000, 2))).shape
    (30,)
    """
    fs = _positive_float_arg(fs, "fs", "default_eeg_summary")
    nperseg = _int_arg(nperseg, "nperseg", "default_eeg_summary", 2)
    freqs = _welch_freqs(fs, nperseg)
    bands = {}
    for name, (low, high) in EEG_BANDS.items():
        high = min(high, fs / 2.0)
        if low < high and np.any((freqs >= low) & (freqs < high)):
            bands[name] = (low, high)
    if not bands:
        raise ValueError(
            f"default_eeg_summary: no EEG band holds a Welch bin with fs={fs} Hz and "
            f"nperseg={nperseg}; increase fs or nperseg."
        )
    return combine(
        Moments(),
        Autocorrelation(),
        BandPower(fs, bands=bands, nperseg=nperseg),
        SpectralPeak(fs, nperseg=nperseg),
    )



def full_band_features(fs: float, *, num_bands: int = 12, nperseg: int = 256) -> Combined:
    """Log power and narrow-peak contrast in equal-width bands covering the spectrum up to ``fs / 2``.

    A summary tuned for inference usually reads only the bands the model explains, so
    what a recording carries beyond them — mains interference, the empty top band a
    resampling filter leaves, muscle artefacts — never reaches the posterior, nor a
    misspecification test run on that summary. Combined with it, these features let
    :class:`bmsbi.misspecification.MMDTest` see the whole spectrum:
    ``combine(task.summary, full_band_features(fs))``.

    :class:`BandPower` (absolute, ``log10``) and :class:`PeakContrast` in ``num_bands``
    bands of equal width from the first non-zero Welch bin ``fs / nperseg`` to ``fs / 2``
    (half-open), named ``band0 ... band{num_bands - 1}``: ``2 * num_bands`` features per
    region.

    Parameters
    ----------
    fs : float
        Sampling rate in Hz.
    num_bands : int, default 12
        Number of bands; each must hold at least one Welch bin.
    nperseg : int, default 256
        Welch segment length in samples.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> stat = full_band_features(250.0, num_bands=4)
    >>> [tuple(round(e, 1) for e in edges) for _, edges in stat.stats[0].bands]
    [(1.0, 32.0), (32.0, 63.0), (63.0, 94.0), (94.0, 125.0)]
    >>> stat(jnp.zeros((1000, 1))).shape
    (8,)
    """
    fs = _positive_float_arg(fs, "fs", "full_band_features")
    num_bands = _int_arg(num_bands, "num_bands", "full_band_features", 1)
    nperseg = _int_arg(nperseg, "nperseg", "full_band_features", 2)
    low, high = fs / nperseg, fs / 2.0
    if (high - low) / num_bands < fs / nperseg:
        raise ValueError(f"full_band_features: num_bands: expected at most {int((high - low) * nperseg / fs)} bands "
                         f"(each must hold a Welch bin of {fs / nperseg:g} Hz at fs={fs:g}, nperseg={nperseg}), "
                         f"got {num_bands}")
    edges = np.linspace(low, high, num_bands + 1)
    bands = {f"band{i}": (float(edges[i]), float(edges[i + 1])) for i in range(num_bands)}
    return combine(BandPower(fs, bands=bands, nperseg=nperseg), PeakContrast(fs, bands=bands, nperseg=nperseg))
