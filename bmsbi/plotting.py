"""Matplotlib figures for :mod:`bmsbi.diagnostics`.

Every function returns a :class:`matplotlib.figure.Figure` and, given ``path=``, also
writes it as a PNG. Figures are built on the Agg canvas directly, without pyplot: no
global figure registry fills up in loops, no display is needed, and a notebook shows the
returned figure like any other. ArviZ's own plots (``az.plot_pair`` ...) work on
:meth:`bmsbi.Posterior.to_arviz` output.
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["plot_sbc_ecdf", "plot_coverage", "plot_zscore_shrinkage", "plot_posterior_predictive"]


def _figure(num_panels: int, *, panel=(3.4, 2.9), max_cols: int = 4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(num_panels, max_cols)
    nrows = math.ceil(num_panels / ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[num_panels:]:
        ax.set_visible(False)
    return fig, axes[:num_panels]


def _finish(fig, path):
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"path: expected a file path (str or PathLike) or None, got "
                             f"{type(path).__name__}")
        fig.savefig(path, dpi=120, format="png")
    return fig


def _param_names(names, d, arg="names"):
    if names is None:
        return [f"theta{i}" for i in range(d)]
    names = [str(n) for n in names]
    if len(names) != d:
        raise ValueError(f"{arg}: expected {d} names, got {len(names)}: {names}")
    return names


def plot_sbc_ecdf(ranks, num_samples: int, *, names=None, confidence: float = 0.95,
                  path=None):
    """ECDF-difference plot of SBC ranks with simultaneous confidence bands.

    One panel per parameter: the ECDF of the fractional ranks minus its expectation under
    uniformity, inside the band of :func:`bmsbi.diagnostics.sbc_ecdf_band` (Säilynoja,
    Bürkner & Vehtari 2022), which a calibrated posterior's whole curve leaves with
    probability ``1 - confidence``. Reading it: a curve above zero on the left and below
    on the right means too many extreme ranks — an overconfident posterior (too narrow);
    the mirror image means underconfident; a curve entirely above (below) zero means the
    posterior over- (under-) estimates the parameter. Each title gives the p-value of
    the ECDF test (:func:`bmsbi.diagnostics.sbc_uniformity` with ``method="ecdf"``;
    its smallest value is 1/5001).

    Parameters
    ----------
    ranks : array, shape ``(m, d)``
        From :func:`bmsbi.diagnostics.sbc_ranks`.
    num_samples : int
        Posterior draws per observation used for the ranks.
    names : sequence of str, optional
        Parameter names (``posterior.names``).
    confidence : float, default 0.95
    path : str or PathLike, optional
        Write a PNG here.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> ranks = np.random.default_rng(0).integers(0, 101, size=(200, 2))
    >>> fig = plot_sbc_ecdf(ranks, 100, names=["a", "b"])
    >>> len(fig.axes)
    2
    """
    from .diagnostics import _check_ranks, _ecdf_at, sbc_ecdf_band, sbc_uniformity

    ranks, L = _check_ranks(ranks, num_samples)
    m, d = ranks.shape
    names = _param_names(names, d)
    band = sbc_ecdf_band(m, L, confidence=confidence)
    p = band["points"]
    cut = np.round(p * (L + 1)).astype(np.int64)
    ecdf = _ecdf_at(ranks, cut)                                            # (d, K)
    pvals = sbc_uniformity(ranks, L, method="ecdf")
    grid = np.concatenate([[0.0], p, [1.0]])
    lo = np.concatenate([[0.0], band["lower"] - p, [0.0]])
    hi = np.concatenate([[0.0], band["upper"] - p, [0.0]])
    fig, axes = _figure(d)
    for j, ax in enumerate(axes):
        diff = np.concatenate([[0.0], ecdf[j] - p, [0.0]])
        outside = bool(np.any((ecdf[j] < band["lower"]) | (ecdf[j] > band["upper"])))
        ax.fill_between(grid, lo, hi, step="post", color="0.85",
                        label=f"{confidence:.0%} simultaneous band")
        ax.step(grid, diff, where="post", color="C3" if outside else "C0", lw=1.4,
                label="ECDF − uniform")
        ax.axhline(0.0, color="0.4", lw=0.7)
        ax.set_xlim(0, 1)
        ptxt = "ECDF test p < 0.001" if pvals[j] < 0.001 else f"ECDF test p = {pvals[j]:.2g}"
        ax.set_title(f"{names[j]}  ({ptxt})", fontsize=10)
        ax.set_xlabel("fractional rank")
        if j % 4 == 0:
            ax.set_ylabel("ECDF difference")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"SBC: {m} simulations, {L} posterior draws each", fontsize=10)
    return _finish(fig, path)


def plot_coverage(coverage, *, labels=None, confidence: float = 0.95, path=None):
    """Expected-coverage plot: empirical against nominal credibility.

    The diagonal is perfect calibration; the grey region is where a calibrated
    posterior's curve falls with probability ``confidence`` at each level (pointwise
    binomial interval for the number of observations). Below the diagonal: credible
    regions too small (overconfident); above: too large (underconfident, conservative).

    Parameters
    ----------
    coverage : bmsbi.diagnostics.Coverage or sequence of them
        From :func:`bmsbi.diagnostics.expected_coverage`; several curves (methods,
        estimators) are overlaid.
    labels : sequence of str, optional
        One label per curve (default: the method and the maximum deviation).
    confidence : float, default 0.95
    path : str or PathLike, optional
        Write a PNG here.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> cov = expected_coverage(post, bank.theta, bank.x, key=0)     # doctest: +SKIP
    >>> plot_coverage(cov, path="coverage.png")                       # doctest: +SKIP
    """
    from .diagnostics import Coverage

    items = [coverage] if isinstance(coverage, Coverage) else list(coverage) \
        if isinstance(coverage, (list, tuple)) else None
    if not items or not all(isinstance(c, Coverage) for c in items):
        raise ValueError("coverage: expected a Coverage (from expected_coverage) or a list of "
                         f"them, got {type(coverage).__name__}")
    if labels is None:
        labels = [f"{c.method.upper()} (max dev {c.max_deviation:.2f})" for c in items]
    labels = list(labels)
    if len(labels) != len(items):
        raise ValueError(f"labels: expected {len(items)} labels (one per curve), got {len(labels)}")
    fig, (ax,) = _figure(1, panel=(4.2, 4.0))
    grid = np.linspace(0.01, 0.99, 99)
    ref = Coverage(levels=grid, coverage=grid, credibility=items[0].credibility, method="")
    lo, hi = ref.band(confidence)
    ax.fill_between(grid, lo, hi, color="0.88", label=f"{confidence:.0%} band (calibrated)")
    ax.plot([0, 1], [0, 1], color="0.4", lw=0.8, ls="--")
    for i, (c, label) in enumerate(zip(items, labels)):
        ax.plot(grid, c.at(grid), color=f"C{i}", lw=1.4)
        ax.plot(c.levels, c.coverage, "o", color=f"C{i}", ms=3.5, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("nominal credibility level")
    ax.set_ylabel("empirical coverage")
    ax.text(0.97, 0.03, "below: overconfident", ha="right", va="bottom", fontsize=7, color="0.4",
            transform=ax.transAxes)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"Expected coverage ({items[0].num_observations} simulations)", fontsize=10)
    return _finish(fig, path)


def plot_zscore_shrinkage(result, *, absolute: bool = True, path=None):
    """Posterior z-score against posterior shrinkage, one colour per parameter.

    The plot of Betancourt (2018) used in whole-brain SBI studies (e.g. Hashemi et al.
    2023). Ideal: points at the right (shrinkage near 1, the data are informative) and at
    the bottom (``|z|`` small, the posterior is centred on the truth). Right and high:
    overconfident and wrong; left: the data say little about the parameter.

    Parameters
    ----------
    result : bmsbi.diagnostics.ZScoreShrinkage
        From :func:`bmsbi.diagnostics.zscore_shrinkage`.
    absolute : bool, default True
        Plot ``|z|`` (as in the papers) rather than the signed z-score.
    path : str or PathLike, optional
        Write a PNG here.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> zs = zscore_shrinkage(post, bank.theta, bank.x, key=0)      # doctest: +SKIP
    >>> plot_zscore_shrinkage(zs, path="zscore.png")                  # doctest: +SKIP
    """
    from .diagnostics import ZScoreShrinkage

    if not isinstance(result, ZScoreShrinkage):
        raise ValueError("result: expected a ZScoreShrinkage (from zscore_shrinkage), got "
                         f"{type(result).__name__}")
    z = np.abs(result.zscore) if absolute else result.zscore
    fig, (ax,) = _figure(1, panel=(4.6, 3.8))
    for j, name in enumerate(result.names):
        ax.scatter(result.shrinkage[:, j], z[:, j], s=9, alpha=0.6, color=f"C{j}", label=name,
                   edgecolors="none")
    ax.set_xlim(min(0.0, float(np.nanmin(result.shrinkage)) - 0.02), 1.0)
    if absolute:
        ax.set_ylim(0, max(4.0, float(np.nanpercentile(z, 99)) * 1.05))
    ax.set_xlabel("posterior shrinkage  1 − var_post / var_prior")
    ax.set_ylabel("|z|  = |mean − θ| / sd" if absolute else "z = (mean − θ) / sd")
    ax.legend(fontsize=7, markerscale=1.5)
    ax.set_title(f"Z-score vs shrinkage ({result.zscore.shape[0]} simulations)", fontsize=10)
    return _finish(fig, path)


def plot_posterior_predictive(x_pred, x_obs, *, feature_names=None, standardize: bool = True,
                              path=None):
    """Posterior-predictive intervals per feature with the observed values on top.

    For each feature (entry of the flattened ``x``): the median and the central 50 %
    and 90 % intervals of the simulated data, and the observation as a red dot. An
    observation outside the 90 % interval of many features means the posterior (or the
    model) does not reproduce the data.

    Parameters
    ----------
    x_pred : array, shape ``(n, *x_shape)``
        From :func:`bmsbi.diagnostics.posterior_predictive` (one observation).
    x_obs : array, shape ``x_shape``
    feature_names : sequence of str, optional
        One name per feature (``task.feature_names``).
    standardize : bool, default True
        Show each feature as ``(value - predictive mean) / predictive sd``, so features
        of different units share one axis (the observed dot is then its predictive
        z-score). ``False`` plots raw values.
    path : str or PathLike, optional
        Write a PNG here.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> fig = plot_posterior_predictive(np.random.default_rng(0).normal(size=(100, 3)),
    ...                                 np.zeros(3), feature_names=["a", "b", "c"])
    >>> fig.axes[0].get_xticklabels()[0].get_text()
    'a'
    """
    pred = np.asarray(x_pred, dtype=np.float64)
    obs = np.asarray(x_obs, dtype=np.float64)
    if pred.ndim < 2 or pred.shape[1:] != obs.shape or pred.shape[0] < 2:
        raise ValueError(f"x_pred: expected shape (n >= 2, {', '.join(map(str, obs.shape))}) "
                         f"(simulations for x_obs of shape {obs.shape}), got {pred.shape}")
    pred = pred.reshape(pred.shape[0], -1)
    obs = obs.reshape(-1)
    f = obs.size
    if feature_names is not None:
        feature_names = [str(n) for n in feature_names]
        if len(feature_names) != f:
            raise ValueError(f"feature_names: expected {f} names (one per feature of x), got "
                             f"{len(feature_names)}")
    if standardize:
        mu = np.nanmean(pred, axis=0)
        sd = np.nanstd(pred, axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        pred, obs = (pred - mu) / sd, (obs - mu) / sd
    q = np.nanpercentile(pred, [5, 25, 50, 75, 95], axis=0)
    idx = np.arange(f)
    fig, (ax,) = _figure(1, panel=(max(4.0, min(0.32 * f + 1.5, 24.0)), 3.4))
    ax.vlines(idx, q[0], q[4], color="C0", lw=1.2, alpha=0.5, label="90 % predictive")
    ax.vlines(idx, q[1], q[3], color="C0", lw=4.0, alpha=0.8, label="50 % predictive")
    ax.plot(idx, q[2], "_", color="white", ms=6)
    ax.plot(idx, obs, "o", color="C3", ms=4, label="observed")
    ax.set_xlim(-0.7, f - 0.3)
    if feature_names is not None:
        ax.set_xticks(idx, feature_names, rotation=90 if f > 8 else 0, fontsize=7)
    else:
        ax.set_xlabel("feature index")
    ax.set_ylabel("x, standardised by predictive" if standardize else "x")
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, ncols=3, loc="outside lower center")
    ax.set_title(f"Posterior predictive ({pred.shape[0]} simulations)", fontsize=10)
    return _finish(fig, path)
