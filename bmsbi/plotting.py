"""Matplotlib figures of posteriors and of :mod:`bmsbi.diagnostics`.

:func:`pairplot` draws posteriors (a corner plot, several overlaid); the ``plot_*``
functions draw the diagnostics. Every function returns a
:class:`matplotlib.figure.Figure` and, given ``path=``, also writes it as a PNG. Figures
are built on the Agg canvas directly, without pyplot: no global figure registry fills up
in loops, no display is needed, and a notebook shows the returned figure like any other.
ArviZ's own plots (``az.plot_pair`` ...) work on :meth:`bmsbi.Posterior.to_arviz` output.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np

from ._checks import check_positive_int, real_array

__all__ = ["plot_sbc_ecdf", "plot_coverage", "plot_zscore_shrinkage", "plot_posterior_predictive",
           "plot_model_calibration", "pairplot"]


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


@functools.lru_cache(maxsize=32)
def _simultaneous_band(num_ranks, points, confidence):
    """ArviZ's simultaneous ECDF band at ``points`` (a tuple), as counts out of ``num_ranks``."""
    from arviz.stats.ecdf_utils import ecdf_confidence_band

    p = np.asarray(points)
    lower, upper = ecdf_confidence_band(num_ranks, p, p, prob=confidence, method="optimized")
    return np.round(lower * num_ranks), np.round(upper * num_ranks)


def plot_sbc_ecdf(ranks, num_samples: int, *, names=None, confidence: float = 0.95,
                  path=None):
    """ECDF-difference plot of SBC ranks with simultaneous confidence bands.

    One panel per parameter: the ECDF of the fractional ranks
    (:func:`bmsbi.diagnostics.sbc_ecdf`) minus its expectation under uniformity, inside
    ArviZ's simultaneous band (``arviz.stats.ecdf_utils.ecdf_confidence_band``,
    ``method="optimized"``; Säilynoja, Bürkner & Vehtari 2022), which the whole curve of
    a calibrated posterior leaves with probability ``1 - confidence``. The band is exact
    for discrete ranks: it is computed at the grid's exact uniform CDF values, on a grid
    that does not depend on the ranks. A curve that leaves it is drawn red. Reading it:
    a curve above zero on the left and below on the right means too many extreme ranks
    — an overconfident posterior (too narrow); the mirror image means underconfident; a
    curve entirely above (below) zero means the posterior over- (under-) estimates the
    parameter. Each title gives the p-value of the ECDF test
    (:func:`bmsbi.diagnostics.sbc_uniformity` with ``method="ecdf"``; its smallest value
    is 1/5001). That test calibrates its own simultaneous level by simulation, so for a
    curve that just touches the band edge the colour and ``p < 1 - confidence`` can
    disagree.

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
    from .diagnostics import sbc_ecdf, sbc_uniformity

    p, ecdf = sbc_ecdf(ranks, num_samples)                                 # (K,), (d, K)
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence!r}")
    d, m, L = ecdf.shape[0], np.shape(ranks)[0], int(num_samples)
    names = _param_names(names, d)
    lower, upper = _simultaneous_band(m, tuple(p.tolist()), float(confidence))
    counts = np.round(ecdf * m)
    pvals = sbc_uniformity(ranks, L, method="ecdf")
    grid = np.concatenate([[0.0], p, [1.0]])
    lo = np.concatenate([[0.0], lower / m - p, [0.0]])
    hi = np.concatenate([[0.0], upper / m - p, [0.0]])
    fig, axes = _figure(d)
    for j, ax in enumerate(axes):
        diff = np.concatenate([[0.0], ecdf[j] - p, [0.0]])
        outside = bool(np.any((counts[j] < lower) | (counts[j] > upper)))
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


def plot_model_calibration(calibration, *, path=None):
    """Reliability diagram and confusion matrix of a :class:`bmsbi.ModelComparison`.

    Left: for each equal-width bin of the top model probability, the share of
    held-out simulations whose most probable model was the true one (bars) against the
    bin's mean probability (dots on the diagonal when calibrated); the bar widths'
    shading follows the bin's share of the rows, and the title gives the expected
    calibration error. Right: the confusion matrix (row = true model, column = most
    probable model), as shares of each row with the counts.

    Parameters
    ----------
    calibration : bmsbi.comparison.ComparisonCalibration
        From :meth:`bmsbi.ModelComparison.calibration`.
    path : str or PathLike, optional
        Write a PNG here.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> cal = mc.calibration(heldout_banks)                      # doctest: +SKIP
    >>> plot_model_calibration(cal, path="which_model.png")      # doctest: +SKIP
    """
    from .comparison import ComparisonCalibration

    if not isinstance(calibration, ComparisonCalibration):
        raise ValueError("calibration: expected a ComparisonCalibration (from ModelComparison.calibration), "
                         f"got {type(calibration).__name__}")
    c = calibration
    k = len(c.models)
    fig, (ax, cm) = _figure(2, panel=(max(4.0, 0.9 * k + 2.2), 4.0))
    edges = np.asarray(c.bin_edges)
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    present = c.bin_count > 0
    ax.bar(centres[present], c.bin_accuracy[present], width=width[present] * 0.92, color="C0", alpha=0.75,
           edgecolor="C0", label="share correct")
    ax.plot(c.bin_confidence[present], c.bin_accuracy[present], "o", color="C3", ms=4,
            label="(mean probability, share correct)")
    ax.plot([0, 1], [0, 1], color="0.4", lw=0.8, ls="--", label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("probability of the most probable model")
    ax.set_ylabel("share where it is the true model")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"Reliability (ECE {c.ece:.3f}, {len(c.labels)} simulations)", fontsize=10)
    rates = c.confusion_rates
    cm.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    for i in range(k):
        for j in range(k):
            cm.text(j, i, f"{rates[i, j]:.2f}\n({c.confusion[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.6 else "black")
    cm.set_xticks(range(k), c.models, rotation=30, ha="right", fontsize=8)
    cm.set_yticks(range(k), c.models, fontsize=8)
    cm.set_xlabel("most probable model")
    cm.set_ylabel("true model")
    cm.set_title(f"Confusion (accuracy {c.accuracy:.3f})", fontsize=10)
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


# ----------------------------------------------------------------------- pairplot
def _idata_columns(idata, arg):
    """Draws ``(chain * draw, d)`` and column names of an ``InferenceData``'s posterior."""
    if "posterior" not in idata.groups():
        raise ValueError(f"{arg}: expected an InferenceData with a posterior group, got groups "
                         f"{list(idata.groups())}")
    cols, names = [], []
    for var, da in idata.posterior.data_vars.items():
        if da.dims[:2] != ("chain", "draw"):
            raise ValueError(f"{arg}: expected posterior variables with dims (chain, draw, ...), "
                             f"got {var!r} with dims {da.dims}")
        values = np.asarray(da.values)
        extra = values.shape[2:]
        cols.append(values.reshape(values.shape[0] * values.shape[1], -1))
        names += [str(var)] if not extra else \
            [f"{var}[{','.join(map(str, i))}]" for i in np.ndindex(*extra)]
    if not cols:
        raise ValueError(f"{arg}: the InferenceData's posterior group holds no variables")
    return np.concatenate(cols, axis=1), names


def _posterior_sets(samples):
    """``samples`` as a list of ``(label or None, draws (n, d), names or None, what)``."""
    from .posterior import Inference

    def one(item, label, what):
        if type(item).__module__.startswith("arviz") and hasattr(item, "groups"):
            draws, names = _idata_columns(item, what)
            return [(label, draws, names, what)]
        if isinstance(item, Inference):
            return [(lab, row, tuple(item.names), f"{what} row {lab!r}")
                    for lab, row in zip(item.labels, np.asarray(item.samples, np.float64))]
        arr = np.asarray(real_array(item, what, what="an array of draws (n, d)"), np.float64)
        if arr.ndim == 3:
            return [(None, a, None, f"{what}[{i}]") for i, a in enumerate(arr)]
        return [(label, arr, None, what)]

    if isinstance(samples, dict):
        if not samples:
            raise ValueError("samples: expected at least one posterior, got an empty dict")
        sets = [s for key, v in samples.items() for s in one(v, str(key), f"samples[{key!r}]")]
    elif isinstance(samples, (list, tuple)) and samples and not any(
            isinstance(v, (list, tuple, int, float, np.number)) for v in samples):
        # a list of arrays (or Inference / InferenceData); a nested list of numbers is one array
        sets = [s for i, v in enumerate(samples) for s in one(v, None, f"samples[{i}]")]
    else:
        sets = one(samples, None, "samples")
    for _, draws, _, what in sets:
        if draws.ndim != 2 or draws.shape[0] < 2 or draws.shape[1] < 1:
            raise ValueError(f"{what}: expected draws of shape (n >= 2, d) (or (k, n, d) for k "
                             f"posteriors), got {draws.shape}; for one parameter use x[:, None]")
        bad = int(np.sum(~np.all(np.isfinite(draws), axis=1)))
        if bad:
            raise ValueError(f"{what}: expected finite draws, got {bad} of {draws.shape[0]} rows "
                             "with NaN or inf; drop them first, e.g. x[np.isfinite(x).all(axis=1)]")
    d = sets[0][1].shape[1]
    for _, draws, _, what in sets[1:]:
        if draws.shape[1] != d:
            raise ValueError(f"samples: expected every posterior to have the d={d} parameters of "
                             f"{sets[0][3]}, got d={draws.shape[1]} for {what}")
    return sets


def _pair_truths(truths, names):
    d = len(names)
    if truths is None:
        return np.full(d, np.nan)
    if isinstance(truths, dict):
        unknown = [k for k in truths if k not in names]
        if unknown:
            raise ValueError(f"truths: expected keys among the parameter names {names}, got "
                             f"unknown {unknown}")
        truths = [truths.get(n, np.nan) for n in names]
    t = np.asarray(real_array(truths, "truths", what="one true value per parameter"), np.float64)
    if t.shape != (d,):
        raise ValueError(f"truths: expected {d} values (one per parameter; NaN for none), got "
                         f"shape {t.shape}")
    if np.any(np.isinf(t)):
        raise ValueError(f"truths: expected finite values (NaN for none), got {t.tolist()}")
    return t


def _axis_limits(columns, truth):
    """Shared limits of one parameter: central 99 % of every posterior, and the truth."""
    lo = min(np.quantile(c, 0.005) for c in columns)
    hi = max(np.quantile(c, 0.995) for c in columns)
    if np.isfinite(truth):
        lo, hi = min(lo, truth), max(hi, truth)
    pad = 0.05 * (hi - lo) if hi > lo else 0.5 * max(abs(lo), 1.0)
    return lo - pad, hi + pad


def _credible_density(x, y, gridsize=64):
    """Binned Gaussian KDE of ``(x, y)`` on a grid: centres, density ``(gx, gy)``."""
    from scipy.ndimage import gaussian_filter

    h = np.array([x.std(), y.std()]) * len(x) ** (-1 / 6)                 # Scott, 2-D
    edges = [np.linspace(np.quantile(v, 0.001) - 3 * hv, np.quantile(v, 0.999) + 3 * hv,
                         gridsize + 1) for v, hv in zip((x, y), h)]
    counts = np.histogram2d(x, y, bins=edges)[0]
    sigma = [hv / (e[1] - e[0]) for hv, e in zip(h, edges)]
    density = gaussian_filter(counts, sigma=sigma, mode="constant")
    centres = [(e[1:] + e[:-1]) / 2 for e in edges]
    return centres[0], centres[1], density


def _mass_thresholds(density, levels):
    """Density values whose upper level sets hold the fractions ``levels`` of the mass."""
    flat = np.sort(density.ravel())[::-1]
    cum = np.cumsum(flat) / flat.sum()
    idx = np.minimum(np.searchsorted(cum, levels), flat.size - 1)
    return np.unique(flat[idx])


def pairplot(samples, *, names=None, truths=None, labels=None, kind: str = "kde",
             levels=(0.5, 0.9), bins: int = 40, panel_size: float = 2.0, path=None):
    """Corner plot of one or several posteriors: marginals and pairwise densities.

    A ``d × d`` grid: the diagonal shows each parameter's 1-D marginal, the lower
    triangle each pair's 2-D density (column parameter on x, row parameter on y), the
    upper triangle is hidden. Several posteriors (methods, observations, rounds) are
    overlaid in colours ``C0, C1, ...`` with one legend; true values are dashed black
    lines and squares. Every panel of a column shares the x range (the central 99 % of
    all posteriors, and the truth).

    ``kind="kde"``: the diagonal is ArviZ's 1-D KDE (:func:`arviz.kde`, boundary
    corrected); below, contour lines enclose the fractions ``levels`` of each posterior's
    mass (highest-density regions of a binned Gaussian KDE, Scott's bandwidth).
    ``kind="hist"``: step histograms of ``bins`` bins on the diagonal, and below a
    ``bins × bins`` 2-D histogram per posterior, shaded from transparent to its colour.

    The grid is drawn with matplotlib rather than ``az.plot_pair(..., marginals=True)``:
    ``plot_pair`` draws one ``InferenceData`` per call with filled contours, so a second
    posterior drawn on the same axes hides the first, each call sets its own limits and
    there is no shared legend. Contour lines at stated credible masses overlay cleanly.
    For one ``InferenceData`` and ArviZ's styling, ``az.plot_pair`` works as well.

    Parameters
    ----------
    samples : array ``(n, d)``, array ``(k, n, d)``, list or dict of them, Inference or InferenceData
        The posterior draws: one array; ``k`` posteriors as a 3-D array (e.g.
        ``post.sample`` for a batch of observations), a list, or a dict ``{label:
        draws}``; a :class:`bmsbi.Inference` (one posterior per recording, labelled and
        named by it); an ``arviz.InferenceData`` (its ``posterior`` group, chains
        pooled; a vector variable ``v`` gives columns ``v[0], v[1], ...``), also as list
        or dict items. All posteriors have the same ``d`` and finite draws.
    names : sequence of str, optional
        ``d`` parameter names for the axes. Default: those of an ``Inference`` or
        ``InferenceData`` in ``samples``, else ``theta0, theta1, ...``.
    truths : sequence of float or dict, optional
        True parameter values, ``d`` of them (NaN: not marked), or ``{name: value}``.
    labels : sequence of str, optional
        One legend label per posterior. Default: dict keys, ``Inference`` labels, or
        ``posterior 0, posterior 1, ...``. A legend (in the empty upper right of the
        grid; on the axes when ``d == 1``) is drawn when there are several posteriors,
        labels or truths.
    kind : {"kde", "hist"}, default "kde"
    levels : sequence of float, default (0.5, 0.9)
        Credible masses enclosed by the contours (``kind="kde"``), each in (0, 1).
    bins : int, default 40
        Bins per axis for ``kind="hist"``.
    panel_size : float, default 2.0
        Side of one panel in inches.
    path : str or PathLike, optional
        Write a PNG here.

    Returns
    -------
    matplotlib.figure.Figure
        With ``d * d`` axes in row-major order; those above the diagonal are invisible.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> npe, nle = rng.normal(size=(2000, 3)), rng.normal(0.3, 0.7, size=(2000, 3))
    >>> fig = pairplot({"NPE": npe, "NLE": nle}, names=["G", "J", "sigma"],
    ...                truths=[0.0, 0.2, 0.1])
    >>> len(fig.axes), sum(ax.get_visible() for ax in fig.axes)
    (9, 6)
    >>> [t.get_text() for t in fig.legends[0].get_texts()]
    ['NPE', 'NLE', 'truth']
    >>> fig.savefig("pairplot.png")                                    # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap, to_rgb
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    sets = _posterior_sets(samples)
    k, d = len(sets), sets[0][1].shape[1]
    if kind not in ("kde", "hist"):
        raise ValueError(f"kind: expected 'kde' or 'hist', got {kind!r}")
    try:
        lv = np.asarray(levels, dtype=np.float64) if not isinstance(levels, str) else np.array([])
    except (TypeError, ValueError):
        lv = np.array([])
    if lv.ndim != 1 or lv.size == 0 or not np.all((lv > 0) & (lv < 1)):
        raise ValueError(f"levels: expected credible masses strictly inside (0, 1), got {levels!r}")
    bins = check_positive_int(bins, "bins")
    if not (isinstance(panel_size, (int, float)) and not isinstance(panel_size, bool)
            and 0 < panel_size < 20):
        raise ValueError(f"panel_size: expected inches in (0, 20), got {panel_size!r}")
    if names is None:
        names = next((s[2] for s in sets if s[2] is not None), None)
    names = _param_names(names, d)
    t = _pair_truths(truths, names)
    labels_given = labels is not None or any(s[0] is not None for s in sets)
    if labels is None:
        labels = [lab if lab is not None else ("posterior" if k == 1 else f"posterior {i}")
                  for i, (lab, *_) in enumerate(sets)]
    labels = [str(v) for v in labels]
    if len(labels) != k:
        raise ValueError(f"labels: expected {k} labels (one per posterior), got {len(labels)}")
    draws = [s[1] for s in sets]
    lims = [_axis_limits([x[:, j] for x in draws], t[j]) for j in range(d)]

    side = panel_size * d
    fig = Figure(figsize=(side + 0.9, side + 0.7))
    FigureCanvasAgg(fig)
    axes = fig.subplots(d, d, squeeze=False)
    fig.subplots_adjust(left=0.75 / (side + 0.9), right=1 - 0.15 / (side + 0.9),
                        bottom=0.6 / (side + 0.7), top=1 - 0.1 / (side + 0.7),
                        wspace=0.08, hspace=0.08)
    az = None
    if kind == "kde":
        import arviz as az
    for r in range(d):
        for c in range(d):
            ax = axes[r, c]
            if c > r:
                ax.set_visible(False)
                continue
            for i, x in enumerate(draws):
                color = f"C{i}"
                if r == c:
                    col = x[:, c]
                    if np.ptp(col) == 0:
                        ax.axvline(col[0], color=color, lw=1.4)
                    elif kind == "kde":
                        grid, pdf = az.kde(col)
                        ax.plot(grid, pdf, color=color, lw=1.4)
                    else:
                        ax.hist(col, bins=np.linspace(*lims[c], bins + 1), density=True,
                                histtype="step", color=color, lw=1.2)
                elif kind == "kde" and np.ptp(x[:, c]) > 0 and np.ptp(x[:, r]) > 0:
                    gx, gy, dens = _credible_density(x[:, c], x[:, r])
                    thr = _mass_thresholds(dens, lv)
                    widths = np.linspace(1.6, 0.8, len(thr))[::-1] if len(thr) > 1 else [1.3]
                    ax.contour(gx, gy, dens.T, levels=thr, colors=[color], linewidths=widths)
                elif kind == "kde":
                    ax.plot(x[:500, c], x[:500, r], ".", color=color, ms=2, alpha=0.5)
                else:
                    h, ex, ey = np.histogram2d(x[:, c], x[:, r],
                                               bins=[np.linspace(*lims[c], bins + 1),
                                                     np.linspace(*lims[r], bins + 1)])
                    cmap = LinearSegmentedColormap.from_list(
                        f"pair{i}", [(*to_rgb(color), 0.0), (*to_rgb(color), 0.85)])
                    ax.pcolormesh(ex, ey, h.T, cmap=cmap, vmin=0, vmax=max(h.max(), 1))
            if np.isfinite(t[c]):
                ax.axvline(t[c], color="k", lw=1.0, ls="--", gid="truth")
            if r != c and np.isfinite(t[r]):
                ax.axhline(t[r], color="k", lw=1.0, ls="--", gid="truth")
                if np.isfinite(t[c]):
                    ax.plot([t[c]], [t[r]], "s", color="k", ms=4, gid="truth")
            ax.set_xlim(*lims[c])
            if r == c:
                ax.set_ylim(bottom=0)
                ax.set_yticks([])
            else:
                ax.set_ylim(*lims[r])
            ax.tick_params(labelsize=7)
            if r == d - 1:
                ax.set_xlabel(names[c])
            else:
                ax.tick_params(labelbottom=False)
            if c == 0 and r > 0:
                ax.set_ylabel(names[r])
            elif r != c:
                ax.tick_params(labelleft=False)
    if k > 1 or labels_given or np.any(np.isfinite(t)):
        handles = [Line2D([], [], color=f"C{i}", lw=1.6) for i in range(k)]
        texts = list(labels)
        if np.any(np.isfinite(t)):
            handles.append(Line2D([], [], color="k", lw=1.0, ls="--", marker="s", ms=4))
            texts.append("truth")
        if d == 1:
            axes[0, 0].legend(handles, texts, fontsize=8, frameon=False)
        else:
            fig.legend(handles, texts, loc="upper right", fontsize=8, frameon=False,
                       bbox_to_anchor=(1 - 0.15 / (side + 0.9), 1 - 0.1 / (side + 0.7)))
    return _finish(fig, path)
