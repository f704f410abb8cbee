"""Neural posterior estimation (NPE): a conditional normalizing flow q(theta | x).

The flow is trained by maximum likelihood on ``(theta, x)`` pairs simulated from the
prior, which makes it an amortized posterior: after one training run it returns
posterior samples for any new observation in milliseconds.

Spaces. ``theta`` is first mapped to the prior's unconstrained space (numpyro's
``biject_to``; a log for a positive scale), except that by default
(``theta_space="auto"``) parameters with a ``Uniform`` prior keep their own
coordinates, and z-scored with the training-set mean and standard deviation; ``x`` is
z-scored likewise, after features that are positive and span orders of magnitude are
taken to log space (``x_transform``, :mod:`bmsbi.xtransform`). The flow lives in
that standardised space. Samples are mapped back through the bijection, and draws
outside a Uniform parameter's bounds are rejected and drawn again, so every sample lies inside the prior's support; densities include
the Jacobians of both maps and, with rejection, the flow's mass inside the support.

References
----------
.. [1] Papamakarios, G., Murray, I. (2016). Fast epsilon-free inference of simulation
   models with Bayesian conditional density estimation. NeurIPS.
.. [2] Greenberg, D., Nonnenmacher, M., Macke, J. (2019). Automatic posterior
   transformation for likelihood-free inference. ICML.
.. [3] Durkan, C., Bekasov, A., Murray, I., Papamakarios, G. (2019). Neural spline
   flows. NeurIPS.
.. [4] Papamakarios, G., Pavlakou, T., Murray, I. (2017). Masked autoregressive flow
   for density estimation. NeurIPS.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import paramax
from flowjax.bijections import AbstractBijection, Affine, Chain, RationalQuadraticSpline
from flowjax.distributions import StandardNormal, Transformed
from flowjax.flows import coupling_flow, masked_autoregressive_flow

from .. import engine
from .._checks import as_key, check_training_settings
from ..embeddings import Embedding, TrialEmbedding, embedding_from_config
from ..posterior import THETA_SPACES, DirectPosterior, check_bank_prior, identity_mask, register_model_builder
from ..xtransform import XTransform, check_x_transform

__all__ = ["NPE", "build_flow", "SplineCouplingStack", "ConditionalAffine", "LinearMap",
           "linear_gaussian_init", "warm_start_model", "fitted_mixture_scale",
           "truncated_base_scale"]

_ESTIMATORS = ("nsf", "maf", "maf_rqs", "flowjax_nsf")
# Optimiser steps that max_epochs=None aims for (measured on two-moons, see NPE).
_TARGET_STEPS = 5000


def build_flow(density_estimator: str, dim: int, cond_dim: int | None, *, hidden: int,
               num_layers: int, num_bins: int, tail_bound: float, nn_depth: int, key,
               conditional_affine: bool = False, full_covariance: bool = False, box=None):
    """Conditional flowjax flow over ``R^dim`` with a standard-normal base.

    ``box``: ``(low, high)`` of the prior's box in the flow's coordinates, for the
    box-edge spline of ``"nsf"`` (:class:`SplineCouplingStack`); other flows refuse it.

    ``full_covariance``: a fixed lower-triangular :class:`LinearMap` follows the flow on
    the data side (the identity until :func:`linear_gaussian_init` sets it to the
    Cholesky factor of the least-squares residual covariance).

    ``"nsf"``: :class:`SplineCouplingStack` — a conditional affine map, then
    rational-quadratic spline coupling layers on ``[-tail_bound, tail_bound]``
    (identity outside) with a permutation before each layer; one pass both ways.
    ``"maf"``: flowjax's masked autoregressive affine flow; with ``conditional_affine``
    its autoregressive layers start as the identity and a :class:`ConditionalAffine`
    map follows them on the data side (files saved before that option rebuild without).
    ``"maf_rqs"``: flowjax's masked autoregressive spline flow (``dim`` passes to sample).
    ``"flowjax_nsf"``: flowjax's ``coupling_flow`` with its ``RationalQuadraticSpline``
    transformer (``num_bins`` inner knots on ``[-tail_bound, tail_bound]``, identity
    outside), its conditioners' last layers zeroed so every coupling layer starts as the
    identity, followed on the data side by a :class:`ConditionalAffine` map (always,
    like ``"nsf"``): the same start as ``"nsf"`` for :func:`linear_gaussian_init`.
    """
    if full_covariance:
        if box is not None:
            raise ValueError("box: the box-edge spline needs axis-aligned flow coordinates; a full-covariance "
                             "linear map (full_covariance=True) rotates them")
        flow = build_flow(density_estimator, dim, cond_dim, hidden=hidden, num_layers=num_layers,
                          num_bins=num_bins, tail_bound=tail_bound, nn_depth=nn_depth, key=key,
                          conditional_affine=conditional_affine)
        return Transformed(flow.base_dist, Chain([flow.bijection, LinearMap(np.eye(dim))]))
    if box is not None and density_estimator != "nsf":
        raise ValueError(f"box: the box-edge spline belongs to the 'nsf' flow, got density_estimator="
                         f"{density_estimator!r}")
    base = StandardNormal((dim,))
    if density_estimator == "nsf":
        stack = SplineCouplingStack(dim, cond_dim, num_layers=num_layers, hidden=hidden,
                                    depth=nn_depth, num_bins=num_bins, tail_bound=tail_bound,
                                    box=box, key=key)
        return Transformed(base, stack)
    common = dict(base_dist=base, cond_dim=cond_dim, flow_layers=num_layers, nn_width=hidden,
                  nn_depth=nn_depth, invert=True)
    if density_estimator == "maf":
        flow = masked_autoregressive_flow(key, **common)
        if not conditional_affine:
            return flow
        # Zero the last layer of every autoregressive network: each layer starts as the
        # identity, so the flow starts as the (linear-Gaussian) affine map alone.
        def last(f):  # Invert(Scan(layer)); a layer is Chain([made, Permute]) when dim > 1
            layer = f.bijection.bijection.bijection
            made = layer.bijections[0] if isinstance(layer, Chain) else layer
            return made.masked_autoregressive_mlp.layers[-1]

        flow = eqx.tree_at(lambda f: (last(f).weight.args[1], last(f).bias), flow,
                           replace_fn=jnp.zeros_like)
        affine = ConditionalAffine(dim, cond_dim, hidden=hidden, key=jax.random.fold_in(key, 1))
        return Transformed(base, Chain([flow.bijection, affine]))
    if density_estimator == "maf_rqs":
        spline = RationalQuadraticSpline(knots=num_bins, interval=float(tail_bound))
        return masked_autoregressive_flow(key, transformer=spline, **common)
    if density_estimator == "flowjax_nsf":
        spline = RationalQuadraticSpline(knots=num_bins, interval=float(tail_bound))
        flow = coupling_flow(key, transformer=spline, **common)

        # Invert(Scan(layer)); a layer is Chain([Coupling, Flip or Permute]) when dim > 1.
        # A zero conditioner output gives the spline its initial (identity) knots.
        def last(f):
            layer = f.bijection.bijection.bijection
            coupling = layer.bijections[0] if isinstance(layer, Chain) else layer
            return coupling.conditioner.layers[-1]

        flow = eqx.tree_at(lambda f: (last(f).weight, last(f).bias), flow,
                           replace_fn=jnp.zeros_like)
        affine = ConditionalAffine(dim, cond_dim, hidden=hidden, key=jax.random.fold_in(key, 1))
        return Transformed(base, Chain([flow.bijection, affine]))
    raise ValueError(f"density_estimator: expected one of {_ESTIMATORS}, got {density_estimator!r}")


_MIN_BIN = 1e-3
_UNBOUNDED = 1e4  # an open side of the box (standardised coordinates), kept finite for gradients and files
_MIN_DERIVATIVE = 1e-3
_DERIVATIVE_SHIFT = math.log(math.expm1(1.0 - _MIN_DERIVATIVE))  # softplus(0 + shift) + min = 1


def _rq_spline(x, raw, low, high, inverse, free=None):
    """Monotone rational-quadratic spline of ``[low, high]`` onto itself, identity outside (Durkan et al.).

    ``x``: ``(k,)``; ``low``/``high``: scalars or ``(k,)`` (an empty interval leaves
    its coordinate alone). ``raw``: ``(k, 3K - 1)`` unnormalised bin widths, heights and
    inner derivatives, the derivative at both ends 1 (where the spline meets the
    identity outside); or ``(k, 3K + 1)`` with the end derivatives too, used where
    ``free`` (``(k, 2)`` bool: lower end, upper end) and 1 elsewhere. Returns
    ``(y, log|dy/dx|)`` of the forward map (``inverse=False``) or ``(x, log|dx/dy|)``
    of its inverse.
    """
    with_ends = raw.shape[-1] % 3 == 1
    num_bins = (raw.shape[-1] - 1) // 3 if with_ends else (raw.shape[-1] + 1) // 3
    low = jnp.broadcast_to(jnp.asarray(low, x.dtype), x.shape)
    high = jnp.broadcast_to(jnp.asarray(high, x.dtype), x.shape)
    nonempty = high - low > 1e-6
    width = jnp.where(nonempty, high - low, 1.0)

    def knots(u):
        widths = _MIN_BIN + (1 - _MIN_BIN * num_bins) * jax.nn.softmax(u, axis=-1)
        cum = jnp.concatenate([jnp.zeros(u.shape[:-1] + (1,)), jnp.cumsum(widths, axis=-1)], -1)
        return low[:, None] + width[:, None] * cum.at[..., -1].set(1.0)

    xk = knots(raw[:, :num_bins])
    yk = knots(raw[:, num_bins:2 * num_bins])
    learnt = _MIN_DERIVATIVE + jax.nn.softplus(raw[:, 2 * num_bins:] + _DERIVATIVE_SHIFT)
    if with_ends:
        ends = jnp.where(free, learnt[:, [0, -1]], 1.0)
        deriv = jnp.concatenate([ends[:, :1], learnt[:, 1:-1], ends[:, 1:]], axis=-1)
    else:
        ones = jnp.ones(x.shape + (1,))
        deriv = jnp.concatenate([ones, learnt, ones], axis=-1)

    inside = (x > low) & (x < high) & nonempty
    xc = jnp.clip(x, low, low + width)
    edges = yk if inverse else xk
    k = jnp.clip(jnp.sum(xc[:, None] >= edges[:, 1:-1], axis=-1), 0, num_bins - 1)[:, None]

    def at(a, shift=0):
        return jnp.take_along_axis(a, k + shift, axis=-1)[:, 0]

    x0, x1, y0, y1, d0, d1 = at(xk), at(xk, 1), at(yk), at(yk, 1), at(deriv), at(deriv, 1)
    w, h = x1 - x0, y1 - y0
    s = h / w
    if inverse:
        dy = xc - y0
        a = h * (s - d0) + dy * (d1 + d0 - 2 * s)
        bq = h * d0 - dy * (d1 + d0 - 2 * s)
        c = -s * dy
        xi = (2 * c) / (-bq - jnp.sqrt(jnp.maximum(bq * bq - 4 * a * c, 0.0)))
        xi = jnp.clip(xi, 0.0, 1.0)
        out = x0 + xi * w
    else:
        xi = jnp.clip((xc - x0) / w, 0.0, 1.0)
        out = y0 + h * (s * xi * xi + d0 * xi * (1 - xi)) / (s + (d1 + d0 - 2 * s) * xi * (1 - xi))
    den = s + (d1 + d0 - 2 * s) * xi * (1 - xi)
    grad = s * s * (d1 * xi * xi + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2) / (den * den)
    log_grad = jnp.log(grad)
    out = jnp.where(inside, out, x)
    log_det = jnp.where(inside, -log_grad if inverse else log_grad, 0.0)
    return out, jnp.sum(log_det)


def _fixed_key():
    """``jax.random.key(0)`` as a concrete value, also inside a shape-only trace (a skeleton's weights are read in)."""
    with jax.ensure_compile_time_eval():
        return jax.random.key(0)


def _numpy_rng(key) -> np.random.Generator:
    """A NumPy generator seeded by ``key``'s data, also while a model skeleton is traced for its shapes."""
    with jax.ensure_compile_time_eval():
        return np.random.default_rng(np.asarray(jax.random.key_data(as_key(key))).ravel().tolist())


def _uniform_init(rng, fan_in, shape):
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return jnp.asarray(rng.uniform(-bound, bound, size=shape), jnp.float32)


def _affine_init(rng, dim, cond_dim, hidden):
    """Weights of a conditional elementwise affine map that starts as the identity.

    Returns ``(affine, affine_linear)``: ``affine`` is ``[(W, b), ...]`` of a
    one-hidden-layer MLP ``condition -> (loc, raw scale)`` (last layer zero) and
    ``affine_linear`` ``(cond_dim, 2 dim)`` its linear skip (zero).
    """
    sizes = [cond_dim or 0, hidden, 2 * dim] if cond_dim else [2 * dim]
    affine = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        w = _uniform_init(rng, fan_in, (fan_in, fan_out))
        bias = _uniform_init(rng, fan_in, (fan_out,))
        affine.append((jnp.zeros_like(w), jnp.zeros_like(bias)) if last else (w, bias))
    if not cond_dim:
        affine = [(jnp.zeros((0, 2 * dim)), jnp.zeros(2 * dim))]
    return affine, jnp.zeros((cond_dim or 0, 2 * dim))


def _affine_loc_scale(affine, affine_linear, condition, dim):
    """``(loc, scale)`` of the conditional affine map for one condition vector."""
    c = jnp.zeros(0) if condition is None or not affine[0][0].shape[0] else condition
    h = c
    for i, (w, b) in enumerate(affine):
        h = h @ w + b
        if i < len(affine) - 1:
            h = jax.nn.relu(h)
    h = h + c @ affine_linear
    loc, raw = h[:dim], h[dim:]
    return loc, _MIN_DERIVATIVE + jax.nn.softplus(raw + _DERIVATIVE_SHIFT)


def _raw_scale(scale):
    """Inverse of the scale map in :func:`_affine_loc_scale` (``raw`` giving ``scale``)."""
    scale = np.maximum(np.asarray(scale, np.float64) - _MIN_DERIVATIVE, 1e-6)
    return np.log(np.expm1(scale)) - _DERIVATIVE_SHIFT


class ConditionalAffine(AbstractBijection):
    """Elementwise ``y = loc(c) + scale(c) * x`` with an MLP-plus-linear-skip of the condition.

    The same map :class:`SplineCouplingStack` applies on its data side; NPE puts it on
    the data side of the ``"maf"`` and ``"flowjax_nsf"`` flows. It starts as the
    identity; NPE then sets it to the least-squares linear-Gaussian fit of ``theta`` on
    ``x`` (:func:`linear_gaussian_init`).
    """

    shape: tuple = eqx.field(static=True)
    cond_shape: tuple | None = eqx.field(static=True)
    affine: list
    affine_linear: jax.Array

    def __init__(self, dim: int, cond_dim: int | None, *, hidden: int = 50, key):
        rng = _numpy_rng(key)
        self.shape = (int(dim),)
        self.cond_shape = None if cond_dim is None else (int(cond_dim),)
        self.affine, self.affine_linear = _affine_init(rng, dim, cond_dim, hidden)

    def transform_and_log_det(self, x, condition=None):
        loc, scale = _affine_loc_scale(self.affine, self.affine_linear, condition, self.shape[0])
        return x * scale + loc, jnp.sum(jnp.log(scale))

    def inverse_and_log_det(self, y, condition=None):
        loc, scale = _affine_loc_scale(self.affine, self.affine_linear, condition, self.shape[0])
        return (y - loc) / scale, -jnp.sum(jnp.log(scale))


class LinearMap(AbstractBijection):
    """Fixed ``y = L x``, ``L`` lower triangular with a positive diagonal (not trained).

    Put on the data side of an NPE flow by ``NPE(linear_init="full")``: with ``L`` the
    Cholesky factor of the least-squares residual covariance of ``theta`` given ``x``,
    the flow starts as the full-covariance linear-Gaussian posterior, and the rest of
    the flow works in coordinates where that posterior is uncorrelated.
    """

    shape: tuple = eqx.field(static=True)
    cond_shape: None = eqx.field(static=True)
    tril: paramax.NonTrainable

    def __init__(self, tril):
        tril = np.asarray(tril, np.float32)
        if tril.ndim != 2 or tril.shape[0] != tril.shape[1]:
            raise ValueError(f"tril: expected a square matrix, got shape {tril.shape}")
        self.shape = (tril.shape[0],)
        self.cond_shape = None
        self.tril = paramax.NonTrainable(jnp.asarray(np.tril(tril)))

    def _log_det(self, tril):
        return jnp.sum(jnp.log(jnp.abs(jnp.diag(tril))))

    def transform_and_log_det(self, x, condition=None):
        tril = paramax.unwrap(self.tril)
        return tril @ x, self._log_det(tril)

    def inverse_and_log_det(self, y, condition=None):
        tril = paramax.unwrap(self.tril)
        return jax.scipy.linalg.solve_triangular(tril, y, lower=True), -self._log_det(tril)


class SplineCouplingStack(AbstractBijection):
    """``num_layers`` rational-quadratic spline coupling layers, scanned (a flowjax bijection).

    On the data side a conditional elementwise affine map (location and scale from a
    one-hidden-layer MLP of the condition) takes the shift and spread of the posterior;
    then layer ``l`` permutes its input, keeps the first ``dim // 2`` coordinates and
    moves the rest through monotone splines whose knots an MLP computes from the kept
    coordinates and the condition. Every last MLP layer starts at zero, so an
    untrained stack is the identity. ``inverse_and_log_det`` (data → base, used by
    ``log_prob``) evaluates the splines forwards; ``transform_and_log_det`` (base →
    data, used by ``sample``) inverts them analytically; both are one pass.

    Weights are drawn with NumPy from ``key`` (no XLA compilation at construction).

    ``box``: ``(low, high)`` of the prior's box in these (data-side) coordinates,
    ``(dim,)`` each, infinite where a coordinate is unbounded. With it, one more
    elementwise spline sits between the affine map and the coupling layers, in the
    affine map's coordinates (posterior widths around the posterior's location): on
    the part of ``[-tail_bound, tail_bound]`` inside the box, with its end derivative
    learnt where that end is the box's edge, so the density can rise or fall sharply
    at the edge, and the identity elsewhere; its knots come from an MLP of the
    condition. It maps the box onto itself, so what lies inside stays inside
    (``NPE(edge_spline=True)``).

    Kept over flowjax's ``coupling_flow`` with the same start (``"flowjax_nsf"`` in
    :func:`build_flow`), which matched its accuracy and calibration on two-moons, 10-D
    Gaussian-linear and hopf_node but took longer per gradient step (most in 10-D) and
    compiles when it is built, so fits and ``load_posterior`` wait longer
    (``benchmarks/RESULTS.md``, issue 16).

    References
    ----------
    .. [1] Durkan, C., Bekasov, A., Murray, I., Papamakarios, G. (2019). Neural spline
       flows. NeurIPS.
    .. [2] Dinh, L., Sohl-Dickstein, J., Bengio, S. (2017). Density estimation using
       Real NVP. ICLR.
    """

    shape: tuple = eqx.field(static=True)
    cond_shape: tuple | None = eqx.field(static=True)
    num_bins: int = eqx.field(static=True)
    tail_bound: float = eqx.field(static=True)
    split: int = eqx.field(static=True)
    permutations: jax.Array        # (L, dim) int32
    weights: list                  # [(L, in, out), ...]
    biases: list                   # [(L, out), ...]
    affine: list                   # [(W, b), ...]: condition -> (loc, scale) of the data side
    affine_linear: jax.Array       # (cond_dim, 2 dim): linear skip of that map
    box_low: paramax.NonTrainable | None = None    # (dim,): the box, finite (+-_UNBOUNDED where open)
    box_high: paramax.NonTrainable | None = None
    edge: list | None = None       # [(W, b), (W, b)]: condition -> the edge spline's knots

    def __init__(self, dim: int, cond_dim: int | None, *, num_layers: int = 5, hidden: int = 64,
                 depth: int = 2, num_bins: int = 8, tail_bound: float = 4.0, box=None, key):
        rng = _numpy_rng(key)
        self.shape = (int(dim),)
        self.cond_shape = None if cond_dim is None else (int(cond_dim),)
        self.num_bins = int(num_bins)
        self.tail_bound = float(tail_bound)
        self.split = dim // 2
        if dim == 2:  # alternate the coordinate that is transformed
            perms = np.array([[1, 0]] * num_layers)
        else:
            perms = np.stack([rng.permutation(dim) for _ in range(num_layers)]) if dim > 1 else \
                np.zeros((num_layers, 1), int)
        self.permutations = jnp.asarray(perms, jnp.int32)
        sizes = [self.split + (cond_dim or 0)] + [hidden] * depth + \
            [(dim - self.split) * (3 * num_bins - 1)]
        self.weights, self.biases = [], []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            w = _uniform_init(rng, fan_in, (num_layers, fan_in, fan_out))
            bias = _uniform_init(rng, fan_in, (num_layers, fan_out))
            self.weights.append(jnp.zeros_like(w) if last else w)
            self.biases.append(jnp.zeros_like(bias) if last else bias)
        # Conditional elementwise affine map on the data side: location and scale shifts
        # (the bulk of most posteriors' dependence on x) need no spline capacity.
        self.affine, self.affine_linear = _affine_init(rng, dim, cond_dim, hidden)
        if box is not None:
            low, high = (np.asarray(b, np.float64).reshape(-1) for b in box)
            if low.shape != (dim,) or high.shape != (dim,) or np.any(np.isnan(low)) or np.any(np.isnan(high)) \
                    or np.any(low >= high):
                raise ValueError(f"box: expected (low, high) of shape ({dim},) each with low < high, got "
                                 f"{low.tolist()} and {high.tolist()}")
            clip = lambda b: jnp.asarray(np.clip(b, -_UNBOUNDED, _UNBOUNDED), jnp.float32)  # noqa: E731
            self.box_low, self.box_high = paramax.NonTrainable(clip(low)), paramax.NonTrainable(clip(high))
            fan_in = cond_dim or 0
            w = _uniform_init(rng, fan_in, (fan_in, hidden))
            self.edge = [(w, _uniform_init(rng, fan_in, (hidden,))),
                         (jnp.zeros((hidden, dim * (3 * num_bins + 1))), jnp.zeros(dim * (3 * num_bins + 1)))]

    def _loc_scale(self, condition):
        return _affine_loc_scale(self.affine, self.affine_linear, condition, self.shape[0])

    def _edge_spline(self, z, condition, loc, scale, inverse):
        """The box-edge spline in the affine map's coordinates ``z``: ``(z', log|dz'/dz|)``."""
        if self.edge is None:
            return z, jnp.zeros((), z.dtype)
        low = (paramax.unwrap(self.box_low) - loc) / scale
        high = (paramax.unwrap(self.box_high) - loc) / scale
        b = self.tail_bound
        c = jnp.zeros(0) if condition is None else condition
        (w1, b1), (w2, b2) = self.edge
        raw = (jax.nn.relu(c @ w1 + b1) @ w2 + b2).reshape(self.shape[0], 3 * self.num_bins + 1)
        free = jnp.stack([low > -b, high < b], axis=-1)
        return _rq_spline(z, raw, jnp.maximum(low, -b), jnp.minimum(high, b), inverse, free=free)

    def _raw(self, layer, kept, condition):
        weights, biases = layer
        h = kept if condition is None else jnp.concatenate([kept, condition])
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = h @ w + b
            if i < len(weights) - 1:
                h = jax.nn.relu(h)
        return h.reshape(self.shape[0] - self.split, 3 * self.num_bins - 1)

    def inverse_and_log_det(self, y, condition=None):
        def step(carry, layer):
            u, log_det = carry
            perm, weights, biases = layer
            u = u[perm]
            kept, moved = u[: self.split], u[self.split:]
            raw = self._raw((weights, biases), kept, condition)
            moved, ld = _rq_spline(moved, raw, -self.tail_bound, self.tail_bound, inverse=False)
            return (jnp.concatenate([kept, moved]), log_det + ld), None

        loc, scale = self._loc_scale(condition)
        y, log_det_edge = self._edge_spline((y - loc) / scale, condition, loc, scale, inverse=False)
        (x, log_det), _ = jax.lax.scan(step, (y, log_det_edge - jnp.sum(jnp.log(scale))),
                                       (self.permutations, self.weights, self.biases))
        return x, log_det

    def transform_and_log_det(self, x, condition=None):
        def step(carry, layer):
            u, log_det = carry
            perm, weights, biases = layer
            kept, moved = u[: self.split], u[self.split:]
            raw = self._raw((weights, biases), kept, condition)
            moved, ld = _rq_spline(moved, raw, -self.tail_bound, self.tail_bound, inverse=True)
            u = jnp.concatenate([kept, moved])
            return (jnp.zeros_like(u).at[perm].set(u), log_det + ld), None

        (y, log_det), _ = jax.lax.scan(step, (x, jnp.zeros((), x.dtype)),
                                       (self.permutations, self.weights, self.biases),
                                       reverse=True)
        loc, scale = self._loc_scale(condition)
        y, log_det_edge = self._edge_spline(y, condition, loc, scale, inverse=True)
        return y * scale + loc, log_det + log_det_edge + jnp.sum(jnp.log(scale))


def linear_gaussian_init(flow, s_theta, cond, ridge: float = 1e-3):
    """Start ``flow``'s conditional affine map at the least-squares linear-Gaussian posterior.

    Fits ``s_theta ≈ A cond + b`` by ridge regression (penalty ``ridge * n``; the inputs
    are z-scored) and sets the affine map's linear skip to ``A``, its location bias to
    ``b`` and its scale to the residual standard deviations. With the rest of the flow
    at the identity the flow then starts as ``N(A x + b, diag(sd^2))``: exact for a
    linear-Gaussian model, and the best Gaussian with a linear mean for any other. The
    network then learns only what departs from that, which early stopping protects from
    overfitting (measured on 10-D Gaussian-linear: ``benchmarks/RESULTS.md``, section
    "Numbers moved out of docstrings").

    With a :class:`LinearMap` on the data side (``build_flow(full_covariance=True)``) it
    is set to the Cholesky factor ``L`` of the residuals' covariance and the affine map
    is fitted to ``L^-1 s_theta``: the flow then starts as ``N(A x + b, L L^T)``, the
    least-squares posterior with its correlations.

    ``flow``: from :func:`build_flow` (``"nsf"``, ``"flowjax_nsf"``, or ``"maf"`` with
    the affine map); other flows are returned unchanged. ``s_theta``: ``(n, dim)``;
    ``cond``: ``(n, cond_dim)``.
    """
    bij = flow.bijection
    s_theta = np.asarray(s_theta, np.float64)
    cond = np.asarray(cond, np.float64).reshape(len(s_theta), -1)
    if isinstance(bij, Chain) and isinstance(bij.bijections[-1], LinearMap):
        _, residual = _least_squares(s_theta, cond, ridge)
        tril = np.linalg.cholesky(residual.T @ residual / len(s_theta) + 1e-9 * np.eye(s_theta.shape[1]))
        inner = bij.bijections[:-1]
        inner = Transformed(flow.base_dist, inner[0] if len(inner) == 1 else Chain(inner))
        inner = linear_gaussian_init(inner, np.linalg.solve(tril, s_theta.T).T, cond, ridge)
        return Transformed(flow.base_dist, Chain([inner.bijection, LinearMap(tril)]))
    if isinstance(bij, SplineCouplingStack):
        where = lambda f: f.bijection  # noqa: E731
    elif isinstance(bij, Chain) and isinstance(bij.bijections[-1], ConditionalAffine):
        where = lambda f: f.bijection.bijections[-1]  # noqa: E731
    else:
        return flow
    holder = where(flow)
    dim = s_theta.shape[1]
    if holder.affine_linear.shape[0] != cond.shape[1]:
        return flow
    coef, residual = _least_squares(s_theta, cond, ridge)
    sd = np.std(residual, axis=0)
    linear = np.zeros(holder.affine_linear.shape)
    linear[:, :dim] = coef[:-1]
    w_last, b_last = holder.affine[-1]
    bias = np.asarray(b_last, np.float64).copy()
    bias[:dim] += coef[-1]
    bias[dim:] = _raw_scale(sd)
    new_affine = list(holder.affine[:-1]) + [(w_last, jnp.asarray(bias, jnp.float32))]
    return eqx.tree_at(lambda f: (where(f).affine, where(f).affine_linear), flow,
                       (new_affine, jnp.asarray(linear, jnp.float32)))


def _least_squares(s_theta, cond, ridge):
    """Ridge fit ``s_theta ≈ [cond, 1] coef`` (penalty ``ridge * n``, intercept free): ``(coef, residual)``."""
    n = len(s_theta)
    design = np.concatenate([cond, np.ones((n, 1))], axis=1)
    gram = design.T @ design + ridge * n * np.diag(np.r_[np.ones(cond.shape[1]), 0.0])
    coef = np.linalg.solve(gram, design.T @ s_theta)            # (cond_dim + 1, dim)
    return coef, s_theta - design @ coef


class NPEModel(eqx.Module):
    """The trained pieces of NPE: a conditional flow and an optional embedding net."""

    flow: eqx.Module
    embedding: Embedding | None

    def condition(self, x_std):
        """Conditioning vector for one standardised observation."""
        return x_std.reshape(-1) if self.embedding is None else self.embedding(x_std)


class MixtureFlow(eqx.Module):
    """An equal-weight mixture of ``size`` flows of one architecture (arrays stacked on a
    leading axis), with the two calls a posterior makes of a flow.

    ``condition`` carries one conditioning vector per member on its second-to-last
    axis, ``(..., size, c)``.
    """

    flows: eqx.Module
    size: int = eqx.field(static=True)

    def sample(self, key, sample_shape, condition):
        """``sample_shape = (n,)`` draws for one condition ``(size, c)``: ``ceil(n / size)`` from
        every member, shuffled, the first ``n`` kept (each draw from a member at random)."""
        (n,) = sample_shape
        per = -(-n // self.size)
        k_draw, k_perm = jax.random.split(key)
        draws = eqx.filter_vmap(lambda f, k, c: f.sample(k, (per,), condition=c))(
            self.flows, jax.random.split(k_draw, self.size), condition)
        draws = draws.reshape((self.size * per,) + draws.shape[2:])
        return jax.random.permutation(k_perm, draws)[:n]

    def log_prob(self, x, condition):
        """``log (1/size) sum_k q_k(x | c_k)``, ``condition (..., size, c)`` broadcast against ``x``."""
        lp = eqx.filter_vmap(lambda f, c: f.log_prob(x, c), in_axes=(eqx.if_array(0), -2))(self.flows, condition)
        return jax.scipy.special.logsumexp(lp, axis=0) - jnp.log(self.size)


class EnsembleNPEModel(eqx.Module):
    """``size`` trained :class:`NPEModel` s of one architecture, their arrays stacked; the
    posterior is their equal-weight mixture (``NPE(ensemble=size)``)."""

    members: NPEModel
    size: int = eqx.field(static=True)

    @classmethod
    def stack(cls, models) -> "EnsembleNPEModel":
        """Stack the unwrapped members (parametrisations applied, so stacking is plain)."""
        models = [paramax.unwrap(m) for m in models]
        arrays = [eqx.filter(m, eqx.is_array) for m in models]
        rest = eqx.filter(models[0], eqx.is_array, inverse=True)
        return cls(eqx.combine(jax.tree.map(lambda *a: jnp.stack(a), *arrays), rest), len(models))

    def condition(self, x_std):
        """Conditioning vectors ``(size, c)`` of one standardised observation."""
        return eqx.filter_vmap(lambda m: m.condition(x_std))(self.members)

    @property
    def flow(self) -> MixtureFlow:
        return MixtureFlow(self.members.flow, self.size)


@dataclasses.dataclass
class NPE:
    """Neural posterior estimation with a conditional normalizing flow.

    The defaults were chosen by measurement on the sbibm two-moons task at 10,000
    simulations against the exact posterior: modelling the box prior's parameters in
    their own coordinates (``theta_space="auto"``), two hidden layers per conditioner,
    10 bins, a moving average of the weights and the truncated loss
    (``truncation_fraction``) each brought the fit closer. The numbers (KL, C2ST,
    fit times, sbi on the same bank) are in ``benchmarks/RESULTS.md``, sections
    "NPE vs sbi vs flowjax" and "Numbers moved out of docstrings".

    Before training, the flow's conditional affine map is set to the least-squares
    linear-Gaussian posterior (``linear_init``, :func:`linear_gaussian_init`), so
    training learns only what departs from it; on 10-D Gaussian-linear this keeps
    ``"maf"`` from fitting the noise in the training rows (``benchmarks/RESULTS.md``,
    section "Numbers moved out of docstrings"). For near-Gaussian posteriors the affine
    ``"maf"`` generalises better from few simulations than ``"nsf"``.

    Parameters
    ----------
    density_estimator : {"auto", "nsf", "maf", "maf_rqs", "flowjax_nsf"}, default "auto"
        Rational-quadratic spline coupling flow (:class:`SplineCouplingStack`),
        flowjax's masked autoregressive affine flow, or its masked autoregressive
        spline flow; ``"flowjax_nsf"`` is flowjax's ``coupling_flow`` with its
        ``RationalQuadraticSpline`` and the same affine start (as accurate, slower to
        build and step: ``benchmarks/RESULTS.md``, "Spline flows"). ``"auto"``: ``"nsf"``, except ``"maf"`` for a bank with trials
        (``simulate_bank(..., trials=K)``), where the spline flow learnt the narrowing
        with the trial count inside its spline range but left wide identity tails
        (``benchmarks/RESULTS.md``).
    hidden : int, default 50
        Width of the conditioner networks.
    num_layers : int, default 5
        Flow layers.
    num_bins : int, default 10
        Spline bins (``nsf`` / ``maf_rqs``).
    tail_bound : float, default 3.0
        Splines act on ``[-tail_bound, tail_bound]`` of the standardised space
        (identity outside).
    nn_depth : int, default 2
        Hidden layers of each conditioner.
    embedding : bmsbi.embeddings.Embedding, optional
        Trained jointly with the flow on z-scored ``x``; its ``in_shape`` must be the
        bank's ``x`` shape.
    z_score_x : {"auto", "independent", "structured", "none"}, default "auto"
        ``independent``: per element of ``x``; ``structured``: per channel (last axis)
        for ``x`` of 2 or more axes, one scalar for 1-D ``x``; ``auto`` is
        ``independent`` without an embedding or with an ``MLPEmbedding``, else
        ``structured``.
    x_transform : {"auto", "none", "log"} or sequence of bool, default "auto"
        Which features of ``x`` the flow sees in log space (before z-scoring), decided
        at fit time from the bank (:class:`bmsbi.xtransform.XTransform`).
        ``"auto"``: the features whose bank values are all ``> 0`` and that span a
        factor of 10 or more on each side of their median (with a structured
        embedding: whole channels, pooled); ``"none"``: no feature (the behaviour
        before this option); ``"log"``: every feature (all must be positive); a
        boolean mask, one entry per feature (flat or of ``x``'s shape), chooses by
        hand. The posterior reports its choice as ``posterior.x_transform``, stores it
        in its file and applies it to every observation (a value ``<= 0`` in a
        log-space feature is a ``ValueError``). A linear z-score of such features
        leaves most simulations crowded in a sliver of the flow's input, and the
        posterior comes out much wider (``benchmarks/RESULTS.md``, "Observation
        transforms").
    learning_rate : float, default 2e-3
        Peak Adam learning rate.
    schedule : None, "cosine", "warmup_cosine", "onecycle", "plateau" or callable, default "warmup_cosine"
        Learning-rate schedule over all ``max_epochs`` (see :func:`bmsbi.engine.fit`).
    batch_size : int, default 256
    max_epochs : int or None, default None
        ``None`` sizes the run to about 5,000 optimiser steps (at least 30, at most
        1,000 epochs): 143 epochs for 10,000 simulations at the default batch size.
    patience : int or None, default 20
        Early stopping on the validation loss; the best epoch's weights are kept.
    validation_fraction : float, default 0.1
    clip_norm : float or None, default 5.0
    weight_decay : float, default 0.0
        Passed to :func:`bmsbi.engine.fit` with the settings above.
    ema_decay : float or None, default 0.995
        Validate and keep a moving average of the weights (Polyak averaging,
        :func:`bmsbi.engine.fit`); ``None`` keeps the raw weights of the best epoch.
    linear_init : bool or "full", default True
        Start the conditional affine map at the least-squares linear-Gaussian posterior
        (:func:`linear_gaussian_init`; without an embedding, for ``"nsf"`` and ``"maf"``).
        That start has a diagonal covariance. ``"full"`` adds a fixed lower-triangular
        map on the data side (:class:`LinearMap`) set to the Cholesky factor of the
        least-squares residual covariance, so the flow starts from the posterior's
        linear correlations instead of having to learn them; meant for strongly
        correlated posteriors (a correlated prior, parameters that trade off). Measured
        on a 10-D problem with a correlated Gaussian prior in ``benchmarks/RESULTS.md``,
        section "Joint priors".
    theta_space : {"auto", "unconstrained"}, default "auto"
        Coordinates of ``theta`` the flow models (z-scored). ``"unconstrained"``: every
        parameter through the prior's bijection to the real line (a logit for a
        Uniform). ``"auto"``: ``Uniform`` parameters keep their own coordinates and
        draws outside the prior's box are rejected (the posterior then divides its
        density by the accepted mass; :class:`bmsbi.posterior.DirectPosterior`); the
        other parameters go through the bijection. On two-moons the logit warps the
        thin crescents and piles draws along the box's edges, and ``"auto"`` fits
        closer (C2ST in ``benchmarks/RESULTS.md``, section "Numbers moved out of
        docstrings").
    truncation_fraction : float, default 0.25
        With draws rejected outside the prior's box (``"auto"`` and a ``Uniform``
        parameter), train ``-log q(theta | x) + Z(x)`` instead of ``-log q(theta | x)``,
        ``Z(x)`` the flow's mass inside the box. The true posterior minimises both, but
        the plain loss charges the flow at first order for every bit of mass it spills
        past an edge, mass the rejection step removes anyway; the flow then bends the
        density inside to keep its edges sharp, and the posterior, renormalised inside
        the box, misweights the parts the box cuts (measured on two-moons:
        ``benchmarks/RESULTS.md``, section "Truncated loss for box priors"). With ``Z`` the
        spill costs only at second order (``-log Z + Z - 1``). ``Z`` and its gradient
        are estimated from one flow draw for this fraction of each minibatch's rows
        (score-function gradient, ``grad Z = -E_q[1_outside grad log q]``); the
        validation loss then reads ``-log q + Z - 1``. ``0`` trains the plain likelihood.
    summary_noise : float, default 0.0
        Standard deviation of Gaussian noise added to the (z-scored) observations of
        every training minibatch, fresh each step, in units of each feature's spread in
        the bank. The estimator then learns the posterior given a noisier observation,
        a wider one; meant for recordings whose summaries lie off the simulations' joint
        range (a misspecified simulator). On real fMRI (``benchmarks/RESULTS.md``) it
        helped on one bank and hurt on another. Noise augmentation is among the remedies for
        misspecified neural SBI compared by Cannon et al. (2022). ``0`` (the default)
        trains on the simulations as they are; the posterior is then calibrated for
        data the simulator can produce.
    base_calibration : {"auto", "scale", "coverage", "truncated", "none"}, default "auto"
        ``"scale"``: after training, fit a per-coordinate scale of the flow's Gaussian
        base distribution by maximum likelihood on the validation rows (simulations
        no step trained on): ``tau_j^2 = mean(u_j^2)``, ``u`` the flow's latent of the
        held-out ``(theta, x)`` pairs. A flow that fits its training rows too closely
        maps held-out pairs further out than a standard normal (``tau > 1``) and is
        overconfident; the scaled base widens it by what the held-out rows show (or
        narrows it, ``tau < 1``), a post-hoc temperature of the kind used to calibrate
        classifiers. It costs one pass over the validation rows and nothing when
        sampling. The fitted scale is kept in the posterior
        (``posterior.config["base_scale"]``) and in its file. Needs
        ``validation_fraction > 0``. ``"auto"`` (the default): ``"truncated"`` (below;
        ``"scale"`` for a prior without box-bounded parameters) when there is a
        validation split, the bank has no trials (a scale fitted on all K trials would
        not hold for fewer) and ``summary_noise`` is 0 (the clean validation rows would
        undo the widening the noise is for), else ``"none"``. Why — HPD coverage, SBC
        and held-out log score on the shipped tasks against ``"scale"``, ``"none"`` and
        the ``sbi`` package — is measured in ``benchmarks/RESULTS.md``, sections
        "Calibration study" and "The base scale fitted on the posterior cut to the
        prior's box". With ``ensemble > 1``, ``"auto"`` is ``"none"``, and
        ``"scale"`` holds one set of validation rows out of every member's training and
        fits one scale shared by the members by maximum likelihood of their mixture on
        those rows (:func:`fitted_mixture_scale`): the ensemble's width set by held-out
        data instead of by its members' spread alone. ``"coverage"`` (one network
        only): the maximum-likelihood scale times one pooled factor (0.8 to 1.6) chosen
        so that the HPD expected coverage on the validation rows lies closest to the
        diagonal (:func:`coverage_fitted_factor`; a few seconds more per fit). It
        targets joint HPD coverage, which the likelihood does not, and can widen the
        marginals past calibration: on the shipped tasks it brought HPD coverage within
        the band everywhere but made SBC fail on two of four (``benchmarks/RESULTS.md``,
        "Coverage-fitted base scale"), so it is an option, not the default.
        ``"truncated"`` (one network): the per-coordinate scale fitted by maximum
        likelihood of the flow *cut to the prior's box* — the density the posterior
        samples and evaluates — instead of the untruncated flow
        (:func:`truncated_base_scale`; a few seconds more per fit). Where a posterior
        presses on a bound, the held-out truths' latents sit on the inner side of the
        flow's spread only, and the untruncated estimate narrows that coordinate; the
        cut likelihood does not. Without box-bounded parameters it is ``"scale"``.
    ensemble : int, default 1
        Train this many networks on the same bank from different random starts (and
        minibatch orders; the compiled training epoch is reused) and use their
        equal-weight mixture as the posterior — the remedy for overconfident neural
        posteriors recommended by Hermans et al. (2022). Costs ``ensemble`` times the
        training; sampling draws ``num_samples / ensemble`` from every member in one
        vectorised call, and ``log_prob`` evaluates every member. Measured in
        ``benchmarks/RESULTS.md``, section "Calibration study".
    edge_spline : bool, default False
        For posteriors that press against a ``Uniform`` prior's bounds: one more
        learnt elementwise spline in the ``"nsf"`` flow, between its affine map and its
        coupling layers, whose ends sit on the prior's box in units of the posterior's
        width, so the density can stay high up to a bound and stop there instead of
        tapering across it (:class:`SplineCouplingStack`, ``box``). The box is stored
        in the posterior (``config["edge_box"]``). Needs ``"nsf"``, ``theta_space="auto"``
        and ``linear_init`` ``True`` or ``False``. Measured
        in ``benchmarks/RESULTS.md``, section "A box-edge spline".

    References
    ----------
    Cannon, P., Ward, D., Schmon, S. M. (2022). Investigating the impact of model
    misspecification in neural simulation-based inference. arXiv:2209.01845.
    Hermans, J., Delaunoy, A., Rozet, F., Wehenkel, A., Begy, V., Louppe, G. (2022). A
    trust crisis in simulation-based inference? Your posterior approximations can be
    unfaithful. TMLR.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, bmsbi
    >>> prior = bmsbi.Prior.uniform([-1., -1.], [1., 1.])
    >>> theta = prior.sample(jax.random.key(0), 2000)
    >>> x = theta + 0.1 * jax.random.normal(jax.random.key(1), theta.shape)
    >>> post = bmsbi.NPE(max_epochs=20).fit(bmsbi.Bank(theta, x), prior=prior,
    ...                                     key=jax.random.key(2), progress=False)
    >>> post.sample(jax.random.key(3), jnp.zeros(2), 100).shape
    (100, 2)

    Observations that span orders of magnitude are modelled in log space:

    >>> rates = jnp.exp(3.0 * theta + 0.1 * jax.random.normal(jax.random.key(4), theta.shape))
    >>> post = bmsbi.NPE(max_epochs=20).fit(bmsbi.Bank(theta, rates), prior=prior,
    ...                                     key=jax.random.key(2), progress=False)
    >>> post.x_transform
    XTransform(log features [0, 1] of 2, x_shape=(2,), rule='auto')
    >>> bmsbi.NPE(x_transform=[True, False]).x_transform  # by hand: log for the first only
    (True, False)
    """

    density_estimator: str = "auto"
    hidden: int = 50
    num_layers: int = 5
    num_bins: int = 10
    tail_bound: float = 3.0
    nn_depth: int = 2
    embedding: Embedding | None = None
    z_score_x: str = "auto"
    learning_rate: float = 2e-3
    schedule: str | None = "warmup_cosine"
    batch_size: int = 256
    max_epochs: int | None = None
    patience: int | None = 20
    validation_fraction: float = 0.1
    clip_norm: float | None = 5.0
    weight_decay: float = 0.0
    linear_init: bool | str = True
    theta_space: str = "auto"
    ema_decay: float | None = 0.995
    truncation_fraction: float = 0.25
    summary_noise: float = 0.0
    x_transform: str | tuple = "auto"
    base_calibration: str = "auto"
    ensemble: int = 1
    edge_spline: bool = False

    def __post_init__(self):
        self.x_transform = check_x_transform(self.x_transform)
        if self.density_estimator not in ("auto", *_ESTIMATORS):
            raise ValueError(f"density_estimator: expected 'auto' or one of {_ESTIMATORS}, got "
                             f"{self.density_estimator!r}")
        for name in ("hidden", "num_layers", "num_bins", "nn_depth", "batch_size", "max_epochs"):
            value = getattr(self, name)
            if name == "max_epochs" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        check_training_settings(self)
        if self.embedding is not None and not isinstance(self.embedding, Embedding):
            raise ValueError(
                "embedding: expected a bmsbi.embeddings.Embedding (e.g. CNN1DEmbedding(...)), "
                f"got {type(self.embedding).__name__}")
        if not (isinstance(self.linear_init, (bool, np.bool_)) or self.linear_init == "full"):
            raise ValueError(f"linear_init: expected True, False or 'full', got {self.linear_init!r}")
        if self.theta_space not in THETA_SPACES:
            raise ValueError(f"theta_space: expected one of {THETA_SPACES}, got {self.theta_space!r}")
        f = self.truncation_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
            raise ValueError(f"truncation_fraction: expected a float in [0, 1], got {f!r}")
        f = self.summary_noise
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < math.inf:
            raise ValueError(f"summary_noise: expected a float >= 0, got {f!r}")
        if self.base_calibration not in ("auto", "scale", "coverage", "truncated", "none"):
            raise ValueError(f"base_calibration: expected 'auto', 'scale', 'coverage', 'truncated' or 'none', got "
                             f"{self.base_calibration!r}")
        if isinstance(self.ensemble, bool) or not isinstance(self.ensemble, (int, np.integer)) \
                or not 1 <= self.ensemble <= 100:
            raise ValueError(f"ensemble: expected an int in [1, 100], got {self.ensemble!r}")
        if self.base_calibration == "coverage" and self.ensemble > 1:
            raise ValueError("base_calibration: 'coverage' calibrates one network (ensemble=1); for an ensemble "
                             f"use 'scale' or 'auto', got ensemble={self.ensemble}")
        if self.base_calibration in ("scale", "coverage") and not self.validation_fraction > 0:
            raise ValueError(f"base_calibration: {self.base_calibration!r} fits on the validation rows and "
                             f"needs validation_fraction > 0, got {self.validation_fraction!r}")
        if not isinstance(self.edge_spline, (bool, np.bool_)):
            raise ValueError(f"edge_spline: expected True or False, got {self.edge_spline!r}")
        if self.edge_spline and (self.density_estimator not in ("auto", "nsf") or self.linear_init == "full"
                                 or self.theta_space == "unconstrained"):
            raise ValueError(f"edge_spline: the box-edge spline belongs to the 'nsf' flow with box parameters in "
                             f"their own coordinates and an axis-aligned start; got density_estimator="
                             f"{self.density_estimator!r}, linear_init={self.linear_init!r}, theta_space="
                             f"{self.theta_space!r}")
        if self.z_score_x not in ("auto", "independent", "structured", "none"):
            raise ValueError(f"z_score_x: expected 'auto', 'independent', 'structured' or 'none', "
                             f"got {self.z_score_x!r}")

    def flow_family(self, trials: int | None = None) -> str:
        """The flow ``density_estimator`` names: ``"auto"`` is ``"maf"`` for a bank with trials, else ``"nsf"``."""
        if self.density_estimator != "auto":
            return self.density_estimator
        return "maf" if trials else "nsf"

    def config(self, trials: int | None = None) -> dict:
        """JSON description of the architecture (what a saved posterior rebuilds)."""
        family = self.flow_family(trials)
        return {"estimator": "NPE", "density_estimator": family,
                "hidden": int(self.hidden), "num_layers": int(self.num_layers),
                "num_bins": int(self.num_bins), "tail_bound": float(self.tail_bound),
                "nn_depth": int(self.nn_depth), "z_score_x": self.z_score_x,
                "theta_space": self.theta_space,
                "embedding": None if self.embedding is None else self.embedding.config(),
                **({"conditional_affine": True} if family == "maf" else {}),
                **({"full_covariance": True} if self.linear_init == "full" else {}),
                **({"ensemble": int(self.ensemble)} if self.ensemble > 1 else {}),
                **({"edge_spline": True} if self.edge_spline else {})}

    def training_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "batch_size": self.batch_size,
                "max_epochs": self.max_epochs, "patience": self.patience,
                "validation_fraction": self.validation_fraction, "clip_norm": self.clip_norm,
                "weight_decay": self.weight_decay, "schedule": self.schedule,
                "linear_init": self.linear_init, "ema_decay": self.ema_decay,
                "truncation_fraction": self.truncation_fraction,
                "summary_noise": self.summary_noise, "base_calibration": self.base_calibration,
                "ensemble": int(self.ensemble)}

    def fit(self, bank, *, prior, key, progress: bool = True, summary=None,
            recording_shape=None, init: DirectPosterior | None = None,
            validation_rows=None) -> DirectPosterior:
        """Train on ``bank`` (a :class:`bmsbi.Bank`) and return the amortized posterior.

        ``summary`` (a :class:`bmsbi.summaries.Summary`) and ``recording_shape``
        ``(time, regions)`` describe how the bank's ``x`` was computed from raw
        recordings; a bank from :meth:`simulators.Task.bank` records both in its
        ``meta``, which is used when they are not given. The posterior stores them, so
        ``sample``/``infer`` accept raw recordings even after
        :func:`bmsbi.load_posterior` in a new process. It also stores an
        out-of-distribution reference built from the bank (:mod:`bmsbi.ood`).

        ``init`` (a warm start) is a posterior from an earlier ``NPE.fit`` with this
        architecture (:meth:`config`), prior and ``x`` shape, also one read back with
        :func:`bmsbi.load_posterior`: training then starts from its trained weights
        (its base calibration, if any, taken off) instead of fresh ones, and keeps its
        standardisation of ``theta`` and ``x`` and its ``x_transform`` (so the weights
        mean what they meant), with no ``linear_init``; the starting weights are
        validated too, and kept if no epoch beats them (``keep_start``). It is what
        :class:`bmsbi.SequentialNPE` uses between rounds with ``warm_start=True``. Flows with
        ``paramax.Parameterize`` leaves (``"maf"``, ``"maf_rqs"``) cannot be warm
        started: their saved weights are not the trained ones.

        ``validation_rows`` (indices into ``bank``) are the rows held out for validation
        (early stopping and ``base_calibration``) instead of a random
        ``validation_fraction`` of them; with a warm start, rows the earlier fit trained
        on should stay out of them, or the validation loss reads too low.

        Raises
        ------
        ValueError
            ``bank`` holds non-finite rows, its ``theta`` dimension differs from the
            prior's, or ``theta`` lies outside the prior's support; ``init`` that is not
            such a posterior; ``validation_rows`` that are not distinct row indices
            leaving rows to train on.
        """
        key = as_key(key)
        theta, x, prior = check_bank_prior(bank, prior)
        trials = getattr(bank, "trials", None)
        x_shape = tuple(x.shape[2:] if trials else x.shape[1:])
        if self.embedding is not None and tuple(self.embedding.in_shape) != x_shape:
            raise ValueError(
                f"embedding: in_shape {tuple(self.embedding.in_shape)} differs from the bank's x "
                f"shape {x_shape}{' (one trial)' if trials else ''}; build the embedding with "
                f"in_shape={x_shape}")

        identity = identity_mask(prior, self.theta_space)  # these keep their own coordinates
        z = np.asarray(prior.jitted("to_unconstrained", keep=identity)(theta),
                       dtype=np.float64)
        mode = self._z_mode(x_shape)
        if init is not None:
            self._check_init(init, prior, x_shape, trials)
            x_transform = init.x_transform
            stats = {k: np.asarray(v, np.float64) for k, v in init.stats.items()}
            x_raw, x = x, x_transform.apply(x)
        else:
            x_transform = XTransform.choose(self.x_transform, x.reshape((-1,) + x_shape),
                                            per_channel=mode == "structured")
            x_raw, x = x, x_transform.apply(x)
            stats = standardisation(z, x.reshape((-1,) + x_shape), mode)
        s_theta = ((z - stats["theta_mean"]) / stats["theta_std"]).astype(np.float32)
        x_std = ((x - stats["x_mean"]) / stats["x_std"]).astype(np.float32)

        config = self.config(trials)
        members = []
        shared_scale = self.ensemble > 1 and self.base_calibration == "scale"
        if shared_scale and validation_rows is None:  # one held-out set for every member
            n_val = int(round(self.validation_fraction * len(theta)))
            validation_rows = np.asarray(jax.random.permutation(jax.random.fold_in(key, 999), len(theta)))[:n_val]
        for k in range(self.ensemble):  # member 0 uses the key as a single network does
            member_key = key if k == 0 else jax.random.fold_in(key, 1000 + k)
            model, member_history = self._fit_network(member_key, config, prior, identity, stats, s_theta, x_std,
                                                      x_shape, trials, len(theta), progress, init, validation_rows)
            members.append(model)
            if k == 0:  # the posterior reports member 0's history
                history = member_history
            if progress and self.ensemble > 1:
                print(f"NPE ensemble: member {k + 1} of {self.ensemble} trained ({member_history.epochs} epochs)",
                      file=sys.stderr, flush=True)
        if shared_scale:
            rows = _check_validation_rows(validation_rows, len(theta))
            scale = fitted_mixture_scale(members, s_theta[rows], x_std[rows])
            members = [with_base_scale(m, scale) for m in members]
            config["base_scale"] = [float(v) for v in scale]
        model = members[0] if self.ensemble == 1 else EnsembleNPEModel.stack(members)
        stats = {k: np.asarray(v, np.float32) for k, v in stats.items()}
        post = DirectPosterior(model, prior=prior, x_shape=x_shape, stats=stats,
                               config=config, history=history,
                               training=self.training_config(), x_transform=x_transform)
        return post.attach_training_data(x_raw[:, 0] if trials else x_raw, summary=summary,  # one trial per simulation
                                 recording_shape=recording_shape, meta=getattr(bank, "meta", None))

    def _fit_network(self, key, config, prior, identity, stats, s_theta, x_std, x_shape, trials, n, progress,
                     init=None, validation_rows=None):
        """One network trained by the engine: ``(model, history)``; may write ``config["base_scale"]``."""
        k_flow, k_fit = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
        embedding = self.embedding
        if trials:  # a permutation-invariant embedding of 1..K trials (bmsbi.Trials)
            embedding = TrialEmbedding((trials, *x_shape), per_trial=self.embedding,
                                       key=jax.random.fold_in(key, 2))
            config.update(embedding=embedding.config(), trials=int(trials))
        cond_dim = math.prod(x_shape) if embedding is None else embedding.out_dim
        edge_box = None
        if self.edge_spline and identity.any():
            if config["density_estimator"] != "nsf":
                raise ValueError(f"edge_spline: the box-edge spline belongs to the 'nsf' flow; a bank with "
                                 f"trials gets {config['density_estimator']!r} (pass density_estimator='nsf')")
            edge_box = support_box(prior, identity, stats)
        flow = build_flow(config["density_estimator"], prior.unconstrained_dim, cond_dim, hidden=self.hidden,
                          num_layers=self.num_layers, num_bins=self.num_bins,
                          tail_bound=self.tail_bound, nn_depth=self.nn_depth, key=k_flow,
                          conditional_affine=True, full_covariance=bool(config.get("full_covariance")),
                          box=edge_box)
        if edge_box is not None:  # as the stack keeps it: open sides finite, so the file holds no infinities
            stack = flow.bijection
            config["edge_box"] = {side: np.asarray(paramax.unwrap(b), np.float64).tolist()
                                  for side, b in (("low", stack.box_low), ("high", stack.box_high))}
        model = NPEModel(flow, embedding)
        if init is not None:
            model = warm_start_model(model, init)
        elif self.linear_init and embedding is None:
            model = NPEModel(linear_gaussian_init(flow, s_theta, x_std.reshape(len(x_std), -1)), embedding)

        loss = functools.partial(_nll, noise=float(self.summary_noise), subsets=bool(trials))
        box = None
        if self.truncation_fraction > 0 and identity.any():
            box = support_box(prior, identity, stats)
            loss = functools.partial(_nll, fraction=float(self.truncation_fraction),
                                     noise=float(self.summary_noise), subsets=bool(trials))
        cfg = self.fit_config(n)
        if init is not None:
            cfg = cfg.replace(keep_start=True)
        if validation_rows is None:
            result = engine.fit(model, loss, (s_theta, x_std), key=k_fit, static=box,
                                config=cfg, progress=progress, desc="NPE")
            val_rows = result.validation_rows
        else:
            val_rows = _check_validation_rows(validation_rows, n)
            train_rows = np.setdiff1d(np.arange(n), val_rows)
            result = engine.fit(model, loss, (s_theta[train_rows], x_std[train_rows]), key=k_fit,
                                static=box, config=cfg,
                                validation_data=(s_theta[val_rows], x_std[val_rows]) if len(val_rows) else None,
                                progress=progress, desc="NPE")
            val_rows = val_rows if len(val_rows) else None
        model, history = result.params, result.history
        # "auto" leaves alone what the clean validation rows cannot judge: a posterior for
        # noisier observations (summary_noise) or for 1..K trials; an ensemble is widened
        # by its members' spread.
        calibrate = self.ensemble == 1 and (self.base_calibration in ("scale", "coverage", "truncated") or (
            self.base_calibration == "auto" and not trials and not self.summary_noise > 0))
        if calibrate and val_rows is not None:
            if self.base_calibration in ("auto", "truncated") and identity.any():
                scale = truncated_base_scale(model, s_theta[val_rows], x_std[val_rows],
                                             support_box(prior, identity, stats), key=jax.random.fold_in(key, 3))
            else:
                scale = fitted_base_scale(model, s_theta[val_rows], x_std[val_rows])
            if self.base_calibration == "coverage":
                factor, _ = coverage_fitted_factor(model, scale, s_theta[val_rows], x_std[val_rows], prior=prior,
                                                   identity=identity, stats=stats)
                scale = factor * scale
            model = with_base_scale(model, scale)
            config["base_scale"] = [float(v) for v in scale]
        return model, history

    def _check_init(self, init, prior, x_shape, trials):
        if not isinstance(init, DirectPosterior) or init.config.get("estimator") != "NPE":
            raise ValueError(f"init: expected a posterior from NPE.fit to start from, got {type(init).__name__}")
        ours = self.config(trials)
        theirs = {k: v for k, v in init.config.items() if k not in ("base_scale", "edge_box")}
        if theirs != ours:
            differs = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            raise ValueError(f"init: its architecture differs from this NPE's (in {differs}); a warm start "
                             f"needs the same settings")
        if init.prior != prior or tuple(init.x_shape) != tuple(x_shape):
            raise ValueError(f"init: fitted for another prior or x shape ({init.x_shape}); expected "
                             f"{prior!r} and x shape {tuple(x_shape)}")

    def fit_config(self, num_simulations: int) -> engine.FitConfig:
        """The engine's :class:`bmsbi.engine.FitConfig` for a bank of ``num_simulations`` rows."""
        return engine.FitConfig.from_settings(self, max_epochs=self.epochs_for(num_simulations))

    def epochs_for(self, num_simulations: int) -> int:
        """Epochs a fit on ``num_simulations`` rows runs at most (resolves ``max_epochs=None``)."""
        if self.max_epochs is not None:
            return int(self.max_epochs)
        n_train = num_simulations - int(round(self.validation_fraction * num_simulations))
        steps = max(n_train // min(self.batch_size, max(n_train, 1)), 1)
        return int(min(max(math.ceil(_TARGET_STEPS / steps), 30), 1000))

    def _z_mode(self, x_shape):
        mode = self.z_score_x
        if mode == "auto":
            plain = self.embedding is None or type(self.embedding).__name__ == "MLPEmbedding"
            mode = "independent" if plain else "structured"
        return mode


def standardisation(z, x, mode):
    """Training-set means and standard deviations (float64; a zero spread becomes 1)."""
    def stats(a, axis):
        mean, sd = a.mean(axis=axis, keepdims=True), a.std(axis=axis, keepdims=True)
        return mean, np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mean)), sd, 1.0)

    x = np.asarray(x, np.float64)
    if mode == "none":
        x_mean, x_std = np.zeros((1,) + x.shape[1:]), np.ones((1,) + x.shape[1:])
    elif mode == "independent":
        x_mean, x_std = stats(x, 0)
    elif mode == "structured":  # one scalar for 1-D samples, per channel (last axis) else
        x_mean, x_std = stats(x, tuple(range(x.ndim)) if x.ndim == 2 else tuple(range(x.ndim - 1)))
    else:
        raise ValueError(f"z_score_x: unknown mode {mode!r}")
    z_mean, z_std = stats(np.asarray(z, np.float64), 0)
    full = lambda a: np.ascontiguousarray(np.broadcast_to(a[0], x.shape[1:]))  # noqa: E731
    return {"theta_mean": z_mean[0], "theta_std": z_std[0], "x_mean": full(x_mean),
            "x_std": full(x_std)}


def random_trial_subsets(key, x):
    """Each row of ``x (n, K, ...)`` keeps a random subset of ``k ~ U{1..K}`` trials; the rest NaN.

    The subset size is drawn per row, the subset uniformly among those of that size, so
    a trial embedding learns the posterior given any number of trials up to ``K``.
    """
    n, k_max = x.shape[:2]
    k_size, k_pick = jax.random.split(key)
    size = jax.random.randint(k_size, (n, 1), 1, k_max + 1)
    rank = jnp.argsort(jnp.argsort(jax.random.uniform(k_pick, (n, k_max)), axis=1), axis=1)
    keep = (rank < size).reshape((n, k_max) + (1,) * (x.ndim - 2))
    return jnp.where(keep, x, jnp.nan)


def support_box(prior, identity, stats) -> tuple:
    """``(low, high)`` of the prior's box in the flow's standardised coordinates, ``(unconstrained_dim,)`` float32.

    Only the parameters the flow models in their own coordinates (``identity``) are
    bounded; the others, mapped through the prior's bijection, are inside for any value.
    """
    lo, hi = prior.bounds()
    box_lo = np.full(prior.unconstrained_dim, -np.inf)
    box_hi = np.full(prior.unconstrained_dim, np.inf)
    cols = prior.unconstrained_columns()
    for i in np.flatnonzero(identity):
        j = cols[i]
        mean, sd = float(stats["theta_mean"][j]), float(stats["theta_std"][j])
        box_lo[j], box_hi[j] = (lo[i] - mean) / sd, (hi[i] - mean) / sd
    return box_lo.astype(np.float32), box_hi.astype(np.float32)


def _nll(model, box, batch, key, fraction=0.0, noise=0.0, subsets=False):
    """NPE's minibatch loss: the negative log-likelihood of ``theta`` under the flow.

    With ``noise > 0`` the standardised observations get fresh Gaussian noise of that
    standard deviation first (``NPE(summary_noise=...)``). With ``subsets`` (a bank with
    trials) each row keeps a random subset of its trials (:func:`random_trial_subsets`).

    With ``box`` (the prior's support in the standardised flow coordinates,
    :func:`support_box`; the engine's ``static``) and ``fraction > 0`` it is the truncated objective
    ``-log q(theta | x) + Z(x) - 1``, ``Z(x)`` the flow's mass inside the support: the
    first ``ceil(fraction * n)`` rows each get one flow draw, ``1 - Z`` is estimated by
    the share of those draws outside, and the gradient of ``Z`` by the score function,
    ``grad Z = -E_q[1_outside grad log q]`` (draws held fixed).
    """
    s_theta, x_std = batch
    model = paramax.unwrap(model)
    if noise > 0:
        key, k_noise = jax.random.split(key)
        x_std = x_std + noise * jax.random.normal(k_noise, x_std.shape, x_std.dtype)
    if subsets:
        key, k_sub = jax.random.split(key)
        x_std = random_trial_subsets(k_sub, x_std)
    cond = jax.vmap(model.condition)(x_std)
    n = s_theta.shape[0]
    m = min(n, math.ceil(fraction * n)) if box is not None else 0
    if m == 0:
        return -jnp.mean(model.flow.log_prob(s_theta, cond))
    c_sub = cond[:m]
    draws = jax.lax.stop_gradient(
        model.flow.sample(key, condition=jax.lax.stop_gradient(c_sub)))
    inside = jnp.all((draws >= box[0]) & (draws <= box[1]), axis=-1)
    outside = 1.0 - inside.astype(jnp.float32)
    lp = model.flow.log_prob(jnp.concatenate([s_theta, draws]), jnp.concatenate([cond, c_sub]))
    lq = lp[n:]
    return -jnp.mean(lp[:n]) - jnp.sum(outside * (1.0 + lq - jax.lax.stop_gradient(lq))) / m


def fitted_base_scale(model: NPEModel, s_theta, x_std) -> np.ndarray:
    """Maximum-likelihood scale ``(d,)`` of the flow's Gaussian base on held-out pairs.

    ``s_theta``/``x_std`` are standardised as in training; the latent ``u`` of each
    pair is the flow's inverse, and ``sqrt(mean(u**2))`` per coordinate maximises the
    held-out likelihood of a base ``N(0, diag(scale**2))`` (the bijection unchanged).
    """
    u, _ = _latents(model, jnp.asarray(s_theta), jnp.asarray(x_std))
    return np.sqrt(np.mean(np.square(np.asarray(u, np.float64)), axis=0))


def truncated_base_scale(model: NPEModel, s_theta, x_std, box, *, key=None,
                         num_draws: int = 128, max_iter: int = 30, tol: float = 1e-3) -> np.ndarray:
    """Maximum-likelihood base scale ``(d,)`` of the flow *cut to the prior's box*, on held-out pairs.

    The posterior is the flow restricted to ``box`` (``(low, high)`` in the standardised
    flow coordinates, :func:`support_box`) and renormalised by its mass inside,
    ``Z_tau(x)``. With base ``N(0, diag(tau**2))`` the held-out log-likelihood is
    ``sum_i [-sum_j (log tau_j + u_ij**2 / (2 tau_j**2)) - log Z_tau(x_i)]`` and its
    gradient vanishes where ``tau_j**2 = sum_i u_ij**2 / sum_i E_i[z_j**2]``, ``E_i`` the
    mean over base draws ``z ~ N(0, I)`` whose image ``flow(tau * z | x_i)`` lies inside the
    box (``d log Z / d tau_j = E_i[z_j**2 - 1] / tau_j``). Solved by that fixed-point
    iteration from :func:`fitted_base_scale`'s answer (exact when nothing leaks out of the
    box), ``num_draws`` draws per pair shared across iterations, until
    the relative change is below ``tol``. A flow piled against a bound has truths whose
    latents sit on the inner side only, and the untruncated estimate then narrows it.
    """
    s_theta, x_std = jnp.asarray(s_theta), jnp.asarray(x_std)
    u, _ = _latents(model, s_theta, x_std)
    u2 = np.sum(np.square(np.asarray(u, np.float64)), axis=0)
    tau = np.sqrt(u2 / len(u))  # fitted_base_scale's estimate, from the latents already at hand
    key = jax.random.key(0) if key is None else key
    z0 = jax.random.normal(key, (len(s_theta), int(num_draws), u.shape[1]))
    lo, hi = (jnp.asarray(b, jnp.float32) for b in box)
    for _ in range(int(max_iter)):
        m2 = np.asarray(_inside_second_moment(model, jnp.asarray(tau, jnp.float32), x_std, z0, lo, hi), np.float64)
        new = np.sqrt(u2 / np.sum(m2, axis=0))
        done = np.max(np.abs(new / tau - 1)) < tol
        tau = new
        if done:
            break
    return tau


@eqx.filter_jit
def _inside_second_moment(model, tau, x_std, z0, lo, hi):
    """Per pair, the mean of ``z**2`` over the base draws ``z0`` whose image lies in ``[lo, hi]`` ``(n, d)``.

    Estimated as that mean minus the mean over all the pair's draws plus 1 (its exact
    value without the box), so a pair with nothing cut gets exactly 1 and one with no
    draw inside gets 1 too.
    """
    model = paramax.unwrap(model)
    bij = model.flow.bijection

    def row(z, x):
        cond = model.condition(x)
        s = jax.vmap(lambda v: bij.transform(v, cond))(z * tau)
        ok = jnp.all((s >= lo) & (s <= hi), axis=-1).astype(z.dtype)
        count = jnp.sum(ok)
        inside = jnp.sum(ok[:, None] * z ** 2, axis=0) / jnp.maximum(count, 1.0)
        return jnp.where(count > 0, inside - jnp.mean(z ** 2, axis=0), 0.0) + 1.0

    return jax.lax.map(lambda a: row(*a), (z0, x_std))


def fitted_mixture_scale(members, s_theta, x_std, *, max_iter: int = 500, tol: float = 1e-10) -> np.ndarray:
    """Maximum-likelihood base scale ``(d,)`` shared by an ensemble's members, on held-out pairs.

    The mixture's density with every member's base ``N(0, diag(tau**2))`` is
    ``(1/K) sum_k N(u_k / tau; 0, I) / prod(tau) |det J_k|``, ``u_k`` member ``k``'s
    latent. Maximised by EM: with ``r_ik`` the members' responsibilities for pair ``i``
    under the current ``tau``, ``tau_j^2 = mean_i sum_k r_ik u_ikj^2``, until the relative
    change is below ``tol``. With one member it is :func:`fitted_base_scale`'s closed form.
    """
    lat = [_latents(m, jnp.asarray(s_theta), jnp.asarray(x_std)) for m in members]
    u2 = np.stack([np.square(np.asarray(a, np.float64)) for a, _ in lat], axis=1)   # (n, K, d)
    ld = np.stack([np.asarray(b, np.float64) for _, b in lat], axis=1)              # (n, K)
    tau2 = np.ones(u2.shape[-1])
    for _ in range(max_iter):
        terms = ld - 0.5 * np.sum(u2 / tau2 + np.log(tau2), axis=-1)
        resp = np.exp(terms - terms.max(axis=1, keepdims=True))
        resp /= resp.sum(axis=1, keepdims=True)
        new = np.mean(np.sum(resp[..., None] * u2, axis=1), axis=0)
        done = np.max(np.abs(new / tau2 - 1)) < tol
        tau2 = new
        if done:
            break
    return np.sqrt(tau2)


# Pooled widening factors tried by base_calibration="coverage" (times the ML scale), the
# credibility levels it matches, and the flow draws per validation row that rank its truth.
_COVERAGE_FACTORS = np.round(np.arange(0.80, 1.6001, 0.025), 3)
_COVERAGE_LEVELS = np.round(np.arange(0.05, 0.951, 0.05), 2)
_COVERAGE_DRAWS = 256


def coverage_fitted_factor(model: NPEModel, scale, s_theta, x_std, *, prior, identity, stats,
                           factors=None, num_draws: int = _COVERAGE_DRAWS) -> tuple[float, np.ndarray]:
    """The factor ``c`` whose base scale ``c * scale`` best matches HPD coverage on held-out pairs.

    For each validation pair the truth's HPD rank is the fraction of the posterior's own
    draws (``num_draws``, inside the prior's support) with a higher density in the
    parameters' own coordinates; the HPD expected coverage at level ``a`` is the fraction
    of pairs ranked below ``a``. Returns the factor among ``factors`` (default 0.8 to 1.6
    in steps of 0.025) with the smallest largest deviation from the diagonal over the
    levels 0.05..0.95, and those deviations per factor ``(len(factors),)``. The draws'
    random numbers are shared across factors, so the criterion is smooth in ``c``.
    """
    factors = _COVERAGE_FACTORS if factors is None else np.asarray(factors, np.float64)
    u, ld = _latents(model, jnp.asarray(s_theta), jnp.asarray(x_std))
    z0 = jax.random.normal(jax.random.key(0), (len(s_theta), int(num_draws), len(scale)))
    keep = jnp.asarray(identity)
    mean, std = jnp.asarray(stats["theta_mean"]), jnp.asarray(stats["theta_std"])

    def theta_terms(s):  # log |d theta / d z| and the support mask, for standardised flow coordinates s
        z = s * std + mean
        theta = prior.from_unconstrained(z, keep=keep)
        return prior.log_det_jacobian(z, keep=keep), prior.in_support(theta)

    @eqx.filter_jit
    def ranks(model, tau, u, ld, s_theta, x_std, z0):
        bij = paramax.unwrap(model).flow.bijection
        jac_true, _ = theta_terms(s_theta)
        lq_true = -0.5 * jnp.sum(jnp.square(u / tau), axis=-1) + ld - jac_true          # (m,)

        def row(z, x, lq):
            cond = paramax.unwrap(model).condition(x)
            s, logdet = jax.vmap(lambda v: bij.transform_and_log_det(v, cond))(z * tau)
            jac, ok = theta_terms(s)
            lq_draws = -0.5 * jnp.sum(jnp.square(z), axis=-1) - logdet - jac
            return jnp.sum(ok & (lq_draws > lq)) / jnp.maximum(jnp.sum(ok), 1)

        return jax.lax.map(lambda a: row(*a), (z0, x_std, lq_true))

    dev = np.empty(len(factors))
    for i, c in enumerate(factors):
        r = np.asarray(ranks(model, jnp.asarray(c * np.asarray(scale), jnp.float32), u, ld,
                             jnp.asarray(s_theta), jnp.asarray(x_std), z0))
        cov = np.mean(r[:, None] < _COVERAGE_LEVELS[None, :], axis=0)
        dev[i] = np.max(np.abs(cov - _COVERAGE_LEVELS))
    return float(factors[int(np.argmin(dev))]), dev


@eqx.filter_jit  # the model is an argument: one compilation for every model of this shape
def _latents(model, s_theta, x_std):
    """Latents ``u`` ``(n, d)`` of standardised pairs and ``log|du/dtheta|`` ``(n,)``."""
    model = paramax.unwrap(model)
    cond = jax.vmap(model.condition)(x_std)
    return jax.vmap(model.flow.bijection.inverse_and_log_det)(s_theta, cond)


def with_base_scale(model: NPEModel, scale) -> NPEModel:
    """``model`` whose flow draws its base from ``N(0, diag(scale**2))``.

    Written as a fixed affine map in front of the flow's bijection, so sampling,
    densities and files need nothing new; :func:`model_from_config` rebuilds it from
    ``config["base_scale"]``.
    """
    flow = paramax.unwrap(model.flow)
    scale = jnp.asarray(scale, jnp.float32)
    front = Affine(jnp.zeros_like(scale), scale)
    return NPEModel(Transformed(flow.base_dist, Chain([front, flow.bijection])), model.embedding)


def _check_validation_rows(rows, n: int) -> np.ndarray:
    arr = np.asarray(rows)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"validation_rows: expected a 1-D array of row indices, got {arr.dtype} of shape "
                         f"{arr.shape}")
    arr = np.sort(arr.astype(np.int64))
    if arr.size and (arr[0] < 0 or arr[-1] >= n or np.any(np.diff(arr) == 0)):
        raise ValueError(f"validation_rows: expected distinct indices in [0, {n}), got values "
                         f"{arr.min()}..{arr.max()} ({arr.size - np.unique(arr).size} repeated)")
    if arr.size >= n:
        raise ValueError(f"validation_rows: {arr.size} of {n} rows leave none to train on")
    return arr


def warm_start_model(fresh: NPEModel, init: DirectPosterior) -> NPEModel:
    """``fresh`` (an untrained model of ``init``'s architecture) holding ``init``'s trained weights.

    ``init``'s base calibration (:func:`with_base_scale`, a fixed affine map in front of
    the bijection) is taken off first. Leaves under ``paramax.NonTrainable`` take the
    saved value; a flow with other ``paramax`` wrappers (``Parameterize``: the masked
    autoregressive flows) is refused, since a posterior keeps only their unwrapped
    values.
    """
    model = init.model
    if init.config.get("base_scale") is not None:
        flow = model.flow
        model = NPEModel(Transformed(flow.base_dist, flow.bijection.bijections[1]), model.embedding)
    is_wrapper = lambda v: isinstance(v, paramax.AbstractUnwrappable)  # noqa: E731
    wrappers = [v for v in jax.tree_util.tree_leaves(fresh, is_leaf=is_wrapper)
                if is_wrapper(v) and not isinstance(v, paramax.NonTrainable)]
    if wrappers:
        raise ValueError(f"init: a warm start needs a flow without paramax.{type(wrappers[0]).__name__} "
                         f"leaves (the spline flows 'nsf' or 'flowjax_nsf'), got "
                         f"{init.config.get('density_estimator')!r}")
    leaves = jax.tree_util.tree_leaves(paramax.unwrap(model))
    target = jax.tree_util.tree_structure(paramax.unwrap(fresh))
    if jax.tree_util.tree_structure(paramax.unwrap(model)) != target:
        raise ValueError("init: its network does not have this NPE's structure; a warm start needs the same "
                         "architecture")
    fresh_leaves, treedef = jax.tree_util.tree_flatten(fresh)
    if len(fresh_leaves) != len(leaves):
        raise ValueError("init: its network does not have this NPE's structure; a warm start needs the same "
                         "architecture")
    for a, b in zip(fresh_leaves, leaves):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"init: a weight of shape {np.shape(b)} where this NPE has {np.shape(a)}")
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(v, jnp.asarray(a).dtype) if hasattr(a, "dtype")
                                                  else v for a, v in zip(fresh_leaves, leaves)])


def model_from_config(config: dict, dim: int, x_shape: tuple) -> NPEModel:
    """NPE model skeleton (fresh weights) for ``config``; weights are read in afterwards."""
    emb_cfg = config.get("embedding")
    embedding = None if emb_cfg is None else embedding_from_config(emb_cfg)
    cond_dim = math.prod(x_shape) if embedding is None else embedding.out_dim
    flow = build_flow(config["density_estimator"], dim, cond_dim, hidden=config["hidden"],
                      num_layers=config["num_layers"], num_bins=config["num_bins"],
                      tail_bound=config["tail_bound"], nn_depth=config["nn_depth"],
                      key=_fixed_key(),
                      conditional_affine=bool(config.get("conditional_affine", False)),
                      full_covariance=bool(config.get("full_covariance", False)),
                      box=None if config.get("edge_box") is None else (config["edge_box"]["low"],
                                                                      config["edge_box"]["high"]))
    model = NPEModel(flow, embedding)
    if config.get("base_scale") is not None:
        model = with_base_scale(model, config["base_scale"])
    if config.get("ensemble", 1) > 1:
        return EnsembleNPEModel.stack([model] * int(config["ensemble"]))
    return model


register_model_builder("NPE", model_from_config)
