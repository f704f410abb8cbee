"""Sparse model discovery on the shared engine: ``fit(data, dt, library=...) -> Discovered``.

The model is :class:`~bmsbi.discovery.SparseDynamics` (``dx/dt = library(x) @ Ξ``) whose
coefficients ``Ξ`` are a ``brainstate.nn.Param``. It enters :func:`bmsbi.engine.fit`
through ``split_brainstate`` / ``merge_brainstate``. One engine call per round of
sequential thresholding:

1. train ``log(data loss) + penalty * Σ|Ξ̃|`` on the full library (``Ξ̃`` is Ξ in
   standardised units, ``Ξ̃[j, k] = Ξ[j, k] · rms(θ_j) / rms(dx_k/dt)``, so one threshold
   fits terms and states of any scale; the log makes the penalty a relative change of
   the data loss, as in a Gaussian likelihood with the noise variance profiled out);
2. deactivate every term with ``|Ξ̃| < threshold`` (its coefficient is held at zero by
   a mask from then on);
3. refit the active set without the penalty and threshold again, until the active set
   stops changing (that last refit is the result, free of L1 shrinkage).

``method="derivative"`` regresses Savitzky–Golay derivatives on the library evaluated at
the smoothed states (each round warm-starts from the least-squares solution on the
active set); fast. ``method="trajectory"`` starts from the unthresholded derivative fit
and then runs the candidate model itself in ``brainmass.Simulator`` from smoothed
observed states over short windows (multiple shooting) and back-propagates the mismatch
to the raw observations; slower, robust to noise that corrupts derivatives.

Inclusion probabilities: ``n_bootstrap`` further models are trained in the same engine
calls (vmapped), each on a Poisson block-bootstrap resample of the data (every block of
consecutive samples / windows gets a Poisson(1) weight); a term's inclusion probability
is the fraction of resampled fits in which it survives thresholding.

References
----------
.. [1] Brunton, S. L., Proctor, J. L., Kutz, J. N. (2016). Discovering governing
   equations from data by sparse identification of nonlinear dynamical systems. PNAS 113.
.. [2] Fasel, U., Kutz, J. N., Brunton, B. W., Brunton, S. L. (2022). Ensemble-SINDy:
   robust sparse model discovery in the low-data, high-noise limit. Proc. R. Soc. A 478.
.. [3] Bock, H. G., Plitt, K. J. (1984). A multiple shooting algorithm for direct solution
   of optimal control problems (multiple shooting).
.. [4] Hanley, J. A., MacGibbon, B. (2006). Creating non-parametric bootstrap samples
   using Poisson frequencies.
"""

from __future__ import annotations

import json
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import engine
from .._checks import as_key, real_array
from .library import Library, library_from_dict
from .model import INTEGRATORS, SparseDynamics
from .smoothing import smooth_derivative

__all__ = ["fit", "Discovered", "mse", "support_f1", "coefficient_error", "format_equations"]

METHODS = ("derivative", "trajectory")
SCHEMA = "bmsbi.discovery.discovered/1"


def mse(prediction, target):
    """Mean squared error, the default data loss (objectives-style ``(prediction, target)``).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from bmsbi.discovery import mse
    >>> float(mse(jnp.ones(4), jnp.zeros(4)))
    1.0
    """
    return jnp.mean((prediction - target) ** 2)


# --------------------------------------------------------------------------- metrics
def support_f1(estimated, true) -> float:
    """F1 score of the estimated support (nonzero coefficients) against the true one.

    Examples
    --------
    >>> import numpy as np
    >>> from bmsbi.discovery import support_f1
    >>> support_f1(np.array([[1.0, 0.0], [0.5, 0.0]]), np.array([[2.0, 0.0], [0.0, 1.0]]))
    0.5
    """
    est = np.asarray(real_array(estimated, "estimated")) != 0
    tru = np.asarray(real_array(true, "true")) != 0
    if est.shape != tru.shape:
        raise ValueError(f"estimated: expected shape {tru.shape} (like true), got {est.shape}")
    tp = float(np.sum(est & tru))
    denom = float(est.sum() + tru.sum())
    return 1.0 if denom == 0 else 2.0 * tp / denom


def coefficient_error(estimated, true) -> float:
    """Relative coefficient error ``‖Ξ̂ − Ξ‖_F / ‖Ξ‖_F``.

    Examples
    --------
    >>> import numpy as np
    >>> from bmsbi.discovery import coefficient_error
    >>> round(coefficient_error(np.array([1.1, 0.0]), np.array([1.0, 0.0])), 3)
    0.1
    """
    est = np.asarray(real_array(estimated, "estimated"), float)
    tru = np.asarray(real_array(true, "true"), float)
    if est.shape != tru.shape:
        raise ValueError(f"estimated: expected shape {tru.shape} (like true), got {est.shape}")
    return float(np.linalg.norm(est - tru) / max(np.linalg.norm(tru), 1e-300))


def format_equations(coefficients, term_names, *, precision: int = 3, state_names=None) -> str:
    """``dx0/dt = -1.000 x0 + 2.000 x1^3`` lines for a coefficient matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from bmsbi.discovery import format_equations
    >>> print(format_equations(np.array([[0.5, 0.0], [-1.0, 2.0]]), ("1", "x0")))
    dx0/dt = 0.500 - 1.000 x0
    dx1/dt = 2.000 x0
    """
    coefficients = np.asarray(coefficients)
    n_states = coefficients.shape[1]
    state_names = state_names or [f"x{k}" for k in range(n_states)]
    lines = []
    for k in range(n_states):
        parts = []
        for name, c in zip(term_names, coefficients[:, k]):
            if c == 0:
                continue
            mag = f"{abs(c):.{precision}f}" + ("" if name == "1" else f" {name}")
            if not parts:
                parts.append(("-" if c < 0 else "") + mag)
            else:
                parts.append(("- " if c < 0 else "+ ") + mag)
        lines.append(f"d{state_names[k]}/dt = " + (" ".join(parts) if parts else "0"))
    return "\n".join(lines)


# ------------------------------------------------------------------------ result
class Discovered:
    """A discovered model: sparse coefficients, their uncertainty and a runnable module.

    Attributes
    ----------
    coefficients : array (n_terms, n_states)
        Fitted coefficients, exactly zero off the support.
    term_names : tuple of str
    support : bool array (n_terms, n_states)
    inclusion_probability : array (n_terms, n_states)
        Fraction of bootstrap refits in which each term survived thresholding (the
        support as 0/1 when ``n_bootstrap=0``).
    ensemble_coefficients : array (n_bootstrap, n_terms, n_states) or None
    library : Library
    dt : float
    method : str
    threshold : float
    module : SparseDynamics
        The model as a brainstate module; run it in ``brainmass.Simulator``.
    history : list of bmsbi.engine.History, one per engine call
    info : dict
        Rounds, wall time, smoothing windows used.

    Examples
    --------
    >>> from bmsbi import discovery
    >>> data = discovery.benchmark_system("stuart_landau", 0.01)
    >>> found = discovery.fit(data.trajectories, data.dt, library=data.library, key=0,
    ...                       method="trajectory", n_bootstrap=0)
    >>> print(found.equations(precision=1))
    dx0/dt = 1.0 x0 - 2.0 x1 - 1.0 x0^3 - 1.0 x0*x1^2
    dx1/dt = 2.0 x0 + 1.0 x1 - 1.0 x0^2*x1 - 1.0 x1^3
    >>> found.simulate([1.5, 0.0], n_steps=100).shape      # runs in brainmass.Simulator
    (100, 2)
    """

    def __init__(self, *, coefficients, library, dt, method, threshold, support=None,
                 inclusion_probability=None, ensemble_coefficients=None, history=(), info=None,
                 integrator="rk4", n_nodes=None):
        self.coefficients = np.asarray(coefficients, float)
        self.library = library
        self.term_names = tuple(library.names)
        self.dt = float(dt)
        self.method = method
        self.threshold = float(threshold)
        self.support = (self.coefficients != 0) if support is None else np.asarray(support, bool)
        self.inclusion_probability = (self.support.astype(float) if inclusion_probability is None
                                      else np.asarray(inclusion_probability, float))
        self.ensemble_coefficients = (None if ensemble_coefficients is None
                                      else np.asarray(ensemble_coefficients, float))
        self.history = list(history)
        self.info = dict(info or {})
        self.integrator = integrator
        self.n_nodes = n_nodes

    @property
    def module(self) -> SparseDynamics:
        """A fresh :class:`SparseDynamics` with the discovered coefficients."""
        return SparseDynamics(self.library, self.coefficients, n_nodes=self.n_nodes,
                              integrator=self.integrator)

    def equations(self, precision: int = 3, state_names=None) -> str:
        """The discovered equations, one line per state (``dx0/dt = -1.000 x0 + ...``)."""
        return format_equations(self.coefficients, self.term_names, precision=precision,
                                state_names=state_names)

    def simulate(self, x0, n_steps: int, *, dt=None):
        """Run the discovered model in ``brainmass.Simulator`` from ``x0``.

        Parameters
        ----------
        x0 : array (*state_shape) or (batch, *state_shape)
        n_steps : int
            Samples returned, ``x0`` included (``n_steps - 1`` integration steps).
        dt : float, optional
            Step; default the sample spacing of the fitted data.

        Returns
        -------
        array (n_steps, *state_shape) or (batch, n_steps, *state_shape)
            Row 0 is ``x0``, so the result lines up with an observed trajectory.
        """
        import brainmass

        n_steps = _positive_int(n_steps, "n_steps")
        dt = self.dt if dt is None else float(dt)
        model = self.module
        shape = model.state_shape
        x0 = np.asarray(real_array(x0, "x0"), np.float32)
        if x0.shape != shape and x0.shape[1:] != shape:
            raise ValueError(f"x0: expected shape {shape} or (batch, *{shape}), got {x0.shape}")
        if not np.all(np.isfinite(x0)):
            raise ValueError("x0: expected finite values, got NaN or inf")
        batch = None if x0.shape == shape else x0.shape[0]
        if n_steps == 1:
            return x0[None] if batch is None else x0[:, None]
        sim = brainmass.Simulator(model, dt=dt)
        _init_states(model, batch)
        model.x.value = jnp.asarray(x0)
        out = np.asarray(sim.run((n_steps - 1) * dt, init_states=False)["output"])
        if batch is None:
            return np.concatenate([x0[None], out], 0)
        return np.concatenate([x0[:, None], np.swapaxes(out, 0, 1)], 1)

    def to_dict(self) -> dict:
        """JSON-ready dict (coefficients, support, inclusion probabilities, library)."""
        return {"schema": SCHEMA, "library": self.library.to_dict(),
                "coefficients": self.coefficients.tolist(), "support": self.support.tolist(),
                "inclusion_probability": self.inclusion_probability.tolist(), "dt": self.dt,
                "method": self.method, "threshold": self.threshold,
                "integrator": self.integrator, "n_nodes": self.n_nodes}

    @classmethod
    def from_dict(cls, d: dict) -> "Discovered":
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ValueError(f"d: expected a dict with schema {SCHEMA!r}")
        return cls(coefficients=d["coefficients"], library=library_from_dict(d["library"]),
                   dt=d["dt"], method=d["method"], threshold=d["threshold"],
                   support=d["support"], inclusion_probability=d["inclusion_probability"],
                   integrator=d["integrator"], n_nodes=d["n_nodes"])

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "Discovered":
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def __repr__(self):
        return (f"Discovered(method={self.method!r}, active_terms={int(self.support.sum())}/"
                f"{self.support.size})\n{self.equations()}")


def _init_states(model, batch_size=None):
    import brainstate

    if batch_size is None:
        brainstate.nn.init_all_states(model)
    else:
        brainstate.nn.init_all_states(model, batch_size)


# ---------------------------------------------------------------------- checks
def _positive_int(value, arg):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{arg}: expected a positive int, got {value!r}")
    return int(value)


def _check_inputs(data, dt, library, method, threshold, penalty, n_bootstrap, integrator):
    if not isinstance(library, Library):
        raise ValueError(f"library: expected a bmsbi.discovery library (e.g. "
                         f"polynomial_library(n_states, 3)), got {type(library).__name__}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if integrator not in INTEGRATORS:
        raise ValueError(f"integrator: expected one of {INTEGRATORS}, got {integrator!r}")
    try:
        import brainunit as u

        dt_value = float(u.get_magnitude(dt))
    except (TypeError, ValueError):
        dt_value = math.nan
    if not (math.isfinite(dt_value) and dt_value > 0):
        raise ValueError(f"dt: expected a positive float (the sample spacing), got {dt!r}")
    for arg, value in (("threshold", threshold), ("penalty", penalty)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{arg}: expected a float >= 0, got {value!r}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) \
            or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap: expected an int >= 0, got {n_bootstrap!r}")

    state_shape = (library.n_states,)
    n_nodes = None
    if library.needs_nodes:
        from .model import library_nodes

        n_nodes = library_nodes(library)
        state_shape = (n_nodes, library.n_states)
    if isinstance(data, np.ndarray | jax.Array) and data.ndim == len(state_shape) + 2:
        data = list(data)  # a stack of equally long trajectories
    if isinstance(data, (list, tuple)):
        trajs = list(data)
        if not trajs:
            raise ValueError("data: expected a (time, states) array or a non-empty list of them, "
                             "got an empty list")
    else:
        trajs = [data]
    out = []
    for i, x in enumerate(trajs):
        where = "data" if len(trajs) == 1 and not isinstance(data, (list, tuple)) else f"data[{i}]"
        x = np.asarray(real_array(x, where, what=f"a numeric (time, *{state_shape}) array"), float)
        if x.ndim == len(state_shape):  # a single time point given without the time axis
            raise ValueError(f"{where}: expected shape (time, {', '.join(map(str, state_shape))})"
                             f" with at least 3 time points, got a single time point of shape "
                             f"{x.shape}")
        if x.shape[1:] != state_shape:
            raise ValueError(f"{where}: expected shape (time, {', '.join(map(str, state_shape))})"
                             f" to match library.n_states={library.n_states}, got {x.shape}")
        if x.shape[0] < 3:
            raise ValueError(f"{where}: expected at least 3 time points (to estimate "
                             f"derivatives), got {x.shape[0]} (shape {x.shape})")
        bad = ~np.isfinite(x)
        if bad.any():
            t = int(np.argwhere(bad)[0][0])
            raise ValueError(f"{where}: expected finite values, got {int(bad.sum())} NaN/inf "
                             f"(first at time index {t}); drop or interpolate them first")
        out.append(x)
    n_samples = sum(x.shape[0] for x in out)
    if n_samples < library.n_terms:
        raise ValueError(f"data: expected at least n_terms={library.n_terms} samples (time "
                         f"points over all trajectories) to identify {library.n_terms} library "
                         f"terms, got {n_samples}; add data or use a smaller library")
    return out, dt_value, state_shape, n_nodes


# ------------------------------------------------------------------------ fit
def fit(data, dt, *, library: Library, method: str = "derivative", key=0,
        threshold: float = 0.1, penalty: float = 1e-2, loss: Callable | None = None,
        n_bootstrap: int = 20, block_length: int | None = None, max_rounds: int = 10,
        window: int = 20, stride: int | None = None, smoothing_window: int | None = None,
        polyorder: int = 3, integrator: str = "rk4", epochs: int | None = None,
        learning_rate: float | None = None, batch_size: int | None = None,
        progress: bool = False) -> Discovered:
    """Discover sparse equations ``dx/dt = library(x) @ Ξ`` from trajectories.

    Parameters
    ----------
    data : array (T, n_states), list of them, or a stack (n_trajectories, T, n_states)
        One trajectory or several (initial conditions, perturbations), sampled every
        ``dt``. For coupling libraries a trajectory is ``(T, n_nodes, n_states)``. Finite
        values, at least 3 time points each, at least ``library.n_terms`` in all.
    dt : float
        Sample spacing (the time unit of the discovered coefficients).
    library : Library
        Candidate terms, e.g. ``polynomial_library(2, 3) + sigmoid_library(2)``.
    method : {"derivative", "trajectory"}
        Regress smoothed derivatives (fast) or fit simulated windows (robust to noise).
    key : jax.random.key or int
        Drives the bootstrap resamples and the engine's shuffling.
    threshold : float, default 0.1
        Terms whose standardised coefficient ``|Ξ̃|`` (see module docs) falls below it are
        pruned (on the benchmark systems true terms have ``|Ξ̃| >= 0.19``).
    penalty : float, default 0.01
        L1 weight on the standardised coefficients in the first (screening) round, as a
        relative change of the data loss per unit of ``Σ|Ξ̃|``.
    loss : callable, optional
        ``loss(prediction, target) -> scalar`` (objectives-style, jittable) applied per
        sample (derivative method, to ``dx/dt / rms(dx/dt)``) or per window (trajectory
        method, to ``x / sd(x)``); default :func:`mse`.
    n_bootstrap : int, default 20
        Bootstrap refits for :attr:`Discovered.inclusion_probability` (0 to skip).
    block_length : int, optional
        Samples per bootstrap block (default: twice the widest smoothing window, at least
        ``window``).
    max_rounds : int, default 10
        Maximum thresholding rounds.
    window, stride : int
        Trajectory method: steps simulated per window, and samples between window starts
        (default ``window // 2``).
    smoothing_window, polyorder : int
        Savitzky–Golay window (default chosen per state from the data's noise) and order.
    integrator : {"rk4", "euler"}
        Integration scheme of the discovered module (one step per sample).
    epochs, learning_rate, batch_size : optional
        Engine settings per round (defaults: derivative 100 epochs, lr 1e-3, batch 4096;
        trajectory 300 epochs, lr 1e-2, batch 64; lr in standardised units, cosine decay).
    progress : bool, default False

    Returns
    -------
    Discovered

    Raises
    ------
    ValueError
        For NaN/inf in ``data``, fewer than 3 time points, fewer samples than library
        terms, a state count that does not match ``library``, or bad settings; the message
        names the argument, the expected and the received value.

    Examples
    --------
    >>> from bmsbi import discovery
    >>> data = discovery.benchmark_system("fitzhugh_nagumo", 0.01)
    >>> found = discovery.fit(data.trajectories, data.dt, library=data.library, key=0)
    >>> discovery.support_f1(found.coefficients, data.coefficients)
    1.0
    >>> bool(found.inclusion_probability[found.support].min() >= 0.9)
    True
    """
    start = time.perf_counter()
    trajs, dt, state_shape, n_nodes = _check_inputs(data, dt, library, method, threshold,
                                                    penalty, n_bootstrap, integrator)
    max_rounds = _positive_int(max_rounds, "max_rounds")
    window = _positive_int(window, "window")
    stride = (window // 2 or 1) if stride is None else _positive_int(stride, "stride")
    loss = mse if loss is None else loss
    if not callable(loss):
        raise ValueError(f"loss: expected a callable (prediction, target) -> scalar, got "
                         f"{type(loss).__name__}")
    key = as_key(key)
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    rng = np.random.default_rng(seed + [6])

    # smoothed states and derivatives, one trajectory at a time
    smooth, deriv, windows = [], [], []
    for x in trajs:
        xs, dx, used = smooth_derivative(x, dt, window=smoothing_window, polyorder=polyorder)
        smooth.append(xs), deriv.append(dx), windows.append(int(np.max(used)))
    if block_length is None:
        block_length = max(2 * max(windows), window, 10)
    block_length = _positive_int(block_length, "block_length")

    x_rows = np.concatenate(smooth, 0)
    d_rows = np.concatenate(deriv, 0)
    theta = np.asarray(library(jnp.asarray(x_rows, jnp.float32)), float)
    theta_flat = theta.reshape(-1, library.n_terms)
    d_flat = d_rows.reshape(-1, library.n_states)
    theta_rms = np.sqrt(np.mean(theta_flat ** 2, 0)) + 1e-12
    d_rms = np.sqrt(np.mean(d_flat ** 2, 0)) + 1e-12
    # Ξ = Ξ̃ * scale: the natural size of each coefficient
    scale = d_rms[None, :] / theta_rms[:, None]
    n_members = 1 + int(n_bootstrap)

    # Poisson block-bootstrap weights per sample (member 0: the data as they are)
    row_blocks = np.concatenate([i * 10 ** 9 + np.arange(x.shape[0]) // block_length
                                 for i, x in enumerate(trajs)])
    weights_rows = _poisson_weights(row_blocks, n_members, rng)

    mask = np.ones((n_members, library.n_terms, library.n_states), bool)
    nodes_rep = 1 if n_nodes is None else n_nodes
    w_flat = np.repeat(weights_rows, nodes_rep, axis=0)  # weights per flattened row
    xi = _weighted_lstsq(theta_flat, d_flat, w_flat, mask, scale)

    module = SparseDynamics(library, xi[0], n_nodes=n_nodes, integrator=integrator)
    params, static = engine.split_brainstate(module)
    if len(jax.tree_util.tree_leaves(params)) != 1:  # pragma: no cover - guards the design
        raise RuntimeError("SparseDynamics should expose exactly one trainable Param")

    if method == "derivative":
        train_data = (x_rows.astype(np.float32), d_rows.astype(np.float32),
                      weights_rows.astype(np.float32))
        member_loss = _derivative_loss(loss, d_rms)
        epochs = 100 if epochs is None else _positive_int(epochs, "epochs")
        lr = 1e-3 if learning_rate is None else float(learning_rate)
        bs = 4096 if batch_size is None else _positive_int(batch_size, "batch_size")
    else:
        starts, targets, win_weights = _windows(trajs, smooth, window, stride, weights_rows)
        if starts.shape[0] < 1:
            raise ValueError(f"window: expected at most {max(x.shape[0] for x in trajs) - 1} "
                             f"steps (the longest trajectory minus one), got {window}")
        train_data = (starts.astype(np.float32), targets.astype(np.float32),
                      win_weights.astype(np.float32))
        x_sd = np.concatenate(trajs, 0).reshape(-1, library.n_states).std(0) + 1e-12
        member_loss = _trajectory_loss(loss, x_sd, dt, window)
        epochs = 300 if epochs is None else _positive_int(epochs, "epochs")
        lr = 1e-2 if learning_rate is None else float(learning_rate)
        bs = 64 if batch_size is None else _positive_int(batch_size, "batch_size")

    n_rows = train_data[0].shape[0]
    bs = min(bs, n_rows)
    steps = max(n_rows // bs, 1) * epochs
    histories = []

    # one loss and one optimiser object for every round: the engine caches its compiled
    # epoch by them, so every round after the first reuses it
    loss_fn = _ensemble_loss(member_loss)
    opt = _optimizer(lr, steps, scale)

    def train(xi_init, mask, pen, round_index):
        p = jax.tree_util.tree_map(lambda _: jnp.asarray(xi_init, jnp.float32), params)
        st = (static, jnp.asarray(mask, jnp.float32), jnp.asarray(scale, jnp.float32),
              jnp.asarray(pen, jnp.float32))
        result = engine.fit(
            p, loss_fn, train_data, key=jax.random.fold_in(key, round_index), static=st,
            optimizer=opt, config=engine.FitConfig(clip_norm=None, batch_size=bs, max_epochs=epochs,
                                                   validation_fraction=0.0, patience=None),
            progress=progress, desc=f"discovery {method} round {round_index}")
        histories.append(result.history)
        out = np.asarray(jax.tree_util.tree_leaves(result.params)[0], float)
        return out * mask

    # Round 1 screens the full library with the L1 penalty; later rounds refit the active
    # set without it, so the round that finds the support unchanged is the final refit.
    rounds, converged = 0, False
    for rounds in range(1, max_rounds + 1):
        pen = penalty if rounds == 1 else 0.0
        xi = train(xi, mask, pen, rounds)
        new_mask = mask & (np.abs(xi) / scale >= threshold)
        converged = np.array_equal(new_mask, mask) and pen == 0.0
        if converged:
            break
        mask = new_mask
        # warm start: least squares on the new active set (close to the optimum for
        # both methods; the trajectory fit then corrects the derivative bias)
        xi = _weighted_lstsq(theta_flat, d_flat, w_flat, mask, scale)
    if not converged:  # out of rounds: refit the last active set without the penalty
        xi = train(xi, mask, 0.0, rounds + 1)

    boot = xi[1:] if n_members > 1 else None
    inclusion = mask[1:].mean(0) if n_members > 1 else mask[0].astype(float)
    info = {"rounds": rounds, "wall_time": time.perf_counter() - start,
            "smoothing_windows": windows, "block_length": block_length,
            "n_bootstrap": int(n_bootstrap), "penalty": float(penalty),
            "standardised_scale": scale}
    return Discovered(coefficients=xi[0], library=library, dt=dt, method=method,
                      threshold=threshold, support=mask[0], inclusion_probability=inclusion,
                      ensemble_coefficients=boot, history=histories, info=info,
                      integrator=integrator, n_nodes=n_nodes)


# ------------------------------------------------------------------ internals
def _poisson_weights(blocks, n_members, rng):
    """``(rows, n_members)`` weights: member 0 all ones, others Poisson(1) per block."""
    uniq, inverse = np.unique(blocks, return_inverse=True)
    w = np.ones((blocks.shape[0], n_members))
    if n_members > 1:
        draws = rng.poisson(1.0, size=(uniq.shape[0], n_members - 1)).astype(float)
        w[:, 1:] = draws[inverse]
    return w


def _weighted_lstsq(theta, d, w, mask, scale):
    """Per member and state: weighted least squares on the active columns (standardised)."""
    n_members, n_terms, n_states = mask.shape
    theta_rms = np.sqrt(np.mean(theta ** 2, 0)) + 1e-12
    t_std = theta / theta_rms
    out = np.zeros(mask.shape)
    for m in range(n_members):
        sw = np.sqrt(w[:, m])[:, None]
        a_all, b_all = t_std * sw, d * sw
        for k in range(n_states):
            active = np.flatnonzero(mask[m, :, k])
            if active.size == 0:
                continue
            a = a_all[:, active]
            gram = a.T @ a
            # a whisper of ridge keeps collinear libraries solvable
            gram += 1e-8 * np.trace(gram) / active.size * np.eye(active.size)
            coef = np.linalg.solve(gram, a.T @ b_all[:, k])
            out[m, active, k] = coef / theta_rms[active]
    return out


def _optimizer(lr, steps, scale):
    """Adam in standardised units: updates rescaled by each coefficient's natural size."""
    schedule = optax.cosine_decay_schedule(lr, max(int(steps), 1), alpha=0.01)
    scale = jnp.asarray(scale, jnp.float32)
    rescale = optax.stateless(lambda updates, params: jax.tree_util.tree_map(
        lambda u: u * scale, updates))
    return optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(schedule), rescale)


def _ensemble_loss(member_loss):
    """Sum over ensemble members (vmapped), each with its mask and bootstrap weights."""

    def loss_fn(params, static, batch, key):
        module_static, mask, scale, pen = static
        *arrays, weights = batch

        def one(p, mask_m, w_m):
            p = jax.tree_util.tree_map(lambda v: v * mask_m, p)
            model = engine.merge_brainstate(p, module_static)
            per_sample = member_loss(model, *arrays)
            data_term = jnp.sum(w_m * per_sample) / jnp.maximum(jnp.sum(w_m), 1e-6)
            xi_std = model.coefficients.value() / scale
            # log: the penalty weighs a relative change of the data loss (scale-free; the
            # Gaussian likelihood with the noise variance profiled out)
            return jnp.log(data_term + 1e-30) + pen * jnp.sum(jnp.abs(xi_std))

        return jnp.sum(jax.vmap(one, in_axes=(0, 0, 1))(params, mask, weights))

    return loss_fn


def _derivative_loss(loss, d_rms):
    d_rms = jnp.asarray(d_rms, jnp.float32)

    def per_sample(model, x, d):
        pred = model.vector_field(x)
        return jax.vmap(loss)(pred / d_rms, d / d_rms)

    return per_sample


def _trajectory_loss(loss, x_sd, dt, window):
    import brainmass

    x_sd = jnp.asarray(x_sd, jnp.float32)

    def per_window(model, x_start, target):
        sim = brainmass.Simulator(model, dt=dt)
        _init_states(model, x_start.shape[0])
        model.x.value = x_start
        pred = sim.run(window * dt, init_states=False, jit=False)["output"]  # (L, B, ...)
        pred = jnp.moveaxis(pred, 0, 1)
        return jax.vmap(loss)(pred / x_sd, target / x_sd)

    return per_window


def _windows(trajs, smooth, window, stride, weights_rows):
    """Multiple-shooting windows: smoothed start state, the next ``window`` observations."""
    starts, targets, weights = [], [], []
    offset = 0
    for x, xs in zip(trajs, smooth):
        for s in range(0, x.shape[0] - window, stride):
            starts.append(xs[s])
            targets.append(x[s + 1:s + 1 + window])
            weights.append(weights_rows[offset + s])
        offset += x.shape[0]
    if not starts:
        return np.zeros((0,)), np.zeros((0,)), np.zeros((0,))
    return np.stack(starts), np.stack(targets), np.stack(weights)
