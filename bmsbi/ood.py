"""Out-of-distribution scores: is a recording like anything the estimator was trained on?

An amortized posterior is only trustworthy where its training simulations are dense. A
recording whose summaries lie far from every simulated summary (a different model, an
artefact, a wrong sampling rate, a flat channel) still gets a posterior — often a
confident and wrong one. :class:`OODReference` scores each observation by its mean
distance to the ``k`` nearest training summaries (z-scored per feature), and calibrates
that distance on training simulations held out of the reference set:

- ``pvalue``: the fraction of held-out simulations at least as far from the reference
  as the observation (``(1 + count) / (1 + num_calibration)``); small means unusual;
- ``score``: the distance divided by the calibration quantile at ``1 - alpha``; above 1
  means farther from the simulations than all but a fraction ``alpha`` of simulations
  themselves. Flagged observations are those with ``score > 1``.

With ``alpha = 0.001`` about one in a thousand recordings that *are* like the
simulations is flagged by chance. Observations with more than 256 entries (raw time
series) are compared after a fixed Gaussian random projection to 256 dimensions, which
keeps Euclidean distances within a few per cent (Johnson–Lindenstrauss).

Every :class:`bmsbi.Posterior` returned by ``fit`` carries one
(``posterior.ood``) and stores it in its file; :meth:`bmsbi.Posterior.infer` and
:meth:`bmsbi.Posterior.ood_score` use it.

Examples
--------
>>> import numpy as np
>>> from bmsbi.ood import OODReference
>>> rng = np.random.default_rng(0)
>>> ref = OODReference.fit(rng.normal(size=(3000, 4)), seed=0)
>>> bool(ref.flag(np.zeros((1, 4)))[0]), bool(ref.flag(np.full((1, 4), 8.0))[0])
(False, True)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["OODReference"]

_MAX_FEATURES = 256
_CHUNK = 512


class OODReference:
    """k-nearest-neighbour novelty score against a reference set of training summaries.

    Build it with :meth:`fit`; the constructor takes already-fitted arrays (what a
    posterior file stores).

    Parameters
    ----------
    reference : array ``(r, f)``
        Standardised (and, for large ``x``, projected) training rows.
    mean, std : arrays of the flattened ``x`` size
        Per-feature standardisation of the training rows.
    calibration : array ``(c,)``
        Sorted k-NN distances of held-out training rows to ``reference``.
    k : int
        Neighbours averaged.
    alpha : float
        False-alarm rate the flag is set for.
    matching : array ``(r2, f)`` or None
        Standardised, unprojected training rows (up to 4,096) for robust inference
        (:mod:`bmsbi.robust`); ``None`` for projected observations and older files.
    """

    def __init__(self, reference, mean, std, calibration, *, k: int, alpha: float, matching=None):
        self.reference = np.asarray(reference, np.float32)
        self.matching = None if matching is None else np.asarray(matching, np.float32)
        self.mean = np.asarray(mean, np.float32).reshape(-1)
        self.std = np.asarray(std, np.float32).reshape(-1)
        self.calibration = np.sort(np.asarray(calibration, np.float64).reshape(-1))
        self.k = int(k)
        self.alpha = float(alpha)
        if self.reference.ndim != 2 or self.reference.shape[0] <= self.k:
            raise ValueError(f"reference: expected (r, f) rows with r > k={self.k}, "
                             f"got {self.reference.shape}")
        if self.mean.shape != self.std.shape:
            raise ValueError(f"std: expected the shape of mean {self.mean.shape}, got {self.std.shape}")
        if self.reference.shape[1] != min(self.mean.size, _MAX_FEATURES):
            raise ValueError(f"reference: {self.reference.shape[1]} columns do not fit {self.mean.size} "
                             "features")
        if self.matching is not None and (self.matching.ndim != 2 or self.matching.shape[1] != self.mean.size):
            raise ValueError(f"matching: expected (r, {self.mean.size}) rows, got {self.matching.shape}")
        if self.calibration.size < 2 or not np.isfinite(self.calibration).all():
            raise ValueError("calibration: expected at least 2 finite distances")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha: expected a float in (0, 1), got {alpha!r}")
        self._projection = _projection(self.mean.size)

    # ------------------------------------------------------------------ build
    @classmethod
    def fit(cls, x, *, seed: int = 0, k: int = 5, alpha: float = 1e-3, num_reference: int = 1000,
            num_calibration: int = 2000, num_matching: int = 4096):
        """Reference and calibration sets drawn (disjointly) from the training rows ``x``.

        Parameters
        ----------
        x : array ``(n, *x_shape)``
            Training observations (finite); needs ``n >= 2 * (k + 1)``.
        seed : int
            Picks the rows (numpy ``default_rng``).
        k, alpha : see the class.
        num_reference, num_calibration : int
            Caps on the two sets; with fewer rows, half of them are the reference.
        num_matching : int
            Cap on the training rows kept (z-scored, not projected) for robust
            inference (:mod:`bmsbi.robust`); none are kept for observations of more
            than 256 entries.

        Returns
        -------
        OODReference

        Raises
        ------
        ValueError
            Too few rows, or non-finite rows.
        """
        x = np.asarray(x, np.float64)
        n = x.shape[0] if x.ndim >= 1 else 0
        if x.ndim < 2 or n < 2 * (k + 1):
            raise ValueError(f"x: expected at least {2 * (k + 1)} rows (n, ...), got shape {x.shape}")
        flat = x.reshape(n, -1)
        if not np.isfinite(flat).all():
            raise ValueError("x: training rows must be finite")
        if not (isinstance(alpha, float) and 0 < alpha < 1):
            raise ValueError(f"alpha: expected a float in (0, 1), got {alpha!r}")
        mean, std = flat.mean(0), flat.std(0)
        std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
        order = np.random.default_rng(seed).permutation(n)
        n_ref = min(num_reference, n // 2)
        ref_rows, cal_rows = order[:n_ref], order[n_ref:n_ref + num_calibration]
        proj = _projection(flat.shape[1])
        z = (flat - mean) / std
        reference = z[ref_rows] if proj is None else z[ref_rows] @ proj
        cal = z[cal_rows] if proj is None else z[cal_rows] @ proj
        calibration = _knn_distance(cal, reference, k)
        matching = z[order[:num_matching]] if proj is None else None
        return cls(reference, mean, std, calibration, k=k, alpha=alpha, matching=matching)

    @property
    def matching_rows(self):
        """Z-scored training rows for robust inference, or ``None`` (projected observations).

        The ``matching`` rows when stored, else (older files) the reference rows.
        """
        if self._projection is not None:
            return None
        return self.reference if self.matching is None else self.matching

    # ------------------------------------------------------------------ score
    def features(self, x) -> np.ndarray:
        """Standardised (projected) rows ``(m, f)`` of observations ``x (m, *x_shape)``."""
        flat = np.asarray(x, np.float64).reshape(len(x), -1)
        if flat.shape[1] != self.mean.size:
            raise ValueError(f"x: expected {self.mean.size} entries per observation, got {flat.shape[1]}")
        z = (flat - self.mean) / self.std
        return z if self._projection is None else z @ self._projection

    def distance(self, x) -> np.ndarray:
        """Mean distance ``(m,)`` to the ``k`` nearest reference rows (``inf`` for non-finite rows)."""
        z = self.features(x)
        ok = np.isfinite(z).all(axis=1)
        out = np.full(len(z), np.inf)
        if ok.any():
            out[ok] = _knn_distance(z[ok], self.reference.astype(np.float64), self.k)
        return out

    @property
    def threshold(self) -> float:
        """Calibration distance quantile at ``1 - alpha`` (score 1)."""
        return float(np.quantile(self.calibration, 1.0 - self.alpha))

    def score(self, x) -> np.ndarray:
        """Distance over :attr:`threshold` ``(m,)``: above 1 is out of distribution."""
        return self.distance(x) / self.threshold

    def pvalue(self, x) -> np.ndarray:
        """Fraction ``(m,)`` of held-out simulations at least as far from the reference."""
        d = self.distance(x)
        c = self.calibration
        count = c.size - np.searchsorted(c, d, side="left")
        return (1.0 + count) / (1.0 + c.size)

    def flag(self, x) -> np.ndarray:
        """Boolean ``(m,)``: ``score > 1``."""
        return self.score(x) > 1.0

    # ------------------------------------------------------------------ files
    def to_file(self) -> tuple[dict, dict]:
        """``(header entries, arrays)`` for a posterior file."""
        arrays = {"ood_reference": self.reference, "ood_mean": self.mean, "ood_std": self.std,
                  "ood_calibration": self.calibration.astype(np.float32)}
        if self.matching is not None:
            arrays["ood_matching"] = self.matching
        return {"k": self.k, "alpha": self.alpha}, arrays

    @classmethod
    def from_file(cls, entries: dict, arrays: dict) -> "OODReference":
        """Inverse of :meth:`to_file`; ``ValueError`` when arrays or settings are missing.

        Files written before robust inference hold no ``matching`` rows: the reference
        rows serve instead (see :attr:`matching_rows`).
        """
        try:
            return cls(arrays["ood_reference"], arrays["ood_mean"], arrays["ood_std"],
                       arrays["ood_calibration"], k=int(entries["k"]), alpha=float(entries["alpha"]),
                       matching=arrays.get("ood_matching"))
        except (KeyError, TypeError) as err:
            raise ValueError(f"path: the file's out-of-distribution reference is incomplete ({err})") from None

    def __repr__(self):
        return (f"OODReference(reference={self.reference.shape[0]}, features={self.mean.size}, "
                f"k={self.k}, alpha={self.alpha:g}, calibration={self.calibration.size})")


def _projection(num_features: int):
    """Fixed Gaussian projection ``(num_features, 256)`` for large inputs, else ``None``."""
    if num_features <= _MAX_FEATURES:
        return None
    rng = np.random.default_rng(20261128)
    return rng.standard_normal((num_features, _MAX_FEATURES)) / math.sqrt(_MAX_FEATURES)


def _knn_distance(query, reference, k):
    """Mean Euclidean distance of each query row to its ``k`` nearest reference rows."""
    ref_sq = np.sum(reference ** 2, axis=1)
    out = np.empty(len(query))
    for start in range(0, len(query), _CHUNK):
        q = query[start:start + _CHUNK]
        d2 = np.sum(q ** 2, axis=1)[:, None] + ref_sq[None, :] - 2.0 * q @ reference.T
        d2 = np.partition(np.maximum(d2, 0.0), k - 1, axis=1)[:, :k]
        out[start:start + _CHUNK] = np.sqrt(d2).mean(axis=1)
    return out
