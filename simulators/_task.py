"""The :class:`Task` record: a prior, a brainmass simulator and a default summary.

A task bundles what one needs to run simulation-based inference on a brainmass
model: named parameters with physically sensible ranges (:attr:`Task.prior`), a
synthetic recording generator built on :class:`brainmass.Simulator`
(:meth:`Task.observe`), a default summary statistic (:attr:`Task.summary`) and
their composition (:meth:`Task.simulate`), which is what
:func:`bmsbi.simulate_bank` maps over parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

import bmsbi
from bmsbi._checks import as_key, check_positive_int
from bmsbi.summaries import Summary

__all__ = ["Task", "white_noise_sigma", "as_float32", "add_measurement_noise", "record",
           "is_task_name", "split_reference", "FS", "TRANSIENT_MS", "DURATION_MS", "N_TIME"]

# The recording protocol every task shares: 0.5 s transient discarded, 4 s at 250 Hz.
FS = 250.0  # Hz
TRANSIENT_MS = 500.0
DURATION_MS = 4000.0
N_TIME = round(DURATION_MS * FS / 1000.0)

# A task name (no ':'), and a 'package.module:attribute' reference (dotted names both sides).
_NAME = re.compile(r"[\w.-]+")
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_REFERENCE = re.compile(rf"({_DOTTED}):({_DOTTED})")


def is_task_name(name) -> bool:
    """Whether ``name`` can name a task: letters, digits, ``_``, ``.``, ``-`` (no ``:``).

    Examples
    --------
    >>> is_task_name("wc_lfp"), is_task_name("wc_lfp:task")
    (True, False)
    """
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def split_reference(ref) -> tuple[str, str] | None:
    """``(module, attribute)`` of a ``"package.module:attribute"`` reference, else ``None``.

    Examples
    --------
    >>> split_reference("my_tasks.wc:task"), split_reference("hopf_node")
    (('my_tasks.wc', 'task'), None)
    """
    m = _REFERENCE.fullmatch(ref) if isinstance(ref, str) else None
    return (m.group(1), m.group(2)) if m else None


def record(model, dt: float, monitors, *, unit_ms: float = 1.0):
    """Run ``model`` through :class:`brainmass.Simulator` under the shared protocol.

    Parameters
    ----------
    model : brainstate module
        A brainmass node or network, built inside the caller's
        ``brainstate.random.seed_context``.
    dt : float
        Integration step in model time units (``brainunit.ms``).
    monitors : list of str or callable
        Passed to :meth:`brainmass.Simulator.run`.
    unit_ms : float
        Physical milliseconds per model time unit (e.g. a membrane time constant for
        models written in units of ``tau_m``).

    Returns
    -------
    dict
        The simulator's monitored arrays, transient dropped, sampled at :data:`FS`.
    """
    import brainmass
    import brainunit as u

    return brainmass.Simulator(model, dt=dt * u.ms).run(
        (TRANSIENT_MS + DURATION_MS) / unit_ms * u.ms, monitors=monitors,
        transient=TRANSIENT_MS / unit_ms * u.ms, sample_every=round(1000.0 / FS / unit_ms / dt),
        jit=False)


def white_noise_sigma(sigma, dt_ms: float):
    """Per-step standard deviation of a white-noise input of intensity ``sigma``.

    brainmass's :class:`~brainmass.GaussianNoise` draws an independent value each
    step and the integrators multiply inputs by ``dt``; scaling its ``sigma`` by
    ``1 / sqrt(dt)`` makes the per-step increment ``sigma * sqrt(dt) * N(0, 1)``
    (Euler-Maruyama), so ``sigma`` means the same thing at any ``dt``: the
    intensity of the Wiener process, in state units per ``sqrt(ms)``.
    """
    return sigma / math.sqrt(dt_ms)


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A ready-made inference task: prior + brainmass simulator + default summary.

    Parameters
    ----------
    name : str
        Registry name, e.g. ``"hopf_node"``.
    prior : bmsbi.Prior
        Named prior over the task's parameters (column order of ``theta``).
    observe_fn : callable
        ``observe_fn(theta (d,), key) -> recording (time, regions)``; JAX-traceable,
        builds and runs the brainmass model. Use :meth:`observe`, which checks its
        arguments.
    summary : bmsbi.summaries.Summary
        Default summary statistic of a recording sampled at ``fs``.
    fs : float
        Sampling rate of the recording, Hz.
    n_time, n_regions : int
        Shape of the recording.
    true_theta : tuple of float
        An example parameter, aligned with ``prior.names``, for demos and tests.
    description : str
        One paragraph on the model, the observable and the noise.
    units : dict of str -> str
        Unit of each parameter (``""`` when dimensionless) and of the recording
        (key ``"recording"``).
    obs_noise : float
        Standard deviation of the white measurement noise added to the recording,
        in recording units.
    channels : tuple of str, optional
        Name of each recording column (e.g. atlas regions); ``None`` when the columns
        are anonymous.
    reference : str, optional
        How another process finds this task again (see :attr:`ref`): a
        ``"package.module:attribute"`` reference or a name known to
        :func:`simulators.get`; ``None`` (default) means ``name``.
        :func:`simulators.get` sets it to the reference it was given, so
        ``simulators.get("my_tasks:task").bank(...)`` writes a bank that ``bmsbi train``
        can use without being told the task.
    budget : int, default 20000
        The task's default simulation budget: the bank size ``bmsbi demo`` and
        ``benchmarks/calibration.py`` use when not told one, and what :meth:`bank`
        simulates when called without ``n``. The shipped single-node tasks keep the
        default, sized so that the default NPE is calibrated on them
        (``benchmarks/RESULTS.md``, the calibration sections); the 94-region BOLD
        tasks set 5,000, their simulations being some 500 times slower.

    Examples
    --------
    >>> import jax, simulators
    >>> task = simulators.get("hopf_node")
    >>> x = task.simulate(task.true_theta, jax.random.key(0))
    >>> x.shape == (task.summary.output_size(task.n_time, task.n_regions),)
    True
    """

    name: str
    prior: bmsbi.Prior
    observe_fn: Callable[[Any, Any], jax.Array]
    summary: Summary
    fs: float
    n_time: int
    n_regions: int
    true_theta: tuple[float, ...]
    description: str
    units: Mapping[str, str]
    obs_noise: float = 0.0
    channels: tuple[str, ...] | None = None
    reference: str | None = None
    budget: int = 20_000

    def __post_init__(self):
        if not is_task_name(self.name):
            raise ValueError(f"name: expected a task name of letters, digits, '_', '.' or '-', got {self.name!r}")
        if self.reference is not None and not (is_task_name(self.reference) or split_reference(self.reference)):
            raise ValueError(f"reference: expected a task name or 'package.module:attribute', "
                             f"got {self.reference!r}")
        object.__setattr__(self, "budget", check_positive_int(self.budget, "budget"))
        if not isinstance(self.prior, bmsbi.Prior):
            raise ValueError(f"prior: expected a bmsbi.Prior, got {type(self.prior).__name__}")
        if len(self.true_theta) != self.prior.dim:
            raise ValueError(
                f"true_theta: expected {self.prior.dim} values ({', '.join(self.prior.names)}), "
                f"got {len(self.true_theta)}")
        if not bool(self.prior.in_support(jnp.asarray(self.true_theta, jnp.float32))):
            raise ValueError(f"true_theta: {self.true_theta} lies outside the prior's support")
        object.__setattr__(self, "true_theta", tuple(float(t) for t in self.true_theta))
        if self.channels is not None:
            channels = tuple(self.channels)
            if len(channels) != self.n_regions or len(set(channels)) != len(channels) \
                    or not all(isinstance(c, str) for c in channels):
                raise ValueError(f"channels: expected {self.n_regions} distinct names, got {channels!r}")
            object.__setattr__(self, "channels", channels)

    # ------------------------------------------------------------------ checks
    def _check_theta(self, theta) -> jax.Array:
        theta = jnp.asarray(theta)
        if theta.shape != (self.prior.dim,):
            raise ValueError(
                f"theta: expected shape ({self.prior.dim},) for parameters "
                f"({', '.join(self.prior.names)}), got {theta.shape}; for many parameter "
                f"vectors use task.bank(...) or bmsbi.simulate_bank")
        if not jnp.issubdtype(theta.dtype, jnp.floating):
            theta = theta.astype(jnp.float32)
        return theta

    # ----------------------------------------------------------------- verbs
    @property
    def names(self) -> tuple[str, ...]:
        """Parameter names, in column order."""
        return self.prior.names

    @property
    def ref(self) -> str:
        """What finds this task again, recorded in its banks (``meta["task"]``) and posteriors.

        :attr:`reference` when set, else :attr:`name`; ``simulators.get(task.ref)`` gives
        this task back (a copy for a reference).

        Examples
        --------
        >>> import simulators
        >>> simulators.get("hopf_node").ref, simulators.get("simulators.hopf_node:task").ref
        ('hopf_node', 'simulators.hopf_node:task')
        """
        return self.reference or self.name

    @property
    def feature_names(self) -> list[str]:
        """Names of the default summary's entries."""
        return self.summary.feature_names(self.n_regions)

    def observe(self, theta, key) -> jax.Array:
        """Synthetic recording for one parameter vector.

        Parameters
        ----------
        theta : array-like, shape ``(d,)``
            Parameters in the order of :attr:`names`.
        key : jax PRNG key or int
            Drives the model noise (through ``brainstate.random.seed_context``) and
            the measurement noise; the same key gives the same recording.

        Returns
        -------
        jax.Array, shape ``(n_time, n_regions)``, float32
            Transient discarded, sampled at :attr:`fs` Hz, measurement noise added.
        """
        theta, key = self._check_theta(theta), as_key(key)
        if _traced(theta, key):
            return self.observe_fn(theta, key)
        return _compiled(self.observe_fn)(theta, key)

    def simulate(self, theta, key) -> jax.Array:
        """Default simulator: ``summary(observe(theta, key))``, shape ``(n_features,)``.

        Called on concrete arrays it runs compiled code cached per model and per
        summary, so repeated calls cost only the simulation; inside ``jit``/``vmap``
        (as in :func:`bmsbi.simulate_bank`) it traces through.
        """
        theta, key = self._check_theta(theta), as_key(key)
        if _traced(theta, key):
            return self.summary(self.observe_fn(theta, key))
        return _compiled_summary(self.summary)(_compiled(self.observe_fn)(theta, key))

    def with_summary(self, summary: Summary) -> "Task":
        """The same task with another summary statistic (e.g. a raw-signal identity)."""
        if not isinstance(summary, Summary):
            raise ValueError(
                f"summary: expected a bmsbi.summaries.Summary, got {type(summary).__name__}")
        summary.output_size(self.n_time, self.n_regions)  # rejects a summary that cannot take the recording
        return dataclasses.replace(self, summary=summary)

    @property
    def simulator(self) -> Callable[[Any, Any], jax.Array]:
        """:meth:`simulate` as a plain function named after the task and its summary.

        :func:`bmsbi.simulate_bank` records the simulator's name in a bank folder's
        fingerprint; this name (``simulators.<task>.simulate[<summary digest>]``) keeps a
        bank of one task or summary from being resumed with another.
        """

        def simulate(theta, key):
            return self.simulate(theta, key)

        digest = hashlib.sha256(json.dumps(self.summary.to_dict(), sort_keys=True).encode()).hexdigest()
        simulate.__module__ = f"simulators.{self.name}"
        simulate.__qualname__ = f"simulate[{digest[:10]}]"
        return simulate

    def bank(self, n: int | None, key, **kwargs) -> bmsbi.Bank:
        """Simulate ``n`` draws from the prior: ``bmsbi.simulate_bank(simulate, prior, n, key=key, **kwargs)``.

        ``n=None`` simulates the task's default budget (:attr:`budget`).

        The bank's ``meta`` gains ``task`` (:attr:`ref`), ``summary`` (the summary's ``to_dict``),
        ``recording_shape`` ``[n_time, n_regions]``, ``fs``, ``prior`` (its
        ``to_dict``) and ``channels`` (when the task names its columns), also in a bank folder's manifest (``path=``): a posterior trained on
        it then accepts raw recordings (see :meth:`bmsbi.Posterior.infer`), and
        ``bmsbi train`` finds the task and prior.

        Examples
        --------
        >>> import jax, simulators
        >>> bank = simulators.get("hopf_node").bank(8, jax.random.key(0), progress=False)
        >>> bank.theta.shape
        (8, 3)
        """
        meta = {**dict(kwargs.pop("meta", None) or {}), "task": self.ref,
                "summary": self.summary.to_dict(), "recording_shape": [self.n_time, self.n_regions],
                "fs": self.fs, "prior": self.prior.to_dict()}
        if self.channels is not None:
            meta["channels"] = list(self.channels)
        return bmsbi.simulate_bank(self.simulator, self.prior, self.budget if n is None else n, key=key,
                                   meta=meta, **kwargs)

    def __repr__(self) -> str:
        return (f"Task({self.name!r}, parameters={self.names}, recording=({self.n_time}, "
                f"{self.n_regions}) at {self.fs:g} Hz, features={len(self.feature_names)})")


@functools.lru_cache(maxsize=None)
def _compiled(observe_fn):
    """One compiled ``observe_fn`` per model, shared by tasks that differ only in summary."""
    import brainstate

    return brainstate.transform.jit(observe_fn)


@functools.lru_cache(maxsize=None)
def _compiled_summary(summary: Summary):
    return jax.jit(summary)  # summaries are frozen, hashable and pure


def _traced(*arrays) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def as_float32(x) -> jax.Array:
    """Strip brainunit units (if any) and cast to float32."""
    import brainunit as u

    return jnp.asarray(u.get_magnitude(x), jnp.float32)


def add_measurement_noise(recording: jax.Array, std: float, key) -> jax.Array:
    """``recording + std * N(0, 1)`` elementwise (nothing added when ``std == 0``)."""
    if std == 0:
        return recording
    return recording + jnp.asarray(std, recording.dtype) * jax.random.normal(key, recording.shape, recording.dtype)
