"""Cognitive task datasets for the task :class:`bmsbi.trainer.Trainer`.

Each task returns ``(inputs, targets)`` like ``brainmass.datasets.delayed_match_task``:
``inputs`` ``(n_samples, seq_len, n_features)`` float32 (sample-leading), ``targets``
``(n_samples,)`` int labels. Importing this module registers them in
``brainmass.datasets`` (``load_dataset(name)`` gives the default-sized task).

References
----------
.. [1] Shadlen, M. N., Newsome, W. T. (2001). Neural basis of a perceptual decision in the
   parietal cortex (area LIP) of the rhesus monkey. J. Neurophysiol. 86, 1916-1936.
.. [2] Gold, J. I., Shadlen, M. N. (2007). The neural basis of decision making.
   Annu. Rev. Neurosci. 30, 535-574.
"""

from __future__ import annotations

import numpy as np

__all__ = ["evidence_integration_task", "register_tasks", "TASKS"]


def evidence_integration_task(n_samples: int = 256, *, seq_len: int = 20,
                              coherences=(0.05, 0.1, 0.2, 0.4), noise: float = 1.0,
                              seed: int = 0):
    """Perceptual decision by evidence integration (random-dots-like, one evidence channel).

    Each trial draws a signed coherence ``c`` (a magnitude from ``coherences``, a random
    sign) and streams ``c + noise * N(0, 1)`` for ``seq_len`` steps. The target is the
    sign of the stream's mean (``1`` if positive, else ``0``): the right answer needs the
    whole stream integrated, not one sample.

    Parameters
    ----------
    n_samples : int, default 256
    seq_len : int, default 20
        Time steps per trial (at least 1).
    coherences : sequence of float
        Evidence strengths (mean per step, in units of the noise sd).
    noise : float, default 1
        Per-step noise standard deviation (positive).
    seed : int, default 0

    Returns
    -------
    inputs : numpy.ndarray
        ``(n_samples, seq_len, 1)`` float32 evidence streams.
    targets : numpy.ndarray
        ``(n_samples,)`` int64 choices in ``{0, 1}``.

    Examples
    --------
    >>> x, y = evidence_integration_task(8, seq_len=5)
    >>> x.shape, y.shape
    ((8, 5, 1), (8,))
    >>> bool(((x.mean(axis=(1, 2)) > 0) == (y == 1)).all())
    True
    """
    if not (isinstance(n_samples, (int, np.integer)) and n_samples > 0):
        raise ValueError(f"n_samples: expected a positive int, got {n_samples!r}")
    if not (isinstance(seq_len, (int, np.integer)) and seq_len > 0):
        raise ValueError(f"seq_len: expected a positive int, got {seq_len!r}")
    if not noise > 0:
        raise ValueError(f"noise: expected a positive float, got {noise!r}")
    coherences = np.asarray(coherences, dtype=np.float64).ravel()
    if coherences.size == 0 or np.any(coherences < 0):
        raise ValueError(f"coherences: expected non-negative floats, got {coherences.tolist()}")
    rng = np.random.default_rng(seed)
    signed = rng.choice(coherences, size=n_samples) * rng.choice([-1.0, 1.0], size=n_samples)
    inputs = signed[:, None, None] + noise * rng.standard_normal((n_samples, seq_len, 1))
    targets = (inputs.mean(axis=(1, 2)) > 0).astype(np.int64)
    return inputs.astype(np.float32), targets


# The tasks this module registers: name -> (function, description for brainmass.datasets).
TASKS = {
    "evidence_integration_task": (
        evidence_integration_task,
        "Perceptual decision: noisy evidence stream (256 trials x 20 steps x 1), "
        "target = sign of its mean (bmsbi)"),
}


def register_tasks():
    """Register the bmsbi tasks in ``brainmass.datasets`` (idempotent)."""
    from brainmass import datasets

    known = {name for name, _ in datasets.list_datasets()}
    for name, (fn, description) in TASKS.items():
        if name not in known:
            datasets.register_dataset(name, fn, description=description)


register_tasks()
