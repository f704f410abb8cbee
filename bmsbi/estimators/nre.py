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
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import paramax

from ..posterior import register_model_builder
from ..xtransform import check_x_transform
from .mcmc_posterior import MCMCPosterior, UnnormalisedEstimator, fit_unnormalised
from .._checks import check_positive_fields, check_training_settings

__all__ = ["NRE"]


class RatioModel(eqx.Module):
    """Classifier on ``[theta, x]`` (standardised); its logit is the log ratio.

    logit = ``MLP([theta, x]) + theta^T W x + theta^T Q theta + c^T theta + x^T P x
    + q^T x + const``. These quadratic terms (``None`` in models saved without them)
    are exact for Gaussian-linear models and the bulk of the ratio of many others;
    they start at the least-squares linear-Gaussian log ratio and the MLP (output
    layer at zero) learns the remainder.
    """

    mlp: eqx.nn.MLP
    bilinear: jax.Array | None = None
    quadratic: jax.Array | None = None   # (d, d): theta^T Q theta
    linear: jax.Array | None = None      # (d,): c^T theta
    x_quadratic: jax.Array | None = None  # (dx, dx): x^T P x
    x_linear: jax.Array | None = None     # (dx,): q^T x
    offset: jax.Array | None = None       # (): constant

    def log_ratio(self, s_theta, x_std):
        x = x_std.reshape(-1)
        out = self.mlp(jnp.concatenate([s_theta, x]))[0]
        if self.bilinear is not None:
            out = out + s_theta @ self.bilinear @ x
        if self.quadratic is not None:
            out = out + s_theta @ self.quadratic @ s_theta + self.linear @ s_theta
        if self.x_quadratic is not None:
            out = out + x @ self.x_quadratic @ x + self.x_linear @ x + self.offset
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
    num_contrastive : int, default 4
        Shuffled (independent) pairs per joint pair in each minibatch (their loss is
        averaged, so the classes stay balanced). More negatives give a less noisy
        gradient and a more reliable fit (``benchmarks/RESULTS.md``, section "NRE on
        the 10-D Gaussian-linear line").
    linear_init : bool, default True
        Add ``theta^T W x + theta^T Q theta + c^T theta + x^T P x + q^T x + const`` to
        the logit and start it at the log ratio of the least-squares linear-Gaussian
        model, evidence included (the MLP's output layer starts at zero): the
        classifier starts at the Bayes-optimal logit of that model and training learns
        what departs from it. Without the ``x``-only terms the first epochs spent on
        them pulled the parameter terms away from the start (``benchmarks/RESULTS.md``,
        section "NRE on the 10-D Gaussian-linear line"). Implies the bilinear term.
    bilinear : bool, default True
        Add a learned bilinear term ``theta^T W x`` to the classifier's logit (see
        :class:`RatioModel`).
    learning_rate, batch_size, max_epochs, patience, validation_fraction, clip_norm,
    weight_decay, schedule, ema_decay :
        Passed to :func:`bmsbi.engine.fit`.
    num_chains, num_warmup, thin :
        NUTS settings of the returned posterior.
    x_transform : {"auto", "none", "log"} or sequence of bool, default "auto"
        Which features of ``x`` are modelled in log space, as in :class:`bmsbi.NPE`
        (decided on the bank at fit time; ``posterior.x_transform``).

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
    num_contrastive: int = 4
    bilinear: bool = True
    linear_init: bool = True
    learning_rate: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 300
    patience: int | None = 20
    validation_fraction: float = 0.1
    clip_norm: float | None = 5.0
    weight_decay: float = 0.0
    schedule: str | None = "cosine"
    ema_decay: float | None = None
    num_chains: int = 4
    num_warmup: int = 300
    thin: int = 1
    x_transform: str | tuple = "auto"

    def __post_init__(self):
        self.x_transform = check_x_transform(self.x_transform)
        check_training_settings(self)
        check_positive_fields(self, ("hidden", "nn_depth", "num_contrastive", "batch_size", "max_epochs",
                               "num_chains", "num_warmup", "thin"))

    def config(self) -> dict:
        return {"estimator": "NRE", "hidden": int(self.hidden), "nn_depth": int(self.nn_depth),
                "num_contrastive": int(self.num_contrastive), "bilinear": bool(self.bilinear),
                "linear_init": bool(self.linear_init), "x_terms": bool(self.linear_init)}

    def fit(self, bank, *, prior, key, progress: bool = True, summary=None,
            recording_shape=None) -> MCMCPosterior:
        """Train the classifier on ``bank``; returns an :class:`MCMCPosterior`.

        ``summary`` and ``recording_shape`` as in :meth:`bmsbi.NPE.fit`.
        """
        config = self.config()

        # A partial of a module-level function: a later fit reuses the compiled epoch.
        loss = functools.partial(_contrastive_loss, num_contrastive=config["num_contrastive"])
        return fit_unnormalised(self, bank, prior, key,
                                lambda k, d, xs, data: _build(config, d, xs, k, data), loss, progress,
                                summary=summary, recording_shape=recording_shape)


def _contrastive_loss(model, static, batch, key, num_contrastive):
    """The engine's loss for NRE: :func:`_bce` (``static`` unused)."""
    return _bce(model, batch, key, num_contrastive)


def _build(config, dim, x_shape, key, data=None):
    dx = math.prod(x_shape)
    mlp = eqx.nn.MLP(dim + dx, 1, config["hidden"], config["nn_depth"], activation=jax.nn.silu, key=key)
    if not config.get("linear_init", False):  # files from before the option
        return RatioModel(mlp, jnp.zeros((dim, dx)) if config.get("bilinear", False) else None)
    terms = {"bilinear": np.zeros((dim, dx)), "quadratic": np.zeros((dim, dim)), "linear": np.zeros(dim)}
    if config.get("x_terms", False):  # files from before the x-only terms lack them
        terms.update(x_quadratic=np.zeros((dx, dx)), x_linear=np.zeros(dx), offset=np.zeros(()))
    if data is not None:
        fitted = _gaussian_log_ratio(*data)
        terms = {k: fitted[k] for k in terms}
        mlp = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp,
                          replace_fn=jnp.zeros_like)
    return RatioModel(mlp, **{k: jnp.asarray(v, jnp.float32) for k, v in terms.items()})


def _gaussian_log_ratio(s_theta, x_std, ridge: float = 1e-3) -> dict:
    """Log ratio ``log N(x; A theta + b, S) - log N(x; m, C)`` of the least-squares linear-Gaussian model.

    Fits ``x ≈ A theta + b`` with residual covariance ``S``; the evidence is the
    Gaussian ``N(m, C)`` with ``m = A mu + b`` and ``C = A Sigma A^T + S`` (``mu``,
    ``Sigma``: mean and covariance of ``theta`` in the bank). The log ratio is then
    ``theta^T W x + theta^T Q theta + c^T theta`` (all a posterior depends on) plus
    ``x^T P x + q^T x + const`` (what a classifier must also get right) with
    ``W = A^T S^-1``, ``Q = -A^T S^-1 A / 2``, ``c = -A^T S^-1 b``,
    ``P = (C^-1 - S^-1) / 2``, ``q = S^-1 b - C^-1 m``.
    """
    s_theta = np.asarray(s_theta, np.float64)
    x = np.asarray(x_std, np.float64).reshape(len(s_theta), -1)
    n, d = s_theta.shape
    dx = x.shape[1]
    design = np.concatenate([s_theta, np.ones((n, 1))], axis=1)
    gram = design.T @ design + ridge * n * np.diag(np.r_[np.ones(d), 0.0])
    coef = np.linalg.solve(gram, design.T @ x)              # (d + 1, dx)
    A, b = coef[:-1].T, coef[-1]
    resid = x - design @ coef
    S = resid.T @ resid / n + 1e-6 * np.eye(dx)
    S_inv = np.linalg.inv(S)
    AtSinv = A.T @ S_inv                                      # A^T S^-1, (d, dx)
    mu, Sigma = s_theta.mean(axis=0), np.atleast_2d(np.cov(s_theta, rowvar=False))
    m, C = A @ mu + b, A @ Sigma @ A.T + S
    C_inv = np.linalg.inv(C)
    logdet = lambda M: np.linalg.slogdet(M)[1]  # noqa: E731
    offset = 0.5 * (m @ C_inv @ m - b @ S_inv @ b + logdet(C) - logdet(S))
    return {"bilinear": AtSinv, "quadratic": -0.5 * AtSinv @ A, "linear": -AtSinv @ b,
            "x_quadratic": 0.5 * (C_inv - S_inv), "x_linear": S_inv @ b - C_inv @ m,
            "offset": np.asarray(offset)}


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


register_model_builder("NRE", model_from_config)
