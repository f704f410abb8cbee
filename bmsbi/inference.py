"""What :meth:`bmsbi.Posterior.infer` returns, and the out-of-distribution warning.

:class:`Inference` holds the draws, observations, OOD scores and flags of a batch of
recordings, with a label, source index and the corrections made to each row;
:class:`OutOfDistributionWarning` is raised (as a warning) for recordings unlike every
training simulation, with the text of :func:`ood_message`. Both are re-exported by
:mod:`bmsbi` and :mod:`bmsbi.posterior`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ._checks import check_positive_int

__all__ = ["Inference", "OutOfDistributionWarning", "ood_message"]


class OutOfDistributionWarning(UserWarning):
    """An observation or recording lies outside the simulations the posterior was trained on."""


def ood_message(flagged, ood, robust: bool = False) -> str:
    """The warning text naming the ``flagged`` rows (bool ``(m,)``); ``ood`` the reference or ``None``.

    ``robust``: the posteriors came from robust inference (:mod:`bmsbi.robust`), which
    does not extrapolate but rests on the features the model could match.
    """
    idx = np.flatnonzero(flagged)
    shown = ", ".join(map(str, idx[:10])) + (" ..." if len(idx) > 10 else "")
    rate = "" if ood is None else f" (false-alarm rate {ood.alpha:g} for simulated data)"
    head = (f"{len(idx)} of {len(flagged)} recordings are out of distribution [{shown}]: unlike every "
            f"simulation the posterior was trained on{rate}; ")
    if robust:
        return head + ("robust inference matched them to the simulations they resemble on the "
                       "features the model reproduces; Inference.misfits(row) lists the features it "
                       "does not")
    return head + "their posteriors extrapolate and should not be trusted"


@dataclasses.dataclass
class Inference:
    """Result of :meth:`Posterior.infer` for ``m`` recordings.

    Attributes
    ----------
    samples : numpy array ``(m, num_samples, d)``
        Posterior draws (NaN for recordings whose summaries are not finite).
    x : numpy array ``(m, *x_shape)``
        The observations (summaries) the posterior was conditioned on.
    ood_score : numpy array ``(m,)``
        Distance to the training summaries over its calibrated threshold; > 1 flagged.
    ood_pvalue : numpy array ``(m,)``
        Fraction of held-out simulations at least as unusual.
    flagged : numpy bool array ``(m,)``
        Out of distribution (or non-finite summaries).
    names : tuple of str
        Parameter names.
    labels : list of str
        A label per row: the recording's name (or its index), with ``[epoch k]`` for
        rows cut from a longer recording (``long="epochs"``).
    source : numpy int array ``(m,)``
        Index of the recording (in the call's input) each row came from.
    corrections : list of tuple of str
        Per row, what was done to its recording before inference (read-time
        conversions, resampling, channel reordering, the epoch and the seconds dropped,
        flat channels); empty when it was used as given. :meth:`report` lists them.
    ess : numpy array ``(m,)`` or None
        Robust inference only (``infer(..., robust=True)``, :mod:`bmsbi.robust`): the
        effective number of training simulations behind each posterior.
    misfit : numpy array ``(m, features)`` or None
        Robust inference only: per feature, how far the recording is from the
        simulations it was matched to, in training standard deviations (signed:
        recording minus simulations). :meth:`misfits` lists the largest.
    feature_names : list of str or None
        Names of the summary's features, where the posterior's summary gives them.
    """

    samples: np.ndarray
    x: np.ndarray
    ood_score: np.ndarray
    ood_pvalue: np.ndarray
    flagged: np.ndarray
    names: tuple
    labels: list | None = None
    source: np.ndarray | None = None
    corrections: list | None = None
    ess: np.ndarray | None = None
    misfit: np.ndarray | None = None
    feature_names: list | None = None

    def __post_init__(self):
        m = len(self.samples)
        self.labels = [str(i) for i in range(m)] if self.labels is None else [str(v) for v in self.labels]
        self.source = np.arange(m) if self.source is None else np.asarray(self.source, np.int64)
        self.corrections = [()] * m if self.corrections is None else [tuple(c) for c in self.corrections]

    def report(self) -> str:
        """One line per row that was changed before inference: ``label: what was done``.

        Empty when every recording was used as given.
        """
        return "\n".join(f"{lab}: " + "; ".join(c) for lab, c in zip(self.labels, self.corrections) if c)

    def misfits(self, row: int = 0, top: int = 5) -> list:
        """The ``top`` features of recording ``row`` farthest from its matched simulations.

        A list of ``(feature name, misfit in training standard deviations)``, largest
        ``|misfit|`` first; needs a robust inference (``infer(..., robust=True)``).

        Example
        -------
        >>> res = post.infer(key, recordings, robust=True)   # doctest: +SKIP
        >>> res.misfits(0, top=2)                             # doctest: +SKIP
        [('acf_lag8', 3.1), ('fc_eig2', -2.4)]
        """
        if self.misfit is None:
            raise ValueError("row: this Inference holds no misfit; run infer(..., robust=True)")
        if isinstance(row, (bool, np.bool_)) or not isinstance(row, (int, np.integer)) \
                or not -len(self) <= row < len(self):
            raise ValueError(f"row: expected an index into {len(self)} rows, got {row!r}")
        top = check_positive_int(top, "top")
        m = np.asarray(self.misfit[row], np.float64)
        names = self.feature_names or [f"feature {j}" for j in range(m.size)]
        order = np.argsort(-np.where(np.isnan(m), -1.0, np.abs(m)), kind="stable")[:top]
        return [(names[j], float(m[j])) for j in order]

    def mean(self) -> np.ndarray:
        """Posterior means ``(m, d)``."""
        return self.samples.mean(axis=1)

    def table(self, labels=None) -> str:
        """One line per recording: posterior mean ± sd per parameter, OOD score, flag.

        ``labels`` (one string per row, e.g. file names) replaces :attr:`labels`.
        """
        mean, sd = self.samples.mean(axis=1), self.samples.std(axis=1)
        labels = self.labels if labels is None else [str(v) for v in labels]
        if len(labels) != len(self.samples):
            raise ValueError(f"labels: expected {len(self.samples)} labels, got {len(labels)}")
        width = max([9] + [len(v) for v in labels])
        head = f"{'recording':>{width}s}  " + "  ".join(f"{n:>18s}" for n in self.names) + "  ood_score  flag"
        lines = [head]
        for i in range(len(self.samples)):
            cells = "  ".join(f"{m:>9.4g} ± {s:<6.2g}" for m, s in zip(mean[i], sd[i]))
            flag = "OUT OF DISTRIBUTION" if self.flagged[i] else ""
            lines.append(f"{labels[i]:>{width}s}  {cells}  {self.ood_score[i]:>9.3g}  {flag}".rstrip())
        return "\n".join(lines)

    def __len__(self):
        return len(self.samples)

    def __repr__(self):
        return (f"Inference(recordings={len(self)}, samples={self.samples.shape}, "
                f"flagged={int(self.flagged.sum())})")
