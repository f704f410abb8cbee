"""The discovered model as a brainstate module: ``dx/dt = library(x) @ coefficients``.

One module serves both sides: the trajectory method fits its
``coefficients`` (a ``brainstate.nn.Param(..., fit=True)``) by running it in
``brainmass.Simulator`` over short windows, and users run the fitted module in
``brainmass.Simulator`` like any brainmass node.
"""

from __future__ import annotations

import brainstate
import brainunit as u
import jax.numpy as jnp
import numpy as np

from .library import Library

__all__ = ["SparseDynamics", "INTEGRATORS", "library_nodes"]

# Integrators SparseDynamics may use to simulate the fitted equations.
INTEGRATORS = ("rk4", "euler")


class SparseDynamics(brainstate.nn.Dynamics):
    """``dx/dt = library(x) @ coefficients (+ input)``, one integration step per ``update``.

    Parameters
    ----------
    library : Library
        Candidate terms, ``n_terms`` of them over ``n_states`` states.
    coefficients : array (n_terms, n_states)
        Initial coefficients; stored as ``self.coefficients``, a
        ``brainstate.nn.Param(..., fit=True)``.
    n_nodes : int, optional
        For networks (coupling libraries): the state is ``(n_nodes, n_states)``.
    integrator : {"rk4", "euler"}, default "rk4"
        One step of this scheme per ``update`` at the environment's ``dt``
        (``brainstate.environ.get_dt()``; a unit-carrying ``dt`` is read as its magnitude,
        in the time unit of the data the model was fitted on).
    x0 : array, optional
        Initial state used by ``init_state`` (default zeros); broadcast over a batch.

    Attributes
    ----------
    x : brainstate.HiddenState
        The state, ``(n_states,)``, ``(n_nodes, n_states)`` or with a leading batch axis.

    Examples
    --------
    >>> import brainmass, numpy as np
    >>> from bmsbi.discovery import SparseDynamics, polynomial_library
    >>> lib = polynomial_library(1, 1)                   # terms 1, x0
    >>> model = SparseDynamics(lib, np.array([[0.0], [-1.0]]), x0=[1.0])   # dx/dt = -x
    >>> out = brainmass.Simulator(model, dt=0.01).run(1.0)["output"]
    >>> round(float(out[-1, 0]), 4)                     # exp(-1)
    0.3679
    """

    def __init__(self, library: Library, coefficients, *, n_nodes=None, integrator: str = "rk4",
                 x0=None, name=None):
        if not isinstance(library, Library):
            raise ValueError(f"library: expected a bmsbi.discovery library, got "
                             f"{type(library).__name__}")
        coefficients = jnp.asarray(coefficients, jnp.float32)
        expected = (library.n_terms, library.n_states)
        if coefficients.shape != expected:
            raise ValueError(f"coefficients: expected shape {expected} (n_terms, n_states), got "
                             f"{tuple(coefficients.shape)}")
        if integrator not in INTEGRATORS:
            raise ValueError(f"integrator: expected one of {INTEGRATORS}, got {integrator!r}")
        if library.needs_nodes and n_nodes is None:
            n_nodes = library_nodes(library)
        shape = (library.n_states,) if n_nodes is None else (int(n_nodes), library.n_states)
        super().__init__(shape, name=name)
        self.library = library
        self.integrator = integrator
        self.state_shape = shape
        # A hashable tuple keeps the graph definition static under jit.
        self.x0 = None if x0 is None else tuple(np.broadcast_to(
            np.asarray(x0, np.float32), shape).ravel().tolist())
        self.coefficients = brainstate.nn.Param(coefficients, fit=True)

    # ------------------------------------------------------------------ dynamics
    def vector_field(self, x, coefficients=None):
        """``dx/dt`` at states ``x (..., *state_shape)``: ``library(x) @ coefficients``."""
        xi = self.coefficients.value() if coefficients is None else coefficients
        return self.library(x) @ xi

    def step(self, x, dt, inp=None):
        """One ``integrator`` step of length ``dt`` from ``x`` (pure; jit/grad/vmap-safe)."""
        drive = 0.0 if inp is None else inp

        def f(y):
            return self.vector_field(y) + drive

        if self.integrator == "euler":
            return x + dt * f(x)
        k1 = f(x)
        k2 = f(x + 0.5 * dt * k1)
        k3 = f(x + 0.5 * dt * k2)
        k4 = f(x + dt * k3)
        return x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    # --------------------------------------------------------------- brainstate
    def init_state(self, batch_size=None, **kwargs):
        shape = self.state_shape if batch_size is None else (batch_size,) + self.state_shape
        x0 = (jnp.zeros(self.state_shape) if self.x0 is None
              else jnp.asarray(self.x0, jnp.float32).reshape(self.state_shape))
        self.x = brainstate.HiddenState(jnp.broadcast_to(x0, shape).astype(jnp.float32))

    def update(self, inp=None):
        """Advance ``x`` by one step of the environment's ``dt``; ``inp`` adds to ``dx/dt``."""
        dt = u.get_magnitude(brainstate.environ.get_dt())
        self.x.value = self.step(self.x.value, dt, inp)
        return self.x.value


def library_nodes(library):
    """The node count a coupling library (or a concatenation holding one) was built for.

    Raises ``ValueError`` (naming ``library``) when no part of it couples nodes.
    """
    parts = library.parts if hasattr(library, "parts") else (library,)
    for p in parts:
        if getattr(p, "needs_nodes", False):
            return p.n_nodes
    raise ValueError("library: a coupling library must know its number of nodes")
