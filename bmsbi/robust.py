"""Robust inference for recordings the model cannot fully reproduce.

An amortized posterior conditions on whatever summary it is given. When a real recording
has features no simulation reaches (a misspecified model: real BOLD autocorrelations a
Hopf proxy cannot match together with its functional connectivity), the network
extrapolates, and the posterior is decided by the features the model explains *least*.

``posterior.infer(..., robust=True)`` (and ``sample``) does instead what robust NPE
(Ward et al. 2022) does: it treats the observation ``y`` as a simulated summary ``x``
plus an error with heavy tails, one independent Cauchy error per z-scored feature,

    p(y | x) = prod_j Cauchy(y_j - x_j; 0, scale),

so that a feature far from every simulation costs only the logarithm of its distance and
the features the model can match decide which simulations ``y`` resembles. The
distribution of ``x`` is the posterior's own stored training summaries (up to 4,096 of
them, see :class:`bmsbi.ood.OODReference`), so ``p(x | y)`` is a weighted set of
simulations, and the robust posterior is the mixture

    q_robust(theta | y) = sum_i w_i(y) q(theta | x_i),    w_i ∝ p(y | x_i),

of the network's posteriors at those simulations: it is evaluated only where it was
trained. Ward et al. learn ``p(x)`` with a flow and sample ``x`` by MCMC; the stored
simulations make this a weighted sum instead (an importance-sampling estimate with the
training distribution as proposal), cheap enough for a batch of recordings in one call.
What it reports besides the draws (:class:`bmsbi.Inference`):

- ``ess``: the effective number of simulations behind each posterior (``1 / sum w_i^2``);
  1 means one simulation decides it;
- ``misfit``: per feature, the weighted mean of ``(y_j - x_ij)`` in training standard
  deviations — which features of the recording the model does not reproduce
  (:meth:`bmsbi.Inference.misfits` lists the largest by name).

When every feature can be matched, the robust posterior approaches the plain one; it
is wider (a mixture over the matched simulations) and never extrapolates. Use it for
recordings flagged out of distribution, or whenever a model is known to miss some
features of real data; ``benchmarks/RESULTS.md`` measures it on real fMRI.

References
----------
Ward, D., Cannon, P., Beaumont, M., Fasiolo, M., Schmon, S. M. (2022). Robust neural
posterior estimation and statistical model criticism. NeurIPS 35.

Examples
--------
>>> import numpy as np
>>> from bmsbi import robust
>>> rows = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 9.0]])
>>> w, ess, misfit = robust.match(np.array([[1.0, 30.0]]), rows, scale=0.5)
>>> int(np.argmax(w[0]))   # the second feature is off for all rows: the first decides
1
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_SCALE", "check_robust", "match", "draw_rows"]

#: Cauchy scale of the error model, in training standard deviations of each feature.
DEFAULT_SCALE = 0.5
_CHUNK = 256


def check_robust(robust) -> float | None:
    """The Cauchy scale for ``robust`` (``False`` -> ``None``, ``True`` -> :data:`DEFAULT_SCALE`).

    A positive finite float is the scale itself; anything else is a ``ValueError``.
    """
    if robust is False or robust is None:
        return None
    if robust is True:
        return DEFAULT_SCALE
    if isinstance(robust, (int, float, np.integer, np.floating)) and not isinstance(robust, (bool, np.bool_)) \
            and np.isfinite(robust) and robust > 0:
        return float(robust)
    raise ValueError(f"robust: expected False, True or a positive Cauchy scale (in training standard "
                     f"deviations), got {robust!r}")


def match(z_obs, rows, scale: float = DEFAULT_SCALE):
    """Weights of stored simulations for each observation under the Cauchy error model.

    Parameters
    ----------
    z_obs : array ``(m, f)``
        Observations, z-scored as ``rows`` (finite).
    rows : array ``(n, f)``
        Stored training summaries, z-scored.
    scale : float
        Cauchy scale (training standard deviations).

    Returns
    -------
    weights : ``(m, n)``, rows summing to 1
    ess : ``(m,)``, ``1 / sum w^2``
    misfit : ``(m, f)``, weighted mean of ``z_obs - rows``
    """
    z_obs = np.asarray(z_obs, np.float64)
    rows = np.asarray(rows, np.float64)
    if z_obs.ndim != 2 or rows.ndim != 2 or z_obs.shape[1] != rows.shape[1]:
        raise ValueError(f"z_obs: expected (m, {rows.shape[-1]}) rows for (n, f) stored rows, got "
                         f"{z_obs.shape} and {rows.shape}")
    if not np.isfinite(z_obs).all():
        raise ValueError("z_obs: observations must be finite")
    logw = np.empty((len(z_obs), len(rows)))
    for s in range(0, len(rows), _CHUNK):
        e = (z_obs[:, None, :] - rows[None, s:s + _CHUNK]) / scale
        logw[:, s:s + _CHUNK] = -np.log1p(e * e).sum(axis=-1)
    w = np.exp(logw - logw.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    ess = 1.0 / (w * w).sum(axis=1)
    misfit = z_obs - w @ rows
    return w, ess, misfit


def draw_rows(rng: np.random.Generator, weights, num: int):
    """Per observation, the stored rows drawn ``num`` times by weight: ``[(rows, counts), ...]``."""
    out = []
    for w in np.asarray(weights, np.float64):
        counts = rng.multinomial(num, w / w.sum())
        rows = np.flatnonzero(counts)
        out.append((rows, counts[rows]))
    return out
