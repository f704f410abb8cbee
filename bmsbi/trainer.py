"""Task Trainer: a brainstate/brainmass network trained on ``(inputs, targets)`` minibatches.

The Trainer is a thin caller of :func:`bmsbi.engine.fit` (the one training loop in
bmsbi): it turns the model into a pure pytree of trainables, supplies a loss over a
minibatch, and hands back a Keras-like :class:`TrainingHistory`. Whole epochs run as one
compiled ``lax.scan``.

Inside the compiled epoch the model is rebuilt from its pytree
(:func:`bmsbi.engine.merge_brainstate`) and run functionally: every minibatch starts from
freshly initialised hidden states that carry the minibatch's leading axis — through
``brainstate.nn.init_all_states(model, batch_size=B)`` where the model honours
``batch_size``, and by broadcasting where it does not (``HORNStep.init_state``) — so
callers never reset or broadcast hidden states by hand, and nothing leaks out of the trace.

References
----------
.. [1] Chollet, F. et al. (2015). Keras: ``Model.fit`` / ``History`` / ``EarlyStopping``.
.. [2] Rusch, T. K., Mishra, S. (2021). Coupled oscillatory recurrent neural network
   (coRNN). ICLR. (The HORN model of brainmass.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import engine
from ._checks import as_key, check_positive_int, real_array

__all__ = ["Trainer", "TrainingHistory", "EarlyStopping", "ModelCheckpoint",
           "cross_entropy", "accuracy", "mean_squared_error"]


# ---------------------------------------------------------------- losses and metrics
def cross_entropy(prediction, target):
    """Mean softmax cross-entropy of logits ``(B, C)`` against integer labels ``(B,)``.

    With one output unit (``(B,)`` or ``(B, 1)`` logits) it is the binary (sigmoid)
    cross-entropy against labels in ``{0, 1}``.
    """
    prediction = jnp.asarray(prediction)
    target = jnp.asarray(target)
    if prediction.ndim == target.ndim + 1 and prediction.shape[-1] > 1:
        logp = jax.nn.log_softmax(prediction, axis=-1)
        picked = jnp.take_along_axis(logp, target.astype(jnp.int32)[..., None], axis=-1)
        return -jnp.mean(picked)
    logits = prediction.reshape(target.shape)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target.astype(logits.dtype)))


def accuracy(prediction, target):
    """Share of correct labels: argmax of logits ``(B, C)``, or ``logit > 0`` for one unit."""
    prediction = jnp.asarray(prediction)
    target = jnp.asarray(target)
    if prediction.ndim == target.ndim + 1 and prediction.shape[-1] > 1:
        label = jnp.argmax(prediction, axis=-1)
    else:
        label = (prediction.reshape(target.shape) > 0).astype(jnp.int32)
    return jnp.mean((label == target.astype(label.dtype)).astype(jnp.float32))


def mean_squared_error(prediction, target):
    """Mean squared error (regression targets of the prediction's shape)."""
    return jnp.mean((jnp.asarray(prediction) - jnp.asarray(target)) ** 2)


# ------------------------------------------------------------------------ callbacks
@dataclasses.dataclass
class EarlyStopping:
    """Stop when ``monitor`` has not improved for ``patience`` epochs; keep its best weights.

    ``monitor`` is ``"val_loss"`` or ``"val_<metric>"``; ``mode="auto"`` maximises
    names containing ``"acc"`` and minimises the rest. The Trainer always restores the
    weights of the best monitored epoch.

    Examples
    --------
    >>> EarlyStopping(monitor="val_accuracy", patience=3).resolved_mode()
    'max'
    """

    monitor: str = "val_loss"
    patience: int | None = 10
    mode: str = "auto"
    min_delta: float = 0.0

    def resolved_mode(self) -> str:
        if self.mode == "auto":
            return "max" if "acc" in self.monitor else "min"
        if self.mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping.mode: expected 'auto', 'min' or 'max', got {self.mode!r}")
        return self.mode


class ModelCheckpoint:
    """Write the trainable weights to ``path`` (bmsbi's safe format, no pickle) after an epoch.

    With ``save_best_only`` (default) only epochs that improve ``monitor`` are written.
    With ``save_state`` the file also holds the training state (optimiser state with the
    schedule's step and any weight average, best weights, patience count, epoch), so a
    run killed part-way continues where the file was written: ``trainer.load_weights(path)``
    then ``trainer.fit(..., resume=True)`` with the same data, key and settings (use
    ``save_best_only=False`` to write every epoch). Without it, :meth:`Trainer.load_weights`
    restores the weights only.
    """

    def __init__(self, path, *, monitor: str = "val_loss", mode: str = "auto",
                 save_best_only: bool = True, save_state: bool = False):
        self.path = str(path)
        self.monitor = monitor
        self.mode = EarlyStopping(monitor=monitor, mode=mode).resolved_mode()
        self.save_best_only = save_best_only
        self.wants_state = bool(save_state)  # the engine then passes state=
        self.best = math.inf
        self.trainer = None

    def __call__(self, epoch, logs, params, state=None):
        value = logs.get(self.monitor, math.nan)
        score = -value if self.mode == "max" else value
        if self.save_best_only and not (math.isfinite(score) and score < self.best):
            return None
        self.best = score if math.isfinite(score) else self.best
        _save_params(self.path, params, {"epoch": int(epoch), "logs": _finite(logs)}, state)
        return None


def _finite(logs):
    return {k: (v if math.isfinite(v) else None) for k, v in logs.items()}


_CKPT_KIND = "bmsbi.trainer.weights"
_CKPT_SCHEMA = 1


def _save_params(path, params, header, state=None):
    """Weights (``w0000``...) and, with ``state`` (an engine ``TrainState``), its arrays
    (``s0000``...) and counters under the header's ``"train_state"``."""
    from . import io

    leaves = jax.tree_util.tree_leaves(params)
    arrays = {f"w{i:04d}": np.asarray(a) for i, a in enumerate(leaves)}
    header = {**header, "num_leaves": len(leaves)}
    if state is not None:
        carry = state.leaves()
        arrays.update({f"s{i:04d}": a for i, a in enumerate(carry)})
        best = float(state.best_val_loss)
        header["train_state"] = {"epoch": int(state.epoch), "since_best": int(state.since_best),
                                 "best_epoch": int(state.best_epoch),
                                 "best_val_loss": best if math.isfinite(best) else None,
                                 "num_leaves": len(carry)}
    payload, index = io.pack_arrays(arrays)
    io.write_file(path, kind=_CKPT_KIND, schema_version=_CKPT_SCHEMA,
                  header={**header, "index": index}, payload=payload)


# -------------------------------------------------------------------------- history
class TrainingHistory:
    """Keras-like record of :meth:`Trainer.fit`.

    Attributes
    ----------
    history : dict of str to list of float
        ``"loss"`` (mean training minibatch loss per epoch), ``"val_loss"`` and
        ``"val_<metric>"`` (after each epoch, when there is a validation set).
    epoch : list of int
        Epoch indices run.
    best_epoch : int
        The epoch whose weights were restored.
    stop_reason : str
        ``"max_epochs"``, ``"patience"``, ``"callback"``, ``"non-finite loss"``...
    wall_time : float
        Seconds in ``fit`` (compilation included).
    engine : bmsbi.engine.History
        The engine's full record.
    """

    def __init__(self, record: engine.History):
        self.engine = record
        self.history = {"loss": list(record.train_loss)}
        if record.val_loss:
            self.history["val_loss"] = list(record.val_loss)
        for name, values in record.val_metrics.items():
            self.history[f"val_{name}"] = list(values)
        self.epoch = list(range(record.epochs - len(record.train_loss), record.epochs))
        self.best_epoch = record.best_epoch
        self.stop_reason = record.stop_reason
        self.wall_time = record.wall_time

    def __repr__(self):
        return (f"TrainingHistory(epochs={len(self.epoch)}, best_epoch={self.best_epoch}, "
                f"keys={sorted(self.history)}, stop_reason={self.stop_reason!r}, "
                f"wall_time={self.wall_time:.2f}s)")


# -------------------------------------------------------------------------- trainer
class Trainer:
    """Train a brainstate / brainmass network on ``(inputs, targets)`` with the bmsbi engine.

    Parameters
    ----------
    model : brainstate.nn.Module
        Any network whose trainables are ``brainstate.ParamState`` /
        ``brainstate.nn.Param(..., fit=True)``. Its hidden states are (re)initialised by
        the Trainer before every minibatch, with the minibatch's leading axis.
    loss : callable
        ``loss(prediction, target) -> scalar`` (objectives style, jit/grad-safe), e.g.
        :func:`cross_entropy`.
    optimizer : optax.GradientTransformation or float
        An optax optimiser, or a learning rate for Adam. Used as is (no added clipping).
    metrics : dict of str to callable, or sequence of callables, optional
        Extra ``metric(prediction, target) -> scalar`` reported as ``val_<name>`` each
        epoch and by :meth:`evaluate` (a function's ``__name__`` names it).
    forward : callable, optional
        ``forward(model, inputs) -> prediction``; default ``model(inputs)``.
    time_major : bool, default True
        Whether ``forward`` receives a minibatch time-major ``(T, B, ...)`` (brainmass
        sequence networks such as ``HORNSeqNetwork`` iterate over the leading axis) or
        batch-major ``(B, T, ...)``. Data handed to :meth:`fit` / :meth:`evaluate` /
        :meth:`predict` are always sample-leading ``(N, T, ...)``, as
        ``brainmass.datasets`` returns them.
    dt : brainunit.Quantity, optional
        Integration step for the model (``brainstate.environ.context(dt=dt)``); default
        the global ``brainstate.environ`` setting at trace time.

    Attributes
    ----------
    params : pytree
        The trainable weights (the best epoch's after :meth:`fit`).
    train_state : bmsbi.engine.TrainState or None
        Where the last :meth:`fit` stopped (or the state read by :meth:`load_weights`):
        what ``fit(..., resume=True)`` continues from.

    Examples
    --------
    >>> import brainmass, brainstate, brainunit as u, jax, optax
    >>> from bmsbi.trainer import Trainer, cross_entropy, accuracy
    >>> x, y = brainmass.datasets.delayed_match_task(64, seq_len=4, n_symbols=2)
    >>> net = brainmass.HORNSeqNetwork(n_input=2, n_hidden=8, n_output=2, alpha=0.2)
    >>> trainer = Trainer(net, cross_entropy, optax.adam(3e-2), metrics={"accuracy": accuracy},
    ...                   dt=1.0 * u.ms)
    >>> hist = trainer.fit((x, y), epochs=2, batch_size=16, validation_split=0.25,
    ...                    key=jax.random.key(0), progress=False)
    >>> sorted(hist.history)
    ['loss', 'val_accuracy', 'val_loss']
    >>> trainer.predict(x[:5]).shape
    (5, 2)
    """

    def __init__(self, model, loss: Callable, optimizer, *, metrics=None,
                 forward: Callable | None = None, time_major: bool = True, dt=None):
        import brainstate

        if not callable(loss):
            raise ValueError(f"loss: expected a callable (prediction, target) -> scalar, "
                             f"got {type(loss).__name__}")
        if forward is not None and not callable(forward):
            raise ValueError(f"forward: expected a callable (model, inputs) -> prediction, "
                             f"got {type(forward).__name__}")
        if isinstance(optimizer, (int, float)) and not isinstance(optimizer, bool):
            if not optimizer > 0:
                raise ValueError(f"optimizer: expected an optax optimiser or a positive "
                                 f"learning rate, got {optimizer!r}")
            optimizer = optax.adam(float(optimizer))
        if not isinstance(optimizer, optax.GradientTransformation):
            raise ValueError(f"optimizer: expected an optax.GradientTransformation or a "
                             f"learning rate, got {type(optimizer).__name__}")
        if not isinstance(model, brainstate.graph.Node):
            raise ValueError(f"model: expected a brainstate / brainmass module, "
                             f"got {type(model).__name__}")
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.metrics = _metric_dict(metrics)
        self.forward = forward if forward is not None else (lambda m, x: m(x))
        self.time_major = bool(time_major)
        self.dt = dt

        # Unbatched hidden-state shapes by path: the reference for "not batched yet".
        brainstate.nn.init_all_states(model)
        self._unbatched = {path: tuple(np.shape(st.value))
                           for path, st in model.states(brainstate.HiddenState).items()
                           if hasattr(st.value, "shape")}
        self._graphdef, params, self._rest = brainstate.graph.treefy_split(
            model, brainstate.ParamState, ...)
        self.params = _strong(params)
        if not engine.trainable_filter_any(self.params):
            raise ValueError(
                f"model: expected at least one trainable parameter (brainstate.ParamState or "
                f"brainstate.nn.Param(..., fit=True)), found none in {type(model).__name__}; "
                f"mark the weights to learn as trainable")
        self._input_shape = None   # per-sample input shape seen by fit, e.g. (T, F)
        self._target_shape = None
        self._jitted = {}
        self.train_state = None  # engine.TrainState of the last fit (or a loaded checkpoint)

    # ------------------------------------------------------------------ functional core
    def _env(self):
        import brainstate

        return (brainstate.environ.context(dt=self.dt) if self.dt is not None
                else contextlib.nullcontext())

    def apply(self, params, inputs, rest=None):
        """Pure forward pass: ``(B, T, ...)`` sample-leading inputs -> predictions ``(B, ...)``.

        jit/grad/vmap-safe: the model is rebuilt from ``params`` and hidden states are
        fresh, batched to ``B``, and discarded afterwards.
        """
        import brainstate

        model = engine.merge_brainstate(params, (self._graphdef, self._rest if rest is None else rest))
        batch = inputs.shape[0]
        with self._env():
            brainstate.nn.init_all_states(model, batch_size=batch)
            for path, st in model.states(brainstate.HiddenState).items():
                ref = self._unbatched.get(path)
                shape = tuple(np.shape(st.value))
                # HORNStep.init_state ignores batch_size: broadcast its states by hand.
                if ref is not None and shape == ref:
                    st.value = jnp.broadcast_to(st.value, (batch,) + ref)
            x = jnp.swapaxes(inputs, 0, 1) if self.time_major else inputs
            return self.forward(model, x)

    def _loss_fn(self, params, rest, batch, key):
        x, y = batch
        return self.loss(self.apply(params, x, rest), y)

    def _metrics_fn(self, params, rest, batch, key):
        x, y = batch
        pred = self.apply(params, x, rest)
        return {name: fn(pred, y) for name, fn in self.metrics.items()}

    # ------------------------------------------------------------------------ checks
    def _inputs(self, inputs, arg="inputs"):
        x = jnp.asarray(real_array(inputs, arg))
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.float32)
        if self._input_shape is None:  # before training: a time axis at least
            if x.ndim < 2:
                raise ValueError(f"{arg}: expected rank >= 2 (samples, time, ...), "
                                 f"got shape {tuple(x.shape)}")
        elif x.ndim != len(self._input_shape) + 1:
            layout = f"(samples, {', '.join(map(str, self._input_shape))})"
            raise ValueError(f"{arg}: expected rank {len(self._input_shape) + 1} {layout} as in "
                             f"training, got shape {tuple(x.shape)}")
        if self._input_shape is not None and tuple(x.shape[1:]) != self._input_shape:
            if self.time_major or len(self._input_shape) >= 2:
                if x.shape[1] != self._input_shape[0]:
                    raise ValueError(
                        f"{arg}: expected {self._input_shape[0]} time steps (axis 1) as in "
                        f"training, got {x.shape[1]} (shape {tuple(x.shape)})")
            raise ValueError(f"{arg}: expected per-sample shape {self._input_shape} as in "
                             f"training, got {tuple(x.shape[1:])} (shape {tuple(x.shape)})")
        if x.shape[0] == 0:
            raise ValueError(f"{arg}: expected at least one sample, got shape {tuple(x.shape)}")
        _check_finite(x, arg)
        return x

    def _pair(self, data, arg):
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise ValueError(f"{arg}: expected an (inputs, targets) pair, got {type(data).__name__}")
        x = self._inputs(data[0], f"{arg}[0] (inputs)")
        y = jnp.asarray(real_array(data[1], f"{arg}[1] (targets)"))
        if y.ndim == 0 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{arg}[1] (targets): expected {x.shape[0]} targets (one per input "
                             f"sample), got shape {tuple(y.shape)}")
        if self._target_shape is not None and tuple(y.shape[1:]) != self._target_shape:
            raise ValueError(f"{arg}[1] (targets): expected per-sample shape {self._target_shape} "
                             f"as in training, got {tuple(y.shape[1:])}")
        _check_finite(y, f"{arg}[1] (targets)")
        return x, y

    def _check_forward(self, x, y):
        """Trace (no compile) one 2-sample minibatch: model, loss and metrics must fit."""
        xb, yb = x[:2], y[:2]
        try:
            pred = jax.eval_shape(lambda p, r: self.apply(p, xb, r), self.params, self._rest)
        except Exception as err:  # say which argument to look at
            raise ValueError(f"inputs: the model could not run a minibatch of shape "
                             f"{tuple(xb.shape)} (time_major={self.time_major}): "
                             f"{type(err).__name__}: {err}") from err
        if not hasattr(pred, "shape") or not pred.shape or pred.shape[0] != xb.shape[0]:
            raise ValueError(f"forward: expected a prediction with the batch on axis 0 "
                             f"(shape ({xb.shape[0]}, ...)), got {getattr(pred, 'shape', pred)}")
        for name, fn in (("loss", self.loss), *((f"metrics[{n!r}]", f) for n, f in self.metrics.items())):
            try:
                out = jax.eval_shape(fn, pred, jax.ShapeDtypeStruct(yb.shape, yb.dtype))
            except Exception as err:
                raise ValueError(f"targets: {name} could not compare predictions of shape "
                                 f"{pred.shape} with targets of shape {tuple(yb.shape)}: {err}") from err
            if getattr(out, "shape", None) != ():
                raise ValueError(f"{name}: expected a scalar, got shape {getattr(out, 'shape', out)}")

    # --------------------------------------------------------------------------- fit
    def fit(self, train_data, *, epochs: int, batch_size: int, validation_data=None,
            validation_split: float | None = None, key, callbacks: Sequence = (),
            progress: bool = True, ema_decay: float | None = None,
            resume=False) -> TrainingHistory:
        """Train on ``train_data = (inputs, targets)``; restore the best weights.

        Parameters
        ----------
        train_data : (inputs, targets)
            ``inputs`` ``(N, T, ...)`` sample-leading, ``targets`` ``(N, ...)``: finite
            real numbers (NaN / inf, complex, ragged or non-numeric data are a
            ``ValueError`` naming the argument, here and in :meth:`evaluate` /
            :meth:`predict`).
        epochs : int
            Most epochs to run (each one compiled ``lax.scan``; ``N % batch_size``
            shuffled rows are left out of each epoch).
        batch_size : int
        validation_data : (inputs, targets), optional
            Held-out set evaluated after every epoch (loss and metrics).
        validation_split : float, optional
            Or hold out this share of ``train_data`` instead.
        key : jax.random.key or int
            Drives the split and shuffling; same key, same result.
        callbacks : sequence
            :class:`EarlyStopping` (monitor any ``val_*``; default: keep the best
            ``val_loss`` epoch, no early stop), :class:`ModelCheckpoint`, or callables
            ``cb(epoch, logs) -> bool`` (``True`` stops).
        progress : bool, default True
            tqdm bar.
        ema_decay : float in (0, 1), optional
            Validate, checkpoint and keep a moving average of the weights
            (:func:`bmsbi.engine.fit`).
        resume : bool or path, default False
            ``True``: continue from the training state of this trainer's last ``fit``
            (:attr:`train_state`) or of a checkpoint read with :meth:`load_weights`; a
            path: read that checkpoint first. The run goes on to ``epochs`` in all;
            with the same data, ``key`` and settings it ends as one uninterrupted
            run would (:func:`bmsbi.engine.fit`, ``resume``).

        Returns
        -------
        TrainingHistory
            ``history.history["loss"]``, ``["val_loss"]``, ``["val_<metric>"]``.
        """
        epochs = check_positive_int(epochs, "epochs")
        batch_size = check_positive_int(batch_size, "batch_size")
        key = as_key(key)
        if resume is not False and resume is not True:
            if not isinstance(resume, (str, os.PathLike)):
                raise ValueError(f"resume: expected True, False or a checkpoint path, "
                                 f"got {type(resume).__name__}")
            self.load_weights(resume)
        if resume is not False and self.train_state is None:
            raise ValueError("resume: this Trainer holds no training state; run fit first, or "
                             "read a checkpoint written with ModelCheckpoint(save_state=True)")
        before = (self._input_shape, self._target_shape)
        try:  # the training data set the expected shapes; keep the old ones if refused
            self._input_shape = self._target_shape = None
            x, y = self._pair(train_data, "train_data")
            self._input_shape, self._target_shape = tuple(x.shape[1:]), tuple(y.shape[1:])
            self._check_forward(x, y)
            val = None if validation_data is None else self._pair(validation_data, "validation_data")
        except ValueError:
            self._input_shape, self._target_shape = before
            raise
        fraction = 0.0
        if validation_data is not None:
            if validation_split is not None:
                raise ValueError("validation_split: give validation_data or validation_split, not both")
        elif validation_split is not None:
            if not 0.0 < validation_split < 1.0:
                raise ValueError(f"validation_split: expected a float in (0, 1), got {validation_split!r}")
            fraction = float(validation_split)

        monitor, mode, patience, min_delta = "val_loss", "min", None, 0.0
        plain = []
        for cb in callbacks:
            if isinstance(cb, EarlyStopping):
                monitor, mode, patience, min_delta = cb.monitor, cb.resolved_mode(), cb.patience, cb.min_delta
            elif isinstance(cb, ModelCheckpoint):
                plain.append(cb)
            elif callable(cb):
                plain.append(lambda e, logs, p, cb=cb: cb(e, logs))
            else:
                raise ValueError(f"callbacks: expected EarlyStopping, ModelCheckpoint or callables, "
                                 f"got {type(cb).__name__}")
        if monitor != "val_loss" and monitor[4:] not in self.metrics:
            raise ValueError(f"EarlyStopping.monitor: expected 'val_loss' or one of "
                             f"{['val_' + m for m in self.metrics]}, got {monitor!r}")

        config = engine.FitConfig(clip_norm=None, batch_size=batch_size, max_epochs=epochs,
                                  validation_fraction=fraction, patience=patience, min_delta=min_delta,
                                  monitor=monitor, monitor_mode=mode, ema_decay=ema_decay)
        result = engine.fit(
            self.params, self._loss_fn, (x, y), key=key, static=self._rest, optimizer=self.optimizer,
            config=config, validation_data=val,
            metrics_fn=self._metrics_fn if self.metrics else None, callbacks=tuple(plain),
            progress=progress, desc="Trainer.fit",
            resume=self.train_state if resume is not False else None)
        self.train_state = result.state
        self.set_params(result.params)
        return TrainingHistory(result.history)

    # ----------------------------------------------------------------- after training
    def set_params(self, params):
        """Use ``params`` (a :attr:`params`-shaped pytree) and write them into the model."""
        import brainstate

        self.params = _strong(params)
        brainstate.graph.update_states(self.model, self.params)

    def load_weights(self, path):
        """Load weights written by :class:`ModelCheckpoint` or :meth:`save_checkpoint`
        (checked, no pickle); a training state in the file becomes :attr:`train_state`,
        for ``fit(..., resume=True)``. Returns the file's header."""
        from . import io

        header, payload = io.read_file(path, kind=_CKPT_KIND, schema_version=_CKPT_SCHEMA)
        arrays = io.unpack_arrays(payload, header["index"])
        leaves, treedef = jax.tree_util.tree_flatten(self.params)
        if int(header.get("num_leaves", -1)) != len(leaves):
            raise ValueError(f"path: the file holds {header.get('num_leaves')} weight arrays, "
                             f"the model has {len(leaves)}")
        new = [arrays[f"w{i:04d}"] for i in range(len(leaves))]
        for i, (a, b) in enumerate(zip(leaves, new)):
            if tuple(np.shape(a)) != tuple(np.shape(b)):
                raise ValueError(f"path: weight {i} has shape {np.shape(b)}, the model expects "
                                 f"{np.shape(a)}")
        state = header.get("train_state")
        self.set_params(jax.tree_util.tree_unflatten(treedef, new))
        if state is not None:
            best = state["best_val_loss"]
            self.train_state = engine.TrainState(
                epoch=int(state["epoch"]), since_best=int(state["since_best"]),
                best_epoch=int(state["best_epoch"]),
                best_val_loss=math.nan if best is None else float(best),
                carry=[arrays[f"s{i:04d}"] for i in range(int(state["num_leaves"]))])
        return header

    def save_checkpoint(self, path):
        """Write the current weights and, after a ``fit``, its training state to ``path``.

        :meth:`load_weights` reads it back (in a new process too); then
        ``fit(..., resume=True)`` continues the run, e.g. to more ``epochs``.
        """
        _save_params(path, self.params, {"epoch": None if self.train_state is None
                                         else int(self.train_state.epoch) - 1, "logs": {}},
                     self.train_state)

    def _compiled(self, what):
        if what not in self._jitted:
            if what == "predict":
                fn = lambda p, r, x: self.apply(p, x, r)  # noqa: E731
            else:
                def fn(p, r, x, y):
                    pred = self.apply(p, x, r)
                    out = {"loss": self.loss(pred, y)}
                    out.update({n: m(pred, y) for n, m in self.metrics.items()})
                    return out
            self._jitted[what] = jax.jit(fn)
        return self._jitted[what]

    def predict(self, inputs, *, batch_size: int = 1024):
        """Predictions for ``inputs`` ``(N, T, ...)`` with the current weights, ``(N, ...)``."""
        x = self._inputs(inputs)
        batch_size = check_positive_int(batch_size, "batch_size")
        fn = self._compiled("predict")
        outs = [fn(self.params, self._rest, x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return jnp.concatenate(outs, axis=0) if len(outs) > 1 else outs[0]

    def evaluate(self, data, *, batch_size: int = 1024) -> dict:
        """Loss and metrics on ``data = (inputs, targets)``: ``{"loss": ..., "<metric>": ...}``.

        Chunk values are averaged weighted by chunk size (exact for mean-type metrics).
        """
        x, y = self._pair(data, "data")
        batch_size = check_positive_int(batch_size, "batch_size")
        fn = self._compiled("evaluate")
        total, n = {}, x.shape[0]
        for i in range(0, n, batch_size):
            out = fn(self.params, self._rest, x[i:i + batch_size], y[i:i + batch_size])
            w = min(batch_size, n - i) / n
            for k, v in out.items():
                total[k] = total.get(k, 0.0) + w * float(v)
        return total


def _check_finite(a, arg):
    """Refuse NaN / inf in data: they would be trained on (or predicted from) without a word."""
    bad = int(jnp.size(a) - jnp.sum(jnp.isfinite(a))) if jnp.issubdtype(a.dtype, jnp.inexact) else 0
    if bad:
        rows = np.flatnonzero(~np.asarray(jnp.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)))
        raise ValueError(f"{arg}: expected finite values, got {bad} NaN/inf in {rows.size} of "
                         f"{a.shape[0]} samples (first: sample {rows[0]}); drop or repair those samples")


def _strong(tree):
    # Weak-typed leaves (from Python-float initialisers) turn strong after one optimiser
    # step, which would recompile the engine's epoch: make them strong from the start.
    return jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), tree)


def _metric_dict(metrics) -> dict:
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
    elif callable(metrics):
        items = [(getattr(metrics, "__name__", "metric"), metrics)]
    else:
        items = [(getattr(m, "__name__", f"metric{i}"), m) for i, m in enumerate(metrics)]
    out = {}
    for name, fn in items:
        if not callable(fn):
            raise ValueError(f"metrics: expected callables (prediction, target) -> scalar, "
                             f"got {type(fn).__name__} for {name!r}")
        out[str(name)] = fn
    return out
