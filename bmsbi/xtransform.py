"""Per-feature observation transforms chosen from the training bank (log space for wide positive features).

Observations that are strictly positive and span orders of magnitude (counts, spectral
power, firing rates) are poorly served by a linear z-score: most simulations crowd
into a sliver of the standardised range while a few huge values set its scale. Such a
feature is modelled in log space instead: the estimators (NPE, NLE, NRE) apply
:class:`XTransform` to the bank before z-scoring it, store it in the posterior
(``posterior.x_transform``, saved with the file) and apply it to every new
observation, so nothing changes for the user but the accuracy.

The rule of ``x_transform="auto"`` (:data:`LOG_SPAN`): a feature is modelled in log
space when every bank value of it is ``> 0`` and it spans a factor of at least
``sqrt(LOG_SPAN)`` = 10 on each side of its median (99th percentile over median, median
over 1st percentile): two orders of magnitude across the central 98 % of the
simulations, spread like a scale (a log-normal, a power) rather than a positive
quantity that only comes close to zero (a small correlation, which a real recording may
well make negative). Features with a zero or negative value, and narrow positive ones,
stay as they are: at smaller spans whether the log helps depends on whether the noise is
multiplicative or additive, which the bank's spread cannot tell
(``benchmarks/RESULTS.md``, "Observation transforms"). ``"none"`` keeps every feature
(the behaviour before transforms), ``"log"`` takes the log of every feature (all must
be positive), and a boolean mask (one entry per feature, flat or of the observation's
shape) chooses by hand.

An observation whose log-modelled feature is ``<= 0`` cannot be mapped: ``sample`` and
``log_prob`` raise a ``ValueError`` naming the feature and its value; ``infer`` and
``ood_score`` flag the row as unlike the simulations, with a warning saying why.

Examples
--------
>>> import numpy as np
>>> from bmsbi.xtransform import XTransform
>>> rng = np.random.default_rng(0)
>>> x = np.stack([np.exp(2 * rng.normal(size=1000)), rng.normal(size=1000)], axis=1)
>>> XTransform.choose("auto", x)
XTransform(log features [0] of 2, x_shape=(2,), rule='auto')
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["XTransform", "X_TRANSFORM_OPTIONS", "LOG_SPAN", "check_x_transform"]

# What ``x_transform`` accepts as a string (a boolean mask is the fourth choice).
X_TRANSFORM_OPTIONS = ("auto", "none", "log")
# ``"auto"`` models a positive feature in log space when its 99th percentile is at least
# this many times its 1st percentile (benchmarks/RESULTS.md, "Observation transforms").
LOG_SPAN = 100.0


def check_x_transform(spec, arg: str = "x_transform"):
    """``spec`` if it is one of :data:`X_TRANSFORM_OPTIONS` or a boolean mask, else ``ValueError``.

    A mask is returned as a tuple of bools (its length is checked against the bank at fit time).
    """
    if isinstance(spec, str):
        if spec not in X_TRANSFORM_OPTIONS:
            raise ValueError(f"{arg}: expected one of {X_TRANSFORM_OPTIONS} or a boolean mask (one "
                             f"entry per feature), got {spec!r}")
        return spec
    try:
        mask = np.asarray(spec)
    except Exception:  # noqa: BLE001 - anything numpy cannot read is refused below
        mask = np.asarray(None, dtype=object)
    if mask.dtype != bool or mask.ndim == 0 or mask.size == 0:
        raise ValueError(f"{arg}: expected one of {X_TRANSFORM_OPTIONS} or a non-empty boolean mask "
                         f"(one True/False per feature: True = log space), got {spec!r}")
    return tuple(bool(v) for v in mask.reshape(-1))


@dataclasses.dataclass(frozen=True, repr=False)
class XTransform:
    """Which features of an observation are modelled in log space (frozen).

    Attributes
    ----------
    log : tuple of bool
        One entry per feature of the flattened observation; ``True``: log space.
    x_shape : tuple of int
        Shape of one observation.
    rule : str
        How it was chosen: ``"auto"``, ``"none"``, ``"log"`` or ``"mask"`` (by hand);
        ``"none"`` also for posteriors saved before transforms existed.
    """

    log: tuple
    x_shape: tuple
    rule: str = "none"

    def __post_init__(self):
        object.__setattr__(self, "log", tuple(bool(v) for v in self.log))
        object.__setattr__(self, "x_shape", tuple(int(s) for s in self.x_shape))
        if len(self.log) != math.prod(self.x_shape):
            raise ValueError(f"log: expected {math.prod(self.x_shape)} entries (one per feature of "
                             f"x_shape {self.x_shape}), got {len(self.log)}")

    # ------------------------------------------------------------------ building
    @classmethod
    def identity(cls, x_shape) -> "XTransform":
        """No feature transformed (``x_transform="none"``)."""
        return cls((False,) * math.prod(tuple(x_shape)), tuple(x_shape), "none")

    @classmethod
    def choose(cls, spec, x, *, per_channel: bool = False, arg: str = "x_transform") -> "XTransform":
        """The transform ``spec`` asks for, decided on the bank ``x`` ``(n, *x_shape)``.

        ``per_channel`` (observations fed to a structured embedding, z-scored per
        channel): the ``"auto"`` rule pools every value of a channel (the last axis;
        all values for 1-D observations), so a channel is all log or all linear.
        ``ValueError`` naming ``arg`` for an unknown ``spec``, a mask of the wrong size,
        or log space asked for a feature with a value ``<= 0`` in the bank.
        """
        spec = check_x_transform(spec, arg)
        x = np.asarray(x, np.float64)
        x_shape = x.shape[1:]
        flat = x.reshape(len(x), -1)
        size = flat.shape[1]
        if spec == "none":
            return cls.identity(x_shape)
        if spec == "auto":
            return cls(_auto_mask(x, per_channel).reshape(-1), x_shape, "auto")
        if spec == "log":
            mask, rule = np.ones(size, bool), "log"
        else:
            if len(spec) != size:
                raise ValueError(f"{arg}: a mask needs one entry per feature ({size} for observations "
                                 f"of shape {x_shape}), got {len(spec)}")
            mask, rule = np.asarray(spec, bool), "mask"
        low = flat.min(axis=0)
        bad = np.flatnonzero(mask & ~(low > 0))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{arg}: log space needs strictly positive values, but feature {i} of the bank has "
                f"minimum {low[i]:g} ({bad.size} such feature(s): {bad[:10].tolist()}); use "
                "x_transform='auto' or a mask without them")
        return cls(mask, x_shape, rule)

    # ------------------------------------------------------------------- reading
    @property
    def log_features(self) -> tuple:
        """Flat indices of the features modelled in log space."""
        return tuple(i for i, v in enumerate(self.log) if v)

    @property
    def active(self) -> bool:
        """Whether any feature is transformed."""
        return any(self.log)

    def __repr__(self):
        return (f"XTransform(log features {list(self.log_features)} of {len(self.log)}, "
                f"x_shape={self.x_shape}, rule={self.rule!r})")

    # ------------------------------------------------------------------- applying
    def apply(self, x):
        """``x (..., *x_shape)`` with the log taken of the log-space features (NumPy or JAX).

        Values ``<= 0`` there give ``-inf`` / NaN: call :meth:`check` first on
        observations. NaN (absent trials) stays NaN. The identity returns ``x`` itself.
        """
        if not self.active:
            return x
        mask = np.asarray(self.log).reshape(self.x_shape)
        if isinstance(x, np.ndarray):
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(mask, np.log(np.where(mask, x, 1.0)), x).astype(x.dtype)
        import jax.numpy as jnp

        return jnp.where(mask, jnp.log(jnp.where(mask, x, 1.0)), x)

    def invert(self, x) -> np.ndarray:
        """Inverse of :meth:`apply` (NumPy): ``exp`` of the log-space features of ``x (..., *x_shape)``."""
        x = np.asarray(x)
        if not self.active:
            return x
        mask = np.asarray(self.log).reshape(self.x_shape)
        return np.where(mask, np.exp(np.where(mask, x, 0.0)), x).astype(x.dtype)

    def mappable(self, x) -> np.ndarray:
        """Bool ``(m,)`` for ``x (m, ...)``: rows with no log-space feature ``<= 0`` (NaN ignored)."""
        x = np.asarray(x)
        if not self.active:
            return np.ones(len(x), bool)
        flat = x.reshape(len(x), -1, len(self.log))
        return ~np.any((flat <= 0) & np.asarray(self.log), axis=(1, 2))

    def problem(self, x, arg: str = "x_obs") -> str | None:
        """The message :meth:`check` raises for ``x``, or ``None`` when every value maps."""
        if not self.active:
            return None
        x = np.asarray(x)
        flat = x.reshape(-1, len(self.log))
        bad = (flat <= 0) & np.asarray(self.log)
        if not bad.any():
            return None
        row, feature = (int(v[0]) for v in np.nonzero(bad))
        where = "" if len(self.x_shape) <= 1 else \
            f" (index {tuple(int(i) for i in np.unravel_index(feature, self.x_shape))} of x_shape {self.x_shape})"
        why = (", chosen at fit time because its training values are positive and span orders "
               "of magnitude" if self.rule == "auto" else ", chosen at fit time")
        return (f"{arg}: feature {feature}{where} is {flat[row, feature]:g}, but this posterior models "
                f"it in log space ({self!r}{why}), so it must be > 0; {int(bad.sum())} value(s) "
                "<= 0 in all. Check the observation's units, or refit with x_transform='none' or a mask")

    def check(self, x, arg: str = "x_obs") -> None:
        """``ValueError`` naming ``arg``, the feature and its value if a log-space feature of ``x`` is ``<= 0``.

        ``x``: ``(..., *x_shape)``; NaN entries (absent trials) are ignored.
        """
        message = self.problem(x, arg)
        if message is not None:
            raise ValueError(message)

    # ---------------------------------------------------------------------- files
    def to_dict(self) -> dict:
        """JSON description (what a posterior file stores)."""
        return {"log_features": list(self.log_features), "rule": self.rule}

    @classmethod
    def from_dict(cls, data, x_shape) -> "XTransform":
        """Inverse of :meth:`to_dict`; ``None`` (a file from before transforms) is the identity."""
        if data is None:
            return cls.identity(x_shape)
        size = math.prod(tuple(x_shape))
        try:
            idx = [int(i) for i in data["log_features"]]
            rule = str(data.get("rule", "mask"))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"path: the file's x_transform entry is malformed ({err!r})") from None
        if any(i < 0 or i >= size for i in idx):
            raise ValueError(f"path: the file's x_transform names features outside 0..{size - 1}: {idx}")
        mask = np.zeros(size, bool)
        mask[idx] = True
        return cls(mask, x_shape, rule)


def _auto_mask(x, per_channel: bool) -> np.ndarray:
    """The ``"auto"`` rule on a bank ``x (n, *x_shape)``: positive, ``q99 / q50`` and ``q50 / q01`` both ``>= sqrt(LOG_SPAN)``."""
    if per_channel:
        channels = x.reshape(-1, 1) if x.ndim == 2 else x.reshape(-1, x.shape[-1])
        pick = _auto_mask(channels, False)  # (1,) or (C,)
        return np.broadcast_to(pick if x.ndim > 2 else pick[0], x.shape[1:]).copy()
    flat = x.reshape(len(x), -1)
    positive = flat.min(axis=0) > 0
    q01, q50, q99 = np.quantile(flat, [0.01, 0.5, 0.99], axis=0)
    side = np.sqrt(LOG_SPAN)
    with np.errstate(divide="ignore", invalid="ignore"):
        # a scale-like feature spans orders of magnitude on both sides of its median; one
        # that merely comes close to zero (a small correlation, a weak coupling) does not,
        # and need not stay positive in real recordings
        wide = (q99 >= side * q50) & (q50 >= side * q01)
    return (positive & wide).reshape(x.shape[1:])
