"""Posterior draws for one observation as an ``arviz.InferenceData`` (``Posterior.to_arviz``).

:func:`to_inference_data` fills ArviZ's groups — ``posterior``, ``sample_stats`` (the
log density ``lp`` of each draw), ``prior``, ``sample_stats_prior``, ``observed_data``
and, given a simulator, ``posterior_predictive`` — from any :class:`bmsbi.Posterior`
through its public methods (``sample``, ``log_prob``, ``prior``); the rules are in
:meth:`bmsbi.Posterior.to_arviz`, which calls it.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np

from ._checks import as_key, check_positive_int
from ._version import __version__
from .bank import simulate_at
from .inference import OutOfDistributionWarning
from .observations import observations
from .trials import Trials, trial_mask

__all__ = ["to_inference_data"]


def to_inference_data(posterior, key, x_obs, num_samples: int = 1000, num_chains: int | None = None, *,
                      simulator=None, num_prior_samples: int | None = None, feature_names=None,
                      long: str = "refuse"):
    """Posterior, prior and posterior predictive of ``posterior`` for ONE observation.

    Returns an ``arviz.InferenceData``; the arguments, groups and dims are those of
    :meth:`bmsbi.Posterior.to_arviz` (``posterior.to_arviz(...)`` is this function).
    Bad arguments are a ``ValueError`` naming the argument.
    """
    import arviz as az

    if not all(hasattr(posterior, a) for a in ("sample", "log_prob", "prior", "x_shape", "config")):
        raise ValueError(f"posterior: expected a bmsbi.Posterior, got {type(posterior).__name__}")
    key = as_key(key)
    num_samples = check_positive_int(num_samples, "num_samples")
    if num_chains is None:
        mcmc = getattr(posterior, "mcmc", None)
        num_chains = int(mcmc.get("num_chains", 1)) if isinstance(mcmc, dict) else 1
    num_chains = check_positive_int(num_chains, "num_chains")
    total = num_samples * num_chains
    num_prior_samples = total if num_prior_samples is None else \
        check_positive_int(num_prior_samples, "num_prior_samples")
    if simulator is not None and not callable(simulator):
        raise ValueError(f"simulator: expected a callable simulator(theta, key) -> x or None, "
                         f"got {type(simulator).__name__}")
    x, batched = observations(posterior, x_obs, warn_ood=True, long=long)
    if batched:
        raise ValueError(f"x_obs: to_arviz takes one observation of shape {posterior.x_shape}, got a "
                         f"batch {x.shape} (several recordings, or one split into epochs); call it "
                         "per observation, or use infer for a batch")
    if feature_names is None and posterior.summary is not None and posterior.recording_shape is not None \
            and len(posterior.x_shape) == 1:
        feature_names = posterior.summary.feature_names(posterior.recording_shape[1])
    x_dims, coords = _x_dims(posterior.x_shape, feature_names)
    x0 = one = x[0]
    if x.ndim == len(posterior.x_shape) + 2:  # iid trials: the present ones, as Trials again
        x0 = x[0][trial_mask(x[0], len(posterior.x_shape))]
        one, x_dims = Trials(x0), ["trial", *x_dims]
    k_post, k_prior, k_pred = jax.random.split(key, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfDistributionWarning)  # warned above
        draws = np.asarray(posterior.sample(k_post, one, total))              # (total, d)
    lp = np.asarray(posterior.log_prob(draws, one))
    prior_draws = np.asarray(posterior.prior.sample(k_prior, num_prior_samples))
    prior_lp = np.asarray(posterior.prior.jitted("log_prob")(prior_draws))

    def chains(a):  # (total, ...) -> (chain, draw, ...), draw j in chain j % num_chains
        return np.swapaxes(a.reshape(num_samples, num_chains, *a.shape[1:]), 0, 1)

    predictive = None
    if simulator is not None:
        x_pred = _predictive(posterior, simulator, draws, k_pred)  # with trials: one trial per draw
        predictive = {"x_obs": chains(np.asarray(x_pred))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        idata = az.from_dict(
            posterior={n: chains(draws[:, i]) for i, n in enumerate(posterior.names)},
            sample_stats={"lp": chains(lp)},
            prior={n: prior_draws[None, :, i] for i, n in enumerate(posterior.names)},
            sample_stats_prior={"lp": prior_lp[None]},
            posterior_predictive=predictive,
            observed_data={"x_obs": x0},
            coords=coords, dims={"x_obs": x_dims})
    meta = {"inference_library": "bmsbi", "inference_library_version": __version__,
            "estimator": str(posterior.config.get("estimator")),
            "posterior_class": type(posterior).__name__,
            "log_prob_normalized": int(bool(posterior.normalized))}
    for group in idata.groups():  # ArviZ keeps provenance in every group's attrs
        getattr(idata, group).attrs.update(meta)
    idata.sample_stats["lp"].attrs.update(
        normalized=int(bool(posterior.normalized)),
        description="posterior log density of each draw" +
                    ("" if posterior.normalized else " (unnormalised: only differences are meaningful)"))
    idata.sample_stats_prior["lp"].attrs.update(normalized=1,
                                                description="prior log density of each draw")
    return idata


def _predictive(posterior, simulator, draws, key):
    """``simulator`` at every draw ``(n, d)``: ``(n, *x_shape)``, NaN/inf kept and warned about.

    Uses the simulation key that ``bmsbi.diagnostics.posterior_predictive(posterior,
    simulator, x, key=key, theta=draws)`` uses, so both give the same simulations.
    """
    _, k_sim = jax.random.split(as_key(key))
    out = np.asarray(simulate_at(simulator, draws, key=k_sim))
    if out.shape[1:] != tuple(posterior.x_shape):
        raise ValueError(f"simulator: returns x of shape {out.shape[1:]}, but the posterior was "
                         f"trained on x of shape {tuple(posterior.x_shape)}; pass the simulator it was "
                         "trained with")
    bad = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    if bad.any():
        warnings.warn(f"to_arviz: {int(bad.sum())} of {len(out)} posterior predictive simulations "
                      "returned NaN/inf (kept as they are)", stacklevel=4)
    return out


def _x_dims(x_shape, feature_names):
    """Dims of ``x`` for ArviZ (last axis ``feature``) and the coords for ``feature_names``."""
    dims = [f"x_dim_{i}" for i in range(len(x_shape) - 1)] + ["feature"]
    if not x_shape:
        return [], {}
    if feature_names is None:
        return dims, {}
    names = [str(n) for n in feature_names] if not isinstance(feature_names, str) else None
    if names is None or len(names) != x_shape[-1] or len(set(names)) != len(names):
        raise ValueError(f"feature_names: expected {x_shape[-1]} distinct names (the last axis of "
                         f"x, shape {x_shape}), got {feature_names!r}")
    return dims, {"feature": names}
