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

import dataclasses
import math
import time
import warnings
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import paramax

from ._checks import as_key

__all__ = ["History", "TrainState", "fit", "make_optimizer", "split_brainstate", "merge_brainstate",
           "trainable_filter"]

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


# ----------------------------------------------------------------------------- fit
def fit(params, loss_fn: Callable, data, *, key, static=None, optimizer=None,
        learning_rate: float = 1e-3, weight_decay: float = 0.0, batch_size: int = 256,
        max_epochs: int = 200, validation_fraction: float = 0.1, validation_data=None,
        patience: int | None = 20, min_delta: float = 0.0, clip_norm: float | None = 5.0,
        schedule=None, plateau_patience: int = 5, plateau_factor: float = 0.5, devices=None,
        progress: bool = True, desc: str = "fit", metrics_fn: Callable | None = None,
        monitor: str = "val_loss", monitor_mode: str = "min", callbacks=(),
        ema_decay: float | None = None, resume: "TrainState | None" = None,
        return_state: bool = False, keep_start: bool = False):
    """Train ``params`` to minimise ``loss_fn`` over minibatches of ``data``.

    Parameters
    ----------
    params : pytree
        Anything whose inexact-array leaves are to be trained: an equinox module (a
        flowjax flow; leaves under ``paramax.NonTrainable`` stay fixed), a dict of
        arrays, or the ``params`` of :func:`split_brainstate`.
    loss_fn : callable
        ``loss_fn(params, static, batch, key) -> scalar``: mean loss over ``batch``,
        a pytree like ``data`` whose arrays hold ``batch_size`` rows. ``params`` has the
        structure of the input (fixed leaves included). Must be jittable.
    data : pytree of arrays
        Training data, e.g. ``(theta, x)``; all arrays share the leading axis ``n``.
    key : jax.random.key
        Drives the validation split, shuffling and the loss's key; same key, same result.
    static : pytree, optional
        Passed unchanged to ``loss_fn`` (a brainstate graphdef, an embedding config...).
        Its arrays are not trained.
    optimizer : optax.GradientTransformation, optional
        Default: Adam (AdamW when ``weight_decay > 0``) at ``learning_rate``.
    learning_rate : float, default 1e-3
    weight_decay : float, default 0
    batch_size : int, default 256
        Rows per step (clamped to the training-set size). With ``k`` devices it must
        be a multiple of ``k``; it is rounded down to one otherwise (with a warning).
    max_epochs : int, default 200
    validation_fraction : float, default 0.1
        Share of ``data`` held out for early stopping (ignored when
        ``validation_data`` is given; 0 disables early stopping).
    validation_data : pytree of arrays, optional
        Explicit validation set with the structure of ``data``. The validation loss
        is the mean over equal chunks of at most ``batch_size`` rows; up to
        ``chunks - 1`` trailing rows of an explicit set are left out.
    patience : int or None, default 20
        Stop after this many epochs without a validation improvement larger than
        ``min_delta``; ``None`` runs all ``max_epochs`` (still returning the best).
    clip_norm : float or None, default 5
        Global gradient-norm clip.
    schedule : None, str or callable
        Learning-rate schedule over ``max_epochs * steps_per_epoch`` steps (see
        :func:`make_optimizer`), or ``"plateau"``: multiply the step by
        ``plateau_factor`` whenever the validation loss has not improved for
        ``plateau_patience`` epochs (works with any ``optimizer``).
    plateau_patience : int, default 5
    plateau_factor : float, default 0.5
    devices : None, int or list of devices
        Devices for data parallelism; default all local devices.
    progress : bool, default True
        Show a tqdm bar (epoch, train/val loss, elapsed time).
    metrics_fn : callable, optional
        ``metrics_fn(params, static, batch, key) -> dict of scalars``, evaluated on the
        validation set after each epoch (chunk means, like the validation loss) inside the
        compiled epoch; recorded as ``history.val_metrics[name]``.
    monitor : str, default "val_loss"
        What chooses the best epoch and drives ``patience``: ``"val_loss"`` or
        ``"val_<name>"`` for a ``metrics_fn`` quantity.
    monitor_mode : "min" or "max", default "min"
        Whether a smaller or a larger monitored value is better.
    callbacks : sequence of callables
        ``callback(epoch, logs, params) -> bool | None`` after each epoch on the host;
        ``logs`` holds ``loss``, ``val_loss`` and ``val_<name>``; ``params`` are the
        current parameters (valid until the next epoch runs). Returning ``True`` stops
        training (``stop_reason == "callback"``).
    ema_decay : float in (0, 1), optional
        Keep an exponential moving average of the weights (Polyak averaging), updated
        after every step with this decay (0.995 averages over about 200 steps; step
        ``t`` uses ``min(ema_decay, (1 + t) / (10 + t))``, so short runs average
        recent weights rather than the initial ones).
        Validation, early stopping, the best epoch, the callbacks' ``params`` and the
        result then use the averaged weights; training continues from the raw ones.
        The average smooths the minibatch noise of the last steps out of the result.
        A callback with an attribute ``wants_state = True`` is also given
        ``state=`` (a :class:`TrainState`, valid until the next epoch runs).
    resume : TrainState, optional
        Continue a run where it stopped (``return_state=True`` of an earlier call, or
        one read back from a file): its weights, optimiser state (the schedule's step
        and the weight average included), best weights and score, patience count and
        epoch. The run goes on to ``max_epochs`` in all. With the same ``key``,
        ``data`` and settings as the first call, the result equals one uninterrupted
        run. The state's arrays must match this call's parameters and optimiser
        (a ``ValueError`` names the first that does not).
    return_state : bool, default False
        Also return the :class:`TrainState` at the end.
    keep_start : bool, default False
        Validate the starting parameters too (with ``monitor="val_loss"`` and a
        validation set): if no epoch beats them, they are returned
        (``history.best_epoch == -1``). For a start that is already a fit — e.g. an
        estimator started at the least-squares linear-Gaussian model — training then
        cannot leave it worse.

    Returns
    -------
    best_params : pytree
        ``params`` at the best validation epoch (the last epoch without validation).
    history : History
        With ``resume`` its lists cover the epochs of this call; ``epochs`` and
        ``best_epoch`` count from the start of the first run.
    state : TrainState
        Only with ``return_state=True``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from bmsbi.engine import fit
    >>> x = jax.random.normal(jax.random.key(0), (512, 3)); y = x @ jnp.array([1., -2., .5])
    >>> loss = lambda p, s, b, k: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
    >>> p, hist = fit({"w": jnp.zeros(3)}, loss, (x, y), key=jax.random.key(1),
    ...               learning_rate=1e-1, batch_size=64, max_epochs=50, progress=False)
    >>> bool(jnp.allclose(p["w"], jnp.array([1., -2., .5]), atol=1e-2))
    True
    """
    start = time.perf_counter()
    key = as_key(key)
    if not callable(loss_fn):
        raise ValueError(f"loss_fn: expected a callable (params, static, batch, key) -> scalar, "
                         f"got {type(loss_fn).__name__}")
    for name, value in (("batch_size", batch_size), ("max_epochs", max_epochs)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, (int, np.integer))
                                 or patience <= 0):
        raise ValueError(f"patience: expected a positive int or None, got {patience!r}")
    if ema_decay is not None and (isinstance(ema_decay, bool) or
                                  not isinstance(ema_decay, (float, int, np.floating))
                                  or not 0.0 < float(ema_decay) < 1.0):
        raise ValueError(f"ema_decay: expected None or a float in (0, 1), got {ema_decay!r}")
    n = _check_data(data, "data")
    if not trainable_filter_any(params):
        raise ValueError("params: found no trainable (floating-point) arrays to fit")

    # Host-side seeds from the key: no small XLA programs to compile before training.
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    if validation_data is not None:
        n_val = _check_data(validation_data, "validation_data")
        if jax.tree_util.tree_structure(validation_data) != jax.tree_util.tree_structure(data):
            raise ValueError("validation_data: expected the same pytree structure as data")
        train, val = data, validation_data
        n_train = n
        chunking = _val_chunking(n_val, int(batch_size), _num_devices(devices))
    else:
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction: expected a float in [0, 1), got {validation_fraction!r}")
        n_val = int(round(validation_fraction * n))
        if validation_fraction > 0 and n_val == 0:
            n_val = 1
        # Equal validation chunks: the few leftover rows go to training instead.
        chunking = _val_chunking(n_val, int(batch_size), _num_devices(devices))
        n_val = chunking[2]
        n_train = n - n_val
        if n_train < 1:
            raise ValueError(f"data: {n} rows leave no training rows with "
                             f"validation_fraction={validation_fraction}")
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

    plateau = schedule == "plateau"
    if plateau and val is None:
        raise ValueError("schedule: 'plateau' needs a validation set (validation_fraction > 0 "
                         "or validation_data)")
    optimizer = make_optimizer(learning_rate, schedule=None if plateau else schedule,
                               total_steps=steps * max_epochs, weight_decay=weight_decay,
                               clip_norm=clip_norm, optimizer=optimizer)

    trainable, frozen = _partition(params)
    # Arrays of `frozen`/`static` travel as jit arguments; the rest is closed over.
    consts = (frozen, static)
    const_arrays, const_rest = eqx.partition(consts, eqx.is_array)

    if monitor_mode not in ("min", "max"):
        raise ValueError(f"monitor_mode: expected 'min' or 'max', got {monitor_mode!r}")
    metric_names = []
    if metrics_fn is not None and val is not None:
        # Names (and a trace check) from shapes alone: nothing is compiled here.
        def metrics_shapes(tr, arrays, batch):
            frozen_, static_ = eqx.combine(arrays, const_rest)
            return metrics_fn(eqx.combine(tr, frozen_), static_, batch, key)
        sample = jax.tree_util.tree_map(lambda a: jnp.asarray(a[:val_chunk]), val)
        shapes = jax.eval_shape(metrics_shapes, trainable, const_arrays, sample)
        if not isinstance(shapes, dict):
            raise ValueError(f"metrics_fn: expected a dict of scalars, got {type(shapes).__name__}")
        metric_names = sorted(shapes)
    if val is not None and monitor != "val_loss" and monitor[4:] not in metric_names:
        raise ValueError(f"monitor: expected 'val_loss' or one of "
                         f"{['val_' + m for m in metric_names]}, got {monitor!r}")

    if mesh is not None:
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        put = lambda tree: jax.device_put(tree, replicated)  # noqa: E731
        shard = lambda tree: jax.lax.with_sharding_constraint(tree, batch_sharding)  # noqa: E731
    else:
        put = lambda tree: jax.tree_util.tree_map(jnp.asarray, tree)  # noqa: E731
        shard = lambda tree: tree  # noqa: E731

    def loss_of(tr, arrays, batch, k):
        frozen_, static_ = eqx.combine(arrays, const_rest)
        return loss_fn(eqx.combine(tr, frozen_), static_, batch, k)

    grad_fn = jax.value_and_grad(loss_of)

    def take(tree, idx):
        return shard(jax.tree_util.tree_map(lambda a: a[idx], tree))

    def averaged(opt_state):  # (optimiser state, (moving average, steps)) -> the average
        return opt_state[1][0]

    def train_epoch(tr, opt_state, arrays, train_data, k, lr_scale):
        k_perm, k_steps = jax.random.split(k)
        order = jax.random.permutation(k_perm, n_train)[: steps * batch_size]
        order = order.reshape(steps, batch_size)

        def step(carry, inp):
            tr_, st_ = carry
            idx, ks = inp
            loss, grads = grad_fn(tr_, arrays, take(train_data, idx), ks)
            opt_st, ema = st_
            updates, opt_st = optimizer.update(grads, opt_st, tr_)
            if plateau:
                updates = jax.tree_util.tree_map(lambda u: u * lr_scale, updates)
            tr_ = eqx.apply_updates(tr_, updates)
            if ema_decay is not None:  # Polyak averaging of the weights
                avg, t = ema
                # A shorter memory over the first steps: short runs still average recent
                # weights instead of staying near the initial ones.
                d = jnp.minimum(ema_decay, (1.0 + t) / (10.0 + t))
                ema = (jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, avg, tr_), t + 1)
            return (tr_, (opt_st, ema)), loss

        (tr, opt_state), losses = jax.lax.scan(
            step, (tr, opt_state), (order, jax.random.split(k_steps, steps)))
        return tr, opt_state, jnp.mean(losses)

    def metrics_of(tr, arrays, batch, k):
        frozen_, static_ = eqx.combine(arrays, const_rest)
        out = metrics_fn(eqx.combine(tr, frozen_), static_, batch, k)
        return {name: jnp.asarray(out[name], jnp.float32).reshape(()) for name in metric_names}

    def val_loss(tr, arrays, val_data, k):
        # Mean of equal-sized chunk losses, one scan: a single forward trace to compile.
        chunks = jax.tree_util.tree_map(
            lambda a: a[: val_chunks * val_chunk].reshape(val_chunks, val_chunk, *a.shape[1:]),
            val_data)

        def body(total, b):
            b = shard(b)
            now = (loss_of(tr, arrays, b, k),
                   metrics_of(tr, arrays, b, k) if metric_names else {})
            return jax.tree_util.tree_map(jnp.add, total, now), None

        zero = (jnp.zeros(()), {name: jnp.zeros(()) for name in metric_names})
        total, _ = jax.lax.scan(body, zero, chunks)
        return jax.tree_util.tree_map(lambda t: t / val_chunks, total)

    def epoch_fn(state, arrays, train_data, val_data, epoch):
        tr, opt_state, best, best_val, (waited, lr_scale) = state
        k_epoch = jax.random.fold_in(jax.random.fold_in(key, 1), epoch)
        k_train, _ = jax.random.split(k_epoch)
        # One validation key for every epoch: a loss that draws randomness (NRE's shuffled
        # pairs) is then compared across epochs on the same draws, so early stopping and
        # the best-epoch choice follow the parameters, not the noise.
        k_val = jax.random.fold_in(key, 2)
        tr, opt_state, t_loss = train_epoch(tr, opt_state, arrays, train_data, k_train, lr_scale)
        judged = tr if ema_decay is None else averaged(opt_state)
        if val_data is None:
            v_loss = jnp.asarray(jnp.nan, t_loss.dtype)
            improved = jnp.isfinite(t_loss)
        else:
            v_loss, v_metrics = val_loss(judged, arrays, val_data, k_val)
            watched = v_loss if monitor == "val_loss" else v_metrics[monitor[4:]]
            watched = -watched if monitor_mode == "max" else watched
            improved = jnp.isfinite(watched) & (watched < best_val - min_delta)
        best = jax.tree_util.tree_map(lambda b, p: jnp.where(improved, p, b), best, judged)
        if val_data is None:
            best_val = jnp.where(improved, jnp.nan_to_num(v_loss, nan=jnp.inf), best_val)
            metric_values = [jnp.asarray(jnp.nan, t_loss.dtype)] * len(metric_names)
        else:
            best_val = jnp.where(improved, watched, best_val)
            metric_values = [v_metrics[name].astype(t_loss.dtype) for name in metric_names]
        out = jnp.stack([t_loss, v_loss, improved, lr_scale, *metric_values])
        if plateau:  # reduce on plateau: scale the steps down after `plateau_patience` flat epochs
            waited = jnp.where(improved, 0, waited + 1)
            cut = waited >= plateau_patience
            lr_scale = jnp.where(cut, lr_scale * plateau_factor, lr_scale)
            waited = jnp.where(cut, 0, waited)
        return (tr, opt_state, best, best_val, (waited, lr_scale)), out

    donate = (0,) if jax.default_backend() != "cpu" else ()
    epoch_jit = jax.jit(epoch_fn, donate_argnums=donate)

    trainable = put(trainable)
    # One compiled call builds the optimiser state and a separate copy for the best params.
    state = jax.jit(lambda tr: (tr, (optimizer.init(tr), (jax.tree_util.tree_map(
                                    lambda a: a + 0, tr), jnp.zeros((), jnp.float32))
                                    if ema_decay is not None else None),
                                jax.tree_util.tree_map(lambda a: a + 0, tr),
                                jnp.asarray(jnp.inf, jnp.float32),
                                (jnp.zeros((), jnp.int32), jnp.ones((), jnp.float32))))(trainable)
    first_epoch, since_best = 0, 0
    if resume is not None:
        state = _resumed_carry(resume, state)
        first_epoch, since_best = int(resume.epoch), int(resume.since_best)
        if not 0 <= first_epoch <= max_epochs:
            raise ValueError(f"resume: the state has {first_epoch} epochs done; expected at "
                             f"most max_epochs={max_epochs}")
    state = put(state)
    const_arrays = put(const_arrays)
    train = put(train)
    val = put(val) if val is not None else None
    start_val = math.nan
    if keep_start and resume is None and val is not None and monitor == "val_loss":
        v0 = jax.jit(val_loss)(state[0], const_arrays, val, jax.random.fold_in(key, 2))[0]
        if bool(jnp.isfinite(v0)):
            start_val = float(v0)
            state = put((*state[:3], jnp.asarray(v0, jnp.float32), *state[4:]))

    history = History(num_train=int(n_train), num_val=int(n_val), batch_size=batch_size,
                      steps_per_epoch=int(steps), num_devices=num_devices,
                      monitor=monitor if val is not None else "train_loss")
    if resume is not None:
        history.epochs, history.best_epoch = first_epoch, int(resume.best_epoch)
        history.best_val_loss = float(resume.best_val_loss)
    elif math.isfinite(start_val):
        history.best_val_loss = start_val  # best_epoch -1: the start, until an epoch beats it
    bar = _progress_bar(max_epochs, desc, progress)
    if bar is not None and first_epoch:
        bar.update(first_epoch)
    stop = STOP_MAX_EPOCHS

    def snapshot(epoch_count):
        return TrainState(epoch=epoch_count, carry=state, since_best=since_best,
                          best_epoch=history.best_epoch, best_val_loss=history.best_val_loss)

    try:
        for epoch in range(first_epoch, max_epochs):
            state, out = epoch_jit(state, const_arrays, train, val, jnp.asarray(epoch, jnp.int32))
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
            if val is not None and patience is not None and since_best >= patience:
                stop = STOP_PATIENCE
                break
            if callbacks:
                logs = {"loss": t_loss, "val_loss": v_loss,
                        **{f"val_{k}": v for k, v in zip(metric_names, m_vals)}}
                params_now = eqx.combine(state[0] if ema_decay is None else averaged(state[1]), frozen)
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

    # state[2] starts as a copy of the initial parameters and changes only on improvement
    # (without validation data: on every epoch with a finite training loss).
    best = state[2]
    history.stop_reason = stop
    history.wall_time = time.perf_counter() - start
    if mesh is not None:  # hand back ordinary single-device arrays
        best = jax.device_put(best, jax.local_devices()[0])
    if return_state:
        return eqx.combine(best, frozen), history, snapshot(history.epochs)
    return eqx.combine(best, frozen), history


@dataclasses.dataclass
class TrainState:
    """Where a run of :func:`fit` stopped; ``fit(..., resume=state)`` continues it.

    Attributes
    ----------
    epoch : int
        Epochs done.
    carry : pytree of arrays
        The compiled loop's state: raw trainable weights, optimiser state (with the
        moving average of the weights), best weights, best monitored score, plateau
        counters. A flat list of its leaves (as read back from a file) is accepted too.
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
