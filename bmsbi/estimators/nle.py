"""Neural likelihood estimation (NLE): a conditional flow q(x | theta), posterior by NUTS.

The flow learns the likelihood of (standardised) data given (standardised,
unconstrained) parameters. The posterior ``p(theta) q(x_o | theta)`` is then sampled
with vectorised NUTS (:mod:`bmsbi.mcmc`). NLE suits low-dimensional summaries ``x``;
for raw time series prefer NPE with an embedding net.

References
----------
.. [1] Papamakarios, G., Sterratt, D., Murray, I. (2019). Sequential neural likelihood:
   fast likelihood-free inference with autoregressive flows. AISTATS.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import paramax

from .._checks import check_positive_fields, check_training_settings
from ..posterior import register_model_builder
from ..xtransform import check_x_transform
from .mcmc_posterior import MCMCPosterior, UnnormalisedEstimator, fit_unnormalised
from .npe import build_flow, linear_gaussian_init

__all__ = ["NLE"]


class LikelihoodModel(eqx.Module):
    """Conditional flow over flattened standardised ``x`` given standardised ``theta``."""

    flow: eqx.Module

    def log_ratio(self, s_theta, x_std):
        return self.flow.log_prob(x_std.reshape(-1), condition=s_theta)


@dataclasses.dataclass
class NLE(UnnormalisedEstimator):
    """Neural likelihood estimation; the posterior is sampled by NUTS.

    Parameters
    ----------
    density_estimator : {"maf", "nsf", "maf_rqs"}, default "maf"
        Flow family over ``x`` (one-dimensional ``x`` uses ``"maf_rqs"``). On a
        Gaussian-linear task the affine MAF learned the log-likelihood more accurately
        than the spline flow, which overfits (``benchmarks/RESULTS.md``, section
        "Numbers moved out of docstrings"); sbi defaults to MAF for NLE as well.
    hidden, num_layers, num_bins, tail_bound, nn_depth :
        Flow architecture, as in :class:`bmsbi.NPE`.
    linear_init : bool, default True
        Start the likelihood flow at the least-squares linear-Gaussian likelihood
        ``x | theta ~ N(A theta + b, diag(sd^2))`` (a conditional affine map on the data
        side, :func:`bmsbi.estimators.npe.linear_gaussian_init` with the roles of
        ``theta`` and ``x`` swapped); the network learns what departs from it. Not used
        for one-dimensional ``x`` (``"maf_rqs"``).
    learning_rate, batch_size, max_epochs, patience, validation_fraction, clip_norm,
    weight_decay, schedule, ema_decay :
        Passed to :func:`bmsbi.engine.fit`. The default ``"warmup_cosine"`` leaves the
        linear-Gaussian start intact through the first steps, which makes the posterior
        means more accurate than ``"cosine"`` (``benchmarks/RESULTS.md``, section
        "Gaussian-linear 10-D at 10k").
    num_chains, num_warmup, thin :
        NUTS settings of the returned posterior (chains per observation).
    x_transform : {"auto", "none", "log"} or sequence of bool, default "auto"
        Which features of ``x`` are modelled in log space, as in :class:`bmsbi.NPE`
        (decided on the bank at fit time; ``posterior.x_transform``).

    Examples
    --------
    >>> import jax, bmsbi
    >>> prior = bmsbi.Prior.uniform([-1., -1.], [1., 1.])
    >>> theta = prior.sample(jax.random.key(0), 2000)
    >>> x = theta + 0.1 * jax.random.normal(jax.random.key(1), theta.shape)
    >>> post = bmsbi.NLE(max_epochs=20).fit(bmsbi.Bank(theta, x), prior=prior,
    ...                                     key=jax.random.key(2), progress=False)
    >>> post.sample(jax.random.key(3), x[0], 200).shape
    (200, 2)
    """

    density_estimator: str = "maf"
    hidden: int = 50
    num_layers: int = 5
    num_bins: int = 8
    tail_bound: float = 5.0
    nn_depth: int = 2
    learning_rate: float = 2e-3
    batch_size: int = 256
    max_epochs: int = 300
    patience: int | None = 20
    validation_fraction: float = 0.1
    clip_norm: float | None = 5.0
    weight_decay: float = 0.0
    schedule: str | None = "warmup_cosine"
    ema_decay: float | None = None
    num_chains: int = 4
    num_warmup: int = 300
    thin: int = 1
    linear_init: bool = True
    x_transform: str | tuple = "auto"

    def __post_init__(self):
        self.x_transform = check_x_transform(self.x_transform)
        if self.density_estimator not in ("nsf", "maf", "maf_rqs"):
            raise ValueError(f"density_estimator: expected 'nsf', 'maf' or 'maf_rqs', got "
                             f"{self.density_estimator!r}")
        check_training_settings(self)
        check_positive_fields(self, ("hidden", "num_layers", "num_bins", "nn_depth", "batch_size",
                               "max_epochs", "num_chains", "num_warmup", "thin"))

    def config(self) -> dict:
        return {"estimator": "NLE", "density_estimator": self.density_estimator,
                "hidden": int(self.hidden), "num_layers": int(self.num_layers),
                "num_bins": int(self.num_bins), "tail_bound": float(self.tail_bound),
                "nn_depth": int(self.nn_depth), "linear_init": bool(self.linear_init)}

    def fit(self, bank, *, prior, key, progress: bool = True, summary=None,
            recording_shape=None) -> MCMCPosterior:
        """Train the likelihood flow on ``bank``; returns an :class:`MCMCPosterior`.

        ``summary`` and ``recording_shape`` as in :meth:`bmsbi.NPE.fit`.
        """
        config = self.config()
        return fit_unnormalised(self, bank, prior, key,
                                lambda k, d, xs, data: _build(config, d, xs, k, data), _nll, progress,
                                summary=summary, recording_shape=recording_shape)


def _build(config, dim, x_shape, key, data=None):
    dx = math.prod(x_shape)
    family = config["density_estimator"] if dx > 1 else "maf_rqs"
    linear = bool(config.get("linear_init", False))  # files from before the option: False
    flow = build_flow(family, dx, dim, hidden=config["hidden"], num_layers=config["num_layers"],
                      num_bins=config["num_bins"], tail_bound=config["tail_bound"],
                      nn_depth=config["nn_depth"], key=key, conditional_affine=linear)
    if linear and data is not None:
        s_theta, x_std = data  # the likelihood's linear-Gaussian fit: x on theta
        flow = linear_gaussian_init(flow, np.asarray(x_std).reshape(len(x_std), -1), s_theta)
    return LikelihoodModel(flow)


def model_from_config(config: dict, dim: int, x_shape: tuple) -> LikelihoodModel:
    """Skeleton (fresh weights) of a saved NLE model; weights are read in afterwards."""
    return _build(config, dim, x_shape, jax.random.key(0))


def _nll(model, static, batch, key):
    s_theta, x_std = batch
    model = paramax.unwrap(model)
    return -jnp.mean(jax.vmap(model.log_ratio)(s_theta, x_std))


register_model_builder("NLE", model_from_config)
