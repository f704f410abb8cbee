"""Posterior objects: sample, evaluate, save — for one or many recordings.

:class:`Posterior` is the user-facing object every estimator returns. It owns
sampling, densities, MAP search, batching over observations, compiled-function caching
and the file format; a subclass supplies two pure, jittable functions:

- ``_sample_batch(params, key, x, num_samples) -> (m, num_samples, d)`` for a batch of
  checked observations ``x`` of shape ``(m, *x_shape)``;
- ``_log_prob_batch(params, theta, x) -> (m, k)`` for ``theta`` of shape ``(m, k, d)``.

:class:`DirectPosterior` (NPE) samples its flow directly. A likelihood- or ratio-based
posterior (NLE / NRE) subclasses :class:`Posterior` the same way with an MCMC sampler
in ``_sample_batch`` and sets ``normalized = False``; registering it with
:func:`register_posterior` makes :func:`load_posterior` able to read it.

Files (:meth:`Posterior.save`) are :mod:`bmsbi.io` containers: a JSON header
(schema version, bmsbi version, estimator config, prior spec, normalisation
statistics, observation transform, ``x_shape``, history) and the model weights as
``equinox.tree_serialise_leaves`` bytes, all under a SHA-256 checksum. Loading rebuilds
the network skeleton from the config and reads the weights into it; nothing in a file
is executed.

Beside it, at the same layer: :mod:`bmsbi.observations` turns what a user passes
(observations, raw recordings, trials) into the network's input,
:mod:`bmsbi.inference` holds :class:`Inference` (what :meth:`Posterior.infer`
returns) and :class:`OutOfDistributionWarning` (both re-exported here), and
:mod:`bmsbi.arviz_export` builds :meth:`Posterior.to_arviz`'s ``InferenceData``.
"""

from __future__ import annotations

import io as _stdio
import math
import os
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import paramax

from . import io as bio
from ._checks import as_key, available_memory, check_positive_int, format_bytes, real_array
from .arviz_export import to_inference_data
from .cache import enable_compilation_cache, exported_function
from .engine import History
from .inference import Inference, OutOfDistributionWarning, ood_message
from .observations import finite_rows, observations, ood_scores, prepare, raw_observations
from .prior import Prior, as_prior
from .recording import Recording, RecordingSpec, RecordingWarning
from .robust import check_robust, draw_rows, match
from .xtransform import XTransform

__all__ = ["Posterior", "DirectPosterior", "Inference", "OutOfDistributionWarning", "load_posterior",
           "RecordingWarning",
           "register_posterior", "register_model_builder", "model_skeleton",
           "check_bank_prior", "SCHEMA_VERSION"]

# 2: optional summary pipeline, recording shape and out-of-distribution reference
#    (arrays appended to the payload); version-1 files still load.
# 3: the recordings' sampling rate and channel names (data.recording_fs,
#    data.recording_channels); version-1 and -2 files load with both unknown.
# 4: the observation transform (x_transform, bmsbi.xtransform); older files load with
#    none (every feature z-scored as it is).
SCHEMA_VERSION = 4
_KIND = "posterior"
# Samples processed together per observation chunk when sampling many observations.
_SAMPLES_PER_CHUNK = 1 << 18
# Rejection to a box prior's support: rounds of num_samples flow draws before giving up,
# and flow draws per observation that estimate the accepted mass in log_prob.
_MAX_REJECTION_ROUNDS = 100
_ACCEPTANCE_DRAWS = 4096
# Rounds run for a whole chunk of observations at once (vectorised); observations still
# short after them continue one at a time, so observations with a small accepted fraction
# (near the box's edges, or out of distribution) do not make their whole chunk run every
# round. Two rounds were the fastest of 1, 2, 4 and all (benchmarks/RESULTS.md, section
# "Rejection rounds per observation").
_CHUNK_REJECTION_ROUNDS = 2
THETA_SPACES = ("auto", "unconstrained")


def identity_mask(prior: Prior, theta_space: str) -> np.ndarray:
    """Parameters a DirectPosterior's flow models in their own coordinates (``True``).

    ``"unconstrained"``: none (every parameter through the prior's bijection);
    ``"auto"``: the scalar ``Uniform`` ones (the others, blocks included, through the bijection).
    """
    if theta_space == "unconstrained":
        return np.zeros(prior.dim, bool)
    if theta_space == "auto":
        return np.array([type(d).__name__ == "Uniform" for d in prior.column_distributions()])
    raise ValueError(f"theta_space: expected one of {THETA_SPACES}, got {theta_space!r}")


def check_bank_prior(bank, prior):
    """Validate a bank against a prior; returns ``(theta, x, prior)`` as numpy arrays.

    Raises ``ValueError`` for non-finite rows, a ``theta`` dimension that differs from
    the prior's, or parameters outside the prior's support.
    """
    prior = as_prior(prior)
    if not (hasattr(bank, "theta") and hasattr(bank, "x")):
        raise ValueError(f"bank: expected a bmsbi.Bank (with .theta and .x), got {type(bank).__name__}")
    theta = np.asarray(bank.theta)
    x = np.asarray(bank.x)
    if theta.ndim != 2 or x.ndim < 2 or theta.shape[0] != x.shape[0]:
        raise ValueError(f"bank: expected theta (n, d) and x (n, ...) with the same n, got theta "
                         f"{theta.shape} and x {x.shape}")
    if theta.shape[0] < 2:
        raise ValueError(f"bank: needs at least 2 simulations, got {theta.shape[0]}")
    if theta.shape[1] != prior.dim:
        raise ValueError(
            f"bank: theta has dimension {theta.shape[1]} but the prior has dimension {prior.dim} "
            f"({', '.join(prior.names)}); simulate the bank from this prior")
    bank_names = getattr(bank, "names", None)
    if bank_names is not None and tuple(bank_names) != tuple(prior.names):
        warnings.warn(f"bank names {tuple(bank_names)} differ from the prior's {prior.names}; "
                      "using the prior's", stacklevel=3)
    if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(theta.dtype, np.number):
        raise ValueError(f"bank: expected numeric arrays, got theta {theta.dtype} and x {x.dtype}")
    bad = ~(np.isfinite(theta).all(axis=1) & np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if bad.any():
        raise ValueError(
            f"bank: {int(bad.sum())} of {len(bad)} rows hold NaN or inf (in theta or x); drop "
            "them first, e.g. bmsbi.Bank(bank.theta[ok], bank.x[ok]) with ok the finite rows "
            "(simulate_bank drops them for you)")
    outside = ~np.asarray(prior.jitted("in_support")(jnp.asarray(theta, jnp.float32)))
    if outside.any():
        raise ValueError(
            f"bank: {int(outside.sum())} rows have theta outside the prior's support; the "
            "bank must be simulated from this prior")
    return theta.astype(np.float32), x.astype(np.float32), prior


class Posterior:
    """Base class of bmsbi posteriors (see the module docstring for the subclass hooks).

    Attributes
    ----------
    prior : bmsbi.Prior
    names : tuple of str
        Parameter names (the prior's).
    x_shape : tuple of int
        Shape of one observation.
    history : bmsbi.engine.History or None
        Training history of the estimator.
    config : dict
        Estimator architecture (JSON).
    normalized : bool
        Whether :meth:`log_prob` is a normalised density (``True`` for NPE).
    x_transform : bmsbi.xtransform.XTransform
        Which observation features the network sees in log space (chosen at fit time
        from the bank, ``x_transform=`` of the estimator); applied to every
        observation before it is z-scored. None transformed for posteriors built by
        hand or saved before transforms existed.
    """

    normalized = True
    # Whether robust inference (bmsbi.robust) is offered: it draws once per matched
    # simulation, cheap for a direct sampler (NPE), not for MCMC.
    robust_sampling = False
    # Whether the posterior sums a per-trial log-likelihood over any number of trials
    # (NLE / NRE); NPE takes trials only when trained on a bank with trials (config["trials"]).
    sums_trials = False

    def __init__(self, *, prior: Prior, x_shape, config: dict, history: History | None = None,
                 training: dict | None = None, x_transform: XTransform | None = None):
        self.prior = as_prior(prior)
        self.x_shape = tuple(int(s) for s in x_shape)
        self._jit = {}
        self.x_transform = XTransform.identity(self.x_shape) if x_transform is None else x_transform
        self.config = dict(config)
        self.history = history
        self.training = dict(training or {})
        self.summary = None
        self.recording_shape = None
        self.recording_fs = None
        self.recording_channels = None
        self.ood = None

    @property
    def x_transform(self) -> XTransform:
        """The observation transform (which features the network sees in log space)."""
        return self._x_transform

    @x_transform.setter
    def x_transform(self, value: XTransform) -> None:
        if not isinstance(value, XTransform) or value.x_shape != self.x_shape:
            raise ValueError(f"x_transform: expected a bmsbi.xtransform.XTransform for x_shape "
                             f"{self.x_shape}, got {value!r}")
        self._x_transform = value
        self._jit = {}  # the compiled functions read the transform: trace them again

    def attach_training_data(self, x, *, summary=None, recording_shape=None, meta=None, seed: int = 0):
        """Record how observations are made and an out-of-distribution reference.

        Every estimator's ``fit`` calls it with the training ``x`` (one trial per
        simulation) before returning the posterior; a posterior built by hand calls it
        to take raw recordings and get OOD scores. ``summary`` (a
        :class:`bmsbi.summaries.Summary`, or ``None`` to take ``meta["summary"]``, the
        entry :meth:`simulators.Task.bank` writes) turns a raw recording into one
        observation; ``recording_shape`` is the ``(time, regions)`` it was built for, or
        a :class:`bmsbi.RecordingSpec` / :class:`bmsbi.Recording` that also gives the
        sampling rate and channel names (else taken from ``meta["fs"]`` and
        ``meta["channels"]`` when ``meta["recording_shape"]`` is the shape used).
        An OOD reference (:class:`bmsbi.ood.OODReference`, seeded by ``seed``) is fitted
        to ``x`` (through :attr:`x_transform`, as the network sees it) when it has at
        least 100 rows. Returns the posterior itself.
        """
        from . import summaries
        from .ood import OODReference

        meta = dict(meta or {})
        if summary is None and isinstance(meta.get("summary"), dict):
            summary = summaries.from_dict(meta["summary"])
        if summary is not None and not isinstance(summary, summaries.Summary):
            raise ValueError(f"summary: expected a bmsbi.summaries.Summary, got {type(summary).__name__}")
        fs = channels = None
        if isinstance(recording_shape, Recording):
            recording_shape = RecordingSpec(recording_shape.n_samples, recording_shape.n_channels,
                                            fs=recording_shape.fs, channels=recording_shape.channels)
        if isinstance(recording_shape, RecordingSpec):
            fs, channels = recording_shape.fs, recording_shape.channels
            recording_shape = (recording_shape.n_samples, recording_shape.n_channels)
        if recording_shape is None and meta.get("recording_shape") is not None:
            recording_shape = meta["recording_shape"]
        if recording_shape is not None:
            recording_shape = tuple(int(v) for v in recording_shape)
            if len(recording_shape) != 2 or min(recording_shape) < 1:
                raise ValueError(f"recording_shape: expected (time, regions), got {recording_shape}")
            if summary is not None:
                size = summary.output_size(*recording_shape)
                if size != math.prod(self.x_shape):
                    raise ValueError(
                        f"summary: gives {size} features for recordings {recording_shape}, but the "
                        f"bank's x has shape {self.x_shape}")
            from_meta = meta.get("recording_shape") is not None and \
                tuple(int(v) for v in meta["recording_shape"]) == recording_shape
            if fs is None and channels is None and from_meta:
                fs, channels = meta.get("fs"), meta.get("channels")
            spec = RecordingSpec(*recording_shape, fs=fs, channels=channels)  # validates fs, names
            fs, channels = spec.fs, spec.channels
        self.summary, self.recording_shape = summary, recording_shape
        self.recording_fs, self.recording_channels = fs, channels
        x = self.x_transform.apply(np.asarray(x))
        self.ood = OODReference.fit(x, seed=seed) if len(x) >= 100 else None
        return self

    # -------------------------------------------------------------- subclass hooks
    def _params(self):
        """Pytree of arrays handed to the compiled functions."""
        raise NotImplementedError(f"{type(self).__name__} must implement _params (a hook of bmsbi.Posterior)")

    def _sample_batch(self, params, key, x, num_samples):
        raise NotImplementedError(f"{type(self).__name__} must implement _sample_batch (a hook of bmsbi.Posterior)")

    def _log_prob_batch(self, params, theta, x):
        raise NotImplementedError(f"{type(self).__name__} must implement _log_prob_batch (a hook of bmsbi.Posterior)")

    def _payload(self) -> tuple[dict, bytes]:
        """``(header entries, payload bytes)`` specific to the subclass."""
        raise NotImplementedError(f"{type(self).__name__} must implement _payload (a hook of bmsbi.Posterior)")

    @classmethod
    def _from_file(cls, header: dict, payload: bytes, prior: Prior, history: History | None):
        raise NotImplementedError(f"{cls.__name__} must implement _from_file (a hook of bmsbi.Posterior)")

    # ------------------------------------------------------------------- basics
    @property
    def names(self) -> tuple:
        """Parameter names (the prior's)."""
        return self.prior.names

    @property
    def dim(self) -> int:
        """Number of parameters ``d``."""
        return self.prior.dim

    @property
    def max_trials(self) -> int | float | None:
        """Most iid trials one experiment may have (:class:`bmsbi.Trials`).

        ``K`` for an NPE trained on a bank with ``K`` trials per simulation (every
        observation then passes through its trial embedding, padded to ``K``);
        ``math.inf`` for NLE / NRE, which sum the per-trial log-likelihood (log-ratio);
        ``None`` for an NPE trained without trials (one trial per experiment).
        """
        if self.sums_trials:
            return math.inf
        k = self.config.get("trials")
        return None if k is None else int(k)

    def _check_budget(self, m: int, num_samples: int, arg: str = "num_samples", extra: int = 0) -> None:
        """Refuse ``m x num_samples`` draws that cannot fit in memory (the sampler keeps a few copies).

        ``extra``: further float32 entries held per draw (robust inference: the matched
        simulation each draw is conditioned on).
        """
        need = 4 * m * num_samples * (max(self.dim, 1) + extra) * 4
        avail = available_memory()
        if num_samples >= 2**31 or (avail is not None and need > avail):
            have = "" if avail is None else f", but {format_bytes(avail)} is available"
            raise ValueError(f"{arg}: {m} x {num_samples} draws of {self.dim} parameters need about "
                             f"{format_bytes(need)} of memory{have}; draw fewer")

    def __repr__(self):
        return (f"{type(self).__name__}(names={self.names}, x_shape={self.x_shape}, "
                f"estimator={self.config.get('estimator')}/{self.config.get('density_estimator')})")

    def _trace_identity(self):
        """Everything the sampler's trace reads besides its arguments, as JSON-able data, or ``None``.

        A subclass that returns it has its sampler kept as an exported program in the
        compilation cache (:func:`bmsbi.cache.exported_function`), so a new process skips
        tracing it; ``None`` (the default) keeps a plain ``jax.jit``.
        """
        return None

    def _sampled(self, key, x, num_samples: int):
        """``_sample_batch`` for checked observations ``x``: exported program when cached, else jit."""
        args = (self._params(), key, jnp.asarray(x))
        identity = self._trace_identity()
        if identity is not None:
            run = exported_function("sampler", lambda p, k, xs: self._sample_batch(p, k, xs, num_samples), args,
                                    {"posterior": identity, "num_samples": num_samples})
            if run is not None:
                return run(*args)
        return self._compiled("sample")(*args, num_samples)

    def _compiled(self, name):
        if name not in self._jit:
            if name == "sample":
                self._jit[name] = jax.jit(self._sample_batch, static_argnums=3)
            elif name == "log_prob":
                self._jit[name] = jax.jit(self._log_prob_batch)
            elif name == "map":
                self._jit[name] = jax.jit(self._map_batch, static_argnums=(3, 4, 5))
        return self._jit[name]


    # ------------------------------------------------------------------ public
    def sample(self, key, x_obs, num_samples: int = 1000, *, long: str = "refuse", robust=False) -> jax.Array:
        """Posterior samples for one observation or a batch of observations.

        Parameters
        ----------
        key : jax.random.key
        x_obs : array, shape ``x_shape`` or ``(m, *x_shape)``
            Or, with a stored summary pipeline, raw recordings: a
            :class:`bmsbi.Recording`, a list of them, or arrays (rules in :meth:`infer`;
            changes made to them are reported in a :class:`bmsbi.RecordingWarning`).
            Real numbers only: complex values (whose imaginary part would be lost),
            ragged lists, object or text arrays are a ``ValueError`` naming ``x_obs``, as
            in every method that takes observations.
        num_samples : int
        long : {"refuse", "epochs"}
            A recording longer than trained: refused, or split into whole epochs (a
            batch, one row per epoch); see :meth:`infer`.
        robust : bool or float
            Robust inference (:mod:`bmsbi.robust`): draws from the mixture of the
            posteriors at the stored training simulations that match each observation
            under a heavy-tailed error per feature, instead of conditioning on the
            observation itself. ``True`` uses the default Cauchy scale; a float sets it
            (in training standard deviations). :meth:`infer` also reports the misfit.

        Returns
        -------
        theta : array, ``(num_samples, d)`` for one observation, ``(m, num_samples, d)``
            for a batch; every sample lies inside the prior's support. The whole batch
            is one compiled call (compiled once per shape and cached on the object).

        Examples
        --------
        >>> post.sample(jax.random.key(0), x_obs, 1000).shape  # doctest: +SKIP
        (1000, 2)
        """
        key = as_key(key)
        num_samples = check_positive_int(num_samples, "num_samples")
        scale = check_robust(robust)
        x, batched = observations(self, x_obs, warn_ood=scale is None, long=long)
        self._check_budget(len(x), num_samples)
        if scale is not None:
            out = jnp.asarray(self._robust_sampled(key, x, num_samples, scale)[0])
        else:
            out = self._sampled(key, x, num_samples)
            self._check_draws(out, num_samples)
        return out if batched else out[0]

    def _robust_sampled(self, key, x, num_samples: int, scale: float):
        """``(samples (m, n, d), ess (m,), misfit (m, f))`` of the robust mixture for observations ``x``."""
        if not self.robust_sampling:
            raise ValueError(f"robust: needs a posterior that samples directly (NPE); a {type(self).__name__} "
                             "would run one MCMC chain per matched simulation")
        rows = None if self.ood is None else self.ood.matching_rows
        if rows is None:
            why = ("it has no stored training summaries (trained on fewer than 100 simulations)"
                   if self.ood is None else
                   f"its observations have {self.ood.mean.size} entries (more than 256: stored projected)")
            raise ValueError(f"robust: this posterior cannot match observations to simulations: {why}")
        x = np.asarray(x)
        if x.ndim != len(self.x_shape) + 1:
            raise ValueError("robust: not available for experiments with several trials; pass robust=False")
        z = self.ood.features(self.x_transform.apply(x))
        w, ess, misfit = match(z, rows, scale)
        seed = int(jax.random.randint(jax.random.fold_in(key, 1), (), 0, 2**31 - 1))
        picks = draw_rows(np.random.default_rng(seed), w, num_samples)
        # one network draw per mixture draw: a fixed shape (m * num_samples conditions)
        # per call, so a served posterior compiles it once
        which = np.stack([np.random.default_rng(seed + 1 + i).permutation(np.repeat(r, c))
                          for i, (r, c) in enumerate(picks)]).reshape(-1)
        self._check_budget(len(x), num_samples, extra=rows.shape[1])
        sims = rows[which].astype(np.float64) * self.ood.std + self.ood.mean
        xs = self.x_transform.invert(sims.reshape(which.size, *self.x_shape).astype(np.float32))
        draws = np.asarray(self._sampled(key, xs, 1))
        self._check_draws(draws, 1)
        out = draws.reshape(len(x), num_samples, self.dim)
        return out, ess, misfit

    @property
    def recording_spec(self) -> RecordingSpec | None:
        """What raw recordings this posterior takes: samples, channels, ``fs`` (Hz), names.

        ``None`` when it knows no recording shape (trained on observations only);
        ``fs`` / ``channels`` are ``None`` where unknown (e.g. a file of schema 2).
        """
        if self.recording_shape is None:
            return None
        return RecordingSpec(n_samples=self.recording_shape[0], n_channels=self.recording_shape[1],
                             fs=self.recording_fs, channels=self.recording_channels)

    def summarize(self, recordings, arg="recordings", *, long: str = "refuse"):
        """Observations from raw recordings through the stored summary pipeline.

        Parameters
        ----------
        recordings : Recording, list of Recording, or array
            :class:`bmsbi.Recording` objects are fitted to :attr:`recording_spec` (see
            :meth:`infer` for the rules: resampled, channels reordered by name, longer
            ones split into epochs with ``long="epochs"``). A plain array
            ``(time, regions)``, ``(time,)`` (one region) or ``(m, time, regions)`` is
            taken to be sampled at the trained rate (a :class:`bmsbi.RecordingWarning`
            says so when the posterior knows that rate).
        long : {"refuse", "epochs"}
            What to do with recordings longer than the trained length.

        Returns
        -------
        (x, batched) : ``x`` of shape ``(m, *x_shape)`` (numpy float32, possibly
            non-finite) and whether the result is a batch (a list of recordings, an
            ``(m, time, regions)`` array, or a recording split into several epochs).

        Raises
        ------
        ValueError
            No summary pipeline is stored, or a recording does not fit (wrong channels,
            too short, too long without ``long="epochs"``, a rate that cannot be
            resampled, a transposed array).
        """
        prepared = prepare(self, recordings, arg, long)
        return prepared.x, prepared.batched

    def ood_score(self, x_obs, *, long: str = "refuse"):
        """Out-of-distribution score of observations or raw recordings (see :mod:`bmsbi.ood`).

        Returns the k-nearest-neighbour distance to the training summaries over its
        calibrated threshold: above 1 means unlike the simulations (a scalar for one
        observation, ``(m,)`` for a batch).

        Raises
        ------
        ValueError
            The posterior has no reference (trained on fewer than 100 simulations) or
            the input has the wrong shape.
        """
        if self.ood is None:
            raise ValueError("x_obs: this posterior has no out-of-distribution reference (it needs a "
                             "training bank of at least 100 simulations)")
        prepared = raw_observations(self, x_obs, long=long)
        s = ood_scores(self, prepared.x)
        return s if prepared.batched else s[0]

    def infer(self, key, recordings, num_samples: int = 1000, *, long: str = "refuse",
              robust=False) -> Inference:
        """Amortized inference on new recordings, each with an out-of-distribution flag.

        Recordings are fitted to :attr:`recording_spec`, every change recorded in
        :attr:`Inference.corrections`:

        - another sampling rate: resampled to the trained one by
          ``scipy.signal.resample_poly`` when the rates are a ratio of integers up to
          1000, else ``ValueError`` naming both rates;
        - shorter than trained: ``ValueError`` naming the seconds needed and given;
          longer: see ``long``;
        - channel names on both sides: reordered by name; missing or extra names are
          a ``ValueError`` listing them (select with ``rec.pick(names)``);
        - a plain array keeps its meaning (sampled at the trained rate, its columns in
          the trained order) with one :class:`bmsbi.RecordingWarning` per call when
          the posterior knows its rate; one whose first axis has the trained channel
          count and second does not is a ``ValueError`` suggesting the transpose;
        - a flat (zero-variance) channel — a dead electrode? — is warned about and
          noted, not refused.

        Parameters
        ----------
        key : jax.random.key
        recordings : Recording, list of Recording, or array
            With a stored summary pipeline: :class:`bmsbi.Recording` objects (one, or a
            list for a batch) or plain arrays ``(time, regions)`` / ``(m, time,
            regions)``; without one, observations ``x_shape`` / ``(m, *x_shape)``.
        num_samples : int
        long : {"refuse", "epochs"}
            A recording longer than the trained length is refused (default; the error
            names the options) or, with ``"epochs"``, split into whole epochs of the
            trained length, each a row of the result (:attr:`Inference.source` says
            which recording each row came from; the dropped tail is reported).
        robust : bool or float
            Robust inference for recordings the model cannot fully reproduce
            (:mod:`bmsbi.robust`): the posterior is the mixture of the network's
            posteriors at the stored training simulations that match the recording
            under a heavy-tailed (Cauchy) error per feature, so features no simulation
            reaches are down-weighted instead of extrapolated. ``True``: default scale;
            a float: the Cauchy scale in training standard deviations. The result then
            holds :attr:`Inference.ess` and :attr:`Inference.misfit` (per feature, how
            far the recording is from the simulations it matched).

        Returns
        -------
        Inference
            Samples ``(m, num_samples, d)`` (NaN rows for recordings whose summaries are
            not finite), the observations, OOD scores, p-values and flags, and per row
            a label, the index of its recording and the corrections made. A warning
            names the flagged recordings: their posteriors extrapolate beyond anything
            simulated and should not be trusted.

        Examples
        --------
        >>> res = post.infer(jax.random.key(0), recordings, 1000)  # doctest: +SKIP
        >>> res.samples.shape, res.flagged                              # doctest: +SKIP
        ((3, 1000, 4), array([False, False,  True]))
        >>> res = post.infer(jax.random.key(0), bmsbi.read_recording("rest.edf"), long="epochs")  # doctest: +SKIP
        >>> print(res.report())                                         # doctest: +SKIP
        rest.edf[epoch 0]: resampled from 1000 Hz to 250 Hz (...); epoch 0 of 15 (...)
        """
        key = as_key(key)
        num_samples = check_positive_int(num_samples, "num_samples")
        scale = check_robust(robust)
        prepared = raw_observations(self, recordings, "recordings", long=long)
        x = prepared.x
        self._check_budget(len(x), num_samples)
        finite = finite_rows(self, x)
        if self.ood is not None:
            score, pvalue = ood_scores(self, x), ood_scores(self, x, pvalue=True)
        else:
            score = np.where(finite, np.nan, np.inf)
            pvalue = np.where(finite, np.nan, 0.0)
            warnings.warn("recordings: this posterior has no out-of-distribution reference (it "
                          "was trained on fewer than 100 simulations), so OOD scores are NaN and "
                          "no recording is flagged as unlike the simulations; train on a bank of "
                          "100 or more to get them", OutOfDistributionWarning, stacklevel=2)
        flagged = ~finite | (score > 1.0)
        samples = np.full((len(x), num_samples, self.dim), np.nan, np.float32)
        ess = misfit = feature_names = None
        if scale is not None:
            ess = np.full(len(x), np.nan)
            misfit = np.full((len(x), math.prod(self.x_shape)), np.nan)
            if self.summary is not None and self.recording_shape is not None:
                feature_names = self.summary.feature_names(self.recording_shape[1])
        if finite.any():
            if scale is not None:
                got, ess[finite], misfit[finite] = self._robust_sampled(key, x[finite], num_samples, scale)
            else:
                got = self._sampled(key, x[finite], num_samples)
                self._check_draws(got, num_samples)
            samples[finite] = np.asarray(got)
        if flagged.any():
            warnings.warn(ood_message(flagged, self.ood, robust=scale is not None), OutOfDistributionWarning,
                          stacklevel=2)
        return Inference(samples=samples, x=x, ood_score=np.asarray(score, np.float64),
                         ood_pvalue=np.asarray(pvalue, np.float64), flagged=flagged,
                         names=self.names, labels=prepared.labels, source=prepared.sources,
                         corrections=prepared.corrections, ess=ess, misfit=misfit,
                         feature_names=feature_names)

    def log_prob(self, theta, x_obs, *, long: str = "refuse") -> jax.Array:
        """Posterior log density ``log q(theta | x_obs)``.

        ``x_obs`` may also be raw recordings (:class:`bmsbi.Recording` or arrays) when
        the posterior stores a summary pipeline (as in :meth:`sample`; ``long`` as there).

        Shapes: one observation with ``theta`` ``(d,)`` → scalar, ``(k, d)`` → ``(k,)``;
        a batch ``(m, *x_shape)`` with ``theta`` ``(m, k, d)`` (paired per observation)
        or ``(k, d)`` (the same points for every observation) → ``(m, k)``.
        ``theta`` outside the prior's support gives ``-inf`` (never NaN).
        """
        x, batched = observations(self, x_obs, warn_ood=False, long=long)
        th = np.asarray(real_array(theta, "theta"), np.float32)
        d = self.dim
        if th.ndim == 0 or th.shape[-1] != d:
            raise ValueError(f"theta: expected a last axis of length d={d} ({', '.join(self.names)}), "
                             f"got shape {th.shape}")
        if not batched:
            if th.ndim > 2:
                raise ValueError(f"theta: expected (d,) or (k, d) for one observation, got {th.shape}")
            single = th.ndim == 1
            th = th.reshape(1, -1, d)
        else:
            single = False
            if th.ndim == 2:
                th = np.broadcast_to(th, (len(x),) + th.shape)
            elif th.ndim != 3 or th.shape[0] != len(x):
                raise ValueError(f"theta: expected (k, d) or ({len(x)}, k, d) for {len(x)} "
                                 f"observations, got {th.shape}")
        lp = self._compiled("log_prob")(self._params(), jnp.asarray(th), jnp.asarray(x))
        if batched:
            return lp
        return lp[0, 0] if single else lp[0]

    def map(self, x_obs, *, key=None, num_samples: int = 1000, num_steps: int = 200,
            learning_rate: float = 1e-2, long: str = "refuse") -> jax.Array:
        """Maximum a posteriori estimate(s): best of ``num_samples`` draws, then Adam ascent.

        The ascent runs in the prior's unconstrained space (so it never leaves the
        support) on the posterior density of ``theta``. Returns ``(d,)`` for one
        observation, ``(m, d)`` for a batch. ``num_steps=0`` keeps the best draw.
        ``x_obs`` and ``long`` as in :meth:`sample`.
        """
        key = jax.random.key(0) if key is None else as_key(key)
        num_samples = check_positive_int(num_samples, "num_samples")
        if isinstance(num_steps, (bool, np.bool_)) or not isinstance(num_steps, (int, np.integer)) or num_steps < 0:
            raise ValueError(f"num_steps: expected an int >= 0, got {num_steps!r}")
        num_steps = int(num_steps)
        if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
            raise ValueError(f"learning_rate: expected a positive float, got {learning_rate!r}")
        x, batched = observations(self, x_obs, warn_ood=False, long=long)
        self._check_budget(len(x), num_samples)
        out = self._compiled("map")(self._params(), key, jnp.asarray(x), num_samples, num_steps,
                                    float(learning_rate))
        return out if batched else out[0]

    def _check_draws(self, out, num_samples):
        """Hook after sampling (``out``: ``(m, num_samples, d)``), e.g. to warn; no-op here."""

    def clipped(self, theta) -> np.ndarray:
        """Which draws of this posterior were clipped to the prior's box, shape ``theta.shape[:-1]``.

        When too few of a flow's draws fall inside a box prior to fill a request (an
        observation far from the training simulations), :meth:`sample` fills the rest with
        draws clipped to the box and warns; those lie exactly on a bound and are not
        posterior samples. ``False`` everywhere for posteriors that never clip (NLE, NRE,
        and NPE wherever the flow works in the prior's unconstrained coordinates).

        Examples
        --------
        >>> draws = post.sample(jax.random.key(0), x_obs, 1000)  # doctest: +SKIP
        >>> draws[~post.clipped(draws)]  # only genuine posterior draws  # doctest: +SKIP
        """
        theta = np.asarray(theta)
        if theta.ndim < 1 or theta.shape[-1] != self.dim:
            raise ValueError(f"theta: expected draws of shape (..., {self.dim}), got shape {theta.shape}")
        return np.zeros(theta.shape[:-1], bool)

    def support_mass(self, x_obs, *, long: str = "refuse"):
        """Share of the estimator's own probability mass inside the prior's support, per observation.

        NPE's flow models box-prior parameters in their own coordinates and may spread
        mass past the box; the posterior is that flow cut to the box and renormalised
        (what :meth:`sample` and :meth:`log_prob` return). A small share means the
        posterior presses against a bound of the prior; the box-cut flow is then least
        trustworthy there (its highest-density regions tend to be too small: see
        "Checking a posterior" in the docs). 1.0 for posteriors that cannot leave the
        support (NLE, NRE, and NPE wherever the flow works in the prior's unconstrained
        coordinates).

        NPE counts its flow's draws inside the support, 4,096 per observation with one
        fixed key (the count its :meth:`log_prob` divides by), so a share below 1/4,096
        reads as 1/4,096. ``x_obs`` as in :meth:`log_prob`. Returns a float for one
        observation, ``(m,)`` for a batch.

        Examples
        --------
        >>> post.support_mass(x_obs)  # doctest: +SKIP
        0.97
        """
        x, batched = observations(self, x_obs, warn_ood=False, long=long)
        mass = self._support_mass(x)
        return mass if batched else float(mass[0])

    def _support_mass(self, x) -> np.ndarray:
        """:meth:`support_mass` for prepared observations ``(m, *x_shape)``."""
        return np.ones(len(x))

    def _map_log_prob_batch(self, params, theta, x):
        """``_log_prob_batch`` up to a constant per observation (what MAP search ascends)."""
        return self._log_prob_batch(params, theta, x)

    def _map_batch(self, params, key, x, num_samples, num_steps, learning_rate):
        import optax

        draws = self._sample_batch(params, key, x, num_samples)           # (m, n, d)
        lp = self._map_log_prob_batch(params, draws, x)                    # (m, n)
        best = jnp.take_along_axis(draws, jnp.argmax(lp, axis=1)[:, None, None], axis=1)[:, 0]
        if num_steps == 0:
            return best
        opt = optax.adam(learning_rate)
        prior = self.prior

        def one(theta0, xi):
            def neg(z):
                return -self._map_log_prob_batch(params, prior.from_unconstrained(z)[None, None],
                                                 xi[None])[0, 0]

            def step(carry, _):
                z, st = carry
                g = jax.grad(neg)(z)
                g = jnp.where(jnp.isfinite(g), g, 0.0)
                upd, st = opt.update(g, st)
                return (z + upd, st), neg(z)

            z0 = prior.to_unconstrained(theta0)
            (z, _), _ = jax.lax.scan(step, (z0, opt.init(z0)), None, length=num_steps)
            cand = prior.from_unconstrained(z)
            better = neg(z) <= neg(z0)
            return jnp.where(better, cand, theta0)

        return jax.vmap(one)(best, x)

    def to_arviz(self, key, x_obs, num_samples: int = 1000, num_chains: int | None = None, *,
                 simulator=None, num_prior_samples: int | None = None, feature_names=None,
                 long: str = "refuse"):
        """Posterior, prior and posterior predictive for ONE observation as ``arviz.InferenceData``.

        Groups (ArviZ's schema):

        - ``posterior``: one variable per parameter name, dims ``(chain, draw)``;
        - ``sample_stats``: ``lp``, the posterior log density of each draw (ArviZ's
          ``lp`` is defined up to an additive constant; its ``normalized`` attribute is
          1 for NPE and 0 for the unnormalised NLE / NRE densities);
        - ``prior`` and ``sample_stats_prior`` (``lp`` = prior log density): one chain
          of ``num_prior_samples`` prior draws;
        - ``observed_data``: ``x_obs``;
        - ``posterior_predictive`` (only with ``simulator``): ``x_obs`` simulated at
          every posterior draw (paired with ``posterior`` by chain and draw) through
          :func:`bmsbi.simulate_at`, the simulations
          :func:`bmsbi.diagnostics.posterior_predictive` gives for these draws.

        Built by :func:`bmsbi.arviz_export.to_inference_data`.

        ``x_obs`` has dims ``(x_dim_0, ..., feature)``: its last axis is ``feature``, with
        ``feature_names`` as coordinates when given. The file survives
        ``idata.to_netcdf(path)`` / ``arviz.from_netcdf(path)``.

        Parameters
        ----------
        key : jax.random.key or int
        x_obs : array, shape ``x_shape``
            One observation (call per observation for a batch), or one raw recording
            (a :class:`bmsbi.Recording` or an array; see :meth:`infer`).
        num_samples : int, default 1000
            Draws per chain.
        num_chains : int, optional
            Chains; draws are split into chains by striding (draw ``j`` goes to chain
            ``j % num_chains``), so for an MCMC posterior with ``num_chains`` equal to
            its own NUTS chain count (the default) every chain is one NUTS chain and
            ``r_hat`` is meaningful. Default: that count for MCMC posteriors, else 1
            (independent draws).
        simulator : callable, optional
            ``simulator(theta (d,), key) -> x``; fills ``posterior_predictive``.
        num_prior_samples : int, optional
            Prior draws; default ``num_samples * num_chains``.
        feature_names : sequence of str, optional
            Coordinates of the last axis of ``x`` (e.g. ``task.feature_names``).
        long : {"refuse", "epochs"}
            As in :meth:`sample`; a recording split into several epochs is a batch,
            which ``to_arviz`` refuses (use :meth:`infer`).

        Returns
        -------
        arviz.InferenceData

        Examples
        --------
        >>> idata = post.to_arviz(jax.random.key(0), x_obs, simulator=task.simulator,
        ...                       feature_names=task.feature_names)   # doctest: +SKIP
        >>> az.summary(idata); az.plot_ppc(idata)                       # doctest: +SKIP
        """
        return to_inference_data(self, key, x_obs, num_samples, num_chains, simulator=simulator,
                                 num_prior_samples=num_prior_samples, feature_names=feature_names,
                                 long=long)

    # ---------------------------------------------------------------------- files
    def save(self, path) -> str:
        """Write the posterior to ``path`` (safe format, see the module docstring).

        Written atomically with the permissions of :mod:`bmsbi.io` (``0o666`` less the
        umask); a folder or an unwritable place is a ``ValueError`` naming ``path``.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"path: expected a file path, got {type(path).__name__}")
        entries, payload = self._payload()
        header = {"posterior_class": type(self).__name__, "prior": self.prior.to_dict(),
                  "names": list(self.names), "x_shape": list(self.x_shape),
                  "config": self.config, "training": _json_clean(self.training),
                  "history": None if self.history is None else self.history.to_dict(),
                  "x_transform": self.x_transform.to_dict(), **entries}
        ood_entries, arrays = (None, {}) if self.ood is None else self.ood.to_file()
        extra, index = bio.pack_arrays(arrays)
        header["data"] = {
            "summary": None if self.summary is None else self.summary.to_dict(),
            "recording_shape": None if self.recording_shape is None else list(self.recording_shape),
            "recording_fs": self.recording_fs,
            "recording_channels": None if self.recording_channels is None else list(self.recording_channels),
            "ood": ood_entries, "arrays_offset": len(payload), "arrays_index": index}
        payload = payload + extra
        return bio.write_file(path, kind=_KIND, schema_version=SCHEMA_VERSION, header=header,
                              payload=payload)


def _json_clean(d):
    return {k: (v if v is None or isinstance(v, (str, int, float, bool)) else str(v))
            for k, v in d.items()}


class DirectPosterior(Posterior):
    """Posterior whose samples come straight from a conditional flow (NPE).

    ``model`` is a :class:`bmsbi.estimators.npe.NPEModel` over the standardised
    parameters in the flow's space (``config["theta_space"]``, :func:`identity_mask`:
    the prior's unconstrained coordinates, except that with ``"auto"`` ``Uniform``
    parameters keep their own); ``stats`` holds ``theta_mean``/``theta_std`` (that
    space, ``(d,)``) and ``x_mean``/``x_std`` (``x_shape``).

    Where the flow models a bounded parameter in its own coordinates, draws outside the
    prior's box are rejected and drawn again (up to 100 rounds of ``num_samples``
    draws, stopping sooner once the accepted rate shows they cannot be filled; slots
    still empty then, which needs an accepted fraction under about 1 %, hold draws
    clipped to the box, and ``sample``/``infer`` warn), and :meth:`log_prob`
    divides by the accepted mass, estimated from 4,096 flow draws per observation with
    a fixed key.
    """

    robust_sampling = True

    def __init__(self, model, *, prior, x_shape, stats: dict, config: dict,
                 history: History | None = None, training: dict | None = None,
                 x_transform: XTransform | None = None):
        super().__init__(prior=prior, x_shape=x_shape, config=config, history=history,
                         training=training, x_transform=x_transform)
        self.model = model
        self.stats = {k: np.asarray(stats[k], np.float32)
                      for k in ("theta_mean", "theta_std", "x_mean", "x_std")}
        self._arrays, self._rest = eqx.partition(paramax.unwrap(model), eqx.is_array)
        self._identity = identity_mask(self.prior, self.config.get("theta_space", "unconstrained"))

    def _params(self):
        return (self._arrays, {k: jnp.asarray(v) for k, v in self.stats.items()})

    def _trace_identity(self):
        def described(leaf):  # functions by name: their repr holds a per-process address
            if callable(leaf):
                return f"{getattr(leaf, '__module__', '')}.{getattr(leaf, '__qualname__', type(leaf).__name__)}"
            return repr(leaf)

        try:
            prior = self.prior.to_dict()
        except ValueError:  # a prior bmsbi cannot describe: no exported program, plain jit
            return None
        return {"class": type(self).__name__, "prior": prior, "config": self.config,
                "x_shape": list(self.x_shape), "x_transform": self.x_transform.to_dict(),
                "identity": self._identity.tolist(), "network": str(jax.tree_util.tree_structure(self._rest)),
                "static": [described(v) for v in jax.tree_util.tree_leaves(self._rest)]}

    def _unpack(self, params, x):
        arrays, stats = params
        model = eqx.combine(arrays, self._rest)
        x = self.x_transform.apply(x)
        cond = jax.vmap(model.condition)((x - stats["x_mean"]) / stats["x_std"])
        return model, stats, cond

    def _from_flow(self, z):
        """Parameters from the flow's (unstandardised) coordinates ``z``."""
        return self.prior.from_unconstrained(z, keep=self._identity)

    def _to_flow(self, theta):
        """``(z, log |d theta / d z|)`` for ``theta`` inside the support."""
        z = self.prior.to_unconstrained(theta, keep=self._identity)
        return z, self.prior.log_det_jacobian(z, keep=self._identity)

    def _flow_draws(self, model, stats, key, c, n):
        """``n`` flow draws for condition ``c``, mapped to parameters, and their in-support mask."""
        s = model.flow.sample(key, (n,), condition=c)
        theta = self._from_flow(s * stats["theta_std"] + stats["theta_mean"])
        return theta, self.prior.in_support(theta)

    def _draws_jit(self, num_samples):
        """``(params, key, c) -> (theta, ok)`` as one jitted function per ``num_samples``.

        Called several times inside the sampler's trace (first draws, the rejection
        rounds); as a nested ``jit`` it is traced and lowered once, not once per call
        site, which is most of what a new process spends before its first draws.
        """
        name = ("draws", num_samples)
        if name not in self._jit:
            def draws(params, key, c):
                model = eqx.combine(params[0], self._rest)
                return self._flow_draws(model, params[1], key, c, num_samples)

            self._jit[name] = jax.jit(draws)
        return self._jit[name]

    def _sample_batch(self, params, key, x, num_samples):
        _, _, cond = self._unpack(params, x)
        keys = jax.random.split(key, x.shape[0])
        chunk = max(1, min(x.shape[0], _SAMPLES_PER_CHUNK // num_samples))
        draws = self._draws_jit(num_samples)
        if not self._identity.any():  # every draw maps into the support: no rejection
            def one(args):
                return draws(params, *args)[0]

            return jax.lax.map(one, (keys, cond), batch_size=chunk)

        low, high = (jnp.asarray(b, jnp.float32) for b in self.prior.bounds())

        def place(buf, count, theta, ok):  # accepted draws into the next free slots
            idx = jnp.where(ok, count + jnp.cumsum(ok) - 1, num_samples)
            return buf.at[idx].set(theta, mode="drop"), count + jnp.sum(ok)

        def rounds_up_to(limit, c, state, project=False):  # more rounds until full or `limit` done
            def body(state):
                buf, count, rounds, k = state
                k, sub = jax.random.split(k)
                theta, ok = draws(params, sub, c)
                buf, count = place(buf, count, theta, ok)
                return buf, count, rounds + 1, k

            def more(state):
                _, count, rounds, _ = state
                go = (count < num_samples) & (rounds < limit)
                if project:  # stop early when even an optimistic rate cannot fill the rest in time
                    n = count.astype(jnp.float32)
                    per_round = (n + 2.0 * jnp.sqrt(n) + 3.0) / rounds
                    go = go & (per_round * (limit - rounds) >= num_samples - n)
                return go

            return jax.lax.while_loop(more, body, state)

        def first(args):
            k, c = args
            k0, k = jax.random.split(k)
            theta, ok = draws(params, k0, c)
            buf, count = place(jnp.clip(theta, low, high), 0, theta, ok)
            return rounds_up_to(_CHUNK_REJECTION_ROUNDS, c, (buf, count, 1, k))

        def rest(args):  # one observation at a time: only the short ones draw again
            c, state = args
            return rounds_up_to(_MAX_REJECTION_ROUNDS, c, state, project=True)[0]

        states = jax.lax.map(first, (keys, cond), batch_size=chunk)
        return jax.lax.map(rest, (cond, states))

    def clipped(self, theta) -> np.ndarray:
        on_bound = super().clipped(theta)
        if self._identity.any():  # the rejection fallback puts draws exactly on the bounds
            low, high = (np.asarray(b, np.float32)[self._identity] for b in self.prior.bounds())
            sub = np.asarray(theta)[..., np.flatnonzero(self._identity)]  # NumPy: nothing to compile
            on_bound = np.any((sub == low) | (sub == high), axis=-1)
        return on_bound

    def _check_draws(self, out, num_samples):
        if self._identity.any():
            frac = float(np.max(np.mean(self.clipped(out).reshape(-1, num_samples), axis=-1)))
            if frac >= 0.01:
                warnings.warn(
                    f"{100 * frac:.0f} % of the draws for an observation lie exactly on the prior's "
                    f"bounds: too few of the flow's draws fall inside the prior's box to give "
                    f"{num_samples} within {_MAX_REJECTION_ROUNDS} rounds, and the rest were clipped "
                    f"to it (an observation "
                    "far from the training simulations?); these draws are not posterior samples",
                    stacklevel=3)

    def _support_mass(self, x) -> np.ndarray:
        if not self._identity.any():  # every parameter through the prior's bijection: nothing leaves
            return super()._support_mass(x)
        if "support_mass" not in self._jit:
            self._jit["support_mass"] = jax.jit(
                lambda params, x: jnp.exp(self._log_acceptance(*self._unpack(params, x))))
        return np.asarray(self._jit["support_mass"](self._params(), jnp.asarray(x)), np.float64)

    def _log_acceptance(self, model, stats, cond):
        """Log of the flow's mass inside the prior's support, per condition ``(m,)``."""
        key = jax.random.key(0)

        def one(c):
            _, ok = self._flow_draws(model, stats, key, c, _ACCEPTANCE_DRAWS)
            return jnp.log(jnp.maximum(jnp.mean(ok), 1.0 / _ACCEPTANCE_DRAWS))

        return jax.lax.map(one, cond)

    def _unnormalized_log_prob(self, params, theta, x):
        model, stats, cond = self._unpack(params, x)
        inside = self.prior.in_support(theta.reshape(-1, self.dim)).reshape(theta.shape[:-1])
        safe = jnp.where(inside[..., None], theta, self.prior.interior_point())
        z, log_det = self._to_flow(safe)
        s = (z - stats["theta_mean"]) / stats["theta_std"]
        lp = model.flow.log_prob(s, cond[:, None, :])
        lp = lp - jnp.sum(jnp.log(stats["theta_std"])) - log_det
        return jnp.where(inside & jnp.isfinite(lp), lp, -jnp.inf), (model, stats, cond)

    def _log_prob_batch(self, params, theta, x):
        lp, (model, stats, cond) = self._unnormalized_log_prob(params, theta, x)
        if self._identity.any():
            lp = lp - self._log_acceptance(model, stats, cond)[:, None]
        return lp

    def _map_log_prob_batch(self, params, theta, x):
        return self._unnormalized_log_prob(params, theta, x)[0]

    def _payload(self):
        buf = _stdio.BytesIO()
        eqx.tree_serialise_leaves(buf, self.model)
        stats = {k: v.reshape(-1).tolist() for k, v in self.stats.items()}
        return {"stats": stats}, buf.getvalue()

    @classmethod
    def _from_file(cls, header, payload, prior, history):
        config = header.get("config")
        x_shape = tuple(header["x_shape"])
        skeleton = model_skeleton(config, ("NPE",), prior.unconstrained_dim, x_shape)
        model, stats = read_weights_and_stats(header, payload, skeleton, prior.unconstrained_dim, x_shape)
        return cls(model, prior=prior, x_shape=x_shape, stats=stats, config=config,
                   history=history, training=header.get("training"))


def read_weights_and_stats(header: dict, payload: bytes, skeleton, dim: int, x_shape: tuple):
    """Weights read into ``skeleton`` and the z-scoring statistics of a posterior file."""
    try:
        model = eqx.tree_deserialise_leaves(_stdio.BytesIO(payload), skeleton, filter_spec=_read_leaf)
    except Exception as err:  # shape/structure mismatch: the file does not fit its config
        raise ValueError(f"path: the weights do not match the stored config ({err})") from None
    raw = header.get("stats") or {}
    shapes = {"theta_mean": (dim,), "theta_std": (dim,), "x_mean": x_shape, "x_std": x_shape}
    stats = {}
    for k, shape in shapes.items():
        arr = np.asarray(raw.get(k, []), dtype=np.float32)
        if arr.size != math.prod(shape):
            raise ValueError(f"path: normalisation statistic {k!r} has {arr.size} values, "
                             f"expected {math.prod(shape)}")
        stats[k] = arr.reshape(shape)
    return model, stats


def _read_leaf(f, like):
    """One leaf of a weights file: arrays as by ``eqx.default_deserialise_filter_spec``, through
    ``jax.device_put`` (``jnp.load``'s ``jnp.asarray`` compiles a small program per shape and dtype)."""
    if isinstance(like, (jax.Array, jax.ShapeDtypeStruct)):
        out = np.load(f)
        return jax.device_put(out.view(jnp.bfloat16) if out.dtype == "V2" else out)
    return eqx.default_deserialise_filter_spec(f, like)


_POSTERIOR_TYPES: dict[str, type] = {"DirectPosterior": DirectPosterior}
# Model skeletons by ``config["estimator"]``: the estimator modules (a layer above) register
# their builders when imported, so reading a file needs no import upwards.
_MODEL_BUILDERS: dict = {}


def register_model_builder(estimator: str, build) -> None:
    """Let posterior files whose ``config["estimator"]`` is ``estimator`` rebuild their model.

    ``build(config, dim, x_shape)`` returns the model skeleton (fresh weights) the file's
    weights are read into; NPE, NLE and NRE register theirs when imported.
    """
    _MODEL_BUILDERS[estimator] = build


def model_skeleton(config, accepted: tuple, dim: int, x_shape: tuple):
    """The registered skeleton for ``config``, one of the ``accepted`` estimators, else ``ValueError``."""
    name = config.get("estimator") if isinstance(config, dict) else None
    if name not in accepted or name not in _MODEL_BUILDERS:
        raise ValueError(f"path: the file's estimator config is not an {' or '.join(accepted)} config")
    # Shapes only: the weights are read in afterwards, so no initial values are computed
    # (each would be a small XLA program to compile in every new process). A builder that
    # needs concrete values (a NumPy generator seeded from a derived key) is run as is.
    try:
        return eqx.filter_eval_shape(_MODEL_BUILDERS[name], config, dim, x_shape)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return _MODEL_BUILDERS[name](config, dim, x_shape)


def register_posterior(cls: type) -> type:
    """Let :func:`load_posterior` rebuild ``cls`` (a :class:`Posterior` subclass)."""
    if not (isinstance(cls, type) and issubclass(cls, Posterior)):
        raise ValueError(f"cls: expected a subclass of bmsbi.Posterior, got {cls!r}")
    _POSTERIOR_TYPES[cls.__name__] = cls
    return cls


def load_posterior(path) -> Posterior:
    """Read a posterior written by :meth:`Posterior.save`.

    Raises
    ------
    ValueError
        ``path`` is missing or a folder, the file is not a bmsbi posterior, is truncated
        or altered (checksum), holds no valid prior, or was written by a newer bmsbi
        (upgrade bmsbi to read it).

    Notes
    -----
    Turns on JAX's persistent compilation cache (:func:`bmsbi.enable_compilation_cache`:
    a folder already set in ``jax.config`` is kept, ``BMSBI_COMPILATION_CACHE=0`` turns it
    off), so the loaded posterior's compiled programs are reused by later sessions.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path: expected a file path, got {type(path).__name__}")
    enable_compilation_cache()
    header, payload = bio.read_file(path, kind=_KIND, schema_version=SCHEMA_VERSION)
    name = header.get("posterior_class")
    if name not in _POSTERIOR_TYPES:
        raise ValueError(f"path: unknown posterior class {name!r}; known: {sorted(_POSTERIOR_TYPES)} "
                         "(import the module that registers it first)")
    if not isinstance(header.get("prior"), dict):
        raise ValueError(f"path: {os.fspath(path)!r} holds no prior (got {type(header.get('prior')).__name__}); "
                         "the file is damaged or was not written by Posterior.save")
    try:
        prior = Prior.from_dict(header["prior"])
    except ValueError as err:
        raise ValueError(f"path: {os.fspath(path)!r} holds an invalid prior ({err})") from None
    history = None if header.get("history") is None else History.from_dict(header["history"])
    data = header.get("data")
    if data is None:  # schema version 1: weights only
        return _with_transform(_POSTERIOR_TYPES[name]._from_file(header, payload, prior, history), header)
    try:
        offset = int(data["arrays_offset"])
        arrays = bio.unpack_arrays(payload[offset:], data["arrays_index"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"path: the file's data section is malformed ({err})") from None
    post = _with_transform(_POSTERIOR_TYPES[name]._from_file(header, payload[:offset], prior, history),
                           header)
    from . import summaries
    from .ood import OODReference

    post.summary = None if data.get("summary") is None else summaries.from_dict(data["summary"])
    shape = data.get("recording_shape")
    post.recording_shape = None if shape is None else tuple(int(v) for v in shape)
    if shape is not None:  # schema 3: rate and channel names (None in older files)
        try:
            spec = RecordingSpec(*post.recording_shape, fs=data.get("recording_fs"),
                                 channels=data.get("recording_channels"))
        except ValueError as err:
            raise ValueError(f"path: the file's recording spec is malformed ({err})") from None
        post.recording_fs, post.recording_channels = spec.fs, spec.channels
    post.ood = None if data.get("ood") is None else OODReference.from_file(data["ood"], arrays)
    return post


def _with_transform(post: Posterior, header: dict) -> Posterior:
    """``post`` with the file's observation transform (schema 4; none in older files)."""
    post.x_transform = XTransform.from_dict(header.get("x_transform"), post.x_shape)
    return post
