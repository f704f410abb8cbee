"""Small argument checks shared by the public calls (errors name the argument)."""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["as_key", "check_positive_int"]


def as_key(key, arg: str = "key") -> jax.Array:
    """Return a new-style typed PRNG key from a typed key, a legacy uint32[2] key or an int seed."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{arg}: expected a single PRNG key, got a key array of shape {key.shape}")
        return key
    arr = np.asarray(key) if not isinstance(key, jax.Array) else key
    if getattr(arr, "dtype", None) == np.uint32 and arr.shape == (2,):
        return jax.random.wrap_key_data(arr)
    raise ValueError(
        f"{arg}: expected a jax.random.key(...), a legacy PRNGKey or an int seed, got "
        f"{type(key).__name__} {getattr(key, 'shape', '')}")


def check_positive_int(value, arg: str, *, allow_none: bool = False):
    """``value`` as a positive ``int``; ``ValueError`` naming ``arg`` otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{arg}: expected a positive int, got {value!r}")
    return int(value)


def _real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)) \
        and bool(np.isfinite(value))


def check_training_settings(obj) -> None:
    """The engine settings an estimator holds (those of its fields that exist), checked once.

    ``learning_rate > 0``; ``0 <= validation_fraction < 1``; ``clip_norm`` ``None`` or
    ``> 0``; ``weight_decay >= 0``; ``patience`` ``None`` or a positive int; ``ema_decay``
    ``None`` or in ``(0, 1)``; ``tail_bound > 0``. ``ValueError`` naming the field otherwise.
    """
    rules = {
        "learning_rate": ("a finite float > 0", lambda v: _real(v) and v > 0),
        "validation_fraction": ("a float in [0, 1)", lambda v: _real(v) and 0 <= v < 1),
        "clip_norm": ("None or a finite float > 0", lambda v: v is None or (_real(v) and v > 0)),
        "weight_decay": ("a finite float >= 0", lambda v: _real(v) and v >= 0),
        "patience": ("None or a positive int", lambda v: v is None or (
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= 1)),
        "ema_decay": ("None or a float in (0, 1)", lambda v: v is None or (_real(v) and 0 < v < 1)),
        "tail_bound": ("a finite float > 0", lambda v: _real(v) and v > 0),
    }
    for name, (expected, ok) in rules.items():
        if hasattr(obj, name) and not ok(getattr(obj, name)):
            raise ValueError(f"{name}: expected {expected}, got {getattr(obj, name)!r}")


def check_positive_fields(obj, names) -> None:
    """Each ``getattr(obj, name)`` a positive int (``ValueError`` naming the field otherwise)."""
    for name in names:
        check_positive_int(getattr(obj, name), name)
