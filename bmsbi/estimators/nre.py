"""Neural ratio estimation (NRE): a classifier of joint vs. shuffled pairs, posterior by NUTS.

A classifier ``f(theta, x)`` learns to tell pairs drawn jointly, ``p(theta, x)``, from
pairs drawn independently, ``p(theta) p(x)`` (parameters shuffled within the
minibatch). Its logit estimates ``log p(x | theta) / p(x)``, so ``p(theta) exp(f)`` is the
unnormalised posterior, sampled with vectorised NUTS (:mod:`bmsbi.mcmc`).

References
----------
.. [1] Hermans, J., Begy, V., Louppe, G. (2020). Likelihood-free MCMC with amortized
   approximate ratio estimators. ICML.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import paramax

from .mcmc_posterior import MCMCPosterior, UnnormalisedEstimator, fit_unnormalised
from .nle import _check_positive

__all__ = ["NRE"]


class RatioModel(eqx.Module):
    """Classifier on ``[theta, x]`` (standardised); its logit is the log ratio.

    logit = ``MLP([theta, x]) + theta^T W x``. The bilinear term ``W`` (zero at
    initialisation; ``None`` in models saved without it) is the first-order
    interaction of parameters and data: exact for Gaussian-linear models and the
    bulk of the ratio of many others, so the MLP only learns the remainder.
    """

    mlp: eqx.nn.MLP
    bilinear: jax.Array | None = None

    def log_ratio(self, s_theta, x_std):
        x = x_std.reshape(-1)
        out = self.mlp(jnp.concatenate([s_theta, x]))[0]
        if self.bilinear is not None:
            out = out + s_theta @ self.bilinear @ x
        return out


@dataclasses.dataclass
class NRE(UnnormalisedEstimator):
    """Neural ratio estimation (binary classifier, NRE-A); the posterior is sampled by NUTS.

    Parameters
    ----------
    hidden : int, default 128
        Width of the classifier's hidden layers.
    nn_depth : int, default 3
        Hidden layers.
    num_contrastive : int, default 1
        Shuffled (independent) pairs per joint pair in each minibatch.
    bilinear : bool, default True
        Add a learned bilinear term ``theta^T W x`` to the classifier's logit (see
        :class:`RatioModel`).
    learning_rate, batch_size, max_epochs, patience, validation_fraction, clip_norm,
    weight_decay, schedule :
        Passed to :func:`bmsbi.engine.fit`.
    num_chains, num_warmup, thin :
        NUTS settings of the returned posterior.

    Examples
    --------
    >>> import jax, bmsbi
    >>> prior = bmsbi.Prior.uniform([-1., -1.], [1., 1.])
    >>> theta = prior.sample(jax.random.key(0), 2000)
    >>> x = theta + 0.1 * jax.random.normal(jax.random.key(1), theta.shape)
    >>> post = bmsbi.NRE(max_epochs=20).fit(bmsbi.Bank(theta, x), prior=prior,
    ...                                     key=jax.random.key(2), progress=False)
    >>> post.sample(jax.random.key(3), x[0], 200).shape
    (200, 2)
    """

    hidden: int = 128
    nn_depth: int = 3
    num_contrastive: int = 1
    bilinear: bool = True
    learning_rate: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 300
    patience: int | None = 20
    validation_fraction: float = 0.1
    clip_norm: float | None = 5.0
    weight_decay: float = 0.0
    schedule: str | None = "cosine"
    num_chains: int = 4
    num_warmup: int = 300
    thin: int = 1

    def __post_init__(self):
        _check_positive(self, ("hidden", "nn_depth", "num_contrastive", "batch_size", "max_epochs",
                               "num_chains", "num_warmup", "thin"))

    def config(self) -> dict:
        return {"estimator": "NRE", "hidden": int(self.hidden), "nn_depth": int(self.nn_depth),
                "num_contrastive": int(self.num_contrastive), "bilinear": bool(self.bilinear)}

    def fit(self, bank, *, prior, key, progress: bool = True, summary=None,
            recording_shape=None) -> MCMCPosterior:
        """Train the classifier on ``bank``; returns an :class:`MCMCPosterior`.

        ``summary`` and ``recording_shape`` as in :meth:`bmsbi.NPE.fit`.
        """
        config = self.config()

        def loss(model, static, batch, key):
            return _bce(model, batch, key, config["num_contrastive"])

        return fit_unnormalised(self, bank, prior, key,
                                lambda k, d, xs: _build(config, d, xs, k), loss, progress,
                                summary=summary, recording_shape=recording_shape)


def _build(config, dim, x_shape, key):
    dx = math.prod(x_shape)
    mlp = eqx.nn.MLP(dim + dx, 1, config["hidden"], config["nn_depth"], activation=jax.nn.silu, key=key)
    return RatioModel(mlp, jnp.zeros((dim, dx)) if config.get("bilinear", False) else None)


def model_from_config(config: dict, dim: int, x_shape: tuple) -> RatioModel:
    """Skeleton (fresh weights) of a saved NRE model; weights are read in afterwards."""
    return _build(config, dim, x_shape, jax.random.key(0))


def _bce(model, batch, key, num_contrastive):
    s_theta, x_std = batch
    model = paramax.unwrap(model)
    joint = jax.vmap(model.log_ratio)(s_theta, x_std)
    loss = jnp.mean(jax.nn.softplus(-joint))
    for k in jax.random.split(key, num_contrastive):
        # Shuffling theta within the minibatch gives pairs from p(theta) p(x).
        shuffled = s_theta[jax.random.permutation(k, s_theta.shape[0])]
        loss = loss + jnp.mean(jax.nn.softplus(jax.vmap(model.log_ratio)(shuffled, x_std))) / num_contrastive
    return loss
