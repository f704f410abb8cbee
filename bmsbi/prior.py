"""Named priors over numpyro distributions: scalar parameters and correlated blocks.

A :class:`Prior` is an ordered mapping whose entries are independent of one another.
An entry is either one scalar parameter, ``name: distribution``, or a named *block* of
coordinates that share one multivariate distribution, ``name: (distribution, [names])``
(a ``MultivariateNormal``, ``LowRankMultivariateNormal``, ``Dirichlet``, or an
``Independent`` batch of a scalar family). Coordinates are the columns of ``theta``, in
entry order. The prior samples ``(n, d)`` parameter matrices, evaluates the joint log
density (``-inf`` outside the support, never NaN), and carries the bijection to an
unconstrained space (numpyro's ``biject_to`` of each entry's support) in which the
estimators train, so that samples mapped back always lie inside the support. That space
has :attr:`Prior.unconstrained_dim` coordinates, which differs from :attr:`Prior.dim`
where a block lives on a lower-dimensional set (a ``Dirichlet`` of ``K`` coordinates
has ``K - 1`` unconstrained ones).

Priors serialise to a JSON spec (:meth:`Prior.to_dict`) built from a whitelist of
distribution families, so a posterior file can rebuild its prior without running
code; the spec is validated when it is read.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform, biject_to

from ._checks import as_key, real_array, remember

__all__ = ["Prior"]

_JITTED: dict = {}  # (prior, method, fixed arguments) -> compiled function (Prior.jitted)

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

# Multivariate families a block may hold, with their array arguments and the number of
# axes of each (K coordinates: loc (K,), covariance (K, K), cov_factor (K, rank)).
# "Independent" stores its scalar family under "base", every argument a (K,) list.
_BLOCK_FAMILIES: dict[str, tuple[tuple[str, int], ...]] = {
    "MultivariateNormal": (("loc", 1), ("covariance_matrix", 2)),
    "LowRankMultivariateNormal": (("loc", 1), ("cov_factor", 2), ("cov_diag", 1)),
    "Dirichlet": (("concentration", 1),),
    "Independent": (),
}

# Tolerance per coordinate on the sum of a simplex point: float32 draws and the float32
# stick-breaking map miss 1 by a few ulps per coordinate, beyond numpyro's fixed 1e-6.
_SIMPLEX_ATOL = 1e-5


class _Entry(NamedTuple):
    """One entry of a prior: a scalar parameter or a block, and where it sits."""

    name: str
    dist: dist.Distribution
    coords: tuple[str, ...]  # column names (the entry's name for a scalar)
    block: bool
    cols: slice              # its columns in theta
    zcols: slice             # its columns in the unconstrained space
    transform: Transform     # unconstrained -> support


def _family_of(d: dist.Distribution) -> str | None:
    if isinstance(d, dist.TwoSidedTruncatedDistribution) and isinstance(d.base_dist, dist.Normal):
        return "TruncatedNormal"
    name = type(d).__name__
    return name if name in _FAMILIES and type(d) is getattr(dist, name, None) else None


def _scalar_args(d: dist.Distribution) -> tuple[str | None, dict]:
    """Family and constructor arguments (arrays) of a scalar-family distribution or batch."""
    family = _family_of(d)
    if family is None:
        return None, {}
    if family == "TruncatedNormal":
        return family, {"loc": d.base_dist.loc, "scale": d.base_dist.scale, "low": d.low,
                        "high": d.high}
    return family, {k: getattr(d, k) for k in _FAMILIES[family]}


def _independent_base(d: dist.Distribution) -> dist.Distribution | None:
    """The scalar-family batch inside ``Independent(base, 1)`` (through ``expand``), else None."""
    if type(d) is not dist.Independent or d.reinterpreted_batch_ndims != 1:
        return None
    base = d.base_dist
    if type(base) is dist.ExpandedDistribution:
        base = base.base_dist
    if base.event_shape != () or _family_of(base) is None:
        return None
    return base


def _block_family(d: dist.Distribution) -> str | None:
    if type(d) in (dist.MultivariateNormal, dist.LowRankMultivariateNormal, dist.Dirichlet):
        return type(d).__name__
    return "Independent" if _independent_base(d) is not None else None


def _spec_of(d: dist.Distribution) -> dict:
    family, values = _scalar_args(d)
    if family is None:
        raise ValueError(
            f"prior: cannot serialise a {type(d).__name__} distribution; supported families "
            f"are {sorted(_FAMILIES)}")
    return {"family": family, **{k: float(np.asarray(v)) for k, v in values.items()}}


def _block_spec_of(d: dist.Distribution) -> dict:
    family = _block_family(d)
    k = d.event_shape[0]

    def as_list(v, shape):
        return np.broadcast_to(np.asarray(v, np.float64), shape).tolist()

    if family == "Independent":
        base_family, values = _scalar_args(_independent_base(d))
        return {"family": family,
                "base": {"family": base_family, **{a: as_list(v, (k,)) for a, v in values.items()}}}
    if family == "MultivariateNormal":
        return {"family": family, "loc": as_list(d.loc, (k,)),
                "covariance_matrix": as_list(d.covariance_matrix, (k, k))}
    if family == "LowRankMultivariateNormal":
        return {"family": family, "loc": as_list(d.loc, (k,)),
                "cov_factor": as_list(d.cov_factor, d.cov_factor.shape),
                "cov_diag": as_list(d.cov_diag, (k,))}
    return {"family": family, "concentration": as_list(d.concentration, (k,))}


def _check_arguments(where: str, d: dist.Distribution) -> None:
    """Refuse invalid distribution arguments (numpyro's own checks, and low < high)."""
    part = d  # Independent / truncated / expanded wrap the distribution that holds the arguments
    while part is not None:
        for arg, value in part.get_args().items():
            constraint = part.arg_constraints[arg]
            if constraints.is_dependent(constraint) or isinstance(value, jax.core.Tracer):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                valid = np.all(np.asarray(constraint(value)))
            if not valid:
                while hasattr(constraint, "base_constraint"):  # name the elementwise constraint
                    constraint = constraint.base_constraint
                raise ValueError(
                    f"{where}: invalid arguments: expected {arg} of the {type(part).__name__} to be "
                    f"{type(constraint).__name__.strip('_')}, got {np.asarray(value).tolist()!r:.120}")
        part = getattr(part, "base_dist", None)
    support = d.support
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    low, high = getattr(support, "lower_bound", None), getattr(support, "upper_bound", None)
    if low is None or high is None or isinstance(low, jax.core.Tracer) or isinstance(high, jax.core.Tracer):
        return
    low, high = np.asarray(low), np.asarray(high)
    if not np.all(low < high):
        raise ValueError(f"{where}: expected a support with lower bound < upper bound, got "
                         f"{type(d).__name__} with lower bound {low.tolist()} and upper bound "
                         f"{high.tolist()}")


def _array_arg(where: str, spec: Mapping, key: str, ndim: int) -> jax.Array:
    if key not in spec:
        raise ValueError(f"{where}: lacks the argument {key!r}")
    try:
        value = np.asarray(spec[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}[{key!r}]: expected a {ndim}-D array of numbers, got "
                         f"{spec[key]!r:.80}") from None
    if value.ndim != ndim or not np.all(np.isfinite(value)):
        raise ValueError(f"{where}[{key!r}]: expected a {ndim}-D array of finite numbers, got "
                         f"shape {value.shape}: {spec[key]!r:.80}")
    return jnp.asarray(value, jnp.float32)


def _block_from_spec(where: str, spec: Mapping, k: int) -> dist.Distribution:
    """A block distribution of ``k`` coordinates from its spec; shapes checked, arguments validated."""
    family = spec["family"]
    if family == "Independent":
        base = spec.get("base")
        base_family = base.get("family") if isinstance(base, Mapping) else None
        if base_family not in _FAMILIES:
            raise ValueError(f"{where}['base']: expected a dict with a family in "
                             f"{sorted(_FAMILIES)}, got {base!r:.80}")
        args = {a: _array_arg(f"{where}['base']", base, a, 1) for a in _FAMILIES[base_family]}
        shapes = {a: v.shape for a, v in args.items() if v.shape != (k,)}
        if shapes:
            raise ValueError(f"{where}['base']: expected arguments of length {k} (one per "
                             f"coordinate), got shapes {shapes}")
        if base_family == "TruncatedNormal":
            batch = dist.TruncatedNormal(args["loc"], args["scale"], low=args["low"],
                                         high=args["high"], validate_args=False)
        else:
            batch = getattr(dist, base_family)(**args, validate_args=False)
        return dist.Independent(batch, 1)
    args = {a: _array_arg(where, spec, a, nd) for a, nd in _BLOCK_FAMILIES[family]}
    expected = {"loc": (k,), "covariance_matrix": (k, k), "cov_diag": (k,), "concentration": (k,)}
    wrong = {a: v.shape for a, v in args.items() if a in expected and v.shape != expected[a]}
    if "cov_factor" in args and args["cov_factor"].shape[0] != k:
        wrong["cov_factor"] = args["cov_factor"].shape
    if wrong:
        raise ValueError(f"{where}: expected shapes {({a: expected.get(a, (k, 'rank')) for a in wrong})} "
                         f"for {k} coordinates, got {wrong}")
    return getattr(dist, family)(**args, validate_args=False)


def _dist_from_spec(where: str, spec: Mapping, k: int | None = None) -> dist.Distribution:
    family = spec.get("family") if isinstance(spec, Mapping) else None
    allowed = sorted(_FAMILIES) if k is None else sorted(_BLOCK_FAMILIES)
    if family not in allowed:
        raise ValueError(f"{where}: expected a family in {allowed}, got {family!r}")
    try:
        if k is not None:
            d = _block_from_spec(where, spec, k)
        else:
            missing = [a for a in _FAMILIES[family] if a not in spec]
            if missing:
                raise ValueError(f"{where} ({family}) lacks arguments {missing}")
            args = {a: float(spec[a]) for a in _FAMILIES[family]}
            if family == "TruncatedNormal":
                d = dist.TruncatedNormal(args["loc"], args["scale"], low=args["low"], high=args["high"],
                                         validate_args=False)
            else:
                d = getattr(dist, family)(**args, validate_args=False)
    except (TypeError, AssertionError) as err:  # numpyro's constructors on malformed arguments
        raise ValueError(f"{where}: cannot build a {family}: {err}") from None
    except ValueError as err:
        message = str(err) if str(err).startswith(where) else f"{where}: invalid arguments: {err}"
        raise ValueError(message) from None
    _check_arguments(where, d)
    return d


def _entries(distributions) -> list[_Entry]:
    """Checked entries, with their columns in theta and in the unconstrained space."""
    if not isinstance(distributions, Mapping) or not distributions:
        raise ValueError(
            "distributions: expected a non-empty dict mapping parameter names to scalar "
            "numpyro distributions or blocks (distribution, [coordinate names]), got "
            f"{type(distributions).__name__} {distributions!r:.80}")
    entries, seen, col, zcol = [], {}, 0, 0
    for name, value in distributions.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"distributions: parameter names must be non-empty strings, got {name!r}")
        where = f"distributions[{name!r}]"
        if isinstance(value, tuple):
            d, coords = _block(where, value)
        elif isinstance(value, dist.Distribution):
            d, coords = value, (name,)
            if d.batch_shape != () or d.event_shape != ():
                raise ValueError(
                    f"{where}: expected a scalar distribution (batch_shape=(), event_shape=()), got "
                    f"batch_shape={d.batch_shape}, event_shape={d.event_shape}; give each parameter "
                    f"its own named entry, or name the coordinates of a multivariate block: "
                    f"{name!r}: (distribution, [names])")
        else:
            raise ValueError(f"{where}: expected a numpyro Distribution or a (distribution, "
                             f"[coordinate names]) tuple, got {type(value).__name__}")
        _check_arguments(where, d)
        for c in coords:
            if c in seen:
                raise ValueError(f"{where}: the coordinate name {c!r} is also used by "
                                 f"distributions[{seen[c]!r}]; names must be distinct")
            seen[c] = name
        transform = biject_to(d.support)
        width = len(coords)
        zwidth = transform.inverse_shape((width,))[-1] if isinstance(value, tuple) else 1
        entries.append(_Entry(name, d, coords, isinstance(value, tuple), slice(col, col + width),
                              slice(zcol, zcol + zwidth), transform))
        col, zcol = col + width, zcol + zwidth
    return entries


def _block(where: str, value: tuple):
    """Check a ``(distribution, [coordinate names])`` block; returns ``(distribution, names)``."""
    if len(value) != 2 or not isinstance(value[0], dist.Distribution):
        raise ValueError(f"{where}: expected a block (distribution, [coordinate names]), got a "
                         f"tuple of {len(value)} ({', '.join(type(v).__name__ for v in value)})")
    d, coords = value
    if isinstance(coords, str) or not isinstance(coords, (list, tuple)) or \
            not all(isinstance(c, str) and c for c in coords):
        raise ValueError(f"{where}: expected a list of non-empty coordinate names as the block's "
                         f"second item, got {coords!r:.80}")
    family = _block_family(d)
    if family is None:
        kind = "a scalar" if d.event_shape == () and d.batch_shape == () else f"a {type(d).__name__}"
        raise ValueError(
            f"{where}: expected a multivariate distribution of one of {sorted(_BLOCK_FAMILIES)} "
            f"(Independent of a batch of {sorted(_FAMILIES)}) as a block, got {kind} distribution "
            f"with batch_shape={d.batch_shape}, event_shape={d.event_shape}; give a scalar "
            "parameter as name: distribution")
    if d.batch_shape != () or len(d.event_shape) != 1:
        raise ValueError(f"{where}: expected a block with batch_shape=() and a 1-D event_shape, got "
                         f"batch_shape={d.batch_shape}, event_shape={d.event_shape}")
    if len(coords) != d.event_shape[0]:
        raise ValueError(f"{where}: expected {d.event_shape[0]} coordinate names (the event size "
                         f"of its {family}), got {len(coords)}: {list(coords)}")
    return d, tuple(coords)


def _names(names, d: int) -> list:
    """``names`` as ``d`` distinct non-empty strings; ``ValueError`` naming ``names`` otherwise."""
    if isinstance(names, str):
        raise ValueError(f"names: expected a list of {d} names, got the string {names!r}: a string "
                         f"is not a list of names" + (f"; pass names=[{names!r}]" if d == 1 else ""))
    if isinstance(names, np.ndarray) and names.ndim == 1:
        names = names.tolist()
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"names: expected a list of {d} names (str), got {type(names).__name__} "
                         f"{names!r:.80}")
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise ValueError(f"names: expected non-empty strings, got {bad[:5]!r:.80}")
    if len(names) != d or len(set(names)) != d:
        raise ValueError(f"names: expected {d} distinct names (one per bound), got {list(names)!r:.120}")
    return list(names)


def _in_support(e: _Entry, theta: jax.Array) -> jax.Array:
    if not e.block:
        return e.dist.support.check(theta[..., e.cols.start])
    x = theta[..., e.cols]
    if e.dist.support is constraints.simplex:
        tol = _SIMPLEX_ATOL * x.shape[-1]
        return jnp.all(x >= 0, axis=-1) & (jnp.abs(jnp.sum(x, axis=-1) - 1.0) <= tol)
    return e.dist.support.check(x)


class Prior:
    """Named prior over a ``d``-dimensional parameter vector: scalars and correlated blocks.

    Parameters
    ----------
    distributions : dict
        Ordered mapping whose entries are independent of one another. An entry is
        either ``name: distribution`` with a *scalar* numpyro distribution
        (``batch_shape == event_shape == ()``), one parameter, or a block
        ``name: (distribution, [coordinate names])`` with a multivariate distribution of
        event shape ``(K,)`` and ``K`` distinct names: ``MultivariateNormal``,
        ``LowRankMultivariateNormal``, ``Dirichlet``, or ``Independent`` of a batch of
        one of the scalar families below (e.g. ``dist.Normal(m, s).to_event(1)``). The
        order of the dict (and of the names in a block) is the column order of
        ``theta``. Distribution arguments are validated (``Uniform(1., 0.)`` is refused).

    Attributes
    ----------
    names : tuple of str
        Column names of ``theta``: a scalar entry's name, a block's coordinate names.
    dim : int
        Number of parameters ``d`` (columns of ``theta``).
    unconstrained_dim : int
        Number of coordinates of the unconstrained space (:meth:`to_unconstrained`);
        ``dim`` less one per ``Dirichlet`` block.
    distributions : dict
        Entry name -> numpyro distribution (a block's under the block's name).
    blocks : dict
        Block name -> its coordinate names.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, bmsbi
    >>> prior = bmsbi.Prior({"a": dist.Uniform(-1., 1.), "sigma": dist.LogUniform(1e-3, 1e-1)})
    >>> theta = prior.sample(jax.random.key(0), 5)
    >>> theta.shape, prior.names
    ((5, 2), ('a', 'sigma'))
    >>> bool(prior.in_support(theta).all())
    True

    A correlated block beside a scalar parameter:

    >>> cov = jnp.array([[1.0, 0.8], [0.8, 1.0]])
    >>> prior = bmsbi.Prior({"w": (dist.MultivariateNormal(jnp.zeros(2), cov), ["w0", "w1"]),
    ...                      "tau": dist.Uniform(1., 5.)})
    >>> prior.names, prior.dim
    (('w0', 'w1', 'tau'), 3)
    >>> prior.log_prob(jnp.array([0.0, 0.0, 2.0])).round(3)
    Array(-2.713, dtype=float32)
    """

    def __init__(self, distributions: Mapping):
        if isinstance(distributions, Prior):
            distributions = distributions.entries()
        self._entries = _entries(distributions)
        self.distributions: dict[str, dist.Distribution] = {e.name: e.dist for e in self._entries}
        self.blocks: dict[str, tuple[str, ...]] = {e.name: e.coords for e in self._entries if e.block}
        self.names: tuple[str, ...] = tuple(c for e in self._entries for c in e.coords)
        self.dim: int = len(self.names)
        self.unconstrained_dim: int = self._entries[-1].zcols.stop

    def entries(self) -> dict:
        """The constructor's mapping: ``name -> distribution`` or ``name -> (distribution, names)``."""
        return {e.name: (e.dist, list(e.coords)) if e.block else e.dist for e in self._entries}

    def column_distributions(self) -> tuple:
        """Per column of ``theta``: its scalar distribution, or ``None`` for a block's coordinate."""
        return tuple(c for e in self._entries
                     for c in ((None,) * len(e.coords) if e.block else (e.dist,)))

    # ----------------------------------------------------------------- builders
    @classmethod
    def uniform(cls, low, high, names: Sequence[str] | None = None) -> "Prior":
        """Box prior: independent ``Uniform(low[i], high[i])`` components.

        Parameters
        ----------
        low, high : array-like, shape ``(d,)``
            Bounds, real numbers, finite, ``low < high`` elementwise, ``d >= 1`` (a
            number is one bound).
        names : list or tuple of str, optional
            ``d`` distinct, non-empty parameter names; defaults to ``theta0 ...
            theta{d-1}``. A single string is refused, even for ``d == 1``: it is not a
            list of names (``names="mu"`` would read as ``["m", "u"]``); pass ``["mu"]``.

        Raises
        ------
        ValueError
            Naming ``low``, ``high``, ``low/high`` or ``names``, with what came.

        Examples
        --------
        >>> import bmsbi
        >>> bmsbi.Prior.uniform([-1., 0.], [1., 2.], names=["a", "w"]).names
        ('a', 'w')
        """
        low, high = (np.atleast_1d(real_array(v, arg, what="numbers (one bound per parameter)",
                                              allow_bool=False)).astype(np.float64)
                     for v, arg in ((low, "low"), (high, "high")))
        if low.ndim != 1 or low.shape != high.shape:
            raise ValueError(
                f"low/high: expected two 1-D arrays of the same length, got shapes {low.shape} "
                f"and {high.shape}")
        if low.size == 0:
            raise ValueError("low/high: expected bounds for at least one parameter, got empty arrays")
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low < high)):
            raise ValueError(f"low/high: expected finite bounds with low < high, got low={low}, high={high}")
        names = [f"theta{i}" for i in range(low.size)] if names is None else _names(names, low.size)
        return cls({n: dist.Uniform(float(lo), float(hi)) for n, lo, hi in zip(names, low, high)})

    @classmethod
    def from_dict(cls, spec: Mapping) -> "Prior":
        """Rebuild a prior from :meth:`to_dict` output (JSON data; nothing is executed).

        Every entry is checked: a known family, arguments of the right shape, valid
        values (a covariance symmetric positive definite, concentrations positive,
        ``low < high``), as many coordinate names as the block's event size.
        """
        if not isinstance(spec, Mapping) or "parameters" not in spec:
            raise ValueError(f"spec: expected a dict with a 'parameters' list, got {spec!r:.80}")
        params = spec["parameters"]
        if not isinstance(params, list) or not params:
            raise ValueError(f"spec['parameters']: expected a non-empty list, got {params!r:.80}")
        out = {}
        for i, entry in enumerate(params):
            where = f"spec['parameters'][{i}]"
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
                raise ValueError(f"{where}: each entry needs a 'name' string, got {entry!r:.80}")
            name = entry["name"]
            if name in out:
                raise ValueError(f"{where}: the name {name!r} appears twice")
            where = f"{where} ({name!r})"
            if "coordinates" in entry:
                coords = entry["coordinates"]
                if not isinstance(coords, list) or not coords or \
                        not all(isinstance(c, str) for c in coords):
                    raise ValueError(f"{where}['coordinates']: expected a non-empty list of names, "
                                     f"got {coords!r:.80}")
                out[name] = (_dist_from_spec(where, entry, len(coords)), coords)
            elif entry.get("family") in _BLOCK_FAMILIES:
                raise ValueError(f"{where}: a {entry['family']} block needs 'coordinates', "
                                 "the list of its coordinate names")
            else:
                out[name] = _dist_from_spec(where, entry)
        return cls(out)

    def to_dict(self) -> dict:
        """JSON-serialisable spec of the prior, for files and reproducibility.

        ``{"parameters": [...]}``, one entry per scalar parameter
        (``{"name", "family", <arguments as numbers>}``) or block (``{"name",
        "coordinates", "family", <arguments as lists>}``; an ``Independent`` block
        keeps its scalar family and ``(K,)`` argument lists under ``"base"``).
        """
        return {"parameters": [
            {"name": e.name, "coordinates": list(e.coords), **_block_spec_of(e.dist)} if e.block
            else {"name": e.name, **_spec_of(e.dist)} for e in self._entries]}

    # --------------------------------------------------------------- densities
    def sample(self, key, n: int) -> jax.Array:
        """Draw ``n`` parameter vectors, shape ``(n, d)``, float32. Jittable for static ``n``."""
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n: expected a non-negative int, got {n!r}")
        n = int(n)
        keys = jax.random.split(as_key(key), len(self._entries))
        cols = [e.dist.sample(k, (n,)).reshape(n, len(e.coords)) for k, e in zip(keys, self._entries)]
        return jnp.concatenate(cols, axis=-1).astype(jnp.float32)

    def _check_theta(self, theta, arg="theta"):
        theta = jnp.asarray(theta)
        if theta.ndim not in (1, 2) or theta.shape[-1] != self.dim:
            raise ValueError(
                f"{arg}: expected shape (d,) or (n, d) with d={self.dim} ({', '.join(self.names)}), "
                f"got {theta.shape}")
        return theta

    def in_support(self, theta) -> jax.Array:
        """Boolean mask, ``(n,)`` (or scalar for ``(d,)``): is every entry inside its support."""
        theta = self._check_theta(theta)
        ok = [_in_support(e, theta) for e in self._entries]
        return jnp.all(jnp.stack(ok, axis=-1), axis=-1) & jnp.all(jnp.isfinite(theta), axis=-1)

    def log_prob(self, theta) -> jax.Array:
        """Joint log density, ``(n,)`` for ``(n, d)`` input; ``-inf`` outside the support (never NaN).

        A block's density is numpyro's (a ``Dirichlet``'s with respect to its first
        ``K - 1`` coordinates). Gradients are finite inside the support.
        """
        theta = self._check_theta(theta)
        inside = self.in_support(theta)
        # Evaluate at a safe in-support point where outside, then mask: avoids NaN gradients.
        safe = jnp.where(inside[..., None], theta, self.interior_point())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            lp = sum(e.dist.log_prob(safe[..., e.cols] if e.block else safe[..., e.cols.start])
                     for e in self._entries)
        return jnp.where(inside & ~jnp.isnan(lp), lp, -jnp.inf)

    def interior_point(self) -> jax.Array:
        """A point inside the support, ``(d,)``: the image of the unconstrained origin."""
        return self.from_unconstrained(jnp.zeros(self.unconstrained_dim))

    # --------------------------------------------------------------- bijection
    def _maps(self, keep):
        """Per-entry maps; ``keep[i]`` True leaves scalar column ``i`` in its own coordinates."""
        if keep is None:
            return [e.transform for e in self._entries]
        keep = np.asarray(keep, bool)
        if keep.shape != (self.dim,):
            raise ValueError(f"keep: expected {self.dim} booleans (one per column of theta), got "
                             f"shape {keep.shape}")
        for e in self._entries:
            if e.block and keep[e.cols].any():
                raise ValueError(f"keep: the coordinates of the block {e.name!r} "
                                 f"({', '.join(e.coords)}) always go through its bijection; expected "
                                 f"False for them, got {keep[e.cols].tolist()}")
        return [None if not e.block and keep[e.cols.start] else e.transform for e in self._entries]

    def _check_width(self, a, width, arg):
        a = jnp.asarray(a)
        if a.ndim == 0 or a.shape[-1] != width:
            raise ValueError(f"{arg}: expected a last axis of length {width}, got shape {a.shape}")
        return a

    def from_unconstrained(self, z, keep=None) -> jax.Array:
        """Map unconstrained ``z`` (``(..., unconstrained_dim)``) into the support: ``theta = T(z)``.

        ``keep`` (``(d,)`` booleans, optional): scalar parameters passed through
        unchanged (a block's coordinates always go through its bijection).
        """
        z = self._check_width(z, self.unconstrained_dim, "z")
        parts = []
        for e, t in zip(self._entries, self._maps(keep)):
            if e.block:
                parts.append(t(z[..., e.zcols]))
            else:
                v = z[..., e.zcols.start]
                parts.append((v if t is None else t(v))[..., None])
        return jnp.concatenate(parts, axis=-1)

    def to_unconstrained(self, theta, keep=None) -> jax.Array:
        """Inverse of :meth:`from_unconstrained`: ``(..., d) -> (..., unconstrained_dim)``.

        ``theta`` must lie inside the support.
        """
        theta = self._check_width(theta, self.dim, "theta")
        parts = []
        for e, t in zip(self._entries, self._maps(keep)):
            if e.block:
                parts.append(t.inv(theta[..., e.cols]))
            else:
                v = theta[..., e.cols.start]
                parts.append((v if t is None else t.inv(v))[..., None])
        return jnp.concatenate(parts, axis=-1)

    def log_det_jacobian(self, z, keep=None) -> jax.Array:
        """``log |d theta / d z|`` of :meth:`from_unconstrained` at ``z``, shape ``z.shape[:-1]``.

        For a ``Dirichlet`` block, the Jacobian of its first ``K - 1`` coordinates
        (the coordinates its density is defined in).
        """
        z = self._check_width(z, self.unconstrained_dim, "z")
        total = jnp.zeros(z.shape[:-1], z.dtype)
        for e, t in zip(self._entries, self._maps(keep)):
            if t is not None:
                v = z[..., e.zcols] if e.block else z[..., e.zcols.start]
                total = total + t.log_abs_det_jacobian(v, t(v))
        return total

    def unconstrained_columns(self) -> tuple:
        """Per column of ``theta``: its index in the unconstrained vector (a scalar parameter) or ``None`` (a block's coordinate).

        Examples
        --------
        >>> import bmsbi, numpyro.distributions as dist
        >>> bmsbi.Prior({"a": dist.Uniform(0., 1.), "b": dist.Normal(0., 1.)}).unconstrained_columns()
        (0, 1)
        """
        return tuple(c for e in self._entries
                     for c in ((None,) * len(e.coords) if e.block else (e.zcols.start,)))

    # ------------------------------------------------------------------ misc
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper support bounds per column (``±inf`` where unbounded)."""
        lo, hi = [], []
        for e in self._entries:
            width, s = len(e.coords), e.dist.support
            if s is constraints.simplex:
                low, high = 0.0, 1.0
            else:
                while hasattr(s, "base_constraint"):
                    s = s.base_constraint
                low = getattr(s, "lower_bound", -math.inf)
                high = getattr(s, "upper_bound", math.inf)
            lo.append(np.broadcast_to(np.asarray(low, np.float64), (width,)))
            hi.append(np.broadcast_to(np.asarray(high, np.float64), (width,)))
        return np.concatenate(lo), np.concatenate(hi)

    def __eq__(self, other):
        return isinstance(other, Prior) and self.to_dict() == other.to_dict()

    def __hash__(self):  # equal priors (same JSON spec) hash alike
        if getattr(self, "_spec_hash", None) is None:
            self._spec_hash = hash(json.dumps(self.to_dict(), sort_keys=True, default=str))
        return self._spec_hash

    def jitted(self, method: str, **fixed) -> Callable:
        """``getattr(self, method)`` (with keyword arguments ``fixed``) compiled once for all equal priors.

        A new but equal prior (e.g. the same spec read from a file) reuses the compiled
        function, so repeated fits and checks compile nothing new. Array values in
        ``fixed`` are compared by content.

        Examples
        --------
        >>> import bmsbi, jax.numpy as jnp
        >>> prior = bmsbi.Prior.uniform([0., 0.], [1., 1.])
        >>> bool(prior.jitted("in_support")(jnp.array([[0.5, 0.5]]))[0])
        True
        >>> bmsbi.Prior.uniform([0., 0.], [1., 1.]).jitted("in_support") is prior.jitted("in_support")
        True
        """
        if method not in ("in_support", "log_prob", "to_unconstrained", "from_unconstrained",
                          "log_det_jacobian"):
            raise ValueError(f"method: expected one of in_support, log_prob, to_unconstrained, "
                             f"from_unconstrained, log_det_jacobian, got {method!r}")
        frozen = tuple(sorted((k, tuple(np.asarray(v).ravel().tolist()) if np.ndim(v) else v)
                              for k, v in fixed.items()))
        return remember(_JITTED, (self, method, frozen),
                        lambda: jax.jit(functools.partial(getattr(self, method), **fixed)), size=256)

    def __repr__(self):
        parts = ", ".join(
            f"{e.name}={type(e.dist).__name__}" + (f"[{', '.join(e.coords)}]" if e.block else "")
            for e in self._entries)
        return f"Prior({parts})"


def as_prior(prior, arg: str = "prior") -> Prior:
    """Accept a :class:`Prior` or a dict of distributions; anything else is a ``ValueError``."""
    if isinstance(prior, Prior):
        return prior
    if isinstance(prior, Mapping):
        return Prior(prior)
    raise ValueError(
        f"{arg}: expected a bmsbi.Prior or a dict of named numpyro distributions (and blocks), "
        f"got {type(prior).__name__}")
