"""Smoothed states and derivatives of noisy trajectories (Savitzky–Golay, NumPy).

A Savitzky–Golay filter fits a polynomial of order ``polyorder`` by least squares to
each window of ``window`` samples and reads the smoothed value and the derivative at
the sample from the fit (near the ends, from the first / last full window). The window
is chosen per state: half the window that minimises Mallows' Cp for the smoothed state
(see ``_choose_window`` for why half), with the noise sd estimated robustly from fourth
differences
(``MAD(Δ⁴x) / sqrt(70)``; ``Δ⁴`` of white noise has variance ``70 σ²`` and a smooth
signal finely sampled contributes little).

References
----------
.. [1] Savitzky, A., Golay, M. J. E. (1964). Smoothing and differentiation of data by
   simplified least squares procedures. Analytical Chemistry 36.
.. [2] Mallows, C. L. (1973). Some comments on Cp. Technometrics 15.
"""

from __future__ import annotations

import math

import numpy as np

from .._checks import real_array

__all__ = ["savgol_matrix", "smooth_derivative", "estimate_noise_sd", "WINDOWS"]

#: Candidate window lengths (odd, samples) for the automatic choice.
WINDOWS = (7, 9, 11, 15, 21, 31, 41, 61, 81, 121)


def savgol_matrix(window: int, polyorder: int, deriv: int, n: int) -> np.ndarray:
    """Dense ``(n, n)`` matrix ``M`` with ``(M @ x)[i]`` the ``deriv``-th derivative
    (per sample) at ``i`` of the local order-``polyorder`` fit; edges use the end windows.

    Only used for short signals; :func:`smooth_derivative` applies the same weights by
    convolution.

    Examples
    --------
    >>> import numpy as np
    >>> from bmsbi.discovery.smoothing import savgol_matrix
    >>> t = np.arange(20.0)
    >>> np.allclose(savgol_matrix(7, 3, 1, 20) @ t ** 2, 2 * t)
    True
    """
    weights = _edge_weights(window, polyorder, deriv)  # (window, window): row z -> weights
    h = window // 2
    m = np.zeros((n, n))
    for i in range(n):
        s = min(max(i - h, 0), n - window)
        m[i, s:s + window] = weights[i - s]
    return m


def _edge_weights(window, polyorder, deriv):
    """Row ``z``: weights giving the ``deriv``-th derivative at offset ``z`` of a window."""
    z = np.arange(window, dtype=float) - window // 2
    vander = np.vander(z, polyorder + 1, increasing=True)  # (window, p+1)
    pinv = np.linalg.pinv(vander)  # (p+1, window): polynomial coefficients of the fit
    powers = np.arange(polyorder + 1)
    # d^deriv/dz^deriv of z^k = k!/(k-deriv)! z^(k-deriv)
    fac = np.array([math.perm(int(k), deriv) if k >= deriv else 0 for k in powers], float)
    expo = np.clip(powers - deriv, 0, None)
    basis = fac[None, :] * z[:, None] ** expo[None, :]  # (window, p+1)
    return basis @ pinv  # (window offsets, window samples)


def _apply(x, window, polyorder, deriv):
    """Savitzky–Golay along axis 0 of a 1-D signal ``x`` (length >= window)."""
    n = x.shape[0]
    weights = _edge_weights(window, polyorder, deriv)
    h = window // 2
    out = np.empty(n)
    # interior: correlate with the centre row
    centre = weights[h]
    out[h:n - h] = np.lib.stride_tricks.sliding_window_view(x, window) @ centre
    out[:h] = weights[:h] @ x[:window]
    out[n - h:] = weights[window - h:] @ x[n - window:]
    return out


def _choose_window(col, polyorder, sigma):
    """Half the window that best smooths the state (Mallows' Cp), as a candidate window.

    ``Cp(w) = mean((x_w - x)²) + 2 σ² h_w`` (``h_w`` the filter's centre weight) is an
    unbiased estimate, up to a constant, of the smoothed state's mean squared error.
    Derivatives enter a regression over many samples, which averages their noise but
    not their smoothing bias, so the regression prefers a narrower window: half the Cp
    window (the nearest candidate) came close to the best fixed window on every
    benchmark system and noise level (``benchmarks/discovery_vs_pysindy.py``;
    ``benchmarks/RESULTS.md``, section "Numbers moved out of docstrings").
    """
    n = col.shape[0]
    cands = [w for w in WINDOWS if 3 * w <= n]
    if not cands:
        return n if n % 2 else n - 1
    if sigma <= 0:
        return cands[0]
    best, best_cp = cands[0], np.inf
    for w in cands:
        p = min(polyorder, w - 1)
        sm = _apply(col, w, p, 0)
        cp = np.mean((sm - col) ** 2) + 2.0 * sigma ** 2 * _edge_weights(w, p, 0)[w // 2, w // 2]
        if cp < best_cp:
            best, best_cp = w, cp
    return min(cands, key=lambda w: (abs(w - best / 2.0), w))


def estimate_noise_sd(x) -> np.ndarray:
    """Robust per-column sd of additive white noise in ``x (T, d)`` from fourth differences.

    Examples
    --------
    >>> import numpy as np
    >>> from bmsbi.discovery.smoothing import estimate_noise_sd
    >>> t = np.linspace(0, 10, 2000)[:, None]
    >>> x = np.sin(t) + 0.1 * np.random.default_rng(0).normal(size=t.shape)
    >>> float(np.round(estimate_noise_sd(x)[0], 2))
    0.1
    """
    x = np.asarray(x, float)
    if x.shape[0] < 5:
        return np.zeros(x.shape[1:])
    d4 = np.diff(x, n=4, axis=0)
    mad = np.median(np.abs(d4 - np.median(d4, axis=0)), axis=0)
    return 1.4826 * mad / math.sqrt(70.0)


def smooth_derivative(x, dt: float, *, window=None, polyorder: int = 3):
    """Smoothed states and time derivatives of one trajectory ``x (T, ...)``.

    Parameters
    ----------
    x : array (T, ...)
        Samples at spacing ``dt``; trailing axes (states, nodes) are treated independently.
    dt : float
        Sample spacing.
    window : int, optional
        Odd window length in samples; default: chosen per column among :data:`WINDOWS`
        (at most ``T / 3``) from the data's noise (half the Cp-optimal smoothing window).
    polyorder : int, default 3

    Returns
    -------
    x_smooth, dxdt : arrays shaped like ``x``
    windows : int array of the window used per column (shape ``x.shape[1:]``)

    Examples
    --------
    >>> import numpy as np
    >>> from bmsbi.discovery.smoothing import smooth_derivative
    >>> t = np.arange(0, 10, 0.01)
    >>> x = np.stack([np.sin(t), np.cos(t)], -1)
    >>> xs, dx, w = smooth_derivative(x, 0.01)
    >>> bool(np.allclose(dx, np.stack([np.cos(t), -np.sin(t)], -1), atol=1e-4))
    True
    """
    x = np.asarray(real_array(x, "x", what="a numeric array (time, ...)"), float)
    if x.ndim < 1 or x.shape[0] < 3 or x.size == 0:
        raise ValueError(f"x: expected a trajectory (time, ...) of at least 3 samples, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x: expected finite values, got {int(np.sum(~np.isfinite(x)))} NaN/inf; drop or "
                         "interpolate them first")
    if isinstance(dt, (bool, np.bool_)) or not isinstance(dt, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt: expected a positive, finite sample spacing, got {dt!r}")
    if window is not None and (isinstance(window, (bool, np.bool_)) or not isinstance(window, (int, np.integer))
                               or window < 3 or window % 2 == 0 or window > x.shape[0]):
        raise ValueError(f"window: expected None or an odd int between 3 and {x.shape[0]} (the "
                         f"trajectory's length), got {window!r}")
    if isinstance(polyorder, (bool, np.bool_)) or not isinstance(polyorder, (int, np.integer)) or polyorder < 1:
        raise ValueError(f"polyorder: expected a positive int, got {polyorder!r}")
    n = x.shape[0]
    flat = x.reshape(n, -1)
    xs, dx = np.empty_like(flat), np.empty_like(flat)
    used = np.empty(flat.shape[1], int)
    sigma = estimate_noise_sd(flat)
    for c in range(flat.shape[1]):
        col = flat[:, c]
        if window is not None:
            w = int(window)
        else:
            w = _choose_window(col, polyorder, sigma[c])
        p = min(polyorder, w - 1)
        xs[:, c] = _apply(col, w, p, 0)
        dx[:, c] = _apply(col, w, p, 1) / dt
        used[c] = w
    return xs.reshape(x.shape), dx.reshape(x.shape), used.reshape(x.shape[1:])
