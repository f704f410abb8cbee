"""Amortized model comparison: posterior model probabilities ``p(model | x)`` from banks.

A classifier over model indices (an MLP on z-scored ``x`` with a softmax over the ``K``
candidate models) is trained on the banks of ``K`` simulators that share a recording
format and summary, by the one training engine (:func:`bmsbi.engine.fit`), with the
cross-entropy loss. Trained on a balanced mixture (each row weighted by
``n / (K n_k)``, so every model counts as much whatever its bank size), its softmax
estimates ``p(k | x)`` under equal prior model probabilities; other prior model
probabilities ``pi`` enter by Bayes' rule, ``p(k | x) ∝ exp(logit_k) pi_k``. The
probabilities are calibrated when the classifier is: :meth:`ModelComparison.calibration`
measures it on held-out simulations (expected calibration error, accuracy, confusion
matrix) and :func:`bmsbi.plotting.plot_model_calibration` shows it.

References
----------
.. [1] Radev, S. T., D'Alessandro, M., Mertens, U. K., Voss, A., Köthe, U., Bürkner,
   P.-C. (2021). Amortized Bayesian model comparison with evidential deep learning.
   IEEE TNNLS.
.. [2] Guo, C., Pleiss, G., Sun, Y., Weinberger, K. Q. (2017). On calibration of modern
   neural networks. ICML (expected calibration error).
"""

from __future__ import annotations

import copy
import dataclasses
import io as _stdio
import json
import math
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import engine
from . import io as bio
from .cache import enable_compilation_cache
from ._checks import as_key, check_positive_fields, check_training_settings, real_array
from .engine import History
from .recording import RecordingSpec
from .trials import Trials
from .xtransform import XTransform

__all__ = ["ModelComparison", "ComparisonCalibration", "load_model_comparison", "expected_calibration_error",
           "format_rows"]

_KIND = "model_comparison"
SCHEMA_VERSION = 1
"""Schema version of model-comparison files this bmsbi writes and reads."""


# ---------------------------------------------------------------- the classifier
def _build(config: dict, dx: int, key):
    """The classifier: an MLP from ``dx`` z-scored features to ``K`` logits."""
    return eqx.nn.MLP(dx, config["num_models"], config["hidden"], config["nn_depth"],
                      activation=jax.nn.silu, key=key)


def _cross_entropy(model, static, batch, key):
    """The engine's loss: class-weighted mean cross-entropy of the model labels (``static`` unused)."""
    x, label, weight = batch
    logits = jax.vmap(model)(x)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), label[:, None], axis=1)[:, 0]
    return jnp.mean(weight * nll)


def _log_probs(model, x_mean, x_std, log_prior, x):
    """``log p(k | x)`` for a batch of raw (not z-scored) observations ``x`` ``(m, *x_shape)``."""
    z = ((x - x_mean) / x_std).reshape(x.shape[0], -1)
    return jax.nn.log_softmax(jax.vmap(model)(z) + log_prior, axis=1)


_LOG_PROBS = eqx.filter_jit(_log_probs)


def _check_prior_probs(prior_probs, models) -> np.ndarray:
    """Prior model probabilities as a ``(K,)`` array in the order of ``models`` (summing to 1)."""
    k = len(models)
    if prior_probs is None:
        return np.full(k, 1.0 / k)
    if isinstance(prior_probs, dict):
        unknown = sorted(set(map(str, prior_probs)) - set(models))
        missing = [m for m in models if m not in prior_probs]
        if unknown or missing:
            raise ValueError(f"prior_probs: expected one probability per model {list(models)}, got keys "
                             f"{list(prior_probs)}" + (f" (unknown: {unknown})" if unknown else "")
                             + (f" (missing: {missing})" if missing else ""))
        values = [prior_probs[m] for m in models]
    else:
        values = prior_probs
    p = np.asarray(real_array(values, "prior_probs", allow_bool=False), np.float64)
    if p.shape != (k,):
        raise ValueError(f"prior_probs: expected {k} probabilities (one per model, in the order "
                         f"{list(models)}), got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"prior_probs: expected finite probabilities >= 0 with a positive sum, got {p.tolist()}")
    if (p == 0).any():
        raise ValueError(f"prior_probs: a model with prior probability 0 ({[m for m, v in zip(models, p) if v == 0]}) "
                         "can never be chosen; leave it out of the banks instead")
    return p / p.sum()


def _check_banks(banks, arg="banks", *, min_models=2) -> tuple[list, list]:
    """``(names, banks)`` from a ``{name: Bank}`` mapping; ``ValueError`` naming ``arg`` otherwise."""
    if not isinstance(banks, dict):
        raise ValueError(f"{arg}: expected a dict {{model name: bmsbi.Bank}}, got {type(banks).__name__}")
    if len(banks) < min_models:
        raise ValueError(f"{arg}: expected at least {min_models} models to compare, got {len(banks)}"
                         + (f" ({list(banks)})" if banks else ""))
    names, out = [], []
    for name, bank in banks.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{arg}: model names must be non-empty strings, got {name!r}")
        if not (hasattr(bank, "x") and hasattr(bank, "meta")):
            raise ValueError(f"{arg}[{name!r}]: expected a bmsbi.Bank, got {type(bank).__name__}")
        if getattr(bank, "trials", None):
            raise ValueError(f"{arg}[{name!r}]: a bank with trials (x of shape (n, K, ...)) is not supported "
                             "by ModelComparison; pass one trial per simulation")
        x = np.asarray(bank.x)
        if len(x) < 1 or not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"{arg}[{name!r}]: expected a non-empty numeric x, got {x.dtype} of shape {x.shape}")
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            raise ValueError(
                f"{arg}[{name!r}]: {int(bad.sum())} of {len(x)} rows of x hold NaN or inf; drop them "
                "first, e.g. bank[bank.finite_mask()] (simulate_bank drops them for you with "
                "on_invalid='drop'); a failed simulation is not evidence for or against its model")
        names.append(name)
        out.append(bank)
    shapes = {n: tuple(b.x_shape) for n, b in zip(names, out)}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{arg}: all banks must share one x shape (the same recording format and summary), "
                         f"got {shapes}")
    return names, out


_FORMAT_KEYS = ("summary", "recording_shape", "fs", "channels")


def _shared_format(names, banks, arg="banks") -> dict:
    """The summary pipeline and recording format the banks record in ``meta`` (all the same)."""
    formats = {n: {k: b.meta.get(k) for k in _FORMAT_KEYS} for n, b in zip(names, banks)}
    first = formats[names[0]]
    for n in names[1:]:
        differ = [k for k in _FORMAT_KEYS if json.dumps(formats[n][k], sort_keys=True)
                  != json.dumps(first[k], sort_keys=True)]
        if differ:
            raise ValueError(
                f"{arg}: {names[0]!r} and {n!r} record different {', '.join(differ)} in their meta "
                f"({', '.join(f'{k}: {first[k]!r:.60} vs {formats[n][k]!r:.60}' for k in differ)}); "
                "models are compared on one shared recording format and summary")
    return first


def format_rows(rows, models) -> str:
    """Text of :meth:`ModelComparison.rows`: one line per row, a column per model, the most probable.

    Examples
    --------
    >>> from bmsbi.comparison import format_rows
    >>> print(format_rows([{"recording": "a", "p_x": 0.25, "p_y": 0.75, "best": "y", "p_best": 0.75}],
    ...                   ["x", "y"]))
    recording       x       y  best
            a  0.2500  0.7500  y
    """
    width = max([9] + [len(r["recording"]) for r in rows])
    cols = [max(len(m), 6) for m in models]
    lines = [f"{'recording':>{width}s}  " + "  ".join(f"{m:>{c}s}" for m, c in zip(models, cols)) + "  best"]
    for r in rows:
        cells = "  ".join(f"{r[f'p_{m}']:>{c}.4f}" for m, c in zip(models, cols))
        lines.append(f"{r['recording']:>{width}s}  {cells}  {r['best']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- calibration
def expected_calibration_error(probabilities, labels, *, num_bins: int = 10, weights=None) -> float:
    """Expected calibration error of predicted model probabilities (top-label, equal-width bins).

    With ``c_i = max_k p_ik`` (the confidence) and ``a_i = [argmax_k p_ik == y_i]`` (hit),
    rows are put in ``num_bins`` equal-width bins of ``c`` on ``[0, 1]`` and
    ``ECE = sum_b (W_b / W) |mean_b(a) - mean_b(c)|`` (means and masses ``W_b`` with the row
    ``weights``; all 1 by default).

    Parameters
    ----------
    probabilities : array, shape ``(m, K)``
    labels : int array, shape ``(m,)``
        True model index of each row.
    num_bins : int, default 10
    weights : array, shape ``(m,)``, optional
        Row weights (e.g. to give each model its prior probability).

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from bmsbi.comparison import expected_calibration_error
    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    >>> round(expected_calibration_error(p, np.array([0, 1, 1]), num_bins=10), 3)
    0.4
    """
    return _reliability(probabilities, labels, num_bins, weights)[0]


def _reliability(probabilities, labels, num_bins, weights=None):
    """``(ece, confidence per bin, accuracy per bin, weight per bin, count per bin)``."""
    p = np.asarray(real_array(probabilities, "probabilities"), np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities: expected shape (m, K) with K >= 2, got {p.shape}")
    y = np.asarray(labels)
    if y.shape != (len(p),) or not np.issubdtype(y.dtype, np.integer) or (y < 0).any() or (y >= p.shape[1]).any():
        raise ValueError(f"labels: expected {len(p)} model indices in [0, {p.shape[1]}), got shape {y.shape}")
    num_bins = int(num_bins)
    if num_bins < 1:
        raise ValueError(f"num_bins: expected a positive int, got {num_bins}")
    w = np.ones(len(p)) if weights is None else np.asarray(weights, np.float64)
    conf = p.max(axis=1)
    hit = (p.argmax(axis=1) == y).astype(np.float64)
    b = np.clip((conf * num_bins).astype(int), 0, num_bins - 1)
    mass = np.bincount(b, w, num_bins)
    count = np.bincount(b, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_conf = np.bincount(b, w * conf, num_bins) / mass
        bin_acc = np.bincount(b, w * hit, num_bins) / mass
    ece = float(np.nansum(mass / mass.sum() * np.abs(bin_acc - bin_conf)))
    return ece, bin_conf, bin_acc, mass / mass.sum(), count


@dataclasses.dataclass
class ComparisonCalibration:
    """How well a :class:`ModelComparison`'s probabilities match held-out simulations.

    Rows are weighted so that each model counts with its prior probability whatever the
    held-out bank sizes (row ``i`` of model ``k``: ``pi_k / n_k``).

    Attributes
    ----------
    models : tuple of str
        Column (and row) order.
    ece : float
        Expected calibration error (:func:`expected_calibration_error`, equal-width bins of
        the top probability on ``[0, 1]``, prior-weighted rows).
    accuracy : float
        Share of rows whose most probable model is the true one (prior-weighted).
    per_model_accuracy : dict of str to float
        The same within each model's held-out bank (the diagonal of :attr:`confusion_rates`).
    confusion : ndarray ``(K, K)`` of int
        Counts: row = true model, column = most probable model.
    bin_edges, bin_confidence, bin_accuracy, bin_weight, bin_count : ndarray
        The reliability diagram: per bin of the top probability its mean confidence, hit
        rate, share of the (weighted) rows and number of rows (``nan`` for empty bins).
    probabilities : ndarray ``(m, K)``
        The held-out rows' model probabilities.
    labels : ndarray ``(m,)`` of int
        Their true model indices.

    Examples
    --------
    >>> cal = mc.calibration(heldout_banks)              # doctest: +SKIP
    >>> print(cal)                                         # doctest: +SKIP
    """

    models: tuple
    ece: float
    accuracy: float
    per_model_accuracy: dict
    confusion: np.ndarray
    bin_edges: np.ndarray
    bin_confidence: np.ndarray
    bin_accuracy: np.ndarray
    bin_weight: np.ndarray
    bin_count: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray

    @property
    def confusion_rates(self) -> np.ndarray:
        """:attr:`confusion` normalised by row: ``[k, j]`` = share of model ``k``'s rows called ``j``."""
        return self.confusion / np.maximum(self.confusion.sum(axis=1, keepdims=True), 1)

    def to_dict(self) -> dict:
        """The numbers as a JSON-ready dict (no per-row arrays)."""
        clean = lambda a: [None if not math.isfinite(v) else float(v) for v in a]  # noqa: E731
        return {"models": list(self.models), "ece": self.ece, "accuracy": self.accuracy,
                "per_model_accuracy": dict(self.per_model_accuracy),
                "confusion": self.confusion.tolist(), "bin_edges": self.bin_edges.tolist(),
                "bin_confidence": clean(self.bin_confidence), "bin_accuracy": clean(self.bin_accuracy),
                "bin_count": self.bin_count.tolist()}

    def __str__(self) -> str:
        width = max([10] + [len(m) for m in self.models])
        lines = [f"expected calibration error {self.ece:.4f} ({len(self.bin_edges) - 1} equal-width bins), "
                 f"accuracy {self.accuracy:.4f} on {len(self.labels)} held-out simulations",
                 "confusion (rows: true model, columns: most probable model; share of the row)",
                 f"{'':>{width}s}  " + "  ".join(f"{m:>{max(len(m), 6)}s}" for m in self.models)]
        rates = self.confusion_rates
        for i, m in enumerate(self.models):
            cells = "  ".join(f"{rates[i, j]:>{max(len(c), 6)}.3f}" for j, c in enumerate(self.models))
            lines.append(f"{m:>{width}s}  {cells}")
        return "\n".join(lines)


# ---------------------------------------------------------------- the estimator
class ModelComparison:
    """Posterior model probabilities ``p(model | x)`` for ``K`` candidate simulators.

    Trains a classifier over model indices on one bank per model (all with the same
    ``x`` shape and, when they record one, the same summary pipeline and recording
    format) with :func:`bmsbi.engine.fit` and the cross-entropy loss. The banks are
    balanced during training (row weights ``n / (K n_k)``), so bank sizes do not act as
    prior model probabilities; the prior is ``prior_probs``.

    Parameters
    ----------
    prior_probs : dict of str to float or sequence of float, optional
        Prior model probabilities (normalised to sum 1; a sequence follows the order of
        the banks given to :meth:`fit`). Default: equal.
    hidden : int, default 64
        Width of the classifier's hidden layers.
    nn_depth : int, default 2
        Hidden layers.
    learning_rate, batch_size, max_epochs, patience, validation_fraction, clip_norm,
    weight_decay, schedule, ema_decay :
        Passed to :func:`bmsbi.engine.fit` (early stopping on the held-out cross-entropy;
        ``patience=None`` runs all ``max_epochs``).

    Attributes
    ----------
    models : tuple of str
        Model names in column order (after :meth:`fit`).
    history : bmsbi.engine.History
        The training run.
    x_shape : tuple of int
        Shape of one observation.
    summary, recording_shape : as for :class:`bmsbi.Posterior`
        How raw recordings become observations (from the banks' ``meta``), or ``None``.

    Examples
    --------
    >>> import jax, numpy as np, bmsbi
    >>> rng = np.random.default_rng(0)
    >>> banks = {"left": bmsbi.Bank(np.zeros((2000, 1)), rng.normal(-1, 1, (2000, 2))),
    ...          "right": bmsbi.Bank(np.zeros((2000, 1)), rng.normal(1, 1, (2000, 2)))}
    >>> mc = bmsbi.ModelComparison(max_epochs=30).fit(banks, key=jax.random.key(0), progress=False)
    >>> mc.models
    ('left', 'right')
    >>> mc.probabilities(np.array([3.0, 3.0])).round(2)       # doctest: +SKIP
    array([0., 1.])
    >>> mc.probabilities(np.zeros((5, 2))).shape
    (5, 2)
    """

    def __init__(self, *, prior_probs=None, hidden: int = 64, nn_depth: int = 2, learning_rate: float = 1e-3,
                 batch_size: int = 256, max_epochs: int = 300, patience: int | None = 20,
                 validation_fraction: float = 0.1, clip_norm: float | None = 5.0, weight_decay: float = 0.0,
                 schedule: str | None = None, ema_decay: float | None = None):
        self.prior_probs = prior_probs
        self.hidden, self.nn_depth = hidden, nn_depth
        self.learning_rate, self.batch_size, self.max_epochs = learning_rate, batch_size, max_epochs
        self.patience, self.validation_fraction, self.clip_norm = patience, validation_fraction, clip_norm
        self.weight_decay, self.schedule, self.ema_decay = weight_decay, schedule, ema_decay
        check_training_settings(self)
        check_positive_fields(self, ("hidden", "nn_depth", "batch_size", "max_epochs"))
        if isinstance(prior_probs, dict):
            _check_prior_probs(prior_probs, tuple(map(str, prior_probs)))
        elif prior_probs is not None:
            _check_prior_probs(prior_probs, tuple(str(i) for i in range(len(np.atleast_1d(prior_probs)))))
        self.models = None
        self.model = None
        self.history = None
        self.x_shape = None
        self.stats = None
        self.prior = None
        self.train_prior = None
        self.summary = self.recording_shape = self.recording_fs = self.recording_channels = None
        self.config = {}

    # Attributes bmsbi.observations reads (a comparison takes no trials, has no OOD reference).
    max_trials = None
    sums_trials = False
    ood = None

    def __repr__(self):
        if self.models is None:
            return f"ModelComparison(hidden={self.hidden}, nn_depth={self.nn_depth}, not fitted)"
        return f"ModelComparison(models={self.models}, x_shape={self.x_shape})"

    def _settings(self) -> dict:
        return {"hidden": int(self.hidden), "nn_depth": int(self.nn_depth)}

    # ------------------------------------------------------------------ training
    def fit(self, banks, *, key, progress: bool = True) -> "ModelComparison":
        """Train on ``{model name: bmsbi.Bank}``; returns this object, fitted.

        Only the banks' ``x`` is used (``theta`` is ignored). The summary pipeline and
        recording format the banks record in ``meta`` (as :meth:`simulators.Task.bank`
        writes them) must agree; they are kept, so :meth:`probabilities` takes raw
        recordings.

        Raises
        ------
        ValueError
            ``banks`` is not a dict of at least two banks, the banks' ``x`` shapes,
            summaries or recording formats differ, a bank holds non-finite rows
            (drop them first: a failed simulation says nothing about its model), or
            ``prior_probs`` does not fit the models.
        """
        key = as_key(key)
        names, bank_list = _check_banks(banks)
        prior = _check_prior_probs(self.prior_probs, tuple(names))
        fmt = _shared_format(names, bank_list)
        x_shape = tuple(bank_list[0].x_shape)
        x = np.concatenate([np.asarray(b.x, np.float32) for b in bank_list])
        counts = np.array([len(b) for b in bank_list])
        label = np.repeat(np.arange(len(names)), counts).astype(np.int32)
        # Each model's rows weigh n / (K n_k): a balanced mixture, equal model prior in training.
        weight = (len(x) / (len(names) * counts))[label].astype(np.float32)
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std = np.where(std > 1e-8 * np.maximum(np.abs(mean), 1.0), std, 1.0).astype(np.float32)
        z = ((x - mean) / std).reshape(len(x), -1).astype(np.float32)

        config = {"estimator": "ModelComparison", "num_models": len(names), **self._settings()}
        model = _build(config, z.shape[1], jax.random.fold_in(key, 0))
        cfg = engine.FitConfig.from_settings(self)
        result = engine.fit(model, _cross_entropy, (z, label, weight), key=jax.random.fold_in(key, 1),
                            config=cfg, progress=progress, desc="ModelComparison")
        self.models, self.model, self.history, self.x_shape = tuple(names), result.params, result.history, x_shape
        self.stats = {"x_mean": mean.astype(np.float32), "x_std": std}
        self.prior = prior
        self.train_prior = np.full(len(names), 1.0 / len(names))
        self.config = config
        self._set_format(fmt)
        return self

    def _set_format(self, fmt: dict) -> None:
        """Keep the summary pipeline and recording format (checked) from a banks' ``meta``."""
        from . import summaries

        summary = fmt.get("summary")
        self.summary = summaries.from_dict(summary) if isinstance(summary, dict) else None
        shape = fmt.get("recording_shape")
        self.recording_shape = None if shape is None else tuple(int(v) for v in shape)
        self.recording_fs = self.recording_channels = None
        if self.recording_shape is not None:
            spec = RecordingSpec(*self.recording_shape, fs=fmt.get("fs"), channels=fmt.get("channels"))
            self.recording_fs, self.recording_channels = spec.fs, spec.channels
            if self.summary is not None and \
                    self.summary.output_size(*self.recording_shape) != math.prod(self.x_shape):
                raise ValueError(f"banks: the recorded summary gives {self.summary.output_size(*self.recording_shape)} "
                                 f"features for recordings {self.recording_shape}, but x has shape {self.x_shape}")

    @property
    def recording_spec(self) -> RecordingSpec | None:
        """What raw recordings :meth:`probabilities` takes (``None`` without a recording format)."""
        if self.recording_shape is None:
            return None
        return RecordingSpec(*self.recording_shape, fs=self.recording_fs, channels=self.recording_channels)

    @property
    def x_transform(self) -> XTransform:
        """The identity: the classifier z-scores observations as they are (no log features)."""
        return XTransform.identity(self.x_shape)

    def _check_fitted(self):
        if self.model is None:
            raise ValueError("ModelComparison: not fitted; call .fit(banks, key=...) or load one with "
                             "bmsbi.load_model_comparison(path)")

    # ------------------------------------------------------------------ use
    def _log_prior_shift(self) -> np.ndarray:
        """``log pi_k - log pi_train_k``: what Bayes' rule adds to the logits."""
        return (np.log(self.prior) - np.log(self.train_prior)).astype(np.float32)

    def with_prior_probs(self, prior_probs) -> "ModelComparison":
        """A copy using other prior model probabilities (no retraining: Bayes' rule on the logits).

        ``prior_probs`` as in the constructor (a dict by model name, or a sequence in the
        order of :attr:`models`; ``None`` for equal ones).

        Examples
        --------
        >>> mc.with_prior_probs({"hopf": 0.9, "jr": 0.1}).probabilities(x_obs)   # doctest: +SKIP
        """
        self._check_fitted()
        out = copy.copy(self)
        out.prior_probs = prior_probs
        out.prior = _check_prior_probs(prior_probs, self.models)
        return out

    def _observations(self, x, arg: str, long: str):
        from .observations import observations

        if isinstance(x, Trials) or (isinstance(x, (list, tuple)) and any(isinstance(v, Trials) for v in x)):
            raise ValueError(f"{arg}: ModelComparison takes observations or recordings, not bmsbi.Trials")
        return observations(self, x, warn_ood=False, arg=arg, long=long)

    def log_probabilities(self, x, *, long: str = "refuse") -> np.ndarray:
        """``log p(model | x)``: like :meth:`probabilities`, in logs (exact for tiny probabilities)."""
        self._check_fitted()
        obs, batched = self._observations(x, "x", long)
        out = np.asarray(_LOG_PROBS(self.model, self.stats["x_mean"], self.stats["x_std"],
                                    self._log_prior_shift(), jnp.asarray(obs)))
        return out if batched else out[0]

    def probabilities(self, x, *, long: str = "refuse") -> np.ndarray:
        """Posterior model probabilities for one observation or a batch.

        Parameters
        ----------
        x : array, shape ``x_shape`` or ``(m, *x_shape)``
            Observations; or, when the banks recorded a summary pipeline, raw recordings
            (a :class:`bmsbi.Recording`, a list of them, or arrays ``(time, regions)`` /
            ``(m, time, regions)``), turned into observations as by
            :meth:`bmsbi.Posterior.summarize`.
        long : {"refuse", "epochs"}
            A recording longer than the trained one: refused, or split into epochs
            (one row each).

        Returns
        -------
        ndarray
            ``(K,)`` for one observation, ``(m, K)`` for a batch; columns follow
            :attr:`models`, rows sum to 1. The batch is one compiled call.

        Raises
        ------
        ValueError
            Naming ``x``: a wrong shape, non-finite values, ragged, complex or text input.

        Examples
        --------
        >>> mc.probabilities(x_obs)                     # doctest: +SKIP
        array([0.93, 0.07])
        """
        return np.exp(self.log_probabilities(x, long=long))

    def rows(self, x, labels=None, *, long: str = "refuse") -> list[dict]:
        """A tidy table: one dict per observation with ``recording``, ``p_<model>`` per model,
        ``best`` (the most probable model) and ``p_best``.

        ``labels`` names the rows (default ``"0"``, ``"1"``, ...).

        Examples
        --------
        >>> mc.rows(x_batch, labels=["a", "b"])[0]["best"]   # doctest: +SKIP
        'hopf'
        """
        p = np.atleast_2d(self.probabilities(x, long=long))
        labels = [str(i) for i in range(len(p))] if labels is None else [str(v) for v in labels]
        if len(labels) != len(p):
            raise ValueError(f"labels: expected {len(p)} labels (one per row), got {len(labels)}")
        out = []
        for lab, row in zip(labels, p):
            best = int(row.argmax())
            out.append({"recording": lab, **{f"p_{m}": float(v) for m, v in zip(self.models, row)},
                        "best": self.models[best], "p_best": float(row[best])})
        return out

    def table(self, x, labels=None, *, long: str = "refuse") -> str:
        """:meth:`rows` as text: one line per observation, a column per model, the most probable.

        Examples
        --------
        >>> print(mc.table(x_batch, labels=["a", "b"]))   # doctest: +SKIP
        recording    hopf      jr  best
                a  0.9312  0.0688  hopf
        """
        return format_rows(self.rows(x, labels, long=long), self.models)

    def calibration(self, banks, *, num_bins: int = 10) -> ComparisonCalibration:
        """Calibration on held-out simulations ``{model name: bmsbi.Bank}`` (not used in training).

        Every bank's name must be one of :attr:`models` (a subset is allowed). Rows are
        weighted so that each model counts with its prior probability, whatever the bank
        sizes. See :class:`ComparisonCalibration` for what is returned and
        :func:`bmsbi.plotting.plot_model_calibration` to draw it.

        Examples
        --------
        >>> cal = mc.calibration({"hopf": held_hopf, "jr": held_jr})   # doctest: +SKIP
        >>> cal.ece, cal.per_model_accuracy                           # doctest: +SKIP
        """
        self._check_fitted()
        names, bank_list = _check_banks(banks, min_models=1)
        unknown = [n for n in names if n not in self.models]
        if unknown:
            raise ValueError(f"banks: unknown models {unknown}; this comparison knows {list(self.models)}")
        if bank_list[0].x_shape != self.x_shape:
            raise ValueError(f"banks: expected x of shape {self.x_shape}, got {bank_list[0].x_shape}")
        index = {m: i for i, m in enumerate(self.models)}
        p = self.probabilities(np.concatenate([np.asarray(b.x, np.float32) for b in bank_list]))
        counts = np.array([len(b) for b in bank_list])
        label = np.repeat([index[n] for n in names], counts)
        prior = self.prior[[index[n] for n in names]]
        weight = (prior / prior.sum() / counts)[np.repeat(np.arange(len(names)), counts)]
        ece, conf, acc, mass, count = _reliability(p, label, num_bins, weight)
        hit = p.argmax(axis=1) == label
        k = len(self.models)
        confusion = np.zeros((k, k), np.int64)
        np.add.at(confusion, (label, p.argmax(axis=1)), 1)
        per_model = {n: float(hit[label == index[n]].mean()) for n in names}
        return ComparisonCalibration(self.models, ece, float(np.sum(weight * hit) / weight.sum()), per_model,
                                     confusion, np.linspace(0, 1, int(num_bins) + 1), conf, acc, mass, count, p,
                                     label)

    # ------------------------------------------------------------------ files
    def save(self, path) -> str:
        """Write to ``path``: a :mod:`bmsbi.io` container (JSON header, weights, checksum; no code).

        Examples
        --------
        >>> mc.save("which_model.bmsbi")                        # doctest: +SKIP
        >>> bmsbi.load_model_comparison("which_model.bmsbi")    # doctest: +SKIP
        """
        self._check_fitted()
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"path: expected a file path, got {type(path).__name__}")
        buf = _stdio.BytesIO()
        eqx.tree_serialise_leaves(buf, self.model)
        weights = buf.getvalue()
        extra, index = bio.pack_arrays({"x_mean": self.stats["x_mean"], "x_std": self.stats["x_std"]})
        header = {"models": list(self.models), "prior_probs": self.prior.tolist(),
                  "train_prior": self.train_prior.tolist(), "config": self.config, "x_shape": list(self.x_shape),
                  "training": {k: getattr(self, k) for k in ("learning_rate", "batch_size", "max_epochs",
                                                             "patience", "validation_fraction")},
                  "history": None if self.history is None else self.history.to_dict(),
                  "summary": None if self.summary is None else self.summary.to_dict(),
                  "recording_shape": None if self.recording_shape is None else list(self.recording_shape),
                  "fs": self.recording_fs,
                  "channels": None if self.recording_channels is None else list(self.recording_channels),
                  "arrays_offset": len(weights), "arrays_index": index}
        return bio.write_file(path, kind=_KIND, schema_version=SCHEMA_VERSION, header=header,
                              payload=weights + extra)


def load_model_comparison(path) -> ModelComparison:
    """Read a :class:`ModelComparison` written by :meth:`ModelComparison.save`.

    Raises
    ------
    ValueError
        ``path`` is missing or a folder, not a model-comparison file, truncated or altered
        (checksum), or written by a newer bmsbi.

    Notes
    -----
    Turns on JAX's persistent compilation cache, as :func:`bmsbi.load_posterior` does
    (:func:`bmsbi.enable_compilation_cache`), so a later process reuses the compiled
    summary pipeline and classifier.

    Examples
    --------
    >>> mc = bmsbi.load_model_comparison("which_model.bmsbi")   # doctest: +SKIP
    >>> mc.models                                               # doctest: +SKIP
    ('hopf', 'jr')
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path: expected a file path, got {type(path).__name__}")
    enable_compilation_cache()
    header, payload = bio.read_file(path, kind=_KIND, schema_version=SCHEMA_VERSION)
    try:
        models = tuple(str(m) for m in header["models"])
        config = dict(header["config"])
        x_shape = tuple(int(v) for v in header["x_shape"])
        offset = int(header["arrays_offset"])
        arrays = bio.unpack_arrays(payload[offset:], header["arrays_index"])
        if config.get("num_models") != len(models) or len(models) < 2:
            raise ValueError(f"{len(models)} models but a classifier over {config.get('num_models')}")
        skeleton = eqx.filter_eval_shape(_build, config, math.prod(x_shape), jax.random.key(0))
        model = eqx.tree_deserialise_leaves(_stdio.BytesIO(payload[:offset]), skeleton)
        stats = {k: np.asarray(arrays[k], np.float32).reshape(x_shape) for k in ("x_mean", "x_std")}
        settings = {k: v for k, v in (header.get("training") or {}).items()
                    if k in ("learning_rate", "batch_size", "max_epochs", "patience", "validation_fraction")}
        mc = ModelComparison(hidden=config["hidden"], nn_depth=config["nn_depth"], **settings)
        mc.models, mc.model, mc.x_shape, mc.stats, mc.config = models, model, x_shape, stats, config
        mc.prior = _check_prior_probs(header["prior_probs"], models)
        mc.prior_probs = dict(zip(models, mc.prior.tolist()))
        mc.train_prior = _check_prior_probs(header.get("train_prior"), models)
        mc.history = None if header.get("history") is None else History.from_dict(header["history"])
        mc._set_format({"summary": header.get("summary"), "recording_shape": header.get("recording_shape"),
                        "fs": header.get("fs"), "channels": header.get("channels")})
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"path: {os.fspath(path)!r} is not a valid model-comparison file ({err})") from None
    return mc
