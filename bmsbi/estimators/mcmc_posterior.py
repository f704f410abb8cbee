"""The posterior of NLE and NRE: a learned unnormalised log density sampled by NUTS."""

from __future__ import annotations

import io as _stdio

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import paramax

from ..mcmc import nuts_sample
from ..posterior import Posterior, model_skeleton, read_weights_and_stats, register_posterior
from ..trials import trial_mask

__all__ = ["MCMCPosterior", "UnnormalisedEstimator", "fit_unnormalised"]

_MCMC_DEFAULTS = {"num_chains": 4, "num_warmup": 300, "thin": 1}


@register_posterior
class MCMCPosterior(Posterior):
    """Posterior ``p(theta) exp(model.log_ratio(theta, x))`` sampled with vectorised NUTS.

    ``model`` is an equinox module with ``log_ratio(s_theta (d,), x_std (*x_shape)) ->
    scalar`` on standardised unconstrained parameters and standardised data: the
    log-likelihood of a flow (NLE) or the log density ratio of a classifier (NRE).
    :meth:`log_prob` is unnormalised (``normalized = False``): differences between
    parameter values are meaningful, absolute values are not.

    iid trials (:class:`bmsbi.Trials`, any number): the log-likelihood (log-ratio) is
    summed over the trials, ``log p(theta) + sum_j log r(x_j, theta)``.
    """

    normalized = False
    sums_trials = True

    def __init__(self, model, *, prior, x_shape, stats: dict, config: dict, history=None,
                 training=None, mcmc: dict | None = None, x_transform=None):
        super().__init__(prior=prior, x_shape=x_shape, config=config, history=history,
                         training=training, x_transform=x_transform)
        self.model = model
        self.stats = {k: np.asarray(stats[k], np.float32)
                      for k in ("theta_mean", "theta_std", "x_mean", "x_std")}
        self.mcmc = {**_MCMC_DEFAULTS, **(mcmc or {})}
        self._arrays, self._rest = eqx.partition(paramax.unwrap(model), eqx.is_array)

    def _params(self):
        return (self._arrays, {k: jnp.asarray(v) for k, v in self.stats.items()})

    def _log_target(self, params, theta, x):
        """Unnormalised log posterior for one ``theta (d,)`` and one raw ``x``."""
        arrays, stats = params
        model = eqx.combine(arrays, self._rest)
        inside = self.prior.in_support(theta)
        safe = jnp.where(inside, theta, self.prior.interior_point())
        s = (self.prior.to_unconstrained(safe) - stats["theta_mean"]) / stats["theta_std"]
        x_std = (self.x_transform.apply(x) - stats["x_mean"]) / stats["x_std"]
        if x.ndim == len(self.x_shape) + 1:  # iid trials (K, *x_shape); absent ones NaN
            present = trial_mask(x, len(self.x_shape))
            x_std = jnp.where(present.reshape((-1,) + (1,) * len(self.x_shape)), x_std, 0.0)
            per = jax.vmap(lambda xj: model.log_ratio(s, xj))(x_std)
            ratio = jnp.sum(jnp.where(present, per, 0.0))
        else:
            ratio = model.log_ratio(s, x_std)
        lp = ratio + self.prior.log_prob(safe)
        return jnp.where(inside & jnp.isfinite(lp), lp, -jnp.inf)

    def _log_prob_batch(self, params, theta, x):
        per_obs = jax.vmap(lambda t, xi: self._log_target(params, t, xi), (0, None))
        return jax.vmap(per_obs)(theta, x)

    def _sample_batch(self, params, key, x, num_samples):
        return nuts_sample(lambda t, xi: self._log_target(params, t, xi), self.prior, key, x,
                           num_samples, num_chains=self.mcmc["num_chains"],
                           num_warmup=self.mcmc["num_warmup"], thin=self.mcmc["thin"])

    def _payload(self):
        buf = _stdio.BytesIO()
        eqx.tree_serialise_leaves(buf, self.model)
        stats = {k: v.reshape(-1).tolist() for k, v in self.stats.items()}
        return {"stats": stats, "mcmc": self.mcmc}, buf.getvalue()

    @classmethod
    def _from_file(cls, header, payload, prior, history):
        config = header.get("config")
        x_shape = tuple(header["x_shape"])
        skeleton = model_skeleton(config, ("NLE", "NRE"), prior.unconstrained_dim, x_shape)
        model, stats = read_weights_and_stats(header, payload, skeleton, prior.unconstrained_dim, x_shape)
        return cls(model, prior=prior, x_shape=x_shape, stats=stats, config=config,
                   history=history, training=header.get("training"), mcmc=header.get("mcmc"))


def fit_unnormalised(estimator, bank, prior, key, build_model, loss, progress, summary=None,
                     recording_shape=None):
    """Shared ``fit`` of NLE and NRE: transform and standardise ``x``, train ``build_model(...)`` on ``loss``.

    ``x`` goes through the :class:`bmsbi.xtransform.XTransform` that
    ``estimator.x_transform`` chooses from the bank (as in :meth:`bmsbi.NPE.fit`).

    ``build_model(key, dim, x_shape, data)`` returns a fresh model (``data``: the
    standardised ``(s_theta, x_std)`` it will be trained on, for data-based starts); ``loss(model, static,
    (s_theta, x_std), key)`` its minibatch loss. Returns an :class:`MCMCPosterior`;
    ``summary``/``recording_shape`` as in :meth:`bmsbi.NPE.fit`.
    """
    from .. import engine
    from .._checks import as_key
    from ..posterior import check_bank_prior
    from ..xtransform import XTransform
    from .npe import standardisation

    key = as_key(key)
    theta, x, prior = check_bank_prior(bank, prior)
    trials = getattr(bank, "trials", None)
    first = x[:, 0] if trials else x  # one trial per simulation (the OOD reference)
    if trials:  # a per-trial likelihood: every trial is a (theta, x) pair
        theta, x = np.repeat(theta, trials, axis=0), x.reshape((-1,) + x.shape[2:])
    x_shape = tuple(x.shape[1:])
    z = np.asarray(prior.to_unconstrained(jnp.asarray(theta)), dtype=np.float64)
    x_transform = XTransform.choose(estimator.x_transform, x)
    x = x_transform.apply(x)
    stats = standardisation(z, x, "independent")
    s_theta = ((z - stats["theta_mean"]) / stats["theta_std"]).astype(np.float32)
    x_std = ((x - stats["x_mean"]) / stats["x_std"]).astype(np.float32)
    k_model, k_fit = jax.random.split(key)
    model = build_model(k_model, prior.unconstrained_dim, x_shape, (s_theta, x_std))
    t = estimator.training_config()
    config = engine.FitConfig.from_settings(  # a linear-Gaussian start is already a fit
        estimator, keep_start=bool(getattr(estimator, "linear_init", False)))
    result = engine.fit(model, loss, (s_theta, x_std), key=k_fit, config=config, progress=progress,
                        desc=estimator.config()["estimator"])
    model, history = result.params, result.history
    stats = {k: np.asarray(v, np.float32) for k, v in stats.items()}
    config = {**estimator.config(), **({"trials": int(trials)} if trials else {})}
    post = MCMCPosterior(model, prior=prior, x_shape=x_shape, stats=stats, config=config,
                         history=history, training=t, mcmc=estimator.mcmc_config(),
                         x_transform=x_transform)
    return post.attach_training_data(first, summary=summary, recording_shape=recording_shape,
                             meta=getattr(bank, "meta", None))


class UnnormalisedEstimator:
    """Settings shared by NLE and NRE (dataclass fields of the subclasses)."""

    def training_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "batch_size": self.batch_size,
                "max_epochs": self.max_epochs, "patience": self.patience,
                "validation_fraction": self.validation_fraction, "clip_norm": self.clip_norm,
                "weight_decay": self.weight_decay, "schedule": self.schedule,
                "ema_decay": self.ema_decay}

    def mcmc_config(self) -> dict:
        return {"num_chains": int(self.num_chains), "num_warmup": int(self.num_warmup),
                "thin": int(self.thin)}
