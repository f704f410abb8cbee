"""iid trials: :class:`Trials` marks k repetitions of one experiment.

A plain ``(m, ...)`` array given to a posterior is always a batch of ``m`` separate
experiments, each with its own parameters. When the same parameters produced several
observations — trials of one condition, epochs of one long recording, sessions of one
subject assumed stationary — wrap them in :class:`Trials`: the posterior is then
``p(theta | x_1, ..., x_k)``, which narrows as ``k`` grows.

This differs from the ``sbi`` package, whose likelihood- and ratio-based posteriors
read an ``(m, ...)`` array as ``m`` iid trials of one experiment while its NPE reads the
same array as a batch; in bmsbi the meaning never depends on the estimator.

How each estimator uses trials:

- **NPE** learns the posterior given a *set* of trials with a permutation-invariant
  trial embedding, trained on random subsets of ``1..K`` of the ``K`` trials simulated
  per parameter (``simulate_bank(..., trials=K)``); one posterior then serves any
  ``1 <= k <= K``. More than ``K`` trials is refused (the network never saw that many).
- **NLE / NRE** learn a per-trial likelihood (or ratio) and sum its logarithm over the
  trials inside MCMC, so they take any ``k``.

Examples
--------
>>> import numpy as np, bmsbi
>>> t = bmsbi.Trials(np.zeros((5, 3)))
>>> len(t), t.shape
(5, (3,))
>>> bmsbi.Trials([np.zeros(3), np.ones(3)]).data.shape
(2, 3)
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from ._checks import real_array
from .recording import Recording

__all__ = ["Trials"]


class Trials:
    """``k`` iid observations (or raw recordings) of one experiment.

    Parameters
    ----------
    data : array ``(k, *x_shape)``, list of arrays, list of Recording, or Recording
        The trials, first axis the trial index. A list of arrays is stacked (all must
        have the same shape); a list of :class:`bmsbi.Recording` holds one recording
        per trial; one :class:`bmsbi.Recording` longer than a posterior's trained length
        is split into whole epochs, each a trial (as ``long="epochs"`` does, reported).
        Raw recordings need a posterior with a stored summary pipeline.
    name : str, optional
        A label for reports (``Inference.labels``).

    Attributes
    ----------
    data : numpy.ndarray or list of Recording or Recording
    name : str or None

    Raises
    ------
    ValueError
        Empty trials, ragged shapes, a non-numeric or complex array, or a list mixing
        recordings and arrays; the message names ``data`` and what came.

    Examples
    --------
    >>> import numpy as np, bmsbi
    >>> x_k = np.random.default_rng(0).normal(size=(20, 3))   # 20 trials of a 3-feature observation
    >>> t = bmsbi.Trials(x_k, name="condition A")
    >>> t
    Trials('condition A', 20 trials of shape (3,))
    >>> # posterior.sample(key, t, 1000)  -> (1000, d): p(theta | all 20 trials)
    """

    def __init__(self, data, *, name: str | None = None):
        if name is not None and not isinstance(name, str):
            raise ValueError(f"name: expected a string or None, got {type(name).__name__}")
        self.name = name
        if isinstance(data, Trials):
            data, self.name = data.data, name if name is not None else data.name
        if isinstance(data, Recording):
            self.data = data
            return
        if isinstance(data, (list, tuple)):
            if not data:
                raise ValueError("data: expected at least one trial, got an empty list")
            recs = [isinstance(d, Recording) for d in data]
            if any(recs):
                if not all(recs):
                    kinds = sorted({type(d).__name__ for d in data})
                    raise ValueError(f"data: expected a list of bmsbi.Recording or of arrays, got a "
                                     f"list mixing {kinds}")
                self.data = list(data)
                return
            shapes = [np.shape(_numeric(d, f"data[{i}]")) for i, d in enumerate(data)]
            odd = next((i for i, s in enumerate(shapes) if s != shapes[0]), None)
            if odd is not None:
                raise ValueError(f"data: trials must all have the same shape, got ragged shapes: trial 0 "
                                 f"{shapes[0]}, trial {odd} {shapes[odd]}")
        self.data = _numeric(data)
        if self.data.ndim < 1 or self.data.shape[0] == 0:
            raise ValueError(f"data: expected trials as an array (k, *x_shape) with k >= 1, got shape "
                             f"{self.data.shape}")

    def __len__(self) -> int:
        """Number of trials (for one long Recording: 1 until a posterior splits it)."""
        if isinstance(self.data, Recording):
            return 1
        return len(self.data)

    @property
    def shape(self) -> tuple:
        """Shape of one trial (arrays), or ``(time, channels)`` of the first recording."""
        if isinstance(self.data, Recording):
            return self.data.data.shape
        if isinstance(self.data, list):
            return self.data[0].data.shape
        return tuple(self.data.shape[1:])

    def __repr__(self):
        label = repr(self.name) if self.name else "unnamed"
        if isinstance(self.data, Recording):
            return f"Trials({label}, epochs of {self.data!r})"
        return f"Trials({label}, {len(self)} trials of shape {self.shape})"


def _numeric(data, arg: str = "data") -> np.ndarray:
    """``data`` as a float32 array; ragged, complex or non-numeric input is a ``ValueError``."""
    return np.asarray(real_array(data, arg, what="a numeric array of trials"), np.float32)


def stack_trials(items: Sequence[np.ndarray], k_max: int, x_shape: tuple) -> np.ndarray:
    """Experiments ``[(k_i, *x_shape)]`` padded with NaN rows to ``(m, k_max, *x_shape)``.

    The NaN rows mark absent trials; the estimators mask them out.
    """
    out = np.full((len(items), k_max) + tuple(x_shape), np.nan, np.float32)
    for i, x in enumerate(items):
        out[i, :len(x)] = x
    return out


def trial_mask(x, x_ndim: int):
    """Which trials of ``x (..., K, *x_shape)`` are present (finite), shape ``(..., K)``.

    Works on numpy and JAX arrays (jittable); ``x_ndim`` is ``len(x_shape)``.
    """
    xp = np if isinstance(x, np.ndarray) else jnp
    flat = x.reshape(x.shape[:x.ndim - x_ndim] + (-1,))
    return xp.all(xp.isfinite(flat), axis=-1)
