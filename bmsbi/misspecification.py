"""A calibrated misspecification test: are these recordings unlike the simulations?

:class:`MMDTest` compares observations with training simulations by the maximum mean
discrepancy (MMD) with a Gaussian kernel, in the space of z-scored summaries, and
gives a p-value from a simulated null: the same statistic for sets of training
simulations held out of the reference set. Under the hypothesis "the recordings are
simulations of the model", the p-value is (up to ``1 / (1 + num_null)``) uniform, so
rejecting at ``p < 0.05`` flags 5 % of good recordings — whatever the model, the summary
or the bandwidth.

- One observation at a time (:meth:`MMDTest.pvalues`): the statistic is
  ``MMD^2({x}, Y) = 1 + mean k(Y, Y) - 2 mean_j k(x, y_j)``, a kernel density score.
- A set of ``m`` recordings together (:meth:`MMDTest.pvalue`): ``MMD^2(X, Y)``, whose
  null is simulated with sets of ``m`` held-out simulations; more recordings, more power.
- Two bandwidths by default: the median distance between simulations (the usual choice,
  best for sets) and the median nearest-neighbour distance (one recording far from every
  simulation, in a summary of many features, is seen only at that scale). The test
  statistic is the smallest of the per-bandwidth p-values, calibrated by its own
  simulated null (the aggregation of MMDAgg [3]).
- Which summary: the test sees only what its features see. A posterior's summary reads
  what the model explains; :func:`bmsbi.summaries.full_band_features` adds the rest of
  the spectrum (``MMDTest.fit(recordings, summary=...)``).

The k-nearest-neighbour score of :mod:`bmsbi.ood` answers the same question for one
observation with another distance; ``benchmarks/misspecification.py`` sets them side by
side (false-positive rate and power; numbers in ``benchmarks/RESULTS.md``).

References
----------
.. [1] Gretton, A., Borgwardt, K. M., Rasch, M. J., Schölkopf, B., Smola, A. (2012).
   A kernel two-sample test. JMLR 13.
.. [2] Schmitt, M., Bürkner, P.-C., Köthe, U., Radev, S. T. (2023). Detecting model
   misspecification in amortized Bayesian inference with neural networks. GCPR.
.. [3] Schrab, A., Kim, I., Albert, M., Laurent, B., Guedj, B., Gretton, A. (2023). MMD
   aggregated two-sample test. JMLR 24.
"""

from __future__ import annotations

import numpy as np

from ._checks import check_positive_int, real_array

__all__ = ["MMDTest"]

_CHUNK = 1024


def _kernel_mean(a, b, h):
    """``(len(a),)``: mean over ``b`` of the Gaussian kernel ``exp(-|a - b|^2 / (2 h^2))``."""
    out = np.empty(len(a))
    bb = (b ** 2).sum(axis=1)
    for s in range(0, len(a), _CHUNK):
        q = a[s:s + _CHUNK]
        d2 = np.maximum((q ** 2).sum(axis=1)[:, None] + bb[None] - 2 * q @ b.T, 0.0)
        out[s:s + _CHUNK] = np.exp(-d2 / (2 * h ** 2)).mean(axis=1)
    return out


def _check_summary(summary):
    from .summaries import Summary

    if summary is not None and not isinstance(summary, Summary):
        raise ValueError(f"summary: expected a bmsbi.summaries.Summary or None, got {type(summary).__name__}")
    return summary


def _summarise(summary, recordings: np.ndarray) -> np.ndarray:
    if recordings.ndim != 3:
        raise ValueError(f"x: expected raw recordings (m, time, regions) for the test's summary, got shape "
                         f"{recordings.shape}")
    return np.asarray(summary.batch(np.asarray(recordings, np.float32)), np.float64)


class _Null:
    """A simulated null of statistics ``(H, n)`` (one row per bandwidth; larger = less alike).

    With one bandwidth the p-value of a statistic is the share of null draws at least as
    large, ``(1 + count) / (1 + n)``. With several, the test statistic is the smallest
    per-bandwidth p-value, and its own null is that minimum computed for every null
    draw against the others: the aggregated test stays exactly calibrated (as in MMDAgg,
    Schrab et al. 2023).
    """

    def __init__(self, stats: np.ndarray):
        self.sorted = np.sort(stats, axis=1)
        if len(stats) > 1:
            n = stats.shape[1]
            # each null draw's per-bandwidth p-value against the other draws
            others = np.stack([n - np.searchsorted(srt, row, side="left") - 1 for srt, row in zip(self.sorted, stats)])
            self.min_p = np.sort((1.0 + others.min(axis=0)) / n)

    def _per_bandwidth(self, stats: np.ndarray) -> np.ndarray:
        n = self.sorted.shape[1]
        count = np.stack([n - np.searchsorted(srt, col, side="left") for srt, col in zip(self.sorted, stats.T)])
        return (1.0 + count) / (1.0 + n)  # (H, m)

    def pvalues(self, stats: np.ndarray) -> np.ndarray:
        """P-values ``(m,)`` of statistics ``(m, H)``."""
        p = self._per_bandwidth(stats)
        if len(p) == 1:
            return p[0]
        t = p.min(axis=0)
        n = self.min_p.size
        return (1.0 + np.searchsorted(self.min_p, t, side="right")) / (1.0 + n)


class MMDTest:
    """MMD two-sample test of observations against training simulations, with a simulated null.

    Build it with :meth:`fit` on the training observations (e.g. a bank's ``x``).

    Parameters
    ----------
    reference : array ``(r, f)``
        Z-scored training rows the observations are compared with.
    pool : array ``(c, f)``
        Z-scored training rows held out of ``reference``: the simulated null draws from them.
    mean, std : arrays ``(f,)``
        The z-scoring of the flattened observations.
    bandwidth : float or tuple of floats
        Gaussian kernel bandwidths; the kernel is the mean of one Gaussian per bandwidth
        (still 1 at distance 0). :meth:`fit` takes two by default (see there).
    num_null : int
        Sets drawn for the null of a set of ``m > 1`` observations.
    seed : int
        Seeds the draw of those sets.
    summary : bmsbi.summaries.Summary, optional
        When given, observations are raw recordings ``(m, time, regions)`` that the test
        summarises with it before z-scoring (see :meth:`fit`).

    Examples
    --------
    >>> import numpy as np
    >>> from bmsbi.misspecification import MMDTest
    >>> rng = np.random.default_rng(0)
    >>> test = MMDTest.fit(rng.normal(size=(3000, 3)), seed=0)
    >>> bool(test.pvalues(np.zeros((1, 3)))[0] > 0.05), bool(test.pvalues(np.full((1, 3), 6.0))[0] < 0.05)
    (True, True)
    >>> bool(test.pvalue(rng.normal(0.5, 1, (20, 3))) < 0.05)      # a shifted set of 20
    True
    """

    def __init__(self, reference, pool, mean, std, bandwidth: float, *, num_null: int = 1000, seed: int = 0,
                 summary=None):
        self.reference = np.asarray(reference, np.float64)
        self.pool = np.asarray(pool, np.float64)
        self.mean = np.asarray(mean, np.float64).reshape(-1)
        self.std = np.asarray(std, np.float64).reshape(-1)
        self.bandwidth = tuple(float(h) for h in np.atleast_1d(np.asarray(bandwidth, np.float64)))
        self.num_null = check_positive_int(num_null, "num_null")
        self.seed = int(seed)
        self.summary = _check_summary(summary)
        if self.reference.ndim != 2 or self.pool.ndim != 2 or self.reference.shape[1] != self.mean.size \
                or self.pool.shape[1] != self.mean.size or len(self.pool) < 2:
            raise ValueError(f"reference: expected (r, {self.mean.size}) and pool (c >= 2, {self.mean.size}) "
                             f"rows, got {self.reference.shape} and {self.pool.shape}")
        if not self.bandwidth or not all(np.isfinite(h) and h > 0 for h in self.bandwidth):
            raise ValueError(f"bandwidth: expected finite floats > 0, got {bandwidth!r}")
        # per bandwidth: mean k(Y, Y) over the reference (the statistic's constant term) and
        # mean_j k(p_i, y_j) for every pool row
        self._kyy = np.array([_kernel_mean(self.reference, self.reference, h).mean() for h in self.bandwidth])
        self._pool_k = np.stack([_kernel_mean(self.pool, self.reference, h) for h in self.bandwidth])  # (H, c)
        self._single_null = _Null(1.0 + self._kyy[:, None] - 2.0 * self._pool_k)
        self._nulls = {}

    @classmethod
    def fit(cls, x, *, num_reference: int = 1000, num_pool: int = 2000, bandwidth=None, num_null: int = 1000,
            seed: int = 0, summary=None) -> "MMDTest":
        """Reference and null pool drawn (disjointly) from the training observations ``x``.

        Parameters
        ----------
        x : array ``(n, *x_shape)``
            Training observations (finite), e.g. ``bank.x``; at least 20 rows.
        num_reference, num_pool : int
            Caps on the reference set and the null pool; with fewer rows, half of them
            are the reference.
        bandwidth : float or tuple of floats, optional
            Kernel bandwidths in z-scored units. Default: two — the median distance
            between reference rows (the usual choice for comparing sets, sensitive to
            broad shifts) and the median distance from a reference row to its nearest
            neighbour (the scale of the simulations' density, which gives one
            recording alone the power of a nearest-neighbour test). The p-values stay
            calibrated whatever the bandwidths: the null is simulated with the same kernel.
        num_null, seed : see the class (``seed`` also picks the rows).
        summary : bmsbi.summaries.Summary, optional
            Test in the space of this statistic: ``x`` (and every observation tested
            later) is then raw recordings ``(n, time, regions)``. A posterior's summary
            reads only what its model explains; ``combine(task.summary,
            bmsbi.summaries.full_band_features(fs))`` also sees the rest of the spectrum
            (line noise, a wrong sampling rate).

        Raises
        ------
        ValueError
            Too few or non-finite rows, or a bad setting (naming it).
        """
        summary = _check_summary(summary)
        x = np.asarray(real_array(x, "x", what="training observations (n, *x_shape)"), np.float64)
        if summary is not None:
            x = _summarise(summary, x)
        if x.ndim < 2 or len(x) < 20:
            raise ValueError(f"x: expected at least 20 training observations (n, *x_shape), got shape {x.shape}")
        flat = x.reshape(len(x), -1)
        if not np.isfinite(flat).all():
            raise ValueError("x: training observations must be finite (drop the failed simulations first)")
        num_reference = check_positive_int(num_reference, "num_reference")
        num_pool = check_positive_int(num_pool, "num_pool")
        mean, std = flat.mean(0), flat.std(0)
        std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
        z = (flat - mean) / std
        order = np.random.default_rng(seed).permutation(len(z))
        n_ref = min(num_reference, len(z) // 2)
        reference, pool = z[order[:n_ref]], z[order[n_ref:n_ref + num_pool]]
        if bandwidth is None:
            d2 = ((reference[:, None] - reference[None]) ** 2).sum(-1)
            median = float(np.sqrt(np.median(d2[np.triu_indices(len(reference), 1)])))
            np.fill_diagonal(d2, np.inf)
            nearest = float(np.sqrt(np.median(d2.min(axis=1))))
            bandwidth = (median, nearest) if 0 < nearest < median else (median,)
        return cls(reference, pool, mean, std, bandwidth, num_null=num_null, seed=seed, summary=summary)

    def features(self, x) -> np.ndarray:
        """Z-scored rows ``(m, f)`` of observations ``x (m, *x_shape)``; ``ValueError`` naming ``x``."""
        flat = np.asarray(real_array(x, "x"), np.float64)
        if self.summary is not None:
            flat = _summarise(self.summary, flat if flat.ndim == 3 else flat[None])
        flat = flat.reshape(len(flat), -1) if flat.ndim >= 2 else flat.reshape(1, -1)
        if flat.shape[1] != self.mean.size:
            raise ValueError(f"x: expected observations of {self.mean.size} entries each (m, *x_shape), got "
                             f"shape {np.shape(x)}")
        return (flat - self.mean) / self.std

    def statistics(self, x) -> np.ndarray:
        """``MMD^2({x_i}, reference)`` ``(m, H)`` of each observation alone, one column per
        bandwidth (``inf`` where not finite)."""
        return self._statistics(self.features(x))

    def _statistics(self, z) -> np.ndarray:
        ok = np.isfinite(z).all(axis=1)
        out = np.full((len(z), len(self.bandwidth)), np.inf)
        if ok.any():
            out[ok] = (1.0 + self._kyy[:, None] - 2.0 * np.stack(
                [_kernel_mean(z[ok], self.reference, h) for h in self.bandwidth])).T
        return out

    def pvalues(self, x) -> np.ndarray:
        """P-value ``(m,)`` of each observation tested alone against the held-out simulations
        of the pool (``(1 + count) / (1 + num_pool)``; with several bandwidths, of the
        smallest per-bandwidth p-value, see :class:`MMDTest`)."""
        return self._single_null.pvalues(self.statistics(x))

    def statistic(self, x) -> np.ndarray:
        """``MMD^2(X, reference)`` ``(H,)`` (biased V-statistic, one per bandwidth) of the set ``x``."""
        return self._statistic(self.features(x))

    def _statistic(self, z) -> np.ndarray:
        if not np.isfinite(z).all():
            return np.full(len(self.bandwidth), np.inf)
        return np.array([_kernel_mean(z, z, h).mean() + kyy - 2.0 * _kernel_mean(z, self.reference, h).mean()
                         for h, kyy in zip(self.bandwidth, self._kyy)])

    def _null(self, m: int) -> "_Null":
        if m not in self._nulls:
            rng = np.random.default_rng(self.seed + m)
            stats = np.empty((len(self.bandwidth), self.num_null))
            for b in range(self.num_null):
                rows = rng.choice(len(self.pool), size=min(m, len(self.pool)), replace=False)
                z = self.pool[rows]
                for i, h in enumerate(self.bandwidth):
                    stats[i, b] = _kernel_mean(z, z, h).mean() + self._kyy[i] - 2.0 * self._pool_k[i, rows].mean()
            self._nulls[m] = _Null(stats)
        return self._nulls[m]

    def pvalue(self, x) -> float:
        """P-value of the set of observations ``x (m, *x_shape)`` tested together.

        The null: ``num_null`` sets of ``m`` held-out simulations (drawn once per ``m``
        and kept). For ``m = 1`` this is :meth:`pvalues` (the whole pool as the null).
        """
        z = self.features(x)  # summarised once (a test with a summary takes raw recordings)
        if len(z) == 1:
            return float(self._single_null.pvalues(self._statistics(z))[0])
        return float(self._null(len(z)).pvalues(self._statistic(z)[None])[0])

    def __repr__(self):
        summary = "" if self.summary is None else f", summary={type(self.summary).__name__}"
        return (f"MMDTest(reference={len(self.reference)}, pool={len(self.pool)}, features={self.mean.size}, "
                f"bandwidth=({', '.join(f'{h:.3g}' for h in self.bandwidth)}){summary})")
