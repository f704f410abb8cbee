"""Embedding networks: raw simulator output ``x`` → a short feature vector.

An embedding is trained jointly with a density estimator (``bmsbi.NPE(embedding=...)``)
so that the features are the ones the posterior needs. Each net maps ONE sample
``x`` of shape ``in_shape`` to ``(out_dim,)``; batch with ``jax.vmap``.

Time series are laid out time first: ``(T,)`` for one channel or ``(T, C)`` for ``C``
channels (regions, sensors). Sets (i.i.d. trials) are ``(N, F)``: ``N`` elements of
``F`` features.

Every net records its constructor arguments in :meth:`config` (JSON data), so a saved
posterior rebuilds the same architecture with :func:`embedding_from_config` before its
weights are read back; nothing from a file is executed.

References
----------
.. [1] Zaheer, M. et al. (2017). Deep Sets. NeurIPS.
.. [2] Cho, K. et al. (2014). Learning phrase representations using RNN
   encoder-decoder for statistical machine translation (GRU). EMNLP.
.. [3] Radev, S. T. et al. (2020). BayesFlow: learning complex stochastic models with
   invertible neural networks. IEEE TNNLS.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from ._checks import as_key

__all__ = ["Embedding", "MLPEmbedding", "CNN1DEmbedding", "GRUEmbedding", "DeepSetEmbedding", "TrialEmbedding",
           "embedding_from_config", "register_embedding"]

_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "tanh": jnp.tanh, "silu": jax.nn.silu,
                "elu": jax.nn.elu}


def _activation(name):
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]


def _shape(in_shape, arg="in_shape", ndims=(1, 2)):
    shape = (in_shape,) if isinstance(in_shape, int) else tuple(int(s) for s in in_shape)
    if len(shape) not in ndims or any(s <= 0 for s in shape):
        raise ValueError(f"{arg}: expected a shape with {ndims} positive axes, got {in_shape!r}")
    return shape


def _positive(value, arg):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{arg}: expected a positive int, got {value!r}")
    return value


def _widths(value, arg):
    widths = (value,) if isinstance(value, int) else tuple(value)
    for w in widths:
        _positive(w, arg)
    return widths


class Embedding(eqx.Module):
    """Base class: ``__call__(x: in_shape) -> (out_dim,)`` and a JSON :meth:`config`."""

    in_shape: tuple = eqx.field(static=True)
    out_dim: int = eqx.field(static=True)

    def config(self) -> dict:
        """Constructor arguments (JSON), with ``"type"``; rebuild with :func:`embedding_from_config`."""
        raise NotImplementedError(f"{type(self).__name__} must implement config (a hook of bmsbi.embeddings.Embedding)")

    def _check(self, x):
        if x.shape != self.in_shape:
            raise ValueError(
                f"x: {type(self).__name__} expects one sample of shape {self.in_shape}, got "
                f"{x.shape}; map over a batch with jax.vmap")


def _mlp(in_size, out_size, widths, activation, key):
    keys = jax.random.split(key, len(widths) + 1)
    sizes = (in_size, *widths, out_size)
    return [eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys)]


def _run_mlp(layers, act, h):
    for layer in layers[:-1]:
        h = act(layer(h))
    return layers[-1](h)


class MLPEmbedding(Embedding):
    """Fully connected net on the flattened sample.

    Parameters
    ----------
    in_shape : int or tuple
        Shape of one sample (flattened inside).
    out_dim : int, default 16
    hidden : int or sequence of int, default (128, 128)
    activation : str, default "relu"
    key : jax.random.key

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> net = MLPEmbedding((100, 2), out_dim=8, key=jax.random.key(0))
    >>> net(jnp.ones((100, 2))).shape
    (8,)
    """

    hidden: tuple = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    layers: list

    def __init__(self, in_shape, out_dim: int = 16, hidden=(128, 128), activation="relu", *, key):
        self.in_shape = _shape(in_shape, ndims=(1, 2, 3))
        self.out_dim = _positive(out_dim, "out_dim")
        self.hidden = _widths(hidden, "hidden")
        _activation(activation)
        self.activation = activation
        self.layers = _mlp(math.prod(self.in_shape), self.out_dim, self.hidden, activation,
                           as_key(key))

    def __call__(self, x):
        self._check(x)
        return _run_mlp(self.layers, _activation(self.activation), x.reshape(-1))

    def config(self):
        return {"type": "MLPEmbedding", "in_shape": list(self.in_shape), "out_dim": self.out_dim,
                "hidden": list(self.hidden), "activation": self.activation}


class CNN1DEmbedding(Embedding):
    """1-D convolutional net for time series ``(T,)`` or ``(T, C)``.

    Each block is a same-padded convolution, the activation and a stride-``pool``
    max-pool; global average and max pooling over time then feed a linear read-out, so
    the net accepts any ``T`` at construction and is insensitive to where in the window
    an oscillation sits.

    Parameters
    ----------
    in_shape : int or tuple
        ``T`` or ``(T, C)``.
    out_dim : int, default 16
    channels : sequence of int, default (16, 32, 64)
        Feature maps of successive blocks.
    kernel_size : int, default 5
    pool : int, default 2
    activation : str, default "relu"
    key : jax.random.key

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> net = CNN1DEmbedding((200, 3), out_dim=8, key=jax.random.key(0))
    >>> net(jnp.ones((200, 3))).shape
    (8,)
    """

    channels: tuple = eqx.field(static=True)
    kernel_size: int = eqx.field(static=True)
    pool: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    convs: list
    readout: eqx.nn.Linear

    def __init__(self, in_shape, out_dim: int = 16, channels=(16, 32, 64), kernel_size: int = 5,
                 pool: int = 2, activation="relu", *, key):
        self.in_shape = _shape(in_shape)
        self.out_dim = _positive(out_dim, "out_dim")
        self.channels = _widths(channels, "channels")
        self.kernel_size = _positive(kernel_size, "kernel_size")
        self.pool = _positive(pool, "pool")
        _activation(activation)
        self.activation = activation
        in_ch = 1 if len(self.in_shape) == 1 else self.in_shape[1]
        keys = jax.random.split(as_key(key), len(self.channels) + 1)
        convs = []
        for ch, k in zip(self.channels, keys[:-1]):
            convs.append(eqx.nn.Conv1d(in_ch, ch, self.kernel_size, padding="SAME", key=k))
            in_ch = ch
        self.convs = convs
        self.readout = eqx.nn.Linear(2 * in_ch, self.out_dim, key=keys[-1])

    def __call__(self, x):
        self._check(x)
        h = x[None, :] if x.ndim == 1 else x.T  # (C, T)
        act = _activation(self.activation)
        for conv in self.convs:
            h = act(conv(h))
            if self.pool > 1 and h.shape[1] >= 2 * self.pool:
                t = (h.shape[1] // self.pool) * self.pool
                h = h[:, :t].reshape(h.shape[0], -1, self.pool).max(axis=-1)
        return self.readout(jnp.concatenate([h.mean(axis=1), h.max(axis=1)]))

    def config(self):
        return {"type": "CNN1DEmbedding", "in_shape": list(self.in_shape), "out_dim": self.out_dim,
                "channels": list(self.channels), "kernel_size": self.kernel_size,
                "pool": self.pool, "activation": self.activation}


class GRUEmbedding(Embedding):
    """Gated recurrent unit over time; the last hidden state feeds a linear read-out.

    Parameters
    ----------
    in_shape : int or tuple
        ``T`` or ``(T, C)``.
    out_dim : int, default 16
    hidden_size : int, default 64
    stride : int, default 1
        Feed every ``stride``-th time step (cheap subsampling of long, smooth signals).
    key : jax.random.key

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> net = GRUEmbedding(50, out_dim=4, hidden_size=8, key=jax.random.key(0))
    >>> net(jnp.ones(50)).shape
    (4,)
    """

    hidden_size: int = eqx.field(static=True)
    stride: int = eqx.field(static=True)
    cell: eqx.nn.GRUCell
    readout: eqx.nn.Linear

    def __init__(self, in_shape, out_dim: int = 16, hidden_size: int = 64, stride: int = 1, *, key):
        self.in_shape = _shape(in_shape)
        self.out_dim = _positive(out_dim, "out_dim")
        self.hidden_size = _positive(hidden_size, "hidden_size")
        self.stride = _positive(stride, "stride")
        in_ch = 1 if len(self.in_shape) == 1 else self.in_shape[1]
        k1, k2 = jax.random.split(as_key(key))
        self.cell = eqx.nn.GRUCell(in_ch, self.hidden_size, key=k1)
        self.readout = eqx.nn.Linear(self.hidden_size, self.out_dim, key=k2)

    def __call__(self, x):
        self._check(x)
        seq = (x[:, None] if x.ndim == 1 else x)[:: self.stride]

        def step(h, xt):
            return self.cell(xt, h), None

        h, _ = jax.lax.scan(step, jnp.zeros(self.hidden_size, seq.dtype), seq)
        return self.readout(h)

    def config(self):
        return {"type": "GRUEmbedding", "in_shape": list(self.in_shape), "out_dim": self.out_dim,
                "hidden_size": self.hidden_size, "stride": self.stride}


class DeepSetEmbedding(Embedding):
    """Permutation-invariant net for sets ``(N, F)``: ``rho(mean_i phi(x_i))``.

    Use it for i.i.d. trials or unordered repetitions; a ``(N,)`` input is treated as
    ``N`` scalar elements.

    Parameters
    ----------
    in_shape : int or tuple
        ``N`` or ``(N, F)``.
    out_dim : int, default 16
    hidden : sequence of int, default (64, 64)
        Widths of ``phi`` (the per-element net); ``rho`` has one hidden layer of
        ``hidden[-1]``.
    activation : str, default "relu"
    key : jax.random.key

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> net = DeepSetEmbedding((20, 3), out_dim=4, key=jax.random.key(0))
    >>> x = jax.random.normal(jax.random.key(1), (20, 3))
    >>> bool(jnp.allclose(net(x), net(x[::-1]), atol=1e-5))
    True
    """

    hidden: tuple = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    phi: list
    rho: list

    def __init__(self, in_shape, out_dim: int = 16, hidden=(64, 64), activation="relu", *, key):
        self.in_shape = _shape(in_shape)
        self.out_dim = _positive(out_dim, "out_dim")
        self.hidden = _widths(hidden, "hidden")
        _activation(activation)
        self.activation = activation
        feat = 1 if len(self.in_shape) == 1 else self.in_shape[1]
        k1, k2 = jax.random.split(as_key(key))
        self.phi = _mlp(feat, self.hidden[-1], self.hidden[:-1], activation, k1)
        self.rho = _mlp(self.hidden[-1], self.out_dim, (self.hidden[-1],), activation, k2)

    def __call__(self, x):
        self._check(x)
        elems = x[:, None] if x.ndim == 1 else x
        act = _activation(self.activation)
        pooled = jax.vmap(lambda e: act(_run_mlp(self.phi, act, e)))(elems).mean(axis=0)
        return _run_mlp(self.rho, act, pooled)

    def config(self):
        return {"type": "DeepSetEmbedding", "in_shape": list(self.in_shape),
                "out_dim": self.out_dim, "hidden": list(self.hidden),
                "activation": self.activation}


class TrialEmbedding(Embedding):
    """Permutation-invariant embedding of up to ``K`` iid trials of one experiment.

    Input ``(K, *x_shape)``: rows that hold NaN are absent trials (an experiment of
    ``k < K`` trials is padded with NaN rows). Each present trial goes through the
    per-trial net ``phi``; the output is ``[mean_j phi(x_j), mean_j x_j (raw), k / K,
    1 / sqrt(k)]`` — the average over the present trials, so the order of trials does
    not matter, plus the trial count, which sets how narrow the posterior should be.
    NPE builds one for banks with trials (``simulate_bank(..., trials=K)``) and trains
    it on random subsets of ``1..K`` trials (:class:`bmsbi.Trials`).

    Parameters
    ----------
    in_shape : tuple
        ``(K, *x_shape)``: the most trials it takes and the shape of one trial.
    per_trial : Embedding or dict, optional
        ``phi``, with ``in_shape == x_shape`` (or its :meth:`~Embedding.config`); default
        an :class:`MLPEmbedding` with ``out_dim=32`` and ``hidden=(64, 64)``.
    raw : bool, default True
        Also pass the average of the raw (flattened) trials: the sufficient statistic
        of many models, for which then no learning is needed.
    key : jax.random.key

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> net = TrialEmbedding((20, 3), key=jax.random.key(0))
    >>> x = jnp.asarray(np.random.default_rng(0).normal(size=(20, 3)), jnp.float32)
    >>> bool(jnp.allclose(net(x), net(x[::-1]), atol=1e-5))     # the order of trials does not matter
    True
    >>> five = x.at[5:].set(jnp.nan)                             # 5 trials present, 15 absent
    >>> net(five).shape == (net.out_dim,)
    True
    """

    per_trial: Embedding
    raw: bool = eqx.field(static=True)

    def __init__(self, in_shape, per_trial=None, raw: bool = True, *, key):
        in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(int(s) for s in in_shape)
        if len(in_shape) < 2 or min(in_shape) < 1:
            raise ValueError(f"in_shape: expected (K, *x_shape) with K >= 1, got {in_shape}")
        self.in_shape = in_shape
        x_shape = in_shape[1:]
        if per_trial is None:
            per_trial = MLPEmbedding(x_shape, out_dim=32, hidden=(64, 64), key=as_key(key))
        elif isinstance(per_trial, dict):
            per_trial = embedding_from_config(per_trial, key=as_key(key))
        if not isinstance(per_trial, Embedding):
            raise ValueError(f"per_trial: expected a bmsbi.embeddings.Embedding, got {type(per_trial).__name__}")
        if tuple(per_trial.in_shape) != x_shape:
            raise ValueError(f"per_trial: its in_shape {tuple(per_trial.in_shape)} must be one trial's "
                             f"shape {x_shape}")
        self.per_trial = per_trial
        self.raw = bool(raw)
        self.out_dim = per_trial.out_dim + (math.prod(x_shape) if self.raw else 0) + 2

    @property
    def max_trials(self) -> int:
        return self.in_shape[0]

    def __call__(self, x):
        self._check(x)
        k_max = self.in_shape[0]
        flat = x.reshape(k_max, -1)
        present = jnp.all(jnp.isfinite(flat), axis=-1)
        safe = jnp.where(present[:, None], flat, 0.0)  # absent rows never reach phi (no NaN gradients)
        h = jax.vmap(self.per_trial)(safe.reshape(x.shape))
        k = jnp.maximum(jnp.sum(present), 1).astype(h.dtype)
        w = present.astype(h.dtype)[:, None] / k
        parts = [jnp.sum(h * w, axis=0)]
        if self.raw:
            parts.append(jnp.sum(safe * w, axis=0))
        parts.append(jnp.stack([k / k_max, 1.0 / jnp.sqrt(k)]))
        return jnp.concatenate(parts)

    def config(self):
        return {"type": "TrialEmbedding", "in_shape": list(self.in_shape),
                "per_trial": self.per_trial.config(), "raw": self.raw}


_REGISTRY: dict[str, type] = {
    cls.__name__: cls for cls in (MLPEmbedding, CNN1DEmbedding, GRUEmbedding, DeepSetEmbedding,
                                  TrialEmbedding)}


def register_embedding(cls: type) -> type:
    """Allow :func:`embedding_from_config` (and so ``load_posterior``) to rebuild ``cls``.

    ``cls`` must subclass :class:`Embedding`, accept its :meth:`~Embedding.config`
    entries (minus ``"type"``) as keyword arguments plus ``key``, and be registered in
    the loading process before the file is read. Usable as a class decorator.
    """
    if not (isinstance(cls, type) and issubclass(cls, Embedding)):
        raise ValueError(f"cls: expected a subclass of bmsbi.embeddings.Embedding, got {cls!r}")
    _REGISTRY[cls.__name__] = cls
    return cls


def embedding_from_config(config: dict, *, key=None) -> Embedding:
    """Build the embedding that :meth:`Embedding.config` describes (fresh weights).

    Only registered classes (the four above and those passed to
    :func:`register_embedding`) can be named.
    """
    if not isinstance(config, dict) or config.get("type") not in _REGISTRY:
        kind = config.get("type") if isinstance(config, dict) else config
        raise ValueError(
            f"embedding config: unknown type {kind!r}; known: {sorted(_REGISTRY)}. Register a "
            "custom class with bmsbi.embeddings.register_embedding before loading")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k != "type"}
    return _REGISTRY[config["type"]](**kwargs, key=jax.random.key(0) if key is None else key)
