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

__all__ = ["Inference", "OutOfDistributionWarning", "ood_message"]


class OutOfDistributionWarning(UserWarning):
    """An observation or recording lies outside the simulations the posterior was trained on."""


def ood_message(flagged, ood) -> str:
    """The warning text naming the ``flagged`` rows (bool ``(m,)``); ``ood`` the reference or ``None``."""
    idx = np.flatnonzero(flagged)
    shown = ", ".join(map(str, idx[:10])) + (" ..." if len(idx) > 10 else "")
    rate = "" if ood is None else f" (false-alarm rate {ood.alpha:g} for simulated data)"
    return (f"{len(idx)} of {len(flagged)} recordings are out of distribution [{shown}]: unlike every "
            f"simulation the posterior was trained on{rate}; their posteriors extrapolate and should "
            "not be trusted")


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
