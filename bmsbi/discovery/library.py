"""Candidate-term libraries: ``theta(x) -> (..., n_terms)``, named, jittable, JSON-serialisable.

A library is a small frozen object. Calling it on states ``x`` of shape
``(..., n_states)`` returns the candidate terms ``(..., n_terms)``; the discovered
vector field is ``dx/dt = library(x) @ coefficients`` with ``coefficients`` of shape
``(n_terms, n_states)``. Libraries concatenate with ``+``.

Coupling terms (``C@x0``) act on networks: their states have shape ``(..., N, n_states)``
(``N`` nodes sharing one set of local equations) and term ``C@x0`` at node ``i`` is
``sum_j C[i, j] * x[..., j, 0]``. The other libraries act node-wise, so a whole library
evaluates on ``(..., N, n_states)`` to ``(..., N, n_terms)``.

Examples
--------
>>> import jax.numpy as jnp
>>> from bmsbi.discovery import polynomial_library, sigmoid_library
>>> lib = polynomial_library(2, 2) + sigmoid_library(2)
>>> lib.names
('1', 'x0', 'x1', 'x0^2', 'x0*x1', 'x1^2', 'S(x0)', 'S(x1)')
>>> lib(jnp.ones((5, 2))).shape
(5, 8)
>>> library_from_json(lib.to_json()) == lib
True

References
----------
.. [1] Brunton, S. L., Proctor, J. L., Kutz, J. N. (2016). Discovering governing
   equations from data by sparse identification of nonlinear dynamical systems. PNAS 113.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import jax.numpy as jnp
import numpy as np

from .._checks import real_array

__all__ = ["Library", "PolynomialLibrary", "FunctionLibrary", "CouplingLibrary", "ConcatLibrary",
           "polynomial_library", "sigmoid_library", "tanh_library", "coupling_library",
           "concat", "library_from_dict", "library_from_json"]

LIBRARY_SCHEMA = "bmsbi.discovery.library/1"


def _check_n_states(n_states):
    if isinstance(n_states, bool) or not isinstance(n_states, (int, np.integer)) or n_states < 1:
        raise ValueError(f"n_states: expected a positive int, got {n_states!r}")


def _check_x(x, n_states, name):
    if x.ndim < 1 or x.shape[-1] != n_states:
        raise ValueError(f"x: expected an array of shape (..., {n_states}) for the library "
                         f"{name}, got shape {tuple(x.shape)}")


class Library:
    """Base of all libraries: ``names``, ``n_terms``, ``__call__``, ``+``, JSON.

    Subclasses are frozen dataclasses with ``n_states``; they implement ``names``,
    ``_evaluate(x)`` and ``_to_dict()``.
    """

    n_states: int
    #: Whether the terms need a node axis (coupling through a connectivity matrix).
    needs_nodes: bool = False

    @property
    def names(self) -> tuple:
        raise NotImplementedError(f"{type(self).__name__} must implement names (a hook of bmsbi.discovery.Library)")

    @property
    def n_terms(self) -> int:
        """Number of candidate terms."""
        return len(self.names)

    def __call__(self, x):
        """Evaluate the terms: ``x (..., n_states) -> (..., n_terms)`` (jit/grad/vmap-safe)."""
        x = jnp.asarray(x)
        _check_x(x, self.n_states, type(self).__name__)
        return self._evaluate(x)

    def __add__(self, other):
        return concat(self, other)

    def to_dict(self) -> dict:
        """JSON-ready description; :func:`library_from_dict` inverts it."""
        return self._to_dict()

    def to_json(self) -> str:
        """JSON string (with a schema tag); :func:`library_from_json` inverts it."""
        return json.dumps({"schema": LIBRARY_SCHEMA, "library": self.to_dict()})


# ---------------------------------------------------------------------- polynomial
def _monomial_name(exponents):
    parts = [f"x{k}" if p == 1 else f"x{k}^{p}" for k, p in enumerate(exponents) if p]
    return "*".join(parts) if parts else "1"


@dataclasses.dataclass(frozen=True)
class PolynomialLibrary(Library):
    """All monomials of the states up to ``degree``, graded then lexicographic.

    Term order: ``1`` (when ``include_bias``), degree 1 (``x0, x1, ...``), degree 2
    (``x0^2, x0*x1, ...``), ... — the order of ``combinations_with_replacement``.
    """

    n_states: int
    degree: int
    include_bias: bool = True

    def __post_init__(self):
        _check_n_states(self.n_states)
        if isinstance(self.degree, bool) or not isinstance(self.degree, (int, np.integer)) \
                or self.degree < 1:
            raise ValueError(f"degree: expected a positive int, got {self.degree!r}")

    @property
    def exponents(self) -> tuple:
        """``(n_terms, n_states)`` tuple of integer exponents, one row a term."""
        rows = []
        for d in range(0 if self.include_bias else 1, self.degree + 1):
            for combo in itertools.combinations_with_replacement(range(self.n_states), d):
                rows.append(tuple(combo.count(k) for k in range(self.n_states)))
        return tuple(rows)

    @property
    def names(self):
        return tuple(_monomial_name(e) for e in self.exponents)

    def _evaluate(self, x):
        e = np.asarray(self.exponents)  # (n_terms, n_states)
        # powers by repeated products (finite gradients at x = 0), then one gather per state
        powers = [jnp.ones_like(x), x]
        for _ in range(self.degree - 1):
            powers.append(powers[-1] * x)
        table = jnp.stack(powers, axis=-1)  # (..., n_states, degree + 1)
        out = table[..., 0, e[:, 0]]
        for k in range(1, self.n_states):
            out = out * table[..., k, e[:, k]]
        return out

    def _to_dict(self):
        return {"kind": "polynomial", "n_states": int(self.n_states), "degree": int(self.degree),
                "include_bias": bool(self.include_bias)}


# ---------------------------------------------------------------- sigmoid / tanh
_FUNCTIONS = {"sigmoid": "S", "tanh": "tanh"}


@dataclasses.dataclass(frozen=True)
class FunctionLibrary(Library):
    """One saturating function of each state: ``S(xk)`` or ``tanh(xk)``.

    ``S(x) = 1 / (1 + exp(-gain * (x - threshold)))`` and
    ``tanh(x) = tanh(gain * (x - threshold))``; ``gain`` and ``threshold`` are part of
    the library (fixed, not fitted).
    """

    n_states: int
    function: str = "sigmoid"
    gain: float = 1.0
    threshold: float = 0.0

    def __post_init__(self):
        _check_n_states(self.n_states)
        if self.function not in _FUNCTIONS:
            raise ValueError(f"function: expected one of {sorted(_FUNCTIONS)}, got "
                             f"{self.function!r}")
        for arg in ("gain", "threshold"):
            v = getattr(self, arg)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(v):
                raise ValueError(f"{arg}: expected a finite float, got {v!r}")
        object.__setattr__(self, "gain", float(self.gain))
        object.__setattr__(self, "threshold", float(self.threshold))

    @property
    def names(self):
        f = _FUNCTIONS[self.function]
        return tuple(f"{f}(x{k})" for k in range(self.n_states))

    def _evaluate(self, x):
        z = self.gain * (x - self.threshold)
        return jnp.tanh(z) if self.function == "tanh" else 1.0 / (1.0 + jnp.exp(-z))

    def _to_dict(self):
        return {"kind": "function", "n_states": int(self.n_states), "function": self.function,
                "gain": self.gain, "threshold": self.threshold}


# ------------------------------------------------------------------------ coupling
@dataclasses.dataclass(frozen=True)
class CouplingLibrary(Library):
    """Network input through a connectivity matrix: ``C@xk`` for each coupled state ``k``.

    States have shape ``(..., N, n_states)``; term ``C@xk`` at node ``i`` is
    ``sum_j weights[i][j] * x[..., j, k]``. ``weights`` is stored as a tuple of tuples
    (hashable, JSON-ready); pass any ``(N, N)`` array to :func:`coupling_library`.
    """

    weights: tuple
    n_states: int
    states: tuple = ()
    symbol: str = "C"
    needs_nodes = True

    def __post_init__(self):
        _check_n_states(self.n_states)
        w = np.asarray(real_array(self.weights, "weights", what="a square (N, N) matrix of numbers"), float)
        if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] < 1:
            raise ValueError(f"weights: expected a square (N, N) matrix, got shape {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError("weights: expected finite values, got NaN or inf")
        object.__setattr__(self, "weights", tuple(tuple(float(v) for v in row) for row in w))
        if any(isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) for s in self.states):
            raise ValueError(f"states: expected a list of state indices (int), got {self.states!r}")
        states = (tuple(range(self.n_states)) if not self.states
                  else tuple(int(s) for s in self.states))
        if any(not 0 <= s < self.n_states for s in states):
            raise ValueError(f"states: expected indices in [0, {self.n_states}), got "
                             f"{self.states!r}")
        object.__setattr__(self, "states", states)

    @property
    def n_nodes(self) -> int:
        """``N``, the number of nodes the connectivity matrix couples."""
        return len(self.weights)

    @property
    def names(self):
        return tuple(f"{self.symbol}@x{k}" for k in self.states)

    def _evaluate(self, x):
        if x.ndim < 2 or x.shape[-2] != self.n_nodes:
            raise ValueError(f"x: expected network states of shape (..., {self.n_nodes}, "
                             f"{self.n_states}) for a coupling library, got {tuple(x.shape)}")
        w = jnp.asarray(self.weights, x.dtype)
        sel = x[..., list(self.states)]  # (..., N, n_coupled)
        return jnp.einsum("ij,...jk->...ik", w, sel)

    def _to_dict(self):
        return {"kind": "coupling", "n_states": int(self.n_states),
                "weights": [list(r) for r in self.weights], "states": list(self.states),
                "symbol": self.symbol}


# ---------------------------------------------------------------------- concat
@dataclasses.dataclass(frozen=True)
class ConcatLibrary(Library):
    """Terms of several libraries side by side (same ``n_states``, distinct names)."""

    parts: tuple

    def __post_init__(self):
        flat = []
        for p in self.parts:
            if not isinstance(p, Library):
                raise ValueError(f"parts: expected bmsbi.discovery libraries, got "
                                 f"{type(p).__name__}")
            flat.extend(p.parts if isinstance(p, ConcatLibrary) else (p,))
        if not flat:
            raise ValueError("parts: expected at least one library, got none")
        sizes = {p.n_states for p in flat}
        if len(sizes) != 1:
            raise ValueError(f"parts: expected libraries over the same number of states, got "
                             f"n_states {[p.n_states for p in flat]}")
        names = [n for p in flat for n in p.names]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"parts: term names must be unique, got duplicates {dup}")
        object.__setattr__(self, "parts", tuple(flat))

    @property
    def n_states(self):
        return self.parts[0].n_states

    @property
    def needs_nodes(self):
        return any(p.needs_nodes for p in self.parts)

    @property
    def names(self):
        return tuple(n for p in self.parts for n in p.names)

    def _evaluate(self, x):
        return jnp.concatenate([p._evaluate(x) for p in self.parts], axis=-1)

    def _to_dict(self):
        return {"kind": "concat", "parts": [p.to_dict() for p in self.parts]}


# ---------------------------------------------------------------- constructors
def polynomial_library(n_states: int, degree: int, *,
                       include_bias: bool = True) -> PolynomialLibrary:
    """Monomials of ``n_states`` states up to ``degree`` (``1, x0, x1, x0^2, x0*x1, ...``).

    Examples
    --------
    >>> from bmsbi.discovery import polynomial_library
    >>> polynomial_library(2, 3).names
    ('1', 'x0', 'x1', 'x0^2', 'x0*x1', 'x1^2', 'x0^3', 'x0^2*x1', 'x0*x1^2', 'x1^3')
    """
    return PolynomialLibrary(n_states, degree, include_bias)


def sigmoid_library(n_states: int, *, gain: float = 1.0, threshold: float = 0.0) -> FunctionLibrary:
    """Logistic terms ``S(xk) = 1 / (1 + exp(-gain (xk - threshold)))``, one per state.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from bmsbi.discovery import sigmoid_library
    >>> lib = sigmoid_library(2, gain=4.0)
    >>> lib.names, lib(jnp.zeros(2)).tolist()
    (('S(x0)', 'S(x1)'), [0.5, 0.5])
    """
    return FunctionLibrary(n_states, "sigmoid", gain, threshold)


def tanh_library(n_states: int, *, gain: float = 1.0, threshold: float = 0.0) -> FunctionLibrary:
    """Terms ``tanh(gain (xk - threshold))``, one per state.

    Examples
    --------
    >>> from bmsbi.discovery import tanh_library
    >>> tanh_library(3).names
    ('tanh(x0)', 'tanh(x1)', 'tanh(x2)')
    """
    return FunctionLibrary(n_states, "tanh", gain, threshold)


def coupling_library(weights, n_states: int, *, states=None, symbol: str = "C") -> CouplingLibrary:
    """Network coupling terms ``C@xk`` through the ``(N, N)`` connectivity ``weights``.

    States are ``(..., N, n_states)``; ``states`` picks which state variables couple
    (default all).

    Examples
    --------
    >>> import numpy as np, jax.numpy as jnp
    >>> from bmsbi.discovery import coupling_library, polynomial_library
    >>> C = np.array([[0., 1.], [1., 0.]])
    >>> lib = polynomial_library(2, 1) + coupling_library(C, 2, states=[0])
    >>> lib.names
    ('1', 'x0', 'x1', 'C@x0')
    >>> lib(jnp.ones((7, 2, 2))).shape      # (time, nodes, states) -> (time, nodes, terms)
    (7, 2, 4)
    """
    if states is not None and not isinstance(states, (list, tuple, np.ndarray)):
        raise ValueError(f"states: expected a list of state indices (int), got {states!r}")
    return CouplingLibrary(real_array(weights, "weights", what="a square (N, N) matrix of numbers"),
                           n_states, tuple(np.asarray(states).tolist()) if states is not None else (), symbol)


def concat(*libraries) -> ConcatLibrary:
    """Concatenate libraries (``lib_a + lib_b`` does the same).

    Examples
    --------
    >>> from bmsbi.discovery import concat, polynomial_library, tanh_library
    >>> concat(polynomial_library(1, 2), tanh_library(1)).names
    ('1', 'x0', 'x0^2', 'tanh(x0)')
    """
    return ConcatLibrary(tuple(libraries))


def library_from_dict(d: dict) -> Library:
    """Rebuild a library from :meth:`Library.to_dict` output.

    Examples
    --------
    >>> from bmsbi.discovery import library_from_dict, polynomial_library
    >>> lib = polynomial_library(3, 2)
    >>> library_from_dict(lib.to_dict()) == lib
    True
    """
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"d: expected a library dict with a 'kind' key, got {d!r:.80}")
    kind = d["kind"]
    if kind == "polynomial":
        return PolynomialLibrary(int(d["n_states"]), int(d["degree"]), bool(d["include_bias"]))
    if kind == "function":
        return FunctionLibrary(int(d["n_states"]), str(d["function"]), float(d["gain"]),
                               float(d["threshold"]))
    if kind == "coupling":
        return CouplingLibrary(np.asarray(d["weights"], float), int(d["n_states"]),
                               tuple(d["states"]), str(d.get("symbol", "C")))
    if kind == "concat":
        return ConcatLibrary(tuple(library_from_dict(p) for p in d["parts"]))
    raise ValueError(f"d['kind']: expected 'polynomial', 'function', 'coupling' or 'concat', "
                     f"got {kind!r}")


def library_from_json(text: str) -> Library:
    """Inverse of :meth:`Library.to_json`.

    Examples
    --------
    >>> from bmsbi.discovery import library_from_json, tanh_library
    >>> library_from_json(tanh_library(2, gain=2.0).to_json()).gain
    2.0
    """
    obj = json.loads(text)
    if not isinstance(obj, dict) or obj.get("schema") != LIBRARY_SCHEMA:
        raise ValueError(f"text: expected JSON with schema {LIBRARY_SCHEMA!r}, got "
                         f"{obj.get('schema') if isinstance(obj, dict) else type(obj).__name__!r}")
    return library_from_dict(obj["library"])
