"""Named priors over scalar numpyro distributions.

A :class:`Prior` is an ordered mapping ``name -> scalar distribution`` (independent
components). It samples ``(n, d)`` parameter matrices, evaluates the joint log
density (``-inf`` outside the support, never NaN), and carries the bijection to an
unconstrained space (numpyro's ``biject_to``) in which the estimators train, so that
samples mapped back always lie inside the support.

Priors serialise to a JSON spec (:meth:`Prior.to_dict`) built from a whitelist of
distribution families, so a posterior file can rebuild its prior without running
code.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions.transforms import biject_to

from ._checks import as_key

__all__ = ["Prior"]

# Families a prior spec may name, with the constructor arguments stored for each.
# A spec naming anything else is refused: files are data, never code.
_FAMILIES: dict[str, tuple[str, ...]] = {
    "Uniform": ("low", "high"),
    "LogUniform": ("low", "high"),
    "Normal": ("loc", "scale"),
    "LogNormal": ("loc", "scale"),
    "HalfNormal": ("scale",),
    "HalfCauchy": ("scale",),
    "Cauchy": ("loc", "scale"),
    "Laplace": ("loc", "scale"),
    "StudentT": ("df", "loc", "scale"),
    "Exponential": ("rate",),
    "Gamma": ("concentration", "rate"),
    "InverseGamma": ("concentration", "rate"),
    "Beta": ("concentration1", "concentration0"),
    "TruncatedNormal": ("loc", "scale", "low", "high"),
}


def _family_of(d: dist.Distribution) -> str | None:
    if isinstance(d, dist.TwoSidedTruncatedDistribution) and isinstance(d.base_dist, dist.Normal):
        return "TruncatedNormal"
    name = type(d).__name__
    return name if name in _FAMILIES and type(d) is getattr(dist, name, None) else None


def _spec_of(d: dist.Distribution) -> dict:
    family = _family_of(d)
    if family is None:
        raise ValueError(
            f"prior: cannot serialise a {type(d).__name__} distribution; supported families "
            f"are {sorted(_FAMILIES)}")
    if family == "TruncatedNormal":
        values = {"loc": d.base_dist.loc, "scale": d.base_dist.scale, "low": d.low, "high": d.high}
    else:
        values = {k: getattr(d, k) for k in _FAMILIES[family]}
    return {"family": family, **{k: float(np.asarray(v)) for k, v in values.items()}}


def _dist_from_spec(name: str, spec: Mapping) -> dist.Distribution:
    family = spec.get("family") if isinstance(spec, Mapping) else None
    if family not in _FAMILIES:
        raise ValueError(
            f"prior spec for {name!r}: expected a family in {sorted(_FAMILIES)}, got {family!r}")
    missing = [k for k in _FAMILIES[family] if k not in spec]
    if missing:
        raise ValueError(f"prior spec for {name!r} ({family}) lacks arguments {missing}")
    args = {k: float(spec[k]) for k in _FAMILIES[family]}
    if family == "TruncatedNormal":
        return dist.TruncatedNormal(args["loc"], args["scale"], low=args["low"], high=args["high"])
    return getattr(dist, family)(**args)


class Prior:
    """Independent named prior over a ``d``-dimensional parameter vector.

    Parameters
    ----------
    distributions : dict[str, numpyro.distributions.Distribution]
        Ordered mapping from parameter name to a *scalar* numpyro distribution
        (``batch_shape == event_shape == ()``). The order of the dict is the column
        order of ``theta``.

    Attributes
    ----------
    names : tuple of str
        Parameter names, in column order.
    dim : int
        Number of parameters ``d``.

    Examples
    --------
    >>> import jax, numpyro.distributions as dist, bmsbi
    >>> prior = bmsbi.Prior({"a": dist.Uniform(-1., 1.), "sigma": dist.LogUniform(1e-3, 1e-1)})
    >>> theta = prior.sample(jax.random.key(0), 5)
    >>> theta.shape, prior.names
    ((5, 2), ('a', 'sigma'))
    >>> bool(prior.in_support(theta).all())
    True
    """

    def __init__(self, distributions: Mapping[str, dist.Distribution]):
        if isinstance(distributions, Prior):
            distributions = distributions.distributions
        if not isinstance(distributions, Mapping) or not distributions:
            raise ValueError(
                "distributions: expected a non-empty dict mapping parameter names to scalar "
                f"numpyro distributions, got {type(distributions).__name__} {distributions!r:.80}")
        for name, d in distributions.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"distributions: parameter names must be non-empty strings, got {name!r}")
            if not isinstance(d, dist.Distribution):
                raise ValueError(
                    f"distributions[{name!r}]: expected a numpyro Distribution, got {type(d).__name__}")
            if d.batch_shape != () or d.event_shape != ():
                raise ValueError(
                    f"distributions[{name!r}]: expected a scalar distribution (batch_shape=(), "
                    f"event_shape=()), got batch_shape={d.batch_shape}, event_shape={d.event_shape}; "
                    "give each parameter its own named entry")
        self.distributions: dict[str, dist.Distribution] = dict(distributions)
        self.names: tuple[str, ...] = tuple(self.distributions)
        self.dim: int = len(self.names)
        self._transforms = [biject_to(d.support) for d in self.distributions.values()]

    # ----------------------------------------------------------------- builders
    @classmethod
    def uniform(cls, low, high, names: Sequence[str] | None = None) -> "Prior":
        """Box prior: independent ``Uniform(low[i], high[i])`` components.

        Parameters
        ----------
        low, high : array-like, shape ``(d,)``
            Bounds, ``low < high`` elementwise.
        names : sequence of str, optional
            Parameter names; defaults to ``theta0 ... theta{d-1}``.

        Examples
        --------
        >>> import bmsbi
        >>> bmsbi.Prior.uniform([-1., 0.], [1., 2.], names=["a", "w"]).names
        ('a', 'w')
        """
        low = np.atleast_1d(np.asarray(low, dtype=np.float64))
        high = np.atleast_1d(np.asarray(high, dtype=np.float64))
        if low.ndim != 1 or low.shape != high.shape:
            raise ValueError(
                f"low/high: expected two 1-D arrays of the same length, got shapes {low.shape} "
                f"and {high.shape}")
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low < high)):
            raise ValueError(f"low/high: expected finite bounds with low < high, got low={low}, high={high}")
        if names is None:
            names = [f"theta{i}" for i in range(low.size)]
        names = list(names)
        if len(names) != low.size or len(set(names)) != len(names):
            raise ValueError(
                f"names: expected {low.size} distinct names, got {names!r}")
        return cls({n: dist.Uniform(float(lo), float(hi)) for n, lo, hi in zip(names, low, high)})

    @classmethod
    def from_dict(cls, spec: Mapping) -> "Prior":
        """Rebuild a prior from :meth:`to_dict` output (JSON data; nothing is executed)."""
        if not isinstance(spec, Mapping) or "parameters" not in spec:
            raise ValueError(f"spec: expected a dict with a 'parameters' list, got {spec!r:.80}")
        params = spec["parameters"]
        if not isinstance(params, list) or not params:
            raise ValueError(f"spec['parameters']: expected a non-empty list, got {params!r:.80}")
        out = {}
        for entry in params:
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise ValueError(f"spec['parameters']: each entry needs a 'name', got {entry!r:.80}")
            out[str(entry["name"])] = _dist_from_spec(entry["name"], entry)
        return cls(out)

    def to_dict(self) -> dict:
        """JSON-serialisable spec of the prior, for files and reproducibility."""
        return {"parameters": [{"name": n, **_spec_of(d)} for n, d in self.distributions.items()]}

    # --------------------------------------------------------------- densities
    def sample(self, key, n: int) -> jax.Array:
        """Draw ``n`` parameter vectors, shape ``(n, d)``, float32. Jittable for static ``n``."""
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n: expected a non-negative int, got {n!r}")
        keys = jax.random.split(as_key(key), self.dim)
        cols = [d.sample(k, (int(n),)) for k, d in zip(keys, self.distributions.values())]
        return jnp.stack(cols, axis=-1).astype(jnp.float32)

    def _check_theta(self, theta, arg="theta"):
        theta = jnp.asarray(theta)
        if theta.ndim not in (1, 2) or theta.shape[-1] != self.dim:
            raise ValueError(
                f"{arg}: expected shape (d,) or (n, d) with d={self.dim} ({', '.join(self.names)}), "
                f"got {theta.shape}")
        return theta

    def in_support(self, theta) -> jax.Array:
        """Boolean mask, ``(n,)`` (or scalar for ``(d,)``): is every component inside its support."""
        theta = self._check_theta(theta)
        ok = [d.support.check(theta[..., i]) for i, d in enumerate(self.distributions.values())]
        return jnp.all(jnp.stack(ok, axis=-1), axis=-1) & jnp.all(jnp.isfinite(theta), axis=-1)

    def log_prob(self, theta) -> jax.Array:
        """Joint log density, ``(n,)`` for ``(n, d)`` input; ``-inf`` outside the support (never NaN)."""
        theta = self._check_theta(theta)
        inside = self.in_support(theta)
        # Evaluate at a safe in-support point where outside, then mask: avoids NaN gradients.
        safe = jnp.where(inside[..., None], theta, self._interior_point())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            lp = sum(d.log_prob(safe[..., i]) for i, d in enumerate(self.distributions.values()))
        return jnp.where(inside, lp, -jnp.inf)

    def _interior_point(self) -> jax.Array:
        return self.from_unconstrained(jnp.zeros(self.dim))

    # --------------------------------------------------------------- bijection
    def _bijections(self, keep):
        """Per-parameter maps; ``keep[i]`` True leaves parameter ``i`` in its own coordinates."""
        if keep is None:
            return self._transforms
        keep = np.asarray(keep, bool)
        if keep.shape != (self.dim,):
            raise ValueError(f"keep: expected {self.dim} booleans, got shape {keep.shape}")
        return [None if k else t for k, t in zip(keep, self._transforms)]

    def from_unconstrained(self, z, keep=None) -> jax.Array:
        """Map unconstrained ``z`` (``(..., d)``) into the support: ``theta = T(z)``.

        ``keep`` (``(d,)`` booleans, optional): parameters passed through unchanged.
        """
        z = jnp.asarray(z)
        return jnp.stack([z[..., i] if t is None else t(z[..., i])
                          for i, t in enumerate(self._bijections(keep))], axis=-1)

    def to_unconstrained(self, theta, keep=None) -> jax.Array:
        """Inverse of :meth:`from_unconstrained`; ``theta`` must lie inside the support."""
        theta = jnp.asarray(theta)
        return jnp.stack([theta[..., i] if t is None else t.inv(theta[..., i])
                          for i, t in enumerate(self._bijections(keep))], axis=-1)

    def log_det_jacobian(self, z, keep=None) -> jax.Array:
        """``log |d theta / d z|`` of :meth:`from_unconstrained` at ``z``, shape ``z.shape[:-1]``."""
        z = jnp.asarray(z)
        terms = [t.log_abs_det_jacobian(z[..., i], t(z[..., i]))
                 for i, t in enumerate(self._bijections(keep)) if t is not None]
        return sum(terms, jnp.zeros(z.shape[:-1], z.dtype))

    # ------------------------------------------------------------------ misc
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper support bounds per parameter (``±inf`` where unbounded)."""
        lo, hi = [], []
        for d in self.distributions.values():
            s = d.support
            lo.append(float(np.asarray(getattr(s, "lower_bound", -math.inf))))
            hi.append(float(np.asarray(getattr(s, "upper_bound", math.inf))))
        return np.array(lo), np.array(hi)

    def __eq__(self, other):
        return isinstance(other, Prior) and self.to_dict() == other.to_dict()

    __hash__ = None

    def __repr__(self):
        parts = ", ".join(
            f"{n}={type(d).__name__}" for n, d in self.distributions.items())
        return f"Prior({parts})"


def as_prior(prior, arg: str = "prior") -> Prior:
    """Accept a :class:`Prior` or a dict of distributions; anything else is a ``ValueError``."""
    if isinstance(prior, Prior):
        return prior
    if isinstance(prior, Mapping):
        return Prior(prior)
    raise ValueError(
        f"{arg}: expected a bmsbi.Prior or a dict of named numpyro distributions, got "
        f"{type(prior).__name__}")
