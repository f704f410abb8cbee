"""The training engine: one compiled epoch, early stopping, best parameters restored.

Every learner in bmsbi (NPE, NLE, NRE, the task Trainer, sparse discovery) supplies a
loss, a parameter pytree and arrays, and calls :func:`fit`. The loop is written once:

- a whole epoch — shuffle, every minibatch step, the validation loss and the
  bookkeeping of the best parameters — is ONE jitted call (a ``lax.scan`` over
  minibatches), so Python runs once per epoch and moves two scalars to the host;
- the last ``n_train % batch_size`` shuffled rows of an epoch are dropped (a fresh
  permutation each epoch, so every row is used over the run and no step sees a ragged
  batch); the validation loss is exact (full chunks plus a remainder chunk, weighted);
- early stopping on the validation loss restores the parameters of the best epoch;
- with several local devices the minibatch axis is sharded over them (data
  parallelism; parameters replicated, gradients all-reduced by XLA).

brainstate modules enter through :func:`split_brainstate` / :func:`merge_brainstate`.

References
----------
.. [1] Kidger, P., Garcia, C. (2021). Equinox: neural networks in JAX via callable
   PyTrees and filtered transformations.
.. [2] DeepMind et al. (2020). The DeepMind JAX Ecosystem (optax).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import time
import warnings
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import paramax

from ._checks import as_key, check_positive_int, check_training_settings, remember

__all__ = ["Carry", "FitConfig", "FitResult", "History", "TrainState", "fit",
           "make_optimizer", "merge_brainstate", "polyak_average", "reduce_on_plateau",
           "split_brainstate", "trainable_filter"]

STOP_PATIENCE = "patience"
STOP_MAX_EPOCHS = "max_epochs"
STOP_NONFINITE = "non-finite loss"
STOP_INTERRUPTED = "interrupted"
STOP_CALLBACK = "callback"


# --------------------------------------------------------------------------- history
@dataclasses.dataclass
class History:
    """What happened during :func:`fit`.

    Attributes
    ----------
    train_loss : list of float
        Mean minibatch loss of each epoch (parameters changing during the epoch).
    val_loss : list of float
        Validation loss after each epoch (empty when there is no validation set).
    epochs : int
        Number of epochs run.
    best_epoch : int
        0-based index of the epoch whose parameters were returned.
    best_val_loss : float
        Validation loss of those parameters (``nan`` without a validation set).
    stop_reason : str
        ``"patience"``, ``"max_epochs"``, ``"non-finite loss"`` or ``"interrupted"``.
    wall_time : float
        Seconds spent in :func:`fit`, compilation included.
    epoch_time : list of float
        Seconds since the start of :func:`fit` at the end of each epoch.
    lr_scale : list of float
        Learning-rate multiplier of each epoch (changes only with ``schedule="plateau"``).
    val_metrics : dict of str to list of float
        Each ``metrics_fn`` quantity on the validation set after each epoch (empty without
        ``metrics_fn``).
    monitor : str
        The quantity that chose the best epoch and drove early stopping.
    num_train, num_val, batch_size, steps_per_epoch, num_devices : int
        Sizes actually used.
    """

    train_loss: list = dataclasses.field(default_factory=list)
    val_loss: list = dataclasses.field(default_factory=list)
    epochs: int = 0
    best_epoch: int = -1
    best_val_loss: float = math.nan
    stop_reason: str = ""
    wall_time: float = 0.0
    epoch_time: list = dataclasses.field(default_factory=list)
    lr_scale: list = dataclasses.field(default_factory=list)
    val_metrics: dict = dataclasses.field(default_factory=dict)
    monitor: str = "val_loss"
    num_train: int = 0
    num_val: int = 0
    batch_size: int = 0
    steps_per_epoch: int = 0
    num_devices: int = 1

    def to_dict(self) -> dict:
        """JSON-serialisable dict (non-finite floats become ``None``)."""
        def clean(v):
            if isinstance(v, list):
                return [clean(u) for u in v]
            if isinstance(v, dict):
                return {k: clean(u) for k, u in v.items()}
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v
        return {f.name: clean(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        """Inverse of :meth:`to_dict` (unknown keys are ignored, ``None`` becomes ``nan``)."""
        if not isinstance(d, dict):
            raise ValueError(f"history: expected a dict, got {type(d).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls)}

        def unclean(v):
            if isinstance(v, list):
                return [unclean(u) for u in v]
            if isinstance(v, dict):
                return {k: unclean(u) for k, u in v.items()}
            return math.nan if v is None else v
        kwargs = {k: unclean(v) for k, v in d.items() if k in names}
        for k in ("train_loss", "val_loss", "epoch_time", "lr_scale"):
            kwargs[k] = [float(v) for v in kwargs.get(k, [])]
        return cls(**kwargs)

    def __repr__(self):
        best = "" if self.best_epoch < 0 else f", best_epoch={self.best_epoch}"
        val = "" if not math.isfinite(self.best_val_loss) else f", best_val_loss={self.best_val_loss:.4g}"
        return (f"History(epochs={self.epochs}{best}{val}, stop_reason={self.stop_reason!r}, "
                f"wall_time={self.wall_time:.2f}s)")


# ---------------------------------------------------------------------- parameters
def trainable_filter(tree) -> Any:
    """Boolean pytree marking the trainable leaves of ``tree``.

    Inexact (floating) arrays are trainable, except those under a
    ``paramax.NonTrainable`` wrapper (flowjax marks e.g. fixed base-distribution
    parameters that way).
    """
    return jax.tree_util.tree_map(
        eqx.is_inexact_array, tree, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))


def _partition(tree):
    return eqx.partition(tree, eqx.is_inexact_array,
                         is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))


def split_brainstate(module, *filters):
    """Split a brainstate module into ``(params, static)`` for :func:`fit`.

    ``params`` is a pure pytree holding the values of the module's ``ParamState``s
    (``brainstate.nn.Param(..., fit=True)`` and ``ParamState`` attributes); ``static``
    is ``(graphdef, other_states)``. Pass further brainstate filters to choose a
    different trainable subset (the first filter is the trainable one).

    Examples
    --------
    >>> import brainstate, jax.numpy as jnp
    >>> from bmsbi.engine import split_brainstate, merge_brainstate
    >>> params, static = split_brainstate(brainstate.nn.Linear(3, 1))
    >>> merge_brainstate(params, static)(jnp.ones(3)).shape
    (1,)
    """
    import brainstate

    trainable = filters[0] if filters else brainstate.ParamState
    graphdef, params, rest = brainstate.graph.treefy_split(module, trainable, ...)
    return params, (graphdef, rest)


def merge_brainstate(params, static):
    """Rebuild the brainstate module from :func:`split_brainstate` output (jit/grad-safe)."""
    import brainstate

    graphdef, rest = static
    return brainstate.graph.treefy_merge(graphdef, params, rest)


# ----------------------------------------------------------------------- optimiser
def make_optimizer(learning_rate=1e-3, *, schedule=None, total_steps=None, weight_decay=0.0,
                   clip_norm=5.0, optimizer=None) -> optax.GradientTransformation:
    """The optimiser :func:`fit` uses: clip (global norm) → Adam(W) with an lr schedule.

    Parameters
    ----------
    learning_rate : float
        Peak learning rate.
    schedule : None, "cosine", "onecycle", "warmup_cosine" or callable
        ``None`` keeps ``learning_rate`` constant; ``"cosine"`` decays it to 1 % over
        ``total_steps``; ``"warmup_cosine"`` warms up over the first 5 % then decays;
        ``"onecycle"`` is optax's cosine one-cycle; a callable ``step -> lr`` is used as is.
    total_steps : int
        Optimiser steps the schedule spans (required by named schedules).
    weight_decay : float
        Decoupled weight decay (AdamW) when positive.
    clip_norm : float or None
        Clip gradients to this global norm first; ``None`` disables.
    optimizer : optax.GradientTransformation, optional
        Use this instead of Adam (clipping still comes first).
    """
    if optimizer is None:
        lr = _schedule(learning_rate, schedule, total_steps)
        optimizer = (optax.adamw(lr, weight_decay=weight_decay) if weight_decay
                     else optax.adam(lr))
    elif schedule is not None:
        raise ValueError("schedule: give the schedule inside your own `optimizer`, not both")
    if clip_norm is None:
        return optimizer
    if not clip_norm > 0:
        raise ValueError(f"clip_norm: expected a positive float or None, got {clip_norm!r}")
    return optax.chain(optax.clip_by_global_norm(float(clip_norm)), optimizer)


def _schedule(lr, schedule, total_steps):
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"learning_rate: expected a positive float, got {lr!r}")
    if schedule is None:
        return float(lr)
    if callable(schedule):
        return schedule
    if total_steps is None:
        raise ValueError("total_steps: required with a named schedule")
    total_steps = max(int(total_steps), 1)
    if schedule == "cosine":
        return optax.cosine_decay_schedule(lr, total_steps, alpha=0.01)
    if schedule == "warmup_cosine":
        warm = max(total_steps // 20, 1)  # a run of one step still has a step of decay
        return optax.warmup_cosine_decay_schedule(lr / 10, lr, warm, max(total_steps, warm + 1),
                                                  lr / 100)
    if schedule == "onecycle":
        return optax.cosine_onecycle_schedule(total_steps, lr)
    raise ValueError(
        f"schedule: expected None, 'cosine', 'warmup_cosine', 'onecycle' or a callable "
        f"step -> learning rate, got {schedule!r}")


# ---------------------------------------------------------------------------- data
def _check_data(data, arg):
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        raise ValueError(f"{arg}: expected a pytree (e.g. a tuple) of arrays, got no arrays")
    arrays = [np.asarray(a) if not isinstance(a, jax.Array) else a for a in leaves]
    shapes = [a.shape for a in arrays]
    if any(len(s) == 0 for s in shapes):
        raise ValueError(f"{arg}: every array needs a leading (sample) axis; got shapes {shapes}")
    n = shapes[0][0]
    if any(s[0] != n for s in shapes):
        raise ValueError(f"{arg}: arrays must share the leading (sample) axis; got shapes {shapes}")
    return n


def _num_devices(devices):
    if devices is None:
        return jax.local_device_count()
    return devices if isinstance(devices, int) else len(list(devices))


def _val_chunking(n_val, batch_size, num_devices):
    """``(chunks, chunk, used)``: at most ``batch_size`` rows a chunk, ``used <= n_val`` rows.

    The validation loss is the mean over equal chunks, so at most ``chunks - 1``
    rows are left out (they join the training set when fit splits the data itself).
    """
    if n_val == 0:
        return 0, 0, 0
    chunks = -(-n_val // batch_size)
    chunk = n_val // chunks
    if num_devices > 1 and chunk >= num_devices:
        chunk -= chunk % num_devices
    return chunks, chunk, chunks * chunk


def _device_mesh(devices):
    if devices is None:
        devices = jax.local_devices()
    elif isinstance(devices, int):
        if not 1 <= devices <= jax.local_device_count():
            raise ValueError(
                f"devices: expected 1..{jax.local_device_count()} (local devices), got {devices}")
        devices = jax.local_devices()[:devices]
    devices = list(devices)
    if len(devices) <= 1:
        return None
    return jax.sharding.Mesh(np.array(devices), ("data",))


# -------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class FitConfig:
    """The training hyperparameters of :func:`fit`, validated once.

    NPE, NLE, NRE, the :class:`bmsbi.Trainer` and :func:`bmsbi.discovery.fit` build one
    from their settings; :func:`fit` takes one (``config=``) or the same names as keywords.

    Parameters
    ----------
    learning_rate : float, default 1e-3
        Peak learning rate (> 0).
    batch_size : int, default 256
        Rows per step (clamped to the training-set size). With ``k`` devices it must be
        a multiple of ``k``; it is rounded down to one otherwise (with a warning).
    max_epochs : int, default 200
    patience : int or None, default 20
        Stop after this many epochs without an improvement of the monitored value larger
        than ``min_delta``; ``None`` runs all ``max_epochs`` (still returning the best).
    min_delta : float, default 0
    validation_fraction : float in [0, 1), default 0.1
        Share of the data held out for early stopping (ignored when ``fit`` gets
        ``validation_data``; 0 disables early stopping).
    clip_norm : float or None, default 5
        Global gradient-norm clip.
    weight_decay : float, default 0
        Decoupled weight decay (AdamW) when positive.
    schedule : None, str or callable
        Learning-rate schedule over ``max_epochs * steps_per_epoch`` steps (see
        :func:`make_optimizer`), or ``"plateau"``: multiply the step by
        ``plateau_factor`` whenever the monitored value has not improved for
        ``plateau_patience`` epochs (works with any optimiser).
    plateau_patience : int, default 5
    plateau_factor : float in (0, 1), default 0.5
    ema_decay : float in (0, 1) or None
        Keep an exponential moving average of the weights (Polyak averaging), updated
        after every step with this decay (0.995 averages over about 200 steps; step
        ``t`` uses ``min(ema_decay, (1 + t) / (10 + t))``, so short runs average recent
        weights rather than the initial ones). Validation, early stopping, the best
        epoch, the callbacks' ``params`` and the result then use the averaged weights;
        training continues from the raw ones.
    monitor : str, default "val_loss"
        What chooses the best epoch and drives ``patience``: ``"val_loss"`` or
        ``"val_<name>"`` for a ``metrics_fn`` quantity.
    monitor_mode : "min" or "max", default "min"
    keep_start : bool, default False
        Validate the starting parameters too (with ``monitor="val_loss"`` and a
        validation set): if no epoch beats them, they are returned
        (``history.best_epoch == -1``). For a start that is already a fit (an estimator
        started at the least-squares linear-Gaussian model) training then cannot leave
        it worse.

    Raises
    ------
    ValueError
        Naming the field, what was expected and what came.

    Examples
    --------
    >>> from bmsbi.engine import FitConfig
    >>> cfg = FitConfig(learning_rate=1e-2, max_epochs=50)
    >>> cfg.replace(batch_size=64).batch_size
    64
    """

    learning_rate: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 200
    patience: int | None = 20
    min_delta: float = 0.0
    validation_fraction: float = 0.1
    clip_norm: float | None = 5.0
    weight_decay: float = 0.0
    schedule: Any = None
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    ema_decay: float | None = None
    monitor: str = "val_loss"
    monitor_mode: str = "min"
    keep_start: bool = False

    def __post_init__(self):
        check_training_settings(self)
        for name in ("batch_size", "max_epochs", "plateau_patience"):
            check_positive_int(getattr(self, name), name)
        if not (isinstance(self.min_delta, (int, float, np.integer, np.floating))
                and not isinstance(self.min_delta, bool) and 0 <= self.min_delta < math.inf):
            raise ValueError(f"min_delta: expected a finite float >= 0, got {self.min_delta!r}")
        if not (isinstance(self.plateau_factor, (int, float, np.floating))
                and not isinstance(self.plateau_factor, bool) and 0 < self.plateau_factor < 1):
            raise ValueError(f"plateau_factor: expected a float in (0, 1), got {self.plateau_factor!r}")
        if not (self.schedule is None or callable(self.schedule) or self.schedule in _SCHEDULES):
            raise ValueError(f"schedule: expected None, one of {list(_SCHEDULES)} or a callable "
                             f"step -> learning rate, got {self.schedule!r}")
        if not isinstance(self.monitor, str) or not self.monitor.startswith("val_"):
            raise ValueError(f"monitor: expected 'val_loss' or 'val_<metric name>', got {self.monitor!r}")
        if self.monitor_mode not in ("min", "max"):
            raise ValueError(f"monitor_mode: expected 'min' or 'max', got {self.monitor_mode!r}")
        if not isinstance(self.keep_start, (bool, np.bool_)):
            raise ValueError(f"keep_start: expected a bool, got {self.keep_start!r}")

    @classmethod
    def from_settings(cls, obj, **changes) -> "FitConfig":
        """The config of the fields ``obj`` holds under these names (an estimator's settings), then ``changes``.

        Examples
        --------
        >>> import bmsbi
        >>> from bmsbi.engine import FitConfig
        >>> FitConfig.from_settings(bmsbi.NLE(learning_rate=1e-2)).learning_rate
        0.01
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: getattr(obj, k) for k in names if hasattr(obj, k)}, **changes})

    def replace(self, **changes) -> "FitConfig":
        """A copy with ``changes`` applied (validated again); unknown names are refused."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"config: unknown training settings {unknown}; expected some of "
                             f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict (a callable schedule as its name)."""
        d = dataclasses.asdict(self)
        if callable(d["schedule"]):
            d["schedule"] = getattr(d["schedule"], "__name__", "callable")
        return d


_SCHEDULES = ("cosine", "warmup_cosine", "onecycle", "plateau")


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    params : pytree
        The input ``params`` at the best epoch (the last epoch without validation; the
        start with ``keep_start`` when no epoch beat it); fixed leaves unchanged.
    history : History
        Per-epoch losses and the run's sizes and stop reason.
    state : TrainState
        Where the run stopped: ``fit(..., resume=result.state)`` continues it.
    validation_rows : numpy.ndarray or None
        Sorted indices of the rows of ``data`` held out for validation (``None`` with
        ``validation_data`` or without a validation split): rows no step trained on,
        for checks after the fit (NPE calibrates its base distribution on them).
    """

    params: Any
    history: "History"
    state: "TrainState"
    validation_rows: np.ndarray | None = None


class Carry(NamedTuple):
    """The compiled epoch's loop state (a named pytree).

    ``params``: the raw trainable weights; ``opt_state``: the optimiser's state;
    ``average``/``average_steps``: the moving average of the weights and its step count
    (``None`` without ``ema_decay``); ``best``: the weights of the best epoch so far;
    ``best_score``: their monitored value (smaller is better); ``waited``/``lr_scale``:
    the reduce-on-plateau counter and step multiplier.
    """

    params: Any
    opt_state: Any
    average: Any
    average_steps: Any
    best: Any
    best_score: Any
    waited: Any
    lr_scale: Any


def polyak_average(average, steps, params, decay: float):
    """One step of the weight average: ``d * average + (1 - d) * params``, ``d = min(decay, (1+t)/(10+t))``.

    Over the first steps the memory is shorter, so a short run still averages recent
    weights instead of staying near the initial ones. Returns ``(average, steps + 1)``.
    """
    d = jnp.minimum(decay, (1.0 + steps) / (10.0 + steps))
    return jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, average, params), steps + 1


def reduce_on_plateau(waited, lr_scale, improved, patience: int, factor: float):
    """Reduce-on-plateau bookkeeping after an epoch: ``(waited, lr_scale)`` updated.

    After ``patience`` epochs without improvement the step multiplier is scaled by
    ``factor`` and the count starts again.
    """
    waited = jnp.where(improved, 0, waited + 1)
    cut = waited >= patience
    return jnp.where(cut, 0, waited), jnp.where(cut, lr_scale * factor, lr_scale)


# -------------------------------------------------------------- compiled epochs
@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything static the compiled epoch depends on (shapes aside: jit handles those)."""

    loss_fn: Any
    metrics_fn: Any
    optimizer: Any
    const_rest: Any
    n_train: int
    steps: int
    batch_size: int
    val_chunks: int
    val_chunk: int
    has_val: bool
    metric_names: tuple
    monitor: str
    monitor_mode: str
    min_delta: float
    ema_decay: float | None
    plateau: bool
    plateau_patience: int
    plateau_factor: float
    mesh: Any


_COMPILED: dict = {}
_OPTIMIZERS: dict = {}


def _static_key(obj):
    """A hashable stand-in for a static object: partials compare by function and arguments."""
    if isinstance(obj, functools.partial):
        return ("partial", _static_key(obj.func), tuple(_static_key(a) for a in obj.args),
                tuple(sorted((k, _static_key(v)) for k, v in obj.keywords.items())))
    return obj


def _plan_key(plan: _Plan):
    """The cache key of ``plan``, or ``None`` when part of it cannot be compared by value."""
    leaves, treedef = jax.tree_util.tree_flatten(plan.const_rest)
    key = tuple(_static_key(getattr(plan, f.name)) for f in dataclasses.fields(plan)
                if f.name != "const_rest") + (treedef, tuple(_static_key(v) for v in leaves))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _optimizer(cfg: FitConfig, steps: int, optimizer):
    """The optimiser for ``cfg``: the same object for the same settings (so its epoch is reused)."""
    plateau = cfg.schedule == "plateau"
    args = dict(schedule=None if plateau else cfg.schedule, total_steps=steps * cfg.max_epochs,
                weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm, optimizer=optimizer)
    key = (cfg.learning_rate, *(_static_key(v) for v in args.values()))
    try:
        hash(key)
    except TypeError:
        key = None
    return remember(_OPTIMIZERS, key, lambda: make_optimizer(cfg.learning_rate, **args))


def _build_compiled(plan: _Plan):
    """The jitted pieces of one training plan: ``init``, ``epoch`` and ``validate``."""
    p = plan
    if p.mesh is not None:
        batch_sharding = jax.sharding.NamedSharding(p.mesh, jax.sharding.PartitionSpec("data"))
        shard = lambda tree: jax.lax.with_sharding_constraint(tree, batch_sharding)  # noqa: E731
    else:
        shard = lambda tree: tree  # noqa: E731

    def loss_of(tr, arrays, batch, k):
        frozen_, static_ = eqx.combine(arrays, p.const_rest)
        return p.loss_fn(eqx.combine(tr, frozen_), static_, batch, k)

    grad_fn = jax.value_and_grad(loss_of)

    def metrics_of(tr, arrays, batch, k):
        frozen_, static_ = eqx.combine(arrays, p.const_rest)
        out = p.metrics_fn(eqx.combine(tr, frozen_), static_, batch, k)
        return {name: jnp.asarray(out[name], jnp.float32).reshape(()) for name in p.metric_names}

    def train_epoch(c: Carry, arrays, train_data, k):
        k_perm, k_steps = jax.random.split(k)
        order = jax.random.permutation(k_perm, p.n_train)[: p.steps * p.batch_size]
        order = order.reshape(p.steps, p.batch_size)

        def step(c: Carry, inp):
            idx, ks = inp
            batch = shard(jax.tree_util.tree_map(lambda a: a[idx], train_data))
            loss, grads = grad_fn(c.params, arrays, batch, ks)
            updates, opt_state = p.optimizer.update(grads, c.opt_state, c.params)
            if p.plateau:
                updates = jax.tree_util.tree_map(lambda u: u * c.lr_scale, updates)
            params = eqx.apply_updates(c.params, updates)
            c = c._replace(params=params, opt_state=opt_state)
            if p.ema_decay is not None:
                avg, t = polyak_average(c.average, c.average_steps, params, p.ema_decay)
                c = c._replace(average=avg, average_steps=t)
            return c, loss

        c, losses = jax.lax.scan(step, c, (order, jax.random.split(k_steps, p.steps)))
        return c, jnp.mean(losses)

    def validate(tr, arrays, val_data, k):
        # Mean of equal-sized chunk losses, one scan: a single forward trace to compile.
        chunks = jax.tree_util.tree_map(
            lambda a: a[: p.val_chunks * p.val_chunk].reshape(p.val_chunks, p.val_chunk, *a.shape[1:]),
            val_data)

        def body(total, b):
            b = shard(b)
            now = (loss_of(tr, arrays, b, k), metrics_of(tr, arrays, b, k) if p.metric_names else {})
            return jax.tree_util.tree_map(jnp.add, total, now), None

        zero = (jnp.zeros(()), {name: jnp.zeros(()) for name in p.metric_names})
        total, _ = jax.lax.scan(body, zero, chunks)
        return jax.tree_util.tree_map(lambda t: t / p.val_chunks, total)

    def epoch(c: Carry, arrays, train_data, val_data, epoch_index, key):
        k_train, _ = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, 1), epoch_index))
        # One validation key for every epoch: a loss that draws randomness (NRE's shuffled
        # pairs) is then compared across epochs on the same draws, so early stopping and
        # the best-epoch choice follow the parameters, not the noise.
        k_val = jax.random.fold_in(key, 2)
        c, t_loss = train_epoch(c, arrays, train_data, k_train)
        judged = c.params if p.ema_decay is None else c.average
        if not p.has_val:
            v_loss = jnp.asarray(jnp.nan, t_loss.dtype)
            improved = jnp.isfinite(t_loss)
            score = jnp.where(improved, jnp.nan_to_num(v_loss, nan=jnp.inf), c.best_score)
            metric_values = [jnp.asarray(jnp.nan, t_loss.dtype)] * len(p.metric_names)
        else:
            v_loss, v_metrics = validate(judged, arrays, val_data, k_val)
            watched = v_loss if p.monitor == "val_loss" else v_metrics[p.monitor[4:]]
            watched = -watched if p.monitor_mode == "max" else watched
            improved = jnp.isfinite(watched) & (watched < c.best_score - p.min_delta)
            score = jnp.where(improved, watched, c.best_score)
            metric_values = [v_metrics[name].astype(t_loss.dtype) for name in p.metric_names]
        best = jax.tree_util.tree_map(lambda b, q: jnp.where(improved, q, b), c.best, judged)
        out = jnp.stack([t_loss, v_loss, improved, c.lr_scale, *metric_values])
        c = c._replace(best=best, best_score=score)
        if p.plateau:
            waited, lr_scale = reduce_on_plateau(c.waited, c.lr_scale, improved, p.plateau_patience,
                                                 p.plateau_factor)
            c = c._replace(waited=waited, lr_scale=lr_scale)
        return c, out

    def init(tr):
        copy = lambda t: jax.tree_util.tree_map(lambda a: a + 0, t)  # noqa: E731
        ema = p.ema_decay is not None
        return Carry(params=tr, opt_state=p.optimizer.init(tr), average=copy(tr) if ema else None,
                     average_steps=jnp.zeros((), jnp.float32) if ema else None, best=copy(tr),
                     best_score=jnp.asarray(jnp.inf, jnp.float32), waited=jnp.zeros((), jnp.int32),
                     lr_scale=jnp.ones((), jnp.float32))

    cpu = jax.default_backend() == "cpu"
    donate = () if cpu else (0,)
    options = _cpu_compiler_options() if cpu else None
    return {"init": jax.jit(init), "epoch": jax.jit(epoch, donate_argnums=donate, compiler_options=options),
            "validate": jax.jit(validate, compiler_options=options)}


def _cpu_compiler_options():
    """XLA options for the compiled epoch on CPU: LLVM optimisation level 1 (``BMSBI_XLA_OPT_LEVEL``).

    The epoch is one large program compiled once per fit shape; level 1 compiles it in
    about half the time of XLA's default without slowing the epochs measurably
    (``benchmarks/RESULTS.md``, "Engine v2"). ``BMSBI_XLA_OPT_LEVEL=default`` keeps XLA's own.
    """
    level = os.environ.get("BMSBI_XLA_OPT_LEVEL", "1")
    if level == "default":
        return None
    if level not in ("0", "1", "2", "3"):
        raise ValueError(f"BMSBI_XLA_OPT_LEVEL: expected 0, 1, 2, 3 or 'default', got {level!r}")
    return {"xla_backend_optimization_level": int(level)}


# ----------------------------------------------------------------------------- fit
@contextlib.contextmanager
def _no_persistent_cache_writes():
    """Leave training programs out of JAX's persistent compilation cache while fitting.

    The cache (:func:`bmsbi.enable_compilation_cache`, turned on by ``load_posterior`` and
    the CLI) is for the small programs a new process needs again (a posterior's sampler).
    A training epoch is compiled once per process and reused from memory
    (:data:`_COMPILED`); writing it to disk costs time and space, and serialising large
    training programs crashed the process in a long test session (JAX 0.10.2, XLA CPU,
    twice at the same NPE-with-trials epoch). Reading the cache is unchanged.
    """
    old = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)
    try:
        yield
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", old)


@_no_persistent_cache_writes()
def fit(params, loss_fn: Callable, data, *, key, config: FitConfig | None = None, static=None,
        optimizer=None, validation_data=None, metrics_fn: Callable | None = None, callbacks=(),
        resume: "TrainState | None" = None, devices=None, progress: bool = True, desc: str = "fit",
        **settings) -> FitResult:
    """Train ``params`` to minimise ``loss_fn`` over minibatches of ``data``.

    The compiled epoch is built once per (loss, optimiser, static configuration) and kept
    in a module-level cache: a later call with the same loss function (a
    ``functools.partial`` compares by function and arguments), the same settings, static
    structure and array shapes compiles nothing new.

    Parameters
    ----------
    params : pytree
        Anything whose inexact-array leaves are to be trained: an equinox module (a
        flowjax flow; leaves under ``paramax.NonTrainable`` stay fixed), a dict of
        arrays, or the ``params`` of :func:`split_brainstate`.
    loss_fn : callable
        ``loss_fn(params, static, batch, key) -> scalar``: mean loss over ``batch``,
        a pytree like ``data`` whose arrays hold ``batch_size`` rows. ``params`` has the
        structure of the input (fixed leaves included). Must be jittable. Define it at
        module level (or as a ``functools.partial`` of one) so later calls reuse its
        compiled epoch; pass arrays it needs through ``static``, not a closure.
    data : pytree of arrays
        Training data, e.g. ``(theta, x)``; all arrays share the leading axis ``n``.
    key : jax.random.key
        Drives the validation split, shuffling and the loss's key; same key, same result.
    config : FitConfig, optional
        The training hyperparameters; ``**settings`` (the same names as keywords)
        override its fields. Default ``FitConfig()``.
    static : pytree, optional
        Passed unchanged to ``loss_fn`` (a brainstate graphdef, bounds, ...). Its arrays
        are not trained; they travel as arguments of the compiled epoch.
    optimizer : optax.GradientTransformation, optional
        Default: Adam (AdamW when ``weight_decay > 0``) at ``learning_rate`` with the
        schedule (:func:`make_optimizer`); gradients are clipped first in either case.
    validation_data : pytree of arrays, optional
        Explicit validation set with the structure of ``data``. The validation loss
        is the mean over equal chunks of at most ``batch_size`` rows; up to
        ``chunks - 1`` trailing rows of an explicit set are left out.
    metrics_fn : callable, optional
        ``metrics_fn(params, static, batch, key) -> dict of scalars``, evaluated on the
        validation set after each epoch (chunk means, like the validation loss) inside the
        compiled epoch; recorded as ``history.val_metrics[name]``.
    callbacks : sequence of callables
        ``callback(epoch, logs, params) -> bool | None`` after each epoch on the host;
        ``logs`` holds ``loss``, ``val_loss`` and ``val_<name>``; ``params`` are the
        current parameters (the averaged ones with ``ema_decay``; valid until the next
        epoch runs). Returning ``True`` stops training (``stop_reason == "callback"``).
        A callback with an attribute ``wants_state = True`` is also given ``state=``
        (a :class:`TrainState`, valid until the next epoch runs).
    resume : TrainState, optional
        Continue a run where it stopped (``result.state`` of an earlier call, or one
        read back from a file): its weights, optimiser state (the schedule's step and the
        weight average included), best weights and score, patience count and epoch. The
        run goes on to ``max_epochs`` in all. With the same ``key``, ``data`` and
        settings as the first call, the result equals one uninterrupted run. The
        state's arrays must match this call's parameters and optimiser (a ``ValueError``
        names the first that does not).
    devices : None, int or list of devices
        Devices for data parallelism; default all local devices.
    progress : bool, default True
        Show a tqdm bar (epoch, train/val loss, elapsed time).
    desc : str
        The bar's label.
    **settings
        Fields of :class:`FitConfig` (``learning_rate``, ``batch_size``, ``max_epochs``,
        ``patience``, ``schedule``, ``ema_decay``, ...).

    Returns
    -------
    FitResult
        ``params`` at the best validation epoch (the last epoch without validation),
        the :class:`History` (with ``resume`` its lists cover the epochs of this call;
        ``epochs`` and ``best_epoch`` count from the start of the first run) and the
        :class:`TrainState` at the end.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from bmsbi.engine import fit
    >>> x = jax.random.normal(jax.random.key(0), (512, 3)); y = x @ jnp.array([1., -2., .5])
    >>> def loss(p, static, batch, key):
    ...     return jnp.mean((batch[0] @ p["w"] - batch[1]) ** 2)
    >>> result = fit({"w": jnp.zeros(3)}, loss, (x, y), key=jax.random.key(1),
    ...              learning_rate=1e-1, batch_size=64, max_epochs=50, progress=False)
    >>> bool(jnp.allclose(result.params["w"], jnp.array([1., -2., .5]), atol=1e-2))
    True
    """
    start = time.perf_counter()
    key = as_key(key)
    if config is None:
        config = FitConfig()
    elif not isinstance(config, FitConfig):
        raise ValueError(f"config: expected a bmsbi.engine.FitConfig, got {type(config).__name__}")
    cfg = config.replace(**settings) if settings else config
    if not callable(loss_fn):
        raise ValueError(f"loss_fn: expected a callable (params, static, batch, key) -> scalar, "
                         f"got {type(loss_fn).__name__}")
    n = _check_data(data, "data")
    if not trainable_filter_any(params):
        raise ValueError("params: found no trainable (floating-point) arrays to fit")

    # Host-side seeds from the key: no small XLA programs to compile before training.
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    batch_size = int(cfg.batch_size)
    idx_val = None
    if validation_data is not None:
        n_val = _check_data(validation_data, "validation_data")
        if jax.tree_util.tree_structure(validation_data) != jax.tree_util.tree_structure(data):
            raise ValueError("validation_data: expected the same pytree structure as data")
        train, val = data, validation_data
        n_train = n
        chunking = _val_chunking(n_val, batch_size, _num_devices(devices))
    else:
        n_val = int(round(cfg.validation_fraction * n))
        if cfg.validation_fraction > 0 and n_val == 0:
            n_val = 1
        # Equal validation chunks: the few leftover rows go to training instead.
        chunking = _val_chunking(n_val, batch_size, _num_devices(devices))
        n_val = chunking[2]
        n_train = n - n_val
        if n_train < 1:
            raise ValueError(f"data: {n} rows leave no training rows with "
                             f"validation_fraction={cfg.validation_fraction}")
        perm = np.random.default_rng(seed + [0]).permutation(n)
        idx_train, idx_val = np.sort(perm[:n_train]), np.sort(perm[n_train:])
        train = jax.tree_util.tree_map(lambda a: np.asarray(a)[idx_train], data)
        val = jax.tree_util.tree_map(lambda a: np.asarray(a)[idx_val], data) if n_val else None

    mesh = _device_mesh(devices)
    num_devices = 1 if mesh is None else mesh.size
    val_chunks, val_chunk, n_val_used = chunking
    batch_size = int(min(batch_size, n_train))
    if batch_size % num_devices:
        rounded = max(batch_size - batch_size % num_devices, num_devices)
        if rounded > n_train:
            raise ValueError(f"data: {n_train} training rows cannot fill {num_devices} devices")
        warnings.warn(f"batch_size {batch_size} is not a multiple of {num_devices} devices; "
                      f"using {rounded}", stacklevel=2)
        batch_size = rounded
    steps = n_train // batch_size
    if n_val and n_val_used < n_val:  # only with explicit validation_data
        val = jax.tree_util.tree_map(lambda a: a[:n_val_used], val)
        n_val = n_val_used

    plateau = cfg.schedule == "plateau"
    if plateau and val is None:
        raise ValueError("schedule: 'plateau' needs a validation set (validation_fraction > 0 "
                         "or validation_data)")
    opt = _optimizer(cfg, steps, optimizer)

    trainable, frozen = _partition(params)
    # Arrays of `frozen`/`static` travel as jit arguments; the rest is part of the plan.
    const_arrays, const_rest = eqx.partition((frozen, static), eqx.is_array)

    metric_names = ()
    if metrics_fn is not None and val is not None:
        # Names (and a trace check) from shapes alone: nothing is compiled here.
        def metrics_shapes(tr, arrays, batch):
            frozen_, static_ = eqx.combine(arrays, const_rest)
            return metrics_fn(eqx.combine(tr, frozen_), static_, batch, key)
        sample = jax.tree_util.tree_map(lambda a: jnp.asarray(a[:val_chunk]), val)
        shapes = jax.eval_shape(metrics_shapes, trainable, const_arrays, sample)
        if not isinstance(shapes, dict):
            raise ValueError(f"metrics_fn: expected a dict of scalars, got {type(shapes).__name__}")
        metric_names = tuple(sorted(shapes))
    if val is not None and cfg.monitor != "val_loss" and cfg.monitor[4:] not in metric_names:
        raise ValueError(f"monitor: expected 'val_loss' or one of "
                         f"{['val_' + m for m in metric_names]}, got {cfg.monitor!r}")

    plan = _Plan(loss_fn=loss_fn, metrics_fn=metrics_fn if metric_names else None, optimizer=opt,
                 const_rest=const_rest, n_train=int(n_train), steps=int(steps),
                 batch_size=batch_size, val_chunks=val_chunks, val_chunk=val_chunk,
                 has_val=val is not None, metric_names=metric_names, monitor=cfg.monitor,
                 monitor_mode=cfg.monitor_mode, min_delta=float(cfg.min_delta),
                 ema_decay=None if cfg.ema_decay is None else float(cfg.ema_decay), plateau=plateau,
                 plateau_patience=int(cfg.plateau_patience), plateau_factor=float(cfg.plateau_factor),
                 mesh=mesh)
    compiled = remember(_COMPILED, _plan_key(plan), lambda: _build_compiled(plan))

    if mesh is not None:
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        put = lambda tree: jax.device_put(tree, replicated)  # noqa: E731
    else:
        put = lambda tree: jax.tree_util.tree_map(jnp.asarray, tree)  # noqa: E731

    trainable = put(trainable)
    # One compiled call builds the optimiser state and a separate copy for the best params.
    carry = compiled["init"](trainable)
    first_epoch, since_best = 0, 0
    if resume is not None:
        carry = _resumed_carry(resume, carry)
        first_epoch, since_best = int(resume.epoch), int(resume.since_best)
        if not 0 <= first_epoch <= cfg.max_epochs:
            raise ValueError(f"resume: the state has {first_epoch} epochs done; expected at "
                             f"most max_epochs={cfg.max_epochs}")
    carry = put(carry)
    const_arrays, train = put(const_arrays), put(train)
    val = put(val) if val is not None else None
    start_val = math.nan
    if cfg.keep_start and resume is None and val is not None and cfg.monitor == "val_loss":
        v0 = compiled["validate"](carry.params, const_arrays, val, jax.random.fold_in(key, 2))[0]
        if bool(jnp.isfinite(v0)):
            start_val = float(v0)
            carry = put(carry._replace(best_score=jnp.asarray(v0, jnp.float32)))

    history = History(num_train=int(n_train), num_val=int(n_val), batch_size=batch_size,
                      steps_per_epoch=int(steps), num_devices=num_devices,
                      monitor=cfg.monitor if val is not None else "train_loss")
    if resume is not None:
        history.epochs, history.best_epoch = first_epoch, int(resume.best_epoch)
        history.best_val_loss = float(resume.best_val_loss)
    elif math.isfinite(start_val):
        history.best_val_loss = start_val  # best_epoch -1: the start, until an epoch beats it
    bar = _progress_bar(cfg.max_epochs, desc, progress)
    if bar is not None and first_epoch:
        bar.update(first_epoch)
    stop = STOP_MAX_EPOCHS

    def snapshot(epoch_count):
        return TrainState(epoch=epoch_count, carry=carry, since_best=since_best,
                          best_epoch=history.best_epoch, best_val_loss=history.best_val_loss)

    try:
        for epoch in range(first_epoch, cfg.max_epochs):
            carry, out = compiled["epoch"](carry, const_arrays, train, val,
                                           jnp.asarray(epoch, jnp.int32), key)
            t_loss, v_loss, improved, lr_scale, *m_vals = (float(v) for v in np.asarray(out))  # one transfer
            history.train_loss.append(t_loss)
            history.lr_scale.append(lr_scale)
            if val is not None:
                history.val_loss.append(v_loss)
                for name, value in zip(metric_names, m_vals):
                    history.val_metrics.setdefault(name, []).append(value)
            history.epoch_time.append(time.perf_counter() - start)
            history.epochs = epoch + 1
            if improved:
                history.best_epoch, since_best = epoch, 0
                history.best_val_loss = v_loss
            else:
                since_best += 1
            if bar is not None:
                bar.update(1)
                post = {"train": f"{t_loss:.4g}"}
                if val is not None:
                    post["val"] = f"{v_loss:.4g}"
                    post["best"] = f"{history.best_val_loss:.4g}"
                bar.set_postfix(post, refresh=False)
            if not math.isfinite(t_loss):
                stop = STOP_NONFINITE
                break
            if val is not None and cfg.patience is not None and since_best >= cfg.patience:
                stop = STOP_PATIENCE
                break
            if callbacks:
                logs = {"loss": t_loss, "val_loss": v_loss,
                        **{f"val_{k}": v for k, v in zip(metric_names, m_vals)}}
                now = carry.params if cfg.ema_decay is None else carry.average
                params_now = eqx.combine(now, frozen)
                if any([bool(cb(epoch, logs, params_now, state=snapshot(epoch + 1))
                             if getattr(cb, "wants_state", False) else cb(epoch, logs, params_now))
                        for cb in callbacks]):
                    stop = STOP_CALLBACK
                    break
    except KeyboardInterrupt:
        stop = STOP_INTERRUPTED
    finally:
        if bar is not None:
            bar.close()

    # carry.best starts as a copy of the initial parameters and changes only on improvement
    # (without validation data: on every epoch with a finite training loss).
    best = carry.best
    history.stop_reason = stop
    history.wall_time = time.perf_counter() - start
    if mesh is not None:  # hand back ordinary single-device arrays
        best = jax.device_put(best, jax.local_devices()[0])
    return FitResult(params=eqx.combine(best, frozen), history=history, state=snapshot(history.epochs),
                     validation_rows=idx_val if n_val else None)


@dataclasses.dataclass
class TrainState:
    """Where a run of :func:`fit` stopped (``result.state``); ``fit(..., resume=state)`` continues it.

    Attributes
    ----------
    epoch : int
        Epochs done.
    carry : Carry
        The compiled loop's state (:class:`Carry`: raw trainable weights, optimiser
        state, moving average of the weights, best weights, best monitored score,
        plateau counters). A flat list of its leaves (as read back from a file, also one
        written before the carry had names: the leaf order is the same) is accepted too.
    since_best : int
        Epochs since the last improvement (the patience count).
    best_epoch : int
    best_val_loss : float
    """

    epoch: int
    carry: Any
    since_best: int = 0
    best_epoch: int = -1
    best_val_loss: float = math.nan

    def leaves(self) -> list:
        """The carry's arrays, flattened (what a file stores)."""
        return [np.asarray(a) for a in jax.tree_util.tree_leaves(self.carry)]


def _resumed_carry(resume, template):
    """``resume``'s carry in the structure of ``template`` (the fresh loop state), checked."""
    if not isinstance(resume, TrainState):
        raise ValueError(f"resume: expected a bmsbi.engine.TrainState, got {type(resume).__name__}")
    want, treedef = jax.tree_util.tree_flatten(template)
    got = jax.tree_util.tree_leaves(resume.carry)
    if len(got) != len(want):
        raise ValueError(f"resume: the state holds {len(got)} arrays, this run's parameters and "
                         f"optimiser need {len(want)} (a different model, optimiser or ema_decay?)")
    out = []
    for i, (g, w) in enumerate(zip(got, want)):
        g = np.asarray(g)
        if g.shape != tuple(w.shape) or g.dtype != w.dtype:
            raise ValueError(f"resume: state array {i} has shape {g.shape} and dtype {g.dtype}; "
                             f"this run needs {tuple(w.shape)} {w.dtype}")
        out.append(jnp.asarray(g))
    return jax.tree_util.tree_unflatten(treedef, out)


def trainable_filter_any(params) -> bool:
    """Whether ``params`` holds at least one trainable leaf."""
    return any(jax.tree_util.tree_leaves(trainable_filter(params)))


def _progress_bar(total, desc, progress):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="epoch", dynamic_ncols=True,
                bar_format="{desc}: {n_fmt}/{total_fmt} epochs [{elapsed}<{remaining}] {postfix}")
